"""Timing in one process with interleaved rounds: every round times each function once, in
turn, so a slow spell of a shared machine hits all of them alike; ratios are taken per round
against a baseline timed in the same round, then summarised over rounds."""

import json
import pathlib
import platform
import statistics
import time
from typing import Callable, Collection, Mapping

import jax


def time_once(fn: Callable[[], object]) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def settle(seconds: float = 0.2) -> None:
  """A pause between libraries: idle worker pools spin for a while after a call and would
  take the cores from the next library's first call."""
  time.sleep(seconds)


def interleaved(fns: Mapping[str, Callable[[], object]], rounds: int = 9,
                inner: int = 1, warm: Collection[str] = ()) -> dict[str, list[float]]:
  """{name: seconds per call in each round}; each call is compiled and warmed up first, and a
  round times ``inner`` calls of each function back to back.

  ``warm``: functions that get one untimed call right before their timed ones in every round.
  A call of milliseconds timed right after one of seconds runs slow (caches and the thread
  pool gone cold: a ResNet-18 forward 46 → 64 ms beside Integrated Gradients' 4-second calls),
  which would understate the seconds-long call's ratio to it.
  """
  for fn in fns.values():
    jax.block_until_ready(fn())
    jax.block_until_ready(fn())
  times = {name: [] for name in fns}
  order = list(fns)
  for r in range(rounds):
    # Forward and reversed order in alternate rounds: a function that runs right after
    # another (caches, allocator, clock boost) gets no systematic edge.
    for name in (order if r % 2 == 0 else order[::-1]):
      fn = fns[name]
      if name in warm:
        jax.block_until_ready(fn())
      start = time.perf_counter()
      for _ in range(inner):
        out = fn()
      jax.block_until_ready(out)
      times[name].append((time.perf_counter() - start) / inner)
  return times


def ratio(times: Mapping[str, list[float]], name: str, baseline: str) -> dict[str, float]:
  """Median, min and max over rounds of time(name) / time(baseline) in the same round."""
  per_round = [a / b for a, b in zip(times[name], times[baseline])]
  return {"median": statistics.median(per_round), "min": min(per_round),
          "max": max(per_round), "rounds": len(per_round),
          "median_ms": 1e3 * statistics.median(times[name]),
          "baseline_ms": 1e3 * statistics.median(times[baseline])}


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def machine() -> dict[str, str]:
  """What the figures were measured on."""
  import flax  # pylint: disable=g-import-not-at-top
  info = {"platform": platform.platform(), "processor": _cpu_model(),
          "python": platform.python_version(), "jax": jax.__version__,
          "flax": flax.__version__, "backend": jax.default_backend(),
          "devices": str(jax.devices())}
  try:
    import os  # pylint: disable=g-import-not-at-top
    info["cpus"] = str(os.cpu_count())
  except Exception:  # pylint: disable=broad-except
    pass
  return info


def write_results(out: str | pathlib.Path, name: str, results: dict, markdown: str) -> None:
  """``out/name.json`` (the results) and ``out/name.md`` (their table), made if missing."""
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  (out / f"{name}.json").write_text(json.dumps(results, indent=1))
  (out / f"{name}.md").write_text(markdown)
