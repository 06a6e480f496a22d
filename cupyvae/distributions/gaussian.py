"""Gaussian distributions: the diagonal posterior, the grey-level likelihood
('gaussian-sigmoid'), the N(0, I) prior.

Posterior q(z|x) = N(mu, diag(exp(lv))), raw = [mu | lv], both (B, Z):
    z            = mu + exp(lv/2) * eps
    dmu          = dz
    dlv          = dz * eps * exp(lv/2) / 2
    log q(z)     = -1/2 sum_j (log 2pi + lv + (z-mu)^2 exp(-lv))
    dlog q/dmu   = (z-mu) exp(-lv),  dlog q/dlv = ((z-mu)^2 exp(-lv) - 1) / 2,
    dlog q/dz    = -(z-mu) exp(-lv)
    log q at z = mu + exp(lv/2) eps, from the noise (never from z - mu, which cancels in
    float32 for narrow posteriors while exp(-lv) overflows):
                 = -1/2 sum_j (log 2pi + lv + eps^2);  total d/dmu = 0,  d/dlv = -1/2
    KL(q||N(0,I)) = -1/2 sum_j (1 + lv - mu^2 - exp(lv)) = -1/2 sum_j (lv - expm1(lv) - mu^2)
    dKL/dmu = mu,  dKL/dlv = expm1(lv) / 2
    per latent dimension j (the KL factorises; free bits floors each dimension):
    KL_j = -1/2 (lv_j - expm1(lv_j) - mu_j^2),  the same derivatives, column by column

Likelihood p(x|z) = N(m, exp(s)) per pixel, raw = [a | r], both (B, D):
    m = sigmoid(a)                     (grey levels live in [0, 1])
    s = S * tanh(r / S), S = LOGVAR_BOUND  (a smooth bound: the variance can neither
        collapse to 0, which sends the likelihood to +inf on 8-bit data, nor blow up;
        unlike a hard clip its gradient never vanishes, so no unit gets stuck)
    nll = 1/2 sum_j (log 2pi + s + (x-m)^2 exp(-s))
    da  = -(x-m) exp(-s) * m (1-m)                       m(1-m) = e/(1+e)^2, e = exp(-|a|)
    dr  = (1 - (x-m)^2 exp(-s)) / 2 * (1 - tanh(r/S)^2)  1-tanh^2(y) = 4e2/(1+e2)^2, e2 = exp(-2|y|)

Prior p(z) = N(0, I):  log p = -1/2 sum_j (log 2pi + z^2),  dlog p/dz = -z.
"""
from __future__ import annotations

import numpy as np

from .base import (LIKELIHOODS, LOG_2PI, Likelihood, ParamSpec, Posterior, Prior, register_kl,
                   register_kl_per_dimension, register_likelihood, register_posterior,
                   register_prior)
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

    def log_prob_of_draw(self, raw, eps):
        _, lv = self.split(raw)
        return -0.5 * (LOG_2PI + lv + eps * eps).sum(axis=1)

    def log_prob_of_draw_grad(self, raw, eps):
        _, lv = self.split(raw)
        return np.concatenate([np.zeros_like(lv), np.full_like(lv, -0.5)], axis=1)


@register_kl("gaussian", "normal")
def kl_gaussian_normal(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form KL(N(mu, exp(lv)) || N(0, I)) per row and its gradient wrt [mu | lv]."""
    kl, dkl = kl_gaussian_normal_per_dimension(raw)
    return kl.sum(axis=1), dkl


@register_kl_per_dimension("gaussian", "normal")
def kl_gaussian_normal_per_dimension(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """KL(N(mu, exp(lv)) || N(0, I)) per latent dimension (B, Z), and its gradient wrt
    [mu | lv] (B, 2Z): column j and Z + j are the derivatives of dimension j's term."""
    z_dim = raw.shape[1] // 2
    mu, lv = raw[:, :z_dim], raw[:, z_dim:]
    expm1 = np.expm1(lv)   # exp(lv) - 1 without cancellation near lv = 0
    kl = -0.5 * (lv - expm1 - mu * mu)
    return kl, np.concatenate([mu, 0.5 * expm1], axis=1)


@register_likelihood("gaussian-sigmoid")
class GaussianLikelihood(Likelihood):
    """Per-pixel Gaussian with a sigmoid mean, for grey levels in [0, 1] (Kingma & Welling's
    Frey Face model), and a learned, softly bounded log-variance.  Registered as
    'gaussian-sigmoid'; 'gaussian', its name before 'gaussian-real' existed, still loads.
    For real-valued data use 'gaussian-real' (gaussian_real.py)."""
    LOGVAR_BOUND = 7.0
    params = (ParamSpec("mean_logit", "real; mean = sigmoid(mean_logit)"),
              ParamSpec("logvar_raw", f"real; logvar = {LOGVAR_BOUND:g} tanh(raw / {LOGVAR_BOUND:g})"))
    kernel = "gaussian_likelihood"

    def _mean_logvar(self, raw):
        a, r = self.split(raw)
        t = np.tanh(r / self.LOGVAR_BOUND)
        return sigmoid(a), self.LOGVAR_BOUND * t, t

    def nll(self, raw, x, scale):
        a, r = self.split(raw)
        m, s, _ = self._mean_logvar(raw)
        inv_var = np.exp(-s)
        diff = x - m
        sq = diff * diff * inv_var
        nll = 0.5 * (LOG_2PI + s + sq).sum(axis=1)
        # m(1-m) = e/(1+e)^2 with e = exp(-|a|), and 1 - tanh(y)^2 = 4 e2/(1+e2)^2 with
        # e2 = exp(-2|y|): the naive 1-m and 1-t^2 cancel to 0 in float32 for |a| > 17.
        e = np.exp(-np.abs(a))
        e2 = np.exp(-2 * np.abs(r / self.LOGVAR_BOUND))
        da = -diff * inv_var * (e / ((1 + e) * (1 + e)))
        dr = 0.5 * (1 - sq) * (4 * e2 / ((1 + e2) * (1 + e2)))
        return nll, scale * np.concatenate([da, dr], axis=1)

    def mean(self, raw):
        return self._mean_logvar(raw)[0]

    def sample(self, raw, u, eps):
        m, s, _ = self._mean_logvar(raw)
        return m + np.exp(0.5 * s) * eps

    def validate_data(self, x, what="data"):
        require_unit_interval(x, what, "the gaussian-sigmoid likelihood (its mean is a sigmoid)")


LIKELIHOODS.alias("gaussian", "gaussian-sigmoid")   # the old name, in checkpoints and run folders


@register_prior("normal")
class NormalPrior(Prior):
    """Standard normal N(0, I): no learnable parameters."""
    kernel = "normal"   # its draws on the kernel devices: cupyvae.cuda.ops.normal_prior_sample

    def log_prob(self, z, params):
        return -0.5 * (LOG_2PI + z * z).sum(axis=1)

    def log_prob_grads(self, z, params, g=None):
        return -z, {}

    def sample(self, params, u, eps):
        return eps.copy()


# ---------------------------------------------------------------------------------------
# Kernel-shaped twins: the same arguments as the kernels in kernels/gaussian_posterior.cu
# and kernels/gaussian_likelihood.cu (counters a NumPy uint32 array, seed one uint64,
# outputs returned instead of written), built on the reference methods above, so a test
# swaps a twin for its launch builder in cupyvae.cuda.ops and compares.
# ---------------------------------------------------------------------------------------

def gaussian_posterior_forward(qraw: np.ndarray, counters: np.ndarray, seed: int,
                               stream: int) -> tuple[np.ndarray, np.ndarray]:
    """z (B, Z) = mu + exp(lv/2) eps and kl (B,) = KL(q || N(0, I)) for qraw = [mu | lv].

    eps = cupyvae.philox.normal(seed, step=counters[0], B, Z, stream): the noise the
    kernel draws in-kernel from the device counters.
    """
    from .. import philox

    batch, z_dim = qraw.shape[0], qraw.shape[1] // 2
    eps = philox.normal(seed, int(counters[0]), batch, z_dim, stream)
    z = GaussianPosterior(z_dim).rsample(qraw, eps)
    kl, _ = kl_gaussian_normal(qraw)
    return z, kl


def gaussian_posterior_backward(qraw: np.ndarray, dz: np.ndarray, counters: np.ndarray,
                                seed: int, stream: int, kl_scale, kl_weight) -> np.ndarray:
    """dqraw (B, 2Z) = d/d[mu | lv] of (loss through z) + k * KL, eps recomputed, with
    k = kl_scale * kl_weight[0] in float32 (kl_weight: the (1,) float32 KL weight the kernel
    reads from the device).

    dmu = dz + k mu;  dlv = dz eps exp(lv/2) / 2 + k (exp(lv) - 1) / 2.
    """
    from .. import philox

    batch, z_dim = qraw.shape[0], qraw.shape[1] // 2
    eps = philox.normal(seed, int(counters[0]), batch, z_dim, stream)
    dqraw = GaussianPosterior(z_dim).rsample_backward(qraw, eps, dz)
    coefficient = np.float32(kl_scale) * np.float32(np.asarray(kl_weight).reshape(-1)[0])
    dqraw += np.asarray(coefficient, qraw.dtype) * kl_gaussian_normal(qraw)[1]
    return dqraw


def gaussian_likelihood_nll(raw: np.ndarray, x: np.ndarray, scale) -> tuple[np.ndarray, np.ndarray]:
    """nll (B,) and draw = scale * d nll / d raw (B, 2D) for raw = [a | r]; see GaussianLikelihood."""
    return GaussianLikelihood(x.shape[1]).nll(raw, x, scale)


def _posterior_noise(qraw, counters, seed, stream, eps):
    """The kernels' eps: the given array, or Philox normal(seed, counters[0], B, Z, stream)."""
    from .. import philox

    if eps is not None:
        return eps
    return philox.normal(seed, int(counters[0]), qraw.shape[0], qraw.shape[1] // 2, stream)


def gaussian_posterior_log_q(qraw: np.ndarray, counters: np.ndarray, seed: int, stream: int,
                             eps: np.ndarray | None = None) -> np.ndarray:
    """log_q (B,) = -1/2 sum_j (log 2pi + lv + eps^2): log q at z = mu + exp(lv/2) eps."""
    z_dim = qraw.shape[1] // 2
    return GaussianPosterior(z_dim).log_prob_of_draw(qraw, _posterior_noise(qraw, counters, seed, stream, eps))


def gaussian_posterior_weighted_backward(qraw: np.ndarray, dz: np.ndarray, g: np.ndarray,
                                         counters: np.ndarray, seed: int, stream: int,
                                         eps: np.ndarray | None = None) -> np.ndarray:
    """dqraw (B, 2Z) = rsample backward of dz + g[b] * d log q(rsample(qraw, eps)) / d qraw:
    [dz | dz eps exp(lv/2) / 2 - g / 2]."""
    post = GaussianPosterior(qraw.shape[1] // 2)
    eps = _posterior_noise(qraw, counters, seed, stream, eps)
    return post.rsample_backward(qraw, eps, dz) + g[:, None] * post.log_prob_of_draw_grad(qraw, eps)


def gaussian_posterior_kl_per_dimension(qraw: np.ndarray) -> np.ndarray:
    """kl_dim (B, Z) = KL(N(mu_j, exp(lv_j)) || N(0, 1)) per latent dimension."""
    return kl_gaussian_normal_per_dimension(qraw)[0]


def gaussian_posterior_kl_per_dimension_backward(qraw: np.ndarray, weight: np.ndarray, kl_scale,
                                                 dqraw: np.ndarray) -> np.ndarray:
    """dqraw += (kl_scale * weight[j]) * [mu | expm1(lv) / 2], in place (like the kernel);
    returns dqraw.  weight (Z,): free_bits_kl's active mask."""
    w = np.asarray(kl_scale, qraw.dtype) * weight
    dqraw += np.tile(w, 2) * kl_gaussian_normal_per_dimension(qraw)[1]
    return dqraw
