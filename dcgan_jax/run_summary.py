"""The end of a run, said once: how it ended, its steps and time, the best and final quality of G
and of its EMA, where its pictures and checkpoints are, and the commands that come next."""

import dataclasses
import math
import os
import sys

from dcgan_jax import checkpoint, metrics
from dcgan_jax import workdir as workdir_lib


@dataclasses.dataclass(frozen=True)
class Quality:
  """A metric's last value and its lowest (the best), each with its step; None if never measured."""
  name: str
  final: tuple[float, int]
  best: tuple[float, int]


def quality(rows: list[dict[str, str]], column: str) -> Quality | None:
  """The final and the best finite value of a metrics.csv column."""
  values = []
  for row in rows:
    try:
      value = float(row.get(column) or "nan")
    except ValueError:
      continue
    if math.isfinite(value):
      values.append((value, int(float(row["step"]))))
  if not values:
    return None
  return Quality(column, values[-1], min(values))


def _duration(seconds: float) -> str:
  minutes, s = divmod(int(round(seconds)), 60)
  hours, m = divmod(minutes, 60)
  return f"{hours} h {m} min {s} s" if hours else f"{m} min {s} s" if m else f"{s} s"


def _command() -> str:
  """How the user started the program: `python main.py` from a clone, else `dcgan-jax`."""
  return "python main.py" if os.path.basename(sys.argv[0]) == "main.py" else "dcgan-jax"


def summary(workdir: str, ended: str, start: int, done: int, total: int, seconds: float,
            metric: str | None, notes: tuple[str, ...] = ()) -> str:
  """The lines that end a run. ended: 'finished', 'stopped by SIGTERM', 'diverged at step N',
  ...; start and done: the steps this run began and ended at; metric: the evaluation's
  best_metric (None without evaluation); notes: what the run could not do as asked."""
  lines = [f"run {ended}: step {done:,} of {total:,} ({done - start:,} steps in this run, "
           f"{_duration(seconds)})"]
  lines += [f"  note: {note}" for note in notes]
  csv_path = os.path.join(workdir, "metrics.csv")
  rows = metrics.read_metrics(csv_path) if os.path.exists(csv_path) else []
  if metric:
    base = metric.removeprefix("ema_")
    for who, column in (("G", base), ("G's EMA", f"ema_{base}")):
      q = quality(rows, column)
      if q is not None:
        lines.append(f"  {column} of {who}: final {q.final[0]:.4g} at step {q.final[1]:,}, best "
                     f"{q.best[0]:.4g} at step {q.best[1]:,}")
  for who, prefix in (("G", ""), ("G's EMA", "ema_")):  # a conditional run the classifier judges
    for column, form in (("class_accuracy", ".4f"), ("classifier_intra_fid", ".4g")):
      q = quality(rows, prefix + column)
      if q is not None:
        lines.append(f"  {prefix}{column} of {who}: final {q.final[0]:{form}} at step "
                     f"{q.final[1]:,}")
  files = [os.path.join(workdir, name) for name in ("samples.png", "losses.png", "quality.png")]
  files = [f for f in files if os.path.exists(f)]
  if files:
    lines.append(f"  pictures: {', '.join(files)}")
  for which in ("latest", "best"):
    folder = workdir_lib.checkpoint_dir(workdir, which)
    steps = checkpoint.step_numbers(folder)
    if steps:
      lines.append(f"  {which} checkpoint: {os.path.join(folder, str(max(steps)))}")
  command, w = _command(), workdir
  lines.append("  next:")
  if done < total:
    lines.append(f"    {command} --workdir {w}   (the same command as this run's resumes it)")
  lines += [f"    {command} --mode sample --workdir {w}",
            f"    {command} --mode eval --workdir {w}",
            f"    {command} --mode serve --workdir {w}"]
  if os.path.isdir(os.path.join(workdir, "tensorboard")):
    lines.append(f"    tensorboard --logdir {w}")
  return "\n".join(lines)
