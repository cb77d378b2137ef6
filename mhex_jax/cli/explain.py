r"""Explains your own images or texts with a trained workdir.

    mhex-explain --workdir=DIR a.png b.jpg [--methods=mhex,grad_cam] [--target=predicted|CLASS]
    mhex-explain --workdir=DIR --text="A sentence." --text="Another one." [texts.txt]

From a checkout, ``python explain.py ...`` runs the same. Reads the config saved in the workdir,
explains every image file (PNG/JPEG, any size: fitted as the model was trained, maps drawn back
over the original) or text (``--text``, a ``.txt`` file with one text per line, or a ``.csv``
file laid out as the training data) and writes to
``--out`` (default DIR/explain): one overlay PNG per image or ``texts.html``, the raw maps as
``.npz`` and ``explanations.json`` (predicted class name, probability, files).
"""

import json
import time

from absl import app
from absl import flags
from absl import logging

from mhex_jax import cli
from mhex_jax import compile_cache
from mhex_jax import explain_lib
from mhex_jax import files
from mhex_jax import host_allocator
from mhex_jax.cli import logs
from mhex_jax.data import text as text_data

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A workdir written by mhex-train (train.py).")
flags.DEFINE_list("methods", [], "Explainers (default: MHEX, or the best measured method of a "
                  "plain model); any name the model supports, e.g. mhex,grad_cam,layer_cam.")
flags.DEFINE_string("target", "predicted", "'predicted', or the class to explain (its number "
                    "or name).")
flags.DEFINE_multi_string("text", [], "A text to explain (repeat for several).")
flags.DEFINE_enum("fit", "crop", explain_lib.FITS, "How images meet the model's square input: "
                  "the centred square, padding with the mean colour, or stretching.")
flags.DEFINE_string("out", None, "Output directory (default: WORKDIR/explain).")
flags.mark_flag_as_required("workdir")
compile_cache.define_flags()


def _texts(paths: list[str], config) -> list[str]:
  """--text values, the lines of .txt files and the texts of CSV files in the training data's
  layout (the workdir's data.label_column, text_columns, ... read them)."""
  texts = list(FLAGS.text)
  for path in paths:
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
  started = time.monotonic()
  run = explain_lib.load(FLAGS.workdir)
  options = {"methods": FLAGS.methods or None, "target": FLAGS.target}
  if run.task.name == "text":
    bad = [p for p in paths if not p.endswith((".txt", ".csv"))]
    if bad:
      raise app.UsageError(f"{bad}: a text model explains --text=..., .txt files (one text "
                           "per line) or .csv files laid out as its training data.")
    results = run.explain_texts(_texts(paths, run.config), **options)
  else:
    if FLAGS.text:
      raise app.UsageError("--text is for text models; this workdir holds an image model.")
    if not paths:
      raise app.UsageError("Give image files to explain: mhex-explain --workdir=DIR a.png ...")
    results = run.explain_files(paths, fit=FLAGS.fit, **options)
  logging.info("Maps of %d inputs ready %.2f s after the workdir began loading.", len(results),
               time.monotonic() - started)
  out = FLAGS.out or files.workdir_path(FLAGS.workdir) / "explain"
  path = explain_lib.write(results, out)
  for result in results:
    logging.info("%s: %s (p = %.3f)", result.source[:60], result.predicted_name,
                 result.probability)
  print(json.dumps({"explanations": str(path),
                    "results": [r.summary() for r in results]}, indent=2))


def run():
  """The ``mhex-explain`` console script."""
  cli.run(main)
