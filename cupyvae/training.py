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

from .options import (ValidatedOptions, boolean, nonnegative_float, option, optional,
                      positive_float, positive_int)


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
    threads: int | None = option(None, optional(positive_int),
                                 "BLAS threads of the NumPy path (cupyvae.threads); results repeat "
                                 "bit for bit only with the same count.  Default: 1, which never "
                                 "collapses on a shared machine; 2 trains 1.2-1.8x faster on an "
                                 "idle 2-core one.")

    @classmethod
    def build(cls, options: "TrainingOptions | None" = None, **changes) -> "TrainingOptions":
        """`options` (or the defaults) with keyword `changes` applied, all validated."""
        base = cls() if options is None else options
        if not isinstance(base, cls):
            raise TypeError(f"options must be a TrainingOptions, got {type(base).__name__}")
        return base.replace(**changes) if changes else base
