"""Gaussian distributions: the diagonal posterior, the grey-level likelihood, the N(0, I) prior.

Posterior q(z|x) = N(mu, diag(exp(lv))), raw = [mu | lv], both (B, Z):
    z            = mu + exp(lv/2) * eps
    dmu          = dz
    dlv          = dz * eps * exp(lv/2) / 2
    log q(z)     = -1/2 sum_j (log 2pi + lv + (z-mu)^2 exp(-lv))
    dlog q/dmu   = (z-mu) exp(-lv),  dlog q/dlv = ((z-mu)^2 exp(-lv) - 1) / 2,
    dlog q/dz    = -(z-mu) exp(-lv)
    KL(q||N(0,I)) = -1/2 sum_j (1 + lv - mu^2 - exp(lv))
    dKL/dmu = mu,  dKL/dlv = (exp(lv) - 1) / 2

Likelihood p(x|z) = N(m, exp(s)) per pixel, raw = [a | r], both (B, D):
    m = sigmoid(a)                     (grey levels live in [0, 1])
    s = S * tanh(r / S), S = LOGVAR_BOUND  (a smooth bound: the variance can neither
        collapse to 0, which sends the likelihood to +inf on 8-bit data, nor blow up;
        unlike a hard clip its gradient never vanishes, so no unit gets stuck)
    nll = 1/2 sum_j (log 2pi + s + (x-m)^2 exp(-s))
    da  = -(x-m) exp(-s) * m (1-m)
    dr  = (1 - (x-m)^2 exp(-s)) / 2 * (1 - tanh(r/S)^2)

Prior p(z) = N(0, I):  log p = -1/2 sum_j (log 2pi + z^2),  dlog p/dz = -z.
"""
from __future__ import annotations

import numpy as np

from .base import (LOG_2PI, Likelihood, ParamSpec, Posterior, Prior, register_kl,
                   register_likelihood, register_posterior, register_prior)
from .bernoulli import require_unit_interval, sigmoid


@register_posterior("gaussian")
class GaussianPosterior(Posterior):
    params = (ParamSpec("mu", "real"), ParamSpec("logvar", "real"))
    reparameterizable = True
    kernel = "gaussian_posterior"

    def mean(self, raw):
        return self.split(raw)[0].copy()

    def rsample(self, raw, eps):
        mu, lv = self.split(raw)
        return mu + np.exp(0.5 * lv) * eps

    def rsample_backward(self, raw, eps, dz):
        _, lv = self.split(raw)
        return np.concatenate([dz, 0.5 * dz * eps * np.exp(0.5 * lv)], axis=1)

    def log_prob(self, raw, z):
        mu, lv = self.split(raw)
        return -0.5 * (LOG_2PI + lv + (z - mu) ** 2 * np.exp(-lv)).sum(axis=1)

    def log_prob_grads(self, raw, z):
        mu, lv = self.split(raw)
        scaled = (z - mu) * np.exp(-lv)
        draw = np.concatenate([scaled, 0.5 * (scaled * (z - mu) - 1)], axis=1)
        return draw, -scaled


@register_kl("gaussian", "normal")
def kl_gaussian_normal(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form KL(N(mu, exp(lv)) || N(0, I)) per row and its gradient wrt [mu | lv]."""
    z_dim = raw.shape[1] // 2
    mu, lv = raw[:, :z_dim], raw[:, z_dim:]
    var = np.exp(lv)
    kl = -0.5 * (1 + lv - mu * mu - var).sum(axis=1)
    return kl, np.concatenate([mu, 0.5 * (var - 1)], axis=1)


@register_likelihood("gaussian")
class GaussianLikelihood(Likelihood):
    """Per-pixel Gaussian with a learned, softly bounded log-variance (Frey Face)."""
    LOGVAR_BOUND = 7.0
    params = (ParamSpec("mean_logit", "real; mean = sigmoid(mean_logit)"),
              ParamSpec("logvar_raw", f"real; logvar = {LOGVAR_BOUND:g} tanh(raw / {LOGVAR_BOUND:g})"))
    kernel = "gaussian_likelihood"

    def _mean_logvar(self, raw):
        a, r = self.split(raw)
        t = np.tanh(r / self.LOGVAR_BOUND)
        return sigmoid(a), self.LOGVAR_BOUND * t, t

    def nll(self, raw, x, scale):
        m, s, t = self._mean_logvar(raw)
        inv_var = np.exp(-s)
        diff = x - m
        sq = diff * diff * inv_var
        nll = 0.5 * (LOG_2PI + s + sq).sum(axis=1)
        da = -diff * inv_var * m * (1 - m)
        dr = 0.5 * (1 - sq) * (1 - t * t)
        return nll, scale * np.concatenate([da, dr], axis=1)

    def mean(self, raw):
        return self._mean_logvar(raw)[0]

    def sample(self, raw, u, eps):
        m, s, _ = self._mean_logvar(raw)
        return m + np.exp(0.5 * s) * eps

    def validate_data(self, x, what="data"):
        require_unit_interval(x, what, "the gaussian likelihood (its mean is a sigmoid)")


@register_prior("normal")
class NormalPrior(Prior):
    """Standard normal N(0, I): no learnable parameters."""

    def log_prob(self, z, params):
        return -0.5 * (LOG_2PI + z * z).sum(axis=1)

    def log_prob_grads(self, z, params):
        return -z, {}

    def sample(self, params, u, eps):
        return eps.copy()
