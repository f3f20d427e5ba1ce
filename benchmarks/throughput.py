"""Training-step throughput of dcgan-jax and of the PyTorch DCGAN tutorial's loop, one device.

Each implementation runs full iterations (D update + G update) on synthetic data after
warm-up and compilation, in several timed windows; one JSON line per implementation:
impl, device, image_size, channels, batch_size, ngf, ndf, images_per_s and ms_per_step
(median window), window_ms, compile_s, peak_memory_bytes (where the backend tells it),
gflop_per_step (counted from the architecture by dcgan_jax.flops: the mathematics of the
plain formulation, not a faster form's zero taps), xla_gflop_per_step (XLA's own count of
the plain model; null where the backend gives none), achieved_tflops and, on GPUs of known
peak (or with --peak-tflops), flop_fraction: achieved over peak. A figure the backend or JAX
version cannot give is null; a failure is a line with "error": the benchmark never stops
without its lines. dcgan-jax runs as its training loop does, steps_per_dispatch iterations
per jitted call (reported). Several implementations run one after the other, each in its
own process; --rounds repeats that sequence (a "round" field tells which). --sweep times
every exact form of G's and D's strided convolutions (upconv x downconv), one line each.
--hash-steps N first trains N steps from the seed-0 state and adds state_sha256, a hash of the
whole training state then (benchmarks/determinism.py compares it between fresh processes).
--classes N times a class-conditional dcgan-jax (N classes, random labels in every batch).

  python benchmarks/throughput.py --impl all --image-size 64 --batch-size 128 --steps 25
  python benchmarks/throughput.py --sweep --image-size 64 --batch-size 1024 --steps 25
"""

import argparse
import hashlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dcgan_jax.ops import DOWNCONV_IMPLS, UPCONV_IMPLS  # noqa: E402  # 'auto' first in each

IMPLS = ("jax", "torch-eager", "torch-compile")


# Dense peak TFLOP/s of tensor cores, from NVIDIA's data sheets, by the device name's
# substring (first match) and compute dtype: float32 convolutions and matrix products run as
# TF32 on these GPUs by default, in XLA and in cuDNN.
PEAK_TFLOPS = (("H100 PCIe", {"float32": 378.0, "bfloat16": 756.0}),
               ("H100", {"float32": 494.7, "bfloat16": 989.4}),
               ("H200", {"float32": 494.7, "bfloat16": 989.4}),
               ("A100", {"float32": 156.0, "bfloat16": 312.0}))


def peak_tflops(device: str, dtype: str) -> float | None:
  """The device's dense peak for dtype from PEAK_TFLOPS; None for other devices (CPUs)."""
  for name, peaks in PEAK_TFLOPS:
    if name in device:
      return peaks[dtype]
  return None


def model_gflop_per_step(args) -> float:
  """FLOPs of one D+G iteration, counted from the architecture (dcgan_jax.flops): the plain
  formulation's mathematics, as XLA counts it, whichever form runs."""
  from dcgan_jax import flops  # pylint: disable=g-import-not-at-top

  return flops.iteration_flops(args.image_size, args.channels, args.ngf, args.ndf, args.nz,
                               args.batch_size) / 1e9


def xla_gflop_per_step(args) -> float | None:
  """XLA's own count for the plain (XLA transposed conv) model; None where the backend or JAX
  version gives none (cost_analysis returns None on some GPU backends) or cannot lower it."""
  try:
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

    from dcgan_jax import steps  # pylint: disable=g-import-not-at-top

    gan = jax_gan(args, upconv_impl="xla", downconv_impl="xla")
    images = jax.ShapeDtypeStruct((args.batch_size, args.image_size, args.image_size,
                                   args.channels), jnp.uint8)
    lowered = jax.jit(steps.train_step, static_argnums=0).lower(
        gan, steps.abstract_train_state(gan), images)
    cost = lowered.cost_analysis()
  except Exception:  # pylint: disable=broad-except  # a figure it cannot know is null
    return None
  cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
  flops = cost.get("flops") if isinstance(cost, dict) else None
  return flops / 1e9 if isinstance(flops, (int, float)) and flops > 0 else None


def add_model_flags(parser: argparse.ArgumentParser) -> None:
  """The model and batch flags (64x64x3, ngf = ndf = 64, batch 128 unless given)."""
  parser.add_argument("--image-size", type=int, default=64)
  parser.add_argument("--channels", type=int, default=3)
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--ngf", type=int, default=64)
  parser.add_argument("--ndf", type=int, default=64)
  parser.add_argument("--nz", type=int, default=100)
  parser.add_argument("--classes", type=int, default=0,
                      help="jax: G and D conditional on this many classes (0: unconditional)")


def jax_gan(args, upconv_impl: str, downconv_impl: str, dtype: str = "float32"):
  """The GAN of the model flags (add_model_flags) with the given forms and compute dtype."""
  from dcgan_jax import steps  # pylint: disable=g-import-not-at-top
  from dcgan_jax.models import Discriminator, Generator  # pylint: disable=g-import-not-at-top

  classes = getattr(args, "classes", 0)
  return steps.GAN(Generator(args.image_size, args.channels, args.ngf, upconv_impl, dtype,
                             classes),
                   Discriminator(args.image_size, args.ndf, downconv_impl, dtype,
                                 num_classes=classes),
                   steps.Adam(), steps.Adam(),
                   nz=args.nz)


def _window_ms(run_steps, sync, steps: int) -> float:
  """Mean milliseconds per step over one timed window of `steps` steps."""
  t0 = time.perf_counter()
  run_steps(steps)
  sync()
  return (time.perf_counter() - t0) / steps * 1000


def state_sha256(state) -> str:
  """SHA-256 of every leaf of a pytree (its dtype, shape and bytes, in tree order)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(state):
    array = np.asarray(leaf)
    digest.update(f"{array.dtype}{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
  return digest.hexdigest()


def default_config():
  """configs/default.py's config: the training loop's defaults."""
  from dcgan_jax import configuration  # pylint: disable=g-import-not-at-top

  return configuration.load_config_file(configuration.DEFAULT_CONFIG_FILE)


def setup_jax(args):
  """Compiles and warms up dcgan-jax's training loop: (run_steps, sync, info).

  Iterations run as the training loop runs them: `steps_per_dispatch` of them per jitted
  call (steps.train_steps, a lax.scan over that many batches held on the device; a shorter
  remainder in its padded program), the state's buffers donated, no host sync inside a window.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from dcgan_jax import input_pipeline, steps  # pylint: disable=g-import-not-at-top

  gan = jax_gan(args, args.upconv_impl, args.downconv_impl, args.compute_dtype)
  state = steps.init_train_state(gan, 0)
  batch = np.random.default_rng(0).integers(
      0, 256, (args.batch_size, args.image_size, args.image_size, args.channels), np.uint8)
  most = args.steps_per_dispatch
  plan = lambda n: list(input_pipeline.plan_chunks(0, n, most, ()))  # noqa: E731
  # Calls of `most` steps (a scan of that length) and, for a shorter remainder, the padded
  # program that runs any count below it (train_steps' num_steps), as the loop makes them.
  kinds = sorted({k == most for n in (args.steps, args.warmup, args.hash_steps)
                  for _, k in plan(n)}, reverse=True)  # full calls first
  images = jax.device_put(np.broadcast_to(batch, (most, *batch.shape)))
  labels = (jax.device_put(np.random.default_rng(1).integers(
      0, args.classes, (most, args.batch_size), dtype=np.int32)) if args.classes else None)
  count = lambda k: None if k == most else np.int32(k)  # noqa: E731
  jitted = jax.jit(steps.train_steps, static_argnums=0, donate_argnums=1)
  compiled, compile_s = {}, {}
  for full in kinds:
    t0 = time.perf_counter()
    compiled[full] = jitted.lower(gan, state, images, count(most if full else 1),
                                  labels).compile()
    compile_s[full] = time.perf_counter() - t0
  box = {"state": state}

  def call(k: int) -> None:
    box["state"], box["metrics"] = compiled[k == most](box["state"], images, count(k), labels)

  def run_steps(n: int) -> None:
    for _, k in plan(n):
      call(k)

  def sync():
    jax.block_until_ready(box["state"])

  hashed = {}
  if args.hash_steps:  # from the fresh state, before any other step
    run_steps(args.hash_steps)
    sync()
    hashed = {"hash_steps": args.hash_steps, "state_sha256": state_sha256(box["state"])}
  run_steps(args.warmup)
  for full in set(kinds) - {k == most for _, k in plan(args.warmup)}:  # each program runs once
    call(most if full else 1)
  sync()

  def info():
    stats = jax.devices()[0].memory_stats() or {}
    return {"impl": "jax", "device": jax.devices()[0].device_kind,
            "backend": jax.default_backend(),
            "upconv_impl": args.upconv_impl, "downconv_impl": args.downconv_impl,
            "compute_dtype": args.compute_dtype, "deterministic": bool(args.deterministic),
            "classes": args.classes,
            "steps_per_dispatch": max(k for _, k in plan(args.steps)),
            "compile_s": round(compile_s[kinds[0]], 2),
            "peak_memory_bytes": stats.get("peak_bytes_in_use"),
            "versions": {"jax": jax.__version__}, **hashed}
  return run_steps, sync, info


def _torch_models(args):
  """The tutorial's netG/netD, generalised to 32/64/128 px as dcgan_jax.models is."""
  from torch import nn  # pylint: disable=g-import-not-at-top

  n = args.image_size.bit_length() - 3
  g_layers, width = [], args.ngf * 2 ** (n - 1)
  g_layers += [nn.ConvTranspose2d(args.nz, width, 4, 1, 0, bias=False), nn.BatchNorm2d(width),
               nn.ReLU(True)]
  for _ in range(n - 1):
    g_layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False),
                 nn.BatchNorm2d(width // 2), nn.ReLU(True)]
    width //= 2
  g_layers += [nn.ConvTranspose2d(width, args.channels, 4, 2, 1, bias=False), nn.Tanh()]
  d_layers, width = [nn.Conv2d(args.channels, args.ndf, 4, 2, 1, bias=False),
                     nn.LeakyReLU(0.2, inplace=True)], args.ndf
  for _ in range(n - 1):
    d_layers += [nn.Conv2d(width, width * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width * 2),
                 nn.LeakyReLU(0.2, inplace=True)]
    width *= 2
  d_layers += [nn.Conv2d(width, 1, 4, 1, 0, bias=False), nn.Sigmoid()]

  def weights_init(m):
    if "Conv" in type(m).__name__:
      nn.init.normal_(m.weight.data, 0.0, 0.02)
    elif "BatchNorm" in type(m).__name__:
      nn.init.normal_(m.weight.data, 1.0, 0.02)
      nn.init.constant_(m.bias.data, 0)

  net_g, net_d = nn.Sequential(*g_layers), nn.Sequential(*d_layers)
  net_g.apply(weights_init)
  net_d.apply(weights_init)
  return net_g, net_d


def setup_torch(args, compiled: bool):
  """The tutorial's loop, run once (compiling, if asked) and warmed up: (run_steps, sync, info)."""
  import torch  # pylint: disable=g-import-not-at-top

  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  torch.manual_seed(999)
  net_g, net_d = (m.to(device) for m in _torch_models(args))
  run_g, run_d = (torch.compile(net_g), torch.compile(net_d)) if compiled else (net_g, net_d)
  criterion = torch.nn.BCELoss()
  opt_d = torch.optim.Adam(net_d.parameters(), lr=2e-4, betas=(0.5, 0.999))
  opt_g = torch.optim.Adam(net_g.parameters(), lr=2e-4, betas=(0.5, 0.999))
  real = torch.rand(args.batch_size, args.channels, args.image_size, args.image_size,
                    device=device) * 2 - 1
  label = torch.empty(args.batch_size, device=device)

  def run_step():  # the tutorial's training iteration
    net_d.zero_grad()
    label.fill_(1.0)
    err_d_real = criterion(run_d(real).view(-1), label)
    err_d_real.backward()
    noise = torch.randn(args.batch_size, args.nz, 1, 1, device=device)
    fake = run_g(noise)
    label.fill_(0.0)
    err_d_fake = criterion(run_d(fake.detach()).view(-1), label)
    err_d_fake.backward()
    opt_d.step()
    net_g.zero_grad()
    label.fill_(1.0)
    err_g = criterion(run_d(fake).view(-1), label)
    err_g.backward()
    opt_g.step()

  sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
  t0 = time.perf_counter()
  run_step()
  sync()
  first_s = time.perf_counter() - t0
  for _ in range(args.warmup):
    run_step()
  sync()
  if device.type == "cuda":
    torch.cuda.reset_peak_memory_stats()

  def run_steps(n: int) -> None:
    for _ in range(n):
      run_step()

  def info():
    cuda = device.type == "cuda"
    return {"impl": "torch-compile" if compiled else "torch-eager",
            "device": torch.cuda.get_device_name() if cuda else "cpu",
            "backend": device.type, "compile_s": round(first_s, 2),
            "peak_memory_bytes": torch.cuda.max_memory_allocated() if cuda else None,
            "threads": torch.get_num_threads(), "versions": {"torch": torch.__version__}}
  return run_steps, sync, info


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--impl", default="all",
                      help=f"'all' or a comma-separated list of {', '.join(IMPLS)}")
  add_model_flags(parser)
  parser.add_argument("--steps", type=int, default=5, help="steps per timed window")
  parser.add_argument("--windows", type=int, default=3, help="timed windows (median reported)")
  parser.add_argument("--rounds", type=int, default=1,
                      help="run the implementations in turn this many times, each in its own process")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--peak-tflops", type=float, default=0.0,
                      help="the device's peak TFLOP/s for flop_fraction (0: PEAK_TFLOPS's "
                           "value for known GPUs, none elsewhere)")
  parser.add_argument("--steps-per-dispatch", type=int, default=0,
                      help="jax: iterations per jitted call, as the training loop's "
                           "steps_per_dispatch (0: configs/default.py's value); a window of "
                           "--steps iterations runs in calls of at most this many")
  parser.add_argument("--upconv-impl", default="auto", choices=UPCONV_IMPLS)
  parser.add_argument("--downconv-impl", default="auto", choices=DOWNCONV_IMPLS)
  parser.add_argument("--deterministic", type=int, choices=(0, 1), default=None,
                      help="jax: XLA's deterministic GPU kernels, as config.deterministic "
                           "(default: configs/default.py's value)")
  parser.add_argument("--hash-steps", type=int, default=0,
                      help="jax: train this many steps from the fresh state first and report "
                           "state_sha256, a hash of the whole state after them")
  parser.add_argument("--sweep", action="store_true",
                      help="jax: every upconv x downconv form (not auto), each in its own "
                           "process, one JSON line each: which forms win on this device")
  parser.add_argument("--compute-dtype", default="float32", choices=("float32", "bfloat16"),
                      help="jax: mixed precision (the torch loops stay float32, as the tutorial)")
  args = parser.parse_args()

  if args.steps_per_dispatch < 0:
    parser.error(f"--steps-per-dispatch {args.steps_per_dispatch} must be >= 0")
  if args.classes < 0:
    parser.error(f"--classes {args.classes} must be >= 0")
  if args.hash_steps < 0:
    parser.error(f"--hash-steps {args.hash_steps} must be >= 0")
  if args.peak_tflops < 0:
    parser.error(f"--peak-tflops {args.peak_tflops} must be >= 0 (0: the known GPUs' peaks)")
  impls = IMPLS if args.impl == "all" else tuple(args.impl.split(","))
  for impl in impls:
    if impl not in IMPLS:
      parser.error(f"--impl {impl!r} is not one of {', '.join(IMPLS)} or 'all'")
  if args.sweep:
    if args.impl not in ("all", "jax"):
      parser.error("--sweep times dcgan-jax's forms: leave out --impl or give --impl jax")
    _run_isolated([["--impl", "jax", "--upconv-impl", up, "--downconv-impl", down]
                   for up in UPCONV_IMPLS[1:] for down in DOWNCONV_IMPLS[1:]],
                  args.rounds, {"sweep": True})
    return
  if len(impls) > 1 or args.rounds > 1:
    _run_isolated([["--impl", impl] for impl in impls], args.rounds)
    return
  defaults = default_config()
  args.steps_per_dispatch = args.steps_per_dispatch or defaults.steps_per_dispatch
  if args.deterministic is None:
    args.deterministic = int(defaults.deterministic)
  print(json.dumps(measure(args, impls[0])), flush=True)


def measure(args, impl: str) -> dict:
  """Times one implementation: its JSON line, or a line with 'error' (or 'skipped') saying
  why there is no figure; never raises."""
  head = {"impl": impl, "image_size": args.image_size, "batch_size": args.batch_size}
  if impl.startswith("torch") and importlib.util.find_spec("torch") is None:
    return {**head, "skipped": "torch is not installed"}
  if impl == "jax":  # before JAX starts its backends, as a run sets it
    from dcgan_jax import device  # pylint: disable=g-import-not-at-top
    device.set_deterministic(bool(args.deterministic))
  gflop = model_gflop_per_step(args)
  xla_gflop = xla_gflop_per_step(args) if impl == "jax" else None
  try:
    run_steps, sync, info = (setup_jax(args) if impl == "jax"
                             else setup_torch(args, impl == "torch-compile"))
    window_ms = [_window_ms(run_steps, sync, args.steps) for _ in range(args.windows)]
    result = info()
  except Exception as e:  # pylint: disable=broad-except  # report it as a JSON line
    return {**head, "upconv_impl": args.upconv_impl, "downconv_impl": args.downconv_impl,
            "compute_dtype": args.compute_dtype,
            "error": f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}"}
  ms = round(statistics.median(window_ms), 2)  # the reported figures all derive from this
  result.update(image_size=args.image_size, channels=args.channels,
                batch_size=args.batch_size, ngf=args.ngf, ndf=args.ndf,
                ms_per_step=ms, images_per_s=round(args.batch_size / ms * 1000, 1),
                gflop_per_step=round(gflop, 2),
                xla_gflop_per_step=None if xla_gflop is None else round(xla_gflop, 2),
                achieved_tflops=round(gflop / ms, 3),
                window_ms=[round(t, 2) for t in window_ms],
                **_flop_fraction(args, result, gflop / ms),
                glibc_tunables=os.environ.get("GLIBC_TUNABLES", ""),
                date=time.strftime("%Y-%m-%d"))
  return result


def _flop_fraction(args, result: dict, achieved_tflops: float) -> dict:
  """peak_tflops and flop_fraction (achieved over peak) where the peak is known."""
  dtype = result.get("compute_dtype", "float32")
  peak = args.peak_tflops or peak_tflops(result["device"], dtype)
  if not peak:
    return {}
  return {"peak_tflops": peak, "flop_fraction": round(achieved_tflops / peak, 4)}


def _run_isolated(children: list[list[str]], rounds: int, extra: dict | None = None) -> None:
  """Runs each child's flags in its own process (their thread pools would slow each other
  down in one), in turn, `rounds` times: adjacent runs see the same machine speed. A child
  that dies without its line (killed for memory, a crash in a library) gets an error line."""
  argv, skip = [], False
  for arg in sys.argv[1:]:  # the same flags, less those each child gets
    if skip:
      skip = False
    elif arg in ("--impl", "--rounds", "--upconv-impl", "--downconv-impl"):
      skip = True
    elif arg != "--sweep" and not arg.startswith(
        ("--impl=", "--rounds=", "--upconv-impl=", "--downconv-impl=")):
      argv.append(arg)
  for r in range(rounds):
    for child in children:
      out = subprocess.run([sys.executable, os.path.abspath(__file__), *child, *argv],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           check=False)
      lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
      if not lines:
        flags = dict(zip(child[::2], child[1::2]))
        tail = (out.stderr.strip().splitlines() or [""])[-1][:300]
        lines = [{"impl": flags["--impl"], "upconv_impl": flags.get("--upconv-impl"),
                  "downconv_impl": flags.get("--downconv-impl"),
                  "error": f"exit status {out.returncode}: {tail}"}]
      for line in lines:
        print(json.dumps({**line, **(extra or {}), "round": r}), flush=True)


if __name__ == "__main__":
  main()
