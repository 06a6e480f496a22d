"""Launch builders for kernels/gaussian_posterior.cu (twins: cupyvae.distributions.gaussian.
gaussian_posterior_forward / gaussian_posterior_backward), and the posterior's reparameterized
draw alone as an ElementwiseSpec (gaussian_posterior_sample).

`counters`: the device step counters [step, batch] (see cupyvae.cuda.ops._checks.require_counters).
"""
from __future__ import annotations

import numpy as np

from cupyvae.philox import split_seed

from cupyvae.emulator.elementwise import ElementwiseSpec

from ..launch import ElementwiseLaunch, Launch
from .normal import PHILOX_PREAMBLE
from ._checks import (
    float32_scalar,
    require_counters,
    require_device_scalar,
    require_float32_contiguous,
    require_int32_dims,
    require_same_array_kind,
    uint32_scalar,
    warp_per_item,
)

# gaussian_posterior_*: one warp per row, up to this many rows (warps) per block.
POSTERIOR_ROWS_PER_BLOCK = 8

# z = mu + exp(lv / 2) eps, eps = Philox normal(seed, step, row, col, stream): the draw of
# gaussian_posterior_forward without the KL (no row reduction), so purely elementwise.  The
# expression is the forward kernel's, term for term, so both give the same bits for the same
# keys (on the emulator, and on a GPU: NVRTC contracts nothing, see cupyvae.cuda.loader).
# qraw is passed flat (B * 2Z,) = rows of [mu | lv]; i runs over z (B, Z).
GAUSSIAN_POSTERIOR_SAMPLE = ElementwiseSpec(
    "raw float32 qraw, uint32 seed_lo, uint32 seed_hi, uint32 step, uint32 stream, int32 z_dim",
    "float32 z",
    "const long long row = i / z_dim; const long long col = i % z_dim;"
    " const float m = qraw[row * 2 * z_dim + col];"
    " const float l = qraw[row * 2 * z_dim + z_dim + col];"
    " z = m + expf(0.5f * l) * philox_element_normal(seed_lo, seed_hi, step, stream,"
    " (unsigned int)row, (unsigned int)col)",
    "gaussian_posterior_sample",
    preamble=PHILOX_PREAMBLE,
)


def gaussian_posterior_sample(qraw, seed, step, stream, z) -> ElementwiseLaunch:
    """z (B, Z) = mu + exp(lv/2) eps with qraw (B, 2Z) = [mu | lv] and eps = Philox
    normal(seed, step, row, col, stream), written with `=`: a reparameterized draw of q(z|x)
    (encode(sample=True), importance samples).  Twin: GaussianPosterior.rsample(qraw,
    cupyvae.philox.normal(seed, step, B, Z, stream)).  `step` is a launch argument here
    (inference), not the training counters."""
    require_float32_contiguous(qraw=qraw, z=z)
    require_same_array_kind(qraw, z)
    batch, z_dim = _posterior_shape(qraw)
    if z.shape != (batch, z_dim):
        raise ValueError(f"z must have shape ({batch}, {z_dim}) for qraw {qraw.shape}, "
                         f"got {z.shape}")
    seed_lo, seed_hi = split_seed(seed)
    return ElementwiseLaunch(GAUSSIAN_POSTERIOR_SAMPLE, (
        qraw.reshape(-1), np.uint32(seed_lo), np.uint32(seed_hi), uint32_scalar("step", step),
        uint32_scalar("stream", stream), np.int32(z_dim), z))


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
    grid, block = warp_per_item(batch, POSTERIOR_ROWS_PER_BLOCK)
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
    grid, block = warp_per_item(batch, POSTERIOR_ROWS_PER_BLOCK)
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


def _posterior_shape(qraw) -> tuple[int, int]:
    if qraw.ndim != 2 or qraw.shape[1] == 0 or qraw.shape[1] % 2:
        raise ValueError(f"qraw must be 2-D (B, 2Z) = [mu | logvar] with Z >= 1, got shape {qraw.shape}")
    require_int32_dims(qraw.shape)
    return qraw.shape[0], qraw.shape[1] // 2



# ------------------------------------------------------ Monte-Carlo objectives and free bits
def gaussian_posterior_log_q(qraw, counters, seed, stream, log_q, eps=None) -> Launch:
    """log_q (B,) = -1/2 sum_j (log 2pi + lv + eps^2), `=`: log q at z = mu + exp(lv/2) eps,
    eps drawn like gaussian_posterior_forward draws it (or the given (B, Z) `eps`)."""
    require_float32_contiguous(qraw=qraw, log_q=log_q)
    require_counters(counters)
    require_same_array_kind(qraw, counters, log_q)
    batch, z_dim = _posterior_shape(qraw)
    _require_rows("log_q", log_q, batch, qraw)
    seed_lo, seed_hi = split_seed(seed)
    grid, block = warp_per_item(batch, POSTERIOR_ROWS_PER_BLOCK)
    return Launch(
        kernel="gaussian_posterior",
        entry="gaussian_posterior_log_q",
        grid=grid,
        block=block,
        args=(qraw, counters, log_q, np.int32(batch), np.int32(z_dim), np.uint32(seed_lo),
              np.uint32(seed_hi), uint32_scalar("stream", stream), *_given_noise(eps, qraw, z_dim)),
    )


def gaussian_posterior_weighted_backward(qraw, dz, g, counters, seed, stream, dqraw,
                                         eps=None) -> Launch:
    """dqraw (B, 2Z) = [dz | dz eps exp(lv/2)/2 - g/2], `=`; g (B,) = d loss / d log q per row."""
    require_float32_contiguous(qraw=qraw, dz=dz, g=g, dqraw=dqraw)
    require_counters(counters)
    require_same_array_kind(qraw, dz, g, counters, dqraw)
    batch, z_dim = _posterior_shape(qraw)
    if dz.shape != (batch, z_dim):
        raise ValueError(f"dz must have shape ({batch}, {z_dim}) for qraw {qraw.shape}, got {dz.shape}")
    _require_rows("g", g, batch, qraw)
    if dqraw.shape != qraw.shape:
        raise ValueError(f"dqraw {dqraw.shape} must have the shape of qraw {qraw.shape}")
    seed_lo, seed_hi = split_seed(seed)
    grid, block = warp_per_item(batch, POSTERIOR_ROWS_PER_BLOCK)
    return Launch(
        kernel="gaussian_posterior",
        entry="gaussian_posterior_weighted_backward",
        grid=grid,
        block=block,
        args=(qraw, dz, g, counters, dqraw, np.int32(batch), np.int32(z_dim), np.uint32(seed_lo),
              np.uint32(seed_hi), uint32_scalar("stream", stream), *_given_noise(eps, qraw, z_dim)),
    )


def gaussian_posterior_kl_per_dimension(qraw, kl_dim) -> Launch:
    """kl_dim (B, Z) = -1/2 ((lv - expm1(lv)) - mu^2) per element, `=`."""
    require_float32_contiguous(qraw=qraw, kl_dim=kl_dim)
    require_same_array_kind(qraw, kl_dim)
    batch, z_dim = _posterior_shape(qraw)
    if kl_dim.shape != (batch, z_dim):
        raise ValueError(f"kl_dim must have shape ({batch}, {z_dim}) for qraw {qraw.shape}, "
                         f"got {kl_dim.shape}")
    grid, block = warp_per_item(batch, POSTERIOR_ROWS_PER_BLOCK)
    return Launch(kernel="gaussian_posterior", entry="gaussian_posterior_kl_per_dimension",
                  grid=grid, block=block,
                  args=(qraw, kl_dim, np.int32(batch), np.int32(z_dim)))


def gaussian_posterior_kl_per_dimension_backward(qraw, weight, kl_scale, dqraw) -> Launch:
    """dqraw (B, 2Z) += kl_scale weight[j] [mu | expm1(lv)/2] (ADDS); weight (Z,)."""
    require_float32_contiguous(qraw=qraw, weight=weight, dqraw=dqraw)
    require_same_array_kind(qraw, weight, dqraw)
    batch, z_dim = _posterior_shape(qraw)
    if weight.shape != (z_dim,):
        raise ValueError(f"weight must have shape ({z_dim},) for qraw {qraw.shape}, got {weight.shape}")
    if dqraw.shape != qraw.shape:
        raise ValueError(f"dqraw {dqraw.shape} must have the shape of qraw {qraw.shape}")
    grid, block = warp_per_item(batch, POSTERIOR_ROWS_PER_BLOCK)
    return Launch(kernel="gaussian_posterior", entry="gaussian_posterior_kl_per_dimension_backward",
                  grid=grid, block=block,
                  args=(qraw, weight, dqraw, np.int32(batch), np.int32(z_dim),
                        float32_scalar("kl_scale", kl_scale)))


def _require_rows(name: str, array, batch: int, qraw) -> None:
    if array.shape != (batch,):
        raise ValueError(f"{name} must have shape ({batch},) for qraw {qraw.shape}, got {array.shape}")
