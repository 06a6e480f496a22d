"""The one description of a model: a frozen dataclass, written next to every checkpoint.

Its fields are validated options (cupyvae.options): the CLI's model flags (`--latent-dim`,
`--hidden`, ...) are generated from them, and a hand-edited config.json is checked by the
same rules.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from .distributions import LIKELIHOODS, POSTERIORS, PRIORS
from .files import parse_json
from .initialization import DEFAULT_INITIALIZATION, INITIALIZATIONS
from .layers import ACTIVATIONS
from .options import (Check, CommaList, OptionError, ValidatedOptions, integer_at_least, one_of, option, optional,
                      positive_int, registered)


def _positive_ints(values) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ValueError("must be a list of positive integers")
    try:
        return tuple(positive_int.accept(v) for v in values)
    except ValueError:
        raise ValueError("must be a list of positive integers") from None


def _activation(value) -> str | tuple[str, ...]:
    names = (value,) if isinstance(value, str) else tuple(value) if isinstance(value, (list, tuple)) else None
    if names is None or not names:
        raise ValueError("must be an activation name or a list of them, one per hidden layer")
    for name in names:
        if not isinstance(name, str):
            raise ValueError(f"{name!r} is not an activation name")
        ACTIVATIONS.get(name)   # an unknown name: the registry's message lists the known ones
    return value if isinstance(value, str) else names


_data_shape = Check("must be a non-empty list of positive integers",
                    lambda v: _nonempty(_positive_ints(v)))
_hidden = Check("must be a list of positive integers", _positive_ints,
                lambda: CommaList(int))
_activations = Check("must be an activation name or a list of them", _activation,
                     lambda: CommaList(str, single_as_scalar=True))


def _nonempty(values: tuple) -> tuple:
    if not values:
        raise ValueError("must be a non-empty list of positive integers")
    return values


@dataclass(frozen=True)
class VAEConfig(ValidatedOptions):
    owner = "model option"

    data_shape: tuple[int, ...] = option((), _data_shape, "Shape of one example.", cli=False)
    latent_dim: int = option(2, positive_int, "Latent dimensions.")
    hidden: tuple[int, ...] = option(
        (200,), _hidden, "Hidden layer widths of the encoder (the decoder mirrors them), "
        "comma-separated; 'none' for no hidden layer.")
    activation: str | tuple[str, ...] = option(
        "relu", _activations, "Hidden activation, or a comma list with one per hidden layer.")
    posterior: str = option("gaussian", registered(POSTERIORS), "Approximate posterior q(z|x).")
    likelihood: str = option("bernoulli", registered(LIKELIHOODS),
                             "Likelihood p(x|z); gaussian-real and laplace take any real data, "
                             "discretized-logistic 8-bit data (k/255), the others data in [0, 1].")
    prior: str = option("normal", registered(PRIORS), "Prior p(z).")
    seed: int = option(0, integer_at_least(0, 2 ** 64 - 1),
                       "Seeds the initialization and all training noise.")
    prior_components: int | None = option(
        None, optional(positive_int),
        "K, the mixture components (mog) or pseudo-inputs (vamp) of the prior [default: the "
        "prior's own: mog 10, vamp 500 as in Tomczak & Welling 2018].")
    prior_init: str = option(
        "random", one_of(("random", "data")),
        "How the prior's parameters start: random, or data (vamp: pseudo-inputs copied from K "
        "training examples by the first fit).")
    init: str = option(DEFAULT_INITIALIZATION, registered(INITIALIZATIONS),
                       "Layer initialization: pytorch (torch.nn.Linear: U(+-1/sqrt(fan_in)) "
                       "weights and biases; measured better, see cupyvae.initialization) or "
                       "glorot (Keras: Glorot-uniform weights, zero biases).")

    @classmethod
    def from_dict(cls, values: dict, where: str = ""):
        """As ValidatedOptions.from_dict; a config saved before `init` existed was initialised
        with glorot, the default then, so it reads as glorot (cupyvae.initialization)."""
        if isinstance(values, dict) and "init" not in values:
            values = {**values, "init": "glorot"}
        return super().from_dict(values, where)

    def __post_init__(self):
        super().__post_init__()
        self.activations   # one per hidden layer, or one for all
        self._validate_prior_options(PRIORS.get(self.prior))

    def _validate_prior_options(self, prior_cls) -> None:
        """Resolve prior_components to the prior's default and refuse what the prior cannot take."""
        k = self.prior_components
        if k is not None and prior_cls.default_components is None:
            raise OptionError("prior_components", k, f"{{prior}} {self.prior} has no components; "
                              "leave {prior_components} unset", self.owner)
        if k is None:
            object.__setattr__(self, "prior_components", prior_cls.default_components)
        if self.prior_init not in prior_cls.init_schemes:
            raise OptionError("prior_init", self.prior_init,
                              f"not available for {{prior}} {self.prior}; available: "
                              f"{', '.join(prior_cls.init_schemes)}", self.owner)

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
            raise OptionError("activation", self.activation,
                              f"{len(self.activation)} activations for {len(self.hidden)} hidden "
                              f"layers ({{hidden}} {','.join(map(str, self.hidden)) or 'none'}); "
                              "give one for all, or one per hidden layer", self.owner)
        return self.activation

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "VAEConfig":
        return cls.from_dict(parse_json(text), "model config")
