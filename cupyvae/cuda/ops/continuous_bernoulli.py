"""Launch builder for kernels/continuous_bernoulli.cu (twin:
cupyvae.distributions.continuous_bernoulli.continuous_bernoulli_nll)."""
from __future__ import annotations

from ..launch import Launch
from ._likelihood import row_nll_launch


def continuous_bernoulli_nll(logits, x, scale, nll, dlogits) -> Launch:
    """nll (B,) and dlogits (B, D) = scale * d nll / d logits, both `=`."""
    return row_nll_launch("continuous_bernoulli", logits, x, scale, nll, dlogits, params_per_dim=1,
                          names=("logits", "dlogits"))
