"""The error type for bad input: a config value, a path or a dataset name."""


class UsageError(ValueError):
  """Bad input from the user; its message is one line that names the value.

  `main.py` prints it and exits with status 2, before anything is written.
  """
