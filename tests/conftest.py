"""Shared fixtures and helpers: a tiny GAN, its state and config, tree comparison, image
folders made on the fly."""

import os
import pathlib

import jax
import numpy as np
import pytest
from PIL import Image

from dcgan_jax.configs import default
from dcgan_jax import device, inception, steps, train
from dcgan_jax.models import Discriminator, Generator


_QUICK_COMPILE = "JAX_DISABLE_MOST_OPTIMIZATIONS"


def pytest_configure(config):  # pylint: disable=unused-argument
  """Tests run with the default config's GPU determinism (XLA_FLAGS), set before JAX starts
  and inherited by the subprocesses; and compiled quickly (below)."""
  device.set_deterministic(default.get_config().deterministic)
  _compile_quickly(True)
  if os.environ.get("PYTEST_XDIST_WORKER"):  # workers sharing one GPU take its memory as needed
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def _compile_quickly(quick: bool) -> None:
  """Compiles the programs of this process and its subprocesses with XLA's backend optimization
  off (jax_disable_most_optimizations: LLVM at -O0, about 5x less compile time) or as users'
  programs are compiled. Forgets every program compiled the other way."""
  if jax.config.read("jax_disable_most_optimizations") != quick:
    jax.clear_caches()
    jax.config.update("jax_disable_most_optimizations", quick)
  if quick:
    os.environ[_QUICK_COMPILE] = "1"
  else:
    os.environ.pop(_QUICK_COMPILE, None)


# The longest test files, longest first (seconds of a one-process run on 2 cores): pytest-xdist
# hands out whole files in collection order, so these start first and the short files fill in
# around them. The other files follow in their own order.
_LONGEST_FIRST = ("reliability_test.py",  # 245
                  "steps_test.py", "benchmarks_test.py",  # 99, 97
                  "parallel_test.py", "classifier_test.py", "main_test.py",  # 72, 69, 63
                  "examples_test.py", "multiprocess_test.py", "convert_test.py",  # 56, 50, 49
                  "evaluation_test.py", "torch_files_attack_test.py", "train_test.py")  # 43-38


def pytest_collection_modifyitems(config, items):  # pylint: disable=unused-argument
  """Orders the files longest first (_LONGEST_FIRST), then runs the tests marked xla_default
  last (in that order), so that the compilation mode changes once in a process that runs them
  all."""
  def rank(item) -> int:
    name = item.path.name
    return _LONGEST_FIRST.index(name) if name in _LONGEST_FIRST else len(_LONGEST_FIRST)
  items.sort(key=rank)  # stable: each file's tests keep their order
  items[:] = ([i for i in items if not i.get_closest_marker("xla_default")] +
              [i for i in items if i.get_closest_marker("xla_default")])


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
  """Every test compiles quickly but those marked xla_default: facts of XLA's CPU arithmetic as
  users' programs compute it (the golden numbers, parity with PyTorch in float32, exact resume
  after SIGKILL). Set before the test's fixtures are made."""
  _compile_quickly(item.get_closest_marker("xla_default") is None)


def tiny_gan(label_smoothing: float = 0.0) -> steps.GAN:
  return steps.GAN(Generator(32, 1, ngf=8), Discriminator(32, ndf=8), steps.Adam(), steps.Adam(),
                   nz=16, label_smoothing=label_smoothing)


def tiny_config(num_steps: int):
  """The embedded default at width 8, batch 16, num_steps steps, rows every 2 steps, grids and
  checkpoints every 3, one step per dispatch, no evaluator (evaluation_test.py has its own)."""
  config = default.get_config()
  config.ngf = config.ndf = 8
  config.batch_size = 16
  config.num_train_steps = num_steps
  config.log_every_steps = 2
  config.checkpoint_every_steps = 3
  config.sample_every_steps = 3
  config.num_sample_images = 4
  config.evaluator = ""
  config.steps_per_dispatch = 1
  return config


def folder_run_config(images: pathlib.Path, **fields):
  """tiny_config(4) on a folder of RGB images, rows and checkpoints every 2 steps, with fields
  set."""
  config = tiny_config(4)
  config.dataset, config.data_dir, config.channels = "imagefolder", str(images), 3
  config.checkpoint_every_steps = config.log_every_steps = 2
  for field, value in fields.items():
    config[field] = value
  return config


@pytest.fixture(scope="session")
def folder_run(tmp_path_factory) -> pathlib.Path:
  """A folder holding images/ (40 images) and run/ (folder_run_config trained without G's EMA:
  checkpoints 2 and 4); tests copy it before changing it."""
  base = tmp_path_factory.mktemp("folder_run")
  images = make_image_folder(base / "images", count=40, size=(40, 40))
  train.train_and_evaluate(folder_run_config(images, g_ema_decay=0.0), str(base / "run"))
  return base


def truncate_checkpoint_arrays(step_dir: pathlib.Path) -> None:
  """Cuts every array file of a checkpoint step to 10 bytes (a damaged checkpoint)."""
  for path in step_dir.rglob("*"):
    if path.is_file() and path.parent.name == "d":
      with open(path, "r+b") as f:
        f.truncate(10)


def trees_close(a, b, rtol: float = 0.0, atol: float = 0.0) -> bool:
  """Whether two pytrees have the same structure, shapes and dtypes, and leaves equal within
  rtol/atol (exactly equal by default; NaN equals NaN)."""
  if jax.tree.structure(a) != jax.tree.structure(b):
    return False
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    x, y = np.asarray(x), np.asarray(y)
    if x.dtype != y.dtype or x.shape != y.shape:
      return False
    if not np.allclose(x, y, rtol=rtol, atol=atol, equal_nan=True):
      return False
  return True


@pytest.fixture
def gan() -> steps.GAN:
  return tiny_gan()


@pytest.fixture
def state(gan) -> steps.TrainState:
  return steps.init_train_state(gan, 0)


@pytest.fixture
def real_batch() -> np.ndarray:
  return np.random.default_rng(0).integers(0, 256, (4, 32, 32, 1), dtype=np.uint8)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache_dir(tmp_path_factory):
  """Decoded-image caches of the tests (and their subprocesses) go to a temp folder; the tests
  and their subprocesses (main.py runs, benchmarks) share one JAX compilation cache, new for
  the session (and shared by pytest-xdist's workers), so that the same program is compiled
  once rather than by every process."""
  if os.environ.get("PYTEST_XDIST_WORKER"):  # the workers' temp folders share a parent
    xla_cache = tmp_path_factory.getbasetemp().parent / "xla_cache"
    xla_cache.mkdir(exist_ok=True)
  else:
    xla_cache = tmp_path_factory.mktemp("xla_cache")
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg_cache")))
    patch.setenv("JAX_COMPILATION_CACHE_DIR", str(xla_cache))
    patch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    # This process's programs too (JAX read the variables above when it was imported).
    jax.config.update("jax_compilation_cache_dir", str(xla_cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    yield


jit_train_step = jax.jit(steps.train_step, static_argnums=0)
jit_d_step = jax.jit(steps.d_step, static_argnums=0)
jit_g_step = jax.jit(steps.g_step, static_argnums=(0, 2))
jit_apply_train = jax.jit(steps._apply_train, static_argnums=0)  # pylint: disable=protected-access


def random_inception_state_dict(seed: int = 0) -> dict[str, np.ndarray]:
  """pytorch-fid's key layout with random weights, made from the Flax shapes; kernels scaled
  so that activations keep their size through the 94 layers."""
  rng = np.random.default_rng(seed)
  out = {}
  for collection, tree in inception.abstract_variables().items():
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
      names = [p.key for p in path]
      prefix = ".".join(names[:-1])
      if names[-1] == "kernel":
        h, w, i, o = leaf.shape
        out[f"{prefix}.weight"] = (rng.normal(size=(o, i, h, w)) * np.sqrt(2.0 / (h * w * i))
                                   ).astype(np.float32)
      elif names[-1] == "scale":
        out[f"{prefix}.weight"] = rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
      elif names[-1] == "bias":
        out[f"{prefix}.bias"] = rng.normal(0, 0.1, leaf.shape).astype(np.float32)
      elif names[-1] == "mean":
        out[f"{prefix}.running_mean"] = rng.normal(0, 0.1, leaf.shape).astype(np.float32)
      else:
        out[f"{prefix}.running_var"] = rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
  out["fc.weight"] = np.zeros((1008, 2048), np.float32)
  out["fc.bias"] = np.zeros((1008,), np.float32)
  return out


def make_image_folder(root: pathlib.Path, count: int = 12, size=(178, 218),
                      seed: int = 1) -> pathlib.Path:
  """`count` random RGB images, CelebA-shaped by default, as JPEG and PNG in nested folders."""
  rng = np.random.default_rng(seed)
  for i in range(count):
    sub = root / ("a" if i % 2 else "b") / ("deep" if i % 3 == 0 else "")
    sub.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(sub / f"{i:06d}.{'jpg' if i % 2 else 'png'}")
  return root
