"""Bernoulli likelihood p(x|z) parameterized by logits, for binary or [0, 1] data.

Per element, with logit l and target x in [0, 1] (continuous targets give the usual
cross-entropy, as in Kingma & Welling's MNIST experiments):

    -log p(x | l) = softplus(l) - x*l = max(l, 0) - x*l + log1p(exp(-|l|))
    d/dl          = sigmoid(l) - x

The max/log1p form never overflows: for |l| = 50 exp(-|l|) underflows harmlessly to ~2e-22.
Kernel twin: kernels/bernoulli.cu (same arguments, same `=` convention).
"""
from __future__ import annotations

import numpy as np

from ..numbers import outside_problem
from .base import LIKELIHOODS, REAL, Likelihood, ParamSpec, register_likelihood


def bernoulli_nll(logits: np.ndarray, x: np.ndarray, scale) -> tuple[np.ndarray, np.ndarray]:
    """Row negative log-likelihoods and their scaled gradient, in one pass.

    logits, x: (B, D).  Returns nll (B,) = sum_j softplus(l) - x*l and
    dlogits (B, D) = scale * (sigmoid(l) - x), where `scale` is the upstream
    gradient of the loss with respect to each row's nll (1/B for a batch mean).
    """
    e = _exp_minus_abs(logits)                   # shared by the loss and the sigmoid
    nll = _nll_elements(logits, x, e)
    dlogits = _sigmoid_from(logits, e)
    dlogits -= x
    dlogits *= scale
    return nll.sum(axis=1), dlogits.astype(logits.dtype, copy=False)


def bernoulli_log_prob(logits: np.ndarray, x: np.ndarray) -> np.ndarray:
    """log p(x | logits) per row (B,): -bernoulli_nll(logits, x, 1)[0], value for value,
    without the gradient's passes (for evaluation)."""
    nll = _nll_elements(logits, x, _exp_minus_abs(logits)).sum(axis=1)
    return np.negative(nll, out=nll)


def sigmoid(l: np.ndarray) -> np.ndarray:
    """Overflow-free logistic: exp is only ever taken of a non-positive number."""
    return _sigmoid_from(l, _exp_minus_abs(l)).astype(l.dtype, copy=False)


# The helpers below compute the formulas above value for value, while avoiding NumPy's
# slow paths: np.where over a mask whose signs alternate unpredictably (as logits do)
# costs ~10 ns per element on x86 (a mispredicted branch each), and np.maximum against
# a Python scalar skips the vectorized loop that a broadcast array operand gets.

def _exp_minus_abs(l: np.ndarray) -> np.ndarray:
    """exp(-|l|), in one buffer."""
    e = np.abs(l)
    np.negative(e, out=e)
    return np.exp(e, out=e)


def _nll_elements(l: np.ndarray, x: np.ndarray, e: np.ndarray) -> np.ndarray:
    """max(l, 0) - x*l + log1p(e) per element, e = exp(-|l|)."""
    nll = np.maximum(l, np.zeros(l.shape[-1:], l.dtype))
    term = x * l
    nll -= term
    nll += np.log1p(e, out=term) if term.dtype == e.dtype else np.log1p(e)
    return nll


def _sigmoid_from(l: np.ndarray, e: np.ndarray) -> np.ndarray:
    """sigmoid(l) = where(l >= 0, 1, e) / (1 + e) from e = exp(-|l|); overwrites e.

    The numerator is max(e, [l >= 0]): 1 where l >= 0 (there e <= 1), e where l < 0,
    and NaN where l is NaN, as np.where gives, but without a data-dependent branch."""
    numerator = (l >= 0).astype(e.dtype)
    np.maximum(e, numerator, out=numerator)
    e += 1
    numerator /= e
    return numerator


@register_likelihood("bernoulli")
class Bernoulli(Likelihood):
    """Independent Bernoulli pixels; data must lie in [0, 1]."""
    params = (ParamSpec("logits", "real"),)
    kernel = "bernoulli"
    discrete = True     # a mass function on {0, 1}: on grey levels a cross-entropy, not a likelihood

    def nll(self, raw, x, scale):
        return bernoulli_nll(raw, x, scale)

    def log_prob(self, raw, x):
        return bernoulli_log_prob(raw, x)

    def mean(self, raw):
        return sigmoid(raw)

    def sample(self, raw, u, eps):
        return (u < sigmoid(raw)).astype(raw.dtype)

    def validate_data(self, x, what="data"):
        require_unit_interval(x, what, "the bernoulli likelihood")

    def log_likelihood_note(self, x):
        grey = int(np.count_nonzero((x != 0) & (x != 1)))
        if not grey:
            return None
        return (f"{grey} of the {x.size} data values lie strictly between 0 and 1, outside the "
                "support {0, 1} of the bernoulli likelihood's mass function: its log p(x) is a "
                "cross-entropy there, not the log-probability of the data (binarize the data, "
                "or choose a likelihood for grey levels: continuous-bernoulli, "
                "discretized-logistic)")


def require_unit_interval(x: np.ndarray, what: str, needed_by: str) -> None:
    """ValueError naming the values outside [0, 1], how to scale them, and the registered
    likelihoods that take real-valued data as they are."""
    problem = outside_problem(x, 0, 1)
    if problem:
        real = [name for name in LIKELIHOODS.names() if LIKELIHOODS.get(name).support == REAL]
        raise ValueError(f"{what} {problem} but {needed_by} needs [0, 1]; scale it first (e.g. "
                         f"uint8 images / 255), or choose a likelihood for real-valued data "
                         f"({' or '.join(real)})")
