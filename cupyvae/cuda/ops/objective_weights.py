"""The per-row weights and terms that tie a Monte-Carlo objective's pieces together on the
device: four ElementwiseSpecs (one source gives the cupy.ElementwiseKernel and its
emulator twin; NumPy twins: cupyvae.objective_twins, same names).

    monte_carlo_kl          kl[r]  = log_q[r] - log_p[r]
                            the one-sample KL estimate log q(z_r|x) - log p(z_r) (the ELBO
                            with a Monte-Carlo KL; IWAE's KL term for the metrics)
    monte_carlo_kl_weights  g_q[r] = scale * kl_weight[0],  g_p[r] = -g_q[r]
                            d loss / d log q(z_r) and d loss / d log p(z_r) of the loss
                            scale * sum_r (nll_r + beta (log q_r - log p_r)), with
                            beta = kl_weight[0] read on the device (a slot of `sched`)
    negated                 y[r] = -x[r]
                            IWAE: d loss / d log p(z_r) = -(the normalised weight of r)
    scaled_by               y[j] = x[j] * factor[0]
                            free bits: each active dimension's KL weight, beta active_j
Gradients: none (these are the gradients' coefficients).  Every output is written with `=`;
x, log_q, log_p, g_q, g_p, kl, y: float32 (R,) or (Z,), C-contiguous; kl_weight and
factor: (1,) float32 device scalars, so a schedule never changes the launch.
"""
from __future__ import annotations

from cupyvae.emulator.elementwise import ElementwiseSpec

from ..launch import ElementwiseLaunch
from ._checks import (float32_scalar, require_device_scalar, require_float32_contiguous,
                      require_int32_dims, require_same_array_kind)

MONTE_CARLO_KL = ElementwiseSpec("float32 log_q, float32 log_p", "float32 kl",
                                 "kl = log_q - log_p", "monte_carlo_kl")
MONTE_CARLO_KL_WEIGHTS = ElementwiseSpec("raw float32 kl_weight, float32 scale",
                                         "float32 g_q, float32 g_p",
                                         "g_q = scale * kl_weight[0]; g_p = -g_q",
                                         "monte_carlo_kl_weights")
NEGATED = ElementwiseSpec("float32 x", "float32 y", "y = -x", "negated")
SCALED_BY = ElementwiseSpec("float32 x, raw float32 factor", "float32 y", "y = x * factor[0]",
                            "scaled_by")


def monte_carlo_kl(log_q, log_p, kl) -> ElementwiseLaunch:
    """kl (R,) = log_q - log_p, `=`."""
    _require_vectors(log_q=log_q, log_p=log_p, kl=kl)
    return ElementwiseLaunch(MONTE_CARLO_KL, (log_q, log_p, kl))


def monte_carlo_kl_weights(kl_weight, scale, g_q, g_p) -> ElementwiseLaunch:
    """g_q (R,) = scale * kl_weight[0] and g_p = -g_q, `=`."""
    require_device_scalar("kl_weight", kl_weight)
    _require_vectors(g_q=g_q, g_p=g_p)
    require_same_array_kind(kl_weight, g_q)
    return ElementwiseLaunch(MONTE_CARLO_KL_WEIGHTS,
                             (kl_weight, float32_scalar("scale", scale), g_q, g_p))


def negated(x, y) -> ElementwiseLaunch:
    """y = -x, `=`."""
    _require_vectors(x=x, y=y)
    return ElementwiseLaunch(NEGATED, (x, y))


def scaled_by(x, factor, y) -> ElementwiseLaunch:
    """y = x * factor[0], `=`; factor: a (1,) float32 device scalar."""
    require_device_scalar("factor", factor)
    _require_vectors(x=x, y=y)
    require_same_array_kind(x, factor)
    return ElementwiseLaunch(SCALED_BY, (x, factor, y))


def _require_vectors(**arrays) -> None:
    """Equal (n,) float32 vectors, n >= 1 (an elementwise launch needs an element)."""
    require_float32_contiguous(**arrays)
    require_same_array_kind(*arrays.values())
    shapes = {name: array.shape for name, array in arrays.items()}
    first = next(iter(arrays.values())).shape
    if len(first) != 1 or first[0] < 1 or any(shape != first for shape in shapes.values()):
        raise ValueError(f"{', '.join(arrays)} must all have the same shape (n,) with n >= 1, "
                         f"got {shapes}")
    require_int32_dims(first)
