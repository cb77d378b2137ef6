"""Text classification from CSV files (AG News format), tokenized for BERT-style models.

The default CSV layout is AG News' own (Zhang, Zhao & LeCun, 2015): no header, every field quoted,
columns ``class index (1-based), title, description``. The text of a row is its text columns joined
by a space and the label is the class index minus one, exactly as Hugging Face's ``ag_news``
dataset builds it.

The text is kept verbatim. AG News carries artefacts of its HTML source (``#36;`` for ``$``,
``#39;`` for ``'``, ``quot;``, ``&lt;``) and a backslash where the source had a line break
(``second\\team``), but a backslash also escapes ``$`` (``\\$1 billion``), so no replacement is
right everywhere, and checkpoints fine-tuned on ``ag_news`` saw the verbatim text.

Nothing is downloaded: CSV files and tokenizer directories come from the local disk.
"""

import csv
import os
from typing import Sequence

import ml_collections
import numpy as np
import transformers

# A tokenizer directory must hold one of these, or AutoTokenizer silently builds a tokenizer with
# an empty vocabulary from config.json alone.
VOCAB_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model",
               "sentencepiece.bpe.model", "tokenizer.model")

CONFIG_FIELDS = ("path", "eval_path", "eval_fraction", "split_seed", "max_len", "label_column",
                 "text_columns", "label_base", "has_header", "tokenizer_dir")

# Texts per tokenizer call: batched for speed, bounded so 100k+ texts never hold all their
# intermediate encodings at once.
_CHUNK = 1024


def load_csv(path: str | os.PathLike, *, label_column: int = 0,
             text_columns: Sequence[int] = (1, 2), label_base: int = 1,
             has_header: bool = False, joiner: str = " ") -> tuple[list[str], np.ndarray]:
  """Reads texts and integer labels from a CSV file (AG News layout by default).

  Args:
    path: a UTF-8 CSV file with standard quoting ("" inside a quoted field is a quote).
    label_column: 0-based column of the integer class index.
    text_columns: 0-based columns joined, in this order, into each text.
    label_base: the smallest class index of the file (1 for AG News); subtracted from labels.
    has_header: skip the first row.
    joiner: put between the text columns.

  Returns:
    (texts: N strings, labels: int32 [N] starting at 0). Blank lines are skipped.
  """
  text_columns = tuple(text_columns)
  columns = (label_column, *text_columns)
  if not text_columns or any(not isinstance(c, int) or c < 0 for c in columns):
    raise ValueError(f"label_column and text_columns must be non-negative ints with at least "
                     f"one text column, got label_column={label_column!r}, "
                     f"text_columns={text_columns!r}.")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"text CSV file {os.fspath(path)} does not exist; pass the path of "
                            "a CSV file on disk, e.g. AG News' train.csv or test.csv.")
  needed = max(columns) + 1
  texts, labels = [], []
  header_pending = has_header
  with open(path, encoding="utf-8", newline="") as f:
    reader = csv.reader(f, strict=True)
    line = 1  # Where the next row starts: quoted fields may span several lines.
    try:
      for row in reader:
        row_line, line = line, reader.line_num + 1
        if not row:
          continue
        if header_pending:
          header_pending = False
          continue
        if len(row) < needed:
          raise ValueError(f"{os.fspath(path)}, line {row_line}: expected at least {needed} "
                           f"columns (label column {label_column}, text columns "
                           f"{list(text_columns)}), got {len(row)}: {_show(row)}.")
        try:
          label = int(row[label_column])
        except ValueError:
          raise ValueError(f"{os.fspath(path)}, line {row_line}: the label in column "
                           f"{label_column} must be an integer, got "
                           f"{row[label_column]!r} in {_show(row)}; check label_column and "
                           "has_header.") from None
        if label < label_base:
          raise ValueError(f"{os.fspath(path)}, line {row_line}: label {label} is below "
                           f"label_base={label_base}; set label_base to the file's smallest "
                           "class index (0 or 1).")
        texts.append(joiner.join(row[c] for c in text_columns))
        labels.append(label - label_base)
    except csv.Error as e:
      raise ValueError(f"{os.fspath(path)}, line {reader.line_num}: malformed CSV ({e}); "
                       "fields with commas, quotes or line breaks must be quoted, with "
                       "inner quotes doubled (\"\").") from e
    except UnicodeDecodeError as e:
      raise ValueError(f"{os.fspath(path)} is not UTF-8 text ({e}); re-encode it as "
                       "UTF-8.") from e
  if not texts:
    raise ValueError(f"{os.fspath(path)} holds no data rows"
                     f"{' after the header' if has_header else ''}.")
  return texts, np.asarray(labels, np.int32)


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
    raise ValueError(f"labels must be a non-empty int [N] array, got "
                     f"{labels.dtype}{list(labels.shape)}.")
  if labels.min() < 0:
    raise ValueError(f"labels must be >= 0, got minimum {labels.min()}.")
  if not 0 < eval_fraction < 1:
    raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction!r}.")
  if not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed must be a non-negative int, got {seed!r}.")
  train, held_out = [], []
  for c in np.unique(labels):
    members = np.random.default_rng([seed, int(c)]).permutation(np.flatnonzero(labels == c))
    num_eval = int(np.floor(len(members) * eval_fraction + 0.5))
    held_out.append(members[:num_eval])
    train.append(members[num_eval:])
  train, held_out = np.sort(np.concatenate(train)), np.sort(np.concatenate(held_out))
  if not len(train) or not len(held_out):
    raise ValueError(f"eval_fraction={eval_fraction} of {len(labels)} examples leaves "
                     f"{len(train)} for train and {len(held_out)} for eval; use a fraction "
                     "nearer 0.5 or more data.")
  return train, held_out


def load_tokenizer(checkpoint_dir: str | os.PathLike) -> transformers.PreTrainedTokenizerBase:
  """The Hugging Face tokenizer saved in a local directory; never touches the network."""
  directory = os.fspath(checkpoint_dir)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"tokenizer directory {directory} does not exist; pass a local "
                            "checkpoint directory, e.g. one written by "
                            "tokenizer.save_pretrained(dir).")
  files = sorted(os.listdir(directory))
  if not set(VOCAB_FILES) & set(files):
    raise ValueError(f"tokenizer directory {directory} holds no vocabulary file (one of "
                     f"{list(VOCAB_FILES)}); found {files}. Point it at a checkpoint "
                     "directory with its tokenizer files.")
  try:
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True)
  except (OSError, ValueError, KeyError, IndexError) as e:
    raise ValueError(f"cannot build a tokenizer from {directory} ({e}); a directory with only "
                     "vocab.txt also needs tokenizer_config.json, e.g. {\"tokenizer_class\": "
                     "\"BertTokenizer\", \"do_lower_case\": true} (false for cased "
                     "models).") from e
  vocab_txt = os.path.join(directory, "vocab.txt")
  if os.path.isfile(vocab_txt):
    with open(vocab_txt, encoding="utf-8") as f:
      num_words = len({word.rstrip("\n") for word in f})
    if len(tokenizer) < num_words:
      raise ValueError(f"the tokenizer loaded from {directory} has {len(tokenizer)} tokens "
                       f"but vocab.txt has {num_words}: its config ignores vocab.txt. Check "
                       "tokenizer_config.json / tokenizer.json.")
  return tokenizer


def special_ids(tokenizer: transformers.PreTrainedTokenizerBase) -> dict[str, int]:
  """{"mask", "pad", "cls", "sep"} -> token id, e.g. for replace-with-[MASK] metrics."""
  ids = {"mask": tokenizer.mask_token_id, "pad": tokenizer.pad_token_id,
         "cls": tokenizer.cls_token_id, "sep": tokenizer.sep_token_id}
  missing = [name for name, value in ids.items() if value is None]
  if missing:
    raise ValueError(f"{type(tokenizer).__name__} defines no {missing} token(s); use a "
                     "BERT-style tokenizer, whose tokenizer_config.json / "
                     "special_tokens_map.json names [MASK], [PAD], [CLS] and [SEP].")
  return {name: int(value) for name, value in ids.items()}


def tokenize(tokenizer: transformers.PreTrainedTokenizerBase, texts: Sequence[str],
             max_len: int) -> dict[str, np.ndarray]:
  """Tokenizes texts to fixed-length rows: [CLS] tokens [SEP] [PAD]...

  Texts longer than ``max_len`` tokens (specials included) are truncated.

  Returns:
    {"input_ids": int32 [N, max_len], "attention_mask": int32 [N, max_len] (0 on padding),
     "token_type_ids": int32 [N, max_len], "special_tokens_mask": bool [N, max_len] (True on
     [CLS], [SEP] and [PAD], so ``~special_tokens_mask`` marks the text tokens saliency ranks)}.
  """
  if isinstance(texts, str) or not texts or not all(isinstance(t, str) for t in texts):
    raise ValueError(f"texts must be a non-empty list of strings, got {_show_texts(texts)}.")
  num_special = tokenizer.num_special_tokens_to_add()
  if not isinstance(max_len, (int, np.integer)) or max_len <= num_special:
    raise ValueError(f"max_len must be an int above the {num_special} special tokens added "
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


def make_text_splits(
    config: ml_collections.ConfigDict) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """Train and eval splits, tokenized, ready for `pipeline.batch_iterator`.

  Args:
    config: with fields path (train CSV), eval_path (eval CSV; "" holds out a stratified
      eval_fraction of ``path``, shuffled by split_seed), eval_fraction, split_seed, max_len,
      label_column, text_columns, label_base, has_header (the `load_csv` options, shared by
      both files) and tokenizer_dir (a local tokenizer directory).

  Returns:
    (train, eval): each `tokenize`'s arrays [N, max_len] plus "label": int32 [N].
  """
  missing = [field for field in CONFIG_FIELDS if field not in config]
  if missing:
    raise ValueError(f"config lacks the text-data field(s) {missing}; it needs all of "
                     f"{list(CONFIG_FIELDS)}.")
  tokenizer = load_tokenizer(config.tokenizer_dir)
  csv_options = dict(label_column=config.label_column, text_columns=tuple(config.text_columns),
                     label_base=config.label_base, has_header=config.has_header)
  texts, labels = load_csv(config.path, **csv_options)
  if config.eval_path:
    train_texts, train_labels = texts, labels
    eval_texts, eval_labels = load_csv(config.eval_path, **csv_options)
  else:
    train_idx, eval_idx = stratified_split(labels, eval_fraction=config.eval_fraction,
                                           seed=config.split_seed)
    train_texts, train_labels = [texts[i] for i in train_idx], labels[train_idx]
    eval_texts, eval_labels = [texts[i] for i in eval_idx], labels[eval_idx]
  return ({**tokenize(tokenizer, train_texts, config.max_len), "label": train_labels},
          {**tokenize(tokenizer, eval_texts, config.max_len), "label": eval_labels})
