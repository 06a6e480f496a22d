"""Launch builder for kernels/adam.cu (twin: cupyvae.optim.adam_update).

`counters`: the device step counters [step, batch] (see cupyvae.cuda.ops._checks.require_counters).
"""
from __future__ import annotations

import numpy as np

from ..launch import Launch
from ._checks import (
    ELEMENTWISE_BLOCK,
    elementwise_grid_size,
    float32_scalar,
    require_counters,
    require_float32_contiguous,
    require_int32_dims,
    require_same_array_kind,
)

# adam_update moves float4s: one thread per 4 elements before the grid cap.
ADAM_VECTOR_WIDTH = 4


def adam_update(p, g, m, v, counters, lr, beta1, beta2, eps, weight_decay) -> Launch:
    """One Adam step (t = counters[0] + 1) on the flat buffers p, m, v (in place) from g."""
    require_float32_contiguous(p=p, g=g, m=m, v=v)
    require_counters(counters)
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

