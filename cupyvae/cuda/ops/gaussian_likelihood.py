"""Launch builder for kernels/gaussian_likelihood.cu (twin:
cupyvae.distributions.gaussian.gaussian_likelihood_nll)."""
from __future__ import annotations

from ..launch import Launch
from ._likelihood import row_nll_launch


def gaussian_likelihood_nll(raw, x, scale, nll, draw) -> Launch:
    """nll (B,) and draw (B, 2D) = scale * d nll / d raw for raw = [a | r], both `=`."""
    return row_nll_launch("gaussian_likelihood", raw, x, scale, nll, draw, params_per_dim=2)
