"""Sizes checked against the machine before any work: a model, or a result, that cannot fit
in memory is refused at once, with a message naming what asked for it, instead of a NumPy
MemoryError deep inside (or an hour of swapping before the kernel kills the process).

    require_memory(n * data_dim * 4, "sample(n=1000000000)", "n")

The checks are lower bounds of what the work really allocates (one buffer of the exact
size), so they never refuse a size that could run; they catch the sizes that cannot.
"""
from __future__ import annotations

import os

GIB = 1 << 30


class MemoryLimitError(ValueError):
    """A requested size needs more memory than this process may use; names the fields that
    set the size."""


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
