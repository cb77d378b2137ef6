r"""ImageNet input pipeline throughput: JPEG decode + random-resized crop + flip, images/s.

    python -m benchmarks.input_pipeline [--num=256] [--rounds=3] [--workers=1,2] \
        [--out=benchmarks/results]

Writes OUT/input_pipeline.{json,md}. The benchmark writes ``--num`` ImageNet-sized JPEGs
(500×375, quality 90, smooth colour fields plus noise: 60–110 KB, as ImageNet's are) to a
temporary folder and reads them back as a tfds data source does (file bytes -> PIL decode), so
both readers do the work of an ImageNet epoch at 224²:

  * ours: ``mhex_jax.data.imagenet.make_iterator`` itself (its thread pool, the source swapped
    for the JPEG folder), W threads on W cores for each W of ``--workers``;
  * grain (when installed): the same per-example work (`AugmentedExample`) in
    ``grain.MapDataset`` with ``mp_prefetch``, W worker processes on W cores.

Both give the same batches: the order is `pipeline.batch_indices`' and example i's crop and
flip are drawn from ``np.random.default_rng([seed, epoch, i])``. The process (and the workers
it starts) is pinned to the cores with ``os.sched_setaffinity``. Each round reads one epoch
with every reader in turn (the order reversed in alternate rounds, after an untimed warm-up
round); the rate is the steady one, from the arrival of the first batch of every worker to the
last batch, so grain's worker start-up (reported apart, as "first batch") is left out: it is
paid once an epoch, and an ImageNet epoch is 80,000 of these batches of 16. A control (SHA-256
in 1 and W threads) shows how much of the cores a shared machine left us. `gil_bound`
measures, in CPU time, the part of ours' work that holds the GIL, which bounds what one
process' threads can reach on any number of cores. Also reported: the host cores the training
rates of benchmarks/README.md ("Scale on paper") would need at the measured 1-core rate,
assuming linear scaling.
"""

import argparse
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import io
import math
import os
import pathlib
import statistics
import sys
import tempfile
import threading
import time
from typing import Iterator
from unittest import mock

import numpy as np
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

from benchmarks import harness  # pylint: disable=g-import-not-at-top
from mhex_jax.data import imagenet
from mhex_jax.data import pipeline

try:
  import grain  # pylint: disable=g-import-not-at-top
except ImportError as _error:
  grain, GRAIN_MISSING = None, f"grain rows left out: {_error} (pip install grain==0.2.18)."
else:
  GRAIN_MISSING = None

WIDTH, HEIGHT, QUALITY = 500, 375, 90
# Small batches: a worker's head start before the timed part is at most about a batch.
IMAGE_SIZE, BATCH_SIZE = 224, 16
GROUP = "ImageNet input pipeline, images/s"
# benchmarks/README.md, "Scale on paper": 300 epochs of ImageNet-1k in these many hours.
TRAINING_IMAGES = 1_281_167 * 300
TRAINING_HOURS = {"TPU v5e-8": 14.6, "8×H100": 3.6}


def write_jpegs(directory: pathlib.Path, num: int, seed: int = 0) -> list[int]:
  """``num`` RGB JPEGs ``directory/NNNNNN.jpg`` (500×375, quality 90); returns their bytes.

  A bicubic-smooth colour field at two scales plus pixel noise of 8–24 grey levels: the noise
  sets the entropy the decoder works through, here 60–110 KB a file as in ImageNet.
  """
  rng = np.random.default_rng(seed)
  sizes = []
  for i in range(num):
    field = _smooth(rng.uniform(0, 255, (6, 8, 3))) + _smooth(rng.normal(0, 30, (47, 63, 3)))
    noisy = field + rng.normal(0, rng.uniform(8, 24), field.shape)
    encoded = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(encoded, "JPEG",
                                                                 quality=QUALITY)
    sizes.append((directory / f"{i:06d}.jpg").write_bytes(encoded.getvalue()))
  return sizes


def _smooth(cells: np.ndarray) -> np.ndarray:
  """[h, w, 3] float -> [HEIGHT, WIDTH, 3], bicubic."""
  return np.stack([np.asarray(Image.fromarray(cells[..., c].astype(np.float32)).resize(
      (WIDTH, HEIGHT), Image.BICUBIC)) for c in range(3)], axis=-1)


@dataclasses.dataclass(frozen=True)
class JpegSource:
  """A folder of `write_jpegs` read as ``tfds.data_source("imagenet2012")`` reads its records:
  ``source[i]`` is {"image": uint8 [H, W, 3], "label": int}, decoded with PIL as tfds does
  without OpenCV (tfds' protobuf parsing of the record is not modelled)."""
  directory: pathlib.Path
  num: int

  def __len__(self) -> int:
    return self.num

  def __getitem__(self, index: int) -> dict:
    data = (self.directory / f"{int(index):06d}.jpg").read_bytes()
    with Image.open(io.BytesIO(data)) as image:
      pixels = np.asarray(image, dtype=np.uint8)
    return {"image": pixels, "label": int(index) % imagenet.NUM_CLASSES}


def threaded_batches(source: JpegSource, *, batch_size: int, image_size: int, seed: int,
                     epoch: int, workers: int) -> Iterator[dict[str, np.ndarray]]:
  """``imagenet.make_iterator``'s train batches, reading ``source`` in place of tfds'."""
  with mock.patch.object(imagenet, "_data_source", lambda split, data_dir: source):
    yield from imagenet.make_iterator(
        "train", batch_size=batch_size, image_size=image_size, train=True, seed=seed,
        epoch=epoch, num_workers=workers, process_index=0, process_count=1)


@dataclasses.dataclass(frozen=True)
class AugmentedExample:
  """index -> make_iterator's train example ``index``: the same decode, crop and flip, drawn
  from ``np.random.default_rng([seed, epoch, index])``; a pure function for grain's workers."""
  source: JpegSource
  seed: int
  epoch: int
  image_size: int

  def __call__(self, index: int) -> dict[str, np.ndarray]:
    image, label = imagenet.ExampleLoader(self.source, self.image_size, True, self.seed,
                                          self.epoch)(index)
    return {"image": image, "label": np.int32(label)}


def grain_batches(source: JpegSource, *, batch_size: int, image_size: int, seed: int,
                  epoch: int, workers: int) -> Iterator[dict[str, np.ndarray]]:
  """The same batches as `threaded_batches` from grain, in ``workers`` processes (0: in this
  one)."""
  order = [int(i) for indices, _ in pipeline.batch_indices(
      len(source), batch_size, shuffle=True, seed=seed, epoch=epoch, drop_remainder=True)
           for i in indices]
  # Batched before mp_prefetch splits the dataset: worker w makes whole batches w, w + W, ...,
  # so no batch depends on the number of workers.
  dataset = grain.MapDataset.source(order).map(
      AugmentedExample(source, seed, epoch, image_size)).batch(batch_size, drop_remainder=True)
  # One thread a worker: processes, one per core, are the parallelism (the work holds the GIL
  # between PIL calls), and a deeper read-ahead would only blur the timing.
  with imagenet.absl_flags_readable():
    iterator = iter(dataset.to_iter_dataset(
        grain.ReadOptions(num_threads=1, prefetch_buffer_size=1)).mp_prefetch(
            grain.MultiprocessingOptions(num_workers=workers)))
    try:
      for batch in iterator:
        yield {"image": np.asarray(batch["image"]), "label": np.asarray(batch["label"])}
    finally:
      iterator.close()


def pin(cpus: set[int]) -> None:
  """Every thread of this process on ``cpus``; processes and threads it starts inherit it."""
  for tid in os.listdir("/proc/self/task"):
    with contextlib.suppress(OSError):  # A thread that ended meanwhile.
      os.sched_setaffinity(int(tid), cpus)


def time_epoch(batches: Iterator[dict], workers: int) -> dict[str, float]:
  """Seconds per image once every worker has delivered its first batch, the first batch's
  seconds (start-up), and images/s over the whole epoch."""
  start = time.perf_counter()
  arrivals, sizes = [], []
  for batch in batches:
    arrivals.append(time.perf_counter())
    sizes.append(len(batch["label"]))
  first = max(workers, 1)
  if len(arrivals) <= first:
    raise ValueError(f"{len(arrivals)} batches leave no steady part after the first {first}; "
                     "use more images (--num) or a smaller batch.")
  return {"seconds_per_image": (arrivals[-1] - arrivals[first - 1]) / sum(sizes[first:]),
          "first_batch_s": arrivals[0] - start,
          "epoch_images_per_s": sum(sizes) / (arrivals[-1] - start)}


_BLOCK = os.urandom(16 << 20)


def hashing(threads: int) -> float:
  """MiB/s of SHA-256 (which releases the GIL) in ``threads`` threads: how much of the cores
  this process gets on a shared machine."""
  start = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    list(pool.map(lambda _: hashlib.sha256(_BLOCK).digest(), range(4 * threads)))
  return 4 * threads * 16 / (time.perf_counter() - start)


# Pillow's C calls in this work that release the GIL while they run (decode.c's _decode,
# Resample.c's passes); the rest of an example's work holds it.
GIL_FREE_CALLS = ("ImagingDecoder.decode", "ImagingCore.resize")


def gil_bound(source: JpegSource, *, batch_size: int, image_size: int) -> dict[str, float]:
  """Ours in one thread: CPU ms per image, and the part outside GIL_FREE_CALLS, which one
  process' threads can only run one at a time; so 1 / that part bounds one process' images/s
  however many cores it has (Amdahl). CPU time: a busy machine inflates it far less than wall
  time. A slight underestimate of the GIL's part (the calls parse their arguments with it)."""
  inside, entered = [0.0], {}

  def profile(frame, event, call):
    del frame
    if getattr(call, "__qualname__", None) in GIL_FREE_CALLS:
      if event == "c_call":
        entered[threading.get_ident()] = time.thread_time()
      elif event in ("c_return", "c_exception"):
        inside[0] += time.thread_time() - entered.pop(threading.get_ident())

  def cpu_per_image():
    start = time.process_time()
    count = sum(len(b["label"]) for b in threaded_batches(
        source, batch_size=batch_size, image_size=image_size, seed=0, epoch=0, workers=1))
    return (time.process_time() - start) / count, count

  cpu, _ = cpu_per_image()  # Unprofiled: the hook's own cost is not the work's.
  threading.setprofile(profile)  # Reaches the pool's threads, started after this.
  try:
    _, count = cpu_per_image()
  finally:
    threading.setprofile(None)
  held = cpu - inside[0] / count
  return {"cpu_ms_per_image": 1e3 * cpu, "gil_held_ms_per_image": 1e3 * held,
          "one_process_images_per_s": 1 / held}


def _method(reader: str, workers: int) -> str:
  if reader == "ours":
    return f"ours: make_iterator, {workers} thread{'s' * (workers > 1)}, {workers} core" + (
        "s" * (workers > 1))
  return f"grain: mp_prefetch, {workers} process{'es' * (workers > 1)}, {workers} core" + (
      "s" * (workers > 1))


def pipeline_rows(num_images: int, rounds: int, workers=(1, 2), use_grain: bool = True, *,
                  batch_size: int = BATCH_SIZE, image_size: int = IMAGE_SIZE,
                  side: dict | None = None) -> list[dict]:
  """One row per reader and worker count: images/s (median, min–max over rounds) and the time
  per image against ours with the fewest workers, measured in the same rounds (harness.ratio:
  below 1 is faster). ``side``, if given, receives the medians over rounds of the control's
  MiB/s by core count ("control_mib_per_s") and of `gil_bound` ("gil")."""
  allowed = sorted(os.sched_getaffinity(0))
  if max(workers) > len(allowed):
    raise ValueError(f"workers={workers} needs {max(workers)} CPUs, this process may use "
                     f"{len(allowed)}.")
  readers = {"ours": threaded_batches}
  if use_grain and grain is not None:
    readers["grain"] = grain_batches
  cases = [(reader, w) for reader in readers for w in workers]
  names = {case: _method(*case) for case in cases}
  measured = {names[c]: [] for c in cases}
  speeds, bounds = {w: [] for w in workers}, []
  with tempfile.TemporaryDirectory(prefix="input_pipeline_") as directory:
    sizes = write_jpegs(pathlib.Path(directory), num_images)
    source = JpegSource(pathlib.Path(directory), num_images)
    try:
      for r in range(rounds + 1):  # Round 0 warms the page cache and the imports.
        for reader, w in (cases if r % 2 == 0 else cases[::-1]):
          pin(set(allowed[:w]))
          batches = readers[reader](source, batch_size=batch_size, image_size=image_size,
                                    seed=0, epoch=r, workers=w)
          timing = time_epoch(batches, w)
          if r:
            measured[names[(reader, w)]].append(timing)
        if r:
          for w in workers:
            pin(set(allowed[:w]))
            speeds[w].append(hashing(w))
          bounds.append(gil_bound(source, batch_size=batch_size, image_size=image_size))
    finally:
      pin(set(allowed))
  if side is not None:
    side["control_mib_per_s"] = {str(w): statistics.median(v) for w, v in speeds.items()}
    side["gil"] = {key: statistics.median(b[key] for b in bounds) for key in bounds[0]}
  baseline = names[("ours", min(workers))]
  times = {name: [t["seconds_per_image"] for t in runs] for name, runs in measured.items()}
  case = (f"{num_images} JPEGs {WIDTH}×{HEIGHT} q{QUALITY} (mean {np.mean(sizes) / 1024:.0f} "
          f"KB) -> {image_size}², random-resized crop + flip, batch {batch_size}")
  rows = []
  for (reader, w), name in names.items():
    rates = [1 / t for t in times[name]]
    rows.append({"group": GROUP, "case": case, "method": name, "baseline": baseline,
                 **harness.ratio(times, name, baseline), "seconds_per_image": times[name],
                 "reader": reader, "workers": w,
                 "cores": w, "images_per_s": statistics.median(rates),
                 "images_per_s_min": min(rates), "images_per_s_max": max(rates),
                 "images_per_s_per_core": statistics.median(rates) / w,
                 "first_batch_s": statistics.median(t["first_batch_s"] for t in measured[name]),
                 "epoch_images_per_s": statistics.median(
                     t["epoch_images_per_s"] for t in measured[name])})
  return rows


def host_cores(rows: list[dict], gil: dict | None = None) -> list[dict]:
  """Per reader: the 1-core rate, the measured rate on C cores / (C × the 1-core rate), and the
  host cores each training rate of TRAINING_HOURS needs, scaling linearly from the 1-core rate.

  Given `gil_bound`'s figures, also the cores at the CPU cost per image (ours': measured;
  another reader's: ours' × its time / ours' time on 1 core in the same rounds), which a shared
  machine's other jobs do not inflate as they do the 1-core rate, and the processes ours' GIL
  bound asks for."""
  out = []
  for reader in dict.fromkeys(r["reader"] for r in rows):
    one_core = {r["cores"]: r for r in rows if r["reader"] == reader}
    if 1 not in one_core:
      continue
    rate = one_core[1]["images_per_s"]
    summary = {"reader": reader, "images_per_s_one_core": rate,
               "scaling": {str(c): r["images_per_s"] / (c * rate)
                           for c, r in one_core.items() if c > 1}}
    if gil:
      summary["cpu_ms_per_image"] = gil["cpu_ms_per_image"] * one_core[1]["median"]
    for host, hours in TRAINING_HOURS.items():
      need = TRAINING_IMAGES / (hours * 3600)
      summary[host] = {"images_per_s": need, "cores": math.ceil(need / rate)}
      if gil:
        summary[host]["cores_at_cpu_cost"] = math.ceil(need * summary["cpu_ms_per_image"] / 1e3)
        if reader == "ours":
          summary[host]["processes"] = math.ceil(need / gil["one_process_images_per_s"])
    out.append(summary)
  return out


def markdown(results: dict) -> str:
  machine = results["machine"]
  lines = [f"# Input pipeline throughput ({results['num_images']} images, "
           f"{results['rounds']} rounds)", "",
           f"Measured on {machine['processor']} ({machine['cpus']} CPUs), one epoch per "
           "reader per round; images/s median (min–max) over rounds, "
           "steady rate after every worker's first batch. Speed = time per image of ours "
           "with one thread / its own, per round, median.", "",
           "| reader | images/s | min–max | per core | speed vs ours, 1 core | first batch s | "
           "epoch images/s with start-up |", "|---|---|---|---|---|---|---|"]
  for r in results["rows"]:
    lines.append(f"| {r['method']} | {r['images_per_s']:,.0f} | {r['images_per_s_min']:,.0f}–"
                 f"{r['images_per_s_max']:,.0f} | {r['images_per_s_per_core']:,.0f} | "
                 f"{1 / r['median']:.2f} ({1 / r['max']:.2f}–{1 / r['min']:.2f}) | "
                 f"{r['first_batch_s']:.2f} | {r['epoch_images_per_s']:,.0f} |")
  lines += ["", f"Case: {results['rows'][0]['case']}." if results["rows"] else ""]
  control = results.get("control_mib_per_s", {})
  if len(control) > 1:
    most = max(control, key=int)
    lines.append(f"Control, SHA-256 (releases the GIL) in 1 and {most} threads: "
                 f"{control['1']:,.0f} and {control[most]:,.0f} MiB/s, "
                 f"{control[most] / control['1']:.2f}× ({int(most):.2f} if all {most} cores "
                 "were ours).")
    if control[most] / control["1"] < 0.8 * int(most):
      lines.append(f"The control is well short of {int(most)}×: other jobs held the cores, and "
                   "the multi-core rows measure them as much as the readers.")
  gil = results.get("gil")
  if gil:
    lines.append(f"Ours in one thread: {gil['cpu_ms_per_image']:.2f} CPU ms per image, of "
                 f"which {gil['gil_held_ms_per_image']:.2f} ms outside Pillow's JPEG decode and "
                 "resize (which release the GIL): one process' threads run that part one at a "
                 f"time, so one process tops out near {gil['one_process_images_per_s']:,.0f} "
                 "images/s however many cores it has.")
  hours = ", ".join(f"{host} {h} h: {TRAINING_IMAGES / (h * 3600):,.0f} images/s"
                    for host, h in TRAINING_HOURS.items())
  counts = sorted({c for s in results["host_cores"] for c in s["scaling"]}, key=int)
  lines += ["", "## Host cores for the training rates", "",
            f"300 epochs of 1,281,167 images in benchmarks/README.md's times ({hours}). Cores "
            "= rate needed / images/s on 1 core, rounded up: this assumes the rate grows "
            "linearly with cores. The C-core columns show how the measured rate on C cores "
            "compares with linear (C × the 1-core rate; 1.00 = linear)."]
  if gil:
    lines.append("In brackets, cores = rate needed × CPU seconds per image (ours': measured; "
                 "grain's: ours' × its time / ours' on 1 core), which the machine's other jobs "
                 "inflate less than the 1-core rate; and the processes ours needs at one "
                 "process' GIL bound above.")
  lines += ["", "| reader | images/s, 1 core | CPU ms per image | "
            + "".join(f"{c} cores / ({c} × 1 core) | " for c in counts)
            + " | ".join(f"{host} cores" for host in TRAINING_HOURS) + " |",
            "|---|---|---|" + "---|" * (len(counts) + len(TRAINING_HOURS))]
  for s in results["host_cores"]:
    needs = []
    for host in TRAINING_HOURS:
      need = s[host]
      extra = [f"{need['cores_at_cpu_cost']} by CPU time"] if "cores_at_cpu_cost" in need else []
      extra += [f"≥ {need['processes']} processes"] if "processes" in need else []
      needs.append(f"{need['cores']}" + (f" ({'; '.join(extra)})" if extra else ""))
    cpu = f"{s['cpu_ms_per_image']:.2f}" if "cpu_ms_per_image" in s else "–"
    lines.append(f"| {s['reader']} | {s['images_per_s_one_core']:,.0f} | {cpu} | "
                 + "".join(f"{s['scaling'][c]:.2f} | " if c in s["scaling"] else "– | "
                           for c in counts) + " | ".join(needs) + " |")
  for note in results["notes"]:
    lines += ["", note]
  return "\n".join(lines) + "\n"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num", type=int, default=256, help="JPEGs written and read per epoch.")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--workers", default="1,2",
                      help="Worker counts (threads or processes, each on as many cores).")
  parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
  args = parser.parse_args()
  side = {}
  rows = pipeline_rows(args.num, args.rounds, tuple(int(w) for w in args.workers.split(",")),
                       side=side)
  notes = [GRAIN_MISSING] if GRAIN_MISSING else [
      f"grain {grain.__version__}: MapDataset -> map -> batch -> to_iter_dataset(ReadOptions("
      "num_threads=1, prefetch_buffer_size=1)) -> mp_prefetch(num_workers); ours: "
      "make_iterator (prefetch 2). First batch: seconds from creating the iterator to its first "
      "batch (grain starts its worker processes, which import the pipeline's modules)."]
  results = {"machine": harness.machine(), "rounds": args.rounds, "num_images": args.num,
             "batch_size": BATCH_SIZE, "image_size": IMAGE_SIZE, "rows": rows, **side,
             "host_cores": host_cores(rows, side["gil"]), "notes": notes}
  harness.write_results(args.out, "input_pipeline", results, markdown(results))
  print(markdown(results))


if __name__ == "__main__":
  main()
