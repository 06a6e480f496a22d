"""normal_fill (an ElementwiseSpec: cupy.ElementwiseKernel on a GPU, its twin on the
emulator) against the NumPy twin cupyvae.philox.normal; captured like any launch."""
import numpy as np
import pytest

from cupyvae import philox
from cupyvae.cuda import ops
from cupyvae.cuda.graph import bind, capture
from cupyvae.cuda.launch import ElementwiseLaunch, run, to_device, to_host
from cupyvae.cuda.loader import module_from_source

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


def fill(backend, rows, cols, seed, step, stream):
    # NaN prefill proves every element is written with `=`.
    out = to_device(np.full((rows, cols), np.nan, np.float32), backend)
    run(ops.normal_fill(out, seed, step, stream), backend)
    return to_host(out)


@pytest.mark.parametrize("seed, step, stream, rows, cols", CASES)
def test_normal_fill_matches_numpy_twin(backend, seed, step, stream, rows, cols):
    got = fill(backend, rows, cols, seed, step, stream)
    np.testing.assert_allclose(got, philox.normal(seed, step, rows, cols, stream),
                               rtol=RTOL, atol=ATOL)


def test_the_draw_does_not_depend_on_the_launch_shape():
    """CuPy picks its own grid; the twin's grid-stride source, run here on 2 blocks of 64
    threads for 1500 elements (each thread several), gives the very same bits."""
    out = np.full((5, 300), np.nan, np.float32)
    launch = ops.normal_fill(out, seed=99, step=1, stream=philox.STREAM_PRIOR)
    spec = launch.spec
    scalars = frozenset(p.strip().split()[-1] for p in spec.in_params.split(","))
    kernel = module_from_source(spec.cuda_source(scalars), "emulated").get_function(spec.name)
    kernel((2,), (64,), (*launch.args, np.int64(out.size)))
    np.testing.assert_array_equal(out, fill("emulated", 5, 300, 99, 1, philox.STREAM_PRIOR))
    np.testing.assert_allclose(out, philox.normal(99, 1, 5, 300, philox.STREAM_PRIOR),
                               rtol=RTOL, atol=ATOL)


def test_a_captured_fill_replays_the_same_bits():
    """Recorded (the emulator's graph mode) and replayed: the bits of an eager launch."""
    out = np.full((7, 9), np.nan, np.float32)
    recording = capture(bind([ops.normal_fill(out, 5, 3, philox.STREAM_PRIOR)], "emulated"), 2,
                        "emulated")
    assert np.isnan(out).all(), "recording must not run the kernel"
    recording.launch()
    np.testing.assert_array_equal(out, fill("emulated", 7, 9, 5, 3, philox.STREAM_PRIOR))


def test_launch_converts_scalars_to_exact_numpy_types():
    out = np.zeros((2, 3), np.float32)
    launch = ops.normal_fill(out, seed=2 ** 40 + 7, step=4, stream=1)
    assert isinstance(launch, ElementwiseLaunch) and launch.spec.name == "normal_fill"
    seed_lo, seed_hi, step, stream, cols, target = launch.args
    assert {type(seed_lo), type(seed_hi), type(step), type(stream)} == {np.uint32}
    assert type(cols) is np.int32 and int(cols) == 3 and target is out
    assert (int(seed_lo), int(seed_hi), int(step), int(stream)) == (7, 2 ** 8, 4, 1)


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
