"""Initialisation schemes for the MLP layers, chosen by name (VAEConfig.init).

Each scheme maps (rng, fan_in I, fan_out O) to a weight (I, O) and a bias (O,), drawn in
that order from the model's seeded generator (cupyvae.spec.ModelSpec.init_params):

    glorot    Keras's Dense default, the scheme of the original notebook (Glorot & Bengio
              2010, "Understanding the difficulty of training deep feedforward neural
              networks", eq. 16): W ~ U(-a, a), a = sqrt(6 / (I + O)); b = 0.
    pytorch   torch.nn.Linear.reset_parameters: kaiming_uniform_(W, a=sqrt(5)), i.e. gain
              sqrt(2 / (1 + 5)) and bound gain * sqrt(3 / I) = 1 / sqrt(I), so
              W ~ U(-1/sqrt(I), 1/sqrt(I)) and b ~ U(-1/sqrt(I), 1/sqrt(I))
              (torch/nn/modules/linear.py).

The default stays glorot until the comparison below is measured.
Measured (benchmarks/bench_objectives.py --part init, Fashion-MNIST 784-200-2, batch 100,
Adam 1e-3, validation negative ELBO, mean over seeds): [numbers for 5 and 50 epochs go
here once the lead has run the benchmark on a quiet machine; the default becomes the
scheme that is better at both].
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .registry import Registry

Scheme = Callable[[np.random.Generator, int, int], tuple[np.ndarray, np.ndarray]]
INITIALIZATIONS: Registry[Scheme] = Registry("initialization")
DEFAULT_INITIALIZATION = "glorot"


@INITIALIZATIONS.register("glorot")
def glorot_uniform(rng: np.random.Generator, fan_in: int, fan_out: int):
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, (fan_in, fan_out)), np.zeros(fan_out)


@INITIALIZATIONS.register("pytorch")
def pytorch_linear(rng: np.random.Generator, fan_in: int, fan_out: int):
    bound = 1.0 / np.sqrt(fan_in)
    weight = rng.uniform(-bound, bound, (fan_in, fan_out))
    return weight, rng.uniform(-bound, bound, fan_out)
