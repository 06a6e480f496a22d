"""A kernel launch as plain data, and the one routine that runs launches on a backend.

Launch builders (cupyvae.cuda.ops) validate shapes, dtypes and scalar types when they
build a launch, so kernels never check their arguments and a launch, once built, is
known to be well formed.  The same launch runs on either backend: its arrays are NumPy
arrays for "emulated" and CuPy arrays for "cuda"; scalars are exact NumPy scalars
(np.float32, np.int32, np.uint32), never Python numbers (CuPy would pass 8 bytes).

Two kinds of launch, run the same way (`launch.bind(device)()`, which is what `run` and
the graph machinery in cupyvae.cuda.graph do):
    Launch             a RawKernel: entry `entry` of kernels/<kernel>.cu, explicit grid/block;
    ElementwiseLaunch  an ElementwiseKernel built from an ElementwiseSpec
                       (cupyvae.emulator.elementwise): a cupy.ElementwiseKernel on "cuda",
                       the spec's equivalent grid-stride kernel on "emulated".
Binding resolves (compiles, loads) the kernel once; calling the bound launch issues it on
the current stream and does nothing else, so it can be captured into a CUDA graph.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from .loader import get_function


@dataclass(frozen=True)
class BoundLaunch:
    """A kernel with its arguments, ready to issue: calling it issues the kernel on the
    current stream and does nothing else (no compilation, no allocation, no copy)."""

    function: Callable
    grid: tuple
    block: tuple
    args: tuple
    shared_mem: int
    name: str       # "file.entry", for messages

    def __call__(self) -> None:
        self.function(self.grid, self.block, self.args, shared_mem=self.shared_mem)


@dataclass(frozen=True)
class Launch:
    """Kernel `entry` of file `kernel` (e.g. "bernoulli") over `grid` x `block` threads."""

    kernel: str
    entry: str
    grid: tuple
    block: tuple
    args: tuple
    shared_mem: int = 0

    def bind(self, device: str) -> BoundLaunch:
        return BoundLaunch(get_function(self.kernel, self.entry, device), self.grid, self.block,
                           self.args, self.shared_mem, f"{self.kernel}.{self.entry}")


@dataclass(frozen=True)
class BoundElementwise:
    """An elementwise kernel with its arguments (inputs, then outputs), ready to issue."""

    function: Callable
    args: tuple
    name: str

    def __call__(self) -> None:
        self.function(*self.args)


@dataclass(frozen=True)
class ElementwiseLaunch:
    """ElementwiseSpec `spec` over `args`: its in_params then its out_params, in order
    (outputs are given, never allocated, so the launch can be captured).  The element
    count is that of the non-raw arrays, which the builder checked to share one shape."""

    spec: object      # cupyvae.emulator.elementwise.ElementwiseSpec
    args: tuple

    @property
    def entry(self) -> str:
        return self.spec.name

    def bind(self, device: str) -> BoundElementwise:
        return BoundElementwise(_elementwise_function(self.spec, device), self.args,
                                f"elementwise.{self.spec.name}")


@functools.lru_cache(maxsize=None)
def _elementwise_function(spec, device: str) -> Callable:
    """One callable per spec and device: CuPy caches the compiled ElementwiseKernel in the
    object, the spec caches its emulated module."""
    if device == "cuda":
        return spec.cupy_kernel()
    if device == "emulated":
        return spec.emulated()
    raise ValueError(f"device must be 'cuda' or 'emulated', got {device!r}")


def run(launches: Launch | ElementwiseLaunch | Iterable, device: str) -> None:
    """Run launches in order on `device` ("emulated" or "cuda"), on the current stream."""
    if isinstance(launches, (Launch, ElementwiseLaunch)):
        launches = (launches,)
    for launch in launches:
        launch.bind(device)()


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
