"""NumPy twins of kernels/step.cu: the glue of a training step driven by device counters.

`counters` is a uint32 array of two: counters[0] = global step (the Adam step count
before this step's update, and the Philox `step` key), counters[1] = batch index within
the epoch.  Each twin takes the kernel's arguments (seed as one uint64) and either
returns its output or, like the kernel, updates `losses` / `counters` in place.
"""
from __future__ import annotations

import numpy as np

from .executors import binarize_batch


def gather_rows(data: np.ndarray, perm: np.ndarray, counters: np.ndarray, batch_size: int,
                binarize: bool, seed: int) -> np.ndarray | None:
    """xb (B, D) = data[perm[counters[1] B : (counters[1] + 1) B]], binarized if asked;
    None past the epoch (counters[1] >= len(perm) // B), where the kernel writes nothing.

    Binarization is executors.binarize_batch keyed by step = counters[0]: the very
    numbers NumpyExecutor.train_epoch draws for that step.
    """
    batch = int(counters[1])
    if batch >= len(perm) // int(batch_size):
        return None
    start = batch * int(batch_size)
    xb = data[perm[start:start + int(batch_size)]]
    if binarize:
        xb = binarize_batch(xb, seed, int(counters[0]))
    return xb


def end_step(nll: np.ndarray, kl: np.ndarray, kl_weight: np.ndarray, counters: np.ndarray,
             losses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """In place: losses[counters[1]] = (1/B) sum_b (nll[b] + beta kl[b]) with
    beta = kl_weight[0] (the float32 products beta kl[b], each added to nll[b] and summed in
    float64 like the kernel -- in another order, so within a float32 ulp of it -- then
    rounded; skipped when counters[1] >= len(losses)), then counters[0] += 1 (next global
    step) and counters[1] += 1 (next batch).  Returns (losses, counters)."""
    batch = int(counters[1])
    if batch < len(losses):
        weighted = np.float32(kl_weight[0]) * kl
        total = (nll.astype(np.float64) + weighted.astype(np.float64)).sum()
        losses[batch] = total / nll.shape[0]
    counters += np.uint32(1)
    return losses, counters


def step_terms(recon: np.ndarray, kl: np.ndarray, counters: np.ndarray,
               terms: np.ndarray) -> np.ndarray:
    """In place: terms[0, counters[1]] = mean(recon), terms[1, counters[1]] = mean(kl), each
    summed in float64 and rounded to terms' dtype (skipped when counters[1] >=
    terms.shape[1]).  Returns terms; the counters are not changed."""
    batch = int(counters[1])
    if batch < terms.shape[1]:
        terms[0, batch] = recon.astype(np.float64).sum() / recon.shape[0]
        terms[1, batch] = kl.astype(np.float64).sum() / kl.shape[0]
    return terms

