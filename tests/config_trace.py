"""Follows a config through the calls that pass it on, read from the source (ast), as a newcomer
reading ``eval_lib.evaluate`` would: how many functions they stop at, in how many files, and how
often they come back to the file they started in.

    python tests/config_trace.py [--start mhex_jax.eval_lib.evaluate] [--param config]
        [--sections [--configs configs]] [--verbose]

prints the stops, the files entered (each with its number of stops) and the re-entries of the
start's file; ``--verbose`` first prints the walk, one stop a line, indented by call depth, as
``module:function(tracked parameters)``, and the places the walk cannot follow. ``trace()``
returns the same as a ``Trace`` (tests).

"The config" has two definitions here:

* Values, the default: the config and every value read or derived from it, leaves included.
  ``config.eval.batch_size`` passed to ``evaluators.Accuracy(...)`` is followed, an int, through
  ``dataset.batches``, ``pipeline.batch_iterator``, ``batch_indices`` and ``process_rows``.
* Sections, ``--sections`` (``trace(..., sections=True)``): the config is the ConfigDict and its
  sections (the whole config, or its train, data or eval section, ...), not the numbers and
  strings read from them. The rules below hold for both; "With --sections" after them says
  which values they apply to then.

What is counted:

* The package: every ``*.py`` under its directory, parsed, never imported. Functions and methods
  are known by qualified name (``mhex_jax.eval_lib.evaluate``,
  ``mhex_jax.data.input_pipeline.InMemoryDataset.batches``); a nested function or lambda is read
  as part of the function it is defined in, not as a stop of its own.
* Calls are resolved as the reader resolves them, by each module's imports (``from mhex_jax
  import eval_lib``, ``from mhex_jax.data import text as text_data``, ``from
  mhex_jax.explain.maps import normalize_maps``, relative ones too), through re-exports of a
  package's ``__init__`` (``weights.load``, ``weights.load_resnet_params``), to the module's own
  functions, to ``self.f``/``cls.f`` of the class or of its bases in the package, and from
  ``Class(...)`` to ``Class.__init__`` (a dataclass's or Flax module's generated ``__init__`` has
  no source to read: no stop). A name bound in the function (parameter, assignment, nested def)
  hides the module's name. A method called on an object of unknown type is resolved by its name
  (rule 2 below). Calls that need the runtime type otherwise (``explain_fn(...)``, a function
  picked from a dict) and calls into anything outside the package (jax, numpy, ml_collections)
  are not followed.
* Tracking: the start function's parameter ``param`` is tracked. A call to a package function
  passes the config on when any of its argument expressions mentions a tracked name
  (``f(config)``, ``f(config.eval)``, ``f(eval_config=config.eval)``,
  ``f(**mhex_options(eval_config, model))``); in the callee, the parameters bound to those
  arguments are tracked (positional by position, methods skip ``self``, keywords by name, the
  rest into ``*args`` / ``**kwargs``; a ``*x`` or ``**x`` binds every parameter it may fill). A call that binds no
  parameter (the argument went nowhere) is no stop.
* Inside a function, a name also becomes tracked when it is assigned (``=``, ``:=``, augmented,
  ``for``/comprehension/``with`` targets; anywhere in the function, order ignored) a *part of the
  config*: a tracked name or attribute of ``self`` (rule 1), an attribute or subscript of a
  part, a method call on a part (``config.get("num_devices")``, ``config.eval.to_dict()``), a
  copy or conversion of a part by a callable from outside the package that takes it as its only
  positional argument (``ml_collections.ConfigDict(config.eval.to_dict())``,
  ``dict(config.model)``, ``tuple(config.mean)``; not ``jnp.where(removed, baseline, images)``),
  or a container, comprehension, ``or`` or ``if``/``else`` of parts. Not parts: what a package
  function returns (``model = model_lib.create_model(config)``: that function is a stop of its
  own; were its result "the config", the model, the mesh and the datasets would drag in every
  file that takes one), arithmetic and f-strings built from parts, a dict or object a part is
  stored into (``report["x"] = config.x``), what a method of another object returns
  (``dataset.batches(eval_config.batch_size)``). This refinement of "any assignment that mentions
  a tracked name" is what keeps the walk to the config: the literal rule gives 571 stops in 26
  files on e7eebb0 (502 in 25 without rules 1 and 2).
* Rule 1, objects that keep the config. When ``Class(...)`` gets an argument that mentions a
  tracked name, ``Class.__init__`` is visited as any callee, and the attributes of ``self`` it
  stores a part in (``self.eval_config = config.eval``, ``self.a, self.b = config.a, x``; also
  in the methods it calls on ``self``) are the object's tracked attributes. A
  ``@dataclasses.dataclass`` without an ``__init__`` of its own has no such stop: its fields
  filled by such an argument are the tracked attributes (by position in the order of the
  annotated names of its body, by keyword, ``*x``/``**x`` every field they may fill). Then every
  other method of the class's body, in source order, that reads a tracked attribute is a stop,
  in the class's file, at the depth of ``__init__``, with the attributes it reads as its tracked
  names, printed ``self.x`` (``evaluators:Explainers.run(self.eval_config, self.data_config)``,
  ``data.input_pipeline:InMemoryDataset.batches(self.mean, self.std)``); an attribute such a
  method stores a part in is tracked for the methods after it. This happens once per
  instantiation site: when the walk reads the site again, ``__init__`` is a stop again, its
  methods are not. A Flax module or a NamedTuple built from a part stays unfollowed (noted).
* Rule 2, a method called on an object of unknown type (``x.m(...)``, ``self.x.m(...)``, ``x``
  a name of the function that is no tracked name, e.g. ``task = tasks.task_of(model)``;
  ``dataset.batches(...)``): ``m`` of every class of the package that defines it in its body,
  test doubles (``Fake*``, ``Stub*``, ``Mock*``, ``Dummy*``, ``Spy*``) and protocols (an
  interface's methods have no body) aside, when those are at most 3 classes, all of one module
  (``ImageTask.check_eval_config`` and ``TextTask.check_eval_config`` of tasks.py): each one
  that receives the config (bound as a method) is a stop, in source order; its ``self`` is
  unknown, so what it stores on ``self`` is noted. More than 3 classes, or classes of several
  modules: not followed, noted.
* The walk is depth-first, the calls of a function in reading order (``f(g(config))``: f, then
  g; nested functions where they stand). Every visit is a stop, repeated ones included, and is
  read again (the same helper reached from two call sites is two stops, with their callees); a
  call to a function already on the current call path (recursion) is skipped.
* Figures: stops = visits; files entered = distinct source files among the stops; re-entries of a
  module = the times a stop in it follows, in visit order, a stop in another file, the first
  entry aside (the reader comes back to the module's file to read another of its functions).
  ``Trace.returns`` counts by the call stack instead: every return from a callee in another file
  to one of the module's frames (each return to ``evaluate`` between two of its calls counts).

Where the config goes on but the walk cannot follow, the trace says so (``Trace.unfollowed``,
listed by ``--verbose``): a part stored in an attribute outside rule 1 (on another object, or on
the ``self`` of a method read outside an object's rule-1 walk, e.g. reached by rule 2), a Flax
module or NamedTuple (fields, a generated ``__init__``) built from a part, a method called on an
object of unknown type that rule 2 does not resolve (with how many classes in how many modules
define it), a function held in a variable. A function picked from a dict (``maps[kind](...)``)
is neither followed nor listed.

With ``--sections``, only the config and its sections are tracked. Everything above (what a call
runs, rules 1 and 2, the walk order, stops, files, re-entries, unfollowed places) stays as it
is, applied to section values only; "a part" above is then "a section":

* The sections are read from the shipped configs, not guessed: ``load_sections`` imports each
  ``configs/*.py`` by path (PYTHONPATH=the repository: they import ``mhex_jax.config_lib``) and
  collects, from ``get_config()`` and from ``get_config(arg)`` for every argument its
  ``check_arg(arg, (...))`` accepts, the dotted path of every ``ml_collections.ConfigDict``: ""
  (the whole config), "model", "model_load", "data", "train", "eval", "eval.mhex",
  "eval.variants", "eval.variants.<name>", "eval.explainer_options" and its "<name>"s. A section
  whose children are sections in every config (``eval.variants``, ``eval.explainer_options``)
  also gets "<path>.*", any of its children. ``trace(sections=paths)`` takes the paths instead
  (tests); the start's ``param`` is "", the whole config.
* Each tracked name carries its path: in the callee, the parameter bound to ``config.eval`` is
  "eval", so ``eval_config.mhex`` is a section and ``eval_config.batch_size`` a leaf.
  ``--verbose`` shows it: ``tasks:TextTask.metrics_fn(eval_config: config.eval, data_config:
  config.data)``. Attributes of ``self`` (rule 1) and dataclass fields keep the path they got.
* A section is a tracked name; an attribute, ``["key"]`` or ``.get("key", ...)`` of a section
  when its path plus the key is a section, a non-literal key (``eval_config.variants[variant]``,
  ``explainer_options.get(name, {})``) when the path is "<path>.*"; a copy or conversion:
  ``.to_dict()``, ``.copy()``, ``.copy_and_resolve_references()``, ``dict(s)``,
  ``ml_collections.ConfigDict(s.to_dict())`` (``dict``, ``ConfigDict``, ``FrozenConfigDict``,
  ``copy``, ``deepcopy``, ``OrderedDict``, ``MappingProxyType``: a callable from outside the
  package taking it as its one positional argument); an ``or`` or ``if``/``else`` of sections;
  the loop variable of ``for v in s.values()``/``for k, v in s.items()`` of a "<path>.*" section
  and of ``for c in (saved, config)``.
* A section's options: a comprehension over its items or a dict literal with ``**s``
  (``{k: v for k, v in config.eval.mhex.to_dict().items() if v is not None}``) is the pseudo
  path "eval.mhex{}", shown ``{**config.eval.mhex}``: held as a section (passed on, kept on
  ``self``), its items read as leaves (``options["layers"]``); ``options.update(...)`` and
  ``options["layers"] = tuple(...)`` change nothing.
* A leaf is any other attribute or item of a section (``config.eval.batch_size``,
  ``config.data.mean``, ``eval_config.targets``), its keys (``for name in s``, ``list(s)``),
  what a builtin or another library makes of a section (``len(s)``,
  ``json.dumps(s.to_dict())``) and anything computed from leaves. It is not tracked: passing it
  to a function is not passing the config on, no stop; an object keeping it is no rule-1 object.
* An argument passes the config on when it is a section (its parameter gets the path), or when
  it mentions one other than by reading a leaf from it, the default's rule: ``f(g(config))``,
  ``f([config.eval])``. Its parameter then holds what is made from a section, the pseudo path
  "eval()", shown ``f(config.eval)``, held and read as the options are. So the MHEX options that
  ``method`` builds, ``Method(name, "mhex", mhex_options(eval_config, model, variant))``, stay
  tracked (``Method.explainer(self.options: f(config.eval))``), and so does the function of
  ``_explain_step(targeted_method_explainer(config, model, name), ...)`` on e7eebb0.
* ``**x`` of a section, of its options or of what is made from one fills named parameters with
  leaves: it binds only a ``**kwargs`` parameter (to the options, "<path>{}" or "<path>(){}"),
  no dataclass field nor the field of a Flax module (no note); ``*x`` of one passes keys or
  leaves, nothing.

``functools.partial(f, ...)`` is read as the call of ``f`` it prepares (``registry.explainer``
returns one).

On e7eebb0, the code the issue describes, this gives 360 stops in 23 files and 11 re-entries of
eval_lib (26 by the call stack), against the issue's 64, 20 and 13, and 126 file visits (runs of
consecutive stops in one file, also printed). Before rules 1 and 2 and partials it gave 208 stops
in the issue's 20 files, 9 re-entries (17) and 55 file visits: the rules add the dataset objects'
methods and the ``batches`` of every ``dataset.batches(...)`` (data/imagenet.py is one more
file), partials the MHEX maps' helpers in models/common.py and models/mhex.py. 13 lies between
the two re-entry counts; the visit order is the one reported because it counts reading another
eval_lib function, not resuming ``evaluate`` between two calls. The walk reads every helper of a
helper, e.g. 109 stops in explain/equivalent_matrix.py, where the options of
``config.eval.mhex`` reach the same helpers by several call paths.

With ``--sections`` e7eebb0 gives 78 stops in 9 files, 6 re-entries of eval_lib (8 by the call
stack), 24 file visits and nothing unfollowed: the data pipelines, metrics, checkpoints, files,
sharding and plotting only ever receive leaves; explain/equivalent_matrix.py keeps the helpers
that take ``**options`` (not those that take named options), by several call paths.
"""

import argparse
import ast
import collections
import dataclasses
import difflib
import importlib.util
import pathlib
import re
import sys
from typing import Iterable, Iterator, Optional, Union

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "mhex_jax"
CONFIGS = PACKAGE.parent / "configs"  # The shipped configs, whose sections --sections tracks.
START = "mhex_jax.eval_lib.evaluate"
# A guard against a walk that multiplies (every repeated visit is walked again): the trace stops
# there and says so instead of running for minutes.
MAX_STOPS = 5000

_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)


@dataclasses.dataclass(frozen=True)
class Stop:
  """One visit of a function: ``module:function(params)`` at call depth ``depth``."""
  depth: int
  module: str  # Dotted: "mhex_jax.eval_lib".
  function: str  # Within the module: "evaluate", "InMemoryDataset.batches".
  # Its parameters that received the config or a part of it; for a method of an object that
  # keeps the config (rule 1), the attributes it reads: "self.eval_config".
  params: tuple[str, ...]
  path: str  # The module's file, relative to the package's parent: "mhex_jax/eval_lib.py".
  # With --sections, the section each parameter holds, as a path of the config's schema: "" the
  # whole config, "eval", "eval.variants.*", "eval.mhex{}" (its options copied into a dict).
  sections: tuple[str, ...] = ()

  def __str__(self):
    module = self.module.split(".", 1)[1] if "." in self.module else self.module
    params = (self.params if not self.sections else
              [f"{name}: {_shown(path)}" for name, path in zip(self.params, self.sections)])
    return f"{'  ' * self.depth}{module}:{self.function}({', '.join(params)})"


@dataclasses.dataclass
class Trace:
  """The stops of one walk, in visit order, and the figures read from them."""
  start: str
  param: str
  stops: list[Stop]
  # Where the config goes on but the walk cannot follow: "path:line  code  (why)".
  unfollowed: list[str] = dataclasses.field(default_factory=list)
  truncated: bool = False  # The walk reached MAX_STOPS.
  sections: bool = False  # Whether only the config and its sections were tracked (--sections).

  @property
  def files(self) -> list[str]:
    """Distinct files among the stops, in the order they were first entered."""
    return list(dict.fromkeys(stop.path for stop in self.stops))

  def stops_per_file(self) -> dict[str, int]:
    return dict(collections.Counter(stop.path for stop in self.stops))

  def reentries(self, module: str) -> int:
    """How often the walk comes back to ``module`` (dotted, "mhex_jax.eval_lib", or the path):
    a stop in it right after a stop in another file, the first entry aside."""
    inside = [module in (stop.module, stop.path) for stop in self.stops]
    entries = sum(1 for before, now in zip([False] + inside, inside) if now and not before)
    return max(entries - 1, 0)

  def returns(self, module: str) -> int:
    """The call-stack count: how often a call into another file returns to a frame of
    ``module`` (each return to ``evaluate`` between its calls counts)."""
    inside = lambda stop: module in (stop.module, stop.path)
    count, stack = 0, []
    for stop in self.stops + [None]:  # None: the end, where every frame but the start returns.
      while len(stack) > (stop.depth if stop else 1):
        callee = stack.pop()
        count += inside(stack[-1]) and not inside(callee)
      if stop:
        stack.append(stop)
    return count

  def file_visits(self) -> int:
    """Runs of consecutive stops in one file: how often a file is opened (or opened again)."""
    return sum(1 for i, stop in enumerate(self.stops)
               if not i or stop.path != self.stops[i - 1].path)

  def tree(self) -> str:
    return "\n".join(str(stop) for stop in self.stops)

  def summary(self) -> str:
    start = self.stops[0]
    per_file = self.stops_per_file()
    what = f"`{self.param}`" + (" (the config and its sections)" if self.sections else "")
    lines = [f"Following {self.start}'s {what} through the calls that pass it on:",
             f"  stops: {len(self.stops)}" + (f" (cut at {MAX_STOPS})" if self.truncated else "")
             + f" ({self.file_visits()} file visits: runs of stops in one file)",
             f"  files entered: {len(per_file)}"]
    lines += [f"    {per_file[path]:4d}  {path}" for path in self.files]
    lines.append(f"  re-entries of {start.path}: {self.reentries(start.module)} (returns to its "
                 f"frames by the call stack: {self.returns(start.module)})")
    lines.append(f"  not followed: {len(self.unfollowed)} places where it goes on unseen "
                 "(--verbose lists them)")
    return "\n".join(lines)


# --sections: the suffixes of pseudo paths, values held as a section but whose items are read as
# leaves: a dict of a section's options ("eval.mhex{}", a copy of config.eval.mhex's items, e.g.
# filtered by a comprehension, shown {**config.eval.mhex}), and what a package function or a
# container makes from a section ("eval()", shown f(config.eval); its items "eval(){}").
CONTENT, MADE = "{}", "()"
# Callables from outside the package that copy a mapping: of a section, they return a section.
_MAPPING_COPIES = frozenset({"dict", "ConfigDict", "FrozenConfigDict", "copy", "deepcopy",
                             "MappingProxyType", "OrderedDict"})
# Methods of a ConfigDict (or of a dict of its options) that return a copy of it.
_COPY_METHODS = frozenset({"to_dict", "copy", "copy_and_resolve_references"})


def _join(path: str, key: str) -> str:
  return f"{path}.{key}" if path else key


def _base(path: str) -> str:
  """The section a path or pseudo path stands for: "eval" for "eval", "eval{}" and "eval()"."""
  return path.removesuffix(CONTENT).removesuffix(MADE)


def _marked(path: Optional[str], marker: str) -> Optional[str]:
  """The pseudo path of the items (``marker`` CONTENT) of what ``path`` stands for, or of what
  is made from its section (MADE); None stays None."""
  if path is None:
    return None
  return path.removesuffix(CONTENT) + CONTENT if marker == CONTENT else _base(path) + MADE


def _shown(path: str) -> str:
  """A path as the reader writes it: "" config, "eval" config.eval, "eval.mhex{}"
  {**config.eval.mhex}, "eval()" f(config.eval), "eval(){}" {**f(config.eval)}."""
  if path.endswith(CONTENT):
    return f"{{**{_shown(path.removesuffix(CONTENT))}}}"
  name = "config" + (f".{_base(path)}" if _base(path) else "")
  return f"f({name})" if path.endswith(MADE) else name


def _first(paths: Iterable[Optional[str]]) -> Optional[str]:
  return next((path for path in paths if path is not None), None)


def load_sections(configs: pathlib.Path = CONFIGS) -> frozenset[str]:
  """The config's sections: the dotted paths of every ``ml_collections.ConfigDict`` in the
  configs that ``get_config()`` of each ``configs/*.py`` returns, also for each argument its
  ``config_lib.check_arg(arg, (...))`` accepts ("" the whole config, "eval", "eval.mhex",
  "eval.variants.mhex_spec", ...). A section whose children are all sections, in every config
  (``eval.variants``, ``eval.explainer_options``), also gets "<path>.*": any of its children,
  also the ones read with a non-literal key (``eval_config.variants[variant]``), and below it
  "<path>.*.<rest>" for its children's sections. The modules are imported (by path), so the
  package their configs build on must be importable (PYTHONPATH=the repository)."""
  import ml_collections  # Only --sections needs it (and the configs' own imports).
  paths, children = {""}, collections.defaultdict(set)  # path -> "section" / "leaf" children.

  def collect(node, path):
    for key, value in node.items():
      if isinstance(value, ml_collections.ConfigDict):
        paths.add(_join(path, key))
        children[path].add("section")
        collect(value, _join(path, key))
      else:
        children[path].add("leaf")

  root = str(pathlib.Path(configs).resolve().parent)  # The repository, while they are read.
  sys.path.insert(0, root)
  try:
    for file in sorted(pathlib.Path(configs).glob("*.py")):
      if file.name == "__init__.py":
        continue
      spec = importlib.util.spec_from_file_location(f"_config_trace_{file.stem}", file)
      module = importlib.util.module_from_spec(spec)
      spec.loader.exec_module(module)
      arguments = [None]
      for node in ast.walk(ast.parse(file.read_text())):
        if (isinstance(node, ast.Call) and (_dotted(node.func) or [""])[-1] == "check_arg"
            and len(node.args) > 1):
          arguments += [a for a in ast.literal_eval(node.args[1]) if a not in arguments]
      for argument in arguments:
        collect(module.get_config() if argument is None else module.get_config(argument), "")
  finally:
    sys.path.remove(root)
  for parent in sorted(p for p, kinds in children.items() if kinds == {"section"}):
    below = [p[len(parent) + 1:].partition(".")[2] for p in paths if p.startswith(parent + ".")]
    paths |= {_join(_join(parent, "*"), rest) if rest else _join(parent, "*") for rest in below}
  return frozenset(paths)


def _module_name(root: pathlib.Path, path: pathlib.Path) -> str:
  parts = (root.name,) + path.relative_to(root).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _dotted(node: ast.expr) -> Optional[list[str]]:
  """["a", "b", "c"] for the expression a.b.c, None for anything else."""
  parts = []
  while isinstance(node, ast.Attribute):
    parts.append(node.attr)
    node = node.value
  return [node.id] + parts[::-1] if isinstance(node, ast.Name) else None


def _is_tracked(node: ast.AST, tracked: Union[set[str], dict[str, str]]) -> bool:
  """Whether ``node`` is a tracked name (``config``) or a tracked attribute of ``self``
  (``self.eval_config``, tracked as the string "self.eval_config")."""
  if isinstance(node, ast.Name):
    return node.id in tracked
  return (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
          and f"{node.value.id}.{node.attr}" in tracked)


def _is_dataclass(node: ast.ClassDef) -> bool:
  """``@dataclasses.dataclass``, ``@dataclass``, with or without arguments."""
  for decorator in node.decorator_list:
    parts = _dotted(decorator.func if isinstance(decorator, ast.Call) else decorator)
    if parts and parts[-1] == "dataclass":
      return True
  return False


def _fields(node: ast.ClassDef) -> list[str]:
  """A dataclass's fields, in order: the annotated names of its body (not ClassVars)."""
  return [item.target.id for item in node.body
          if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
          and "ClassVar" not in ast.unparse(item.annotation)]


# Classes no method call resolves to by name: test doubles, and protocols (interfaces: their
# methods have no body to read).
_DOUBLE = re.compile(r"_*(Fake|Stub|Mock|Dummy|Spy)[A-Z_]")


def _is_candidate(node: ast.ClassDef) -> bool:
  return not _DOUBLE.match(node.name + "_") and not any(
      (_dotted(base) or [""])[-1] == "Protocol" for base in node.bases)


@dataclasses.dataclass(frozen=True)
class _Function:
  module: str
  qualname: str
  node: ast.AST
  cls: Optional[str]  # Qualified name of the class of a method.


class _Package:
  """The parsed modules, their functions and classes, and every module's names (imports and
  top-level definitions) as the qualified names they stand for."""

  def __init__(self, root: pathlib.Path):
    self.name = root.name
    self.trees, self.paths, self.names = {}, {}, {}
    self.functions: dict[str, _Function] = {}
    self.classes: dict[str, tuple[str, ast.ClassDef]] = {}
    for path in sorted(root.rglob("*.py")):
      module = _module_name(root, path)
      self.trees[module] = ast.parse(path.read_text(), str(path))
      self.paths[module] = path.relative_to(root.parent).as_posix()
    for module, tree in self.trees.items():
      self.names[module] = self._names(module, tree)
    self.method_names = {name.rsplit(".", 1)[1] for name, fn in self.functions.items()
                         if fn.cls}
    # Method name -> the methods of that name of the classes a call on an object of unknown type
    # may run (rule 2), in module and source order.
    self.defining: dict[str, list[str]] = collections.defaultdict(list)
    for name, fn in self.functions.items():
      if fn.cls and _is_candidate(self.classes[fn.cls][1]):
        self.defining[name.rsplit(".", 1)[1]].append(name)

  def _names(self, module: str, tree: ast.Module) -> dict[str, str]:
    names = {}
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        for alias in node.names:
          if alias.name.split(".")[0] == self.name:
            names[alias.asname or self.name] = alias.name if alias.asname else self.name
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # Relative: from the module's package, up level - 1 packages.
          package = module.split(".")
          if not self.paths[module].endswith("/__init__.py"):
            package = package[:-1]
          package = package[:len(package) - node.level + 1]
          base = ".".join(package + ([node.module] if node.module else []))
        if base.split(".")[0] == self.name:
          for alias in node.names:
            names[alias.asname or alias.name] = f"{base}.{alias.name}"
    for node in tree.body:
      if isinstance(node, _FUNCTIONS):
        names[node.name] = f"{module}.{node.name}"
        self.functions[names[node.name]] = _Function(module, names[node.name], node, None)
      elif isinstance(node, ast.ClassDef):
        cls = names[node.name] = f"{module}.{node.name}"
        self.classes[cls] = (module, node)
        for item in node.body:
          if isinstance(item, _FUNCTIONS):
            self.functions[f"{cls}.{item.name}"] = _Function(module, f"{cls}.{item.name}", item,
                                                             cls)
    return names

  def lookup(self, dotted: str, seen: tuple[str, ...] = ()) -> Optional[str]:
    """The function or class a dotted name stands for (through modules and re-exports), or
    None."""
    parts = dotted.split(".")
    module = next((".".join(parts[:i]) for i in range(len(parts), 0, -1)
                   if ".".join(parts[:i]) in self.trees), None)
    rest = parts[len(module.split(".")):] if module else []
    if not rest or dotted in seen:
      return None
    target = self.names[module].get(rest[0])
    if target is None:
      return None
    if target != f"{module}.{rest[0]}":  # Imported into the module: follow the import.
      return self.lookup(".".join([target] + rest[1:]), seen + (dotted,))
    if len(rest) == 1:
      return target if target in self.functions or target in self.classes else None
    if len(rest) == 2 and target in self.classes:
      return self.method(target, rest[1])
    return None

  def method(self, cls: str, name: str, seen: tuple[str, ...] = ()) -> Optional[str]:
    """``cls.name``, or the first base class's in the package that defines it."""
    if f"{cls}.{name}" in self.functions:
      return f"{cls}.{name}"
    module, node = self.classes[cls]
    for base in node.bases:
      parts = _dotted(base)
      if parts and parts[0] in self.names[module] and cls not in seen:
        found = self.lookup(".".join([self.names[module][parts[0]]] + parts[1:]))
        if found in self.classes:
          found = self.method(found, name, seen + (cls,))
          if found:
            return found
    return None


def _local_names(node: ast.AST) -> set[str]:
  """Names bound in a function (parameters, assignments, nested definitions): they hide the
  module's names of the same spelling."""
  names = set()
  for child in ast.walk(node):
    if isinstance(child, ast.arg):
      names.add(child.arg)
    elif isinstance(child, ast.Name) and isinstance(child.ctx, ast.Store):
      names.add(child.id)
    elif isinstance(child, _FUNCTIONS + (ast.ClassDef,)) and child is not node:
      names.add(child.name)
  return names


def _assignments(node: ast.AST) -> Iterator[tuple[ast.expr, ast.expr]]:
  """(target, value) of every binding in a function: the value is what the target holds, or what
  a loop target takes its items from."""
  for child in ast.walk(node):
    if isinstance(child, ast.Assign):
      yield from ((target, child.value) for target in child.targets)
    elif isinstance(child, (ast.AnnAssign, ast.AugAssign, ast.NamedExpr)) and child.value:
      yield child.target, child.value
    elif isinstance(child, (ast.For, ast.AsyncFor, ast.comprehension)):
      yield child.target, child.iter
    elif isinstance(child, ast.withitem) and child.optional_vars is not None:
      yield child.optional_vars, child.context_expr


def _pairs(target: ast.expr, value: ast.expr) -> Iterator[tuple[ast.expr, ast.expr]]:
  """``a, b = x, y`` as (a, x) and (b, y); any other binding as itself."""
  if (isinstance(target, (ast.Tuple, ast.List)) and isinstance(value, (ast.Tuple, ast.List))
      and len(target.elts) == len(value.elts)):
    for t, v in zip(target.elts, value.elts):
      yield from _pairs(t, v)
  else:
    yield target, value


def _bound_names(target: ast.expr) -> Iterator[str]:
  """The names an assignment binds: ``a``, ``a, *b`` (not ``report["x"]`` nor ``self.x``: the
  dict or object then holds a part of the config, but is no part of it)."""
  if isinstance(target, ast.Name):
    yield target.id
  elif isinstance(target, (ast.Tuple, ast.List)):
    for element in target.elts:
      yield from _bound_names(element)
  elif isinstance(target, ast.Starred):
    yield from _bound_names(target.value)


def _loops(node: ast.AST) -> set[int]:
  """The ids of the targets of ``for`` loops and comprehensions in ``node``: they take the items
  of their value, not the value."""
  return {id(child.target) for child in ast.walk(node)
          if isinstance(child, (ast.For, ast.AsyncFor, ast.comprehension))}


def _key(node: ast.expr) -> Optional[str]:
  """The key of ``x["key"]`` or ``x.get("key", ...)``: a string literal, else None."""
  return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _unpartial(call: ast.Call) -> ast.Call:
  """``functools.partial(f, *args, **kwargs)`` read as the call ``f(*args, **kwargs)`` it
  prepares: the arguments are passed on to ``f`` (when it runs later, with more)."""
  if _dotted(call.func) in (["functools", "partial"], ["partial"]) and call.args:
    return ast.copy_location(ast.Call(func=call.args[0], args=call.args[1:],
                                      keywords=call.keywords), call)
  return call


class _Walk:
  """One depth-first walk from a start function; ``stops`` fills as it goes. With ``sections``
  (the schema's section paths), only the config and its sections are tracked, each tracked name
  with its path; without, every value read from the config is, and every path is ""."""

  def __init__(self, package: _Package, sections: Optional[frozenset[str]] = None):
    self.package = package
    self.sections = sections
    self.stops: list[Stop] = []
    self.truncated = False
    self.unfollowed: dict[str, None] = {}  # Ordered set: "path:line  code  (why)".
    self.sites: set[tuple[str, int, int]] = set()  # Instantiations whose methods were read.

  def callee(self, fn: _Function, call: ast.Call,
             local: set[str]) -> tuple[Optional[str], bool, Optional[str]]:
    """(qualified name of the package function ``call`` runs, whether it is called bound, so
    that its first parameter is self/cls, the class it instantiates), or Nones."""
    parts = _dotted(call.func)
    if not parts:
      return None, False, None
    if parts[0] in ("self", "cls") and fn.cls and len(parts) == 2:
      return self.package.method(fn.cls, parts[1]), True, None
    if parts[0] in local or parts[0] not in self.package.names[fn.module]:
      return None, False, None
    found = self.package.lookup(".".join([self.package.names[fn.module][parts[0]]] + parts[1:]))
    if found in self.package.classes:
      return self.package.method(found, "__init__"), True, found
    return found, False, None

  def outside(self, func: ast.expr, fn: _Function, local: set[str]) -> Optional[list[str]]:
    """The dotted name of a callable from outside the package (a builtin, another library's),
    or None."""
    parts = _dotted(func)
    if (parts and parts[0] not in local
        and not self.package.names[fn.module].get(parts[0], "").startswith(
            self.package.name + ".")):
      return parts
    return None

  def is_part(self, node: ast.expr, tracked: dict[str, str], fn: _Function, local: set[str],
              read: bool = False) -> bool:
    """Whether ``node`` is the config or a part, copy or collection of parts of it (see the
    module docstring); with ``read``, only the config, a field read from it or a copy of one:
    what a copy or conversion takes as its one positional argument (``default_rng([seed, i])``
    and ``jnp.where(removed, baseline, images)`` are new values). With sections: whether it is
    the config or a section (``section``)."""
    if self.sections is not None:
      return self.section(node, tracked, fn, local) is not None
    if _is_tracked(node, tracked):
      return True
    if isinstance(node, ast.Name):
      return False
    if isinstance(node, (ast.Attribute, ast.Subscript, ast.Starred)):
      return self.is_part(node.value, tracked, fn, local, read)
    if isinstance(node, ast.Call):
      if isinstance(node.func, ast.Attribute) and self.is_part(node.func.value, tracked, fn,
                                                               local, read):
        return True  # config.get(...), config.eval.to_dict(), ...
      if self.outside(node.func, fn, local):  # A builtin or another library's callable.
        return len(node.args) == 1 and self.is_part(node.args[0], tracked, fn, local, read=True)
      return False
    if read:
      return False
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
      return any(self.is_part(e, tracked, fn, local) for e in node.elts)
    if isinstance(node, ast.Dict):
      return any(self.is_part(v, tracked, fn, local) for v in node.values)
    if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
      return any(self.is_part(g.iter, tracked, fn, local) for g in node.generators)
    if isinstance(node, ast.BoolOp):
      return any(self.is_part(v, tracked, fn, local) for v in node.values)
    if isinstance(node, ast.IfExp):
      return any(self.is_part(v, tracked, fn, local) for v in (node.body, node.orelse))
    return False

  def child(self, path: Optional[str], key: Optional[str]) -> Optional[str]:
    """The path of section ``path``'s child ``key`` (None: a key that is no literal) when that
    child is a section, else None (a leaf, or anything read from a dict of options)."""
    if path is None or path != _base(path):
      return None
    if key is not None and _join(path, key) in self.sections:
      return _join(path, key)
    return _join(path, "*") if _join(path, "*") in self.sections else None

  def section(self, node: ast.AST, tracked: dict[str, str], fn: _Function,
              local: set[str]) -> Optional[str]:
    """With sections: the path of the section ``node`` is (see the module docstring), or None:
    a tracked name; an attribute, subscript or ``.get`` of a section that is a section of the
    schema; a copy (``.to_dict()``, ``dict(s)``, ``ConfigDict(s.to_dict())``); ``or``,
    ``if``/``else``; a dict literal with ``**s`` or a comprehension over a section's items
    ("<path>{}", a dict of its options); a container holding a section ("<path>()")."""
    if _is_tracked(node, tracked):
      return tracked[node.id if isinstance(node, ast.Name) else f"{node.value.id}.{node.attr}"]
    find = lambda child: self.section(child, tracked, fn, local)
    if isinstance(node, ast.Attribute):
      return self.child(find(node.value), node.attr)
    if isinstance(node, ast.Subscript):
      return self.child(find(node.value), _key(node.slice))
    if isinstance(node, ast.Call):
      if isinstance(node.func, ast.Attribute):
        owner = find(node.func.value)
        if owner is not None:
          if node.func.attr == "get" and node.args:
            return self.child(owner, _key(node.args[0]))
          return owner if node.func.attr in _COPY_METHODS else None
      outside = self.outside(node.func, fn, local)
      if outside and outside[-1] in _MAPPING_COPIES and len(node.args) == 1:
        return find(node.args[0])
      return None
    if isinstance(node, ast.BoolOp):
      return _first(map(find, node.values))
    if isinstance(node, ast.IfExp):
      return _first(map(find, (node.body, node.orelse)))
    if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
      return _marked(self.iterated(node.generators[0].iter, tracked, fn, local), CONTENT)
    if isinstance(node, ast.Dict):
      return _first([_marked(_first(find(v) for k, v in zip(node.keys, node.values)
                                    if k is None), CONTENT),
                     _marked(_first(map(find, node.values)), MADE)])
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
      return _marked(_first(map(find, node.elts)), MADE)
    return None

  def iterated(self, node: ast.expr, tracked: dict[str, str], fn: _Function,
               local: set[str]) -> Optional[str]:
    """The section whose items a loop over ``node`` reads: ``s``, ``s.items()``, ``s.values()``,
    ``s.keys()``, ``s.to_dict().items()``; None for anything else."""
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and not node.args
        and node.func.attr in ("items", "values", "keys")):
      node = node.func.value
    return self.section(node, tracked, fn, local)

  def mentioned(self, node: ast.AST, tracked: dict[str, str], fn: _Function,
                local: set[str]) -> Optional[str]:
    """With sections: the path of the first section in ``node`` (``f(config.eval)``,
    ``f(g(config))``), a leaf read from one not counting (``f(config.eval.batch_size)``)."""
    found = self.section(node, tracked, fn, local)
    if found is not None or isinstance(node, ast.Name):
      return found
    read_from = lambda value: self.section(value, tracked, fn, local) is not None
    if isinstance(node, ast.Attribute) and read_from(node.value):
      return None  # A leaf.
    if isinstance(node, ast.Subscript) and read_from(node.value):
      children = [node.slice]
    elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
          and read_from(node.func.value)):
      children = node.args + node.keywords  # A leaf (config.get("x")), or what it takes.
    elif isinstance(node, ast.Call) and self.outside(node.func, fn, local):
      # A builtin or another library reads a section it is given (len(s), list(s): keys,
      # json.dumps(s.to_dict()): a string); its copies are sections (above).
      children = [arg for arg in node.args + [kw.value for kw in node.keywords]
                  if not read_from(arg.value if isinstance(arg, ast.Starred) else arg)]
    else:
      children = ast.iter_child_nodes(node)
    return _first(self.mentioned(c, tracked, fn, local) for c in children)

  def passes(self, node: ast.AST, tracked: dict[str, str], fn: _Function,
             local: set[str]) -> Optional[str]:
    """The path an argument expression passes on: "" without sections if it mentions a tracked
    name; with sections, the section it is, else "<path>()" if it mentions one; else None."""
    if self.sections is None:
      return "" if self.mentions(node, tracked) else None
    found = self.section(node, tracked, fn, local)
    if found is None:
      found = _marked(self.mentioned(node, tracked, fn, local), MADE)
    return found

  def starred(self, node: ast.expr, tracked: dict[str, str], fn: _Function,
              local: set[str]) -> Optional[str]:
    """What ``*node`` passes on to each parameter it fills: as ``passes``, but with sections
    the items of a section or of a dict of its options are keys and leaves (None)."""
    if self.sections is not None and self.section(node, tracked, fn, local) is not None:
      return None
    return self.passes(node, tracked, fn, local)

  def tracked_names(self, fn: _Function, params: dict[str, str],
                    local: set[str]) -> dict[str, str]:
    tracked = dict(params)
    bindings = list(_assignments(fn.node))
    loops = _loops(fn.node) if self.sections is not None else set()
    grown = True
    while grown:  # Order ignored: until no binding adds a name.
      grown = False
      for target, value in bindings:
        for name, path in self.bound(target, value, id(target) in loops, tracked, fn, local):
          if name not in tracked:
            tracked[name] = path
            grown = True
    return tracked

  def bound(self, target: ast.expr, value: ast.expr, loop: bool, tracked: dict[str, str],
            fn: _Function, local: set[str]) -> Iterator[tuple[str, str]]:
    """The names a binding tracks, with their paths."""
    if self.sections is None:
      if self.is_part(value, tracked, fn, local):
        yield from ((name, "") for name in _bound_names(target))
      return
    if loop:  # A section's keys are names, its values sections only in a collection of them.
      if isinstance(value, (ast.Tuple, ast.List, ast.Set)) and isinstance(target, ast.Name):
        item = _first(self.section(e, tracked, fn, local) for e in value.elts)
        if item is not None:  # for c in (saved, config): c is the config.
          yield target.id, item
        return
      if (isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute)
          and value.func.attr in ("values", "items") and not value.args):
        item = self.child(self.section(value.func.value, tracked, fn, local), None)
        if item is not None and value.func.attr == "values" and isinstance(target, ast.Name):
          yield target.id, item
        elif (item is not None and isinstance(target, (ast.Tuple, ast.List))
              and len(target.elts) == 2 and isinstance(target.elts[1], ast.Name)):
          yield target.elts[1].id, item
      return
    for name, part in _pairs(target, value):
      path = self.section(part, tracked, fn, local) if isinstance(name, ast.Name) else None
      if path is not None:
        yield name.id, path

  @staticmethod
  def calls(node: ast.AST,
            tracked: dict[str, str]) -> Iterator[tuple[ast.Call, dict[str, str]]]:
    """Every call in ``node`` and below it, in reading order, with the tracked names it sees (a
    nested function's or lambda's parameters hide the outer names in its body)."""
    if isinstance(node, _FUNCTIONS + (ast.Lambda,)):
      args = node.args
      for outer in node.decorator_list if isinstance(node, _FUNCTIONS) else []:
        yield from _Walk.calls(outer, tracked)
      for default in args.defaults + [d for d in args.kw_defaults if d is not None]:
        yield from _Walk.calls(default, tracked)
      hidden = {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs
                + [args.vararg, args.kwarg] if a}
      inner = {name: path for name, path in tracked.items() if name.split(".")[0] not in hidden}
      for part in node.body if isinstance(node.body, list) else [node.body]:
        yield from _Walk.calls(part, inner)
      return
    if isinstance(node, ast.Call):
      yield node, tracked
    for child in ast.iter_child_nodes(node):
      yield from _Walk.calls(child, tracked)

  @staticmethod
  def mentions(node: ast.AST, tracked: dict[str, str]) -> bool:
    return any(_is_tracked(n, tracked) for n in ast.walk(node))

  def bind(self, callee: _Function, call: ast.Call, tracked: dict[str, str], bound: bool,
           fn: _Function, local: set[str]) -> dict[str, str]:
    """The callee's parameters that receive an argument mentioning a tracked name (with
    sections: a section), each with the path it receives."""
    args = callee.node.args
    positional = [a.arg for a in args.posonlyargs + args.args]
    by_keyword = [a.arg for a in args.args + args.kwonlyargs]
    decorators = {d.id for d in callee.node.decorator_list if isinstance(d, ast.Name)}
    if (callee.cls and "staticmethod" not in decorators
        and (bound or "classmethod" in decorators) and positional):
      by_keyword = [name for name in by_keyword if name != positional[0]]
      positional = positional[1:]
    star = [args.vararg.arg] if args.vararg else []
    double_star = [args.kwarg.arg] if args.kwarg else []
    named = {kw.arg for kw in call.keywords if kw.arg}
    out = {}
    for i, arg in enumerate(call.args):
      if isinstance(arg, ast.Starred):
        path = self.starred(arg.value, tracked, fn, local)
        names = positional[i:] + star
      else:
        path = self.passes(arg, tracked, fn, local)
        names = [positional[i]] if i < len(positional) else star
      out.update((name, path) for name in names if path is not None and name not in out)
    for kw in call.keywords:
      if kw.arg is None:
        path = self.passes(kw.value, tracked, fn, local)
        names = [name for name in by_keyword if name not in positional[:len(call.args)]
                 and name not in named] + double_star
        if self.sections is not None:
          # **x, x a section or a dict of its options (or mentioning one): its leaves fill the
          # named parameters, a dict of its options the **kwargs one.
          path, names = _marked(path, CONTENT), double_star
      else:
        path = self.passes(kw.value, tracked, fn, local)
        names = [kw.arg] if kw.arg in by_keyword else double_star
      out.update((name, path) for name in names if path is not None and name not in out)
    return out

  def bind_fields(self, cls: str, call: ast.Call, tracked: dict[str, str], fn: _Function,
                  local: set[str]) -> dict[str, str]:
    """The fields of dataclass ``cls`` that ``call`` (its generated ``__init__``) fills with an
    argument mentioning a tracked name (with sections: a section), as "self.<field>", with
    their paths."""
    fields = _fields(self.package.classes[cls][1])
    named = {kw.arg for kw in call.keywords if kw.arg}
    out = {}
    for i, arg in enumerate(call.args):
      if isinstance(arg, ast.Starred):
        path, names = self.starred(arg.value, tracked, fn, local), fields[i:]
      else:
        path, names = self.passes(arg, tracked, fn, local), fields[i:i + 1]
      out.update((name, path) for name in names if path is not None and name not in out)
    for kw in call.keywords:
      if kw.arg is None:  # With sections, **x fills fields with leaves: none is tracked.
        path = self.passes(kw.value, tracked, fn, local) if self.sections is None else None
        names = [f for f in fields[len(call.args):] if f not in named]
      else:
        path = self.passes(kw.value, tracked, fn, local)
        names = [kw.arg] if kw.arg in fields else []
      out.update((name, path) for name in names if path is not None and name not in out)
    return {f"self.{name}": path for name, path in out.items()}

  def visit(self, qualname: str, params: dict[str, str], depth: int,
            call_path: tuple[str, ...], keeps: bool = False) -> dict[str, str]:
    """Visits ``qualname`` with ``params`` tracked and what it calls with the config. With
    ``keeps`` (``__init__`` or a method of an object that keeps the config, rule 1), returns
    the attributes of ``self`` it stores a part in ("self.x", with its path); otherwise they are
    noted."""
    if len(self.stops) >= MAX_STOPS:
      self.truncated = True
      return {}
    fn = self.package.functions[qualname]
    stop = Stop(depth, fn.module, qualname[len(fn.module) + 1:], tuple(params),
                self.package.paths[fn.module],
                tuple(params.values()) if self.sections is not None else ())
    self.stops.append(stop)
    local = _local_names(fn.node)
    tracked = self.tracked_names(fn, params, local)
    nested = {node.name for node in ast.walk(fn.node)
              if isinstance(node, _FUNCTIONS) and node is not fn.node}
    stored = {}
    for call, seen in (found for statement in fn.node.body
                       for found in self.calls(statement, tracked)):
      call = _unpartial(call)
      target, bound, cls = self.callee(fn, call, local)
      if target in call_path:  # Recursion: already being read.
        continue
      if cls is not None:
        self.instantiate(stop, fn, local, call, seen, cls, target, depth + 1, call_path)
      elif target is not None:
        passed = self.bind(self.package.functions[target], call, seen, bound, fn, local)
        if passed:  # A method of the same object (self.f) stores on the same self.
          own = keeps and bound and _dotted(call.func)[0] == "self"
          more = self.visit(target, passed, depth + 1, call_path + (target,), own)
          stored.update((name, path) for name, path in more.items() if name not in stored)
      elif not self.by_name(fn, call, seen, local, nested, depth + 1, call_path):
        self.note_unfollowed(stop, fn, call, seen, local, nested)
    for target, value in (pair for binding in _assignments(fn.node)
                          for pair in _pairs(*binding)):
      root = _dotted(target) if isinstance(target, ast.Attribute) else None
      if (root and root[0] not in tracked and ".".join(root[:2]) not in tracked
          and self.is_part(value, tracked, fn, local)):
        if keeps and fn.cls and root[0] == "self" and len(root) == 2:
          path = "" if self.sections is None else self.section(value, tracked, fn, local)
          stored.setdefault(f"self.{root[1]}", path)
        else:
          self.note(stop, target, f"{ast.unparse(target)} = {ast.unparse(value)}",
                    "kept in an object")
    return stored

  def instantiate(self, stop: Stop, fn: _Function, local: set[str], call: ast.Call,
                  tracked: dict[str, str], cls: str, init: Optional[str], depth: int,
                  call_path: tuple[str, ...]) -> None:
    """Rule 1: ``cls(...)`` with the config visits ``init`` (``cls.__init__``, None for a
    generated one), then, once per instantiation site, every other method of ``cls`` that reads
    an attribute of ``self`` holding a part (stored by ``__init__`` or by a method read before,
    or a dataclass field filled with one)."""
    node = self.package.classes[cls][1]
    if init is not None:
      passed = self.bind(self.package.functions[init], call, tracked, True, fn, local)
      if not passed:
        return
      stored = self.visit(init, passed, depth, call_path + (init,), keeps=True)
    elif _is_dataclass(node):
      stored = self.bind_fields(cls, call, tracked, fn, local)
    else:  # A generated __init__ without fields to read (a Flax module, a NamedTuple).
      # With sections, **x fills the fields with leaves.
      given = [self.starred(a.value, tracked, fn, local) if isinstance(a, ast.Starred)
               else self.passes(a, tracked, fn, local) for a in call.args]
      given += [self.passes(kw.value, tracked, fn, local) for kw in call.keywords
                if kw.arg or self.sections is None]
      if (any(path is not None for path in given)
          and any(isinstance(item, ast.AnnAssign) for item in node.body)):
        self.note(stop, call, ast.unparse(call), "kept in an object: generated __init__")
      return
    site = (stop.path, call.lineno, call.col_offset)
    if not stored or site in self.sites:
      return
    self.sites.add(site)
    for item in node.body:
      qualname = f"{cls}.{item.name}" if isinstance(item, _FUNCTIONS) else None
      if not qualname or item.name == "__init__" or qualname in call_path:
        continue
      reads = {name: path for name, path in stored.items()
               if any(_is_tracked(n, {name}) and isinstance(n.ctx, ast.Load)
                      for n in ast.walk(item))}
      if reads:
        more = self.visit(qualname, reads, depth, call_path + (qualname,), keeps=True)
        stored.update((name, path) for name, path in more.items() if name not in stored)

  def by_name(self, fn: _Function, call: ast.Call, tracked: dict[str, str], local: set[str],
              nested: set[str], depth: int, call_path: tuple[str, ...]) -> bool:
    """Rule 2: ``x.m(...)`` on an object of unknown type runs ``m`` of every candidate class
    that defines it, when they are at most 3, all in one module; visits those that receive the
    config. False when the call is no such method call or the name does not resolve."""
    parts = _dotted(call.func)
    if (not parts or len(parts) < 2 or parts[0] not in local or parts[0] in nested
        or parts[0] in tracked or ".".join(parts[:2]) in tracked
        or (parts[0] in ("self", "cls") and len(parts) == 2)):
      return False  # Outside the package, the config's own method, self's attribute.
    methods = self.package.defining.get(parts[-1], [])
    modules = {self.package.functions[name].module for name in methods}
    if not 1 <= len(methods) <= 3 or len(modules) != 1:
      return False
    for name in methods:
      passed = self.bind(self.package.functions[name], call, tracked, True, fn, local)
      if passed and name not in call_path:
        self.visit(name, passed, depth, call_path + (name,))
    return True

  def note_unfollowed(self, stop: Stop, fn: _Function, call: ast.Call, tracked: dict[str, str],
                      local: set[str], nested: set[str]) -> None:
    """Notes a call that takes the config but that the walk cannot follow: a method of an
    object of unknown type that more than 3 package classes, or classes of several modules,
    define (rule 2), a function held in a variable (``read(config.model_init)``)."""
    if not any(self.passes(arg, tracked, fn, local) is not None
               for arg in call.args + call.keywords):
      return
    parts = _dotted(call.func)
    if (not parts or parts[0] not in local or parts[0] in nested or parts[0] in tracked
        or ".".join(parts[:2]) in tracked):
      return  # Outside the package, a function read with this one, or the config's own method.
    if len(parts) == 1:
      self.note(stop, call, ast.unparse(call), "a function held in a variable")
    elif parts[-1] in self.package.method_names:
      methods = self.package.defining.get(parts[-1], [])
      modules = {self.package.functions[name].module for name in methods}
      self.note(stop, call, ast.unparse(call), "a method of an object of unknown type: "
                f"{len(methods)} classes in {len(modules)} modules define it")

  def note(self, stop: Stop, node: ast.AST, text: str, why: str) -> None:
    text = text if len(text) <= 60 else text[:57] + "..."
    self.unfollowed.setdefault(f"{stop.path}:{node.lineno}  {text}  ({why})", None)


def trace(start: str = START, param: str = "config", root: pathlib.Path = PACKAGE,
          sections: Union[bool, Iterable[str]] = False,
          configs: pathlib.Path = CONFIGS) -> Trace:
  """Walks from function ``start`` (dotted: "mhex_jax.eval_lib.evaluate") of the package in
  directory ``root`` with its parameter ``param`` tracked. ``sections``: False tracks every
  value read from the config; True only the config and its sections, the schema read from the
  configs in ``configs`` (``load_sections``); a collection of paths, those as the schema ("" the
  whole config, "eval", "eval.variants.*", ...). ``param`` holds the whole config."""
  package = _Package(pathlib.Path(root))
  if start not in package.functions:
    close = difflib.get_close_matches(start, package.functions, n=5, cutoff=0.5)
    raise ValueError(f"{start} is no function of {root}" + (f"; did you mean {close}?" if close
                                                            else ""))
  node = package.functions[start].node
  names = [a.arg for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs]
  if param not in names:
    raise ValueError(f"{start} has no parameter {param!r} (it has {names}); pass --param.")
  if sections is True:
    sections = load_sections(configs)
  schema = None if sections is False or sections is None else frozenset(sections) | {""}
  walk = _Walk(package, schema)
  walk.visit(start, {param: ""}, 0, (start,))
  return Trace(start, param, walk.stops, list(walk.unfollowed), walk.truncated,
               schema is not None)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--start", default=START,
                      help=f"Dotted name of the function to start at (default: {START}).")
  parser.add_argument("--param", default="config",
                      help="Its parameter holding the config (default: config).")
  parser.add_argument("--root", default=str(PACKAGE), help="The package's directory.")
  parser.add_argument("--sections", action="store_true",
                      help="Track only the config and its sections (ConfigDicts), not the "
                      "values read from them.")
  parser.add_argument("--configs", default=str(CONFIGS),
                      help="With --sections, the directory of the configs whose sections are "
                      "read (default: the repository's configs/).")
  parser.add_argument("--verbose", action="store_true",
                      help="Print the walk: one stop a line, indented by call depth.")
  args = parser.parse_args(argv)
  try:
    result = trace(args.start, args.param, pathlib.Path(args.root), args.sections,
                   pathlib.Path(args.configs))
  except ValueError as e:  # A start the refactor renamed: the message names the nearest ones.
    parser.error(str(e))
  if args.verbose:
    print(result.tree())
    print("\nNot followed (the config goes on there, but the AST cannot tell where to):")
    print("\n".join(f"  {place}" for place in result.unfollowed) or "  nothing")
    print()
  print(result.summary())


if __name__ == "__main__":
  sys.exit(main())
