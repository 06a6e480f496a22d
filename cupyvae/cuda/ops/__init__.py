"""Launch builders, one per kernel entry and named after it; one module per kernel file.

Each builder takes the same leading arguments as its NumPy twin plus preallocated outputs,
checks shapes/dtypes/contiguity (ValueError naming the shapes), converts every scalar to
the exact NumPy type the kernel expects, picks grid and block, and returns a Launch
(cupyvae.cuda.launch).  Arrays are all NumPy (emulated) or all CuPy (cuda).
"""
from .adam import adam_update
from .bernoulli import bernoulli_nll
from .continuous_bernoulli import continuous_bernoulli_nll
from .discretized_logistic import discretized_logistic_nll
from .gaussian_likelihood import gaussian_likelihood_nll
from .gaussian_posterior import gaussian_posterior_backward, gaussian_posterior_forward
from .gaussian_real import gaussian_real_nll
from .laplace import laplace_nll
from .linear import linear_backward_input, linear_backward_weight, linear_forward
from .normal import normal_fill
from .step import advance_counters, batch_loss, gather_rows, start_epoch

__all__ = ["adam_update", "advance_counters", "batch_loss", "bernoulli_nll",
           "continuous_bernoulli_nll", "discretized_logistic_nll", "gather_rows",
           "gaussian_likelihood_nll", "gaussian_posterior_backward", "gaussian_posterior_forward",
           "gaussian_real_nll", "laplace_nll", "linear_backward_input", "linear_backward_weight",
           "linear_forward", "normal_fill", "start_epoch"]
