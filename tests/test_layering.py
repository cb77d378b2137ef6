"""The package's import graph, read from the source: every arrow points down the layers below, the
graph has no cycle, and every import of a project module sits at module level (a deferred import
would be how a cycle hides)."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "mhex_jax"

# Lowest first. A module may import from its own layer or any layer before it.
LAYERS = (
    ("foundation", ("errors", "files", "workdir_lock", "workdir", "compile_cache",
                    "distributed", "host_allocator", "devices", "config_lib", "sharding",
                    "checkpoints", "metric_writers", "plotting")),
    ("models", ("models",)),
    ("weights", ("weights",)),
    ("data", ("data",)),
    ("model_lib", ("model_lib",)),
    ("tasks, explainers and metrics", ("tasks", "explain", "metrics")),
    ("evaluators", ("evaluators",)),
    ("train_lib", ("train_lib",)),
    ("eval_lib", ("eval_lib",)),
    ("explain_lib", ("explain_lib",)),
    ("entry points", ("cli", "device_check")),
)
# Arrows the layers would allow but the design does not: evaluation does not need training,
# nor explaining one's own inputs the evaluation; each takes what it shares from below.
FORBIDDEN = tuple((f"mhex_jax.{a}", f"mhex_jax.{b}") for a, b in (
    ("eval_lib", "train_lib"), ("explain_lib", "eval_lib"), ("explain_lib", "train_lib"),
    ("cli", "train_lib"), ("cli", "eval_lib"), ("cli.explain", "eval_lib"),
    ("cli.explain", "train_lib"), ("cli.saved_config", "eval_lib")))


def _module_name(path: pathlib.Path) -> str:
  parts = ("mhex_jax",) + path.relative_to(PACKAGE).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, ast.Module]:
  return {_module_name(path): ast.parse(path.read_text(), str(path))
          for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(tree: ast.Module, known) -> list[tuple[str, ast.stmt]]:
  """(imported project module, statement) for every import of mhex_jax in `tree`."""
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found += [(alias.name, node) for alias in node.names if alias.name.startswith("mhex_jax")]
    elif isinstance(node, ast.ImportFrom):
      assert not node.level, f"relative import at line {node.lineno}: spell mhex_jax.… in full"
      if node.module and node.module.startswith("mhex_jax"):
        for alias in node.names:
          name = f"{node.module}.{alias.name}"
          found.append((name if name in known else node.module, node))
  return found


def _layer(module: str) -> int:
  if module == "mhex_jax":
    return len(LAYERS)  # The package's own __init__ is above everything (it imports nothing).
  first = module.split(".")[1]
  for rank, (_, prefixes) in enumerate(LAYERS):
    if first in prefixes:
      return rank
  raise AssertionError(f"{module} is in no layer of tests/test_layering.py's LAYERS: add it")


MODULES = _modules()
EDGES = {module: sorted({name for name, _ in _imports(tree, MODULES)} - {module})
         for module, tree in MODULES.items()}


def test_the_graph_was_read():
  assert len(MODULES) > 40
  assert "mhex_jax.models.common" in EDGES["mhex_jax.models.mhex"]
  assert "mhex_jax.models.vit" in EDGES["mhex_jax.weights.hf_import"]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_arrow_points_down(module):
  upward = [f"{dep} ({LAYERS[_layer(dep)][0]})" for dep in EDGES[module]
            if _layer(dep) > _layer(module)]
  assert not upward, f"{module} ({LAYERS[_layer(module)][0]}) imports a higher layer: {upward}"


@pytest.mark.parametrize("source,target", FORBIDDEN)
def test_forbidden_arrows_are_absent(source, target):
  assert target not in EDGES[source], f"{source} imports {target}"


def test_no_cycle():
  state = {}  # module -> "open" while on the stack, "done" after.

  def visit(module, path):
    if state.get(module) == "done":
      return
    assert state.get(module) != "open", f"import cycle: {' -> '.join(path + [module])}"
    state[module] = "open"
    for dep in EDGES[module]:
      if dep in EDGES:  # `from mhex_jax.x import name` of a name, not a module, counts as x.
        visit(dep, path + [module])
    state[module] = "done"

  for module in EDGES:
    visit(module, [])


def test_project_imports_are_at_module_level():
  deferred = []
  for module, tree in MODULES.items():
    top = {id(node) for node in tree.body}
    for name, node in _imports(tree, MODULES):
      if id(node) not in top:
        deferred.append(f"{module}:{node.lineno} imports {name}")
  assert not deferred, deferred


def test_the_check_would_catch_an_upward_arrow():
  tree = ast.parse("from mhex_jax import eval_lib\n")
  (name, _), = _imports(tree, MODULES)
  assert _layer(name) > _layer("mhex_jax.models.vit")
