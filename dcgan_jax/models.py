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


class BatchNorm(nn.Module):
  """PyTorch's `BatchNorm2d(momentum=0.1, eps=1e-5)` over the last axis, in Flax's variables.

  Training normalises with the batch's mean and biased variance (Flax's one-pass form,
  E[x^2] - E[x]^2, in float32 at least), as both libraries do; the running averages are
  PyTorch's: momentum 0.1 and the *unbiased* batch variance (times n / (n - 1), n = B*H*W values
  per channel), where Flax's nn.BatchNorm keeps the biased one. Parameters 'scale' and 'bias'
  and statistics 'mean' and 'var' are named and placed as nn.BatchNorm's, so checkpoints and
  dcgan_jax.convert read them unchanged.
  """
  use_running_average: bool = False
  dtype: str = "float32"
  momentum: float = 0.9  # Flax's convention: the weight of the old average
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    features = x_BxHxWxC.shape[-1]
    scale = self.param("scale", bn_scale_init, (features,))
    bias = self.param("bias", nn.initializers.zeros, (features,))
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
    ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
    if self.use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      mean, var = _batch_moments(x_BxHxWxC, self.dtype)
      if not self.is_initializing():
        n = x_BxHxWxC.size // features
        unbiased = var * (n / (n - 1)) if n > 1 else var
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * unbiased
    y = x_BxHxWxC - mean
    y *= jax.lax.rsqrt(var + self.epsilon) * scale
    y += bias
    return y.astype(self.dtype)


def _batch_moments(x: jax.Array, dtype: str) -> tuple[jax.Array, jax.Array]:
  """Per-channel mean and biased variance over every axis but the last, in float32 at least
  (float64 stays float64), the variance as max(0, E[x^2] - E[x]^2) in one pass (Flax's)."""
  x = x.astype(jnp.promote_types(dtype, jnp.float32))
  axes = tuple(range(x.ndim - 1))
  mean = jnp.mean(x, axes)
  mean2 = jnp.mean(jnp.square(x), axes)
  return mean, jnp.maximum(0.0, mean2 - jnp.square(mean))


def num_stride2_layers(image_size: int) -> int:
  """Returns the number of 2x up- (G) or down-sampling (D) layers between 4x4 and the image."""
  if image_size not in SUPPORTED_IMAGE_SIZES:
    raise ValueError(f"image_size {image_size} is not one of {SUPPORTED_IMAGE_SIZES}")
  return image_size.bit_length() - 3  # 32 -> 3, 64 -> 4, 128 -> 5


def _out_dtype(dtype: str):
  """Outputs are float32 (also under bfloat16 compute), float64 when computing in float64."""
  return jnp.float64 if dtype == "float64" else jnp.float32


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


def _spectral_kernel(module: nn.Module, kernel: jax.Array, update: bool) -> jax.Array:
  """Returns the kernel divided by its spectral norm, the power iteration's vector `sn_u` kept in
  the 'batch_stats' collection (as Flax's SpectralNorm keeps its state) and advanced by one
  iteration on each forward pass with `update` (training), as PyTorch's spectral_norm does."""
  def init_u():
    return ops.normalize(jax.random.normal(module.make_rng("params"), kernel.shape[-1:]))

  u = module.variable("batch_stats", "sn_u", init_u)
  normalized, new_u, _ = ops.spectral_normalize(kernel, u.value)
  if update and not module.is_initializing():
    u.value = new_u
  return normalized


class DownConv(nn.Module):
  """`Conv2d(in, features, 4, 2, 1, bias=False)`: halves height and width. Parameters as
  `nn.Conv`'s (a 'kernel' of shape (4, 4, in, features)); with spectral_norm, the kernel is
  divided by its spectral norm (`_spectral_kernel`)."""
  features: int
  impl: str = "auto"
  dtype: str = "float32"
  spectral_norm: bool = False

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array, train: bool = True) -> jax.Array:
    kernel = self.param("kernel", conv_init, (4, 4, x_BxHxWxC.shape[-1], self.features))
    if self.spectral_norm:
      kernel = _spectral_kernel(self, kernel, train)
    return ops.conv_4x2(*_cast(self.dtype, x_BxHxWxC, kernel), self.impl)


class Logit(nn.Module):
  """`Conv2d(in, 1, 4, 1, 0, bias=False)` on D's 4x4 features: one logit per image. Parameters
  and outputs as `nn.Conv`'s; spectral_norm as DownConv's."""
  dtype: str = "float32"
  spectral_norm: bool = False

  @nn.compact
  def __call__(self, x_Bx4x4xC: jax.Array, train: bool = True) -> jax.Array:
    kernel = self.param("kernel", conv_init, (4, 4, x_Bx4x4xC.shape[-1], 1))
    if self.spectral_norm:
      kernel = _spectral_kernel(self, kernel, train)
    return ops.conv_4x4_valid(*_cast(self.dtype, x_Bx4x4xC, kernel))


def _check_labels(module: str, num_classes: int, labels_B: jax.Array | None) -> None:
  if num_classes and labels_B is None:
    raise ValueError(f"this {module} is class-conditional ({num_classes} classes): pass labels_B")
  if not num_classes and labels_B is not None:
    raise ValueError(f"this {module} is unconditional (num_classes 0): it takes no labels_B")


def class_one_hot(labels_B: jax.Array, num_classes: int, dtype) -> jax.Array:
  """The labels as one-hot rows (B, num_classes)."""
  return jax.nn.one_hot(labels_B, num_classes, dtype=dtype)


class Generator(nn.Module):
  """Maps z (B, nz) to float32 images (B, S, S, channels) in [-1, 1].

  dtype 'bfloat16' computes convolutions and activations in bf16; parameters, BatchNorm
  statistics and the output stay float32. dtype 'float64' (with jax_enable_x64) computes and
  returns float64. With num_classes > 0 it is class-conditional: the class (labels_B, int (B,))
  joins z as a one-hot vector, so the first layer's kernel holds a learned 4x4 input per class
  (its shape (4, 4, width, nz + num_classes)).
  """
  image_size: int = 64
  channels: int = 3
  ngf: int = 64
  upconv_impl: str = "auto"
  dtype: str = "float32"
  num_classes: int = 0

  @nn.compact
  def __call__(self, z_BxZ: jax.Array, train: bool = True,
               labels_B: jax.Array | None = None) -> jax.Array:
    _check_labels("generator", self.num_classes, labels_B)
    if self.num_classes:
      z_BxZ = jnp.concatenate([z_BxZ, class_one_hot(labels_B, self.num_classes, z_BxZ.dtype)],
                              axis=-1)
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
    return jnp.tanh(x.astype(_out_dtype(self.dtype)))


D_NORMS = ("batch", "layer", "none")


class Discriminator(nn.Module):
  """Maps images (B, S, S, C) in [-1, 1] to one float32 logit per image, (B,).

  norm: what follows each inner convolution: 'batch' (the tutorial's BatchNorm), 'layer'
  (LayerNorm over each image's H, W and C with a scale and bias per channel: a critic whose
  outputs do not depend on the rest of the batch, as WGAN-GP's penalty needs) or 'none'.
  spectral_norm: every convolution's kernel divided by its spectral norm (Miyato et al. 2018).
  dtype as for the Generator. With num_classes > 0 it is a projection discriminator (Miyato &
  Koyama 2018): the logit gains the inner product of the class's embedding (a row of
  'class_projection', (num_classes, F)) with the last features summed over their 4x4 positions.
  """
  image_size: int = 64
  ndf: int = 64
  downconv_impl: str = "auto"
  dtype: str = "float32"
  norm: str = "batch"
  spectral_norm: bool = False
  num_classes: int = 0

  @nn.compact
  def __call__(self, x_BxSxSxC: jax.Array, train: bool = True,
               labels_B: jax.Array | None = None) -> jax.Array:
    _check_labels("discriminator", self.num_classes, labels_B)
    if self.norm not in D_NORMS:
      raise ValueError(f"norm {self.norm!r} is not one of {', '.join(D_NORMS)}")
    n = num_stride2_layers(self.image_size)
    sn = self.spectral_norm
    x = DownConv(self.ndf, self.downconv_impl, self.dtype, sn, name="Conv_0")(x_BxSxSxC, train)
    x = nn.leaky_relu(x, 0.2)
    width = self.ndf
    for i in range(1, n):
      width *= 2
      x = DownConv(width, self.downconv_impl, self.dtype, sn, name=f"Conv_{i}")(x, train)
      if self.norm == "batch":
        x = BatchNorm(use_running_average=not train, dtype=self.dtype)(x)
      elif self.norm == "layer":
        x = nn.LayerNorm(epsilon=1e-5, reduction_axes=(1, 2, 3), feature_axes=-1,
                         dtype=self.dtype)(x)
      x = nn.leaky_relu(x, 0.2)
    logits_B = Logit(self.dtype, sn, name=f"Conv_{n}")(x, train).reshape(x.shape[0])  # 4x4 -> 1
    logits_B = logits_B.astype(_out_dtype(self.dtype))
    if self.num_classes:
      embedding = self.param("class_projection", conv_init, (self.num_classes, x.shape[-1]))
      pooled_BxF, embedded_BxF = _cast(self.dtype, jnp.sum(x, axis=(1, 2)), embedding[labels_B])
      logits_B += jnp.sum(pooled_BxF * embedded_BxF, axis=-1).astype(logits_B.dtype)
    return logits_B
