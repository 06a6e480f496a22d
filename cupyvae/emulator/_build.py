"""Compile CUDA sources with g++ into cached shared libraries (and the runtime once).

The on-disk cache is trusted only as far as it is verified: every library has a JSON
manifest beside it (``<key>.json`` for a kernel module, ``libcuemu_rt-<key>.json`` for
the runtime) holding the library's SHA-256 and a SHA-256 of the manifest itself.  A
library is loaded only after its digest matches; a missing, truncated, corrupt or
swapped library or manifest is rebuilt (counted in ``STATS["rejected"]``), never loaded.
The cache folders must belong to this user and not be writable by group or others
(EmulatorError otherwise), since anyone who can write there could plant code that the
digest check, whose manifest they could rewrite too, would not stop.  Libraries are
fsynced before the rename that publishes them, manifests written with write_atomic.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
import shlex
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from ..files import fsync_directory, parse_json, write_atomic
from ._errors import EmulatorError
from ._parse import KernelInfo, Param, parse

HERE = Path(__file__).resolve().parent
SHIM = HERE / "cuda_emu.h"
RUNTIME_SRC = HERE / "cuda_emu_runtime.hpp"

#: flags every kernel module is compiled with (see the package docstring)
KERNEL_FLAGS = (
    "-std=c++20", "-O2", "-shared", "-fPIC", "-fno-extern-tls-init", "-ffp-contract=off",
    "-fno-exceptions", "-fno-rtti", "-fno-strict-aliasing", "-fno-math-errno", "-fvisibility=hidden",
    "-fstack-clash-protection",
)
RUNTIME_FLAGS = (
    "-std=c++20", "-O2", "-shared", "-fPIC", "-fno-exceptions", "-fno-rtti", "-pthread", "-fvisibility=hidden",
)
MAX_DYNAMIC_SHARED = 227 * 1024

#: NVRTC options that mean nothing on the CPU and are ignored (with or without a value)
_IGNORED = (
    "-arch", "--gpu-architecture", "-use_fast_math", "--use_fast_math", "-lineinfo", "--generate-line-info",
    "-G", "--device-debug", "-ftz", "--ftz", "-prec-div", "--prec-div", "-prec-sqrt", "--prec-sqrt",
    "-fmad", "--fmad", "-dopt", "--dopt", "-maxrregcount", "--maxrregcount", "-rdc", "--relocatable-device-code",
    "-dc", "-ewp", "--extensible-whole-program", "-default-device", "--device-as-default-execution-space",
    "-restrict", "--restrict", "-extra-device-vectorization", "--extra-device-vectorization",
    "-std", "--std", "-builtin-move-forward", "--builtin-move-forward", "-builtin-initializer-list",
    "--builtin-initializer-list", "-w", "--disable-warnings", "-Werror", "-err-no", "-no-source-include",
    "--no-source-include", "-time", "-split-compile", "-pch", "--pch", "-create-pch", "-use-pch",
    "-minimal", "--minimal", "-device-int128", "--device-int128", "-jump-table-density",
    "-Xptxas", "--ptxas-options", "-dlto", "--dlto", "-lto", "-ltoir", "-dw", "--device-w",
    "-dopt", "-fdevice-syntax-only", "-fdevice-time-trace", "-optix-ir", "-split-compile-extended",
)

STATS = {"compiles": 0, "disk_hits": 0, "memory_hits": 0, "runtime_builds": 0, "rejected": 0}
_lock = threading.RLock()
_memo: dict[tuple, "CompiledModule"] = {}
_runtime: ctypes.CDLL | None = None
_compiler_id: str | None = None


# ------------------------------------------------------------------ helpers
def cache_dir() -> Path:
    root = os.environ.get("CUPYVAE_CACHE")
    if root:
        base = Path(root)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = Path(xdg) / "cupyvae" if xdg else Path.home() / ".cache" / "cupyvae"
    d = base / "emulator"
    private_dir(d)
    return d


def private_dir(d: Path) -> Path:
    """Create `d` (mode 0700) or check the existing one: it must belong to this user and
    not be writable by group or others, or someone else could swap a library we load."""
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = d.stat()
    writable_by = [who for who, bit in (("group", 0o020), ("others", 0o002)) if st.st_mode & bit]
    if writable_by:
        raise EmulatorError(
            f"the emulator cache directory {d} is writable by {' and '.join(writable_by)} "
            f"(mode {st.st_mode & 0o777:o}), so a library in it could be replaced by someone else; "
            f"run `chmod go-w {d}` or point $CUPYVAE_CACHE at a private folder")
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise EmulatorError(
            f"the emulator cache directory {d} belongs to uid {st.st_uid}, not to this user "
            f"(uid {os.getuid()}); point $CUPYVAE_CACHE at a folder of your own")
    return d


def compiler() -> list[str]:
    return shlex.split(os.environ.get("CUPYVAE_EMU_CXX", "g++"))


def extra_flags() -> list[str]:
    """Extra g++ flags for kernel modules ($CUPYVAE_EMU_CXXFLAGS, e.g. "-O0 -g")."""
    return shlex.split(os.environ.get("CUPYVAE_EMU_CXXFLAGS", ""))


def runtime_flags() -> list[str]:
    """Flags for the runtime library; $CUPYVAE_EMU_RUNTIME_CXXFLAGS adds to them
    (e.g. "-DCUEMU_USE_UCONTEXT" forces the portable ucontext fiber switch)."""
    return list(RUNTIME_FLAGS) + shlex.split(os.environ.get("CUPYVAE_EMU_RUNTIME_CXXFLAGS", ""))


def compiler_id() -> str:
    global _compiler_id
    if _compiler_id is None:
        try:
            r = subprocess.run(compiler() + ["--version"], capture_output=True, text=True, check=True)
        except (OSError, subprocess.CalledProcessError) as e:
            raise EmulatorError(f"the CUDA emulator needs a C++20 compiler ({' '.join(compiler())}): {e}") from e
        _compiler_id = " ".join(compiler()) + "\n" + r.stdout.splitlines()[0]
    return _compiler_id


def _digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        b = p.encode() if isinstance(p, str) else p
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def _run(cmd: list[str], what: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    if r.returncode != 0:
        log = (r.stdout + r.stderr).strip()
        raise EmulatorError(f"{what} failed (exit {r.returncode}):\n$ {shlex.join(cmd)}\n{log}")
    return r


def _compile_to(path: Path, cmd_without_output: list[str], what: str, cwd: str) -> str:
    """Run the compiler into a temporary file next to ``path``, fsync it, rename it into
    place; returns the SHA-256 of what was published."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        _run(cmd_without_output + ["-o", tmp], what, cwd=cwd)
        digest = _file_sha256(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())   # on disk before the rename publishes it
        os.replace(tmp, path)
        fsync_directory(path.parent)
        return digest
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _file_sha256(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            h = hashlib.sha256()
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except FileNotFoundError:
        return None
    return h.hexdigest()


def _write_manifest(path: Path, record: dict) -> None:
    """Write `record` with a SHA-256 of its own canonical JSON (key "sha256")."""
    write_atomic(path, json.dumps({**record, "sha256": _record_digest(record)}, sort_keys=True).encode())


def _read_manifest(path: Path, library: Path) -> dict | None:
    """The manifest's record if it is intact and `library` matches its digest, else None
    (missing, truncated, corrupt or swapped: the caller rebuilds)."""
    try:
        record = parse_json(path.read_bytes())
    except (FileNotFoundError, ValueError):   # ValueError: any JSON failure (files.JSONError)
        record = None
    if not isinstance(record, dict) or record.pop("sha256", None) != _record_digest(record):
        record = None
    if record is not None and record.get("library_sha256") == _file_sha256(library):
        return record
    if path.exists() or library.exists():
        STATS["rejected"] += 1
    return None


def _record_digest(record: dict) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


# ------------------------------------------------------------------ options
def translate_options(options: tuple[str, ...]) -> tuple[list[str], str | None]:
    """NVRTC-style options -> (g++ preprocessor flags, __CUDA_ARCH__ value or None).

    Passed through: -D/--define-macro, -U/--undefine-macro, -I/--include-path.
    Ignored (documented): architecture, fast-math, debug/line-info and other code
    generation options that have no meaning on the CPU (see ``_IGNORED``).
    Anything else raises EmulatorError so nothing is silently dropped.
    """
    out: list[str] = []
    arch = None
    opts = list(options)
    k = 0
    while k < len(opts):
        o = opts[k]
        if not isinstance(o, str):
            raise EmulatorError(f"compile options must be strings, got {o!r}")
        k += 1
        for long_, short in (("--define-macro", "-D"), ("--undefine-macro", "-U"), ("--include-path", "-I")):
            if o in (long_, short):
                if k >= len(opts):
                    raise EmulatorError(f"option {o} needs a value")
                out.append(short + opts[k])
                k += 1
                break
            if o.startswith(long_ + "="):
                out.append(short + o[len(long_) + 1:])
                break
            if o.startswith(short) and len(o) > 2:
                out.append(o)
                break
        else:
            key = o.split("=", 1)[0]
            if key in ("-arch", "--gpu-architecture"):
                val = o.split("=", 1)[1] if "=" in o else (opts[k] if k < len(opts) else "")
                if "=" not in o:
                    k += 1
                m = re.search(r"(\d+)", val)
                if m:
                    arch = str(int(m.group(1)) * 10)
            elif key in _IGNORED:
                if "=" not in o and key in ("-maxrregcount", "--maxrregcount", "-Xptxas", "--ptxas-options"):
                    k += 1  # option with a separate value
            else:
                raise EmulatorError(
                    f"compile option {o!r} is not supported by the CUDA emulator "
                    "(supported: -D/-U/-I and the NVRTC code-generation options it ignores)"
                )
    return out, arch


# ------------------------------------------------------------------ runtime
def load_runtime() -> ctypes.CDLL:
    """Build (once per cache) and load the fiber runtime with RTLD_GLOBAL."""
    global _runtime
    with _lock:
        if _runtime is not None:
            return _runtime
        flags = runtime_flags()
        key = _digest("rt1", SHIM.read_bytes(), RUNTIME_SRC.read_bytes(), compiler_id(), "\0".join(flags))
        path = cache_dir() / f"libcuemu_rt-{key[:24]}.so"
        manifest = path.with_suffix(".json")
        if _read_manifest(manifest, path) is None:
            cmd = compiler() + flags + ["-x", "c++", str(RUNTIME_SRC)]
            digest = _compile_to(path, cmd, "building the CUDA emulator runtime", cwd=str(path.parent))
            _write_manifest(manifest, {"library_sha256": digest})
            STATS["runtime_builds"] += 1
        lib = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
        lib.cuemu_rt_launch.restype = ctypes.c_int
        lib.cuemu_rt_launch.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
        _runtime = lib
        return lib


# ------------------------------------------------------------------ modules
@dataclass
class CompiledModule:
    lib: ctypes.CDLL
    path: Path
    kernels: dict[str, KernelInfo]
    skipped: dict[str, str]
    has_dynamic_shared: bool


def _glue(kernels: dict[str, KernelInfo], shared: list[str]) -> str:
    vis = 'extern "C" __attribute__((visibility("default")))'
    lines = ["", "// ---- generated by cupyvae.emulator: launch glue ----",
             f"{vis} void* cuemu_tls_anchor(void) {{ return &::cuemu::cur; }}"]
    for k in kernels.values():
        lines.append(f"{vis} void cuemu_entry_{k.name}(::cuemu::FiberHead* f, void** a) "
                     f"{{ ::cuemu::cur = f; ::cuemu::invoke(&{k.qualname}, a); }}")
        lines.append(f"{vis} const char* const* cuemu_sig_{k.name}(void) "
                     f"{{ return ::cuemu::signature(&{k.qualname}); }}")
    if shared:
        nobits = "%nobits"
        obj = "%object"
        asm = [f'.section .tbss,"awT",{nobits}', ".balign 256"]
        for s in shared + ["cuemu_dynsmem_buf"]:
            asm += [f".globl {s}", f".hidden {s}", f".type {s},{obj}", f".size {s},{MAX_DYNAMIC_SHARED}", f"{s}:"]
        asm += [f".zero {MAX_DYNAMIC_SHARED}", ".previous"]
        lines.append("asm(" + " ".join(json.dumps(a + "\n") for a in asm) + ");")
        lines.append('extern "C" { extern thread_local unsigned char cuemu_dynsmem_buf[]; }')
        lines.append(f"{vis} void* cuemu_dynsmem(void) {{ return cuemu_dynsmem_buf; }}")
    return "\n".join(lines) + "\n"


def _meta_record(kernels, skipped, has_dyn) -> dict:
    return {
        "kernels": {k.name: {"qualname": k.qualname, "params": [[p.name, p.decl] for p in k.params]}
                    for k in kernels.values()},
        "skipped": skipped,
        "dynamic_shared": has_dyn,
    }


def _meta_from_record(d: dict):
    """(kernels, skipped, has_dynamic_shared); None if the record lacks a field (a manifest
    from another version of this code: rebuilt like a corrupt one)."""
    try:
        kernels = {name: KernelInfo(name, v["qualname"], True, [Param(a, b) for a, b in v["params"]])
                   for name, v in d["kernels"].items()}
        return kernels, dict(d["skipped"]), bool(d["dynamic_shared"])
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def build_module(code: str, options: tuple[str, ...]) -> CompiledModule:
    if not isinstance(code, str):
        raise TypeError(f"code must be a str, got {type(code).__name__}")
    options = tuple(options)
    extra = tuple(extra_flags())
    mkey = (code, options, extra)
    with _lock:
        hit = _memo.get(mkey)
        if hit is not None:
            STATS["memory_hits"] += 1
            return hit
        load_runtime()
        pp_flags, arch = translate_options(options)
        defs = ["-D__CUDA_ARCH__=" + arch] if arch else []
        flags = list(KERNEL_FLAGS) + defs + pp_flags + list(extra)
        key = _digest("mod1", code, "\0".join(flags), SHIM.read_bytes(), RUNTIME_SRC.read_bytes(), compiler_id())
        d = private_dir(cache_dir() / key[:2])
        so = d / f"{key}.so"
        meta = d / f"{key}.json"
        record = _read_manifest(meta, so)
        cached = None if record is None else _meta_from_record(record)
        if cached is not None:
            kernels, skipped, has_dyn = cached
            STATS["disk_hits"] += 1
        else:
            kernels, skipped, has_dyn, digest = _compile(code, flags, defs + pp_flags, so)
            _write_manifest(meta, {**_meta_record(kernels, skipped, has_dyn), "library_sha256": digest})
            STATS["compiles"] += 1
        try:
            lib = ctypes.CDLL(str(so))
        except OSError as e:
            raise EmulatorError(f"could not load the emulated module {so}: {e}") from e
        mod = CompiledModule(lib, so, kernels, skipped, has_dyn)
        _memo[mkey] = mod
        return mod


def _compile(code: str, flags: list[str], pp_flags: list[str], so: Path):
    with tempfile.TemporaryDirectory(prefix="build-", dir=so.parent) as tmp:
        src = Path(tmp) / "kernel.cu"
        src.write_text(code)
        # 1) preprocess with the shim in parse mode: find kernels + extern __shared__
        pp = _run(compiler() + ["-E", "-P", "-x", "c++", "-std=c++20", "-D__CUEMU_PARSE__",
                                "-include", str(SHIM)] + pp_flags + [str(src)],
                  "preprocessing the kernel source", cwd=tmp)
        parsed = parse(pp.stdout)
        # 2) compile the unchanged source followed by generated launch glue
        unit = Path(tmp) / "unit.cpp"
        unit.write_text('#line 1 "kernel.cu"\n' + code + "\n#line 1 \"<cupyvae-emulator-glue>\"\n"
                        + _glue(parsed.kernels, parsed.shared_symbols))
        cmd = compiler() + flags + ["-include", str(SHIM), "-x", "c++", str(unit), "-x", "none", "-lm"]
        digest = _compile_to(so, cmd, "compiling the kernel source with g++", cwd=tmp)
    return parsed.kernels, parsed.skipped, bool(parsed.shared_symbols), digest


def clear_memory_cache() -> None:
    """Forget in-process compiled modules (the on-disk cache stays)."""
    with _lock:
        _memo.clear()
