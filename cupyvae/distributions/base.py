"""The contract every distribution fulfils, and the three registries that name them.

A VAE has three plug-in distributions:

* the approximate posterior q(z|x): the encoder emits its raw parameters, shape (B, k*Z);
* the likelihood p(x|z): the decoder emits its raw parameters, shape (B, k*D);
* the prior p(z): fixed, or with learnable parameters kept in the model's flat buffer
  under ``prior.<name>``.

"Raw" parameters are unconstrained network outputs laid out as k contiguous blocks of
width `dim`, one block per entry of `params` (e.g. [mu | logvar]); each class maps raw
values onto its constraints itself, so its gradients are with respect to the raw block
and flow straight back into the network.

Every method here is the NumPy reference: dtype-preserving (float32 in training,
float64 in the finite-difference tests), and a class names the kernel file that is its
GPU twin in `kernel`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import numpy as np

from ..registry import Registry

LOG_2PI = float(np.log(2 * np.pi))
REAL = "R"          # Likelihood.support of a likelihood for any real data


@dataclass(frozen=True)
class ParamSpec:
    """One parameter of a distribution: `count` values per latent/data dimension."""
    name: str
    constraint: str
    count: int = 1


class Distribution:
    """Shared declarations: parameters, reparameterizability, GPU kernel file."""
    name: ClassVar[str] = ""
    params: ClassVar[tuple[ParamSpec, ...]] = ()
    reparameterizable: ClassVar[bool] = False
    kernel: ClassVar[str | None] = None

    def __init__(self, dim: int):
        self.dim = int(dim)

    @property
    def raw_width(self) -> int:
        """Width of the network output that parameterizes this distribution."""
        return sum(p.count for p in self.params) * self.dim

    def split(self, raw: np.ndarray) -> tuple[np.ndarray, ...]:
        """Views of the raw (B, raw_width) block, one per parameter."""
        out, start = [], 0
        for p in self.params:
            width = p.count * self.dim
            out.append(raw[:, start:start + width])
            start += width
        return tuple(out)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim})"


class Posterior(Distribution):
    """q(z|x).  Reparameterized sampling z = g(raw, eps) with eps of shape (B, Z)."""

    def mean(self, raw: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def rsample(self, raw: np.ndarray, eps: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def rsample_backward(self, raw: np.ndarray, eps: np.ndarray, dz: np.ndarray) -> np.ndarray:
        """d(loss)/d(raw) through z = g(raw, eps), given dz = d(loss)/dz."""
        raise NotImplementedError

    def log_prob(self, raw: np.ndarray, z: np.ndarray) -> np.ndarray:
        """log q(z|raw) per row, shape (B,)."""
        raise NotImplementedError

    def log_prob_grads(self, raw: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(d log q / d raw with z held fixed, d log q / dz), for Monte-Carlo KL terms."""
        raise NotImplementedError

    def log_prob_of_draw(self, raw: np.ndarray, eps: np.ndarray) -> np.ndarray:
        """log q(z|raw) per row (B,) at the draw z = rsample(raw, eps), computed from the noise.

        Every Monte-Carlo objective (the Monte-Carlo KL, IWAE, the importance-sampled
        log-likelihood) takes log q through here.  A subclass gives the form that never
        rebuilds z - mu from z (for the Gaussian, -1/2 sum(log 2pi + lv + eps^2)): with a
        narrow posterior, z - mu cancels to 0 in float32 and exp(-lv) overflows, so the
        generic fallback below is exact only in exact arithmetic."""
        return self.log_prob(raw, self.rsample(raw, eps))

    def log_prob_of_draw_grad(self, raw: np.ndarray, eps: np.ndarray) -> np.ndarray:
        """d/d raw of log q(rsample(raw, eps) | raw) at fixed eps, (B, raw_width): the total
        derivative, through z as well as through q's parameters."""
        z = self.rsample(raw, eps)
        draw, dz = self.log_prob_grads(raw, z)
        return draw + self.rsample_backward(raw, eps, dz)


class Likelihood(Distribution):
    """p(x|z), parameterized by the decoder's raw output.

    `discrete`: True when p is a probability mass function over the data values (so
    log p is a log-probability), False when it is a density on the data space."""
    discrete: ClassVar[bool] = False
    # Where the data live, for messages: a density's log-likelihood is a log-density on
    # support^D (so it can be positive).
    support: ClassVar[str] = "[0, 1]"

    def nll(self, raw: np.ndarray, x: np.ndarray, scale) -> tuple[np.ndarray, np.ndarray]:
        """(-log p(x|raw) per row (B,), scale * d/d raw (B, raw_width)) in one pass."""
        raise NotImplementedError

    def mean(self, raw: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def sample(self, raw: np.ndarray, u: np.ndarray, eps: np.ndarray) -> np.ndarray:
        """A draw given uniforms `u` and standard normals `eps`, both shaped like x."""
        raise NotImplementedError

    def log_prob(self, raw: np.ndarray, x: np.ndarray) -> np.ndarray:
        return -self.nll(raw, x, 1.0)[0]

    def validate_data(self, x: np.ndarray, what: str = "data") -> None:
        """Raise ValueError naming the problem when x is outside the support."""

    def log_likelihood_note(self, x: np.ndarray) -> str | None:
        """What log p(x|z) -- and the ELBO, log-likelihood and bits/dim built from it -- means
        for the data x (N, D) when it is not the log-probability of x, in words for a report;
        None when it is.  A density's is a log-density (it can be positive); a subclass whose
        mass function does not cover x says so (see Bernoulli)."""
        if self.discrete:
            return None
        return (f"the {self.name} likelihood is a density: log p(x) is a log-density of "
                f"continuous x in {self.support}^{x.shape[1]}, not the log-probability of a "
                "discrete value, so it can be positive and compares with a discrete "
                "likelihood's (e.g. bernoulli's) only loosely")

    def bits_per_dim(self, log_px, data_scale: float = 1.0) -> np.ndarray:
        """Per-example log-likelihoods in nats -> bits per dimension; see `bits_per_dim`."""
        return bits_per_dim(log_px, self.dim, discrete=self.discrete, data_scale=data_scale)

    def bits_per_dim_basis(self, data_scale: float = 1.0) -> str:
        """What bits_per_dim reports for this likelihood and data_scale, in words."""
        if self.discrete:
            return "-log2 P(x) / D of the probability mass function"
        if data_scale == 1:
            return "-log2 p(x) / D of the density of x itself"
        return (f"-log2 p(y) / D of the density of y = {data_scale:g} x "
                f"(log p(y) = log p(x) - D log {data_scale:g})")


def bits_per_dim(log_px, dim: int, *, discrete: bool, data_scale: float = 1.0) -> np.ndarray:
    """log p(x) in nats per example (any shape) -> bits per dimension, -log2 p / D.

    discrete (a probability mass function): -log p(x) / (D ln 2), as is.
    continuous (a density): the density of the rescaled data y = data_scale * x, by the
    change of variables p_Y(y) = p_X(x) / data_scale^D:
        -(log p(x) - D log data_scale) / (D ln 2) = -log p(x) / (D ln 2) + log2(data_scale).
    For 8-bit images stored as x = k/255, data_scale = 255 reports the density on the
    0..255 pixel scale, the convention of the image-modelling literature (Theis et al.
    2016, "A note on the evaluation of generative models", there with uniform
    dequantization, which we do not apply: a density evaluated at the grid points is not
    a probability mass, so it compares with a discrete likelihood's bits/dim only
    loosely).  data_scale = 1 reports the density of x itself (real-valued data).
    Returns float64 shaped like log_px; ValueError unless dim >= 1 and data_scale > 0.
    """
    log_px = np.asarray(log_px, np.float64)
    if int(dim) != dim or dim < 1 or not data_scale > 0:
        raise ValueError(f"bits_per_dim needs dim >= 1 and data_scale > 0, got {dim}, {data_scale}")
    correction = 0.0 if discrete else float(np.log2(data_scale))
    return -log_px / (dim * np.log(2.0)) + correction


class Prior:
    """p(z).  Learnable parameters, if any, live in the flat buffer as ``prior.<name>``.

    The prior pass (cupyvae.reference: prior_state, prior_log_prob, prior_log_prob_dz,
    add_prior_param_grads) reaches a prior in three steps:
      1. `prepare(spec, params)` -> PriorState: the prior's own tensors, and in `.density`
         the tensors its density formula reads -- its own tensors, or tensors derived from
         the whole model (the VampPrior encodes its pseudo-inputs with the current encoder);
      2. `log_prob(z, density)`, `log_prob_grads(z, density, g)`, `sample(density, u, eps)`
         work on `.density` only;
      3. `add_param_grads(...)` maps d/d density back onto the flat buffer, ADDING (`+=`)
         into every gradient it touches (its own and, for the VampPrior, the encoder's).
    For a prior whose density reads only its own tensors, steps 1 and 3 are identities.
    """
    name: ClassVar[str] = ""
    learnable: ClassVar[bool] = False
    kernel: ClassVar[str | None] = None
    # K when the prior is a mixture (VAEConfig.prior_components defaults to it); None: the
    # prior has no components and refuses a K.
    default_components: ClassVar[int | None] = None
    # Accepted values of VAEConfig.prior_init; the first is the default.
    init_schemes: ClassVar[tuple[str, ...]] = ("random",)

    def __init__(self, dim: int):
        self.dim = int(dim)

    @classmethod
    def from_config(cls, config) -> "Prior":
        """The prior a VAEConfig describes (mixtures read prior_components, ...)."""
        return cls(config.latent_dim)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {}

    def init_params(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {}

    def check_training_set(self, n_examples: int, what: str = "x_train") -> None:
        """ValueError naming the value when the prior's init scheme cannot start from
        `n_examples` training examples (`what` names them); lets a caller refuse before
        it writes anything.  init_from_data makes the same check."""

    def init_from_data(self, x: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Parameters to overwrite from the training data x (N, D) before the first step;
        empty unless the prior's init scheme reads data.  ValueError names a bad fit."""
        return {}

    def prepare(self, spec, params: dict[str, np.ndarray]) -> "PriorState":
        """The forward half of the prior pass (see the class docstring); `params` is the
        whole model's name -> tensor dict, `spec` its ModelSpec."""
        return PriorState(spec.prior_params(params))

    def add_param_grads(self, spec, params: dict[str, np.ndarray], grads: dict[str, np.ndarray],
                        state: "PriorState", ddensity: dict[str, np.ndarray]) -> None:
        """ADDS (`+=`) into `grads` the gradient that ddensity (name -> d/d state.density[name])
        implies for every flat-buffer tensor the density depends on."""
        for name, value in ddensity.items():
            grads[f"prior.{name}"] += value

    def log_prob(self, z: np.ndarray, params: dict[str, np.ndarray]) -> np.ndarray:
        """log p(z) per row (B,); `params` is PriorState.density."""
        raise NotImplementedError

    def log_prob_grads(self, z: np.ndarray, params: dict[str, np.ndarray],
                       g: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(d log p(z_b) / d z_b per row (B, Z), {name: d sum_b g[b] log p(z_b) / d params[name]}).

        g (B,) weights the rows of the parameter gradient (the upstream d loss / d log p(z_b));
        None means all ones.  `params` is PriorState.density."""
        raise NotImplementedError

    def sample(self, params: dict[str, np.ndarray], u: np.ndarray, eps: np.ndarray) -> np.ndarray:
        """n draws given uniforms u (n,) and standard normals eps (n, Z); `params` is
        PriorState.density."""
        raise NotImplementedError

    # What the pictures show of a prior (cupyvae.plots); None where the prior has no such thing.
    def component_means(self, params: dict[str, np.ndarray]) -> np.ndarray | None:
        """(K, Z) means of the prior's mixture components; `params` is PriorState.density."""
        return None

    def component_weights(self, params: dict[str, np.ndarray]) -> np.ndarray | None:
        """(K,) float64 mixture weights, summing to 1; `params` is PriorState.density."""
        return None

    def pseudo_inputs(self, params: dict[str, np.ndarray]) -> np.ndarray | None:
        """(K, D) pseudo-inputs in data space, as the encoder sees them; `params` is the
        whole model's name -> tensor dict."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim})"


class PriorState(dict):
    """What the prior pass hands from its forward to its backward calls.

    As a dict: the prior's own tensors by name (as in the flat buffer, without "prior."),
    so iterating a state names exactly the gradients the prior owns.  `density`: the
    tensors the prior's density formula reads (by default the own tensors themselves).
    `saved`: forward values its backward reuses (the VampPrior's encoder activations).
    """

    def __init__(self, own: dict, density: dict | None = None, saved=None):
        super().__init__(own)
        self.density = dict(own) if density is None else density
        self.saved = saved


POSTERIORS: Registry[type[Posterior]] = Registry("posterior")
LIKELIHOODS: Registry[type[Likelihood]] = Registry("likelihood")
PRIORS: Registry[type[Prior]] = Registry("prior")
# Analytic KL(q || p) per row and its gradient wrt q's raw parameters, keyed "q->p".
KL_PAIRS: Registry[Callable] = Registry("analytic KL pair")
# The same KL per latent dimension, for pairs where it factorises (free bits needs it).
KL_PER_DIMENSION: Registry[Callable] = Registry("per-dimension KL pair")


def register_posterior(name: str):
    return _named(POSTERIORS, name)


def register_likelihood(name: str):
    return _named(LIKELIHOODS, name)


def register_prior(name: str):
    return _named(PRIORS, name)


def register_kl(posterior: str, prior: str):
    """`fn(raw) -> (kl (B,), dkl/draw)` is the closed-form KL of this pair."""
    return KL_PAIRS.register(kl_key(posterior, prior))


def register_kl_per_dimension(posterior: str, prior: str):
    """`fn(raw) -> (kl (B, Z), dkl (B, raw_width))` is the closed-form KL of this pair per
    latent dimension, where it factorises: kl.sum(1) is the row KL, and column c of dkl is
    the derivative of kl[:, c % Z] (raw is laid out in blocks of width Z, see
    Distribution.split, and column c influences dimension c % Z only)."""
    return KL_PER_DIMENSION.register(kl_key(posterior, prior))


def kl_key(posterior: str, prior: str) -> str:
    return f"{posterior}->{prior}"


def _named(registry: Registry, name: str):
    def add(cls):
        cls.name = name
        return registry.register(name)(cls)
    return add
