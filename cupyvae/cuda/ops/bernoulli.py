"""Launch builder for kernels/bernoulli.cu (twin: cupyvae.distributions.bernoulli.bernoulli_nll)."""
from __future__ import annotations

from ..launch import Launch
from ._likelihood import row_nll_launch


def bernoulli_nll(logits, x, scale, nll, dlogits) -> Launch:
    """nll (B,) = per-row Bernoulli NLL of x under logits; dlogits (B, D) = scale*(sigmoid(l) - x).

    Both outputs are overwritten (`=`).  logits, x, dlogits: (B, D) float32 C-contiguous.
    """
    return row_nll_launch("bernoulli", logits, x, scale, nll, dlogits, params_per_dim=1,
                          names=("logits", "dlogits"))
