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


class Likelihood(Distribution):
    """p(x|z), parameterized by the decoder's raw output.

    `density`: True when p(x|z) is a probability density over continuous values, so
    log p(x) in nats can be positive and is not comparable with a discrete likelihood's
    (`cupyvae evaluate` says so); False for a probability mass (e.g. Bernoulli)."""
    density: ClassVar[bool] = False

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


class Prior:
    """p(z).  Learnable parameters, if any, live in the flat buffer as ``prior.<name>``."""
    name: ClassVar[str] = ""
    learnable: ClassVar[bool] = False
    kernel: ClassVar[str | None] = None

    def __init__(self, dim: int):
        self.dim = int(dim)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {}

    def init_params(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {}

    def log_prob(self, z: np.ndarray, params: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def log_prob_grads(self, z: np.ndarray, params: dict[str, np.ndarray],
                       g: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(d log p(z_b) / d z_b per row (B, Z), {name: d sum_b g[b] log p(z_b) / d param}).

        g (B,) weights the rows of the parameter gradient (the upstream d loss / d log p(z_b));
        None means all ones."""
        raise NotImplementedError

    def sample(self, params: dict[str, np.ndarray], u: np.ndarray, eps: np.ndarray) -> np.ndarray:
        """n draws given uniforms u (n,) and standard normals eps (n, Z)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim})"


POSTERIORS: Registry[type[Posterior]] = Registry("posterior")
LIKELIHOODS: Registry[type[Likelihood]] = Registry("likelihood")
PRIORS: Registry[type[Prior]] = Registry("prior")
# Analytic KL(q || p) per row and its gradient wrt q's raw parameters, keyed "q->p".
KL_PAIRS: Registry[Callable] = Registry("analytic KL pair")


def register_posterior(name: str):
    return _named(POSTERIORS, name)


def register_likelihood(name: str):
    return _named(LIKELIHOODS, name)


def register_prior(name: str):
    return _named(PRIORS, name)


def register_kl(posterior: str, prior: str):
    """`fn(raw) -> (kl (B,), dkl/draw)` is the closed-form KL of this pair."""
    return KL_PAIRS.register(kl_key(posterior, prior))


def kl_key(posterior: str, prior: str) -> str:
    return f"{posterior}->{prior}"


def _named(registry: Registry, name: str):
    def add(cls):
        cls.name = name
        return registry.register(name)(cls)
    return add
