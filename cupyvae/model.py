"""cupyvae.VAE: the user-facing model.  It validates at the boundary and delegates the
numbers to an executor (see executors.py), so the same code drives every device."""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from . import philox
from .checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from .config import VAEConfig
from .executors import EXECUTORS, binarize_batch, resolve_device
from .optim import Adam
from .spec import ModelSpec
from .threads import blas_threads, with_blas_threads
from .training import TrainingOptions

EVAL_CHUNK = 10_000


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the parameters of the last good epoch are kept."""


class VAE:
    """A variational autoencoder with plug-in posterior, likelihood and prior.

    >>> model = VAE(data_shape=(28, 28), latent_dim=2, hidden=(200,))
    >>> history = model.fit(x_train, x_val, epochs=50, batch_size=100, lr=1e-3)
    """

    def __init__(self, data_shape, latent_dim: int = 2, hidden=(200,), activation="relu",
                 posterior: str = "gaussian", likelihood: str = "bernoulli", prior: str = "normal",
                 device: str = "cpu", seed: int = 0, execution: str | None = None):
        self.config = VAEConfig(data_shape=tuple(np.atleast_1d(data_shape).tolist()), latent_dim=latent_dim,
                                hidden=tuple(hidden), activation=activation, posterior=posterior,
                                likelihood=likelihood, prior=prior, seed=seed)
        self.spec = ModelSpec(self.config)
        self.device = resolve_device(device)
        # execution: "eager" or "graph" (a CUDA graph per chunk of steps); None is the
        # device's default (graph on cuda).  A run-time choice, so not part of the config.
        self._executor = EXECUTORS.get(self.device)(self.spec, execution=execution)
        flat = self.spec.layout.zeros()
        self.spec.init_params(flat)
        self._executor.load_flat(flat)
        self.optimizer: Adam | None = None
        self.history: dict[str, list] = {"epoch": [], "train_loss": [], "val_loss": [], "seconds": []}

    # ---------------------------------------------------------------- parameters
    @property
    def params(self) -> dict[str, np.ndarray]:
        """name -> view into the flat parameter buffer (on the model's device)."""
        return self._executor.params

    @property
    def flat_params(self):
        return self._executor.flat

    # ---------------------------------------------------------------- training
    def fit(self, x_train, x_val=None, options: TrainingOptions | None = None, *,
            checkpoint: str | Path | None = None, verbose: bool = False,
            progress: Callable[[int], None] | None = None,
            on_epoch: Callable[[dict], None] | None = None, **option_changes) -> dict[str, list]:
        """Train with Adam; returns the history (per-epoch train and validation loss).

        `options`: a TrainingOptions (cupyvae.training), and/or its fields as keywords
        (`epochs=50, batch_size=100, lr=1e-3, weight_decay=0, binarize=False, threads=None`);
        every value is validated (ValueError naming the field) before any work.  `threads`:
        the BLAS threads of the whole call, restored after it (cupyvae.threads; None is 1).
        The inference methods take the same keyword.  Only whole batches are
        used in an epoch (the order is reshuffled every epoch, so every example is seen).
        `checkpoint`: a path written atomically after every epoch, so a crash loses at most
        one epoch.  `verbose`: print one line per epoch to stderr.  `progress(n)` is called
        after every n batches, `on_epoch(record)` after every epoch.  Calling fit again
        continues training (the optimizer keeps its state).
        """
        options = TrainingOptions.build(options, **option_changes)
        x_train = self.validate_data(x_train, "x_train")
        x_val = None if x_val is None else self.validate_data(x_val, "x_val")
        if options.batch_size > len(x_train):
            raise ValueError(f"batch_size {options.batch_size} is larger than the training set "
                             f"({len(x_train)} examples)")
        self._ensure_optimizer(options.lr, options.weight_decay)
        if options.binarize and x_val is not None:
            x_val = binarize_batch(x_val, self.config.seed, 0)   # fixed, so epochs compare
        with blas_threads(options.threads):
            for _ in range(options.epochs):
                record = self._train_one_epoch(x_train, x_val, options.batch_size,
                                               options.binarize, progress)
                if checkpoint is not None:
                    self.save(checkpoint)
                if verbose:
                    print(format_epoch(record), file=sys.stderr)
                if on_epoch is not None:
                    on_epoch(record)
        return self.history

    def _train_one_epoch(self, x_train, x_val, batch_size, binarize, progress) -> dict:
        start = time.perf_counter()
        epoch = len(self.history["epoch"]) + 1
        # Keyed by epoch, so a run resumed from a checkpoint replays exactly the same orders.
        rng = np.random.default_rng([self.config.seed, epoch])
        saved = self._executor.host_flat()
        saved_opt = self.optimizer.snapshot()
        perm = rng.permutation(len(x_train)).astype(np.int64)
        train_loss = self._executor.train_epoch(x_train, perm, batch_size, self.optimizer,
                                                binarize, progress)
        val_loss = None if x_val is None else self.loss(x_val)
        if not math.isfinite(train_loss) or (val_loss is not None and not math.isfinite(val_loss)):
            self._executor.load_flat(saved)
            self.optimizer.restore(saved_opt)
            raise TrainingDiverged(f"epoch {epoch}: the loss became {train_loss} (train) / "
                                   f"{val_loss} (val); parameters restored to epoch {epoch - 1}. "
                                   "Try a smaller learning rate.")
        record = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                  "seconds": time.perf_counter() - start}
        for key, value in record.items():
            self.history[key].append(value)
        return record

    def _ensure_optimizer(self, lr, weight_decay):
        if self.optimizer is None:
            self.optimizer = Adam(lr=float(lr), weight_decay=float(weight_decay))
        else:   # continuing: keep the moments and the step count, take the new rates
            Adam(lr=float(lr), weight_decay=float(weight_decay))   # validates them
            self.optimizer.lr, self.optimizer.weight_decay = float(lr), float(weight_decay)

    # ---------------------------------------------------------------- inference
    @with_blas_threads
    def loss(self, x) -> float:
        """Mean negative ELBO in nats per example (one posterior sample per example,
        drawn from a fixed Philox stream, so the value is repeatable)."""
        x = self.validate_data(x, "x")
        total = 0.0
        for chunk, start in _chunks(x):
            total += float(self._executor.loss_rows(chunk, start // EVAL_CHUNK, philox.STREAM_EVAL).sum())
        return total / len(x)

    @with_blas_threads
    def loss_and_grads(self, x, eps) -> tuple[float, dict[str, np.ndarray]]:
        """Mean negative ELBO of the batch x with noise eps (B, latent_dim), and its gradient
        keyed like `params`."""
        x = self.validate_data(x, "x")
        eps = self._as_latent(eps, "eps", rows=len(x))
        loss, grad_flat = self._executor.loss_and_grads(x, eps)
        return loss, self.spec.layout.views(grad_flat)

    @with_blas_threads
    def encode(self, x, sample: bool = False) -> np.ndarray:
        """Posterior mean (N, latent_dim), or one reparameterized draw if `sample`."""
        x = self.validate_data(x, "x")
        out = []
        for chunk, start in _chunks(x):
            raw = self._executor.encode_raw(chunk)
            if sample:
                eps = philox.normal(self.config.seed, start // EVAL_CHUNK, len(chunk),
                                    self.config.latent_dim, philox.STREAM_POSTERIOR)
                out.append(self.spec.posterior.rsample(raw, eps))
            else:
                out.append(self.spec.posterior.mean(raw))
        return np.concatenate(out)

    @with_blas_threads
    def decode(self, z) -> np.ndarray:
        """Likelihood mean for each latent row, shaped (N, *data_shape)."""
        z = self._as_latent(z, "z")
        out = [self.spec.likelihood.mean(self._executor.decode_raw(c)) for c, _ in _chunks(z)]
        return np.concatenate(out).reshape(len(z), *self.config.data_shape)

    @with_blas_threads
    def sample(self, n: int, seed: int | None = None) -> np.ndarray:
        """n draws z ~ p(z), decoded to the likelihood mean: (n, *data_shape)."""
        if int(n) != n or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        seed = self.config.seed if seed is None else int(seed)
        z_dim = self.config.latent_dim
        u = philox.uniform(seed, 0, int(n), 1, philox.STREAM_PRIOR)[:, 0]
        eps = philox.normal(seed, 1, int(n), z_dim, philox.STREAM_PRIOR)
        prior_params = self.spec.prior_params(self._host_params())
        return self.decode(self.spec.prior.sample(prior_params, u, eps))

    @with_blas_threads
    def reconstruct(self, x) -> np.ndarray:
        """decode(encode(x)): the likelihood mean at the posterior mean."""
        return self.decode(self.encode(x))

    @with_blas_threads
    def log_likelihood(self, x, n_samples: int = 100) -> np.ndarray:
        """Importance-sampled log p(x) per example (nats), with q(z|x) as proposal:
        log p(x) ~= logsumexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log K."""
        from scipy.special import logsumexp
        x = self.validate_data(x, "x")
        if int(n_samples) != n_samples or n_samples < 1:
            raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
        post, lik, prior = self.spec.posterior, self.spec.likelihood, self.spec.prior
        prior_params = self.spec.prior_params(self._host_params())
        out = np.empty(len(x))
        for i in range(len(x) // 100 + (len(x) % 100 > 0)):
            xb = x[i * 100:(i + 1) * 100]
            raw = self._executor.encode_raw(xb)
            log_w = np.empty((n_samples, len(xb)))
            for k in range(n_samples):
                eps = philox.normal(self.config.seed, i * n_samples + k, len(xb),
                                    self.config.latent_dim, philox.STREAM_IMPORTANCE)
                z = post.rsample(raw, eps)
                log_w[k] = (lik.log_prob(self._executor.decode_raw(z), xb)
                            + prior.log_prob(z, prior_params) - post.log_prob(raw, z))
            out[i * 100:(i + 1) * 100] = logsumexp(log_w, axis=0) - np.log(n_samples)
        return out

    # ---------------------------------------------------------------- persistence
    def save(self, path) -> None:
        """Write an atomic checkpoint that rebuilds this model (and its optimizer) alone."""
        tensors = {"params": self._executor.host_flat()}
        meta = {"config": self.config.to_json(), "history": self.history, "adam": None}
        if self.optimizer is not None and self.optimizer.m is not None:
            tensors["adam.m"], tensors["adam.v"] = self.optimizer.m, self.optimizer.v
            meta["adam"] = self.optimizer.state()
        save_checkpoint(path, tensors, meta)

    # ---------------------------------------------------------------- validation
    def validate_data(self, x, what: str = "data") -> np.ndarray:
        """x as (N, D) float32 C-contiguous; ValueError naming the problem unless it is
        non-empty, of this model's shape, finite and inside the likelihood's support."""
        x = np.asarray(x)
        shape = self.config.data_shape
        if x.dtype.kind not in "fb":
            raise ValueError(f"{what} has dtype {x.dtype}; expected floating point data "
                             "(scale integer images first, e.g. x.astype(np.float32) / 255)")
        if x.ndim == 0 or x.shape[0] == 0:
            raise ValueError(f"{what} is empty (shape {x.shape})")
        if x.shape[1:] not in (shape, (self.config.data_dim,)):
            raise ValueError(f"{what} has shape {x.shape}; expected (N, {', '.join(map(str, shape))})"
                             f" or (N, {self.config.data_dim})")
        x = np.ascontiguousarray(x.reshape(len(x), -1), dtype=np.float32)
        bad = ~np.isfinite(x)
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            raise ValueError(f"{what} has {int(bad.sum())} NaN/inf values (first in example {row})")
        self.spec.likelihood.validate_data(x, what)
        return x

    def _as_latent(self, z, what: str, rows: int | None = None) -> np.ndarray:
        z = np.asarray(z)
        z_dim = self.config.latent_dim
        if z.ndim != 2 or z.shape[1] != z_dim or z.shape[0] == 0 or (rows is not None and len(z) != rows):
            want = f"({rows if rows is not None else 'N'}, {z_dim})"
            raise ValueError(f"{what} has shape {z.shape}; expected {want}")
        if z.dtype.kind not in "fiu":
            raise ValueError(f"{what} has dtype {z.dtype}; expected floating point")
        z = np.ascontiguousarray(z, dtype=np.float32)
        if not np.isfinite(z).all():
            raise ValueError(f"{what} has NaN/inf values")
        return z

    def _host_params(self) -> dict[str, np.ndarray]:
        return self.spec.layout.views(self._executor.host_flat())

    def __repr__(self) -> str:
        c = self.config
        return (f"VAE(data_shape={c.data_shape}, latent_dim={c.latent_dim}, hidden={c.hidden}, "
                f"posterior={c.posterior!r}, likelihood={c.likelihood!r}, prior={c.prior!r}, "
                f"device={self.device!r})")


def load(path, device: str = "cpu", execution: str | None = None) -> VAE:
    """Rebuild a model (config, parameters, optimizer state, history) from a checkpoint."""
    tensors, meta = read_checkpoint(path)
    try:
        config = VAEConfig.from_json(meta["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} has an unusable config ({exc})") from None
    model = VAE(**{k: getattr(config, k) for k in ("data_shape", "latent_dim", "hidden", "activation",
                                                  "posterior", "likelihood", "prior", "seed")},
                device=device, execution=execution)
    flat = tensors.get("params")
    if flat is None or flat.shape != (model.spec.layout.size,) or flat.dtype != np.float32:
        raise CheckpointError(f"checkpoint {path}: parameter buffer is "
                              f"{None if flat is None else (flat.shape, str(flat.dtype))}, the config "
                              f"needs ({model.spec.layout.size},) float32")
    if not np.isfinite(flat).all():
        raise CheckpointError(f"checkpoint {path} holds NaN/inf parameters")
    model._executor.load_flat(flat)
    model.history = meta.get("history") or model.history
    adam = meta.get("adam")
    if adam:
        model.optimizer = Adam(**adam, m=tensors["adam.m"], v=tensors["adam.v"])
    return model


def format_epoch(record: dict) -> str:
    val = "" if record["val_loss"] is None else f"  val {record['val_loss']:.3f}"
    return (f"epoch {record['epoch']:3d}  train {record['train_loss']:.3f}{val}  "
            f"({record['seconds']:.1f} s)")


def _chunks(x: np.ndarray):
    for start in range(0, len(x), EVAL_CHUNK):
        yield x[start:start + EVAL_CHUNK], start
