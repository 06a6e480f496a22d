"""Discretized logistic likelihood with one component, for 8-bit images scaled to [0, 1].

As in Kingma et al. 2016 ("Improved variational inference with inverse autoregressive flow",
IAF, section 5.2 / appendix) and Salimans et al. 2017 (PixelCNN++, section 2.1; reference
code: openai/pixel-cnn, pixel_cnn_pp/nn.py, `discretized_mix_logistic_loss`), with one
mixture component and the data on [0, 1] instead of [-1, 1]: the value x = k/255 has the
probability mass of the logistic(mu, s) distribution over its bin [x - h, x + h], h = 1/510,
and the edge bins are open-ended (x = 0 takes (-inf, h], x = 1 takes [1 - h, inf)), so the
256 masses sum to 1.

raw = [mu | r] per pixel, both (B, D): mu = loc, unbounded (as in PixelCNN++);
log s = S tanh(r / S), S = LOG_SCALE_BOUND = 7 (PixelCNN++ clamps log s >= -7; a smooth bound
keeps the gradient alive, see stable.soft_bound).  With inv_s = exp(-log s):

    upper = inv_s (x - mu + h),  lower = inv_s (x - mu - h),  delta = upper - lower = inv_s / 255
    P(x)  = sigmoid(upper) - sigmoid(lower)
          = sigmoid(upper) (1 - sigmoid(lower)) (1 - exp(-delta))
    log P = -softplus(-upper) - softplus(lower) + log(-expm1(-delta))          (middle bins)
    log P = -softplus(-upper)                    (x = 0: PixelCNN++'s log_cdf_plus)
    log P = -softplus(lower)                     (x = 1: PixelCNN++'s log_one_minus_cdf_min)

(the factorisation: sigmoid(b) - sigmoid(a) = (e^b - e^a) / ((1 + e^a)(1 + e^b))
= sigmoid(b) (1 - sigmoid(a)) (1 - e^(a - b)).)  So an edge bin simply drops the term of its
open side.  Gradient of nll = -log P, with the terms that exist for this bin:

    g_u = sigmoid(-upper)          g_l = -sigmoid(lower)          g_d = 1 / expm1(delta)
    d nll / d mu    = inv_s (g_u + g_l)
    d nll / d log s = upper g_u + lower g_l + delta g_d
        (d upper / d log s = -upper, d lower / d log s = -lower, d delta / d log s = -delta)
    d nll / d r     = d nll / d log s * sech^2(r / S)

Stability, and why there is no mid-bin switch.  PixelCNN++ computes sigmoid(upper) -
sigmoid(lower) directly, which cancels when both are near 1 (or the bin is far narrower than
s), and so switches to the mid-bin density log pdf(x) + log(bin width) when the mass drops
below 1e-5 (Kingma et al. 2016 use the same fallback).  The factored form above has no
subtraction at all: each of its three terms is exact in log space for every mu and s, and
as delta -> 0 it tends to the mid-bin density itself
(log(-expm1(-delta)) -> log delta = log(bin width) - log s, and -softplus(-upper)
- softplus(lower) -> log of sigmoid' at the bin centre); tests/test_likelihoods.py checks it
against the PixelCNN++ formula where that is accurate and against the mid-bin density where
PixelCNN++ falls back to it.  The factored form is smooth, so the gradient has no jump at a
threshold either.  delta lies in [e^-7, e^7] / 255 (the soft bound), so expm1 and the
softplus never overflow, and every exp is of a non-positive number.

Mean: the true mean of the discretized distribution,
    E[x] = sum_k (k/255) P(k/255) = (1/255) sum_{k=1..255} P(x >= k/255)
         = (1/255) sum_{k=1..255} sigmoid(inv_s (mu - (k - 1/2) / 255)).
Sampling: a logistic draw mu + s (log u - log(1 - u)), rounded to the nearest k/255 and
clipped to [0, 1] (the open edge bins take everything beyond).

Data must be on the grid k/255 (validate_data says which values are not).
Kernel twin: kernels/discretized_logistic.cu.
"""
from __future__ import annotations

import numpy as np

from .base import Likelihood, ParamSpec, register_likelihood
from .bernoulli import require_unit_interval, sigmoid
from .grid import LEVELS, off_grid
from .stable import soft_bound, softplus

BIN_HALF_WIDTH = 0.5 / (LEVELS - 1)
LOG_SCALE_BOUND = 7.0


def discretized_logistic_nll(raw: np.ndarray, x: np.ndarray, scale) -> tuple[np.ndarray, np.ndarray]:
    """nll (B,) = -sum_j log P(x_j) and draw (B, 2D) = scale * d nll / d [mu | r]."""
    dim = x.shape[1]
    dtype = raw.dtype.type
    mu, r = raw[:, :dim], raw[:, dim:]
    log_s, dlog_s = soft_bound(r, LOG_SCALE_BOUND)
    inv_s = np.exp(-log_s)
    centered = x - mu
    upper = inv_s * (centered + dtype(BIN_HALF_WIDTH))
    lower = inv_s * (centered - dtype(BIN_HALF_WIDTH))
    delta = inv_s * dtype(2 * BIN_HALF_WIDTH)
    has_upper = x < dtype(1 - BIN_HALF_WIDTH)    # not the top bin: its upper edge is finite
    has_lower = x > dtype(BIN_HALF_WIDTH)        # not the bottom bin
    both = has_upper & has_lower
    nll = (np.where(has_upper, softplus(-upper), 0) + np.where(has_lower, softplus(lower), 0)
           - np.where(both, np.log(-np.expm1(-delta)), 0))
    g_u = np.where(has_upper, sigmoid(-upper), 0)
    g_l = np.where(has_lower, -sigmoid(lower), 0)
    g_d = np.where(both, 1 / np.expm1(delta), 0)
    dmu = inv_s * (g_u + g_l)
    dr = (upper * g_u + lower * g_l + delta * g_d) * dlog_s
    draw = (np.concatenate([dmu, dr], axis=1) * scale).astype(raw.dtype, copy=False)
    return nll.sum(axis=1).astype(raw.dtype, copy=False), draw


@register_likelihood("discretized-logistic")
class DiscretizedLogistic(Likelihood):
    """One discretized logistic per pixel over the 256 values k/255 (a probability mass
    function, so its log-likelihood converts directly to bits per dimension)."""
    params = (ParamSpec("loc", "real"),
              ParamSpec("log_scale_raw", f"real; log_scale = {LOG_SCALE_BOUND:g} "
                                         f"tanh(raw / {LOG_SCALE_BOUND:g})"))
    kernel = "discretized_logistic"
    discrete = True

    def nll(self, raw, x, scale):
        return discretized_logistic_nll(raw, x, scale)

    def _loc_inv_scale(self, raw):
        mu, r = self.split(raw)
        return mu, np.exp(-soft_bound(r, LOG_SCALE_BOUND)[0])

    def mean(self, raw):
        mu, inv_s = self._loc_inv_scale(raw)
        dtype = raw.dtype.type
        total = np.zeros_like(mu)
        for k in range(1, LEVELS):      # one (B, D) pass per threshold: no (B, D, 255) array
            total += sigmoid(inv_s * (mu - dtype((k - 0.5) / (LEVELS - 1))))
        return total / dtype(LEVELS - 1)

    def sample(self, raw, u, eps):
        mu, inv_s = self._loc_inv_scale(raw)
        drawn = mu + (np.log(u) - np.log1p(-u)) / inv_s
        levels = np.clip(np.rint(drawn * (LEVELS - 1)), 0, LEVELS - 1)
        return (levels / (LEVELS - 1)).astype(raw.dtype, copy=False)

    def validate_data(self, x, what="data"):
        require_unit_interval(x, what, "the discretized-logistic likelihood")
        bad = off_grid(x)
        if bad.any():
            row, col = (int(i) for i in np.argwhere(bad)[0])
            value = float(x[row, col])
            raise ValueError(
                f"{what} has {int(bad.sum())} values off the 8-bit grid k/255 (first: {value!r} "
                f"= {value * (LEVELS - 1):.4f}/255 in example index {row}, element {col}, "
                "counting from 0); the "
                "discretized-logistic likelihood models 8-bit images scaled as uint8 / 255")
