"""Gradient machinery the post-hoc explainers share.

* ``perturbation_gradients``: one forward and one backward pass giving the final-head logits,
  the sown intermediates and the gradient of the target logits w.r.t. every intermediate the
  model exposes through ``nn.Module.perturb`` (collection ``"perturbations"``).
* ``path_integral``: the Integrated-Gradients average of gradients along the straight path
  from a baseline to the input, the (path point, example) pairs evaluated as flat batches of
  ``chunk_size`` images; ``fitting_chunk_size``, the largest that fits by default.
* ``eval_mode_kwargs`` and ``final_logits``: how any classifier is called in eval mode and
  which logits are explained, so user-written Flax models work beside the mhex_jax backbones.

Gradients of Σ_b z_b[targets_b] are per-example gradients: eval-mode models treat the
examples of a batch independently.
"""

import inspect
import math
import os
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mhex_jax.explain.maps import check_chunk_size, sum_in_chunks

PERTURBATIONS = "perturbations"


def eval_mode_kwargs(apply_fn: Callable[..., Any]) -> dict[str, Any]:
  """Keyword arguments of an eval-mode call: ``{"train": False}``, except ``{}`` for a bound
  ``Module.apply`` whose ``__call__`` takes no ``train`` (a user model without train-mode
  switches; give any other switch, e.g. ``deterministic``, its eval value as default)."""
  module = getattr(apply_fn, "__self__", None)
  if isinstance(module, nn.Module):
    parameters = inspect.signature(type(module).__call__).parameters.values()
    if not any(p.name == "train" or p.kind is inspect.Parameter.VAR_KEYWORD
               for p in parameters):
      return {}
  return {"train": False}


def final_logits(outputs: jax.Array) -> jax.Array:
  """The explained logits f32[B, K]: the last head of per-head logits [L, B, K] (mhex_jax
  models), or a plain classifier's [B, K] as they are."""
  ndim = getattr(outputs, "ndim", None)
  if ndim == 3:
    return outputs[-1]
  if ndim == 2:
    return outputs
  raise ValueError(f"The model must return logits [B, K] or per-head logits [L, B, K], got "
                   f"{getattr(outputs, 'shape', type(outputs).__name__)}; make apply return "
                   "the logits alone.")


def target_logits(head_logits: jax.Array, targets: jax.Array) -> jax.Array:
  """z_b[targets_b] of the final head: logits f32[num_heads, B, K] or f32[B, K] → f32[B]."""
  logits = final_logits(head_logits)
  return jnp.take_along_axis(logits, targets[:, None].astype(jnp.int32), axis=-1)[:, 0]


def perturbation_gradients(apply_fn: Callable[..., Any], variables: Any,
                           inputs: Sequence[jax.Array], targets: jax.Array, *,
                           collections: Sequence[str] = ()) -> tuple[jax.Array, Any, Any]:
  """Eval-mode forward and backward through the model's perturbation points.

  Args:
    apply_fn: the model's ``apply``; called as ``apply_fn(v, *inputs, train=False, ...)``
      (without ``train`` if the model takes none, see ``eval_mode_kwargs``).
    variables: {"params", ...}; sown collections in it are ignored.
    inputs: positional model inputs (``(images,)`` or ``(ids, attention_mask, types)``).
    targets: int[B] classes whose logits are differentiated.
    collections: sown collections to return (e.g. ``("attention", "hidden_states")``).

  Returns:
    (final-head logits f32[B, K] (``final_logits``), {collection: tree} of the sown values,
    gradient tree of Σ_b z_b[targets_b] w.r.t. the ``"perturbations"`` collection: same
    structure as it).
  """
  variables = {k: v for k, v in variables.items()
               if k not in (PERTURBATIONS, *collections)}
  kwargs = eval_mode_kwargs(apply_fn)
  shapes = jax.eval_shape(
      lambda: apply_fn(variables, *inputs, **kwargs, mutable=[PERTURBATIONS])[1])
  if PERTURBATIONS not in shapes:
    raise ValueError(f"{apply_fn} exposes no perturbation points; gradient explainers need "
                     "a model that calls nn.Module.perturb (every mhex_jax backbone does).")
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes[PERTURBATIONS])

  def objective(perturbations):
    head_logits, state = apply_fn({**variables, PERTURBATIONS: perturbations}, *inputs,
                                  **kwargs, mutable=list(collections))
    return jnp.sum(target_logits(head_logits, targets)), (final_logits(head_logits), state)

  grads, (logits, state) = jax.grad(objective, has_aux=True)(zeros)
  return logits, dict(state), grads


def path_integral(grad_fn: Callable[[jax.Array, jax.Array], jax.Array], inputs: jax.Array,
                  baseline: jax.Array, *, steps: int = 50,
                  chunk_size: Optional[int] = None) -> jax.Array:
  """Integrated Gradients (x − b) ⊙ (1/m) Σ_k ∇f(b + α_k (x − b)), α_k = (k + ½)/m.

  The midpoint rule makes the completeness error O(1/m²) for smooth f.

  Args:
    grad_fn: gradient of flat batches of path points: (points f32[n, ...], examples int32[n],
      the example each point belongs to) → ∂ target output / ∂ point, f32[n, ...].
    inputs, baseline: f32[B, ...] (the baseline broadcasts).
    steps: m path points per example.
    chunk_size: path points (over all examples: up to m·B) whose gradients are in flight at
      once (on a CPU as two batches side by side, ``chunks_in_flight``); memory grows with it.
      None = all m·B at once.

  Returns:
    attributions f32[B, ...]; they sum to ≈ f(x) − f(b) per example.
  """
  if steps < 1:
    raise ValueError(f"steps must be >= 1, got {steps}.")
  baseline = jnp.broadcast_to(baseline, inputs.shape).astype(inputs.dtype)
  delta = inputs - baseline
  alphas = (jnp.arange(steps, dtype=inputs.dtype) + 0.5) / steps
  batch = inputs.shape[0]

  def gradients(items, examples):
    scale = alphas[items // batch].reshape((-1,) + (1,) * (inputs.ndim - 1))
    return grad_fn(baseline[examples] + scale * delta[examples], examples)

  total = sum_in_chunks(gradients, steps * batch, batch, chunk_size, chunks_in_flight())
  return delta * (total / steps).astype(inputs.dtype)


# On a CPU a path method's chunks are sized for speed, not for memory: Integrated Gradients
# (50 steps) of ResNet-18 at 112², batch 8, took 5.9 s with all 400 path points in one pass,
# 4.4 s in chunks of 40 (about this many bytes of intermediates by the estimate below) and
# 4.3 s in chunks of 16 (benchmarks/README.md). Each chunk is one more copy of the gradient's
# program to compile, so there are at most CPU_MAX_CHUNKS of them. A chunk runs as
# CPU_CHUNKS_IN_FLIGHT batches side by side (``maps.sum_in_chunks``): one batch's ops leave a
# core idle, two in the same memory ran that IG 1.25× faster than one after the other.
CPU_CHUNK_BYTES = 512 * 2**20
CPU_MAX_CHUNKS = 32
CPU_CHUNKS_IN_FLIGHT = 2


def chunks_in_flight(device: Optional[jax.Device] = None) -> int:
  """How many batches of a path method's chunk run side by side on ``device`` (default the
  first): ``CPU_CHUNKS_IN_FLIGHT`` on a CPU; 1 on a GPU or TPU, whose one batch fills it."""
  device = device or jax.devices()[0]
  return CPU_CHUNKS_IN_FLIGHT if device.platform == "cpu" else 1


def fitting_chunk_size(apply_fn: Callable[..., Any], variables: Any, example: Sequence[Any],
                       num_items: int, *, memory_fraction: float = 0.25) -> int:
  """The most of ``num_items`` model inputs whose gradients fit, as one batch, in
  ``memory_fraction`` of the first device's memory (a GPU's or TPU's own): what
  ``chunk_size=None`` means for the path methods. On a CPU, the most that fit in
  ``CPU_CHUNK_BYTES`` (smaller batches ran faster there), but no fewer than make
  ``CPU_MAX_CHUNKS`` chunks, within ``memory_fraction`` of the host's RAM.

  A gradient keeps about every intermediate output of the forward pass; one item's is taken as
  twice the bytes of the model's intermediates for ``example`` (model inputs of batch 1,
  measured with ``capture_intermediates`` under ``eval_shape``, so nothing runs). For ResNet-18
  at 112² that estimate is 12.8 MB an image against the 5.3 MB XLA allocates.
  """
  variables = {k: v for k, v in variables.items() if k in ("params", "batch_stats")}
  shapes = jax.eval_shape(lambda: apply_fn(variables, *example, **eval_mode_kwargs(apply_fn),
                                           capture_intermediates=True,
                                           mutable=["intermediates"])[1])
  per_item = max(1, 2 * sum(math.prod(s.shape) * s.dtype.itemsize
                            for s in jax.tree.leaves(shapes)))
  fitting = max(1, min(num_items, int(memory_fraction * device_memory_bytes()) // per_item))
  if jax.devices()[0].platform != "cpu":
    return fitting
  fast = max(CPU_CHUNK_BYTES // per_item, -(-num_items // CPU_MAX_CHUNKS))
  return max(1, min(fitting, fast))


def device_memory_bytes(device: Optional[jax.Device] = None) -> int:
  """The memory of ``device`` (default the first): its allocator's limit on a GPU or TPU, the
  host's physical RAM on CPU."""
  device = device or jax.devices()[0]
  stats = device.memory_stats() if device.platform != "cpu" else None
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"])
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def resolved_chunk_size(chunk_size: Optional[int], apply_fn: Callable[..., Any], variables: Any,
                        example: Sequence[Any], num_items: int) -> int:
  """``chunk_size`` as given (checked), or ``fitting_chunk_size`` when None."""
  if chunk_size is not None:
    return check_chunk_size(chunk_size)
  return fitting_chunk_size(apply_fn, variables, example, num_items)
