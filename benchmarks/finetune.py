"""Fine-tuning against training from scratch, offline, on the embedded digits.

For each seed: the embedded default (R1, G's EMA) trains on some digits (--pretrain-classes,
0-4), then two runs train on the others (--classes, 5-9) for the same number of steps: one from
scratch, one from the first run's networks (config.init_from, its G's EMA as G; with
--freeze-d-layers N, D's first N blocks frozen: FreezeD). Every run on --classes evaluates every
--eval-every steps (classifier FID of G's EMA on --eval-samples images against the classifier's
training digits of its own classes). One JSON line per seed: the scratch run's final FID; the
first evaluated step (and training seconds, metrics.csv's) at which the fine-tuned run reaches
it; both runs' final FID after the same steps and their training seconds. Each run is
`python main.py` in its own process, with G's EMA over about 100 steps (--g-ema-decay 0.99: a
fine-tuned run's EMA starts at the other digits' G, and the default's 0.999 takes 1,000 steps to
forget it). Workdirs already in --keep are resumed (finished ones only read), so a second call
with another --freeze-d-layers trains only its fine-tuned runs.

  python benchmarks/finetune.py --seeds 0,1 --keep runs/finetune --out finetune.jsonl
  python benchmarks/finetune.py --seeds 0,1 --keep runs/finetune --freeze-d-layers 2
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
METRIC = "ema_classifier_fid"  # the default's best_metric: G's EMA
ALSO = "classifier_fid"  # G's own


def _train(workdir: str, seed: int, steps: int, classes: str, args, eval_every: int,
           *extra: str) -> float:
  """Runs main.py to completion (a workdir's own run resumes); returns its wall seconds."""
  cmd = [sys.executable, os.path.join(ROOT, "main.py"), f"--workdir={workdir}",
         f"--config.seed={seed}", f"--config.num_train_steps={steps}",
         f"--config.classes={classes}", f"--config.eval_every_steps={eval_every}",
         f"--config.eval_num_samples={args.eval_samples}",
         f"--config.checkpoint_every_steps={steps}",
         f"--config.sample_every_steps={steps}", f"--config.g_ema_decay={args.g_ema_decay}",
         *args.tiny_flags, *extra]
  t0 = time.perf_counter()
  subprocess.run(cmd, check=True, capture_output=True, text=True)
  return time.perf_counter() - t0


def _curve(workdir: str, metric: str = METRIC) -> list[tuple[int, float, float]]:
  """(step, training seconds up to it, metric) of each evaluated row."""
  from dcgan_jax import metrics  # pylint: disable=g-import-not-at-top
  out, seconds = [], 0.0
  for row in metrics.read_metrics(os.path.join(workdir, "metrics.csv")):
    seconds += float(row["seconds"])
    if row.get(metric):
      out.append((int(float(row["step"])), seconds, float(row[metric])))
  return out


def measure(seed: int, args, root: str) -> dict:
  pretrained = os.path.join(root, f"pretrain_{seed}")
  scratch = os.path.join(root, f"scratch_{seed}")
  frozen = args.freeze_d_layers
  tuned = os.path.join(root, f"finetune_freeze{frozen}_{seed}" if frozen else f"finetune_{seed}")
  walls = {"pretrain": _train(pretrained, seed, args.pretrain_steps, args.pretrain_classes,
                              args, args.pretrain_eval_every)}
  walls["scratch"] = _train(scratch, seed, args.steps, args.classes, args, args.eval_every)
  walls["finetune"] = _train(tuned, seed, args.steps, args.classes, args, args.eval_every,
                             f"--config.init_from={pretrained}", "--config.init_g_ema=True",
                             f"--config.freeze_d_layers={frozen}")
  scratch_curve, tuned_curve = _curve(scratch), _curve(tuned)
  target = scratch_curve[-1][2]
  reached = next(((s, t) for s, t, v in tuned_curve if v <= target), (None, None))
  return {"benchmark": "finetune", "seed": seed, "metric": METRIC,
          "pretrain_classes": args.pretrain_classes, "pretrain_steps": args.pretrain_steps,
          "pretrain_final": round(_curve(pretrained)[-1][2], 3),
          "classes": args.classes, "steps": args.steps, "freeze_d_layers": frozen,
          "scratch_final": round(target, 3),
          "finetune_final": round(tuned_curve[-1][2], 3),
          "finetune_steps_to_scratch_final": reached[0],
          "finetune_train_s_to_scratch_final": None if reached[1] is None
          else round(reached[1], 1),
          "scratch_train_s": round(scratch_curve[-1][1], 1),
          "finetune_train_s": round(tuned_curve[-1][1], 1),
          "scratch_curve": [(s, round(v, 2)) for s, _, v in scratch_curve],
          "finetune_curve": [(s, round(v, 2)) for s, _, v in tuned_curve],
          f"scratch_curve_{ALSO}": [(s, round(v, 2)) for s, _, v in _curve(scratch, ALSO)],
          f"finetune_curve_{ALSO}": [(s, round(v, 2)) for s, _, v in _curve(tuned, ALSO)],
          "wall_s": {k: round(v, 1) for k, v in walls.items()},
          "date": time.strftime("%Y-%m-%d")}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", default="0,1")
  parser.add_argument("--steps", type=int, default=7800,
                      help="of the runs on --classes (the default's 7,800)")
  parser.add_argument("--pretrain-steps", type=int, default=7800)
  parser.add_argument("--pretrain-classes", default="0,1,2,3,4")
  parser.add_argument("--classes", default="5,6,7,8,9")
  parser.add_argument("--eval-every", type=int, default=250)
  parser.add_argument("--pretrain-eval-every", type=int, default=1000)
  parser.add_argument("--eval-samples", type=int, default=2000)
  parser.add_argument("--freeze-d-layers", type=int, default=0,
                      help="the fine-tuned runs' config.freeze_d_layers (FreezeD)")
  parser.add_argument("--g-ema-decay", type=float, default=0.99,
                      help="every run's G's EMA (0.99: over about 100 steps, for short runs; "
                           "the default's 0.999 lags 1,000 steps behind G)")
  parser.add_argument("--out", default="", help="also append the JSON lines to this file")
  parser.add_argument("--keep", default="", help="a folder to keep the workdirs in")
  parser.add_argument("--tiny", action="store_true",
                      help="narrow networks and small batches (a smoke test of this script)")
  args = parser.parse_args()
  args.tiny_flags = (["--config.ngf=8", "--config.ndf=8", "--config.batch_size=16",
                      "--config.log_every_steps=5"] if args.tiny else [])
  try:
    seeds = [int(s) for s in args.seeds.split(",")]
  except ValueError:
    parser.error(f"--seeds {args.seeds!r}: comma-separated integers")
  if min(args.steps, args.pretrain_steps, args.eval_every, args.pretrain_eval_every,
         args.eval_samples) < 1:
    parser.error("--steps, --pretrain-steps, --eval-every, --pretrain-eval-every and "
                 "--eval-samples must be >= 1")
  root = args.keep or tempfile.mkdtemp(prefix="dcgan_jax_finetune_")
  for seed in seeds:
    line = json.dumps(measure(seed, args, root))
    print(line, flush=True)
    if args.out:
      with open(args.out, "a") as f:
        f.write(line + "\n")


if __name__ == "__main__":
  main()
