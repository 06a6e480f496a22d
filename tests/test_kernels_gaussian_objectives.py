"""The Monte-Carlo and per-dimension entries of kernels/gaussian_posterior.cu (log q from the
noise, the per-row weighted backward, the per-dimension KL and its backward) against their
NumPy twins in cupyvae.distributions.gaussian, on every backend."""
import functools

import numpy as np
import pytest

from cupyvae import philox
from cupyvae.cuda import ops
from cupyvae.cuda.launch import run, to_device, to_host
from cupyvae.cuda.loader import load_source, module_from_source
from cupyvae.distributions import gaussian

SEED = 2 ** 40 + 17
COUNTERS = np.array([12345, 6], np.uint32)
SHAPES = [(1, 1), (3, 2), (37, 33), (100, 50), (5, 256)]
# Row sums: float32 in another order (lane-strided partials and a shuffle tree vs NumPy's
# pairwise sum) and eps carrying a few ulp of logf/cosf: a few ulp of the sum of |terms|.
SUM_RTOL = 1e-5
# Element-wise: a handful of ulp (expf, expm1f, eps's few ulp), so 1e-5 relative.
ELEMENT_RTOL = 1e-5


@functools.lru_cache(maxsize=None)
def emulated_module(thread_order):
    return module_from_source(load_source("gaussian_posterior"), "emulated",
                              thread_order=thread_order, seed=9)


def make_qraw(batch, z_dim, seed=0):
    """[mu | lv] with lv from -30 to 30, plus one row of the narrow posterior lv = -90."""
    rng = np.random.default_rng(seed)
    mu = rng.normal(0.0, 2.0, (batch, z_dim)).astype(np.float32)
    lv = rng.uniform(-30.0, 30.0, (batch, z_dim)).astype(np.float32)
    lv[-1] = -90.0
    return np.concatenate([mu, lv], axis=1)


def device(backend, *arrays):
    return [to_device(a, backend) for a in arrays]


def term_scale(qraw, eps):
    """Sum of |terms| of log q per row: what a float32 sum's rounding is relative to."""
    z_dim = qraw.shape[1] // 2
    return 0.5 * (np.log(2 * np.pi) + np.abs(qraw[:, z_dim:]) + eps.astype(np.float64) ** 2).sum(axis=1)


@pytest.mark.parametrize("given_noise", [False, True])
@pytest.mark.parametrize("batch, z_dim", SHAPES)
def test_log_q_matches_the_twin(backend, batch, z_dim, given_noise):
    qraw = make_qraw(batch, z_dim, seed=batch + z_dim)
    eps = np.random.default_rng(1).standard_normal((batch, z_dim)).astype(np.float32) if given_noise else None
    log_q = to_device(np.full(batch, np.nan, np.float32), backend)
    q_dev, c_dev = device(backend, qraw, COUNTERS)
    run(ops.gaussian_posterior_log_q(q_dev, c_dev, SEED, philox.STREAM_IMPORTANCE, log_q,
                                     eps=None if eps is None else to_device(eps, backend)), backend)
    expected = gaussian.gaussian_posterior_log_q(qraw, COUNTERS, SEED, philox.STREAM_IMPORTANCE, eps)
    used = eps if given_noise else philox.normal(SEED, int(COUNTERS[0]), batch, z_dim,
                                                  philox.STREAM_IMPORTANCE)
    assert np.all(np.abs(to_host(log_q) - expected) <= SUM_RTOL * term_scale(qraw, used))


@pytest.mark.parametrize("thread_order", ["reverse", "random"])
def test_log_q_does_not_depend_on_the_thread_order(thread_order):
    qraw = make_qraw(37, 33)
    out = [np.full(37, np.nan, np.float32) for _ in range(2)]
    launch = ops.gaussian_posterior_log_q(qraw, COUNTERS, SEED, 0, out[0])
    emulated_module(thread_order).get_function(launch.entry)(launch.grid, launch.block, launch.args)
    run(ops.gaussian_posterior_log_q(qraw, COUNTERS, SEED, 0, out[1]), "emulated")
    np.testing.assert_array_equal(out[0], out[1])


@pytest.mark.parametrize("batch, z_dim", SHAPES)
def test_weighted_backward_matches_the_twin(backend, batch, z_dim):
    rng = np.random.default_rng(batch * z_dim)
    qraw = make_qraw(batch, z_dim, seed=2)
    qraw[:, z_dim:] = np.clip(qraw[:, z_dim:], -30, 10)    # exp(lv/2) dz stays finite in float32
    dz = rng.standard_normal((batch, z_dim)).astype(np.float32)
    g = rng.uniform(0, 0.1, batch).astype(np.float32)
    dqraw = to_device(np.full(qraw.shape, np.nan, np.float32), backend)
    run(ops.gaussian_posterior_weighted_backward(*device(backend, qraw, dz, g, COUNTERS), SEED, 0,
                                                 dqraw), backend)
    expected = gaussian.gaussian_posterior_weighted_backward(qraw, dz, g, COUNTERS, SEED, 0)
    # dlv = dz eps exp(lv/2)/2 - g/2 can cancel: the bound is relative to |dz eps exp(lv/2)/2| + |g|/2.
    magnitude = np.concatenate([np.abs(dz), np.abs(expected[:, z_dim:]) + np.abs(g)[:, None]], axis=1)
    assert np.all(np.abs(to_host(dqraw) - expected) <= ELEMENT_RTOL * magnitude + 1e-30)


@pytest.mark.parametrize("batch, z_dim", SHAPES)
def test_kl_per_dimension_and_its_backward_match_the_twins(backend, batch, z_dim):
    qraw = make_qraw(batch, z_dim, seed=3)
    qraw[:, z_dim:] = np.clip(qraw[:, z_dim:], -30, 30)
    kl_dim = to_device(np.full((batch, z_dim), np.nan, np.float32), backend)
    run(ops.gaussian_posterior_kl_per_dimension(to_device(qraw, backend), kl_dim), backend)
    expected = gaussian.gaussian_posterior_kl_per_dimension(qraw)
    np.testing.assert_allclose(to_host(kl_dim), expected, rtol=ELEMENT_RTOL)

    rng = np.random.default_rng(4)
    weight = (rng.random(z_dim) < 0.5).astype(np.float32)
    start = rng.standard_normal(qraw.shape).astype(np.float32)     # the kernel ADDS to this
    dqraw = to_device(start.copy(), backend)
    run(ops.gaussian_posterior_kl_per_dimension_backward(*device(backend, qraw, weight), 0.03, dqraw),
        backend)
    expected = gaussian.gaussian_posterior_kl_per_dimension_backward(qraw, weight, 0.03, start.copy())
    np.testing.assert_allclose(to_host(dqraw), expected, rtol=ELEMENT_RTOL, atol=1e-6)
    unchanged = np.tile(weight, 2) == 0
    np.testing.assert_array_equal(to_host(dqraw)[:, unchanged], start[:, unchanged])


def test_builders_reject_bad_shapes():
    qraw = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"log_q must have shape \(3,\)"):
        ops.gaussian_posterior_log_q(qraw, COUNTERS, 1, 0, np.zeros(4, np.float32))
    with pytest.raises(ValueError, match=r"g must have shape \(3,\)"):
        ops.gaussian_posterior_weighted_backward(qraw, np.zeros((3, 2), np.float32),
                                                 np.zeros(2, np.float32), COUNTERS, 1, 0, qraw.copy())
    with pytest.raises(ValueError, match=r"weight must have shape \(2,\)"):
        ops.gaussian_posterior_kl_per_dimension_backward(qraw, np.zeros(4, np.float32), 1.0, qraw.copy())
    with pytest.raises(ValueError, match=r"kl_dim must have shape \(3, 2\)"):
        ops.gaussian_posterior_kl_per_dimension(qraw, np.zeros((2, 3), np.float32))
