r"""Explains your own images or texts with a trained workdir or a pretrained classifier.

    mhex-explain --workdir=DIR a.png b.jpg [--methods=mhex,grad_cam] [--target=predicted|CLASS]
    mhex-explain --workdir=DIR --text="A sentence." --text="Another one." [texts.txt]
    mhex-explain --model_init=HF_DIR a.png [--methods=all|grad_cam,...] [--out=OUT]
    mhex-explain --model_init=HF_DIR --text="A sentence." [texts.txt]

From a checkout, ``python explain.py ...`` runs the same. With ``--workdir``: reads the config
saved in the workdir, explains every image file (PNG/JPEG, any size: fitted as the model was
trained, maps drawn back over the original) or text (``--text``, a ``.txt`` file with one text
per line, or a ``.csv`` file laid out as the training data). With ``--model_init``: a Hugging
Face classifier checkpoint directory (or Hub id) explained as it is, untrained here: its own
classifier and id2label class names, its preprocessor_config.json (images) or tokenizer
(texts), every method the model takes unless ``--methods`` names some
(``explain_lib.from_pretrained``). Writes to ``--out`` (default DIR/explain, or ./explain for
``--model_init``): one overlay PNG per image and method, a captioned figure per image or
``texts.html``, the raw maps as ``.npz`` and ``explanations.json`` (predicted class name,
probability, files).
"""

import json
import time

from absl import app
from absl import flags
from absl import logging

from mhex_jax import cli
from mhex_jax import compile_cache
from mhex_jax import devices
from mhex_jax import explain_lib
from mhex_jax import files
from mhex_jax import host_allocator
from mhex_jax.cli import logs
from mhex_jax.data import text as text_data

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A workdir written by mhex-train (train.py).")
flags.DEFINE_string("model_init", None, "Instead of --workdir: a Hugging Face classifier "
                    "checkpoint directory (save_pretrained: config.json, model.safetensors, "
                    "preprocessor_config.json or tokenizer files) or Hub id, explained as it is.")
flags.DEFINE_list("methods", [], "Explainers (default: MHEX, or the best measured method of a "
                  "plain model; with --model_init every method the model takes); 'all' or any "
                  "names the model supports, e.g. mhex,grad_cam,layer_cam.")
flags.DEFINE_string("target", "predicted", "'predicted', or the class to explain (its number "
                    "or name).")
flags.DEFINE_multi_string("text", [], "A text to explain (repeat for several).")
flags.DEFINE_enum("fit", "crop", explain_lib.FITS, "How images meet a workdir model's square "
                  "input: the centred square, padding with the mean colour, or stretching "
                  "(--model_init: the checkpoint's preprocessor_config.json decides).")
flags.DEFINE_string("out", None, "Output directory (default: WORKDIR/explain, or ./explain "
                    "with --model_init).")
compile_cache.define_flags()


def _texts(paths: list[str], config) -> list[str]:
  """--text values, the lines of .txt files and the texts of CSV files in the training data's
  layout (the workdir's data.label_column, text_columns, ... read them)."""
  texts = list(FLAGS.text)
  for path in paths:
    if path.endswith(".csv") and FLAGS.model_init:
      raise app.UsageError(f"{path}: CSV files are read in a workdir's training-data layout; "
                           "with --model_init give --text=... or .txt files (one text per "
                           "line).")
    if path.endswith(".csv"):
      options = {k: config.data[k] for k in ("label_column", "text_columns", "label_base",
                                             "has_header", "class_names")}
      texts += text_data.load_csv(path, **options).texts
    else:
      lines = files.workdir_path(path).read_text(encoding="utf-8-sig").splitlines()
      texts += [line for line in lines if line.strip()]
  return texts


def main(argv):
  paths = argv[1:]
  compile_cache.enable_from_flags(FLAGS)
  host_allocator.keep_large_buffers()
  logs.quiet_library_logs()
  devices.log_backend()
  started = time.monotonic()
  run = _load()
  options = {"methods": FLAGS.methods or None, "target": FLAGS.target}
  if run.task.name == "text":
    bad = [p for p in paths if not p.endswith((".txt", ".csv"))]
    if bad:
      raise app.UsageError(f"{bad}: a text model explains --text=..., .txt files (one text "
                           "per line) or .csv files laid out as its training data.")
    results = run.explain_texts(_texts(paths, run.config), **options)
  else:
    if FLAGS.text:
      raise app.UsageError(f"--text is for text models; {_given()} holds an image model.")
    if not paths:
      raise app.UsageError(f"Give image files to explain: mhex-explain --{_given()} a.png ...")
    fit = None if FLAGS.model_init else FLAGS.fit
    results = run.explain_files(paths, fit=fit, **options)
  logging.info("Maps of %d inputs ready %.2f s after the model began loading.", len(results),
               time.monotonic() - started)
  out = FLAGS.out or (files.workdir_path(FLAGS.workdir) / "explain" if FLAGS.workdir
                      else "explain")
  path = explain_lib.write(results, out)
  for result in results:
    logging.info("%s: %s (p = %.3f)", result.source[:60], result.predicted_name,
                 result.probability)
  print(json.dumps({"explanations": str(path),
                    "results": [r.summary() for r in results]}, indent=2))


def _load() -> explain_lib.Run:
  """The model of --workdir or of --model_init (exactly one of them)."""
  if FLAGS.workdir and FLAGS.model_init:
    raise app.UsageError(f"--workdir={FLAGS.workdir} and --model_init={FLAGS.model_init} are "
                         "both given; explain a trained workdir or a pretrained checkpoint: "
                         "drop one.")
  if not FLAGS.workdir and not FLAGS.model_init:
    raise app.UsageError("Give --workdir=DIR (a run trained by train.py) or --model_init=DIR (a "
                         "Hugging Face classifier checkpoint, explained as it is).")
  if FLAGS.model_init:
    if FLAGS["fit"].present:
      raise app.UsageError(f"--fit={FLAGS.fit} is for workdir models; a pretrained model's "
                           "inputs are made by its preprocessor_config.json.")
    return explain_lib.from_pretrained(FLAGS.model_init)
  return explain_lib.load(FLAGS.workdir)


def _given() -> str:
  return f"model_init={FLAGS.model_init}" if FLAGS.model_init else f"workdir={FLAGS.workdir}"


def run():
  """The ``mhex-explain`` console script."""
  cli.run(main)
