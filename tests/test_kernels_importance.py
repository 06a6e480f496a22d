"""kernels/importance.cu and kernels/free_bits.cu against their NumPy twins
(cupyvae.objective_twins), on every backend and under every emulated thread order."""
import functools

import numpy as np
import pytest
import scipy.special

from cupyvae import objective_twins as twins
from cupyvae.cuda import ops
from cupyvae.cuda.launch import run, to_device, to_host
from cupyvae.cuda.loader import load_source, module_from_source

THREAD_ORDERS = ["forward", "reverse", "random"]
SEED = 2 ** 40 + 17
# Sample counts that are not multiples of a warp or of the block sizes the builders pick,
# and one above the largest block (256), so threads loop over several samples.
SAMPLE_COUNTS = [1, 2, 7, 33, 300]
# Normals: a few ulp of CUDA's / the host libm's logf and cosf against NumPy's (see
# tests/test_kernels_normal.py).
EPS_RTOL, EPS_ATOL = 1e-5, 1e-6
# float32 log-sum-exp: the sum of k terms <= 1 in another order (strided partials and
# block trees vs NumPy's pairwise sum) and a few ulp of expf/logf: ~1e-6 relative to the
# magnitudes involved (|log w| up to ~300 here), so 2e-6 relative plus 1e-5 absolute.
LSE_RTOL, LSE_ATOL = 2e-6, 1e-5
# Normalised weights: exp(log w - m) carries the absolute error of log w - m (~ulp(300) =
# 3e-5) as a relative error, so 5e-5 relative plus a floor far below any weight that matters.
WEIGHT_RTOL, WEIGHT_ATOL = 5e-5, 1e-12


@functools.lru_cache(maxsize=None)
def emulated_module(name, thread_order):
    return module_from_source(load_source(name), "emulated", thread_order=thread_order, seed=5)


def launch_on(backend, launch, thread_order=None):
    if thread_order is None:
        run(launch, backend)
    else:
        kernel = emulated_module(launch.kernel, thread_order).get_function(launch.entry)
        kernel(launch.grid, launch.block, launch.args, shared_mem=launch.shared_mem)


def filled(shape, backend, dtype=np.float32, value=np.nan):
    """An output prefilled with NaN, so a test proves every element is written."""
    return to_device(np.full(shape, value, dtype), backend)


def log_weight_inputs(examples, k, seed=0):
    """Per-sample nll, log p, log q of realistic magnitudes, with one example whose weights
    span 1e4 nats (exp over- and underflows without the max shift)."""
    rng = np.random.default_rng(seed)
    nll = rng.uniform(50, 300, examples * k).astype(np.float32)
    log_p = rng.normal(-5, 2, examples * k).astype(np.float32)
    log_q = rng.normal(3, 2, examples * k).astype(np.float32)
    if examples > 1:
        nll[k:2 * k] = np.linspace(-1e4, 1e4, k, dtype=np.float32)
    return nll, log_p, log_q


# ------------------------------------------------------------------------------ noise
@pytest.mark.parametrize("examples, samples, z_dim, first_example, first_sample",
                         [(1, 1, 1, 0, 0), (3, 7, 5, 11, 0), (2, 300, 33, 2 ** 31 + 5, 17)])
def test_importance_noise_matches_the_twin(backend, examples, samples, z_dim, first_example,
                                           first_sample):
    eps = filled((examples * samples, z_dim), backend)
    run(ops.importance_noise(SEED, first_example, examples, first_sample, samples, z_dim, eps), backend)
    expected = twins.importance_noise(SEED, first_example, examples, first_sample, samples, z_dim)
    np.testing.assert_allclose(to_host(eps), expected, rtol=EPS_RTOL, atol=EPS_ATOL)


# ------------------------------------------------------------------------------ rows
@pytest.mark.parametrize("rows, cols, samples", [(1, 1, 1), (3, 5, 7), (4, 33, 2), (2, 257, 3)])
def test_row_kernels_match_their_twins_exactly(backend, rows, cols, samples):
    rng = np.random.default_rng(rows * cols + samples)
    src = rng.standard_normal((rows, cols)).astype(np.float32)
    dst = filled((rows * samples, cols), backend)
    run(ops.repeat_rows(to_device(src, backend), samples, dst), backend)
    np.testing.assert_array_equal(to_host(dst), twins.repeat_rows(src, samples))

    grouped = rng.standard_normal((rows * samples, cols)).astype(np.float32)
    summed = filled((rows, cols), backend)
    run(ops.sum_row_groups(to_device(grouped, backend), samples, summed), backend)
    # Same additions in the same order (i = 0..k-1): the same bits (no FMA to contract).
    np.testing.assert_array_equal(to_host(summed), twins.sum_row_groups(grouped, samples))

    g = rng.standard_normal(rows * samples).astype(np.float32)
    scaled = to_device(grouped.copy(), backend)
    run(ops.scale_rows(scaled, to_device(g, backend)), backend)
    np.testing.assert_array_equal(to_host(scaled), twins.scale_rows(grouped.copy(), g))


# ------------------------------------------------------------------------------ IWAE weights
def run_iwae_weights(backend, nll, log_p, log_q, k, scale, thread_order=None):
    examples = len(nll) // k
    bound, weight = filled(examples, backend), filled(len(nll), backend)
    launch = ops.iwae_weights(*(to_device(a, backend) for a in (nll, log_p, log_q)), k, scale,
                              bound, weight)
    launch_on(backend, launch, thread_order)
    return to_host(bound), to_host(weight)


def assert_iwae_weights(nll, log_p, log_q, k, scale, bound, weight):
    expected_bound, expected_weight = twins.iwae_weights(nll, log_p, log_q, k, scale)
    np.testing.assert_allclose(bound, expected_bound, rtol=LSE_RTOL, atol=LSE_ATOL)
    np.testing.assert_allclose(weight, expected_weight, rtol=WEIGHT_RTOL,
                               atol=WEIGHT_ATOL * abs(scale))
    # And the twin against float64 on the same float32 log-weights.
    log_w = ((log_p - log_q) - nll).astype(np.float64).reshape(-1, k)
    np.testing.assert_allclose(bound, -(scipy.special.logsumexp(log_w, axis=1) - np.log(k)),
                               rtol=LSE_RTOL, atol=LSE_ATOL)
    np.testing.assert_allclose(weight.reshape(-1, k).sum(axis=1), scale, rtol=1e-5)


@pytest.mark.parametrize("k", SAMPLE_COUNTS)
@pytest.mark.parametrize("examples", [1, 3])
def test_iwae_weights_match_the_twin(backend, examples, k):
    nll, log_p, log_q = log_weight_inputs(examples, k, seed=examples * 100 + k)
    scale = 1.0 / examples
    assert_iwae_weights(nll, log_p, log_q, k, scale,
                        *run_iwae_weights(backend, nll, log_p, log_q, k, scale))


@pytest.mark.parametrize("thread_order", THREAD_ORDERS)
def test_iwae_weights_do_not_depend_on_the_thread_order(thread_order):
    """A missing barrier between the max, the sum and the weights shows up here."""
    for examples, k in ((3, 300), (5, 33)):
        nll, log_p, log_q = log_weight_inputs(examples, k, seed=k)
        got = run_iwae_weights("emulated", nll, log_p, log_q, k, 0.2, thread_order)
        assert_iwae_weights(nll, log_p, log_q, k, 0.2, *got)
        reference = run_iwae_weights("emulated", nll, log_p, log_q, k, 0.2)
        np.testing.assert_array_equal(got[0], reference[0])     # fixed trees: the same bits
        np.testing.assert_array_equal(got[1], reference[1])


def test_iwae_weights_loop_when_examples_outnumber_the_blocks(monkeypatch):
    monkeypatch.setattr(ops.importance, "EXAMPLE_MAX_BLOCKS", 2)
    nll, log_p, log_q = log_weight_inputs(5, 7, seed=3)
    assert_iwae_weights(nll, log_p, log_q, 7, 1.0,
                        *run_iwae_weights("emulated", nll, log_p, log_q, 7, 1.0))


# ------------------------------------------------------------------------------ log-likelihood
@pytest.mark.parametrize("thread_order", [None, "reverse", "random"])
def test_log_mean_exp_in_chunks_matches_the_twin_and_one_log_sum_exp(thread_order):
    backend, examples, chunks = "emulated", 3, (300, 7, 1, 33)
    state = [filled(examples, backend, np.float64, -np.inf), filled(examples, backend, np.float64, 0.0)]
    twin_state = [np.full(examples, -np.inf), np.zeros(examples)]
    all_w = []
    for n, k in enumerate(chunks):
        nll, log_p, log_q = log_weight_inputs(examples, k, seed=n)
        launch_on(backend, ops.log_mean_exp_accumulate(nll, log_p, log_q, *state, k), thread_order)
        twins.log_mean_exp_accumulate(nll, log_p, log_q, *twin_state, k)
        all_w.append(((log_p.astype(np.float64) - log_q) - nll).reshape(examples, k))
    log_px = filled(examples, backend, np.float64)
    run(ops.log_mean_exp_finish(*state, sum(chunks), log_px), backend)
    expected = twins.log_mean_exp_finish(*twin_state, sum(chunks))
    # double sums of <= 341 terms in another order: ~1e-15 relative.
    np.testing.assert_allclose(log_px, expected, rtol=1e-13)
    np.testing.assert_allclose(log_px, scipy.special.logsumexp(np.concatenate(all_w, axis=1), axis=1)
                               - np.log(sum(chunks)), rtol=1e-13)


def test_log_mean_exp_on_cuda_matches_the_emulator(backend):
    nll, log_p, log_q = log_weight_inputs(4, 300, seed=9)
    state = [filled(4, backend, np.float64, -np.inf), filled(4, backend, np.float64, 0.0)]
    run(ops.log_mean_exp_accumulate(*(to_device(a, backend) for a in (nll, log_p, log_q)), *state, 300),
        backend)
    log_px = filled(4, backend, np.float64)
    run(ops.log_mean_exp_finish(*state, 300, log_px), backend)
    twin_state = [np.full(4, -np.inf), np.zeros(4)]
    twins.log_mean_exp_accumulate(nll, log_p, log_q, *twin_state, 300)
    np.testing.assert_allclose(to_host(log_px), twins.log_mean_exp_finish(*twin_state, 300), rtol=1e-13)


# ------------------------------------------------------------------------------ free bits
def run_free_bits(backend, kl_dim, free_bits, thread_order=None):
    batch, z_dim = kl_dim.shape
    outputs = filled(batch, backend), filled(z_dim, backend), filled(z_dim, backend)
    launch_on(backend, ops.free_bits_kl(to_device(kl_dim, backend), free_bits, *outputs), thread_order)
    return tuple(to_host(o) for o in outputs)


def kl_inputs(batch, z_dim, seed=0):
    rng = np.random.default_rng(seed)
    return rng.gamma(1.0, 0.5, (batch, z_dim)).astype(np.float32) * rng.uniform(0, 2, z_dim).astype(np.float32)


# (300, 1) and (1000, 1): one latent dimension, where a pairwise sum gives other bits.
@pytest.mark.parametrize("batch, z_dim", [(1, 1), (3, 2), (100, 50), (37, 257), (300, 3), (300, 1), (1000, 1)])
def test_free_bits_matches_the_twin(backend, batch, z_dim):
    kl_dim = kl_inputs(batch, z_dim, seed=batch + z_dim)
    floor = float(np.median(kl_dim.mean(axis=0)))     # about half the dimensions under it
    kl_rows, active, kl_mean = run_free_bits(backend, kl_dim, floor)
    twin_rows, twin_active, twin_mean = twins.free_bits_kl(kl_dim, floor)
    # Column means are the same sequential sums (rows in order) and one division: the
    # same bits on the emulator; the GPU may contract nothing here either.
    np.testing.assert_array_equal(kl_mean, twin_mean)
    np.testing.assert_array_equal(active, twin_active)
    np.testing.assert_array_equal(kl_rows, twin_rows)
    assert kl_rows.mean(dtype=np.float64) == pytest.approx(np.maximum(floor, twin_mean).sum(), rel=1e-5)
    if z_dim > 1:
        assert 0 < active.sum() < z_dim


@pytest.mark.parametrize("thread_order", THREAD_ORDERS)
def test_free_bits_does_not_depend_on_the_thread_order(thread_order):
    """Rows read every active[j]: without the barrier some would read it unwritten (NaN)."""
    kl_dim = kl_inputs(300, 33, seed=1)
    got = run_free_bits("emulated", kl_dim, 0.4, thread_order)
    for value, expected in zip(got, twins.free_bits_kl(kl_dim, 0.4)):
        np.testing.assert_array_equal(value, expected)


# ------------------------------------------------------------------------------ builders
def test_builders_reject_bad_arguments():
    f = np.zeros(6, np.float32)
    with pytest.raises(ValueError, match="not a whole number of examples"):
        ops.iwae_weights(f, f, f, 4, 1.0, np.zeros(1, np.float32), f)
    with pytest.raises(ValueError, match=r"bound must have shape \(3,\)"):
        ops.iwae_weights(f, f, f, 2, 1.0, np.zeros(2, np.float32), f)
    for bad in (0, -2, 2.5, True, None, "3"):     # None and "3" once raised TypeError
        with pytest.raises(ValueError, match="samples must be a positive integer"):
            ops.repeat_rows(np.zeros((2, 3), np.float32), bad, np.zeros((0, 3), np.float32))
    with pytest.raises(ValueError, match=r"dst must have shape \(6, 3\)"):
        ops.repeat_rows(np.zeros((2, 3), np.float32), 3, np.zeros((5, 3), np.float32))
    with pytest.raises(ValueError, match="float64"):
        ops.log_mean_exp_accumulate(f, f, f, np.zeros(3, np.float32), np.zeros(3), 2)
    with pytest.raises(ValueError, match="free_bits must be a finite number >= 0"):
        ops.free_bits_kl(np.zeros((2, 3), np.float32), float("nan"), np.zeros(2, np.float32),
                         np.zeros(3, np.float32), np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="eps must have shape"):
        ops.importance_noise(1, 0, 2, 0, 3, 4, np.zeros((5, 4), np.float32))
    with pytest.raises(ValueError, match="last example index"):
        ops.importance_noise(1, 2 ** 32 - 1, 2, 0, 3, 4, np.zeros((6, 4), np.float32))
    launch = ops.iwae_weights(f, f, f, 3, 0.5, np.zeros(2, np.float32), f.copy())
    assert [type(a) for a in launch.args[5:]] == [np.int32, np.int32, np.float32]
    assert launch.grid == (2,) and launch.block == (32,)
