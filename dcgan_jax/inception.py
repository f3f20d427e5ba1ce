"""The FID Inception-v3 in Flax, with its weights read from the file pytorch-fid uses.

The network is the 2015-12-05 Inception-v3 that the FID paper (TTUR, Heusel et al. 2017)
published for TensorFlow and that pytorch-fid ported to PyTorch (`FIDInceptionA/C/E_1/E_2`):
torchvision's Inception-v3 topology, with the TensorFlow graph's differences: the average
pools of the A, C and first E blocks leave the padding out of the average, and the last E
block pools by maximum. FID uses its 2048 pool features.

Input: images in [-1, 1], NHWC, any size, 1 or 3 channels (one channel is repeated to
three). They are resized to 299x299 as pytorch-fid resizes (`F.interpolate(mode='bilinear',
align_corners=False)`: half-pixel centres, no antialiasing); its [0, 1] -> [-1, 1] scaling
commutes with that resize, so images already in [-1, 1] are resized directly.

Weights: `pt_inception-2015-12-05-6726825d.pth` from pytorch-fid's releases (URL below),
checked against its SHA-256 and read without running pickled code (torch_files).
Module and parameter names follow the PyTorch state_dict's keys, so loading is a renaming
plus the OIHW -> HWIO kernel transpose.
"""

import argparse
import functools
import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dcgan_jax import torch_files
from dcgan_jax.errors import RunError, UsageError

WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
               "pt_inception-2015-12-05-6726825d.pth")
WEIGHTS_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
WEIGHTS_BYTES = 95_628_359
WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
INPUT_SIZE = 299
FEATURES = 2048


class BasicConv(nn.Module):
  """Convolution without bias, BatchNorm (eps 1e-3, running averages), ReLU."""
  features: int
  kernel: Sequence[int]
  strides: Sequence[int] = (1, 1)
  padding: Sequence[int] = (0, 0)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    pad = [(p, p) for p in self.padding]
    x = nn.Conv(self.features, tuple(self.kernel), tuple(self.strides), pad, use_bias=False,
                name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
    return nn.relu(x)


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
  """Averages 3x3 windows, stride 1, padding 1, over the window's pixels inside the image."""
  return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, (3, 3), (2, 2), "VALID")


class InceptionA(nn.Module):
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(64, (1, 1), name="branch1x1")(x)
    b5 = BasicConv(48, (1, 1), name="branch5x5_1")(x)
    b5 = BasicConv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
    b3 = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
    bp = BasicConv(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(384, (3, 3), (2, 2), name="branch3x3")(x)
    bd = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
    bd = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = BasicConv(96, (3, 3), (2, 2), name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    b1 = BasicConv(192, (1, 1), name="branch1x1")(x)
    b7 = BasicConv(c7, (1, 1), name="branch7x7_1")(x)
    b7 = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = BasicConv(c7, (1, 1), name="branch7x7dbl_1")(x)
    bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = BasicConv(192, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(192, (1, 1), name="branch3x3_1")(x)
    b3 = BasicConv(320, (3, 3), (2, 2), name="branch3x3_2")(b3)
    b7 = BasicConv(192, (1, 1), name="branch7x7x3_1")(x)
    b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = BasicConv(192, (3, 3), (2, 2), name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
  max_pool: bool  # the last block (pytorch-fid's FIDInceptionE_2) pools by maximum

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(320, (1, 1), name="branch1x1")(x)
    b3 = BasicConv(384, (1, 1), name="branch3x3_1")(x)
    b3 = jnp.concatenate([BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                          BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], -1)
    bd = BasicConv(448, (1, 1), name="branch3x3dbl_1")(x)
    bd = BasicConv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                          BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)],
                         -1)
    if self.max_pool:
      pooled = nn.max_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)))
    else:
      pooled = _avg_pool_3x3(x)
    bp = BasicConv(192, (1, 1), name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """Returns (out, in) weights of PyTorch's bilinear resize with align_corners=False, no antialias:
  output pixel i samples the input at (i + 0.5) * in/out - 0.5, clamped at 0."""
  scale = in_size / out_size
  src = np.maximum((np.arange(out_size) + 0.5) * scale - 0.5, 0.0)
  lo = np.minimum(np.floor(src).astype(int), in_size - 1)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = src - lo
  m = np.zeros((out_size, in_size), np.float64)
  np.add.at(m, (np.arange(out_size), lo), 1.0 - frac)
  np.add.at(m, (np.arange(out_size), hi), frac)
  return m.astype(np.float32)


def resize_to_input(x_BxHxWxC: jax.Array) -> jax.Array:
  """Resizes bilinearly to 299x299 as pytorch-fid does it (see bilinear_matrix)."""
  _, h, w, _ = x_BxHxWxC.shape
  rows, cols = bilinear_matrix(h, INPUT_SIZE), bilinear_matrix(w, INPUT_SIZE)
  hp = jax.lax.Precision.HIGHEST
  return jnp.einsum("ih,jw,bhwc->bijc", rows, cols, x_BxHxWxC, precision=hp)


class InceptionV3FID(nn.Module):
  """(B, H, W, 1 or 3) images in [-1, 1] -> (B, 2048) pool features."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if x.shape[-1] == 1:
      x = jnp.repeat(x, 3, axis=-1)
    x = resize_to_input(x.astype(jnp.float32))
    x = BasicConv(32, (3, 3), (2, 2), name="Conv2d_1a_3x3")(x)
    x = BasicConv(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = BasicConv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
    x = _max_pool_3x3_s2(x)
    x = BasicConv(80, (1, 1), name="Conv2d_3b_1x1")(x)
    x = BasicConv(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = _max_pool_3x3_s2(x)
    x = InceptionA(32, name="Mixed_5b")(x)
    x = InceptionA(64, name="Mixed_5c")(x)
    x = InceptionA(64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)
    x = InceptionC(128, name="Mixed_6b")(x)
    x = InceptionC(160, name="Mixed_6c")(x)
    x = InceptionC(160, name="Mixed_6d")(x)
    x = InceptionC(192, name="Mixed_6e")(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE(max_pool=False, name="Mixed_7b")(x)
    x = InceptionE(max_pool=True, name="Mixed_7c")(x)
    return jnp.mean(x, axis=(1, 2))


def abstract_variables() -> dict:
  """Returns the shapes of the network's variables (nothing is computed)."""
  return jax.eval_shape(InceptionV3FID().init, jax.random.PRNGKey(0),
                        jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3)))


def state_dict_layout() -> dict[str, tuple[str, list[str], tuple[int, ...]]]:
  """Returns {pytorch-fid's key: (Flax collection, path in it, Flax shape)} of the feature network
  (its classifier fc.* and BatchNorm step counters left out)."""
  layout = {}
  for collection, tree in abstract_variables().items():
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
      names = [p.key for p in path]
      torch_name = {"kernel": "weight", "scale": "weight", "bias": "bias",
                    "mean": "running_mean", "var": "running_var"}[names[-1]]
      layout[".".join(names[:-1] + [torch_name])] = (collection, names, leaf.shape)
  return layout


def variables_from_state_dict(state_dict: dict[str, np.ndarray]) -> dict:
  """Flax variables from pytorch-fid's InceptionV3 state_dict. Its classifier (fc.*) and
  BatchNorm step counters are not used; any other key or shape that does not fit raises
  ValueError naming it."""
  flat = state_dict_layout()
  variables: dict = {"params": {}, "batch_stats": {}}
  for key, value in state_dict.items():
    if key.startswith("fc.") or key.endswith("num_batches_tracked"):
      continue
    if key not in flat:
      raise ValueError(f"unexpected key {key!r}")
    collection, names, shape = flat.pop(key)
    array = np.asarray(value, np.float32)
    if array.ndim == 4:
      array = array.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    if array.shape != shape:
      raise ValueError(f"{key!r} has shape {value.shape}, expected {shape} (as Flax lays it)")
    node = variables[collection]
    for name in names[:-1]:
      node = node.setdefault(name, {})
    node[names[-1]] = array
  if flat:
    raise ValueError(f"missing key {next(iter(flat))!r} (and {len(flat) - 1} more)")
  return variables


def file_sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(functools.partial(f.read, 1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def load_weights(path: str, sha256: str | None = None) -> dict:
  """Returns the network's variables from the weights file at `path`, whose SHA-256 must be
  `sha256` (default WEIGHTS_SHA256); every problem is a one-line UsageError naming the file."""
  sha256 = sha256 or WEIGHTS_SHA256
  if not path or not os.path.isfile(path):
    raise UsageError(f"FID Inception weights not found at {path!r}: download {WEIGHTS_URL} "
                     "and give its path (config.inception_weights)")
  actual = file_sha256(path)
  if actual != sha256:
    raise UsageError(f"{path}: SHA-256 is {actual}, expected {sha256} "
                     "(not the FID Inception weights, or a damaged download)")
  try:
    return variables_from_state_dict(torch_files.load_state_dict(path))
  except ValueError as e:
    raise UsageError(f"{path}: not the FID Inception's state_dict: {e}") from e


@jax.jit
def _features(variables: dict, images: jax.Array) -> jax.Array:
  return InceptionV3FID().apply(variables, images)


def features(variables: dict, images_NxHxWxC: np.ndarray, batch_size: int = 50) -> np.ndarray:
  """Returns (N, 2048) pool features of float images in [-1, 1], in batches of one shape (the last
  is padded), so the network compiles once."""
  out = []
  for i in range(0, len(images_NxHxWxC), batch_size):
    batch = np.asarray(images_NxHxWxC[i:i + batch_size], np.float32)
    n = len(batch)
    if n < batch_size and len(images_NxHxWxC) > batch_size:
      batch = np.concatenate([batch, np.zeros((batch_size - n,) + batch.shape[1:], batch.dtype)])
    out.append(np.asarray(_features(variables, jnp.asarray(batch)))[:n])
  return np.concatenate(out)


def download_weights(to: str, url: str = WEIGHTS_URL, sha256: str = WEIGHTS_SHA256,
                     size: int = WEIGHTS_BYTES, timeout_s: float = 60.0) -> str:
  """Downloads the weights file to `to`, at most `size` bytes, checks its size and SHA-256,
  and renames it into place; nothing is left behind on any failure. Returns the path."""
  if os.path.isfile(to) and file_sha256(to) == sha256:
    return to
  folder = os.path.dirname(os.path.abspath(to))
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:
    raise UsageError(f"--to={to!r}: cannot create {folder} ({e.strerror or e})") from e
  partial = f"{to}.part-{os.getpid()}"
  try:
    digest, received = hashlib.sha256(), 0
    with urllib.request.urlopen(url, timeout=timeout_s) as response, open(partial, "wb") as f:
      while block := response.read(1 << 20):
        received += len(block)
        if received > size:
          raise UsageError(f"{url} sends more than the {size:,} bytes of the weights file")
        digest.update(block)
        f.write(block)
    if received != size:
      raise RunError(f"{url}: {received:,} bytes received, the weights file has {size:,}")
    if digest.hexdigest() != sha256:
      raise UsageError(f"{url}: SHA-256 {digest.hexdigest()} is not the weights file's {sha256}")
    os.replace(partial, to)
  except (OSError, urllib.error.URLError, http.client.HTTPException) as e:
    raise RunError(f"{url}: the download failed ({getattr(e, 'reason', None) or e})") from e
  finally:
    if os.path.exists(partial):
      os.remove(partial)
  return to


def main(argv: list[str] | None = None) -> int:
  """Runs `python -m dcgan_jax.inception download [--to PATH]`."""
  from dcgan_jax import image_cache  # pylint: disable=g-import-not-at-top

  parser = argparse.ArgumentParser(prog="python -m dcgan_jax.inception",
                                   description="The FID Inception's weights file.")
  sub = parser.add_subparsers(dest="command", required=True)
  down = sub.add_parser("download", help="fetch pytorch-fid's weights file and verify it")
  down.add_argument("--to", default=os.path.join(image_cache.default_cache_dir(), WEIGHTS_NAME),
                    help="where to write it (default: the cache folder)")
  down.add_argument("--url", default=WEIGHTS_URL, help="a mirror of the file")
  args = parser.parse_args(argv)
  try:
    path = download_weights(args.to, args.url)
  except (UsageError, RunError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2 if isinstance(e, UsageError) else 1
  print(f"{path}: SHA-256 verified. Evaluate with --config.evaluator=inception "
        f"--config.inception_weights={path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
