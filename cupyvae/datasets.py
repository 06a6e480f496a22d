"""Datasets for training and evaluating VAEs, loaded as float32 NumPy arrays.

``load_dataset(name)`` returns a :class:`Dataset` for a registered name
(see :func:`available_datasets`) or for a local ``.npy`` / ``.npz`` file, or a
``.csv`` file of numeric features (``table.csv`` or ``table.csv#label=COLUMN``;
see :mod:`cupyvae.csvdata`).

Registered datasets and their splits:

``mnist``
    LeCun's IDX files: 60000 train / 10000 test images of shape (28, 28),
    int64 labels 0..9.
``fashion-mnist``
    Same layout as MNIST. Read from Debian's ``dataset-fashion-mnist``
    package when it is installed, downloaded otherwise.
``frey``
    Brendan Frey's 1965 face images of shape (28, 20), no labels. The last
    :data:`FREY_TEST_SIZE` images (frames of the same video, in order) are the
    test split.
``binarized-mnist``
    Larochelle's fixed binarization: 50000 train / 10000 test images of shape
    (28, 28), values exactly 0 or 1, no labels. The 10000-image validation
    file is not downloaded: :class:`Dataset` has no slot for it, and users who
    want the 60000-image training set of some papers should use ``mnist``
    with their own binarization.

Image values are scaled to [0, 1]. Downloads land in :func:`default_cache_dir`
(one sub-directory per dataset); every file is verified before it is moved into
the cache, and again each time it is used: against its pinned SHA-256 (MNIST,
Fashion-MNIST, binarized MNIST), or, where none is pinned (Frey, see
``FREY_SHA256``), structurally on download and then against the digest recorded
beside it (``<file>.sha256``).  The parsed binarized-MNIST cache stores the
SHA-256 of its bits and of the .amat it came from, both checked on every read.
Compressed files are read header first, and never inflated beyond what the
header declares.  A corrupt cached file is replaced atomically, so concurrent
loaders see the old or the new file, and one that vanishes under a loader counts
as not cached.  Every problem raises :class:`DatasetError` with a message that
names the file and what is wrong.
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import math
import os
import pathlib
import struct
import sys
import tempfile
import urllib.error
import urllib.request
import warnings
import zlib
from dataclasses import dataclass
from typing import Callable, Generic, Iterable, Mapping, TypeVar

import numpy as np

from .arrays import as_float32_examples
from .files import fsync_directory, write_atomic
from .numbers import nonfinite_problem
from .registry import Registry, did_you_mean

__all__ = [
    "Dataset",
    "DatasetError",
    "available_datasets",
    "default_cache_dir",
    "load_dataset",
    "register_dataset",
]

_T = TypeVar("_T")


# --------------------------------------------------------------------------
# Sources and checksums. Module-level so tests (and users behind a proxy or
# with a local mirror) can replace them.
# --------------------------------------------------------------------------

IDX_TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
IDX_TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
IDX_TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
IDX_TEST_LABELS = "t10k-labels-idx1-ubyte.gz"
IDX_FILENAMES = (IDX_TRAIN_IMAGES, IDX_TRAIN_LABELS, IDX_TEST_IMAGES, IDX_TEST_LABELS)

# yann.lecun.com now refuses most automated downloads; these two mirror it
# byte for byte.
MNIST_MIRRORS = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
]
MNIST_SHA256 = {
    IDX_TRAIN_IMAGES: "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    IDX_TRAIN_LABELS: "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    IDX_TEST_IMAGES: "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    IDX_TEST_LABELS: "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}

FASHION_MNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
# S3 *website* endpoints only speak plain HTTP; integrity comes from the
# SHA-256 check, not from the transport. The GitHub copy is the one the
# Fashion-MNIST README points to.
FASHION_MNIST_MIRRORS = [
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
]
# The files the mirrors serve. Upstream only publishes MD5s; these SHA-256s
# are of bytes whose MD5s equal the published ones (8d4fb7e6..., 25c81989...,
# bef4ecab..., bb300cfd...), see the note on the Debian table below.
FASHION_MNIST_SHA256 = {
    IDX_TRAIN_IMAGES: "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    IDX_TRAIN_LABELS: "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    IDX_TEST_IMAGES: "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    IDX_TEST_LABELS: "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
}
# SHA-256 of the files shipped by Debian's dataset-fashion-mnist
# 0.0~git20200523.55506a9-1 (computed from the installed package).
#
# Checked against upstream: these .gz files do NOT have the published MD5s,
# because Debian's build (strip-nondeterminism) rewrote each gzip header: it
# dropped the stored file name and set the timestamp to the package date.
# The compressed stream is untouched. Putting back the original header
# (FNAME flag, the name, mtime 1504176606 for the train files and 1504176627
# for the t10k files, i.e. 2017-08-31) reproduces all four published MD5s
# exactly, and the SHA-256s of those rebuilt files are FASHION_MNIST_SHA256
# above. So the Debian files hold exactly the published Fashion-MNIST data.
FASHION_MNIST_DEBIAN_SHA256 = {
    IDX_TRAIN_IMAGES: "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    IDX_TRAIN_LABELS: "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    IDX_TEST_IMAGES: "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    IDX_TEST_LABELS: "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}
# SHA-256 of the decompressed IDX bytes (identical for upstream and Debian).
# A rebuilt Debian package gets a new gzip timestamp and so a new .gz digest;
# checking the payload keeps such a system copy usable without weakening the
# check.
FASHION_MNIST_PAYLOAD_SHA256 = {
    IDX_TRAIN_IMAGES: "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    IDX_TRAIN_LABELS: "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    IDX_TEST_IMAGES: "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    IDX_TEST_LABELS: "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

FREY_FILENAME = "frey_rawface.mat"
FREY_MIRRORS = ["https://cs.nyu.edu/~roweis/data/"]
# SHA-256 of the published Frey file: NOT PINNED YET.  No copy of frey_rawface.mat and no
# published checksum could be obtained when this table was written (no network access),
# and a digest must never be guessed.  Fill it in from a download you trust
# (`sha256sum frey_rawface.mat`).  Until then the file is checked structurally when it
# enters the cache, and its digest is recorded next to it (frey_rawface.mat.sha256) and
# verified on every later use, so a cached copy that changes afterwards is still refused.
FREY_SHA256: dict[str, str | None] = {FREY_FILENAME: None}
FREY_IMAGE_SHAPE = (28, 20)
FREY_NUM_IMAGES = 1965
FREY_TEST_SIZE = 200

BINARIZED_MNIST_MIRRORS = [
    "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/",
]
# Rows per split file; "valid" (10000) is listed for completeness but is not
# downloaded (see the module docstring).
BINARIZED_MNIST_ROWS = {"train": 50000, "valid": 10000, "test": 10000}
BINARIZED_MNIST_PIXELS = 28 * 28
# SHA-256 of Larochelle's files, as published by TensorFlow Datasets
# (tensorflow/datasets: tensorflow_datasets/datasets/binarized_mnist/checksums.tsv, and the
# older url_checksums/binarized_mnist.txt, which agrees), with the sizes listed there:
# 78400000 and 15680000 bytes, i.e. 50000 and 10000 lines of 784 one-character values and
# their separators.  Not re-checked against a download here (no network access).
BINARIZED_MNIST_SHA256: dict[str, str | None] = {
    "binarized_mnist_train.amat": "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d",
    "binarized_mnist_valid.amat": "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2",
    "binarized_mnist_test.amat": "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c",
}

# .npy files and .npz files with a single ``x`` get their last 10% as the test
# split (no shuffling: shuffle before saving if the rows are ordered).
NPY_TEST_FRACTION = 0.1
NPY_MIN_ROWS_FOR_SPLIT = 10

DOWNLOAD_TIMEOUT_S = 60.0
_CHUNK_BYTES = 1 << 20
_USER_AGENT = "cupyvae-datasets/0.1 (+https://pypi.org/project/cupyvae/)"


# --------------------------------------------------------------------------
# Public types
# --------------------------------------------------------------------------

class DatasetError(ValueError):
    """A dataset could not be found, fetched, verified or parsed."""


# eq=False: the generated __eq__ would compare arrays element-wise and fail
# with "truth value of an array is ambiguous"; identity is what callers need.
@dataclass(frozen=True, eq=False)
class Dataset:
    """Train and test arrays of one dataset.

    ``x_*`` are float32 with shape ``(N, *data_shape)``; ``y_*`` are int64 of
    shape ``(N,)`` or None when the dataset has no labels.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray | None
    x_test: np.ndarray
    y_test: np.ndarray | None

    @property
    def data_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def __post_init__(self) -> None:
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise DatasetError(
                f"dataset {self.name!r}: train samples have shape {self.x_train.shape[1:]} "
                f"but test samples have shape {self.x_test.shape[1:]}")
        for split, x, y in (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)):
            if y is not None and y.shape != (len(x),):
                raise DatasetError(
                    f"dataset {self.name!r}: {len(x)} {split} samples but labels of shape {y.shape}")


Loader = Callable[[pathlib.Path, bool], Dataset]
DATASETS: Registry[Loader] = Registry("dataset")


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    """Decorator: register ``loader(directory, download) -> Dataset`` under ``name``.

    ``directory`` is the dataset's own folder inside the cache; ``download``
    says whether the loader may fetch missing files.
    """
    return DATASETS.register(name)


def available_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset` (besides .npy/.npz paths)."""
    return DATASETS.names()


def default_cache_dir() -> pathlib.Path:
    """$CUPYVAE_DATA if set, else $XDG_CACHE_HOME/cupyvae, else ~/.cache/cupyvae."""
    explicit = os.environ.get("CUPYVAE_DATA")
    if explicit:
        return pathlib.Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    # The XDG spec says relative values are invalid and must be ignored.
    if xdg and os.path.isabs(xdg):
        return pathlib.Path(xdg) / "cupyvae"
    return pathlib.Path.home() / ".cache" / "cupyvae"


def load_dataset(name_or_path: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                 download: bool = True) -> Dataset:
    """Load a registered dataset by name, or a local ``.npy`` / ``.npz`` / ``.csv`` file
    (``table.csv#label=COLUMN`` names a label column; see :mod:`cupyvae.csvdata`).  An
    unknown name is a DatasetError that suggests the closest registered one.

    ``cache_dir`` defaults to :func:`default_cache_dir`. With
    ``download=False`` a missing file raises instead of being fetched.
    """
    key = os.fspath(name_or_path)
    if key in DATASETS:
        root = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
        return DATASETS.get(key)(root.expanduser() / key, download)
    from .csvdata import is_csv_reference, load_csv
    if is_csv_reference(key):
        return load_csv(key)
    path = pathlib.Path(key).expanduser()
    suffix = path.suffix.lower()
    if suffix in _ARRAY_FILE_READERS:
        if not path.is_file():
            raise DatasetError(f"{path}: no such file")
        return _ARRAY_FILE_READERS[suffix](path)
    if path.exists():
        raise DatasetError(
            f"{path}: unsupported file type {path.suffix!r}; "
            f"local datasets must be {', '.join(sorted(_ARRAY_FILE_READERS))} or .csv files")
    raise DatasetError(
        f"unknown dataset {key!r}{_did_you_mean(key)}; available datasets: "
        f"{', '.join(available_datasets())} (or the path of a .npy, .npz or .csv file)")


def _did_you_mean(key: str) -> str:
    """' (did you mean 'fashion-mnist'?)' for a near miss of a registered name: case and
    '_' for '-' are forgiven first, then difflib's closest match (registry.did_you_mean)."""
    return did_you_mean(key, available_datasets())


# --------------------------------------------------------------------------
# Fetching: cache lookup, mirrors, atomic download, verification
# --------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class _Fetched(Generic[_T]):
    """A verified file in the cache: its path, its SHA-256 and what ``parse`` read from it."""
    path: pathlib.Path
    sha256: str
    value: _T


def _fetch(filename: str, mirrors: Iterable[str], directory: pathlib.Path, download: bool,
           sha256: str | None, parse: Callable[[pathlib.Path], _T] | None = None) -> _Fetched[_T]:
    """``directory/filename``, verified and parsed, downloading it first if needed.

    ``sha256`` is the pinned digest of the published file.  Where none is pinned (None),
    the digest recorded when the file entered the cache (``<filename>.sha256``, in
    ``sha256sum`` format) is checked instead.  ``parse`` raises DatasetError when the
    file is malformed and otherwise returns what it read.  A cached file that fails is
    replaced by a fresh download (atomically: a concurrent loader sees the old or the new
    file, never none).  A file that vanishes while it is checked (another loader replacing
    it) counts as not cached.
    """
    path = directory / filename
    mirrors = list(mirrors)

    def check(candidate: pathlib.Path) -> _Fetched[_T]:
        recorded = None if sha256 is not None or candidate != path else _read_digest_record(path)
        return _verify(candidate, filename, sha256 or recorded, parse, recorded is not None)

    seen = None   # identity of a corrupt cached copy, so only that copy is ever removed
    try:
        fetched = check(path)
        if sha256 is None and not _digest_record(path).is_file():
            _write_digest_record(path, fetched.sha256)   # a hand-placed copy: record it now
        return fetched
    except FileNotFoundError:
        pass
    except DatasetError as problem:
        if not download:
            raise DatasetError(
                f"cached file {path} is corrupt ({problem}); delete it and call load_dataset "
                f"with download=True, or replace it with a good copy from {', '.join(_urls(filename, mirrors))}"
            ) from problem
        warnings.warn(f"cached file {path} is corrupt ({problem}); downloading it again",
                      RuntimeWarning, stacklevel=3)
        seen = _identity(path)
    if not download:
        raise DatasetError(
            f"{filename} is not in {directory} and download=False; call load_dataset with "
            f"download=True to fetch it, or copy it there from one of: {', '.join(_urls(filename, mirrors))}")
    try:
        fetched = _download_first_good_copy(filename, mirrors, directory, check)
    except DatasetError:
        if seen is not None and _identity(path) == seen:
            path.unlink(missing_ok=True)
        raise
    if sha256 is None:
        _write_digest_record(path, fetched.sha256)
    return fetched


def _verify(path: pathlib.Path, filename: str, expected: str | None,
            parse: Callable[[pathlib.Path], _T] | None, from_record: bool) -> _Fetched[_T]:
    actual = _sha256_of_file(path)
    if expected is not None and actual != expected:
        source = "the digest recorded when it was cached" if from_record else "the published digest"
        raise DatasetError(f"{filename}: SHA-256 mismatch: expected {expected} ({source}), got {actual}")
    return _Fetched(path, actual, None if parse is None else parse(path))


def _digest_record(path: pathlib.Path) -> pathlib.Path:
    return path.with_name(path.name + ".sha256")


def _read_digest_record(path: pathlib.Path) -> str | None:
    """The digest recorded for ``path``, None if there is no record; a damaged record is a
    DatasetError (the file can no longer be vouched for)."""
    record = _digest_record(path)
    try:
        text = record.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return None
    digest = text.split()[0] if text.split() else ""
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise DatasetError(f"{record} is damaged: expected a SHA-256 hex digest, found {text[:80]!r}")
    return digest


def _write_digest_record(path: pathlib.Path, digest: str) -> None:
    try:
        write_atomic(_digest_record(path), f"{digest}  {path.name}\n".encode())
    except OSError:   # a read-only (shared) cache: the file was verified, only the record is lost
        pass


def _identity(path: pathlib.Path) -> tuple | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _urls(filename: str, mirrors: Iterable[str]) -> list[str]:
    return [mirror.rstrip("/") + "/" + filename for mirror in mirrors]


def _download_first_good_copy(filename: str, mirrors: list[str], directory: pathlib.Path,
                              check: Callable[[pathlib.Path], _Fetched[_T]]) -> _Fetched[_T]:
    """Try each mirror in order; the first copy that passes ``check`` goes into the cache."""
    if not mirrors:
        raise DatasetError(f"{filename}: no download mirrors configured")
    directory.mkdir(parents=True, exist_ok=True)
    failures = []
    for url in _urls(filename, mirrors):
        temporary = _download_to_temporary(url, directory, filename, failures)
        if temporary is None:
            continue
        try:
            # Verify before the rename so the cache never holds a bad file,
            # even for a moment another process could see.
            result = check(temporary)
        except DatasetError as problem:
            # The check names the temporary .part file, which means nothing to the user.
            failures.append(f"{url}: {str(problem).replace(str(temporary), filename)}")
            temporary.unlink(missing_ok=True)
            continue
        os.replace(temporary, directory / filename)
        fsync_directory(directory)
        return _Fetched(directory / filename, result.sha256, result.value)
    _remove_if_empty(directory)
    tried = "\n  ".join(failures)
    raise DatasetError(f"could not download a good copy of {filename}; tried:\n  {tried}\n"
                       f"{_by_hand(filename, directory)}")


def _by_hand(filename: str, directory: pathlib.Path) -> str:
    """Where to put a file fetched on another machine (offline machines, proxies)."""
    return (f"Without internet access, download {filename} elsewhere and copy it to "
            f"{directory / filename} (the cache folder; set CUPYVAE_DATA to use another "
            f"folder than {directory.parent}).")


def _download_to_temporary(url: str, directory: pathlib.Path, filename: str,
                           failures: list[str]) -> pathlib.Path | None:
    """Download ``url`` next to its final place; on failure record why and return None."""
    handle, name = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=directory)
    temporary = pathlib.Path(name)
    try:
        with os.fdopen(handle, "wb") as out:
            _copy_url_to(url, out)
            out.flush()
            os.fsync(out.fileno())   # on disk before the rename makes it the cached copy
        return temporary
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError, DatasetError) as error:
        failures.append(f"{url}: {error}")
        temporary.unlink(missing_ok=True)
        return None
    except BaseException:  # Ctrl-C mid-download must not leave a .part file behind
        temporary.unlink(missing_ok=True)
        raise


def _copy_url_to(url: str, out) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        progress = _Progress(url, total)
        received = 0
        while chunk := response.read(_CHUNK_BYTES):
            out.write(chunk)
            received += len(chunk)
            progress.update(received)
        progress.finish(received)
    if total is not None and received != total:
        raise DatasetError(f"connection closed after {received} of {total} bytes")


class _Progress:
    """Download progress on stderr: a live percentage on a terminal, one line otherwise."""

    def __init__(self, url: str, total: int | None):
        self.url = url
        self.total = total
        self.live = sys.stderr.isatty()
        self.last_percent = -1
        if not self.live:
            size = f" ({total / 1e6:.1f} MB)" if total else ""
            print(f"cupyvae: downloading {url}{size}", file=sys.stderr, flush=True)

    def update(self, received: int) -> None:
        if not self.live or not self.total:
            return
        percent = min(100, received * 100 // self.total)
        if percent != self.last_percent:
            self.last_percent = percent
            print(f"\rcupyvae: downloading {self.url} {percent:3d}%", end="", file=sys.stderr, flush=True)

    def finish(self, received: int) -> None:
        if self.live:
            print(f"\rcupyvae: downloaded {self.url} ({received / 1e6:.1f} MB)", file=sys.stderr, flush=True)


def _remove_if_empty(directory: pathlib.Path) -> None:
    """Undo the mkdir of a failed first download, so a failure leaves no trace."""
    try:
        directory.rmdir()
    except OSError:
        pass


def _sha256_of_file(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------
# IDX (MNIST-style) files
# --------------------------------------------------------------------------

_IDX_UBYTE = 0x08
_IDX_NDIM = {IDX_TRAIN_IMAGES: 3, IDX_TEST_IMAGES: 3, IDX_TRAIN_LABELS: 1, IDX_TEST_LABELS: 1}
# Deflate's best case is one 258-byte match per 2 bits (1032:1), so a gzip file of n bytes
# cannot hold more than about 1032 n: a header declaring more is refused before any reading.
_MAX_DEFLATE_RATIO = 1032


def _read_idx_gz(path: pathlib.Path, expected_ndim: int) -> np.ndarray:
    """Parse a gzipped IDX file of unsigned bytes into a uint8 array."""
    raw = _read_idx_bytes(path, expected_ndim)
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(expected_ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * expected_ndim).reshape(dims)


def _read_idx_bytes(path: pathlib.Path, expected_ndim: int) -> bytes:
    """The decompressed IDX file (header and data), header checked before the data is
    read, and never more decompressed than the header declares (plus one byte, to see
    trailing data): a gzip bomb costs nothing."""
    try:
        compressed_size = path.stat().st_size
        with gzip.open(path, "rb") as f:
            header = _idx_header(path, f, expected_ndim)
            dims = tuple(int.from_bytes(header[4 + 4 * i: 8 + 4 * i], "big") for i in range(expected_ndim))
            data_size = math.prod(dims)
            _check_idx_size(path, dims, len(header) + data_size, compressed_size)
            data = f.read(data_size)
            trailing = f.read(1)
    except (OSError, EOFError, zlib.error) as error:
        raise DatasetError(f"{path}: not a readable gzip file ({error})") from error
    expected_size = len(header) + data_size
    if len(data) < data_size or trailing:
        held = f"{len(header) + len(data)} bytes" if not trailing else "more"
        problem = "truncated" if not trailing else "has trailing bytes"
        raise DatasetError(
            f"{path}: IDX file {problem}: header says dims {dims}, which needs {expected_size} bytes, "
            f"but the file holds {held}")
    return header + data


def _idx_header(path: pathlib.Path, f, expected_ndim: int) -> bytes:
    header_size = 4 + 4 * expected_ndim
    header = f.read(header_size)
    if len(header) >= 4:
        zero, dtype_code, ndim = int.from_bytes(header[0:2], "big"), header[2], header[3]
        if zero != 0 or dtype_code != _IDX_UBYTE or ndim != expected_ndim:
            raise DatasetError(
                f"{path}: bad IDX magic number 0x{header[:4].hex()}: expected "
                f"0x0000{_IDX_UBYTE:02x}{expected_ndim:02x} (unsigned bytes, {expected_ndim} dimension(s))")
    if len(header) < header_size:
        raise DatasetError(f"{path}: truncated IDX header: expected {header_size} bytes, got {len(header)}")
    return header


def _check_idx_size(path: pathlib.Path, dims: tuple[int, ...], size: int, compressed_size: int) -> None:
    if size > np.iinfo(np.int64).max:
        raise DatasetError(f"{path}: IDX header declares dims {dims}, {size} bytes in all, "
                           "more than any array can hold (the product overflows int64)")
    if size > _MAX_DEFLATE_RATIO * compressed_size + 1024:
        raise DatasetError(f"{path}: IDX header declares dims {dims}, {size} bytes, but a gzip file "
                           f"of {compressed_size} bytes cannot hold more than about "
                           f"{_MAX_DEFLATE_RATIO * compressed_size} bytes")


def _idx_dataset(name: str, paths: Mapping[str, pathlib.Path]) -> Dataset:
    x_train, y_train = _idx_images_and_labels(paths[IDX_TRAIN_IMAGES], paths[IDX_TRAIN_LABELS])
    x_test, y_test = _idx_images_and_labels(paths[IDX_TEST_IMAGES], paths[IDX_TEST_LABELS])
    return Dataset(name, x_train, y_train, x_test, y_test)


def _idx_images_and_labels(images_path: pathlib.Path, labels_path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    images = _read_idx_gz(images_path, expected_ndim=3)
    labels = _read_idx_gz(labels_path, expected_ndim=1)
    if len(images) != len(labels):
        raise DatasetError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels")
    return _scale_bytes(images), labels.astype(np.int64)


def _scale_bytes(array: np.ndarray) -> np.ndarray:
    return array.astype(np.float32) / np.float32(255)


@register_dataset("mnist")
def _load_mnist(directory: pathlib.Path, download: bool) -> Dataset:
    paths = {f: _fetch(f, MNIST_MIRRORS, directory, download, MNIST_SHA256[f]).path
             for f in IDX_FILENAMES}
    return _idx_dataset("mnist", paths)


@register_dataset("fashion-mnist")
def _load_fashion_mnist(directory: pathlib.Path, download: bool) -> Dataset:
    paths = {}
    for filename in IDX_FILENAMES:
        system_copy = pathlib.Path(FASHION_MNIST_SYSTEM_DIR) / filename
        if system_copy.is_file():
            _check_fashion_mnist_system_copy(system_copy, filename)
            paths[filename] = system_copy
        else:
            paths[filename] = _fetch(filename, FASHION_MNIST_MIRRORS, directory, download,
                                     FASHION_MNIST_SHA256[filename]).path
    return _idx_dataset("fashion-mnist", paths)


def _check_fashion_mnist_system_copy(path: pathlib.Path, filename: str) -> None:
    """Accept the Debian or upstream .gz, or any re-gzipped copy of the same IDX bytes."""
    known = {FASHION_MNIST_DEBIAN_SHA256[filename], FASHION_MNIST_SHA256[filename]}
    actual = _sha256_of_file(path)
    if actual in known:
        return
    expected_payload = FASHION_MNIST_PAYLOAD_SHA256[filename]
    try:
        payload = hashlib.sha256(_read_idx_bytes(path, _IDX_NDIM[filename])).hexdigest()
    except DatasetError as error:
        payload = f"unreadable ({str(error).replace(f'{path}: ', '')})"
    if payload != expected_payload:
        raise DatasetError(
            f"{path}: corrupt system copy of Fashion-MNIST: SHA-256 {actual} is none of {sorted(known)}, "
            f"and the decompressed data's SHA-256 is {payload}, expected {expected_payload}; "
            f"reinstall it (apt-get install --reinstall dataset-fashion-mnist)")


# --------------------------------------------------------------------------
# Frey faces
# --------------------------------------------------------------------------

def _read_frey_mat(path: pathlib.Path) -> np.ndarray:
    """Return the ``ff`` matrix (pixels x images, uint8) after checking it.

    The variable headers are read first (`_mat5_variables`, which inflates a compressed
    variable only as far as its header), so a file declaring anything but a uint8 ``ff``
    of the expected shape is refused before any data is read; then only ``ff`` is loaded
    (loadmat skips the others unread): a compressed .mat bomb costs nothing.
    """
    import scipy.io  # deferred: only this loader needs SciPy, and it is slow to import

    expected_shape = (FREY_IMAGE_SHAPE[0] * FREY_IMAGE_SHAPE[1], FREY_NUM_IMAGES)
    declared = _mat5_variables(path)
    if declared is not None:
        _check_frey_variable(path, declared, expected_shape)
    try:
        contents = scipy.io.loadmat(path, variable_names=["ff"])
    except Exception as error:  # loadmat raises many types (ValueError, MatReadError, TypeError, ...)
        raise DatasetError(f"{path}: not a readable MATLAB file ({type(error).__name__}: {error})") from error
    if "ff" not in contents:   # a MATLAB 4 file (no headers read above)
        found = sorted(scipy.io.whosmat(path))
        raise DatasetError(f"{path}: no variable 'ff' (found: {', '.join(n for n, *_ in found) or 'nothing'})")
    faces = contents["ff"]
    if faces.dtype != np.uint8 or faces.shape != expected_shape:
        raise DatasetError(
            f"{path}: variable 'ff' is {faces.dtype} with shape {faces.shape}, expected uint8 with shape {expected_shape}")
    return faces


def _check_frey_variable(path: pathlib.Path, declared: dict, expected_shape: tuple[int, int]) -> None:
    if "ff" not in declared:
        found = sorted(k for k in declared if not k.startswith("__"))
        raise DatasetError(f"{path}: no variable 'ff' (found: {', '.join(found) or 'nothing'})")
    kind, shape = declared["ff"]
    if kind != "uint8" or shape != expected_shape:
        raise DatasetError(
            f"{path}: variable 'ff' is {kind} with shape {shape}, expected uint8 with shape {expected_shape}")


# MATLAB 5 MAT-file layout (MathWorks, "MAT-File Format", the Level 5 chapter): a 128-byte header
# ending in the byte-order mark "IM" (little-endian) or "MI", then one tagged element per
# variable: (type, byte count), miCOMPRESSED elements holding a zlib stream of a miMATRIX
# element, which opens with array flags (class in the low byte), dimensions and name.
_MI_MATRIX, _MI_COMPRESSED = 14, 15
_MX_CLASSES = {1: "cell", 2: "struct", 3: "object", 4: "char", 5: "sparse", 6: "double",
               7: "single", 8: "int8", 9: "uint8", 10: "int16", 11: "uint16", 12: "int32",
               13: "uint32", 14: "int64", 15: "uint64"}
_MAT5_HEADER_PREFIX = 512   # bytes of a variable read to find its class, dimensions and name


def _mat5_variables(path: pathlib.Path) -> dict[str, tuple[str, tuple[int, ...]]] | None:
    """name -> (class, dims) of each variable of a MATLAB 5 file, from the headers alone
    (None for anything else, which loadmat then judges).  Reads at most a few kB per
    variable, however large its data claims to be."""
    with open(path, "rb") as f:
        header = f.read(128)
        if len(header) < 128 or header[126:128] not in (b"IM", b"MI"):
            return None
        order = "<" if header[126:128] == b"IM" else ">"
        variables = {}
        while tag := f.read(8):
            if len(tag) < 8:
                raise DatasetError(f"{path}: truncated MATLAB file (a variable tag is cut off)")
            kind, size = struct.unpack(order + "II", tag)
            start = f.tell()
            if kind == _MI_COMPRESSED:
                element = _inflate_prefix(path, f, size, _MAT5_HEADER_PREFIX)
            else:
                element = tag + f.read(min(size, _MAT5_HEADER_PREFIX))
            name, described = _mat5_matrix_header(path, element, order)
            variables[name] = described
            f.seek(start + size)
    return variables


def _inflate_prefix(path: pathlib.Path, f, size: int, want: int) -> bytes:
    """The first `want` decompressed bytes of the zlib stream of `size` bytes at f's position;
    output is capped at every step, so memory stays at a few kB."""
    inflater, out, left = zlib.decompressobj(), b"", size
    try:
        while len(out) < want and (left > 0 or inflater.unconsumed_tail):
            chunk = f.read(min(4096, left))
            left -= len(chunk)
            if not chunk and not inflater.unconsumed_tail:
                break
            out += inflater.decompress(inflater.unconsumed_tail + chunk, want - len(out))
    except zlib.error as error:
        raise DatasetError(f"{path}: corrupt compressed variable in MATLAB file ({error})") from error
    return out


def _mat5_matrix_header(path: pathlib.Path, element: bytes, order: str) -> tuple[str, tuple[str, tuple[int, ...]]]:
    try:
        kind, _size, _flags_tag, _flags_size, flags = struct.unpack_from(order + "IIIII", element, 0)
        if kind != _MI_MATRIX:
            raise ValueError(f"element type {kind}, expected miMATRIX ({_MI_MATRIX})")
        _dims_type, dims_size = struct.unpack_from(order + "II", element, 24)
        dims = struct.unpack_from(order + f"{dims_size // 4}i", element, 32)
        name_at = 32 + dims_size + (-dims_size % 8)
        (name_tag,) = struct.unpack_from(order + "I", element, name_at)
        if name_tag >> 16:   # "small data element": length in the upper half, data in 4 bytes
            name = element[name_at + 4:name_at + 4 + (name_tag >> 16)]
        else:
            (length,) = struct.unpack_from(order + "I", element, name_at + 4)
            name = element[name_at + 8:name_at + 8 + length]
            if len(name) < length:
                raise ValueError("variable name is cut off")
    except (struct.error, ValueError) as error:
        raise DatasetError(f"{path}: malformed MATLAB variable header ({error})") from error
    return name.decode("latin-1"), (_MX_CLASSES.get(flags & 0xFF, f"class {flags & 0xFF}"), tuple(dims))


@register_dataset("frey")
def _load_frey(directory: pathlib.Path, download: bool) -> Dataset:
    faces = _fetch(FREY_FILENAME, FREY_MIRRORS, directory, download, FREY_SHA256.get(FREY_FILENAME),
                   _read_frey_mat).value
    # Each column is one image stored row by row (28 rows of 20 pixels), so
    # transposing and a C-order reshape gives upright faces.
    images = _scale_bytes(faces.T.reshape(-1, *FREY_IMAGE_SHAPE))
    if not 0 < FREY_TEST_SIZE < len(images):
        raise DatasetError(f"frey: FREY_TEST_SIZE={FREY_TEST_SIZE} must be between 1 and {len(images) - 1}")
    train, test = images[:-FREY_TEST_SIZE], images[-FREY_TEST_SIZE:]
    return Dataset("frey", np.ascontiguousarray(train), None, np.ascontiguousarray(test), None)


# --------------------------------------------------------------------------
# Binarized MNIST (Larochelle's .amat text files)
# --------------------------------------------------------------------------

_ASCII_ZERO = ord("0")
_ASCII_SPACE = ord(" ")


def _parse_binary_amat(path: pathlib.Path, expected_rows: int) -> np.ndarray:
    """Parse a text file of 0/1 values, one image per line, into uint8 (rows, 784).

    np.loadtxt takes tens of seconds for the 50000-line training file;
    treating the text as one byte array takes a fraction of a second.
    """
    text = np.fromfile(path, dtype=np.uint8)
    is_value = text > _ASCII_SPACE  # space, tab, CR, LF (and other control bytes) separate values
    _reject_bad_amat_values(path, text, is_value)
    per_line = _values_per_line(text, is_value)
    non_blank = per_line[per_line > 0]
    wrong = np.flatnonzero((per_line > 0) & (per_line != BINARIZED_MNIST_PIXELS))
    if wrong.size:
        line = int(wrong[0])
        raise DatasetError(
            f"{path}: line {line + 1} has {per_line[line]} values, expected {BINARIZED_MNIST_PIXELS}")
    if len(non_blank) != expected_rows:
        raise DatasetError(f"{path}: {len(non_blank)} rows, expected {expected_rows}")
    return (text[is_value] - _ASCII_ZERO).reshape(expected_rows, BINARIZED_MNIST_PIXELS)


def _reject_bad_amat_values(path: pathlib.Path, text: np.ndarray, is_value: np.ndarray) -> None:
    """Every value must be a lone '0' or '1' between whitespace."""
    bad_char = is_value & ((text < _ASCII_ZERO) | (text > _ASCII_ZERO + 1))
    multi_char = np.zeros_like(is_value)
    multi_char[1:] = is_value[1:] & is_value[:-1]
    bad = np.flatnonzero(bad_char | multi_char)
    if bad.size == 0:
        return
    position = int(bad[0])
    start = position
    while start > 0 and is_value[start - 1]:
        start -= 1
    end = position
    while end < len(text) and is_value[end]:
        end += 1
    token = bytes(text[start:end]).decode("ascii", errors="replace")
    line = int(np.count_nonzero(text[:start] == ord("\n"))) + 1
    raise DatasetError(f"{path}: line {line}: value {token!r} is not 0 or 1")


def _values_per_line(text: np.ndarray, is_value: np.ndarray) -> np.ndarray:
    line_starts = np.concatenate(([0], np.flatnonzero(text == ord("\n")) + 1))
    line_starts = line_starts[line_starts < len(text)]  # no empty segment after a final newline
    if line_starts.size == 0:
        return np.zeros(0, dtype=np.int32)
    # Every segment is non-empty here, which is what reduceat needs to sum it.
    # Summing a uint8 view into int32 is ~10x faster than bools into int64.
    return np.add.reduceat(is_value.view(np.uint8), line_starts, dtype=np.int32)


def _load_binarized_split(split: str, directory: pathlib.Path, download: bool) -> np.ndarray:
    """uint8 (rows, 784) bits of one split, from the parsed cache when it is sound."""
    rows = BINARIZED_MNIST_ROWS[split]
    source = f"binarized_mnist_{split}.amat"
    source_sha256 = BINARIZED_MNIST_SHA256.get(source)
    parsed_path = directory / f"binarized_mnist_{split}.npz"
    bits = _read_parsed_amat_cache(parsed_path, rows, source_sha256)
    if bits is not None:
        return bits
    fetched = _fetch(source, BINARIZED_MNIST_MIRRORS, directory, download, source_sha256,
                     lambda path: _parse_binary_amat(path, rows))
    _write_parsed_amat_cache(parsed_path, fetched.value, fetched.sha256)
    (directory / f"binarized_mnist_{split}.npy").unlink(missing_ok=True)   # the cache before digests
    return fetched.value


def _write_parsed_amat_cache(path: pathlib.Path, bits: np.ndarray, source_sha256: str) -> None:
    """The parsed bits with their own SHA-256 and that of the .amat they came from."""
    buffer = io.BytesIO()
    np.savez(buffer, bits=bits, bits_sha256=np.array(_array_sha256(bits)),
             source_sha256=np.array(source_sha256))
    write_atomic(path, buffer.getvalue())


def _read_parsed_amat_cache(path: pathlib.Path, rows: int, source_sha256: str | None) -> np.ndarray | None:
    """The cached bits if the cache is sound, else None (and the cache is removed): the
    bits must match their stored digest and, where the source's digest is pinned, the
    cache must have been built from that source.  A cache that vanishes while it is read
    (another loader replacing it) is simply not cached."""
    seen = _identity(path)
    if seen is None:
        return None
    try:
        with np.load(path, allow_pickle=False) as cache:
            bits, bits_sha256, built_from = cache["bits"], str(cache["bits_sha256"]), str(cache["source_sha256"])
        if bits.dtype != np.uint8 or bits.shape != (rows, BINARIZED_MNIST_PIXELS):
            raise ValueError(f"holds {bits.dtype} {bits.shape}, expected uint8 ({rows}, {BINARIZED_MNIST_PIXELS})")
        if _array_sha256(bits) != bits_sha256:
            raise ValueError("its bits do not match their SHA-256 digest")
        if source_sha256 is not None and built_from != source_sha256:
            raise ValueError(f"it was built from a file with SHA-256 {built_from}, not the published "
                             f"{source_sha256}")
    except FileNotFoundError:
        return None
    except Exception as problem:  # np.load and the checks raise many types for a damaged file
        warnings.warn(f"parsed cache {path} is unusable ({problem}); rebuilding it", RuntimeWarning, stacklevel=4)
        if _identity(path) == seen:   # not a good copy another loader has just put there
            path.unlink(missing_ok=True)
        return None
    return bits


def _array_sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()


@register_dataset("binarized-mnist")
def _load_binarized_mnist(directory: pathlib.Path, download: bool) -> Dataset:
    train = _load_binarized_split("train", directory, download)
    test = _load_binarized_split("test", directory, download)
    shape = (-1, 28, 28)
    return Dataset("binarized-mnist", train.reshape(shape).astype(np.float32), None,
                   test.reshape(shape).astype(np.float32), None)


# --------------------------------------------------------------------------
# Local .npy / .npz files
# --------------------------------------------------------------------------

_NPZ_KEYS = {"x_train", "x_test", "y_train", "y_test", "x", "y"}


def _load_npy_file(path: pathlib.Path) -> Dataset:
    x = _as_samples(path, "array", _read_numpy_file(path, np.ndarray, lambda array: array))
    return _split_off_test(path, x, None)


def _load_npz_file(path: pathlib.Path) -> Dataset:
    arrays = _read_numpy_file(path, np.lib.npyio.NpzFile,
                              lambda archive: _npz_members(path, archive))
    unexpected = sorted(set(arrays) - _NPZ_KEYS)
    if unexpected:
        raise DatasetError(f"{path}: unexpected arrays {unexpected}; allowed names: {sorted(_NPZ_KEYS)}")
    if "x" in arrays and ({"x_train", "x_test", "y_train", "y_test"} & set(arrays)):
        raise DatasetError(f"{path}: holds both 'x' and explicit splits ({sorted(arrays)}); use one layout")
    if "x" in arrays:
        x = _as_samples(path, "x", arrays["x"])
        y = _as_labels(path, "y", arrays["y"], len(x)) if "y" in arrays else None
        return _split_off_test(path, x, y)
    if "x_train" not in arrays:
        raise DatasetError(f"{path}: needs an array 'x_train' (or 'x'); found {sorted(arrays) or 'none'}")
    if "y" in arrays:
        raise DatasetError(f"{path}: 'y' goes with 'x'; with 'x_train' name the labels 'y_train'")
    if "y_test" in arrays and "x_test" not in arrays:
        raise DatasetError(f"{path}: has 'y_test' but no 'x_test'")
    x_train = _as_samples(path, "x_train", arrays["x_train"])
    y_train = _as_labels(path, "y_train", arrays["y_train"], len(x_train)) if "y_train" in arrays else None
    if "x_test" in arrays:
        x_test = _as_samples(path, "x_test", arrays["x_test"])
        y_test = _as_labels(path, "y_test", arrays["y_test"], len(x_test)) if "y_test" in arrays else None
    else:
        x_test = np.empty((0, *x_train.shape[1:]), dtype=np.float32)
        y_test = None if y_train is None else np.empty(0, dtype=np.int64)
    if x_test.shape[1:] != x_train.shape[1:]:
        raise DatasetError(f"{path}: x_train samples have shape {x_train.shape[1:]}, x_test samples {x_test.shape[1:]}")
    if (y_train is None) != (y_test is None):
        raise DatasetError(f"{path}: labels for one split only; give both y_train and y_test, or neither")
    return Dataset(path.name, x_train, y_train, x_test, y_test)


def _npz_members(path: pathlib.Path, archive) -> dict[str, np.ndarray]:
    """Every member of an .npz archive by name; DatasetError naming the file and member
    for one that is no .npy array (NpzFile hands such a member back as raw bytes)."""
    members = {}
    for key in archive.files:
        member = archive[key]
        if not isinstance(member, np.ndarray):
            name = f"{key}.npy" if f"{key}.npy" in archive.zip.namelist() else key
            raise DatasetError(f"{path}: member {name} is not a valid .npy array "
                               f"({'it is empty' if not member else f'it starts {member[:16]!r}'})")
        members[key] = member
    return members


# np.load takes anything that is neither .npy nor zip for a pickle, and says so: an
# 11-byte text file would be reported as "pickled (object) data".  The first bytes decide.
_NUMPY_MAGIC = {".npy": b"\x93NUMPY", ".npz": b"PK\x03\x04"}
_EMPTY_ZIP = b"PK\x05\x06"


def _check_numpy_magic(path: pathlib.Path) -> None:
    with open(path, "rb") as f:
        head = f.read(16)
    magic = _NUMPY_MAGIC[path.suffix.lower()]
    if head.startswith(magic) or (magic.startswith(b"PK") and head.startswith(_EMPTY_ZIP)):
        return
    if head.startswith(b"\x80"):
        what = "pickled Python data, which cupyvae never loads"
    elif not head:
        what = "nothing (the file is empty)"
    else:
        what = f"bytes starting {head!r}"
    raise DatasetError(f"{path}: not a valid {path.suffix} file: it holds {what}; "
                       f"a {path.suffix} file starts with {magic!r}")


def _read_numpy_file(path: pathlib.Path, kind: type, extract: Callable):
    """np.load, then ``extract``, with every failure turned into a DatasetError naming the file."""
    _check_numpy_magic(path)
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, kind):
            found = "a .npz archive" if isinstance(loaded, np.lib.npyio.NpzFile) else "a single array"
            raise DatasetError(f"{path}: holds {found}, which does not match its {path.suffix} extension")
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:  # close the zip file handle promptly
                return extract(loaded)
        return extract(loaded)
    except DatasetError:
        raise
    except Exception as error:  # truncated or foreign files raise ValueError, EOFError, BadZipFile, zlib.error, ...
        raise DatasetError(f"{path}: not a valid {path.suffix} file ({type(error).__name__}: {error})") from error


def _as_samples(path: pathlib.Path, key: str, array: np.ndarray) -> np.ndarray:
    """float32 (N, *data_shape) by cupyvae.arrays' rule: uint8 scaled by 1/255, bool as
    0/1, floats kept, other types refused."""
    if array.ndim < 2:
        raise DatasetError(f"{path}: {key} has shape {array.shape}; expected (N, *data_shape) with at least 2 dims")
    if array.size == 0:
        raise DatasetError(f"{path}: {key} is empty (shape {array.shape})")
    try:
        samples = np.ascontiguousarray(as_float32_examples(array))   # the API's rule too
    except ValueError as problem:
        raise DatasetError(f"{path}: {key} has {problem}") from None
    problem = nonfinite_problem(samples)
    if problem:
        raise DatasetError(f"{path}: {key} {problem} (as float32)")
    return samples


def _as_labels(path: pathlib.Path, key: str, array: np.ndarray, n_samples: int) -> np.ndarray:
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
        raise DatasetError(f"{path}: {key} has dtype {array.dtype}; labels must be integers")
    if array.shape != (n_samples,):
        raise DatasetError(f"{path}: {key} has shape {array.shape}, expected ({n_samples},) to match the samples")
    if array.dtype == np.uint64 and array.size and array.max() > np.iinfo(np.int64).max:
        raise DatasetError(f"{path}: {key} holds {int(array.max())}, which does not fit a 64-bit "
                           "signed integer label (it would wrap around)")
    return array.astype(np.int64)


def _split_off_test(path: pathlib.Path, x: np.ndarray, y: np.ndarray | None) -> Dataset:
    """Last NPY_TEST_FRACTION of the rows as test (none when there are too few rows)."""
    n_test = int(len(x) * NPY_TEST_FRACTION) if len(x) >= NPY_MIN_ROWS_FOR_SPLIT else 0
    n_train = len(x) - n_test
    y_train = None if y is None else y[:n_train]
    y_test = None if y is None else y[n_train:]
    return Dataset(path.name, x[:n_train], y_train, x[n_train:], y_test)


_ARRAY_FILE_READERS: dict[str, Callable[[pathlib.Path], Dataset]] = {
    ".npy": _load_npy_file,
    ".npz": _load_npz_file,
}
