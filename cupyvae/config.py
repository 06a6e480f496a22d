"""The one description of a model: a frozen dataclass, written next to every checkpoint."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

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
        POSTERIORS.get(self.posterior), LIKELIHOODS.get(self.likelihood), PRIORS.get(self.prior)

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
