"""One exception type for every user-facing error: the message names the file, key and value."""

import errno
import json
import os
import sys
import zipfile
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


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def describe(e: BaseException, file: str | None = None) -> str | None:
    """One line naming the file for an error caused by input or the environment; None for a bug.

    ``file`` is the file the caller was working on, used when the exception does not name one
    (a DuckDB, JSON, zip or safetensors error). Library modules are looked up only if loaded.
    """
    where = f"{file}: " if file else ""
    if isinstance(e, ClaimbenchError):
        return _one_line(e)
    if isinstance(e, OSError):
        name = e.filename if e.filename is not None else file
        what = e.strerror or _one_line(e) or type(e).__name__
        if e.filename2 is not None:
            what += f" (-> {e.filename2})"
        hint = {
            errno.ENOSPC: "the disk is full; free space and run it again",
            errno.EDQUOT: "the disk quota is exceeded; free space and run it again",
            errno.EROFS: "the file system is read-only",
            errno.EACCES: "not writable or readable by this user",
        }.get(e.errno)
        return f"{name}: {what}" + (f" ({hint})" if hint else "") if name else what
    if isinstance(e, json.JSONDecodeError):
        return f"{where}line {e.lineno} column {e.colno}: not valid JSON ({e.msg})"
    if isinstance(e, UnicodeDecodeError):
        return f"{where}not UTF-8 text ({e.reason} at byte {e.start})"
    if isinstance(e, zipfile.BadZipFile | EOFError):
        return f"{where}truncated or not a valid archive ({_one_line(e) or type(e).__name__})"
    yaml = sys.modules.get("yaml")
    if yaml is not None and isinstance(e, yaml.YAMLError):
        mark = getattr(e, "problem_mark", None)
        if mark is not None:
            problem = getattr(e, "problem", None) or _one_line(e)
            return f"{mark.name}: line {mark.line + 1} column {mark.column + 1}: {problem}"
        return f"{where}not valid YAML ({_one_line(e)})"
    duckdb = sys.modules.get("duckdb")
    if duckdb is not None and isinstance(e, duckdb.Error):
        return f"{where}{_one_line(e)}"
    jinja2 = sys.modules.get("jinja2")
    if jinja2 is not None and isinstance(e, jinja2.TemplateSyntaxError):
        return f"{e.filename or e.name}: line {e.lineno}: {_one_line(e.message)}"
    safetensors = sys.modules.get("safetensors")
    if safetensors is not None and isinstance(e, getattr(safetensors, "SafetensorError", ())):
        return f"{where}not a readable safetensors file ({_one_line(e)})"
    return None


@contextmanager
def exit_on_error(prog: str, file: str | None = None):
    """A command line's one error path: ``error: <prog>: <file>: <what>``, exit 2.

    Every error :func:`describe` knows (``ClaimbenchError``, ``OSError`` such as a read-only
    folder or a full disk, DuckDB, JSON, YAML, zip, safetensors and template errors) becomes
    one line; Ctrl-C exits 130 without a traceback; anything else is a bug and keeps its
    traceback. ``file`` names the file for errors that do not carry one (e.g. ``--db``).
    """
    try:
        yield
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except BrokenPipeError:  # `claimbench query ... | head`: the reader left, nothing to say
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise SystemExit(141) from None
    except Exception as e:
        message = describe(e, file)
        if message is None:
            raise
        print(f"error: {prog}: {message}", file=sys.stderr)
        raise SystemExit(2) from None
