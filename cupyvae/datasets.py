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
(one sub-directory per dataset); every file is verified (SHA-256, or a
structural check where no checksum is published) before it is moved into the
cache, and again each time it is used. Every problem raises
:class:`DatasetError` with a message that names the file and what is wrong.
"""
from __future__ import annotations

import difflib
import gzip
import hashlib
import http.client
import io
import os
import pathlib
import sys
import tempfile
import urllib.error
import urllib.request
import warnings
import zlib
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, TypeVar

import numpy as np

from .arrays import as_float32_examples
from .files import write_atomic
from .registry import Registry

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
    '_' for '-' are forgiven first, then difflib's closest match."""
    names = available_datasets()
    normalised = {name.lower().replace("_", "-"): name for name in names}
    exact = normalised.get(key.strip().lower().replace("_", "-"))
    close = [exact] if exact else difflib.get_close_matches(
        key.lower().replace("_", "-"), list(normalised), n=1, cutoff=0.6)
    return f" (did you mean {normalised.get(close[0], close[0])!r}?)" if close else ""


# --------------------------------------------------------------------------
# Fetching: cache lookup, mirrors, atomic download, verification
# --------------------------------------------------------------------------

def _fetch(filename: str, mirrors: Iterable[str], directory: pathlib.Path, download: bool,
           check: Callable[[pathlib.Path], _T]) -> tuple[pathlib.Path, _T]:
    """Return ``directory/filename`` and ``check``'s result for it, downloading it first if needed.

    ``check`` raises DatasetError when the file is bad and otherwise returns
    whatever it read (so a structural check doubles as the parser). A cached
    file that fails the check is deleted and downloaded again, once.
    """
    path = directory / filename
    mirrors = list(mirrors)
    if path.is_file():
        try:
            return path, check(path)
        except DatasetError as problem:
            if not download:
                raise DatasetError(
                    f"cached file {path} is corrupt ({problem}); delete it and call load_dataset "
                    f"with download=True, or replace it with a good copy from {', '.join(_urls(filename, mirrors))}"
                ) from problem
            warnings.warn(f"cached file {path} is corrupt ({problem}); deleting it and downloading again",
                          RuntimeWarning, stacklevel=3)
            path.unlink()
    elif not download:
        raise DatasetError(
            f"{filename} is not in {directory} and download=False; call load_dataset with "
            f"download=True to fetch it, or copy it there from one of: {', '.join(_urls(filename, mirrors))}")
    return path, _download_first_good_copy(filename, mirrors, directory, check)


def _urls(filename: str, mirrors: Iterable[str]) -> list[str]:
    return [mirror.rstrip("/") + "/" + filename for mirror in mirrors]


def _download_first_good_copy(filename: str, mirrors: list[str], directory: pathlib.Path,
                              check: Callable[[pathlib.Path], _T]) -> _T:
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
        return result
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


def _sha256_check(expected_by_name: Mapping[str, str], filename: str) -> Callable[[pathlib.Path], None]:
    """A check for ``_fetch``: the file's SHA-256 must be the one published for ``filename``."""
    def check(path: pathlib.Path) -> None:
        expected = expected_by_name[filename]
        actual = _sha256_of_file(path)
        if actual != expected:
            raise DatasetError(f"{filename}: SHA-256 mismatch: expected {expected}, got {actual}")
    return check


# --------------------------------------------------------------------------
# IDX (MNIST-style) files
# --------------------------------------------------------------------------

_IDX_UBYTE = 0x08


def _read_idx_gz(path: pathlib.Path, expected_ndim: int) -> np.ndarray:
    """Parse a gzipped IDX file of unsigned bytes into a uint8 array."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as error:
        raise DatasetError(f"{path}: not a readable gzip file ({error})") from error
    header_size = 4 + 4 * expected_ndim
    if len(raw) < header_size:
        raise DatasetError(f"{path}: truncated IDX header: expected {header_size} bytes, got {len(raw)}")
    zero, dtype_code, ndim = int.from_bytes(raw[0:2], "big"), raw[2], raw[3]
    if zero != 0 or dtype_code != _IDX_UBYTE or ndim != expected_ndim:
        raise DatasetError(
            f"{path}: bad IDX magic number 0x{raw[:4].hex()}: expected 0x0000{_IDX_UBYTE:02x}{expected_ndim:02x} "
            f"(unsigned bytes, {expected_ndim} dimension(s))")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected_size = header_size + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected_size:
        problem = "truncated" if len(raw) < expected_size else "has trailing bytes"
        raise DatasetError(
            f"{path}: IDX file {problem}: header says dims {dims}, which needs {expected_size} bytes, "
            f"but the file holds {len(raw)} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(dims)


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
    paths = {f: _fetch(f, MNIST_MIRRORS, directory, download, _sha256_check(MNIST_SHA256, f))[0]
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
            paths[filename], _ = _fetch(filename, FASHION_MNIST_MIRRORS, directory, download,
                                        _sha256_check(FASHION_MNIST_SHA256, filename))
    return _idx_dataset("fashion-mnist", paths)


def _check_fashion_mnist_system_copy(path: pathlib.Path, filename: str) -> None:
    """Accept the Debian or upstream .gz, or any re-gzipped copy of the same IDX bytes."""
    known = {FASHION_MNIST_DEBIAN_SHA256[filename], FASHION_MNIST_SHA256[filename]}
    actual = _sha256_of_file(path)
    if actual in known:
        return
    expected_payload = FASHION_MNIST_PAYLOAD_SHA256[filename]
    try:
        with gzip.open(path, "rb") as f:
            payload = hashlib.sha256(f.read()).hexdigest()
    except (OSError, EOFError, zlib.error) as error:
        payload = f"unreadable ({error})"
    if payload != expected_payload:
        raise DatasetError(
            f"{path}: corrupt system copy of Fashion-MNIST: SHA-256 {actual} is none of {sorted(known)}, "
            f"and the decompressed data's SHA-256 is {payload}, expected {expected_payload}; "
            f"reinstall it (apt-get install --reinstall dataset-fashion-mnist)")


# --------------------------------------------------------------------------
# Frey faces
# --------------------------------------------------------------------------

def _read_frey_mat(path: pathlib.Path) -> np.ndarray:
    """Return the ``ff`` matrix (pixels x images, uint8) after checking it."""
    import scipy.io  # deferred: only this loader needs SciPy, and it is slow to import

    try:
        contents = scipy.io.loadmat(path)
    except Exception as error:  # loadmat raises many types (ValueError, MatReadError, TypeError, ...)
        raise DatasetError(f"{path}: not a readable MATLAB file ({type(error).__name__}: {error})") from error
    if "ff" not in contents:
        found = sorted(k for k in contents if not k.startswith("__"))
        raise DatasetError(f"{path}: no variable 'ff' (found: {', '.join(found) or 'nothing'})")
    faces = contents["ff"]
    expected_shape = (FREY_IMAGE_SHAPE[0] * FREY_IMAGE_SHAPE[1], FREY_NUM_IMAGES)
    if faces.dtype != np.uint8 or faces.shape != expected_shape:
        raise DatasetError(
            f"{path}: variable 'ff' is {faces.dtype} with shape {faces.shape}, expected uint8 with shape {expected_shape}")
    return faces


@register_dataset("frey")
def _load_frey(directory: pathlib.Path, download: bool) -> Dataset:
    _, faces = _fetch(FREY_FILENAME, FREY_MIRRORS, directory, download, _read_frey_mat)
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
    """uint8 (rows, 784) bits of one split, from the parsed .npy cache when it is sound."""
    rows = BINARIZED_MNIST_ROWS[split]
    parsed_path = directory / f"binarized_mnist_{split}.npy"
    parsed = _read_parsed_amat_cache(parsed_path, rows)
    if parsed is not None:
        return parsed
    _, bits = _fetch(f"binarized_mnist_{split}.amat", BINARIZED_MNIST_MIRRORS, directory, download,
                     lambda path: _parse_binary_amat(path, rows))
    buffer = io.BytesIO()
    np.save(buffer, bits)
    write_atomic(parsed_path, buffer.getvalue())
    return bits


def _read_parsed_amat_cache(path: pathlib.Path, rows: int) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        bits = np.load(path, allow_pickle=False)
        if bits.dtype != np.uint8 or bits.shape != (rows, BINARIZED_MNIST_PIXELS) or bits.max(initial=0) > 1:
            raise ValueError(f"holds {bits.dtype} {bits.shape}, expected 0/1 uint8 ({rows}, {BINARIZED_MNIST_PIXELS})")
    except Exception as problem:  # np.load raises many types for a damaged file
        warnings.warn(f"parsed cache {path} is unusable ({problem}); rebuilding it", RuntimeWarning, stacklevel=4)
        path.unlink(missing_ok=True)
        return None
    return bits


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
                              lambda archive: {key: archive[key] for key in archive.files})
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


def _read_numpy_file(path: pathlib.Path, kind: type, extract: Callable):
    """np.load, then ``extract``, with every failure turned into a DatasetError naming the file."""
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
    bad = samples.size - int(np.count_nonzero(np.isfinite(samples)))
    if bad:
        raise DatasetError(f"{path}: {key} has {bad} NaN or infinite values (as float32)")
    return samples


def _as_labels(path: pathlib.Path, key: str, array: np.ndarray, n_samples: int) -> np.ndarray:
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
        raise DatasetError(f"{path}: {key} has dtype {array.dtype}; labels must be integers")
    if array.shape != (n_samples,):
        raise DatasetError(f"{path}: {key} has shape {array.shape}, expected ({n_samples},) to match the samples")
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
