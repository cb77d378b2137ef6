r"""Does a small CSV learn? configs/text_csv.py (MHEX and plain) against TF-IDF + logistic
regression on the same held-out rows.

    python -m benchmarks.text_baseline [--csv=PATH/agnews.csv] [--seeds=0,1,2] [--work=DIR]
        [--baseline_only]

For each seed, takes a stratified subset of the AG News CSV (600 rows, 150 of each class; written
verbatim to WORK/agnews600.csv) and splits it as the library does (``text.stratified_split``
with configs/text_csv.py's eval_fraction and split_seed: 120 held-out rows). The baseline is
scikit-learn's defaults, written out here in numpy (scikit-learn is not a dependency):

* ``TfidfVectorizer()``: lowercased words of two or more word characters (``\b\w\w+\b``),
  vocabulary of the training rows, raw counts × smooth idf ``ln((1 + n) / (1 + df)) + 1``,
  rows L2-normalised;
* ``LogisticRegression()``: multinomial, L2, C = 1.0, an unpenalised intercept, i.e. the minimum
  of ``C · Σ_i cross-entropy_i + ½‖W‖²``, found by L-BFGS to gradient entries under 1e-6
  (scikit-learn stops after 100 iterations); the minimum's predictions are unique.

It trains on the 480 training rows (those the models train and validate on), then ``train.py
--config=configs/text_csv.py[:plain]`` runs with the path as its only flag, and the three
held-out accuracies go to ``benchmarks/results/text_baseline.{json,md}``, one row per seed
(runs of other seeds already there are kept, each with its date) and their mean. 120 held-out
rows put one row at 0.8 points, so a single subset cannot tell a 1-point difference between
MHEX and plain; the seeds draw independent subsets. On a 2-core CPU the two trainings of a
seed take about 40 min; ``--baseline_only`` skips them.
"""

import argparse
import csv
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

import numpy as np
import scipy.optimize

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

from benchmarks import harness  # pylint: disable=g-import-not-at-top
from configs import text_csv
from mhex_jax.data import text

DEFAULT_CSV = ROOT.parent / "shared" / "data" / "agnews" / "agnews.csv"
ROWS, SEED = 600, 0
_WORD = re.compile(r"(?u)\b\w\w+\b")


def stratified_subset(labels: np.ndarray, rows: int, seed: int) -> np.ndarray:
  """Sorted indices of ``rows`` examples, an equal share of each class, each class drawn by
  its own generator ``np.random.default_rng([seed, class])``."""
  classes = np.unique(labels)
  per_class = rows // len(classes)
  chosen = [np.random.default_rng([seed, int(c)]).permutation(np.flatnonzero(labels == c))
            [:per_class] for c in classes]
  return np.sort(np.concatenate(chosen))


def tfidf(train_texts, test_texts) -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's ``TfidfVectorizer()`` fitted on ``train_texts``: float64 [N, V] each."""
  tokens = [_WORD.findall(t.lower()) for t in train_texts]
  vocabulary = {w: i for i, w in enumerate(sorted({w for words in tokens for w in words}))}

  def counts(all_tokens):
    out = np.zeros((len(all_tokens), len(vocabulary)))
    for row, words in enumerate(all_tokens):
      for w in words:
        if w in vocabulary:
          out[row, vocabulary[w]] += 1
    return out

  train = counts(tokens)
  df = np.count_nonzero(train, axis=0)
  idf = np.log((1 + len(train)) / (1 + df)) + 1

  def normalised(x):
    x = x * idf
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1, norms)

  return normalised(train), normalised(counts([_WORD.findall(t.lower()) for t in test_texts]))


def logistic_regression(x: np.ndarray, y: np.ndarray, num_classes: int, c: float = 1.0):
  """scikit-learn's ``LogisticRegression(C=c)`` (multinomial, L2, unpenalised intercept):
  (W [V, K], b [K]) minimising C · Σ_i CE_i + ½‖W‖²."""
  n, v = x.shape
  onehot = np.eye(num_classes)[y]

  def loss_and_grad(flat):
    w, b = flat[:v * num_classes].reshape(v, num_classes), flat[v * num_classes:]
    logits = x @ w + b
    logits -= logits.max(axis=1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    loss = -c * np.sum(onehot * log_p) + 0.5 * np.sum(w * w)
    residual = c * (np.exp(log_p) - onehot)
    return loss, np.concatenate([(x.T @ residual + w).ravel(), residual.sum(axis=0)])

  result = scipy.optimize.minimize(loss_and_grad, np.zeros(v * num_classes + num_classes),
                                   jac=True, method="L-BFGS-B",
                                   options={"maxiter": 10_000, "gtol": 1e-6, "ftol": 1e-15})
  flat = result.x
  return flat[:v * num_classes].reshape(v, num_classes), flat[v * num_classes:]


def baseline_accuracy(texts, labels, train_idx, test_idx) -> float:
  """Held-out accuracy of TF-IDF + logistic regression at scikit-learn's defaults."""
  x_train, x_test = tfidf([texts[i] for i in train_idx], [texts[i] for i in test_idx])
  w, b = logistic_regression(x_train, labels[train_idx], int(labels.max()) + 1)
  return float(np.mean(np.argmax(x_test @ w + b, axis=1) == labels[test_idx]))


def write_subset(source: pathlib.Path, target: pathlib.Path, rows: int, seed: int) -> None:
  """The stratified subset of ``source`` (AG News' layout), its rows verbatim."""
  with open(source, encoding="utf-8", newline="") as f:
    all_rows = list(csv.reader(f))
  labels = np.asarray([int(r[0]) for r in all_rows])
  with open(target, "w", encoding="utf-8", newline="") as f:
    csv.writer(f, quoting=csv.QUOTE_ALL).writerows(
        all_rows[i] for i in stratified_subset(labels, rows, seed))


def train(arg: str, subset: pathlib.Path, workdir: pathlib.Path) -> dict:
  """``train.py --config=configs/text_csv.py{arg}`` with the path as its only flag; its
  train_result.json, the max_len it chose and the minutes it took."""
  start = time.time()
  with open(workdir.with_suffix(".log"), "w") as log:
    subprocess.run([sys.executable, "train.py", f"--config=configs/text_csv.py{arg}",
                    f"--config.data.path={subset}", f"--workdir={workdir}"], cwd=ROOT,
                   env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)},
                   stdout=log, stderr=subprocess.STDOUT, check=True)
  result = json.loads((workdir / "train_result.json").read_text())
  saved = json.loads((workdir / "config.json").read_text())
  return {"accuracy": result["accuracy"], "best_step": result.get("best_step"),
          "val_accuracy": result.get("val_accuracy"), "steps": result["step"],
          "max_len": saved["data"]["max_len"], "minutes": round((time.time() - start) / 60, 1)}


def markdown(results: dict) -> str:
  m = results["machine"]
  runs = sorted(results["runs"], key=lambda r: r["seed"])
  lines = [f"Stratified {results['rows']}-row subsets of the AG News CSV (one per seed), "
           f"held-out accuracy on each subset's {runs[0]['num_test']} test rows; the baseline "
           f"trained on the other {runs[0]['num_train']}, the models on 90% of them with 10% to "
           f"validate. {m['processor']} ({m['cpus']} CPUs), jax {m['jax']}.", "",
           "| seed | TF-IDF + logistic regression | MHEX-MiniLM | plain MiniLM | MHEX − plain | "
           "notes |", "|---|---|---|---|---|---|"]
  for run in runs:
    mhex, plain = run.get("mhex"), run.get("plain")
    cells = [f"{run['baseline']:.4f}"] + [f"{r['accuracy']:.4f}" if r else "" for r in (mhex, plain)]
    diff = f"{100 * (mhex['accuracy'] - plain['accuracy']):+.1f} pt" if mhex and plain else ""
    notes = "; ".join(f"{name}: max_len {r['max_len']}, best step {r['best_step']} of "
                      f"{r['steps']} (val {r['val_accuracy']:.4f}), {r['minutes']} min"
                      for name, r in (("MHEX", mhex), ("plain", plain)) if r)
    notes = "; ".join(filter(None, [notes, run["date"]]))
    lines.append(f"| {run['seed']} | {' | '.join(cells)} | {diff} | {notes} |")
  both = [r for r in runs if r.get("mhex") and r.get("plain")]
  if len(both) > 1:
    mean = lambda xs: sum(xs) / len(xs)
    diffs = [100 * (r["mhex"]["accuracy"] - r["plain"]["accuracy"]) for r in both]
    lines.append(f"| mean of {len(both)} | {mean([r['baseline'] for r in both]):.4f} | "
                 f"{mean([r['mhex']['accuracy'] for r in both]):.4f} | "
                 f"{mean([r['plain']['accuracy'] for r in both]):.4f} | "
                 f"{mean(diffs):+.1f} pt | per-seed differences from {min(diffs):+.1f} to "
                 f"{max(diffs):+.1f} pt |")
  lines += ["", "Models: configs/text_csv.py (MHEX) and configs/text_csv.py:plain, the subset's "
            "path as the only flag. TF-IDF + logistic regression: scikit-learn's defaults "
            "(C = 1), written out in this script."]
  return "\n".join(lines) + "\n"


def earlier_runs(out: pathlib.Path, seeds) -> list:
  """Runs of other seeds from an earlier text_baseline.json in OUT (each keeps its own date),
  so that one invocation per seed adds to the table instead of replacing it."""
  path = out / "text_baseline.json"
  if not path.exists():
    return []
  earlier = json.loads(path.read_text())
  if earlier.get("rows") != ROWS:
    return []
  if "runs" not in earlier:  # The one-seed layout of the first version.
    earlier["runs"] = [{key: earlier[key] for key in ("seed", "date", "num_train", "num_test",
                                                      "baseline", "mhex", "plain")
                        if key in earlier}]
  return [run for run in earlier["runs"] if run["seed"] not in seeds]


def run_seed(csv_path: pathlib.Path, work: pathlib.Path, seed: int, baseline_only: bool) -> dict:
  """One subset: written, split as the library splits it, the baseline and both trainings."""
  work.mkdir(parents=True, exist_ok=True)
  subset = work / f"agnews{ROWS}.csv"
  write_subset(csv_path, subset, ROWS, seed)
  data_config = text_csv.get_config().data
  data = text.load_csv(subset, label_column=data_config.label_column,
                       text_columns=data_config.text_columns, label_base=data_config.label_base,
                       has_header=data_config.has_header)
  train_idx, test_idx = text.stratified_split(data.labels,
                                              eval_fraction=data_config.eval_fraction,
                                              seed=data_config.split_seed)
  run = {"seed": seed, "date": time.strftime("%Y-%m-%d"), "num_train": len(train_idx),
         "num_test": len(test_idx),
         "baseline": baseline_accuracy(data.texts, data.labels, train_idx, test_idx)}
  print(f"seed {seed}: TF-IDF + logistic regression {run['baseline']:.4f}", flush=True)
  if not baseline_only:
    for key, arg in (("mhex", ""), ("plain", ":plain")):
      run[key] = train(arg, subset, work / key)
      print(f"seed {seed}, {key}: {run[key]}", flush=True)
  return run


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--csv", default=str(DEFAULT_CSV), help="An AG News CSV.")
  parser.add_argument("--work", default="", help="Where the subsets and workdirs go "
                                                 "(default: a new temporary directory).")
  parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
  parser.add_argument("--seeds", default=str(SEED),
                      help="Comma-separated subset seeds; runs of other seeds already in "
                           "OUT/text_baseline.json stay in the table.")
  parser.add_argument("--baseline_only", action="store_true", help="Skip the trainings.")
  args = parser.parse_args()
  seeds = [int(seed) for seed in args.seeds.split(",")]
  work = pathlib.Path(args.work or tempfile.mkdtemp(prefix="text_baseline_"))
  out = pathlib.Path(args.out)
  runs = earlier_runs(out, seeds)
  for seed in seeds:
    runs.append(run_seed(pathlib.Path(args.csv), work / f"seed{seed}", seed, args.baseline_only))
    results = {"machine": harness.machine(), "rows": ROWS, "runs": runs}
    harness.write_results(out, "text_baseline", results, markdown(results))
  print(markdown(results))


if __name__ == "__main__":
  main()
