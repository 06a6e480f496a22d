"""Launch builder for kernels/laplace.cu (twin: cupyvae.distributions.laplace.laplace_nll)."""
from __future__ import annotations

from ..launch import Launch
from ._likelihood import row_nll_launch


def laplace_nll(raw, x, scale, nll, draw) -> Launch:
    """nll (B,) and draw (B, 2D) = scale * d nll / d raw for raw = [mu | r], both `=`."""
    return row_nll_launch("laplace", raw, x, scale, nll, draw, params_per_dim=2)
