"""What the commands log: the project's lines, and the libraries' warnings and errors only."""

import logging as logging_std
import traceback

from absl import logging


def _raised_in_orbax(record: logging_std.LogRecord) -> bool:
  """True when the record's exception was raised in the checkpointing library: asyncio logs
  "Task exception was never retrieved" with the traceback of orbax's failed background writes
  (a full disk fails several at once)."""
  tb = record.exc_info[2] if record.exc_info else None
  return any("/orbax/" in frame.f_code.co_filename for frame, _ in traceback.walk_tb(tb))


class LibraryInfoFilter(logging_std.Filter):
  """Drops INFO lines of the checkpointing library (orbax writes ~45 per checkpoint), keeping
  its warnings and errors (without their tracebacks, also where asyncio logs an exception
  orbax raised: the error that stops the run reaches the entry point, which says what it
  means) and every line of this project."""

  def filter(self, record: logging_std.LogRecord) -> bool:
    from_orbax = "/orbax/" in record.pathname
    if from_orbax or _raised_in_orbax(record):
      record.exc_info, record.exc_text = None, None
    return not from_orbax or record.levelno >= logging_std.WARNING


def quiet_library_logs() -> None:
  """Installs ``LibraryInfoFilter`` on the absl handler (every command calls it; idempotent)."""
  handler = logging.get_absl_handler()
  if not any(isinstance(f, LibraryInfoFilter) for f in handler.filters):
    handler.addFilter(LibraryInfoFilter())
