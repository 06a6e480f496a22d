"""A kernel launch as plain data, and the one routine that runs launches on a backend.

Two kinds of launch, one way to run them:

    Launch             a RawKernel entry of kernels/<kernel>.cu over an explicit grid x block
    ElementwiseLaunch  an ElementwiseSpec (cupyvae.emulator.elementwise): a
                       cupy.ElementwiseKernel on "cuda", its emulator twin (the same
                       operation compiled as a grid-stride raw kernel) on "emulated"

Each has `bind(device)`: resolve (compile and load) the kernel once and return a callable
that, called with no arguments, issues the launch on the current stream and does nothing
else -- no allocation, no synchronization, no host copy -- so the bound calls can be
issued eagerly, captured into a CUDA graph, or recorded by the emulator's graph mode
(cupyvae.cuda.graph).  `run(launches, device)` is bind-then-call.

Launch builders (cupyvae.cuda.ops) validate shapes, dtypes and scalar types when they
build a launch, so kernels never check their arguments and a launch, once built, is
known to be well formed.  The same launch runs on either backend: its arrays are NumPy
arrays for "emulated" and CuPy arrays for "cuda"; scalars are exact NumPy scalars
(np.float32, np.int32, np.uint32), never Python numbers (CuPy would pass 8 bytes).
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
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

    @property
    def name(self) -> str:
        return f"{self.kernel}.{self.entry}"

    def bind(self, device: str) -> Callable[[], None]:
        function = get_function(self.kernel, self.entry, device)
        return functools.partial(function, self.grid, self.block, self.args,
                                 shared_mem=self.shared_mem)


@dataclass(frozen=True)
class ElementwiseLaunch:
    """`spec` applied to `args` (its inputs, then its outputs, in declaration order).

    Every output is given (nothing is allocated), so on "cuda" the call only launches; the
    element count is the outputs' size (a spec needs a non-raw output, which both CuPy and
    the emulator twin size the launch from).  The launch shape is CuPy's choice on "cuda"
    and the twin's grid-stride default on "emulated": an elementwise operation's result
    never depends on it.
    """

    spec: object          # cupyvae.emulator.elementwise.ElementwiseSpec
    args: tuple

    @property
    def name(self) -> str:
        return f"elementwise.{self.spec.name}"

    def bind(self, device: str) -> Callable[[], None]:
        return functools.partial(_elementwise_kernel(self.spec, device), *self.args)


@functools.lru_cache(maxsize=None)
def _elementwise_kernel(spec, device: str):
    """The spec's kernel on `device`, built once per spec (CuPy then caches the compiled
    binary per device and argument types; the emulator twin per scalar signature)."""
    if device == "cuda":
        return spec.cupy_kernel()
    if device == "emulated":
        return spec.emulated()
    raise ValueError(f"device must be 'cuda' or 'emulated', got {device!r}")


AnyLaunch = Launch | ElementwiseLaunch


def run(launches: AnyLaunch | Iterable[AnyLaunch], device: str) -> None:
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
