"""Files that are either wholly old or wholly new: every file cupyvae writes goes through here."""
from __future__ import annotations

import os
import secrets
from pathlib import Path

TMP_SUFFIX = ".tmp"   # a killed writer leaves ".<name>.<random>.tmp" next to its target


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write bytes so that `path` holds either its old content or all of `data`.

    The bytes go to a new temporary file in the same folder, which is flushed to disk
    (fsync) and then renamed over `path`; the folder is fsynced too, so the rename
    survives a power cut.  A symlink at `path` is replaced by the new file, its target is
    never written.  The file gets mode 0o666 less the process umask, applied by the
    kernel when the file is created (no os.umask call, which would race with other
    threads).  On any error the temporary file is removed and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temporary(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new, empty file next to `path`: O_EXCL never reuses (or follows a symlink at)
    an existing name; mode 0o666 is masked by the umask as for any new file."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}{TMP_SUFFIX}")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:   # 2^48 names: a collision is astronomically rare
            continue


def fsync_directory(directory: str | os.PathLike) -> None:
    """Make a rename inside `directory` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:   # some filesystems refuse fsync on a directory; the rename still happened
        pass
    finally:
        os.close(fd)
