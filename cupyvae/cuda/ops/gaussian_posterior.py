"""Launch builders for kernels/gaussian_posterior.cu (twins: cupyvae.distributions.gaussian.
gaussian_posterior_forward / gaussian_posterior_backward).

`counters`: the device step counters [step, batch] (see cupyvae.cuda.ops._checks.require_counters).
"""
from __future__ import annotations

import numpy as np

from cupyvae.philox import split_seed

from ..launch import Launch
from ._checks import (
    WARP_SIZE,
    float32_scalar,
    require_counters,
    require_device_scalar,
    require_float32_contiguous,
    require_int32_dims,
    require_same_array_kind,
    uint32_scalar,
)

# gaussian_posterior_*: one warp per row, up to this many rows (warps) per block.
POSTERIOR_ROWS_PER_BLOCK = 8


def gaussian_posterior_forward(qraw, counters, seed, stream, z, kl, eps=None) -> Launch:
    """z (B, Z) = mu + exp(lv/2) eps, kl (B,) = KL(N(mu, exp(lv)) || N(0, I)), both `=`.

    qraw (B, 2Z) = [mu | lv]; eps = Philox normal(seed, counters[0], row, col, stream),
    or the given (B, Z) array `eps`.
    """
    require_float32_contiguous(qraw=qraw, z=z, kl=kl)
    require_counters(counters)
    require_same_array_kind(qraw, counters, z, kl)
    batch, z_dim = _posterior_shape(qraw)
    if z.shape != (batch, z_dim):
        raise ValueError(f"z must have shape ({batch}, {z_dim}) for qraw {qraw.shape}, got {z.shape}")
    if kl.shape != (batch,):
        raise ValueError(f"kl must have shape ({batch},) for qraw {qraw.shape}, got {kl.shape}")
    seed_lo, seed_hi = split_seed(seed)
    grid, block = _warp_per_row(batch)
    return Launch(
        kernel="gaussian_posterior",
        entry="gaussian_posterior_forward",
        grid=grid,
        block=block,
        args=(qraw, counters, z, kl, np.int32(batch), np.int32(z_dim), np.uint32(seed_lo),
              np.uint32(seed_hi), uint32_scalar("stream", stream), *_given_noise(eps, qraw, z_dim)),
    )


def gaussian_posterior_backward(qraw, dz, counters, seed, stream, kl_scale, kl_weight, dqraw,
                                eps=None) -> Launch:
    """dqraw (B, 2Z) = [dz + k mu | dz eps exp(lv/2)/2 + k (exp(lv) - 1)/2], `=`, with
    k = kl_scale * kl_weight[0]: `kl_weight` is a (1,) float32 device array (the KL weight of
    this step, a slot of `sched`), read by the kernel, so a schedule never changes the launch."""
    require_float32_contiguous(qraw=qraw, dz=dz, dqraw=dqraw)
    require_counters(counters)
    require_device_scalar("kl_weight", kl_weight)
    require_same_array_kind(qraw, dz, counters, kl_weight, dqraw)
    batch, z_dim = _posterior_shape(qraw)
    if dz.shape != (batch, z_dim):
        raise ValueError(f"dz must have shape ({batch}, {z_dim}) for qraw {qraw.shape}, got {dz.shape}")
    if dqraw.shape != qraw.shape:
        raise ValueError(f"dqraw {dqraw.shape} must have the shape of qraw {qraw.shape}")
    seed_lo, seed_hi = split_seed(seed)
    grid, block = _warp_per_row(batch)
    return Launch(
        kernel="gaussian_posterior",
        entry="gaussian_posterior_backward",
        grid=grid,
        block=block,
        args=(qraw, dz, counters, dqraw, np.int32(batch), np.int32(z_dim), np.uint32(seed_lo),
              np.uint32(seed_hi), uint32_scalar("stream", stream),
              float32_scalar("kl_scale", kl_scale), kl_weight, *_given_noise(eps, qraw, z_dim)),
    )


def _given_noise(eps, qraw, z_dim: int) -> tuple:
    """(eps pointer, eps_given flag).  Without given noise the kernel draws Philox and never
    reads the pointer, so qraw stands in for it (CuPy has no NULL array)."""
    if eps is None:
        return qraw, np.int32(0)
    require_float32_contiguous(eps=eps)
    require_same_array_kind(qraw, eps)
    if eps.shape != (qraw.shape[0], z_dim):
        raise ValueError(f"eps must have shape ({qraw.shape[0]}, {z_dim}) for qraw {qraw.shape}, "
                         f"got {eps.shape}")
    return eps, np.int32(1)


def _warp_per_row(batch: int) -> tuple[tuple[int], tuple[int]]:
    """(grid, block) for one warp per row, at most POSTERIOR_ROWS_PER_BLOCK rows per block."""
    rows_per_block = min(POSTERIOR_ROWS_PER_BLOCK, max(batch, 1))
    return (max(-(-batch // rows_per_block), 1),), (WARP_SIZE * rows_per_block,)


def _posterior_shape(qraw) -> tuple[int, int]:
    if qraw.ndim != 2 or qraw.shape[1] == 0 or qraw.shape[1] % 2:
        raise ValueError(f"qraw must be 2-D (B, 2Z) = [mu | logvar] with Z >= 1, got shape {qraw.shape}")
    require_int32_dims(qraw.shape)
    return qraw.shape[0], qraw.shape[1] // 2

