"""Files that are either wholly old or wholly new: every file cupyvae writes goes through here."""
from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

TMP_SUFFIX = ".tmp"   # a killed writer leaves ".<name>.<random>.tmp" next to its target
# The kernel applies the process umask to this mode, exactly as for a plain open(); no
# os.umask() round trip, which would race with other threads creating files.
_FILE_MODE = 0o666
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


def check_writable_file(path: str | os.PathLike, what: str) -> Path:
    """`path` as a Path if write_atomic could write a file there, else ValueError naming
    `what` and the path: checked before long work whose result goes there, so that the
    work is not lost.  Refused: a folder at `path`, an ancestor that is a file, and a
    nearest existing folder this process may not write into (write_atomic creates the
    missing folders below it)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder, not a file")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"{what} {path}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path}: the folder {ancestor} is not writable")
    return path


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write bytes so that `path` holds either its old content or all of `data`.

    The bytes go to a new temporary file `.<name>.<random>.tmp` in the same folder, which
    is flushed to disk (fsync) and then renamed over `path`; the folder is fsynced too, so
    the rename survives a power cut.  A symlink at `path` is replaced by the new file, its
    target is never written.  The file gets mode 0o666 less the process umask, applied by
    the kernel when the file is created.  The temporary name is chosen before the file is
    created, inside the clean-up's reach, so an exception at any moment (an error,
    Ctrl-C, SIGTERM) removes the temporary file and leaves `path` untouched.  An OSError
    (a directory at `path`, a full disk, a read-only folder) names `path`, not the
    temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path)
    try:
        with os.fdopen(_create_exclusively(tmp), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _naming(exc, path) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def write_json(path: str | os.PathLike, content) -> None:
    """`content` as indented JSON (a final newline), written atomically (write_atomic)."""
    write_atomic(path, (json.dumps(content, indent=2) + "\n").encode())


def _naming(exc: OSError, path: Path) -> OSError:
    """The same error about `path`, the file the caller asked for: the temporary name in
    `exc` (a directory at `path`, a full disk, a read-only folder) means nothing to a user."""
    return type(exc)(exc.errno, exc.strerror or str(exc), str(path))


def _temporary_name(path: Path) -> Path:
    """A name next to `path` that no file has (2^48 random names: a collision is
    astronomically rare, and O_EXCL refuses it anyway)."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}{TMP_SUFFIX}")
        if not os.path.lexists(tmp):
            return tmp


def _create_exclusively(tmp: Path) -> int:
    """O_EXCL never reuses (or follows a symlink at) an existing name."""
    return os.open(tmp, _CREATE_FLAGS, _FILE_MODE)


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


class JSONError(ValueError):
    """Text that is not usable JSON, for any reason (see parse_json)."""


def parse_json(text: str | bytes):
    """json.loads, with every way hostile text can fail it as one JSONError: bad syntax or
    UTF-8, an integer of more digits than Python converts (4300), and
    nesting deep enough to exhaust the recursion limit ('[' * 100000), which json raises as
    RecursionError.  Callers add the file name."""
    try:
        return json.loads(text)
    except RecursionError:
        raise JSONError("nested too deeply") from None
    except ValueError as exc:     # JSONDecodeError, UnicodeDecodeError, the int digit limit
        raise JSONError(f"{type(exc).__name__}: {exc}") from None
