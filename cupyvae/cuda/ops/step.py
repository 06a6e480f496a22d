"""Launch builders for the kernels of a training step that read the device `counters`.

One builder per kernel entry, named after it, taking the same leading arguments as its
NumPy twin plus preallocated outputs (like every module of cupyvae.cuda.ops):

    kernel entry                  NumPy twin
    gaussian_posterior_forward    cupyvae.distributions.gaussian.gaussian_posterior_forward
    gaussian_posterior_backward   cupyvae.distributions.gaussian.gaussian_posterior_backward
    gaussian_likelihood_nll       cupyvae.distributions.gaussian.gaussian_likelihood_nll
    adam_update                   cupyvae.optim.adam_update
    gather_rows, batch_loss,      cupyvae.step_twins.*
    advance_counters, start_epoch

`counters` is a (2,) uint32 device array: counters[0] = global step (the Adam step count
before the update, and the Philox step key), counters[1] = batch index within the epoch.
Per-step values live there, never in the launch arguments, so the launches of one step
are identical every step and can be captured in a CUDA graph once.

Builders check shapes, dtypes and contiguity with .shape/.dtype/.flags only (arrays are
NumPy for "emulated", CuPy for "cuda"; no values are read, nothing synchronizes) and
raise ValueError naming the shapes; every scalar becomes an exact NumPy type.
"""
from __future__ import annotations

import numpy as np

from cupyvae.philox import split_seed

from ..launch import Launch
from ._checks import (ELEMENTWISE_BLOCK, WARP_SIZE, elementwise_grid_size, float32_scalar,
                      require_float32_contiguous, require_int32_dims, require_same_array_kind,
                      row_block_size, uint32_scalar)

# gaussian_posterior_*: one warp per row, up to this many rows (warps) per block.
POSTERIOR_ROWS_PER_BLOCK = 8
# gather_rows: one block per batch row up to this many blocks; the kernel loops beyond.
GATHER_MAX_BLOCKS = 65535
# adam_update moves float4s: one thread per 4 elements before the grid cap.
ADAM_VECTOR_WIDTH = 4


def gaussian_posterior_forward(qraw, counters, seed, stream, z, kl, eps=None) -> Launch:
    """z (B, Z) = mu + exp(lv/2) eps, kl (B,) = KL(N(mu, exp(lv)) || N(0, I)), both `=`.

    qraw (B, 2Z) = [mu | lv]; eps = Philox normal(seed, counters[0], row, col, stream),
    or the given (B, Z) array `eps`.
    """
    require_float32_contiguous(qraw=qraw, z=z, kl=kl)
    _require_counters(counters)
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


def gaussian_posterior_backward(qraw, dz, counters, seed, stream, kl_scale, dqraw, eps=None) -> Launch:
    """dqraw (B, 2Z) = [dz + kl_scale mu | dz eps exp(lv/2)/2 + kl_scale (exp(lv) - 1)/2], `=`."""
    require_float32_contiguous(qraw=qraw, dz=dz, dqraw=dqraw)
    _require_counters(counters)
    require_same_array_kind(qraw, dz, counters, dqraw)
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
              float32_scalar("kl_scale", kl_scale), *_given_noise(eps, qraw, z_dim)),
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


def adam_update(p, g, m, v, counters, lr, beta1, beta2, eps, weight_decay) -> Launch:
    """One Adam step (t = counters[0] + 1) on the flat buffers p, m, v (in place) from g."""
    require_float32_contiguous(p=p, g=g, m=m, v=v)
    _require_counters(counters)
    require_same_array_kind(p, g, m, v, counters)
    if p.ndim != 1:
        raise ValueError(f"p must be a flat (n,) buffer, got shape {p.shape}")
    if not p.shape == g.shape == m.shape == v.shape:
        raise ValueError(f"p {p.shape}, g {g.shape}, m {m.shape} and v {v.shape} "
                         "must all have the same (n,) shape")
    require_int32_dims(p.shape)
    lr, eps, weight_decay = (float32_scalar(name, value) for name, value in
                             (("lr", lr), ("eps", eps), ("weight_decay", weight_decay)))
    beta1, beta2 = float32_scalar("beta1", beta1), float32_scalar("beta2", beta2)
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    for name, beta in (("beta1", beta1), ("beta2", beta2)):
        if not 0 <= beta < 1:
            raise ValueError(f"{name} must lie in [0, 1) (as a float32), got {beta}")
    if not eps >= 0 or not weight_decay >= 0:
        raise ValueError(f"eps and weight_decay must be >= 0, got {eps} and {weight_decay}")
    (n,) = p.shape
    return Launch(
        kernel="adam",
        entry="adam_update",
        grid=(elementwise_grid_size(-(-n // ADAM_VECTOR_WIDTH)),),
        block=(ELEMENTWISE_BLOCK,),
        args=(p, g, m, v, counters, np.int32(n), lr, beta1, beta2, eps, weight_decay),
    )


def gather_rows(data, perm, counters, batch_size, binarize, seed, xb) -> Launch:
    """xb (B, D) = data[perm[counters[1] B + b]], Philox-binarized if `binarize`; `=`."""
    require_float32_contiguous(data=data, xb=xb)
    _require_counters(counters)
    require_same_array_kind(data, perm, counters, xb)
    if data.ndim != 2:
        raise ValueError(f"data must be 2-D (N, D), got shape {data.shape}")
    if perm.ndim != 1 or perm.dtype != np.int32 or not perm.flags.c_contiguous:
        raise ValueError(f"perm must be a contiguous 1-D int32 array, got {perm.dtype} "
                         f"with shape {perm.shape}")
    batch_size = int(batch_size)
    if not 0 < batch_size <= perm.shape[0]:
        raise ValueError(f"batch_size must lie in [1, len(perm)] = [1, {perm.shape[0]}] "
                         f"for perm {perm.shape}, got {batch_size}")
    if xb.shape != (batch_size, data.shape[1]):
        raise ValueError(f"xb must have shape ({batch_size}, {data.shape[1]}) for data "
                         f"{data.shape} and batch_size {batch_size}, got {xb.shape}")
    require_int32_dims(data.shape)
    seed_lo, seed_hi = split_seed(seed)
    return Launch(
        kernel="step",
        entry="gather_rows",
        # One block per row (the kernel loops if the grid is capped), threads over D.
        grid=(min(batch_size, GATHER_MAX_BLOCKS),),
        block=(row_block_size(data.shape[1]),),
        args=(data, perm, counters, xb, np.int32(batch_size), np.int32(data.shape[1]),
              np.int32(bool(binarize)), np.uint32(seed_lo), np.uint32(seed_hi)),
    )


def batch_loss(nll, kl, counters, losses) -> Launch:
    """losses[counters[1]] = mean_b (nll[b] + kl[b]), one block (deterministic)."""
    require_float32_contiguous(nll=nll, kl=kl, losses=losses)
    _require_counters(counters)
    require_same_array_kind(nll, kl, counters, losses)
    if nll.ndim != 1 or kl.shape != nll.shape:
        raise ValueError(f"nll {nll.shape} and kl {kl.shape} must both have shape (B,)")
    if losses.ndim != 1 or losses.shape[0] < 1:
        raise ValueError(f"losses must have shape (batches per epoch,), got {losses.shape}")
    require_int32_dims(nll.shape)
    return Launch(
        kernel="step",
        entry="batch_loss",
        grid=(1,),
        block=(row_block_size(nll.shape[0]),),
        args=(nll, kl, losses, counters, np.int32(nll.shape[0])),
    )


def advance_counters(counters) -> Launch:
    """counters[0] += 1, counters[1] += 1: the last launch of every training step."""
    _require_counters(counters)
    return Launch(kernel="step", entry="advance_counters", grid=(1,), block=(1,),
                  args=(counters,))


def start_epoch(counters) -> Launch:
    """counters[1] = 0: before the first step of every epoch."""
    _require_counters(counters)
    return Launch(kernel="step", entry="start_epoch", grid=(1,), block=(1,), args=(counters,))


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


def _require_counters(counters) -> None:
    if counters.shape != (2,) or counters.dtype != np.uint32 or not counters.flags.c_contiguous:
        raise ValueError(f"counters must be a contiguous (2,) uint32 array [step, batch], "
                         f"got {counters.dtype} with shape {counters.shape}")
