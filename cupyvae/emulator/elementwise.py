"""One elementwise spec -> a ``cupy.ElementwiseKernel`` AND an equivalent raw CUDA kernel.

::

    spec = ElementwiseSpec("float32 x, float32 a", "float32 z", "z = a * x + i", "axpi")
    f = spec.emulated()                      # runs spec.cuda_source() on the CPU emulator
    z = f(x_np, np.float32(2.0))             # outputs allocated and returned, or:
    f(x_np, np.float32(2.0), z_np)           # written into the given outputs
    k = spec.cupy_kernel()                   # cupy.ElementwiseKernel(...) for the GPU path

Semantics follow CuPy's ElementwiseKernel for the supported subset:

* ``in_params`` / ``out_params``: ``"[raw] dtype name, ..."`` with NumPy dtype names
  (``float32``, ``float64``, ``int32``, ``uint32``, ``int64``, ``uint64``, ``int8``,
  ``uint8``, ``int16``, ``uint16``, ``bool``).  Type placeholders (``T x``) are not
  supported.
* In the operation, a non-raw input ``x`` is the element ``x[i]`` (const), an output
  ``z`` is a reference to ``z[i]``, a ``raw`` parameter ``t`` is a pointer indexed
  freely (``t[j]``; CuPy's ``t.size()`` is not available).  ``i`` is the element
  index and ``_ind.size()`` the element count; ``_n`` is accepted as a shorthand
  for ``_ind.size()`` on both paths.
* Emulated calls: every non-raw array argument must have the same shape (no
  broadcasting) and exactly the declared dtype; a non-raw input may instead be a
  scalar (cast to the declared dtype, like CuPy).  Outputs must be C-contiguous.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ._core import EmulatedModule

_CTYPES = {
    "float32": "float", "float64": "double", "bool": "bool", "int8": "signed char", "uint8": "unsigned char",
    "int16": "short", "uint16": "unsigned short", "int32": "int", "uint32": "unsigned int",
    "int64": "long long", "uint64": "unsigned long long",
}
BLOCK = 256
MAX_GRID = 1024


@dataclass(frozen=True)
class _EParam:
    name: str
    dtype: np.dtype
    ctype: str
    raw: bool
    out: bool


def _parse_params(text: str, out: bool) -> list[_EParam]:
    params = []
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        words = part.split()
        raw = words[0] == "raw"
        if raw:
            words = words[1:]
        if len(words) != 2 or not re.fullmatch(r"[A-Za-z_]\w*", words[1]):
            raise ValueError(f"cannot parse elementwise parameter {part!r} (expected '[raw] dtype name')")
        try:
            dt = np.dtype(words[0])
        except TypeError:
            raise ValueError(f"parameter {part!r}: {words[0]!r} is not a NumPy dtype name "
                             "(type placeholders are not supported)") from None
        if dt.name not in _CTYPES:
            raise ValueError(f"parameter {part!r}: dtype {dt} is not supported")
        params.append(_EParam(words[1], dt, _CTYPES[dt.name], raw, out))
    return params


class ElementwiseSpec:
    """A CuPy-ElementwiseKernel-style definition that runs on CuPy and on the emulator."""

    def __init__(self, in_params: str, out_params: str, operation: str, name: str, preamble: str = ""):
        if not re.fullmatch(r"[A-Za-z_]\w*", name):
            raise ValueError(f"kernel name must be a C identifier, got {name!r}")
        self.in_params, self.out_params = in_params, out_params
        self.operation, self.name, self.preamble = operation, name, preamble
        self._ins = _parse_params(in_params, False)
        self._outs = _parse_params(out_params, True)
        if not self._outs:
            raise ValueError("an elementwise spec needs at least one output parameter")
        names = [p.name for p in self._ins + self._outs]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate parameter names in {names}")
        self._emulated: dict = {}

    # ------------------------------------------------------------ GPU (CuPy)
    def _op_with_prelude(self) -> str:
        if re.search(r"\b_n\b", self.operation):
            return "const long long _n = _ind.size();\n" + self.operation
        return self.operation

    def cupy_kernel(self, options: tuple[str, ...] | None = None):
        """``cupy.ElementwiseKernel(in_params, out_params, operation, name, preamble=preamble,
        options=options)``; `options` defaults to the project's NVRTC code-generation policy
        (cupyvae.cuda.loader.ELEMENTWISE_NVRTC_OPTIONS: no FMA contraction, like the emulator)."""
        import cupy  # lazy: CuPy is optional

        if options is None:
            from ..cuda.loader import ELEMENTWISE_NVRTC_OPTIONS
            options = ELEMENTWISE_NVRTC_OPTIONS
        return cupy.ElementwiseKernel(self.in_params, self.out_params, self._op_with_prelude(), self.name,
                                      preamble=self.preamble, options=tuple(options))

    # ------------------------------------------------------- raw CUDA source
    def cuda_source(self, scalars: tuple[str, ...] | frozenset = ()) -> str:
        """An ``extern "C" __global__`` grid-stride kernel equivalent to the CuPy kernel.

        ``scalars`` names the non-raw inputs passed as scalars (typed by value).
        Parameters, in order: every in param, every out param, then ``long long _n``.
        """
        scalars = frozenset(scalars)
        bad = scalars - {p.name for p in self._ins if not p.raw}
        if bad:
            raise ValueError(f"scalars must name non-raw input parameters, got {sorted(bad)}")
        decl, bind = [], []
        for p in self._ins + self._outs:
            if p.raw:
                decl.append(f"{p.ctype}* {p.name}")
            elif p.name in scalars:
                decl.append(f"const {p.ctype} {p.name}")
            elif p.out:
                decl.append(f"{p.ctype}* __restrict__ _raw_{p.name}")
                bind.append(f"{p.ctype} &{p.name} = _raw_{p.name}[i];")
            else:
                decl.append(f"const {p.ctype}* __restrict__ _raw_{p.name}")
                bind.append(f"const {p.ctype} &{p.name} = _raw_{p.name}[i];")
        decl.append("long long _n")
        body = "\n        ".join(bind)
        ind = ""
        if re.search(r"\b_ind\b", self.operation):
            ind = ("    struct _Ind { long long n; __device__ long long size() const { return n; } };\n"
                   "    const _Ind _ind = {_n};\n")
        return f"""{self.preamble}

extern "C" __global__ void {self.name}({", ".join(decl)}) {{
{ind}    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < _n;
         i += (long long)blockDim.x * gridDim.x) {{
        {body}
        {self.operation};
    }}
}}
"""

    # ----------------------------------------------------------- emulation
    def emulated(self, *, thread_order: str = "forward", seed: int = 0, workers: int | None = None):
        """A callable ``f(*inputs[, *outputs])`` running :meth:`cuda_source` on the emulator.

        Returns the output array (or a tuple for several outputs); given outputs are
        written in place and returned.
        """
        spec = self

        def run(*args):
            n_in, n_out = len(spec._ins), len(spec._outs)
            if len(args) not in (n_in, n_in + n_out):
                raise TypeError(f"{spec.name}: expected {n_in} inputs (+ {n_out} optional outputs), "
                                f"got {len(args)} arguments")
            shape = None
            scalars = []
            conv = []
            for p, a in zip(spec._ins, args[:n_in]):
                if p.raw:
                    if not isinstance(a, np.ndarray) or a.dtype != p.dtype:
                        raise TypeError(f"{spec.name}: raw input '{p.name}' must be a {p.dtype} numpy array")
                    conv.append(np.ascontiguousarray(a))
                elif isinstance(a, np.ndarray) and a.ndim > 0:
                    if a.dtype != p.dtype:
                        raise TypeError(f"{spec.name}: input '{p.name}' must have dtype {p.dtype}, got {a.dtype}")
                    if shape is None:
                        shape = a.shape
                    elif a.shape != shape:
                        raise ValueError(f"{spec.name}: input '{p.name}' has shape {a.shape}, expected {shape} "
                                         "(the emulated path does not broadcast)")
                    conv.append(np.ascontiguousarray(a))
                else:
                    scalars.append(p.name)
                    conv.append(p.dtype.type(a))
            outs = list(args[n_in:])
            if outs:
                for p, o in zip(spec._outs, outs):
                    if not isinstance(o, np.ndarray) or o.dtype != p.dtype or not o.flags.c_contiguous:
                        raise TypeError(f"{spec.name}: output '{p.name}' must be a C-contiguous {p.dtype} array")
                    if p.raw:
                        continue
                    if shape is None:
                        shape = o.shape
                    elif o.shape != shape:
                        raise ValueError(f"{spec.name}: output '{p.name}' has shape {o.shape}, expected {shape}")
            else:
                if shape is None:
                    raise ValueError(f"{spec.name}: cannot infer the output shape without an array input; "
                                     "pass the outputs explicitly")
                outs = [np.empty(shape, p.dtype) for p in spec._outs]
            n = int(np.prod(shape)) if shape is not None else 0
            if n:
                key = (frozenset(scalars), thread_order, seed, workers)
                kern = spec._emulated.get(key)
                if kern is None:
                    mod = EmulatedModule(spec.cuda_source(frozenset(scalars)), thread_order=thread_order,
                                         seed=seed, workers=workers)
                    kern = spec._emulated[key] = mod.get_function(spec.name)
                grid = min(MAX_GRID, (n + BLOCK - 1) // BLOCK)
                kern((grid,), (BLOCK,), (*conv, *outs, np.int64(n)))
            return outs[0] if len(outs) == 1 else tuple(outs)

        run.__name__ = self.name
        run.__doc__ = f"Emulated elementwise kernel {self.name}: ({self.in_params}) -> ({self.out_params})"
        return run

    def __repr__(self) -> str:
        return (f"ElementwiseSpec({self.in_params!r}, {self.out_params!r}, {self.operation!r}, "
                f"{self.name!r})")
