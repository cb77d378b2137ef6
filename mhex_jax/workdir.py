"""A workdir's saved config: written by training, read back by evaluation and explanation.

``train.py`` saves the config it ran with as ``WORKDIR/config.json`` (``save_config``). Later
commands read it (``load_config``), refuse to evaluate checkpoints with a config that builds
another model (``check_model``) and refuse to resume them with one that changes the run
(``check_resume``), naming the fields in each case.
"""

import json

from absl import logging

import jax
import ml_collections

from mhex_jax import config_lib
from mhex_jax import errors
from mhex_jax import files

CONFIG_FILE = "config.json"
# The fields that decide which model a checkpoint holds.
MODEL_FIELDS = ("model_name", "model", "model_init")
# The fields that decide a training run, and those a rerun may change without changing it.
RUN_FIELDS = ("seed", "model_name", "model", "model_init", "model_load", "data", "train")
RESUME_MAY_CHANGE = ("train.log_every_steps", "train.checkpoint_every_steps",
                     "train.keep_checkpoints", "train.resume", "data.data_dir",
                     "data.decode_processes")


# Fields a config may leave to the data, with the value that does so: the first training run
# decides them (the classes of a CSV and their names, max_len from its texts) and saves them in
# config.json.
DECIDED_BY_DATA = (("model.num_classes", None), ("data.class_names", ()),
                   ("data.max_len", "auto"))


def with_decisions(config: ml_collections.ConfigDict,
                   workdir: str) -> ml_collections.ConfigDict:
  """``config`` with the fields of DECIDED_BY_DATA it leaves to the data taken from
  ``workdir``'s saved config, so that evaluating, explaining or resuming a workdir uses what
  its training decided; ``config`` itself when there is nothing to take."""
  if not has_config(workdir):
    return config
  saved, decided = load_config(workdir), {}
  for field, undecided in DECIDED_BY_DATA:
    section, name = field.split(".")
    ours, theirs = config.get(section) or {}, saved.get(section) or {}
    if name in ours and ours[name] == undecided and theirs.get(name, undecided) not in (
        undecided, []):
      decided[(section, name)] = theirs[name]
  if not decided:
    return config
  values = config.to_dict()  # Through a dict: "auto" (a str) becomes an int.
  for (section, name), value in decided.items():
    values[section][name] = value
    logging.info("%s.%s=%r, as training %s decided it.", section, name, value, workdir)
  return ml_collections.ConfigDict(values)


def has_config(workdir: str) -> bool:
  return (files.workdir_path(workdir) / CONFIG_FILE).exists()


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config ``workdir`` was trained with."""
  path = files.workdir_path(workdir) / CONFIG_FILE
  if not path.exists():
    raise errors.UserError(
        f"{path} does not exist: {workdir} is not a workdir written by train.py (it saves "
        "its config there). Check the workdir's path, or pass --config=... for a workdir "
        "without a saved config.")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes ``config`` to ``WORKDIR/config.json`` (process 0; whole or not at all)."""
  if jax.process_index() == 0:
    directory = files.workdir_path(workdir)
    directory.mkdir(parents=True, exist_ok=True)
    files.write_text(directory / CONFIG_FILE, config.to_json_best_effort(indent=2))


def check_model(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Raises a ConfigError naming every field in which ``config`` would build another model than
  the one ``workdir``'s checkpoints were trained with (evaluation reads no optimizer state, so
  the optimizer may differ)."""
  if not has_config(workdir):
    return  # Not written by train.py (or before it saved configs): nothing to compare.
  diffs = config_lib.differences(load_config(workdir), config, MODEL_FIELDS)
  if diffs:
    raise config_lib.ConfigError(
        f"The config builds another model than the one {workdir} was trained with: "
        f"{'; '.join(diffs)}. Leave out --config to use the workdir's saved config (overrides "
        "such as --config.eval.methods=all still apply), or fix these fields.")


def check_resume(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses to resume ``workdir``'s checkpoints with a config that changes the run (seed,
  model, data, schedule), naming the fields, unless ``train.resume`` is "force"."""
  mode = config.train.get("resume", "check")
  if mode not in ("check", "force"):
    raise config_lib.ConfigError(f"train.resume={mode!r}; use 'check' or 'force'.")
  if not has_config(workdir):
    return
  may_change = RESUME_MAY_CHANGE
  if not config.data.get("class_names"):
    may_change += ("data.class_names",)  # Names the data define (CSV labels) were saved.
  diffs = config_lib.differences(load_config(workdir), config, RUN_FIELDS, may_change)
  if diffs and mode == "force":
    logging.warning("Resuming %s with a changed config (train.resume=force): %s", workdir,
                    "; ".join(diffs))
  elif diffs:
    raise config_lib.ConfigError(
        f"{workdir} holds checkpoints of another config: {'; '.join(diffs)}. Use a new "
        "--workdir, rerun with the workdir's config, or pass --config.train.resume=force to "
        "continue with the new values.")
