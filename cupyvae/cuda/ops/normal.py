"""normal_fill: standard normals from Philox, one per element -- an ElementwiseSpec.

    out[r, c] = sqrtf(-2 logf(u0)) * cosf(2 pi u1),  u0, u1 the uniforms of words x0, x1 of
                Philox4x32-10(counter = (c, r, step, stream), key = (seed_lo, seed_hi))
Gradient: none; the noise is a constant of the computation graph.
Layout: out (rows, cols) float32, row-major, contiguous, written with `=` (every element).
The value of an element depends only on its (row, col), never on which thread draws it,
so CuPy's launch shape and the emulator twin's give the same numbers.

It is the standard normal prior's draw on the kernel devices (normal_prior_sample), and
purely elementwise, so it is an ElementwiseSpec: one definition gives the
cupy.ElementwiseKernel and its emulator twin (kernels/philox.cuh is the preamble of both).
NumPy twin: cupyvae.philox.normal(seed, step, rows, cols, stream).
"""
from __future__ import annotations

import numpy as np

from cupyvae import philox
from cupyvae.emulator.elementwise import ElementwiseSpec
from cupyvae.philox import split_seed

from ..launch import ElementwiseLaunch
from ..loader import inline_source
from ._checks import require_float32_contiguous, require_int32_dims, uint32_scalar

# kernels/philox.cuh, headers inlined: the preamble of every Philox elementwise kernel.
PHILOX_PREAMBLE = inline_source('#include "philox.cuh"\n', "philox preamble")

NORMAL_FILL = ElementwiseSpec(
    "uint32 seed_lo, uint32 seed_hi, uint32 step, uint32 stream, int32 cols",
    "float32 out",
    "out = philox_element_normal(seed_lo, seed_hi, step, stream,"
    " (unsigned int)(i / cols), (unsigned int)(i % cols))",
    "normal_fill",
    preamble=PHILOX_PREAMBLE,
)


def normal_fill(out, seed, step, stream) -> ElementwiseLaunch:
    """out (rows, cols) = cupyvae.philox.normal(seed, step, rows, cols, stream), written with `=`."""
    require_float32_contiguous(out=out)
    if out.ndim != 2:
        raise ValueError(f"out must be 2-D (rows, cols), got shape {out.shape}")
    require_int32_dims(out.shape)
    seed_lo, seed_hi = split_seed(seed)
    return ElementwiseLaunch(NORMAL_FILL, (
        np.uint32(seed_lo), np.uint32(seed_hi), uint32_scalar("step", step),
        uint32_scalar("stream", stream), np.int32(max(out.shape[1], 1)), out))


def normal_prior_sample(z, seed) -> ElementwiseLaunch:
    """z (n, Z): n draws of the standard normal prior N(0, I) (NormalPrior, kernel "normal"),
    keyed as cupyvae.executors.prior_draws keys them -- NormalPrior.sample returns its eps,
    the normals of step philox.PRIOR_EPS_STEP in STREAM_PRIOR -- written with `=`."""
    return normal_fill(z, seed, philox.PRIOR_EPS_STEP, philox.STREAM_PRIOR)
