"""The documentation stays true to the repository.

README.md, CHANGELOG.md, benchmarks/README.md and docs/*.md are checked for:

* relative links ``[text](target)``: the target exists (relative to the linking file) inside the
  repository and, with an ``#anchor``, the target has a heading of that GitHub slug;
* commands in fenced code blocks: every config file or shipped config name they load exists and
  takes the ``:arg`` given, and every ``--config.a.b=value`` names a field of the config the same
  command loads (a command without ``--config`` runs on a workdir's saved config: the field must
  exist in some shipped config). A comment line's flags belong to the command above it unless
  the comment names its own ``--config``.

Fast: config files are imported by path and their ``get_config`` called; no entry point runs.
"""

import ast
import functools
import importlib.util
import pathlib
import re
from typing import Iterator, Optional

import ml_collections
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"


def doc_files() -> list[pathlib.Path]:
  return [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "benchmarks" / "README.md",
          *sorted((ROOT / "docs").glob("*.md"))]


def _name(path: pathlib.Path) -> str:
  try:
    return str(path.relative_to(ROOT))
  except ValueError:
    return str(path)


# --------------------------------------------------------------------------------------------
# Markdown: prose, fenced code blocks, headings, links.
# --------------------------------------------------------------------------------------------

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([\w+-]*)")


def split_markdown(text: str) -> tuple[list[tuple[int, str]], list[tuple[int, str, list[str]]]]:
  """(prose lines, code blocks) of a markdown text: prose as (line number, line) outside fenced
  code, blocks as (line number of the first code line, language, lines)."""
  prose, blocks = [], []
  fence = None
  for number, line in enumerate(text.split("\n"), 1):
    match = _FENCE.match(line)
    if fence is None:
      if match:
        fence = match.group(1)
        blocks.append((number + 1, match.group(2).lower(), []))
      else:
        prose.append((number, line))
    elif match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence) \
        and not match.group(2):
      fence = None
    else:
      blocks[-1][2].append(line)
  return prose, blocks


def _without_code_spans(line: str) -> str:
  """The line with the inside of every inline code span blanked (a link's text may hold code,
  but code never holds a link)."""
  return re.sub(r"(`+)(.+?)\1", lambda m: m.group(1) + "x" * len(m.group(2)) + m.group(1), line)


def github_slug(heading: str) -> str:
  """The anchor GitHub gives a heading: its text lowercased, punctuation dropped (letters,
  digits, ``_`` and ``-`` kept), spaces turned into hyphens."""
  text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # Links keep their text.
  text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
  return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
  """Every heading anchor of a markdown text (repeated headings get -1, -2, ... as on GitHub)."""
  seen: dict[str, int] = {}
  result = set()
  for _, line in split_markdown(text)[0]:
    match = re.match(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
    if not match:
      continue
    slug = github_slug(match.group(1))
    count = seen.get(slug, 0)
    seen[slug] = count + 1
    result.add(slug if count == 0 else f"{slug}-{count}")
  return result


_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")


def links(text: str) -> Iterator[tuple[int, str]]:
  """(line number, target) of every inline or reference-style link outside code (a link's text
  may run over several lines)."""
  prose = dict(split_markdown(text)[0])
  lines = [_without_code_spans(prose.get(n, "")) for n in range(1, text.count("\n") + 2)]
  joined = "\n".join(lines)
  for match in _LINK.finditer(joined):
    yield joined.count("\n", 0, match.start()) + 1, match.group(1)
  for number, line in enumerate(lines, 1):
    match = _REFERENCE.match(line)
    if match:
      yield number, match.group(1)


def link_problems(path: pathlib.Path, root: pathlib.Path = ROOT) -> list[str]:
  """What is wrong with the relative links of the markdown file ``path``: a target that does
  not exist or lies outside ``root``, or an anchor that no heading of the target has."""
  problems = []
  for number, target in links(path.read_text(encoding="utf-8")):
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):  # http:, https:, mailto:, ...
      continue
    where = f"{_name(path)}:{number}: ({target})"
    file_part, _, anchor = target.partition("#")
    resolved = (path.parent / file_part).resolve() if file_part else path.resolve()
    if not resolved.is_relative_to(root.resolve()):
      problems.append(f"{where}: points outside the repository")
      continue
    if not resolved.exists():
      problems.append(f"{where}: {_name(resolved)} does not exist")
      continue
    if anchor and resolved.suffix.lower() == ".md":
      if anchor not in anchors(resolved.read_text(encoding="utf-8")):
        problems.append(f"{where}: {_name(resolved)} has no heading with the anchor #{anchor}")
  return problems


# --------------------------------------------------------------------------------------------
# Configs and the commands in code blocks.
# --------------------------------------------------------------------------------------------


def shipped_names(config_dir: pathlib.Path = CONFIG_DIR) -> list[str]:
  return sorted(p.stem for p in config_dir.glob("*.py") if p.stem != "__init__")


def config_arguments(path: pathlib.Path) -> tuple[Optional[str], ...]:
  """None (no argument) and every ``:arg`` a config file accepts, read from its
  ``check_arg(arg, (...))`` call."""
  for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
    if isinstance(node, ast.Call) and len(node.args) == 2:
      func = node.func
      name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
      if name == "check_arg":
        return (None, *ast.literal_eval(node.args[1]))
  return (None,)


@functools.lru_cache(maxsize=None)
def load_config(path: str, arg: Optional[str]) -> ml_collections.ConfigDict:
  """``get_config(arg)`` of the config file at ``path`` (``get_config()`` without an argument),
  imported by path as ml_collections' config flags do."""
  spec = importlib.util.spec_from_file_location(f"_docs_config_{pathlib.Path(path).stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config() if arg is None else module.get_config(arg)


def has_field(config, field: str) -> bool:
  node = config
  for part in field.split("."):
    if not isinstance(node, (ml_collections.ConfigDict, dict)) or part not in node:
      return False
    node = node[part]
  return True


def all_shipped_configs(config_dir: pathlib.Path = CONFIG_DIR) -> list[tuple[str, object]]:
  """("name[:arg]", config) of every shipped config under every argument it takes."""
  configs = []
  for name in shipped_names(config_dir):
    path = config_dir / f"{name}.py"
    for arg in config_arguments(path):
      configs.append((name + (f":{arg}" if arg else ""), load_config(str(path), arg)))
  return configs


def resolve_config(value: str, root: pathlib.Path = ROOT):
  """The configs a ``--config=value`` loads, as (label, config) pairs, or an error string.
  A placeholder (``...``) stands for any shipped config."""
  value = value.strip("\"'")
  if "..." in value:
    return all_shipped_configs(root / "configs")
  file_part, colon, arg = value.partition(":")
  path = root / file_part
  if not (file_part.endswith(".py") and path.is_file()):
    name = file_part.removesuffix(".py")
    if "/" in file_part or name not in shipped_names(root / "configs"):
      return (f"--config={value}: {file_part} is neither a config file nor a shipped config "
              f"({', '.join(shipped_names(root / 'configs'))})")
    path = root / "configs" / f"{name}.py"
  arg = arg if colon else None
  if arg not in config_arguments(path):
    return f"--config={value}: {_name(path)} takes no argument {arg!r}"
  return [(value, load_config(str(path), arg))]


def commands(text: str) -> Iterator[tuple[int, str, bool]]:
  """(line number, command, is a comment) of every shell line of the fenced code blocks that
  are not Python; lines ending in a backslash continue on the next."""
  for start, language, lines in split_markdown(text)[1]:
    if language in ("python", "py", "json", "text", "toml", "yaml"):
      continue
    pending, first = "", start
    for offset, line in enumerate(lines):
      if not pending:
        first = start + offset
      if line.rstrip().endswith("\\"):
        pending += line.rstrip()[:-1] + " "
        continue
      command = (pending + line).strip()
      pending = ""
      if command:
        yield first, command, command.startswith("#")


_CONFIG_FLAG = re.compile(r"""--config=("[^"]*"|'[^']*'|[^\s"']+)""")
_FIELD_FLAG = re.compile(r"--config\.([A-Za-z_][\w.]*)=")


def flag_problems(text: str, name: str = "<text>", root: pathlib.Path = ROOT) -> list[str]:
  """What is wrong with the configs and ``--config.`` fields of the commands in ``text``."""
  problems = []
  context = None  # The configs of the last command that named one, for its comment lines.
  for number, command, comment in commands(text):
    where = f"{name}:{number}"
    values = _CONFIG_FLAG.findall(command)
    if values:
      configs = []
      for value in values:
        resolved = resolve_config(value, root)
        if isinstance(resolved, str):
          problems.append(f"{where}: {resolved}")
        else:
          configs += resolved
    elif comment and context is not None:
      configs = context
    else:  # A workdir's saved config (or an elided one): any shipped config's field will do.
      configs = all_shipped_configs(root / "configs")
    if not comment:
      context = configs if values else None
    for field in _FIELD_FLAG.findall(command):
      if configs and not any(has_field(config, field) for _, config in configs):
        labels = ", ".join(label for label, _ in configs[:3]) + (", ..." if len(configs) > 3
                                                                 else "")
        problems.append(f"{where}: --config.{field} is not a field of {labels}")
  return problems


def config_file_problems(text: str, name: str = "<text>", root: pathlib.Path = ROOT) -> list[str]:
  """Config files (``configs/x.py``) and shipped configs imported in Python that no longer
  exist, anywhere in the code blocks."""
  problems = []
  for start, _, lines in split_markdown(text)[1]:
    for offset, line in enumerate(lines):
      for file_name in re.findall(r"\bconfigs/([\w-]+)\.py", line):
        if not (root / "configs" / f"{file_name}.py").is_file():
          problems.append(f"{name}:{start + offset}: configs/{file_name}.py does not exist")
      for module in re.findall(r"from mhex_jax\.configs import (\w+)", line):
        if module not in shipped_names(root / "configs"):
          problems.append(f"{name}:{start + offset}: no shipped config {module!r}")
  return problems


# --------------------------------------------------------------------------------------------
# The tests.
# --------------------------------------------------------------------------------------------

DOCS = doc_files()
IDS = [_name(p) for p in DOCS]


def test_the_pages_exist():
  for path in DOCS:
    assert path.is_file(), path
  assert {p.name for p in DOCS if p.parent.name == "docs"} >= {
      "usage.md", "results.md", "errors.md", "design.md"}


@pytest.mark.parametrize("path", DOCS, ids=IDS)
def test_docs_links_resolve(path):
  assert link_problems(path) == []


@pytest.mark.parametrize("path", DOCS, ids=IDS)
def test_docs_config_flags_exist(path):
  text = path.read_text(encoding="utf-8")
  name = _name(path)
  assert flag_problems(text, name) + config_file_problems(text, name) == []


@pytest.mark.parametrize("path", DOCS, ids=IDS)
def test_docs_stay_inside_the_repository(path):
  text = path.read_text(encoding="utf-8")
  assert "../shared" not in text


def test_docs_readme_is_a_front_page():
  assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 220


def test_docs_readme_has_the_test_command():
  """CI runs `make test`, and the README writes out the command it runs."""
  makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
  recipe = re.search(r"^test:.*\n\t(.+)$", makefile, re.M).group(1)
  command = recipe.replace("$(PY)", ".venv/bin/python")
  assert command == ".venv/bin/python -m pytest -q -n 2 --dist loadfile --durations=15 tests"
  assert command in (ROOT / "README.md").read_text(encoding="utf-8")


def test_docs_speed_table_is_the_benchmark_output():
  page = (ROOT / "benchmarks" / "README.md").read_text(encoding="utf-8")
  table = re.search(r"<!-- speed:start -->\n(.*)<!-- speed:end -->", page, re.S).group(1)
  assert table == (ROOT / "benchmarks" / "results" / "results.md").read_text(encoding="utf-8"), (
      "benchmarks/README.md's table differs from benchmarks/results/results.md")


# The checkers themselves must catch what they are for.


def test_docs_checker_reports_broken_links(tmp_path):
  (tmp_path / "sub").mkdir()
  (tmp_path / "target.md").write_text("# Title\n\n## A section: with `code`, (and) more\n")
  page = tmp_path / "sub" / "page.md"
  page.write_text(
      "# Page\n\n[fine](../target.md) [fine too](../target.md#a-section-with-code-and-more)\n"
      "[here](#page) [web](https://example.com/x.md) `[not a link](missing.md)`\n"
      "[gone](../missing.md)\n"
      "[no such heading](../target.md#nowhere)\n"
      "[outside](../../elsewhere.md) [a link over\ntwo lines](../gone_too.md)\n"
      "```\n[in code](missing_too.md)\n```\n")
  problems = link_problems(page, root=tmp_path)
  assert len(problems) == 4, problems
  assert "page.md:5: (../missing.md)" in problems[0], problems
  assert "missing.md does not exist" in problems[0]
  assert "#nowhere" in problems[1] and ":6:" in problems[1]
  assert "outside the repository" in problems[2]
  assert ":7: (../gone_too.md)" in problems[3] and "does not exist" in problems[3]


def test_docs_slugs_are_githubs():
  assert github_slug("MHEX on Transformers: what was measured, and why routing works") == (
      "mhex-on-transformers-what-was-measured-and-why-routing-works")
  assert github_slug("MHEX's EAD against Grad-CAM's") == "mhexs-ead-against-grad-cams"
  assert github_slug("(a) Synthetic shapes") == "a-synthetic-shapes"
  assert github_slug("Several processes: TPU pods, SLURM, `jax.distributed`") == (
      "several-processes-tpu-pods-slurm-jaxdistributed")
  assert anchors("# A\n## A\n```\n# not a heading\n```\n") == {"a", "a-1"}


def test_docs_checker_reports_unknown_config_fields():
  text = ("```bash\n"
          "python train.py --config=configs/default.py --config.train.no_such_field=1 \\\n"
          "    --workdir=runs/x\n"
          "python eval.py --config=configs/vit_imagenet.py:quick --workdir=runs/v \\\n"
          "    --config.model.patch_stem=conv\n"
          "# add --config.model.patch_size=8\n"
          "python eval.py --config=configs/default.py --config.model.patch_stem=conv\n"
          "python eval.py --workdir=runs/x --config.eval.methods=all\n"
          "python eval.py --workdir=runs/x --config.eval.no_such_field=all\n"
          "mhex-train --config=vit_imagenet:quik --workdir=w\n"
          "mhex-train --config=configs/nope.py --workdir=w\n"
          "```\n")
  problems = flag_problems(text)
  assert len(problems) == 5, problems
  assert problems[0].startswith("<text>:2:") and "train.no_such_field" in problems[0]
  assert problems[1].startswith("<text>:7:") and "model.patch_stem" in problems[1]
  assert problems[2].startswith("<text>:9:") and "eval.no_such_field" in problems[2]
  assert "takes no argument 'quik'" in problems[3]
  assert "configs/nope.py is neither" in problems[4]


def test_docs_checker_reports_missing_config_files():
  text = ("```python\nfrom mhex_jax.configs import nope\n```\n"
          "```bash\n# see configs/gone.py and configs/default.py\n```\n")
  problems = config_file_problems(text)
  assert len(problems) == 2, problems
  assert "'nope'" in problems[0] and "configs/gone.py" in problems[1]
