"""Launch builder for kernels/normal.cu (twin: cupyvae.philox.normal)."""
from __future__ import annotations

import numpy as np

from cupyvae.philox import split_seed

from ..launch import Launch
from ._checks import (
    ELEMENTWISE_BLOCK,
    elementwise_grid_size,
    require_float32_contiguous,
    require_int32_dims,
    uint32_scalar,
)


def normal_fill(out, seed, step, stream) -> Launch:
    """out (rows, cols) = cupyvae.philox.normal(seed, step, rows, cols, stream), written with `=`."""
    require_float32_contiguous(out=out)
    if out.ndim != 2:
        raise ValueError(f"out must be 2-D (rows, cols), got shape {out.shape}")
    rows, cols = out.shape
    require_int32_dims(out.shape)
    seed_lo, seed_hi = split_seed(seed)
    return Launch(
        kernel="normal",
        entry="normal_fill",
        grid=(elementwise_grid_size(rows * cols),),
        block=(ELEMENTWISE_BLOCK,),
        args=(out, np.int32(rows), np.int32(cols), np.uint32(seed_lo), np.uint32(seed_hi),
              uint32_scalar("step", step), uint32_scalar("stream", stream)),
    )
