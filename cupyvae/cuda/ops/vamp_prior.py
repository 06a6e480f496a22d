"""Launch builders for kernels/vamp_prior.cu, the VampPrior's pseudo-input bound (twins:
cupyvae.distributions.vamp.vamp_pseudo_inputs_forward / _backward).

w = prior.pseudo_inputs (K, D); u, du, dw (K, D); all float32, C-contiguous, all NumPy
(emulated) or all CuPy (cuda).  Outputs are written with `=` and must not overlap inputs.
"""
from __future__ import annotations

import numpy as np

from ..launch import Launch
from ._checks import (
    ELEMENTWISE_BLOCK,
    elementwise_grid_size,
    require_float32_contiguous,
    require_int32_dims,
    require_same_array_kind,
)


def vamp_pseudo_inputs_forward(w, u) -> Launch:
    """u (K, D) = min(max(w, 0), 1), `=`."""
    require_float32_contiguous(w=w, u=u)
    require_same_array_kind(w, u)
    k, d = _pseudo_input_dims(w)
    if u.shape != w.shape:
        raise ValueError(f"u must have the shape of w {w.shape}, got {u.shape}")
    return Launch(kernel="vamp_prior", entry="vamp_pseudo_inputs_forward",
                  grid=(elementwise_grid_size(k * d),), block=(ELEMENTWISE_BLOCK,),
                  args=(w, u, np.int32(k), np.int32(d)))


def vamp_pseudo_inputs_backward(w, du, dw) -> Launch:
    """dw (K, D) = du where 0 < w < 1, else 0; `=`."""
    require_float32_contiguous(w=w, du=du, dw=dw)
    require_same_array_kind(w, du, dw)
    k, d = _pseudo_input_dims(w)
    for name, array in (("du", du), ("dw", dw)):
        if array.shape != w.shape:
            raise ValueError(f"{name} must have the shape of w {w.shape}, got {array.shape}")
    return Launch(kernel="vamp_prior", entry="vamp_pseudo_inputs_backward",
                  grid=(elementwise_grid_size(k * d),), block=(ELEMENTWISE_BLOCK,),
                  args=(w, du, dw, np.int32(k), np.int32(d)))


def _pseudo_input_dims(w) -> tuple[int, int]:
    if w.ndim != 2 or w.shape[0] < 1 or w.shape[1] < 1:
        raise ValueError(f"w (the pseudo-inputs) must be 2-D (K, D) with K, D >= 1, got {w.shape}")
    require_int32_dims(w.shape)
    return w.shape
