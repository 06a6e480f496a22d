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
from .base import Likelihood, ParamSpec, register_likelihood


def bernoulli_nll(logits: np.ndarray, x: np.ndarray, scale) -> tuple[np.ndarray, np.ndarray]:
    """Row negative log-likelihoods and their scaled gradient, in one pass.

    logits, x: (B, D).  Returns nll (B,) = sum_j softplus(l) - x*l and
    dlogits (B, D) = scale * (sigmoid(l) - x), where `scale` is the upstream
    gradient of the loss with respect to each row's nll (1/B for a batch mean).
    """
    e = np.exp(-np.abs(logits))                  # shared by the loss and the sigmoid
    nll = np.maximum(logits, 0)
    nll -= x * logits
    nll += np.log1p(e)
    dlogits = np.where(logits >= 0, 1, e)
    dlogits /= 1 + e                             # sigmoid(l), overflow-free
    dlogits -= x
    dlogits *= scale
    return nll.sum(axis=1), dlogits.astype(logits.dtype, copy=False)


def sigmoid(l: np.ndarray) -> np.ndarray:
    """Overflow-free logistic: exp is only ever taken of a non-positive number."""
    e = np.exp(-np.abs(l))
    return np.where(l >= 0, 1 / (1 + e), e / (1 + e)).astype(l.dtype, copy=False)


@register_likelihood("bernoulli")
class Bernoulli(Likelihood):
    """Independent Bernoulli pixels; data must lie in [0, 1]."""
    params = (ParamSpec("logits", "real"),)
    kernel = "bernoulli"
    discrete = True     # a mass function on {0, 1}: on grey levels a cross-entropy, not a likelihood

    def nll(self, raw, x, scale):
        return bernoulli_nll(raw, x, scale)

    def mean(self, raw):
        return sigmoid(raw)

    def sample(self, raw, u, eps):
        return (u < sigmoid(raw)).astype(raw.dtype)

    def validate_data(self, x, what="data"):
        require_unit_interval(x, what, "the bernoulli likelihood")


def require_unit_interval(x: np.ndarray, what: str, needed_by: str) -> None:
    problem = outside_problem(x, 0, 1)
    if problem:
        raise ValueError(f"{what} {problem} but {needed_by} needs [0, 1]; "
                         "scale it first (e.g. uint8 images / 255)")
