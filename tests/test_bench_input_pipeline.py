"""benchmarks/input_pipeline.py: its JPEGs are ImageNet-sized, grain's batches are ours (a
pure function of seed, epoch and index, whatever the number of workers), and a tiny run gives
well-formed rows. The rates themselves are measured by the command, never asserted here."""

import io
import math
import pathlib

import numpy as np
from PIL import Image
import pytest

from benchmarks import input_pipeline


def _source(directory: pathlib.Path, num: int) -> input_pipeline.JpegSource:
  input_pipeline.write_jpegs(directory, num)
  return input_pipeline.JpegSource(directory, num)


def test_jpegs_are_imagenet_sized_and_decode(tmp_path):
  sizes = input_pipeline.write_jpegs(tmp_path, 3)
  assert all(40_000 < size < 160_000 for size in sizes), sizes
  for i, size in enumerate(sizes):
    data = (tmp_path / f"{i:06d}.jpg").read_bytes()
    assert len(data) == size
    with Image.open(io.BytesIO(data)) as image:
      assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (500, 375))
  example = input_pipeline.JpegSource(tmp_path, 3)[2]
  assert example["image"].shape == (375, 500, 3) and example["image"].dtype == np.uint8
  assert example["image"].std() > 20  # Decoded pixels, not a flat field.
  assert example["label"] == 2


def test_grain_batches_are_ours(tmp_path):
  pytest.importorskip("grain", reason="grain is not installed (pip install grain==0.2.18)")
  source = _source(tmp_path, 12)
  options = {"batch_size": 4, "image_size": 32, "seed": 1}
  ours = list(input_pipeline.threaded_batches(source, epoch=2, workers=2, **options))
  assert len(ours) == 3
  # In this process, and in two worker processes that split the batches between them.
  for workers in (0, 2):
    theirs = list(input_pipeline.grain_batches(source, epoch=2, workers=workers, **options))
    assert len(theirs) == len(ours)
    for a, b in zip(ours, theirs):
      np.testing.assert_array_equal(a["label"], b["label"])
      np.testing.assert_array_equal(a["image"], b["image"])
    del theirs  # grain's shared-memory arrays are freed with their last reference.
  # The epoch reaches the crops: another epoch gives other images of the same examples.
  first = next(input_pipeline.grain_batches(source, epoch=3, workers=0, **options))
  again = input_pipeline.AugmentedExample(source, 1, 2, 32)(int(first["label"][0]))
  assert not np.array_equal(first["image"][0], again["image"])


def test_tiny_run_gives_well_formed_rows():
  side = {}
  rows = input_pipeline.pipeline_rows(8, 1, workers=(1,), use_grain=False, batch_size=2,
                                      image_size=32, side=side)
  assert [row["method"] for row in rows] == ["ours: make_iterator, 1 thread, 1 core"]
  row = rows[0]
  assert row["baseline"] == row["method"] and row["median"] == 1.0 and row["rounds"] == 1
  assert row["images_per_s"] > 0 and math.isfinite(row["images_per_s"])
  assert row["images_per_s_min"] <= row["images_per_s"] <= row["images_per_s_max"]
  assert row["first_batch_s"] > 0 and row["epoch_images_per_s"] > 0
  assert side["control_mib_per_s"]["1"] > 0
  # Decoding and resizing release the GIL, and some of the work does not.
  gil = side["gil"]
  assert 0 < gil["gil_held_ms_per_image"] < gil["cpu_ms_per_image"]
  (summary,) = input_pipeline.host_cores(rows, gil)
  need = input_pipeline.TRAINING_IMAGES / (14.6 * 3600)
  assert round(need) == 7313  # The README's "about 7,300 images/s" on the v5e-8.
  assert summary["TPU v5e-8"]["cores"] == math.ceil(need / row["images_per_s"])
  assert summary["TPU v5e-8"]["processes"] == math.ceil(need / gil["one_process_images_per_s"])
  assert summary["TPU v5e-8"]["cores_at_cpu_cost"] == math.ceil(
      need * gil["cpu_ms_per_image"] / 1e3)
  table = input_pipeline.markdown({"machine": {"processor": "cpu", "cpus": "2"},
                                   "rounds": 1, "num_images": 8, "rows": rows, **side,
                                   "host_cores": [summary], "notes": []})
  assert "| ours: make_iterator, 1 thread, 1 core |" in table and "linearly" in table
