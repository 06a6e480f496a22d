"""cupyvae: variational autoencoders with hand-written CUDA kernels and a NumPy reference path."""
from .checkpoint import CheckpointError
from .config import VAEConfig
from .distributions import (Likelihood, Posterior, Prior, register_kl, register_likelihood,
                            register_posterior, register_prior)
from .model import VAE, TrainingDiverged, load
from .cuda import executor as _kernel_executors  # noqa: F401  (registers "cuda" and "emulated")

__version__ = "0.1.0"
__all__ = ["VAE", "VAEConfig", "load", "CheckpointError", "TrainingDiverged", "Likelihood",
           "Posterior", "Prior", "register_kl", "register_likelihood", "register_posterior",
           "register_prior"]
