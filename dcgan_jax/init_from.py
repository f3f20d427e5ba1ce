"""config.init_from: a new run that starts from networks it did not train itself.

The source is another run's workdir (its latest or best checkpoint; G's EMA as G with
config.init_g_ema) or a pair of PyTorch DCGAN tutorial files `NETG.pth,NETD.pth`. The new run
takes both networks' weights and BatchNorm statistics; its optimizer states are fresh, its step
is 0 and G's EMA starts at the G it takes, as a new run's does; the data may be any of the same
image size and channels. A class-conditional run may start from an unconditional one: the
class parameters (G's first-layer rows of the one-hot input, D's class_projection) are new,
initialised as a new run's. Everything else must match leaf for leaf, or the start is refused
in one line naming the parameter and both shapes.

Where the run started is recorded once, in WORKDIR/init_from.json, and in its summary. A workdir
that has checkpoints resumes from them and never reads the source again.
"""

import dataclasses
import json
import os

import jax
import ml_collections
import numpy as np

from dcgan_jax import errors, steps
from dcgan_jax.errors import UsageError

RECORD = "init_from.json"
# A generator's first layer: its kernel (4, 4, width, nz [+ classes]) gains the one-hot rows.
_G_INPUT = ("Project4x4_0", "kernel")
_CLASS_PARAMS = ("class_projection",)


@dataclasses.dataclass(frozen=True)
class Origin:
  """Where a run started (WORKDIR/init_from.json)."""
  init_from: str  # as config.init_from gave it
  kind: str  # 'workdir' or 'pth'
  checkpoint: str  # 'latest' or 'best' ('' for .pth files)
  step: int  # the source checkpoint's step (0 for .pth files)
  weights: str  # which generator became G: "G", "G's EMA", "netG.pth"
  new_parameters: tuple[str, ...]  # those the source has not (a conditional run's classes)

  def line(self) -> str:
    where = (f"{self.init_from} ({self.checkpoint} checkpoint, step {self.step:,}; "
             f"{self.weights} as G)" if self.kind == "workdir" else
             f"{self.init_from} (PyTorch .pth files)")
    new = (f"; new: {', '.join(self.new_parameters)}" if self.new_parameters else "")
    return f"started from {where}{new}"


@dataclasses.dataclass(frozen=True)
class Source:
  """The networks a run starts from, as numpy trees, and where they came from."""
  g_params: dict
  g_batch_stats: dict
  d_params: dict
  d_batch_stats: dict
  num_classes: int
  origin: Origin


def pth_files(init_from: str) -> tuple[str, str] | None:
  """The (netG, netD) pair of an init_from that names two .pth files, None for a workdir."""
  parts = [p.strip() for p in init_from.split(",")]
  if len(parts) == 2 and all(p.endswith(".pth") for p in parts):
    return parts[0], parts[1]
  return None


def _bad(config: ml_collections.ConfigDict, why: str) -> UsageError:
  return UsageError(f"config.init_from={config.init_from!r}: {why}")


def load_source(config: ml_collections.ConfigDict, workdir: str) -> Source:
  """Reads and checks config.init_from's networks against config (sizes, widths, nz, D's
  normalisation); UsageError naming what differs. Nothing is written."""
  if os.path.abspath(config.init_from) == os.path.abspath(workdir):
    raise _bad(config, "is this run's own workdir: leave init_from empty to resume it")
  pair = pth_files(config.init_from)
  return _from_pth(config, *pair) if pair else _from_workdir(config)


_SAME_FIELDS = ("image_size", "channels", "nz", "ngf", "ndf", "spectral_norm")


def _from_workdir(config: ml_collections.ConfigDict) -> Source:
  from dcgan_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top

  source = config.init_from
  if not os.path.isdir(source):
    raise _bad(config, "is neither a workdir nor two .pth files (NETG.pth,NETD.pth)")
  try:
    with errors.api_names():  # its errors name the source, not this run's --workdir
      saved, gan, state, step = workdir_lib.restore(source, config.init_checkpoint,
                                                    config.init_g_ema)
  except (UsageError, errors.RunError) as e:
    raise _bad(config, str(e)) from None
  for field in _SAME_FIELDS:
    if saved[field] != config[field]:
      raise _bad(config, f"its run has config.{field}={saved[field]!r}, this config "
                         f"{config[field]!r}: the networks must be the same size")
  state = jax.device_get(state)
  g_params = state.g_ema_params if config.init_g_ema else state.g_params
  origin = Origin(source, "workdir", config.init_checkpoint, int(step),
                  "G's EMA" if config.init_g_ema else "G", ())
  return Source(g_params, state.g_batch_stats, state.d_params, state.d_batch_stats,
                gan.num_classes, origin)


def _from_pth(config: ml_collections.ConfigDict, net_g: str, net_d: str) -> Source:
  from dcgan_jax import convert, torch_files  # pylint: disable=g-import-not-at-top

  trees = []
  for path, reader in ((net_g, convert.generator_from_torch),
                       (net_d, convert.discriminator_from_torch)):
    if not os.path.isfile(path):
      raise _bad(config, f"{path} is not a file")
    try:
      variables, sizes = reader(torch_files.load_state_dict(path))
    except (torch_files.UnsupportedFile, convert.NotADcganStateDict) as e:
      raise _bad(config, f"{path} is not a PyTorch DCGAN state_dict: {e}") from None
    for field, value in sizes.items():
      if value != config[field]:
        raise _bad(config, f"{path} is for {field}={value}, this config has "
                           f"config.{field}={config[field]}")
    trees.append(variables)
  (g, d), name = trees, os.path.basename(net_g)
  origin = Origin(config.init_from, "pth", "", 0, name, ())
  return Source(g["params"], g["batch_stats"], d["params"], d["batch_stats"], 0, origin)


def _key(path) -> tuple[str, ...]:
  """A leaf's path in a tree of dicts as names, e.g. ('Project4x4_0', 'kernel')."""
  return tuple(getattr(k, "key", str(k)) for k in path)


def _paths(tree: dict) -> dict[tuple[str, ...], np.ndarray]:
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {_key(path): leaf for path, leaf in flat}


def _plan(config: ml_collections.ConfigDict, what: str, fresh: dict, source: dict,
          new: list[str]) -> dict:
  """For each leaf path of fresh's tree: 'take' (the source's, same shape), 'classes' (z's
  rows from the source, the class rows fresh: an unconditional source, a conditional run) or
  'fresh' (a class parameter the source has not, named in new); anything else that differs is
  refused in one line. fresh may hold shapes only (jax.ShapeDtypeStruct)."""
  got = _paths(source)
  plan = {}
  for path, leaf in _paths(fresh).items():
    name = "/".join(path)
    if path not in got:
      if path[-1] in _CLASS_PARAMS:
        new.append(f"{what} {name}")
        plan[path] = "fresh"
        continue
      raise _bad(config, f"its {what} has no {name} (this config's {what} does): another "
                         "architecture (config.loss's or d_norm's normalisation?)")
    theirs = tuple(np.shape(got.pop(path)))
    if theirs == tuple(leaf.shape):
      plan[path] = "take"
    elif (path == _G_INPUT and theirs[:3] == tuple(leaf.shape[:3]) and theirs[3] == config.nz
          and leaf.shape[3] > config.nz):
      new.append(f"{what} {name}[..., {config.nz}:] (the classes' inputs)")
      plan[path] = "classes"
    else:
      raise _bad(config, f"its {what} {name} is {theirs}, this config's {tuple(leaf.shape)}")
  if got:
    extra = "/".join(next(iter(got)))
    raise _bad(config, f"its {what} has {extra}, which this config's {what} has not "
                       "(a class-conditional run starts only class-conditional runs)")
  return plan


def _parts(state) -> tuple:
  return (("G", state.g_params), ("G", state.g_batch_stats), ("D", state.d_params),
          ("D", state.d_batch_stats))


def _source_parts(source: Source) -> tuple:
  return (source.g_params, source.g_batch_stats, source.d_params, source.d_batch_stats)


def _plans(config: ml_collections.ConfigDict, gan: steps.GAN, state, source: Source
           ) -> tuple[list[dict], tuple[str, ...]]:
  """_plan of each of state's networks' trees (state: a TrainState, or its abstract shapes),
  and the parameters the new run has and the source has not."""
  if source.num_classes and source.num_classes != gan.num_classes:
    raise _bad(config, f"its run is conditional on {source.num_classes} classes, this one on "
                       f"{gan.num_classes}")
  new: list[str] = []
  plans = [_plan(config, what, fresh, theirs, new)
           for (what, fresh), theirs in zip(_parts(state), _source_parts(source))]
  return plans, tuple(new)


def check(config: ml_collections.ConfigDict, gan: steps.GAN, source: Source) -> tuple[str, ...]:
  """Refuses (one line) a source whose networks do not fit gan's, on their shapes alone, before
  anything is written; returns the parameters the new run has and the source has not."""
  return _plans(config, gan, steps.abstract_train_state(gan), source)[1]


def start(config: ml_collections.ConfigDict, gan: steps.GAN, state: steps.TrainState,
          source: Source) -> tuple[steps.TrainState, Origin]:
  """The fresh state of a new run with the source's networks in it: optimizer states fresh
  (Adam's moments of those networks), step 0, G's EMA equal to the G taken."""
  fresh_state = jax.device_get(state)
  plans, new = _plans(config, gan, fresh_state, source)
  built = []
  for plan, (_, fresh), theirs in zip(plans, _parts(fresh_state), _source_parts(source)):
    got, mine = _paths(theirs), _paths(fresh)
    leaves = {}
    for path, how in plan.items():
      leaf = np.asarray(mine[path])
      if how == "take":
        leaves[path] = np.asarray(got[path], leaf.dtype)
      elif how == "classes":
        leaves[path] = np.concatenate([np.asarray(got[path], leaf.dtype),
                                       leaf[..., config.nz:]], -1)
      else:
        leaves[path] = leaf
    built.append(_unflatten(fresh, leaves))
  g_params, g_stats, d_params, d_stats = built
  sharding = jax.tree.leaves(state)[0].sharding
  put = lambda tree: jax.device_put(tree, sharding)  # noqa: E731
  # G's EMA starts at G, in buffers of its own (the training step donates both)
  ema = put(g_params) if state.g_ema_params is not None else None
  g_params, d_params = put(g_params), put(d_params)
  state = state.replace(g_params=g_params, g_batch_stats=put(g_stats),
                        g_opt_state=put(gan.g_opt.tx.init(g_params)),
                        d_params=d_params, d_batch_stats=put(d_stats),
                        d_opt_state=put(gan.d_opt.tx.init(d_params)), g_ema_params=ema)
  return state, dataclasses.replace(source.origin, new_parameters=new)


def _unflatten(like: dict, leaves_by_path: dict) -> dict:
  flat, treedef = jax.tree_util.tree_flatten_with_path(like)
  leaves = [leaves_by_path[_key(path)] for path, _ in flat]
  return jax.tree_util.tree_unflatten(treedef, leaves)


def write_record(workdir: str, origin: Origin) -> None:
  """Writes WORKDIR/init_from.json (where the run started), atomically."""
  errors.write_json(os.path.join(workdir, RECORD), dataclasses.asdict(origin), indent=2)


def read_record(workdir: str) -> Origin | None:
  """The run's init_from.json, None where it has none (or it cannot be read: it only informs)."""
  try:
    with open(os.path.join(workdir, RECORD)) as f:
      saved = json.load(f)
    return Origin(**{**saved, "new_parameters": tuple(saved.get("new_parameters", ()))})
  except (OSError, ValueError, TypeError):
    return None
