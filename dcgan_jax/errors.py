"""Error types whose message is one line for the user: main.py prints it without a traceback;
the one way a failed write becomes such a line; and how a message names what the user gave
(`--workdir=...` to the command line, `workdir=...` to the Python API)."""

import contextlib
import contextvars
import json
import os
from collections.abc import Callable

_IN_API = contextvars.ContextVar("dcgan_jax_in_api", default=False)


class UsageError(ValueError):
  """Bad input from the user; its message is one line that names the value.

  `main.py` prints it and exits with status 2, before anything is written.
  """


class RunError(RuntimeError):
  """A run that cannot go on (training diverged, no readable checkpoint); one line naming
  the step or the folder. `main.py` prints it and exits with status 1; what the run wrote
  before stays as it was."""


class DivergedError(RunError):
  """Training met a value that is not finite; nothing of it was saved."""


@contextlib.contextmanager
def writing(path: str, undo: Callable[[], None] | None = None):
  """Turns a failed write in the block (a full disk, a quota, a read-only or failing file system)
  into a RunError naming the path and the errno, after `undo` (best effort) takes back what the
  write left half done: a temporary file, a partial row."""
  try:
    yield
  except OSError as e:
    if undo is not None:
      with contextlib.suppress(OSError):
        undo()
    raise RunError(write_failure(path, e)) from None


def write_json(path: str, value, **dump_options) -> None:
  """Writes value as JSON to path atomically (a temporary file, then a rename): a reader sees
  the old file or the new one, never half of one; a failed write is a RunError (writing)."""
  tmp = f"{path}.tmp"
  with writing(path, undo=lambda: os.remove(tmp)):
    with open(tmp, "w") as f:
      json.dump(value, f, **dump_options)
    os.replace(tmp, path)


def write_failure(path: str, e: OSError | None, errno_: int | None = None,
                  kept: str = "what was written before it is kept") -> str:
  """One line for a write that failed: the path, the reason and the errno, what is kept and
  what to do."""
  number = errno_ if errno_ is not None else getattr(e, "errno", None)
  reason = (getattr(e, "strerror", None) or (os.strerror(number) if number else None)
            or str(e))
  return (f"cannot write {path}: {reason}" + (f" (errno {number})" if number else "")
          + f"; {kept}: make room and run the same command again (a run resumes from its "
            "newest complete checkpoint)")


@contextlib.contextmanager
def api_names():
  """Inside the block, messages name the Python API's arguments instead of the CLI's flags."""
  token = _IN_API.set(True)
  try:
    yield
  finally:
    _IN_API.reset(token)


def given(name: str, value=None) -> str:
  """How a message names an argument (with the value given, where there is one): `--workdir='x'`
  on the command line, `workdir='x'` in the Python API (inside api_names)."""
  if _IN_API.get():
    return name if value is None else f"{name}={value!r}"
  return f"--{name}" if value is None else f"--{name}={value!r}"


def given_config(field: str, value) -> str:
  """How a message names a config override: `--config.seed=3` on the command line,
  `config.seed=3` in the Python API (inside api_names)."""
  return f"config.{field}={value!r}" if _IN_API.get() else f"--config.{field}={value}"
