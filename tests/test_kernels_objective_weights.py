"""The ElementwiseSpecs of cupyvae/cuda/ops/objective_weights.py (monte_carlo_kl,
monte_carlo_kl_weights, negated, scaled_by) against their NumPy twins in
cupyvae.objective_twins, on every backend.  Each output element is one float32 operation
on its inputs, so kernel and twin agree bit for bit (the CUDA side compiles with
--fmad=false: nothing is contracted)."""
import re

import numpy as np
import pytest

from cupyvae import objective_twins
from cupyvae.cuda import ops
from cupyvae.cuda.graph import bind, capture
from cupyvae.cuda.launch import ElementwiseLaunch, run, to_device, to_host

ROWS = [1, 37, 1000]


def vectors(n, seed):
    rng = np.random.default_rng(seed)
    return (rng.normal(0, 50, n).astype(np.float32), rng.normal(0, 50, n).astype(np.float32))


def nan_vector(backend, n):
    return to_device(np.full(n, np.nan, np.float32), backend)       # every element must be written


@pytest.mark.parametrize("n", ROWS)
def test_monte_carlo_kl_is_the_twins_difference(backend, n):
    log_q, log_p = vectors(n, n)
    kl = nan_vector(backend, n)
    run(ops.monte_carlo_kl(to_device(log_q, backend), to_device(log_p, backend), kl), backend)
    np.testing.assert_array_equal(to_host(kl), objective_twins.monte_carlo_kl(log_q, log_p))


@pytest.mark.parametrize("beta", [1.0, 0.0, 0.37])
@pytest.mark.parametrize("n", ROWS)
def test_monte_carlo_kl_weights_read_the_device_kl_weight(backend, n, beta):
    kl_weight = to_device(np.array([beta], np.float32), backend)
    g_q, g_p = nan_vector(backend, n), nan_vector(backend, n)
    run(ops.monte_carlo_kl_weights(kl_weight, 1 / 7, g_q, g_p), backend)
    want_q, want_p = objective_twins.monte_carlo_kl_weights(np.array([beta], np.float32), 1 / 7, n)
    np.testing.assert_array_equal(to_host(g_q), want_q)
    np.testing.assert_array_equal(to_host(g_p), want_p)
    assert (to_host(g_q) == -to_host(g_p)).all()


@pytest.mark.parametrize("n", ROWS)
def test_negated_and_scaled_by(backend, n):
    x, _ = vectors(n, n + 1)
    factor = np.array([0.3], np.float32)
    y = nan_vector(backend, n)
    run(ops.negated(to_device(x, backend), y), backend)
    np.testing.assert_array_equal(to_host(y), objective_twins.negated(x))
    run(ops.scaled_by(to_device(x, backend), to_device(factor, backend), y), backend)
    np.testing.assert_array_equal(to_host(y), objective_twins.scaled_by(x, factor))


def test_a_recorded_step_reads_the_kl_weight_when_it_runs():
    """The KL weight is a device scalar: changed after recording (as schedule_step changes
    sched every step), the replay uses the new value."""
    kl_weight = np.array([1.0], np.float32)
    g_q, g_p = np.zeros(5, np.float32), np.zeros(5, np.float32)
    launch = ops.monte_carlo_kl_weights(kl_weight, 0.5, g_q, g_p)
    assert isinstance(launch, ElementwiseLaunch) and launch.args[0] is kl_weight
    recording = capture(bind([launch], "emulated"), 1, "emulated")
    kl_weight[0] = 0.25
    recording.launch()
    np.testing.assert_array_equal(g_q, 0.125)
    np.testing.assert_array_equal(g_p, -0.125)


def test_builders_refuse_bad_arguments():
    f32 = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="log_q, log_p, kl must all have the same shape"):
        ops.monte_carlo_kl(f32, np.zeros(5, np.float32), f32)
    with pytest.raises(ValueError, match="kl_weight must be a \\(1,\\) float32 device array"):
        ops.monte_carlo_kl_weights(np.ones(2, np.float32), 0.5, f32, f32)
    with pytest.raises(ValueError, match="x must be float32"):
        ops.negated(f32.astype(np.float64), f32)
    with pytest.raises(ValueError, match=r"n >= 1"):
        ops.negated(np.zeros(0, np.float32), np.zeros(0, np.float32))
    with pytest.raises(ValueError, match="factor"):
        ops.scaled_by(f32, np.ones((1, 1), np.float32), f32)


# A NaN or infinite scale would make every output NaN without an error: every builder that
# takes a host float scale refuses it, naming it (cupyvae.cuda.ops._checks.float32_scalar).
def _f32(*shape):
    return np.zeros(shape, np.float32)


SCALED_BUILDERS = {
    "monte_carlo_kl_weights": ("scale", lambda s: ops.monte_carlo_kl_weights(
        _f32(1), s, _f32(4), _f32(4))),
    "iwae_weights": ("scale", lambda s: ops.iwae_weights(
        _f32(6), _f32(6), _f32(6), 2, s, _f32(3), _f32(6))),
    "bernoulli_nll": ("scale", lambda s: ops.bernoulli_nll(
        _f32(2, 3), _f32(2, 3), s, _f32(2), _f32(2, 3))),
    "gaussian_posterior_backward": ("kl_scale", lambda s: ops.gaussian_posterior_backward(
        _f32(2, 4), _f32(2, 2), np.zeros(2, np.uint32), 1, 0, s, _f32(1), _f32(2, 4))),
    "gaussian_posterior_kl_per_dimension_backward": ("kl_scale", lambda s: (
        ops.gaussian_posterior_kl_per_dimension_backward(_f32(2, 4), _f32(2), s, _f32(2, 4)))),
}


@pytest.mark.parametrize("builder", SCALED_BUILDERS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), 1e39])
def test_builders_refuse_a_scale_that_is_not_finite_in_float32(builder, bad):
    name, build = SCALED_BUILDERS[builder]
    build(0.5)                                                     # the arguments are otherwise fine
    with pytest.raises(ValueError, match=re.escape(f"{name} must be finite in float32, got {bad!r}")):
        build(bad)
