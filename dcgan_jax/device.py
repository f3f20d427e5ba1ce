"""The device a run trains on: what it is (logged at the start of every run), a CPU build of
JAX on a machine with a GPU, XLA's deterministic GPU algorithms (config.deterministic), and
running out of its memory (one line naming what ran out and what to lower).

XLA reads its flags once, when JAX starts its backends: the determinism setting goes into
XLA_FLAGS before that, or it cannot take effect in this process.
"""

import contextlib
import os
import re
from collections.abc import Callable

import jax
from jax._src import xla_bridge

from dcgan_jax.errors import UsageError

DETERMINISTIC_FLAG = "--xla_gpu_deterministic_ops"
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


def set_deterministic(deterministic: bool) -> None:
  """Makes XLA's GPU kernels deterministic (or not) for this process: the same inputs give the
  same bits, so a seed fixes a run and a resumed run equals an uninterrupted one, at the cost
  of XLA's fastest nondeterministic GPU algorithms. CPUs and TPUs are deterministic either way.

  Raises UsageError if JAX already runs on a GPU with the other setting (XLA read its flags
  when it started: XLA_FLAGS must say it before then).
  """
  current = os.environ.get("XLA_FLAGS", "")
  if _flag_value(current) == deterministic:
    return
  if xla_bridge.backends_are_initialized():
    if jax.default_backend() != "gpu":
      return  # nothing to change: only XLA's GPU kernels read the flag
    want = "true" if deterministic else "false"
    raise UsageError(
        f"config.deterministic={deterministic} cannot take effect: JAX already runs on the GPU "
        f"with XLA_FLAGS={current!r}; start the process with "
        f"XLA_FLAGS='{DETERMINISTIC_FLAG}={want}', or set config.deterministic={not deterministic}")
  kept = [f for f in current.split() if f.partition("=")[0] != DETERMINISTIC_FLAG]
  os.environ["XLA_FLAGS"] = " ".join(kept + [f"{DETERMINISTIC_FLAG}={str(deterministic).lower()}"])


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
