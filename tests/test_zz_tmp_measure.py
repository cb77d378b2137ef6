# TEMPORARY measurement file (to be deleted).
import jax, jax.numpy as jnp, numpy as np, pytest
from conftest import max_abs_diffs
import test_registry as tr
import test_byo_model as tb
from mhex_jax.explain import registry, equivalent_matrix, image
from mhex_jax.explain.maps import normalize_maps

def md(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))

def margin(logits):
  s = np.sort(np.asarray(logits), -1)
  return s[:, -1] - s[:, -2]

@pytest.mark.parametrize("kind", [0, 1, 2])
def test_m1(kind):
  model, variables, inputs = tr._models_and_inputs()[kind]
  labels = jnp.array([1, 1])
  tp_t = registry.resolve_targets(model, variables, inputs, "predicted", labels)
  tp = registry.explainer("mhex", model)(variables, inputs, tp_t)
  out_jit = jax.jit(lambda v, x: equivalent_matrix.explanation(model, v, x, None))(variables, inputs)
  out_eager = equivalent_matrix.explanation(model, variables, inputs, None)
  explain = jax.jit(registry.targeted_explainer("mhex", model, "predicted"))
  maps, t = explain(variables, inputs, labels)
  none_maps = registry.explainer("mhex", model)(variables, inputs, None)
  lm, lt = registry.targeted_explainer("mhex", model, "labels")(variables, inputs, labels)
  lref = registry.explainer("mhex", model)(variables, inputs, labels)
  print(f"\nM1 kind={kind} targets jit={np.asarray(t)} eager={np.asarray(tp_t)} "
        f"margins jit={margin(out_jit.logits)} eager={margin(out_eager.logits)} "
        f"logit diff={md(out_jit.logits, out_eager.logits):.3g} max|logit|={np.abs(out_eager.logits).max():.3g} "
        f"maps jit-vs-2pass={md(maps, tp):.3g} none-vs-2pass={md(none_maps, tp):.3g} labels={md(lm, lref):.3g} "
        f"jit saliency vs two-pass={md(out_jit.saliency, tp):.3g}")

def test_m2():
  model, variables = tb._setup(tb.MHEXCNN())
  targets = jnp.array([2, 0, 1])
  sal = jax.jit(lambda v, x, t: equivalent_matrix.mhex_saliency(model, v, x, t))(variables, tb.IMAGES, targets)
  last_head = equivalent_matrix.mhex_saliency(tb.MHEXCNN(all_heads=False), variables, tb.IMAGES, targets)
  predicted = equivalent_matrix.mhex_saliency(model, variables, tb.IMAGES)
  print(f"\nM2 last_head vs jit={md(last_head.saliency, sal.saliency):.3g} "
        f"pred eager={np.asarray(predicted.targets)} jit argmax={np.asarray(jnp.argmax(sal.logits, -1))} "
        f"margins jit={margin(sal.logits)} eager={margin(predicted.logits)} logit diff={md(sal.logits, predicted.logits):.3g} "
        f"max|logit|={np.abs(predicted.logits).max():.3g}")

def test_m3():
  model, variables = tr._vit()
  maps = jax.jit(registry.explainer("grad_cam", model))(variables, tr.IMAGES, tr.TARGETS)
  raw = image.grad_cam(model, variables, tr.IMAGES, tr.TARGETS)
  jraw = jax.jit(lambda v, x, t: normalize_maps(image.grad_cam(model, v, x, t)))(variables, tr.IMAGES, tr.TARGETS)
  eager_reg = registry.explainer("grad_cam", model)(variables, tr.IMAGES, tr.TARGETS)
  print(f"\nM3 jit reg vs eager={md(maps, normalize_maps(raw)):.3g} jit vs jit={md(maps, jraw):.3g} "
        f"eager vs eager={md(eager_reg, normalize_maps(raw)):.3g}")
