r"""The side-by-side speed table: every ratio in one command.

    python -m benchmarks.run [--quick] [--out=benchmarks/results] [--rounds=9]

Writes OUT/results.md (the table in benchmarks/README.md) and OUT/results.json (every ratio
with its median and min–max over rounds, the times behind it, the machine and the versions). All
figures are ratios against a baseline timed in the same process, in interleaved rounds
(``benchmarks/harness.py``): machines are shared and noisy, absolute times are not comparable.

  * MHEX saliency / the same network's forward: ResNet-18, ResNet-50 and ViT-S/16 at
    112² and 224², batch 1, 8 and 32 (random weights: speed does not depend on them).
  * The default MHEX-ViT map's attention routing, its floor (the forward with its head sums
    formed as it goes) and the map unrouted / forward: ViT-S/16 at 224², batch 32.
  * The MHEX map of the predicted class against its floor (the forward reading every block's
    features after the head): ResNet-18 112² batch 8 and 224² batch 32, ResNet-50 224² batch 8.
  * Every MHEX-ViT patch map (``eval.mhex.map``, ``route="flow"``) / forward: ViT-S/16 at 224²,
    batch 1 and 8.
  * Every image explainer / forward (ResNet-18, 112², batch 8; the gradient methods at 224²
    too), one-pass methods, path methods and Score-CAM each in rounds of their own.
  * MHEX and AttCAT token maps / forward on a MiniLM-sized MHEX-BERT (128 tokens, batch 8).
  * Every Transformer gradient method / its floor, the forward and one backward to the
    embeddings (the floor itself / the forward in the first row), on the same BERT.
  * MHEX train step / plain ResNet-18 train step (112², batch 32).
  * Deletion + insertion and text AOPC / the model calls they cannot avoid.
  * Where PyTorch is installed: captum's LayerGradCam and IntegratedGradients on the same
    ResNet-18 shape, batch and image size, at 1 thread and at PyTorch's default (the faster
    counts), against MHEX and our Grad-CAM and IG maps.
  * The ImageNet input pipeline (JPEG decode + random-resized crop + flip), images/s in threads
    and in grain's worker processes (``benchmarks/input_pipeline.py``).
  * Time to the first training step and to the first map, cold and from the persistent
    compilation cache, and the map program's memory against the forward's
    (``benchmarks/startup.py``).

XLA:CPU's options are compared by ``python -m benchmarks.xla_options`` (a process per option).
``--quick`` (about a minute on a 2-core CPU) keeps one or two sizes of each group.
"""

import argparse
import functools
import pathlib
import statistics
import sys

import jax
import jax.numpy as jnp
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

from benchmarks import harness  # pylint: disable=g-import-not-at-top
from benchmarks import input_pipeline
from benchmarks import startup
from mhex_jax import host_allocator
from mhex_jax import train_lib
from mhex_jax.explain import attribution
from mhex_jax.explain import equivalent_matrix
from mhex_jax.explain import registry
from mhex_jax.explain import transformer
from mhex_jax.metrics import image as image_metrics
from mhex_jax.metrics import text as text_metrics
from mhex_jax.models import bert
from mhex_jax.models import common
from mhex_jax.models import resnet
from mhex_jax.models import vit

NUM_CLASSES = 1000
# The Transformer methods of one forward and one backward pass (embedding IG: one per point).
TOKEN_GRADIENT_METHODS = ("gradient_relevance", "grad_sam", "attcat", "cat",
                          "embedding_gradient_x_input")


def build(name: str, image_size: int, mhex: bool = True):
  """(model, variables) with random weights; names: resnet18, resnet50, vit_s16."""
  if name.startswith("resnet"):
    model = resnet.ResNet(num_classes=NUM_CLASSES, depth=int(name[6:]), width=64,
                          stem="imagenet", mhex=mhex)
  elif name == "vit_s16":
    model = vit.ViT(num_classes=NUM_CLASSES, image_size=image_size, patch_size=16,
                    hidden_size=384, num_layers=12, num_heads=6, intermediate_size=1536,
                    mhex=mhex)
  else:
    raise ValueError(f"Unknown benchmark model {name!r}")
  images = jnp.zeros((1, image_size, image_size, 3))
  variables = jax.jit(model.init)(jax.random.key(0), images)
  return model, {k: v for k, v in variables.items() if k in ("params", "batch_stats")}


def _images(batch: int, size: int) -> jax.Array:
  return jax.random.normal(jax.random.key(1), (batch, size, size, 3))


def _targets(batch: int) -> jax.Array:
  return jnp.arange(batch, dtype=jnp.int32) % NUM_CLASSES


def _forward(model):
  """The prediction: the final head's logits (an MHEX model's other heads are left out)."""
  return jax.jit(lambda v, x: attribution.final_logits(model.apply(v, x, train=False)))


def _row(group, case, times, name, baseline, **extra):
  return {"group": group, "case": case, "method": name, "baseline": baseline,
          **harness.ratio(times, name, baseline), **extra}


def mhex_vs_forward(models, sizes, batches, rounds):
  """MHEX maps of given classes, and of the predicted class (the one forward pass gives the
  prediction too), against the forward pass of the same network; the maps' variables are
  prepared once (``registry.prepare``: E formed per checkpoint), as the evaluators do."""
  rows = []
  for name in models:
    for size in sizes:
      model, variables = build(name, size)
      prepared = registry.prepare(model, variables)
      forward, mhex = _forward(model), jax.jit(registry.explainer("mhex", model))
      for batch in batches:
        x, y = _images(batch, size), _targets(batch)
        times = harness.interleaved({"forward": lambda: forward(variables, x),
                                     "mhex": lambda: mhex(prepared, x, y),
                                     "mhex, predicted class": lambda: mhex(prepared, x, None)},
                                    rounds)
        for method in ("mhex", "mhex, predicted class"):
          rows.append(_row("MHEX saliency / forward", f"{name}, {size}², batch {batch}", times,
                           method, "forward"))
  return rows


# The MHEX-ViT patch maps of explain.token_flow beside the default (eval.mhex options).
VIT_MAPS = {"mhex": {}, "mhex, class flow": {"map": "flow"},
            "mhex, logit split (flow-routed)": {"map": "split", "route": "flow",
                                                "flow_rows": "final"},
            "mhex, CAM flow-routed": {"route": "flow"}}


def vit_maps_vs_forward(size, batches, rounds, names=tuple(VIT_MAPS)):
  """The ViT patch maps of every ``map`` (predicted class) against the forward pass."""
  model, variables = build("vit_s16", size)
  prepared = registry.prepare(model, variables)
  forward = _forward(model)
  rows = []
  maps = {name: VIT_MAPS[name] for name in names}
  for batch in batches:
    x = _images(batch, size)
    fns = {"forward": lambda: forward(variables, x)}
    for name, options in maps.items():
      fn = jax.jit(registry.explainer("mhex", model, **options))
      fns[name] = functools.partial(fn, prepared, x, None)
    times = harness.interleaved(fns, rounds)
    rows += [_row("ViT patch maps / forward", f"vit_s16, {size}², batch {batch}", times, name,
                  "forward", options=options) for name, options in maps.items()]
  return rows


def predicted_class_floor(cases, rounds):
  """What the MHEX map of the predicted class costs over given classes, and its floor.

  Given classes, each block's CAM is formed as the block finishes and its features can go;
  the predicted class is known only after the head, so every block's features stay alive until
  then. The floor row is the forward that also reads every block's features once after the
  head (a channel sum scaled by the prediction, which it then has to wait for): what any
  one-pass map of the predicted class must at least do. ``cases``: (model, size, batch).
  """
  rows = []
  for name, size, batch in cases:
    model, variables = build(name, size)
    prepared = registry.prepare(model, variables)
    forward, mhex = _forward(model), jax.jit(registry.explainer("mhex", model))
    x, y = _images(batch, size), _targets(batch)

    def read_after_head(v, images):
      passed = equivalent_matrix.forward_blocks(model, v, (images,), None)
      scale = passed.targets.astype(jnp.float32)
      return passed.logits, [jnp.sum(block.features.astype(jnp.float32), axis=-1)
                             * scale[:, None, None] for block in passed.blocks]

    floor = jax.jit(read_after_head)
    fns = {"forward": lambda: forward(variables, x),
           "floor: forward + every block's features read after the head":
               functools.partial(floor, prepared, x),
           "mhex, predicted class": functools.partial(mhex, prepared, x, None),
           "mhex": functools.partial(mhex, prepared, x, y)}
    times = harness.interleaved(fns, rounds)
    rows += [_row("MHEX, predicted class / forward", f"{name}, {size}², batch {batch}", times,
                  method, "forward") for method in fns if method != "forward"]
  return rows


def vit_routing_floor(size, batch, rounds):
  """What the default MHEX-ViT map's attention routing costs, and its floor (given classes).

  The routed map steps the last layer's CAM back through every layer's head sum S (of the
  softmax's output f32[B, H, T, T], written by the forward anyway) once the forward has ended.
  Rows against the forward: the map unrouted (``route="none"``), the forward with its head
  sums formed and routed as they are made (a vector known up front, so none stays alive: one
  more read of each layer's probabilities, the floor of any routing through them on XLA:CPU,
  whose softmax fusion has one output), and the default map.
  """
  model, variables = build("vit_s16", size)
  prepared = registry.prepare(model, variables)
  forward = _forward(model)
  x, y = _images(batch, size), _targets(batch)

  def head_sums_as_made(v, images):
    logits, state = model.apply(v, images, train=False, mutable=[common.ATTENTION])
    attentions = common.attention_probs(state)
    vector = jnp.ones(attentions[0].shape[:1] + attentions[0].shape[-1:], jnp.float32)
    for probs in attentions:
      summed = transformer.head_sum(probs)
      vector = 0.5 * (vector + jnp.einsum("bi,bij->bj", vector, summed) / probs.shape[1])
    # The logits too, as the forward: else the last layer's MLP and the head drop out.
    return attribution.final_logits(logits), vector

  floor = jax.jit(head_sums_as_made)
  fns = {"forward": lambda: forward(variables, x),
         "forward + head sums routed as made (floor)": lambda: floor(variables, x)}
  for name, options in {"mhex, unrouted": {"route": "none"}, "mhex": {}}.items():
    fn = jax.jit(registry.explainer("mhex", model, **options))
    fns[name] = functools.partial(fn, prepared, x, y)
  times = harness.interleaved(fns, rounds)
  return [_row("ViT routing / forward", f"vit_s16, {size}², batch {batch}", times, name,
               "forward") for name in fns if name != "forward"]


def explainers_vs_forward(methods, size, batch, rounds, options, warm=()):
  model, variables = build("resnet18", size)
  x, y = _images(batch, size), _targets(batch)
  forward = _forward(model)
  fns = {"forward": lambda: forward(variables, x)}
  for method in methods:
    fn = jax.jit(registry.explainer(method, model, **options.get(method, {})))
    fns[method] = functools.partial(fn, variables, x, y)
  times = harness.interleaved(fns, rounds, warm=warm)
  return [_row("image explainer / forward", f"resnet18, {size}², batch {batch}", times, m,
               "forward", options=options.get(m, {})) for m in methods]


def tokens_vs_forward(batch, length, rounds):
  model, variables, inputs, targets = _bert_inputs(batch, length)
  forward = jax.jit(lambda v: model.apply(v, inputs["input_ids"], inputs["attention_mask"]))
  fns = {"forward": lambda: forward(variables)}
  variants = {"mhex": {},  # The routed default.
              "mhex, SPEC §4 map": {"route": "none", "layers": (0, 1, 2), "feature_norm": "none"},
              "mhex, all layers unrouted": {"route": "none", "layers": (), "feature_norm": "none"}}
  prepared = registry.prepare(model, variables)
  for name, options in variants.items():
    fn = jax.jit(registry.explainer("mhex", model, **options))
    fns[name] = functools.partial(fn, prepared, inputs, targets)
  attcat = jax.jit(functools.partial(transformer.attcat, model))
  fns["attcat"] = lambda: attcat(variables, inputs, targets)
  times = harness.interleaved(fns, rounds)
  case = f"MiniLM-sized BERT, {length} tokens, batch {batch}"
  return [_row("token maps / forward", case, times, m, "forward") for m in list(fns)[1:]]


def _bert_inputs(batch, length):
  """A MiniLM-sized MHEX-BERT (random weights) and one batch of token inputs."""
  model = bert.BERT(num_classes=4, hidden_size=384, num_layers=6, num_heads=12,
                    intermediate_size=1536, gate_init="random")
  rng = np.random.default_rng(0)
  ids = jnp.asarray(rng.integers(1000, 30000, (batch, length)), jnp.int32)
  mask = jnp.ones((batch, length), jnp.int32)
  special = jnp.zeros((batch, length), bool).at[:, 0].set(True).at[:, -1].set(True)
  variables = {"params": jax.jit(model.init)(jax.random.key(0), ids[:1], mask[:1])["params"]}
  inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": jnp.zeros_like(ids),
            "special_tokens_mask": special}
  return model, variables, inputs, jnp.arange(batch) % 4


def _embedding_gradient(model, inputs, targets):
  """The floor of a one-pass gradient method: the forward and one backward to the embedding
  output (the first layer's input), nothing else differentiated or kept."""
  args = (inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"])

  def floor(variables):
    embeddings = jax.eval_shape(lambda: model.apply(
        variables, *args, train=False, mutable=[common.HIDDEN_STATES])[1])
    shift = jnp.zeros(common.hidden_states(embeddings)[0].shape, jnp.float32)
    return transformer.first_layer_input_gradient(model, variables, args, targets, shift)

  return jax.jit(floor)


def transformer_gradients_vs_floor(batch, length, rounds, methods=TOKEN_GRADIENT_METHODS,
                                   ig_steps=50, ig_rounds=3):
  """Each Transformer gradient method against its floor, the forward and one backward to the
  embeddings (that floor against the forward in the first row); embedding IG against the
  floor (its own floor: one per path point, ``ig_steps``)."""
  model, variables, inputs, targets = _bert_inputs(batch, length)
  forward = jax.jit(lambda v: model.apply(v, inputs["input_ids"], inputs["attention_mask"]))
  floor = _embedding_gradient(model, inputs, targets)
  base = {"forward": lambda: forward(variables), "floor": lambda: floor(variables)}
  fns = dict(base)
  for method in methods:
    fn = jax.jit(registry.explainer(method, model))
    fns[method] = functools.partial(fn, variables, inputs, targets)
  times = harness.interleaved(fns, rounds)
  group = "Transformer gradient method / its floor"
  case = f"MiniLM-sized BERT, {length} tokens, batch {batch}"
  rows = [_row(group, case, times, "floor", "forward")]
  rows[0]["method"] = "floor: forward + backward to the embeddings"
  rows += [_row(group, case, times, m, "floor") for m in methods]
  if ig_rounds:
    fn = jax.jit(registry.explainer("embedding_integrated_gradients", model, steps=ig_steps))
    fns = {**base, "ig": functools.partial(fn, variables, inputs, targets)}
    times = harness.interleaved(fns, ig_rounds, warm=("forward", "floor"))
    rows.append(_row(group, case, times, "ig", "floor"))
    rows[-1]["method"] = f"embedding_integrated_gradients, {ig_steps} steps (floor: {ig_steps}×)"
  return rows


def train_step_ratio(name, size, batch, rounds):
  """MHEX train step (deep supervision over every head) / the plain network's train step."""
  fns = {}
  x = _images(batch, size)
  batch_arrays = {"image": x, "label": _targets(batch)}
  for label, mhex in (("plain", False), ("mhex", True)):
    model, variables = build(name, size, mhex=mhex)
    optimizer = train_lib.optax.sgd(0.1, momentum=0.9)
    state = train_lib.TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                                 batch_stats=variables.get("batch_stats", {}),
                                 opt_state=optimizer.init(variables["params"]))
    logits = jax.eval_shape(lambda v, m=model: m.apply(v, x[:1], train=False), variables)
    num_heads = logits.shape[0] if logits.ndim == 3 else 1
    step = jax.jit(train_lib.make_train_step(model, optimizer, jnp.ones((num_heads,))))
    holder = {"state": state}

    def run(step=step, holder=holder):
      holder["state"], metrics = step(holder["state"], batch_arrays)
      return metrics["loss"]
    fns[label] = run
  times = harness.interleaved(fns, rounds)
  return [_row("train step / plain train step", f"{name}, {size}², batch {batch}", times,
               "mhex", "plain")]


def metrics_vs_model_calls(size, batch, steps, rounds, length=128):
  """Deletion + insertion (2 · (steps + 1) perturbed batches) against as many forward passes
  over the batch; text AOPC (9 removal fractions plus the intact text) against 10 forwards."""
  model, variables = build("resnet18", size, mhex=False)
  x, y = _images(batch, size), _targets(batch)
  maps = jax.random.uniform(jax.random.key(2), (batch, size, size))

  def score(images):
    return jax.nn.softmax(model.apply(variables, images, train=False)[-1], axis=-1)

  curves = jax.jit(lambda: image_metrics.deletion_insertion_auc(
      score, x, maps, y, steps=steps, chunk_size=batch))
  calls = 2 * (steps + 1)
  forwards = jax.jit(lambda: jax.lax.map(lambda i: score(x + i),
                                         jnp.arange(calls, dtype=jnp.float32)))
  rows = [_row("metric / its model calls", f"resnet18, {size}², {batch} images, {steps} steps",
               harness.interleaved({"deletion + insertion": curves,
                                    f"{calls} forwards": forwards}, rounds),
               "deletion + insertion", f"{calls} forwards")]

  text_model = bert.BERT(num_classes=4, hidden_size=384, num_layers=6, num_heads=12,
                         intermediate_size=1536, mhex=False)
  rng = np.random.default_rng(0)
  ids = jnp.asarray(rng.integers(1000, 30000, (batch, length)), jnp.int32)
  mask = jnp.ones_like(ids)
  text_vars = {"params": jax.jit(text_model.init)(jax.random.key(0), ids[:1], mask[:1])[
      "params"]}

  def text_score(input_ids, attention_mask, token_type_ids):
    logits = text_model.apply(text_vars, input_ids, attention_mask, token_type_ids)
    return jax.nn.softmax(logits[-1] if logits.ndim == 3 else logits, axis=-1)

  saliency = jax.random.uniform(jax.random.key(3), ids.shape)
  removable = jnp.ones(ids.shape, bool).at[:, 0].set(False).at[:, -1].set(False)
  targets = jnp.arange(batch) % 4
  aopc = jax.jit(lambda: text_metrics.aopc_lodds(
      text_score, ids, saliency, removable, targets, attention_mask=mask, chunk_size=batch))
  text_forwards = jax.jit(lambda: jax.lax.map(
      lambda i: text_score(ids + i, mask, jnp.zeros_like(ids)), jnp.arange(10)))
  rows.append(_row("metric / its model calls",
                   f"MiniLM-sized BERT, {length} tokens, {batch} texts, 9 fractions",
                   harness.interleaved({"aopc + lodds": aopc, "10 forwards": text_forwards},
                                       rounds), "aopc + lodds", "10 forwards"))
  return rows


def versus_pytorch(size, batch, rounds, ig_steps, ig_rounds):
  """JAX maps against captum's on the same ResNet-18 shape, batch and image size.

  Every round times the JAX functions, then each PyTorch function at 1 thread and at torch's
  default, with a pause between the libraries (both keep worker threads spinning for a while
  after a call). Each ratio takes, per round, the PyTorch thread setting with the lower median.
  """
  try:
    from benchmarks import torch_side  # pylint: disable=g-import-not-at-top
    import captum  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError as error:
    return [], [f"PyTorch rows skipped: {error} (pip install torch==2.13.0 captum==0.9.0)."]
  model, variables = build("resnet18", size)
  x, y = _images(batch, size), _targets(batch)
  forward = _forward(model)
  ig_options = {"steps": ig_steps}  # chunk_size None: every path point in as few passes as fit.
  methods = {"mhex": {}, "grad_cam": {}}
  if ig_rounds:
    methods["integrated_gradients"] = ig_options
  jax_fns = {"forward": lambda: forward(variables, x)}
  prepared = registry.prepare(model, variables)
  for method, options in methods.items():
    fn = jax.jit(registry.explainer(method, model, **options))
    jax_fns[method] = functools.partial(fn, prepared if method == "mhex" else variables, x, y)
  settings = sorted({1, torch_side.DEFAULT_THREADS})
  builders = {"forward": torch_side.forward, "grad_cam": torch_side.captum_layer_grad_cam}
  if ig_rounds:
    builders["integrated_gradients"] = functools.partial(
        torch_side.captum_integrated_gradients, steps=ig_steps)
  torch_fns = {(m, t): build_fn(18, batch, size, t)
               for m, build_fn in builders.items() for t in settings}
  heavy = {"integrated_gradients"}
  jax_times = {m: [] for m in jax_fns}
  torch_times = {key: [] for key in torch_fns}
  for fn in jax_fns.values():
    harness.time_once(fn)
    harness.time_once(fn)
  for fn in torch_fns.values():
    torch_side.set_threads(fn.threads)
    fn()
    fn()
  for r in range(rounds):
    harness.time_once(jax_fns["forward"])  # Untimed: the first call after PyTorch runs slow.
    for m, fn in jax_fns.items():
      if m not in heavy or r < ig_rounds:
        jax_times[m].append(harness.time_once(fn))
    harness.settle()
    for (m, t), fn in torch_fns.items():
      if m not in heavy or r < ig_rounds:
        torch_side.set_threads(t)
        fn() if m == "forward" else None  # Untimed, as on the JAX side.
        torch_times[(m, t)].append(harness.time_once(fn))
    torch_side.set_threads(torch_side.DEFAULT_THREADS)
    harness.settle()
  labels = {"forward": ("forward", "torch forward"),
            "mhex": ("MHEX maps (all 8 blocks)", "captum LayerGradCam (last block)"),
            "grad_cam": ("Grad-CAM (last block)", "captum LayerGradCam (last block)"),
            "integrated_gradients": (f"integrated gradients, {ig_steps} steps",
                                     f"captum IntegratedGradients, {ig_steps} steps")}
  rows = []
  for m, (ours, theirs) in labels.items():
    if m not in jax_fns:
      continue
    reference = "forward" if m == "forward" else ("grad_cam" if m == "mhex" else m)
    by_threads = {t: statistics.median(torch_times[(reference, t)]) for t in settings}
    fastest = min(by_threads, key=by_threads.get)
    times = {ours: jax_times[m], theirs: torch_times[(reference, fastest)]}
    rows.append(_row("JAX / PyTorch", f"resnet18, {size}², batch {batch}", times, ours, theirs,
                     torch_threads=fastest,
                     torch_ms_by_threads={str(t): 1e3 * v for t, v in by_threads.items()}))
  return rows, [f"PyTorch {torch_side.torch.__version__}, captum {captum.__version__}; "
                "each PyTorch row at its faster thread setting of "
                f"{settings} (JAX / PyTorch below 1: JAX is faster). pytorch-grad-cam is not "
                "measured: it imports torchvision, and PyPI's torchvision does not load beside "
                "the pinned CPU build of torch."]


def markdown(results) -> str:
  lines = [f"Measured on {results['machine']['processor']} ({results['machine']['cpus']} CPUs), "
           f"jax {results['machine']['jax']}, {results['rounds']} interleaved rounds; ratio = "
           "time / baseline time in the same round, median (min–max).", "",
           "| group | case | method | baseline | ratio | min–max | ms | baseline ms |",
           "|---|---|---|---|---|---|---|---|"]
  for r in results["rows"]:
    lines.append(f"| {r['group']} | {r['case']} | {r['method']} | {r['baseline']} | "
                 f"{r['median']:.3f} | {r['min']:.3f}–{r['max']:.3f} | {r['median_ms']:.1f} | "
                 f"{r['baseline_ms']:.1f} |")
  for note in results.get("notes", []):
    lines += ["", note]
  return "\n".join(lines) + "\n"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="A minute's subset (CI).")
  parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
  parser.add_argument("--rounds", type=int, default=None)
  parser.add_argument("--keep_malloc_defaults", action="store_true",
                      help="Leave glibc's mmap threshold as it is (mhex_jax.host_allocator).")
  args = parser.parse_args()
  rounds = args.rounds or (3 if args.quick else 9)
  if not args.keep_malloc_defaults:
    host_allocator.keep_large_buffers()
  rows, notes = [], []
  if args.quick:
    rows += mhex_vs_forward(["resnet18"], [112], [1], rounds)
    rows += vit_maps_vs_forward(32, [1], rounds, names=("mhex, class flow",))
    rows += vit_routing_floor(32, 1, rounds)
    rows += predicted_class_floor([("resnet18", 32, 2)], rounds)
    # IG as in the PyTorch rows below (8 steps, one chunk), so the programs compile once
    # where JAX's persistent cache is on (the tests).
    rows += explainers_vs_forward(["grad_cam", "integrated_gradients"], 112, 1, rounds,
                                  {"integrated_gradients": {"steps": 8}})
    rows += tokens_vs_forward(2, 64, rounds)
    rows += transformer_gradients_vs_floor(2, 32, rounds, methods=("attcat",), ig_rounds=0)
    rows += train_step_ratio("resnet18", 32, 4, rounds)
    rows += metrics_vs_model_calls(32, 2, 4, rounds, length=32)
    torch_part = versus_pytorch(112, 1, rounds, ig_steps=8, ig_rounds=rounds)
    rows += input_pipeline.pipeline_rows(32, rounds, workers=(1,), use_grain=False,
                                         batch_size=8)
    rows += startup.memory_rows(("resnet18_tiny",), batches=(2,))
  else:
    # The MHEX rows' target (1.05) is as wide as one round's noise (±5–10% here), and a median
    # of 9 rounds moved by up to 6% between two runs of the same code: 25 rounds (about 4 more
    # minutes) for these groups.
    rows += mhex_vs_forward(["resnet18", "resnet50", "vit_s16"], [112, 224], [1, 8, 32],
                            max(rounds, 25))
    rows += vit_maps_vs_forward(224, [1, 8], rounds)
    rows += vit_routing_floor(224, 32, max(rounds, 25))
    rows += predicted_class_floor([("resnet18", 112, 8), ("resnet18", 224, 32),
                                   ("resnet50", 224, 8)], max(rounds, 25))
    # The costly groups (seconds a call) get at most 5 rounds.
    # Methods of one pass, of 50 passes and Score-CAM's 1,000 forwards in rounds of their
    # own: a call of seconds disturbs the rounds of calls of milliseconds.
    one_pass = ["grad_cam", "grad_cam_plus_plus", "layer_cam", "vanilla_gradient",
                "gradient_x_input"]
    paths = ["smoothgrad", "integrated_gradients"]
    options = {"integrated_gradients": {"steps": 50}, "score_cam": {"chunk_size": 64}}
    rows += explainers_vs_forward(one_pass, 112, 8, rounds, options)
    # Beside calls of seconds, the forward gets a warm-up call before each timed one.
    rows += explainers_vs_forward(paths, 112, 8, min(rounds, 5), options, warm=("forward",))
    rows += explainers_vs_forward(["score_cam"], 112, 8, min(rounds, 3), options,
                                  warm=("forward",))
    # The gradient methods at 224² too (the path methods in as many passes as fit in memory).
    rows += explainers_vs_forward(["vanilla_gradient", "gradient_x_input", "grad_cam"], 224, 8,
                                  rounds, options)
    rows += explainers_vs_forward(paths, 224, 8, min(rounds, 3), options, warm=("forward",))
    rows += tokens_vs_forward(8, 128, rounds)
    rows += transformer_gradients_vs_floor(8, 128, rounds)
    rows += train_step_ratio("resnet18", 112, 32, rounds)
    rows += train_step_ratio("vit_s16", 224, 8, rounds)
    rows += metrics_vs_model_calls(112, 16, 100, min(rounds, 5))
    torch_part = versus_pytorch(112, 8, rounds, ig_steps=50, ig_rounds=3)
    rows += torch_part[0]
    torch_part = versus_pytorch(224, 8, rounds, ig_steps=50, ig_rounds=0)
    rows += input_pipeline.pipeline_rows(256, min(rounds, 3))
    rows += startup.startup_rows()
    rows += startup.memory_rows()
  rows += torch_part[0]
  notes += torch_part[1]
  notes.append("glibc's malloc thresholds: " + (
      "raised (mhex_jax.host_allocator)" if host_allocator.applied() else "defaults"))
  results = {"machine": harness.machine(), "rounds": rounds, "quick": args.quick,
             "rows": rows, "notes": notes}
  harness.write_results(args.out, "results", results, markdown(results))
  print(markdown(results))


if __name__ == "__main__":
  main()
