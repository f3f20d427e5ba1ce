"""The transposed convolutions against a numpy reference of PyTorch's ConvTranspose2d."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dcgan_jax import ops


def torch_conv_transpose2d(x_BxIxHxW, w_IxOxKxK, stride, padding):
  """PyTorch's ConvTranspose2d (no bias) by its definition: every input pixel
  scatters w[i, :, kh, kw] to output (h*stride + kh - padding, w*stride + kw - padding)."""
  b, i_ch, h, w = x_BxIxHxW.shape
  _, o_ch, k, _ = w_IxOxKxK.shape
  full = np.zeros((b, o_ch, (h - 1) * stride + k, (w - 1) * stride + k))
  for y in range(h):
    for x in range(w):
      full[:, :, y * stride:y * stride + k, x * stride:x * stride + k] += np.einsum(
          "bi,iokl->bokl", x_BxIxHxW[:, :, y, x], w_IxOxKxK)
  out_h = (h - 1) * stride - 2 * padding + k
  out_w = (w - 1) * stride - 2 * padding + k
  return full[:, :, padding:padding + out_h, padding:padding + out_w]


def to_flax_kernel(w_IxOxKxK):
  return np.transpose(w_IxOxKxK, (2, 3, 1, 0))


def torch_conv2d(x_BxIxHxW, w_OxIxKxK, stride, padding):
  """PyTorch's Conv2d (no bias) by its definition, on the zero-padded input."""
  xp = np.pad(x_BxIxHxW, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
  k = w_OxIxKxK.shape[-1]
  out_h = (xp.shape[2] - k) // stride + 1
  out_w = (xp.shape[3] - k) // stride + 1
  out = np.zeros((x_BxIxHxW.shape[0], w_OxIxKxK.shape[0], out_h, out_w))
  for y in range(out_h):
    for x in range(out_w):
      window = xp[:, :, y * stride:y * stride + k, x * stride:x * stride + k]
      out[:, :, y, x] = np.einsum("bikl,oikl->bo", window, w_OxIxKxK)
  return out


@pytest.mark.xla_default
@pytest.mark.parametrize("impl", ["xla", "matmul", "auto"])
@pytest.mark.parametrize("shape", [(2, 4, 4, 3, 5), (1, 8, 6, 8, 16), (3, 2, 2, 2, 1)])
def test_conv_4x2_matches_pytorch_definition(impl, shape):
  b, h, w, i_ch, o_ch = shape
  rng = np.random.default_rng(sum(shape))
  x_nchw = rng.normal(size=(b, i_ch, h, w))
  weight = rng.normal(size=(o_ch, i_ch, 4, 4))  # Conv2d.weight
  expected = torch_conv2d(x_nchw, weight, stride=2, padding=1)
  got = ops.conv_4x2(np.transpose(x_nchw, (0, 2, 3, 1)).astype(np.float32),
                     np.transpose(weight, (2, 3, 1, 0)).astype(np.float32), impl)
  assert got.shape == (b, h // 2, w // 2, o_ch)
  np.testing.assert_allclose(np.transpose(np.asarray(got), (0, 3, 1, 2)), expected,
                             rtol=1e-4, atol=1e-4)


@pytest.mark.xla_default
@pytest.mark.parametrize("impl", ["xla", "phase", "matmul", "col2im", "auto"])
@pytest.mark.parametrize("shape", [(2, 4, 4, 3, 5), (1, 5, 7, 8, 16), (3, 1, 1, 2, 1)])
def test_conv_transpose_4x2_matches_pytorch_definition(impl, shape):
  b, h, w, i_ch, o_ch = shape
  rng = np.random.default_rng(sum(shape))
  x_nchw = rng.normal(size=(b, i_ch, h, w))
  weight = rng.normal(size=(i_ch, o_ch, 4, 4))
  expected = torch_conv_transpose2d(x_nchw, weight, stride=2, padding=1)
  got = ops.conv_transpose_4x2(np.transpose(x_nchw, (0, 2, 3, 1)).astype(np.float32),
                               to_flax_kernel(weight).astype(np.float32), impl)
  assert got.shape == (b, 2 * h, 2 * w, o_ch)
  np.testing.assert_allclose(np.transpose(np.asarray(got), (0, 3, 1, 2)), expected,
                             rtol=1e-4, atol=1e-4)


@pytest.mark.xla_default
def test_project_4x4_matches_pytorch_definition():
  rng = np.random.default_rng(0)
  z = rng.normal(size=(3, 10))
  weight = rng.normal(size=(10, 6, 4, 4))  # ConvTranspose2d(10, 6, 4, 1, 0).weight
  expected = torch_conv_transpose2d(z[:, :, None, None], weight, stride=1, padding=0)
  got = ops.project_4x4(z.astype(np.float32), to_flax_kernel(weight).astype(np.float32))
  assert got.shape == (3, 4, 4, 6)
  np.testing.assert_allclose(np.transpose(np.asarray(got), (0, 3, 1, 2)), expected,
                             rtol=1e-4, atol=1e-4)


def test_reference_itself_on_a_hand_computed_case():
  # One input pixel of value 2 and a kernel of ones: the 4x4 footprint, cropped
  # by padding 1, leaves the top-left 3x3 of the 2x2 output... of a 1x1 input: 2x2 of 2s.
  out = torch_conv_transpose2d(np.full((1, 1, 1, 1), 2.0), np.ones((1, 1, 4, 4)), 2, 1)
  np.testing.assert_array_equal(out, np.full((1, 1, 2, 2), 2.0))


@pytest.mark.slow
def test_gradients_of_all_forms_agree():
  rng = np.random.default_rng(5)
  x = rng.normal(size=(2, 4, 4, 6)).astype(np.float32)
  up_k = rng.normal(size=(4, 4, 5, 6)).astype(np.float32)
  down_k = rng.normal(size=(4, 4, 6, 5)).astype(np.float32)

  def grads(fn, kernel):
    return jax.grad(lambda x, k: jnp.sum(jnp.sin(fn(x, k))), argnums=(0, 1))(x, kernel)

  for fn in (ops.conv_transpose_4x2_phase, ops.conv_transpose_4x2_matmul,
             ops.conv_transpose_4x2_col2im):
    for got, want in zip(grads(fn, up_k), grads(ops.conv_transpose_4x2_xla, up_k)):
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  for got, want in zip(grads(ops.conv_4x2_matmul, down_k), grads(ops.conv_4x2_xla, down_k)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_resolve_impls():
  assert ops.resolve_downconv_impl("auto", "cpu") == "matmul"
  assert ops.resolve_downconv_impl("auto", "gpu") == "xla"
  assert ops.resolve_downconv_impl("xla", "cpu") == "xla"
  with pytest.raises(ValueError, match="'fft'"):
    ops.resolve_downconv_impl("fft", "cpu")
  assert ops.resolve_upconv_impl("auto", 64, 8, "cpu") == "matmul"
  assert ops.resolve_upconv_impl("auto", 64, 4, "cpu") == "col2im"
  assert ops.resolve_upconv_impl("auto", 3, 32, "cpu") == "col2im"
  for size, width in ((4, 512), (8, 256), (32, 3)):  # GPUs: the phase form for every layer
    assert ops.resolve_upconv_impl("auto", width, size, "gpu") == "phase"
  assert ops.resolve_upconv_impl("auto", 64, 8, "tpu") == "xla"  # unmeasured there
  assert ops.resolve_upconv_impl("phase", 3, 32, "cpu") == "phase"
  with pytest.raises(ValueError, match="'fft'"):
    ops.resolve_upconv_impl("fft", 3, 32, "cpu")
