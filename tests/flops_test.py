"""FLOPs counted from the architecture: hand-computed layers and XLA's own count."""

import jax
import jax.numpy as jnp
import pytest

from dcgan_jax import flops, steps
from dcgan_jax.models import Discriminator, Generator


def test_layers_of_the_tutorials_64px_networks_by_hand():
  g = flops.generator_layers(64, 3, ngf=64, nz=100)
  assert [l.name for l in g] == ["project_4x4"] + [f"upconv_{i}" for i in range(4)]
  # z (100) to 4x4x512: every tap meets the 1x1 input.
  assert g[0].macs == 16 * 100 * 512
  # 4x4x512 -> 8x8x256: per axis 4 outputs... of the adjoint conv 8 -> 4, 4 taps each, less
  # the 2 that fall into the padding (first and last row): 14 pairs per axis.
  assert g[1].macs == 14 * 14 * 512 * 256
  assert g[4].macs == 126 * 126 * 64 * 3  # 32x32x64 -> 64x64x3: 4*32 - 2 pairs per axis
  d = flops.discriminator_layers(64, 3, ndf=64)
  assert d[0].macs == 126 * 126 * 3 * 64  # 64x64x3 -> 32x32x64
  assert d[3].macs == 14 * 14 * 256 * 512  # 8x8x256 -> 4x4x512
  assert d[4].macs == 16 * 512  # the logit


def test_iteration_flops_add_up_the_passes():
  g_fwd = sum(l.macs for l in flops.generator_layers(32, 1, 8, 16))
  d = flops.discriminator_layers(32, 1, 8)
  d_fwd = sum(l.macs for l in d)
  proj = flops.generator_layers(32, 1, 8, 16)[0].macs
  one = flops.iteration_flops(32, 1, 8, 8, 16, batch_size=1)
  assert one == 2 * (3 * g_fwd - proj + 8 * d_fwd - 2 * d[0].macs)
  assert flops.iteration_flops(32, 1, 8, 8, 16, batch_size=5) == 5 * one
  # A second D update adds a G forward and a D update.
  two = flops.iteration_flops(32, 1, 8, 8, 16, batch_size=1, d_steps=2)
  assert two - one == 2 * (g_fwd + 6 * d_fwd - 2 * d[0].macs)


def _xla_flops(size, channels, ngf, ndf, nz, batch) -> float:
  gan = steps.GAN(Generator(size, channels, ngf, "xla"), Discriminator(size, ndf, "xla"),
                  steps.Adam(), steps.Adam(), nz=nz)
  state = steps.abstract_train_state(gan)
  images = jax.ShapeDtypeStruct((batch, size, size, channels), jnp.uint8)
  cost = jax.jit(steps.train_step, static_argnums=0).lower(gan, state, images).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  if not cost or "flops" not in cost:
    pytest.skip(f"XLA's {jax.default_backend()} backend gives no cost analysis")
  return cost["flops"]


@pytest.mark.parametrize("size, channels, width, batch", [(32, 1, 64, 64), (64, 3, 64, 128)])
def test_count_is_xlas_count_of_the_plain_model_less_elementwise_work(size, channels, width,
                                                                      batch):
  """The benchmark's sizes: XLA's count adds BatchNorm, activations, losses and Adam (whose
  share grows as the batch shrinks), about 1% here."""
  counted = flops.iteration_flops(size, channels, width, width, 100, batch)
  xla = _xla_flops(size, channels, width, width, 100, batch)
  assert counted <= xla <= counted * 1.015
