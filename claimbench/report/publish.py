"""Swap a whole report folder in at once: a reader sees the old report or the new one, never a mix.

The pages are written into a hidden sibling folder ``.<out>.new-<pid>-<random>`` beside the
report folder, with everything in the old folder that the renderer does not own (its README,
screenshots, Snakemake's report) hard-linked across; the two folders are then exchanged in one
``renameat2(RENAME_EXCHANGE)`` where the system has it (Linux), else by two renames. A failure
before the swap (a full disk, a template error, Ctrl-C) removes the new folder and leaves the old
report as it was; folders left by a killed run (whose process is gone) are removed next time.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import stat
import sys
import tempfile
from pathlib import Path

from claimbench.io import atomic_write_text

_STAGING = re.compile(r"\.(?P<name>.+)\.(?:new|old)-(?P<pid>\d+)-[^/]+")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def remove_stale(out_dir: Path) -> None:
    """Remove staging folders of killed runs; restore a report a killed swap left aside."""
    if not out_dir.parent.is_dir():
        return
    for path in sorted(out_dir.parent.iterdir()):
        m = _STAGING.fullmatch(path.name)
        if not m or m["name"] != out_dir.name or _alive(int(m["pid"])):
            continue
        if ".old-" in path.name and not out_dir.exists():
            os.rename(path, out_dir)  # killed between the two renames: the old report is back
        else:
            shutil.rmtree(path, ignore_errors=True)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)


def _carry_over(old: Path, new: Path, owned) -> None:
    """Hard-link into ``new`` every entry of ``old`` that ``owned(path)`` says is not ours."""
    for path in sorted(old.iterdir()):
        target = new / path.name
        if owned(path) or target.exists() or path.name.endswith(".tmp"):
            continue  # our pages (rewritten or stale) and leftovers of killed atomic writes
        if path.is_symlink():
            os.symlink(os.readlink(path), target)
        elif path.is_dir():
            shutil.copytree(path, target, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(str(path), str(target))


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths (Linux renameat2); False where the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def publish(pages: list[tuple[str, str]], out_dir: str | os.PathLike, owned) -> list[Path]:
    """Write ``(file name, text)`` pages as the new ``out_dir``, swapped in whole.

    ``owned(path)`` says whether a file of the old folder is a page this renderer wrote (it is
    not carried over, so pages of papers no longer in the store disappear).
    """
    given = out_dir = Path(out_dir)
    if out_dir.is_symlink():
        out_dir = Path(os.path.realpath(out_dir))  # swap the folder the link points to
    out_dir = out_dir.absolute()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out_dir)
    staging = Path(
        tempfile.mkdtemp(prefix=f".{out_dir.name}.new-{os.getpid()}-", dir=out_dir.parent)
    )
    try:
        for name, text in pages:
            try:
                atomic_write_text(staging / name, text)
            except OSError as e:  # name the page the user knows, not the hidden folder
                raise OSError(e.errno, e.strerror, str(given / name)) from e
        if out_dir.is_dir():
            _carry_over(out_dir, staging, owned)
            os.chmod(staging, stat.S_IMODE(out_dir.stat().st_mode))
            if not _exchange(staging, out_dir):
                aside = staging.with_name(staging.name.replace(".new-", ".old-", 1))
                os.rename(out_dir, aside)
                try:
                    os.rename(staging, out_dir)
                except BaseException:
                    os.rename(aside, out_dir)
                    raise
                os.rename(aside, staging)  # removed below with the other leftovers
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(staging, 0o777 & ~umask)
            os.rename(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # after a swap: the old report
    return [given / name for name, _ in pages]
