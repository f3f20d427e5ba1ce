"""PyTorch DCGAN checkpoints <-> this project's variables, and a workdir made from them.

The PyTorch DCGAN tutorial and pytorch/examples save `netG.state_dict()` and
`netD.state_dict()` of an `nn.Sequential` named `main` (keys `main.<index>.<name>`; a bare
Sequential's keys lack `main.`, a DataParallel's start with `module.`). Layer for layer:

  G: main.0 ConvTranspose2d(nz, w, 4, 1, 0)  -> Project4x4_0     main.1 BatchNorm2d -> BatchNorm_0
     main.3k ConvTranspose2d(.., 4, 2, 1)    -> UpConv_{k-1}     main.3k+1          -> BatchNorm_k
  D: main.0 Conv2d(nc, ndf, 4, 2, 1)         -> Conv_0
     main.3i-1 Conv2d(.., 4, 2, 1)           -> Conv_i           main.3i            -> BatchNorm_{i-1}
     main.3n-1 Conv2d(.., 1, 4, 1, 0)        -> Conv_n

Every convolution weight, PyTorch's (a, b, kh, kw), is this project's kernel (kh, kw, b, a):
ConvTranspose2d's (in, out, kh, kw) becomes (kh, kw, out, in) and Conv2d's (out, in, kh, kw)
becomes (kh, kw, in, out), with no flip. BatchNorm2d's weight, bias, running_mean and
running_var are scale, bias, mean and var (num_batches_tracked is not used).

  python -m dcgan_jax.convert import --netG netG.pth [--netD netD.pth] --workdir DIR
  python -m dcgan_jax.convert export --workdir DIR --out DIR2 [--checkpoint best] [--ema]
"""

import argparse
import collections
import os
import sys

import numpy as np
from absl import logging

from dcgan_jax import errors
from dcgan_jax.errors import RunError, UsageError, given

Variables = dict  # {"params": {...}, "batch_stats": {...}} of numpy arrays
_BN = (("weight", "params", "scale"), ("bias", "params", "bias"),
       ("running_mean", "batch_stats", "mean"), ("running_var", "batch_stats", "var"))


class NotADcganStateDict(UsageError):
  """A state_dict that does not fit the DCGAN layout; the message names the first key."""


def _strip_prefix(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Keys as `main.<index>.<name>`, whatever wrapped the Sequential."""
  out = {}
  for key, value in state_dict.items():
    key = key.removeprefix("module.")
    out[key if key.startswith("main.") else f"main.{key}"] = np.asarray(value)
  return out


def _conv_indices(state_dict: dict[str, np.ndarray]) -> list[int]:
  """Returns sequential indices of the 4-D (convolution) weights, in order."""
  indices = []
  for key, value in state_dict.items():
    parts = key.split(".")
    if len(parts) == 3 and parts[2] == "weight" and parts[1].isdigit() and value.ndim == 4:
      indices.append(int(parts[1]))
  return sorted(indices)


def _layout(what: str, state_dict: dict[str, np.ndarray], first: str) -> int:
  """Returns the number of stride-2 layers n (image size 4 * 2**n) that the weights describe."""
  convs = _conv_indices(state_dict)
  n = len(convs) - 1
  if n not in (3, 4, 5):
    raise NotADcganStateDict(
        f"{what}: {len(convs)} convolution weights (the first key is {first!r}); a DCGAN "
        f"{what} of 32, 64 or 128 px has 4, 5 or 6")
  return n


def _take(what: str, sd: dict[str, np.ndarray], used: set[str], key: str,
          shape: tuple[int, ...]) -> np.ndarray:
  if key not in sd:
    raise NotADcganStateDict(f"{what}: {key!r} is missing (expected shape {shape})")
  if tuple(sd[key].shape) != tuple(shape):
    raise NotADcganStateDict(f"{what}: {key!r} has shape {tuple(sd[key].shape)} where the DCGAN "
                             f"layout needs {tuple(shape)}")
  used.add(key)
  return np.asarray(sd[key], np.float32)


def _batch_norm(what, sd, used, index: int, width: int) -> tuple[dict, dict]:
  params, stats = {}, {}
  for torch_name, collection, name in _BN:
    value = _take(what, sd, used, f"main.{index}.{torch_name}", (width,))
    (params if collection == "params" else stats)[name] = value
  used.add(f"main.{index}.num_batches_tracked")
  return params, stats


def _check_all_used(what: str, sd: dict[str, np.ndarray], used: set[str]) -> None:
  extra = [k for k in sd if k not in used]
  if extra:
    raise NotADcganStateDict(f"{what}: {extra[0]!r} (shape {tuple(sd[extra[0]].shape)}) has no "
                             "place in the DCGAN layout")


def generator_from_torch(state_dict: dict[str, np.ndarray]) -> tuple[Variables, dict]:
  """Returns (variables, {image_size, channels, nz, ngf}) of a PyTorch DCGAN generator's
  state_dict."""
  what, sd, used = "netG", _strip_prefix(state_dict), set()
  n = _layout(what, sd, next(iter(state_dict), "(none)"))
  first = sd["main.0.weight"]
  nz, width = first.shape[0], first.shape[1]
  channels = sd[f"main.{3 * n}.weight"].shape[1] if f"main.{3 * n}.weight" in sd else 0
  params, stats = {}, {}
  params["Project4x4_0"] = {"kernel": _take(what, sd, used, "main.0.weight",
                                            (nz, width, 4, 4)).transpose(2, 3, 1, 0)}
  params["BatchNorm_0"], stats["BatchNorm_0"] = _batch_norm(what, sd, used, 1, width)
  for k in range(1, n):
    params[f"UpConv_{k - 1}"] = {"kernel": _take(what, sd, used, f"main.{3 * k}.weight",
                                                 (width, width // 2, 4, 4)).transpose(2, 3, 1, 0)}
    width //= 2
    params[f"BatchNorm_{k}"], stats[f"BatchNorm_{k}"] = _batch_norm(what, sd, used, 3 * k + 1,
                                                                    width)
  params[f"UpConv_{n - 1}"] = {"kernel": _take(what, sd, used, f"main.{3 * n}.weight",
                                               (width, channels, 4, 4)).transpose(2, 3, 1, 0)}
  _check_all_used(what, sd, used)
  if channels not in (1, 3):
    raise NotADcganStateDict(f"netG: {f'main.{3 * n}.weight'!r} makes {channels} channels; "
                             "1 or 3 are supported")
  ngf = width
  return ({"params": params, "batch_stats": stats},
          {"image_size": 4 * 2 ** n, "channels": int(channels), "nz": int(nz), "ngf": int(ngf)})


def discriminator_from_torch(state_dict: dict[str, np.ndarray]) -> tuple[Variables, dict]:
  """Returns (variables, {image_size, channels, ndf}) of a PyTorch DCGAN discriminator's
  state_dict."""
  what, sd, used = "netD", _strip_prefix(state_dict), set()
  n = _layout(what, sd, next(iter(state_dict), "(none)"))
  ndf, channels = sd["main.0.weight"].shape[:2] if "main.0.weight" in sd else (0, 0)
  params, stats = {}, {}
  params["Conv_0"] = {"kernel": _take(what, sd, used, "main.0.weight",
                                      (ndf, channels, 4, 4)).transpose(2, 3, 1, 0)}
  width = ndf
  for i in range(1, n):
    params[f"Conv_{i}"] = {"kernel": _take(what, sd, used, f"main.{3 * i - 1}.weight",
                                           (2 * width, width, 4, 4)).transpose(2, 3, 1, 0)}
    width *= 2
    params[f"BatchNorm_{i - 1}"], stats[f"BatchNorm_{i - 1}"] = _batch_norm(what, sd, used,
                                                                            3 * i, width)
  params[f"Conv_{n}"] = {"kernel": _take(what, sd, used, f"main.{3 * n - 1}.weight",
                                         (1, width, 4, 4)).transpose(2, 3, 1, 0)}
  _check_all_used(what, sd, used)
  if channels not in (1, 3):
    raise NotADcganStateDict(f"netD: 'main.0.weight' reads {channels} channels; 1 or 3 are "
                             "supported")
  return ({"params": params, "batch_stats": stats},
          {"image_size": 4 * 2 ** n, "channels": int(channels), "ndf": int(ndf)})


def _torch_batch_norm(out: dict, index: int, params: dict, stats: dict, dtype) -> None:
  for torch_name, collection, name in _BN:
    out[f"main.{index}.{torch_name}"] = np.asarray(
        (params if collection == "params" else stats)[name], dtype)
  out[f"main.{index}.num_batches_tracked"] = np.zeros((), np.int64)


def _kernel(tree: dict, module: str, dtype) -> np.ndarray:
  return np.ascontiguousarray(np.asarray(tree[module]["kernel"], dtype).transpose(3, 2, 0, 1))


def generator_to_torch(variables: Variables, dtype=np.float32) -> collections.OrderedDict:
  """Returns the PyTorch tutorial's netG state_dict (numpy arrays of dtype) of this project's G
  variables."""
  params, stats = variables["params"], variables["batch_stats"]
  n = sum(1 for k in params if k.startswith("UpConv_"))
  out = collections.OrderedDict()
  out["main.0.weight"] = _kernel(params, "Project4x4_0", dtype)
  _torch_batch_norm(out, 1, params["BatchNorm_0"], stats["BatchNorm_0"], dtype)
  for k in range(1, n):
    out[f"main.{3 * k}.weight"] = _kernel(params, f"UpConv_{k - 1}", dtype)
    _torch_batch_norm(out, 3 * k + 1, params[f"BatchNorm_{k}"], stats[f"BatchNorm_{k}"], dtype)
  out[f"main.{3 * n}.weight"] = _kernel(params, f"UpConv_{n - 1}", dtype)
  return out


def discriminator_to_torch(variables: Variables, dtype=np.float32) -> collections.OrderedDict:
  """Returns the PyTorch tutorial's netD state_dict (numpy arrays of dtype) of this project's D
  variables."""
  params, stats = variables["params"], variables["batch_stats"]
  n = sum(1 for k in params if k.startswith("Conv_")) - 1
  out = collections.OrderedDict()
  out["main.0.weight"] = _kernel(params, "Conv_0", dtype)
  for i in range(1, n):
    out[f"main.{3 * i - 1}.weight"] = _kernel(params, f"Conv_{i}", dtype)
    _torch_batch_norm(out, 3 * i, params[f"BatchNorm_{i - 1}"], stats[f"BatchNorm_{i - 1}"],
                      dtype)
  out[f"main.{3 * n - 1}.weight"] = _kernel(params, f"Conv_{n}", dtype)
  return out


def _read(path: str, what: str) -> dict[str, np.ndarray]:
  from dcgan_jax import torch_files  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(path):
    raise UsageError(f"--{what}={path!r} is not a file")
  try:
    return torch_files.load_state_dict(path)
  except torch_files.UnsupportedFile as e:
    raise UsageError(f"--{what}={path!r} is not a PyTorch state_dict: {e}") from e


def import_to_workdir(net_g: str, net_d: str | None, workdir: str, seed: int = 0) -> dict:
  """Writes a new workdir whose step-0 checkpoint holds the PyTorch G (and D, else a fresh
  seeded one), fresh Adam states, and a config.json of the embedded default with the models'
  sizes: it can be sampled with --mode sample, and trained on with the same model fields.
  Returns those sizes."""
  g_vars, sizes = generator_from_torch(_read(net_g, "netG"))
  d_vars = None
  if net_d:
    d_vars, d_sizes = discriminator_from_torch(_read(net_d, "netD"))
    for field in ("image_size", "channels"):
      if d_sizes[field] != sizes[field]:
        raise UsageError(f"--netD={net_d!r} is for {field}={d_sizes[field]}, --netG={net_g!r} "
                         f"for {sizes[field]}")
    sizes["ndf"] = d_sizes["ndf"]
  # Both files are read and checked before JAX loads and before anything is written.
  import jax  # pylint: disable=g-import-not-at-top

  # pylint: disable-next=g-import-not-at-top
  from dcgan_jax import checkpoint, configuration, steps
  from dcgan_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top

  ckpt_dir = workdir_lib.checkpoint_dir(workdir)
  if os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir):
    raise UsageError(f"{given('workdir', workdir)} already has checkpoints: import into a new one")
  config = configuration.load_config_file()  # configs/default.py
  config.seed = seed
  config.evaluator = "classifier" if sizes["channels"] == 1 and config.evaluator else ""
  for field, value in sizes.items():
    config[field] = value
  gan = steps.gan_from_config(config)
  state = steps.init_train_state(gan, seed)
  as_jax = lambda tree: jax.tree.map(jax.numpy.asarray, tree)  # noqa: E731
  g_params = as_jax(g_vars["params"])
  state = state.replace(g_params=g_params, g_batch_stats=as_jax(g_vars["batch_stats"]),
                        g_opt_state=gan.g_opt.tx.init(g_params),
                        # G's EMA (where the config keeps one) starts at G, as in a new run.
                        g_ema_params=g_params if state.g_ema_params is not None else None)
  if d_vars is not None:
    state = state.replace(d_params=as_jax(d_vars["params"]),
                          d_batch_stats=as_jax(d_vars["batch_stats"]),
                          d_opt_state=gan.d_opt.tx.init(as_jax(d_vars["params"])))
  workdir_lib.check_writable(workdir)
  ckpt = checkpoint.Checkpointer(ckpt_dir)
  try:
    ckpt.save(state)
  finally:
    ckpt.close()
  workdir_lib.write_config(config, workdir)
  return {**sizes, "ndf": config.ndf}


def export_from_workdir(workdir: str, out_dir: str, which: str = "latest",
                        ema: bool = False) -> list[str]:
  """Writes netG.pth and netD.pth (torch.save of the tutorial's state_dicts) of a workdir's
  latest (or best) checkpoint and returns their paths; needs torch. A D that is not the
  tutorial's (spectral norm, a LayerNorm or no norm) has no netD.pth: only netG.pth is written,
  and a warning says why. A class-conditional run is refused (the tutorial's nets take no
  class)."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ModuleNotFoundError as e:
    raise UsageError("export writes .pth files with torch: pip install -e '.[torch]'") from e
  import jax  # pylint: disable=g-import-not-at-top

  from dcgan_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top

  _, gan, state, _ = workdir_lib.restore(workdir, which, ema)
  if gan.num_classes:
    raise UsageError(f"{given('workdir', workdir)} holds a class-conditional run "
                     f"({gan.num_classes} "
                     "classes): the PyTorch tutorial's netG and netD have no class input, so "
                     "it cannot be exported as theirs")
  state = jax.device_get(state)
  g_params = state.g_ema_params if ema else state.g_params
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  files = [("netG.pth", generator_to_torch({"params": g_params,
                                            "batch_stats": state.g_batch_stats}))]
  d = gan.discriminator
  if d.norm == "batch" and not d.spectral_norm:
    files.append(("netD.pth", discriminator_to_torch({"params": state.d_params,
                                                      "batch_stats": state.d_batch_stats})))
  else:
    logging.warning("netD.pth is not written: this run's D (norm %r, spectral_norm %s) is not "
                    "the tutorial's netD", d.norm, d.spectral_norm)
  for name, sd in files:
    path = os.path.join(out_dir, name)
    with errors.writing(path, undo=lambda: os.remove(f"{path}.tmp")):  # noqa: B023
      torch.save(collections.OrderedDict((k, torch.from_numpy(np.array(v)))
                                         for k, v in sd.items()), f"{path}.tmp")
      os.replace(f"{path}.tmp", path)
    paths.append(path)
  return paths


def main(argv: list[str] | None = None) -> int:
  prog = "dcgan-jax-convert" if sys.argv[0].endswith("dcgan-jax-convert") else None
  parser = argparse.ArgumentParser(prog=prog or "python -m dcgan_jax.convert",
                                   description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest="command", required=True)
  imp = sub.add_parser("import", help="a PyTorch netG (and netD) into a new workdir")
  imp.add_argument("--netG", required=True, dest="net_g")
  imp.add_argument("--netD", default=None, dest="net_d")
  imp.add_argument("--workdir", required=True)
  imp.add_argument("--seed", type=int, default=0, help="for a D that is not imported")
  exp = sub.add_parser("export", help="a workdir's checkpoint as netG.pth and netD.pth")
  exp.add_argument("--workdir", required=True)
  exp.add_argument("--out", required=True, help="folder for netG.pth and netD.pth")
  exp.add_argument("--checkpoint", choices=("latest", "best"), default="latest")
  exp.add_argument("--ema", action="store_true", help="export G's EMA as netG")
  args = parser.parse_args(argv)
  try:
    if args.command == "import":
      sizes = import_to_workdir(args.net_g, args.net_d, args.workdir, args.seed)
      fields = " ".join(f"--config.{k}={v}" for k, v in sizes.items())
      print(f"imported into {args.workdir} (step 0); sample with `python main.py --mode sample "
            f"--workdir {args.workdir}`, train on with `python main.py --workdir "
            f"{args.workdir} {fields} --config.dataset=...`")
    else:
      for path in export_from_workdir(args.workdir, args.out, args.checkpoint, args.ema):
        print(f"wrote {path}")
  except (UsageError, RunError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2 if isinstance(e, UsageError) else 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
