"""Text classification from CSV files, tokenized for BERT-style models.

The default CSV layout is AG News' own (Zhang, Zhao & LeCun, 2015): no header, every field quoted,
columns ``class index (1-based), title, description``. The text of a row is its text columns joined
by a space and the label is the class index minus one, exactly as Hugging Face's ``ag_news``
dataset builds it.

A user's own CSV works as it comes out of a spreadsheet: a header row (detected, see
`load_csv`), columns chosen by header name, class names as labels (``positive``, ``negative``)
and the UTF-8 byte-order mark of an Excel export.

The text is kept verbatim. AG News carries artefacts of its HTML source (``#36;`` for ``$``,
``#39;`` for ``'``, ``quot;``, ``&lt;``) and a backslash where the source had a line break
(``second\\team``), but a backslash also escapes ``$`` (``\\$1 billion``), so no replacement is
right everywhere, and checkpoints fine-tuned on ``ag_news`` saw the verbatim text.

Nothing is downloaded: CSV files and tokenizer directories come from the local disk.
"""

import contextlib
import csv
import math
import os
from typing import TYPE_CHECKING, NamedTuple, Optional, Sequence

from absl import logging
import ml_collections
import numpy as np

from mhex_jax import weights
from mhex_jax.errors import DataError

if TYPE_CHECKING:  # Imported where a tokenizer is built: image runs never pay for it.
  import transformers

# A tokenizer directory must hold one of these, or AutoTokenizer silently builds a tokenizer with
# an empty vocabulary from config.json alone.
VOCAB_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model",
               "sentencepiece.bpe.model", "tokenizer.model")

CONFIG_FIELDS = ("path", "eval_path", "eval_fraction", "split_seed", "max_len", "label_column",
                 "text_columns", "label_base", "has_header", "tokenizer_dir")
# Optional: data.class_names, the class names in index order (missing or () reads them from
# the data, see `make_text_splits`), and data.val_fraction, the share of each class of the
# training rows held out for validation (missing or 0: none; see `load_text_data`).

# data.max_len=AUTO: the MAX_LEN_PERCENTILE-th percentile of the training texts' token lengths,
# rounded up to a multiple of MAX_LEN_MULTIPLE, at most what the model and tokenizer read.
AUTO = "auto"
MAX_LEN_PERCENTILE = 95
MAX_LEN_MULTIPLE = 8
# Above this share of texts cut at max_len, the length report is a warning.
CUT_WARNING_FRACTION = 0.1

# Texts per tokenizer call: batched for speed, bounded so 100k+ texts never hold all their
# intermediate encodings at once.
_CHUNK = 1024

# csv refuses fields over 128 KiB by default; a long document is a legitimate text (it is
# truncated to max_len tokens anyway). The limit stays bounded so that a quote never closed
# cannot read the rest of a large file into one field.
_FIELD_LIMIT = 2**24

Column = int | str


class CsvData(NamedTuple):
  """What `load_csv` reads: texts [N], int32 labels [N] from 0, and the class names in index
  order (None for integer labels without given names: the file alone does not tell how many
  classes there are)."""
  texts: list[str]
  labels: np.ndarray
  class_names: Optional[tuple[str, ...]]


class TextSplits(NamedTuple):
  """What `make_text_splits` returns: tokenized train and eval arrays and the class names."""
  train: Optional[dict[str, np.ndarray]]
  eval: dict[str, np.ndarray]
  class_names: tuple[str, ...]


class TextData(NamedTuple):
  """What `load_text_data` returns: tokenized train, validation (None without
  data.val_fraction) and eval arrays, the class names and the max_len they were cut at."""
  train: Optional[dict[str, np.ndarray]]
  validation: Optional[dict[str, np.ndarray]]
  eval: dict[str, np.ndarray]
  class_names: tuple[str, ...]
  max_len: int


class LengthReport(NamedTuple):
  """Token lengths of some texts before truncation (special tokens included) against max_len."""
  num_texts: int
  median: float
  percentile_95: float
  longest: int
  max_len: int
  cut_fraction: float  # Share of the texts longer than max_len tokens.


def load_csv(path: str | os.PathLike, *, label_column: Column = 0,
             text_columns: Sequence[Column] = (1, 2), label_base: int = 1,
             has_header: bool | str = "auto", class_names: Sequence[str] = (),
             joiner: str = " ") -> CsvData:
  """Reads texts and labels from a CSV file (AG News layout by default).

  Labels are class indices when every label of the file is an integer: ``label_base`` is
  subtracted and ``class_names``, if given, names them in index order. Otherwise labels are class
  names, numbered by their position in ``class_names`` or, when that is empty, in the sorted set
  of the file's labels. Integer and non-integer labels in one file are an error.

  ``has_header="auto"`` takes the first row for a header when a column is given by name, or
  when its label field is not a label of the data: not one of ``class_names`` nor an integer;
  without ``class_names``, not an integer while every other label is one, or a non-integer
  that occurs nowhere else in the label column (a column name, e.g. ``sentiment``). A file of
  class-name labels without a header whose first class occurs only once is mistaken for a
  headed one: pass True or False when the guess is wrong.

  Args:
    path: a CSV file, UTF-8 with or without a byte-order mark, with standard quoting ("" inside
      a quoted field is a quote).
    label_column: the label column, 0-based or a header name.
    text_columns: columns (0-based or header names) joined, in this order, into each text.
    label_base: the smallest class index of the file (1 for AG News); subtracted from integer
      labels.
    has_header: True, False or "auto".
    class_names: the class names in index order; () reads them from the file.
    joiner: put between the text columns.

  Returns:
    CsvData(texts, labels int32 [N] from 0, class_names). Blank lines and rows of empty fields
    are skipped; a row whose text is empty is an error.
  """
  return _read_labelled_csv(path, label_column=label_column, text_columns=text_columns,
                            label_base=label_base, has_header=has_header,
                            class_names=class_names, joiner=joiner)[0]


def _read_labelled_csv(path, *, label_column, text_columns, label_base, has_header, class_names,
                       joiner, integer_labels=None) -> tuple[CsvData, bool, list[int]]:
  """`load_csv`, whether the labels are class indices (``integer_labels`` forces it), and the
  line each row starts on."""
  path = os.fspath(path)
  text_columns = tuple(text_columns) if not isinstance(text_columns, str) else (text_columns,)
  columns = (label_column, *text_columns)
  if not text_columns or any(not isinstance(c, (int, str)) or isinstance(c, bool)
                             or (isinstance(c, int) and c < 0) for c in columns):
    raise DataError(f"label_column and text_columns must be non-negative ints or header names "
                    f"with at least one text column, got label_column={label_column!r}, "
                    f"text_columns={text_columns!r}.")
  class_names = _check_class_names(class_names)
  by_name = any(isinstance(c, str) for c in columns)
  if has_header not in (True, False, "auto"):
    raise DataError(f"has_header must be True, False or 'auto', got {has_header!r}.")
  if by_name and has_header is False:
    raise DataError(f"columns are given by name (label_column={label_column!r}, "
                    f"text_columns={text_columns!r}) but has_header=False; set has_header to "
                    "True or 'auto', or give the columns as 0-based numbers.")
  rows = _read_rows(path)
  if has_header == "auto":
    has_header = by_name or _looks_like_header(rows, label_column, class_names)
  header = None
  if has_header:
    if not rows:
      raise DataError(f"{path} holds no rows; it should start with a header row.")
    header = [name.strip() for name in rows.pop(0)[1]]
  if not rows:
    raise DataError(f"{path} holds no data rows{' after the header' if has_header else ''}.")
  label_index = _column_index(label_column, header, path)
  text_indices = tuple(_column_index(c, header, path) for c in text_columns)
  needed = max(label_index, *text_indices) + 1
  lines, raw_labels, texts = [], [], []
  for line, row in rows:
    if len(row) < needed:
      hint = ("; is it separated by ';' or tabs? Save it as comma-separated values"
              if len(row) == 1 and (";" in row[0] or "\t" in row[0]) else "")
      raise DataError(f"{path}, line {line}: expected at least {needed} columns (label column "
                      f"{label_column!r}, text columns {list(text_columns)}), got {len(row)}: "
                      f"{_show(row)}{hint}.")
    label = row[label_index].strip()
    if not label:
      raise DataError(f"{path}, line {line}: the label in column {label_column!r} is empty in "
                      f"{_show(row)}; give every row a label or delete the row.")
    lines.append(line)
    raw_labels.append(label)
    texts.append(joiner.join(row[c] for c in text_indices))
  _check_texts(path, lines, texts, text_columns)
  if integer_labels is None:
    integer_labels = _integer_labels(path, lines, raw_labels, label_column)
  if integer_labels:
    labels = _index_labels(path, lines, raw_labels, label_column, label_base, class_names)
  else:
    class_names = class_names or tuple(sorted(set(raw_labels)))
    labels = _name_labels(path, lines, raw_labels, class_names)
  return CsvData(texts, labels, class_names or None), integer_labels, lines


@contextlib.contextmanager
def _field_size_limit(limit: int):
  previous = csv.field_size_limit(limit)
  try:
    yield
  finally:
    csv.field_size_limit(previous)


def _read_rows(path: str) -> list[tuple[int, list[str]]]:
  """The non-blank rows of a CSV file, each with the line it starts on."""
  if os.path.isdir(path):
    raise FileNotFoundError(f"text CSV path {path} is a directory, not a CSV file; pass the "
                            "path of the file itself, e.g. .../train.csv.")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"text CSV file {path} does not exist; pass the path of a CSV file "
                            "on disk, e.g. AG News' train.csv or test.csv.")
  rows = []
  # utf-8-sig drops the byte-order mark Excel writes before the first header name.
  try:
    f = open(path, encoding="utf-8-sig", newline="")
  except PermissionError as e:
    raise DataError(f"text CSV file {path} cannot be read: permission denied; make it "
                    f"readable (e.g. chmod a+r {path}).") from e
  with f, _field_size_limit(_FIELD_LIMIT):
    reader = csv.reader(f, strict=True)
    line = 1  # Where the next row starts: quoted fields may span several lines.
    try:
      for row in reader:
        row_line, line = line, reader.line_num + 1
        if any(field.strip() for field in row):
          rows.append((row_line, row))
    except csv.Error as e:
      if "field limit" in str(e):
        raise DataError(f"{path}, line {line}: a field is longer than {_FIELD_LIMIT:,} "
                        "characters, most likely because a quote opened on that line is "
                        "never closed, so the rest of the file reads as one field: close "
                        "it (inner quotes doubled, \"\"). A text really that long must be "
                        "shortened: only its first max_len tokens are used.") from e
      raise DataError(f"{path}, line {line}: malformed CSV ({e}, at line {reader.line_num}); "
                      "fields with commas, quotes or line breaks must be quoted, with inner "
                      "quotes doubled (\"\"), and every opening quote closed.") from e
    except UnicodeDecodeError as e:
      with open(path, "rb") as raw:
        workbook = raw.read(4) == b"PK\x03\x04"  # .xlsx files are zip archives.
      what = ("an Excel workbook (or another zip archive), not CSV text; save it as CSV "
              "(Save As, 'CSV UTF-8')" if workbook else
              f"not UTF-8 text ({e}); re-encode it as UTF-8 (in Excel: Save As, 'CSV UTF-8')")
      raise DataError(f"{path} is {what}.") from e
  return rows


def _looks_like_header(rows, label_column, class_names) -> bool:
  """has_header="auto" for numbered columns: whether the first row's label is no label."""
  labels = [row[label_column].strip() for _, row in rows if len(row) > label_column]
  if not labels or len(labels) < len(rows) or _is_int(labels[0]):
    return False  # Too-short rows are reported, with their line, as data.
  if class_names:
    return labels[0] not in class_names
  rest = labels[1:]
  return bool(rest) and (all(map(_is_int, rest)) or labels[0] not in rest)


def _is_int(value: str) -> bool:
  try:
    int(value)
  except ValueError:
    return False
  return True


def _column_index(column: Column, header: Optional[list[str]], path: str) -> int:
  if isinstance(column, int):
    return column
  if header is None:
    raise DataError(f"column {column!r} is a header name but {path} is read without a "
                    "header; set has_header to True or 'auto'.")
  matches = [i for i, name in enumerate(header) if name == column.strip()]
  if len(matches) != 1:
    problem = "names no column" if not matches else f"names {len(matches)} columns"
    raise DataError(f"{column!r} {problem} of {path}, whose header has the columns "
                    f"{header}; pick one of them or give its 0-based number.")
  return matches[0]


def _check_class_names(class_names) -> tuple[str, ...]:
  names = tuple(class_names or ())
  if (isinstance(class_names, str) or not all(isinstance(n, str) and n.strip() for n in names)
      or len(set(names)) != len(names)):
    raise DataError(f"class_names must be distinct non-empty strings in class order, e.g. "
                    f"('negative', 'positive'), or () to read them from the data; got "
                    f"{class_names!r}.")
  return tuple(n.strip() for n in names)


def _check_texts(path, lines, texts, text_columns) -> None:
  empty = [line for line, t in zip(lines, texts) if not t.strip()]
  if empty:
    shown = ", ".join(map(str, empty[:10])) + (", ..." if len(empty) > 10 else "")
    everything = "every row" if len(empty) == len(texts) else f"{len(empty)} of {len(texts)} rows"
    raise DataError(f"{path}: the text (text columns {list(text_columns)}) is empty in "
                    f"{everything}, at line(s) {shown}; fill or delete those rows, or check "
                    "text_columns and has_header.")


def _integer_labels(path, lines, raw_labels, label_column) -> bool:
  """Whether the labels are class indices: all integers (True) or none (False)."""
  is_int = [_is_int(label) for label in raw_labels]
  if all(is_int) or not any(is_int):
    return all(is_int)
  first_int, first_name = is_int.index(True), is_int.index(False)
  raise DataError(f"{path}, line {lines[first_name]}: the label in column {label_column!r} "
                  f"must be an integer, got {raw_labels[first_name]!r}, while line "
                  f"{lines[first_int]} holds the integer label {raw_labels[first_int]!r}: "
                  "labels are either all class indices or all class names; check "
                  "label_column and has_header.")


def _index_labels(path, lines, raw_labels, label_column, label_base, class_names) -> np.ndarray:
  labels = []
  for line, raw in zip(lines, raw_labels):
    try:
      label = int(raw)
    except ValueError:
      raise DataError(f"{path}, line {line}: the label in column {label_column!r} must be an "
                      f"integer, got {raw!r}, as the training data's labels are class "
                      "indices.") from None
    if label < label_base:
      raise DataError(f"{path}, line {line}: label {label} is below label_base={label_base}; "
                      "set label_base to the file's smallest class index (0 or 1).")
    if class_names and label - label_base >= len(class_names):
      raise DataError(f"{path}, line {line}: label {label} is class {label - label_base} but "
                      f"class_names names {len(class_names)} ({', '.join(class_names)}); "
                      "name every class or check label_base.")
    labels.append(label - label_base)
  return np.asarray(labels, np.int32)


def _name_labels(path, lines, raw_labels, class_names) -> np.ndarray:
  index = {name: i for i, name in enumerate(class_names)}
  for line, raw in zip(lines, raw_labels):
    if raw not in index:
      raise DataError(f"{path}, line {line}: label {raw!r} is not one of the classes "
                      f"({', '.join(class_names)}); fix the label, or set data.class_names to "
                      "every class in index order (() takes the sorted labels of the training "
                      "file).")
  return np.asarray([index[raw] for raw in raw_labels], np.int32)


def _show(row: list[str], limit: int = 200) -> str:
  shown = repr(row)
  return shown if len(shown) <= limit else shown[:limit] + "...]"


def stratified_split(labels: np.ndarray, *, eval_fraction: float = 0.2,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Deterministic train/eval split that keeps every class' proportion.

  Each class is shuffled by its own generator ``np.random.default_rng([seed, class])``, so
  adding or removing examples of one class never moves the examples of another, and its first
  ``floor(n_class * eval_fraction + 0.5)`` shuffled examples go to eval.

  Args:
    labels: int [N], non-negative.
    eval_fraction: share of each class held out, in (0, 1).
    seed: non-negative int selecting the shuffle.

  Returns:
    (train_idx int64 [N - M], eval_idx int64 [M]): disjoint, sorted, together all of [0, N).
  """
  labels = np.asarray(labels)
  if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
    raise DataError(f"labels must be a non-empty int [N] array, got "
                    f"{labels.dtype}{list(labels.shape)}.")
  if labels.min() < 0:
    raise DataError(f"labels must be >= 0, got minimum {labels.min()}.")
  if not 0 < eval_fraction < 1:
    raise DataError(f"eval_fraction must be in (0, 1), got {eval_fraction!r}.")
  if not isinstance(seed, (int, np.integer)) or seed < 0:
    raise DataError(f"seed must be a non-negative int, got {seed!r}.")
  train, held_out = [], []
  for c in np.unique(labels):
    members = np.random.default_rng([seed, int(c)]).permutation(np.flatnonzero(labels == c))
    num_eval = int(np.floor(len(members) * eval_fraction + 0.5))
    held_out.append(members[:num_eval])
    train.append(members[num_eval:])
  train, held_out = np.sort(np.concatenate(train)), np.sort(np.concatenate(held_out))
  if not len(train) or not len(held_out):
    raise DataError(f"eval_fraction={eval_fraction} of {len(labels)} examples leaves "
                    f"{len(train)} for train and {len(held_out)} for eval; use a fraction "
                    "nearer 0.5 or more data.")
  return train, held_out


def load_tokenizer(checkpoint_dir: str | os.PathLike) -> "transformers.PreTrainedTokenizerBase":
  """The Hugging Face tokenizer saved in a local directory, or in a Hub id's snapshot
  (``weights.checkpoint_path``: downloaded once into huggingface_hub's cache, or read from it
  alone with HF_HUB_OFFLINE=1); transformers itself never touches the network."""
  directory = os.fspath(weights.checkpoint_path(checkpoint_dir, field="data.tokenizer_dir"))
  if not os.path.isdir(directory):
    problem = "is a file, not a directory" if os.path.exists(directory) else "does not exist"
    raise FileNotFoundError(f"tokenizer directory {directory} {problem}; pass a local "
                            "checkpoint directory, e.g. one written by "
                            "tokenizer.save_pretrained(dir), or a Hugging Face Hub id.")
  files = sorted(os.listdir(directory))
  if not set(VOCAB_FILES) & set(files):
    raise DataError(f"tokenizer directory {directory} holds no vocabulary file (one of "
                    f"{list(VOCAB_FILES)}); found {files}. Point it at a checkpoint "
                    "directory with its tokenizer files.")
  import transformers  # pylint: disable=g-import-not-at-top,redefined-outer-name
  try:
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True)
  except (OSError, ValueError, KeyError, IndexError) as e:
    raise DataError(f"cannot build a tokenizer from {directory} ({e}); a directory with only "
                    "vocab.txt also needs tokenizer_config.json, e.g. {\"tokenizer_class\": "
                    "\"BertTokenizer\", \"do_lower_case\": true} (false for cased "
                    "models).") from e
  vocab_txt = os.path.join(directory, "vocab.txt")
  if os.path.isfile(vocab_txt):
    with open(vocab_txt, encoding="utf-8") as f:
      num_words = len({word.rstrip("\n") for word in f})
    if len(tokenizer) < num_words:
      raise DataError(f"the tokenizer loaded from {directory} has {len(tokenizer)} tokens "
                      f"but vocab.txt has {num_words}: its config ignores vocab.txt. Check "
                      "tokenizer_config.json / tokenizer.json.")
  return tokenizer


def special_ids(tokenizer: "transformers.PreTrainedTokenizerBase") -> dict[str, int]:
  """{"mask", "pad", "cls", "sep"} -> token id, e.g. for replace-with-[MASK] metrics: BERT's
  [MASK], [PAD], [CLS], [SEP], RoBERTa's and XLM-R's <mask>, <pad>, <s>, </s>."""
  ids = {"mask": tokenizer.mask_token_id, "pad": tokenizer.pad_token_id,
         "cls": tokenizer.cls_token_id, "sep": tokenizer.sep_token_id}
  missing = [name for name, value in ids.items() if value is None]
  if missing:
    raise DataError(f"{type(tokenizer).__name__} defines no {missing} token(s); use a "
                    "BERT-style tokenizer, whose tokenizer_config.json / "
                    "special_tokens_map.json names [MASK], [PAD], [CLS] and [SEP] (RoBERTa: "
                    "<mask>, <pad>, <s> and </s>).")
  return {name: int(value) for name, value in ids.items()}


def tokenize(tokenizer: "transformers.PreTrainedTokenizerBase", texts: Sequence[str],
             max_len: int) -> dict[str, np.ndarray]:
  """Tokenizes texts to fixed-length rows: [CLS] tokens [SEP] [PAD]... (RoBERTa, XLM-R:
  <s> tokens </s> <pad>...).

  Texts longer than ``max_len`` tokens (specials included) are truncated.

  Returns:
    {"input_ids": int32 [N, max_len], "attention_mask": int32 [N, max_len] (0 on padding),
     "token_type_ids": int32 [N, max_len] (all 0 for tokenizers without token types; a model
     with type_vocab_size=0 ignores them), "special_tokens_mask": bool [N, max_len] (True on
     [CLS], [SEP] and [PAD], so ``~special_tokens_mask`` marks the text tokens saliency ranks)}.
  """
  if isinstance(texts, str) or not texts or not all(isinstance(t, str) for t in texts):
    raise DataError(f"texts must be a non-empty list of strings, got {_show_texts(texts)}.")
  num_special = tokenizer.num_special_tokens_to_add()
  if not isinstance(max_len, (int, np.integer)) or max_len <= num_special:
    raise DataError(f"max_len must be an int above the {num_special} special tokens added "
                    f"to every text, got {max_len!r}.")
  chunks = []
  for start in range(0, len(texts), _CHUNK):
    chunks.append(tokenizer(
        list(texts[start:start + _CHUNK]), max_length=max_len, padding="max_length",
        truncation=True, return_attention_mask=True, return_token_type_ids=True,
        return_special_tokens_mask=True, return_tensors="np"))
  out = {key: np.concatenate([c[key] for c in chunks]).astype(np.int32)
         for key in ("input_ids", "attention_mask", "token_type_ids")}
  special = np.concatenate([c["special_tokens_mask"] for c in chunks]).astype(bool)
  # Hugging Face marks padding as special too; or-ing keeps that promise for any tokenizer.
  out["special_tokens_mask"] = special | (out["attention_mask"] == 0)
  return out


def _show_texts(texts) -> str:
  if isinstance(texts, str):
    return f"the single string {texts[:50]!r} (wrap it in a list)"
  return repr(texts)[:100]


def make_text_splits(data_config: ml_collections.ConfigDict, num_classes: Optional[int] = None,
                     *, need_train: bool = True) -> TextSplits:
  """Train and eval splits, tokenized, ready for `pipeline.batch_iterator`, and class names:
  `load_text_data`'s, without the validation split (whose rows ``train`` then lacks)."""
  data = load_text_data(data_config, num_classes, need_train=need_train)
  return TextSplits(data.train, data.eval, data.class_names)


def load_text_data(data_config: ml_collections.ConfigDict, num_classes: Optional[int] = None,
                   *, need_train: bool = True, max_tokens: Optional[int] = None) -> TextData:
  """Train, validation and eval splits, tokenized, ready for `pipeline.batch_iterator`.

  Logs the token-length distribution of the training texts (eval texts when ``need_train`` is
  False) before truncation and the share cut at max_len (`report_lengths`), as a warning when
  over CUT_WARNING_FRACTION.

  Args:
    data_config: ``config.data``, with fields path (train CSV), eval_path (eval CSV; "" holds
      out a stratified eval_fraction of ``path``, shuffled by split_seed), eval_fraction,
      split_seed, max_len (tokens per text, or "auto": `auto_max_len` of the training texts),
      label_column, text_columns, label_base, has_header (the `load_csv` options, shared by
      both files), tokenizer_dir (a local tokenizer directory) and optionally class_names and
      val_fraction (a stratified share of the training rows held out for validation, by the
      same recipe and split_seed; the eval rows are the same with or without it).
    num_classes: the model's number of classes, checked against the classes of the data.
    need_train: False (evaluation) reads the training file for its classes and split but
      tokenizes only the eval texts; ``train`` and ``validation`` are then None.
    max_tokens: the most tokens per text the model reads (``model_lib.max_tokens``), which
      max_len="auto" never exceeds; None: the tokenizer's limit alone.

  Returns:
    TextData(train, validation, eval, class_names, max_len): train, validation and eval are
    `tokenize`'s arrays [N, max_len] plus "label": int32 [N]. class_names has one name per
    class, in index order: for class-name labels data.class_names or the sorted labels of the
    training file; for integer labels data.class_names or, when it is empty, the file's own
    labels ("1", "2", ... for label_base=1), ``num_classes`` of them (the training data's
    largest label + 1 without it). The eval file's labels must be among the training classes.
  """
  missing = [field for field in CONFIG_FIELDS if field not in data_config]
  if missing:
    raise DataError(f"data config lacks the text-data field(s) {missing}; it needs all of "
                    f"{list(CONFIG_FIELDS)}.")
  check_max_len(data_config.max_len)
  tokenizer = load_tokenizer(data_config.tokenizer_dir)
  csv_options = _csv_options(data_config)
  given_names = data_config.get("class_names") or ()
  data, integer_labels, lines = _read_labelled_csv(data_config.path, class_names=given_names,
                                                   **csv_options)
  class_names = data.class_names
  if data_config.eval_path:
    eval_data, _, eval_lines = _read_labelled_csv(
        data_config.eval_path, class_names=class_names or (), integer_labels=integer_labels,
        **csv_options)
    train_idx, eval_labels = np.arange(len(data.labels)), eval_data.labels
  else:
    try:
      train_idx, eval_idx = stratified_split(data.labels, eval_fraction=data_config.eval_fraction,
                                             seed=data_config.split_seed)
    except ValueError as e:
      raise DataError(f"splitting {data_config.path} for training and eval: {e} Or pass an eval "
                      "file as data.eval_path.") from e
    eval_labels = data.labels[eval_idx]
  val_idx = None
  val_fraction = data_config.get("val_fraction") or 0
  if val_fraction:
    try:
      kept, held = stratified_split(data.labels[train_idx], eval_fraction=val_fraction,
                                    seed=data_config.split_seed)
    except ValueError as e:
      raise DataError(f"holding out data.val_fraction={val_fraction} of the training rows of "
                      f"{data_config.path} for validation: {e}") from e
    train_idx, val_idx = train_idx[kept], train_idx[held]
  train_labels = data.labels[train_idx]
  if class_names is None:  # Integer labels without names: the file's own label values.
    largest = max(int(data.labels.max()), int(eval_labels.max()))
    count = num_classes or largest + 1
    class_names = tuple(str(data_config.label_base + i) for i in range(count))
  if num_classes is not None and len(class_names) != num_classes:
    if given_names:
      source, fix = (f"data.class_names has {len(class_names)} names",
                     f"set data.class_names to the {num_classes} class names in index order "
                     "(or () to read them from the data), or model.num_classes to "
                     f"{len(class_names)}")
    else:
      source, fix = (f"the CSV {data_config.path} has {len(class_names)} classes",
                     f"set model.num_classes={len(class_names)}, or list every class in "
                     "data.class_names if the training file lacks some")
    raise DataError(f"{source} ({', '.join(class_names)}) but model.num_classes="
                    f"{num_classes}; {fix}.")

  train_texts = [data.texts[i] for i in train_idx]
  max_len = data_config.max_len
  if max_len == AUTO:
    train_lengths = token_lengths(tokenizer, train_texts)
    limit = _token_limit(tokenizer, max_tokens)
    max_len = auto_max_len(train_lengths, limit)
    logging.info("data.max_len=auto: %d tokens, the %dth percentile of the %d training texts' "
                 "token lengths (%.1f) rounded up to a multiple of %d%s.", max_len,
                 MAX_LEN_PERCENTILE, len(train_texts), np.percentile(train_lengths,
                                                                      MAX_LEN_PERCENTILE),
                 MAX_LEN_MULTIPLE, f", at most {limit} (what the model reads)"
                 if limit is not None and max_len == limit else "")
  def tokenized(texts, path, lines, idx):
    return _tokenize_rows(tokenizer, [texts[i] for i in idx], max_len, path,
                          [lines[i] for i in idx], data_config.tokenizer_dir)

  if data_config.eval_path:
    eval_arrays = tokenized(eval_data.texts, data_config.eval_path, eval_lines,
                            range(len(eval_labels)))
  else:
    eval_arrays = tokenized(data.texts, data_config.path, lines, eval_idx)
  train = validation = None
  if need_train:
    lengths = train_lengths if data_config.max_len == AUTO else token_lengths(tokenizer,
                                                                             train_texts)
    report_lengths(length_report(lengths, max_len), f"the training texts of {data_config.path}",
                   data_config.tokenizer_dir)
    train = {**tokenized(data.texts, data_config.path, lines, train_idx), "label": train_labels}
    if val_idx is not None:
      validation = {**tokenized(data.texts, data_config.path, lines, val_idx),
                    "label": data.labels[val_idx]}
  else:
    eval_texts = (eval_data.texts if data_config.eval_path
                  else [data.texts[i] for i in eval_idx])
    report_lengths(length_report(token_lengths(tokenizer, eval_texts), max_len),
                   f"the eval texts of {data_config.eval_path or data_config.path}",
                   data_config.tokenizer_dir)
  return TextData(train, validation, {**eval_arrays, "label": eval_labels}, class_names,
                  int(max_len))


def read_class_names(data_config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The class names `load_text_data` finds without ``num_classes``, read from the CSV
  labels alone (nothing tokenized): what model.num_classes=None takes its count from."""
  given_names = data_config.get("class_names") or ()
  data, integer_labels, _ = _read_labelled_csv(data_config.path, class_names=given_names,
                                               **_csv_options(data_config))
  if data.class_names:
    return data.class_names
  largest = int(data.labels.max())
  if data_config.eval_path:
    eval_data, _, _ = _read_labelled_csv(data_config.eval_path, integer_labels=integer_labels,
                                         class_names=(), **_csv_options(data_config))
    largest = max(largest, int(eval_data.labels.max()))
  return tuple(str(data_config.label_base + i) for i in range(largest + 1))


def _csv_options(data_config: ml_collections.ConfigDict) -> dict:
  return dict(label_column=data_config.label_column, text_columns=data_config.text_columns,
              label_base=data_config.label_base, has_header=data_config.has_header, joiner=" ")


def check_max_len(max_len) -> None:
  """Refuses a data.max_len that is neither a positive int nor "auto"."""
  if max_len != AUTO and (isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer))
                          or max_len < 1):
    raise DataError(f"data.max_len={max_len!r} must be a positive integer (tokens per text, "
                    f"special tokens included) or {AUTO!r} (from the training texts' lengths).")


def token_lengths(tokenizer: "transformers.PreTrainedTokenizerBase",
                  texts: Sequence[str]) -> np.ndarray:
  """int [N]: the tokens of each text before truncation, special tokens included."""
  lengths = []
  for start in range(0, len(texts), _CHUNK):
    # verbose=False: texts longer than the tokenizer's limit are expected here, not an error.
    ids = tokenizer(list(texts[start:start + _CHUNK]), truncation=False, verbose=False,
                    return_attention_mask=False, return_token_type_ids=False)["input_ids"]
    lengths += [len(row) for row in ids]
  return np.asarray(lengths, np.int64)


def length_report(lengths: np.ndarray, max_len: int) -> LengthReport:
  """The distribution of ``lengths`` (`token_lengths`) and the share above ``max_len``."""
  lengths = np.asarray(lengths)
  return LengthReport(len(lengths), float(np.median(lengths)),
                      float(np.percentile(lengths, MAX_LEN_PERCENTILE)), int(lengths.max()),
                      int(max_len), float(np.mean(lengths > max_len)))


def auto_max_len(lengths: np.ndarray, limit: Optional[int] = None) -> int:
  """data.max_len="auto": the MAX_LEN_PERCENTILE-th percentile of ``lengths`` (numpy's linear
  interpolation) rounded up to a multiple of MAX_LEN_MULTIPLE, at most ``limit``."""
  percentile = np.percentile(np.asarray(lengths), MAX_LEN_PERCENTILE)
  rounded = int(math.ceil(percentile / MAX_LEN_MULTIPLE)) * MAX_LEN_MULTIPLE
  return rounded if limit is None else min(rounded, limit)


def report_lengths(report: LengthReport, what: str, tokenizer_dir: str = "") -> bool:
  """Logs ``report`` on ``what`` (e.g. "the training texts of train.csv"); a warning naming
  --config.data.max_len when more than CUT_WARNING_FRACTION of the texts are cut (returns
  True then)."""
  summary = (f"median {report.median:g}, {MAX_LEN_PERCENTILE}th percentile "
             f"{report.percentile_95:g}, max {report.longest}")
  tokenizer = f" (tokenizer {tokenizer_dir})" if tokenizer_dir else ""
  if report.cut_fraction <= CUT_WARNING_FRACTION:
    logging.info("Token lengths of %s (%d texts)%s before truncation, special tokens "
                 "included: %s; data.max_len=%d cuts %.1f%% of them.", what, report.num_texts,
                 tokenizer, summary, report.max_len, 100 * report.cut_fraction)
    return False
  suggested = int(math.ceil(report.percentile_95 / MAX_LEN_MULTIPLE)) * MAX_LEN_MULTIPLE
  logging.warning("data.max_len=%d cuts %.1f%% of %s (%d texts; token lengths%s before "
                  "truncation, special tokens included: %s): the model never sees their ends. "
                  "Set --config.data.max_len=auto (the %dth percentile rounded up to a multiple "
                  "of %d: %d here) or another --config.data.max_len above %d.", report.max_len,
                  100 * report.cut_fraction, what, report.num_texts, tokenizer, summary,
                  MAX_LEN_PERCENTILE, MAX_LEN_MULTIPLE, suggested, report.max_len)
  return True


def _token_limit(tokenizer, max_tokens: Optional[int]) -> Optional[int]:
  """The most tokens per text: the model's (``max_tokens``) and the tokenizer's, if it names
  one (tokenizers without a limit hold a huge placeholder)."""
  limits = [max_tokens] if max_tokens else []
  own = getattr(tokenizer, "model_max_length", None)
  if isinstance(own, int) and 0 < own < 1_000_000:
    limits.append(own)
  return min(limits) if limits else None


def _tokenize_rows(tokenizer, texts, max_len, path, lines, tokenizer_dir) -> dict[str, np.ndarray]:
  """`tokenize`, refusing texts left without a single text token (e.g. only control or
  zero-width characters, which BERT tokenizers drop): a model would learn from [CLS] alone."""
  arrays = tokenize(tokenizer, texts, max_len)
  empty = np.flatnonzero(np.all(arrays["special_tokens_mask"], axis=1))
  if len(empty):
    shown = ", ".join(str(lines[i]) for i in empty[:10]) + (", ..." if len(empty) > 10 else "")
    raise DataError(f"{path}: {len(empty)} of {len(texts)} texts have no token for the "
                    f"tokenizer of {tokenizer_dir}, at line(s) {shown} (e.g. "
                    f"{texts[empty[0]][:50]!r}: only control, zero-width or special-token "
                    "characters); fill or delete those rows, or check text_columns.")
  return arrays
