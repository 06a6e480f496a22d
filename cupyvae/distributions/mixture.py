"""Mixtures of diagonal Gaussians as priors: the math `mog` and `vamp` share, the `mog` prior,
and the NumPy twins of kernels/mixture_prior.cu.

A mixture of K diagonal Gaussians over z in R^Z is held as
    logits     a (K,)                 mixture weights pi = softmax(a)
    components c (K, 2Z) = [m | s]    per row: the means, then the log-variances
(the layout of the Gaussian posterior's raw output [mu | logvar], so the VampPrior's
components are the encoder's output on its pseudo-inputs, unchanged).

Density, for a batch z (B, Z):
    log pi_k   = a_k - LSE_k' a_k'                                  (log-softmax)
    h_kj       = exp(-s_kj / 2)                                     (inverse standard deviation)
    t_bkj      = (z_bj - m_kj) h_kj                                 (standardised distance)
    l_bk       = log pi_k - 1/2 sum_j (log 2pi + s_kj + t_bkj^2)    (log pi_k N(z_b; m_k, e^s_k))
    log p(z_b) = LSE_k l_bk = M_b + log sum_k exp(l_bk - M_b),  M_b = max_k l_bk
    r_bk       = exp(l_bk - log p(z_b))                             (responsibilities; sum_k r_bk = 1)

Gradients, with g_b = d loss / d log p(z_b) the objective's weight of row b (-1/B for the
mean negative ELBO; the IWAE objective weights samples differently):
    d log p(z_b) / d z_bj          = -sum_k r_bk t_bkj h_kj        = sum_k r_bk (m_kj - z_bj) e^-s_kj
    d/d a_k  [sum_b g_b log p(z_b)] = sum_b g_b (r_bk - pi_k)
    d/d m_kj [sum_b g_b log p(z_b)] = sum_b g_b r_bk t_bkj h_kj
    d/d s_kj [sum_b g_b log p(z_b)] = 1/2 sum_b g_b r_bk (t_bkj^2 - 1)
Derivation: d LSE_k l_bk = sum_k r_bk d l_bk (the softmax of the l's is r).  From l_bk:
d l/d z_bj = -t h,  d l/d m_kj = +t h,  d l/d s_kj = -1/2 (1 - t^2) because
d (t^2)/d s = -t^2 (t carries exp(-s/2)), and d log pi_k'/d a_k = [k = k'] - pi_k, so
sum_k' r_bk' ([k = k'] - pi_k) = r_bk - pi_k since the r's sum to one.
Through the Gaussian posterior's reparameterized z = mu + exp(lv/2) eps the z-gradient
reaches [mu | lv] by GaussianPosterior.rsample_backward; cupyvae.reference applies it.

Numerics (tested: means 1e3 apart, log-variances +-30, K = 1): every exponential taken is
of a non-positive number (l_bk - M_b, a_k - max a) or of -s/2 (h = e^15 at s = -30: finite
in float32); t is formed before squaring, so t^2 overflows only past |t| ~ 1.8e19, where
(z - m)^2 e^-s would already have; a component far from z gets l_bk ~ -1e6 and r_bk = 0
exactly, never NaN.  K = 1 gives log pi = 0 and log p = l exactly.

Sampling: component k = the first with cumsum(pi)_k > u (u uniform, pi in float64), then
z = m_k + exp(s_k / 2) eps.
"""
from __future__ import annotations

import numpy as np

from .base import LOG_2PI, Prior, register_prior


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """a - LSE(a) for a (K,), max-shifted: exp only ever sees non-positive numbers."""
    shifted = logits - logits.max()
    return shifted - np.log(np.exp(shifted).sum())


def _logsumexp_rows(ell: np.ndarray) -> np.ndarray:
    """LSE over axis 1 of (B, K), max-shifted."""
    peak = ell.max(axis=1)
    peak = np.where(np.isfinite(peak), peak, 0)    # a row of -inf gives -inf, not NaN
    return peak + np.log(np.exp(ell - peak[:, None]).sum(axis=1))


def _standardised(z: np.ndarray, components: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(t (B, K, Z), h (K, Z)) of the header; t built in place (no (B, K, Z) temporaries)."""
    z_dim = z.shape[1]
    h = np.exp(-0.5 * components[:, z_dim:])
    t = np.subtract(z[:, None, :], components[None, :, :z_dim])
    t *= h
    return t, h


def _mixture_terms(z, logits, components):
    """(log p (B,), r (B, K), t, h): the forward quantities every gradient reuses."""
    z_dim = z.shape[1]
    t, h = _standardised(z, components)
    # sum_j (log 2pi + s_kj + t_bkj^2) = sum_j (log 2pi + s_kj) + sum_j t_bkj^2
    quad = np.einsum("bkj,bkj->bk", t, t)
    quad += (LOG_2PI + components[:, z_dim:]).sum(axis=1)
    ell = log_softmax(logits) - 0.5 * quad
    log_p = _logsumexp_rows(ell)
    ell -= log_p[:, None]
    return log_p, np.exp(ell, out=ell), t, h


def _dlogp_dz(resp, t, h):
    """d log p(z_b) / d z_b (B, Z) = -sum_k r_bk t_bkj h_kj (a batched GEMV over k)."""
    return -np.matmul(resp[:, None, :], t * h)[:, 0, :]


def _dparams(logits, resp, t, h, g):
    """(d/d logits (K,), d/d components (K, 2Z)) of sum_b g_b log p(z_b)."""
    pi = np.exp(log_softmax(logits))
    weighted = g[:, None] * resp
    dlogits = (g[:, None] * (resp - pi)).sum(axis=0)
    dmeans = np.einsum("bk,bkj->kj", weighted, t) * h
    # 1/2 sum_b w (t^2 - 1) = 1/2 (sum_b w t^2 - sum_b w)
    dlogvars = np.einsum("bk,bkj,bkj->kj", weighted, t, t)
    dlogvars -= weighted.sum(axis=0)[:, None]
    dlogvars *= 0.5
    return dlogits, np.concatenate([dmeans, dlogvars], axis=1)


class GaussianMixturePrior(Prior):
    """A prior whose density is a mixture of K diagonal Gaussians, read from
    PriorState.density["logits"] (K,) and ["components"] (K, 2Z) = [means | log-variances].
    Subclasses say where those come from (their own tensors, or the encoder)."""
    learnable = True

    def __init__(self, dim: int, components: int):
        super().__init__(dim)
        if int(components) != components or components < 1:
            raise ValueError(f"a mixture prior needs K >= 1 components, got {components!r}")
        self.n_components = int(components)
        self._memo = None        # see _terms

    # Rows per pass: the (B, K, Z) terms are held at most this many elements at a time
    # (16 MiB in float32), so evaluating 10,000 rows under a 500-component prior takes 25
    # passes instead of 400 MiB.  A training batch fits in one pass, which _terms remembers.
    TERMS_LIMIT = 1 << 22

    def log_prob(self, z, params):
        blocks = self._row_blocks(len(z))
        if len(blocks) == 1:
            return self._terms(z, params["logits"], params["components"])[0].copy()
        return np.concatenate([_mixture_terms(z[rows], params["logits"], params["components"])[0]
                               for rows in blocks])

    def log_prob_grads(self, z, params, g=None):
        logits, components = params["logits"], params["components"]
        g = np.ones(len(z), z.dtype) if g is None else g
        blocks = self._row_blocks(len(z))
        if len(blocks) == 1:
            _, resp, t, h = self._terms(z, logits, components)
            dlogits, dcomponents = _dparams(logits, resp, t, h, g)
            return _dlogp_dz(resp, t, h), {"logits": dlogits, "components": dcomponents}
        dz = np.empty_like(z)
        dlogits, dcomponents = np.zeros_like(logits), np.zeros_like(components)
        for rows in blocks:           # fixed blocks in a fixed order: deterministic sums
            _, resp, t, h = _mixture_terms(z[rows], logits, components)
            dz[rows] = _dlogp_dz(resp, t, h)
            block_dlogits, block_dcomponents = _dparams(logits, resp, t, h, g[rows])
            dlogits += block_dlogits
            dcomponents += block_dcomponents
        return dz, {"logits": dlogits, "components": dcomponents}

    def _row_blocks(self, batch: int) -> list[slice]:
        rows = max(1, self.TERMS_LIMIT // (self.n_components * self.dim))
        return [slice(start, start + rows) for start in range(0, max(batch, 1), rows)]

    def _terms(self, z, logits, components):
        """_mixture_terms, remembered for the last (z, logits, components), compared by value:
        a training step asks for log p, d/dz and d/dparams at the same point (the (B, K, Z)
        terms dominate the prior's cost), and finite differences change the point between
        calls.  The remembered arrays never leave this class."""
        point = (z, logits, components)
        memo = self._memo
        if memo is not None and all(a.dtype == b.dtype and np.array_equal(a, b)
                                    for a, b in zip(memo[0], point)):
            return memo[1]
        terms = _mixture_terms(z, logits, components)
        self._memo = (tuple(np.array(a) for a in point), terms)
        return terms

    def sample(self, params, u, eps):
        logits, components = params["logits"], params["components"]
        cdf = np.cumsum(np.exp(log_softmax(np.asarray(logits, np.float64))))
        k = np.minimum(np.searchsorted(cdf, np.asarray(u, np.float64), side="right"),
                       self.n_components - 1)         # u < 1 but cdf[-1] may round below it
        means, logvars = components[:, :self.dim], components[:, self.dim:]
        return (means[k] + np.exp(0.5 * logvars[k]) * eps).astype(eps.dtype, copy=False)

    def component_means(self, params) -> np.ndarray:
        """(K, Z) means of the mixture's components (what the latent plot marks)."""
        return params["components"][:, :self.dim]

    def component_weights(self, params) -> np.ndarray:
        return np.exp(log_softmax(np.asarray(params["logits"], np.float64)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim}, components={self.n_components})"


@register_prior("mog")
class MixturePrior(GaussianMixturePrior):
    """A mixture of K diagonal Gaussians with learnable logits (K,), means and log-variances,
    stored as ``prior.logits`` (K,) and ``prior.components`` (K, 2Z) = [means | log-variances].

    Initialisation: logits 0 (equal weights: no component favoured before the data say so);
    means ~ N(0, INIT_SPREAD^2 I) with INIT_SPREAD = 1/2, and every log-variance
    log(1 - INIT_SPREAD^2) = log(3/4).  The random means break the symmetry between
    components (identical components receive identical gradients and never separate),
    while the mixture's expected covariance, E[m m^T] + diag(e^s) = (1/4 + 3/4) I, is the
    identity: training starts from a prior close to the standard N(0, I), whose behaviour
    with this encoder and initialisation is known, and moves away only as the data pull it.
    """
    kernel = "mixture_prior"
    default_components = 10
    INIT_SPREAD = 0.5

    @classmethod
    def from_config(cls, config):
        return cls(config.latent_dim, config.prior_components)

    def param_shapes(self):
        return {"logits": (self.n_components,), "components": (self.n_components, 2 * self.dim)}

    def init_params(self, rng):
        shape = (self.n_components, self.dim)
        means = rng.normal(0.0, self.INIT_SPREAD, shape)
        logvars = np.full(shape, np.log1p(-self.INIT_SPREAD ** 2))
        return {"logits": np.zeros(self.n_components), "components": np.concatenate([means, logvars], axis=1)}


# ---------------------------------------------------------------------------------------
# Kernel-shaped twins of kernels/mixture_prior.cu: the same arguments as the launch builders
# in cupyvae.cuda.ops.mixture_prior, outputs returned instead of written (the `+=` output dz
# is taken and returned updated), built on the reference functions above.
# ---------------------------------------------------------------------------------------

def mixture_prior_forward(z: np.ndarray, logits: np.ndarray,
                          components: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(log p(z_b) (B,), responsibilities r (B, K)) for z (B, Z), logits (K,), components (K, 2Z)."""
    log_p, resp, _, _ = _mixture_terms(z, logits, components)
    return log_p, resp


def mixture_prior_backward_z(z: np.ndarray, components: np.ndarray, resp: np.ndarray,
                             g: np.ndarray, dz: np.ndarray) -> np.ndarray:
    """dz + g[b] * d log p(z_b) / d z_b: the kernel ADDS into dz (B, Z)."""
    t, h = _standardised(z, components)
    return dz + g[:, None] * _dlogp_dz(resp, t, h)


def mixture_prior_backward_params(z: np.ndarray, logits: np.ndarray, components: np.ndarray,
                                  resp: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dlogits (K,), dcomponents (K, 2Z)) = d/d(a, [m | s]) of sum_b g[b] log p(z_b)."""
    t, h = _standardised(z, components)
    return _dparams(logits, resp, t, h, g)
