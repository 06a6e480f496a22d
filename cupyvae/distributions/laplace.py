"""Laplace likelihood for real-valued data, with a learned, softly bounded log-scale.

p(x | mu, b) = exp(-|x - mu| / b) / (2 b)   (scipy.stats.laplace(loc=mu, scale=b)), per element,
raw = [mu | r], both (B, D): mu = loc, unbounded; log b = S tanh(r / S) with
S = LOG_SCALE_BOUND = 3.5, the range of scales exp(logvar / 2) the Gaussian likelihoods allow
(their log-variance bound is 7), by the same smooth bound (stable.soft_bound).

    nll        = sum_j log 2 + log b + |x - mu| / b
    d / d mu   = -sign(x - mu) / b                     (0 at x = mu, the subgradient's midpoint)
    d / d r    = (1 - |x - mu| / b) * sech^2(r / S)

b = exp(log b) lies in [e^-3.5, e^3.5], so every term stays finite for any raw input.
Mean: mu.  Sampling by inversion: x = mu - b sign(u - 1/2) log(1 - 2 |u - 1/2|) for u in (0, 1).
Any finite data are in the support.  Kernel twin: kernels/laplace.cu.
"""
from __future__ import annotations

import math

import numpy as np

from .base import REAL, Likelihood, ParamSpec, register_likelihood
from .stable import soft_bound

LOG_SCALE_BOUND = 3.5
LOG_2 = math.log(2.0)


def laplace_nll(raw: np.ndarray, x: np.ndarray, scale) -> tuple[np.ndarray, np.ndarray]:
    """nll (B,) and draw (B, 2D) = scale * d nll / d [mu | r]; x (B, D)."""
    dim = x.shape[1]
    mu, r = raw[:, :dim], raw[:, dim:]
    log_b, dlog_b = soft_bound(r, LOG_SCALE_BOUND)
    inv_b = np.exp(-log_b)
    diff = x - mu
    scaled = np.abs(diff) * inv_b
    nll = (raw.dtype.type(LOG_2) + log_b + scaled).sum(axis=1)
    draw = np.concatenate([-np.sign(diff) * inv_b, (1 - scaled) * dlog_b], axis=1) * scale
    return nll, draw.astype(raw.dtype, copy=False)


@register_likelihood("laplace")
class Laplace(Likelihood):
    """Independent Laplace elements with a real-valued mean: for any finite data."""
    params = (ParamSpec("loc", "real"),
              ParamSpec("log_scale_raw", f"real; log_scale = {LOG_SCALE_BOUND:g} "
                                         f"tanh(raw / {LOG_SCALE_BOUND:g})"))
    kernel = "laplace"
    support = REAL

    def nll(self, raw, x, scale):
        return laplace_nll(raw, x, scale)

    def _loc_scale(self, raw):
        mu, r = self.split(raw)
        return mu, np.exp(soft_bound(r, LOG_SCALE_BOUND)[0])

    def mean(self, raw):
        return self._loc_scale(raw)[0].copy()

    def sample(self, raw, u, eps):
        mu, b = self._loc_scale(raw)
        centred = u - raw.dtype.type(0.5)
        return mu - b * np.sign(centred) * np.log1p(-2 * np.abs(centred))
