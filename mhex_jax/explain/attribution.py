"""Gradient machinery the post-hoc explainers share.

* ``perturbation_gradients``: one forward and one backward pass giving the final-head logits,
  the sown intermediates and the gradient of the target logits w.r.t. every intermediate the
  model exposes through ``nn.Module.perturb`` (collection ``"perturbations"``).
* ``path_integral``: the Integrated-Gradients average of gradients along the straight path
  from a baseline to the input, with the path points evaluated in chunks to bound memory.

Gradients of Σ_b z_b[targets_b] are per-example gradients: eval-mode models treat the
examples of a batch independently.
"""

from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp

PERTURBATIONS = "perturbations"


def target_logits(head_logits: jax.Array, targets: jax.Array) -> jax.Array:
  """z_b[targets_b] of the final head: logits f32[num_heads, B, K] → f32[B]."""
  logits = head_logits[-1]
  return jnp.take_along_axis(logits, targets[:, None].astype(jnp.int32), axis=-1)[:, 0]


def perturbation_gradients(apply_fn: Callable[..., Any], variables: Any,
                           inputs: Sequence[jax.Array], targets: jax.Array, *,
                           collections: Sequence[str] = ()) -> tuple[jax.Array, Any, Any]:
  """Eval-mode forward and backward through the model's perturbation points.

  Args:
    apply_fn: the model's ``apply``; called as ``apply_fn(v, *inputs, train=False, ...)``.
    variables: {"params", ...}; sown collections in it are ignored.
    inputs: positional model inputs (``(images,)`` or ``(ids, attention_mask, types)``).
    targets: int[B] classes whose logits are differentiated.
    collections: sown collections to return (e.g. ``("attention", "hidden_states")``).

  Returns:
    (final-head logits f32[B, K], {collection: tree} of the sown values, gradient tree of
    Σ_b z_b[targets_b] w.r.t. the ``"perturbations"`` collection: same structure as it).
  """
  variables = {k: v for k, v in variables.items()
               if k not in (PERTURBATIONS, *collections)}
  shapes = jax.eval_shape(
      lambda: apply_fn(variables, *inputs, train=False, mutable=[PERTURBATIONS])[1])
  if PERTURBATIONS not in shapes:
    raise ValueError(f"{apply_fn} exposes no perturbation points; gradient explainers need "
                     "a model that calls nn.Module.perturb (every mhex_jax backbone does).")
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes[PERTURBATIONS])

  def objective(perturbations):
    head_logits, state = apply_fn({**variables, PERTURBATIONS: perturbations}, *inputs,
                                  train=False, mutable=list(collections))
    return jnp.sum(target_logits(head_logits, targets)), (head_logits[-1], state)

  grads, (logits, state) = jax.grad(objective, has_aux=True)(zeros)
  return logits, dict(state), grads


def path_integral(grad_fn: Callable[[jax.Array], jax.Array], inputs: jax.Array,
                  baseline: jax.Array, *, steps: int = 50,
                  chunk_size: Optional[int] = None) -> jax.Array:
  """Integrated Gradients (x − b) ⊙ (1/m) Σ_k ∇f(b + α_k (x − b)), α_k = (k + ½)/m.

  The midpoint rule makes the completeness error O(1/m²) for smooth f.

  Args:
    grad_fn: batched gradient, f32[B, ...] → f32[B, ...] (∂ target output / ∂ input).
    inputs, baseline: f32[B, ...] (the baseline broadcasts).
    steps: m path points.
    chunk_size: path points evaluated together (memory ∝ chunk_size · B); None = all.

  Returns:
    attributions f32[B, ...]; they sum to ≈ f(x) − f(b) per example.
  """
  if steps < 1:
    raise ValueError(f"steps must be >= 1, got {steps}.")
  if chunk_size is not None and chunk_size < 1:
    raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}.")
  baseline = jnp.broadcast_to(baseline, inputs.shape).astype(inputs.dtype)
  delta = inputs - baseline
  alphas = (jnp.arange(steps, dtype=inputs.dtype) + 0.5) / steps
  grads = jax.lax.map(lambda a: grad_fn(baseline + a * delta), alphas,
                      batch_size=min(chunk_size or steps, steps))
  return delta * jnp.mean(grads, axis=0)
