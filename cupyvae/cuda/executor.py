"""The kernel executors: one step plan, run by CuPy ("cuda") or by the CPU emulator ("emulated").

A training step is an explicit, ordered list of kernel launches (cupyvae.cuda.launch: RawKernel
Launches and ElementwiseLaunches) over one workspace allocated up front: parameters,
gradients and Adam moments (four flat buffers sharing the layout of cupyvae.params, all
resident on the device between epochs and fit calls), the device-resident dataset and
epoch permutation, every activation and activation gradient for the batch, and the
per-step losses and ELBO terms.  Nothing is allocated and nothing is read back inside a
step, and every per-step scalar lives on the device: the step count keying Philox and the
schedules and the batch index in `counters` (advanced by a kernel), every hyperparameter
in `hyper` and this step's values of the schedules in `sched` (kernels/schedule.cuh,
cupyvae.schedules).  So the same list can be replayed eagerly, captured once into a CUDA
graph, or run on NumPy arrays by the emulator, and changing a hyperparameter is a write
into `hyper`, never a new capture.

The plan is composed from plan fragments (cupyvae.cuda.fragments): the posterior's, the
prior's, the KL's and the training objective's launches, each found in a registry under
its component's name, so this module never names a distribution or an objective.  For an
MLP encoder/decoder with layers 0..L-1:
    gather_rows                  xb = data[perm[batch*B + b]] (optionally binarized)
    schedule_step                sched = this step's lr, Adam step, KL weight (from hyper, step)
    prior.in_step                the prior's rows below the batch (VampPrior: pseudo-inputs)
    linear_forward  x L          encoder, bias and activation fused (batch + prior rows)
    objective.forward            z (B * samples rows) and its KL / log q / log p
    linear_forward  x L          decoder
    <likelihood>_nll             nll per row, d p_raw = scale d nll / d p_raw
    objective.weigh              per-row weights (IWAE's normalised importance weights)
    linear_backward x L          decoder, last layer first: dW, db and d input in ONE launch
                                 per layer (d z at the end)
    objective.backward           d q_raw from d z and the KL (weighted by sched's KL
                                 weight), and the prior's parameter gradients
    linear_backward x L          encoder (d x only for a prior that wants it)
    prior.after_encoder_backward the VampPrior's pseudo-input gradient
    grad_norm_partials, grad_clip_scale   only with clipping: sched's clip scale from |g|
    adam_update                  the whole flat buffer, one ElementwiseKernel
    step_terms                   terms[batch] = the step's mean reconstruction and KL terms
    end_step                     losses[batch] = mean_b (a + beta b) of the objective's loss
                                 rows; step += 1, batch += 1
Adam reads the step's values from `sched`, which schedule_step computed from counters[0] at
the step's start; end_step advances the counters only after every kernel that reads them.
The GEMMs share one split-K workspace (cupyvae.cuda.ops.linear), allocated with the
executor: launches of one stream run one after the other, and each leaves it as it found it.

Inference (encode_raw, decode_raw, loss_rows, posterior_sample, sample_raw,
log_likelihood) takes the whole array: the host uploads everything a call needs first, the
rows then go through the network in chunks on the device (bounded memory; each chunk keys
its noise by its index, exactly as the NumPy executor does), and the host reads the result
once per call -- no synchronization between chunks.

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
from ..executors import EXECUTORS, check_step_counter, chunk_slices, prior_draws
from ..objectives import objective_for
from ..optim import grad_norm_blocks
from ..schedules import HYPER_SIZE, SCHED_KL_WEIGHT, SCHED_SIZE, hyper_array
from ..spec import ModelSpec
from ..training import TrainingOptions
from . import ops
from .fragments import (OBJECTIVE_FRAGMENTS, Fragments, Network, Noise, StepIO, Workspace,
                        fragments_for, missing_fragments)
from .graph import (DEFAULT_STEPS_PER_GRAPH, EagerSteps, ReplayedSteps, StepProgress, bind,
                    check_steps_per_graph, issue, record_event, resolve_execution)
from .launch import Launch, run, to_device, to_host


def supported(spec: ModelSpec) -> list[str]:
    """What the kernel path lacks for this model's ELBO (empty when it can run it)."""
    missing = missing_fragments(spec)
    if spec.likelihood.kernel is None:
        missing.append(f"a kernel for likelihood {spec.config.likelihood!r}")
    return missing


@dataclass
class Pass:
    """One forward-backward pass's encoder and decoder buffers and the StepIO the fragments
    share (encoder rows: the batch, then the prior's rows; decoder rows: batch * samples)."""
    enc: list          # encoder outputs, input first: [x, h1, ..., q_raw]
    enc_grad: list     # d loss / d pre-activation of each encoder output (None at the input)
    dec: list          # [z, h1, ..., p_raw]
    dec_grad: list
    io: StepIO


class KernelExecutor:
    """Runs the model on hand-written kernels; `device` is "cuda" or "emulated".

    `execution`: "eager", "graph", or None for the device's default ("graph" on cuda,
    "eager" on the emulator); `steps_per_graph`: steps per captured graph, None for whole
    epochs (cupyvae.cuda.graph).  Both can be changed between epochs.
    """
    device = ""
    # log_likelihood decodes at most this many rows (examples x samples) per launch
    # sequence: ~0.2 GB of float32 activations per buffer at D = 784, GEMMs of 65536 rows.
    importance_rows = 1 << 16

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
        self._epoch_out = None     # (3, batches): the plan's losses and ELBO terms per step
        self._epoch_terms = None
        self._steps = None         # EagerSteps / ReplayedSteps of the current plan, built lazily
        self._stream = None        # private CUDA stream of graph capture and replay
        self._inference = self._network(Workspace(self.xp))   # buffers kept between calls
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
    def check_objective(self, objective) -> None:
        """ValueError naming what is missing unless the step plan can train `objective`
        (a cupyvae.objectives.Objective) for this model."""
        fragment = OBJECTIVE_FRAGMENTS.get(objective.name) if objective.name in OBJECTIVE_FRAGMENTS \
            else None
        problem = (f"no kernel fragment for objective {objective.name!r}" if fragment is None
                   else fragment.missing(self.spec, objective))
        if problem:
            raise ValueError(f"device {self.device!r} cannot train this: {problem}. "
                             "Use device='cpu'.")

    def epoch_terms(self) -> dict | None:
        """{"train_recon", "train_kl"}: the ELBO terms' means (nats per example) over the
        steps of the latest train_epoch, computed on the device (step_terms) and read back
        with the losses; None before any."""
        return self._epoch_terms

    def train_epoch(self, x: np.ndarray, perm: np.ndarray, options, optimizer,
                    progress=None) -> float:
        """One epoch of the step plan with the objective, batch size, binarization,
        schedules, KL weight and clipping of `options` (cupyvae.training.TrainingOptions)
        and Adam's constants and step count from `optimizer` (advanced).  Host traffic:
        before, the permutation, the counters and `hyper` (a few bytes); after, one array
        of the epoch's losses and ELBO terms.  Parameters and moments stay on the device."""
        objective = objective_for(options)
        objective.check_model(self.spec)
        self.check_objective(objective)
        data = self._device_data(x)
        n_batches = len(perm) // options.batch_size
        check_step_counter(optimizer.step_count, n_batches)
        hyper = hyper_array(options, optimizer)
        with self._epoch_stream():
            perm_dev = self._perm            # overwritten in place: the plan keeps its address
            perm_dev[...] = to_device(perm.astype(np.int32), self.device)
            plan = self._training_plan(data, perm_dev, options, objective, n_batches)
            self.hyper[...] = to_device(hyper, self.device)
            self.counters[...] = to_device(np.array([optimizer.step_count, 0], np.uint32),
                                           self.device)
            self._step_runner(plan, n_batches).run(n_batches, progress)
            out = to_host(self._epoch_out)[:, :n_batches]   # the one read-back of the epoch
        optimizer.step_count += n_batches
        losses, recon, kl = np.asarray(out, np.float64)
        self._epoch_terms = {"train_recon": float(np.mean(recon)), "train_kl": float(np.mean(kl))}
        return float(np.mean(losses))

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
                                         self.sched, self._partials, self._epoch_out)]
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
            # Free the old copy before allocating the new: the plan and its steps (graphs)
            # hold it too; the plan is rebuilt for the new buffers right after.
            self._data, self._perm = None, None
            self._plan, self._plan_key, self._steps = [], None, None
            # A copy the executor owns (on the emulator to_device would alias x, and the
            # next array of this shape is written into it).
            device_copy = self.xp.array(x, copy=True)
            self._perm = self.xp.zeros(len(x), np.int32)
        self._data = (x, device_copy)
        return device_copy

    def _training_plan(self, data, perm_dev, options, objective, n_batches: int) -> list[Launch]:
        """The step plan, rebuilt (and so re-captured) only when its buffers or shapes change:
        hyperparameter values are not part of it (they are read from `hyper` on the device),
        only whether clipping runs at all, and the objective's own settings."""
        key = (id(data), id(perm_dev), options.batch_size, options.binarize, n_batches,
               options.clip_norm is not None, options.objective, options.iw_samples,
               options.free_bits)
        if key != self._plan_key:
            self._plan = build_training_plan(self, data, perm_dev, options, objective, n_batches)
            self._plan_key = key
            self._steps = None
        return self._plan

    def loss_and_grads(self, x: np.ndarray, eps: np.ndarray) -> tuple[float, np.ndarray]:
        """Mean negative ELBO with the caller's noise, and the flat gradient (host copies)."""
        net = self._network(Workspace(self.xp))
        # The default training objective: the negative ELBO, KL weight 1.
        parts = fragments_for(self.spec, net, objective_for(TrainingOptions()))
        noise = Noise(self.xp.zeros(2, np.uint32), self.spec.config.seed, philox.STREAM_POSTERIOR,
                      to_device(np.ascontiguousarray(eps, np.float32), self.device))
        step = self._pass(net, parts, len(x), noise, self._one)
        step.io.x[...] = to_device(x, self.device)
        run(self._forward_backward(net, parts, step), self.device)
        rows = parts.objective.loss_rows(step.io)
        loss = float(np.mean(sum(np.asarray(to_host(r), np.float64) for r in rows)))
        return loss, np.array(to_host(self.grad_flat))

    # ------------------------------------------------------------------ inference
    # Same methods and noise keys as the NumPy executor (cupyvae.executors): chunk c of
    # `chunk` rows (None: one chunk) draws its noise with step + c.  Uploads first, then
    # the launches of every chunk, then one read of the results: no synchronization between
    # chunks (a small host->device copy from pageable memory would wait for the stream).
    # The chunks share the buffers of one workspace, kept between calls.
    def encode_raw(self, x: np.ndarray, chunk: int | None = None, progress=None) -> np.ndarray:
        """The encoder's raw outputs (N, P) for x (N, D)."""
        return _reported(self._forward_raw("encoder", self.spec.encoder, to_device(x, self.device),
                                           chunk), progress)

    def decode_raw(self, z: np.ndarray, chunk: int | None = None) -> np.ndarray:
        """The decoder's raw outputs (N, R) for z (N, Z)."""
        return self._forward_raw("decoder", self.spec.decoder, to_device(z, self.device), chunk)

    def loss_rows(self, x: np.ndarray, step: int, stream: int, chunk: int | None = None,
                  progress=None) -> np.ndarray:
        """Per-example negative ELBO (N,) float64, one posterior draw each (Philox, `stream`),
        with the KL of the training step (closed form, or log q - log p).  `progress(N)`
        once the result is read (on every inference call here: chunks are queued, not done,
        until the one read-back)."""
        spec, net = self.spec, self._inference
        x_dev = to_device(x, self.device)
        counters = self._chunk_counters(len(x), step, chunk)
        out = self.xp.empty(len(x), np.float32)
        parts = fragments_for(spec, net)
        run(parts.prior.prepared(), self.device)
        for c, rows in chunk_slices(len(x), chunk):
            n = rows.stop - rows.start
            enc = net.activations("encoder", spec.encoder, n, inputs=x_dev[rows])
            dec = net.activations("decoder", spec.decoder, n)
            kl, nll = net.ws.array("loss.kl", (n,)), net.ws.array("loss.nll", (n,))
            noise = Noise(counters[c], spec.config.seed, stream)
            run([*net.forward(spec.encoder, enc),
                 *parts.kl.forward(enc[-1], noise, dec[0], kl),
                 *net.forward(spec.decoder, dec),
                 self._likelihood(dec[-1], x_dev[rows], 1.0, nll,
                                  net.ws.array("loss.dp", dec[-1].shape))], self.device)
            self.xp.add(nll, kl, out=out[rows])   # float32, as on the host
        return _reported(np.array(to_host(out), np.float64), progress)

    def posterior_sample(self, x: np.ndarray, step: int, stream: int, chunk: int | None = None,
                         progress=None) -> np.ndarray:
        """One reparameterized draw z (N, Z) of q(z|x) per row, drawn on the device by the
        posterior's fragment (PosteriorFragment.draw)."""
        spec, net = self.spec, self._inference
        x_dev = to_device(x, self.device)
        out = self.xp.empty((len(x), spec.latent_dim), np.float32)
        posterior = fragments_for(spec, net).posterior
        for c, rows in chunk_slices(len(x), chunk):
            enc = net.activations("encoder", spec.encoder, rows.stop - rows.start,
                                  inputs=x_dev[rows])
            run([*net.forward(spec.encoder, enc),
                 *posterior.draw(enc[-1], spec.config.seed, _uint32_step(step + c), stream,
                                 out[rows])], self.device)
        return _reported(np.array(to_host(out)), progress)

    def sample_raw(self, n: int, seed: int, chunk: int | None = None) -> np.ndarray:
        """The decoder's raw outputs for n draws of the prior, keyed as
        cupyvae.executors.prior_draws keys them: on the device where the prior's fragment
        draws (PriorFragment.sample: the standard normal), else on the host and uploaded."""
        z = self.xp.empty((n, self.spec.latent_dim), np.float32)
        draw = fragments_for(self.spec, self._inference).prior.sample(z, seed)
        if draw is None:
            host = self.spec.layout.views(self.host_flat())
            return self.decode_raw(prior_draws(self.spec, host, n, seed), chunk)
        run(draw, self.device)
        return self._forward_raw("decoder", self.spec.decoder, z, chunk)

    def log_likelihood(self, x: np.ndarray, n_samples: int, progress=None) -> np.ndarray:
        """Importance-sampled log p(x) per example (N,) float64 -- VAE.log_likelihood, on the
        device.  Examples go through in groups, their samples in chunks, at most
        `importance_rows` decoder rows at a time; for every chunk:
            repeat_rows (q and x to examples x samples rows), importance_noise (the keying of
            cupyvae.objective_twins.importance_noise, so the NumPy path draws the same
            noise), the posterior's draw and log q (from the noise), the decoder and the
            likelihood, the prior's log p, log_mean_exp_accumulate
        into a float64 running log-sum-exp per example on the device; log_mean_exp_finish
        then gives log p(x), and the host reads one float64 per example, once.
        `progress(n)` for each group of n examples once the device has finished it (an
        event completed; CUDA) -- on the emulator, at once.  The buffers (~0.7 GB at
        D = 784) are this call's own, freed when it returns."""
        spec, net = self.spec, self._network(Workspace(self.xp))
        samples_per_call = min(n_samples, self.importance_rows)
        examples_per_call = max(1, self.importance_rows // n_samples)
        x_dev = to_device(x, self.device)
        running_max = self.xp.full(len(x), -np.inf, np.float64)
        running_sum = self.xp.zeros(len(x), np.float64)
        log_px = self.xp.empty(len(x), np.float64)
        parts = fragments_for(spec, net)
        done = StepProgress(progress, lambda: record_event(self.device))
        run(parts.prior.prepared(), self.device)
        for first in range(0, len(x), examples_per_call):
            examples = slice(first, min(first + examples_per_call, len(x)))
            count = examples.stop - examples.start
            enc = net.activations("encoder", spec.encoder, count, inputs=x_dev[examples])
            launches = net.forward(spec.encoder, enc)
            for first_sample in range(0, n_samples, samples_per_call):
                samples = min(samples_per_call, n_samples - first_sample)
                launches += self._importance_chunk(net, parts, enc, x_dev[examples], first,
                                                   first_sample, samples,
                                                   running_max[examples], running_sum[examples])
                run(launches, self.device)
                launches = []
            done.queued(count)
        run(ops.log_mean_exp_finish(running_max, running_sum, n_samples, log_px), self.device)
        result = np.array(to_host(log_px))          # the one read-back: N float64
        done.finish()
        return result

    def _importance_chunk(self, net: Network, parts: Fragments, enc, xb, first_example: int,
                          first_sample: int, samples: int, running_max, running_sum) -> list:
        """The launches merging `samples` importance samples of the examples xb (whose
        encoder activations are enc) into their running log-sum-exp."""
        spec, ws = self.spec, net.ws
        rows = len(xb) * samples
        q_rows = ws.array("importance.q_rows", (rows, enc[-1].shape[1]))
        x_rows = ws.array("importance.x_rows", (rows, xb.shape[1]))
        eps = ws.array("importance.eps", (rows, spec.latent_dim))
        dec = net.activations("decoder", spec.decoder, rows)
        nll, log_q, log_p = (ws.array(f"importance.{what}", (rows,))
                             for what in ("nll", "log_q", "log_p"))
        noise = Noise(ws.array("importance.counters", (2,), np.uint32), 0, 0, eps)  # noise given
        return [ops.repeat_rows(enc[-1], samples, q_rows),
                ops.repeat_rows(xb, samples, x_rows),
                ops.importance_noise(spec.config.seed, first_example, len(xb), first_sample,
                                     samples, spec.latent_dim, eps),
                *parts.posterior.sample(q_rows, noise, dec[0]),
                *parts.posterior.log_q(q_rows, noise, log_q),
                *net.forward(spec.decoder, dec),
                self._likelihood(dec[-1], x_rows, 1.0, nll,
                                 ws.array("importance.dp", dec[-1].shape)),
                *parts.prior.log_prob(dec[0], log_p),
                ops.log_mean_exp_accumulate(nll, log_p, log_q, running_max, running_sum, samples)]

    def _forward_raw(self, name: str, layers, inputs_dev, chunk) -> np.ndarray:
        """Run `layers` over every row of the device array `inputs_dev` chunk by chunk (on the
        inference workspace's buffers '<name>.*'), then read the result back once."""
        result = self.xp.empty((len(inputs_dev), layers[-1].n_out), np.float32)
        for _, rows in chunk_slices(len(inputs_dev), chunk):
            acts = self._inference.activations(name, layers, rows.stop - rows.start,
                                               inputs=inputs_dev[rows])
            acts[-1] = result[rows]
            run(self._inference.forward(layers, acts), self.device)
        return np.array(to_host(result))

    def _chunk_counters(self, n: int, step: int, chunk: int | None):
        """Device counters [step + c, 0] for every chunk c, uploaded at once."""
        steps = [_uint32_step(step + c) for c, _ in chunk_slices(n, chunk)]
        return to_device(np.array([[s, 0] for s in steps], np.uint32), self.device)

    # ------------------------------------------------------------------ plan pieces
    def _network(self, ws: Workspace) -> Network:
        return Network(self.spec, self.params, self.grads, ws, self.workspace)

    def _pass(self, net: Network, parts: Fragments, batch: int, noise: Noise, kl_weight) -> Pass:
        """The buffers of one training pass of `batch` examples."""
        spec, ws = self.spec, net.ws
        enc = net.activations("encoder", spec.encoder, batch + parts.prior.encoder_rows)
        dec = net.activations("decoder", spec.decoder, batch * parts.objective.samples)
        enc_grad, dec_grad = net.gradients("encoder", enc), net.gradients("decoder", dec)
        io = StepIO(batch=batch, x=enc[0][:batch], q=enc[-1][:batch], z=dec[0],
                    nll=ws.array("nll", (len(dec[0]),)), dp=dec_grad[-1], noise=noise,
                    kl_weight=kl_weight, dz=ws.array("dz", dec[0].shape), dq=enc_grad[-1][:batch])
        return Pass(enc, enc_grad, dec, dec_grad, io)

    def _forward_backward(self, net: Network, parts: Fragments, step: Pass) -> list[Launch]:
        """Everything from the batch in step.io.x to every gradient in grad_flat, composed
        from the fragments (cupyvae.cuda.fragments: the order is documented there)."""
        spec, io, objective, prior = self.spec, step.io, parts.objective, parts.prior
        return [
            *prior.in_step(step.enc, step.enc_grad, io.batch),
            *net.forward(spec.encoder, step.enc),
            *objective.forward(io),
            *net.forward(spec.decoder, step.dec),
            self._likelihood(step.dec[-1], objective.data_rows(io),
                             objective.likelihood_scale(io.batch), io.nll, io.dp),
            *objective.weigh(io),
            *net.backward(spec.decoder, step.dec, step.dec_grad, io.dz),
            *objective.backward(io),
            *net.backward(spec.encoder, step.enc, step.enc_grad, prior.encoder_input_grad()),
            *prior.after_encoder_backward(),
        ]

    def _likelihood(self, raw, x, scale: float, nll, draw) -> Launch:
        return getattr(ops, f"{self.spec.likelihood.kernel}_nll")(raw, x, scale, nll, draw)


def build_training_plan(ex: KernelExecutor, data, perm_dev, options, objective,
                        n_batches: int) -> list[Launch]:
    """The ordered launches of one training step (see the module docstring) on a workspace
    of their own: the fragments of ex's model and of `objective`."""
    spec = ex.spec
    net = ex._network(Workspace(ex.xp))
    parts = fragments_for(spec, net, objective)
    step = ex._pass(net, parts, options.batch_size,
                    Noise(ex.counters, spec.config.seed, philox.STREAM_POSTERIOR), ex._kl_weight)
    ex._epoch_out = ex.xp.zeros((3, max(n_batches, 1)), np.float32)
    losses, terms = ex._epoch_out[0], ex._epoch_out[1:]
    clip = [ops.grad_norm_partials(ex.grad_flat, ex._partials),
            ops.grad_clip_scale(ex._partials, ex.hyper, ex.sched)] if options.clip_norm is not None else []
    return [
        ops.gather_rows(data, perm_dev, ex.counters, options.batch_size, options.binarize,
                        spec.config.seed, step.io.x),
        ops.schedule_step(ex.counters, ex.hyper, ex.sched),      # reads counters[0]
        *ex._forward_backward(net, parts, step),
        *clip,
        ops.adam_update(ex.flat, ex.grad_flat, ex.m, ex.v, ex.sched),
        ops.step_terms(*parts.objective.term_rows(step.io), ex.counters, terms),
        ops.end_step(*parts.objective.loss_rows(step.io), ex._kl_weight, ex.counters, losses),
    ]


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
