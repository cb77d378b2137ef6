"""keep_large_buffers: a freed 48 MiB buffer is reused from the heap instead of being mmapped
and page-faulted again on the next allocation (what every CPU call of a big XLA program does)."""

import subprocess
import sys

import pytest

PROBE = r"""
import ctypes, resource, sys
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "tuned":
  from mhex_jax import host_allocator
  assert host_allocator.keep_large_buffers() and host_allocator.applied()
size = 48 << 20
def touch():
  p = libc.malloc(size); ctypes.memset(p, 1, size); libc.free(p)
touch()  # The first allocation faults in any case.
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
  touch()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
  out = subprocess.run([sys.executable, "-c", PROBE, mode], check=True, capture_output=True,
                       text=True, timeout=120)
  return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_large_buffers_stay_in_the_heap():
  pages = (48 << 20) // 4096
  assert _faults("default") >= 4 * pages * 0.9  # glibc mmaps it afresh every time.
  assert _faults("tuned") < pages // 4  # Reused: no fault per page.


def test_opt_out_leaves_the_defaults(monkeypatch):
  from mhex_jax import host_allocator  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv("MHEX_JAX_MALLOC_TUNING", "0")
  monkeypatch.setattr(host_allocator, "_applied", None)
  assert host_allocator.keep_large_buffers() is False
  assert not host_allocator.applied()
