"""Launch builders for kernels/mixture_prior.cu (twins: cupyvae.distributions.mixture.
mixture_prior_forward / mixture_prior_backward_z / mixture_prior_backward_params).

Shapes: z (B, Z); logits (K,); components (K, 2Z) = [means | log-variances] per row;
logp and g (B,); resp (B, K); all float32, C-contiguous, all NumPy (emulated) or all CuPy
(cuda).  Outputs must not overlap inputs.  logp, resp, dlogits, dcomponents are written
with `=`; dz is accumulated (`+=`).
"""
from __future__ import annotations

import numpy as np

from ..launch import Launch
from ._checks import (
    require_float32_contiguous,
    require_int32_dims,
    require_same_array_kind,
    warp_per_item,
)

# One warp per row (forward, backward_z) or per component (backward_params), up to this
# many warps per block.
MIXTURE_WARPS_PER_BLOCK = 8


def mixture_prior_forward(z, logits, components, logp, resp) -> Launch:
    """logp (B,) = log p(z_b) and resp (B, K) = the responsibilities r_bk, both `=`."""
    require_float32_contiguous(z=z, logits=logits, components=components, logp=logp, resp=resp)
    require_same_array_kind(z, logits, components, logp, resp)
    batch, k, z_dim = _mixture_dims(z, logits, components)
    _require_shape("logp", logp, (batch,), z, components)
    _require_shape("resp", resp, (batch, k), z, components)
    grid, block = warp_per_item(batch, MIXTURE_WARPS_PER_BLOCK)
    return Launch(kernel="mixture_prior", entry="mixture_prior_forward", grid=grid, block=block,
                  args=(z, logits, components, logp, resp, np.int32(batch), np.int32(k),
                        np.int32(z_dim)))


def mixture_prior_backward_z(z, components, resp, g, dz) -> Launch:
    """dz (B, Z) += g[b] * d log p(z_b) / d z_b, computed from the forward's resp."""
    require_float32_contiguous(z=z, components=components, resp=resp, g=g, dz=dz)
    require_same_array_kind(z, components, resp, g, dz)
    batch, k, z_dim = _mixture_dims(z, None, components)
    _require_shape("resp", resp, (batch, k), z, components)
    _require_shape("g", g, (batch,), z, components)
    _require_shape("dz", dz, z.shape, z, components)
    grid, block = warp_per_item(batch, MIXTURE_WARPS_PER_BLOCK)
    return Launch(kernel="mixture_prior", entry="mixture_prior_backward_z", grid=grid, block=block,
                  args=(z, components, resp, g, dz, np.int32(batch), np.int32(k), np.int32(z_dim)))


def mixture_prior_backward_params(z, logits, components, resp, g, dlogits, dcomponents) -> Launch:
    """dlogits (K,) and dcomponents (K, 2Z) = d/d(logits, components) of sum_b g[b] log p(z_b),
    both `=`; one fixed-order sum over the batch per output (no atomics)."""
    require_float32_contiguous(z=z, logits=logits, components=components, resp=resp, g=g,
                               dlogits=dlogits, dcomponents=dcomponents)
    require_same_array_kind(z, logits, components, resp, g, dlogits, dcomponents)
    batch, k, z_dim = _mixture_dims(z, logits, components)
    _require_shape("resp", resp, (batch, k), z, components)
    _require_shape("g", g, (batch,), z, components)
    _require_shape("dlogits", dlogits, (k,), z, components)
    _require_shape("dcomponents", dcomponents, components.shape, z, components)
    grid, block = warp_per_item(k, MIXTURE_WARPS_PER_BLOCK)
    return Launch(kernel="mixture_prior", entry="mixture_prior_backward_params", grid=grid,
                  block=block, args=(z, logits, components, resp, g, dlogits, dcomponents,
                                     np.int32(batch), np.int32(k), np.int32(z_dim)))


def _mixture_dims(z, logits, components) -> tuple[int, int, int]:
    """(B, K, Z) from z (B, Z), components (K, 2Z) and, when given, logits (K,)."""
    if z.ndim != 2 or z.shape[1] < 1:
        raise ValueError(f"z must be 2-D (B, Z) with Z >= 1, got shape {z.shape}")
    batch, z_dim = z.shape
    if components.ndim != 2 or components.shape[0] < 1 or components.shape[1] != 2 * z_dim:
        raise ValueError(f"components must have shape (K, 2Z) = (K, {2 * z_dim}) = [means | "
                         f"log-variances] for z {z.shape}, with K >= 1; got {components.shape}")
    k = components.shape[0]
    if logits is not None and logits.shape != (k,):
        raise ValueError(f"logits must have shape ({k},) for components {components.shape}, "
                         f"got {logits.shape}")
    require_int32_dims((batch, k, 2 * z_dim))   # offsets are 64-bit in the kernels
    return batch, k, z_dim


def _require_shape(name: str, array, shape: tuple, z, components) -> None:
    if array.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} for z {z.shape} and components "
                         f"{components.shape}, got {array.shape}")
