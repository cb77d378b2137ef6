"""Explaining one's own files: the fitting of any image to the model's input and back, the
library calls on a trained workdir, explain.py, and eval.py with the workdir's saved config."""

import json
import os
import re
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from mhex_jax import explain_lib
from mhex_jax import model_lib
from mhex_jax import train_lib
from mhex_jax import workdir as workdir_lib
from mhex_jax.data import synthetic
from mhex_jax.explain import registry
from test_eval import _image_config, _text_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("fit", explain_lib.FITS)
@pytest.mark.parametrize("shape", [(40, 64, 3), (70, 30, 1), (32, 32, 3)])
def test_fitting_then_mapping_back_gives_the_image_again(fit, shape):
  """Treating a channel of the fitted input as a map and carrying it back onto the original
  recovers the original inside the covered box (up to resampling) and 0 outside."""
  config = _image_config()
  config.data.mean, config.data.std = (0.0,), (1.0,)
  run = explain_lib.Run(config, model_lib.create_model(config), None, "")
  y, x = np.mgrid[:shape[0], :shape[1]]
  smooth = (127 + 100 * np.sin(y / 9.0) * np.cos(x / 7.0)).astype(np.uint8)
  image = np.repeat(smooth[..., None], shape[2], axis=-1)
  fitted, box = run.prepare_image(image, fit)
  assert fitted.shape == (16, 16, 3)
  back = explain_lib._to_original(fitted[..., 0], box, shape[:2])
  assert back.shape == shape[:2]
  left, top, right, bottom = box
  inside = ((y + 0.5 >= top) & (y + 0.5 <= bottom) & (x + 0.5 >= left) & (x + 0.5 <= right))
  if fit == "crop" and shape[0] != shape[1]:
    assert not inside.all()
  else:
    assert inside.all()
  assert np.all(back[~inside] == 0)
  # Downsampling to 16 px then back loses detail: compare with a tolerance.
  assert np.mean(np.abs(back[inside] - smooth[inside] / 255.0)) < 0.06


def _write_images(directory):
  arrays = synthetic.make_split(2, image_size=48, seed=5)["image"]
  Image.fromarray(arrays[0]).save(directory / "a.png")
  Image.fromarray(arrays[1]).resize((80, 50)).save(directory / "b.jpg")
  return [str(directory / "a.png"), str(directory / "b.jpg")]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("explain") / "run")
  train_lib.train_and_evaluate(_image_config(), path)
  return path


def test_library_explains_files_of_any_size(workdir, tmp_path):
  paths = _write_images(tmp_path)
  run = explain_lib.load(workdir)  # The config saved in the workdir.
  assert run.classes == list(synthetic.CLASS_NAMES) and run.default_methods == ("mhex",)
  results = run.explain_files(paths, methods=("mhex", "grad_cam"))
  assert [r.maps["mhex"].shape for r in results] == [(48, 48), (50, 80)]
  for result, path in zip(results, paths):
    assert result.source == path and result.predicted_name == run.classes[result.predicted]
    for saliency in result.maps.values():
      assert saliency.min() >= 0 and saliency.max() <= 1
  # The maps are the registry's maps of the fitted inputs, carried back.
  fitted, box = run.prepare_image(explain_lib.read_image(paths[1]), "crop")
  batch = jnp.asarray(fitted[None])
  logits = run.model.apply(run.variables, batch, train=False)[-1]
  probabilities = np.asarray(jnp.exp(logits - logits.max()) / jnp.exp(logits - logits.max()).sum())
  np.testing.assert_allclose(results[1].probability, probabilities.max(), rtol=1e-5)
  expected = registry.explainer("grad_cam", run.model)(run.variables, batch,
                                                       jnp.asarray([results[1].target]))
  np.testing.assert_allclose(results[1].maps["grad_cam"],
                             explain_lib._to_original(np.asarray(expected[0]), box, (50, 80)),
                             atol=1e-5)
  # A class given by name is the one explained.
  named = run.explain_files(paths[:1], target="square")
  assert named[0].target_name == "square" and named[0].target == 1
  with pytest.raises(ValueError, match="target 'hexagon' is not a class"):
    run.explain_files(paths[:1], target="hexagon")
  with pytest.raises(ValueError, match=r"Methods \['attcat'\] are not available"):
    run.explain_files(paths[:1], methods=("attcat",))


def test_explain_command_writes_overlays_at_the_files_sizes(workdir, tmp_path):
  paths = _write_images(tmp_path)
  out = tmp_path / "out"

  def explain(out):
    result = subprocess.run(
        [sys.executable, "explain.py", f"--workdir={workdir}", *paths,
         "--methods=mhex,grad_cam,layer_cam", f"--out={out}",
         f"--compilation_cache_dir={tmp_path / 'cache'}"], cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = re.search(r"Compilation cache .*: (\d+) programs read back, (\d+) compiled\.",
                       result.stderr)
    assert counts, result.stderr[-3000:]
    return int(counts.group(1)), int(counts.group(2))

  read_back, compiled = explain(out)
  assert read_back == 0 and compiled > 0
  # A second invocation compiles nothing: every program comes from the persistent cache, and
  # the maps are the same.
  assert explain(tmp_path / "again") == (compiled, 0)
  entries = json.loads((out / "explanations.json").read_text())
  np.testing.assert_array_equal(np.load(out / entries[0]["maps"])["mhex"],
                                np.load(tmp_path / "again" / entries[0]["maps"])["mhex"])
  assert [e["source"] for e in entries] == paths
  for entry, size in zip(entries, [(48, 48), (80, 50)]):
    assert entry["predicted_name"] in synthetic.CLASS_NAMES and 0 < entry["probability"] <= 1
    assert list(entry["overlays"]) == ["mhex", "grad_cam", "layer_cam"]
    for overlay in entry["overlays"].values():
      assert Image.open(out / overlay).size == size
    maps = np.load(out / entry["maps"])
    assert sorted(maps) == ["grad_cam", "layer_cam", "mhex"]
    assert maps["mhex"].shape == size[::-1]


def test_eval_defaults_to_the_saved_config_and_names_mismatches(workdir):
  result = subprocess.run(
      [sys.executable, "eval.py", f"--workdir={workdir}", "--config.eval.num_explain=4",
       "--config.eval.deletion_steps=2", "--config.eval.methods=mhex"], cwd=ROOT,
      env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(open(os.path.join(workdir, "eval", "report.json")).read())
  assert report["methods"]["mhex"]["num_examples"] == 4
  config = _image_config()
  config.model.width = 8
  config.train.optimizer = "adamw"  # Eval reads no optimizer state: not a difference.
  with pytest.raises(ValueError, match=r"with: model.width: 4 in the workdir, 8 here\. Leave"):
    workdir_lib.check_model(config, workdir)


def test_library_explains_texts(tmp_path):
  config = _text_config(tmp_path)
  workdir = str(tmp_path / "text")
  train_lib.train_and_evaluate(config, workdir)
  run = explain_lib.load(workdir)
  results = run.explain_texts(["stocks fell on the mat .", "the cat sat"],
                              methods=("mhex", "attcat"))
  for result in results:
    assert result.tokens[0] == "[CLS]" and result.tokens[-1] == "[SEP]"
    for scores in result.maps.values():
      assert scores.shape == (len(result.tokens),)
      assert scores[0] == scores[-1] == 0 and scores.max() == pytest.approx(1.0)
  path = explain_lib.write(results, tmp_path / "out")
  entries = json.loads(open(path).read())
  assert entries[1]["tokens"] == ["[CLS]", "the", "cat", "sat", "[SEP]"]
  page = (tmp_path / "out" / "texts.html").read_text()
  assert "<i>attcat</i>" in page and "stocks" in page
  with pytest.raises(ValueError, match="empty or not strings at positions \\[1\\]"):
    run.explain_texts(["fine", "  "])
