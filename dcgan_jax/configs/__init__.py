"""The presets, installed with the package: default.py (the embedded default, every field
documented) and the presets built on it. `--config NAME` and `get_config(NAME)` take a preset's
name; a clone's configs/ folder holds one-line files naming the same presets."""

import os

PRESETS = ("default", "conditional", "celeba", "mnist", "cifar10", "imagefolder")


def preset_path(name: str) -> str:
  """The file of a preset (one of PRESETS)."""
  if name not in PRESETS:
    raise ValueError(f"preset {name!r} is not one of {', '.join(PRESETS)}")
  return os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
