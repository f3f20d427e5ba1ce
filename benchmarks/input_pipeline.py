"""Input pipeline throughput: JPEG decoding into the cache, and feeding batches from it.

Makes CelebA-shaped JPEGs (178x218, quality 90, photo-like smooth content plus noise),
then prints one JSON line per measurement:
  jpeg_decode_1core / jpeg_decode_all_cores  Image.open + load only (the floor of any decoder)
  cache_build        decode + resize + center crop + write into the memory-mapped cache, in
                     worker processes as for any folder of 512 or more images (includes
                     starting the workers)
  cache_hit          finding and opening the finished cache again
  cache_build_jpeg_draft  cache_build with config.jpeg_draft (reduced-scale JPEG decoding)
  feed_host          batches of --batch-size gathered from the cache (Batches[step])
  feed_prefetch      the same through the background Prefetcher with device_put

  python benchmarks/input_pipeline.py --num-images 4000 --image-size 64 --batch-size 128
"""

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dcgan_jax import image_cache, input_pipeline  # pylint: disable=wrong-import-position


def make_jpegs(folder: str, count: int, seed: int = 0) -> list[str]:
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:218, 0:178].astype(np.float32)
  paths = []
  for i in range(count):
    base = rng.uniform(0, 255, 3)
    slope = rng.uniform(-1, 1, (2, 3))
    pixels = base + yy[..., None] * slope[0] + xx[..., None] * slope[1]
    pixels += rng.normal(0, 12, pixels.shape)
    path = os.path.join(folder, f"{i:06d}.jpg")
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
    paths.append(path)
  return paths


def _raw_decode(path: str) -> None:
  with Image.open(path) as image:
    image.load()


def _raw_decode_many(paths: list[str]) -> int:
  for p in paths:
    _raw_decode(p)
  return len(paths)


def rate(count: int, seconds: float) -> float:
  return round(count / seconds, 1)


def emit(**fields) -> None:
  print(json.dumps({"cpu_cores": os.cpu_count(), "machine": platform.machine(), **fields}),
        flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num-images", type=int, default=4000)
  parser.add_argument("--image-size", type=int, default=64)
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--feed-steps", type=int, default=2000)
  args = parser.parse_args()
  cores = os.cpu_count() or 1

  with tempfile.TemporaryDirectory() as tmp:
    folder = os.path.join(tmp, "img_align_celeba")
    os.makedirs(folder)
    paths = make_jpegs(folder, args.num_images)

    t0 = time.perf_counter()
    for p in paths[:max(1, len(paths) // cores)]:
      _raw_decode(p)
    emit(bench="jpeg_decode_1core", images_per_s=rate(max(1, len(paths) // cores),
                                                      time.perf_counter() - t0))
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(cores, mp_context=spawn) as pool:
      pool.submit(_raw_decode_many, []).result()  # start the workers outside the timing
      t0 = time.perf_counter()
      list(pool.map(_raw_decode_many, [paths[i:i + 256] for i in range(0, len(paths), 256)]))
      seconds = time.perf_counter() - t0
    emit(bench="jpeg_decode_all_cores", processes=cores, images_per_s=rate(len(paths), seconds))

    source = input_pipeline.folder_source(folder, args.image_size, 3)
    t0 = time.perf_counter()
    cached = image_cache.load_or_build(os.path.join(tmp, "cache"), source.name,
                                       source.description, source.items, source.load,
                                       args.image_size, 3, processes=True)
    emit(bench="cache_build", image_size=args.image_size, processes=cores,
         images_per_s=rate(len(paths), time.perf_counter() - t0))
    t0 = time.perf_counter()
    image_cache.load_or_build(os.path.join(tmp, "cache"), source.name, source.description,
                              source.items, source.load, args.image_size, 3)
    emit(bench="cache_hit", seconds=round(time.perf_counter() - t0, 4))
    draft = input_pipeline.folder_source(folder, args.image_size, 3, jpeg_draft=True)
    t0 = time.perf_counter()
    image_cache.load_or_build(os.path.join(tmp, "cache"), draft.name, draft.description,
                              draft.items, draft.load, args.image_size, 3, processes=True)
    emit(bench="cache_build_jpeg_draft", image_size=args.image_size, processes=cores,
         images_per_s=rate(len(paths), time.perf_counter() - t0))

    batches = input_pipeline.Batches(cached.images, args.batch_size, seed=0)
    for s in range(batches.steps_per_epoch):  # warm the page cache as training would
      batches[s]  # pylint: disable=pointless-statement
    t0 = time.perf_counter()
    for s in range(args.feed_steps):
      batches[s]  # pylint: disable=pointless-statement
    emit(bench="feed_host", image_size=args.image_size, batch_size=args.batch_size,
         images_per_s=rate(args.feed_steps * args.batch_size, time.perf_counter() - t0))

    import jax  # pylint: disable=g-import-not-at-top
    def to_device(step: int) -> jax.Array:
      return jax.device_put(batches[step])

    prefetcher = input_pipeline.Prefetcher(to_device, range(args.feed_steps), size=2)
    t0 = time.perf_counter()
    for batch in prefetcher:
      batch.block_until_ready()
    emit(bench="feed_prefetch", device=jax.devices()[0].platform, image_size=args.image_size,
         batch_size=args.batch_size,
         images_per_s=rate(args.feed_steps * args.batch_size, time.perf_counter() - t0))
    prefetcher.close()


if __name__ == "__main__":
  main()
