"""The distribution plug-ins.  Importing this package registers every built-in one."""
from .base import (KL_PAIRS, KL_PER_DIMENSION, LIKELIHOODS, POSTERIORS, PRIORS, Likelihood,
                   ParamSpec, Posterior, Prior, PriorState, bits_per_dim, kl_key, register_kl,
                   register_kl_per_dimension, register_likelihood, register_posterior, register_prior)
from . import bernoulli, gaussian, mixture, vamp  # noqa: F401  (registration side effects)
from . import continuous_bernoulli, discretized_logistic, gaussian_real, laplace  # noqa: F401

__all__ = ["KL_PAIRS", "KL_PER_DIMENSION", "LIKELIHOODS", "POSTERIORS", "PRIORS", "Likelihood",
           "ParamSpec", "Posterior", "Prior", "PriorState", "bits_per_dim", "kl_key",
           "register_kl", "register_kl_per_dimension", "register_likelihood",
           "register_posterior", "register_prior"]
