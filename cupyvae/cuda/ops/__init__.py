"""Launch builders, one per kernel entry and named after it; one module per kernel file.

Each builder takes the same leading arguments as its NumPy twin plus preallocated outputs,
checks shapes/dtypes/contiguity (ValueError naming the shapes), converts every scalar to
the exact NumPy type the kernel expects, picks grid and block, and returns a Launch
(cupyvae.cuda.launch), or an ElementwiseLaunch for an ElementwiseSpec.  Arrays are all
NumPy (emulated) or all CuPy (cuda).
"""
from .adam import ADAM_UPDATE, adam_update
from .bernoulli import bernoulli_nll
from .gaussian_likelihood import gaussian_likelihood_nll
from .gaussian_posterior import gaussian_posterior_backward, gaussian_posterior_forward
from .grad_clip import grad_clip_scale, grad_norm_partials
from .linear import linear_backward_input, linear_backward_weight, linear_forward
from .normal import normal_fill
from .schedule import schedule_step
from .step import advance_counters, batch_loss, gather_rows, start_epoch

__all__ = ["adam_update", "advance_counters", "batch_loss", "bernoulli_nll", "gather_rows",
           "gaussian_likelihood_nll", "gaussian_posterior_backward", "gaussian_posterior_forward",
           "grad_clip_scale", "grad_norm_partials", "linear_backward_input",
           "linear_backward_weight", "linear_forward", "normal_fill", "schedule_step",
           "start_epoch"]

# Every ElementwiseSpec the library launches (each is compiled by tests/test_nvrtc.py and run
# against its twin on the emulator).
ELEMENTWISE_SPECS = (ADAM_UPDATE,)
