"""Launch builder for kernels/bernoulli.cu (twin: cupyvae.distributions.bernoulli.bernoulli_nll)."""
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


def bernoulli_nll(logits, x, scale, nll, dlogits) -> Launch:
    """nll (B,) = per-row Bernoulli NLL of x under logits; dlogits (B, D) = scale*(sigmoid(l) - x).

    Both outputs are overwritten (`=`).  logits, x, dlogits: (B, D) float32 C-contiguous.
    """
    require_float32_contiguous(logits=logits, x=x, nll=nll, dlogits=dlogits)
    require_same_array_kind(logits, x, nll, dlogits)
    if logits.ndim != 2:
        raise ValueError(f"logits must be 2-D (B, D), got shape {logits.shape}")
    batch, dim = logits.shape
    if x.shape != logits.shape or dlogits.shape != logits.shape:
        raise ValueError(f"logits {logits.shape}, x {x.shape} and dlogits {dlogits.shape} "
                         f"must all have the same (B, D) shape")
    if nll.shape != (batch,):
        raise ValueError(f"nll must have shape ({batch},) for logits {logits.shape}, got {nll.shape}")
    require_int32_dims(logits.shape)
    return Launch(
        kernel="bernoulli",
        entry="bernoulli_nll",
        # One block per row; an empty batch still launches one block, which exits at once.
        grid=(max(batch, 1),),
        block=(row_block_size(dim),),
        args=(logits, x, nll, dlogits, np.int32(batch), np.int32(dim), float32_scalar("scale", scale)),
    )
