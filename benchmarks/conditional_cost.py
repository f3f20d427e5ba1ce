"""What a class-conditional training step costs against an unconditional one, side by side in
one process.

Both training loops (benchmarks/throughput.py's setup_jax: the training loop's dispatch, the
same synthetic batch, random labels for the conditional one) are compiled and warmed up in
this process, then timed in alternating windows (unconditional, conditional, conditional,
unconditional, ...: a drift of the machine's speed weighs on both alike). One JSON line per
setting: the median and the fastest window of each, and their ratios (conditional over
unconditional). On a shared 2-core VM the fastest windows are the ones least disturbed.

  python benchmarks/conditional_cost.py --classes 10 --image-size 64 --batch-size 128 --steps 3
  python benchmarks/conditional_cost.py --classes 10 --image-size 32 --channels 1 --ngf 32 \\
      --ndf 32 --batch-size 64 --steps 25
"""

import argparse
import copy
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import throughput  # noqa: E402  pylint: disable=wrong-import-position


def _parse() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  throughput.add_model_flags(parser)
  parser.add_argument("--steps", type=int, default=3, help="steps per timed window")
  parser.add_argument("--windows", type=int, default=6,
                      help="timed windows of each loop (alternating)")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--steps-per-dispatch", type=int, default=0,
                      help="iterations per jitted call (0: configs/default.py's value)")
  args = parser.parse_args()
  if args.classes < 2:
    parser.error(f"--classes {args.classes}: a conditional GAN has at least 2 classes")
  for name in ("steps", "windows"):
    if getattr(args, name) < 1:
      parser.error(f"--{name} {getattr(args, name)} must be >= 1")
  if args.warmup < 0 or args.steps_per_dispatch < 0:
    parser.error("--warmup and --steps-per-dispatch must be >= 0")
  return args


def main() -> None:
  args = _parse()
  defaults = throughput.default_config()
  args.steps_per_dispatch = args.steps_per_dispatch or defaults.steps_per_dispatch
  from dcgan_jax import device  # pylint: disable=g-import-not-at-top
  device.set_deterministic(defaults.deterministic)  # before JAX starts, as a run sets it
  loops = {}
  for classes in (0, args.classes):
    loop_args = copy.copy(args)
    loop_args.classes = classes
    loop_args.upconv_impl = loop_args.downconv_impl = "auto"
    loop_args.compute_dtype, loop_args.hash_steps = "float32", 0
    loop_args.deterministic = int(defaults.deterministic)
    loops[classes] = throughput.setup_jax(loop_args)
  windows = {0: [], args.classes: []}
  for i in range(args.windows):
    order = (0, args.classes) if i % 2 == 0 else (args.classes, 0)
    for classes in order:
      run_steps, sync, _ = loops[classes]
      windows[classes].append(throughput._window_ms(run_steps, sync, args.steps))  # pylint: disable=protected-access
  info = loops[0][2]()
  median = {k: statistics.median(v) for k, v in windows.items()}
  fastest = {k: min(v) for k, v in windows.items()}
  print(json.dumps({
      "benchmark": "conditional_cost", "device": info["device"], "backend": info["backend"],
      "image_size": args.image_size, "channels": args.channels, "batch_size": args.batch_size,
      "ngf": args.ngf, "ndf": args.ndf, "classes": args.classes,
      "steps_per_dispatch": info["steps_per_dispatch"], "steps_per_window": args.steps,
      "unconditional_ms": round(median[0], 2), "conditional_ms": round(median[args.classes], 2),
      "ratio_median": round(median[args.classes] / median[0], 4),
      "unconditional_fastest_ms": round(fastest[0], 2),
      "conditional_fastest_ms": round(fastest[args.classes], 2),
      "ratio_fastest": round(fastest[args.classes] / fastest[0], 4),
      "unconditional_window_ms": [round(t, 2) for t in windows[0]],
      "conditional_window_ms": [round(t, 2) for t in windows[args.classes]],
      "versions": info["versions"], "date": time.strftime("%Y-%m-%d")}), flush=True)


if __name__ == "__main__":
  main()
