"""Adam and gradient clipping on the flat buffers: the NumPy reference, and the twin of the
kernels (kernels/adam.cuh as an ElementwiseKernel, kernels/grad_clip.cu) bit for bit.

Adam (Kingma & Ba 2015) with gradient g, step t = 1, 2, ... and L2 weight decay wd added to
the gradient (as in the original Adam and torch.optim.Adam, so the PyTorch baseline matches):
    g  = g + wd * p
    m  = b1 m + (1 - b1) g
    v  = b2 v + (1 - b2) g^2
    p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
computed, with c1 = 1 - b1^t and c2 = 1 - b2^t folded into two scalars, as
    p -= step_size * m / (sqrt(v) + eps_hat),  step_size = lr sqrt(c2) / c1,  eps_hat = eps sqrt(c2)
(one division per element, no per-element sqrt(c2); the identity multiplies the numerator
and the denominator by sqrt(c2)).  lr, step_size, eps_hat, the float32 betas and the KL
weight of each step come from cupyvae.schedules.schedule_step, the twin of the kernel that
computes them on the device from the step counter.

The moments m and v are buffers of the executor, like the parameters (they stay on the
device between epochs on the kernel path); `Adam` holds the constants and the step count.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .schedules import (HYPER_CLIP_NORM, SCHED_BETA1, SCHED_BETA2, SCHED_CLIP_SCALE,
                        SCHED_EPS_HAT, SCHED_GRAD_NORM, SCHED_ONE_MINUS_BETA1,
                        SCHED_ONE_MINUS_BETA2, SCHED_STEP_SIZE, SCHED_WEIGHT_DECAY)

# Flush thresholds of the moments (kernels/adam.cuh ADAM_M_FLUSH / ADAM_V_FLUSH); see
# adam_update for why they change no result.
M_FLUSH = np.float32(1e-30)
V_FLUSH = np.float32(1e-36)


@dataclass
class Adam:
    """Adam's constants and the number of updates done so far (`step_count`, which also keys
    each step's noise).  `lr` and `weight_decay` mirror the training options of the latest
    fit call; the per-step values come from the schedules (cupyvae.schedules)."""
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    step_count: int = 0

    def __post_init__(self):
        for name in ("lr", "beta1", "beta2", "eps", "weight_decay"):
            if not math.isfinite(getattr(self, name)):   # nan passes every comparison below
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise ValueError(f"learning rate must be positive, got {self.lr}")
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if not 0 <= value < 1 or not 0 <= np.float32(value) < 1:
                raise ValueError(f"{name} must lie in [0, 1) (also as a float32), got {value}")
        if not self.eps > 0 or not np.float32(self.eps) > 0:
            # eps = 0 divides 0 by 0 wherever a gradient has always been 0 (m = v = 0).
            raise ValueError(f"eps must be positive, also as a float32 (it keeps "
                             f"m / (sqrt(v) + eps) finite), got {self.eps}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")

    def state(self) -> dict:
        return {"lr": self.lr, "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps,
                "weight_decay": self.weight_decay, "step_count": self.step_count}


@dataclass
class AdamScratch:
    """Preallocated temporaries of adam_update for buffers of n elements."""
    s: np.ndarray
    u: np.ndarray
    mask: np.ndarray

    @classmethod
    def of_size(cls, n: int) -> "AdamScratch":
        return cls(np.empty(n, np.float32), np.empty(n, np.float32), np.empty(n, np.bool_))


def adam_update(p: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray, sched: np.ndarray,
                scratch: AdamScratch | None = None) -> None:
    """One Adam step on the flat float32 buffers p, m, v (in place) from g (untouched), with
    this step's values `sched` (float32 (SCHED_SIZE,), cupyvae.schedules).  The reference the
    NumPy executor trains with, and the twin of the adam_update ElementwiseKernel
    (kernels/adam.cuh): the same float32 operations in the same order, each rounded once, so
    the two agree bit for bit.  `scratch` (AdamScratch) avoids allocating per step.

        g = g * clip_scale (skipped when the scale is 1: the kernel's product by 1 is exact)
              + wd p       (only when wd != 0, in the kernel too)
        m = b1 m + (1 - b1) g;      m = 0 where |m| < M_FLUSH = 1e-30
        v = b2 v + (1 - b2) g * g;  v = 0 where  v  < V_FLUSH = 1e-36
        p = p - step_size * (m / (sqrt(v) + eps_hat))

    Why flush.  Where a gradient is exactly 0 for many steps (encoder weights of pixels that
    are 0 in nearly every image), m decays as b1^k into float32's subnormal range (below
    1.18e-38), where CPU arithmetic is ~60x slower per element.  Measured with
    benchmarks/adam_subnormals.py (784-200-2 on Fashion-MNIST, batch 100): without the flush
    56k of the 316k entries of m were subnormal after 6 epochs, 63k after 10.  v decays as
    b2^k, far more slowly: none of v was below 1e-30 after 10 epochs, but the smallest (1.7e-21)
    would reach the subnormal range after ~40,000 more zero-gradient steps (~66 epochs), so v
    is flushed as well, for long runs.  With the flush neither holds a subnormal.
    Why the flushes change no result (no gradient enters these bounds):
      m: with |m| < T = 1e-30 at the flush, the update that m would still cause is, at every
         later step k >= 0, step_size |m| b1^k / (sqrt(v) + eps_hat) <= lr |m| b1^k / (c1 eps);
         c1 >= 1 - b1, so in all it is below lr T / ((1 - b1)^2 eps) = 1e-23 for lr = 1e-3,
         b1 = 0.9, eps = 1e-8 (new gradients add to m linearly, so the residual's own share
         is this bound whatever they are).  A weight of magnitude w has a float32 spacing of
         6e-8 w, so the flush cannot move any weight larger than ~1e-15 in magnitude by even
         one rounding step.
      v: v enters only through sqrt(v) + eps_hat, and eps_hat = eps sqrt(c2) >= eps
         sqrt(1 - b2) = 3.2e-10.  With v < 1e-36, sqrt(v) < 1e-18 < 2^-25 eps_hat (half an
         ulp), so fl(sqrt(v) + eps_hat) = eps_hat exactly: flushing v changes no bit of the
         update (for eps >= ~1e-9 at b2 = 0.999), and the residual b2^k v stays below half an
         ulp of every later v it is added to once (1 - b2) g^2 is that large.
    """
    n = p.shape[0]
    scratch = scratch or AdamScratch.of_size(n)
    s, u, mask = scratch.s[:n], scratch.u[:n], scratch.mask[:n]
    clip_scale, weight_decay = sched[SCHED_CLIP_SCALE], sched[SCHED_WEIGHT_DECAY]
    if clip_scale != 1:
        g = np.multiply(g, clip_scale, out=u)
        if weight_decay != 0:
            g += np.multiply(p, weight_decay, out=s)
    elif weight_decay != 0:
        g = np.add(np.multiply(p, weight_decay, out=u), g, out=u)
    m *= sched[SCHED_BETA1]
    m += np.multiply(g, sched[SCHED_ONE_MINUS_BETA1], out=s)
    np.less(np.abs(m, out=s), M_FLUSH, out=mask)
    np.copyto(m, 0, where=mask)
    v *= sched[SCHED_BETA2]
    np.multiply(g, g, out=s)
    v += np.multiply(s, sched[SCHED_ONE_MINUS_BETA2], out=s)
    np.less(v, V_FLUSH, out=mask)
    np.copyto(v, 0, where=mask)
    denom = np.sqrt(v, out=s)
    denom += sched[SCHED_EPS_HAT]
    np.divide(m, denom, out=denom)
    denom *= sched[SCHED_STEP_SIZE]
    p -= denom


# ---------------------------------------------------------------------------------------
# Gradient clipping by global norm (twins of kernels/grad_clip.cu): the same blocked
# summation trees in float64, so the same bits.
# ---------------------------------------------------------------------------------------

GRAD_NORM_BLOCK = 256          # threads per block of grad_norm_partials
GRAD_NORM_MAX_BLOCKS = 1024    # more blocks add nothing once the GPU is full; threads loop
GRAD_CLIP_BLOCK = 256          # threads of the one block of grad_clip_scale
WARP_SIZE = 32


def grad_norm_blocks(n: int) -> int:
    """Blocks of grad_norm_partials for a buffer of n elements (the length of `partials`)."""
    return min(max(-(-n // GRAD_NORM_BLOCK), 1), GRAD_NORM_MAX_BLOCKS)


def block_sum_twin(values: np.ndarray) -> np.ndarray:
    """reduce_block_sum of kernels/reduce.cuh over the last axis (one value per thread of a
    block, a multiple of 32 threads): each warp's shuffle tree, then the tree over the warp
    totals padded with zeros to 32 lanes.  In values' dtype, each addition rounded once."""
    threads = values.shape[-1]
    if threads % WARP_SIZE:
        raise ValueError(f"blocks hold whole warps; got {threads} threads")
    warps = values.reshape(*values.shape[:-1], threads // WARP_SIZE, WARP_SIZE)
    totals = np.zeros((*values.shape[:-1], WARP_SIZE), values.dtype)
    totals[..., :threads // WARP_SIZE] = _warp_tree(warps)
    return _warp_tree(totals)


def _warp_tree(lanes: np.ndarray) -> np.ndarray:
    """Lane 0 of reduce_warp_sum: value += shfl_down(value, o) for o = 16, 8, 4, 2, 1."""
    offset = WARP_SIZE // 2
    while offset:
        lanes = lanes[..., :offset] + lanes[..., offset:2 * offset]
        offset //= 2
    return lanes[..., 0]


def grad_norm_partials(g: np.ndarray, partials: np.ndarray) -> np.ndarray:
    """partials[b] (float64, (blocks,)) = block b's sum of g[i]^2 over the grid-stride
    elements of its threads; len(partials) is the grid (grad_norm_blocks(len(g)))."""
    blocks = partials.shape[0]
    stride = blocks * GRAD_NORM_BLOCK
    squares = np.zeros(-(-g.shape[0] // stride) * stride)
    np.square(g, out=squares[:g.shape[0]], dtype=np.float64)   # exact: float32 squared fits
    per_thread = np.zeros(stride)
    for row in squares.reshape(-1, stride):     # each thread adds its elements in index order
        per_thread += row
    partials[:] = block_sum_twin(per_thread.reshape(blocks, GRAD_NORM_BLOCK))
    return partials


def grad_clip_scale(partials: np.ndarray, hyper: np.ndarray, sched: np.ndarray) -> np.ndarray:
    """norm = sqrt(sum partials); sched[SCHED_CLIP_SCALE] = c / norm if norm > c else 1 and
    sched[SCHED_GRAD_NORM] = norm, with c = hyper[HYPER_CLIP_NORM] (in place; returns sched).
    A NaN norm leaves the scale at 1, so a NaN gradient is not hidden."""
    per_thread = np.zeros(GRAD_CLIP_BLOCK)
    for start in range(0, partials.shape[0], GRAD_CLIP_BLOCK):
        chunk = partials[start:start + GRAD_CLIP_BLOCK]
        per_thread[:chunk.shape[0]] += chunk
    norm = math.sqrt(float(block_sum_twin(per_thread)))
    bound = float(hyper[HYPER_CLIP_NORM])
    sched[SCHED_CLIP_SCALE] = bound / norm if norm > bound else 1.0
    sched[SCHED_GRAD_NORM] = norm
    return sched
