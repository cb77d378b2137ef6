"""Keeps XLA's large host buffers in the heap between calls (glibc only).

On CPU, every call of a compiled program allocates its temporary buffer with ``malloc``, and
glibc serves any request above its mmap threshold (at most 32 MiB by default) with a fresh
``mmap`` that is returned to the kernel when the call ends: the next call page-faults and zeroes
the whole buffer again. ResNet-18 at batch 8 and 224² needs 31 MiB for its forward pass and
39 MiB for its MHEX maps, so the maps paid 10% for page faults alone, and any program past the
threshold pays it on every call. Raising the mmap and trim thresholds makes freed buffers stay
in the heap and be reused, as TensorFlow's and PyTorch's own caching allocators do.

The entry points (``train.py``, ``eval.py``, ``explain``) and ``benchmarks/run.py`` call
``keep_large_buffers()`` at start; set ``MHEX_JAX_MALLOC_TUNING=0`` to leave glibc's defaults.
The cost is memory the process keeps instead of returning: at most its peak, which it needed
anyway.
"""

import ctypes
import ctypes.util
import os
import sys

from absl import logging

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h).
_M_MMAP_THRESHOLD = -3
DEFAULT_THRESHOLD = 1 << 30  # Requests up to 1 GiB come from the heap.

_applied = None


def keep_large_buffers(threshold: int = DEFAULT_THRESHOLD) -> bool:
  """Sets glibc's mmap threshold to ``threshold`` bytes and its trim threshold to twice that.

  Returns True when applied; False off Linux, on a C library without ``mallopt`` (musl), or
  with ``MHEX_JAX_MALLOC_TUNING=0``. Safe to call more than once.
  """
  global _applied
  if _applied is not None:
    return _applied
  _applied = False
  if os.environ.get("MHEX_JAX_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
  threshold = min(int(threshold), (1 << 31) - 1 >> 1)
  _applied = bool(mallopt(_M_MMAP_THRESHOLD, threshold)) and bool(
      mallopt(_M_TRIM_THRESHOLD, 2 * threshold))
  if not _applied:
    logging.debug("mallopt refused the thresholds; glibc's defaults stay.")
  return _applied


def applied() -> bool:
  """Whether ``keep_large_buffers`` changed the thresholds in this process."""
  return bool(_applied)
