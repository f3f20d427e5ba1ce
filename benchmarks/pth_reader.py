"""Time of the restricted .pth reader (dcgan_jax.torch_files) on the FID Inception's weights.

Without --file, writes a state_dict of pytorch-fid's Inception layout (566 keys with the
classifier and BatchNorm step counters, 24 million float32 elements; zeros, since the
reader's time does not depend on the values) with torch.save in both of its formats, and times load_state_dict on each; with
--file, times that file (pt_inception-2015-12-05-6726825d.pth itself, where you have it).
One JSON line per file: bytes, tensors, and in ms the first read (the one a program makes,
in a process that has read nothing yet) and the median and best of --repeats reads.

  python benchmarks/pth_reader.py                  # needs torch, to write the files
  python benchmarks/pth_reader.py --file pt_inception-2015-12-05-6726825d.pth
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def inception_state_dict(scale: float = 1.0) -> dict[str, np.ndarray]:
  """pytorch-fid's state_dict keys and shapes (classifier and BatchNorm step counters
  included), zeros; with scale < 1, every dimension of 8 or more shrunk by that factor."""
  from dcgan_jax import inception  # pylint: disable=g-import-not-at-top

  shrink = lambda n: max(1, int(n * scale)) if n >= 8 else n  # noqa: E731
  out = {}
  for key, (_, _, shape) in inception.state_dict_layout().items():
    torch_shape = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape
    out[key] = np.zeros(tuple(shrink(n) for n in torch_shape), np.float32)
    if key.endswith("running_var"):
      out[key.replace("running_var", "num_batches_tracked")] = np.zeros((), np.int64)
  out["fc.weight"] = np.zeros((shrink(1008), shrink(2048)), np.float32)
  out["fc.bias"] = np.zeros((shrink(1008),), np.float32)
  return out


def time_reads(path: str, repeats: int) -> dict:
  from dcgan_jax import torch_files  # pylint: disable=g-import-not-at-top

  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    arrays = torch_files.load_state_dict(path)
    times.append((time.perf_counter() - t0) * 1000)
  return {"benchmark": "pth_reader", "file": os.path.basename(path),
          "bytes": os.path.getsize(path), "tensors": len(arrays),
          "elements": int(sum(a.size for a in arrays.values())),
          "ms_first": round(times[0], 1), "ms_median": round(statistics.median(times), 1),
          "ms_min": round(min(times), 1), "repeats": repeats}


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--file", help="a .pth file to time instead of the written ones")
  parser.add_argument("--repeats", type=int, default=15)
  parser.add_argument("--scale", type=float, default=1.0,
                      help="shrink the written state_dict's dimensions (smoke tests)")
  args = parser.parse_args(argv)
  if args.repeats < 1 or not 0 < args.scale <= 1:
    parser.error("--repeats must be >= 1 and --scale in (0, 1]")
  if args.file:
    print(json.dumps(time_reads(args.file, args.repeats)), flush=True)
    return
  import torch  # pylint: disable=g-import-not-at-top

  state = {k: torch.from_numpy(v) for k, v in inception_state_dict(args.scale).items()}
  with tempfile.TemporaryDirectory() as tmp:
    for fmt, zip_format in (("zip", True), ("legacy", False)):
      path = os.path.join(tmp, f"inception_{fmt}.pth")
      torch.save(state, path, _use_new_zipfile_serialization=zip_format)
      print(json.dumps({**time_reads(path, args.repeats), "format": fmt}), flush=True)


if __name__ == "__main__":
  main()
