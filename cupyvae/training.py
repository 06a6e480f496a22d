"""Training options: one frozen, validated dataclass shared by `VAE.fit`, the CLI and the
run folder's config.json.

    options = TrainingOptions(epochs=50, batch_size=100, lr=1e-3)
    model.fit(x_train, x_val, options)            # or model.fit(x_train, x_val, epochs=50, ...)

Every field is an option (cupyvae.options): `cupyvae train` has one flag per field,
`--<name>`, with this help text, and `cupyvae train --resume` refuses a config.json whose
stored options break these rules, naming the field.  An option added here reaches the API,
the CLI and config.json at once.
"""
from __future__ import annotations

from dataclasses import dataclass

import hashlib

import numpy as np

from .objectives import OBJECTIVES
from .options import (OptionError, ValidatedOptions, boolean, nonnegative_float, nonnegative_int, number,
                      option, optional, positive_float, positive_int, registered, sample_count)
from .threads import thread_count
from .schedules import LR_SCHEDULES

# Keys the validation split's shuffle apart from every other use of the model's seed.
SPLIT_STREAM = 0x5917


@dataclass(frozen=True)
class TrainingOptions(ValidatedOptions):
    """How `VAE.fit` trains.  `epochs` is the number of epochs of one `fit` call; in a run
    folder it is the run's total (`--resume` trains until the run has that many)."""
    owner = "training option"

    epochs: int = option(10, positive_int,
                         "Epochs to train (with --resume: train until the run has this many).")
    batch_size: int = option(100, positive_int, "Examples per Adam step.")
    lr: float = option(1e-3, positive_float, "Adam learning rate.")
    weight_decay: float = option(0.0, nonnegative_float,
                                 "L2 weight decay added to the gradient (as in torch.optim.Adam).")
    binarize: bool = option(False, boolean,
                            "Dynamic binarization: every batch is resampled as x ~ Bernoulli(x) "
                            "(the validation set is binarized once, with a fixed draw).")
    objective: str = option("elbo", registered(OBJECTIVES),
                            "What training minimises: elbo, the negative ELBO (Kingma & Welling "
                            "2014), or iwae, the importance-weighted bound with --iw-samples "
                            "samples per example (Burda, Grosse & Salakhutdinov 2016).")
    iw_samples: int = option(1, sample_count,
                             "IWAE: importance samples k per example (the decoder runs on "
                             "batch_size * k rows); 1 with objective elbo.")
    free_bits: float = option(0.0, nonnegative_float,
                              "ELBO: free bits (Kingma et al. 2016), a floor in nats on each "
                              "latent dimension's batch-averaged KL; 0 = off.")
    val_fraction: float = option(
        0.0, number(0.0, maximum=1.0, open_max=True),
        "Hold out this fraction of the training examples (a seeded random subset) as the "
        "validation set, instead of the test split; 0 keeps the test split.")
    patience: int | None = option(
        None, optional(positive_int),
        "Early stopping: stop when the validation loss has not improved for this many "
        "epochs; the best epoch's checkpoint is kept beside the last one.")

    # Schedules count steps (Adam updates) over the whole run, from the step counter the
    # checkpoint keeps, so a resumed run follows them exactly (cupyvae.schedules).
    lr_schedule: str = option("constant", registered(LR_SCHEDULES),
                              "Learning rate after the warm-up: constant, or cosine decay from "
                              "--lr to --lr-min over --lr-decay-steps steps (Loshchilov & Hutter "
                              "2017, SGDR).")
    lr_warmup_steps: int = option(0, nonnegative_int,
                                  "Linear learning-rate warm-up over the first N steps: step k "
                                  "uses lr (k+1)/N (Goyal et al. 2017); 0: none.")
    lr_decay_steps: int = option(0, nonnegative_int,
                                 "Cosine schedule: steps after the warm-up over which the learning "
                                 "rate falls from --lr to --lr-min (then stays there).")
    lr_min: float = option(0.0, nonnegative_float,
                           "Cosine schedule: the final learning rate (eta_min), at most --lr.")
    kl_weight: float = option(1.0, nonnegative_float,
                              "KL weight beta: the loss is nll + beta KL (beta-VAE, Higgins et al. "
                              "2017); 1 is the ELBO.")
    kl_warmup_steps: int = option(0, nonnegative_int,
                                  "KL warm-up: beta rises linearly from 0 over the first N steps "
                                  "(KL annealing, Bowman et al. 2016; Sonderby et al. 2016); "
                                  "0: none.")
    clip_norm: float | None = option(None, optional(positive_float),
                                     "Clip the gradient to this global L2 norm before Adam "
                                     "(Pascanu et al. 2013); unset: no clipping.")

    threads: int | None = option(None, optional(thread_count),
                                 "BLAS threads of the NumPy path (cupyvae.threads); results repeat "
                                 "bit for bit only with the same count.  Default: 1, which never "
                                 "collapses on a shared machine; 2 trains 1.2-1.8x faster on an "
                                 "idle 2-core one.")

    def __post_init__(self):
        super().__post_init__()
        LR_SCHEDULES.get(self.lr_schedule)(self)    # refuses options the schedule cannot use
        OBJECTIVES.get(self.objective).check_options(self)   # combinations that make no sense

    @classmethod
    def build(cls, options: "TrainingOptions | None" = None, **changes) -> "TrainingOptions":
        """`options` (or the defaults) with keyword `changes` applied, all validated."""
        base = cls() if options is None else options
        if not isinstance(base, cls):
            raise TypeError(f"options must be a TrainingOptions, got {type(base).__name__}")
        return base.replace(**changes) if changes else base


def check_data_sizes(options: TrainingOptions, train_examples: int, validation_examples: int,
                     what: str = "the training set") -> None:
    """OptionError naming the field unless `options` can train on this many examples:
    batch_size at most the training set, patience only with validation examples.  The one
    check of fit and of a run folder (before it is written)."""
    if options.batch_size > train_examples:
        raise OptionError("batch_size", options.batch_size,
                          f"larger than {what} ({train_examples} examples)", options.owner)
    if options.patience is not None and not validation_examples:
        raise OptionError("patience", options.patience,
                          "early stopping needs a validation set: pass x_val, set "
                          "{val_fraction}, or use a dataset with a test split", options.owner)


# ---------------------------------------------------------------------- validation split
def split_validation(n_examples: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, validation rows) of a training set of `n_examples`: round(fraction *
    n_examples) rows (at least 1) drawn without replacement by a generator keyed by (seed,
    SPLIT_STREAM), so the same (n_examples, fraction, seed) always gives the same split.
    Both index arrays are sorted (the examples keep their order).  ValueError when the
    split would leave no training or no validation example."""
    n_val = max(1, round(fraction * n_examples))
    if n_val >= n_examples:
        raise OptionError("val_fraction", fraction,
                          f"of {n_examples} training examples leaves no example to train on",
                          TrainingOptions.owner)
    order = np.random.default_rng([seed, SPLIT_STREAM]).permutation(n_examples)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def split_digest(val_rows: np.ndarray) -> str:
    """SHA-256 of the validation rows (int64), recorded in a run's config.json so that a
    resumed run can check that it validates on the same examples."""
    return hashlib.sha256(np.ascontiguousarray(val_rows, dtype=np.int64).tobytes()).hexdigest()


def data_digest(x: np.ndarray) -> str:
    """SHA-256 of a data set's shape and float32 bytes (C order), recorded in a run's
    config.json so that a resumed run can check that it trains and validates on the same
    examples (a replaced data file is refused, not silently trained on)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    digest = hashlib.sha256(repr(x.shape).encode())
    digest.update(x.tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------- early stopping
def best_epoch(history: dict) -> tuple[int, float] | None:
    """(epoch, validation loss) of the lowest validation loss so far (the first of equal
    ones); None without validation losses."""
    validated = [(epoch, loss) for epoch, loss in zip(history.get("epoch", ()),
                                                      history.get("val_loss", ()))
                 if loss is not None]
    return min(validated, key=lambda pair: pair[1]) if validated else None


def epochs_without_improvement(history: dict) -> int:
    """Epochs since the best validation loss (0 when the last epoch is the best)."""
    best = best_epoch(history)
    return 0 if best is None else history["epoch"][-1] - best[0]


def stopped_early(history: dict, patience: int | None) -> bool:
    """True when early stopping with `patience` ends (or has ended) training: the
    validation loss has not improved for `patience` epochs.  Computed from the whole
    history, so a resumed run stops exactly where an uninterrupted one would."""
    return patience is not None and epochs_without_improvement(history) >= patience
