"""Launch builders for kernels/importance.cu (twins: cupyvae.objective_twins, same names and
leading arguments, outputs last).

Rows of k samples per example: row r = b*k + i is sample i of example b.  Float arrays are
float32 except the log-likelihood's running state and result (float64); all C-contiguous,
all NumPy (emulated) or all CuPy (cuda).
"""
from __future__ import annotations

import numpy as np

from cupyvae.philox import split_seed

from ..launch import Launch
from ._checks import (
    ELEMENTWISE_BLOCK,
    elementwise_grid_size,
    float32_scalar,
    positive_int,
    require_float32_contiguous,
    require_float64_contiguous,
    require_int32_dims,
    require_same_array_kind,
    row_block_size,
    uint32_scalar,
)

# iwae_weights / log_mean_exp_accumulate: one block per example up to this many blocks; the
# kernels loop beyond.
EXAMPLE_MAX_BLOCKS = 65535


def importance_noise(seed, first_example, examples, first_sample, samples, z_dim, eps) -> Launch:
    """eps (examples * samples, Z) = the Philox normals of (step = first_example + r // samples,
    row = first_sample + r % samples, col, STREAM_IMPORTANCE), `=`."""
    require_float32_contiguous(eps=eps)
    examples, samples = positive_int("examples", examples), positive_int("samples", samples)
    z_dim = positive_int("z_dim", z_dim)
    if eps.shape != (examples * samples, z_dim):
        raise ValueError(f"eps must have shape ({examples * samples}, {z_dim}) for {examples} "
                         f"examples x {samples} samples, got {eps.shape}")
    require_int32_dims(eps.shape)
    first_example = uint32_scalar("first_example", first_example)
    first_sample = uint32_scalar("first_sample", first_sample)
    uint32_scalar("last example index", int(first_example) + examples - 1)
    uint32_scalar("last sample index", int(first_sample) + samples - 1)
    seed_lo, seed_hi = split_seed(seed)
    return Launch(kernel="importance", entry="importance_noise",
                  grid=(elementwise_grid_size(eps.size),), block=(ELEMENTWISE_BLOCK,),
                  args=(eps, np.int32(eps.shape[0]), np.int32(z_dim), np.int32(samples),
                        first_example, first_sample, np.uint32(seed_lo), np.uint32(seed_hi)))


def repeat_rows(src, samples, dst) -> Launch:
    """dst (B*k, C) = src (B, C) with every row repeated k = samples times, `=`."""
    rows, cols, samples = _groups("src", src, "dst", dst, samples, grouped_is_dst=True)
    return Launch(kernel="importance", entry="repeat_rows",
                  grid=(elementwise_grid_size(dst.size),), block=(ELEMENTWISE_BLOCK,),
                  args=(src, dst, np.int32(rows), np.int32(cols), np.int32(samples)))


def sum_row_groups(src, samples, dst) -> Launch:
    """dst (B, C) = sums of the k = samples consecutive rows of src (B*k, C), `=`."""
    rows, cols, samples = _groups("dst", dst, "src", src, samples, grouped_is_dst=False)
    return Launch(kernel="importance", entry="sum_row_groups",
                  grid=(elementwise_grid_size(dst.size),), block=(ELEMENTWISE_BLOCK,),
                  args=(src, dst, np.int32(rows), np.int32(cols), np.int32(samples)))


def scale_rows(x, g) -> Launch:
    """x (R, C) *= g (R,) row by row, in place."""
    require_float32_contiguous(x=x, g=g)
    require_same_array_kind(x, g)
    if x.ndim != 2 or g.shape != (x.shape[0],):
        raise ValueError(f"x must be 2-D (R, C) and g (R,), got x {x.shape}, g {g.shape}")
    require_int32_dims(x.shape)
    return Launch(kernel="importance", entry="scale_rows",
                  grid=(elementwise_grid_size(x.size),), block=(ELEMENTWISE_BLOCK,),
                  args=(x, g, np.int32(x.shape[0]), np.int32(x.shape[1])))


def iwae_weights(nll, log_p, log_q, samples, scale, bound, weight) -> Launch:
    """bound (B,) = negative IWAE bound per example, weight (B*k,) = scale * normalised
    importance weights; both `=`.  nll, log_p, log_q: (B*k,)."""
    require_float32_contiguous(nll=nll, log_p=log_p, log_q=log_q, bound=bound, weight=weight)
    require_same_array_kind(nll, log_p, log_q, bound, weight)
    examples, samples = _sample_rows(nll, log_p, log_q, samples)
    if bound.shape != (examples,) or weight.shape != nll.shape:
        raise ValueError(f"bound must have shape ({examples},) and weight {nll.shape} for "
                         f"{nll.shape[0]} rows of {samples} samples; got bound {bound.shape}, "
                         f"weight {weight.shape}")
    return Launch(kernel="importance", entry="iwae_weights",
                  grid=(min(max(examples, 1), EXAMPLE_MAX_BLOCKS),), block=(row_block_size(samples),),
                  args=(nll, log_p, log_q, bound, weight, np.int32(examples), np.int32(samples),
                        float32_scalar("scale", scale)))


def log_mean_exp_accumulate(nll, log_p, log_q, running_max, running_sum, samples) -> Launch:
    """Merges samples more log-weights per example into running_max, running_sum (B,)
    float64, in place."""
    require_float32_contiguous(nll=nll, log_p=log_p, log_q=log_q)
    require_float64_contiguous(running_max=running_max, running_sum=running_sum)
    require_same_array_kind(nll, log_p, log_q, running_max, running_sum)
    examples, samples = _sample_rows(nll, log_p, log_q, samples)
    if running_max.shape != (examples,) or running_sum.shape != (examples,):
        raise ValueError(f"running_max and running_sum must have shape ({examples},) for "
                         f"{nll.shape[0]} rows of {samples} samples; got {running_max.shape}, "
                         f"{running_sum.shape}")
    return Launch(kernel="importance", entry="log_mean_exp_accumulate",
                  grid=(min(max(examples, 1), EXAMPLE_MAX_BLOCKS),), block=(row_block_size(samples),),
                  args=(nll, log_p, log_q, running_max, running_sum, np.int32(examples),
                        np.int32(samples)))


def log_mean_exp_finish(running_max, running_sum, total_samples, log_px) -> Launch:
    """log_px (B,) float64 = running_max + log running_sum - log total_samples, `=`."""
    require_float64_contiguous(running_max=running_max, running_sum=running_sum, log_px=log_px)
    require_same_array_kind(running_max, running_sum, log_px)
    if running_max.ndim != 1 or running_sum.shape != running_max.shape or \
            log_px.shape != running_max.shape:
        raise ValueError(f"running_max, running_sum and log_px must all have shape (B,), got "
                         f"{running_max.shape}, {running_sum.shape}, {log_px.shape}")
    require_int32_dims(log_px.shape)
    total = positive_int("total_samples", total_samples)
    return Launch(kernel="importance", entry="log_mean_exp_finish",
                  grid=(elementwise_grid_size(log_px.size),), block=(ELEMENTWISE_BLOCK,),
                  args=(running_max, running_sum, log_px, np.int32(log_px.shape[0]),
                        np.float64(total)))


def _groups(single_name, single, grouped_name, grouped, samples, grouped_is_dst: bool):
    """(B, C, k) for single (B, C) and grouped (B*k, C)."""
    require_float32_contiguous(**{single_name: single, grouped_name: grouped})
    require_same_array_kind(single, grouped)
    samples = positive_int("samples", samples)
    if single.ndim != 2 or grouped.shape != (single.shape[0] * samples, single.shape[1]):
        raise ValueError(f"{grouped_name} must have shape ({single.shape[0] * samples}, "
                         f"{single.shape[1] if single.ndim == 2 else 'C'}) for {single_name} "
                         f"{single.shape} and {samples} samples, got {grouped.shape}")
    require_int32_dims(grouped.shape)
    return single.shape[0], single.shape[1], samples


def _sample_rows(nll, log_p, log_q, samples) -> tuple[int, int]:
    """(examples, k) for per-sample vectors of length examples * k."""
    samples = positive_int("samples", samples)
    if nll.ndim != 1 or log_p.shape != nll.shape or log_q.shape != nll.shape:
        raise ValueError(f"nll, log_p and log_q must all have shape (B*k,), got {nll.shape}, "
                         f"{log_p.shape}, {log_q.shape}")
    if nll.shape[0] % samples:
        raise ValueError(f"{nll.shape[0]} rows are not a whole number of examples of {samples} samples")
    require_int32_dims(nll.shape)
    return nll.shape[0] // samples, samples
