"""Where JAX runs: the backend in one line, and a warning when an accelerator sits unused.

``describe()`` is the line every entry point logs at start (``log_backend``) and the notebooks
print: backend, device kind and count, processes and, on GPUs and TPUs, the memory per device.
``accelerator_warning()`` says, when JAX runs on the CPU, whether the machine has an NVIDIA GPU
or a TPU that a CPU-only JAX cannot use, and which install fixes it (docs/install.md). Its
probes (the ``nvidia-smi`` command, ``/dev`` and ``/sys`` paths, environment variables) are the
module's constants, so a test can fake a machine.
"""

import collections
import glob
import importlib.metadata
import os
import re
import shutil
import subprocess
from typing import Mapping, Optional, Sequence

from absl import logging
import jax

NVIDIA_SMI = "nvidia-smi"
NVIDIA_DEVICES = ("/dev/nvidia0",)
# TPU v2-v4 chips appear as /dev/accel*, v5e and later as /dev/vfio/<n> (told apart from other
# passed-through devices by Google's PCI vendor id, as JAX's own probe does).
TPU_DEVICES = ("/dev/accel0",)
VFIO_GLOB = "/dev/vfio/[0-9]*"
PCI_VENDOR_GLOB = "/sys/bus/pci/devices/*/vendor"
GOOGLE_PCI_VENDOR = "0x1ae0"
TPU_ENVIRONMENT = ("TPU_NAME", "TPU_ACCELERATOR_TYPE")
# What a user who chose the CPU on purpose (JAX_PLATFORMS=cpu) is not warned about.
ACCELERATOR_PLATFORMS = ("cuda", "gpu", "tpu", "rocm")
INSTALL_DOC = "docs/install.md"
# JAX's accelerator plugins: installed, yet JAX on the CPU, means the backend failed to start.
GPU_PLUGINS = ("jax-cuda12-plugin", "jax-cuda13-plugin")
TPU_PLUGINS = ("libtpu",)


def _gib(num_bytes: int) -> str:
  return f"{num_bytes / 2**30:.1f} GiB"


def device_memory(device: jax.Device) -> Optional[int]:
  """The bytes ``device`` can hold (``memory_stats()["bytes_limit"]``), or None where the
  backend does not say (the CPU)."""
  try:
    stats = device.memory_stats()
  except Exception:  # pylint: disable=broad-except  # Backends without the query raise.
    return None
  return (stats or {}).get("bytes_limit")


def describe(devices: Optional[Sequence[jax.Device]] = None) -> str:
  """One line: JAX's version, backend, the local devices' kinds, the device and process counts
  and, where the backend reports it, the memory per device, e.g. ``JAX 0.10.2 on gpu: 8 ×
  NVIDIA H100 80GB HBM3 (8 local of 8 devices, process 1 of 1), 79.1 GiB per device``."""
  devices = list(devices if devices is not None else jax.local_devices())
  kinds = collections.Counter(d.device_kind for d in devices)
  total = jax.device_count()
  line = (f"JAX {jax.__version__} on {jax.default_backend()}: "
          + " + ".join(f"{n} × {kind}" for kind, n in kinds.items())
          + f" ({len(devices)} local of {total} device{'s' * (total != 1)}, process "
          f"{jax.process_index() + 1} of {jax.process_count()})")
  memory = {device_memory(d) for d in devices} - {None}
  if memory:
    line += ", " + " to ".join(_gib(m) for m in sorted(memory)) + " per device"
  return line


def _run(command: str, *args: str) -> Optional[str]:
  """``command``'s output, or None when it is missing, fails or hangs."""
  path = shutil.which(command)
  if path is None:
    return None
  try:
    result = subprocess.run([path, *args], capture_output=True, text=True, timeout=20,
                            check=False)
  except (OSError, subprocess.SubprocessError):
    return None
  return result.stdout if result.returncode == 0 else None


def visible_gpu() -> Optional[dict]:
  """{"name": the first GPU's name or None, "cuda": the driver's CUDA major version or None}
  when an NVIDIA GPU is visible (``NVIDIA_SMI -L`` lists one, or one of ``NVIDIA_DEVICES``
  exists), else None."""
  listing = _run(NVIDIA_SMI, "-L") or ""
  names = re.findall(r"^GPU \d+: (.+?)(?: \(UUID:.*)?$", listing, re.M)
  if not names and not any(os.path.exists(f) for f in NVIDIA_DEVICES):
    return None
  cuda = re.search(r"CUDA Version:\s*(\d+)", _run(NVIDIA_SMI) or "") if names else None
  return {"name": names[0] if names else None, "cuda": int(cuda.group(1)) if cuda else None}


def visible_tpu(environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
  """What shows a TPU (a device file, a TPU VM's environment variable), or None. The probes
  are the module's ``TPU_DEVICES``, ``VFIO_GLOB``, ``PCI_VENDOR_GLOB`` and
  ``TPU_ENVIRONMENT``."""
  environ = os.environ if environ is None else environ
  for path in TPU_DEVICES:
    if os.path.exists(path):
      return path
  if glob.glob(VFIO_GLOB):
    for vendor in glob.glob(PCI_VENDOR_GLOB):
      with open(vendor, encoding="ascii") as f:
        if f.read().strip() == GOOGLE_PCI_VENDOR:
          return f"{os.path.dirname(VFIO_GLOB)} (a Google PCI device)"
  for name in TPU_ENVIRONMENT:
    if environ.get(name):
      return f"{name}={environ[name]}"
  return None


def _installed(distributions: Sequence[str]) -> Optional[str]:
  """The first of ``distributions`` that is installed, or None."""
  for name in distributions:
    try:
      return f"{name} {importlib.metadata.version(name)}"
    except importlib.metadata.PackageNotFoundError:
      continue
  return None


def gpu_extra(cuda: Optional[int]) -> str:
  """The extra whose JAX build the driver runs: ``cuda13`` for a driver of CUDA 13 or later,
  else ``cuda12`` (also when the version is unknown: the older driver requirement)."""
  return "cuda13" if cuda is not None and cuda >= 13 else "cuda12"


def accelerator_warning(backend: Optional[str] = None,
                        environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
  """A warning naming the install that fixes it when JAX runs on the CPU (``backend``, default
  ``jax.default_backend()``) while an NVIDIA GPU or a TPU is visible (``visible_gpu``,
  ``visible_tpu``), else None; also None when ``JAX_PLATFORMS`` chose the CPU.
  """
  environ = os.environ if environ is None else environ
  if (backend or jax.default_backend()) != "cpu":
    return None
  platforms = environ.get("JAX_PLATFORMS", "").lower()
  if platforms and not any(p in platforms for p in ACCELERATOR_PLATFORMS):
    return None
  gpu = visible_gpu()
  tpu = None if gpu is not None else visible_tpu(environ)
  if gpu is not None:
    what = f"an NVIDIA GPU ({gpu['name']})" if gpu["name"] else "an NVIDIA GPU"
    plugin = _installed(GPU_PLUGINS)
    if plugin:
      return (f"JAX runs on the CPU although {what} is visible and {plugin} is installed: its "
              "CUDA backend did not start (JAX's own warning says why; the usual cause is a "
              "driver older than the plugin needs: `nvidia-smi` shows the driver's CUDA "
              f"version), see {INSTALL_DOC}.")
    extra = gpu_extra(gpu["cuda"])
    if gpu["cuda"] is not None and gpu["cuda"] < 12:
      return (f"JAX runs on the CPU although {what} is visible, and its driver supports CUDA "
              f"{gpu['cuda']} only: JAX's CUDA builds need a driver for CUDA 12 or later; "
              f"update the driver, then `pip install \".[cuda12]\"` ({INSTALL_DOC}).")
    driver = (f"the driver supports CUDA {gpu['cuda']}" if gpu["cuda"] is not None else
              "`nvidia-smi` shows the driver's CUDA version; use .[cuda13] for CUDA 13")
    return (f"JAX runs on the CPU although {what} is visible: install JAX's CUDA build, "
            f"`pip install \".[{extra}]\"` in a checkout (or `pip install \"jax[{extra}]\"`; "
            f"{driver}), see {INSTALL_DOC}.")
  if tpu is not None:
    plugin = _installed(TPU_PLUGINS)
    if plugin:
      return (f"JAX runs on the CPU although a TPU is visible ({tpu}) and {plugin} is "
              "installed: its TPU backend did not start (JAX's own warning says why; another "
              f"process holding the TPU is the usual cause), see {INSTALL_DOC}.")
    return (f"JAX runs on the CPU although a TPU is visible ({tpu}): install JAX's TPU build, "
            f"`pip install \".[tpu]\"` in a checkout (or `pip install \"jax[tpu]\"`), see "
            f"{INSTALL_DOC}.")
  return None


def log_backend() -> None:
  """Logs ``describe()`` (INFO) and ``accelerator_warning()`` (WARNING): each entry point calls
  it at start, after ``jax.distributed`` is initialised."""
  logging.info("%s", describe())
  warning = accelerator_warning()
  if warning:
    logging.warning("%s", warning)
