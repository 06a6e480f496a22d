"""How many BLAS threads the NumPy path uses, set through threadpoolctl.

`VAE.fit` (TrainingOptions.threads, `--threads` on the command line) and the inference calls
(`loss`, `elbo_terms`, `encode`, `decode`, `log_likelihood`, `sample`, `sample_latent`,
`prior_components`, `reconstruct`, `loss_and_grads`: keyword `threads`) run NumPy's BLAS
with that many threads inside the call and restore the previous setting when it returns.
No environment variable is read or set.

    with blas_threads(2):          # what fit(..., threads=2) does around its epochs
        ...

`threads=None` means: the count of the enclosing call (the validation loss inside `fit`
runs with fit's count), else `default_threads()`.

The thread count is part of what makes results repeat bit for bit: OpenBLAS splits and
orders a product's sums differently for different counts (and its single-thread path for
small products is a different kernel), so the same run with 1 and 2 threads differs in the
last bits, and the differences grow over training.
"""
from __future__ import annotations

import functools
import inspect
import os
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

from .options import check_argument, integer_at_least

# At most this many BLAS threads.  A fixed bound, not the machine's core count, so that a run's
# config.json (which records the count) still validates and resumes on a smaller machine;
# 1024 is above the cores of any machine a NumPy BLAS runs on, while a count near 2^31 or
# beyond would overflow the C int that threadpoolctl passes to the BLAS through ctypes.
MAX_THREADS = 1024
thread_count = integer_at_least(1, MAX_THREADS)

# The count in force inside blas_threads, so that nested calls with None keep it.
_ACTIVE: ContextVar[int | None] = ContextVar("cupyvae_blas_threads", default=None)


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # macOS, Windows
        return os.cpu_count() or 1


def default_threads() -> int:
    """The thread count used when none is given: 1, the one count that never collapses.

    Seconds per training step with 2 BLAS threads relative to 1, on the 2-core AMD EPYC dev
    VM (benchmarks/bench_threads_cpu.py --rounds 3 --steps 50, two runs, each started in a
    window >= 97% idle; "busy": another process spinning on one core):

        model, batch                    idle machine       one core busy
        784-200-2, 100                  1.34x, 1.40x faster   2.3x, 2.6x slower
        784-200-20, 100                 1.19x, 1.37x faster   1.7x, 1.9x slower
        784-200-20, 1000                1.56x, 1.52x faster   1.8x, 1.9x slower
        784-1024-1024-64, 1024          1.80x, 1.74x faster   1.3x, 1.3x slower

    A third run (2026-11-30, --rounds 3 --steps 50, benchmarks/results/threads-cpu.json):
    idle 1.43x, 1.35x, 1.49x, 1.69x faster; one core busy 1.5x, 1.3x, 1.8x, 1.3x slower.

    One thread's min-max spread over the rounds stayed within 15% of the median; two
    threads' reached 2x with one core busy.  With the VM loaded by other jobs (load average
    8-9), 2 threads were 13-33x slower at batch 100 and 2-7x slower at batch 1000-1024:
    OpenBLAS's threads wait for each other at every product, so a descheduled one stalls
    every step.  A dedicated machine gains 1.2-1.8x from threads=2 (or --threads 2); a
    shared one loses up to 30x, so the default does not take the risk.
    """
    return 1


@contextmanager
def blas_threads(threads: int | None) -> Iterator[int]:
    """Run the block with `threads` BLAS threads (None: the enclosing count, else the
    default); yields the count in force.  ValueError for anything but an int in
    [1, MAX_THREADS]."""
    active = _ACTIVE.get()
    if threads is None and active is not None:
        yield active
        return
    count = default_threads() if threads is None else check_threads(threads)
    token = _ACTIVE.set(count)
    try:
        with _controller().limit(limits=count, user_api="blas"):
            yield count
    finally:
        _ACTIVE.reset(token)


def check_threads(threads) -> int:
    """`threads` if it is an integer in [1, MAX_THREADS], else OptionError naming it."""
    return check_argument("threads", threads, thread_count)


def with_blas_threads(method):
    """Gives `method` a keyword-only argument `threads` (int or None) and runs it inside
    blas_threads(threads)."""
    @functools.wraps(method)
    def wrapper(*args, threads: int | None = None, **kwargs):
        with blas_threads(threads):
            return method(*args, **kwargs)

    signature = inspect.signature(method)
    extra = inspect.Parameter("threads", inspect.Parameter.KEYWORD_ONLY, default=None)
    params = list(signature.parameters.values())
    wrapper.__signature__ = signature.replace(parameters=params + [extra])
    return wrapper


@functools.lru_cache(maxsize=1)
def _controller():
    """One threadpoolctl controller, built once: building one scans every loaded library
    (~1 ms), limiting through it costs microseconds.  NumPy's BLAS is loaded by then."""
    from threadpoolctl import ThreadpoolController
    return ThreadpoolController()
