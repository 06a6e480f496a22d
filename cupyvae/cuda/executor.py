"""The kernel executors: one step plan, run by CuPy ("cuda") or by the CPU emulator ("emulated").

A training step is an explicit, ordered list of kernel launches (cupyvae.cuda.launch: RawKernel
Launches and ElementwiseLaunches) over one workspace allocated up front: parameters,
gradients and Adam moments (four flat buffers sharing the layout of cupyvae.params, all
resident on the device between epochs and fit calls), the device-resident dataset and
epoch permutation, every activation and activation gradient for the batch, and the
per-step losses.  Nothing is allocated and nothing is read back inside a step, and every
per-step scalar lives on the device: the step count keying Philox and the schedules and
the batch index in `counters` (advanced by a kernel), every hyperparameter in `hyper` and
this step's values of the schedules in `sched` (kernels/schedule.cuh, cupyvae.schedules).
So the same list can be replayed eagerly, captured once into a CUDA graph, or run on NumPy
arrays by the emulator, and changing a hyperparameter is a write into `hyper`, never a
new capture.

The plan, for an MLP encoder/decoder with layers 0..L-1:
    gather_rows                  xb = data[perm[batch*B + b]] (optionally binarized)
    schedule_step                sched = this step's lr, Adam step, KL weight (from hyper, step)
    linear_forward  x L          encoder, bias and activation fused
    <posterior>_forward          z = mu + exp(lv/2) eps(Philox), kl per row
    linear_forward  x L          decoder
    <likelihood>_nll             nll per row, d p_raw = (1/B) d nll / d p_raw
    linear_backward x L          decoder, last layer first: dW, db and d input in ONE launch
                                 per layer (d z at the end)
    <posterior>_backward         d q_raw from d z and the KL (weighted by sched's KL weight)
    linear_backward x L          encoder (no d x for layer 0)
    grad_norm_partials, grad_clip_scale   only with clipping: sched's clip scale from |g|
    adam_update                  the whole flat buffer, one ElementwiseKernel
    end_step                     losses[batch] = mean_b (nll + beta kl); step += 1, batch += 1
Adam reads the step's values from `sched`, which schedule_step computed from counters[0] at
the step's start; end_step advances the counters only after every kernel that reads them.
The GEMMs share one split-K workspace (cupyvae.cuda.ops.linear), allocated with the
executor: launches of one stream run one after the other, and each leaves it as it found it.

Inference (encode_raw, decode_raw, loss_rows, posterior_sample, sample_raw) takes the whole
array: the host uploads everything a call needs first, the rows then go through the network in chunks on the device (bounded memory; each chunk
keys its noise by its index, exactly as the NumPy executor does), and the host reads the
result once per call -- no synchronization between chunks.

Execution (cupyvae.cuda.graph): "eager" issues the bound launches of every step from
Python; "graph" (the default on "cuda") captures them once per plan into CUDA graphs of
`steps_per_graph` steps and replays those; on "emulated" (eager by default) "graph"
records the launches and replays the recording.  Both modes give the same bits:

    EXECUTORS.get("cuda")(spec, execution="graph", steps_per_graph=50)
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from .. import philox
from ..executors import EXECUTORS, prior_draws
from ..objectives import objective_for
from ..optim import grad_norm_blocks
from ..schedules import HYPER_SIZE, SCHED_KL_WEIGHT, SCHED_SIZE, hyper_array
from ..spec import ModelSpec
from . import ops
from .graph import (DEFAULT_STEPS_PER_GRAPH, EagerSteps, ReplayedSteps, bind, check_steps_per_graph,
                    issue, resolve_execution)
from .launch import Launch, run, to_device, to_host


def supported(spec: ModelSpec) -> list[str]:
    """What the kernel path lacks for this model (empty when it can run it)."""
    missing = []
    if spec.posterior.kernel is None:
        missing.append(f"a kernel for posterior {spec.config.posterior!r}")
    if spec.likelihood.kernel is None:
        missing.append(f"a kernel for likelihood {spec.config.likelihood!r}")
    if spec.analytic_kl is None or spec.prior.learnable:
        missing.append(f"a kernel for the KL of {spec.config.posterior!r} to prior "
                       f"{spec.config.prior!r} (only closed-form KLs to fixed priors run on kernels)")
    return missing


@dataclass
class BatchBuffers:
    """Activations and their gradients for one batch size; allocated once."""
    enc: list          # encoder outputs, input first: [xb, h1, ..., q_raw]
    enc_grad: list     # d loss / d pre-activation of each encoder layer output (index like enc;
                       # None at 0, the input)
    z: object
    dz: object
    kl: object
    dec: list          # [z, h1, ..., p_raw]
    dec_grad: list
    nll: object


class KernelExecutor:
    """Runs the model on hand-written kernels; `device` is "cuda" or "emulated".

    `execution`: "eager", "graph", or None for the device's default ("graph" on cuda,
    "eager" on the emulator); `steps_per_graph`: steps per captured graph, None for whole
    epochs (cupyvae.cuda.graph).  Both can be changed between epochs.
    """
    device = ""

    def __init__(self, spec: ModelSpec, execution: str | None = None,
                 steps_per_graph: int | None = DEFAULT_STEPS_PER_GRAPH):
        missing = supported(spec)
        if missing:
            raise ValueError(f"device {self.device!r} cannot run this model yet: it needs "
                             + "; ".join(missing) + ". Use device='cpu'.")
        self.spec = spec
        self.xp = _array_module(self.device)
        size = spec.layout.size
        self.flat, self.grad_flat, self.m, self.v = (self.xp.zeros(size, np.float32) for _ in range(4))
        self.params = spec.layout.views(self.flat)
        self.grads = spec.layout.views(self.grad_flat)
        self.counters = self.xp.zeros(2, np.uint32)
        self.workspace = ops.linear_workspace(self.device)   # split-K partials, every GEMM
        self.hyper = self.xp.zeros(HYPER_SIZE, np.float64)   # written by the host per epoch
        self.sched = self.xp.zeros(SCHED_SIZE, np.float32)   # written by the step's kernels
        self._kl_weight = self.sched[SCHED_KL_WEIGHT:SCHED_KL_WEIGHT + 1]
        self._one = self.xp.ones(1, np.float32)    # KL weight 1: loss_and_grads' plain ELBO
        self._partials = self.xp.zeros(grad_norm_blocks(size), np.float64)
        self._saved = None         # device copies of flat, m, v: the rollback snapshot
        self._data = None          # (host array identity, device copy)
        self._plan_key = None
        self._plan: list[Launch] = []
        self._steps = None         # EagerSteps / ReplayedSteps of the current plan, built lazily
        self._stream = None        # private CUDA stream of graph capture and replay
        self._inference = None     # (batch size, forward-only BatchBuffers) of the last call
        self.execution = execution
        self.steps_per_graph = steps_per_graph

    @property
    def execution(self) -> str:
        return self._execution

    @execution.setter
    def execution(self, execution: str | None) -> None:
        self._execution = resolve_execution(self.device, execution)
        self._steps = None

    @property
    def steps_per_graph(self) -> int | None:
        return self._steps_per_graph

    @steps_per_graph.setter
    def steps_per_graph(self, steps_per_graph: int | None) -> None:
        self._steps_per_graph = check_steps_per_graph(steps_per_graph)
        self._steps = None

    # ------------------------------------------------------------------ state
    def load_flat(self, flat: np.ndarray) -> None:
        self.flat[...] = to_device(np.asarray(flat, np.float32), self.device)

    def host_flat(self) -> np.ndarray:
        return np.array(to_host(self.flat))

    def load_moments(self, m: np.ndarray | None, v: np.ndarray | None) -> None:
        """Adam's moments (e.g. from a checkpoint); None: zeros (a fresh optimizer).  They then
        stay on the device: no epoch copies them back and forth."""
        for buffer, host in ((self.m, m), (self.v, v)):
            buffer[...] = 0 if host is None else to_device(np.asarray(host, np.float32),
                                                           self.device)

    def host_moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Host copies of Adam's moments, for a checkpoint: the only time they leave the device."""
        return np.array(to_host(self.m)), np.array(to_host(self.v))

    def snapshot(self):
        """Device-side copies of the parameters and moments, to undo an epoch that diverged
        (no host traffic; one snapshot at a time: the next call overwrites it)."""
        if self._saved is None:
            self._saved = self.xp.empty((3, self.spec.layout.size), np.float32)
        for row, buffer in zip(self._saved, (self.flat, self.m, self.v)):
            row[...] = buffer
        return self._saved

    def restore(self, snapshot) -> None:
        for row, buffer in zip(snapshot, (self.flat, self.m, self.v)):
            buffer[...] = row

    # ------------------------------------------------------------------ training
    def epoch_terms(self) -> dict | None:
        """The ELBO terms of the latest epoch: None, until the step plan reports them."""
        return None

    def train_epoch(self, x: np.ndarray, perm: np.ndarray, options, optimizer,
                    progress=None) -> float:
        """One epoch of the step plan with the batch size, binarization, schedules, KL weight
        and clipping of `options` (cupyvae.training.TrainingOptions) and Adam's constants and
        step count from `optimizer` (advanced).  Host traffic: before, the permutation, the
        counters and `hyper` (a few bytes); after, the epoch's losses.  Parameters and
        moments stay on the device.  The plan trains the ELBO without free bits
        (VAE.fit refuses other objectives on this device before any work; so does this)."""
        if not objective_for(options).runs_on_kernels:
            raise ValueError(f"device {self.device!r} trains objective 'elbo' without free bits "
                             f"only, so far (asked: objective {options.objective!r}, free_bits "
                             f"{options.free_bits:g})")
        data = self._device_data(x)
        n_batches = len(perm) // options.batch_size
        if optimizer.step_count + n_batches >= 2 ** 32:
            raise OverflowError("the step counter would pass 2^32 (it keys Philox and Adam in "
                                "uint32 device memory)")
        hyper = hyper_array(options, optimizer)
        with self._epoch_stream():
            perm_dev = self._perm            # overwritten in place: the plan keeps its address
            perm_dev[...] = to_device(perm.astype(np.int32), self.device)
            plan = self._training_plan(data, perm_dev, options.batch_size, options.binarize,
                                       n_batches, clipping=options.clip_norm is not None)
            self.hyper[...] = to_device(hyper, self.device)
            self.counters[...] = to_device(np.array([optimizer.step_count, 0], np.uint32),
                                           self.device)
            self._step_runner(plan, n_batches).run(n_batches, progress)
            losses = to_host(self._losses[:n_batches])        # the one read-back of the epoch
        optimizer.step_count += n_batches
        return float(np.mean(losses, dtype=np.float64))

    def _step_runner(self, plan: list[Launch], n_batches: int):
        """The plan's steps, eager or replayed; built (bound, warmed up, captured) once per plan.
        Called with the epoch's counters, permutation and moments already uploaded."""
        if self._steps is None:
            step = bind(plan, self.device)
            if self.execution == "eager":
                self._steps = EagerSteps(step, self.device)
            else:
                self._warm_up(step)
                self._steps = ReplayedSteps(step, n_batches, self.steps_per_graph, self.device,
                                            self._stream)
        return self._steps

    def _warm_up(self, step) -> None:
        """One eager step before capture, then every buffer it wrote to restored bit for bit.

        Capture cannot compile, load modules or lazily load kernels, so each kernel runs once
        first; the restore makes the warm-up invisible (activations are rewritten by every
        step, so only the state that carries over is saved)."""
        saved = [(a, a.copy()) for a in (self.flat, self.grad_flat, self.m, self.v, self.counters,
                                         self.sched, self._partials, self._losses)]
        issue(step)
        for array, copy in saved:
            array[...] = copy

    @contextmanager
    def _epoch_stream(self):
        """Where an epoch's work is queued: the current stream, except for CUDA graphs, which
        are captured and replayed on a private non-blocking stream (the legacy default stream
        cannot be captured).  That stream does not wait for the default stream by itself, so
        it first waits (on the device) for everything queued before, e.g. by load_flat; the
        epoch's read-backs then synchronize it before the caller queues anything else."""
        if self.device != "cuda" or self.execution != "graph":
            yield
            return
        import cupy

        if self._stream is None:
            self._stream = cupy.cuda.Stream(non_blocking=True)
        caller = cupy.cuda.get_current_stream()
        self._stream.wait_event(caller.record())
        try:
            with self._stream:
                yield
        finally:
            caller.wait_event(self._stream.record())

    def _device_data(self, x: np.ndarray):
        """The training set on the device, uploaded once per array.  A new array of the same
        shape (every fit call passes one) is copied into the same device buffer, so the plan,
        which holds its address, stays valid and its graphs are not captured again."""
        if self._data is not None and self._data[0] is x:
            return self._data[1]
        if self._data is not None and self._data[1].shape == x.shape:
            device_copy = self._data[1]
            _copy_to_device(device_copy, x)
        else:
            self._data = None            # free the old copy before allocating the new
            # A copy the executor owns (on the emulator to_device would alias x, and the
            # next array of this shape is written into it).
            device_copy = self.xp.array(x, copy=True)
            self._perm = self.xp.zeros(len(x), np.int32)
        self._data = (x, device_copy)
        return device_copy

    def _training_plan(self, data, perm_dev, batch_size, binarize, n_batches,
                       clipping: bool) -> list[Launch]:
        """The step plan, rebuilt (and so re-captured) only when its buffers or shapes change:
        hyperparameter values are not part of it (they are read from `hyper` on the device),
        only whether clipping runs at all."""
        key = (id(data), id(perm_dev), batch_size, binarize, n_batches, clipping)
        if key != self._plan_key:
            self._plan = build_training_plan(self, data, perm_dev, batch_size, binarize,
                                             n_batches, clipping)
            self._plan_key = key
            self._steps = None
        return self._plan

    def loss_and_grads(self, x: np.ndarray, eps: np.ndarray) -> tuple[float, np.ndarray]:
        """Mean negative ELBO with the caller's noise, and the flat gradient (host copies)."""
        buffers = self._batch_buffers(len(x))
        buffers.enc[0][...] = to_device(x, self.device)
        eps_dev = to_device(np.ascontiguousarray(eps, np.float32), self.device)
        counters = self.xp.zeros(2, np.uint32)
        run(self._forward_backward(buffers, counters, philox.STREAM_POSTERIOR, self._one, eps_dev),
            self.device)
        loss = float(np.mean(to_host(buffers.nll) + to_host(buffers.kl), dtype=np.float64))
        return loss, np.array(to_host(self.grad_flat))

    # ------------------------------------------------------------------ inference
    # Same methods and noise keys as the NumPy executor (cupyvae.executors): chunk c of
    # `chunk` rows (None: one chunk) draws its noise with step + c.  Uploads first, then
    # the launches of every chunk, then one read of the results: no synchronization between
    # chunks (a small host->device copy from pageable memory would wait for the stream).
    def encode_raw(self, x: np.ndarray, chunk: int | None = None, progress=None) -> np.ndarray:
        """The encoder's raw outputs (N, P) for x (N, D)."""
        return _reported(self._forward_raw(self.spec.encoder, to_device(x, self.device), chunk,
                                           lambda buffers: buffers.enc), progress)

    def decode_raw(self, z: np.ndarray, chunk: int | None = None) -> np.ndarray:
        """The decoder's raw outputs (N, R) for z (N, Z)."""
        return self._forward_raw(self.spec.decoder, to_device(z, self.device), chunk,
                                 lambda buffers: buffers.dec)

    def loss_rows(self, x: np.ndarray, step: int, stream: int, chunk: int | None = None,
                  progress=None) -> np.ndarray:
        """Per-example negative ELBO (N,) float64, one posterior draw each (Philox, `stream`).
        `progress(N)` once the result is read (on every inference call here: chunks are
        queued, not done, until the one read-back)."""
        x_dev = to_device(x, self.device)
        counters = self._chunk_counters(len(x), step, chunk)
        out = self.xp.empty(len(x), np.float32)
        for c, rows, buffers in self._chunks(len(x), chunk):
            buffers.enc[0] = x_dev[rows]
            run([*self._forward(buffers, counters[c], stream),
                 self._likelihood_launch(buffers, 1.0)], self.device)
            self.xp.add(buffers.nll, buffers.kl, out=out[rows])   # float32, as on the host
        return _reported(np.array(to_host(out), np.float64), progress)

    def posterior_sample(self, x: np.ndarray, step: int, stream: int, chunk: int | None = None,
                         progress=None) -> np.ndarray:
        """One reparameterized draw z (N, Z) of q(z|x) per row, drawn on the device by the
        posterior's elementwise kernel (ops.<posterior>_sample)."""
        x_dev = to_device(x, self.device)
        out = self.xp.empty((len(x), self.spec.latent_dim), np.float32)
        sample = getattr(ops, f"{self.spec.posterior.kernel}_sample")
        for c, rows, buffers in self._chunks(len(x), chunk):
            buffers.enc[0] = x_dev[rows]
            run([*self._mlp_forward(self.spec.encoder, buffers.enc),
                 sample(buffers.enc[-1], self.spec.config.seed, _uint32_step(step + c), stream,
                        out[rows])], self.device)
        return _reported(np.array(to_host(out)), progress)

    def sample_raw(self, n: int, seed: int, chunk: int | None = None) -> np.ndarray:
        """The decoder's raw outputs for n draws of the prior, keyed as
        cupyvae.executors.prior_draws keys them.  A prior whose `kernel` names an ops
        module with a `<kernel>_prior_sample` builder is drawn on the device (the standard
        normal: ops.normal_prior_sample, an elementwise kernel); any other is drawn on the
        host and uploaded."""
        draw = getattr(ops, f"{self.spec.prior.kernel}_prior_sample", None) \
            if self.spec.prior.kernel else None
        if draw is None:
            host = self.spec.layout.views(self.host_flat())
            return self.decode_raw(prior_draws(self.spec, host, n, seed), chunk)
        z = self.xp.empty((n, self.spec.latent_dim), np.float32)
        run(draw(z, seed), self.device)
        return self._forward_raw(self.spec.decoder, z, chunk, lambda buffers: buffers.dec)

    def _forward_raw(self, layers, inputs_dev, chunk, activations, out=None) -> np.ndarray:
        """Run `layers` over every row of the device array `inputs_dev` chunk by chunk into
        `out` (allocated when None, then read back once and returned)."""
        result = out if out is not None else self.xp.empty((len(inputs_dev), layers[-1].n_out),
                                                           np.float32)
        for _, rows, buffers in self._chunks(len(inputs_dev), chunk):
            acts = activations(buffers)
            acts[0], acts[-1] = inputs_dev[rows], result[rows]
            run(self._mlp_forward(layers, acts), self.device)
        return None if out is not None else np.array(to_host(result))

    def _chunk_counters(self, n: int, step: int, chunk: int | None):
        """Device counters [step + c, 0] for every chunk c, uploaded at once."""
        n_chunks = -(-n // (n if chunk is None else chunk))
        steps = [_uint32_step(step + c) for c in range(n_chunks)]
        return to_device(np.array([[s, 0] for s in steps], np.uint32), self.device)

    def _chunks(self, n: int, chunk: int | None):
        """(chunk index, row slice, forward buffers viewed at the chunk's rows) for n rows in
        chunks of `chunk` (None: one chunk).  The views' lists are fresh, so a caller may
        point an entry (the input) elsewhere."""
        if n < 1 or (chunk is not None and chunk < 1):
            raise ValueError(f"need at least one row and a positive chunk, got {n} rows, "
                             f"chunk {chunk}")
        size = n if chunk is None else min(chunk, n)
        buffers = self._inference_buffers(size)
        for index, start in enumerate(range(0, n, size)):
            rows = slice(start, min(start + size, n))
            yield index, rows, _head(buffers, rows.stop - rows.start)

    def _inference_buffers(self, batch: int) -> BatchBuffers:
        """Forward-only buffers for `batch` rows, kept while calls come with the same batch
        (evaluation sends equal chunks).  Only the likelihood's input gradient is allocated,
        since its fused kernel writes it; every buffer is fully written before it is read."""
        if self._inference is None or self._inference[0] != batch:
            self._inference = None     # free the old buffers before allocating the new
            xp, spec = self.xp, self.spec
            enc = [xp.empty((batch, w), np.float32)
                   for w in [spec.data_dim] + [layer.n_out for layer in spec.encoder]]
            dec = [xp.empty((batch, w), np.float32)
                   for w in [spec.latent_dim] + [layer.n_out for layer in spec.decoder]]
            buffers = BatchBuffers(enc=enc, enc_grad=[], z=dec[0], dz=None,
                                   kl=xp.empty(batch, np.float32), dec=dec,
                                   dec_grad=[None] * (len(dec) - 1) + [xp.empty_like(dec[-1])],
                                   nll=xp.empty(batch, np.float32))
            self._inference = (batch, buffers)
        return self._inference[1]

    # ------------------------------------------------------------------ plan pieces
    def _batch_buffers(self, batch: int) -> BatchBuffers:
        xp, spec = self.xp, self.spec

        def outputs(layers, first_width):
            widths = [first_width] + [layer.n_out for layer in layers]
            return [xp.zeros((batch, w), np.float32) for w in widths]

        def gradients(acts):
            # Index 0 (the layer input) has none: the encoder needs no d x, and the
            # decoder's d z goes to `dz`, which the posterior's backward reads.
            return [None] + [xp.zeros_like(a) for a in acts[1:]]

        enc = outputs(spec.encoder, spec.data_dim)
        dec = outputs(spec.decoder, spec.latent_dim)
        return BatchBuffers(enc=enc, enc_grad=gradients(enc), z=dec[0], dz=xp.zeros_like(dec[0]),
                            kl=xp.zeros(batch, np.float32), dec=dec, dec_grad=gradients(dec),
                            nll=xp.zeros(batch, np.float32))

    def _mlp_forward(self, layers, acts) -> list[Launch]:
        return [ops.linear_forward(acts[i], self.params[f"{layer.name}.weight"],
                                   self.params[f"{layer.name}.bias"], layer.activation, acts[i + 1],
                                   workspace=self.workspace)
                for i, layer in enumerate(layers)]

    def _mlp_backward(self, layers, acts, grads, input_grad) -> list[Launch]:
        """grads[i + 1] holds d loss / d pre-activation of layer i's output on entry;
        writes every dW, db and grads[i] downwards, one launch per layer; `input_grad`
        receives d input (or None: no dx for the first layer)."""
        launches = []
        for i in reversed(range(len(layers))):
            layer = layers[i]
            act_below = layers[i - 1].activation if i > 0 else "identity"
            launches.append(ops.linear_backward(
                acts[i], self.params[f"{layer.name}.weight"], grads[i + 1], act_below,
                self.grads[f"{layer.name}.weight"], self.grads[f"{layer.name}.bias"],
                grads[i] if i > 0 else input_grad, workspace=self.workspace))
        return launches

    def _forward(self, buffers: BatchBuffers, counters, stream: int, eps=None) -> list[Launch]:
        """Encoder, posterior sample and KL, decoder.  Noise: Philox keyed by `counters` and
        `stream`, or the given device array `eps`."""
        posterior = self.spec.posterior.kernel
        return [*self._mlp_forward(self.spec.encoder, buffers.enc),
                getattr(ops, f"{posterior}_forward")(buffers.enc[-1], counters, self.spec.config.seed,
                                                     stream, buffers.z, buffers.kl, eps=eps),
                *self._mlp_forward(self.spec.decoder, buffers.dec)]

    def _forward_backward(self, buffers: BatchBuffers, counters, stream: int, kl_weight,
                          eps=None) -> list[Launch]:
        """Everything from the batch in buffers.enc[0] to every gradient in grad_flat; the KL
        term weighted by the device scalar `kl_weight` ((1,) float32)."""
        scale = 1.0 / buffers.enc[0].shape[0]
        posterior = self.spec.posterior.kernel
        return [
            *self._forward(buffers, counters, stream, eps),
            self._likelihood_launch(buffers, scale),
            *self._mlp_backward(self.spec.decoder, buffers.dec, buffers.dec_grad, buffers.dz),
            getattr(ops, f"{posterior}_backward")(buffers.enc[-1], buffers.dz, counters,
                                                  self.spec.config.seed, stream, scale, kl_weight,
                                                  buffers.enc_grad[-1], eps=eps),
            *self._mlp_backward(self.spec.encoder, buffers.enc, buffers.enc_grad, None),
        ]

    def _likelihood_launch(self, buffers: BatchBuffers, scale: float) -> Launch:
        return getattr(ops, f"{self.spec.likelihood.kernel}_nll")(
            buffers.dec[-1], buffers.enc[0], scale, buffers.nll, buffers.dec_grad[-1])


def build_training_plan(ex: KernelExecutor, data, perm_dev, batch_size: int, binarize: bool,
                        n_batches: int, clipping: bool) -> list[Launch]:
    """The ordered launches of one training step (see the module docstring)."""
    spec = ex.spec
    buffers = ex._batch_buffers(batch_size)
    ex._losses = ex.xp.zeros(max(n_batches, 1), np.float32)
    clip = [ops.grad_norm_partials(ex.grad_flat, ex._partials),
            ops.grad_clip_scale(ex._partials, ex.hyper, ex.sched)] if clipping else []
    return [
        ops.gather_rows(data, perm_dev, ex.counters, batch_size, binarize, spec.config.seed,
                        buffers.enc[0]),
        ops.schedule_step(ex.counters, ex.hyper, ex.sched),      # reads counters[0]
        *ex._forward_backward(buffers, ex.counters, philox.STREAM_POSTERIOR, ex._kl_weight),
        *clip,
        ops.adam_update(ex.flat, ex.grad_flat, ex.m, ex.v, ex.sched),
        ops.end_step(buffers.nll, buffers.kl, ex._kl_weight, ex.counters, ex._losses),  # advances
    ]


def _head(buffers: BatchBuffers, rows: int) -> BatchBuffers:
    """Views of the first `rows` rows of every buffer (contiguous: rows are the leading axis)."""
    def head(array):
        return None if array is None else array[:rows]
    return BatchBuffers(enc=[head(a) for a in buffers.enc],
                        enc_grad=[head(a) for a in buffers.enc_grad],
                        z=head(buffers.z), dz=head(buffers.dz), kl=head(buffers.kl),
                        dec=[head(a) for a in buffers.dec],
                        dec_grad=[head(a) for a in buffers.dec_grad], nll=head(buffers.nll))


def _uint32_step(step: int) -> int:
    """A Philox step key: it must fit the kernels' uint32."""
    if not 0 <= step < 2 ** 32:
        raise OverflowError(f"Philox step {step} does not fit in uint32")
    return step


def _reported(result: np.ndarray, progress) -> np.ndarray:
    """`result` (read back: every row is done), after telling `progress` its row count."""
    if progress is not None:
        progress(len(result))
    return result


def _copy_to_device(device_array, host_array: np.ndarray) -> None:
    """Overwrite `device_array` with `host_array` (same shape) without a temporary on the device."""
    if isinstance(device_array, np.ndarray):
        device_array[...] = host_array
    else:
        device_array.set(np.ascontiguousarray(host_array))


def _array_module(device: str):
    if device == "cuda":
        import cupy
        return cupy
    return np


@EXECUTORS.register("emulated")
class EmulatedExecutor(KernelExecutor):
    """The kernel path on the CPU emulator: slow, for tests and kernel debugging."""
    device = "emulated"


@EXECUTORS.register("cuda")
class CudaExecutor(KernelExecutor):
    """The kernel path on a GPU through CuPy."""
    device = "cuda"

    def __init__(self, spec: ModelSpec, execution: str | None = None,
                 steps_per_graph: int | None = DEFAULT_STEPS_PER_GRAPH):
        try:
            import cupy
            cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:  # ImportError, or CUDARuntimeError without a driver/device
            raise ValueError(f"device 'cuda' needs CuPy and a CUDA GPU ({exc}); install "
                             "cupyvae[cuda12] or cupyvae[cuda13], or use device='cpu'") from None
        super().__init__(spec, execution, steps_per_graph)
