"""Convolutions whose input gradient skips XLA:CPU's kernel copies, for the gradient explainers.

XLA differentiates ``y = conv(x, w)`` with respect to ``x`` as a second convolution of the
output cotangent with ``w`` flipped in space and with its input and output channels swapped;
XLA:CPU writes that flipped, transposed kernel out on every call (a ``transpose_copy_fusion``
per convolution). For the wide late layers of a ResNet the copies cost more than the
convolutions they feed: the vanilla gradient of a ResNet-18 at 112², batch 8, spent 0.45 of a
forward pass on them (benchmarks/README.md, "Gradient methods").

``input_gradient_conv`` computes the same forward, and the same gradient in another order:

    P[b, o, t, i] = Σ_k g[b, o, k] · w[t, i, k]     one matrix product, w read as [T·I, K]
    ∂x[b, p, i]   = Σ_{o, t : s·o + t − pad = p} P[b, o, t, i]

(o an output position, t a kernel tap, s the stride), which reads the kernel where it lies.
The first line is a ``dot_general`` with the kernel's output channels contracted, which
XLA:CPU runs without copying the kernel; the second scatters each tap's slice of P to its input
positions (a strided pad per tap, summed). P holds kh·kw values per input value, so this pays
only where the kernel outweighs P (``kernel_outweighs_taps``): at 112², batch 8, the ResNet-18's
fourth stage (512 channels against 8·4·4 output positions).

It is opt-in for the duration of a trace (``input_gradients_by_matmul``): the explainers
turn it on around their input gradients, which are reverse-mode only (a ``jax.custom_vjp``
has no forward mode). Training keeps XLA's own gradient, bit for bit. The context is read when
a function is traced: a function jitted inside and outside it must be traced apart.
"""

import contextlib
import contextvars
import functools
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
from jax import lax

_BY_MATMUL = contextvars.ContextVar("mhex_jax_input_gradients_by_matmul", default=False)
# The layouts the matrix-product gradient handles (flax's nn.Conv on NHWC images).
_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1),
                                 out_spec=(0, 3, 1, 2))


@contextlib.contextmanager
def input_gradients_by_matmul():
  """Within this context, models built with ``conv_function()`` (every mhex_jax ResNet) trace
  their convolutions with ``input_gradient_conv``."""
  token = _BY_MATMUL.set(True)
  try:
    yield
  finally:
    _BY_MATMUL.reset(token)


def enabled() -> bool:
  """Whether ``input_gradients_by_matmul`` is active at this point of the trace."""
  return _BY_MATMUL.get()


def conv_function():
  """The ``conv_general_dilated`` for ``nn.Conv`` at this point of the trace: None (flax's
  default, ``lax.conv_general_dilated``) unless ``input_gradients_by_matmul`` is active."""
  return input_gradient_conv if _BY_MATMUL.get() else None


def kernel_outweighs_taps(kernel_shape: Sequence[int], output_shape: Sequence[int]) -> bool:
  """Whether a kernel [kh, kw, I, K] holds more values than the tap products P
  [B, Ho, Wo, kh, kw, I] of an output [B, Ho, Wo, K]: then copying the kernel costs more than
  writing and reading P, and the matrix-product gradient pays."""
  batch, out_height, out_width = output_shape[:3]
  return kernel_shape[-1] > batch * out_height * out_width


def tap_gradient(cotangent: jax.Array, kernel: jax.Array, strides: Sequence[int],
                 padding: Sequence[tuple[int, int]], input_shape: Sequence[int],
                 precision: Any = None) -> jax.Array:
  """∂x of y = conv(x, kernel) (NHWC, HWIO, no dilation, one group) given ∂y = ``cotangent``.

  Args:
    cotangent: f[B, Ho, Wo, K].
    kernel: f[kh, kw, I, K].
    strides: (sh, sw).
    padding: ((low, high), (low, high)) of the height and width.
    input_shape: x's shape [B, H, W, I].
    precision: of the matrix product (``lax.dot_general``'s), as the forward's.

  Returns:
    f[B, H, W, I].
  """
  kh, kw, channels, features = kernel.shape
  batch, out_height, out_width, _ = cotangent.shape
  taps = lax.dot_general(cotangent, kernel.reshape(kh * kw * channels, features),
                         (((3,), (1,)), ((), ())), precision=precision)
  taps = taps.reshape(batch, out_height, out_width, kh, kw, channels)
  (sh, sw), ((top, bottom), (left, right)) = strides, padding
  height, width = input_shape[1], input_shape[2]
  padded_height, padded_width = height + top + bottom, width + left + right
  zero = jnp.zeros((), taps.dtype)
  total = None
  for th in range(kh):
    for tw in range(kw):
      # Output position o reads padded input position s·o + t.
      spread = lax.pad(taps[:, :, :, th, tw, :], zero, (
          (0, 0, 0),
          (th, padded_height - th - (out_height - 1) * sh - 1, sh - 1),
          (tw, padded_width - tw - (out_width - 1) * sw - 1, sw - 1),
          (0, 0, 0)))
      total = spread if total is None else total + spread
  return total[:, top:top + height, left:left + width, :]


def _handles(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
             batch_group_count, preferred_element_type) -> bool:
  ones = (None, (1, 1))
  return (lhs.ndim == 4 and lhs.dtype == jnp.float32 and rhs.dtype == jnp.float32
          and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == _NHWC
          and lhs_dilation in ones and rhs_dilation in ones and feature_group_count == 1
          and batch_group_count == 1 and preferred_element_type is None)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(lhs, rhs, strides, padding, precision):
  return lax.conv_general_dilated(lhs, rhs, strides, padding, dimension_numbers=_NHWC,
                                  precision=precision)


def _conv_forward(lhs, rhs, strides, padding, precision):
  return _conv(lhs, rhs, strides, padding, precision), (lhs, rhs)


def _conv_backward(strides, padding, precision, residuals, cotangent):
  lhs, rhs = residuals
  # The kernel's gradient is XLA's own (and dropped by XLA where nobody asks for it).
  _, kernel_vjp = jax.vjp(lambda w: lax.conv_general_dilated(
      lhs, w, strides, padding, dimension_numbers=_NHWC, precision=precision), rhs)
  if kernel_outweighs_taps(rhs.shape, cotangent.shape):
    lhs_grad = tap_gradient(cotangent, rhs, strides, padding, lhs.shape, precision)
  else:
    _, lhs_vjp = jax.vjp(lambda x: lax.conv_general_dilated(
        x, rhs, strides, padding, dimension_numbers=_NHWC, precision=precision), lhs)
    lhs_grad, = lhs_vjp(cotangent)
  return lhs_grad, kernel_vjp(cotangent)[0]


_conv.defvjp(_conv_forward, _conv_backward)


def input_gradient_conv(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                        padding: Any, lhs_dilation: Optional[Sequence[int]] = None,
                        rhs_dilation: Optional[Sequence[int]] = None,
                        dimension_numbers: Any = None, feature_group_count: int = 1,
                        batch_group_count: int = 1, precision: Any = None,
                        preferred_element_type: Any = None) -> jax.Array:
  """``lax.conv_general_dilated`` (same arguments, same values) whose input gradient is
  ``tap_gradient`` where the kernel outweighs the tap products; any case it does not handle
  (other layouts or dtypes, dilation, groups, string or negative padding) is
  ``lax.conv_general_dilated`` itself."""
  if isinstance(padding, str) or min(min(p) for p in padding) < 0 or not _handles(
      lhs, rhs, lhs_dilation and tuple(lhs_dilation), rhs_dilation and tuple(rhs_dilation),
      dimension_numbers, feature_group_count, batch_group_count, preferred_element_type):
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
        feature_group_count, batch_group_count, precision=precision,
        preferred_element_type=preferred_element_type)
  return _conv(lhs, rhs, tuple(window_strides), tuple(tuple(p) for p in padding), precision)
