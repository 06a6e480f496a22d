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
from .optim import (Adam, AdamScratch, adam_update, grad_clip_scale, grad_norm_blocks,
                    grad_norm_partials)
from .reference import decode_raw, encode_raw, negative_elbo_and_grads, negative_elbo_rows
from .registry import Registry
from .schedules import SCHED_KL_WEIGHT, hyper_array, schedule_step
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
        # Parameters, gradients and Adam's moments: flat buffers of one layout.
        self.flat, self.grad_flat, self.m, self.v = (spec.layout.zeros() for _ in range(4))
        self.params = spec.layout.views(self.flat)
        self.grads = spec.layout.views(self.grad_flat)
        self._scratch = AdamScratch.of_size(spec.layout.size)
        self._partials = np.zeros(grad_norm_blocks(spec.layout.size))

    def load_flat(self, flat: np.ndarray) -> None:
        self.flat[:] = flat

    def host_flat(self) -> np.ndarray:
        return self.flat.copy()

    def load_moments(self, m: np.ndarray | None, v: np.ndarray | None) -> None:
        """Adam's moments (e.g. from a checkpoint); None: zeros (a fresh optimizer)."""
        self.m[:] = 0 if m is None else m
        self.v[:] = 0 if v is None else v

    def host_moments(self) -> tuple[np.ndarray, np.ndarray]:
        return self.m.copy(), self.v.copy()

    def snapshot(self):
        """Everything an epoch changes besides the step count, to undo an epoch that diverged."""
        return self.flat.copy(), self.m.copy(), self.v.copy()

    def restore(self, snapshot) -> None:
        for buffer, saved in zip((self.flat, self.m, self.v), snapshot):
            buffer[:] = saved

    def train_epoch(self, x: np.ndarray, perm: np.ndarray, options, optimizer: Adam,
                    progress: Callable[[int], None] | None = None) -> float:
        """One pass over x in the order `perm` (whole batches of options.batch_size only),
        with the schedules, KL weight and clipping of `options` (cupyvae.training.
        TrainingOptions) and Adam's constants and step count from `optimizer` (advanced);
        returns the mean training loss."""
        seed, z_dim, batch_size = self.spec.config.seed, self.spec.latent_dim, options.batch_size
        hyper = hyper_array(options, optimizer)
        n_batches = len(perm) // batch_size
        total = 0.0
        for i in range(n_batches):
            step = optimizer.step_count   # keys this step's noise and schedules, on every device
            sched = schedule_step(np.array([step, 0], np.uint32), hyper)
            xb = x[perm[i * batch_size:(i + 1) * batch_size]]
            if options.binarize:
                xb = binarize_batch(xb, seed, step)
            eps = philox.normal(seed, step, batch_size, z_dim, philox.STREAM_POSTERIOR)
            total += negative_elbo_and_grads(self.spec, self.params, self.grads, xb, eps,
                                             kl_weight=float(sched[SCHED_KL_WEIGHT]))
            if options.clip_norm is not None:
                grad_clip_scale(grad_norm_partials(self.grad_flat, self._partials), hyper, sched)
            adam_update(self.flat, self.grad_flat, self.m, self.v, sched, self._scratch)
            optimizer.step_count += 1
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
