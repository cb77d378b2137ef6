r"""Image folders (``data.name="folder"``) against the in-memory data they were written from.

    python -m benchmarks.folder_data --npz=PATH/pneumoniamnist.npz [--out=benchmarks/results] \
        [--quick]

Issue 31's acceptance figures for image folders, each measured through the library as a user
runs it (``train_lib.train_and_evaluate``, ``eval_lib.evaluate``, ``explain_lib``):

1. PneumoniaMNIST as 16-bit PNGs. The .npz's train and val splits are written as
   ``ROOT/{train,val}/{normal,pneumonia}/NNNNN.png``, 16-bit grayscale of values v × 257
   (NNNNN: the example's index in its split), and ``configs/resnet18_medmnist.py`` is trained
   once from the .npz and once from ROOT (``data.name=folder``, ``data.path=ROOT``; the rest of
   the recipe unchanged). Reported: both validation accuracies and their difference, and, before
   training, whether the folder's batches are the .npz's pixels (eval batches against the .npz's
   val images, and one epoch of augmented train batches against the .npz's train images in the
   folder's order, bit for bit). The folder lists its images class by class, so its shuffled
   batches are not the .npz's: the two runs differ by the order of the examples. Then
   ``explain_lib`` maps of the .npz-trained workdir on 8 of the 16-bit files against the same
   images as 8-bit PNGs: the largest absolute difference per method, for the methods
   ``explain.py`` runs by default and for every method ("all").
2. The synthetic shapes as a folder. ``configs/default.py`` trained 3 epochs, then evaluated
   twice: on its built-in test split, and on the same images written as 8-bit PNGs (split
   folders ``train``/``test``, one folder per class) with their masks as PNGs in a parallel
   folder (``data.mask_root``). Reported: accuracy, pointing game and energy pointing game of
   both, the largest difference, and the largest per-example difference (``per_example.npz``,
   matched by file name).
3. Reader throughput: images/s of one epoch of ``batches(..., train=True)`` (shuffle, augment,
   normalise) of the folder reader with 1 worker thread on 1 core (the process pinned with
   ``os.sched_setaffinity``) and 2 threads on 2 cores, beside ``InMemoryDataset`` (the .npz
   path) on the same images: PneumoniaMNIST's 28 px 16-bit PNGs (crop, batch 128), and 500
   256 px 16-bit PNGs (the 28 px images upsampled, with noise; flip, batch 32) read at 256 px
   and fitted to 128 px as ``configs/image_folder.py`` does. Median of interleaved rounds, with
   the process' CPU time per wall-clock second (2 cores used in full would be 2), and a control
   that releases the GIL (SHA-256 in 1 or 2 threads): on a shared machine it shows how much of
   the second core the process got.

Writes ``folder_data.{json,md}`` after every step, so a stopped run keeps what it measured;
``--only=synthetic`` (or pneumonia, throughput; comma-separated) reruns those parts and keeps
the others' figures from the files. ``--quick`` (about 2 min) uses 256 training images, 1
epoch and one throughput round.
"""

import argparse
import concurrent.futures
import copy
import hashlib
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time
from typing import Callable

import numpy as np
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

from benchmarks import harness  # pylint: disable=g-import-not-at-top
from configs import default as default_config
from configs import image_folder
from configs import resnet18_medmnist
from mhex_jax import eval_lib
from mhex_jax import explain_lib
from mhex_jax import train_lib
from mhex_jax.data import folder
from mhex_jax.data import input_pipeline
from mhex_jax.data import pipeline
from mhex_jax.data import synthetic

PARTS = ("throughput", "synthetic", "pneumonia")
CONTROL = ("control: SHA-256 of 16 MiB blocks in 1 or 2 threads (releases the GIL), MiB/s "
           "not images/s")
PNEUMONIA_CLASSES = ("normal", "pneumonia")
NUM_EXPLAINED = 8


def log(message: str) -> None:
  print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class Results:
  """The results so far, written out (json and markdown) whenever a figure is added."""

  def __init__(self, out: pathlib.Path, quick: bool, keep: bool):
    self.out = out
    self.data = {"pneumonia": {}, "synthetic": {}, "throughput": []}
    if keep and (out / "folder_data.json").exists():
      self.data.update(json.loads((out / "folder_data.json").read_text()))
    self.data.update(machine=harness.machine(), quick=quick)

  def save(self) -> None:
    harness.write_results(self.out, "folder_data", self.data, markdown(self.data))


# Writing the folders.


def load_npz(path: str, quick: bool) -> dict[str, dict[str, np.ndarray]]:
  """{split: {"image": uint8 [N, 28, 28], "label": int [N]}} of the train and val splits."""
  with np.load(path) as npz:
    splits = {s: {"image": npz[f"{s}_images"], "label": npz[f"{s}_labels"].reshape(-1)}
              for s in ("train", "val")}
  if quick:  # Evenly spaced: the file may be sorted by class.
    picks = {s: np.linspace(0, len(a["label"]) - 1, 256 if s == "train" else 128).astype(int)
             for s, a in splits.items()}
    splits = {s: {k: v[picks[s]] for k, v in a.items()} for s, a in splits.items()}
  return splits


def write_npz(path: pathlib.Path, splits) -> None:
  np.savez(path, **{f"{s}_images": a["image"] for s, a in splits.items()},
           **{f"{s}_labels": a["label"].reshape(-1, 1) for s, a in splits.items()})


def write_pneumonia_tree(root: pathlib.Path, splits) -> None:
  """Every image as a 16-bit PNG of values v × 257."""
  for split, arrays in splits.items():
    for i, (image, label) in enumerate(zip(arrays["image"], arrays["label"])):
      directory = root / split / PNEUMONIA_CLASSES[label]
      directory.mkdir(parents=True, exist_ok=True)
      Image.fromarray(image.astype(np.uint16) * 257).save(directory / f"{i:05d}.png")


def check_16_bit(path: pathlib.Path, original: np.ndarray) -> dict:
  """What a 16-bit file holds when read back: its PIL mode, dtype and whether it is v × 257."""
  with Image.open(path) as pil:
    mode = pil.mode
    pixels = np.asarray(pil)
  exact = pixels.dtype == np.uint16 and np.array_equal(pixels, original.astype(np.uint16) * 257)
  if not (mode.startswith("I;16") and exact):
    raise AssertionError(f"{path} reads back as mode {mode}, {pixels.dtype}, not the 16-bit "
                         "v × 257 it was written as.")
  return {"file": str(path.relative_to(path.parents[3])), "pil_mode": mode,
          "dtype": str(pixels.dtype), "values_v_times_257": exact,
          "max_value": int(pixels.max())}


def index_of(path: str) -> int:
  """An example's index in its split, from its file name NNNNN.png."""
  return int(os.path.splitext(os.path.basename(path))[0])


def max_diff(a, b) -> float:
  """The largest |a - b|, NaN where both are NaN counting as equal."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  diff = np.where(np.isnan(a) & np.isnan(b), 0.0, np.abs(a - b))
  return float(np.max(diff)) if diff.size else 0.0


# 1. PneumoniaMNIST: .npz against 16-bit PNGs.


def medmnist_configs(npz: str, tree: pathlib.Path, quick: bool):
  """configs/resnet18_medmnist.py reading the .npz, and the same reading the folder tree."""
  from_npz = resnet18_medmnist.get_config()
  from_npz.data.path = npz
  if quick:
    from_npz.train.num_epochs = 1
  from_folder = copy.deepcopy(from_npz)
  from_folder.data.name = "folder"
  from_folder.data.path = str(tree)  # train_split "train", eval_split "val", augment "crop".
  return from_npz, from_folder


def check_pneumonia_pixels(from_npz, from_folder) -> dict:
  """Whether the folder's eval batches are the .npz's val images, and its first epoch of
  augmented train batches the .npz's train images in the folder's order, bit for bit."""
  npz_train, npz_eval = input_pipeline.get_datasets(from_npz.data, 2)
  folder_train, folder_eval = input_pipeline.get_datasets(from_folder.data, 2)
  checks = {}
  order = [index_of(p) for p in folder_eval.listing.paths]
  batch = from_npz.eval.batch_size
  got = np.concatenate([b["image"] for b in folder_eval.batches(batch, train=False)])
  want = np.concatenate([b["image"] for b in npz_eval.batches(batch, train=False)])
  got_labels = np.concatenate([b["label"][b["valid"]]
                               for b in folder_eval.batches(batch, train=False)])
  n = len(order)
  checks["eval_images"] = n
  checks["eval_max_abs_diff"] = max_diff(got[:n], want[order])
  checks["eval_labels_equal"] = bool(np.array_equal(got_labels,
                                                    npz_eval.arrays["label"][order]))
  order = [index_of(p) for p in folder_train.listing.paths]
  reordered = input_pipeline.InMemoryDataset(
      {k: v[order] for k, v in npz_train.arrays.items()}, 2, tuple(from_npz.data.mean),
      tuple(from_npz.data.std), npz_train.augment)
  batch, diff, labels_equal, images = from_npz.train.batch_size, 0.0, True, 0
  for a, b in zip(folder_train.batches(batch, train=True, seed=0, epoch=0),
                  reordered.batches(batch, train=True, seed=0, epoch=0)):
    diff = max(diff, max_diff(a["image"], b["image"]))
    labels_equal &= bool(np.array_equal(a["label"], b["label"]))
    images += len(a["label"])
  checks.update(train_images_compared=images, train_epoch0_max_abs_diff=diff,
                train_labels_equal=labels_equal)
  return checks


def train(config, workdir: str) -> dict:
  """train_lib.train_and_evaluate's eval accuracy and steps, with the wall-clock time."""
  start = time.perf_counter()
  result = train_lib.train_and_evaluate(config, workdir)
  seconds = time.perf_counter() - start
  return {"accuracy": float(result["accuracy"]), "steps": int(result["step"]),
          "num_examples": int(result["num_examples"]), "seconds": round(seconds, 1),
          "seconds_per_step": round(seconds / max(int(result["step"]), 1), 3)}


def explain_parity(workdir: str, tree: pathlib.Path, splits, scratch: pathlib.Path,
                   quick: bool, out: dict, save) -> None:
  """explain_lib maps of NUM_EXPLAINED val images as 16-bit files against 8-bit files, into
  ``out``; ``save`` after the default methods and after all of them."""
  eight = scratch / "eight_bit"
  sixteen, originals = [], []
  per_class = NUM_EXPLAINED // len(PNEUMONIA_CLASSES)
  for label, name in enumerate(PNEUMONIA_CLASSES):
    for i in np.flatnonzero(splits["val"]["label"] == label)[:per_class]:
      sixteen.append(tree / "val" / name / f"{i:05d}.png")
      (eight / name).mkdir(parents=True, exist_ok=True)
      originals.append(eight / name / f"{i:05d}.png")
      Image.fromarray(splits["val"]["image"][i]).save(originals[-1])
  run = explain_lib.load(workdir)
  inputs = max(max_diff(run.prepare_image(explain_lib.read_image(a, intensity=run.intensity))[0],
                        run.prepare_image(explain_lib.read_image(b, intensity=run.intensity))[0])
               for a, b in zip(sixteen, originals))
  out.update(images=len(sixteen), default_methods=list(run.default_methods),
             model_input_max_abs_diff=inputs, methods={})
  for methods in (None, ("all",)) if not quick else (None,):
    a = run.explain_files([str(p) for p in sixteen], methods=methods)
    b = run.explain_files([str(p) for p in originals], methods=methods)
    out["probability_max_abs_diff"] = max(abs(x.probability - y.probability)
                                          for x, y in zip(a, b))
    out["same_predictions"] = all(x.predicted == y.predicted for x, y in zip(a, b))
    for method in a[0].maps:
      out["methods"][method] = max(max_diff(x.maps[method], y.maps[method])
                                   for x, y in zip(a, b))
    save()


def pneumonia(args, scratch: pathlib.Path, results: Results, parts: list[str]) -> None:
  """Writes the 16-bit tree and checks its pixels; then the 28 px throughput and the two
  trainings and explain_lib, as ``parts`` say."""
  section = results.data["pneumonia"]
  if "pneumonia" in parts:
    section.clear()
  splits = load_npz(args.npz, args.quick)
  npz = args.npz
  if args.quick:
    npz = str(scratch / "pneumonia_subset.npz")
    write_npz(pathlib.Path(npz), splits)
  tree = scratch / "pneumonia16"
  log(f"Writing {sum(len(a['label']) for a in splits.values())} 16-bit PNGs to {tree}")
  write_pneumonia_tree(tree, splits)
  first = splits["train"]
  section["read_back"] = check_16_bit(
      tree / "train" / PNEUMONIA_CLASSES[first["label"][0]] / "00000.png", first["image"][0])
  section["train_images"], section["val_images"] = (len(splits["train"]["label"]),
                                                    len(splits["val"]["label"]))
  from_npz, from_folder = medmnist_configs(npz, tree, args.quick)
  section["pixels"] = check_pneumonia_pixels(from_npz, from_folder)
  log(f"Pixels: {section['pixels']}")
  results.save()
  if "throughput" in parts:
    throughput_28(tree, splits, args, results)
  if "pneumonia" not in parts:
    return
  workdirs = {}
  for name, config in (("npz", from_npz), ("folder", from_folder)):
    workdirs[name] = str(scratch / f"pneumonia_{name}")
    log(f"Training configs/resnet18_medmnist.py from the {name} ({config.train.num_epochs} "
        f"epochs)")
    section[name] = train(config, workdirs[name])
    log(f"{name}: {section[name]}")
    results.save()
  section["accuracy_difference_points"] = round(
      100 * (section["folder"]["accuracy"] - section["npz"]["accuracy"]), 3)
  results.save()
  log("explain_lib: 16-bit files against 8-bit ones")
  section["explain"] = {}
  explain_parity(workdirs["npz"], tree, splits, scratch, args.quick, section["explain"],
                 results.save)
  log(f"explain: {section['explain']}")


# 2. The synthetic shapes as a folder with masks.


def write_synthetic_tree(root: pathlib.Path, masks: pathlib.Path, split: str,
                         arrays: dict[str, np.ndarray]) -> None:
  """``root/split/<class>/NNNNN.png`` (8-bit, NNNNN the index in ``arrays``), and the masks
  (0/255) at the same paths under ``masks``."""
  for i, (image, label) in enumerate(zip(arrays["image"], arrays["label"])):
    relative = pathlib.Path(split) / synthetic.CLASS_NAMES[label] / f"{i:05d}.png"
    (root / relative).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / relative)
    if "mask" in arrays:
      (masks / relative).parent.mkdir(parents=True, exist_ok=True)
      Image.fromarray(arrays["mask"][i].astype(np.uint8) * 255).save(masks / relative)


def synthetic_shapes(args, scratch: pathlib.Path, results: Results) -> None:
  """configs/default.py trained briefly, evaluated on the built-in test split and on the
  same images and masks as PNG folders."""
  section = results.data["synthetic"]
  config = default_config.get_config()
  config.train.num_epochs = 1 if args.quick else 3
  if args.quick:
    config.data.num_train, config.data.num_eval = 256, 64
  config.eval.num_explain = config.data.num_eval  # Every eval image: the same set either way.
  workdir = str(scratch / "synthetic")
  log(f"Training configs/default.py for {config.train.num_epochs} epochs "
      f"({config.data.num_train} images)")
  section["train"] = train(config, workdir)
  results.save()

  _, builtin_eval = input_pipeline.get_datasets(config.data, config.model.num_classes,
                                                need_train=False)
  root, masks = scratch / "shapes", scratch / "shapes_masks"
  # Evaluation lists a split layout's train folder too (for its classes): a few images.
  train_arrays = synthetic.make_split(64, image_size=config.data.image_size,
                                      seed=config.data.seed)
  write_synthetic_tree(root, masks, "train", {k: v for k, v in train_arrays.items()
                                              if k != "mask"})
  write_synthetic_tree(root, masks, config.data.eval_split, builtin_eval.arrays)
  from_folder = copy.deepcopy(config)
  from_folder.data.name = "folder"
  from_folder.data.path = str(root)
  from_folder.data.mask_root = str(masks)
  from_folder.data.as_rgb = True  # The folder reader's channels; the model takes 3.
  # The model's class order (folders are read in sorted order: circle, cross, square, ...).
  from_folder.data.class_names = synthetic.CLASS_NAMES

  _, folder_eval = input_pipeline.get_datasets(from_folder.data, config.model.num_classes,
                                               need_train=False)
  order = [index_of(p) for p in folder_eval.listing.paths]
  (batch,) = list(folder_eval.batches(len(order), train=False))
  (builtin,) = list(builtin_eval.batches(len(order), train=False))
  section["pixels"] = {
      "images": len(order),
      "image_max_abs_diff": max_diff(batch["image"], builtin["image"][order]),
      "masks_equal": bool(np.array_equal(batch["mask"], builtin["mask"][order])),
      "labels_equal": bool(np.array_equal(batch["label"], builtin["label"][order]))}
  log(f"Pixels: {section['pixels']}")
  results.save()

  reports, per_example = {}, {}
  for name, eval_config in (("builtin", config), ("folder", from_folder)):
    log(f"eval_lib.evaluate on the {name} data")
    report = eval_lib.evaluate(eval_config, workdir)
    with np.load(os.path.join(workdir, "eval", "per_example.npz")) as arrays:
      per_example[name] = {k: arrays[k] for k in arrays.files}
    mhex = report["methods"]["mhex"]
    reports[name] = {"accuracy": report["accuracy"], "num_examples": report["num_examples"],
                     "pointing_game": mhex["pointing_game"],
                     "energy_pointing_game": mhex["energy_pointing_game"]}
    section[name] = reports[name]
    results.save()
  keys = ("accuracy", "pointing_game", "energy_pointing_game")
  section["max_abs_diff"] = max(abs(reports["folder"][k] - reports["builtin"][k]) for k in keys)
  # Per example: the folder's example j is the built-in example order[j].
  per_metric = {}
  for key, values in per_example["folder"].items():
    if key.startswith("mhex/") and values.dtype != bool and values.ndim == 1:
      per_metric[key] = max_diff(values, per_example["builtin"][key][order])
  section["per_example_max_abs_diff"] = per_metric
  log(f"synthetic: {section}")
  results.save()


# 3. Reader throughput.


def pin(cpus: set[int]) -> None:
  """Every thread of the process (and the threads it starts later) on ``cpus``."""
  for tid in os.listdir("/proc/self/task"):
    try:
      os.sched_setaffinity(int(tid), cpus)
    except OSError:
      pass  # A thread that ended meanwhile.


def epoch(dataset, batch_size: int) -> Callable[[int], int]:
  """A case of `measure`: one epoch of ``dataset``'s train batches (the folder reader with
  ``threads`` worker threads); returns the number of images."""
  def run(threads: int) -> int:
    if isinstance(dataset, folder.FolderDataset):
      dataset.num_workers = threads
    return sum(len(b["label"]) for b in dataset.batches(batch_size, train=True, seed=0, epoch=0))
  return run


_BLOCK = os.urandom(16 << 20)


def hashing(threads: int) -> int:
  """The control case of `measure`: SHA-256 of 16 MiB blocks, which releases the GIL, 4 in
  every thread; returns MiB hashed. How much of its cores a process gets on a shared machine."""
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    list(pool.map(lambda _: hashlib.sha256(_BLOCK).digest(), range(4 * threads)))
  return 4 * threads * 16


def measure(cases: dict[str, Callable[[int], int]], rounds: int) -> dict[str, dict]:
  """{case: {cores: units/s and CPU s per wall s, median over rounds}}: every round runs every
  case with 1 thread on 1 core and with 2 threads on 2 cores, the order reversed in alternate
  rounds."""
  allowed = sorted(os.sched_getaffinity(0))
  settings = {"1": {allowed[0]}, str(len(allowed)): set(allowed)}
  runs = [(case, cores) for case in cases for cores in settings]
  rates, cpu = {run: [] for run in runs}, {run: [] for run in runs}
  try:
    for r in range(rounds + 1):  # Round 0 warms the page cache and the allocator.
      for case, cores in (runs if r % 2 == 0 else runs[::-1]):
        pin(settings[cores])
        start, cpu_start = time.perf_counter(), time.process_time()
        units = cases[case](len(settings[cores]))
        wall = time.perf_counter() - start
        if r:
          rates[(case, cores)].append(units / wall)
          cpu[(case, cores)].append((time.process_time() - cpu_start) / wall)
  finally:
    pin(set(allowed))
  out = {}
  for (case, cores), values in rates.items():
    out.setdefault(case, {})[cores] = {"median": statistics.median(values), "min": min(values),
                                       "max": max(values),
                                       "cpu_per_wall": statistics.median(cpu[(case, cores)])}
  return out


def folder_dataset(root: pathlib.Path, data_config, augment: tuple[str, ...]):
  listing = folder.list_classes(str(root))
  labels = folder.label_indices(listing, folder.class_order(listing.labels), "")
  return folder.FolderDataset(listing, labels, folder.class_order(listing.labels),
                              image_size=data_config.image_size, channels=1,
                              mean=tuple(data_config.mean), std=tuple(data_config.std),
                              augment=augment)


def throughput_28(tree: pathlib.Path, splits, args, results: Results) -> None:
  data = resnet18_medmnist.get_config().data
  augment = (data.augment,)
  batch = resnet18_medmnist.get_config().train.batch_size
  n = len(splits["train"]["label"])
  images = splits["train"]["image"][..., None]
  cases = {
      f"{n} PneumoniaMNIST train images, 28 px 16-bit PNG: folder reader, 28 px, crop":
          (epoch(folder_dataset(tree / "train", data, augment), batch), batch),
      f"the same {n} images as uint8 arrays: in-memory .npz path, 28 px, crop":
          (epoch(input_pipeline.InMemoryDataset(
              {"image": images, "label": splits["train"]["label"]}, 2, tuple(data.mean),
              tuple(data.std), augment), batch), batch)}
  log("Throughput, 28 px")
  rates = measure({c: run for c, (run, _) in cases.items()}, args.rounds)
  results.data["throughput"] += [{"case": c, "batch_size": cases[c][1], "images_per_s": r}
                                 for c, r in rates.items()]
  results.save()


def write_large(root: pathlib.Path, images: np.ndarray, labels: np.ndarray,
                size: int) -> np.ndarray:
  """``images`` (uint8 [N, 28, 28]) as 16-bit PNGs of ``size`` px (upsampled bicubic, with
  Gaussian noise of 1% of the range, as an exported X-ray has); returns them as uint8."""
  rng = np.random.default_rng(0)
  eight = np.empty((len(images), size, size), np.uint8)
  for i, (image, label) in enumerate(zip(images, labels)):
    small = Image.fromarray(image.astype(np.float32) / 255)
    big = np.asarray(small.resize((size, size), Image.BICUBIC))
    big = np.clip(big + rng.normal(0, 0.01, big.shape), 0, 1)
    sixteen = np.rint(big * 65535).astype(np.uint16)
    directory = root / PNEUMONIA_CLASSES[label]
    directory.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sixteen).save(directory / f"{i:05d}.png")
    eight[i] = np.rint(sixteen / 257).astype(np.uint8)
  return eight


def throughput_256(scratch: pathlib.Path, args, results: Results) -> None:
  train = load_npz(args.npz, args.quick)["train"]
  count = 64 if args.quick else 500
  pick = np.linspace(0, len(train["label"]) - 1, count).astype(int)  # Both classes.
  root = scratch / "large"
  log(f"Writing {count} 256 px 16-bit PNGs")
  labels = train["label"][pick]
  eight = write_large(root, train["image"][pick], labels, 256)
  # The folder lists class by class; the arrays hold the same images in the same order.
  order = np.argsort(labels, kind="stable")
  config = image_folder.get_config()
  data, batch = config.data, config.train.batch_size
  augment = (data.augment,)
  cases = {}
  for size in (256, data.image_size):
    data = copy.deepcopy(config.data)
    data.image_size = size
    cases[f"{count} 256 px 16-bit PNGs: folder reader, {size} px, flip"] = (
        epoch(folder_dataset(root, data, augment), batch), batch)
    arrays = eight[order][..., None]
    if size != 256:
      arrays = pipeline.resize_images(arrays, size)  # As the .npz path resizes at load.
    cases[f"the same as uint8 arrays: in-memory .npz path, {size} px, flip"] = (
        epoch(input_pipeline.InMemoryDataset({"image": arrays, "label": labels[order]}, 2,
                                             tuple(data.mean), tuple(data.std), augment),
              batch), batch)
  cases[CONTROL] = (hashing, None)
  log("Throughput, 256 px")
  rates = measure({c: run for c, (run, _) in cases.items()}, args.rounds)
  results.data["throughput"] += [{"case": c, "batch_size": cases[c][1], "images_per_s": r}
                                 for c, r in rates.items()]
  results.save()


# The report.


def markdown(data: dict) -> str:
  machine = data["machine"]
  lines = [f"# Image folders{' (--quick)' if data['quick'] else ''}", "",
           f"Measured on {machine['processor']} ({machine.get('cpus', '?')} CPUs), "
           f"jax {machine['jax']}, `python -m benchmarks.folder_data`.", ""]
  p = data["pneumonia"]
  if p:
    lines += ["## PneumoniaMNIST: .npz against 16-bit PNGs", ""]
    if "read_back" in p:
      r = p["read_back"]
      lines.append(f"{p['train_images']} train and {p['val_images']} val images written as "
                   f"16-bit PNGs; `{r['file']}` reads back as PIL mode {r['pil_mode']}, "
                   f"{r['dtype']}, values v × 257: {r['values_v_times_257']}.")
    if "pixels" in p:
      x = p["pixels"]
      lines.append(f"Folder batches against the .npz: eval images max |diff| "
                   f"{x['eval_max_abs_diff']:g} ({x['eval_images']} images, labels equal: "
                   f"{x['eval_labels_equal']}); epoch 0 of augmented train batches against the "
                   f".npz arrays in the folder's order, max |diff| "
                   f"{x['train_epoch0_max_abs_diff']:g} ({x['train_images_compared']} images, "
                   f"labels equal: {x['train_labels_equal']}).")
    lines.append("")
    rows = [(n, p[n]) for n in ("npz", "folder") if n in p]
    if rows:
      lines += ["The same images and recipe; the folder lists its images class by class "
                "(normal first), so its shuffled batches differ from the .npz's: the two runs "
                "differ by the order of the examples only.", ""]
      lines += ["| data | val accuracy | steps | s/step | wall s |", "|---|---|---|---|---|"]
      lines += [f"| {n} | {r['accuracy']:.4f} | {r['steps']} | {r['seconds_per_step']} | "
                f"{r['seconds']} |" for n, r in rows]
      if "accuracy_difference_points" in p:
        lines.append(f"| folder − npz | {p['accuracy_difference_points']:+.2f} points | | | |")
      lines.append("")
    if "explain" in p and "methods" in p["explain"]:
      e = p["explain"]
      lines += [f"explain_lib on {e['images']} val images, 16-bit files against 8-bit files "
                f"(default methods: {', '.join(e['default_methods'])}): model inputs max "
                f"|diff| {e['model_input_max_abs_diff']:g}, probabilities "
                f"{e.get('probability_max_abs_diff', float('nan')):g}, same predictions: "
                f"{e.get('same_predictions')}.", "", "| method | max abs diff of the maps |",
                "|---|---|"]
      lines += [f"| {m} | {v:g} |" for m, v in e["methods"].items()]
      lines.append("")
  s = data["synthetic"]
  if s:
    lines += ["## Synthetic shapes: built-in against a folder with masks", ""]
    if "train" in s:
      lines.append(f"configs/default.py trained {s['train']['steps']} steps "
                   f"({s['train']['seconds']} s).")
    if "pixels" in s:
      x = s["pixels"]
      lines.append(f"Folder eval batch against the built-in one: {x['images']} images, max "
                   f"|diff| {x['image_max_abs_diff']:g}, masks equal: {x['masks_equal']}, "
                   f"labels equal: {x['labels_equal']}.")
    lines.append("")
    rows = [(n, s[n]) for n in ("builtin", "folder") if n in s]
    if rows:
      lines += ["| data | accuracy | MHEX pointing game | MHEX energy pointing game |",
                "|---|---|---|---|"]
      lines += [f"| {n} | {r['accuracy']:.6f} | {r['pointing_game']:.6f} | "
                f"{r['energy_pointing_game']:.6f} |" for n, r in rows]
      lines.append("")
    if "max_abs_diff" in s:
      per = s["per_example_max_abs_diff"]
      lines.append(f"Largest difference of the three: {s['max_abs_diff']:g}; per example "
                   f"(matched by file name), largest over {len(per)} MHEX metrics: "
                   f"{max(per.values(), default=0):g}.")
      lines.append("")
  t = data["throughput"]
  if t:
    cores = sorted({c for row in t for c in row["images_per_s"]})
    lines += ["## Reader throughput (images/s, one epoch of train batches, median of rounds)",
              "", "| images, reader, output | batch | " + " | ".join(
                  f"{c} core{'s' if c != '1' else ''}" for c in cores) + " |",
              "|---|---|" + "---|" * len(cores)]
    for row in t:
      cells = [f"{row['images_per_s'][c]['median']:,.0f} "
               f"({row['images_per_s'][c].get('cpu_per_wall', float('nan')):.2f})"
               for c in cores]
      lines.append(f"| {row['case']} | {row['batch_size'] or ''} | " + " | ".join(cells) +
                   " |")
    lines += ["", "In brackets: the process' CPU seconds per wall-clock second (2 cores in full "
              "use: 2.00; the control row shows how much of them the machine gave). Folder "
              "reader: 1 worker thread on 1 core, 2 threads on 2 cores (the process pinned with "
              "os.sched_setaffinity); the in-memory path is one thread."]
  return "\n".join(lines) + "\n"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--npz", default=str(ROOT.parent / "shared" / "data" / "pneumoniamnist"
                                           / "pneumoniamnist.npz"))
  parser.add_argument("--quick", action="store_true",
                      help="256 training images, 1 epoch, one throughput round.")
  parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
  parser.add_argument("--rounds", type=int, default=None)
  parser.add_argument("--only", default="",
                      help="Comma-separated parts to rerun (pneumonia, synthetic, throughput); "
                           "the others' figures are kept from --out's folder_data.json.")
  args = parser.parse_args()
  args.rounds = args.rounds or (1 if args.quick else 5)
  parts = [p.strip() for p in args.only.split(",") if p.strip()] or list(PARTS)
  unknown = sorted(set(parts) - set(PARTS))
  if unknown:
    parser.error(f"--only={args.only}: unknown part(s) {unknown}; use {', '.join(PARTS)}.")
  results = Results(pathlib.Path(args.out), args.quick, keep=bool(args.only))
  with tempfile.TemporaryDirectory() as directory:
    scratch = pathlib.Path(directory)
    if "throughput" in parts:
      results.data["throughput"] = []
      throughput_256(scratch, args, results)
    if "synthetic" in parts:
      results.data["synthetic"] = {}
      synthetic_shapes(args, scratch, results)
    if {"pneumonia", "throughput"} & set(parts):
      pneumonia(args, scratch, results, parts)
  print(markdown(results.data))


if __name__ == "__main__":
  main()
