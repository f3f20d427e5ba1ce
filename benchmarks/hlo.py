"""Which kernels one training step compiles to: XLA's optimized HLO of steps.train_step, written
to a file, and what it calls.

  python benchmarks/hlo.py --upconv-impls vjp,xla --out-dir hlo/

For each of G's transposed-convolution forms, one JSON line: the file written (gzip'd text of
the compiled step), the count of each custom-call target in it (on GPUs the cuDNN convolutions:
`__cudnn$convForward`, `__cudnn$convBackwardInput`, `__cudnn$convBackwardFilter`, ...),
whether the backward-data and backward-filter targets appear, the convolutions left over a
stride-dilated input (`lhs_dilate`), and the pads with interior padding (XLA's zero-filled
stride-dilated inputs). --image-size and the other model flags are throughput.py's.
"""

import argparse
import collections
import gzip
import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import throughput  # noqa: E402
from dcgan_jax.ops import UPCONV_IMPLS  # noqa: E402

BACKWARD_INPUT = "__cudnn$convBackwardInput"
BACKWARD_FILTER = "__cudnn$convBackwardFilter"
_TARGET = re.compile(r'custom_call_target="([^"]+)"')
_PAD = re.compile(r"\bpad\(.*?padding=([0-9_x-]+)")


def scan(hlo_text: str) -> dict:
  """What an optimized HLO module's text calls: custom-call targets and their counts, the
  cuDNN backward targets' presence, convolutions over a dilated input, interior-padded pads."""
  targets = collections.Counter(_TARGET.findall(hlo_text))
  interior = 0
  for dims in _PAD.findall(hlo_text):
    interior += any(len(d.split("_")) == 3 and d.split("_")[2] != "0" for d in dims.split("x"))
  dilated = sum(1 for line in hlo_text.splitlines()
                if " convolution(" in line and re.search(r"lhs_dilate=(?!1x1\b)\d", line))
  return {"custom_call_targets": dict(sorted(targets.items())),
          "cudnn_backward_input": BACKWARD_INPUT in targets,
          "cudnn_backward_filter": BACKWARD_FILTER in targets,
          "dilated_input_convolutions": dilated, "interior_padded_pads": interior}


def compiled_step_text(args, upconv_impl: str) -> str:
  """The optimized HLO text of one training step (D update + G update) of the model."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from dcgan_jax import steps  # pylint: disable=g-import-not-at-top

  gan = throughput.jax_gan(args, upconv_impl, args.downconv_impl, args.compute_dtype)
  images = jax.ShapeDtypeStruct((args.batch_size, args.image_size, args.image_size,
                                 args.channels), jnp.uint8)
  lowered = jax.jit(steps.train_step, static_argnums=0).lower(
      gan, steps.abstract_train_state(gan), images)
  return lowered.compile().as_text()


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--upconv-impls", default="vjp,xla",
                      help=f"comma-separated, of {', '.join(UPCONV_IMPLS)}")
  parser.add_argument("--downconv-impl", default="auto")
  parser.add_argument("--out-dir", default="hlo", help="where the gzip'd HLO files go")
  throughput.add_model_flags(parser)
  parser.add_argument("--compute-dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--deterministic", type=int, choices=(0, 1), default=1,
                      help="as config.deterministic (it changes which kernels XLA may pick)")
  args = parser.parse_args(argv)
  impls = args.upconv_impls.split(",")
  for impl in impls:
    if impl not in UPCONV_IMPLS:
      parser.error(f"--upconv-impls {impl!r} is not one of {', '.join(UPCONV_IMPLS)}")
  from dcgan_jax import device  # pylint: disable=g-import-not-at-top
  from dcgan_jax.errors import UsageError  # pylint: disable=g-import-not-at-top
  try:
    device.set_deterministic(bool(args.deterministic))  # before JAX starts its backends
  except UsageError as e:
    parser.error(str(e))
  import jax  # pylint: disable=g-import-not-at-top

  jax.config.update("jax_enable_compilation_cache", False)  # the text of a compilation, not a cache's
  os.makedirs(args.out_dir, exist_ok=True)
  for impl in impls:
    head = {"benchmark": "hlo", "upconv_impl": impl, "downconv_impl": args.downconv_impl,
            "image_size": args.image_size, "batch_size": args.batch_size,
            "compute_dtype": args.compute_dtype}
    try:
      t0 = time.perf_counter()
      text = compiled_step_text(args, impl)
      compile_s = round(time.perf_counter() - t0, 2)
    except Exception as e:  # pylint: disable=broad-except  # reported as a JSON line
      print(json.dumps({**head, "error": f"{type(e).__name__}: "
                                         f"{(str(e).splitlines() or [''])[0][:300]}"}), flush=True)
      continue
    path = os.path.join(args.out_dir, f"train_step-{impl}-{args.downconv_impl}.hlo.txt.gz")
    with gzip.open(path, "wt") as f:
      f.write(text)
    print(json.dumps({**head, "backend": jax.default_backend(),
                      "device": jax.devices()[0].device_kind, "compile_s": compile_s,
                      "hlo_file": path, **scan(text)}), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
