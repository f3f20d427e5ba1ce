"""DiffAugment (Zhao et al. 2020): differentiable augmentations of D's inputs, applied to real
and fake images alike (in the D step and in the G step), so that D cannot tell them apart by the
augmentation and G's gradient flows through it.

Policies (config.diffaugment, comma-separated, applied in this order):
- 'color': brightness + U[-0.5, 0.5], saturation x U[0, 2] (about the mean of the channels; no
  change to 1-channel images), contrast x U[0.5, 1.5] (about the image's mean), each per image;
  the result is clipped to [-1, 1], the range of D's real inputs (DiffAugment itself leaves it
  unclipped).
- 'translation': a shift of each image by up to 1/8 of its side in each direction (whole pixels),
  the uncovered border 0 (mid-grey, as DiffAugment pads).
- 'cutout': a square of half the image's side, centred anywhere in the image (clipped at the
  borders), set to 0.
Every policy keeps shapes and the range [-1, 1].
"""

import jax
import jax.numpy as jnp

POLICIES = ("color", "translation", "cutout")


def parse(policy: str) -> tuple[str, ...]:
  """Returns the policies of a config string ('' = none); ValueError names an unknown one."""
  names = tuple(p.strip() for p in policy.split(",") if p.strip())
  for name in names:
    if name not in POLICIES:
      raise ValueError(f"{name!r} is not one of {', '.join(POLICIES)}")
  return names


def _per_image(key: jax.Array, x: jax.Array, low: float, high: float) -> jax.Array:
  return jax.random.uniform(key, (x.shape[0], 1, 1, 1), minval=low, maxval=high)


def color(key: jax.Array, x_BxSxSxC: jax.Array) -> jax.Array:
  """Random brightness, saturation and contrast per image, clipped to [-1, 1]."""
  kb, ks, kc = jax.random.split(key, 3)
  x = x_BxSxSxC + _per_image(kb, x_BxSxSxC, -0.5, 0.5)
  mean_c = jnp.mean(x, axis=3, keepdims=True)
  x = (x - mean_c) * _per_image(ks, x, 0.0, 2.0) + mean_c
  mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
  x = (x - mean) * _per_image(kc, x, 0.5, 1.5) + mean
  return jnp.clip(x, -1.0, 1.0)


def translation(key: jax.Array, x_BxSxSxC: jax.Array, ratio: float = 0.125) -> jax.Array:
  """Shifts each image by whole pixels in [-S * ratio, S * ratio] along each axis; 0 fills."""
  b, h, w, _ = x_BxSxSxC.shape
  pad_h, pad_w = int(h * ratio + 0.5), int(w * ratio + 0.5)
  kh, kw = jax.random.split(key)
  dy_B = jax.random.randint(kh, (b,), -pad_h, pad_h + 1)
  dx_B = jax.random.randint(kw, (b,), -pad_w, pad_w + 1)
  padded = jnp.pad(x_BxSxSxC, ((0, 0), (pad_h, pad_h), (pad_w, pad_w), (0, 0)))

  def shift(image, dy, dx):  # output pixel (i, j) is input pixel (i - dy, j - dx)
    return jax.lax.dynamic_slice(image, (pad_h - dy, pad_w - dx, 0), (h, w, image.shape[2]))

  return jax.vmap(shift)(padded, dy_B, dx_B)


def cutout(key: jax.Array, x_BxSxSxC: jax.Array, ratio: float = 0.5) -> jax.Array:
  """Sets a square of side S * ratio, centred at a random pixel of each image, to 0."""
  b, h, w, _ = x_BxSxSxC.shape
  size_h, size_w = int(h * ratio + 0.5), int(w * ratio + 0.5)
  kh, kw = jax.random.split(key)
  cy_B = jax.random.randint(kh, (b, 1, 1), 0, h + (1 - size_h % 2))
  cx_B = jax.random.randint(kw, (b, 1, 1), 0, w + (1 - size_w % 2))
  rows = jnp.arange(h)[None, :, None]
  cols = jnp.arange(w)[None, None, :]
  inside = ((rows >= cy_B - size_h // 2) & (rows < cy_B - size_h // 2 + size_h)
            & (cols >= cx_B - size_w // 2) & (cols < cx_B - size_w // 2 + size_w))
  return x_BxSxSxC * (~inside)[..., None].astype(x_BxSxSxC.dtype)


def apply(policies: tuple[str, ...], key: jax.Array, x_BxSxSxC: jax.Array) -> jax.Array:
  """Applies the policies in order, each with its own key folded from `key`."""
  fns = {"color": color, "translation": translation, "cutout": cutout}
  for i, name in enumerate(policies):
    x_BxSxSxC = fns[name](jax.random.fold_in(key, i), x_BxSxSxC)
  return x_BxSxSxC
