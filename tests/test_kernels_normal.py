"""kernels/normal.cu normal_fill against the NumPy twin cupyvae.philox.normal."""
import dataclasses

import numpy as np
import pytest

from cupyvae import philox
from cupyvae.cuda import ops
from cupyvae.cuda.launch import run, to_device, to_host

# Normals agree to a few ulp, not bit for bit: the uniforms are bit-exact, but the kernel's
# logf/cosf (CUDA: <= 1-2 ulp; emulator: the host libm) and NumPy's float32 log/cos
# (own SIMD code) round differently.  rtol 1e-5 is ~80 ulp; atol covers values near 0
# where cos crosses zero and a one-ulp error in a tiny number is a large relative one.
RTOL = 1e-5
ATOL = 1e-6

CASES = [  # (seed, step, stream, rows, cols)
    (0, 0, philox.STREAM_POSTERIOR, 1, 1),
    (123, 7, philox.STREAM_POSTERIOR, 100, 20),
    (2 ** 32 + 5, 3, philox.STREAM_PRIOR, 7, 33),
    (2 ** 64 - 1, 2 ** 32 - 1, philox.STREAM_BINARIZE, 3, 300),
    (0xDEADBEEF00000000, 12345, philox.STREAM_POSTERIOR, 1, 1000),
]


def fill(backend, rows, cols, seed, step, stream, grid=None):
    # NaN prefill proves every element is written with `=`.
    out = to_device(np.full((rows, cols), np.nan, np.float32), backend)
    launch = ops.normal_fill(out, seed, step, stream)
    if grid is not None:
        launch = dataclasses.replace(launch, grid=grid)
    run(launch, backend)
    return to_host(out)


@pytest.mark.parametrize("seed, step, stream, rows, cols", CASES)
def test_normal_fill_matches_numpy_twin(backend, seed, step, stream, rows, cols):
    got = fill(backend, rows, cols, seed, step, stream)
    np.testing.assert_allclose(got, philox.normal(seed, step, rows, cols, stream),
                               rtol=RTOL, atol=ATOL)


def test_grid_stride_loop_covers_more_elements_than_threads(backend):
    # 2 blocks of 256 threads for 1500 elements: each thread handles several.
    got = fill(backend, 5, 300, seed=99, step=1, stream=philox.STREAM_PRIOR, grid=(2,))
    np.testing.assert_allclose(got, philox.normal(99, 1, 5, 300, philox.STREAM_PRIOR),
                               rtol=RTOL, atol=ATOL)


def test_launch_converts_scalars_to_exact_numpy_types():
    launch = ops.normal_fill(np.zeros((2, 3), np.float32), seed=2 ** 40 + 7, step=4, stream=1)
    out, rows, cols, seed_lo, seed_hi, step, stream = launch.args
    assert (type(rows), type(cols)) == (np.int32, np.int32)
    assert {type(seed_lo), type(seed_hi), type(step), type(stream)} == {np.uint32}
    assert (int(seed_lo), int(seed_hi), int(step), int(stream)) == (7, 2 ** 8, 4, 1)
    assert (launch.kernel, launch.entry) == ("normal", "normal_fill")


@pytest.mark.parametrize("out, message", [
    (np.zeros((2, 3), np.float64), "float32"),
    (np.zeros((3, 4), np.float32)[:, ::2], "C-contiguous"),
    (np.zeros(6, np.float32), r"2-D .*\(6,\)"),
])
def test_launch_rejects_bad_output(out, message):
    with pytest.raises(ValueError, match=message):
        ops.normal_fill(out, seed=1, step=0, stream=0)


@pytest.mark.parametrize("bad", [dict(seed=-1), dict(seed=2 ** 64), dict(step=2 ** 32),
                                 dict(stream=-1)])
def test_launch_rejects_out_of_range_scalars(bad):
    with pytest.raises(ValueError):
        ops.normal_fill(np.zeros((2, 2), np.float32), **{**dict(seed=1, step=0, stream=0), **bad})
