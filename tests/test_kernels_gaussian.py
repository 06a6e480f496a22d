"""kernels/gaussian_posterior.cu and kernels/gaussian_likelihood.cu against their NumPy twins
(cupyvae.distributions.gaussian), on every backend."""
import dataclasses
import functools

import numpy as np
import pytest

from cupyvae import philox
from cupyvae.cuda import ops
from cupyvae.cuda.launch import run, to_device, to_host
from cupyvae.cuda.loader import load_source, module_from_source
from cupyvae.distributions import gaussian
from cupyvae.distributions.base import LOG_2PI

THREAD_ORDERS = ["forward", "reverse", "random"]
BATCH_SIZES = [1, 3, 37, 100]
LATENT_DIMS = [1, 2, 3, 20, 33, 256]   # 256: eight elements per lane
DATA_DIMS = [1, 5, 33, 784]            # none a multiple of the block sizes the launcher picks
SEED = 2 ** 40 + 17                    # both key words non-zero
COUNTERS = (12345, 6)                  # (global step, batch index)

# Posterior.  eps agrees with philox.normal to rtol 1e-5 + atol 1e-6 (CUDA / host libm
# logf, cosf vs NumPy's float32 log, cos: a few ulp; see tests/test_kernels_normal.py), and
# z = mu + sigma * eps inherits that, scaled by sigma, plus <= 2 ulp of expf in sigma.
EPS_RTOL, EPS_ATOL = 1e-5, 1e-6
# Row sums (kl, nll): float32 sums in another order (lane-strided partials and a shuffle
# or block tree vs NumPy's pairwise sum), FMA contraction of mu * mu, and the twin's own
# cancellation in 1 + lv - exp(lv) (the kernel uses lv - expm1(lv)): all bounded by a few
# ulp of the sum of |terms| per element, not of the (possibly small) result.  1e-5 is ~80
# ulp of that scale: generous for rounding, far below any wrong term.
SUM_RTOL = 1e-5
# Element-wise gradients: a handful of expf/tanhf/division ulps (<= ~10 ulp), so 1e-5.
GRAD_RTOL = 1e-5
# The float32 twin's own cancellations: 1 - m (m rounded near 1) and 1 - t^2 (t rounded
# near +-1) each carry an absolute error up to 2^-24 (a half ulp of 1, doubled), which
# the kernel's stable forms do not have; the bound allows 4x that (2^-22).
CANCEL_ATOL = 2.0 ** -22


@functools.lru_cache(maxsize=None)
def emulated_module(name, thread_order):
    return module_from_source(load_source(name), "emulated", thread_order=thread_order, seed=7)


def launch_on(backend, launch, thread_order=None):
    """Run `launch`; with a thread_order, on a dedicated emulated module built with it."""
    if thread_order is None:
        run(launch, backend)
    else:
        kernel = emulated_module(launch.kernel, thread_order).get_function(launch.entry)
        kernel(launch.grid, launch.block, launch.args, shared_mem=launch.shared_mem)


def assert_within(got, expected, bound, name):
    """|got - expected| <= bound everywhere (and NaN-free); otherwise say where and by how much."""
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    assert got.shape == expected.shape, f"{name}: shape {got.shape} vs {expected.shape}"
    assert np.all(np.isfinite(got)), f"{name}: non-finite values at {np.argwhere(~np.isfinite(got))[:5].tolist()}"
    err = np.abs(got - expected)
    bad = ~(err <= bound)
    if bad.any():
        worst = np.unravel_index(np.argmax(np.where(bad, err / np.maximum(bound, 1e-300), 0)), err.shape)
        raise AssertionError(
            f"{name}: {bad.sum()} of {bad.size} beyond tolerance; worst at {tuple(map(int, worst))}: "
            f"got {got[worst]!r}, expected {expected[worst]!r}, |err| {err[worst]:.3g} > "
            f"bound {np.broadcast_to(bound, err.shape)[worst]:.3g}")


def counters_array(step=COUNTERS[0], batch=COUNTERS[1]):
    return np.array([step, batch], np.uint32)


# ---------------------------------------------------------------------- posterior

def make_qraw(batch, z_dim, seed=0, hostile=True):
    """[mu | lv]: moderate values, with the first row at lv = +30 and the last at lv = -30."""
    rng = np.random.default_rng(seed)
    mu = rng.normal(0.0, 2.0, (batch, z_dim)).astype(np.float32)
    lv = rng.uniform(-5.0, 5.0, (batch, z_dim)).astype(np.float32)
    if hostile:
        lv[0, ::2] = 30.0
        lv[-1, 1::2] = -30.0
        mu[-1, :1] = 0.0
    return np.concatenate([mu, lv], axis=1)


def posterior_forward(backend, qraw, counters, seed=SEED, stream=philox.STREAM_POSTERIOR,
                      thread_order=None, grid=None):
    batch, z_dim = qraw.shape[0], qraw.shape[1] // 2
    # NaN prefill proves every element is written with `=`.
    z = to_device(np.full((batch, z_dim), np.nan, np.float32), backend)
    kl = to_device(np.full(batch, np.nan, np.float32), backend)
    launch = ops.gaussian_posterior_forward(to_device(qraw, backend), to_device(counters, backend),
                                                 seed, stream, z, kl)
    if grid is not None:
        launch = dataclasses.replace(launch, grid=grid)
    launch_on(backend, launch, thread_order)
    return to_host(z), to_host(kl)


def assert_posterior_forward_matches(qraw, counters, z, kl, seed=SEED, stream=philox.STREAM_POSTERIOR):
    expected_z, expected_kl = gaussian.gaussian_posterior_forward(qraw, counters, seed, stream)
    z_dim = qraw.shape[1] // 2
    mu, lv = qraw[:, :z_dim].astype(np.float64), qraw[:, z_dim:].astype(np.float64)
    sigma = np.exp(0.5 * lv)
    eps = philox.normal(seed, int(counters[0]), qraw.shape[0], z_dim, stream)
    assert_within(z, expected_z, EPS_RTOL * (np.abs(mu) + sigma * np.abs(eps)) + EPS_ATOL * sigma, "z")
    kl_terms = 0.5 * (1 + np.abs(lv) + mu * mu + np.exp(lv)).sum(axis=1)
    assert_within(kl, expected_kl, SUM_RTOL * kl_terms, "kl")


@pytest.mark.parametrize("z_dim", LATENT_DIMS)
@pytest.mark.parametrize("batch", BATCH_SIZES)
def test_posterior_forward_matches_twin(backend, batch, z_dim):
    qraw = make_qraw(batch, z_dim, seed=batch * 1000 + z_dim)
    counters = counters_array()
    z, kl = posterior_forward(backend, qraw, counters)
    assert_posterior_forward_matches(qraw, counters, z, kl)


@pytest.mark.parametrize("thread_order", THREAD_ORDERS)
def test_posterior_forward_is_independent_of_thread_order(thread_order):
    """Several rows (warps) per block, one partial: a shuffle bug would show as order-dependence."""
    qraw = make_qraw(13, 33, seed=5)
    counters = counters_array()
    z, kl = posterior_forward("emulated", qraw, counters, thread_order=thread_order)
    assert_posterior_forward_matches(qraw, counters, z, kl)


def test_posterior_forward_hostile_log_variance(backend):
    """lv = +-30 (sigma = 3.3e6 and 3.1e-7) and a batch of 1: finite and on the twin."""
    mu = np.array([[0.0, 50.0, -3.0, 0.0]], np.float32)
    lv = np.array([[30.0, -30.0, 30.0, -30.0]], np.float32)
    qraw = np.concatenate([mu, lv], axis=1)
    counters = counters_array(7, 0)
    z, kl = posterior_forward(backend, qraw, counters)
    assert_posterior_forward_matches(qraw, counters, z, kl)
    # KL by hand in float64: -1/2 sum (1 + lv - mu^2 - e^lv).
    exact = -0.5 * np.sum(1 + lv.astype(np.float64) - mu.astype(np.float64) ** 2 - np.exp(lv.astype(np.float64)))
    np.testing.assert_allclose(kl, [exact], rtol=1e-6)  # dominated by 2 e^30: a few ulp of expf


def test_posterior_forward_follows_the_counters(backend):
    """The noise is keyed by counters[0] (the step), not by counters[1] or a launch argument."""
    qraw = make_qraw(3, 5, seed=1, hostile=False)
    z_a, _ = posterior_forward(backend, qraw, counters_array(4, 0))
    z_b, _ = posterior_forward(backend, qraw, counters_array(4, 9))
    z_c, kl_c = posterior_forward(backend, qraw, counters_array(5, 0))
    np.testing.assert_array_equal(z_a, z_b, err_msg="z must not depend on the batch index")
    assert np.all(z_a != z_c), "a new step must draw new noise"
    assert_posterior_forward_matches(qraw, counters_array(5, 0), z_c, kl_c)


def test_posterior_forward_streams_are_independent(backend):
    qraw = make_qraw(2, 8, seed=2, hostile=False)
    counters = counters_array()
    z_post, _ = posterior_forward(backend, qraw, counters, stream=philox.STREAM_POSTERIOR)
    z_prior, kl = posterior_forward(backend, qraw, counters, stream=philox.STREAM_PRIOR)
    assert np.all(z_post != z_prior)
    assert_posterior_forward_matches(qraw, counters, z_prior, kl, stream=philox.STREAM_PRIOR)


def posterior_backward(backend, qraw, dz, counters, kl_scale, seed=SEED,
                       stream=philox.STREAM_POSTERIOR, kl_weight=1.0):
    dqraw = to_device(np.full(qraw.shape, np.nan, np.float32), backend)
    launch = ops.gaussian_posterior_backward(to_device(qraw, backend), to_device(dz, backend),
                                                  to_device(counters, backend), seed, stream,
                                                  kl_scale, device_weight(kl_weight, backend),
                                                  dqraw)
    run(launch, backend)
    return to_host(dqraw)


def device_weight(kl_weight, backend):
    """The KL weight as the kernel reads it: a (1,) float32 device array."""
    return to_device(np.array([kl_weight], np.float32), backend)


def assert_posterior_backward_matches(qraw, dz, counters, kl_scale, dqraw, seed=SEED,
                                      stream=philox.STREAM_POSTERIOR, kl_weight=1.0):
    expected = gaussian.gaussian_posterior_backward(qraw, dz, counters, seed, stream, kl_scale,
                                                    np.array([kl_weight], np.float32))
    kl_scale = kl_scale * kl_weight
    z_dim = qraw.shape[1] // 2
    mu, lv = qraw[:, :z_dim].astype(np.float64), qraw[:, z_dim:].astype(np.float64)
    g = dz.astype(np.float64)
    eps = philox.normal(seed, int(counters[0]), qraw.shape[0], z_dim, stream).astype(np.float64)
    # dmu = dz + kl_scale mu: at most an FMA's worth of rounding apart.
    assert_within(dqraw[:, :z_dim], expected[:, :z_dim],
                  GRAD_RTOL * (np.abs(g) + abs(kl_scale) * np.abs(mu)), "dmu")
    # dlv: eps (EPS_RTOL/EPS_ATOL) times 0.5 dz sigma, and kl_scale (exp(lv) - 1) / 2, where
    # the twin's exp(lv) - 1 cancels near lv = 0 (absolute ulp(1), inside GRAD_RTOL * 1).
    half_sigma_dz = 0.5 * np.abs(g) * np.exp(0.5 * lv)
    bound = (EPS_RTOL * half_sigma_dz * np.abs(eps) + EPS_ATOL * half_sigma_dz
             + GRAD_RTOL * 0.5 * abs(kl_scale) * (np.exp(lv) + 1))
    assert_within(dqraw[:, z_dim:], expected[:, z_dim:], bound, "dlogvar")


# ------------------------------------------------- the draw alone: an ElementwiseSpec

def posterior_sample(backend, qraw, step, seed=SEED, stream=philox.STREAM_POSTERIOR):
    z = to_device(np.full((qraw.shape[0], qraw.shape[1] // 2), np.nan, np.float32), backend)
    run(ops.gaussian_posterior_sample(to_device(qraw, backend), seed, step, stream, z), backend)
    return to_host(z)


@pytest.mark.parametrize("z_dim", [1, 3, 20, 33])
@pytest.mark.parametrize("batch", [1, 37])
def test_posterior_sample_matches_twin_and_is_the_forward_draw(backend, batch, z_dim):
    """The elementwise draw is the NumPy rsample with Philox noise (to the few ulp of
    logf/cosf/expf), and BIT FOR BIT the z the fused forward kernel draws for the same keys:
    the same expression on the same words (emulator: no contraction; GPU: --fmad=false)."""
    qraw = make_qraw(batch, z_dim, seed=batch + z_dim)
    z = posterior_sample(backend, qraw, COUNTERS[0])
    z_forward, _ = posterior_forward(backend, qraw, counters_array())
    np.testing.assert_array_equal(z.view(np.uint32), z_forward.view(np.uint32))
    eps = philox.normal(SEED, COUNTERS[0], batch, z_dim, philox.STREAM_POSTERIOR)
    expected = gaussian.GaussianPosterior(z_dim).rsample(qraw, eps)
    mu, lv = qraw[:, :z_dim].astype(np.float64), qraw[:, z_dim:].astype(np.float64)
    sigma = np.exp(0.5 * lv)
    assert_within(z, expected, EPS_RTOL * (np.abs(mu) + sigma * np.abs(eps)) + EPS_ATOL * sigma,
                  "z")


def test_posterior_sample_is_captured_and_replays_its_bits():
    """Recorded like a CUDA graph (the emulator's graph mode) and replayed: nothing runs
    while recording, the replay writes the eager launch's bits."""
    from cupyvae.cuda.graph import bind, capture

    qraw = make_qraw(9, 4, seed=3)
    z = np.full((9, 4), np.nan, np.float32)
    recording = capture(bind([ops.gaussian_posterior_sample(qraw, SEED, 8, 0, z)], "emulated"), 3,
                        "emulated")
    assert np.isnan(z).all()
    recording.launch()
    np.testing.assert_array_equal(z, posterior_sample("emulated", qraw, 8, stream=0))


@pytest.mark.parametrize("thread_order", ["reverse", "random"])
def test_posterior_sample_twin_is_independent_of_thread_order(thread_order):
    qraw = make_qraw(37, 5, seed=4)
    launch = ops.gaussian_posterior_sample(qraw, SEED, 2, 1, np.empty((37, 5), np.float32))
    twin = launch.spec.emulated(thread_order=thread_order, seed=5)
    z = np.full((37, 5), np.nan, np.float32)
    twin(*launch.args[:-1], z)
    np.testing.assert_array_equal(z, posterior_sample("emulated", qraw, 2, stream=1))


def test_posterior_sample_rejects_bad_shapes():
    qraw = np.zeros((4, 6), np.float32)
    with pytest.raises(ValueError, match=r"z must have shape \(4, 3\)"):
        ops.gaussian_posterior_sample(qraw, 1, 0, 0, np.zeros((4, 2), np.float32))
    with pytest.raises(ValueError, match=r"qraw must be 2-D \(B, 2Z\)"):
        ops.gaussian_posterior_sample(np.zeros((4, 5), np.float32), 1, 0, 0,
                                      np.zeros((4, 2), np.float32))
    with pytest.raises(ValueError, match="step must be a uint32"):
        ops.gaussian_posterior_sample(qraw, 1, 2 ** 32, 0, np.zeros((4, 3), np.float32))


@pytest.mark.parametrize("z_dim", LATENT_DIMS)
@pytest.mark.parametrize("batch", BATCH_SIZES)
def test_posterior_backward_matches_twin(backend, batch, z_dim):
    qraw = make_qraw(batch, z_dim, seed=batch * 7 + z_dim)
    dz = np.random.default_rng(batch + z_dim).normal(0, 0.1, (batch, z_dim)).astype(np.float32)
    counters = counters_array()
    kl_scale = np.float32(1.0 / batch)
    dqraw = posterior_backward(backend, qraw, dz, counters, kl_scale)
    assert_posterior_backward_matches(qraw, dz, counters, kl_scale, dqraw)


@pytest.mark.parametrize("kl_weight", [0.0, 0.37, 4.0])
def test_posterior_backward_reads_the_kl_weight_from_the_device(backend, kl_weight):
    """d loss / d KL = kl_scale * beta, beta read from a device scalar (a slot of `sched`):
    the KL part of dqraw scales with beta (beta = 0 leaves the reparameterization term)."""
    qraw = make_qraw(9, 5, seed=4)
    dz = np.random.default_rng(8).normal(0, 0.1, (9, 5)).astype(np.float32)
    counters = counters_array()
    dqraw = posterior_backward(backend, qraw, dz, counters, 1 / 9, kl_weight=kl_weight)
    assert_posterior_backward_matches(qraw, dz, counters, 1 / 9, dqraw, kl_weight=kl_weight)
    without_kl = posterior_backward(backend, qraw, dz, counters, 0.0)
    kl_part = (np.float32(1 / 9) * np.float32(kl_weight)) * gaussian.kl_gaussian_normal(
        qraw.astype(np.float64))[1]
    # dqraw - (its value without the KL) is the KL part: float32 rounding of the two sums
    # (a few ulp of |dz| + |kl part|).
    np.testing.assert_allclose(dqraw - without_kl, kl_part,
                               atol=1e-6 * (np.abs(dz).max() + np.abs(kl_part).max()))

def test_posterior_forward_warps_stride_over_rows(backend):
    """One block of 8 warps for 37 rows: each warp handles 4 or 5 rows in turn."""
    qraw = make_qraw(37, 33, seed=12)
    counters = counters_array()
    z, kl = posterior_forward(backend, qraw, counters, grid=(1,))
    assert_posterior_forward_matches(qraw, counters, z, kl)


def test_posterior_backward_warps_stride_over_rows_hostile(backend):
    """One block of 8 warps for 37 rows (each warp loops); rows with lv = +-30."""
    qraw = make_qraw(37, 33, seed=11)
    dz = np.random.default_rng(3).normal(0, 1, (37, 33)).astype(np.float32)
    counters = counters_array(2 ** 32 - 1, 0)   # the largest step the counter holds
    dqraw = to_device(np.full(qraw.shape, np.nan, np.float32), backend)
    launch = ops.gaussian_posterior_backward(to_device(qraw, backend), to_device(dz, backend),
                                                  to_device(counters, backend), SEED,
                                                  philox.STREAM_POSTERIOR, 0.25,
                                                  device_weight(1.0, backend), dqraw)
    run(dataclasses.replace(launch, grid=(1,)), backend)
    assert_posterior_backward_matches(qraw, dz, counters, 0.25, to_host(dqraw))


def test_posterior_backward_is_the_derivative_of_forward():
    """Directional finite difference of sum(w * z) + kl_scale * sum(kl) through the twins
    (float64, where the twin math works unchanged) agrees with the kernel's dqraw."""
    qraw = make_qraw(3, 4, seed=9, hostile=False)
    counters = counters_array(3, 1)
    w = np.random.default_rng(0).normal(0, 1, (3, 4))
    kl_scale = 1.0 / 3

    def loss(raw64):
        z, kl = gaussian.gaussian_posterior_forward(raw64, counters, SEED, philox.STREAM_POSTERIOR)
        return float((w * z).sum() + kl_scale * kl.sum())

    dqraw = posterior_backward("emulated", qraw, w.astype(np.float32), counters, kl_scale)
    direction = np.random.default_rng(1).normal(0, 1, qraw.shape)
    h = 1e-5
    base = qraw.astype(np.float64)
    numeric = (loss(base + h * direction) - loss(base - h * direction)) / (2 * h)
    analytic = float((dqraw.astype(np.float64) * direction).sum())
    # float32 kernel gradient vs a float64 central difference: ~1e-6 relative.
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5)


# ---------------------------------------------------------------------- likelihood

def make_likelihood_inputs(batch, dim, seed=0):
    """[a | r] and x: moderate values with a = +-50, r = +-30 and +-1e4 sprinkled in, and
    exact 0 / 1 / 0.5 targets."""
    rng = np.random.default_rng(seed)
    a = rng.normal(0.0, 3.0, (batch, dim)).astype(np.float32)
    r = rng.normal(0.0, 5.0, (batch, dim)).astype(np.float32)
    a.flat[::5] = rng.choice(np.array([50.0, -50.0, 20.0, -20.0], np.float32), a.flat[::5].shape)
    r.flat[::3] = rng.choice(np.array([30.0, -30.0, 1e4, -1e4], np.float32), r.flat[::3].shape)
    x = rng.random((batch, dim), dtype=np.float32)
    x.flat[::4] = rng.choice(np.array([0.0, 1.0, 0.5], np.float32), x.flat[::4].shape)
    return np.concatenate([a, r], axis=1), x


def likelihood_nll(backend, raw, x, scale, thread_order=None):
    nll = to_device(np.full(x.shape[0], np.nan, np.float32), backend)
    draw = to_device(np.full(raw.shape, np.nan, np.float32), backend)
    launch = ops.gaussian_likelihood_nll(to_device(raw, backend), to_device(x, backend),
                                              scale, nll, draw)
    launch_on(backend, launch, thread_order)
    return to_host(nll), to_host(draw)


def exact_likelihood(raw, x, scale):
    """nll and draw in float64 with the stable forms: an implementation independent of the
    twin (whose float32 AND float64 versions lose m (1 - m) once 1 - m rounds to 0)."""
    bound = gaussian.GaussianLikelihood.LOGVAR_BOUND
    dim = x.shape[1]
    a, r, x = raw[:, :dim].astype(np.float64), raw[:, dim:].astype(np.float64), x.astype(np.float64)
    e = np.exp(-np.abs(a))
    m = np.where(a >= 0, 1 / (1 + e), e / (1 + e))
    mm = e / (1 + e) ** 2                                   # m (1 - m)
    e2 = np.exp(-2 * np.abs(r / bound))
    sech2 = 4 * e2 / (1 + e2) ** 2                          # 1 - tanh^2
    s = bound * np.tanh(r / bound)
    inv_var = np.exp(-s)
    diff = x - m
    sq = diff * diff * inv_var
    nll = 0.5 * (LOG_2PI + s + sq).sum(axis=1)
    draw = scale * np.concatenate([-diff * inv_var * mm, 0.5 * (1 - sq) * sech2], axis=1)
    magnitudes = dict(nll_terms=0.5 * (LOG_2PI + np.abs(s) + sq).sum(axis=1),
                      da_terms=abs(scale) * inv_var * (np.abs(diff) + mm),
                      da_stable=abs(scale) * inv_var * mm,
                      dr_terms=abs(scale) * 0.5 * (1 + sq),
                      dr_stable=abs(scale) * 0.5 * (1 + sq) * sech2)
    return nll, draw, magnitudes


def assert_likelihood_matches(raw, x, scale, nll, draw):
    """Against the float32 twin (the training reference) and an exact float64 evaluation."""
    dim = x.shape[1]
    scale = float(scale)
    expected_nll, expected_draw = gaussian.gaussian_likelihood_nll(raw, x, np.float32(scale))
    exact_nll, exact_draw, mag = exact_likelihood(raw, x, scale)
    da, dr = draw[:, :dim], draw[:, dim:]

    assert_within(nll, expected_nll, SUM_RTOL * mag["nll_terms"], "nll vs float32 twin")
    assert_within(nll, exact_nll, SUM_RTOL * mag["nll_terms"], "nll vs float64")
    # float32 twin: its 1 - m, x - m and 1 - t^2 are each off by up to CANCEL_ATOL absolute.
    assert_within(da, expected_draw[:, :dim], GRAD_RTOL * np.abs(exact_draw[:, :dim])
                  + mag["da_terms"] * CANCEL_ATOL, "da vs float32 twin")
    assert_within(dr, expected_draw[:, dim:], GRAD_RTOL * mag["dr_stable"]
                  + mag["dr_terms"] * CANCEL_ATOL, "dr vs float32 twin")
    # float64: the kernel's stable forms leave errors proportional to m (1 - m) and
    # sech^2 only (x - m near 0 still cancels, as it must; and tanhf's ulps in s = 7t give
    # sq a ~1e-6 relative error, hence GRAD_RTOL on the terms of 1 - sq), so a kernel that
    # took 1 - m or 1 - t^2 naively fails here at |a| >= 20 or |r| = 30.
    assert_within(da, exact_draw[:, :dim], GRAD_RTOL * np.abs(exact_draw[:, :dim])
                  + mag["da_stable"] * CANCEL_ATOL, "da vs float64")
    assert_within(dr, exact_draw[:, dim:], GRAD_RTOL * mag["dr_stable"], "dr vs float64")


@pytest.mark.parametrize("dim", DATA_DIMS)
@pytest.mark.parametrize("batch", BATCH_SIZES)
def test_likelihood_matches_twin(backend, batch, dim):
    raw, x = make_likelihood_inputs(batch, dim, seed=batch * 1000 + dim)
    scale = np.float32(1.0 / batch)
    nll, draw = likelihood_nll(backend, raw, x, scale)
    assert_likelihood_matches(raw, x, scale, nll, draw)


@pytest.mark.parametrize("thread_order", THREAD_ORDERS)
def test_likelihood_reduction_is_independent_of_thread_order(thread_order):
    """Wrong or missing barriers show up as order-dependent sums on the emulator."""
    for dim in (33, 784):  # one partial warp; several warps with a strided tail
        raw, x = make_likelihood_inputs(3, dim, seed=dim)
        nll, draw = likelihood_nll("emulated", raw, x, np.float32(0.5), thread_order=thread_order)
        assert_likelihood_matches(raw, x, np.float32(0.5), nll, draw)


def test_likelihood_hostile_corners_are_finite_and_exact(backend):
    """Every pairing of a in {+-50, 0} with r in {+-30, +-1e4, 0} and x in {0, 1, 0.5}."""
    grid = np.array(np.meshgrid([50.0, -50.0, 0.0], [30.0, -30.0, 1e4, -1e4, 0.0],
                                [0.0, 1.0, 0.5], indexing="ij"), np.float32).reshape(3, -1)
    a, r, x = grid[0][None, :], grid[1][None, :], grid[2][None, :]
    raw = np.concatenate([a, r], axis=1)
    nll, draw = likelihood_nll(backend, raw, x, np.float32(1.0))
    assert_likelihood_matches(raw, x, np.float32(1.0), nll, draw)
    dim = x.shape[1]
    saturated = np.abs(r) == 1e4
    assert np.all(draw[:, dim:][saturated] == 0), "tanh saturates: d nll / d r must be exactly 0"
    # m(1-m) at |a| = 50 is ~2e-22, not 0: with x = 0.5 the gradient stays non-zero.
    live = (np.abs(a) == 50) & (x == 0.5)
    assert np.all(draw[:, :dim][live] != 0)


def test_likelihood_rejects_mismatched_shapes():
    raw, x = np.zeros((2, 10), np.float32), np.zeros((2, 5), np.float32)
    nll, draw = np.zeros(2, np.float32), np.zeros((2, 10), np.float32)
    with pytest.raises(ValueError, match=r"raw \(2, 8\)"):
        ops.gaussian_likelihood_nll(np.zeros((2, 8), np.float32), x, 1.0, nll, draw)
    with pytest.raises(ValueError, match=r"draw \(2, 5\)"):
        ops.gaussian_likelihood_nll(raw, x, 1.0, nll, np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match=r"nll .*\(2,\).*\(3,\)"):
        ops.gaussian_likelihood_nll(raw, x, 1.0, np.zeros(3, np.float32), draw)
    with pytest.raises(ValueError, match="float32"):
        ops.gaussian_likelihood_nll(raw.astype(np.float64), x, 1.0, nll, draw)
    launch = ops.gaussian_likelihood_nll(raw, x, 0.5, nll, draw)
    assert [type(v) for v in launch.args[4:]] == [np.int32, np.int32, np.float32]
    assert launch.grid == (2,) and launch.block == (32,)


def test_posterior_launch_checks_and_types():
    qraw, counters = np.zeros((3, 8), np.float32), counters_array()
    z, kl = np.zeros((3, 4), np.float32), np.zeros(3, np.float32)
    launch = ops.gaussian_posterior_forward(qraw, counters, 2 ** 33 + 1, 0, z, kl)
    assert [type(v) for v in launch.args[4:9]] == [np.int32, np.int32] + [np.uint32] * 3
    assert type(launch.args[-1]) is np.int32 and launch.args[-1] == 0        # draws its own noise
    assert [int(v) for v in launch.args[6:8]] == [1, 2]
    assert launch.block == (96,) and launch.grid == (1,)   # 3 rows, one warp each
    with pytest.raises(ValueError, match=r"qraw .*\(3, 7\)"):
        ops.gaussian_posterior_forward(np.zeros((3, 7), np.float32), counters, 1, 0,
                                            z, kl)
    with pytest.raises(ValueError, match=r"z must have shape \(3, 4\).*\(3, 5\)"):
        ops.gaussian_posterior_forward(qraw, counters, 1, 0, np.zeros((3, 5), np.float32), kl)
    with pytest.raises(ValueError, match="counters"):
        ops.gaussian_posterior_forward(qraw, counters.astype(np.int64), 1, 0, z, kl)
    with pytest.raises(ValueError, match=r"dz must have shape \(3, 4\)"):
        ops.gaussian_posterior_backward(qraw, np.zeros((4, 3), np.float32), counters, 1, 0,
                                             1.0, np.ones(1, np.float32), np.zeros_like(qraw))
    with pytest.raises(ValueError, match=r"kl_weight must be a \(1,\) float32 device array"):
        ops.gaussian_posterior_backward(qraw, z, counters, 1, 0, 1.0, np.float32(1.0),
                                        np.zeros_like(qraw))
    backward = ops.gaussian_posterior_backward(qraw, z, counters, 1, 0, 1 / 3,
                                               np.ones(1, np.float32), np.zeros_like(qraw))
    assert type(backward.args[-4]) is np.float32
    with pytest.raises(ValueError, match=r"eps must have shape \(3, 4\)"):
        ops.gaussian_posterior_forward(qraw, counters, 1, 0, z, kl, eps=np.zeros((3, 3), np.float32))


def test_posterior_kernels_take_given_noise(backend):
    """loss_and_grads(x, eps) passes the caller's noise: both kernels must use it, not Philox."""
    qraw = make_qraw(7, 3, seed=11)
    eps = np.random.default_rng(2).standard_normal((7, 3)).astype(np.float32)
    dz = np.random.default_rng(3).standard_normal((7, 3)).astype(np.float32)
    counters = counters_array()
    z, kl = (to_device(np.full(shape, np.nan, np.float32), backend) for shape in ((7, 3), (7,)))
    dqraw = to_device(np.full((7, 6), np.nan, np.float32), backend)
    d = {name: to_device(a, backend) for name, a in (("q", qraw), ("c", counters), ("e", eps), ("dz", dz))}
    launch_on(backend, ops.gaussian_posterior_forward(d["q"], d["c"], SEED, 0, z, kl, eps=d["e"]), None)
    launch_on(backend, ops.gaussian_posterior_backward(d["q"], d["dz"], d["c"], SEED, 0, 0.25,
                                                       device_weight(1.0, backend), dqraw,
                                                       eps=d["e"]), None)
    post = gaussian.GaussianPosterior(3)
    # float32 kernel vs float64 reference of the same formulas: a few ulp of expf and the sum.
    np.testing.assert_allclose(to_host(z), post.rsample(qraw.astype(np.float64), eps), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(to_host(kl), gaussian.kl_gaussian_normal(qraw.astype(np.float64))[0],
                               rtol=1e-5, atol=1e-5)
    expected = post.rsample_backward(qraw.astype(np.float64), eps, dz)
    expected += 0.25 * gaussian.kl_gaussian_normal(qraw.astype(np.float64))[1]
    np.testing.assert_allclose(to_host(dqraw), expected, rtol=1e-5, atol=1e-6)
