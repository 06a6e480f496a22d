"""Launch builder for kernels/gaussian_likelihood.cu (twin:
cupyvae.distributions.gaussian.gaussian_likelihood_nll)."""
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


def gaussian_likelihood_nll(raw, x, scale, nll, draw) -> Launch:
    """nll (B,) and draw (B, 2D) = scale * d nll / d raw for raw = [a | r], both `=`."""
    require_float32_contiguous(raw=raw, x=x, nll=nll, draw=draw)
    require_same_array_kind(raw, x, nll, draw)
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D (B, D), got shape {x.shape}")
    batch, dim = x.shape
    if raw.shape != (batch, 2 * dim) or draw.shape != raw.shape:
        raise ValueError(f"raw {raw.shape} and draw {draw.shape} must both have shape "
                         f"(B, 2D) = ({batch}, {2 * dim}) for x {x.shape}")
    if nll.shape != (batch,):
        raise ValueError(f"nll must have shape ({batch},) for x {x.shape}, got {nll.shape}")
    require_int32_dims(raw.shape)
    return Launch(
        kernel="gaussian_likelihood",
        entry="gaussian_likelihood_nll",
        grid=(max(batch, 1),),  # one block per row; an empty batch launches one idle block
        block=(row_block_size(dim),),
        args=(raw, x, nll, draw, np.int32(batch), np.int32(dim), float32_scalar("scale", scale)),
    )

