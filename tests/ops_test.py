"""The transposed convolutions against a numpy reference of PyTorch's ConvTranspose2d."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dcgan_jax import models, ops


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
@pytest.mark.parametrize("impl", ["xla", "phase", "matmul", "col2im", "vjp", "auto"])
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
             ops.conv_transpose_4x2_col2im, ops.conv_transpose_4x2_vjp):
    for got, want in zip(grads(fn, up_k), grads(ops.conv_transpose_4x2_xla, up_k)):
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  for got, want in zip(grads(ops.conv_4x2_matmul, down_k), grads(ops.conv_4x2_xla, down_k)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def _generator_upconv_shapes() -> list[tuple[int, int, int]]:
  """(input side, input channels, output channels) of every stride-2 layer of the generators of
  32/64/128 px with 1 or 3 channels at the GPU benchmarks' width (ngf 64)."""
  shapes = set()
  for size in (32, 64, 128):
    for channels in (1, 3):
      g = models.Generator(size, channels, ngf=64)
      params = jax.eval_shape(g.init, jax.random.key(0), jnp.zeros((1, 100)))["params"]
      kernels = [params[name]["kernel"].shape for name in params if name.startswith("UpConv")]
      side = 4
      for _, _, out, inp in sorted(kernels, key=lambda k: -k[3]):  # widest input first
        shapes.add((side, inp, out))
        side *= 2
  return sorted(shapes)


@functools.partial(jax.jit, static_argnums=0)
def _output_and_gradients(fn, x, kernel, cotangent):
  """fn(x, kernel) and the gradients of <fn(x, kernel), cotangent> in x and in kernel."""
  y, vjp = jax.vjp(fn, x, kernel)
  return (y, *vjp(cotangent))


@pytest.mark.slow
@pytest.mark.xla_default  # its time is running float64 convolutions, far slower at -O0
def test_vjp_form_equals_the_xla_and_phase_forms_at_every_generator_layer_shape():
  """Output, input gradient and kernel gradient: in float64 the same to rounding; in float32
  as close to the float64 result as the XLA and phase forms are (relative error over all the
  layer shapes within twice theirs: the kernel gradient's sums run in another order)."""
  shapes = _generator_upconv_shapes()
  assert (4, 1024, 512) in shapes and (64, 64, 3) in shapes and (16, 64, 1) in shapes
  assert len(shapes) == 15
  forms = {"xla": ops.conv_transpose_4x2_xla, "phase": ops.conv_transpose_4x2_phase,
           "vjp": ops.conv_transpose_4x2_vjp}
  worst = {name: np.zeros(3) for name in forms}  # relative error of output and gradients
  for side, inp, out in shapes:
    rng = np.random.default_rng(side * inp + out)
    x = rng.normal(size=(1, side, side, inp))
    kernel = rng.normal(0, 0.02, size=(4, 4, out, inp))
    cotangent = rng.normal(size=(1, 2 * side, 2 * side, out))
    with jax.enable_x64(True):
      exact = {name: [np.asarray(a) for a in _output_and_gradients(forms[name], x, kernel,
                                                                   cotangent)]
               for name in ("xla", "vjp")}
    for got, want in zip(exact["vjp"], exact["xla"]):
      assert got.dtype == np.float64 and got.shape == want.shape
      assert np.abs(got - want).max() <= 1e-13 * np.abs(want).max(), (side, inp, out)
    f32 = [np.float32(a) for a in (x, kernel, cotangent)]
    for name, fn in forms.items():
      got = _output_and_gradients(fn, *f32)
      worst[name] = np.maximum(worst[name], [
          np.abs(np.asarray(a, np.float64) - e).max() / np.abs(e).max()
          for a, e in zip(got, exact["xla"])])
  others = np.maximum(worst["xla"], worst["phase"])
  assert np.all(worst["vjp"] <= 2 * others) and np.all(others < 1e-5), worst


def test_vjp_form_runs_the_stride2_convolutions_derivatives():
  """Its program: the output is a convolution of the reversed kernel over the stride-dilated
  input, the input gradient a stride-2 convolution, the kernel gradient a convolution with a
  dilated window (what XLA hands a GPU library as backward-data, forward, backward-filter)."""
  x, kernel = jnp.ones((2, 4, 4, 6)), jnp.ones((4, 4, 5, 6))
  loss = lambda x, k: jnp.sum(ops.conv_transpose_4x2_vjp(x, k) ** 2)  # noqa: E731
  text = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, kernel).as_text()
  convolutions = [l for l in text.splitlines() if "stablehlo.convolution" in l]
  assert len(convolutions) == 3 and "stablehlo.reverse" in text
  windows = sorted(l.split("window = {")[1].split("}")[0] for l in convolutions)
  assert windows == [
      "stride = [1, 1], pad = [[1, 1], [1, 1]], lhs_dilate = [1, 1], rhs_dilate = [2, 2], "
      "reverse = [false, false]",  # kernel gradient
      "stride = [1, 1], pad = [[2, 2], [2, 2]], lhs_dilate = [2, 2], rhs_dilate = [1, 1], "
      "reverse = [false, false]",  # output
      "stride = [2, 2], pad = [[1, 1], [1, 1]], lhs_dilate = [1, 1], rhs_dilate = [1, 1], "
      "reverse = [false, false]"]  # input gradient


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
  assert ops.resolve_upconv_impl("vjp", 3, 32, "gpu") == "vjp"  # chosen by name only, so far
  with pytest.raises(ValueError, match="'fft'"):
    ops.resolve_upconv_impl("fft", 3, 32, "cpu")
