"""Token explainers for Transformers (SPEC §7): attention baselines, gradient methods, AttCAT.

Every explainer has the registry signature ``name(model, variables, inputs, targets, **options)``
and is pure, batched and jit-able (close over ``model`` and the options):

* ``model``: a ``BERT`` or ``ViT`` (plain or MHEX); ``variables``: {"params", ...}.
* ``inputs``: text {"input_ids", "attention_mask", "token_type_ids", "special_tokens_mask"}
  (int/bool [B, T]; ``token_type_ids`` may be left out, ``special_tokens_mask`` is only needed by
  ``cat``/``attcat`` with ``mask_special_keys=True``), or images {"image": f32[B, H, W, C]}.
* ``targets``: int[B], the classes whose final-head logit z_c is explained (gradient methods;
  the attention-only methods ignore them).
* Result: a raw token map f32[B, T] over the model's tokens, [CLS] / the class token in row 0,
  exactly 0 on padding and on a ViT's register tokens, signed where the method is, not
  normalised (the caller normalises with ``maps.normalize_maps`` and, for ViT, maps the patch
  tokens to the image, dropping every prefix token: ``tasks.ImageTask.token_maps``).

**[CLS] row.** Raw attention, rollout and the Chefer relevance read the row of the class token:
BERT's [CLS] and ViT's class token. A ViT built with ``class_token=False`` has no such row and
pools all tokens, so there the mean of the rows over valid queries is read instead. The class
token's own entry keeps the score the method gives it (rollout and relevance give it the
identity's share; raw attention zeroes the self-entry, so it is 0 there). A DeiT's
distillation token (row 1) is scored like any token. A DINOv2's register tokens count as
padding does among the queries (``ViT.scored_tokens``): no map reads their rows (they are left
out of the column means over queries) and their entries are 0; as keys they stay in the
attention the model computes.

**Gradients** come from one forward and one backward pass through the model's perturbation
points (``attribution.perturbation_gradients``): attention probabilities α^(l) [B, H, T, T]
and layer inputs h^(l) [B, T, d] with ∂z_c/∂α^(l) and ∂z_c/∂h^(l). The embedding methods
(gradient × input, Integrated Gradients) work on h^(0), the embedding output, and score a
token by the sum over the hidden dim.

**Special tokens as keys (AttCAT, CAT).** The official AttCAT explanation pass hides the special
tokens from attention. BERT's only token mask is ``attention_mask`` (it masks keys; queries are
never masked), so the explanation pass runs with ``attention_mask ∧ ¬special_tokens_mask``:
special tokens still are queries ([CLS] still carries the plain model's prediction) but nothing
attends to them, so their AttCAT score is 0, and z_c is the logit of this pass. In MHEX-BERT the
same mask also drops them from the heads' token means. An example with no non-special token
keeps its plain mask. The column means w_l still average over every non-padding query. ViT
takes no key mask and its class (and distillation) token is what the plain ViT classifies from;
its explanation pass is the plain one (``mask_special_keys`` has no effect) and those tokens
are scored like any token.
"""

from typing import Any, Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from mhex_jax import tasks
from mhex_jax.explain import attribution
from mhex_jax.models import common

OUTPUTS = ("signed", "abs", "relu")
BASELINES = ("pad", "zeros")


def _tokens(model: Any, inputs: Mapping[str, jax.Array], *,
            mask_special_keys: bool = False) -> tasks.TokenInputs:
  """The model's call on an ``inputs`` dict (``tasks.task_of(model).token_inputs``)."""
  if not isinstance(inputs, Mapping):
    raise ValueError(f"inputs must be a dict ({{'input_ids', ...}} or {{'image': images}}), got "
                     f"{type(inputs).__name__}; wrap images as {{'image': images}}.")
  return tasks.task_of(model).token_inputs(inputs, mask_special_keys=mask_special_keys)


def _finish(maps: jax.Array, tokens: tasks.TokenInputs) -> jax.Array:
  return jnp.where(tokens.valid, maps.astype(jnp.float32), 0.0)


def _check_choice(name: str, value: str, allowed: Sequence[str]):
  if value not in allowed:
    raise ValueError(f"Unknown {name}={value!r}; use one of {tuple(allowed)}.")


def _check_start_layer(start_layer: int, num_layers: int):
  if not 0 <= start_layer < num_layers:
    raise ValueError(f"start_layer={start_layer} is out of range for a model with {num_layers} "
                     f"layers; use 0..{num_layers - 1}.")


def _query_row(matrix: jax.Array, tokens: tasks.TokenInputs) -> jax.Array:
  """[B, T, T] → [B, T]: the class-token row, or the mean of valid rows without one."""
  if tokens.class_token:
    return matrix[:, 0]
  return _column_mean(matrix, tokens.valid)


def _query_weights(tokens: tasks.TokenInputs) -> jax.Array:
  """[B, T] weights whose product with a [B, T, T] matrix is ``_query_row`` of it."""
  if tokens.class_token:
    return jnp.zeros(tokens.valid.shape, jnp.float32).at[:, 0].set(1.0)
  weights = tokens.valid.astype(jnp.float32)
  return weights / jnp.maximum(jnp.sum(weights, axis=1, keepdims=True), 1.0)


def _column_mean(matrix: jax.Array, valid: jax.Array) -> jax.Array:
  """(1 / N_valid) Σ_{valid i} matrix[b, i, j]: [B, T, T] → [B, T]."""
  weights = valid.astype(jnp.float32)
  weights = weights / jnp.maximum(jnp.sum(weights, axis=1, keepdims=True), 1.0)
  return jnp.einsum("bi,bij->bj", weights, matrix)


def _apply_output(maps: jax.Array, output: str) -> jax.Array:
  if output == "abs":
    return jnp.abs(maps)
  if output == "relu":
    return jnp.maximum(maps, 0.0)
  return maps


class _Pass(NamedTuple):
  """Per-layer intermediates of one forward + backward pass, each list in depth order."""
  probs: list[jax.Array]  # α^(l) f32[B, H, T, T]
  prob_grads: list[jax.Array]  # ∂z_c/∂α^(l)
  layer_inputs: list[jax.Array]  # h^(l) [B, T, d]; h^(0) = embedding output
  layer_input_grads: list[jax.Array]  # ∂z_c/∂h^(l)


def _gradient_pass(model: Any, variables: Any, tokens: tasks.TokenInputs,
                   targets: jax.Array) -> _Pass:
  _, state, grads = attribution.perturbation_gradients(
      model.apply, common.strip_state(variables), tokens.args, jnp.asarray(targets, jnp.int32),
      collections=(common.ATTENTION, common.HIDDEN_STATES))
  # The perturbation tree mirrors the attention collection's layout (layer_XX/attention/probs).
  return _Pass(common.attention_probs(state), common.attention_probs({common.ATTENTION: grads}),
               common.hidden_states(state)[:-1], common.layer_input_perturbations(grads))


def _attention(model: Any, variables: Any, tokens: tasks.TokenInputs) -> list[jax.Array]:
  _, state = model.apply(common.strip_state(variables), *tokens.args, train=False,
                         mutable=[common.ATTENTION])
  return common.attention_probs(state)


def head_mean(per_head: jax.Array) -> jax.Array:
  """The mean over heads (axis 1) of f32[B, H, ...]: ``head_sum`` / H."""
  return head_sum(per_head) / per_head.shape[1]


def head_sum(per_head: jax.Array) -> jax.Array:
  """The sum over heads (axis 1) of f32[B, H, ...], as a sum of the H head slices.

  The same value as ``jnp.sum(per_head, axis=1)`` up to float32 rounding, and one fused
  elementwise pass: XLA:CPU reduces a non-minor axis 5-9× slower (12 layers of [1, 12, 197,
  197]: 19.8 ms against 2.2 ms, benchmarks/README.md), which was most of the MHEX ViT map's
  cost over the forward at batch 1.
  """
  per_head = per_head.astype(jnp.float32)
  total = per_head[:, 0]
  for head in range(1, per_head.shape[1]):
    total = total + per_head[:, head]
  return total


def _token_dot(a: jax.Array, b: jax.Array) -> jax.Array:
  """Σ_d a[b, t, d] · b[b, t, d] in float32: [B, T, d] × [B, T, d] → [B, T]."""
  return jnp.einsum("btd,btd->bt", a.astype(jnp.float32), b.astype(jnp.float32))


# ---------------------------------------------------------------------------------------------
# Attention-only baselines.


def rollout_matrix(attentions: Sequence[jax.Array], *, start_layer: int = 0) -> jax.Array:
  """Attention rollout J = M_L ⋯ M_s, M_l = rownorm(mean_h α^(l) + I).

  Args:
    attentions: per-layer probabilities f32[B, H, T, T], input → output order.
    start_layer: the first layer s multiplied in (0 = all layers).

  Returns:
    J f32[B, T, T]; row i is how much of token i's output comes from each input token.
  """
  _check_start_layer(start_layer, len(attentions))
  return rollout_matrices(attentions[start_layer:])[-1]


def mixing_matrices(attentions: Sequence[jax.Array]) -> list[jax.Array]:
  """Each layer's token mixing M_l = rownorm(mean_h α^(l) + I): attention averaged over heads,
  plus the residual stream, rows normalised to 1.

  Args:
    attentions: per-layer probabilities f32[B, H, T, T], input → output order.

  Returns:
    L matrices f32[B, T, T].
  """
  eye = jnp.eye(attentions[0].shape[-1], dtype=jnp.float32)
  mixings = []
  for probs in attentions:
    mixing = head_mean(probs) + eye
    mixings.append(mixing / jnp.sum(mixing, axis=-1, keepdims=True))
  return mixings


def rollout_matrices(attentions: Sequence[jax.Array]) -> list[jax.Array]:
  """Every partial rollout J_l = M_l ⋯ M_1 (l = 1..L), M_l from ``mixing_matrices``.

  Args:
    attentions: per-layer probabilities f32[B, H, T, T], input → output order.

  Returns:
    L matrices f32[B, T, T]; row i of J_l is how much of token i's state after layer l's
    attention comes from each input token (rows sum to 1).
  """
  mixings = mixing_matrices(attentions)
  joint = jnp.broadcast_to(jnp.eye(mixings[0].shape[-1], dtype=jnp.float32), mixings[0].shape)
  joints = []
  for mixing in mixings:
    joint = jnp.einsum("bij,bjk->bik", mixing, joint)
    joints.append(joint)
  return joints


def raw_attention(model: Any, variables: Any, inputs: Mapping[str, jax.Array],
                  targets: Optional[jax.Array] = None) -> jax.Array:
  """Last-layer attention of the [CLS] row, averaged over heads, its self-entry zeroed.

  ``targets`` is unused (the map does not depend on the class). Returns f32[B, T].
  """
  del targets
  tokens = _tokens(model, inputs)
  probs = _attention(model, variables, tokens)[-1]
  attention = head_mean(probs)
  attention = attention * (1.0 - jnp.eye(attention.shape[-1], dtype=jnp.float32))
  return _finish(_query_row(attention, tokens), tokens)


def attention_rollout(model: Any, variables: Any, inputs: Mapping[str, jax.Array],
                      targets: Optional[jax.Array] = None, *, start_layer: int = 0) -> jax.Array:
  """The [CLS] row of ``rollout_matrix`` (Abnar & Zuidema 2020). ``targets`` is unused.

  Args:
    start_layer: first layer in the product (default 0: every layer).

  Returns:
    f32[B, T]; each row sums to 1 over its valid tokens, [CLS] included.
  """
  del targets
  tokens = _tokens(model, inputs)
  attentions = _attention(model, variables, tokens)
  _check_start_layer(start_layer, len(attentions))
  # The query row of M_L ⋯ M_s as a vector pushed through each M (vector-matrix products)
  # instead of the product of the [T, T] matrices: the same sum in another order.
  row = _query_weights(tokens)
  for mixing in reversed(mixing_matrices(attentions[start_layer:])):
    row = jnp.einsum("bi,bij->bj", row, mixing)
  return _finish(row, tokens)


# ---------------------------------------------------------------------------------------------
# Attention-gradient methods.


def relevance_matrix(attentions: Sequence[jax.Array], gradients: Sequence[jax.Array], *,
                     start_layer: int = 0) -> jax.Array:
  """Chefer et al. (ICCV 2021), gradient-only: R = I; per block R ← R + mean_h[(∇α ⊙ α)⁺] R.

  Args:
    attentions: per-layer α^(l) f32[B, H, T, T], input → output order.
    gradients: ∂z_c/∂α^(l), same shapes.
    start_layer: the first layer l whose update is applied (0 = all layers).

  Returns:
    R f32[B, T, T].
  """
  if len(attentions) != len(gradients):
    raise ValueError(f"{len(attentions)} attention maps but {len(gradients)} gradients.")
  _check_start_layer(start_layer, len(attentions))
  eye = jnp.eye(attentions[0].shape[-1], dtype=jnp.float32)
  relevance = jnp.broadcast_to(eye, attentions[0].shape[:1] + eye.shape)
  for probs, grad in zip(attentions[start_layer:], gradients[start_layer:]):
    weighted = head_mean(jnp.maximum(grad.astype(jnp.float32) * probs, 0.0))
    relevance = relevance + jnp.einsum("bij,bjk->bik", weighted, relevance)
  return relevance


def gradient_relevance(model: Any, variables: Any, inputs: Mapping[str, jax.Array],
                       targets: jax.Array, *, start_layer: int = 0) -> jax.Array:
  """The [CLS] row of ``relevance_matrix`` (Chefer et al. ICCV 2021, gradient-only version).

  Args:
    start_layer: the first block whose update R ← R + Ā R is applied; default 0, every
      block (SPEC §7). A later start ignores the early blocks' attention.

  Returns:
    f32[B, T]; non-negative, [CLS] gets ≥ 1 from the identity.
  """
  tokens = _tokens(model, inputs)
  grads = _gradient_pass(model, variables, tokens, targets)
  relevance = relevance_matrix(grads.probs, grads.prob_grads, start_layer=start_layer)
  return _finish(_query_row(relevance, tokens), tokens)


def grad_sam(model: Any, variables: Any, inputs: Mapping[str, jax.Array],
             targets: jax.Array) -> jax.Array:
  """Grad-SAM / attention × gradient: S = Σ_l mean_h[ReLU(∇α^(l)) ⊙ α^(l)], a [T, T] matrix.

  Reduction (choice): the token score is S's column mean over valid queries,
  score[j] = (1 / N_valid) Σ_{valid i} S[i, j], what token j receives on average: Grad-SAM
  (Barkan et al. 2021) averages over the rows too, and AttCAT's w_l is the same reduction.

  Returns:
    f32[B, T], non-negative.
  """
  tokens = _tokens(model, inputs)
  grads = _gradient_pass(model, variables, tokens, targets)
  total = sum(head_mean(jnp.maximum(g.astype(jnp.float32), 0.0) * a)
              for a, g in zip(grads.probs, grads.prob_grads))
  return _finish(_column_mean(total, tokens.valid), tokens)


# ---------------------------------------------------------------------------------------------
# Embedding methods.


def gradient_x_input(model: Any, variables: Any, inputs: Mapping[str, jax.Array],
                     targets: jax.Array) -> jax.Array:
  """Σ_d h^(0) ⊙ ∂z_c/∂h^(0) on the embedding output h^(0). Returns signed f32[B, T]."""
  tokens = _tokens(model, inputs)
  grads = _gradient_pass(model, variables, tokens, targets)
  return _finish(_token_dot(grads.layer_input_grads[0], grads.layer_inputs[0]), tokens)


def _first_layer_input(model: Any, variables: Any, args: tuple) -> jax.Array:
  _, state = model.apply(variables, *args, train=False, mutable=[common.HIDDEN_STATES])
  return common.hidden_states(state)[0]


def _baseline_args(tokens: tasks.TokenInputs, pad_id: int) -> tuple:
  """Model inputs whose embedding output is the "pad" baseline."""
  if len(tokens.args) == 1:
    # ViT: a blank (all-zero) image keeps the class token and position embeddings.
    return (jnp.zeros_like(tokens.args[0]),)
  ids, mask, types = tokens.args
  return (jnp.full_like(ids, pad_id), mask, types)


def first_layer_input_gradient(model: Any, variables: Any, args: tuple, targets: jax.Array,
                               shift: jax.Array) -> jax.Array:
  """∂ Σ_b z_b[targets_b] / ∂ h^(0): one forward and one backward to the first layer's input
  (the embedding output, or the patch tokens), with ``shift`` [B, T, D] added to that input
  through its perturbation point; no parameter is differentiated. The floor of every one-pass
  Transformer gradient method and the gradient of each Integrated-Gradients path point.

  Args:
    model, variables: a Transformer classifier with perturbation points ("params" only).
    args: its positional inputs (``tasks.TokenInputs.args``).
    targets: int[B].
    shift: added to layer 0's input (zeros: the gradient at the input itself).
  """
  shapes = jax.eval_shape(lambda: model.apply(variables, *args, train=False,
                                              mutable=[common.PERTURBATIONS])[1])
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes[common.PERTURBATIONS])
  first = min(k for k in zeros if k.startswith("layer_"))

  def target_logit(shift):
    shift = shift.astype(zeros[first][common.LAYER_INPUT].dtype)
    perturbations = {**zeros, first: {**zeros[first], common.LAYER_INPUT: shift}}
    head_logits = model.apply({**variables, common.PERTURBATIONS: perturbations}, *args,
                              train=False)
    return jnp.sum(attribution.target_logits(head_logits, targets))

  return jax.grad(target_logit)(shift)


def integrated_gradients(model: Any, variables: Any, inputs: Mapping[str, jax.Array],
                         targets: jax.Array, *, steps: int = 50,
                         chunk_size: Optional[int] = None, baseline: str = "pad",
                         pad_id: int = 0) -> jax.Array:
  """Integrated Gradients on the embedding output h^(0), summed over the hidden dim.

  Path points b + α(x − b) are fed to the model by adding (point − x) to layer 0's input
  through its perturbation point, so attention masks, positions and types stay those of x.

  Args:
    steps: m midpoint-rule path points (completeness error O(1/m²)).
    chunk_size: path points (over all examples: up to m·B) whose gradients are in flight at
      once (``attribution.path_integral``); memory grows with it. None = as many as fit
      (``attribution.fitting_chunk_size``).
    baseline: "pad": the embedding output of the same input with every id replaced by
      ``pad_id`` (positions and token types kept); for ViT, of an all-zero image (class token
      and positions kept, so the class token scores 0). "zeros": h = 0.
    pad_id: the tokenizer's [PAD] id (0 for BERT's uncased vocabularies).

  Returns:
    signed f32[B, T]; per example the scores sum to ≈ z_c(x) − z_c(baseline).
  """
  _check_choice("baseline", baseline, BASELINES)
  tokens = _tokens(model, inputs)
  variables = common.strip_state(variables)
  targets = jnp.asarray(targets, jnp.int32)
  embeddings = _first_layer_input(model, variables, tokens.args)
  if baseline == "pad":
    reference = _first_layer_input(model, variables, _baseline_args(tokens, pad_id))
  else:
    reference = jnp.zeros_like(embeddings)
  batch = embeddings.shape[0]
  chunk_size = attribution.resolved_chunk_size(
      chunk_size, model.apply, variables, tuple(a[:1] for a in tokens.args), steps * batch)

  def gradients(points, examples):
    args = tuple(a[examples] for a in tokens.args)
    return first_layer_input_gradient(model, variables, args, targets[examples],
                                      points - embeddings[examples])

  attributions = attribution.path_integral(
      gradients, embeddings.astype(jnp.float32), reference.astype(jnp.float32), steps=steps,
      chunk_size=chunk_size)
  return _finish(jnp.sum(attributions, axis=-1), tokens)


# ---------------------------------------------------------------------------------------------
# AttCAT and CAT.


def _cat_terms(model: Any, variables: Any, inputs: Mapping[str, jax.Array], targets: jax.Array,
               mask_special_keys: bool
               ) -> tuple[list[jax.Array], list[jax.Array], tasks.TokenInputs]:
  """Per-layer cat_l [B, T] and attention column means w_l [B, T] of one explanation pass."""
  tokens = _tokens(model, inputs, mask_special_keys=mask_special_keys)
  grads = _gradient_pass(model, variables, tokens, targets)
  cats = [_token_dot(g, h) for g, h in zip(grads.layer_input_grads, grads.layer_inputs)]
  # (1 / (H · N_valid)) Σ_h Σ_{valid i} α[h, i, j] = column mean of the head-mean.
  weights = [_column_mean(head_mean(a), tokens.valid)
             for a in grads.probs]
  return cats, weights, tokens


def attcat(model: Any, variables: Any, inputs: Mapping[str, jax.Array], targets: jax.Array, *,
           output: str = "signed", mask_special_keys: bool = True) -> jax.Array:
  """AttCAT (Qiang et al. 2022): Σ_l cat_l[j] · w_l[j] from one forward + backward pass.

  cat_l[j] = Σ_d (∂z_c/∂h^(l))[j, d] · h^(l)[j, d] with h^(l) the input of block l, and
  w_l[j] = the attention token j receives in block l, averaged over heads and valid queries.

  Args:
    output: "signed" (default), "abs" or "relu", applied to the summed map.
    mask_special_keys: hide special tokens as attention keys in the explanation pass (the
      official default; see the module docstring; no effect on ViT).

  Returns:
    f32[B, T].
  """
  _check_choice("output", output, OUTPUTS)
  cats, weights, tokens = _cat_terms(model, variables, inputs, targets, mask_special_keys)
  return _finish(_apply_output(sum(c * w for c, w in zip(cats, weights)), output), tokens)


def cat(model: Any, variables: Any, inputs: Mapping[str, jax.Array], targets: jax.Array, *,
        output: str = "signed", mask_special_keys: bool = True) -> jax.Array:
  """CAT: AttCAT without the attention weights, Σ_l cat_l[j]. Options as ``attcat``."""
  _check_choice("output", output, OUTPUTS)
  cats, _, tokens = _cat_terms(model, variables, inputs, targets, mask_special_keys)
  return _finish(_apply_output(sum(cats), output), tokens)
