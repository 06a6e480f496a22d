"""Philox4x32-10: NumPy twin and device header agree with Random123 and with each other."""
import timeit

import numpy as np
import pytest

from cupyvae import philox
from cupyvae.cuda.launch import to_device, to_host
from cupyvae.cuda.loader import inline_source, module_from_source

# Random123 known-answer vectors for philox4x32 with 10 rounds: (counter, key, output).
KNOWN_ANSWERS = [
    ((0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000),
     (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF),
     (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]

# Test-only kernel: the raw four words for N (counter, key) pairs, through philox.cuh.
# Layouts: counters (N, 4), keys (N, 2), out (N, 4), all uint32 row-major.
PHILOX_WORDS_KERNEL = r"""
#include "philox.cuh"

extern "C" __global__ void philox_words(const unsigned int* counters, const unsigned int* keys,
                                        unsigned int* out, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        uint4 counter = make_uint4(counters[4 * i], counters[4 * i + 1],
                                   counters[4 * i + 2], counters[4 * i + 3]);
        uint2 key = make_uint2(keys[2 * i], keys[2 * i + 1]);
        uint4 words = philox4x32_10(counter, key);
        out[4 * i] = words.x;
        out[4 * i + 1] = words.y;
        out[4 * i + 2] = words.z;
        out[4 * i + 3] = words.w;
    }
}
"""


def known_answer_arrays():
    counters = np.array([c for c, _, _ in KNOWN_ANSWERS], dtype=np.uint32)
    keys = np.array([k for _, k, _ in KNOWN_ANSWERS], dtype=np.uint32)
    expected = np.array([o for _, _, o in KNOWN_ANSWERS], dtype=np.uint32)
    return counters, keys, expected


@pytest.mark.parametrize("counter, key, expected", KNOWN_ANSWERS)
def test_numpy_twin_matches_random123_known_answers(counter, key, expected):
    words = philox.philox4x32(np.array(counter, np.uint32)[:, None], np.array(key, np.uint32))
    assert words.dtype == np.uint32
    assert [f"{w:08x}" for w in words[:, 0]] == [f"{w:08x}" for w in expected]


def test_numpy_twin_runs_many_counters_with_per_counter_keys():
    counters, keys, expected = known_answer_arrays()
    np.testing.assert_array_equal(philox.philox4x32(counters.T, keys.T), expected.T)


def test_philox4x32_rejects_bad_shapes_and_values():
    with pytest.raises(ValueError, match=r"\(4, N\)"):
        philox.philox4x32(np.zeros((3, 2), np.uint32), np.zeros(2, np.uint32))
    with pytest.raises(ValueError, match=r"\(2, 5\)"):
        philox.philox4x32(np.zeros((4, 5), np.uint32), np.zeros((2, 4), np.uint32))
    with pytest.raises(ValueError, match="uint32"):
        philox.philox4x32(np.full((4, 1), 2 ** 32, np.int64), np.zeros(2, np.uint32))


def run_philox_words_kernel(backend, counters, keys):
    module = module_from_source(inline_source(PHILOX_WORDS_KERNEL, "philox_words.cu"), backend)
    n = counters.shape[0]
    out = to_device(np.zeros((n, 4), np.uint32), backend)
    module.get_function("philox_words")(
        (1,), (32,), (to_device(counters, backend), to_device(keys, backend), out, np.int32(n)))
    return to_host(out)


def test_device_header_matches_random123_known_answers(backend):
    counters, keys, expected = known_answer_arrays()
    np.testing.assert_array_equal(run_philox_words_kernel(backend, counters, keys), expected)


def test_device_header_matches_numpy_twin_on_random_inputs(backend):
    rng = np.random.default_rng(7)
    counters = rng.integers(0, 2 ** 32, size=(29, 4), dtype=np.uint32)
    keys = rng.integers(0, 2 ** 32, size=(29, 2), dtype=np.uint32)
    np.testing.assert_array_equal(run_philox_words_kernel(backend, counters, keys),
                                  philox.philox4x32(counters.T, keys.T).T)


def test_device_header_compiles_with_nvrtc():
    nvrtc = pytest.importorskip("cupyvae.cuda.nvrtc")
    if not nvrtc.nvrtc_available():
        pytest.skip("cuda.bindings NVRTC is not importable")
    ptx = nvrtc.compile_ptx(inline_source(PHILOX_WORDS_KERNEL, "philox_words.cu"), "sm_90")
    assert ".entry philox_words" in ptx


def test_element_keying_convention():
    """Element (row, col): counter = (col, row, step, stream), key = (seed lo, seed hi)."""
    seed, step, stream, rows, cols = 0x0123456789ABCDEF, 11, philox.STREAM_PRIOR, 3, 4
    row, col = np.divmod(np.arange(rows * cols, dtype=np.uint32), cols)
    counters = np.stack([col, row, np.full_like(row, step), np.full_like(row, stream)])
    words = philox.philox4x32(counters, np.array([0x89ABCDEF, 0x01234567], np.uint32))
    x0, x1 = (w.reshape(rows, cols) for w in words[:2])
    np.testing.assert_array_equal(philox.uniform(seed, step, rows, cols, stream),
                                  philox.uniform_from_bits(x0))
    np.testing.assert_array_equal(
        philox.normal(seed, step, rows, cols, stream),
        philox.box_muller(philox.uniform_from_bits(x0), philox.uniform_from_bits(x1)))


def test_uniform_from_bits_is_exact_and_strictly_inside_unit_interval():
    bits = np.array([0, 1 << 9, 0x7FFFFFFF, 0x80000000, 0xFFFFFE00, 0xFFFFFFFF], np.uint32)
    u = philox.uniform_from_bits(bits)
    assert u.dtype == np.float32
    exact = (2.0 * (bits.astype(np.float64) // 512) + 1.0) * 2.0 ** -24
    np.testing.assert_array_equal(u.astype(np.float64), exact)
    assert 0.0 < u.min() and u.max() < 1.0


def test_uniform_and_normal_shapes_and_dtypes():
    assert philox.uniform(1, 2, 3, 5, philox.STREAM_BINARIZE).shape == (3, 5)
    sample = philox.normal(1, 2, 3, 5)
    assert sample.shape == (3, 5) and sample.dtype == np.float32


def test_normal_statistics_over_many_draws():
    n = 100_000
    sample = philox.normal(seed=2024, step=3, rows=100, cols=n // 100).astype(np.float64)
    # 5 sigma: sd(mean) = 1/sqrt(n); sd(sample std) ~= 1/sqrt(2n) for a standard normal.
    assert abs(sample.mean()) < 5 / np.sqrt(n)
    assert abs(sample.std() - 1.0) < 5 / np.sqrt(2 * n)
    assert np.isfinite(sample).all()


def test_values_depend_on_coordinates_not_on_shape():
    big = philox.normal(5, 1, 6, 9, stream=0)
    np.testing.assert_array_equal(big[:4, :3], philox.normal(5, 1, 4, 3, stream=0))


@pytest.mark.parametrize("other", [
    dict(stream=philox.STREAM_PRIOR), dict(step=8), dict(seed=5 + 2 ** 32), dict(seed=6)])
def test_streams_steps_and_seeds_give_different_values(other):
    base = dict(seed=5, step=7, rows=8, cols=8, stream=philox.STREAM_POSTERIOR)
    first = philox.normal(**base)
    second = philox.normal(**{**base, **other})
    assert np.all(first != second)


def test_rows_and_cols_are_not_interchangeable():
    sample = philox.normal(5, 7, 8, 8)
    off_diagonal = ~np.eye(8, dtype=bool)
    assert np.all(sample[off_diagonal] != sample.T[off_diagonal])


def test_stream_constants_are_distinct_and_mirrored_in_the_header():
    import re
    from cupyvae.cuda.loader import kernel_dir
    streams = {name[len("STREAM_"):]: value for name, value in vars(philox).items()
               if name.startswith("STREAM_")}
    assert len(set(streams.values())) == len(streams) >= 5
    header = (kernel_dir() / "philox.cuh").read_text()
    defined = {m[0]: int(m[1]) for m in re.findall(r"#define PHILOX_STREAM_(\w+) (\d+)u", header)}
    assert defined == streams


@pytest.mark.parametrize("bad", [dict(seed=-1), dict(seed=2 ** 64), dict(step=2 ** 32),
                                 dict(stream=-1)])
def test_rejects_out_of_range_seed_step_stream(bad):
    with pytest.raises(ValueError):
        philox.normal(**{**dict(seed=1, step=0, rows=2, cols=2, stream=0), **bad})


def test_normal_is_fast_enough_for_a_training_step():
    philox.normal(1, 0, 100, 20)  # warm the coordinate cache
    seconds = min(timeit.repeat(lambda: philox.normal(1, 3, 100, 20), number=50, repeat=3)) / 50
    assert seconds < 1e-3, f"philox.normal(100, 20) took {seconds * 1e3:.3f} ms"


def test_rejects_non_integer_seed():
    with pytest.raises(TypeError):
        philox.normal(seed=1.5, step=0, rows=2, cols=2)
