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

from .adam import ADAM_UPDATE, adam_update
from .bernoulli import bernoulli_nll
from .continuous_bernoulli import continuous_bernoulli_nll
from .discretized_logistic import discretized_logistic_nll
from .gaussian_likelihood import gaussian_likelihood_nll
from .free_bits import free_bits_kl
from .gaussian_real import gaussian_real_nll
from .laplace import laplace_nll
from .grad_clip import grad_clip_scale, grad_norm_partials
from .gaussian_posterior import (gaussian_posterior_backward, gaussian_posterior_forward,
                                 gaussian_posterior_kl_per_dimension,
                                 gaussian_posterior_kl_per_dimension_backward,
                                 gaussian_posterior_log_q, gaussian_posterior_sample,
                                 gaussian_posterior_weighted_backward)
from .importance import (importance_noise, iwae_weights, log_mean_exp_accumulate,
                         log_mean_exp_finish, repeat_rows, scale_rows, sum_row_groups)
from .linear import linear_backward, linear_forward, linear_workspace
from .mixture_prior import (mixture_prior_backward_params, mixture_prior_backward_z,
                            mixture_prior_forward)
from .normal import normal_fill, normal_prior_sample
from .objective_weights import monte_carlo_kl, monte_carlo_kl_weights, negated, scaled_by
from .schedule import schedule_step
from .step import end_step, gather_rows, step_terms
from .vamp_prior import vamp_pseudo_inputs_backward, vamp_pseudo_inputs_forward

__all__ = ["ADAM_UPDATE", "adam_update", "continuous_bernoulli_nll", "discretized_logistic_nll",
           "gaussian_real_nll", "laplace_nll", "bernoulli_nll", "end_step", "gather_rows",
           "gaussian_likelihood_nll", "gaussian_posterior_backward", "gaussian_posterior_forward",
           "gaussian_posterior_kl_per_dimension", "gaussian_posterior_kl_per_dimension_backward",
           "gaussian_posterior_log_q", "gaussian_posterior_sample",
           "gaussian_posterior_weighted_backward", "free_bits_kl", "grad_clip_scale",
           "grad_norm_partials", "importance_noise",
           "iwae_weights", "log_mean_exp_accumulate", "log_mean_exp_finish", "repeat_rows",
           "scale_rows", "sum_row_groups", "linear_backward", "linear_forward", "linear_workspace",
           "mixture_prior_backward_params", "mixture_prior_backward_z", "mixture_prior_forward",
           "monte_carlo_kl", "monte_carlo_kl_weights", "negated", "normal_fill",
           "normal_prior_sample", "scaled_by", "schedule_step", "step_terms",
           "vamp_pseudo_inputs_backward", "vamp_pseudo_inputs_forward"]


def elementwise_specs() -> dict:
    """name -> every ElementwiseSpec defined at module level in cupyvae.cuda.ops."""
    from cupyvae.emulator.elementwise import ElementwiseSpec

    specs = {}
    for module_info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        specs.update({value.name: value for value in vars(module).values()
                      if isinstance(value, ElementwiseSpec)})
    return specs
