"""Overflow- and cancellation-free building blocks shared by the likelihoods' NumPy math.

Each is the NumPy twin of a device function in kernels/stable_math.cuh and keeps the
dtype of its input (float32 in training, float64 in the finite-difference tests).

    softplus(v)   = log(1 + e^v) = max(v, 0) + log1p(exp(-|v|))     exp only of -|v| <= 0
    soft_bound(r) = S tanh(r / S), with d/dr = sech^2(r / S) = 4 e2 / (1 + e2)^2,
                    e2 = exp(-2 |r / S|) <= 1: no 1 - tanh^2 cancellation as tanh saturates
                    (the derivative is ~1e-8 at |r| = 10 S, not 0, and exactly 0 only once
                    e2 underflows).  A smooth bound on a log-scale or log-variance: the scale
                    can neither collapse to 0 (which sends a density to +inf on data with
                    repeated values) nor blow up, and unlike a hard clip its gradient never
                    vanishes, so no unit gets stuck at the bound.
"""
from __future__ import annotations

import numpy as np


def softplus(v: np.ndarray) -> np.ndarray:
    return np.maximum(v, 0) + np.log1p(np.exp(-np.abs(v)))


def soft_bound(raw: np.ndarray, bound: float) -> tuple[np.ndarray, np.ndarray]:
    """(bound * tanh(raw / bound), its derivative sech^2(raw / bound)), same dtype as raw."""
    y = raw / raw.dtype.type(bound)
    e2 = np.exp(-2 * np.abs(y))
    return raw.dtype.type(bound) * np.tanh(y), 4 * e2 / ((1 + e2) * (1 + e2))
