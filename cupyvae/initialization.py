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

The default is pytorch, the scheme that measured better at 5 and at 50 epochs
(benchmarks/bench_objectives.py --part init --init-epochs 5,50 --seeds 3, Fashion-MNIST
grey levels, 784-200-2 ReLU, Bernoulli, batch 100, Adam 1e-3, validation (test split)
negative ELBO in nats per example, mean [min, max] over seeds 0-2; 2026-11-30, results in
benchmarks/results/objectives.json):

    scheme     5 epochs                  50 epochs
    glorot     271.20 [271.04, 271.41]   262.51 [262.42, 262.58]
    pytorch    268.67 [268.20, 269.07]   261.58 [261.45, 261.74]

The gap shrinks with training (2.5 nats after 5 epochs, 0.9 after 50) but the ranges do not
overlap at either point.  Configs saved before `init` existed were initialised with glorot,
the default then, and read as glorot (VAEConfig.from_dict).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .registry import Registry

Scheme = Callable[[np.random.Generator, int, int], tuple[np.ndarray, np.ndarray]]
INITIALIZATIONS: Registry[Scheme] = Registry("initialization")
DEFAULT_INITIALIZATION = "pytorch"


@INITIALIZATIONS.register("glorot")
def glorot_uniform(rng: np.random.Generator, fan_in: int, fan_out: int):
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, (fan_in, fan_out)), np.zeros(fan_out)


@INITIALIZATIONS.register("pytorch")
def pytorch_linear(rng: np.random.Generator, fan_in: int, fan_out: int):
    bound = 1.0 / np.sqrt(fan_in)
    weight = rng.uniform(-bound, bound, (fan_in, fan_out))
    return weight, rng.uniform(-bound, bound, fan_out)
