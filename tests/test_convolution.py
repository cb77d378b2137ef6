"""Matrix-product input gradients of convolutions (``models/convolution.py``) and the custom
gradient of the ResNet stem's max pool: the same values as XLA's own, to float32 rounding or
bit for bit where the code promises it."""

import contextlib
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
import pytest

from conftest import random_variables
from mhex_jax.explain import image
from mhex_jax.models import convolution
from mhex_jax.models import resnet

NHWC = ("NHWC", "HWIO", "NHWC")
UNIT_ROUNDOFF = 2.0**-24  # float32


def _gamma(n):
  """Higham's γ_n = n·u / (1 − n·u): a float32 sum of n products, in any order (FMA or not),
  is within γ_n · Σ|products| of the exact sum."""
  return n * UNIT_ROUNDOFF / (1 - n * UNIT_ROUNDOFF)


def _normal(seed, shape, dtype=jnp.float32):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), dtype)


def _lax_conv(x, kernel, strides, padding):
  return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=NHWC)


def _matmul_conv(x, kernel, strides, padding):
  return convolution.input_gradient_conv(x, kernel, strides, padding, dimension_numbers=NHWC)


def _reference_input_gradient(cotangent, kernel, strides, padding, input_shape):
  """∂x of y = conv(x, kernel) in float64, from the definition y[o] = Σ_t x[s·o + t − low]·w[t]:
  output o and tap t send g[o]·w[t]ᵀ back to input s·o + t − low, if inside the image.

  Returns:
    The gradient f64[B, H, W, I] and, for the rounding bound, Σ|g[o]| · |w[t]|ᵀ alike.
  """
  g, w = np.float64(cotangent), np.float64(kernel)
  grad, magnitude = np.zeros(input_shape), np.zeros(input_shape)
  (sh, sw), ((top, _), (left, _)) = strides, padding
  for oh, ow, th, tw in itertools.product(*map(range, g.shape[1:3] + w.shape[:2])):
    p, q = sh * oh + th - top, sw * ow + tw - left
    if 0 <= p < input_shape[1] and 0 <= q < input_shape[2]:
      grad[:, p, q] += g[:, oh, ow] @ w[th, tw].T
      magnitude[:, p, q] += np.abs(g[:, oh, ow]) @ np.abs(w[th, tw]).T
  return grad, magnitude


def _assert_within_rounding(actual, expected, magnitude, num_terms):
  """|actual − expected| ≤ γ_n·Σ|terms| elementwise (plus float64's own, negligible, error)."""
  error = np.abs(np.float64(actual) - expected)
  bound = _gamma(num_terms) * magnitude + 1e-12
  worst = error.argmax()
  assert np.all(error <= bound), f"error {error.flat[worst]:.3g} > bound {bound.flat[worst]:.3g}"


# (kernel, strides, padding, input H × W, channels I → K): odd and even sizes in either axis
# (H ≠ W catches swapped axes), symmetric, asymmetric and over-wide padding (outputs that read
# only padding), strides that skip input rows, and differ between the axes.
CASES = [
    (k, (s, s), pad, size, channels)
    for (k, s), (pad, size, channels) in itertools.product(
        itertools.product((1, 3, 7), (1, 2)),
        [("symmetric", (7, 8), (3, 5)), ("symmetric", (9, 8), (1, 4)),
         (((0, 1), (1, 0)), (8, 7), (2, 6)), (((0, 1), (1, 0)), (9, 9), (4, 3))])
] + [
    (3, (3, 3), ((0, 0), (0, 0)), (8, 7), (2, 4)),
    (3, (2, 2), ((3, 2), (0, 4)), (5, 6), (3, 4)),
    (2, (2, 2), ((0, 0), (1, 1)), (6, 9), (2, 3)),
    (3, (1, 2), "symmetric", (7, 8), (2, 3)),
    (3, (3, 2), ((1, 0), (0, 2)), (9, 8), (3, 2)),
]


def _padding(kernel, padding):
  return ((kernel // 2,) * 2,) * 2 if padding == "symmetric" else padding


@pytest.mark.parametrize("kernel_size,strides,padding,size,channels", CASES)
def test_tap_gradient_is_the_transposed_convolution(kernel_size, strides, padding, size,
                                                    channels):
  padding = _padding(kernel_size, padding)
  x = _normal(0, (2, *size, channels[0]))
  kernel = _normal(1, (kernel_size, kernel_size, *channels))
  output = jax.eval_shape(lambda x, kernel: _lax_conv(x, kernel, strides, padding), x, kernel)
  cotangent = _normal(2, output.shape)

  @jax.jit  # One program for both: compiling dominates the test's time.
  def gradients(cotangent, kernel, x):
    _, conv_vjp = jax.vjp(lambda x: _lax_conv(x, kernel, strides, padding), x)
    return (convolution.tap_gradient(cotangent, kernel, strides, padding, x.shape),
            conv_vjp(cotangent)[0])

  ours, theirs = gradients(cotangent, kernel, x)
  assert ours.shape == theirs.shape == x.shape and ours.dtype == jnp.float32
  expected, magnitude = _reference_input_gradient(cotangent, kernel, strides, padding, x.shape)
  num_terms = kernel_size**2 * channels[1]
  _assert_within_rounding(ours, expected, magnitude, num_terms)
  _assert_within_rounding(theirs, expected, magnitude, num_terms)


def test_reference_is_the_gradient_of_a_hand_computed_convolution():
  """The float64 reference itself, by hand: a 1-channel 2×2 kernel, stride 2, no padding, on a
  4×4 image: each input pixel is read by exactly one output and one tap."""
  kernel = np.array([[1.0, 2.0], [3.0, 4.0]]).reshape(2, 2, 1, 1)
  cotangent = np.array([[10.0, 20.0], [30.0, 40.0]]).reshape(1, 2, 2, 1)
  grad, _ = _reference_input_gradient(cotangent, kernel, (2, 2), ((0, 0), (0, 0)), (1, 4, 4, 1))
  expected = np.kron(cotangent[0, :, :, 0], kernel[:, :, 0, 0])
  np.testing.assert_array_equal(grad[0, :, :, 0], expected)


def test_kernel_outweighs_taps_by_hand():
  # Kernel [kh, kw, I, K] against P [B, Ho, Wo, kh, kw, I]: K against B·Ho·Wo.
  assert convolution.kernel_outweighs_taps((3, 3, 64, 128), (1, 4, 4, 128))  # 128 > 16
  assert convolution.kernel_outweighs_taps((1, 1, 256, 512), (8, 4, 4, 512))  # 512 > 128
  assert not convolution.kernel_outweighs_taps((3, 3, 256, 256), (8, 7, 7, 256))  # 256 < 392
  assert not convolution.kernel_outweighs_taps((3, 3, 8, 16), (1, 4, 4, 16))  # 16 = 16
  assert not convolution.kernel_outweighs_taps((7, 7, 3, 64), (8, 56, 56, 64))


class _Recorder:
  """Wraps a function of ``convolution`` and records what each call returns."""

  def __init__(self, monkeypatch, name):
    self.calls = []
    function = getattr(convolution, name)

    def record(*args):
      self.calls.append(function(*args))
      return self.calls[-1]

    monkeypatch.setattr(convolution, name, record)


# (input shape, kernel shape, strides): with padding ((1, 0), (1, 1)) or ((1, 1), (1, 1)) the
# kernel outweighs the taps (32 > B·Ho·Wo = 1·2·2), and not (4 < 2·2·3).
TAP_CASE = ((1, 4, 4, 3), (3, 3, 3, 32), (2, 2))
LAX_CASE = ((2, 5, 6, 3), (3, 3, 3, 4), (2, 2))


@pytest.mark.parametrize("input_shape,kernel_shape,strides,by_taps",
                         [(*TAP_CASE, True), (*LAX_CASE, False)])
def test_input_gradient_conv_is_lax_in_value_and_gradient(monkeypatch, input_shape, kernel_shape,
                                                          strides, by_taps):
  outweighs = _Recorder(monkeypatch, "kernel_outweighs_taps")
  taps = _Recorder(monkeypatch, "tap_gradient")
  padding = ((1, 0), (1, 1))
  x, kernel = _normal(0, input_shape), _normal(1, kernel_shape)
  y, ours_vjp = jax.vjp(lambda x, w: _matmul_conv(x, w, strides, padding), x, kernel)
  expected_y, lax_vjp = jax.vjp(lambda x, w: _lax_conv(x, w, strides, padding), x, kernel)
  np.testing.assert_array_equal(y, expected_y)
  cotangent = _normal(2, y.shape)
  (x_grad, kernel_grad), (expected_x_grad, expected_kernel_grad) = (
      ours_vjp(cotangent), lax_vjp(cotangent))
  assert outweighs.calls == [by_taps] and len(taps.calls) == by_taps
  # The kernel's gradient is XLA's own, and so is the input's where the taps do not pay.
  np.testing.assert_array_equal(kernel_grad, expected_kernel_grad)
  if not by_taps:
    np.testing.assert_array_equal(x_grad, expected_x_grad)
  expected, magnitude = _reference_input_gradient(cotangent, kernel, strides, padding, x.shape)
  _assert_within_rounding(x_grad, expected, magnitude, kernel_shape[0] * kernel_shape[1]
                          * kernel_shape[3])


def test_input_gradient_conv_gradient_under_jit_and_vmap(monkeypatch):
  """Per-example gradients (the explainers' chunks vmap them) through the tap path."""
  taps = _Recorder(monkeypatch, "tap_gradient")
  (input_shape, kernel_shape, strides), padding = TAP_CASE, ((1, 1), (1, 1))
  kernel = _normal(1, kernel_shape)
  images = _normal(0, (3, *input_shape))
  cotangent = _normal(2, (1, 2, 2, kernel_shape[3]))

  def gradient(conv):
    return jax.jit(jax.vmap(jax.grad(lambda x: jnp.sum(conv(x, kernel, strides, padding)
                                                       * cotangent))))(images)

  ours, theirs = gradient(_matmul_conv), gradient(_lax_conv)
  assert len(taps.calls) == 1
  expected, magnitude = _reference_input_gradient(cotangent, kernel, strides, padding,
                                                  input_shape)
  num_terms = kernel_shape[0] * kernel_shape[1] * kernel_shape[3]
  for example in range(images.shape[0]):  # The gradient does not depend on x: a linear map.
    _assert_within_rounding(ours[example], expected, magnitude, num_terms)
    _assert_within_rounding(theirs[example], expected, magnitude, num_terms)


FALLBACKS = {
    "string padding": dict(padding="SAME"),
    "input dilation": dict(lhs_dilation=(2, 2)),
    "kernel dilation": dict(rhs_dilation=(2, 1)),
    "groups": dict(feature_group_count=2, kernel_shape=(3, 3, 2, 32)),
    "bfloat16": dict(dtype=jnp.bfloat16),
    "float32 output of bfloat16": dict(dtype=jnp.bfloat16, preferred_element_type=jnp.float32),
    "NCHW": dict(dimension_numbers=("NCHW", "HWIO", "NCHW"), input_shape=(1, 4, 4, 4)),
}


@pytest.mark.parametrize("name", FALLBACKS)
def test_input_gradient_conv_falls_back_to_lax(monkeypatch, name):
  outweighs = _Recorder(monkeypatch, "kernel_outweighs_taps")
  options = {"padding": ((1, 1), (1, 1)), "dimension_numbers": NHWC, **FALLBACKS[name]}
  dtype = options.pop("dtype", jnp.float32)
  x = _normal(0, options.pop("input_shape", (1, 4, 4, 4)), dtype)
  kernel = _normal(1, options.pop("kernel_shape", (3, 3, 4, 32)), dtype)
  padding = options.pop("padding")
  ours = lambda x, w: convolution.input_gradient_conv(x, w, (2, 2), padding, **options)
  theirs = lambda x, w: lax.conv_general_dilated(x, w, (2, 2), padding, **options)
  assert "custom_vjp" not in str(jax.make_jaxpr(ours)(x, kernel))
  y, ours_vjp = jax.vjp(ours, x, kernel)
  expected_y, lax_vjp = jax.vjp(theirs, x, kernel)
  np.testing.assert_array_equal(y, expected_y)
  assert y.dtype == expected_y.dtype
  cotangent = _normal(2, y.shape, y.dtype)
  for grad, expected in zip(ours_vjp(cotangent), lax_vjp(cotangent)):
    np.testing.assert_array_equal(grad, expected)
  assert not outweighs.calls


def test_input_gradient_conv_with_negative_padding_is_lax():
  x, kernel = _normal(0, (1, 6, 6, 2)), _normal(1, (3, 3, 2, 64))
  strides, padding = (2, 2), ((-1, 1), (1, -1))
  y, ours_vjp = jax.vjp(lambda x: _matmul_conv(x, kernel, strides, padding), x)
  _, lax_vjp = jax.vjp(lambda x: _lax_conv(x, kernel, strides, padding), x)
  cotangent = _normal(2, y.shape)
  ours, = ours_vjp(cotangent)
  theirs, = lax_vjp(cotangent)
  np.testing.assert_allclose(ours, theirs, atol=1e-5 * float(jnp.max(jnp.abs(theirs))))


def test_conv_function_only_inside_the_context():
  assert convolution.conv_function() is None
  with convolution.input_gradients_by_matmul():
    assert convolution.conv_function() is convolution.input_gradient_conv
    with convolution.input_gradients_by_matmul():
      assert convolution.conv_function() is convolution.input_gradient_conv
    assert convolution.conv_function() is convolution.input_gradient_conv
  assert convolution.conv_function() is None
  with pytest.raises(RuntimeError, match="inside"):
    with convolution.input_gradients_by_matmul():
      raise RuntimeError("inside")
  assert convolution.conv_function() is None


def _tiny_resnet():
  """A width-4 ResNet-18 with the ImageNet stem on 16×16 images, batch 2: the stem convolution
  outputs 8², the stages 4², 2², 1², 1², so the last two stages' kernels (16, 32 > B·Ho·Wo =
  2·1·1) outweigh their taps and the earlier ones do not (stage 1: 8 = 2·2·2)."""
  model = resnet.ResNet(num_classes=3, depth=18, width=4, stem="imagenet")
  images = _normal(0, (2, 16, 16, 3))
  return model, random_variables(model, images), images, jnp.array([2, 0])


def test_resnet_input_gradients_are_plain_autodiff(monkeypatch):
  model, variables, images, targets = _tiny_resnet()
  outweighs = _Recorder(monkeypatch, "kernel_outweighs_taps")
  taps = _Recorder(monkeypatch, "tap_gradient")
  # A new function to trace: jit's cache does not know the context.
  ours = jax.jit(lambda v, x, t: image.input_gradients(model, v, x, t))(variables, images, targets)
  # Every convolution's backward ran: stages 2 and 3 by taps, the rest by XLA.
  assert outweighs.calls.count(True) == 10 and outweighs.calls.count(False) == 10
  assert len(taps.calls) == 10

  def target_logits(x):
    logits = model.apply(variables, x)[-1]
    return jnp.sum(jnp.take_along_axis(logits, targets[:, None], axis=1))

  theirs = jax.jit(jax.grad(target_logits))(images)
  assert len(outweighs.calls) == 20 and len(taps.calls) == 10  # None outside the context.
  # The backward passes share the forward values (and so every ReLU's mask and the max pool's
  # choices); they differ by the order of float32 sums in the last two stages' input gradients,
  # a relative error of ~u·√(terms) per layer, carried linearly to the image.
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(theirs))))
  assert float(jnp.max(jnp.abs(theirs))) > 0


def test_grad_cam_layer_gradients_are_plain_autodiff(monkeypatch):
  """Grad-CAM's backward to a block's input crosses that block's convolutions; inside the
  explainers' context the last stage's (32 channels > B·Ho·Wo = 2) go by taps, and the
  activations and gradients equal plain autodiff's up to the order of float32 sums."""
  model, variables, images, targets = _tiny_resnet()
  taps = _Recorder(monkeypatch, "tap_gradient")
  layer = "block_06"  # The last stage's first block: its input is stage 3's output.
  ours = jax.jit(lambda v, x, t: image.layer_gradients(model, v, x, t, layer=layer))(
      variables, images, targets)
  assert taps.calls  # The path was taken.
  monkeypatch.setattr(convolution, "input_gradients_by_matmul", contextlib.nullcontext)
  theirs = jax.jit(lambda v, x, t: image.layer_gradients(model, v, x, t, layer=layer))(
      variables, images, targets)
  np.testing.assert_array_equal(ours[0], theirs[0])  # The same forward.
  np.testing.assert_allclose(ours[1], theirs[1], rtol=0,
                             atol=1e-5 * float(jnp.max(jnp.abs(theirs[1]))))
  assert float(jnp.max(jnp.abs(theirs[1]))) > 0


def test_resnet_forward_is_unchanged_inside_the_context():
  model, variables, images, _ = _tiny_resnet()

  def forward():  # New functions to trace each time: jit's cache does not know the context.
    return (str(jax.make_jaxpr(lambda x: model.apply(variables, x))(images)),
            jax.jit(lambda x: model.apply(variables, x))(images))

  jaxpr_outside, outside = forward()
  with convolution.input_gradients_by_matmul():
    jaxpr_inside, inside = forward()
  assert jaxpr_outside.count("bwd=_conv_backward") == 0
  # The stem, two per block and three projections.
  assert jaxpr_inside.count("bwd=_conv_backward") == 20
  np.testing.assert_array_equal(inside, outside)


# Shapes of the stem pool's input: odd and even H and W, a single pixel, a single row pair.
POOL_SHAPES = [(1, 1, 1, 2), (2, 2, 2, 1), (1, 2, 5, 2), (2, 7, 8, 3), (1, 8, 7, 2)]


def _tied(seed, shape):
  """ReLU of normals rounded to multiples of 0.5: many exact ties, at 0 and above."""
  return jax.nn.relu(jnp.round(2 * _normal(seed, shape)) / 2)


def _pool_inputs(shapes):
  """For each shape, a map with many ties and one without."""
  return [values(seed, shape) for seed, shape in enumerate(shapes) for values in (_tied, _normal)]


def _plain_pool(x):
  return resnet._window_max(resnet._pool_windows(x))  # pylint: disable=protected-access


def _flax_pool(x):
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


def test_stem_max_pool_values():
  # One program for all the shapes: compiling per shape would dominate the test's time.
  pools = jax.jit(lambda xs: [[f(x) for f in (resnet.scattered_max_pool, _plain_pool,
                                               _flax_pool)] for x in xs])
  xs = _pool_inputs(POOL_SHAPES)
  for x, (ours, plain, expected) in zip(xs, pools(xs)):
    b, h, w, c = x.shape
    assert expected.shape == (b, (h + 1) // 2, (w + 1) // 2, c)
    np.testing.assert_array_equal(ours, expected)
    np.testing.assert_array_equal(plain, expected)


def _pool_gradients(xs):
  """[(scattered_max_pool's ∂x, the plain pool's autodiff ∂x)]; normal cotangents, whose sums round
  differently in another order."""
  def gradient(pool, x, cotangent):
    return jax.vjp(pool, x)[1](cotangent)[0]

  pairs = []
  for seed, x in enumerate(xs):
    cotangent = _normal(100 + seed, _plain_pool(x).shape)
    pairs.append((gradient(resnet.scattered_max_pool, x, cotangent),
                  gradient(_plain_pool, x, cotangent)))
  return pairs


@pytest.mark.parametrize("shapes,jit", [(POOL_SHAPES, True), ([(2, 7, 8, 3)], False)],
                         ids=["jit", "eager"])
def test_stem_max_pool_gradient_is_autodiff_of_the_plain_pool(shapes, jit):
  """Bit for bit, ties included: the same per-tap shares, summed in the same order. Eagerly
  (one shape: each operation compiles on its own) and in one jitted program (where XLA may fuse
  the sums)."""
  xs = _pool_inputs(shapes)
  for ours, theirs in (jax.jit(_pool_gradients) if jit else _pool_gradients)(xs):
    np.testing.assert_array_equal(ours, theirs)


@jax.jit
def _hand_gradients(zeros_cotangent):
  centre = jnp.zeros((1, 3, 3, 1)).at[0, 1, 1, 0].set(1.0)
  centre_cotangent = jnp.array([1.0, 2.0, 4.0, 8.0]).reshape(1, 2, 2, 1)
  return (jax.vjp(resnet.scattered_max_pool, centre)[1](centre_cotangent)[0],
          jax.vjp(resnet.scattered_max_pool, jnp.zeros((2, 7, 6, 3)))[1](zeros_cotangent)[0])


def test_stem_max_pool_gradient_by_hand():
  """One maximum at the centre of 3×3 (row and column 1: an odd-odd position in all four
  windows) takes every output's cotangent; in an all-zero map the ties at 0 share each output's
  cotangent among its window (shares of 1/2ᵏ: exact sums), none of it lost or doubled."""
  cotangent = jnp.round(4 * _normal(0, (2, 4, 3, 3)))
  centre_grad, zeros_grad = _hand_gradients(cotangent)
  np.testing.assert_array_equal(centre_grad, jnp.zeros((1, 3, 3, 1)).at[0, 1, 1, 0].set(15.0))
  np.testing.assert_array_equal(jnp.sum(zeros_grad, axis=(1, 2)), jnp.sum(cotangent, axis=(1, 2)))
  assert float(jnp.max(jnp.abs(cotangent))) > 0


def test_stem_max_pool_is_the_scattered_pool_only_in_the_context():
  """Outside the explainers' context the stem pool is plain autodiff, forward mode included
  (a custom_vjp has none); inside, the scattered pool, with the same values."""
  x = _normal(0, (1, 6, 6, 2))
  # A fresh function per trace: tracing caches do not know the context.
  outside = jax.make_jaxpr(lambda x: resnet.stem_max_pool(x))(x)  # pylint: disable=unnecessary-lambda
  with convolution.input_gradients_by_matmul():
    inside = jax.make_jaxpr(lambda x: resnet.stem_max_pool(x))(x)  # pylint: disable=unnecessary-lambda
  assert "custom_vjp" not in str(outside) and "custom_vjp" in str(inside)
  _, tangent = jax.jvp(resnet.stem_max_pool, (x,), (jnp.ones_like(x),))
  assert tangent.shape == (1, 3, 3, 2)
