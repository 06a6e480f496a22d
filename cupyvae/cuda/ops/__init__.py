"""Launch builders, one per kernel entry and named after it; one module per kernel file.

Each builder takes the same leading arguments as its NumPy twin plus preallocated outputs,
checks shapes/dtypes/contiguity (ValueError naming the shapes), converts every scalar to
the exact NumPy type the kernel expects, picks grid and block, and returns a Launch
(cupyvae.cuda.launch) -- or, for purely elementwise work, an ElementwiseLaunch of a
module-level ElementwiseSpec (elementwise_specs() lists them all, for the compile checks).
Arrays are all NumPy (emulated) or all CuPy (cuda).
"""
import importlib
import pkgutil

from .adam import adam_update
from .bernoulli import bernoulli_nll
from .gaussian_likelihood import gaussian_likelihood_nll
from .gaussian_posterior import (gaussian_posterior_backward, gaussian_posterior_forward,
                                 gaussian_posterior_sample)
from .linear import linear_backward, linear_forward, linear_workspace
from .normal import normal_fill, normal_prior_sample
from .step import end_step, gather_rows, start_epoch

__all__ = ["adam_update", "bernoulli_nll", "end_step", "gather_rows",
           "gaussian_likelihood_nll", "gaussian_posterior_backward", "gaussian_posterior_forward",
           "gaussian_posterior_sample",
           "linear_backward", "linear_forward", "linear_workspace", "normal_fill",
           "normal_prior_sample",
           "start_epoch"]


def elementwise_specs() -> dict:
    """name -> every ElementwiseSpec defined at module level in cupyvae.cuda.ops."""
    from cupyvae.emulator.elementwise import ElementwiseSpec

    specs = {}
    for module_info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        specs.update({value.name: value for value in vars(module).values()
                      if isinstance(value, ElementwiseSpec)})
    return specs
