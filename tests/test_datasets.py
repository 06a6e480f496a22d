"""Tests for cupyvae.datasets, offline: fake files served from a local HTTP server."""
from __future__ import annotations

import gzip
import hashlib
import http.server
import json
import os
import pathlib
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
import zlib

import numpy as np
import pytest

from cupyvae import datasets
from cupyvae.datasets import DatasetError, load_dataset

IDX_FILES = datasets.IDX_FILENAMES


# --------------------------------------------------------------------------
# A tiny file server that records every request
# --------------------------------------------------------------------------

class FakeMirrors:
    """Serves ``files[url_path] = bytes`` on 127.0.0.1; anything else is a 404."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        mirrors = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                mirrors.requests.append(self.path)
                body = mirrors.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # keep pytest output clean
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # A short poll interval keeps shutdown() (and so each test) fast.
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)
        self.thread.start()

    def base(self, mirror: str) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/{mirror}/"

    def publish(self, mirror: str, filename: str, body: bytes) -> None:
        self.files[f"/{mirror}/{filename}"] = body

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def mirrors():
    server = FakeMirrors()
    yield server
    server.close()


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> pathlib.Path:
    """An empty cache directory that default_cache_dir() points at (every test: never the real cache)."""
    root = tmp_path / "cache"
    monkeypatch.setenv("CUPYVAE_DATA", str(root))
    return root


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def files_in(directory: pathlib.Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if p.is_file()) if directory.exists() else []


# --------------------------------------------------------------------------
# Fake MNIST-style data
# --------------------------------------------------------------------------

def idx_bytes(array: np.ndarray, *, magic: bytes | None = None) -> bytes:
    header = magic if magic is not None else bytes([0, 0, 0x08, array.ndim])
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + dims + array.astype(np.uint8).tobytes()


def gz(data: bytes, mtime: int = 0) -> bytes:
    return gzip.compress(data, mtime=mtime)


def fake_idx_set(n_train: int = 5, n_test: int = 3, seed: int = 0) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    return {
        datasets.IDX_TRAIN_IMAGES: gz(idx_bytes(rng.integers(0, 256, (n_train, 28, 28)))),
        datasets.IDX_TRAIN_LABELS: gz(idx_bytes(rng.integers(0, 10, n_train))),
        datasets.IDX_TEST_IMAGES: gz(idx_bytes(rng.integers(0, 256, (n_test, 28, 28)))),
        datasets.IDX_TEST_LABELS: gz(idx_bytes(rng.integers(0, 10, n_test))),
    }


@pytest.fixture
def fake_mnist(mirrors, cache, monkeypatch) -> dict[str, bytes]:
    """Fake MNIST published on mirror 'a', which is the only configured mirror."""
    files = fake_idx_set()
    for name, body in files.items():
        mirrors.publish("a", name, body)
    monkeypatch.setattr(datasets, "MNIST_MIRRORS", [mirrors.base("a")])
    monkeypatch.setattr(datasets, "MNIST_SHA256", {name: sha256(body) for name, body in files.items()})
    return files


# --------------------------------------------------------------------------
# Cache location
# --------------------------------------------------------------------------

def test_cache_dir_prefers_cupyvae_data(monkeypatch, tmp_path):
    monkeypatch.setenv("CUPYVAE_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert datasets.default_cache_dir() == tmp_path / "data"


def test_cache_dir_falls_back_to_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.delenv("CUPYVAE_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert datasets.default_cache_dir() == tmp_path / "xdg" / "cupyvae"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert datasets.default_cache_dir() == tmp_path / "home" / ".cache" / "cupyvae"


def test_download_lands_in_xdg_cache(fake_mnist, monkeypatch, tmp_path):
    monkeypatch.delenv("CUPYVAE_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    load_dataset("mnist")
    assert files_in(tmp_path / "xdg" / "cupyvae" / "mnist") == sorted(IDX_FILES)


# --------------------------------------------------------------------------
# Downloading, caching and verification
# --------------------------------------------------------------------------

def test_mnist_downloads_once_then_uses_cache(fake_mnist, mirrors, cache, capsys):
    first = load_dataset("mnist")
    assert len(mirrors.requests) == 4
    assert files_in(cache / "mnist") == sorted(IDX_FILES)
    # Not a terminal, so exactly one progress line per file.
    assert capsys.readouterr().err.count("cupyvae: downloading") == 4

    second = load_dataset("mnist")
    assert len(mirrors.requests) == 4, "second load must not touch the network"
    assert first.x_train.shape == (5, 28, 28) and first.x_test.shape == (3, 28, 28)
    assert first.x_train.dtype == np.float32 and first.y_train.dtype == np.int64
    assert 0.0 <= first.x_train.min() and first.x_train.max() <= 1.0
    assert first.data_shape == (28, 28)
    np.testing.assert_array_equal(first.x_train, second.x_train)
    np.testing.assert_array_equal(first.y_test, second.y_test)


def test_loaded_values_match_the_idx_bytes(fake_mnist):
    data = load_dataset("mnist")
    raw = gzip.decompress(fake_mnist[datasets.IDX_TRAIN_IMAGES])[16:]
    expected = np.frombuffer(raw, np.uint8).reshape(5, 28, 28) / 255
    np.testing.assert_allclose(data.x_train, expected, rtol=1e-6)
    labels = np.frombuffer(gzip.decompress(fake_mnist[datasets.IDX_TEST_LABELS])[8:], np.uint8)
    np.testing.assert_array_equal(data.y_test, labels)


def test_explicit_cache_dir_argument_wins(fake_mnist, cache, tmp_path):
    load_dataset("mnist", cache_dir=tmp_path / "elsewhere")
    assert files_in(tmp_path / "elsewhere" / "mnist") == sorted(IDX_FILES)
    assert files_in(cache) == []


def test_checksum_mismatch_raises_and_caches_nothing(fake_mnist, cache, monkeypatch):
    wrong = "0" * 64
    monkeypatch.setitem(datasets.MNIST_SHA256, datasets.IDX_TRAIN_IMAGES, wrong)
    with pytest.raises(DatasetError) as error:
        load_dataset("mnist")
    message = str(error.value)
    assert datasets.IDX_TRAIN_IMAGES in message
    assert wrong in message and sha256(fake_mnist[datasets.IDX_TRAIN_IMAGES]) in message
    assert files_in(cache) == []


def test_corrupt_cached_file_is_downloaded_again(fake_mnist, mirrors, cache):
    load_dataset("mnist")
    cached = cache / "mnist" / datasets.IDX_TEST_LABELS
    cached.write_bytes(b"garbage")
    with pytest.warns(RuntimeWarning, match="corrupt"):
        data = load_dataset("mnist")
    assert len(mirrors.requests) == 5, "only the corrupt file is fetched again"
    assert cached.read_bytes() == fake_mnist[datasets.IDX_TEST_LABELS]
    assert data.y_test.shape == (3,)


def test_corrupt_cached_file_without_download_says_what_to_do(fake_mnist, cache):
    load_dataset("mnist")
    cached = cache / "mnist" / datasets.IDX_TRAIN_LABELS
    cached.write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="corrupt.*download=True"):
        load_dataset("mnist", download=False)


def test_missing_file_without_download_raises(fake_mnist, mirrors, cache):
    with pytest.raises(DatasetError, match=r"not in .*download=False.*download=True"):
        load_dataset("mnist", download=False)
    assert mirrors.requests == []


def test_second_mirror_is_used_when_first_404s(fake_mnist, mirrors, monkeypatch):
    monkeypatch.setattr(datasets, "MNIST_MIRRORS", [mirrors.base("missing"), mirrors.base("a")])
    data = load_dataset("mnist")
    assert data.x_train.shape == (5, 28, 28)
    assert mirrors.requests[:2] == [f"/missing/{datasets.IDX_TRAIN_IMAGES}", f"/a/{datasets.IDX_TRAIN_IMAGES}"]


def test_all_mirrors_failing_lists_every_url(fake_mnist, mirrors, cache, monkeypatch):
    bad = [mirrors.base("nope1"), mirrors.base("nope2")]
    monkeypatch.setattr(datasets, "MNIST_MIRRORS", bad)
    with pytest.raises(DatasetError) as error:
        load_dataset("mnist")
    message = str(error.value)
    for base in bad:
        assert base + datasets.IDX_TRAIN_IMAGES in message
    assert "404" in message
    assert files_in(cache) == []


def closed_port() -> int:
    """A localhost port nobody listens on: connecting is refused at once (no timeout wait)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_unreachable_mirror_is_reported(fake_mnist, monkeypatch):
    url = f"http://127.0.0.1:{closed_port()}/"
    monkeypatch.setattr(datasets, "MNIST_MIRRORS", [url])
    with pytest.raises(DatasetError, match=re.escape(url + datasets.IDX_TRAIN_IMAGES)):
        load_dataset("mnist")


# --------------------------------------------------------------------------
# IDX parsing
# --------------------------------------------------------------------------

def publish_replacement(mirrors, monkeypatch, filename: str, body: bytes) -> None:
    mirrors.publish("a", filename, body)
    monkeypatch.setitem(datasets.MNIST_SHA256, filename, sha256(body))


def test_truncated_idx_names_file_and_sizes(fake_mnist, mirrors, monkeypatch):
    full = gzip.decompress(fake_mnist[datasets.IDX_TRAIN_IMAGES])
    publish_replacement(mirrors, monkeypatch, datasets.IDX_TRAIN_IMAGES, gz(full[:-100]))
    with pytest.raises(DatasetError) as error:
        load_dataset("mnist")
    message = str(error.value)
    assert datasets.IDX_TRAIN_IMAGES in message and "truncated" in message
    assert str(len(full)) in message and str(len(full) - 100) in message


def test_wrong_idx_magic_is_rejected(fake_mnist, mirrors, monkeypatch):
    images = np.zeros((5, 28, 28), np.uint8)
    body = gz(idx_bytes(images, magic=bytes([0, 0, 0x0D, 3])))  # 0x0D = float32, not bytes
    publish_replacement(mirrors, monkeypatch, datasets.IDX_TRAIN_IMAGES, body)
    with pytest.raises(DatasetError, match=rf"{datasets.IDX_TRAIN_IMAGES}.*magic"):
        load_dataset("mnist")


def test_image_and_label_counts_must_agree(fake_mnist, mirrors, monkeypatch):
    publish_replacement(mirrors, monkeypatch, datasets.IDX_TRAIN_LABELS, gz(idx_bytes(np.zeros(4))))
    with pytest.raises(DatasetError, match="5 images but .* 4 labels"):
        load_dataset("mnist")


# --------------------------------------------------------------------------
# Fashion-MNIST: Debian system copy or download
# --------------------------------------------------------------------------

def test_fashion_mnist_downloads_when_no_system_copy(mirrors, cache, monkeypatch, tmp_path):
    files = fake_idx_set(seed=1)
    for name, body in files.items():
        mirrors.publish("f", name, body)
    monkeypatch.setattr(datasets, "FASHION_MNIST_SYSTEM_DIR", str(tmp_path / "absent"))
    monkeypatch.setattr(datasets, "FASHION_MNIST_MIRRORS", [mirrors.base("f")])
    monkeypatch.setattr(datasets, "FASHION_MNIST_SHA256", {n: sha256(b) for n, b in files.items()})
    data = load_dataset("fashion-mnist")
    assert data.x_train.shape == (5, 28, 28)
    assert files_in(cache / "fashion-mnist") == sorted(IDX_FILES)


@pytest.fixture
def fake_system_fashion(tmp_path, monkeypatch) -> pathlib.Path:
    """A fake Debian directory whose digests are in the checksum tables."""
    system = tmp_path / "system"
    system.mkdir()
    files = fake_idx_set(seed=2)
    for name, body in files.items():
        (system / name).write_bytes(body)
    monkeypatch.setattr(datasets, "FASHION_MNIST_SYSTEM_DIR", str(system))
    monkeypatch.setattr(datasets, "FASHION_MNIST_MIRRORS", [])  # any download attempt fails
    monkeypatch.setattr(datasets, "FASHION_MNIST_DEBIAN_SHA256", {n: sha256(b) for n, b in files.items()})
    monkeypatch.setattr(datasets, "FASHION_MNIST_SHA256", {n: "0" * 64 for n in files})
    monkeypatch.setattr(datasets, "FASHION_MNIST_PAYLOAD_SHA256",
                        {n: sha256(gzip.decompress(b)) for n, b in files.items()})
    return system


def test_fashion_mnist_system_copy_is_used_without_caching(fake_system_fashion, cache):
    data = load_dataset("fashion-mnist", download=False)
    assert data.x_train.shape == (5, 28, 28) and data.y_test.shape == (3,)
    assert files_in(cache) == []


def test_fashion_mnist_regzipped_system_copy_is_accepted(fake_system_fashion):
    # A rebuilt Debian package re-stamps the gzip header: same data, new .gz digest.
    path = fake_system_fashion / datasets.IDX_TEST_IMAGES
    path.write_bytes(gz(gzip.decompress(path.read_bytes()), mtime=1234567890))
    assert load_dataset("fashion-mnist").x_test.shape == (3, 28, 28)


def test_fashion_mnist_corrupt_system_copy_names_the_file(fake_system_fashion):
    path = fake_system_fashion / datasets.IDX_TRAIN_LABELS
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DatasetError, match=rf"{path}.*corrupt"):
        load_dataset("fashion-mnist")


REAL_FASHION_MNIST = pathlib.Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not REAL_FASHION_MNIST.is_dir(),
                    reason="Debian package dataset-fashion-mnist is not installed "
                           "(/usr/share/datasets/fashion-mnist is absent)")
def test_real_fashion_mnist_from_debian_package(cache, monkeypatch):
    monkeypatch.setattr(datasets, "FASHION_MNIST_MIRRORS", [])  # prove nothing is downloaded
    data = load_dataset("fashion-mnist", download=False)
    assert data.x_train.shape == (60000, 28, 28) and data.x_train.dtype == np.float32
    assert data.x_test.shape == (10000, 28, 28)
    assert data.x_train.min() >= 0.0 and data.x_train.max() <= 1.0
    assert data.y_train.dtype == np.int64 and set(np.unique(data.y_train)) == set(range(10))
    assert np.bincount(data.y_train).tolist() == [6000] * 10
    assert files_in(cache) == []


# --------------------------------------------------------------------------
# Frey faces
# --------------------------------------------------------------------------

def mat_bytes(tmp_path: pathlib.Path, **variables) -> bytes:
    import scipy.io
    path = tmp_path / "made.mat"
    scipy.io.savemat(path, variables)
    return path.read_bytes()


@pytest.fixture
def frey_mirror(mirrors, monkeypatch):
    monkeypatch.setattr(datasets, "FREY_MIRRORS", [mirrors.base("frey")])
    monkeypatch.setattr(datasets, "FREY_NUM_IMAGES", 7)
    monkeypatch.setattr(datasets, "FREY_TEST_SIZE", 2)
    return lambda body: mirrors.publish("frey", datasets.FREY_FILENAME, body)


def test_frey_columns_become_upright_28x20_images(frey_mirror, tmp_path):
    images = np.random.default_rng(3).integers(0, 256, (7, 28, 20)).astype(np.uint8)
    images[0, 0, :] = 255  # a bright top row must stay the top row
    ff = images.reshape(7, 560).T  # the .mat stores one image per column, row by row
    frey_mirror(mat_bytes(tmp_path, ff=ff))
    data = load_dataset("frey")
    assert data.x_train.shape == (5, 28, 20) and data.x_test.shape == (2, 28, 20)
    assert data.y_train is None and data.y_test is None
    np.testing.assert_allclose(data.x_train[0], images[0] / 255, rtol=1e-6)
    np.testing.assert_allclose(data.x_test[-1], images[-1] / 255, rtol=1e-6)
    assert (data.x_train[0, 0] == 1.0).all()


def test_frey_wrong_shape_is_rejected(frey_mirror, tmp_path, cache):
    frey_mirror(mat_bytes(tmp_path, ff=np.zeros((560, 6), np.uint8)))
    with pytest.raises(DatasetError, match=r"frey/frey_rawface\.mat: .*shape \(560, 6\)"):
        load_dataset("frey")
    assert files_in(cache) == []


def test_frey_missing_variable_is_rejected(frey_mirror, tmp_path):
    frey_mirror(mat_bytes(tmp_path, faces=np.zeros((560, 7), np.uint8)))
    with pytest.raises(DatasetError, match=r"frey_rawface\.mat.*no variable 'ff'.*faces"):
        load_dataset("frey")


def test_frey_non_mat_file_is_rejected(frey_mirror):
    frey_mirror(b"<html>moved</html>")
    with pytest.raises(DatasetError, match=r"frey_rawface\.mat.*not a readable MATLAB file"):
        load_dataset("frey")


# --------------------------------------------------------------------------
# Binarized MNIST
# --------------------------------------------------------------------------

def amat_bytes(bits: np.ndarray) -> bytes:
    return "".join(" ".join(map(str, row)) + "\n" for row in bits).encode()


@pytest.fixture
def amat_mirror(mirrors, monkeypatch):
    monkeypatch.setattr(datasets, "BINARIZED_MNIST_MIRRORS", [mirrors.base("bin")])
    monkeypatch.setattr(datasets, "BINARIZED_MNIST_ROWS", {"train": 3, "valid": 2, "test": 2})
    rng = np.random.default_rng(4)
    bits = {"train": rng.integers(0, 2, (3, 784)), "test": rng.integers(0, 2, (2, 784))}
    for split, array in bits.items():
        publish_amat(mirrors, monkeypatch, split, array)
    return bits


def publish_amat(mirrors, monkeypatch, split: str, bits: np.ndarray) -> None:
    """Serve the .amat of `bits` and pin its digest, as the real files' digests are pinned."""
    body = amat_bytes(bits)
    mirrors.publish("bin", f"binarized_mnist_{split}.amat", body)
    monkeypatch.setitem(datasets.BINARIZED_MNIST_SHA256, f"binarized_mnist_{split}.amat", sha256(body))


def test_binarized_mnist_parses_and_caches_npz(amat_mirror, mirrors, cache):
    data = load_dataset("binarized-mnist")
    assert data.x_train.shape == (3, 28, 28) and data.x_test.shape == (2, 28, 28)
    assert data.x_train.dtype == np.float32 and data.y_train is None
    np.testing.assert_array_equal(data.x_train.reshape(3, 784), amat_mirror["train"])
    assert files_in(cache / "binarized-mnist") == sorted(
        ["binarized_mnist_train.amat", "binarized_mnist_train.npz",
         "binarized_mnist_test.amat", "binarized_mnist_test.npz"])
    again = load_dataset("binarized-mnist", download=False)
    np.testing.assert_array_equal(again.x_test, data.x_test)
    assert len(mirrors.requests) == 2


def test_binarized_mnist_rebuilds_a_damaged_npz_cache(amat_mirror, mirrors, cache):
    load_dataset("binarized-mnist")
    (cache / "binarized-mnist" / "binarized_mnist_train.npz").write_bytes(b"junk")
    with pytest.warns(RuntimeWarning, match="binarized_mnist_train.npz"):
        data = load_dataset("binarized-mnist", download=False)
    np.testing.assert_array_equal(data.x_train.reshape(3, 784), amat_mirror["train"])
    assert len(mirrors.requests) == 2, "rebuilt from the cached .amat, not downloaded"


def test_binarized_mnist_value_two_is_rejected(amat_mirror, mirrors, cache, monkeypatch):
    bits = amat_mirror["test"].copy()
    bits[1, 10] = 2
    publish_amat(mirrors, monkeypatch, "test", bits)
    with pytest.raises(DatasetError, match=r"binarized_mnist_test\.amat.*line 2: value '2' is not 0 or 1"):
        load_dataset("binarized-mnist")
    assert "binarized_mnist_test.amat" not in files_in(cache)


def test_binarized_mnist_wrong_row_count_is_rejected(amat_mirror, mirrors, monkeypatch):
    publish_amat(mirrors, monkeypatch, "test", amat_mirror["test"][:1])
    with pytest.raises(DatasetError, match=r"binarized_mnist_test\.amat.*1 rows, expected 2"):
        load_dataset("binarized-mnist")


def test_amat_parser_handles_crlf_and_rejects_short_lines(tmp_path):
    bits = np.random.default_rng(5).integers(0, 2, (2, 784))
    crlf = tmp_path / "crlf.amat"
    crlf.write_bytes(amat_bytes(bits).replace(b"\n", b"\r\n"))
    np.testing.assert_array_equal(datasets._parse_binary_amat(crlf, 2), bits)
    short = tmp_path / "short.amat"
    short.write_bytes(amat_bytes(bits)[:-4] + b"\n")
    with pytest.raises(DatasetError, match="line 2 has 782 values, expected 784"):
        datasets._parse_binary_amat(short, 2)
    multi = tmp_path / "multi.amat"
    multi.write_bytes(amat_bytes(bits).replace(b"1 ", b"10 ", 1))
    with pytest.raises(DatasetError, match="value '10' is not 0 or 1"):
        datasets._parse_binary_amat(multi, 2)


# --------------------------------------------------------------------------
# Local .npy / .npz files
# --------------------------------------------------------------------------

def test_npy_uint8_is_scaled_and_last_tenth_is_test(tmp_path):
    array = np.arange(20 * 4 * 4, dtype=np.int64).reshape(20, 4, 4).astype(np.uint8)
    path = tmp_path / "faces.npy"
    np.save(path, array)
    data = load_dataset(str(path))
    assert data.x_train.shape == (18, 4, 4) and data.x_test.shape == (2, 4, 4)
    assert data.x_train.dtype == np.float32 and data.y_train is None
    np.testing.assert_allclose(data.x_test, array[18:] / 255, rtol=1e-6)


def test_small_npy_has_empty_test_split(tmp_path):
    path = tmp_path / "few.npy"
    np.save(path, np.ones((9, 3), np.float64))
    data = load_dataset(path)
    assert data.x_train.shape == (9, 3) and data.x_test.shape == (0, 3)


def test_float_npy_is_kept_unscaled(tmp_path):
    array = np.linspace(-3, 3, 40, dtype=np.float64).reshape(10, 4)
    path = tmp_path / "real.npy"
    np.save(path, array)
    data = load_dataset(str(path))
    assert data.x_train.dtype == np.float32
    np.testing.assert_allclose(np.concatenate([data.x_train, data.x_test]), array, rtol=1e-6)


def test_nan_in_npy_is_counted(tmp_path):
    array = np.zeros((10, 4), np.float32)
    array[1, 2] = np.nan
    array[3, 0] = np.inf
    path = tmp_path / "bad.npy"
    np.save(path, array)
    with pytest.raises(DatasetError, match=r"bad\.npy.* 2 NaN/inf values \(first in example index 1, counting from 0\)"):
        load_dataset(str(path))


@pytest.mark.parametrize("shape", [(0, 28, 28), (5, 0)])
def test_empty_npy_is_rejected(tmp_path, shape):
    path = tmp_path / "empty.npy"
    np.save(path, np.zeros(shape, np.uint8))
    with pytest.raises(DatasetError, match=r"empty\.npy.*empty"):
        load_dataset(str(path))


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_truncated_numpy_file_is_rejected(tmp_path, suffix):
    path = tmp_path / f"cut{suffix}"
    if suffix == ".npy":
        np.save(path, np.ones((50, 8), np.float32))
    else:
        np.savez(path, x_train=np.ones((50, 8), np.float32))
    path.write_bytes(path.read_bytes()[:-60])
    with pytest.raises(DatasetError, match=rf"cut\{suffix}.*not a valid"):
        load_dataset(str(path))


def test_garbage_npy_is_rejected(tmp_path):
    path = tmp_path / "text.npy"
    path.write_text("hello")
    with pytest.raises(DatasetError, match=r"text\.npy.*not a valid"):
        load_dataset(str(path))


def test_npz_with_explicit_splits_and_labels(tmp_path):
    path = tmp_path / "split.npz"
    np.savez(path, x_train=np.full((6, 2, 2), 255, np.uint8), y_train=np.arange(6, dtype=np.int32),
             x_test=np.zeros((2, 2, 2), np.uint8), y_test=np.array([1, 2]))
    data = load_dataset(str(path))
    assert data.x_train.shape == (6, 2, 2) and (data.x_train == 1.0).all()
    assert data.y_train.dtype == np.int64 and data.y_test.tolist() == [1, 2]
    assert data.data_shape == (2, 2)


def test_npz_with_x_and_y_is_split_like_npy(tmp_path):
    path = tmp_path / "xy.npz"
    np.savez(path, x=np.random.default_rng(6).random((30, 5)), y=np.arange(30))
    data = load_dataset(str(path))
    assert data.x_train.shape == (27, 5) and data.x_test.shape == (3, 5)
    assert data.y_test.tolist() == [27, 28, 29]


@pytest.mark.parametrize("arrays, problem", [
    ({"images": np.ones((3, 2))}, "unexpected arrays"),
    ({"y_train": np.ones(3, np.int64)}, "needs an array 'x_train'"),
    ({"x": np.ones((3, 2)), "x_train": np.ones((3, 2))}, "both 'x' and explicit splits"),
    ({"x": np.ones((3, 2)), "y": np.ones(2, np.int64)}, r"y has shape \(2,\)"),
    ({"x_train": np.ones((3, 2)), "x_test": np.ones((3, 5))}, "shape"),
    ({"x": np.ones((3, 2), np.int64)}, "dtype int64"),
])
def test_malformed_npz_is_rejected(tmp_path, arrays, problem):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DatasetError, match=rf"bad\.npz.*{problem}"):
        load_dataset(str(path))


def test_missing_npy_path_is_reported(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        load_dataset(str(tmp_path / "nothing.npy"))


# --------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------

def test_unknown_name_lists_available_datasets():
    with pytest.raises(DatasetError) as error:
        load_dataset("cifar-1000")
    for name in ("mnist", "fashion-mnist", "frey", "binarized-mnist"):
        assert name in str(error.value)
    assert datasets.available_datasets() == sorted(["mnist", "fashion-mnist", "frey", "binarized-mnist"])


def test_existing_file_of_unknown_type_is_reported(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("1,2\n")
    with pytest.raises(DatasetError, match=r"data\.txt.*unsupported file type.*\.csv"):
        load_dataset(str(path))


def test_registering_a_name_twice_raises():
    with pytest.raises(ValueError, match="already registered"):
        datasets.register_dataset("mnist")(lambda directory, download: None)
    assert datasets.available_datasets().count("mnist") == 1


# --------------------------------------------------------------------------
# Integrity: pinned and recorded digests, parsed caches, bombs, concurrent loaders
# --------------------------------------------------------------------------

def test_binarized_mnist_digests_are_pinned():
    for name in ("binarized_mnist_train.amat", "binarized_mnist_test.amat"):
        digest = datasets.BINARIZED_MNIST_SHA256[name]
        assert re.fullmatch(r"[0-9a-f]{64}", digest), name


def flip_first(path: pathlib.Path, old: bytes, new: bytes) -> None:
    data = path.read_bytes()
    assert old in data
    path.write_bytes(data.replace(old, new, 1))


def test_flipped_value_in_a_cached_amat_is_refused(amat_mirror, mirrors, cache):
    load_dataset("binarized-mnist")
    folder = cache / "binarized-mnist"
    (folder / "binarized_mnist_test.npz").unlink()          # force a parse of the .amat
    flip_first(folder / "binarized_mnist_test.amat", b"0 ", b"1 ")
    with pytest.raises(DatasetError, match=r"binarized_mnist_test\.amat.*SHA-256 mismatch"):
        load_dataset("binarized-mnist", download=False)
    with pytest.warns(RuntimeWarning, match="corrupt"):
        data = load_dataset("binarized-mnist")               # downloaded again, good this time
    np.testing.assert_array_equal(data.x_test.reshape(2, 784), amat_mirror["test"])


def rewrite_parsed_cache(path: pathlib.Path, **changes) -> None:
    with np.load(path) as cache:
        arrays = {key: cache[key] for key in cache.files}
    arrays.update(changes)
    np.savez(path, **arrays)


def test_flipped_bit_in_the_parsed_cache_is_rebuilt_from_the_amat(amat_mirror, mirrors, cache):
    load_dataset("binarized-mnist")
    path = cache / "binarized-mnist" / "binarized_mnist_train.npz"
    with np.load(path) as parsed:
        bits = parsed["bits"].copy()
    bits[1, 100] ^= 1                                           # a valid 0/1 value, just wrong
    rewrite_parsed_cache(path, bits=bits)
    with pytest.warns(RuntimeWarning, match="do not match their SHA-256"):
        data = load_dataset("binarized-mnist", download=False)
    np.testing.assert_array_equal(data.x_train.reshape(3, 784), amat_mirror["train"])
    assert len(mirrors.requests) == 2, "rebuilt from the cached .amat, not downloaded"
    with np.load(path) as rebuilt:
        np.testing.assert_array_equal(rebuilt["bits"], amat_mirror["train"])


def test_parsed_cache_built_from_another_source_is_rebuilt(amat_mirror, cache):
    load_dataset("binarized-mnist")
    path = cache / "binarized-mnist" / "binarized_mnist_test.npz"
    rewrite_parsed_cache(path, source_sha256=np.array("0" * 64))
    with pytest.warns(RuntimeWarning, match="built from a file with SHA-256 0{64}"):
        load_dataset("binarized-mnist", download=False)


def test_frey_digest_is_recorded_and_a_flipped_pixel_is_refused(frey_mirror, tmp_path, cache):
    images = np.random.default_rng(7).integers(0, 256, (7, 28, 20)).astype(np.uint8)
    body = mat_bytes(tmp_path, ff=images.reshape(7, 560).T)
    frey_mirror(body)
    load_dataset("frey")
    cached = cache / "frey" / datasets.FREY_FILENAME
    record = cached.with_name(cached.name + ".sha256")
    assert record.read_text() == f"{sha256(body)}  {datasets.FREY_FILENAME}\n"   # sha256sum -c format
    data = bytearray(body)
    data[-1] ^= 0x10                                       # the last pixel of the last image
    cached.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=r"frey_rawface\.mat.*SHA-256 mismatch.*recorded"):
        load_dataset("frey", download=False)
    with pytest.warns(RuntimeWarning, match="corrupt"):
        faces = load_dataset("frey")
    np.testing.assert_allclose(faces.x_test[-1], images[-1] / 255, rtol=1e-6)


def test_frey_pinned_digest_is_enforced(frey_mirror, tmp_path, cache, monkeypatch):
    frey_mirror(mat_bytes(tmp_path, ff=np.zeros((560, 7), np.uint8)))
    monkeypatch.setitem(datasets.FREY_SHA256, datasets.FREY_FILENAME, "1" * 64)
    with pytest.raises(DatasetError, match="expected 1{64} \\(the published digest\\)"):
        load_dataset("frey")
    assert files_in(cache) == []


# One interpreter imports cupyvae once, then forks the loaders (16 imports would cost
# seconds of CPU); each loader is its own process, as concurrent CLI runs would be.
LOADERS_SCRIPT = """
import json, os, sys, time, traceback
from cupyvae import datasets
config = json.loads(sys.argv[1])
for name, value in config["tables"].items():
    setattr(datasets, name, value)
children = []
for _ in range(config["loaders"]):
    pid = os.fork()
    if pid == 0:
        status = 0
        try:
            while not os.path.exists(config["go"]):
                time.sleep(0.001)
            assert datasets.load_dataset(config["dataset"]).x_train.shape == (5, 28, 28)
        except BaseException:
            traceback.print_exc()
            status = 1
        sys.stderr.flush()
        os._exit(status)
    children.append(pid)
time.sleep(0.3)                                    # let them all reach the starting line
open(config["go"], "w").close()
failed = sum(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0 for pid in children)
print(f"{failed} of {len(children)} loaders failed")
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forks the concurrent loaders")
def test_concurrent_loaders_on_a_corrupt_cache_all_succeed(fake_mnist, cache, tmp_path):
    """16 processes find the same corrupt cached file at once; they used to race on
    deleting it (8 of 30 died with FileNotFoundError; here 7 to 13 of 16 did)."""
    load_dataset("mnist")
    # 8 MB, so that checking it takes long enough for the loaders to overlap
    corrupt = np.random.default_rng(0).bytes(8 << 20)
    (cache / "mnist" / datasets.IDX_TRAIN_IMAGES).write_bytes(corrupt)
    tables = {name: getattr(datasets, name) for name in ("MNIST_MIRRORS", "MNIST_SHA256")}
    config = json.dumps({"tables": tables, "go": str(tmp_path / "go"), "dataset": "mnist",
                         "loaders": 16})
    env = {**os.environ, "PYTHONPATH": str(pathlib.Path(datasets.__file__).parents[1])}
    result = subprocess.run([sys.executable, "-c", LOADERS_SCRIPT, config], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "0 of 16 loaders failed", result.stderr
    load_dataset("mnist", download=False)              # the cache is sound afterwards


def gzip_stream(head: bytes, zeros: int) -> bytes:
    """gzip of `head` followed by `zeros` zero bytes, compressed without holding them."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)     # wbits 31: gzip container
    parts = [packer.compress(head)]
    block = bytes(1 << 20)
    for _ in range(zeros >> 20):
        parts.append(packer.compress(block))
    parts.append(packer.flush())
    return b"".join(parts)


def test_gzip_bomb_is_refused_after_reading_what_the_header_declares(fake_mnist, mirrors, monkeypatch):
    images = idx_bytes(np.zeros((5, 28, 28), np.uint8))
    bomb = gzip_stream(images, 64 << 20)               # 64 MB of zeros after the 5 declared images
    assert len(bomb) < 100_000
    publish_replacement(mirrors, monkeypatch, datasets.IDX_TRAIN_IMAGES, bomb)
    tracemalloc.start()
    try:
        with pytest.raises(DatasetError, match=rf"{datasets.IDX_TRAIN_IMAGES}.*trailing bytes"):
            load_dataset("mnist")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Inflating the whole stream held 64 MB (plus a copy); the bounded read holds the
    # declared 3936 bytes and gzip's buffers.  8 MB leaves room for the test server.
    assert peak < 8e6, f"peak {peak / 1e6:.1f} MB"


def test_header_declaring_more_than_the_gzip_can_hold_is_refused_unread(fake_mnist, mirrors, monkeypatch):
    header = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (60000, 28, 28))
    publish_replacement(mirrors, monkeypatch, datasets.IDX_TRAIN_IMAGES, gz(header + bytes(100)))
    with pytest.raises(DatasetError, match=rf"{datasets.IDX_TRAIN_IMAGES}.*dims \(60000, 28, 28\).*"
                                           r"cannot hold more than"):
        load_dataset("mnist")


def test_idx_dimensions_overflowing_int64_name_the_file(fake_mnist, mirrors, monkeypatch):
    huge = 2 ** 32 - 1
    header = bytes([0, 0, 8, 3]) + b"".join(huge.to_bytes(4, "big") for _ in range(3))
    publish_replacement(mirrors, monkeypatch, datasets.IDX_TRAIN_IMAGES, gz(header + bytes(16)))
    with pytest.raises(DatasetError, match=rf"{datasets.IDX_TRAIN_IMAGES}.*overflows int64"):
        load_dataset("mnist")


def mat5_bomb(tmp_path: pathlib.Path, ff_dims: tuple[int, int], zeros: int, junk: int = 0) -> bytes:
    """A MATLAB 5 file whose 'ff' is a compressed uint8 variable declared with ff_dims and
    holding `zeros` zero bytes, optionally followed by a compressed 'junk' variable of
    `junk` zero bytes; nothing large is ever held in memory."""
    plain = mat_bytes(tmp_path, ff=np.zeros((8, 1), np.uint8))
    header, element = plain[:128], plain[128:]

    def compressed_variable(name_element: bytes, dims: tuple[int, int], size: int) -> bytes:
        head = bytearray(element[8:48])       # flags tag+data, dims tag+data, name (small element)
        struct.pack_into("<ii", head, 24, *dims)
        head[32:40] = name_element
        meta = struct.pack("<II", 14, 48 + size) + bytes(head) + struct.pack("<II", 2, size)
        packer = zlib.compressobj(9)
        parts = [packer.compress(meta)]
        block = bytes(1 << 20)
        for _ in range(size >> 20):
            parts.append(packer.compress(block))
        parts.append(packer.compress(bytes(size % (1 << 20))))
        parts.append(packer.flush())
        blob = b"".join(parts)
        return struct.pack("<II", 15, len(blob)) + blob

    body = compressed_variable(struct.pack("<HH", 1, 2) + b"ff\0\0", ff_dims, zeros)
    if junk:
        body += compressed_variable(struct.pack("<HH", 1, 4) + b"junk", (junk, 1), junk)
    return header + body


@pytest.mark.parametrize("case", ["ff declared huge", "huge second variable"])
def test_mat_bomb_is_refused_or_skipped_with_bounded_memory(frey_mirror, tmp_path, case):
    import scipy.io  # noqa: F401  (imported before measuring)
    if case == "ff declared huge":    # 3.6 GB declared, 32 MB of zeros present
        frey_mirror(mat5_bomb(tmp_path, (60000, 60000), 32 << 20))
    else:                             # a sound ff, then 64 MB of zeros loadmat must not inflate
        frey_mirror(mat5_bomb(tmp_path, (560, 7), 560 * 7, junk=64 << 20))
    tracemalloc.start()
    try:
        if case == "ff declared huge":
            with pytest.raises(DatasetError, match=r"frey_rawface\.mat.*shape \(60000, 60000\)"):
                load_dataset("frey")
        else:
            assert load_dataset("frey").x_train.shape == (5, 28, 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # scipy's whosmat alone inflated 128 kB of input (133 MB) per variable; reading the
    # headers ourselves holds a few kB.  8 MB leaves room for the test server.
    assert peak < 8e6, f"peak {peak / 1e6:.1f} MB"


@pytest.mark.parametrize("content, described", [
    (b"hello world", "bytes starting b'hello world'"),
    (b"\x80\x04\x95" + bytes(20), "pickled Python data, which cupyvae never loads"),
    (b"", "nothing (the file is empty)"),
])
def test_a_file_that_is_not_npy_says_what_it_holds(tmp_path, content, described):
    path = tmp_path / "x.npy"
    path.write_bytes(content)
    with pytest.raises(DatasetError) as error:
        load_dataset(path)
    message = str(error.value)
    assert "x.npy: not a valid .npy file" in message and described in message
    assert "(object) data" not in message
