"""Files that are either wholly old or wholly new: every file cupyvae writes goes through here."""
from __future__ import annotations

import os
import secrets
from pathlib import Path

# The kernel applies the process umask to this mode, exactly as for a plain open(); no
# os.umask() round trip, which would race with other threads creating files.
_FILE_MODE = 0o666


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write bytes so that `path` holds either its old content or all of `data`.

    The bytes go to `.<name>.<random>.tmp` beside `path`, are fsynced, and the temporary
    file is renamed over `path` (a symlink at `path` is replaced, its target untouched).
    The temporary name is chosen before the file is created, inside the clean-up's reach,
    so an exception at any moment (Ctrl-C, SIGTERM) leaves no temporary file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                     _FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
