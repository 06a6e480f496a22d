"""Find, assemble and compile the kernel sources; shared by the CUDA and emulated executors.

Each kernel file `kernels/<name>.cu` is turned into ONE self-contained source text with
our own `#include "x.cuh"` headers inlined (each at most once, like #pragma once).
One text matters because CuPy's on-disk kernel cache is keyed on the source string and
never looks at headers found through -I: an edited header would otherwise leave stale
binaries in the cache.  The emulator receives the very same text.

Compile options and the parity policy.  The emulator builds the same text with
`-ffp-contract=off` (no a*b+c fused behind our back), so NVRTC gets `--fmad=false`: with
it every float32 operation the GPU performs is the one written in the source, rounded
once, exactly as on the emulator.  Where a fused multiply-add is wanted it is written
(`fmaf`, as the GEMM does), and `fmaf` is fused on both sides.  The consequences:
  * kernels made of +, -, *, /, sqrtf, fmaf, comparisons and integer work (the GEMMs with
    identity/ReLU, the Adam arithmetic, Philox's words and uniforms) give the SAME BITS on
    a GPU and on the emulator -- the GPU tests compare them bitwise, which also makes
    them race detectors (a race shows up as a bit difference);
  * expf, logf, cosf, tanhf, expm1f, log1pf are CUDA's on the GPU and the host libm's on
    the emulator; both are within 1-2 ulp, so kernels using them agree to a few ulp, not
    bitwise (that is the whole remaining difference, and the tests say so where it applies),
    except below float32's normal range: CUDA's expf is built on ex2.approx.ftz and returns
    0 where the host returns a subnormal (< 2^-126) result (seen on an H200 in the mixture
    prior's responsibilities; tests/test_kernels_mixture_prior.py bounds its effect);
  * contraction off costs nothing measurable here: the GEMM's inner loop already uses
    explicit fmaf, and the other kernels are memory bound.
Division and sqrtf stay IEEE-rounded (NVRTC's defaults -prec-div=true, -prec-sqrt=true),
and the options never include --use_fast_math: it swaps logf/expf/cosf/sqrtf and division
for approximate versions (several ulp, flushes denormals), which would break the few-ulp
parity with the NumPy reference the tests rely on.

One policy for every way CuPy compiles: RawModule gets NVRTC_OPTIONS; ElementwiseKernels
(cupyvae.emulator.elementwise.ElementwiseSpec.cupy_kernel) get ELEMENTWISE_NVRTC_OPTIONS,
the same code-generation options without the language standard, which CuPy chooses itself
for the code it generates around the operation.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path

# Code generation: what makes GPU and emulator bitwise comparable (see the docstring).
PARITY_OPTIONS: tuple[str, ...] = ("--fmad=false",)
NVRTC_OPTIONS: tuple[str, ...] = ("-std=c++17", *PARITY_OPTIONS)
ELEMENTWISE_NVRTC_OPTIONS: tuple[str, ...] = PARITY_OPTIONS
EMULATOR_OPTIONS: tuple[str, ...] = ("-std=c++17",)

# `#include "header.cuh"` (quotes only: angle-bracket system headers are not ours to inline).
_LOCAL_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')
_PRAGMA_ONCE = re.compile(r"^\s*#\s*pragma\s+once\b")


class KernelSourceError(Exception):
    """A kernel file or one of its headers cannot be found or assembled."""


def kernel_dir() -> Path:
    """Folder holding the .cu/.cuh files.

    A regular install ships them as the `cupyvae.kernels` package (pyproject maps the
    repository's top-level kernels/ there); an editable install or a plain checkout
    reads `<repo>/kernels` directly.
    """
    package_root = Path(__file__).resolve().parent.parent
    for candidate in (package_root / "kernels", package_root.parent / "kernels"):
        if any(candidate.glob("*.cu")):
            return candidate
    raise KernelSourceError(
        f"no kernels folder with .cu files found next to {package_root} "
        f"(looked in {package_root / 'kernels'} and {package_root.parent / 'kernels'})")


def kernel_files() -> list[str]:
    """Names of the kernel files (`bernoulli.cu`, ...), sorted."""
    return sorted(path.name for path in kernel_dir().glob("*.cu"))


def load_source(name: str) -> str:
    """`kernels/<name>.cu` (the `.cu` suffix is optional) with its local headers inlined."""
    filename = name if name.endswith(".cu") else f"{name}.cu"
    path = kernel_dir() / filename
    if not path.is_file():
        raise KernelSourceError(f"kernel file {path} does not exist (have: {kernel_files()})")
    return inline_includes(path)


def inline_includes(path: Path, search_dirs: tuple[Path, ...] = ()) -> str:
    """Text of file `path` with every `#include "h"` replaced by h's text, each header once.

    Headers are looked up next to the including file first, then in `search_dirs`, then in
    kernel_dir().
    """
    path = Path(path).resolve()
    return inline_source(path.read_text(), path, (path.parent, *search_dirs))


def inline_source(source: str, origin: str | Path = "<source>",
                  search_dirs: tuple[Path, ...] = ()) -> str:
    """`source` with its local headers inlined; for kernels held in strings (tests).

    `origin` names the source in error messages; headers are looked up in `search_dirs`,
    then in kernel_dir() (so any source can include philox.cuh).
    """
    seen: set[Path] = set()
    directories = (*(Path(d) for d in search_dirs), kernel_dir())
    return "".join(_inline_text(source, Path(origin), directories, seen))


def _inline_text(text: str, origin: Path, directories: tuple[Path, ...],
                 seen: set[Path]) -> list[str]:
    pieces = []
    for line_number, line in enumerate(text.splitlines(keepends=True), start=1):
        match = _LOCAL_INCLUDE.match(line)
        if match:
            header = _find_header(match.group(1), origin, line_number, directories)
            if header not in seen:
                seen.add(header)
                pieces.append(f"// ---- begin {header.name} (inlined) ----\n")
                pieces.extend(_inline_text(header.read_text(), header,
                                           (header.parent, *directories), seen))
                pieces.append(f"// ---- end {header.name} ----\n")
        elif _PRAGMA_ONCE.match(line):
            # Inlining already includes each header once; inside one text the pragma
            # would only draw a "#pragma once in main file" warning.
            pieces.append("\n")
        else:
            pieces.append(line)
    if pieces and not pieces[-1].endswith("\n"):
        pieces.append("\n")
    return pieces


def _find_header(include: str, including: Path, line_number: int,
                 directories: tuple[Path, ...]) -> Path:
    for directory in directories:
        candidate = (directory / include).resolve()
        if candidate.is_file():
            return candidate
    raise KernelSourceError(
        f'{including}:{line_number}: included header "{include}" not found '
        f"(looked in {', '.join(str(d) for d in directories)})")


def _cuda_device_id() -> int:
    import cupy  # lazy: CuPy exists only on GPU machines

    return cupy.cuda.Device().id


def _emulated_module(source: str, **emulator_options):
    from cupyvae.emulator import EmulatedModule  # lazy: keeps CUDA-only users off the emulator

    return EmulatedModule(source, EMULATOR_OPTIONS, **emulator_options)


def _cuda_module(source: str):
    import cupy

    return cupy.RawModule(code=source, options=NVRTC_OPTIONS)


def module_from_source(source: str, device: str, **emulator_options):
    """Compile an already assembled source for `device`, uncached.

    `emulator_options` (thread_order=, seed=, workers=) go to EmulatedModule and are
    refused for "cuda".
    """
    _check_device(device)
    if emulator_options and device != "emulated":
        raise ValueError(f"emulator options {sorted(emulator_options)} apply only to device 'emulated'")
    return _MODULE_FACTORIES[device](source, **emulator_options)


_MODULE_FACTORIES = {"emulated": _emulated_module, "cuda": _cuda_module}
# Compiled modules belong to one CUDA context, so the cuda cache is also keyed per device.
_DEVICE_ID = {"emulated": lambda: None, "cuda": _cuda_device_id}


def get_module(name: str, device: str):
    """Compiled module for kernel file `name` on `device` ("emulated" or "cuda"), memoized."""
    _check_device(device)
    return _cached_module(name.removesuffix(".cu"), device, _DEVICE_ID[device]())


@functools.lru_cache(maxsize=None)
def _cached_module(name: str, device: str, device_id):
    # device_id is only a cache key: a CuPy module is loaded into the current device.
    return _MODULE_FACTORIES[device](load_source(name))


def _check_device(device: str) -> None:
    if device not in _MODULE_FACTORIES:
        raise ValueError(f"device must be one of {sorted(_MODULE_FACTORIES)}, got {device!r}")


def get_function(name: str, entry: str, device: str):
    """Kernel `entry` of kernel file `name` on `device`; call it as f(grid, block, args)."""
    return get_module(name, device).get_function(entry)


def clear_cache() -> None:
    """Forget compiled modules (after editing a kernel in a running session)."""
    _cached_module.cache_clear()
