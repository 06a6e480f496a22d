"""Gaussian likelihood for real-valued data: an unbounded mean, no [0, 1] requirement.

The 'gaussian-sigmoid' likelihood (gaussian.py) squashes its mean into [0, 1] for grey
levels; this one is for standardised features, spectra and any other real-valued data.
Per element, raw = [m | r], both (B, D): m = mean, unbounded; the log-variance is the same
soft bound as gaussian-sigmoid's, s = S tanh(r / S), S = 7 (stable.soft_bound):

    nll    = 1/2 sum_j (log 2pi + s + (x - m)^2 exp(-s))       (scipy.stats.norm(m, exp(s/2)))
    d / dm = -(x - m) exp(-s)
    d / dr = (1 - (x - m)^2 exp(-s)) / 2 * sech^2(r / S)

s lies in [-7, 7], so exp(-s) <= e^7 and every term stays finite for finite inputs.
Mean: m.  Sampling: m + exp(s/2) eps.  Kernel twin: kernels/gaussian_real.cu.
"""
from __future__ import annotations

import numpy as np

from .base import LOG_2PI, REAL, Likelihood, ParamSpec, register_likelihood
from .gaussian import GaussianLikelihood
from .stable import soft_bound

LOGVAR_BOUND = GaussianLikelihood.LOGVAR_BOUND


def gaussian_real_nll(raw: np.ndarray, x: np.ndarray, scale) -> tuple[np.ndarray, np.ndarray]:
    """nll (B,) and draw (B, 2D) = scale * d nll / d [m | r]; x (B, D)."""
    dim = x.shape[1]
    m, r = raw[:, :dim], raw[:, dim:]
    s, ds = soft_bound(r, LOGVAR_BOUND)
    inv_var = np.exp(-s)
    diff = x - m
    sq = diff * diff * inv_var
    nll = raw.dtype.type(0.5) * (raw.dtype.type(LOG_2PI) + s + sq).sum(axis=1)
    draw = np.concatenate([-diff * inv_var, raw.dtype.type(0.5) * (1 - sq) * ds], axis=1) * scale
    return nll, draw.astype(raw.dtype, copy=False)


@register_likelihood("gaussian-real")
class GaussianRealLikelihood(Likelihood):
    """Independent Gaussian elements with a real-valued mean and a softly bounded
    log-variance: for any finite data."""
    LOGVAR_BOUND = LOGVAR_BOUND
    params = (ParamSpec("mean", "real"),
              ParamSpec("logvar_raw", f"real; logvar = {LOGVAR_BOUND:g} tanh(raw / {LOGVAR_BOUND:g})"))
    kernel = "gaussian_real"
    support = REAL

    def nll(self, raw, x, scale):
        return gaussian_real_nll(raw, x, scale)

    def _mean_logvar(self, raw):
        m, r = self.split(raw)
        return m, soft_bound(r, LOGVAR_BOUND)[0]

    def mean(self, raw):
        return self._mean_logvar(raw)[0].copy()

    def sample(self, raw, u, eps):
        m, s = self._mean_logvar(raw)
        return m + np.exp(0.5 * s) * eps
