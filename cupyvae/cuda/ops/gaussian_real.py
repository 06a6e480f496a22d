"""Launch builder for kernels/gaussian_real.cu (twin:
cupyvae.distributions.gaussian_real.gaussian_real_nll)."""
from __future__ import annotations

from ..launch import Launch
from ._likelihood import row_nll_launch


def gaussian_real_nll(raw, x, scale, nll, draw) -> Launch:
    """nll (B,) and draw (B, 2D) = scale * d nll / d raw for raw = [m | r], both `=`."""
    return row_nll_launch("gaussian_real", raw, x, scale, nll, draw, params_per_dim=2)
