"""Adam on the flat parameter buffer (NumPy reference; kernel twin: kernels/adam.cu).

With gradient g, step t = 1, 2, ... and L2 weight decay wd (added to the gradient, as in
the original Adam and torch.optim.Adam, so the PyTorch baseline matches):
    g  = g + wd * p
    m  = b1 m + (1 - b1) g
    v  = b2 v + (1 - b2) g^2
    p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Adam:
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    step_count: int = 0
    m: np.ndarray | None = field(default=None, repr=False)
    v: np.ndarray | None = field(default=None, repr=False)
    _scratch: tuple | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        for name in ("lr", "beta1", "beta2", "eps", "weight_decay"):
            if not math.isfinite(getattr(self, name)):   # nan passes every comparison below
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise ValueError(f"learning rate must be positive, got {self.lr}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must lie in [0, 1), got {getattr(self, name)}")
        if not self.eps > 0:
            raise ValueError(f"eps must be positive (it keeps m / (sqrt(v) + eps) finite), got {self.eps}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")

    def step(self, p: np.ndarray, g: np.ndarray) -> None:
        """Update p in place from g; g is left untouched."""
        if self.m is None:
            self.m, self.v = np.zeros_like(p), np.zeros_like(p)
        if self._scratch is None:
            self._scratch = (np.empty_like(p), np.empty_like(p))
        self.step_count += 1
        t = self.step_count
        m, v = self.m, self.v
        s, u = self._scratch
        if self.weight_decay:
            g = np.add(np.multiply(p, self.weight_decay, out=u), g, out=u)
        m *= self.beta1
        m += np.multiply(g, 1 - self.beta1, out=s)
        v *= self.beta2
        np.multiply(g, g, out=s)
        v += np.multiply(s, 1 - self.beta2, out=s)
        # Fold both bias corrections into one step size and eps, saving two passes:
        # lr*mhat/(sqrt(vhat)+eps) = (lr*sqrt(c2)/c1) * m / (sqrt(v) + eps*sqrt(c2)).
        c1, c2 = 1 - self.beta1 ** t, 1 - self.beta2 ** t
        denom = np.sqrt(v, out=s)
        denom += self.eps * c2 ** 0.5
        np.divide(m, denom, out=denom)
        denom *= self.lr * c2 ** 0.5 / c1
        p -= denom

    def state(self) -> dict:
        return {"lr": self.lr, "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps,
                "weight_decay": self.weight_decay, "step_count": self.step_count}

    def snapshot(self) -> tuple:
        """Everything step() changes, to undo an epoch that diverged."""
        copy = None if self.m is None else (self.m.copy(), self.v.copy())
        return self.step_count, copy

    def restore(self, snapshot: tuple) -> None:
        self.step_count, moments = snapshot
        if moments is not None:
            self.m[:], self.v[:] = moments


# ---------------------------------------------------------------------------------------
# Kernel-shaped twin of kernels/adam.cu: the same arguments as the kernel (the step count
# read from a uint32 `counters` array), float32 arithmetic in the kernel's order.
# ---------------------------------------------------------------------------------------

def adam_update(p: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray,
                counters: np.ndarray, lr, beta1, beta2, eps, weight_decay) -> None:
    """One Adam step with t = counters[0] + 1; updates p, m, v in place, g untouched.

    Like the kernel, every scalar is a float32 (so beta2 = 0.999 is really 0.99900001),
    and the bias corrections c = 1 - b^t are those of the float32 betas, here computed
    in float64 and rounded (the kernel gets them to a few float32 ulp).  Adam.step takes
    c1, c2 from the float64 betas but scales v's increment by float32(1 - 0.999): its v
    differs from this one by 1.3e-5 relative for beta2 = 0.999 while v / c2, and so the
    update, agree to rounding; for betas exact in float32 everything agrees to rounding.
    """
    t = int(counters[0]) + 1
    b1, b2 = np.float32(beta1), np.float32(beta2)
    c1 = 1.0 - float(b1) ** t
    sqrt_c2 = (1.0 - float(b2) ** t) ** 0.5
    step_size = np.float32(np.float32(lr) * sqrt_c2 / c1)
    eps_hat = np.float32(np.float32(eps) * sqrt_c2)
    one = np.float32(1.0)
    g = g + np.float32(weight_decay) * p
    m *= b1
    m += (one - b1) * g
    v *= b2
    v += (one - b2) * (g * g)
    p -= step_size * (m / (np.sqrt(v) + eps_hat))
