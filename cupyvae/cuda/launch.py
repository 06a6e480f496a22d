"""A kernel launch as plain data, and the one routine that runs launches on a backend.

Launch builders (cupyvae.cuda.ops) validate shapes, dtypes and scalar types when they
build a Launch, so kernels never check their arguments and a Launch, once built, is
known to be well formed.  The same Launch runs on either backend: its arrays are NumPy
arrays for "emulated" and CuPy arrays for "cuda"; scalars are exact NumPy scalars
(np.float32, np.int32, np.uint32), never Python numbers (CuPy would pass 8 bytes).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .loader import get_function


@dataclass(frozen=True)
class Launch:
    """Kernel `entry` of file `kernel` (e.g. "bernoulli") over `grid` x `block` threads."""

    kernel: str
    entry: str
    grid: tuple
    block: tuple
    args: tuple
    shared_mem: int = 0


def run(launches: Launch | Iterable[Launch], device: str) -> None:
    """Run launches in order on `device` ("emulated" or "cuda"), on the current stream."""
    if isinstance(launches, Launch):
        launches = (launches,)
    for launch in launches:
        kernel = get_function(launch.kernel, launch.entry, device)
        kernel(launch.grid, launch.block, launch.args, shared_mem=launch.shared_mem)


def to_device(array, device: str):
    """`array` as the array type kernels on `device` take (NumPy for emulated, CuPy for cuda)."""
    return _ARRAY_MODULES[device]().asarray(array)


def to_host(array):
    """`array` as a NumPy array (CuPy arrays are copied back; NumPy ones pass through)."""
    if isinstance(array, np.ndarray):
        return array
    return array.get()


def _cupy():
    import cupy  # lazy: CuPy exists only on GPU machines

    return cupy


_ARRAY_MODULES = {"emulated": lambda: np, "cuda": _cupy}
