"""tests/config_trace.py, the count behind the issue's "following evaluate's config: stops, files
entered, eval_lib re-entries": exact on packages small enough to count by hand, for both
definitions of the config (every value read from it, the default; its sections, --sections), and
running on mhex_jax (its figures change with the refactor, so only that it finds the walk is
asserted)."""

import textwrap

import pytest

import config_trace

# a.f(config) hands config.eval to b.g, which copies it and calls back a.h; b.k gets values that
# are not the config (a model built from it, a workdir, a length), so it is no stop. c.Method, a
# dataclass, and c.Reader keep parts of the config (rule 1); Reader.run calls methods on an object
# of unknown type (rule 2): score resolves to the two scorers of d.py (FakeScorer is a test
# double), save does not (classes of two modules define it).
TINY = {
    "__init__.py": "",
    "a.py": """
        from pkg import b
        from pkg.c import Method, Reader


        def f(config, workdir):
          model = b.build(config.model)
          b.g(config.eval)
          b.k(model, workdir)
          Method("m", config.eval.options)
          _open(config)
          _helper(config)
          _open(config)  # The same instantiation site read again: Reader.run is not.


        def h(cfg):
          return h(cfg.child) if cfg.child else cfg.name  # Recursion: not followed again.


        def _helper(config):
          return h(config)


        def _open(config):
          return Reader(data=config.data, eval_config=config.eval)
        """,
    "b.py": """
        import ml_collections

        from pkg import a


        def build(model_config):
          return object()


        def g(eval_config):
          cfg = ml_collections.ConfigDict(eval_config.to_dict())
          x = len("unrelated")
          a.h(cfg)
          k(x)


        def k(x, workdir=None):
          return x
        """,
    "c.py": """
        import dataclasses


        @dataclasses.dataclass(frozen=True)
        class Method:
          name: str
          options: dict

          def describe(self):
            return self.name  # Reads no part: no stop.

          def explainer(self, model):
            return explain(model, **self.options)


        def explain(model, scale=1.0, **options):
          return model


        class Reader:

          def __init__(self, data, eval_config):
            self.eval_config = eval_config  # Kept: run reads it.
            self.rows = self._load(data.path)  # What a package function returns: no part.

          def _load(self, path):
            return [path]

          def size(self):
            return len(self.rows)  # Reads no part: no stop.

          def run(self, task):
            task.score(self.eval_config.metric, self.rows)
            task.save(self.eval_config)
        """,
    "d.py": """
        class ImageScorer:

          def score(self, metric, rows):
            return _check(metric)

          def save(self, what):
            return what


        class TextScorer:

          def score(self, metric, rows):
            self.last = metric  # On an object of unknown type: noted.
            return rows


        def _check(metric):
          return metric
        """,
    "testing.py": """
        class FakeScorer:

          def score(self, metric, rows):
            return metric


        class Recorder:

          def save(self, what):
            return what
        """,
}


def _package(root, sources):
  root.mkdir()
  for name, source in sources.items():
    (root / name).write_text(textwrap.dedent(source))
  return root


@pytest.fixture
def tiny(tmp_path):
  return _package(tmp_path / "pkg", TINY)


def test_tiny_package_counted_by_hand(tiny):
  trace = config_trace.trace("pkg.a.f", root=tiny)
  assert [(s.depth, s.module, s.function, s.params) for s in trace.stops] == [
      (0, "pkg.a", "f", ("config",)),
      (1, "pkg.b", "build", ("model_config",)),  # Its result, the model, is not the config.
      (1, "pkg.b", "g", ("eval_config",)),
      (2, "pkg.a", "h", ("cfg",)),  # The copy of config.eval; b.k(x) is no stop.
      # Rule 1, a dataclass: config.eval.options fills the field options; describe reads none.
      (1, "pkg.c", "Method.explainer", ("self.options",)),
      (2, "pkg.c", "explain", ("scale", "options")),  # **self.options: model is given.
      (1, "pkg.a", "_open", ("config",)),
      (2, "pkg.c", "Reader.__init__", ("data", "eval_config")),  # Keywords, self skipped.
      (3, "pkg.c", "Reader._load", ("path",)),  # self._load(data.path).
      (2, "pkg.c", "Reader.run", ("self.eval_config",)),  # Rule 1: after __init__.
      (3, "pkg.d", "ImageScorer.score", ("metric",)),  # Rule 2: task.score(...).
      (4, "pkg.d", "_check", ("metric",)),
      (3, "pkg.d", "TextScorer.score", ("metric",)),
      (1, "pkg.a", "_helper", ("config",)),
      (2, "pkg.a", "h", ("cfg",)),  # A repeated visit is a stop again.
      (1, "pkg.a", "_open", ("config",)),
      (2, "pkg.c", "Reader.__init__", ("data", "eval_config")),  # Again, but not run: once
      (3, "pkg.c", "Reader._load", ("path",)),  # per instantiation site.
  ]
  assert trace.files == ["pkg/a.py", "pkg/b.py", "pkg/c.py", "pkg/d.py"]
  assert trace.stops_per_file() == {"pkg/a.py": 6, "pkg/b.py": 2, "pkg/c.py": 7, "pkg/d.py": 3}
  # Files in visit order: a b b a c c a c c c d d d a a a c c, 9 runs. Back in a.py 3 times, in
  # c.py twice. By the call stack, a.py's frames are returned to from build, g, Method.explainer,
  # Reader.__init__ (to _open), Reader.run (to _open) and the second Reader.__init__: 6.
  assert trace.reentries("pkg.a") == trace.reentries("pkg/a.py") == 3
  assert trace.returns("pkg.a") == 6
  assert trace.reentries("pkg.c") == 2 and trace.reentries("pkg.b") == 0
  assert trace.file_visits() == 9
  assert trace.unfollowed == [
      "pkg/d.py:14  self.last = metric  (kept in an object)",
      "pkg/c.py:35  task.save(self.eval_config)  (a method of an object of unknown type: 2 "
      "classes in 2 modules define it)"]


# --sections: a.f hands b.g the eval section (a stop), b.k a leaf (none), b.explain the options
# of eval.mhex with ** (a stop: its **options takes them; b.scaled, named parameters only, gets
# leaves), and c.Reader keeps the eval section, not a leaf (rule 1: run is a stop, size is not).
# b.g reads eval_config.mhex and a variant by a non-literal key: sections of the schema.
SECTIONS = {"", "data", "eval", "eval.mhex", "eval.variants", "eval.variants.*"}
SECTIONS_TINY = {
    "__init__.py": "",
    "a.py": """
        from pkg import b
        from pkg.c import Reader


        def f(config):
          b.g(config.eval)  # A section: a stop.
          b.k(config.eval.batch_size)  # A leaf: no stop.
          b.k(b.h(config.eval.mhex, None))  # What h makes of a section: k is a stop, then h.
          options = {k: v for k, v in config.eval.mhex.to_dict().items() if v is not None}
          options["layers"] = tuple(options["layers"])  # Still the options of eval.mhex.
          b.explain(**options)  # Its **options takes them: a stop.
          b.scaled(**options)  # Named parameters only: leaves, no stop.
          return Reader(config.eval, config.data.path).run()
        """,
    "b.py": """
        def g(eval_config):
          mhex = eval_config.mhex  # A section of the schema.
          h(mhex, eval_config.methods)  # methods: a leaf.
          for name in eval_config.variants:  # Keys: names, no sections.
            h(eval_config.variants[name], name)  # A non-literal key of eval.variants.*.


        def h(mhex_config, methods):
          return k(methods)


        def k(n):
          return n


        def explain(model=None, **options):
          return k(options["layers"])  # An item of the options: a leaf.


        def scaled(scale=1.0, layers=()):
          return scale
        """,
    "c.py": """
        from pkg import b


        class Reader:

          def __init__(self, eval_config, path):
            self.eval_config = eval_config  # A section: kept.
            self.path = path  # A leaf: not kept.

          def size(self):
            return len(self.path)  # Reads no section: no stop.

          def run(self):
            b.k(self.eval_config.batch_size)
            return b.g(self.eval_config)
        """,
}
# A config module as configs/*.py: eval.variants holds sections only with the argument "variants".
TINY_CONFIG = """
    import ml_collections


    def check_arg(arg, allowed):
      assert arg is None or arg in allowed, arg


    def get_config(arg=None):
      check_arg(arg, ("variants",))
      config = ml_collections.ConfigDict()
      config.model_name = "m"
      config.data = ml_collections.ConfigDict({"path": ""})
      config.eval = ml_collections.ConfigDict(
          {"batch_size": 8, "methods": "", "mhex": {"layers": (0,)}, "variants": {}})
      if arg == "variants":
        config.eval.variants.first = {"layers": (1,)}
      return config
    """


@pytest.fixture
def sections_tiny(tmp_path):
  return _package(tmp_path / "pkg", SECTIONS_TINY)


def test_sections_counted_by_hand(sections_tiny):
  trace = config_trace.trace("pkg.a.f", root=sections_tiny, sections=SECTIONS)
  assert [(s.depth, s.module, s.function, s.params, s.sections) for s in trace.stops] == [
      (0, "pkg.a", "f", ("config",), ("",)),
      (1, "pkg.b", "g", ("eval_config",), ("eval",)),
      (2, "pkg.b", "h", ("mhex_config",), ("eval.mhex",)),  # Not methods, nor k(methods).
      (2, "pkg.b", "h", ("mhex_config",), ("eval.variants.*",)),
      # b.k(config.eval.batch_size): no stop.
      (1, "pkg.b", "k", ("n",), ("eval.mhex()",)),  # k(h(...)): made from a section.
      (1, "pkg.b", "h", ("mhex_config",), ("eval.mhex",)),
      (1, "pkg.b", "explain", ("options",), ("eval.mhex{}",)),  # Not model; k(...): a leaf.
      (1, "pkg.c", "Reader.__init__", ("eval_config",), ("eval",)),  # Not path.
      (1, "pkg.c", "Reader.run", ("self.eval_config",), ("eval",)),  # Rule 1; not size.
      (2, "pkg.b", "g", ("eval_config",), ("eval",)),  # b.k(...batch_size): no stop.
      (3, "pkg.b", "h", ("mhex_config",), ("eval.mhex",)),
      (3, "pkg.b", "h", ("mhex_config",), ("eval.variants.*",)),
  ]
  assert trace.stops_per_file() == {"pkg/a.py": 1, "pkg/b.py": 9, "pkg/c.py": 2}
  # Files in visit order: a b b b b b b c c b b b, 4 runs; never back in a.py, once in b.py. By
  # the call stack, a.py's frame is returned to from g, k, h, explain, Reader.__init__ and
  # Reader.run: 6.
  assert trace.reentries("pkg.a") == 0 and trace.returns("pkg.a") == 6
  assert trace.reentries("pkg.b") == 1 and trace.file_visits() == 4
  assert trace.unfollowed == []
  # The default follows every value: the leaves add 7 visits of k, scaled and Reader.size (21
  # stops), and the parameters methods, model, path, scale and layers.
  values = config_trace.trace("pkg.a.f", root=sections_tiny)
  assert [str(stop) for stop in values.stops] == [
      "a:f(config)", "  b:g(eval_config)", "    b:h(mhex_config, methods)", "      b:k(n)",
      "    b:h(mhex_config, methods)", "      b:k(n)", "  b:k(n)", "  b:k(n)",
      "  b:h(mhex_config)", "  b:explain(model, options)", "    b:k(n)",
      "  b:scaled(scale, layers)", "  c:Reader.__init__(eval_config, path)",
      "  c:Reader.size(self.path)", "  c:Reader.run(self.eval_config)", "    b:k(n)",
      "    b:g(eval_config)", "      b:h(mhex_config, methods)", "        b:k(n)",
      "      b:h(mhex_config, methods)", "        b:k(n)"]


def test_sections_read_from_the_configs(tmp_path):
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs" / "tiny.py").write_text(textwrap.dedent(TINY_CONFIG))
  assert config_trace.load_sections(tmp_path / "configs") == {
      "", "data", "eval", "eval.mhex", "eval.variants", "eval.variants.first",
      "eval.variants.*"}


def test_script_prints_the_sections(sections_tiny, tmp_path, capsys):
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs" / "tiny.py").write_text(textwrap.dedent(TINY_CONFIG))
  config_trace.main(["--root", str(sections_tiny), "--start", "pkg.a.f", "--sections",
                     "--configs", str(tmp_path / "configs"), "--verbose"])
  out = capsys.readouterr().out
  assert out.startswith("a:f(config: config)\n  b:g(eval_config: config.eval)\n"
                        "    b:h(mhex_config: config.eval.mhex)\n"
                        "    b:h(mhex_config: config.eval.variants.*)\n"
                        "  b:k(n: f(config.eval.mhex))\n  b:h(mhex_config: config.eval.mhex)\n"
                        "  b:explain(options: {**config.eval.mhex})\n")
  assert "`config` (the config and its sections)" in out and "stops: 12 (4 file visits" in out


def test_a_name_more_than_3_classes_define_is_not_resolved(tmp_path):
  classes = "".join(f"\n\nclass Unit{i}:\n\n  def run(self, config):\n    return config\n"
                    for i in range(4))
  root = _package(tmp_path / "many", {
      "__init__.py": "", "units.py": classes,
      "main.py": "def main(config, unit):\n  return unit.run(config.eval)\n"})
  trace = config_trace.trace("many.main.main", root=root)
  assert [s.function for s in trace.stops] == ["main"]
  assert trace.unfollowed == ["many/main.py:2  unit.run(config.eval)  (a method of an object of "
                              "unknown type: 4 classes in 1 modules define it)"]


def test_script_prints_the_tree_and_the_figures(tiny, capsys):
  config_trace.main(["--root", str(tiny), "--start", "pkg.a.f", "--verbose"])
  out = capsys.readouterr().out
  assert out.startswith("a:f(config)\n  b:build(model_config)\n  b:g(eval_config)\n"
                        "    a:h(cfg)\n  c:Method.explainer(self.options)\n")
  assert "    c:Reader.run(self.eval_config)\n      d:ImageScorer.score(metric)\n" in out
  assert "stops: 18 (9 file visits" in out
  assert ("files entered: 4\n       6  pkg/a.py\n       2  pkg/b.py\n       7  pkg/c.py\n"
          "       3  pkg/d.py\n") in out
  assert "re-entries of pkg/a.py: 3 (returns to its frames by the call stack: 6)" in out
  assert "Not followed (" in out and "  pkg/d.py:14  self.last = metric  (kept in an object)" in out
  assert "not followed: 2 places" in out


def test_a_moved_start_is_named(tiny):
  with pytest.raises(ValueError, match=r"pkg\.a\.ff is no function .*did you mean \['pkg\.a\.f"):
    config_trace.trace("pkg.a.ff", root=tiny)
  with pytest.raises(ValueError, match="has no parameter 'cfg'"):
    config_trace.trace("pkg.a.f", param="cfg", root=tiny)


def test_a_partial_passes_the_config_on(tmp_path):
  root = _package(tmp_path / "part", {
      "__init__.py": "",
      "main.py": ("import functools\n\n\ndef main(config):\n"
                  "  later = functools.partial(use, config.eval)\n  return later\n\n\n"
                  "def use(eval_config, x):\n  return eval_config.a + x\n")})
  trace = config_trace.trace("part.main.main", root=root)
  assert [(s.function, s.params) for s in trace.stops] == [("main", ("config",)),
                                                          ("use", ("eval_config",))]


def test_evaluate_of_the_package():
  trace = config_trace.trace("mhex_jax.eval_lib.evaluate")
  assert trace.stops[0].function == "evaluate" and trace.stops[0].path == "mhex_jax/eval_lib.py"
  assert len(trace.stops) > 5 and not trace.truncated
  sections = config_trace.load_sections()  # The shipped configs.
  assert {"", "model", "data", "train", "eval", "eval.mhex", "eval.variants.*"} <= sections
  assert "eval.batch_size" not in sections
  only = config_trace.trace("mhex_jax.eval_lib.evaluate", sections=sections)
  assert only.stops[0].sections == ("",) and 1 < len(only.stops) < len(trace.stops)
  # A reader of evaluate comes back to eval_lib.py 3 times (11 and 6 on e7eebb0): the
  # evaluators, the method resolution and the workdir checks have their own modules.
  assert trace.reentries("mhex_jax/eval_lib.py") <= 3
  assert only.reentries("mhex_jax/eval_lib.py") <= 3
