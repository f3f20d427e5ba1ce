"""The device a run trains on: what it is (logged at the start of every run), a CPU build of
JAX on a machine with a GPU, XLA's deterministic GPU algorithms (config.deterministic), and
running out of its memory (one line naming what ran out and what to lower).

XLA reads its flags once, when JAX starts its backends: the determinism setting goes into
XLA_FLAGS before that, or it cannot take effect in this process. XLA ends the process on a
flag it does not know, so every flag the project puts there is first tried on the installed
jaxlib (`require_xla_flags`).
"""

import contextlib
import importlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence

import jax
from absl import logging

from dcgan_jax import image_cache
from dcgan_jax.errors import UsageError

DETERMINISTIC_FLAG = "--xla_gpu_deterministic_ops"
# Pinned GPU autotuning (benchmarks/gpu_report.py): one process writes the algorithms XLA's
# autotuner picked, later processes take them from that file instead of measuring again.
AUTOTUNE_DUMP_FLAG = "--xla_gpu_dump_autotune_results_to"
AUTOTUNE_LOAD_FLAG = "--xla_gpu_load_autotune_results_from"
AUTOTUNE_COMPLETE_FLAG = "--xla_gpu_require_complete_aot_autotune_results"  # none measured anew
# N CPU devices in one process (benchmarks/scaling.py, the tests of sharding).
HOST_DEVICES_FLAG = "--xla_force_host_platform_device_count"
# Every flag the project writes into XLA_FLAGS, anywhere (a run, the benchmarks, the report).
PROJECT_XLA_FLAGS = (DETERMINISTIC_FLAG, AUTOTUNE_DUMP_FLAG, AUTOTUNE_LOAD_FLAG,
                     AUTOTUNE_COMPLETE_FLAG, HOST_DEVICES_FLAG)
_FLAG_PROBE = "import jax; jax.devices()"
_FLAG_PROBE_TIMEOUT_S = 120
# Where an NVIDIA driver shows itself on Linux, also to a process that has no CUDA libraries.
_NVIDIA_DRIVER_FILES = ("/proc/driver/nvidia/version", "/dev/nvidiactl")
GPU_INSTALL = "pip install -e '.[cuda12]' (CUDA 12) or -e '.[cuda13]' (CUDA 13)"


def _flag_value(xla_flags: str) -> bool:
  """Returns the last --xla_gpu_deterministic_ops value in an XLA_FLAGS string (False if none)."""
  value = False
  for flag in xla_flags.split():
    name, _, given = flag.partition("=")
    if name == DETERMINISTIC_FLAG:
      value = given.lower() in ("", "true", "1")
  return value


def backends_started() -> bool | None:
  """Tells whether JAX has started its backends (XLA has read XLA_FLAGS); None where this jax
  cannot say. JAX has no public API for it: its private one is used where it exists, and a
  jax without it gives None (a warning where it matters), never an ImportError."""
  try:
    xla_bridge = importlib.import_module("jax._src.xla_bridge")
    return bool(xla_bridge.backends_are_initialized())
  except (ImportError, AttributeError):
    return None


def set_deterministic(deterministic: bool) -> bool:
  """Makes XLA's GPU kernels deterministic (or not) for this process: the same inputs give the
  same bits, so a seed fixes a run and a resumed run equals an uninterrupted one, at the cost
  of XLA's fastest nondeterministic GPU algorithms. CPUs and TPUs are deterministic either way.

  Returns the setting in effect. XLA reads its flags once, when JAX starts: where JAX already
  runs on a GPU with the other setting (a notebook whose kernel used JAX before, a second
  run in one process), the other setting stays in effect and one warning says what is then not
  guaranteed and how to get it.
  """
  current = os.environ.get("XLA_FLAGS", "")
  if _flag_value(current) == deterministic:
    return deterministic
  started = backends_started()
  if started:
    if jax.default_backend() != "gpu":
      return deterministic  # nothing to change: only XLA's GPU kernels read the flag
    in_effect = _flag_value(current)
    logging.warning(
        "config.deterministic=%s cannot take effect: JAX already runs on the GPU with "
        "XLA_FLAGS=%r (XLA reads them once, at start-up), so this run trains with "
        "deterministic=%s%s; for %s, start a fresh process (restart the notebook's kernel) "
        "and train before anything else uses JAX, or start it with XLA_FLAGS='%s=%s'",
        deterministic, current, in_effect,
        ": reruns and resumes are not bitwise equal" if not in_effect else
        " (XLA's slower deterministic kernels)",
        "bitwise-equal reruns and resumes" if deterministic else "the fastest kernels",
        DETERMINISTIC_FLAG, str(deterministic).lower())
    return in_effect
  if started is None:
    logging.warning("jax %s cannot say whether its backends have started: %s=%s is written "
                    "into XLA_FLAGS and takes effect only if they have not", jax.__version__,
                    DETERMINISTIC_FLAG, str(deterministic).lower())
  flag = f"{DETERMINISTIC_FLAG}={str(deterministic).lower()}"
  require_xla_flags([flag], f"config.deterministic={deterministic}")
  kept = [f for f in current.split() if f.partition("=")[0] != DETERMINISTIC_FLAG]
  os.environ["XLA_FLAGS"] = " ".join(kept + [flag])
  return deterministic


def _jaxlib_version() -> str:
  try:
    return importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    return "unknown"


def _flag_cache_path() -> str:
  return os.path.join(image_cache.default_cache_dir(), "xla_flags.json")


def _read_flag_cache() -> dict:
  """{jaxlib version: {flag name: known}} as kept; {} for a missing or damaged file."""
  try:
    with open(_flag_cache_path()) as f:
      cache = json.load(f)
  except (OSError, ValueError):
    return {}
  return cache if isinstance(cache, dict) else {}


def _write_flag_cache(cache: dict) -> None:
  """Keeps the answers for the next process; a cache that cannot be written is only slower."""
  path = _flag_cache_path()
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=os.path.dirname(path), delete=False,
                                     suffix=".tmp") as f:
      json.dump(cache, f, sort_keys=True)
    os.replace(f.name, path)
  except OSError:
    with contextlib.suppress(OSError, UnboundLocalError):
      os.unlink(f.name)


def _xla_accepts(flags: Sequence[str]) -> bool:
  """Tells whether a fresh process whose XLA_FLAGS hold `flags` starts JAX (on the CPU: every
  XLA flag is parsed whatever the backend, and no accelerator is touched)."""
  env = dict(os.environ, XLA_FLAGS=" ".join(flags), JAX_PLATFORMS="cpu")
  try:
    probe = subprocess.run([sys.executable, "-c", _FLAG_PROBE], env=env, capture_output=True,
                           timeout=_FLAG_PROBE_TIMEOUT_S, check=False)
  except subprocess.TimeoutExpired:
    return False
  return probe.returncode == 0


def unknown_xla_flags(flags: Sequence[str]) -> list[str]:
  """The names of `flags` ('--name=value', or '--name' for a boolean) that the installed
  jaxlib's XLA does not take, each tried with its value in fresh processes (XLA ends a process
  on a flag it does not know in XLA_FLAGS); answers are kept per jaxlib version and flag name
  in the user cache."""
  by_name = {f.partition("=")[0]: f for f in flags}
  cache = _read_flag_cache()
  version = _jaxlib_version()
  known = cache.get(version) if isinstance(cache.get(version), dict) else {}
  untried = [n for n in by_name if not isinstance(known.get(n), bool)]
  if untried:
    if _xla_accepts([by_name[n] for n in untried]):
      known.update(dict.fromkeys(untried, True))
    elif len(untried) == 1 and not _xla_accepts([]):
      raise RuntimeError(f"cannot try XLA flags: `{sys.executable} -c '{_FLAG_PROBE}'` fails "
                         "with no XLA_FLAGS at all")
    else:
      known.update({n: _xla_accepts([by_name[n]]) for n in untried})
    _write_flag_cache({**cache, version: known})
  return [n for n in by_name if not known[n]]


def require_xla_flags(flags: Sequence[str], what: str) -> None:
  """Raises a one-line UsageError naming the first of `flags` that the installed jaxlib does
  not know (before it goes into XLA_FLAGS, where XLA would end the process)."""
  unknown = unknown_xla_flags(flags)
  if unknown:
    raise UsageError(f"{what} needs XLA flag {unknown[0]}, which jaxlib {_jaxlib_version()} "
                     "does not know (XLA would stop at start-up): install a jaxlib that has it")


def gpu_driver_present() -> bool:
  """Tells whether this machine shows an NVIDIA driver (whatever JAX was installed)."""
  return any(os.path.exists(path) for path in _NVIDIA_DRIVER_FILES)


def describe() -> str:
  """One line: the devices JAX trains on, their backend and JAX's version, e.g. '1 x NVIDIA
  H100 80GB HBM3 (gpu), jax 0.11.2'."""
  devices = jax.devices()
  kinds = sorted({d.device_kind for d in devices})
  processes = f" in {jax.process_count()} processes" if jax.process_count() > 1 else ""
  return (f"{len(devices)} x {', '.join(kinds)} ({jax.default_backend()}){processes}, "
          f"jax {jax.__version__}")


def cpu_build_warning() -> str | None:
  """A warning where JAX runs on the CPU of a machine with an NVIDIA GPU (a CPU build of JAX,
  or a CUDA build that found no usable GPU); None otherwise."""
  if jax.default_backend() != "cpu" or not gpu_driver_present():
    return None
  return ("this machine has an NVIDIA GPU but JAX runs on the CPU (jax's CPU build is "
          f"installed, or its CUDA build found no usable GPU): for the GPU, {GPU_INSTALL}")


def is_out_of_memory(e: BaseException) -> bool:
  """Tells whether an error is the device (or the host) running out of memory: XLA's
  RESOURCE_EXHAUSTED at compilation or at run time, or Python's MemoryError."""
  if isinstance(e, MemoryError):
    return True
  return (type(e).__name__ in ("JaxRuntimeError", "XlaRuntimeError")
          and "RESOURCE_EXHAUSTED" in str(e) and "memory" in str(e).lower())


def out_of_memory_line(e: BaseException, what: str, lower: str) -> str:
  """One line: the device, what ran out of its memory, how much was asked, what to lower."""
  asked = re.search(r"allocating (\d+) bytes", str(e))
  amount = f"; {int(asked.group(1)) / 2**30:,.1f} GiB asked at once" if asked else ""
  kinds = ", ".join(sorted({d.device_kind for d in jax.local_devices()}))
  return (f"out of memory on {kinds} ({jax.default_backend()}) {what}{amount}: lower {lower}")


@contextlib.contextmanager
def out_of_memory_as_usage_error(what: "str | Callable[[], str]", lower: str):
  """Turns running out of memory inside the block into a UsageError of out_of_memory_line (what:
  a text, or a function giving it at the moment of the error); other errors pass."""
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except  # only memory errors are caught
    if not is_out_of_memory(e):
      raise
    raise UsageError(out_of_memory_line(e, what() if callable(what) else what, lower)) from None
