"""One exception type for every user-facing error: the message names the file, key and value."""

import sys
from contextlib import contextmanager


class ClaimbenchError(Exception):
    """An error caused by the user's input (config, files, model paths), not by a bug."""


class ConfigError(ClaimbenchError):
    """A config file or override has an unknown key, a wrong type or an out-of-range value."""


class RecordError(ClaimbenchError):
    """A run record on disk is corrupted, truncated or violates the contract."""


class ModelNotAvailableError(ClaimbenchError):
    """A model id or path cannot be loaded on this machine (missing folder, hub id offline)."""


@contextmanager
def exit_on_user_error(*extra: type[BaseException]):
    """Entry points: a user error prints one line ``error: <message>`` and exits 2 (no traceback).

    ``ClaimbenchError`` always counts; ``extra`` adds the module's own input errors (ValueError...).
    """
    try:
        yield
    except (ClaimbenchError, *extra) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
