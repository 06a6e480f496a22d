"""Launch builder for kernels/discretized_logistic.cu (twin:
cupyvae.distributions.discretized_logistic.discretized_logistic_nll)."""
from __future__ import annotations

from ..launch import Launch
from ._likelihood import row_nll_launch


def discretized_logistic_nll(raw, x, scale, nll, draw) -> Launch:
    """nll (B,) and draw (B, 2D) = scale * d nll / d raw for raw = [mu | r], both `=`."""
    return row_nll_launch("discretized_logistic", raw, x, scale, nll, draw, params_per_dim=2)
