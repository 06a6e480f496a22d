"""Launch builder for the Adam update, an ElementwiseKernel over the flat buffers
(body: kernels/adam.cuh; twin: cupyvae.optim.adam_update).

ADAM_UPDATE is one ElementwiseSpec (cupyvae.emulator.elementwise): on "cuda" it is a
cupy.ElementwiseKernel, on "emulated" the same operation as a grid-stride kernel, both
from the one source, as Chainer ran its optimizers on CuPy (chainer/optimizers/adam.py).
The hyperparameters and bias corrections are read from the device array `sched` (a `raw`
argument) that schedule_step fills from the step counter, so the launch is identical at
every step and is captured once into a CUDA graph.
"""
from __future__ import annotations


from cupyvae.emulator.elementwise import ElementwiseSpec

from ..launch import ElementwiseLaunch
from ..loader import inline_source
from ._checks import (require_float32_contiguous, require_int32_dims, require_same_array_kind,
                      require_sched)

ADAM_UPDATE = ElementwiseSpec(
    in_params="float32 g, raw float32 sched",
    out_params="float32 p, float32 m, float32 v",
    # CuPy hands a raw argument over as a CArray, the emulator as a pointer: &sched[0] is the
    # float* of the data on both.
    operation="adam_element(p, g, m, v, &sched[0])",
    name="adam_update",
    preamble=inline_source('#include "adam.cuh"\n', "adam_update (ElementwiseSpec preamble)"),
)


def adam_update(p, g, m, v, sched) -> ElementwiseLaunch:
    """One Adam step on the flat buffers p, m, v (in place) from g, with this step's values
    in the device array `sched` ((SCHED_SIZE,) float32, cupyvae.schedules)."""
    require_float32_contiguous(p=p, g=g, m=m, v=v, sched=sched)
    require_same_array_kind(p, g, m, v, sched)
    if p.ndim != 1:
        raise ValueError(f"p must be a flat (n,) buffer, got shape {p.shape}")
    if not p.shape == g.shape == m.shape == v.shape:
        raise ValueError(f"p {p.shape}, g {g.shape}, m {m.shape} and v {v.shape} "
                         "must all have the same (n,) shape")
    if p.shape[0] == 0:
        raise ValueError("p is empty: an elementwise launch needs at least one element")
    require_sched(sched)
    require_int32_dims(p.shape)
    return ElementwiseLaunch(ADAM_UPDATE, (g, sched, p, m, v))


__all__ = ["ADAM_UPDATE", "adam_update"]
