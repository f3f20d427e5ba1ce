"""metrics.csv (one row per logged step) and the loss plot."""

import csv
import os

import numpy as np

COLUMNS = ("step", "epoch", "loss_d", "loss_g", "d_x", "d_g_z1", "d_g_z2",
           "images_per_s", "seconds")


class MetricsWriter:
  """Appends rows to `path`; opening it for a run resumed at `step` drops rows of
  later steps (they are recomputed) and keeps everything up to `step`."""

  def __init__(self, path: str, resume_step: int = 0):
    self.path = path
    rows = read_metrics(path) if os.path.exists(path) else []
    kept = [r for r in rows if int(float(r["step"])) <= resume_step]
    tmp = f"{path}.tmp"
    with open(tmp, "w", newline="") as f:
      writer = csv.DictWriter(f, COLUMNS)
      writer.writeheader()
      writer.writerows(kept)
    os.replace(tmp, path)

  def write(self, row: dict) -> None:
    with open(self.path, "a", newline="") as f:
      csv.DictWriter(f, COLUMNS).writerow({k: _fmt(row[k]) for k in COLUMNS})


def _fmt(value) -> str:
  if isinstance(value, (int, np.integer)):
    return str(int(value))
  return f"{float(value):.6g}"


def read_metrics(path: str) -> list[dict[str, str]]:
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def plot_losses(csv_path: str, png_path: str) -> None:
  """The tutorial's "Generator and Discriminator Loss During Training" plot."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  rows = read_metrics(csv_path)
  step = [int(r["step"]) for r in rows]
  fig, ax = plt.subplots(figsize=(10, 5))
  ax.plot(step, [float(r["loss_g"]) for r in rows], label="G")
  ax.plot(step, [float(r["loss_d"]) for r in rows], label="D")
  ax.set_title("Generator and Discriminator Loss During Training")
  ax.set_xlabel("step")
  ax.set_ylabel("loss")
  ax.legend()
  fig.tight_layout()
  tmp = f"{png_path}.tmp"
  fig.savefig(tmp, format="png", dpi=100)
  plt.close(fig)
  os.replace(tmp, png_path)
