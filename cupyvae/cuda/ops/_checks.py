"""Validation and sizing shared by every launch builder.

Builders check shapes, dtypes and contiguity through .shape/.dtype/.flags only (arrays are
NumPy for "emulated" and CuPy for "cuda"; nothing is read back, nothing synchronizes) and
convert every scalar to the exact NumPy type of the kernel parameter: a Python float
would reach a `float` parameter as 8 bytes through CuPy.
"""
from __future__ import annotations

import operator

import numpy as np

from cupyvae.optim import WARP_SIZE   # the NumPy twins of the reduction trees use it too
from cupyvae.schedules import HYPER_SIZE, SCHED_SIZE

INT32_MAX = 2 ** 31 - 1
_UINT32_MAX = 2 ** 32 - 1
# Per-row reductions: enough threads to cover D in one sweep, capped where more threads
# only add reduction depth.  Never below a warp: the shuffles use a full-warp mask.
ROW_BLOCK_MAX = 256
# Element-wise grid-stride kernels: block size and a grid cap (more blocks add nothing
# once every SM is busy; the loop covers the rest).
ELEMENTWISE_BLOCK = 256
ELEMENTWISE_MAX_BLOCKS = 1024


def row_block_size(dim: int) -> int:
    """Smallest power of two >= dim, clamped to [WARP_SIZE, ROW_BLOCK_MAX]."""
    return min(max(WARP_SIZE, 1 << max(dim - 1, 0).bit_length()), ROW_BLOCK_MAX)


def elementwise_grid_size(total: int) -> int:
    """Blocks for a grid-stride loop over `total` elements (at least 1: an empty grid is invalid)."""
    return min(max(-(-total // ELEMENTWISE_BLOCK), 1), ELEMENTWISE_MAX_BLOCKS)


def warp_per_item(count: int, max_warps_per_block: int) -> tuple[tuple[int], tuple[int]]:
    """(grid, block) for one warp per item (a row, a component), at most
    `max_warps_per_block` warps per block; at least one block (an empty grid is invalid)."""
    warps = min(max_warps_per_block, max(count, 1))
    return (max(-(-count // warps), 1),), (WARP_SIZE * warps,)


def require_float32_contiguous(**arrays) -> None:
    for name, array in arrays.items():
        if array.dtype != np.float32:
            raise ValueError(f"{name} must be float32, got {array.dtype} with shape {array.shape}")
        if not array.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous, got strides {array.strides} "
                             f"for shape {array.shape}")


def require_float64_contiguous(**arrays) -> None:
    for name, array in arrays.items():
        if array.dtype != np.float64 or not array.flags.c_contiguous:
            raise ValueError(f"{name} must be a C-contiguous float64 array, got {array.dtype} "
                             f"with shape {array.shape}")


def positive_int(name: str, value, alternative: str = "") -> int:
    """`value` as an int, or ValueError naming `name` unless it is an integer >= 1 (an
    integral float such as 4.0 is accepted; a bool is not).  `alternative` (e.g. " or None")
    completes the message with what else the caller accepts."""
    try:
        ok = not isinstance(value, bool) and int(value) == value and value >= 1
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must be a positive integer{alternative}, got {value!r}")
    return int(value)


def require_same_array_kind(*arrays) -> None:
    kinds = {type(array) for array in arrays}
    if len(kinds) != 1:
        raise ValueError(f"arrays must all be NumPy or all CuPy, got {sorted(k.__name__ for k in kinds)} "
                         f"for shapes {[a.shape for a in arrays]}")


def require_int32_dims(shape) -> None:
    if any(extent > INT32_MAX for extent in shape):
        raise ValueError(f"every dimension must fit in int32, got shape {shape}")


def float32_scalar(name: str, value) -> np.float32:
    """`value` as the kernel's float32 parameter; it must be finite as a float32 (a NaN or
    infinite scale would turn every output into NaN without an error)."""
    if np.ndim(value) != 0:
        raise ValueError(f"{name} must be a scalar, got shape {np.shape(value)}")
    with np.errstate(over="ignore"):
        converted = np.float32(value)
    if not np.isfinite(converted):
        raise ValueError(f"{name} must be finite in float32, got {value!r}")
    return converted


def uint32_scalar(name: str, value) -> np.uint32:
    if np.ndim(value) != 0 or not 0 <= operator.index(value) <= _UINT32_MAX:
        raise ValueError(f"{name} must be a uint32 scalar, got {value!r}")
    return np.uint32(operator.index(value))


def require_counters(counters) -> None:
    """`counters` is a (2,) uint32 device array: counters[0] = global step (the Adam step
    count before the update, and the Philox step key), counters[1] = batch index within the
    epoch.  Per-step values live there, never in launch arguments, so the launches of one
    step are identical every step and can be captured in a CUDA graph once."""
    if counters.shape != (2,) or counters.dtype != np.uint32 or not counters.flags.c_contiguous:
        raise ValueError(f"counters must be a contiguous (2,) uint32 array [step, batch], "
                         f"got {counters.dtype} with shape {counters.shape}")


def require_hyper(hyper) -> None:
    """`hyper`: the device's (HYPER_SIZE,) float64 hyperparameters (kernels/schedule.cuh)."""
    require_float64_contiguous(hyper=hyper)
    if hyper.shape != (HYPER_SIZE,):
        raise ValueError(f"hyper must be a ({HYPER_SIZE},) array (kernels/schedule.cuh), "
                         f"got shape {hyper.shape}")


def require_sched(sched) -> None:
    """`sched`: the device's (SCHED_SIZE,) float32 values of this step (kernels/schedule.cuh)."""
    if sched.shape != (SCHED_SIZE,) or sched.dtype != np.float32 or not sched.flags.c_contiguous:
        raise ValueError(f"sched must be a contiguous ({SCHED_SIZE},) float32 array "
                         f"(kernels/schedule.cuh), got {sched.dtype} with shape {sched.shape}")


def require_device_scalar(name: str, value) -> None:
    """`value`: a (1,) float32 device array, a scalar the device reads at run time (e.g. a
    view of one slot of `sched`), so the launch stays the same when the value changes."""
    if value.shape != (1,) or value.dtype != np.float32 or not value.flags.c_contiguous:
        raise ValueError(f"{name} must be a (1,) float32 device array (e.g. a slot of sched), "
                         f"got {value.dtype} with shape {value.shape}")
