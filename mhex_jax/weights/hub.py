"""Checkpoints named by a Hugging Face Hub id as well as by a local path.

``checkpoint_path(value)`` turns ``config.model_init`` or ``data.tokenizer_dir`` into a local
path: an existing path passes through unchanged; an id, ``"owner/name"`` or ``"name"`` with an
optional ``"@revision"`` (a branch, tag or commit), is downloaded by huggingface_hub's
``snapshot_download`` into its cache (``HF_HUB_CACHE``, by default ``HF_HOME/hub``), only the
files mhex_jax reads (``ALLOW_PATTERNS``), and its snapshot directory is returned. With
``HF_HUB_OFFLINE=1`` only the cache is read, and a model missing from it is one ``WeightsError``
saying how to bring it in from a machine with a network.

A value that looks like a path (it starts with ``/``, ``.`` or ``~``, has more than one ``/``, or
ends in a file extension such as ``.safetensors``) is never sent to the Hub: when it does not
exist it is returned as it is, for the reader of the file to say that it does not exist.

huggingface_hub reads ``HF_HOME`` and ``HF_HUB_OFFLINE`` once, when it is imported (and
transformers imports it early); here they are read at every call, so that a process, a forked
test case or a test's ``monkeypatch.setenv`` that sets them later is honoured.
"""

import os
import pathlib
import re

from absl import logging
import huggingface_hub
from huggingface_hub import constants as hub_constants
from huggingface_hub import errors as hub_errors

from mhex_jax.errors import WeightsError

try:  # huggingface_hub's HTTP client, whose errors are the network's: httpx2 from version 2.
  from httpx2 import HTTPError as _TransportError
except ImportError:
  from httpx import HTTPError as _TransportError

# What the readers of a checkpoint open: hf_import (config + weights, single file or shards),
# the image preprocessing settings, and the tokenizer files data/text.py accepts (VOCAB_FILES)
# with their settings. Not "*.safetensors": that would also fetch a repository's other exports
# (onnx/, openvino/, fp16 copies), which nothing here reads.
ALLOW_PATTERNS = (
    "config.json", "model.safetensors", "model-*.safetensors", "model.safetensors.index.json",
    "preprocessor_config.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model",
    "tokenizer.model")
# Endings that make a value a file name, not a repository name (which may hold dots: "Qwen2.5").
FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".json", ".npz", ".msgpack",
                 ".h5", ".txt", ".model")
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_HUB_ID = re.compile(rf"(?P<repo>(?:{_NAME}/)?{_NAME})(?:@(?P<revision>[^\s@]+))?")
_TRUE = ("1", "ON", "YES", "TRUE")

# (repo id, revision, cache) → snapshot directory: an id is resolved once per process, so the
# config.json read when the model is built and the weights loaded later are the same snapshot.
_SNAPSHOTS: dict[tuple[str, str | None, str], pathlib.Path] = {}


def cache_dir() -> pathlib.Path:
  """huggingface_hub's cache directory as the environment names it now: ``HF_HUB_CACHE``, else
  ``HF_HOME/hub``, else ``XDG_CACHE_HOME/huggingface/hub`` or ``~/.cache/huggingface/hub``."""
  home = os.environ.get("HF_HOME") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
      "huggingface")
  cache = (os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
           or os.path.join(home, "hub"))
  return pathlib.Path(os.path.expandvars(os.path.expanduser(cache)))


def offline() -> bool:
  """Whether downloads are off: ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) set now, or
  when huggingface_hub was imported."""
  value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
  return value.upper() in _TRUE or hub_constants.HF_HUB_OFFLINE


def parse_hub_id(value: str | os.PathLike) -> tuple[str, str | None] | None:
  """``(repo_id, revision or None)`` when ``value`` can name a Hub model, None when it can
  only be a path (a ``PathLike``, or a string that looks like one)."""
  if not isinstance(value, str) or value.startswith(("/", ".", "~")) or "\\" in value:
    return None
  match = _HUB_ID.fullmatch(value)
  if (match is None or ".." in match["repo"] or "--" in match["repo"]
      or match["repo"].lower().endswith(FILE_SUFFIXES)):
    return None
  return match["repo"], match["revision"]


def checkpoint_path(id_or_path: str | os.PathLike, *, field: str = "model_init") -> pathlib.Path:
  """The local path of a checkpoint named by a local path or a Hugging Face Hub id.

  Args:
    id_or_path: an existing file or directory (returned unchanged), a Hub id ``owner/name`` or
      ``name`` with an optional ``@revision``, or a path that does not exist (returned unchanged:
      its reader says so).
    field: the config field the value came from, to name it in errors.

  Returns:
    The path, or the id's snapshot directory in huggingface_hub's cache.
  """
  if os.path.exists(id_or_path):
    return pathlib.Path(id_or_path)
  hub_id = parse_hub_id(id_or_path)
  if hub_id is None:
    return pathlib.Path(id_or_path)
  repo_id, revision = hub_id
  cache = cache_dir()
  key = (repo_id, revision, str(cache))
  if key not in _SNAPSHOTS or not _SNAPSHOTS[key].is_dir():
    _SNAPSHOTS[key] = _download(repo_id, revision, cache, f"{field}={id_or_path!r}")
    logging.info("%s=%s: the Hugging Face snapshot %s", field, id_or_path, _SNAPSHOTS[key])
  return _SNAPSHOTS[key]


def _download(repo_id: str, revision: str | None, cache: pathlib.Path,
              named: str) -> pathlib.Path:
  """snapshot_download of ``repo_id`` into ``cache``, its errors turned into WeightsErrors that
  name ``named`` (the config field and value) and the fix."""
  is_offline = offline()
  try:
    return pathlib.Path(huggingface_hub.snapshot_download(
        repo_id, revision=revision, cache_dir=cache, allow_patterns=list(ALLOW_PATTERNS),
        local_files_only=is_offline))
  except hub_errors.IncompleteSnapshotError as e:
    raise WeightsError(
        f"{named}: the cached snapshot of {repo_id} in {cache} is incomplete (an interrupted "
        f"download?): {e} Complete it with `{_download_command(repo_id, revision)}`, or pass a "
        "local checkpoint directory.") from None
  except (hub_errors.LocalEntryNotFoundError, hub_errors.OfflineModeIsEnabled) as e:
    if is_offline or isinstance(e, hub_errors.OfflineModeIsEnabled):
      raise WeightsError(_offline_message(repo_id, revision, cache, named)) from None
    raise WeightsError(
        f"{named} is not a local path, and the Hugging Face Hub could not be reached to download "
        f"{repo_id} ({_cause(e)}), nor does the cache {cache} hold it. Check the network or "
        f"proxy (HTTPS_PROXY), or {_elsewhere(repo_id, revision, cache)}") from None
  except hub_errors.GatedRepoError:
    raise WeightsError(
        f"{named}: {repo_id} is a gated model on the Hugging Face Hub. Accept its terms at "
        f"https://huggingface.co/{repo_id} and log in (`hf auth login`, or set HF_TOKEN), or "
        "pass a local checkpoint directory.") from None
  except hub_errors.RepositoryNotFoundError:
    raise WeightsError(
        f"{named} is neither a local path nor a model on the Hugging Face Hub ({repo_id} was not "
        "found, or is private and no token was sent). Check the spelling (a local path must "
        "exist; start a relative one with ./), log in for a private model (`hf auth login`, or "
        "set HF_TOKEN), or pass a local checkpoint directory.") from None
  except hub_errors.RevisionNotFoundError:
    raise WeightsError(
        f"{named}: {repo_id} has no revision {revision!r} on the Hugging Face Hub; name an "
        "existing branch, tag or commit after '@', or leave '@…' out for main.") from None
  except (hub_errors.HfHubHTTPError, _TransportError, ConnectionError, TimeoutError) as e:
    raise WeightsError(
        f"{named}: downloading {repo_id} from the Hugging Face Hub failed ({_cause(e)}). Retry, "
        f"check the network or proxy, or {_elsewhere(repo_id, revision, cache)}") from None
  except OSError as e:  # The cache itself: not writable, disk full.
    raise WeightsError(
        f"{named}: cannot write the Hugging Face cache {cache} ({_cause(e)}); free space there, "
        "or set HF_HOME (or HF_HUB_CACHE) to a writable directory.") from None


def _download_command(repo_id: str, revision: str | None) -> str:
  return f"hf download {repo_id}" + (f" --revision {revision}" if revision else "")


def _elsewhere(repo_id: str, revision: str | None, cache: pathlib.Path) -> str:
  folder = "models--" + repo_id.replace("/", "--")
  command = _download_command(repo_id, revision)
  return (f"fetch it on a machine with a network: `{command}` (older huggingface_hub: "
          f"`huggingface-cli{command[2:]}`), then copy the folder "
          f"{folder} of its cache (HF_HOME/hub, by default ~/.cache/huggingface/hub) into {cache} "
          "here; or pass a local checkpoint directory.")


def _offline_message(repo_id: str, revision: str | None, cache: pathlib.Path,
                     named: str) -> str:
  what = repo_id + (f" at revision {revision}" if revision else "")
  return (f"{named} is not a local path, and the Hugging Face Hub model {what} is not in the "
          f"cache {cache}, which is all that offline mode (HF_HUB_OFFLINE=1) reads. Unset "
          f"HF_HUB_OFFLINE to download it, or {_elsewhere(repo_id, revision, cache)}")


def _cause(error: BaseException) -> str:
  """The first line of the error at the root of ``error``'s chain (huggingface_hub wraps the
  network's errors in its own)."""
  while error.__cause__ is not None:
    error = error.__cause__
  lines = str(error).strip().splitlines()
  return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
