"""Executors: what turns the model description into work on one kind of device.

Every executor owns the flat parameter buffer on its device and offers the same
operations, so cupyvae.VAE never asks which device it runs on.  "cpu" is the NumPy
reference path (executors/'cpu' below); the kernel executors register "cuda" and
"emulated" the same way.
"""
from __future__ import annotations

import sys
from typing import Callable

import numpy as np

from . import philox
from .optim import Adam
from .reference import decode_raw, encode_raw, negative_elbo_and_grads, negative_elbo_rows
from .registry import Registry
from .spec import ModelSpec

EXECUTORS: Registry[type] = Registry("device")


@EXECUTORS.register("cpu")
class NumpyExecutor:
    """The NumPy reference path; the default wherever no GPU is present."""

    def __init__(self, spec: ModelSpec, execution: str | None = None):
        if execution not in (None, "eager"):
            raise ValueError(f"execution {execution!r}: the NumPy path runs eagerly only; graph "
                             "execution needs device 'cuda' (or 'emulated' to test it)")
        self.spec = spec
        self.flat = spec.layout.zeros()
        self.grad_flat = spec.layout.zeros()
        self.params = spec.layout.views(self.flat)
        self.grads = spec.layout.views(self.grad_flat)

    def load_flat(self, flat: np.ndarray) -> None:
        self.flat[:] = flat

    def host_flat(self) -> np.ndarray:
        return self.flat.copy()

    def train_epoch(self, x: np.ndarray, perm: np.ndarray, batch_size: int, optimizer: Adam,
                    binarize: bool, progress: Callable[[int], None] | None = None) -> float:
        """One pass over x in the order `perm` (whole batches only); mean training loss."""
        seed, z_dim = self.spec.config.seed, self.spec.latent_dim
        n_batches = len(perm) // batch_size
        total = 0.0
        # The Adam step count keys each step's noise, identically on every device.
        noise = posterior_noise(seed, optimizer.step_count, n_batches, batch_size, z_dim)
        for i, eps in enumerate(noise):
            step = optimizer.step_count
            xb = np.take(x, perm[i * batch_size:(i + 1) * batch_size], axis=0)
            if binarize:
                xb = binarize_batch(xb, seed, step)
            total += negative_elbo_and_grads(self.spec, self.params, self.grads, xb, eps)
            optimizer.step(self.flat, self.grad_flat)
            if progress is not None:
                progress(1)
        return total / n_batches

    def loss_and_grads(self, x: np.ndarray, eps: np.ndarray) -> tuple[float, np.ndarray]:
        loss = negative_elbo_and_grads(self.spec, self.params, self.grads, x, eps)
        return loss, self.grad_flat.copy()

    def loss_rows(self, x: np.ndarray, step: int, stream: int) -> np.ndarray:
        """Per-example negative ELBO with the Philox noise of (step, stream)."""
        eps = philox.normal(self.spec.config.seed, step, len(x), self.spec.latent_dim, stream)
        return negative_elbo_rows(self.spec, self.params, x, eps)

    def encode_raw(self, x: np.ndarray) -> np.ndarray:
        return encode_raw(self.spec, self.params, x)

    def decode_raw(self, z: np.ndarray) -> np.ndarray:
        return decode_raw(self.spec, self.params, z)


# Noise drawn ahead per call of philox.normal_steps: about 1 MiB of float32.  Small draws
# (100 x 20) cost mostly the fixed price of the Philox rounds' ~100 NumPy calls.
NOISE_AHEAD_ELEMENTS = 1 << 18


def posterior_noise(seed: int, first_step: int, n_steps: int, batch_size: int, z_dim: int):
    """Yields eps (batch_size, z_dim) of steps first_step, first_step + 1, ...: exactly
    philox.normal(seed, step, batch_size, z_dim, STREAM_POSTERIOR), drawn several steps
    at a time."""
    per_draw = max(1, NOISE_AHEAD_ELEMENTS // max(1, batch_size * z_dim))
    for start in range(0, n_steps, per_draw):
        yield from philox.normal_steps(seed, first_step + start, min(per_draw, n_steps - start),
                                       batch_size, z_dim, philox.STREAM_POSTERIOR)


def binarize_batch(xb: np.ndarray, seed: int, step: int) -> np.ndarray:
    """Dynamic binarization: x ~ Bernoulli(x), fresh each step, from the Philox stream."""
    u = philox.uniform(seed, step, xb.shape[0], xb.shape[1], philox.STREAM_BINARIZE)
    return (u < xb).astype(xb.dtype)


def cuda_available() -> bool:
    """True when CuPy imports and sees at least one GPU."""
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no CuPy, no driver or no device all mean: no GPU here
        return False


def resolve_device(device: str) -> str:
    """'auto' becomes 'cuda' where CuPy sees a GPU and a backend is registered, else 'cpu'."""
    if device != "auto":
        EXECUTORS.get(device)
        return device
    if "cuda" in EXECUTORS and cuda_available():
        return "cuda"
    print("cupyvae: no usable CUDA GPU, using the NumPy CPU path (device='cpu')", file=sys.stderr)
    return "cpu"
