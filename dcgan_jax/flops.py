"""FLOPs of DCGAN's training iteration, counted from the architecture (no compiler needed).

Every convolution and transposed convolution of G and D, forward and backward (the gradient
with respect to the layer's input and the one with respect to its kernel), at 2 FLOPs per
multiply-add. Only the taps that meet the input count: a tap that falls into the padding
does no work. That is the count XLA's cost analysis makes of the plain formulation
(`upconv_impl=downconv_impl='xla'`), whichever exact form (phase, matmul, col2im) runs the
layer: the model's mathematics, not a form's zero taps. Elementwise work (BatchNorm,
activations, losses, Adam) is left out: about 1% of XLA's count at 32 px, less at 64.
"""

import dataclasses

from dcgan_jax.models import num_stride2_layers


def _taps(n_in: int, n_out: int, kernel: int = 4, stride: int = 2, pad: int = 1) -> int:
  """Returns the (output, tap) pairs of one spatial axis whose input index is inside the image."""
  return sum(1 for o in range(n_out) for t in range(kernel) if 0 <= stride * o - pad + t < n_in)


@dataclasses.dataclass(frozen=True)
class Layer:
  """One convolution: its name and the multiply-adds of its forward pass for one image."""
  name: str
  macs: int


def generator_layers(image_size: int, channels: int, ngf: int, nz: int) -> list[Layer]:
  """G's layers: the 4x4 projection of z, then the stride-2 transposed convolutions."""
  n = num_stride2_layers(image_size)
  width, side = ngf * 2 ** (n - 1), 4
  layers = [Layer("project_4x4", 16 * nz * width)]
  for i in range(n):
    out = channels if i == n - 1 else width // 2
    # A transposed conv from side to 2*side has the triples of the conv from 2*side to side.
    layers.append(Layer(f"upconv_{i}", _taps(2 * side, side) ** 2 * width * out))
    width, side = out, 2 * side
  return layers


def discriminator_layers(image_size: int, channels: int, ndf: int) -> list[Layer]:
  """D's layers: the stride-2 convolutions, then the 4x4 convolution to one logit."""
  n = num_stride2_layers(image_size)
  layers, width, side = [], channels, image_size
  for i in range(n):
    out = ndf * 2 ** i
    layers.append(Layer(f"conv_{i}", _taps(side, side // 2) ** 2 * width * out))
    width, side = out, side // 2
  layers.append(Layer(f"conv_{n}", 16 * width))
  return layers


def iteration_flops(image_size: int, channels: int, ngf: int, ndf: int, nz: int,
                    batch_size: int, d_steps: int = 1) -> int:
  """FLOPs of one training iteration of the paper's DCGAN (train_step: BCE, no penalty), with
  G's forward pass run once per D update, as the tutorial runs it.

  Per D update: G forward (a fresh fake batch), D forward on the real and the fake batch, and
  their backward passes for D's kernels (each layer's kernel gradient, and its input
  gradient for every layer but the first: the images need none). The G update: D forward on
  the fake batch and its input gradient through every layer, then G's backward pass (kernel
  gradients, and input gradients for every layer but the projection: z needs none).
  """
  g = generator_layers(image_size, channels, ngf, nz)
  d = discriminator_layers(image_size, channels, ndf)
  g_fwd, d_fwd = sum(l.macs for l in g), sum(l.macs for l in d)
  d_update = g_fwd + 2 * d_fwd + 2 * d_fwd + 2 * (d_fwd - d[0].macs)
  g_update = d_fwd + d_fwd + g_fwd + (g_fwd - g[0].macs)
  return 2 * batch_size * (d_steps * d_update + g_update)
