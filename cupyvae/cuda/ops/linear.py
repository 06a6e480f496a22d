"""Launch builders for kernels/linear.cu: the MLP layer y = act(x W + b) and its backward.

    linear_forward(x, w, b, activation, y, workspace=None, splits=None)
    linear_backward(x, w, da, activation_x, dw, db, dx_pre=None, workspace=None,
                    splits_w=None, splits_x=None)

The same leading arguments as the NumPy twins in cupyvae.layers plus preallocated outputs,
which the kernels overwrite (`=`): linear_forward's twin is layers.linear_forward;
linear_backward is one launch for a layer's whole backward from da, the gradient wrt the
pre-activation, and its twins are layers.linear_backward_weight (dw, db) and
layers.linear_backward_input (dx_pre) -- the kernel form of layers.linear_backward, which
enters the same chain from dy.  dx_pre=None skips dx (the encoder's first layer).
Shapes: x (B, I), w (I, O), b (O,), y and da (B, O); all float32, C-contiguous, all NumPy
(emulated backend) or all CuPy (cuda backend).  Outputs must not overlap inputs (the
kernels take __restrict__ pointers).  Activation names map to the kernels' ACT_* codes
through cupyvae.layers.ACTIVATIONS.

Every output is a tiled GEMM C (M, N) = A (M, K) B (K, N) (see the kernel file's table):
one block of LINEAR_THREADS threads per LINEAR_TILE_M x LINEAR_TILE_N tile of C and per k
range, on a 1-D grid (constants mirrored from linear.cu; a test checks they agree).

Split-K.  A GEMM with few output tiles and a long K leaves most of the GPU idle (100 x 784
-> 200: 28 blocks on 132 SMs), so linear_splits() cuts K into S ranges computed by
separate blocks and added in a fixed order by the last block of each tile (deterministic;
see linear.cu).  The heuristic, from the launch shape alone:
    S = 1                                       if K < SPLIT_K_MIN_K (512) or the GEMM has
                                                   SPLIT_K_TARGET_BLOCKS (132) tiles or more
    S = min(ceil(132 / tiles),                  enough blocks for one per SM of an H100/H200,
            stages // SPLIT_K_MIN_STAGES (2),   at least two 64-deep stages per split (the
                                                   double-buffered pipeline needs a second),
            SPLIT_K_MAX (16))                   and a bounded partial-sum pass.
It deliberately ignores the device's actual SM count: S decides the rounding, and a split
that depended on the device would make an A100 (108 SMs), an H200 and the emulator give
different bits for the same seed.  132 is right for H100/H200 and within a block or two
per SM elsewhere.  S * tiles < 2 * 132 = LINEAR_SPLIT_MAX_BLOCKS, so one fixed-size
workspace (linear_workspace) serves every launch.

Splitting needs that workspace: a float32 buffer of LINEAR_WORKSPACE_FLOATS, zero when
allocated, allocated once with the plan (never inside a step), shared by every launch
that runs on one stream (each launch leaves it as it found it).  Without a workspace a
builder runs the single-pass GEMM (S = 1); `splits` overrides the heuristic (tests,
benchmarks).
"""
from __future__ import annotations

import numpy as np

from cupyvae.layers import ACTIVATIONS

from ..launch import Launch, to_device
from . import _checks

# Mirrors of the #defines at the top of kernels/linear.cu.
LINEAR_TILE_M = 32
LINEAR_TILE_N = 32
LINEAR_TILE_K = 64
LINEAR_THREADS = 256
LINEAR_RECORD_FLOATS = LINEAR_TILE_M * LINEAR_TILE_N + LINEAR_TILE_N
LINEAR_SPLIT_MAX_BLOCKS = 264
LINEAR_COUNTER_WORDS = 2 * LINEAR_SPLIT_MAX_BLOCKS
LINEAR_WORKSPACE_FLOATS = LINEAR_COUNTER_WORDS + 2 * LINEAR_SPLIT_MAX_BLOCKS * LINEAR_RECORD_FLOATS

# The split-K heuristic (module docstring).
SPLIT_K_MIN_K = 512
SPLIT_K_TARGET_BLOCKS = 132
SPLIT_K_MIN_STAGES = 2
SPLIT_K_MAX = 16

def linear_workspace(device: str):
    """A zeroed split-K workspace for `device` ("emulated": NumPy, "cuda": CuPy)."""
    return to_device(np.zeros(LINEAR_WORKSPACE_FLOATS, np.float32), device)


def gemm_tiles(m: int, n: int) -> int:
    """Output tiles of a GEMM C (m, n)."""
    return -(-m // LINEAR_TILE_M) * -(-n // LINEAR_TILE_N)


def linear_splits(m: int, n: int, k: int) -> int:
    """The split-K factor S for C (m, n) = A (m, k) B (k, n) (module docstring)."""
    tiles, stages = gemm_tiles(m, n), -(-k // LINEAR_TILE_K)
    if k < SPLIT_K_MIN_K or tiles == 0 or tiles >= SPLIT_K_TARGET_BLOCKS:
        return 1
    return max(1, min(-(-SPLIT_K_TARGET_BLOCKS // tiles), stages // SPLIT_K_MIN_STAGES,
                      SPLIT_K_MAX))


def linear_forward(x, w, b, activation: str, y, workspace=None,
                   splits: int | None = None) -> Launch:
    """y (B, O) = act(x (B, I) @ w (I, O) + b (O,)), written with `=`."""
    _checks.require_float32_contiguous(x=x, w=w, b=b, y=y)
    _checks.require_same_array_kind(x, w, b, y)
    batch, inputs, outputs = _layer_dims(x, w)
    if b.shape != (outputs,):
        raise ValueError(f"b must have shape ({outputs},) for w {w.shape}, got {b.shape}")
    _require_shape("y", y, (batch, outputs), x, w)
    splits = _choose_splits("linear_forward", batch, outputs, inputs, splits, workspace, x)
    return Launch(
        kernel="linear",
        entry="linear_forward",
        grid=_grid(splits * gemm_tiles(batch, outputs)),
        block=(LINEAR_THREADS,),
        args=(x, w, b, y, y if workspace is None else workspace, np.int32(batch),
              np.int32(inputs), np.int32(outputs), _activation_code(activation),
              np.int32(splits)),
    )


def linear_backward(x, w, da, activation_x: str, dw, db, dx_pre=None, workspace=None,
                    splits_w: int | None = None, splits_x: int | None = None) -> Launch:
    """One launch: dw (I, O) = x^T @ da, db (O,) = column sums of da and, unless dx_pre is
    None, dx_pre (B, I) = (da @ w^T) * act_x'(x), all written with `=`.

    x (B, I) = act_x(a_prev) is the layer's input, w (I, O) its weight, da (B, O) the
    gradient wrt its pre-activation; dx_pre is the previous layer's pre-activation gradient
    (plain dx for activation_x "identity", where x is not read for it).  w is read only
    for dx_pre.  splits_w / splits_x override the split-K factors of the two GEMMs (splits_x
    only with a dx_pre: ValueError otherwise).
    """
    _checks.require_float32_contiguous(x=x, w=w, da=da, dw=dw, db=db)
    _checks.require_same_array_kind(x, w, da, dw, db)
    batch, inputs, outputs = _layer_dims(x, w)
    _require_shape("da", da, (batch, outputs), x, w)
    _require_shape("dw", dw, (inputs, outputs), x, w)
    if db.shape != (outputs,):
        raise ValueError(f"db must have shape ({outputs},) for w {w.shape}, got {db.shape}")
    splits_w = _choose_splits("linear_backward dW", inputs, outputs, batch, splits_w,
                              workspace, x)
    blocks = splits_w * gemm_tiles(inputs, outputs)
    if dx_pre is None:
        if splits_x is not None:
            raise ValueError(f"linear_backward: splits_x={splits_x!r} splits the dx GEMM, but "
                             "dx_pre is None (no dx is computed)")
        splits_x, stand_in = 1, dw            # never touched with has_dx = 0
    else:
        _checks.require_float32_contiguous(dx_pre=dx_pre)
        _checks.require_same_array_kind(x, dx_pre)
        _require_shape("dx_pre", dx_pre, (batch, inputs), x, w)
        splits_x = _choose_splits("linear_backward dx", batch, inputs, outputs, splits_x,
                                  workspace, x)
        blocks += splits_x * gemm_tiles(batch, inputs)
        stand_in = dx_pre
    return Launch(
        kernel="linear",
        entry="linear_backward",
        grid=_grid(blocks),
        block=(LINEAR_THREADS,),
        args=(x, w, da, dw, db, stand_in, dw if workspace is None else workspace,
              np.int32(batch), np.int32(inputs), np.int32(outputs),
              _activation_code(activation_x), np.int32(splits_w), np.int32(splits_x),
              np.int32(dx_pre is not None)),
    )


def _choose_splits(what: str, m: int, n: int, k: int, splits, workspace, like) -> int:
    """The heuristic's S (1 without a workspace), or the given one after checking it."""
    if workspace is not None:
        _require_workspace(workspace, like)
    if splits is None:
        return 1 if workspace is None else linear_splits(m, n, k)
    splits = _checks.positive_int(f"{what}: splits", splits)
    stages, tiles = -(-k // LINEAR_TILE_K), gemm_tiles(m, n)
    if splits == 1:
        return 1
    if workspace is None:
        raise ValueError(f"{what}: splits={splits} needs a split-K workspace "
                         "(cupyvae.cuda.ops.linear.linear_workspace)")
    if splits > stages:
        raise ValueError(f"{what}: splits={splits} exceeds the {stages} k stages of "
                         f"K = {k} (each split takes at least one {LINEAR_TILE_K}-deep stage)")
    if splits * tiles > LINEAR_SPLIT_MAX_BLOCKS:
        raise ValueError(f"{what}: splits={splits} x {tiles} tiles of ({m}, {n}) exceed the "
                         f"workspace's {LINEAR_SPLIT_MAX_BLOCKS} partial tiles")
    return splits


def _require_workspace(workspace, like) -> None:
    _checks.require_float32_contiguous(workspace=workspace)
    _checks.require_same_array_kind(like, workspace)
    if workspace.ndim != 1 or workspace.shape[0] < LINEAR_WORKSPACE_FLOATS:
        raise ValueError(f"workspace must be a flat float32 buffer of at least "
                         f"{LINEAR_WORKSPACE_FLOATS} elements (linear_workspace), got shape "
                         f"{workspace.shape}")


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
        if array.size > _checks.INT32_MAX:
            raise ValueError(f"{name} {array.shape} has {array.size} elements; the linear "
                             f"kernels index with int32 (at most {_checks.INT32_MAX})")


def _grid(blocks: int) -> tuple[int]:
    """(blocks,), at least 1 (an empty grid is invalid; a block past the work returns)."""
    if blocks > _checks.INT32_MAX:
        raise ValueError(f"{blocks} blocks exceed CUDA's grid.x limit {_checks.INT32_MAX}")
    return (max(blocks, 1),)


def _activation_code(name: str) -> np.int32:
    return np.int32(ACTIVATIONS.get(name).code)
