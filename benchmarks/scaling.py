"""Data-parallel scaling: one global batch on 1, 2, 4, ... devices of a 1-D data mesh.

Each device count runs in its own process (with --fake, that many XLA CPU devices made from
the host's cores: a check of correctness and of the communication XLA inserts, not of
speed). One JSON line per device count: devices, platform, batch_size (global),
per_device_batch, ms_per_step, images_per_s, compile_s, the all-reduces of the compiled
step (all_reduce_ops, all_reduce_bytes: what each device contributes per step, counted in
XLA's optimised HLO), grad_bytes (the float32 size of both networks' gradients), and, against
the one-device run, first_loss_rel_diff (loss_D, D(x) and D(G(z)) of the first step, which
come before any update) and max_param_diff (after every step run; Adam's first updates are lr * sign(g), so float
rounding of near-zero gradients shows here as differences of a few lr).

  python benchmarks/scaling.py --fake --devices 1,2,4,8 --image-size 64 --batch-size 128
  python benchmarks/scaling.py --devices 1,8        # the GPUs of one machine
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_DTYPE_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "f64": 8, "s64": 8,
                "u8": 1, "pred": 1}


def all_reduce_traffic(hlo_text: str) -> tuple[int, int]:
  """(number of all-reduce ops, bytes of their results) in an HLO module's text."""
  ops, total = 0, 0
  for line in hlo_text.splitlines():
    match = re.search(r"=\s*(.+?)\s+all-reduce(?:-start)?\(", line)
    if not match:
      continue
    ops += 1
    for dtype, dims in re.findall(r"(\w+)\[([\d,]*)\]", match.group(1)):
      if dtype in _DTYPE_BYTES:
        total += _DTYPE_BYTES[dtype] * int(np.prod([int(d) for d in dims.split(",") if d]))
  return ops, total


def _gan(args, mesh):
  from dcgan_jax import parallel, steps  # pylint: disable=g-import-not-at-top
  from dcgan_jax.models import Discriminator, Generator  # pylint: disable=g-import-not-at-top

  return steps.GAN(Generator(args.image_size, args.channels, args.ngf, args.upconv_impl),
                   Discriminator(args.image_size, args.ndf, args.downconv_impl),
                   steps.Adam(), steps.Adam(), nz=args.nz,
                   batch_sharding=parallel.batch_sharding(mesh))


def child(args) -> dict:
  """Times the sharded training step on args.child devices; returns the JSON line's fields
  and, under "raw", what the parent compares between device counts."""
  import jax  # pylint: disable=g-import-not-at-top

  from dcgan_jax import parallel, steps  # pylint: disable=g-import-not-at-top

  mesh = parallel.make_mesh(args.child)
  parallel.check_batch_size(args.batch_size, mesh)
  gan = _gan(args, mesh)
  state = steps.init_train_state(gan, 0, parallel.replicated(mesh))
  images = jax.device_put(np.random.default_rng(0).integers(
      0, 256, (1, args.batch_size, args.image_size, args.image_size, args.channels), np.uint8),
      parallel.batch_sharding(mesh, batch_axis=1))
  t0 = time.perf_counter()
  compiled = jax.jit(steps.train_steps, static_argnums=0, donate_argnums=1).lower(
      gan, state, images).compile()
  compile_s = time.perf_counter() - t0
  ops, traffic = all_reduce_traffic(compiled.as_text())
  grad_bytes = 4 * sum(x.size for x in jax.tree.leaves((state.g_params, state.d_params)))
  state, metrics = compiled(state, images)
  first = {k: float(metrics[k][0]) for k in ("loss_d", "d_x", "d_g_z1")}  # before any update
  for _ in range(args.warmup):
    state, _ = compiled(state, images)
  windows = []
  for _ in range(args.windows):
    t0 = time.perf_counter()
    for _ in range(args.steps):
      state, _ = compiled(state, images)
    jax.block_until_ready(state)
    windows.append((time.perf_counter() - t0) / args.steps * 1000)
  ms = round(statistics.median(windows), 2)
  params = np.concatenate([np.ravel(x) for x in jax.tree.leaves(
      jax.device_get(parallel.local_copy((state.g_params, state.d_params))))])
  return {"benchmark": "scaling", "devices": args.child, "platform": jax.default_backend(),
          "device": jax.devices()[0].device_kind, "fake_devices": args.fake,
          "image_size": args.image_size, "channels": args.channels, "ngf": args.ngf,
          "ndf": args.ndf, "batch_size": args.batch_size,
          "per_device_batch": args.batch_size // args.child, "ms_per_step": ms,
          "images_per_s": round(args.batch_size / ms * 1000, 1),
          "window_ms": [round(w, 2) for w in windows], "compile_s": round(compile_s, 2),
          "all_reduce_ops": ops, "all_reduce_bytes": traffic, "grad_bytes": grad_bytes,
          "date": time.strftime("%Y-%m-%d"), "versions": {"jax": jax.__version__},
          "raw": {"first": first, "params": params.tolist()}}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--devices", default="1,2,4,8", help="comma-separated device counts")
  parser.add_argument("--fake", action="store_true",
                      help="make each count's devices from the CPU (XLA_FLAGS host device count)")
  parser.add_argument("--image-size", type=int, default=64)
  parser.add_argument("--channels", type=int, default=3)
  parser.add_argument("--batch-size", type=int, default=128, help="the global batch")
  parser.add_argument("--ngf", type=int, default=64)
  parser.add_argument("--ndf", type=int, default=64)
  parser.add_argument("--nz", type=int, default=100)
  parser.add_argument("--steps", type=int, default=3, help="steps per timed window")
  parser.add_argument("--windows", type=int, default=3, help="timed windows (median reported)")
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--upconv-impl", default="auto")
  parser.add_argument("--downconv-impl", default="auto")
  parser.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    print(json.dumps(child(args)), flush=True)
    return
  counts = [int(n) for n in args.devices.split(",")]
  if counts[0] != 1:
    parser.error("--devices must start with 1 (the reference run)")
  if args.fake:
    from dcgan_jax import device  # pylint: disable=g-import-not-at-top
    from dcgan_jax.errors import UsageError  # pylint: disable=g-import-not-at-top
    try:
      device.require_xla_flags([f"{device.HOST_DEVICES_FLAG}={max(counts)}"], "--fake")
    except UsageError as e:
      parser.error(str(e))
  reference = None
  for n in counts:
    env = dict(os.environ)
    if args.fake:
      env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {device.HOST_DEVICES_FLAG}={n}"
      env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run([sys.executable, os.path.abspath(__file__), *sys.argv[1:],
                          "--child", str(n)], stdout=subprocess.PIPE, text=True, env=env,
                         check=False)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode or not lines:
      print(json.dumps({"benchmark": "scaling", "devices": n,
                        "error": f"exit status {out.returncode}"}), flush=True)
      continue
    result = json.loads(lines[-1])
    raw = result.pop("raw")
    reference = reference or raw
    result["first_loss_rel_diff"] = max(
        abs(raw["first"][k] - reference["first"][k]) / max(abs(reference["first"][k]), 1e-12)
        for k in raw["first"])
    result["max_param_diff"] = float(np.max(np.abs(
        np.subtract(raw["params"], reference["params"]))))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
  main()
