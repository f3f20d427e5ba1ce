"""Float32 drift from float64 in the first training iterations, dcgan-jax against PyTorch.

For each initialisation seed: the PyTorch tutorial's G and D (DCGAN initialisation, random
BatchNorm affine parameters and running statistics) are converted with dcgan_jax.convert, then
both sides run the same iterations (the tutorial's loop, BCE on D's logits: PyTorch's
BCEWithLogitsLoss, dcgan-jax's train_step) on the same real batches and the same latents (the
project's step_noise, handed to PyTorch), in float32 and in float64. After each iteration the
Adam first moments (and BatchNorm running statistics) of every tensor are compared with the same
side's float64 run by relative L2 error, ||a - b|| / ||b||, and the worst tensor is reported.

  python benchmarks/drift.py --size 64 --channels 3 --batch 16 --ngf 16 --ndf 16 --seeds 1-10
  python benchmarks/drift.py --size 32 --channels 1 --batch 32 --seeds 1-10

One JSON line per seed, side (jax or torch) and dtype: the worst relative error of the first
moments after each iteration, the tensor it is in, and, for float32, whether it stays within
--tolerance (1e-4) at iteration 2; then one summary line per side.
"""

import argparse
import copy
import functools
import json
import os
import sys
import types

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

Snapshot = dict[str, np.ndarray]  # PyTorch state_dict keys ("netG.main.0.weight") -> values


def torch_pair(size: int, channels: int, seed: int, ngf: int = 8, ndf: int = 8, nz: int = 12):
  """The tutorial's netG and netD (their layers an nn.Sequential) with DCGAN initialisation from
  torch.manual_seed(seed), then random BatchNorm affine parameters and running statistics."""
  import torch  # pylint: disable=g-import-not-at-top
  from benchmarks.throughput import _torch_models  # pylint: disable=g-import-not-at-top

  torch.manual_seed(seed)
  args = types.SimpleNamespace(image_size=size, channels=channels, ngf=ngf, ndf=ndf, nz=nz)
  net_g, net_d = _torch_models(args)
  with torch.no_grad():
    for module in list(net_g.modules()) + list(net_d.modules()):
      if isinstance(module, torch.nn.BatchNorm2d):
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0, 0.2)
        module.running_mean.normal_(0, 0.3)
        module.running_var.uniform_(0.5, 2.0)
  return net_g, net_d


def state_dict(net) -> dict[str, np.ndarray]:
  """A module's state_dict as numpy arrays (copies)."""
  return {k: v.detach().cpu().numpy().copy() for k, v in net.state_dict().items()}


def torch_iterations(net_g, net_d, images_KxBxSxSxC_u8: np.ndarray, z_KxBxZ: np.ndarray,
                     dtype: str) -> list[Snapshot]:
  """Runs the tutorial's iterations on copies of the networks in dtype, on the images as
  dcgan-jax's steps.to_float makes them floats; after each, the Adam first moments of every
  parameter and both networks' running statistics."""
  import torch  # pylint: disable=g-import-not-at-top
  from dcgan_jax import steps  # pylint: disable=g-import-not-at-top

  torch_dtype = getattr(torch, dtype)
  g, d = copy.deepcopy(net_g).to(torch_dtype), copy.deepcopy(net_d).to(torch_dtype)
  d_logit = d[:-1]  # the tutorial's D without its Sigmoid: BCE on logits
  opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
  opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
  criterion = torch.nn.BCEWithLogitsLoss()
  g.train()
  d.train()
  snapshots = []
  for images, z in zip(images_KxBxSxSxC_u8, z_KxBxZ):
    real = np.asarray(steps.to_float(images))
    real_t = torch.from_numpy(real.transpose(0, 3, 1, 2).copy()).to(torch_dtype)
    z_t = torch.from_numpy(z).to(torch_dtype)[:, :, None, None]
    ones = torch.ones(len(z), dtype=torch_dtype)
    d.zero_grad()
    criterion(d_logit(real_t).view(-1), ones).backward()
    fake = g(z_t)
    criterion(d_logit(fake.detach()).view(-1), torch.zeros_like(ones)).backward()
    opt_d.step()
    g.zero_grad()
    criterion(d_logit(fake).view(-1), ones).backward()
    opt_g.step()
    snapshots.append(_torch_snapshot({"netG": (g, opt_g), "netD": (d, opt_d)}))
  return snapshots


def _torch_snapshot(nets: dict) -> Snapshot:
  out = {}
  for name, (net, opt) in nets.items():
    for key, p in net.named_parameters():
      out[f"{name}.main.{key}"] = opt.state[p]["exp_avg"].detach().double().numpy().copy()
    for key, b in net.named_buffers():
      if "running" in key:
        out[f"{name}.main.{key}"] = b.detach().double().numpy().copy()
  return out


def jax_iterations(net_g, net_d, images_KxBxSxSxC_u8: np.ndarray, dtype: str, seed: int,
                   upconv_impl: str = "auto", downconv_impl: str = "auto"
                   ) -> tuple[list[Snapshot], np.ndarray]:
  """Runs dcgan-jax's train_step on the converted networks in dtype (float64 under
  jax.enable_x64); returns the snapshots (as torch_iterations') and the latents (K, B, Z)."""
  import jax  # pylint: disable=g-import-not-at-top
  from dcgan_jax import steps  # pylint: disable=g-import-not-at-top

  with jax.enable_x64(dtype == "float64"):
    gan, state = jax_setup(net_g, net_d, dtype, seed, upconv_impl, downconv_impl)
    snapshots, latents = [], []
    for images in images_KxBxSxSxC_u8:
      latents.append(np.asarray(steps.step_noise(gan, state, images.shape[0])))
      state = jax_step(gan, state, images)
      snapshots.append(jax_snapshot(state))
  return snapshots, np.stack(latents)


def jax_setup(net_g, net_d, dtype: str, seed: int, upconv_impl: str = "auto",
              downconv_impl: str = "auto"):
  """(GAN, TrainState) of the converted networks, parameters and statistics in dtype, the state's
  key PRNGKey(seed); call under jax.enable_x64 for float64."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from dcgan_jax import convert, steps  # pylint: disable=g-import-not-at-top
  from dcgan_jax.models import Discriminator, Generator  # pylint: disable=g-import-not-at-top

  g_vars, g_sizes = convert.generator_from_torch(state_dict(net_g))
  d_vars, _ = convert.discriminator_from_torch(state_dict(net_d))
  cast = functools.partial(jax.tree.map, lambda a: jnp.asarray(a, dtype))
  size, channels = g_sizes["image_size"], g_sizes["channels"]
  gan = steps.GAN(
      generator=Generator(size, channels, g_sizes["ngf"], upconv_impl, dtype),
      discriminator=Discriminator(size, net_d[0].out_channels, downconv_impl, dtype),
      g_opt=steps.Adam(), d_opt=steps.Adam(), nz=g_sizes["nz"])
  g_params, d_params = cast(g_vars["params"]), cast(d_vars["params"])
  return gan, steps.TrainState(
      step=jnp.zeros((), jnp.int32), rng=jax.random.PRNGKey(seed),
      g_params=g_params, g_batch_stats=cast(g_vars["batch_stats"]),
      g_opt_state=gan.g_opt.tx.init(g_params),
      d_params=d_params, d_batch_stats=cast(d_vars["batch_stats"]),
      d_opt_state=gan.d_opt.tx.init(d_params))


@functools.cache
def _jitted_train_step():
  import jax  # pylint: disable=g-import-not-at-top
  from dcgan_jax import steps  # pylint: disable=g-import-not-at-top
  return jax.jit(steps.train_step, static_argnums=0)


def jax_step(gan, state, images_BxSxSxC_u8: np.ndarray):
  """One train_step (jitted) of the state."""
  return _jitted_train_step()(gan, state, images_BxSxSxC_u8)[0]


def jax_snapshot(state) -> Snapshot:
  from dcgan_jax import convert  # pylint: disable=g-import-not-at-top
  out = {}
  for name, to_torch, opt_state, stats in (
      ("netG", convert.generator_to_torch, state.g_opt_state, state.g_batch_stats),
      ("netD", convert.discriminator_to_torch, state.d_opt_state, state.d_batch_stats)):
    mu = opt_state[0].mu
    for key, value in to_torch({"params": mu, "batch_stats": stats}, np.float64).items():
      if not key.endswith("num_batches_tracked"):
        out[f"{name}.{key}"] = value
  return out


def relative_errors(got: Snapshot, want: Snapshot, which: str = "moments") -> dict[str, float]:
  """||got - want|| / ||want|| per tensor: the first moments ('moments') or the running
  statistics ('running')."""
  keys = [k for k in want if ("running" in k) == (which == "running")]
  return {k: float(np.linalg.norm(got[k] - want[k]) / max(np.linalg.norm(want[k]), 1e-300))
          for k in keys}


def worst(errors: dict[str, float]) -> tuple[str, float]:
  key = max(errors, key=errors.get)
  return key, errors[key]


def real_batches(size: int, channels: int, batch: int, iterations: int, seed: int) -> np.ndarray:
  """(K, B, S, S, C) uint8: random pixels, the same for both sides."""
  rng = np.random.default_rng(10_000 + seed)
  return rng.integers(0, 256, (iterations, batch, size, size, channels), dtype=np.uint8)


def both_sides(net_g, net_d, images_KxBxSxSxC_u8: np.ndarray, dtype: str, seed: int, **impls
               ) -> tuple[list[Snapshot], list[Snapshot]]:
  """dcgan-jax's and PyTorch's snapshots of the same iterations in dtype: the same images, and
  dcgan-jax's latents handed to PyTorch; impls: jax_iterations' convolution forms."""
  ours, latents = jax_iterations(net_g, net_d, images_KxBxSxSxC_u8, dtype, seed, **impls)
  return ours, torch_iterations(net_g, net_d, images_KxBxSxSxC_u8, latents, dtype)


# (side, dtype) of each line and the run it is compared with.
_COMPARISONS = ((("jax", "float32"), ("jax", "float64")),
                (("jax", "float64"), ("torch", "float64")),
                (("torch", "float32"), ("torch", "float64")))


def run_seed(args, seed: int) -> list[dict]:
  """The float32 and float64 runs of both sides for one seed: one line per side and dtype."""
  net_g, net_d = torch_pair(args.size, args.channels, seed, args.ngf, args.ndf, args.nz)
  images = real_batches(args.size, args.channels, args.batch, args.iterations, seed)
  impls = {"upconv_impl": args.upconv_impl, "downconv_impl": args.downconv_impl}
  runs = {}
  for dtype in ("float64", "float32"):
    runs["jax", dtype], runs["torch", dtype] = both_sides(net_g, net_d, images, dtype, seed,
                                                          **impls)
  lines = []
  for (side, dtype), ref in _COMPARISONS:
    errors = [relative_errors(got, want) for got, want in zip(runs[side, dtype], runs[ref])]
    line = {"seed": seed, "side": side, "dtype": dtype, "against": f"{ref[0]} {ref[1]}",
            "moments": [worst(e)[1] for e in errors],
            "worst_tensor": [worst(e)[0] for e in errors],
            "running": [worst(relative_errors(got, want, "running"))[1]
                        for got, want in zip(runs[side, dtype], runs[ref])]}
    if dtype == "float32":
      line["within"] = bool(line["moments"][1] <= args.tolerance)
    lines.append(line)
  return lines


def seeds_of(text: str) -> list[int]:
  """'1-10' or '1,3,5'."""
  if "-" in text:
    first, last = text.split("-")
    return list(range(int(first), int(last) + 1))
  return [int(s) for s in text.split(",")]


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", type=int, default=64)
  parser.add_argument("--channels", type=int, default=3)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--ngf", type=int, default=16)
  parser.add_argument("--ndf", type=int, default=16)
  parser.add_argument("--nz", type=int, default=100)
  parser.add_argument("--iterations", type=int, default=3)
  parser.add_argument("--seeds", default="1-10")
  parser.add_argument("--tolerance", type=float, default=1e-4)
  parser.add_argument("--upconv-impl", default="auto")
  parser.add_argument("--downconv-impl", default="auto")
  args = parser.parse_args(argv)
  within = {"jax": 0, "torch": 0}
  seeds = seeds_of(args.seeds)
  for seed in seeds:
    for line in run_seed(args, seed):
      print(json.dumps(line), flush=True)
      if line["dtype"] == "float32":
        within[line["side"]] += line["within"]
  setting = {k: getattr(args, k) for k in ("size", "channels", "batch", "ngf", "ndf", "nz",
                                           "upconv_impl", "downconv_impl")}
  for side, count in within.items():
    print(json.dumps({"summary": side, **setting, "seeds": len(seeds),
                      "float32_within_tolerance_at_iteration_2": count,
                      "tolerance": args.tolerance}))


if __name__ == "__main__":
  main()
