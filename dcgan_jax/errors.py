"""Error types whose message is one line for the user: main.py prints it without a traceback."""


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
