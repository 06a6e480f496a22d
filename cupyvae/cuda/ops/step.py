"""Launch builders for kernels/step.cu, the glue of a training step (twins:
cupyvae.step_twins): the batch gather, the step's ELBO terms, the end of a step (its loss
and the counters).

`counters`: the device step counters [step, batch] (see cupyvae.cuda.ops._checks.require_counters).
Both builders pass the kernel the epoch's batch count, taken from the array the kernel
indexes with counters[1] (perm holds len(perm) // B batches, losses one slot per batch),
so a step replayed past the end writes nothing instead of reading or writing out of bounds.
"""
from __future__ import annotations

import numpy as np

from cupyvae.philox import split_seed

from ..launch import Launch
from ._checks import (
    require_counters,
    require_device_scalar,
    require_float32_contiguous,
    require_int32_dims,
    require_same_array_kind,
    row_block_size,
)

# gather_rows: one block per batch row up to this many blocks; the kernel loops beyond.
GATHER_MAX_BLOCKS = 65535


def gather_rows(data, perm, counters, batch_size, binarize, seed, xb) -> Launch:
    """xb (B, D) = data[perm[counters[1] B + b]], Philox-binarized if `binarize`; `=`.
    Writes nothing once counters[1] >= len(perm) // B (past the epoch's batches)."""
    require_float32_contiguous(data=data, xb=xb)
    require_counters(counters)
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
              np.int32(bool(binarize)), np.uint32(seed_lo), np.uint32(seed_hi),
              np.uint32(perm.shape[0] // batch_size)),
    )


def end_step(nll, kl, kl_weight, counters, losses) -> Launch:
    """losses[counters[1]] = mean_b (nll[b] + kl_weight[0] kl[b]) (nothing once
    counters[1] >= len(losses)), then counters[0] += 1, counters[1] += 1: the last launch of
    every training step, after Adam.  `kl_weight`: the (1,) float32 device KL weight of the
    step (a slot of `sched`).  One block (deterministic)."""
    require_float32_contiguous(nll=nll, kl=kl, losses=losses)
    require_counters(counters)
    require_device_scalar("kl_weight", kl_weight)
    require_same_array_kind(nll, kl, kl_weight, counters, losses)
    if nll.ndim != 1 or kl.shape != nll.shape or nll.shape[0] < 1:
        raise ValueError(f"nll {nll.shape} and kl {kl.shape} must both have shape (B,), B >= 1")
    if losses.ndim != 1 or losses.shape[0] < 1:
        raise ValueError(f"losses must have shape (batches per epoch,), got {losses.shape}")
    require_int32_dims(nll.shape)
    require_int32_dims(losses.shape)
    return Launch(
        kernel="step",
        entry="end_step",
        grid=(1,),
        block=(row_block_size(nll.shape[0]),),
        args=(nll, kl, kl_weight, losses, counters, np.int32(nll.shape[0]),
              np.uint32(losses.shape[0])),
    )


def step_terms(recon, kl, counters, terms) -> Launch:
    """terms[0, counters[1]] = mean_r recon[r], terms[1, counters[1]] = mean_r kl[r] (summed
    in double; nothing once counters[1] >= terms.shape[1]): the step's two ELBO terms for
    the epoch's metrics, read back with the losses.  Runs before end_step (which advances
    counters[1]).  recon, kl: (R,) float32; terms: (2, batches per epoch) float32.  One
    block (deterministic)."""
    require_float32_contiguous(recon=recon, kl=kl, terms=terms)
    require_counters(counters)
    require_same_array_kind(recon, kl, counters, terms)
    if recon.ndim != 1 or kl.shape != recon.shape or recon.shape[0] < 1:
        raise ValueError(f"recon {recon.shape} and kl {kl.shape} must both have shape (R,), R >= 1")
    if terms.ndim != 2 or terms.shape[0] != 2 or terms.shape[1] < 1:
        raise ValueError(f"terms must have shape (2, batches per epoch), got {terms.shape}")
    require_int32_dims(recon.shape)
    require_int32_dims(terms.shape)
    return Launch(
        kernel="step",
        entry="step_terms",
        grid=(1,),
        block=(row_block_size(recon.shape[0]),),
        args=(recon, kl, terms, counters, np.int32(recon.shape[0]), np.uint32(terms.shape[1])),
    )


