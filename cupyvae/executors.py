"""Executors: what turns the model description into work on one kind of device.

Every executor owns the flat parameter buffer on its device and offers the same
operations, so cupyvae.VAE never asks which device it runs on.  "cpu" is the NumPy
reference path (executors/'cpu' below); the kernel executors register "cuda" and
"emulated" the same way.
"""
from __future__ import annotations

import warnings
from typing import Callable

import numpy as np

from . import philox
from .objectives import objective_for
from .objective_twins import (importance_noise, log_mean_exp_accumulate, log_mean_exp_finish,
                              repeat_rows)
from .optim import (Adam, AdamScratch, adam_update, grad_clip_scale, grad_norm_blocks,
                    grad_norm_partials)
from .reference import (decode_raw, encode_raw, negative_elbo_and_grads, negative_elbo_rows,
                        prior_log_prob, prior_state)
from .registry import Registry
from .schedules import SCHED_KL_WEIGHT, hyper_array, schedule_step
from .spec import ModelSpec

EXECUTORS: Registry[type] = Registry("device")


@EXECUTORS.register("cpu")
class NumpyExecutor:
    """The NumPy reference path; the default wherever no GPU is present."""

    # log_likelihood decodes at most this many rows (examples x samples) per call: large
    # enough for efficient GEMMs, small enough (~100 MB of float32 activations at D = 784) to
    # bound memory whatever the number of samples.
    importance_rows = 8192

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
        self._epoch_terms: dict | None = None

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

    def check_objective(self, objective) -> None:
        """The NumPy path trains every objective (objective.check_model judges the model)."""

    def epoch_terms(self) -> dict | None:
        """{"train_recon", "train_kl"}: the ELBO terms' running means (nats per example) over
        the steps of the latest train_epoch (None before any)."""
        return self._epoch_terms

    def train_epoch(self, x: np.ndarray, perm: np.ndarray, options, optimizer: Adam,
                    progress: Callable[[int], None] | None = None) -> float:
        """One pass over x in the order `perm` (whole batches of options.batch_size only),
        with the schedules, KL weight and clipping of `options` (cupyvae.training.
        TrainingOptions) and Adam's constants and step count from `optimizer` (advanced);
        returns the mean training loss.  The objective is the one `options` names
        (cupyvae.objectives.objective_for); its ELBO terms of the epoch are then
        epoch_terms()."""
        objective = objective_for(options)
        seed, z_dim, batch_size = self.spec.config.seed, self.spec.latent_dim, options.batch_size
        hyper = hyper_array(options, optimizer)
        n_batches = len(perm) // batch_size
        check_step_counter(optimizer.step_count, n_batches)
        total = 0.0
        # The Adam step count keys each step's noise and schedules, identically on every
        # device; IWAE's k rows per example are rows b*k + i of a step's draw (k = 1: the
        # ELBO's).  The noise is drawn several steps ahead (posterior_noise).
        noise = posterior_noise(seed, optimizer.step_count, n_batches,
                                objective.noise_rows(batch_size), z_dim)
        for i, eps in enumerate(noise):
            step = optimizer.step_count
            sched = schedule_step(np.array([step, 0], np.uint32), hyper)
            xb = np.take(x, perm[i * batch_size:(i + 1) * batch_size], axis=0)
            if options.binarize:
                xb = binarize_batch(xb, seed, step)
            total += objective.loss_and_grads(self.spec, self.params, self.grads, xb, eps,
                                              kl_weight=float(sched[SCHED_KL_WEIGHT]))
            if options.clip_norm is not None:
                grad_clip_scale(grad_norm_partials(self.grad_flat, self._partials), hyper, sched)
            adam_update(self.flat, self.grad_flat, self.m, self.v, sched, self._scratch)
            optimizer.step_count += 1
            if progress is not None:
                progress(1)
        self._epoch_terms = objective.epoch_terms()
        return total / n_batches

    def loss_and_grads(self, x: np.ndarray, eps: np.ndarray) -> tuple[float, np.ndarray]:
        loss = negative_elbo_and_grads(self.spec, self.params, self.grads, x, eps)
        return loss, self.grad_flat.copy()

    # Inference takes whole arrays; chunk c of `chunk` rows (None: one chunk) keys its noise
    # with step + c.  The kernel executors take the same calls and keys (cupyvae.cuda.executor).
    def loss_rows(self, x: np.ndarray, step: int, stream: int, chunk: int | None = None,
                  progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Per-example negative ELBO (N,) with the Philox noise of (step + chunk index, stream).
        `progress(n)` after each chunk of n rows (on every inference call below too)."""
        seed, z_dim = self.spec.config.seed, self.spec.latent_dim
        return _map_chunks(x, chunk, progress, lambda c, part: negative_elbo_rows(
            self.spec, self.params, part, philox.normal(seed, step + c, len(part), z_dim, stream)))

    def encode_raw(self, x: np.ndarray, chunk: int | None = None,
                   progress: Callable[[int], None] | None = None) -> np.ndarray:
        return _map_chunks(x, chunk, progress,
                           lambda _, part: encode_raw(self.spec, self.params, part))

    def decode_raw(self, z: np.ndarray, chunk: int | None = None) -> np.ndarray:
        return _map_chunks(z, chunk, None, lambda _, part: decode_raw(self.spec, self.params, part))

    def posterior_sample(self, x: np.ndarray, step: int, stream: int, chunk: int | None = None,
                         progress: Callable[[int], None] | None = None) -> np.ndarray:
        """One reparameterized draw z (N, Z) of q(z|x) per row (noise step + chunk index)."""
        seed, z_dim = self.spec.config.seed, self.spec.latent_dim
        return _map_chunks(x, chunk, progress, lambda c, part: self.spec.posterior.rsample(
            encode_raw(self.spec, self.params, part),
            philox.normal(seed, step + c, len(part), z_dim, stream)))

    def sample_raw(self, n: int, seed: int, chunk: int | None = None) -> np.ndarray:
        """The decoder's raw outputs for n draws of the prior (prior_draws)."""
        return self.decode_raw(prior_draws(self.spec, self.params, n, seed), chunk)

    def log_likelihood(self, x: np.ndarray, n_samples: int,
                       progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Importance-sampled log p(x) per example (N,) float64 (VAE.log_likelihood): the
        examples in groups whose samples fill at most `importance_rows` decoder rows (an
        example with more samples in several chunks), each group's log-sum-exp accumulated
        in float64 (objective_twins.log_mean_exp_accumulate); `progress(n)` after each
        group of n examples."""
        samples_per_call = min(n_samples, self.importance_rows)
        examples_per_call = max(1, self.importance_rows // n_samples)
        out = np.empty(len(x))
        for first in range(0, len(x), examples_per_call):
            xb = x[first:first + examples_per_call]
            raw = encode_raw(self.spec, self.params, xb)
            running_max = np.full(len(xb), -np.inf)
            running_sum = np.zeros(len(xb))
            for first_sample in range(0, n_samples, samples_per_call):
                samples = min(samples_per_call, n_samples - first_sample)
                eps = importance_noise(self.spec.config.seed, first, len(xb), first_sample,
                                       samples, self.spec.latent_dim)
                nll, log_p, log_q = self._log_weight_terms(raw, xb, eps, samples)
                log_mean_exp_accumulate(nll, log_p, log_q, running_max, running_sum, samples)
            out[first:first + len(xb)] = log_mean_exp_finish(running_max, running_sum, n_samples)
            if progress is not None:
                progress(len(xb))
        return out

    def _log_weight_terms(self, raw, xb, eps, samples):
        """(nll, log p(z), log q(z|x)) per row of the B*k samples of the examples xb; log q
        in float64 from the noise."""
        spec = self.spec
        q_rows = repeat_rows(raw, samples)
        z = spec.posterior.rsample(q_rows, eps)
        nll = -spec.likelihood.log_prob(decode_raw(spec, self.params, z), repeat_rows(xb, samples))
        log_p = prior_log_prob(spec, self.params, z)[0]
        log_q = spec.posterior.log_prob_of_draw(q_rows.astype(np.float64), eps.astype(np.float64))
        return nll, log_p, log_q


def prior_draws(spec: ModelSpec, params: dict, n: int, seed: int) -> np.ndarray:
    """n draws z (n, Z) of the prior, from uniforms u (n,) and standard normals eps (n, Z)
    of STREAM_PRIOR (steps philox.PRIOR_U_STEP, PRIOR_EPS_STEP): prior.sample(density, u, eps).
    `params`: the model's named host parameters (the VampPrior encodes its pseudo-inputs)."""
    u = philox.uniform(seed, philox.PRIOR_U_STEP, n, 1, philox.STREAM_PRIOR)[:, 0]
    eps = philox.normal(seed, philox.PRIOR_EPS_STEP, n, spec.latent_dim, philox.STREAM_PRIOR)
    return spec.prior.sample(prior_state(spec, params).density, u, eps)


def check_step_counter(step_count: int, n_steps: int) -> None:
    """OverflowError, before an epoch of n_steps starting at Adam step `step_count`, if the
    step counter would reach 2^32: it keys Philox and the schedules as a uint32 (in device
    memory on the kernel devices), on every executor alike."""
    if step_count + n_steps >= 2 ** 32:
        raise OverflowError(f"the step counter would pass 2^32 ({step_count} + {n_steps} steps; "
                            "it keys Philox and Adam as a uint32)")


def _map_chunks(x: np.ndarray, chunk: int | None, progress: Callable[[int], None] | None,
                compute: Callable[[int, np.ndarray], np.ndarray]) -> np.ndarray:
    """compute(c, part) for every chunk c of x, concatenated; progress(len(part)) after each."""
    results = []
    for c, rows in chunk_slices(len(x), chunk):
        results.append(compute(c, x[rows]))
        if progress is not None:
            progress(rows.stop - rows.start)
    return np.concatenate(results)


def chunk_slices(n: int, chunk: int | None):
    """(chunk index c, row slice) for n rows in chunks of `chunk` rows (None: one chunk),
    in order; every executor's inference calls chunk (and key their noise by c) with it.
    Raises ValueError, before any work, for no rows or a chunk that is not a positive int."""
    if n < 1:
        raise ValueError(f"inference needs at least one row, got {n}")
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer))
                              or chunk < 1):
        raise ValueError(f"chunk must be a positive number of rows or None, got {chunk!r}")
    size = n if chunk is None else min(int(chunk), n)
    for index, start in enumerate(range(0, n, size)):
        yield index, slice(start, min(start + size, n))


# Noise drawn ahead per call of philox.normal_steps: about 1 MiB of float32.  Small draws
# (100 x 20) cost mostly the fixed price of the Philox rounds' ~100 NumPy calls.
NOISE_AHEAD_ELEMENTS = 1 << 18


def posterior_noise(seed: int, first_step: int, n_steps: int, rows: int, z_dim: int):
    """Yields eps (rows, z_dim) of steps first_step, first_step + 1, ...: exactly
    philox.normal(seed, step, rows, z_dim, STREAM_POSTERIOR), drawn several steps at a time
    (rows: the objective's noise rows per step, objective.noise_rows(batch_size))."""
    per_draw = max(1, NOISE_AHEAD_ELEMENTS // max(1, rows * z_dim))
    for start in range(0, n_steps, per_draw):
        yield from philox.normal_steps(seed, first_step + start, min(per_draw, n_steps - start),
                                       rows, z_dim, philox.STREAM_POSTERIOR)


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


class NoGPUWarning(UserWarning):
    """device='auto' found no usable CUDA GPU and runs on the NumPy CPU path.  Shown once
    per process (a "once" filter, appended so that the user's own filters win:
    `warnings.filterwarnings("ignore", category=NoGPUWarning)` silences it); the CLI shows
    it as one line for the commands that choose a device for real work (train, evaluate,
    encode) and silences it elsewhere."""


NO_GPU_NOTICE = "no usable CUDA GPU, using the NumPy CPU path (device='cpu')"
warnings.filterwarnings("once", category=NoGPUWarning, append=True)


def resolve_device(device: str) -> str:
    """'auto' becomes 'cuda' where CuPy sees a GPU and a backend is registered, else 'cpu'
    (with a NoGPUWarning).  ValueError for an unknown name, listing 'auto' and the
    registered devices."""
    if device != "auto":
        if device not in EXECUTORS:
            raise ValueError(f"unknown device {device!r}; available: auto, "
                             f"{', '.join(EXECUTORS.names())}")
        return device
    if "cuda" in EXECUTORS and cuda_available():
        return "cuda"
    warnings.warn(NO_GPU_NOTICE, NoGPUWarning, stacklevel=3)   # the line that made the VAE
    return "cpu"
