"""One epoch of a CelebA-sized dataset, end to end in the training loop.

Runs dcgan_jax.train.train_and_evaluate itself, with configs/celeba.py's settings (logging
every 50 steps, sample grids, checkpoints), on synthetic uint8 images held in a
memory-mapped .npy file as the decoded-image cache holds a real dataset: data feeding,
dispatch, logging, samples and checkpoints are all timed, only the decoding of a real
dataset is left out. Each repeat trains one epoch in a fresh workdir; the first also
compiles, the later ones find the compiled steps in the process's cache. One JSON line per
repeat: wall_s (the whole call: data loading, state creation, compilation on the first
repeat, the epoch, the final checkpoint), compilations (the programs XLA compiled during it), loop_images_per_s (the loop's own rate, from
metrics.csv: images of the timed dispatches over their seconds, the first dispatch's
compilation left out) and epoch_s_at_loop_rate (num_images at that rate).

  python benchmarks/epoch.py                      # 202,599 images of 64x64x3, 2 repeats
  python benchmarks/epoch.py --num-images 4096 --batch-size 64 --ngf 16 --ndf 16
"""

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CELEBA_IMAGES = 202_599


def synthetic_images(path: str, num: int, size: int, channels: int, seed: int = 0
                     ) -> np.ndarray:
  """num random uint8 images (num, size, size, channels) written to path (.npy) and mapped
  read-only, as image_cache maps a decoded dataset."""
  out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8,
                                  shape=(num, size, size, channels))
  rng = np.random.default_rng(seed)
  for start in range(0, num, 4096):
    stop = min(num, start + 4096)
    out[start:stop] = rng.integers(0, 256, (stop - start, size, size, channels), np.uint8)
  out.flush()
  del out
  return np.load(path, mmap_mode="r")


def loop_rate(rows: list[dict]) -> float:
  """Images per second of the timed dispatches in metrics.csv rows (NaN-rate rows, which
  held only the first dispatch, carry no timed images)."""
  images = seconds = 0.0
  for row in rows:
    rate, elapsed = float(row["images_per_s"]), float(row["seconds"])
    if math.isfinite(rate):
      images += rate * elapsed
      seconds += elapsed
  return images / seconds if seconds else float("nan")


def make_config(args):
  from dcgan_jax import configs, configuration  # pylint: disable=g-import-not-at-top

  config = configuration.load_config_file(configs.preset_path("celeba"))
  # The synthetic images replace the data source (main() patches load_dataset); a folder
  # source keeps validation from reaching for tensorflow-datasets, which the preset's
  # tfds:celeb_a would import.
  config.dataset = "imagefolder"
  config.image_size, config.channels = args.image_size, args.channels
  config.batch_size, config.ngf, config.ndf = args.batch_size, args.ngf, args.ndf
  config.num_train_steps, config.num_epochs = -1, 1.0
  config.data_on_device = bool(args.data_on_device)
  config.compute_dtype = args.compute_dtype
  config.evaluator = ""
  if args.steps_per_dispatch:
    config.steps_per_dispatch = args.steps_per_dispatch
  return config


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num-images", type=int, default=CELEBA_IMAGES)
  parser.add_argument("--image-size", type=int, default=64)
  parser.add_argument("--channels", type=int, default=3)
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--ngf", type=int, default=64)
  parser.add_argument("--ndf", type=int, default=64)
  parser.add_argument("--data-on-device", type=int, default=1, choices=(0, 1),
                      help="the loop's data_on_device mode (1: the dataset on the device)")
  parser.add_argument("--steps-per-dispatch", type=int, default=0,
                      help="0: the config's value")
  parser.add_argument("--compute-dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--tmp-dir", default="",
                      help="where the synthetic images (num_images * size^2 * channels bytes) "
                           "and the workdirs go; '' = the system's temporary folder")
  args = parser.parse_args()
  if args.num_images < args.batch_size:
    parser.error(f"--num-images {args.num_images} is smaller than --batch-size "
                 f"{args.batch_size}")
  if args.repeats < 1 or args.steps_per_dispatch < 0:
    parser.error("--repeats must be >= 1 and --steps-per-dispatch >= 0")

  import jax  # pylint: disable=g-import-not-at-top

  from dcgan_jax import input_pipeline, metrics, train  # pylint: disable=g-import-not-at-top

  from dcgan_jax import configuration  # pylint: disable=g-import-not-at-top
  from dcgan_jax.errors import UsageError  # pylint: disable=g-import-not-at-top

  config = make_config(args)
  try:
    configuration.validate(config)  # before the synthetic images are written
  except UsageError as e:
    parser.error(str(e))
  tmp = tempfile.mkdtemp(prefix="dcgan_jax_epoch_", dir=args.tmp_dir or None)
  try:
    images = synthetic_images(os.path.join(tmp, "images.npy"), args.num_images,
                              args.image_size, args.channels)
    # The loop's data source, as the decoded-image cache would return a real dataset.
    input_pipeline.load_dataset = lambda *_: input_pipeline.Dataset(images)
    compiled = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, *_, **__: compiled.append(name) if "backend_compile" in name else None)
    for repeat in range(args.repeats):
      workdir = os.path.join(tmp, f"run{repeat}")
      compiled.clear()
      t0 = time.perf_counter()
      state = train.train_and_evaluate(config, workdir)
      jax.block_until_ready(state)
      wall_s = time.perf_counter() - t0
      rows = metrics.read_metrics(os.path.join(workdir, "metrics.csv"))
      rate = loop_rate(rows)
      print(json.dumps({
          "benchmark": "epoch", "device": jax.devices()[0].device_kind,
          "backend": jax.default_backend(), "num_devices": jax.device_count(),
          "num_images": args.num_images, "image_size": args.image_size,
          "channels": args.channels, "batch_size": args.batch_size, "ngf": args.ngf,
          "ndf": args.ndf, "steps": int(state.step),
          "steps_per_dispatch": config.steps_per_dispatch,
          "data_on_device": config.data_on_device, "compute_dtype": config.compute_dtype,
          "repeat": repeat, "wall_s": round(wall_s, 2), "compilations": len(compiled),
          "loop_images_per_s": round(rate, 1),
          "epoch_s_at_loop_rate": round(args.num_images / rate, 2),
          "versions": {"jax": jax.__version__}, "date": time.strftime("%Y-%m-%d")}),
            flush=True)
      shutil.rmtree(workdir)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  main()
