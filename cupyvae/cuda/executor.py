"""The kernel executors: one step plan, run by CuPy ("cuda") or by the CPU emulator ("emulated").

A training step is an explicit, ordered list of kernel launches (cupyvae.cuda.launch.Launch)
over one workspace allocated up front: parameters, gradients and Adam moments (four flat
buffers sharing the layout of cupyvae.params), the device-resident dataset and epoch
permutation, every activation and activation gradient for the batch, and the per-step
losses.  Nothing is allocated and nothing is read back inside a step, and every per-step
scalar (the step count keying Philox and Adam, the batch index) lives in the device
array `counters`, advanced by a kernel: so the same list can be replayed eagerly, captured
once into a CUDA graph, or run on NumPy arrays by the emulator.

The plan, for an MLP encoder/decoder with layers 0..L-1:
    gather_rows                  xb = data[perm[batch*B + b]] (optionally binarized)
    linear_forward  x L          encoder, bias and activation fused
    <posterior>_forward          z = mu + exp(lv/2) eps(Philox), kl per row
    linear_forward  x L          decoder
    <likelihood>_nll             nll per row, d p_raw = (1/B) d nll / d p_raw
    linear_backward_weight/_input, last layer first   (decoder; d z at the end)
    <posterior>_backward         d q_raw from d z and the KL
    linear_backward_weight/_input                     (encoder; no d x for layer 0)
    batch_loss                   losses[batch] = mean_b (nll + kl)
    adam_update                  the whole flat buffer, one launch
    advance_counters             step += 1, batch += 1
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import philox
from ..executors import EXECUTORS
from ..spec import ModelSpec
from . import ops
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
    enc_grad: list     # d loss / d pre-activation of each encoder layer output (index like enc)
    z: object
    dz: object
    kl: object
    dec: list          # [z, h1, ..., p_raw]
    dec_grad: list
    nll: object


class KernelExecutor:
    """Runs the model on hand-written kernels; `device` is "cuda" or "emulated"."""
    device = ""

    def __init__(self, spec: ModelSpec):
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
        self._data = None          # (host array identity, device copy)
        self._plan_key = None
        self._plan: list[Launch] = []

    # ------------------------------------------------------------------ state
    def load_flat(self, flat: np.ndarray) -> None:
        self.flat[...] = to_device(np.asarray(flat, np.float32), self.device)

    def host_flat(self) -> np.ndarray:
        return np.array(to_host(self.flat))

    # ------------------------------------------------------------------ training
    def train_epoch(self, x: np.ndarray, perm: np.ndarray, batch_size: int, optimizer,
                    binarize: bool, progress=None) -> float:
        """One epoch of the step plan; the host touches the device once before and once after."""
        data = self._device_data(x)
        n_batches = len(perm) // batch_size
        if optimizer.step_count + n_batches >= 2 ** 32:
            raise OverflowError("the step counter would pass 2^32 (it keys Philox and Adam in "
                                "uint32 device memory)")
        perm_dev = self._perm            # overwritten in place: the plan keeps its address
        perm_dev[...] = to_device(perm.astype(np.int32), self.device)
        plan = self._training_plan(data, perm_dev, batch_size, optimizer, binarize, n_batches)
        self._upload_optimizer(optimizer)
        self.counters[...] = to_device(np.array([optimizer.step_count, 0], np.uint32), self.device)
        for _ in range(n_batches):
            run(plan, self.device)
            if progress is not None:
                progress(1)
        losses = to_host(self._losses[:n_batches])        # the one read-back of the epoch
        self._download_optimizer(optimizer, n_batches)
        return float(np.mean(losses, dtype=np.float64))

    def _device_data(self, x: np.ndarray):
        """The training set, uploaded once and kept resident while the same array is used."""
        if self._data is None or self._data[0] is not x:
            self._data = (x, to_device(x, self.device))
            self._perm = self.xp.zeros(len(x), np.int32)
        return self._data[1]

    def _upload_optimizer(self, optimizer) -> None:
        if optimizer.m is None:
            self.m[...] = 0
            self.v[...] = 0
        else:
            self.m[...] = to_device(optimizer.m, self.device)
            self.v[...] = to_device(optimizer.v, self.device)

    def _download_optimizer(self, optimizer, steps: int) -> None:
        optimizer.m, optimizer.v = np.array(to_host(self.m)), np.array(to_host(self.v))
        optimizer.step_count += steps

    def _training_plan(self, data, perm_dev, batch_size, optimizer, binarize, n_batches) -> list[Launch]:
        key = (id(data), id(perm_dev), batch_size, optimizer.lr, optimizer.beta1, optimizer.beta2,
               optimizer.eps, optimizer.weight_decay, binarize, n_batches)
        if key != self._plan_key:
            self._plan = build_training_plan(self, data, perm_dev, batch_size, optimizer, binarize,
                                             n_batches)
            self._plan_key = key
        return self._plan

    # ------------------------------------------------------------------ inference
    def loss_rows(self, x: np.ndarray, step: int, stream: int) -> np.ndarray:
        buffers = self._batch_buffers(len(x))
        buffers.enc[0][...] = to_device(x, self.device)
        counters = to_device(np.array([step, 0], np.uint32), self.device)
        launches = [*self._forward(buffers, counters, stream),
                    self._likelihood_launch(buffers, 1.0)]
        run(launches, self.device)
        return np.array(to_host(buffers.nll) + to_host(buffers.kl), np.float64)

    def encode_raw(self, x: np.ndarray) -> np.ndarray:
        buffers = self._batch_buffers(len(x))
        buffers.enc[0][...] = to_device(x, self.device)
        run(self._mlp_forward(self.spec.encoder, buffers.enc), self.device)
        return np.array(to_host(buffers.enc[-1]))

    def decode_raw(self, z: np.ndarray) -> np.ndarray:
        buffers = self._batch_buffers(len(z))
        buffers.dec[0][...] = to_device(z, self.device)
        run(self._mlp_forward(self.spec.decoder, buffers.dec), self.device)
        return np.array(to_host(buffers.dec[-1]))

    # ------------------------------------------------------------------ plan pieces
    def _batch_buffers(self, batch: int) -> BatchBuffers:
        xp, spec = self.xp, self.spec

        def outputs(layers, first_width):
            widths = [first_width] + [layer.n_out for layer in layers]
            return [xp.zeros((batch, w), np.float32) for w in widths]

        enc = outputs(spec.encoder, spec.data_dim)
        dec = outputs(spec.decoder, spec.latent_dim)
        return BatchBuffers(enc=enc, enc_grad=[xp.zeros_like(a) for a in enc], z=dec[0],
                            dz=xp.zeros_like(dec[0]), kl=xp.zeros(batch, np.float32), dec=dec,
                            dec_grad=[xp.zeros_like(a) for a in dec],
                            nll=xp.zeros(batch, np.float32))

    def _mlp_forward(self, layers, acts) -> list[Launch]:
        return [ops.linear_forward(acts[i], self.params[f"{layer.name}.weight"],
                                   self.params[f"{layer.name}.bias"], layer.activation, acts[i + 1])
                for i, layer in enumerate(layers)]

    def _mlp_backward(self, layers, acts, grads, input_grad) -> list[Launch]:
        """grads[i + 1] holds d loss / d pre-activation of layer i's output on entry;
        writes every dW, db and grads[i] downwards; `input_grad` receives d input (or None)."""
        launches = []
        for i in reversed(range(len(layers))):
            layer = layers[i]
            launches.extend(_as_tuple(ops.linear_backward_weight(
                acts[i], grads[i + 1], self.grads[f"{layer.name}.weight"],
                self.grads[f"{layer.name}.bias"])))
            target = grads[i] if i > 0 else input_grad
            if target is not None:
                act_below = layers[i - 1].activation if i > 0 else "identity"
                launches.append(ops.linear_backward_input(grads[i + 1], self.params[f"{layer.name}.weight"],
                                                          acts[i], act_below, target))
        return launches

    def _seed_words(self) -> tuple[int, int]:
        return philox.split_seed(self.spec.config.seed)

    def _forward(self, buffers: BatchBuffers, counters, stream: int) -> list[Launch]:
        posterior = self.spec.posterior.kernel
        return [*self._mlp_forward(self.spec.encoder, buffers.enc),
                getattr(ops, f"{posterior}_forward")(buffers.enc[-1], counters, self.spec.config.seed,
                                                     stream, buffers.z, buffers.kl),
                *self._mlp_forward(self.spec.decoder, buffers.dec)]

    def _likelihood_launch(self, buffers: BatchBuffers, scale: float) -> Launch:
        return getattr(ops, f"{self.spec.likelihood.kernel}_nll")(
            buffers.dec[-1], buffers.enc[0], scale, buffers.nll, buffers.dec_grad[-1])


def build_training_plan(ex: KernelExecutor, data, perm_dev, batch_size: int, optimizer,
                        binarize: bool, n_batches: int) -> list[Launch]:
    """The ordered launches of one training step (see the module docstring)."""
    spec = ex.spec
    buffers = ex._batch_buffers(batch_size)
    ex._batch = buffers
    ex._losses = ex.xp.zeros(max(n_batches, 1), np.float32)
    scale = 1.0 / batch_size
    posterior = spec.posterior.kernel
    return [
        ops.gather_rows(data, perm_dev, ex.counters, batch_size, binarize, spec.config.seed,
                        buffers.enc[0]),
        *ex._forward(buffers, ex.counters, philox.STREAM_POSTERIOR),
        ex._likelihood_launch(buffers, scale),
        *ex._mlp_backward(spec.decoder, buffers.dec, buffers.dec_grad, buffers.dz),
        getattr(ops, f"{posterior}_backward")(buffers.enc[-1], buffers.dz, ex.counters,
                                              spec.config.seed, philox.STREAM_POSTERIOR, scale,
                                              buffers.enc_grad[-1]),
        *ex._mlp_backward(spec.encoder, buffers.enc, buffers.enc_grad, None),
        ops.batch_loss(buffers.nll, buffers.kl, ex.counters, ex._losses),
        ops.adam_update(ex.flat, ex.grad_flat, ex.m, ex.v, ex.counters, optimizer.lr,
                        optimizer.beta1, optimizer.beta2, optimizer.eps, optimizer.weight_decay),
        ops.advance_counters(ex.counters),
    ]


def _as_tuple(launches) -> tuple:
    return launches if isinstance(launches, tuple) else (launches,)


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

    def __init__(self, spec: ModelSpec):
        try:
            import cupy
            cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:  # ImportError, or CUDARuntimeError without a driver/device
            raise ValueError(f"device 'cuda' needs CuPy and a CUDA GPU ({exc}); install "
                             "cupyvae[cuda12] or cupyvae[cuda13], or use device='cpu'") from None
        super().__init__(spec)
