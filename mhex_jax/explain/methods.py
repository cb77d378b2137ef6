"""The explainers an evaluation runs, read from ``config.eval`` and checked before any data.

``resolve(config, model)`` is called right after the model is built. It checks every option
of the ``eval`` section that depends on the model (the method names, MHEX's options and its
named variants, ``eval.targets``, the text metrics' ``eval.aopc_modes``, the collaboration
analysis, the options of the other explainers) and returns one ``Method`` per explainer to run,
in report order. A ``Method`` turns into the jit-able function of ``explain.registry`` in one
call: ``method.explainer(model)`` or ``method.targeted_explainer(model, targets_mode)``.

``eval.methods``: comma-separated names of explainers (``registry.available(model)``) or of
``eval.variants``; "all" for every applicable explainer and every variant; "" for MHEX alone on
an MHEX model and nothing on a plain one. MHEX takes its options from ``eval.mhex`` (unset
fields keep the defaults of the map's kind, ``explain.equivalent_matrix``); a variant overrides
some of them. The other explainers take ``eval.explainer_options.<name>``.
"""

import dataclasses
from typing import Any, Callable, Mapping

import ml_collections

from mhex_jax import tasks
from mhex_jax.errors import ConfigError
from mhex_jax.explain import registry

# MHEX options that only maps of Transformer tokens take.
TOKEN_ONLY_OPTIONS = ("layers", "route", "feature_norm", "contrastive")
# MHEX options of ViT patch maps only (explain.token_flow).
PATCH_ONLY_OPTIONS = ("map", "flow_rows")


@dataclasses.dataclass(frozen=True)
class Method:
  """One explainer of an evaluation: ``name`` in the report, ``base`` in the registry (an MHEX
  variant's base is "mhex") and its keyword ``options``."""
  name: str
  base: str
  options: Mapping[str, Any]

  def explainer(self, model) -> Callable:
    """``registry.explainer``: ``(variables, inputs, targets) -> maps``."""
    return registry.explainer(self.base, model, **self.options)

  def targeted_explainer(self, model, targets_mode: str) -> Callable:
    """``registry.targeted_explainer``: ``(variables, inputs, labels) -> (maps, targets)``."""
    return registry.targeted_explainer(self.base, model, targets_mode, **self.options)


def resolve(config: ml_collections.ConfigDict, model) -> tuple[Method, ...]:
  """The methods ``config.eval`` asks for, every eval option checked against ``model``
  (ConfigErrors name the field and the fix)."""
  eval_config = config.eval
  task = tasks.task_of(model)
  mhex = registry.is_mhex_model(model)
  registry.check_targets_mode(eval_config.targets)
  task.check_eval_config(eval_config)
  if eval_config.collaboration_examples and not (task.collaboration and mhex):
    raise ConfigError("eval.collaboration_examples > 0 needs an MHEX image model (the analysis "
                      "follows the gradients of its gate kernels); set it to 0.")
  variants = list(eval_config.get("variants", {}))
  if variants and not mhex:
    raise ConfigError(f"eval.variants {variants} are MHEX variants, but the model is plain "
                      "(model.mhex=False); remove them.")
  clash = set(variants) & set(registry.available(model))
  if clash:
    raise ConfigError(f"eval.variants {sorted(clash)} reuse explainer names; rename them.")
  if mhex:  # Every variant's options, run or not, and those of plain MHEX.
    for variant in [None] + variants:
      mhex_options(eval_config, model, variant)
  for name, options in eval_config.explainer_options.items():  # Also those of unused methods.
    registry.check_options(name, options)
  return tuple(method(eval_config, model, name) for name in _names(eval_config, model))


def method(eval_config: ml_collections.ConfigDict, model, name: str) -> Method:
  """The ``Method`` of ``name``: an explainer of the registry or a variant of
  ``eval.variants``, with its options."""
  if name == registry.MHEX or name in eval_config.get("variants", {}):
    variant = None if name == registry.MHEX else name
    return Method(name, registry.MHEX, mhex_options(eval_config, model, variant))
  options = dict(eval_config.explainer_options.get(name, {}))
  registry.check_options(name, options)
  return Method(name, name, options)


def _names(eval_config: ml_collections.ConfigDict, model) -> list[str]:
  names = [n.strip() for n in eval_config.methods.split(",") if n.strip()]
  variants = list(eval_config.get("variants", {}))
  if not names:
    return [registry.MHEX] if registry.is_mhex_model(model) else []
  if names == ["all"]:
    return list(registry.available(model)) + variants
  unknown = [n for n in names if n not in registry.available(model) and n not in variants]
  if unknown:
    raise ConfigError(f"eval.methods names {unknown}, which {type(model).__name__}"
                      f"(mhex={registry.is_mhex_model(model)}) cannot run; use 'all' or a "
                      "comma-separated subset "
                      f"of {list(registry.available(model)) + variants}.")
  return names


def mhex_options(eval_config: ml_collections.ConfigDict, model,
                 variant: str | None = None) -> dict[str, Any]:
  """The MHEX map options set in ``eval.mhex`` (and ``eval.variants.<variant>``); unset ones
  are left to the map's own defaults (``explain.equivalent_matrix``)."""
  options = {k: v for k, v in eval_config.mhex.to_dict().items() if v is not None}
  where = "eval.mhex"
  if variant is not None:
    chosen = eval_config.variants[variant].to_dict()
    unknown = set(chosen) - set(eval_config.mhex)
    if unknown:
      raise ConfigError(f"eval.variants.{variant} sets {sorted(unknown)}; MHEX options are "
                        f"{sorted(eval_config.mhex)}.")
    options.update({k: v for k, v in chosen.items() if v is not None})
    where = f"eval.mhex / eval.variants.{variant}"
  if "layers" in options:
    options["layers"] = tuple(options["layers"])
  task = tasks.task_of(model)
  if not task.token_maps_allowed:
    misplaced = sorted(set(options) & set(TOKEN_ONLY_OPTIONS))
    if misplaced:
      raise ConfigError(f"MHEX options {misplaced} apply to Transformer token maps only; unset "
                        f"them in {where} for {type(model).__name__}.")
  flow = sorted(set(options) & set(PATCH_ONLY_OPTIONS))
  if options.get("route") == "flow":
    flow.append("route='flow'")
  if flow and task.mhex_map != "patches":
    raise ConfigError(f"MHEX options {flow} apply to ViT patch maps only (the class flow, "
                      f"explain.token_flow); unset them in {where} for {type(model).__name__}.")
  return options
