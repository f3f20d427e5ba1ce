"""Image quality of GAN settings on the embedded digits, over seeds, at equal training time.

Each setting is the embedded default (configs/default.py) with a few fields changed: 'default'
is it as it ships (R1 and G's EMA), 'dcgan' the paper's DCGAN without R1 (the embedded default
before R1), the losses and regularisers are variants of 'dcgan', and 'r1' adds R1 to it (the
same run as 'default'). A run trains the setting for its step budget, the number of its steps
that take as long as the paper's DCGAN's 10,000 (from COST, each setting's time per step
relative to dcgan's, measured by --calibrate), evaluating every 1,000 steps and at the end; G's
EMA (decay 0.999) is kept and evaluated alongside in every run (it never changes G's training).
One JSON line per run: setting, seed, steps, train_s (metrics.csv's training seconds:
evaluation and compilation left out), wall_s, and for G and for its EMA: best and final
classifier FID, the best's step, the final KID, classes present and the rarest class's share
(final).

  python benchmarks/quality.py --setting default --seed 0 --out results.jsonl
  python benchmarks/quality.py --calibrate            # COST: ms per step of every setting
  python benchmarks/quality.py --calibrate --setting r1_lsgan   # of one, against dcgan
  python benchmarks/quality.py --table results.jsonl  # mean and standard deviation per setting
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DCGAN_STEPS = 10_000  # the paper's DCGAN's length: the time every setting gets
EMA_DECAY = 0.999

DCGAN = {"r1_weight": 0.0}  # the embedded default without R1: the paper's DCGAN

# Fields each setting changes. WGAN-GP's learning rates, betas and D updates are its paper's
# (Gulrajani et al. 2017, Algorithm 1); the others keep the default's Adam (2e-4, 0.5).
SETTINGS = {
    "default": {},
    "dcgan": DCGAN,
    "hinge": {**DCGAN, "loss": "hinge"},
    "lsgan": {**DCGAN, "loss": "lsgan"},
    "wgan_gp": {**DCGAN, "loss": "wgan_gp", "g_learning_rate": 1e-4, "d_learning_rate": 1e-4,
                "adam_b1": 0.0, "adam_b2": 0.9, "d_steps_per_g_step": 5},
    "spectral_norm": {**DCGAN, "spectral_norm": True},
    "r1": {"r1_weight": 1.0},
    "diffaugment": {**DCGAN, "diffaugment": "color,translation,cutout"},
    "diffaugment_translation": {**DCGAN, "diffaugment": "translation"},
    # The default's R1 with the settings that did best next to it.
    "r1_lsgan": {"r1_weight": 1.0, "loss": "lsgan"},
    "r1_diffaugment": {"r1_weight": 1.0, "diffaugment": "color,translation,cutout"},
}

# Time per step relative to dcgan's (python benchmarks/quality.py --calibrate, 2026-12-01,
# 2-core AMD EPYC VM, jax 0.10.2; benchmarks/NOTES.md; r1_lsgan and r1_diffaugment later that
# day, the machine otherwise idle). The default is R1's.
COST = {"dcgan": 1.0, "hinge": 1.018, "lsgan": 0.985, "wgan_gp": 6.199,
        "spectral_norm": 1.009, "r1": 1.287, "diffaugment": 1.02,
        "diffaugment_translation": 1.079, "r1_lsgan": 1.272, "r1_diffaugment": 1.305}
COST["default"] = COST["r1"]


def config_of(setting: str, seed: int, steps: int | None = None, **extra):
  """The embedded default with the setting's fields, the seed, G's EMA, its step budget and any
  extra fields (the tests' small models)."""
  from dcgan_jax import api  # pylint: disable=g-import-not-at-top
  fields = dict(SETTINGS[setting])
  fields.update(seed=seed, g_ema_decay=EMA_DECAY,
                num_train_steps=steps or budget(setting), **extra)
  return api.get_config("default", **fields)


def budget(setting: str) -> int:
  """Steps of a setting that take as long as dcgan's DCGAN_STEPS (to 100 steps)."""
  return max(100, int(round(DCGAN_STEPS / COST[setting] / 100)) * 100)


def summarize(rows: list[dict], prefix: str = "") -> dict:
  """Best and final classifier FID (G's, or its EMA's with prefix 'ema_') of metrics.csv rows."""
  evaluated = [r for r in rows if r.get(f"{prefix}classifier_fid")]
  fids = [float(r[f"{prefix}classifier_fid"]) for r in evaluated]
  best = min(range(len(fids)), key=fids.__getitem__)
  last = evaluated[-1]
  return {"best_fid": fids[best], "best_step": int(evaluated[best]["step"]),
          "final_fid": fids[-1], "final_kid": float(last[f"{prefix}classifier_kid"]),
          "classes_present": int(float(last[f"{prefix}classes_present"])),
          "min_class_fraction": float(last[f"{prefix}min_class_fraction"])}


def run(setting: str, seed: int, workdir: str, steps: int | None = None, **extra) -> dict:
  """Trains one setting and seed in workdir (resumed if it holds part of the run, nothing if it
  holds all of it); its line."""
  from dcgan_jax import api, metrics  # pylint: disable=g-import-not-at-top
  config = config_of(setting, seed, steps, **extra)
  t0 = time.perf_counter()
  api.fit(config, workdir)
  wall = time.perf_counter() - t0
  rows = metrics.read_metrics(os.path.join(workdir, "metrics.csv"))
  return {"setting": setting, "seed": seed, "steps": config.num_train_steps,
          "train_s": round(sum(float(r["seconds"]) for r in rows), 1), "wall_s": round(wall, 1),
          "g": summarize(rows), "ema": summarize(rows, "ema_")}


def calibrate(settings: list[str], steps: int, rounds: int) -> list[dict]:
  """Milliseconds per step of each setting's train_steps (K=steps per call, batch 64, the
  default's sizes), the median of `rounds` calls after a compiling one, settings in turn;
  relative to the first setting's."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from dcgan_jax import configuration, steps as steps_lib  # pylint: disable=g-import-not-at-top
  runs = {}
  for name in settings:
    config = config_of(name, 0, 1)
    gan = steps_lib.gan_from_config(config)
    per_step = configuration.images_per_step(config)
    images = np.random.default_rng(0).integers(
        0, 256, (steps, per_step, 32, 32, 1), np.uint8)
    fn = jax.jit(steps_lib.train_steps, static_argnums=0)
    state = steps_lib.init_train_state(gan, 0)
    jax.block_until_ready(fn(gan, state, images))
    runs[name] = (fn, gan, state, images, [])
  for _ in range(rounds):
    for name, (fn, gan, state, images, times) in runs.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn(gan, state, images))
      times.append((time.perf_counter() - t0) / steps * 1000)
  base = statistics.median(runs[settings[0]][4])
  return [{"setting": name, "ms_per_step": round(statistics.median(t[4]), 2),
           "relative": round(statistics.median(t[4]) / base, 3)} for name, t in runs.items()]


def table(lines: list[dict]) -> str:
  """A markdown table: per setting (G, and G's EMA), mean +/- standard deviation over seeds."""
  out = ["| setting | seeds | steps | best FID | final FID | final KID | classes | rarest class |",
         "|---|---|---|---|---|---|---|---|"]

  def cell(values, fmt="{:.1f}"):
    if len(values) == 1:
      return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} +/- {fmt.format(statistics.stdev(values))}"

  for setting in dict.fromkeys(line["setting"] for line in lines):
    runs = [line for line in lines if line["setting"] == setting]
    for who, label in (("g", setting), ("ema", f"{setting}, G's EMA")):
      s = [r[who] for r in runs]
      out.append(
          f"| {label} | {','.join(str(r['seed']) for r in runs)} | {runs[0]['steps']:,} | "
          f"{cell([x['best_fid'] for x in s])} | {cell([x['final_fid'] for x in s])} | "
          f"{cell([x['final_kid'] for x in s], '{:.0f}')} | "
          f"{min(x['classes_present'] for x in s)} | "
          f"{cell([100 * x['min_class_fraction'] for x in s])}% |")
  return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--setting", choices=sorted(SETTINGS))
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--steps", type=int, default=None, help="instead of the setting's budget")
  parser.add_argument("--workdir", default=None, help="default: a temporary folder")
  parser.add_argument("--out", default=None, help="also append the JSON line to this file")
  parser.add_argument("--calibrate", action="store_true")
  parser.add_argument("--calibrate-steps", type=int, default=25)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--table", default=None, help="a file of JSON lines to tabulate")
  args = parser.parse_args(argv)
  if args.table:
    with open(args.table) as f:
      print(table([json.loads(line) for line in f if line.strip()]))
    return 0
  if args.calibrate:
    names = ["dcgan"] + ([args.setting] if args.setting else
                         [name for name in SETTINGS if name not in ("dcgan", "default")])
    for line in calibrate(names, args.calibrate_steps, args.rounds):
      print(json.dumps(line), flush=True)
    return 0
  if not args.setting:
    parser.error("one of --setting, --calibrate or --table is needed")
  with tempfile.TemporaryDirectory() as tmp:
    line = run(args.setting, args.seed, args.workdir or tmp, args.steps)
  print(json.dumps(line), flush=True)
  if args.out:
    with open(args.out, "a") as f:
      f.write(json.dumps(line) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
