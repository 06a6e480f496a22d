"""The launch every likelihood kernel shares: `<kernel>_nll(raw, x, nll, draw, B, D, scale)`.

raw, draw: (B, k*D) with k the likelihood's parameters per pixel; x: (B, D); nll: (B,).
One block per row (an empty batch still launches one block, which exits at once), threads
striding over D; both outputs written with `=`.
"""
from __future__ import annotations

import numpy as np

from ..launch import Launch
from ._checks import (
    float32_scalar,
    require_float32_contiguous,
    require_int32_dims,
    require_same_array_kind,
    row_block_size,
)


def row_nll_launch(kernel: str, raw, x, scale, nll, draw, *, params_per_dim: int,
                   names: tuple[str, str] = ("raw", "draw")) -> Launch:
    """Validated Launch of entry `<kernel>_nll`; `names` are the builder's own argument
    names for raw and draw, so its errors speak the caller's words."""
    raw_name, draw_name = names
    require_float32_contiguous(**{raw_name: raw, "x": x, "nll": nll, draw_name: draw})
    require_same_array_kind(raw, x, nll, draw)
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D (B, D), got shape {x.shape}")
    batch, dim = x.shape
    width = "D" if params_per_dim == 1 else f"{params_per_dim}D"
    expected = (batch, params_per_dim * dim)
    if raw.shape != expected or draw.shape != expected:
        raise ValueError(f"{raw_name} and {draw_name} must both be 2-D (B, {width}) = {expected} "
                         f"for x {x.shape}; got {raw_name} {raw.shape}, {draw_name} {draw.shape}")
    if nll.shape != (batch,):
        raise ValueError(f"nll must have shape ({batch},) for x {x.shape}, got {nll.shape}")
    require_int32_dims(raw.shape)
    return Launch(
        kernel=kernel,
        entry=f"{kernel}_nll",
        grid=(max(batch, 1),),
        block=(row_block_size(dim),),
        args=(raw, x, nll, draw, np.int32(batch), np.int32(dim), float32_scalar("scale", scale)),
    )
