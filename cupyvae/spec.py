"""The model description every executor works from: layers, distributions, buffer layout.

Built once from a VAEConfig.  The encoder maps x (B, D) through the hidden layers to the
posterior's raw parameters (B, k_q*Z); the decoder mirrors the hidden widths and maps
z (B, Z) to the likelihood's raw parameters (B, k_p*D).  Output layers are linear.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import VAEConfig
from .distributions import KL_PAIRS, KL_PER_DIMENSION, LIKELIHOODS, POSTERIORS, PRIORS, kl_key
from .initialization import INITIALIZATIONS
from .params import ParamLayout


@dataclass(frozen=True)
class LayerSpec:
    name: str          # "encoder.0": parameters are "<name>.weight" (I, O) and "<name>.bias" (O,)
    n_in: int
    n_out: int
    activation: str


class ModelSpec:
    def __init__(self, config: VAEConfig):
        self.config = config
        z_dim, d_dim = config.latent_dim, config.data_dim
        self.posterior = POSTERIORS.get(config.posterior)(z_dim)
        self.likelihood = LIKELIHOODS.get(config.likelihood)(d_dim)
        self.prior = PRIORS.get(config.prior).from_config(config)
        acts = config.activations
        self.encoder = _mlp("encoder", [d_dim, *config.hidden, self.posterior.raw_width], acts)
        self.decoder = _mlp("decoder", [z_dim, *reversed(config.hidden), self.likelihood.raw_width],
                            tuple(reversed(acts)))
        key = kl_key(config.posterior, config.prior)
        # Closed form where the pair registered one; a one-sample Monte-Carlo estimate otherwise.
        self.analytic_kl = KL_PAIRS.get(key) if key in KL_PAIRS else None
        # The same KL per latent dimension, where it factorises (free bits needs it).
        self.kl_per_dimension = KL_PER_DIMENSION.get(key) if key in KL_PER_DIMENSION else None
        if self.analytic_kl is None and not self.posterior.reparameterizable:
            raise ValueError(f"posterior {config.posterior!r} is not reparameterizable and has no "
                             f"analytic KL to prior {config.prior!r}")
        shapes = {}
        for layer in self.encoder + self.decoder:
            shapes[f"{layer.name}.weight"] = (layer.n_in, layer.n_out)
            shapes[f"{layer.name}.bias"] = (layer.n_out,)
        for name, shape in self.prior.param_shapes().items():
            shapes[f"prior.{name}"] = shape
        self.layout = ParamLayout.from_shapes(shapes)

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    @property
    def data_dim(self) -> int:
        return self.config.data_dim

    def prior_params(self, params: dict) -> dict:
        return {k[len("prior."):]: v for k, v in params.items() if k.startswith("prior.")}

    def init_params(self, flat: np.ndarray) -> None:
        """Every layer by the config's scheme (cupyvae.initialization), then the prior's own
        init; seeded by config.seed."""
        rng = np.random.default_rng(self.config.seed)
        scheme = INITIALIZATIONS.get(self.config.init)
        params = self.layout.views(flat)
        flat[:] = 0
        for layer in self.encoder + self.decoder:
            weight, bias = scheme(rng, layer.n_in, layer.n_out)
            params[f"{layer.name}.weight"][:] = weight
            params[f"{layer.name}.bias"][:] = bias
        for name, value in self.prior.init_params(rng).items():
            params[f"prior.{name}"][:] = value


def _mlp(prefix: str, widths: list[int], hidden_acts: tuple[str, ...]) -> tuple[LayerSpec, ...]:
    acts = (*hidden_acts, "identity")
    return tuple(LayerSpec(f"{prefix}.{i}", widths[i], widths[i + 1], acts[i])
                 for i in range(len(widths) - 1))
