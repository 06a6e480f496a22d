"""Launch builders for kernels/grad_clip.cu, clipping by global norm in one deterministic
reduction (twins: cupyvae.optim.grad_norm_partials / grad_clip_scale, the same trees).

`partials` (float64, (cupyvae.optim.grad_norm_blocks(n),)) is the workspace between the two
launches; its length is the grid of grad_norm_partials, so twin and kernel sum alike.
"""
from __future__ import annotations

import numpy as np

from cupyvae.optim import GRAD_CLIP_BLOCK, GRAD_NORM_BLOCK, grad_norm_blocks

from ..launch import Launch
from ._checks import (require_float32_contiguous, require_float64_contiguous, require_hyper,
                      require_int32_dims, require_same_array_kind, require_sched)


def grad_norm_partials(g, partials) -> Launch:
    """partials[b] = block b's share of sum g^2 (float64), b < len(partials)."""
    require_float32_contiguous(g=g)
    require_partials(partials)
    require_same_array_kind(g, partials)
    if g.ndim != 1 or g.shape[0] == 0:
        raise ValueError(f"g must be a non-empty flat (n,) buffer, got shape {g.shape}")
    require_int32_dims(g.shape)
    blocks = grad_norm_blocks(g.shape[0])
    if partials.shape != (blocks,):
        raise ValueError(f"partials must have shape ({blocks},) (grad_norm_blocks({g.shape[0]})) "
                         f"for g {g.shape}, got {partials.shape}")
    return Launch(kernel="grad_clip", entry="grad_norm_partials", grid=(blocks,),
                  block=(GRAD_NORM_BLOCK,), args=(g, partials, np.int32(g.shape[0])))


def grad_clip_scale(partials, hyper, sched) -> Launch:
    """sched[SCHED_CLIP_SCALE] = min(1, c / norm), sched[SCHED_GRAD_NORM] = norm, with
    norm = sqrt(sum partials) and c = hyper[HYPER_CLIP_NORM]; one block."""
    require_partials(partials)
    require_hyper(hyper)
    require_sched(sched)
    require_same_array_kind(partials, hyper, sched)
    require_int32_dims(partials.shape)
    return Launch(kernel="grad_clip", entry="grad_clip_scale", grid=(1,), block=(GRAD_CLIP_BLOCK,),
                  args=(partials, np.int32(partials.shape[0]), hyper, sched))


def require_partials(partials) -> None:
    require_float64_contiguous(partials=partials)
    if partials.ndim != 1 or partials.shape[0] == 0:
        raise ValueError(f"partials must be a non-empty 1-D array, got shape {partials.shape}")
