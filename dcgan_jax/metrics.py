"""metrics.csv (one row per logged step) and the loss plot."""

import csv
import os
from typing import Sequence

import numpy as np

from dcgan_jax import errors

COLUMNS = ("step", "epoch", "loss_d", "loss_g", "d_x", "d_g_z1", "d_g_z2",
           "images_per_s", "seconds")


class MetricsWriter:
  """Appends rows to `path`; opening it for a run resumed at `step` drops rows of
  later steps (they are recomputed) and keeps everything up to `step`.

  The columns are COLUMNS, `train_columns` (training metrics of some settings, e.g.
  d_penalty), any other columns the kept rows already have, then `eval_columns` (evaluation
  metrics, empty in rows without an evaluation)."""

  def __init__(self, path: str, resume_step: int = 0, eval_columns: Sequence[str] = (),
               train_columns: Sequence[str] = ()):
    self.path = path
    rows = read_metrics(path) if os.path.exists(path) else []
    kept = [r for r in rows if int(float(r["step"])) <= resume_step]
    new = list(COLUMNS) + list(train_columns)
    old = [k for r in kept[:1] for k in r if k not in new and k not in eval_columns]
    self.columns = new + old + list(eval_columns)
    tmp = f"{path}.tmp"
    with errors.writing(path, undo=lambda: os.remove(tmp)):
      with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, self.columns, restval="")
        writer.writeheader()
        writer.writerows(kept)
      os.replace(tmp, path)

  def write(self, row: dict) -> None:
    """Appends a row, whole: a write that fails (a full disk) is cut off again."""
    size = os.path.getsize(self.path)
    with errors.writing(self.path, undo=lambda: os.truncate(self.path, size)):
      with open(self.path, "a", newline="") as f:
        csv.DictWriter(f, self.columns, restval="").writerow(
            {k: _fmt(row[k]) for k in self.columns if k in row})


def _fmt(value) -> str:
  if isinstance(value, (int, np.integer)):
    return str(int(value))
  return f"{float(value):.6g}"


def read_metrics(path: str) -> list[dict[str, str]]:
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def _figure(figsize: tuple[float, float]):
  """Makes a figure and its axes without pyplot, so that plotting neither needs nor changes
  matplotlib's backend (a notebook's inline plots keep working)."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=figsize)
  return fig, fig.subplots()


def _save_figure(fig, ax, png_path: str) -> None:
  """Adds the legend and writes the figure as a PNG, atomically."""
  ax.legend()
  fig.tight_layout()
  tmp = f"{png_path}.tmp"
  fig.savefig(tmp, format="png", dpi=100)
  os.replace(tmp, png_path)


def plot_losses(csv_path: str, png_path: str) -> None:
  """Writes the tutorial's "Generator and Discriminator Loss During Training" plot."""
  rows = read_metrics(csv_path)
  step = [int(r["step"]) for r in rows]
  fig, ax = _figure((10, 5))
  ax.plot(step, [float(r["loss_g"]) for r in rows], label="G")
  ax.plot(step, [float(r["loss_d"]) for r in rows], label="D")
  ax.set_title("Generator and Discriminator Loss During Training")
  ax.set_xlabel("step")
  ax.set_ylabel("loss")
  _save_figure(fig, ax, png_path)


def plot_eval(csv_path: str, png_path: str, metric: str, floor: float | None = None) -> bool:
  """Plots `metric` (and its ema_ twin where present) against steps; a dashed line at `floor`
  (the same metric on held-out real images) where given. False if no row has it."""
  rows = read_metrics(csv_path)
  base = metric.removeprefix("ema_")
  series = {}
  for name, label in ((base, "G"), (f"ema_{base}", "G EMA")):
    points = [(int(r["step"]), float(r[name])) for r in rows if r.get(name)]
    if points:
      series[label] = points
  if not series:
    return False
  fig, ax = _figure((8, 4.5))
  for label, points in series.items():
    ax.plot(*zip(*points), marker="o", label=label)
  if floor is not None:
    ax.axhline(floor, color="gray", linestyle="--", label="held-out real images")
  ax.set_yscale("log")
  ax.set_xlabel("step")
  ax.set_ylabel(base)
  ax.set_title(f"{base} during training (lower is better)")
  _save_figure(fig, ax, png_path)
  return True
