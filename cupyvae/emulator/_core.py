"""EmulatedModule / EmulatedKernel: the cupy.RawModule-like front end of the emulator."""
from __future__ import annotations

import ctypes
import os

import numpy as np

from . import _build
from ._errors import EmulatorError

THREAD_ORDERS = {"forward": 0, "reverse": 1, "random": 2}
MAX_BLOCK = (1024, 1024, 64)
MAX_GRID = (2**31 - 1, 65535, 65535)
DEFAULT_STACK = 128 * 1024
DEFAULT_LIVELOCK_LIMIT = 1 << 22

# C++ type (canonical spelling from the shim's cuemu::tname) -> NumPy dtype
_SCALARS = {
    "float": np.float32, "double": np.float64, "bool": np.bool_,
    "char": np.int8 if np.dtype(np.byte).kind == "i" else np.uint8,
    "signed char": np.int8, "unsigned char": np.uint8, "short": np.int16, "unsigned short": np.uint16,
    "int": np.int32, "unsigned int": np.uint32, "long": np.int64, "unsigned long": np.uint64,
    "long long": np.int64, "unsigned long long": np.uint64,
}
# vector element types -> (element dtype, required alignment in bytes)
_VECTORS = {
    "float2": (np.float32, 8), "float4": (np.float32, 16), "double2": (np.float64, 16),
    "int2": (np.int32, 8), "int4": (np.int32, 16), "uint2": (np.uint32, 8), "uint4": (np.uint32, 16),
}


class _LaunchDesc(ctypes.Structure):
    # must match cuemu::LaunchDesc in cuda_emu_runtime.hpp
    _fields_ = [
        ("entry", ctypes.c_void_p),
        ("args", ctypes.c_void_p),
        ("dynsmem", ctypes.c_void_p),
        ("tls_anchor", ctypes.c_void_p),
        ("kernel_name", ctypes.c_char_p),
        ("grid", ctypes.c_uint * 3),
        ("block", ctypes.c_uint * 3),
        ("shared_mem", ctypes.c_ulonglong),
        ("seed", ctypes.c_ulonglong),
        ("stack_size", ctypes.c_ulonglong),
        ("livelock_limit", ctypes.c_ulonglong),
        ("order", ctypes.c_int),
        ("workers", ctypes.c_int),
    ]


def _default_workers() -> int:
    return env_int("CUPYVAE_EMU_WORKERS", max(1, min(2, os.cpu_count() or 1)), 1, MAX_WORKERS)


# The C runtime holds workers in an int; more OS threads than this only contend.
MAX_WORKERS = 1024


def env_int(name: str, default: int, minimum: int, maximum: int) -> int:
    """The integer in environment variable `name` (unset or empty: `default`); ValueError
    naming the variable for anything but an integer in [minimum, maximum] -- the C runtime
    reads these counts as fixed-width integers, and a typo must not become a crash."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not minimum <= value <= maximum:
        raise ValueError(f"environment variable {name}={text!r}: must be an integer in "
                         f"[{minimum}, {maximum}]")
    return value


def _describe(v) -> str:
    if isinstance(v, np.ndarray):
        return f"a numpy array of dtype {v.dtype} and shape {v.shape}"
    if isinstance(v, np.generic):
        return f"a numpy.{type(v).__name__} scalar"
    return f"a Python {type(v).__name__} ({v!r})"[:200]


class _Param:
    """How to check and marshal one kernel parameter."""

    def __init__(self, index: int, name: str | None, decl: str, ctype: str):
        self.index, self.decl, self.ctype = index, decl, ctype
        self.name = name or f"arg{index}"
        self.pointer = ctype.endswith("*")
        base = ctype[:-1] if self.pointer else ctype
        self.const = base.startswith("const ")
        base = base[6:] if self.const else base
        self.base = base
        self.align = 1
        if self.pointer and base == "void":
            self.dtype = None
            self.needs = "a C-contiguous numpy array (any dtype)"
        elif self.pointer and base in _VECTORS:
            dt, self.align = _VECTORS[base]
            self.dtype = np.dtype(dt)
            self.needs = f"a C-contiguous numpy {self.dtype} array aligned to {self.align} bytes"
        elif base in _SCALARS:
            self.dtype = np.dtype(_SCALARS[base])
            self.needs = (f"a C-contiguous numpy {self.dtype} array" if self.pointer
                          else f"a numpy.{self.dtype.type.__name__} scalar")
        else:
            self.dtype = None
            self.needs = None  # unsupported

    def shown(self) -> str:
        t = self.decl or self.ctype
        return t if t.replace(" ", "").replace("__restrict__", "") == self.ctype.replace(" ", "") \
            else f"{t}' (= '{self.ctype}"

    def convert(self, kernel: str, v):
        def bad(extra: str = "") -> TypeError:
            return TypeError(
                f"kernel '{kernel}': argument {self.index} ('{self.name}') has C++ type '{self.shown()}' "
                f"and needs {self.needs}; got {_describe(v)}{extra}"
            )

        if self.pointer:
            if v is None:
                return ctypes.c_void_p(0)
            if not isinstance(v, np.ndarray):
                hint = ""
                if type(v).__module__.startswith("cupy"):
                    hint = " (the emulator runs on NumPy arrays; use .get())"
                raise bad(hint)
            if self.dtype is not None and v.dtype != self.dtype:
                raise bad()
            if not v.flags.c_contiguous:
                raise bad(" that is not C-contiguous (use np.ascontiguousarray)")
            if not self.const and not v.flags.writeable:
                raise bad(f" that is read-only, but '{self.ctype}' is not a const pointer")
            if self.align > 1 and v.ctypes.data % self.align:
                raise bad(f" whose data is not {self.align}-byte aligned")
            return ctypes.c_void_p(v.ctypes.data)
        if isinstance(v, np.generic) and v.dtype == self.dtype:
            return ctypes.create_string_buffer(v.tobytes(), self.dtype.itemsize)
        extra = ""
        if isinstance(v, (bool, int, float)) and not isinstance(v, np.generic):
            extra = (f"; CuPy would pass a Python {type(v).__name__} as an 8-byte "
                     f"{'double' if isinstance(v, float) else 'integer'}, so wrap it: "
                     f"np.{self.dtype.type.__name__}({v!r})")
        elif isinstance(v, np.ndarray):
            extra = "; pass a numpy scalar, not an array"
        raise bad(extra)


class EmulatedKernel:
    """One ``extern "C" __global__`` kernel; call it like ``cupy.RawKernel``."""

    def __init__(self, module: "EmulatedModule", name: str):
        compiled = module._compiled
        info = compiled.kernels[name]
        self.module = module
        self.name = name
        lib = compiled.lib
        sig = getattr(lib, f"cuemu_sig_{name}")
        sig.restype = ctypes.POINTER(ctypes.c_char_p)
        sig.argtypes = []
        arr = sig()
        ctypes_ = []
        k = 0
        while arr[k] is not None:
            ctypes_.append(arr[k].decode())
            k += 1
        parsed = info.params if len(info.params) == len(ctypes_) else [None] * len(ctypes_)
        self._params = []
        for i, (p, ct) in enumerate(zip(parsed, ctypes_)):
            prm = _Param(i, p.name if p else None, p.decl if p else ct, ct)
            if prm.needs is None:
                raise EmulatorError(
                    f"kernel '{name}': parameter {i} ('{prm.name}', declared '{prm.decl}') has a type the "
                    "emulator cannot pass; supported: pointers to and scalars of float, double, bool, "
                    "(un)signed char/short/int/long/long long, pointers to float2/float4/double2/int2/int4/"
                    "uint2/uint4, and void*"
                )
            self._params.append(prm)
        self._entry = ctypes.cast(getattr(lib, f"cuemu_entry_{name}"), ctypes.c_void_p).value
        self._dynsmem = (ctypes.cast(lib.cuemu_dynsmem, ctypes.c_void_p).value
                         if compiled.has_dynamic_shared else None)
        self._tls_anchor = ctypes.cast(lib.cuemu_tls_anchor, ctypes.c_void_p).value
        self._name_b = name.encode()
        self._rt = _build.load_runtime()

    @property
    def param_types(self) -> tuple[str, ...]:
        """Canonical C++ types of the parameters, e.g. ('const float*', 'int')."""
        return tuple(p.ctype for p in self._params)

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self._params)

    def __repr__(self) -> str:
        params = ", ".join(f"{p.ctype} {p.name}" for p in self._params)
        return f"<EmulatedKernel {self.name}({params})>"

    def __call__(self, grid, block, args: tuple, shared_mem: int = 0) -> None:
        g = _dims(grid, "grid", self.name)
        b = _dims(block, "block", self.name)
        for i, (v, lim) in enumerate(zip(b, MAX_BLOCK)):
            if v > lim:
                raise EmulatorError(f"kernel '{self.name}': block dimension {'xyz'[i]} = {v} exceeds {lim}")
        if b[0] * b[1] * b[2] > 1024:
            raise EmulatorError(f"kernel '{self.name}': block {b} has {b[0] * b[1] * b[2]} threads (max 1024)")
        for i, (v, lim) in enumerate(zip(g, MAX_GRID)):
            if v > lim:
                raise EmulatorError(f"kernel '{self.name}': grid dimension {'xyz'[i]} = {v} exceeds {lim}")
        if isinstance(shared_mem, bool) or not isinstance(shared_mem, (int, np.integer)):
            raise TypeError(f"kernel '{self.name}': shared_mem must be an int, got {_describe(shared_mem)}")
        if not 0 <= int(shared_mem) <= _build.MAX_DYNAMIC_SHARED:
            raise EmulatorError(f"kernel '{self.name}': shared_mem={shared_mem} bytes is outside "
                                f"[0, {_build.MAX_DYNAMIC_SHARED}] (227 KiB)")
        if not isinstance(args, (tuple, list)):
            raise TypeError(f"kernel '{self.name}': args must be a tuple, got {type(args).__name__}")
        if len(args) != len(self._params):
            sig = ", ".join(f"{p.ctype} {p.name}" for p in self._params)
            raise TypeError(f"kernel '{self.name}' takes {len(self._params)} argument(s) ({sig}) "
                            f"but {len(args)} were given")
        keep = [p.convert(self.name, v) for p, v in zip(self._params, args)]
        ptrs = (ctypes.c_void_p * max(1, len(keep)))(*[ctypes.addressof(x) for x in keep])
        m = self.module
        desc = _LaunchDesc(
            entry=self._entry, args=ctypes.addressof(ptrs), dynsmem=self._dynsmem,
            tls_anchor=self._tls_anchor, kernel_name=self._name_b,
            grid=(ctypes.c_uint * 3)(*g), block=(ctypes.c_uint * 3)(*b), shared_mem=int(shared_mem),
            seed=m.seed & 0xFFFFFFFFFFFFFFFF, stack_size=m._stack_size, livelock_limit=m._livelock_limit,
            order=THREAD_ORDERS[m.thread_order], workers=m.workers,
        )
        err = ctypes.create_string_buffer(4096)
        rc = self._rt.cuemu_rt_launch(ctypes.byref(desc), err, len(err))
        del keep, args
        if rc != 0:
            raise EmulatorError(err.value.decode(errors="replace"))


def _dims(v, what: str, kernel: str) -> tuple[int, int, int]:
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        t = (int(v),)
    elif isinstance(v, (tuple, list)) and 1 <= len(v) <= 3 and all(
            isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in v):
        t = tuple(int(x) for x in v)
    else:
        raise EmulatorError(f"kernel '{kernel}': {what} must be an int or a tuple of 1 to 3 ints, got {v!r}")
    t = t + (1,) * (3 - len(t))
    if min(t) < 1:
        raise EmulatorError(f"kernel '{kernel}': {what} dimensions must be >= 1, got {t}")
    return t


class EmulatedModule:
    """Compile CUDA source for the CPU; mirrors ``cupy.RawModule(code=..., options=...)``.

    thread_order: "forward" | "reverse" | "random" (seeded by ``seed``): the order in
    which the fibers of a block run between synchronization points, and the order
    blocks are taken by workers.  workers: OS threads running blocks (default
    min(2, cpu count), or $CUPYVAE_EMU_WORKERS).
    """

    def __init__(self, code: str, options: tuple[str, ...] = (), *, thread_order: str = "forward",
                 seed: int = 0, workers: int | None = None):
        if thread_order not in THREAD_ORDERS:
            raise ValueError(f"thread_order must be one of {sorted(THREAD_ORDERS)}, got {thread_order!r}")
        if workers is None:
            workers = _default_workers()
        if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
            raise ValueError(f"workers must be a positive int or None, got {workers!r}")
        self.code = code
        self.options = tuple(options)
        self.thread_order = thread_order
        self.seed = int(seed)
        self.workers = int(workers)
        # A fiber's stack, in KB; the floor (an eighth of the default) refuses a typo such as
        # 1 instead of letting a fiber overflow its stack.
        self._stack_size = env_int("CUPYVAE_EMU_STACK_KB", DEFAULT_STACK // 1024, 16, 1 << 30) * 1024
        self._livelock_limit = env_int("CUPYVAE_EMU_LIVELOCK_LIMIT", DEFAULT_LIVELOCK_LIMIT, 1,
                                       2 ** 64 - 1)
        self._compiled = _build.build_module(code, self.options)
        self._kernels: dict[str, EmulatedKernel] = {}

    @property
    def kernel_names(self) -> tuple[str, ...]:
        return tuple(self._compiled.kernels)

    def get_function(self, name: str) -> EmulatedKernel:
        k = self._kernels.get(name)
        if k is None:
            if name not in self._compiled.kernels:
                why = self._compiled.skipped.get(name)
                if why:
                    raise EmulatorError(f"kernel '{name}' cannot be launched by the emulator: {why}")
                raise EmulatorError(f"no kernel named '{name}' in the module; "
                                    f"extern \"C\" __global__ kernels found: {sorted(self._compiled.kernels)}")
            k = self._kernels[name] = EmulatedKernel(self, name)
        return k


for _c in (EmulatedKernel, EmulatedModule):
    _c.__module__ = "cupyvae.emulator"
