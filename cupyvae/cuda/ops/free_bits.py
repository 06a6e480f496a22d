"""Launch builder for kernels/free_bits.cu (twin: cupyvae.objective_twins.free_bits_kl)."""
from __future__ import annotations

import math

import numpy as np

from ..launch import Launch
from ._checks import (float32_scalar, require_float32_contiguous, require_int32_dims,
                      require_same_array_kind, row_block_size)


def free_bits_kl(kl_dim, free_bits, kl_rows, active, kl_mean) -> Launch:
    """kl_rows (B,) = the free-bits floored KL rows, active (Z,) = 1 where the batch-mean KL
    of a dimension exceeds free_bits, kl_mean (Z,); all `=`.  One block (deterministic)."""
    require_float32_contiguous(kl_dim=kl_dim, kl_rows=kl_rows, active=active, kl_mean=kl_mean)
    require_same_array_kind(kl_dim, kl_rows, active, kl_mean)
    if kl_dim.ndim != 2 or kl_dim.shape[0] < 1 or kl_dim.shape[1] < 1:
        raise ValueError(f"kl_dim must be 2-D (B, Z) with B, Z >= 1, got shape {kl_dim.shape}")
    batch, z_dim = kl_dim.shape
    if kl_rows.shape != (batch,) or active.shape != (z_dim,) or kl_mean.shape != (z_dim,):
        raise ValueError(f"kl_rows must have shape ({batch},), active and kl_mean ({z_dim},) for "
                         f"kl_dim {kl_dim.shape}; got {kl_rows.shape}, {active.shape}, {kl_mean.shape}")
    if np.ndim(free_bits) != 0 or not math.isfinite(float(free_bits)) or free_bits < 0:
        raise ValueError(f"free_bits must be a finite number >= 0 (nats), got {free_bits!r}")
    require_int32_dims(kl_dim.shape)
    return Launch(kernel="free_bits", entry="free_bits_kl", grid=(1,),
                  block=(row_block_size(max(batch, z_dim)),),
                  args=(kl_dim, kl_rows, active, kl_mean, np.int32(batch), np.int32(z_dim),
                        float32_scalar("free_bits", free_bits)))
