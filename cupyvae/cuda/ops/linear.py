"""Launch builders for kernels/linear.cu: the MLP layer y = act(x W + b) and its backward.

Same leading arguments as the NumPy twins in cupyvae.layers (linear_forward,
linear_backward_input, linear_backward_weight) plus preallocated outputs, which the kernels
overwrite (`=`).  Shapes: x (B, I), w (I, O), b (O,), y and da (B, O); all float32,
C-contiguous, all NumPy (emulated backend) or all CuPy (cuda backend).  Outputs must not
overlap inputs (the kernels take __restrict__ pointers).  Activation names map to the
kernels' ACT_* codes through cupyvae.layers.ACTIVATIONS.

Every launch is a tiled GEMM C (M, N) = A (M, K) B (K, N): one block of LINEAR_THREADS
threads per LINEAR_TILE_M x LINEAR_TILE_N tile of C (constants mirrored from linear.cu; a
test checks they agree), grid = (ceil(N / TILE_N), ceil(M / TILE_M)), static shared memory.
"""
from __future__ import annotations

import numpy as np

from cupyvae.layers import ACTIVATIONS

from ..launch import Launch
from . import _checks

# Mirrors of the #defines at the top of kernels/linear.cu.
LINEAR_TILE_M = 32
LINEAR_TILE_N = 32
LINEAR_THREADS = 256
_INT32_MAX = 2 ** 31 - 1
_GRID_Y_MAX = 65535


def linear_forward(x, w, b, activation: str, y) -> Launch:
    """y (B, O) = act(x (B, I) @ w (I, O) + b (O,)), written with `=`."""
    _checks.require_float32_contiguous(x=x, w=w, b=b, y=y)
    _checks.require_same_array_kind(x, w, b, y)
    batch, inputs, outputs = _layer_dims(x, w)
    if b.shape != (outputs,):
        raise ValueError(f"b must have shape ({outputs},) for w {w.shape}, got {b.shape}")
    _require_shape("y", y, (batch, outputs), x, w)
    return Launch(
        kernel="linear",
        entry="linear_forward",
        grid=_grid(rows=batch, cols=outputs),
        block=(LINEAR_THREADS,),
        args=(x, w, b, y, np.int32(batch), np.int32(inputs), np.int32(outputs),
              _activation_code(activation)),
    )


def linear_backward_input(da, w, x, activation_x: str, dx_pre) -> Launch:
    """dx_pre (B, I) = (da (B, O) @ w (I, O)^T) * act_x'(x), written with `=`.

    x (B, I) = act_x(a_prev) is the layer's input; dx_pre is the previous layer's
    pre-activation gradient (plain dx for activation_x "identity", where x is not read).
    """
    _checks.require_float32_contiguous(da=da, w=w, x=x, dx_pre=dx_pre)
    _checks.require_same_array_kind(da, w, x, dx_pre)
    batch, inputs, outputs = _layer_dims(x, w)
    _require_shape("da", da, (batch, outputs), x, w)
    _require_shape("dx_pre", dx_pre, (batch, inputs), x, w)
    return Launch(
        kernel="linear",
        entry="linear_backward_input",
        grid=_grid(rows=batch, cols=inputs),
        block=(LINEAR_THREADS,),
        args=(da, w, x, dx_pre, np.int32(batch), np.int32(inputs), np.int32(outputs),
              _activation_code(activation_x)),
    )


def linear_backward_weight(x, da, dw, db) -> Launch:
    """dw (I, O) = x (B, I)^T @ da (B, O) and db (O,) = column sums of da, both with `=`.

    One launch: the blocks of the first tile row also sum da's columns into db, in a fixed
    order (no atomics), so two runs give identical bits.
    """
    _checks.require_float32_contiguous(x=x, da=da, dw=dw, db=db)
    _checks.require_same_array_kind(x, da, dw, db)
    if x.ndim != 2 or da.ndim != 2:
        raise ValueError(f"x and da must be 2-D (B, I) and (B, O), got x {x.shape}, da {da.shape}")
    (batch, inputs), outputs = x.shape, da.shape[1]
    if da.shape[0] != batch:
        raise ValueError(f"x {x.shape} and da {da.shape} must have the same batch size")
    if dw.shape != (inputs, outputs):
        raise ValueError(f"dw must have shape {(inputs, outputs)} for x {x.shape} and "
                         f"da {da.shape}, got {dw.shape}")
    if db.shape != (outputs,):
        raise ValueError(f"db must have shape ({outputs},) for da {da.shape}, got {db.shape}")
    _require_int32_sizes(x=x, da=da, dw=dw)
    return Launch(
        kernel="linear",
        entry="linear_backward_weight",
        grid=_grid(rows=inputs, cols=outputs),
        block=(LINEAR_THREADS,),
        args=(x, da, dw, db, np.int32(batch), np.int32(inputs), np.int32(outputs)),
    )


def _layer_dims(x, w) -> tuple[int, int, int]:
    """(B, I, O) from x (B, I) and w (I, O)."""
    if x.ndim != 2 or w.ndim != 2:
        raise ValueError(f"x and w must be 2-D (B, I) and (I, O), got x {x.shape}, w {w.shape}")
    if x.shape[1] != w.shape[0]:
        raise ValueError(f"x {x.shape} and w {w.shape} disagree on the input width I")
    _require_int32_sizes(x=x, w=w)
    return x.shape[0], x.shape[1], w.shape[1]


def _require_shape(name: str, array, shape: tuple, x, w) -> None:
    if array.shape != shape:
        raise ValueError(f"{name} must have shape {shape} for x {x.shape} and w {w.shape}, "
                         f"got {array.shape}")
    _require_int32_sizes(**{name: array})


def _require_int32_sizes(**arrays) -> None:
    """The kernels index with 32-bit ints."""
    for name, array in arrays.items():
        if array.size > _INT32_MAX:
            raise ValueError(f"{name} {array.shape} has {array.size} elements; the linear "
                             f"kernels index with int32 (at most {_INT32_MAX})")


def _grid(rows: int, cols: int) -> tuple[int, int]:
    """(ceil(cols / TILE_N), ceil(rows / TILE_M)), at least 1 each (an empty grid is invalid;
    a block past the matrix writes nothing)."""
    grid_y = max(-(-rows // LINEAR_TILE_M), 1)
    if grid_y > _GRID_Y_MAX:
        raise ValueError(f"{rows} rows need {grid_y} row tiles, over CUDA's grid.y limit "
                         f"{_GRID_Y_MAX}")
    return (max(-(-cols // LINEAR_TILE_N), 1), grid_y)


def _activation_code(name: str) -> np.int32:
    return np.int32(ACTIVATIONS.get(name).code)
