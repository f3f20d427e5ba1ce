"""DCGAN's convolutions with PyTorch's semantics, each in several exact forms.

Transposed-convolution kernels use Flax's `ConvTranspose(transpose_kernel=True)` layout
`(kh, kw, out, in)`: PyTorch's `ConvTranspose2d.weight` `(in, out, kh, kw)` permuted by
`(2, 3, 1, 0)`, no spatial flip. Convolution kernels use `nn.Conv`'s `(kh, kw, in, out)`:
PyTorch's `Conv2d.weight` `(out, in, kh, kw)` permuted by `(2, 3, 1, 0)`.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_DN = ("NHWC", "HWIO", "NHWC")
UPCONV_IMPLS = ("auto", "xla", "phase", "matmul", "col2im", "vjp")
DOWNCONV_IMPLS = ("auto", "xla", "matmul")


def project_4x4(z_BxN: jax.Array, kernel_4x4xCxN: jax.Array) -> jax.Array:
  """Computes `ConvTranspose2d(N, C, 4, stride=1, padding=0)` on a 1x1 input: a matmul."""
  return jnp.einsum("bn,hwcn->bhwc", z_BxN, kernel_4x4xCxN)


def conv_transpose_4x2_xla(x_BxHxWxI: jax.Array, kernel_4x4xOxI: jax.Array) -> jax.Array:
  """Computes `ConvTranspose2d(k=4, s=2, p=1)` as XLA's transposed convolution."""
  # Flax/XLA pad the dilated input: k - 1 - p = 2 on each side gives PyTorch's shape.
  return lax.conv_transpose(
      x_BxHxWxI, kernel_4x4xOxI, strides=(2, 2), padding=((2, 2), (2, 2)),
      dimension_numbers=_DN, transpose_kernel=True)


# Which 4-tap kernel row feeds each output phase, placed in a 3-wide window
# over the input padded by one: even outputs 2m see x[m-1]*w[3] + x[m]*w[1],
# odd outputs 2m+1 see x[m]*w[2] + x[m+1]*w[0].
_PHASE_TAPS_2x3x4 = np.zeros((2, 3, 4), np.float32)
_PHASE_TAPS_2x3x4[0, 0, 3] = _PHASE_TAPS_2x3x4[0, 1, 1] = 1.0
_PHASE_TAPS_2x3x4[1, 1, 2] = _PHASE_TAPS_2x3x4[1, 2, 0] = 1.0


def conv_transpose_4x2_phase(x_BxHxWxI: jax.Array, kernel_4x4xOxI: jax.Array) -> jax.Array:
  """Computes `ConvTranspose2d(k=4, s=2, p=1)` as one stride-1 3x3 conv to 4*O channels.

  Each of the four output phases (row parity, column parity) is a 2x2
  convolution of the input; the four are packed into one 3x3 kernel and
  interleaved by depth-to-space. Same parameters and outputs as the XLA form.
  """
  b, h, w, _ = x_BxHxWxI.shape
  out = kernel_4x4xOxI.shape[2]
  taps = jnp.asarray(_PHASE_TAPS_2x3x4, kernel_4x4xOxI.dtype)
  k_3x3xIx2x2xO = jnp.einsum("ayk,bxl,kloi->yxiabo", taps, taps, kernel_4x4xOxI)
  k_3x3xIx4O = k_3x3xIx2x2xO.reshape(3, 3, -1, 4 * out)
  y = lax.conv_general_dilated(
      x_BxHxWxI, k_3x3xIx4O, window_strides=(1, 1), padding=((1, 1), (1, 1)),
      dimension_numbers=_DN)
  y_BxHx2xWx2xO = y.reshape(b, h, w, 2, 2, out).transpose(0, 1, 3, 2, 4, 5)
  return y_BxHx2xWx2xO.reshape(b, 2 * h, 2 * w, out)


# The phase taps again, for 2-wide windows over the input padded by one: phase a's window
# starts at padded row m + a, so even outputs see [x[m-1], x[m]] * [w3, w1] and odd
# outputs [x[m], x[m+1]] * [w2, w0].
_PHASE_TAPS_2x2x4 = np.zeros((2, 2, 4), np.float32)
_PHASE_TAPS_2x2x4[0, 0, 3] = _PHASE_TAPS_2x2x4[0, 1, 1] = 1.0
_PHASE_TAPS_2x2x4[1, 0, 2] = _PHASE_TAPS_2x2x4[1, 1, 0] = 1.0


def conv_transpose_4x2_matmul(x_BxHxWxI: jax.Array, kernel_4x4xOxI: jax.Array) -> jax.Array:
  """Computes `ConvTranspose2d(k=4, s=2, p=1)` as one matrix product.

  The 2x2 windows of the input padded by one, (B*(H+1)*(W+1), 4I), times a (4I, 4O)
  matrix give all four output phases at once; phase (a, b) of output (m, n) is window
  (m + a, n + b). Its gradients are matrix products too, which XLA CPU runs far faster
  than its transposed-convolution gradients.
  """
  b, h, w, i = x_BxHxWxI.shape
  out = kernel_4x4xOxI.shape[2]
  taps = jnp.asarray(_PHASE_TAPS_2x2x4, kernel_4x4xOxI.dtype)
  k_4Ix4O = jnp.einsum("ark,bsl,kloi->rsiabo", taps, taps, kernel_4x4xOxI).reshape(4 * i, 4 * out)
  xp = jnp.pad(x_BxHxWxI, ((0, 0), (1, 1), (1, 1), (0, 0)))
  windows = jnp.concatenate([xp[:, r:r + h + 1, s:s + w + 1] for r in (0, 1) for s in (0, 1)],
                            axis=-1)
  y = (windows.reshape(-1, 4 * i) @ k_4Ix4O).reshape(b, h + 1, w + 1, 2, 2, out)
  rows = [jnp.stack([y[:, a:a + h, c:c + w, a, c] for c in (0, 1)], axis=3) for a in (0, 1)]
  return jnp.stack(rows, axis=2).reshape(b, 2 * h, 2 * w, out)


# The same taps as (input shift d, kernel tap k) per output phase: output 2m + a is the sum
# over the pairs of phase a of x[m + d] * w[k]; window position r of phase a reads
# x[m + a + r - 1].
_PHASE_SHIFT_TAPS = {a: tuple((int(a + r - 1), int(k)) for r, k in np.argwhere(_PHASE_TAPS_2x2x4[a]))
                     for a in (0, 1)}


def conv_transpose_4x2_col2im(x_BxHxWxI: jax.Array, kernel_4x4xOxI: jax.Array) -> jax.Array:
  """Computes `ConvTranspose2d(k=4, s=2, p=1)` by its definition: every input pixel times the whole
  kernel, (B*H*W, I) x (I, 16*O), then the 4x4 patches overlap-added at stride 2.

  The matrix product has no zero taps and no window copies of the input; the overlap-add
  reads 16*O values per input pixel. For the narrow output layer (O = 1 or 3) that is
  far less data than the windows of the matmul form.
  """
  b, h, w, i = x_BxHxWxI.shape
  out = kernel_4x4xOxI.shape[2]
  k_Ix16O = kernel_4x4xOxI.transpose(3, 0, 1, 2).reshape(i, 16 * out)
  patches = (x_BxHxWxI.reshape(-1, i) @ k_Ix16O).reshape(b, h, w, 4, 4, out)
  padded = jnp.pad(patches, ((0, 0), (1, 1), (1, 1), (0, 0), (0, 0), (0, 0)))
  rows = []
  for a in (0, 1):
    cols = [sum(padded[:, 1 + dr:1 + dr + h, 1 + dc:1 + dc + w, kh, kw]
                for dr, kh in _PHASE_SHIFT_TAPS[a] for dc, kw in _PHASE_SHIFT_TAPS[c])
            for c in (0, 1)]
    rows.append(jnp.stack(cols, axis=3))  # (B, H, W, 2, O): column phase c
  return jnp.stack(rows, axis=2).reshape(b, 2 * h, 2 * w, out)


def conv_4x2_xla(x_BxHxWxI: jax.Array, kernel_4x4xIxO: jax.Array) -> jax.Array:
  """Computes `Conv2d(k=4, s=2, p=1, bias=False)` as XLA's convolution (what `nn.Conv` runs)."""
  return lax.conv_general_dilated(x_BxHxWxI, kernel_4x4xIxO, window_strides=(2, 2),
                                  padding=((1, 1), (1, 1)), dimension_numbers=_DN)


def _conv_4x2_adjoint(x_BxHxWxI: jax.Array, kernel_4x4xOxI: jax.Array) -> jax.Array:
  """The adjoint of `conv_4x2_xla(., kernel)` (O -> I channels) applied to x: exactly
  `ConvTranspose2d(k=4, s=2, p=1)` of x, emitted as JAX emits a convolution's input gradient
  (a convolution of the reversed kernel over the stride-dilated input)."""
  b, h, w, _ = x_BxHxWxI.shape
  like = jax.ShapeDtypeStruct((b, 2 * h, 2 * w, kernel_4x4xOxI.shape[2]), x_BxHxWxI.dtype)
  return jax.linear_transpose(lambda u: conv_4x2_xla(u, kernel_4x4xOxI), like)(x_BxHxWxI)[0]


@jax.custom_vjp
def conv_transpose_4x2_vjp(x_BxHxWxI: jax.Array, kernel_4x4xOxI: jax.Array) -> jax.Array:
  """Computes `ConvTranspose2d(k=4, s=2, p=1)` as the stride-2 convolution's own derivatives.

  The transposed convolution is the adjoint of `Conv2d(O, I, 4, 2, 1)` whose (4, 4, O, I)
  kernel is this layer's, so all three of its computations are that convolution's: the
  output is its input gradient (the cotangent being x), the input gradient is the
  convolution itself (of the cotangent g), and the kernel gradient is its kernel gradient at
  input g and cotangent x. XLA maps these forms to a GPU library's backward-data, forward and
  backward-filter convolutions, with no zero taps; the XLA form's own kernel gradient is a
  convolution over a stride-dilated input instead. Reverse-mode only (no jax.jvp).
  """
  return _conv_4x2_adjoint(x_BxHxWxI, kernel_4x4xOxI)


def _vjp_forward(x_BxHxWxI, kernel_4x4xOxI):
  return _conv_4x2_adjoint(x_BxHxWxI, kernel_4x4xOxI), (x_BxHxWxI, kernel_4x4xOxI)


def _vjp_backward(residuals, g_Bx2Hx2WxO):
  x_BxHxWxI, kernel_4x4xOxI = residuals
  dx = conv_4x2_xla(g_Bx2Hx2WxO, kernel_4x4xOxI)
  _, kernel_vjp = jax.vjp(lambda k: conv_4x2_xla(g_Bx2Hx2WxO, k), kernel_4x4xOxI)
  return dx, kernel_vjp(x_BxHxWxI)[0]


conv_transpose_4x2_vjp.defvjp(_vjp_forward, _vjp_backward)


def conv_4x2_matmul(x_BxHxWxI: jax.Array, kernel_4x4xIxO: jax.Array) -> jax.Array:
  """Computes `Conv2d(k=4, s=2, p=1)` as one matrix product over the 4x4 windows.

  The padded input, viewed as (B, H/2+1, 2, W/2+1, 2I) (a free reshape: row pairs and
  column pairs), gives every window as eight slices (row block q, row parity r, column
  block p), each holding two kernel columns' worth of channels; concatenated they are
  (B*H/2*W/2, 16I), times the kernel as a (16I, O) matrix in (q, r, p, s, i) order.
  """
  b, h, w, i = x_BxHxWxI.shape
  out = kernel_4x4xIxO.shape[3]
  ho, wo = h // 2, w // 2
  xp = jnp.pad(x_BxHxWxI, ((0, 0), (1, 1), (1, 1), (0, 0))).reshape(b, ho + 1, 2, wo + 1, 2 * i)
  windows = jnp.concatenate([xp[:, q:q + ho, r, p:p + wo]
                             for q in (0, 1) for r in (0, 1) for p in (0, 1)], axis=-1)
  # kernel row 2q + r, column 2p + s: a plain reshape of (4, 4, I, O)
  return (windows.reshape(-1, 16 * i) @ kernel_4x4xIxO.reshape(16 * i, out)).reshape(
      b, ho, wo, out)


def resolve_upconv_impl(impl: str, out_features: int, in_size: int,
                        backend: str | None = None) -> str:
  """Picks the fastest exact form for a layer; `impl` other than 'auto' wins.

  On XLA CPU the matmul form's gradient is 2-10x faster than XLA's transposed
  convolution for wide layers. The col2im form is faster still where the matmul form's
  windows cost most: the narrow output layer (3x) and the 4x4 input of the first
  stride-2 layer, whose (H+1)^2 windows hold 56% more taps than needed. On GPUs the phase
  form: XLA's transposed convolution (and its gradient) is the slow one there, the phase
  form's stride-1 convolution the fast one (1.7x the whole step at batch 128, 2.1x at 1024,
  one H200, benchmarks/NOTES.md). Other backends (TPU) use XLA's transposed convolution
  until measured otherwise.
  """
  if impl not in UPCONV_IMPLS:
    raise ValueError(f"upconv impl {impl!r} is not one of {UPCONV_IMPLS}")
  if impl != "auto":
    return impl
  backend = backend or jax.default_backend()
  if backend == "cpu":
    return "matmul" if out_features >= 16 and in_size > 4 else "col2im"
  return "phase" if backend in ("gpu", "cuda", "rocm") else "xla"


def resolve_downconv_impl(impl: str, backend: str | None = None) -> str:
  """'matmul' on XLA CPU (1.2-4x faster gradients), 'xla' elsewhere (on one H200 the matmul
  form made the whole step 6% slower than XLA's convolution); explicit values win."""
  if impl not in DOWNCONV_IMPLS:
    raise ValueError(f"downconv impl {impl!r} is not one of {DOWNCONV_IMPLS}")
  if impl != "auto":
    return impl
  return "matmul" if (backend or jax.default_backend()) == "cpu" else "xla"


def conv_transpose_4x2(x_BxHxWxI: jax.Array, kernel_4x4xOxI: jax.Array,
                       impl: str = "auto") -> jax.Array:
  """Computes `ConvTranspose2d(k=4, s=2, p=1, bias=False)`: (B, H, W, I) -> (B, 2H, 2W, O)."""
  impl = resolve_upconv_impl(impl, kernel_4x4xOxI.shape[2], x_BxHxWxI.shape[1])
  if impl == "phase":
    return conv_transpose_4x2_phase(x_BxHxWxI, kernel_4x4xOxI)
  if impl == "matmul":
    return conv_transpose_4x2_matmul(x_BxHxWxI, kernel_4x4xOxI)
  if impl == "col2im":
    return conv_transpose_4x2_col2im(x_BxHxWxI, kernel_4x4xOxI)
  if impl == "vjp":
    return conv_transpose_4x2_vjp(x_BxHxWxI, kernel_4x4xOxI)
  return conv_transpose_4x2_xla(x_BxHxWxI, kernel_4x4xOxI)


def conv_4x2(x_BxHxWxI: jax.Array, kernel_4x4xIxO: jax.Array, impl: str = "auto") -> jax.Array:
  """Computes `Conv2d(k=4, s=2, p=1, bias=False)`: (B, H, W, I) -> (B, H/2, W/2, O)."""
  if resolve_downconv_impl(impl) == "matmul":
    return conv_4x2_matmul(x_BxHxWxI, kernel_4x4xIxO)
  return conv_4x2_xla(x_BxHxWxI, kernel_4x4xIxO)


def conv_4x4_valid(x_Bx4x4xI: jax.Array, kernel_4x4xIxO: jax.Array) -> jax.Array:
  """Computes `Conv2d(I, O, 4, 1, 0)` on a 4x4 input (D's last layer), as `nn.Conv` does."""
  return lax.conv_general_dilated(x_Bx4x4xI, kernel_4x4xIxO, (1, 1), "VALID",
                                  dimension_numbers=_DN)


def normalize(v: jax.Array, eps: float = 1e-12) -> jax.Array:
  return v / jnp.maximum(jnp.linalg.norm(v), eps)  # torch.nn.functional.normalize's eps


def spectral_normalize(kernel_HxWxIxO: jax.Array, u_O: jax.Array
                       ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Divides a kernel by its largest singular value as one power iteration estimates it
  (Miyato et al. 2018; PyTorch's spectral_norm with n_power_iterations=1).

  The kernel is the matrix W (O, H*W*I), PyTorch's weight.reshape(O, -1). From the kept
  estimate u of W's first left singular vector: v = normalize(W^T u), u' = normalize(W v),
  sigma = u'^T W v, with u' and v held constant under differentiation. Returns (kernel / sigma,
  u', sigma); the caller keeps u' (the training state) for the next iteration.
  """
  w_FxO = kernel_HxWxIxO.reshape(-1, kernel_HxWxIxO.shape[-1])  # W^T
  u_O = lax.stop_gradient(u_O)
  v_F = lax.stop_gradient(normalize(w_FxO @ u_O))
  new_u_O = lax.stop_gradient(normalize(v_F @ w_FxO))
  sigma = new_u_O @ (v_F @ w_FxO)
  return kernel_HxWxIxO / sigma, new_u_O, sigma
