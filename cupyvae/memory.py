"""Sizes checked against the machine before any work: a model, or a result, that cannot fit
in memory is refused at once, with a message naming what asked for it, instead of a NumPy
MemoryError deep inside (or an hour of swapping before the kernel kills the process).

    require_memory(n * data_dim * 4, "sample(n=1000000000)", "n")

The checks are lower bounds of what the work really allocates (one buffer of the exact
size), so they never refuse a size that could run; they catch the sizes that cannot.
"""
from __future__ import annotations

import os

from .options import OptionError

GIB = 1 << 30
FLOAT32 = 4


class MemoryLimitError(ValueError):
    """A requested size needs more memory than this process may use; names the fields that
    set the size."""


class OptionMemoryError(MemoryLimitError, OptionError):
    """A MemoryLimitError whose size options set: an OptionError too, so the rule names the
    fields as {field} (keywords from the API, --flags from the CLI)."""


def memory_limit() -> int | None:
    """Bytes this process may use at most: the smaller of the machine's physical memory and
    the address-space limit (`ulimit -v`, RLIMIT_AS); None where neither is known."""
    limits = [_physical_memory(), _address_space_limit()]
    known = [limit for limit in limits if limit is not None]
    return min(known) if known else None


def require_memory(nbytes: int, what: str, fields: str) -> None:
    """MemoryLimitError unless `nbytes` fit in memory_limit(); `what` is the request (e.g.
    "the model's parameters"), `fields` the options or arguments that set its size."""
    limit = memory_limit()
    if limit is not None and nbytes > limit:
        raise MemoryLimitError(f"{what} need {_gib(nbytes)} of memory, more than this process "
                               f"may use ({_gib(limit)}); reduce {fields}")


def training_step_bytes(spec, batch: int, rows: int, parameter_bytes: int) -> int:
    """A lower bound on the bytes one training step holds at once (float32, NumPy path):
    `parameter_bytes` (parameters, gradients, Adam moments), every encoder layer's output
    for `batch` examples and its input, every decoder layer's output for `rows` decoded
    rows (the last one the likelihood's raw outputs), the noise and the codes z (rows x
    latent_dim each), for rows > batch (IWAE: rows = batch x iw_samples) the data and
    posterior parameters repeated per row, and the backward pass's gradient of the widest
    layer.  Temporaries (Philox's uint64 counters, activation derivatives) come on top."""
    encoder = batch * (spec.data_dim + sum(layer.n_out for layer in spec.encoder))
    decoder = rows * sum(layer.n_out for layer in spec.decoder)
    noise_and_codes = 2 * rows * spec.latent_dim
    repeated = rows * (spec.data_dim + spec.posterior.raw_width) if rows > batch else 0
    widest = max([batch * layer.n_out for layer in spec.encoder]
                 + [rows * layer.n_out for layer in spec.decoder])
    return parameter_bytes + FLOAT32 * (encoder + decoder + noise_and_codes + repeated + widest)


def require_training_memory(spec, options, rows: int, parameter_bytes: int) -> None:
    """OptionMemoryError, naming batch_size (and iw_samples, hidden), unless one training
    step of `options` (TrainingOptions) with `rows` decoded rows per step fits in
    memory_limit() (training_step_bytes).  The host's memory: on the cuda device the
    working set lives on the GPU, whose memory is no larger on the machines we know, so
    the check stays a lower bound there too."""
    limit = memory_limit()
    nbytes = training_step_bytes(spec, options.batch_size, rows, parameter_bytes)
    if limit is None or nbytes <= limit:
        return
    iwae = rows > options.batch_size
    samples = f" x {{iw_samples}} {options.iw_samples}" if iwae else ""
    raise OptionMemoryError(
        "iw_samples" if iwae else "batch_size",
        options.iw_samples if iwae else options.batch_size,
        f"a training step of {{batch_size}} {options.batch_size}{samples} ({rows:,} decoded "
        f"rows) through hidden layers {tuple(spec.config.hidden)} needs at least "
        f"{_gib(nbytes)} of memory, more than this process may use ({_gib(limit)}); reduce "
        f"{{batch_size}}{', {iw_samples}' if iwae else ''} or {{hidden}}", options.owner)


def _gib(nbytes: int) -> str:
    return f"{nbytes / GIB:,.1f} GiB" if nbytes < 1 << 60 else f"{nbytes / GIB:.3g} GiB"


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):   # not a POSIX system
        return None


def _address_space_limit() -> int | None:
    try:
        import resource
        soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, AttributeError, ValueError, OSError):
        return None
    return None if soft == resource.RLIM_INFINITY else soft
