"""The emulator's on-disk compile cache is verified before anything in it is loaded.

Each test works on its own copy of a cache holding one compiled module (so every
library path is new to the process: the dynamic loader never hands back an earlier
mapping), damages it the way a crash, a full disk or another user could, and checks
that the module is rebuilt -- or, for a folder others can write to, refused.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from cupyvae.emulator import EmulatedModule, EmulatorError
from cupyvae.emulator import _build

SCALE = 'extern "C" __global__ void scale(float* x, int n) {{ int i = threadIdx.x; if (i < n) x[i] *= {factor}.0f; }}'
CODE = SCALE.format(factor=2) + "\n// test_emulator_cache\n"


def run_scale(module: EmulatedModule) -> np.ndarray:
    x = np.arange(5, dtype=np.float32)
    module.get_function("scale")((1,), (8,), (x, np.int32(5)))
    return x


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A cache folder holding CODE compiled (the runtime stays where it was loaded from)."""
    _build.load_runtime()
    root = tmp_path_factory.mktemp("template")
    old = os.environ.get("CUPYVAE_CACHE")
    os.environ["CUPYVAE_CACHE"] = str(root)
    try:
        _build.clear_memory_cache()
        EmulatedModule(CODE)
    finally:
        os.environ.pop("CUPYVAE_CACHE") if old is None else os.environ.update(CUPYVAE_CACHE=old)
        _build.clear_memory_cache()
    return root


@pytest.fixture
def cache(template, tmp_path, monkeypatch) -> Path:
    """A private copy of the template cache, with the in-process memo cleared."""
    root = tmp_path / "cache"
    shutil.copytree(template, root)
    monkeypatch.setenv("CUPYVAE_CACHE", str(root))
    monkeypatch.setattr(_build, "_memo", {})
    return root


def library(cache: Path) -> Path:
    (so,) = cache.glob("emulator/*/*.so")
    return so


def replace_file(path: Path, data: bytes) -> None:
    """Write a new file over `path` by rename, as a damaged cache would hold it (the old
    inode may be mapped by this very process: writing into it would crash the test)."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def load_and_count() -> tuple[np.ndarray, dict]:
    before = dict(_build.STATS)
    x = run_scale(EmulatedModule(CODE))
    return x, {k: _build.STATS[k] - before[k] for k in before}


def test_an_intact_cache_is_used(cache):
    x, counts = load_and_count()
    assert counts["disk_hits"] == 1 and counts["compiles"] == 0 and counts["rejected"] == 0
    np.testing.assert_array_equal(x, 2 * np.arange(5))


@pytest.mark.parametrize("damage", ["truncated library", "empty library", "corrupt manifest",
                                    "truncated manifest", "missing manifest", "edited manifest"])
def test_a_damaged_module_is_rebuilt(cache, damage):
    so = library(cache)
    manifest = so.with_suffix(".json")
    if damage == "truncated library":
        replace_file(so, so.read_bytes()[: so.stat().st_size // 3])
    elif damage == "empty library":
        replace_file(so, b"")
    elif damage == "corrupt manifest":
        replace_file(manifest, b"{not json")
    elif damage == "truncated manifest":
        replace_file(manifest, manifest.read_bytes()[:-10])
    elif damage == "missing manifest":
        manifest.unlink()
    else:   # valid JSON, but not what was written: its own digest no longer matches
        record = json.loads(manifest.read_bytes())
        record["dynamic_shared"] = not record["dynamic_shared"]
        replace_file(manifest, json.dumps(record).encode())
    x, counts = load_and_count()
    assert counts["compiles"] == 1 and counts["rejected"] == 1, counts
    np.testing.assert_array_equal(x, 2 * np.arange(5))
    assert json.loads(manifest.read_bytes())["library_sha256"] == _build._file_sha256(so)


def test_a_swapped_library_is_not_run(cache, tmp_path, monkeypatch):
    """Another valid library under the module's name (a kernel of the same signature that
    multiplies by 3) must be rebuilt, not run."""
    monkeypatch.setenv("CUPYVAE_CACHE", str(tmp_path / "other"))
    EmulatedModule(SCALE.format(factor=3))
    (other,) = (tmp_path / "other").glob("emulator/*/*.so")
    monkeypatch.setenv("CUPYVAE_CACHE", str(cache))
    so = library(cache)
    replace_file(so, other.read_bytes())
    x, counts = load_and_count()
    assert counts["rejected"] == 1 and counts["compiles"] == 1
    np.testing.assert_array_equal(x, 2 * np.arange(5))     # 3 * arange(5) if the swap had run


@pytest.mark.parametrize("where", ["cache folder", "module folder"])
@pytest.mark.parametrize("mode", [0o775, 0o757])
def test_a_folder_others_can_write_to_is_refused(cache, where, mode):
    folder = cache / "emulator" if where == "cache folder" else library(cache).parent
    folder.chmod(mode)
    with pytest.raises(EmulatorError, match=rf"{folder} is writable by .*mode {mode:o}.*chmod go-w"):
        EmulatedModule(CODE)


def test_a_folder_of_another_user_is_refused(cache):
    folder = cache / "emulator"
    try:
        os.chown(folder, os.getuid() + 1, -1)
    except PermissionError:
        pytest.skip("chown to another user needs root")
    with pytest.raises(EmulatorError, match=rf"{folder} belongs to uid {os.getuid() + 1}"):
        EmulatedModule(CODE)


def test_a_new_cache_folder_is_private(tmp_path, monkeypatch):
    monkeypatch.setenv("CUPYVAE_CACHE", str(tmp_path / "fresh"))
    assert _build.cache_dir().stat().st_mode & 0o777 == 0o700


def test_a_library_is_on_disk_before_it_is_published(cache, monkeypatch):
    """fsync of the compiler's output comes before the rename that makes it the cached copy."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.fspath(src), os.fspath(dst)))
        return real_replace(src, dst)

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to name the fsynced file")
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    library(cache).unlink()
    run_scale(EmulatedModule(CODE))
    (published,) = [e for e in events if e[0] == "replace" and e[2].endswith(".so")]
    synced = [e[1] for e in events[:events.index(published)] if e[0] == "fsync"]
    assert published[1] in synced, events


def test_a_truncated_runtime_is_rebuilt_not_a_bus_error(tmp_path):
    """The runtime is loaded once per process, so this runs in a child: a cache whose
    runtime library was cut short (it used to kill the interpreter with SIGBUS)."""
    cache = tmp_path / "cache"
    runtime = Path(_build.load_runtime()._name)
    (cache / "emulator").mkdir(parents=True, mode=0o700)
    for path in (runtime, runtime.with_suffix(".json")):
        shutil.copy(path, cache / "emulator" / path.name)
    copied = cache / "emulator" / runtime.name
    copied.write_bytes(runtime.read_bytes()[:4096])
    script = textwrap.dedent(f"""
        import numpy as np
        from cupyvae.emulator import EmulatedModule, _build
        x = np.arange(5, dtype=np.float32)
        EmulatedModule({CODE!r}).get_function("scale")((1,), (8,), (x, np.int32(5)))
        assert x.tolist() == [0, 2, 4, 6, 8], x
        print(_build.STATS["runtime_builds"], _build.STATS["rejected"])
    """)
    env = {**os.environ, "CUPYVAE_CACHE": str(cache),
           "PYTHONPATH": str(Path(_build.__file__).parents[2])}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "1"]                  # rebuilt once, after one rejection
    assert _build._file_sha256(copied) == json.loads(copied.with_suffix(".json").read_bytes())["library_sha256"]
