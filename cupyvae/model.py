"""cupyvae.VAE: the user-facing model.  It validates at the boundary and delegates the
numbers to an executor (see executors.py), so the same code drives every device."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import numpy as np

from . import philox
from .arrays import as_float32_examples
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .files import check_writable_file
from .config import VAEConfig
from .distributions.grid import eight_bit_scale
from .executors import EXECUTORS, binarize_batch, prior_draws, resolve_device
from .initialization import DEFAULT_INITIALIZATION
from .memory import require_memory, require_training_memory
from .numbers import nonfinite_problem
from .objectives import Objective, objective_for
from .optim import Adam
from .options import boolean, check_argument, integer_at_least, positive_int, sample_count
from .reference import kl_rows, prior_state
from .spec import ModelSpec
from .progress import BatchCallback, Reporter, batch_callback, combine, reporter_for_level
from .threads import blas_threads, with_blas_threads
from .training import (TrainingOptions, best_epoch, check_data_sizes, split_validation,
                       stopped_early)

EVAL_CHUNK = 10_000
# Float32 buffers of the parameter layout that every device keeps for a trained model:
# parameters, gradients and Adam's two moments (on cuda, the host copies a checkpoint is
# written from: parameters and moments, plus the initial parameters).
PARAMETER_BUFFERS = 4
# Burda et al. 2016, section 5.2: a latent dimension is active when the variance of its
# posterior mean across the data exceeds this.
ACTIVE_UNIT_THRESHOLD = 0.01


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the parameters of the last good epoch are kept."""


class VAE:
    """A variational autoencoder with plug-in posterior, likelihood and prior.

    >>> model = VAE(data_shape=(28, 28), latent_dim=2, hidden=(200,))
    >>> history = model.fit(x_train, x_val, epochs=50, batch_size=100, lr=1e-3)
    """

    def __init__(self, data_shape, latent_dim: int = 2, hidden=(200,), activation="relu",
                 posterior: str = "gaussian", likelihood: str = "bernoulli", prior: str = "normal",
                 device: str = "cpu", seed: int = 0, execution: str | None = None,
                 prior_components: int | None = None, prior_init: str = "random",
                 init: str = DEFAULT_INITIALIZATION):
        self.config = VAEConfig(data_shape=tuple(np.atleast_1d(data_shape).tolist()), latent_dim=latent_dim,
                                hidden=hidden, activation=activation, posterior=posterior,
                                likelihood=likelihood, prior=prior, seed=seed,
                                prior_components=prior_components, prior_init=prior_init, init=init)
        self.spec = ModelSpec(self.config)
        self._require_parameter_memory()
        self.device = resolve_device(device)
        # execution: "eager" or "graph" (a CUDA graph per chunk of steps); None is the
        # device's default (graph on cuda).  A run-time choice, so not part of the config.
        self._executor = EXECUTORS.get(self.device)(self.spec, execution=execution)
        flat = self.spec.layout.zeros()
        self.spec.init_params(flat)
        self._executor.load_flat(flat)
        self.optimizer: Adam | None = None
        # train_loss: the training objective; val_loss: the negative ELBO of the validation
        # set; *_recon / *_kl: the ELBO's two terms; active_units: see elbo_terms.
        self.history: dict[str, list] = {key: [] for key in (
            "epoch", "train_loss", "val_loss", "seconds", "train_recon", "train_kl",
            "val_recon", "val_kl", "active_units")}

    def _require_parameter_memory(self) -> None:
        """Refuse, before anything is allocated, a model whose buffers cannot fit
        (cupyvae.memory): PARAMETER_BUFFERS float32 buffers of the layout."""
        c, size = self.config, self.spec.layout.size
        require_memory(size * 4 * PARAMETER_BUFFERS,
                       f"the model's {size:,} parameters (data_dim={c.data_dim}, hidden={c.hidden}, "
                       f"latent_dim={c.latent_dim}, prior {c.prior!r} with prior_components="
                       f"{c.prior_components}) with their gradients and Adam moments",
                       "hidden, latent_dim or prior_components")

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
            checkpoint: str | Path | None = None, verbose: int | bool = 0,
            progress: Callable[[int], None] | None = None,
            on_epoch: Callable[[dict], None] | None = None, reporter: Reporter | None = None,
            **option_changes) -> dict[str, list]:
        """Train with Adam; returns this call's epochs of the history (a copy) --
        `model.history` holds them all, one entry per epoch in each column: train_loss (the
        objective's mean over the epoch's steps), val_loss (the validation set's mean
        negative ELBO), seconds, train_recon / train_kl and val_recon / val_kl (the ELBO's
        reconstruction and KL terms, nats per example; the train ones are means over the
        epoch's steps, on the kernel devices computed on the device and read with the losses),
        active_units (see elbo_terms).

        `options`: a TrainingOptions (cupyvae.training), and/or its fields as keywords
        (`epochs=50, batch_size=100, lr=1e-3, weight_decay=0, binarize=False,
        objective="elbo", iw_samples=1, free_bits=0`, the schedules `lr_schedule`,
        `lr_warmup_steps`, `lr_decay_steps`, `lr_min`, the KL weight `kl_weight`,
        `kl_warmup_steps`, `clip_norm`, `val_fraction`, `patience`, `threads`); every value is
        validated (ValueError naming the field) before any work, and so is the objective
        against this model and device (validate_training_options).  Schedules count Adam
        steps over the model's whole training (cupyvae.schedules), so calling fit again
        continues them.  Only whole batches are used in an epoch (the order is reshuffled
        every epoch, so every example is seen).  `threads`: the BLAS threads of the whole
        call, restored after it (cupyvae.threads; None is 1); the inference methods take
        the same keyword.

        Validation: `x_val`, or with `val_fraction` > 0 a seeded random subset of x_train
        (training.split_validation; not both).  `patience`: early stopping -- training ends
        once the validation loss has not improved for that many epochs (counted over the
        whole history, so resuming from a checkpoint stops where an uninterrupted run
        would); with `checkpoint`, the best epoch's model is also written beside it
        (best_checkpoint_path: model.safetensors -> model.best.safetensors; see
        sync_best_checkpoint for a history trained without patience).  Without `checkpoint`
        the model keeps the last epoch's parameters, not the best's.

        `checkpoint`: a path written atomically after every epoch, so a crash loses at most
        one epoch; one that cannot be written (a folder, a file in its folder path) is a
        ValueError before any work (cupyvae.files.check_writable_file).  `verbose`: 0 silent, 1 one line per epoch on stderr, 2 also progress
        bars for the batches and the validation pass.  `progress(n)` is called after every
        n batches, `on_epoch(record)` after every epoch; `reporter` (cupyvae.progress)
        receives every event.  Calling fit again continues training (the optimizer keeps
        its state).
        """
        options = TrainingOptions.build(options, **option_changes)
        self.validate_training_options(options)
        if checkpoint is not None:    # refused now, not after the first epoch's work
            check_writable_file(checkpoint, "checkpoint")
        reporter = combine(reporter_for_level(verbose), reporter,
                           None if progress is None else BatchCallback(progress))
        x_train = self.validate_data(x_train, "x_train")
        x_val = None if x_val is None else self.validate_data(x_val, "x_val")
        if options.binarize:
            check_binarizable(x_train, "x_train")
            check_binarizable(x_val, "x_val")
        x_train, x_val = self._validation_split(x_train, x_val, options)
        check_data_sizes(options, len(x_train), 0 if x_val is None else len(x_val))
        keep_best = checkpoint is not None and options.patience is not None
        if keep_best:
            self.sync_best_checkpoint(checkpoint)
        if self.optimizer is None:   # untrained: a prior initialised from the data is set now
            self._init_prior_from_data(x_train)
        self._ensure_optimizer(options.lr, options.weight_decay)
        if options.binarize and x_val is not None:
            x_val = binarize_batch(x_val, self.config.seed, 0)   # fixed, so epochs compare
        first = len(self.history["epoch"])
        last_epoch = first + options.epochs
        with blas_threads(options.threads):
            for epoch in range(first + 1, last_epoch + 1):
                if stopped_early(self.history, options.patience):
                    break
                reporter.epoch_started(epoch, last_epoch, len(x_train) // options.batch_size)
                record = self._train_one_epoch(x_train, x_val, options, reporter)
                record["objective"] = objective_words(options)   # for the epoch line only
                if checkpoint is not None:
                    self.save(checkpoint)
                    if keep_best and best_epoch(self.history)[0] == epoch:
                        self.save(best_checkpoint_path(checkpoint))
                reporter.epoch_finished(record)
                if on_epoch is not None:
                    on_epoch(record)
        return {key: list(values[first:]) for key, values in self.history.items()}

    def sync_best_checkpoint(self, checkpoint: str | Path) -> None:
        """Make best_checkpoint_path(checkpoint) hold the best epoch of this model's history
        before fit(patience=...) continues it: a history trained without patience (or a
        process killed between writing the last and the best checkpoint) may have left it
        missing or stale.  Where the best epoch is the last one, its model is this one and is
        written; where it is an earlier epoch whose model was not kept, ValueError (its
        parameters are gone, so early stopping could not return them)."""
        best = best_epoch(self.history)
        if best is None:
            return
        path = best_checkpoint_path(checkpoint)
        kept = kept_epoch(path)
        if kept == best:
            return
        if best[0] == self.history["epoch"][-1]:
            self.save(path)
            return
        held = (f"holds epoch {kept[0]}" if kept else
                "is unreadable" if path.is_file() else "does not exist")
        raise ValueError(f"patience: the best epoch so far is epoch {best[0]} (validation loss "
                         f"{best[1]:.4f}), but its model was not kept ({path} {held}: epochs "
                         "trained without patience keep no best model), so early stopping could "
                         "not return it; continue without patience, or train a new model with it")

    def validate_training_options(self, options: TrainingOptions) -> TrainingOptions:
        """`options` if this model can train with them on its device, else ValueError naming
        the problem (free bits without a per-dimension KL, IWAE without a reparameterizable
        posterior, an objective the kernel devices do not run yet), or MemoryLimitError
        naming batch_size / iw_samples / hidden when one training step cannot fit in memory
        (cupyvae.memory.require_training_memory)."""
        objective = self._objective(options)
        require_training_memory(self.spec, options, objective.noise_rows(options.batch_size),
                                self.spec.layout.size * 4 * PARAMETER_BUFFERS)
        return options

    def _objective(self, options: TrainingOptions) -> Objective:
        objective = objective_for(options)
        objective.check_model(self.spec)
        self._executor.check_objective(objective)
        return objective

    def _validation_split(self, x_train, x_val, options: TrainingOptions):
        """(training rows, validation rows): x_val as given, or the val_fraction split."""
        if not options.val_fraction:
            return x_train, x_val
        if x_val is not None:
            raise ValueError("give x_val or val_fraction, not both")
        train_rows, val_rows = split_validation(len(x_train), options.val_fraction, self.config.seed)
        return x_train[train_rows], x_train[val_rows]

    def _train_one_epoch(self, x_train, x_val, options: TrainingOptions, reporter) -> dict:
        start = time.perf_counter()
        epoch = len(self.history["epoch"]) + 1
        # Keyed by epoch, so a run resumed from a checkpoint replays exactly the same orders.
        rng = np.random.default_rng([self.config.seed, epoch])
        saved, saved_step = self._executor.snapshot(), self.optimizer.step_count
        perm = rng.permutation(len(x_train)).astype(np.int64)
        train_loss = self._executor.train_epoch(x_train, perm, options, self.optimizer,
                                                batch_callback(reporter))
        train_terms = self._executor.epoch_terms() or {"train_recon": None, "train_kl": None}
        val = None if x_val is None else self._validation_terms(x_val, reporter)
        val_loss = None if val is None else val["negative_elbo"]
        if not math.isfinite(train_loss) or (val_loss is not None and not math.isfinite(val_loss)):
            self._executor.restore(saved)
            self.optimizer.step_count = saved_step
            raise TrainingDiverged(f"epoch {epoch}: the loss became {train_loss} (train) / "
                                   f"{val_loss} (val); parameters restored to epoch {epoch - 1}. "
                                   f"{divergence_advice(options)}")
        record = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                  "seconds": time.perf_counter() - start, **train_terms,
                  "val_recon": None if val is None else val["reconstruction"],
                  "val_kl": None if val is None else val["kl"],
                  "active_units": None if val is None else val["active_units"]}
        done = len(self.history["epoch"])
        for key, value in record.items():
            # A column missing from an older checkpoint's history is None for its epochs.
            self.history.setdefault(key, [None] * done).append(value)
        return record

    def _init_prior_from_data(self, x_train) -> None:
        # A generator apart from spec.init_params' default_rng(seed), keyed by the seed alone,
        # so the same config gives the same pseudo-inputs on every device.
        values = self.spec.prior.init_from_data(x_train, np.random.default_rng([self.config.seed, 1]))
        if values:
            flat = self._executor.host_flat()
            params = self.spec.layout.views(flat)
            for name, value in values.items():
                params[f"prior.{name}"][...] = value
            self._executor.load_flat(flat)

    def _validation_terms(self, x_val, reporter: Reporter) -> dict:
        with reporter.task(f"validation ({len(x_val)} examples)", len(x_val)) as advance:
            return self.elbo_terms(x_val, progress=advance)

    def _ensure_optimizer(self, lr, weight_decay):
        if self.optimizer is None:
            self.optimizer = Adam(lr=float(lr), weight_decay=float(weight_decay))
            self._executor.load_moments(None, None)
        else:   # continuing: keep the moments and the step count, take the new rates
            Adam(lr=float(lr), weight_decay=float(weight_decay))   # validates them
            self.optimizer.lr, self.optimizer.weight_decay = float(lr), float(weight_decay)

    # ---------------------------------------------------------------- inference
    @with_blas_threads
    def loss(self, x, progress: Callable[[int], None] | None = None) -> float:
        """Mean negative ELBO in nats per example (one posterior sample per example,
        drawn from a fixed Philox stream, so the value is repeatable); the rows are summed
        in float64, so extreme but finite rows do not overflow the total."""
        x = self.validate_data(x, "x")
        rows = self._executor.loss_rows(x, 0, philox.STREAM_EVAL, EVAL_CHUNK,   # chunk c: step c
                                        progress=progress)
        return float(np.sum(rows, dtype=np.float64)) / len(x)

    @with_blas_threads
    def elbo_terms(self, x, progress: Callable[[int], None] | None = None) -> dict:
        """The validation metrics of one set x:
            negative_elbo   loss(x), nats per example
            kl              mean KL(q(z|x) || p(z)) (closed form, or the one-sample estimate
                            with loss()'s noise), nats per example
            reconstruction  negative_elbo - kl: the mean -E_q log p(x|z) estimate of loss()
            active_units    latent dimensions whose posterior mean varies across x with
                            variance > 0.01 (Burda, Grosse & Salakhutdinov 2016, section 5.2)
        Accumulated in float64.  `progress(n)` as in loss()."""
        x = self.validate_data(x, "x")
        negative_elbo = self.loss(x, progress)
        params = self._host_params()
        raw_all = self._executor.encode_raw(x, EVAL_CHUNK)
        kl_total = 0.0
        for c, start in enumerate(range(0, len(x), EVAL_CHUNK)):   # loss()'s noise: chunk c, step c
            raw = raw_all[start:start + EVAL_CHUNK]
            eps = philox.normal(self.config.seed, c, len(raw), self.config.latent_dim,
                                philox.STREAM_EVAL)
            kl_total += float(np.sum(kl_rows(self.spec, params, raw, eps), dtype=np.float64))
        kl = kl_total / len(x)
        variance = np.var(self.spec.posterior.mean(raw_all).astype(np.float64), axis=0)
        return {"negative_elbo": negative_elbo, "reconstruction": negative_elbo - kl, "kl": kl,
                "active_units": int(np.sum(variance > ACTIVE_UNIT_THRESHOLD))}

    @with_blas_threads
    def loss_and_grads(self, x, eps) -> tuple[float, dict[str, np.ndarray]]:
        """Mean negative ELBO of the batch x with noise eps (B, latent_dim), and its gradient
        keyed like `params`."""
        x = self.validate_data(x, "x")
        eps = self._as_latent(eps, "eps", rows=len(x))
        loss, grad_flat = self._executor.loss_and_grads(x, eps)
        return loss, self.spec.layout.views(grad_flat)

    @with_blas_threads
    def encode(self, x, sample: bool = False,
               progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Posterior mean (N, latent_dim) float32, or one reparameterized draw if `sample`
        (from a fixed Philox stream, so repeatable).  `progress(n)` is called as n more
        examples are done."""
        x = self.validate_data(x, "x")
        if sample:   # chunk c of EVAL_CHUNK rows draws with Philox step c
            return self._executor.posterior_sample(x, 0, philox.STREAM_POSTERIOR, EVAL_CHUNK,
                                                   progress=progress)
        return self.spec.posterior.mean(self._executor.encode_raw(x, EVAL_CHUNK, progress=progress))

    @with_blas_threads
    def decode(self, z) -> np.ndarray:
        """Likelihood mean for each latent row, shaped (N, *data_shape)."""
        z = self._as_latent(z, "z")
        self._require_rows_memory(len(z), f"decode(z) with z of shape {z.shape}", "the rows of z")
        return self._likelihood_means(self._executor.decode_raw(z, EVAL_CHUNK))

    @with_blas_threads
    def sample(self, n: int, seed: int | None = None) -> np.ndarray:
        """n draws z ~ p(z), decoded to the likelihood mean: (n, *data_shape).  The codes
        are sample_latent(n, seed)'s (drawn on the device where the prior has a kernel)."""
        n, seed = self._sample_args(n, seed)
        return self._likelihood_means(self._executor.sample_raw(n, seed, EVAL_CHUNK))

    @with_blas_threads
    def sample_latent(self, n: int, seed: int | None = None) -> np.ndarray:
        """n draws z ~ p(z), (n, latent_dim) float32: the codes `sample` decodes
        (cupyvae.executors.prior_draws: Philox STREAM_PRIOR keyed by `seed`, default the
        model's)."""
        n, seed = self._sample_args(n, seed)
        return prior_draws(self.spec, self._host_params(), n, seed).astype(np.float32)

    @with_blas_threads
    def prior_components(self) -> dict[str, np.ndarray] | None:
        """The prior's mixture components as they stand: {"weights": (K,) float64 summing to
        1, "means": (K, latent_dim) float32}; None for a prior that is no mixture (normal).
        The VampPrior's means are the posterior means of its encoded pseudo-inputs."""
        density = prior_state(self.spec, self._host_params()).density
        means = self.spec.prior.component_means(density)
        if means is None:
            return None
        return {"weights": self.spec.prior.component_weights(density),
                "means": np.asarray(means, np.float32)}

    def pseudo_inputs(self) -> np.ndarray | None:
        """The VampPrior's pseudo-inputs as the encoder sees them (hardtanh-bounded to
        [0, 1]), (K, *data_shape) float32; None for a prior without pseudo-inputs."""
        u = self.spec.prior.pseudo_inputs(self._host_params())
        return None if u is None else np.asarray(u, np.float32).reshape(len(u), *self.config.data_shape)

    def _sample_args(self, n, seed) -> tuple[int, int]:
        n = check_argument("n", n, positive_int)
        self._require_rows_memory(n, f"sample(n={n})", "n")
        return n, self.config.seed if seed is None else check_argument("seed", seed, _seed_check)

    def _require_rows_memory(self, rows: int, what: str, fields: str) -> None:
        """Refuse `rows` decoded rows (the likelihood's raw outputs and their means, float32)
        that cannot fit in memory, before any work (cupyvae.memory)."""
        row_bytes = 4 * (self.spec.likelihood.raw_width + self.config.data_dim)
        require_memory(rows * row_bytes, f"the {rows:,} decoded rows of {what}", fields)

    def _likelihood_means(self, raw) -> np.ndarray:
        return self.spec.likelihood.mean(raw).reshape(len(raw), *self.config.data_shape)

    @with_blas_threads
    def reconstruct(self, x) -> np.ndarray:
        """decode(encode(x)): the likelihood mean at the posterior mean."""
        return self.decode(self.encode(x))

    @with_blas_threads
    def log_likelihood(self, x, n_samples: int = 100,
                       progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Importance-sampled log p(x) per example, nats, float64 (N,), with q(z|x) as the
        proposal (Burda, Grosse & Salakhutdinov 2016, eq. 8; K = n_samples):
            log p(x) ~= log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x),  z_k = rsample(eps_k).
        log q(z_k|x) comes from the noise itself (Posterior.log_prob_of_draw; for the
        Gaussian -1/2 sum(log 2pi + lv + eps^2)), never from z - mu, so narrow posteriors
        stay exact; the weights and their log-sum-exp are accumulated in float64.
        Noise: objective_twins.importance_noise, keyed by (example index in x, sample
        index), so the result does not depend on the chunking.  The executor decodes all
        samples of a group of examples at once (examples x samples rows, at most its
        `importance_rows`; an example with more samples in several chunks): on the kernel
        devices with the log-sum-exp on the device, read back once as one float64 per
        example (KernelExecutor.log_likelihood).  `progress(n)` is called as each group of
        n examples is done (the n sum to len(x), like fit's progress).  OptionError (a
        ValueError) for an n_samples that is no integer in [1, 2^32 - 1] (the sample index
        keys Philox as a uint32)."""
        n_samples = check_argument("n_samples", n_samples, sample_count)
        x = self.validate_data(x, "x")
        return self._executor.log_likelihood(x, n_samples, progress=progress)

    def bits_per_dim(self, log_px, x, binarized: bool = False) -> np.ndarray:
        """Log-likelihoods in nats per example (e.g. log_likelihood(x), or -loss(x) for a
        bound) -> bits per dimension, -log2 p(x) / D (cupyvae.distributions.bits_per_dim).

        Likelihoods that are mass functions (Likelihood.discrete) report -log2 P(x) / D as
        is.  Continuous densities on 8-bit images (every value of x is k/255, or x is uint8,
        which the model reads as k/255) are first converted to the 0..255 pixel scale,
        log p(255 x) = log p(x) - D log 255; on other data, and on `binarized` data (the
        {0, 1} outcomes of dynamic binarization are no 8-bit intensities), they report the
        density of x itself.  log_px: nats, one per example of x (N,) or a scalar (e.g.
        a mean over x); returns float64 bits per dimension of the same shape.  x: the data
        log_px was computed on (validated like every input, validate_data; only its values'
        grid is read).  bits_per_dim_basis(x, binarized) says which formula applied.
        ValueError for log_px of another length than x, OptionError for a `binarized` that
        is no bool."""
        x = self.validate_data(x, "x")
        scale = self._data_scale(x, binarized)
        shape, examples = np.shape(log_px), len(x)
        if shape not in ((), (examples,)):
            raise ValueError(f"log_px has shape {shape}; expected ({examples},), one value per "
                             f"example of x, or a scalar")
        return self.spec.likelihood.bits_per_dim(log_px, scale)

    def log_likelihood_note(self, x) -> str | None:
        """What the log-likelihood of data x (N, ...) means when it is not the log-probability
        of x (a density's log-density, bernoulli's cross-entropy on grey levels), else None;
        see Likelihood.log_likelihood_note.  ValueError for data validate_data refuses."""
        return self.spec.likelihood.log_likelihood_note(self.validate_data(x, "x"))

    def bits_per_dim_basis(self, x, binarized: bool = False) -> str:
        """The formula bits_per_dim(., x, binarized) applies, in words (for reports)."""
        return self.spec.likelihood.bits_per_dim_basis(self._data_scale(x, binarized))

    def _data_scale(self, x, binarized: bool) -> float:
        binarized = check_argument("binarized", binarized, boolean)   # "no" is truthy
        x = self.validate_data(x, "x")          # uint8 images become k/255 here, as in loss()
        return 1.0 if binarized else eight_bit_scale(x)

    # ---------------------------------------------------------------- persistence
    def save(self, path) -> None:
        """Write an atomic checkpoint that rebuilds this model (and its optimizer) alone."""
        tensors = {"params": self._executor.host_flat()}
        meta = {"config": self.config.to_json(), "history": self.history, "adam": None,
                "layout": {e.name: list(e.shape) for e in self.spec.layout.entries}}
        if self.optimizer is not None:
            tensors["adam.m"], tensors["adam.v"] = self._executor.host_moments()
            meta["adam"] = self.optimizer.state()
        save_checkpoint(path, tensors, meta)

    # ---------------------------------------------------------------- validation
    def validate_data(self, x, what: str = "data") -> np.ndarray:
        """x as (N, D) float32 C-contiguous; ValueError naming the problem unless it is
        non-empty, of this model's shape, finite and inside the likelihood's support.
        Element types follow cupyvae.arrays: floats as given, bool as 0/1, uint8 images
        divided by 255, other types refused -- the rule the dataset files follow too."""
        x = as_array(x, what)
        shape = self.config.data_shape
        try:
            x = as_float32_examples(x)       # the same rule as the dataset loaders
        except ValueError as exc:
            raise ValueError(f"{what} has {exc}") from None
        if x.ndim == 0:
            raise ValueError(f"{what} is a single number (shape ()); expected examples, "
                             f"(N, {', '.join(map(str, shape))})")
        if x.shape[0] == 0:
            raise ValueError(f"{what} is empty (shape {x.shape})")
        if x.shape[1:] not in (shape, (self.config.data_dim,)):
            shapes = dict.fromkeys([shape, (self.config.data_dim,)])   # once when they coincide
            expected = " or ".join(f"(N, {', '.join(map(str, s))})" for s in shapes)
            raise ValueError(f"{what} has shape {x.shape}; expected {expected}")
        x = np.ascontiguousarray(x.reshape(len(x), -1), dtype=np.float32)
        problem = nonfinite_problem(x)
        if problem:
            raise ValueError(f"{what} {problem}")
        self.spec.likelihood.validate_data(x, what)
        return x

    def _as_latent(self, z, what: str, rows: int | None = None) -> np.ndarray:
        z = as_array(z, what)
        z_dim = self.config.latent_dim
        if z.ndim != 2 or z.shape[1] != z_dim or z.shape[0] == 0 or (rows is not None and len(z) != rows):
            want = f"({rows if rows is not None else 'N'}, {z_dim})"
            raise ValueError(f"{what} has shape {z.shape}; expected {want}")
        if z.dtype.kind not in "fiu":
            raise ValueError(f"{what} has dtype {z.dtype}; expected floating point")
        with np.errstate(over="ignore", invalid="ignore"):   # refused just below
            z = np.ascontiguousarray(z, dtype=np.float32)
        if not np.isfinite(z).all():
            raise ValueError(f"{what} has NaN/inf values (or values beyond float32's range)")
        return z

    def _host_params(self) -> dict[str, np.ndarray]:
        return self.spec.layout.views(self._executor.host_flat())

    def __repr__(self) -> str:
        c = self.config
        return (f"VAE(data_shape={c.data_shape}, latent_dim={c.latent_dim}, hidden={c.hidden}, "
                f"posterior={c.posterior!r}, likelihood={c.likelihood!r}, prior={c.prior!r}, "
                f"device={self.device!r})")


def load(path, device: str = "cpu", execution: str | None = None) -> VAE:
    """Rebuild a model (config, parameters, optimizer state, history) from a checkpoint.

    The whole file is verified first (cupyvae.checkpoint.load_checkpoint: digests, the
    parameter count the config implies, every tensor, the Adam state and the history), so
    a bad file raises CheckpointError, naming it and the problem, before anything is built.
    """
    checkpoint = load_checkpoint(path)
    config = checkpoint.config
    model = VAE(**{k: getattr(config, k) for k in ("data_shape", "latent_dim", "hidden", "activation",
                                                  "posterior", "likelihood", "prior", "seed",
                                                  "prior_components", "prior_init", "init")},
                device=device, execution=execution)
    model._executor.load_flat(checkpoint.params)
    model.history = checkpoint.history
    model.optimizer = checkpoint.optimizer
    if checkpoint.moments is not None:
        model._executor.load_moments(*checkpoint.moments)
    return model


def check_binarizable(x: np.ndarray | None, what: str) -> None:
    """ValueError naming `what` unless every value of x (validated data, or None) is in
    [0, 1]: dynamic binarization draws x ~ Bernoulli(x), a probability."""
    if x is None or x.size == 0:
        return
    low, high = float(x.min()), float(x.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(f"binarize: {what} has values in [{low:g}, {high:g}], but dynamic "
                         "binarization draws x ~ Bernoulli(x) and needs values in [0, 1]; "
                         "rescale the data or train without binarize")


def objective_words(options: TrainingOptions) -> str | None:
    """How the training objective differs from the negative ELBO, in words (None: it is
    the negative ELBO), for the epoch lines."""
    if options.objective != "elbo":
        return f"{options.objective} k={options.iw_samples}"
    parts = [f"kl_weight {options.kl_weight:g}" if options.kl_weight != 1 else "",
             "KL warm-up" if options.kl_warmup_steps else "",
             f"free bits {options.free_bits:g}" if options.free_bits else ""]
    return ", ".join(part for part in parts if part) or None


_seed_check = integer_at_least(0, 2 ** 64 - 1)


def as_array(values, what: str) -> np.ndarray:
    """np.asarray(values) for the methods' array arguments, refusing what NumPy would turn
    into something else: ragged nested lists (NumPy's own error, named), and masked arrays
    with masked values, whose mask np.asarray drops silently (the hidden values would be
    trained on)."""
    if isinstance(values, np.ma.MaskedArray) and np.ma.is_masked(values):
        raise ValueError(f"{what} is a masked array with {int(np.ma.count_masked(values))} "
                         "masked values; fill or drop them first (e.g. x.filled(0))")
    try:
        return np.asarray(values)
    except (TypeError, ValueError) as exc:   # ragged lists, objects NumPy cannot convert
        raise ValueError(f"{what} is not an array of numbers ({exc})") from None


# Options that scale the loss or the step: when training diverges with one of them far from
# its default, the advice names it rather than blaming the learning rate alone.
LOSS_SCALING_OPTIONS = ("kl_weight", "free_bits", "weight_decay", "lr_min")


def divergence_advice(options: TrainingOptions) -> str:
    """What to try after the loss became NaN/inf: a smaller learning rate, and the
    options that scale the loss that were set away from their defaults."""
    defaults = TrainingOptions()
    changed = [f"{name}={getattr(options, name):g}" for name in LOSS_SCALING_OPTIONS
               if getattr(options, name) != getattr(defaults, name)]
    if not changed:
        return "Try a smaller learning rate."
    return f"Try a smaller learning rate, or check {', '.join(changed)}."


def format_epoch(record: dict) -> str:
    """One line per epoch: the training and validation negative ELBO (nats per example),
    so the two compare; the training objective too, by name, where it is another
    (record["objective"], objective_words).  Without the training ELBO terms, the
    objective alone ("train")."""
    val = "" if record["val_loss"] is None else f"  val -ELBO {record['val_loss']:.3f}"
    recon, kl = record.get("train_recon"), record.get("train_kl")
    if recon is None or kl is None:
        train = f"train {record['train_loss']:.3f}"
    else:
        train = f"train -ELBO {recon + kl:.3f}"
        if record.get("objective"):
            train += f" (objective {record['train_loss']:.3f}: {record['objective']})"
    return f"epoch {record['epoch']:3d}  {train}{val}  ({record['seconds']:.1f} s)"


def kept_epoch(path: str | Path) -> tuple[int, float] | None:
    """(epoch, validation loss) of the last epoch a checkpoint file holds; None when the
    file is missing, damaged or holds no validated epoch."""
    try:
        history = load_checkpoint(path).history
    except CheckpointError:
        return None
    if not history["epoch"] or history["val_loss"][-1] is None:
        return None
    return history["epoch"][-1], history["val_loss"][-1]


def best_checkpoint_path(checkpoint: str | Path) -> Path:
    """Where fit(patience=...) keeps the best epoch's model: beside `checkpoint`, with
    '.best' before the suffix (run/checkpoint.safetensors -> run/checkpoint.best.safetensors)."""
    path = Path(checkpoint)
    return path.with_name(f"{path.stem}.best{path.suffix}")
