"""DCGAN Generator and Discriminator (the PyTorch DCGAN tutorial's topology).

Generalised to 32, 64 and 128 pixels: each doubling of the image size adds one
stride-2 layer, and the widest layer is `ngf` (or `ndf`) times 2**(layers - 1).
At 64 px both networks are exactly the tutorial's.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from dcgan_jax import ops

SUPPORTED_IMAGE_SIZES = (32, 64, 128)

# DCGAN initialisation: conv weights N(0, 0.02), BatchNorm scale N(1, 0.02), bias 0.
conv_init = nn.initializers.normal(stddev=0.02)


def bn_scale_init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
  return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


# PyTorch BatchNorm2d(momentum=0.1, eps=1e-5) is Flax momentum 0.9, epsilon 1e-5.
# Flax keeps the biased batch variance in its running average (PyTorch keeps the
# unbiased one); with B*H*W >= 1024 values per channel the two differ by < 0.1%.
BatchNorm = functools.partial(
    nn.BatchNorm, momentum=0.9, epsilon=1e-5, scale_init=bn_scale_init,
    bias_init=nn.initializers.zeros)


def num_stride2_layers(image_size: int) -> int:
  """Returns the number of 2x up- (G) or down-sampling (D) layers between 4x4 and the image."""
  if image_size not in SUPPORTED_IMAGE_SIZES:
    raise ValueError(f"image_size {image_size} is not one of {SUPPORTED_IMAGE_SIZES}")
  return image_size.bit_length() - 3  # 32 -> 3, 64 -> 4, 128 -> 5


def _cast(dtype: str, *arrays: jax.Array) -> tuple[jax.Array, ...]:
  """Inputs and float32 parameters in the compute dtype (parameters stay float32)."""
  return tuple(a.astype(dtype) for a in arrays)


class Project4x4(nn.Module):
  """`ConvTranspose2d(nz, features, 4, 1, 0, bias=False)` on the latent vector."""
  features: int
  dtype: str = "float32"

  @nn.compact
  def __call__(self, z_BxZ: jax.Array) -> jax.Array:
    kernel = self.param("kernel", conv_init, (4, 4, self.features, z_BxZ.shape[-1]))
    return ops.project_4x4(*_cast(self.dtype, z_BxZ, kernel))


class UpConv(nn.Module):
  """`ConvTranspose2d(in, features, 4, 2, 1, bias=False)`: doubles height and width."""
  features: int
  impl: str = "auto"
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    kernel = self.param("kernel", conv_init, (4, 4, self.features, x_BxHxWxC.shape[-1]))
    return ops.conv_transpose_4x2(*_cast(self.dtype, x_BxHxWxC, kernel), self.impl)


class DownConv(nn.Module):
  """`Conv2d(in, features, 4, 2, 1, bias=False)`: halves height and width. Parameters as
  `nn.Conv`'s (a 'kernel' of shape (4, 4, in, features))."""
  features: int
  impl: str = "auto"
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    kernel = self.param("kernel", conv_init, (4, 4, x_BxHxWxC.shape[-1], self.features))
    return ops.conv_4x2(*_cast(self.dtype, x_BxHxWxC, kernel), self.impl)


class Generator(nn.Module):
  """Maps z (B, nz) to float32 images (B, S, S, channels) in [-1, 1].

  dtype 'bfloat16' computes convolutions and activations in bf16; parameters, BatchNorm
  statistics and the output stay float32.
  """
  image_size: int = 64
  channels: int = 3
  ngf: int = 64
  upconv_impl: str = "auto"
  dtype: str = "float32"

  @nn.compact
  def __call__(self, z_BxZ: jax.Array, train: bool = True) -> jax.Array:
    n = num_stride2_layers(self.image_size)
    width = self.ngf * 2 ** (n - 1)
    bn = functools.partial(BatchNorm, use_running_average=not train, dtype=self.dtype)
    x = Project4x4(width, self.dtype)(z_BxZ)
    x = nn.relu(bn()(x))
    for _ in range(n - 1):
      width //= 2
      x = UpConv(width, self.upconv_impl, self.dtype)(x)
      x = nn.relu(bn()(x))
    x = UpConv(self.channels, self.upconv_impl, self.dtype)(x)
    return jnp.tanh(x.astype(jnp.float32))


class Discriminator(nn.Module):
  """Maps images (B, S, S, C) in [-1, 1] to one float32 logit per image, (B,).

  dtype as for the Generator.
  """
  image_size: int = 64
  ndf: int = 64
  downconv_impl: str = "auto"
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x_BxSxSxC: jax.Array, train: bool = True) -> jax.Array:
    n = num_stride2_layers(self.image_size)
    x = DownConv(self.ndf, self.downconv_impl, self.dtype, name="Conv_0")(x_BxSxSxC)
    x = nn.leaky_relu(x, 0.2)
    width = self.ndf
    for i in range(1, n):
      width *= 2
      x = DownConv(width, self.downconv_impl, self.dtype, name=f"Conv_{i}")(x)
      x = BatchNorm(use_running_average=not train, dtype=self.dtype)(x)
      x = nn.leaky_relu(x, 0.2)
    x = nn.Conv(1, (4, 4), padding="VALID", use_bias=False, kernel_init=conv_init,
                dtype=self.dtype, name=f"Conv_{n}")(x)  # 4x4 -> 1x1
    return x.reshape(x.shape[0]).astype(jnp.float32)
