"""The errors a user can fix: bad config values, data files, checkpoints or weight files.

Each message names the bad value (the field, file or checkpoint directory) and the fix. The
entry points (``train.py``, ``eval.py``, ``explain.py``) print a ``UserError`` without a
traceback and exit with status 1; any other exception is a bug and keeps its traceback. All are
``ValueError``s, so library callers may catch them as such.
"""


class UserError(ValueError):
  """Bad input that the user can fix; the message says how."""


class ConfigError(UserError):
  """A config value (or a config argument) that cannot run."""


class DataError(UserError):
  """A data file that cannot be read as the config says (missing, malformed, empty)."""


class CheckpointError(UserError):
  """A checkpoint that does not match the config, is damaged, or could not be written."""


class WeightsError(UserError):
  """A pretrained weight file that cannot be imported (unreadable, mismatched, non-finite)."""
