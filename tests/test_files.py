"""Every file cupyvae writes goes through cupyvae.files.write_atomic, and that helper leaves
either the old content or all of the new, whatever happens to the writer."""
from __future__ import annotations

import ast
import io
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import cupyvae
from cupyvae import files, plots
from cupyvae.files import write_atomic

PACKAGE = Path(cupyvae.__file__).parent


def test_a_symlink_at_the_target_is_replaced_not_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    link = tmp_path / "latent.png"
    link.symlink_to(victim)
    write_atomic(link, b"new")
    assert victim.read_text() == "keep me"
    assert not link.is_symlink() and link.read_bytes() == b"new"


def test_the_mode_is_the_umask_s_without_touching_the_umask(tmp_path, monkeypatch):
    previous = os.umask(0o027)
    try:
        def forbidden(_mask):
            raise AssertionError("os.umask changes the mask of every thread for a moment")
        monkeypatch.setattr(os, "umask", forbidden)
        write_atomic(tmp_path / "a.json", b"{}")
    finally:
        monkeypatch.undo()
        os.umask(previous)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o640


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "metrics.csv"
    target.write_bytes(b"old")

    def full_disk(_fd):
        raise OSError("no space left (simulated)")
    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="simulated"):
        write_atomic(target, b"new" * 1000)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]


WRITER = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("files", sys.argv[1])
files = importlib.util.module_from_spec(spec); spec.loader.exec_module(files)
contents = [b"a" * (1 << 20), b"b" * (3 << 20)]
print("ready", flush=True)
i = 0
while True:
    files.write_atomic(sys.argv[2], contents[i % 2])
    i += 1
"""


def test_a_kill_9_at_any_moment_leaves_the_old_or_the_new_file(tmp_path):
    """SIGKILL a process that rewrites one file in a loop, 2-20 ms into its run (the window
    in which `savefig` straight to the final name left a 0-byte picture)."""
    target = tmp_path / "manifold.png"
    target.write_bytes(b"a" * (1 << 20))
    rng = random.Random(0)
    for _ in range(8):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, files.__file__, str(target)],
                                  stdout=subprocess.PIPE, text=True)
        assert writer.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.002, 0.02))
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        writer.stdout.close()
        data = target.read_bytes()
        assert data in (b"a" * (1 << 20), b"b" * (3 << 20)), f"{len(data)} bytes"


# ---------------------------------------------------------------------- the writers
def test_plots_are_rendered_in_memory_and_written_atomically(tmp_path, monkeypatch):
    written = {}
    monkeypatch.setattr(plots, "write_atomic", lambda path, data: written.update({Path(path): data}))
    x = np.random.default_rng(0).random((4, 5, 6)).astype(np.float32)
    path = plots.image_grid(x, tmp_path / "samples.png")
    assert list(written) == [path] and written[path].startswith(b"\x89PNG\r\n\x1a\n")
    assert not path.exists()                     # nothing but write_atomic touched the disk


def test_a_symlinked_plot_is_replaced_not_its_target(tmp_path):
    import matplotlib.image as mpimg
    victim = tmp_path / "notes.txt"
    victim.write_text("mine")
    (tmp_path / "latent.png").symlink_to(victim)
    x = np.random.default_rng(1).random((4, 5, 6)).astype(np.float32)
    path = plots.image_grid(x, tmp_path / "latent.png")
    assert victim.read_text() == "mine"
    assert not path.is_symlink() and mpimg.imread(path).ndim == 3


# Calls that put bytes into a file, and the few places allowed to make them without
# write_atomic, each with its reason.
WRITE_METHODS = {"write_text", "write_bytes", "tofile", "savefig", "save_file"}
WRITE_FUNCTIONS = {"np.save", "np.savez", "np.savez_compressed", "numpy.save", "os.replace",
                   "os.rename", "shutil.copy", "shutil.copyfile", "shutil.copy2", "shutil.move"}
ALLOWED = {
    ("files.py", "write_atomic"): "the helper itself",
    ("datasets.py", "_download_to_temporary"): "streams a download to a temporary file, which "
                                               "is verified and then renamed into place",
    ("datasets.py", "_download_first_good_copy"): "the rename of that verified temporary file",
    ("emulator/_build.py", "_compile_to"): "g++ writes the temporary library, which is fsynced "
                                           "and renamed into place",
    ("emulator/_build.py", "_compile"): "scratch sources in a private temporary directory",
}


def unsafe_writes(source: str) -> list[tuple[str, int, str]]:
    """(function, line, call) of every call in `source` that writes a file other than into
    an in-memory io.BytesIO / io.StringIO buffer."""
    found = []
    for function in ast.walk(ast.parse(source)):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        buffers = {target.id for node in ast.walk(function) if isinstance(node, ast.Assign)
                   and isinstance(node.value, ast.Call) and _name(node.value.func) in ("BytesIO", "StringIO")
                   for target in node.targets if isinstance(target, ast.Name)}
        for call in ast.walk(function):
            if not isinstance(call, ast.Call):
                continue
            name, qualified = _name(call.func), _qualified(call.func)
            first = call.args[0] if call.args else None
            into_buffer = isinstance(first, ast.Name) and first.id in buffers
            if (name in WRITE_METHODS or qualified in WRITE_FUNCTIONS) and not into_buffer:
                found.append((function.name, call.lineno, qualified))
            elif name in ("open", "fdopen") and _writing_mode(call):
                found.append((function.name, call.lineno, qualified))
    return found


def _name(func: ast.expr) -> str:
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def _qualified(func: ast.expr) -> str:
    """"np.save" for np.save(...), "savefig" for fig.savefig(...), "open" for open(...)."""
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        return f"{func.value.id}.{func.attr}"
    return _name(func)


def _writing_mode(call: ast.Call) -> bool:
    modes = [a for a in call.args[1:2]] + [k.value for k in call.keywords if k.arg == "mode"]
    return any(isinstance(m, ast.Constant) and isinstance(m.value, str)
               and set(m.value) & set("wax+") for m in modes)


def test_every_file_the_package_writes_goes_through_write_atomic():
    offenders, used = [], set()
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        for function, line, call in unsafe_writes(path.read_text()):
            if (relative, function) in ALLOWED:
                used.add((relative, function))
            else:
                offenders.append(f"{relative}:{line} {function}() calls {call}")
    assert not offenders, "write these through cupyvae.files.write_atomic:\n" + "\n".join(offenders)
    assert used == set(ALLOWED), f"stale exceptions: {set(ALLOWED) - used}"


def test_the_write_scan_sees_a_direct_write():
    """The scan above is only worth something if it catches the faults it looks for."""
    caught = unsafe_writes(
        "def plot(fig, path):\n    fig.savefig(path)\n"
        "def metrics(path):\n    open(path, 'w').write('x')\n"
        "def cache(path, a):\n    np.save(path, a)\n    os.replace(path, 'x')\n"
        "def safe(fig, a):\n    buffer = io.BytesIO()\n    fig.savefig(buffer)\n    np.save(buffer, a)\n"
        "    open('r.txt').read()\n    'a'.replace('a', 'b')\n    a.copy()\n")
    assert sorted((f, c) for f, _line, c in caught) == [
        ("cache", "np.save"), ("cache", "os.replace"), ("metrics", "open"), ("plot", "fig.savefig")]
