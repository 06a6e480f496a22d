"""The one description of a model: a frozen dataclass, written next to every checkpoint."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

import numpy as np

from .distributions import LIKELIHOODS, POSTERIORS, PRIORS
from .layers import ACTIVATIONS


@dataclass(frozen=True)
class VAEConfig:
    data_shape: tuple[int, ...]
    latent_dim: int = 2
    hidden: tuple[int, ...] = (200,)
    activation: str | tuple[str, ...] = "relu"   # one for all hidden layers, or one per layer
    posterior: str = "gaussian"
    likelihood: str = "bernoulli"
    prior: str = "normal"
    seed: int = 0
    # K, the number of mixture components (mog) or pseudo-inputs (vamp); None takes the
    # prior's default (mog 10, vamp 500 as in Tomczak & Welling 2018).  Priors without
    # components (normal) refuse a value.
    prior_components: int | None = None
    # How the prior's parameters start: "random", or "data" (vamp: pseudo-inputs copied from
    # K training examples by the first fit).  See each prior's `init_schemes`.
    prior_init: str = "random"

    def __post_init__(self):
        object.__setattr__(self, "data_shape", _positive_ints(self.data_shape, "data_shape"))
        object.__setattr__(self, "hidden", _positive_ints(self.hidden, "hidden", allow_empty=True))
        if isinstance(self.activation, (list, tuple)):
            object.__setattr__(self, "activation", tuple(self.activation))
        if int(self.latent_dim) != self.latent_dim or self.latent_dim < 1:
            raise ValueError(f"latent_dim must be a positive integer, got {self.latent_dim!r}")
        if not 0 <= int(self.seed) < 2 ** 64:
            raise ValueError(f"seed must lie in [0, 2^64), got {self.seed}")
        for act in self.activations:
            ACTIVATIONS.get(act)
        POSTERIORS.get(self.posterior), LIKELIHOODS.get(self.likelihood)
        self._validate_prior_options(PRIORS.get(self.prior))

    def _validate_prior_options(self, prior_cls) -> None:
        """Resolve prior_components to the prior's default and refuse what the prior cannot take."""
        k = self.prior_components
        if k is not None:
            if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
                raise ValueError(f"prior_components must be a positive integer (K >= 1), got {k!r}")
            if prior_cls.default_components is None:
                raise ValueError(f"prior {self.prior!r} has no components; prior_components must be "
                                 f"left unset (None), got {k!r}")
            object.__setattr__(self, "prior_components", int(k))
        else:
            object.__setattr__(self, "prior_components", prior_cls.default_components)
        if self.prior_init not in prior_cls.init_schemes:
            raise ValueError(f"prior_init {self.prior_init!r} is not available for prior "
                             f"{self.prior!r}; available: {', '.join(prior_cls.init_schemes)}")

    @property
    def data_dim(self) -> int:
        size = 1
        for s in self.data_shape:
            size *= s
        return size

    @property
    def activations(self) -> tuple[str, ...]:
        """One activation per hidden layer."""
        if isinstance(self.activation, str):
            return (self.activation,) * len(self.hidden)
        if len(self.activation) != len(self.hidden):
            raise ValueError(f"{len(self.activation)} activations given for "
                             f"{len(self.hidden)} hidden layers {self.hidden}")
        return self.activation

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "VAEConfig":
        raw = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"unknown config fields {sorted(unknown)}")
        return cls(**raw)


def _positive_ints(values, name: str, allow_empty: bool = False) -> tuple[int, ...]:
    try:
        out = tuple(int(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a sequence of positive integers, got {values!r}") from None
    if any(v < 1 for v in out) or (not out and not allow_empty):
        raise ValueError(f"{name} must be a sequence of positive integers, got {values!r}")
    return out
