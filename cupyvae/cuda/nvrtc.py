"""Compile CUDA sources with NVRTC on machines without a GPU or driver.

CuPy's compile entry points query the driver for the device architecture first and fail
without one, so this module talks to NVRTC directly through cuda.bindings (packages
`cuda-bindings` + `nvidia-cuda-nvrtc`, the `nvrtc` extra).  Compiling for a real
architecture (sm_XX) runs ptxas as well as the front end, so register/shared-memory
limits are checked too, not only C++ validity.
"""
from __future__ import annotations

from collections.abc import Sequence

from .loader import NVRTC_OPTIONS


class NvrtcError(RuntimeError):
    """NVRTC refused a source; the message carries the full compiler log."""

    def __init__(self, message: str, log: str = ""):
        super().__init__(f"{message}\n{log}" if log else message)
        self.log = log


def nvrtc_available() -> bool:
    """True when cuda.bindings imports and its NVRTC library loads (no GPU needed)."""
    try:
        from cuda.bindings import nvrtc

        result, _major, _minor = nvrtc.nvrtcVersion()
        return result == nvrtc.nvrtcResult.NVRTC_SUCCESS
    except Exception:  # missing package or missing shared library: both mean "unavailable"
        return False


def compile_ptx(source: str, arch: str = "sm_90", name: str = "kernel.cu",
                options: Sequence[str] = ()) -> str:
    """PTX for `source` compiled for `arch` with the project's NVRTC options plus `options`.

    Raises NvrtcError (message = summary + full compiler log) when compilation fails.
    """
    from cuda.bindings import nvrtc

    all_options = [*NVRTC_OPTIONS, f"--gpu-architecture={arch}", *options]
    program = _check(nvrtc, nvrtc.nvrtcCreateProgram(source.encode(), name.encode(), 0, [], []),
                     "nvrtcCreateProgram")
    try:
        (result,) = nvrtc.nvrtcCompileProgram(program, len(all_options),
                                              [option.encode() for option in all_options])
        if result != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise NvrtcError(
                f"NVRTC failed to compile {name} for {arch} ({_error_name(nvrtc, result)}) "
                f"with options {all_options}; compiler log:", _program_log(nvrtc, program))
        size = _check(nvrtc, nvrtc.nvrtcGetPTXSize(program), "nvrtcGetPTXSize")
        buffer = b" " * size
        _check(nvrtc, nvrtc.nvrtcGetPTX(program, buffer), "nvrtcGetPTX")
        return buffer.rstrip(b"\0").decode()
    finally:
        nvrtc.nvrtcDestroyProgram(program)


def _program_log(nvrtc, program) -> str:
    size = _check(nvrtc, nvrtc.nvrtcGetProgramLogSize(program), "nvrtcGetProgramLogSize")
    buffer = b" " * size
    _check(nvrtc, nvrtc.nvrtcGetProgramLog(program, buffer), "nvrtcGetProgramLog")
    return buffer.rstrip(b"\0").decode(errors="replace")


def _check(nvrtc, returned, call: str):
    """Unwrap cuda.bindings' (result, value...) tuples, raising on a failed result."""
    result, *values = returned
    if result != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise NvrtcError(f"{call} failed: {_error_name(nvrtc, result)}")
    return values[0] if len(values) == 1 else tuple(values)


def _error_name(nvrtc, result) -> str:
    _, text = nvrtc.nvrtcGetErrorString(result)
    return text.decode() if isinstance(text, bytes) else str(text)
