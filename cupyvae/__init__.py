"""cupyvae: variational autoencoders with hand-written CUDA kernels and a NumPy reference path."""
from .checkpoint import CheckpointError
from .config import VAEConfig
from .distributions import (Likelihood, Posterior, Prior, register_kl, register_likelihood,
                            register_posterior, register_prior)
from .model import VAE, TrainingDiverged, load
from .training import TrainingOptions
from .cuda import executor as _kernel_executors  # noqa: F401  (registers "cuda" and "emulated")

__version__ = "0.1.0"
__all__ = ["VAE", "VAEConfig", "TrainingOptions", "load", "explore", "CheckpointError",
           "TrainingDiverged", "Likelihood", "Posterior", "Prior", "register_kl",
           "register_likelihood", "register_posterior", "register_prior"]


def explore(model, x=None, **options):
    """The latent explorer as an ipywidgets panel for a notebook (cupyvae.notebook.explore;
    needs the extra `cupyvae[notebook]`)."""
    from .notebook import explore as notebook_explore   # matplotlib and ipywidgets on demand
    return notebook_explore(model, x, **options)
