"""The MLP layers of the NumPy reference path: y = act(x @ W + b), backward by hand.

For one layer with input x (B, I), weight W (I, O), bias b (O,) and output y (B, O):
    forward:  a = x @ W + b,  y = act(a)
    backward: da = dy * act'(a)          (act' is computed from y, so a is never stored)
              dW = x^T @ da,  db = sum_b da,  dx = da @ W^T
The derivative of each activation is written in terms of its output:
    relu:     y > 0
    tanh:     1 - y^2
    softplus: sigmoid(a) = 1 - exp(-y) = -expm1(-y)   (since exp(-y) = 1 / (1 + exp(a)))
Gradients are written with `=` into caller-provided views of the flat gradient buffer.
Kernel twin: kernels/linear.cu.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .registry import Registry


@dataclass(frozen=True)
class Activation:
    forward: Callable[[np.ndarray], np.ndarray]       # in place on the pre-activation
    derivative: Callable[[np.ndarray], np.ndarray]    # act'(a) from y = act(a)
    code: int                                         # the kernels' ACT_* constant


ACTIVATIONS: Registry[Activation] = Registry("activation")


def _relu(a):
    # Against a broadcast row of zeros np.maximum takes its vectorized loop (same values,
    # half the time of a Python scalar 0 at (100, 200) float32).
    return np.maximum(a, np.zeros(a.shape[-1:], a.dtype), out=a)


def _tanh(a):
    return np.tanh(a, out=a)


def _softplus(a):
    # log1p(exp(a)) overflows for a > 88 in float32; max(a,0) + log1p(exp(-|a|)) never does.
    return np.add(np.maximum(a, 0), np.log1p(np.exp(-np.abs(a))), out=a)


ACTIVATIONS.register("identity")(Activation(lambda a: a, lambda y: np.ones_like(y), 0))
ACTIVATIONS.register("relu")(Activation(_relu, lambda y: y > 0, 1))   # bool: multiplies without a cast pass
ACTIVATIONS.register("tanh")(Activation(_tanh, lambda y: 1 - y * y, 2))
ACTIVATIONS.register("softplus")(Activation(_softplus, lambda y: -np.expm1(-y), 3))


def linear_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, activation: str) -> np.ndarray:
    """y = act(x @ W + b)."""
    a = x @ w
    a += b
    return ACTIVATIONS.get(activation).forward(a)


def linear_backward(x: np.ndarray, w: np.ndarray, y: np.ndarray, dy: np.ndarray, activation: str,
                    dw: np.ndarray, db: np.ndarray, need_dx: bool = True) -> np.ndarray | None:
    """From dy (the gradient wrt the output y): writes dW and db (with `=`) and returns dx,
    or None when the caller needs no dx (the encoder's first layer: the data are not
    trained).  The math is the kernel-shaped twins' below, entered at da = dy * act'(y)."""
    da = dy if activation == "identity" else dy * ACTIVATIONS.get(activation).derivative(y)
    linear_backward_weight(x, da, dw, db)
    return linear_backward_input(da, w, x, "identity") if need_dx else None


# ---------------------------------------------------------------------------------------------
# Kernel-shaped twins of kernels/linear.cu (linear_forward is the twin of its forward kernel).
# The kernels take the gradient wrt the PRE-activation, da = dy * act'(y), and hand the
# previous layer its own pre-activation gradient, so a backward chain is
#     dx_pre = linear_backward_input(da, W, x, activation_x)
#     dW, db = linear_backward_weight(x, da)
# where x = act_x(a_prev) is this layer's input (the previous layer's output):
#     dx = da @ W^T  and  d a_prev = dx * act_x'(a_prev) = dx * act_x'-from-output(x).
# linear_backward above enters this chain from dy; any float dtype.
# ---------------------------------------------------------------------------------------------

def linear_backward_input(da: np.ndarray, w: np.ndarray, x: np.ndarray,
                          activation_x: str) -> np.ndarray:
    """dx_pre (B, I) = (da @ W^T) * act_x'(x): the previous layer's pre-activation gradient.

    da (B, O), w (I, O), x (B, I) = act_x(a_prev).  activation_x "identity" gives plain dx.
    """
    act = ACTIVATIONS.get(activation_x)  # unknown names raise, listing the registered ones
    dx = da @ w.T
    return dx if activation_x == "identity" else dx * act.derivative(x)


def linear_backward_weight(x: np.ndarray, da: np.ndarray, dw: np.ndarray | None = None,
                           db: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(dW (I, O), db (O,)) = (x^T @ da, column sums of da) for x (B, I), da (B, O);
    written with `=` into dw and db when given (the training path's flat gradient views)."""
    return np.matmul(x.T, da, out=dw), np.sum(da, axis=0, out=db)
# ------------------------------------------------------------- end of kernels/linear.cu twins
