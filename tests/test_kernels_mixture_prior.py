"""kernels/mixture_prior.cu against its NumPy twins (cupyvae.distributions.mixture), on every
backend: odd sizes, hostile components, thread orders, grid-stride, `=` vs `+=`."""
import dataclasses
import functools

import numpy as np
import pytest

from cupyvae.cuda import ops
from cupyvae.cuda.launch import run, to_device, to_host
from cupyvae.cuda.loader import load_source, module_from_source
from cupyvae.distributions import mixture
from cupyvae.distributions.base import LOG_2PI

THREAD_ORDERS = ["reverse", "random"]
BATCH_SIZES = [1, 37]           # neither a multiple of the 32-lane warp nor of the 8-warp block
COMPONENTS = [1, 3, 500]
LATENT_DIMS = [1, 2, 64]        # 64: two elements per lane in the backward kernels
UNIT = 2.0 ** -24               # float32 unit roundoff
# Recursive float32 summation of n terms errs by at most ~n units of the sum of |terms|
# (Higham, "Accuracy and Stability of Numerical Algorithms", eq. 4.4); each term adds a few
# units from expf/logf (CUDA and host libm: <= 2 ulp each) and its own products.  Kernel and
# twin sum in different orders and each may err that much, so two such bounds apart, with
# 16 units per term's elementary functions:  ulps(n) = 2 (n + 16) units.
SUBNORMAL = 2.0 ** -126         # a responsibility below float32's normal range may flush to 0
# Below the normal range a float32 result is quantised to units of 2^-149, not relative units:
# each rounding of a subnormal intermediate can cost one such unit.
TINY = 2.0 ** -149


def ulps(n):
    return 2 * (n + 16) * UNIT


def subnormal_units(n):
    return 2 * (n + 16) * TINY


@functools.lru_cache(maxsize=None)
def emulated_module(thread_order):
    return module_from_source(load_source("mixture_prior"), "emulated", thread_order=thread_order, seed=11)


def launch_on(backend, launch, thread_order=None):
    if thread_order is None:
        run(launch, backend)
    else:
        kernel = emulated_module(thread_order).get_function(launch.entry)
        kernel(launch.grid, launch.block, launch.args, shared_mem=launch.shared_mem)


def assert_within(got, expected, bound, name):
    """|got - expected| <= bound everywhere (and NaN-free); otherwise say where and by how much."""
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    assert got.shape == expected.shape, f"{name}: shape {got.shape} vs {expected.shape}"
    assert np.all(np.isfinite(got)), f"{name}: non-finite at {np.argwhere(~np.isfinite(got))[:5].tolist()}"
    err = np.abs(got - expected)
    bound = np.broadcast_to(bound, err.shape)
    bad = ~(err <= bound)
    if bad.any():
        worst = np.unravel_index(np.argmax(np.where(bad, err / np.maximum(bound, 1e-300), 0)), err.shape)
        raise AssertionError(f"{name}: {bad.sum()} of {bad.size} beyond tolerance; worst at "
                             f"{tuple(map(int, worst))}: got {got[worst]!r}, expected {expected[worst]!r}, "
                             f"|err| {err[worst]:.3g} > bound {bound[worst]:.3g}")


def make_mixture(batch, k, z_dim, seed=0):
    """z (B, Z), logits (K,), components (K, 2Z), g (B,) in float32; z near the components."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, k).astype(np.float32)
    means = rng.normal(0, 2, (k, z_dim))
    logvars = rng.uniform(-3, 2, (k, z_dim))
    pick = rng.integers(0, k, batch)
    z = means[pick] + rng.normal(0, 1, (batch, z_dim)) * np.exp(0.5 * logvars[pick])
    g = rng.normal(0, 1, batch)
    f32 = lambda a: np.ascontiguousarray(a, np.float32)
    return f32(z), logits, f32(np.concatenate([means, logvars], 1)), f32(g)


# ---------------------------------------------------------------- launching

def forward(backend, z, logits, comp, thread_order=None, grid=None):
    batch, k = z.shape[0], comp.shape[0]
    # NaN prefill proves every element is written with `=`.
    logp = to_device(np.full(batch, np.nan, np.float32), backend)
    resp = to_device(np.full((batch, k), np.nan, np.float32), backend)
    launch = ops.mixture_prior_forward(to_device(z, backend), to_device(logits, backend),
                                       to_device(comp, backend), logp, resp)
    if grid is not None:
        launch = dataclasses.replace(launch, grid=grid)
    launch_on(backend, launch, thread_order)
    return to_host(logp), to_host(resp)


def backward_z(backend, z, comp, resp, g, dz0, thread_order=None, grid=None):
    dz = to_device(dz0.copy(), backend)
    launch = ops.mixture_prior_backward_z(*(to_device(a, backend) for a in (z, comp, resp, g)), dz)
    if grid is not None:
        launch = dataclasses.replace(launch, grid=grid)
    launch_on(backend, launch, thread_order)
    return to_host(dz)


def backward_params(backend, z, logits, comp, resp, g, thread_order=None, grid=None):
    dlogits = to_device(np.full(logits.shape, np.nan, np.float32), backend)
    dcomp = to_device(np.full(comp.shape, np.nan, np.float32), backend)
    launch = ops.mixture_prior_backward_params(
        *(to_device(a, backend) for a in (z, logits, comp, resp, g)), dlogits, dcomp)
    if grid is not None:
        launch = dataclasses.replace(launch, grid=grid)
    launch_on(backend, launch, thread_order)
    return to_host(dlogits), to_host(dcomp)


# ---------------------------------------------------------------- bounds from float64 terms

def terms64(z, logits, comp):
    """float64 t (B,K,Z), h (K,Z), r (B,K), pi (K,), lse_a and S (B,K) = sum of |terms| of l_bk."""
    z64, a64, c64 = (np.asarray(v, np.float64) for v in (z, logits, comp))
    z_dim = z.shape[1]
    h = np.exp(-0.5 * c64[:, z_dim:])
    t = (z64[:, None, :] - c64[None, :, :z_dim]) * h[None]
    lse_a = np.logaddexp.reduce(a64)
    ell = a64 - lse_a - 0.5 * (LOG_2PI + c64[None, :, z_dim:] + t * t).sum(2)
    logp = np.logaddexp.reduce(ell, axis=1)
    r = np.exp(ell - logp[:, None])
    scale = np.abs(a64) + abs(lse_a) + 0.5 * (LOG_2PI + np.abs(c64[None, :, z_dim:]) + t * t).sum(2)
    return t, h, r, np.exp(a64 - lse_a), scale, logp


def assert_forward_matches(z, logits, comp, logp, resp):
    want_logp, want_resp = mixture.mixture_prior_forward(z, logits, comp)
    _, _, r, _, scale, logp64 = terms64(z, logits, comp)
    k, z_dim = comp.shape[0], z.shape[1]
    row_scale = (r * scale).sum(1) + np.abs(logp64) + 1
    assert_within(logp, want_logp, ulps(z_dim + k) * row_scale, "logp")
    assert_within(resp, want_resp, ulps(z_dim + k) * r * (scale + row_scale[:, None]) + SUBNORMAL, "resp")


def assert_backward_z_matches(z, comp, resp, g, dz0, dz):
    want = mixture.mixture_prior_backward_z(z, comp, resp, g, dz0)
    t, h, _, _, _, _ = terms64(z, np.zeros(comp.shape[0], np.float32), comp)
    magnitude = np.einsum("bk,bkj->bj", np.asarray(resp, np.float64), np.abs(t * h[None]))
    k = comp.shape[0]
    assert_within(dz, want, ulps(k) * (np.abs(dz0) + np.abs(g)[:, None] * magnitude) + subnormal_units(k), "dz")


def assert_backward_params_match(z, logits, comp, resp, g, dlogits, dcomp):
    want_dlogits, want_dcomp = mixture.mixture_prior_backward_params(z, logits, comp, resp, g)
    t, h, _, pi, _, _ = terms64(z, logits, comp)
    batch, z_dim = z.shape
    r, ag = np.asarray(resp, np.float64), np.abs(np.asarray(g, np.float64))
    # pi = exp(a - LSE a): its error grows with |a| + |LSE a| (the exponent's own rounding).
    lse_a = np.logaddexp.reduce(np.asarray(logits, np.float64))
    pi_scale = pi * (1 + np.abs(logits) + abs(lse_a))
    tiny = subnormal_units(batch)
    # A responsibility below 2^-126 may reach the backward as 0 (CUDA's expf is built on
    # ex2.approx.ftz and flushes such results; host libm keeps them subnormal): a dropped
    # term costs at most its weight with r = 2^-126.  Seen on an H200 at K = 500.
    flushed = ag[:, None] * np.where(r < SUBNORMAL, SUBNORMAL, 0.0)
    assert_within(dlogits, want_dlogits,
                  ulps(batch) * (ag @ r + ag.sum() * pi_scale) + flushed.sum(axis=0) + tiny, "dlogits")
    w = ag[:, None] * r
    assert_within(dcomp[:, :z_dim], want_dcomp[:, :z_dim],
                  (ulps(batch) * np.einsum("bk,bkj->kj", w, np.abs(t))
                   + np.einsum("bk,bkj->kj", flushed, np.abs(t))) * h + tiny, "dmeans")
    assert_within(dcomp[:, z_dim:], want_dcomp[:, z_dim:],
                  0.5 * np.einsum("bk,bkj->kj", ulps(batch) * w + flushed, t * t + 1) + tiny, "dlogvars")


def run_all_and_check(backend, z, logits, comp, g, thread_order=None, seed=0):
    """Forward, backward_z (onto a random dz: `+=`) and backward_params, each against its twin
    (the backward kernels get the twin's resp, so each comparison sees one kernel's rounding)."""
    logp, resp = forward(backend, z, logits, comp, thread_order)
    assert_forward_matches(z, logits, comp, logp, resp)
    _, resp_twin = mixture.mixture_prior_forward(z, logits, comp)
    dz0 = np.random.default_rng(seed).normal(0, 1, z.shape).astype(np.float32)
    dz = backward_z(backend, z, comp, resp_twin, g, dz0, thread_order)
    assert_backward_z_matches(z, comp, resp_twin, g, dz0, dz)
    dlogits, dcomp = backward_params(backend, z, logits, comp, resp_twin, g, thread_order)
    assert_backward_params_match(z, logits, comp, resp_twin, g, dlogits, dcomp)
    return logp, resp, dz, dlogits, dcomp


# ---------------------------------------------------------------- tests

@pytest.mark.parametrize("z_dim", LATENT_DIMS)
@pytest.mark.parametrize("k", COMPONENTS)
@pytest.mark.parametrize("batch", BATCH_SIZES)
def test_mixture_kernels_match_twins(backend, batch, k, z_dim):
    z, logits, comp, g = make_mixture(batch, k, z_dim, seed=batch * 1000 + k * 10 + z_dim)
    run_all_and_check(backend, z, logits, comp, g)


@pytest.mark.parametrize("thread_order", THREAD_ORDERS)
def test_same_bits_under_every_thread_order_and_grid(thread_order):
    """Several warps per block, shuffle trees, and a grid too small for one warp per item:
    the results must be bit-identical to the default order and the full grid."""
    z, logits, comp, g = make_mixture(37, 45, 33, seed=3)
    reference = run_all_and_check("emulated", z, logits, comp, g)
    other = run_all_and_check("emulated", z, logits, comp, g, thread_order=thread_order)
    _, resp_twin = mixture.mixture_prior_forward(z, logits, comp)
    dz0 = np.random.default_rng(0).normal(0, 1, z.shape).astype(np.float32)
    small_grid = (*forward("emulated", z, logits, comp, grid=(2,)),
                  backward_z("emulated", z, comp, resp_twin, g, dz0, grid=(1,)),
                  *backward_params("emulated", z, logits, comp, resp_twin, g, grid=(3,)))
    for name, want, got, got_small in zip(["logp", "resp", "dz", "dlogits", "dcomponents"],
                                          reference, other, small_grid):
        np.testing.assert_array_equal(got, want, err_msg=f"{name} under thread order {thread_order}")
        np.testing.assert_array_equal(got_small, want, err_msg=f"{name} with a grid-stride grid")


def float64_log_density(z, logits, comp):
    return terms64(z, logits, comp)[5]


def test_components_far_apart_and_extreme_log_variances(backend):
    """Means 1e3 apart; log-variances -30 (sigma 3e-7) and +30 (sigma 3e6); z at, between
    and beyond the components.  Finite, on the twin, and accurate against float64."""
    z_dim = 2
    means = np.array([[-1e3, -1e3], [0.0, 0.0], [1e3, 1e3], [5.0, -5.0]])
    logvars = np.array([[0.0, 0.0], [-30.0, -30.0], [30.0, 30.0], [-30.0, 30.0]])
    comp = np.concatenate([means, logvars], 1).astype(np.float32)
    logits = np.array([0.0, 1.0, -1.0, 0.5], np.float32)
    z = np.array([[-1e3, -1e3], [-999.0, -1001.0], [0.0, 0.0], [1e-7, -2e-7], [1e3, 1e3],
                  [500.0, 500.0], [5.0, 17.0], [0.0, 2e3], [-3e3, 3e3]], np.float32)
    g = np.linspace(-1, 1, len(z)).astype(np.float32)
    logp, resp, dz, dlogits, dcomp = run_all_and_check(backend, z, logits, comp, g)
    truth = float64_log_density(z, logits, comp)
    # Accurate: float32 rounding of the same float64 terms, bounded like the twin comparison.
    _, _, r, _, scale, _ = terms64(z, logits, comp)
    assert_within(logp, truth, ulps(z_dim + 4) * ((r * scale).sum(1) + np.abs(truth) + 1), "logp vs float64")
    np.testing.assert_array_equal(resp.sum(1) > 0.999, True)
    assert np.isfinite(dz).all() and np.isfinite(dlogits).all() and np.isfinite(dcomp).all()


def test_one_component_is_its_gaussian(backend):
    """K = 1: log pi = 0 and log p is the component's log-density; r = 1; dlogits = 0."""
    z, _, comp, g = make_mixture(37, 1, 5, seed=8)
    logits = np.array([3.5], np.float32)          # any logit: softmax of one is 1
    logp, resp, _, dlogits, _ = run_all_and_check(backend, z, logits, comp, g)
    np.testing.assert_array_equal(resp, 1.0)
    np.testing.assert_array_equal(dlogits, 0.0)
    mu, lv = comp[:, :5].astype(np.float64), comp[:, 5:].astype(np.float64)
    gaussian = -0.5 * (LOG_2PI + lv + (z - mu) ** 2 * np.exp(-lv)).sum(1)
    np.testing.assert_allclose(logp, gaussian, rtol=ulps(5 + 1) * 10)   # |terms| ~ |log p| here


def test_identical_components_share_responsibility(backend):
    """Every component the same (a VampPrior whose pseudo-inputs are all equal): r = 1/K, and
    log p is the single Gaussian's density whatever K is."""
    z, _, comp1, g = make_mixture(37, 1, 3, seed=4)
    comp = np.repeat(comp1, 500, axis=0)
    logits = np.zeros(500, np.float32)
    logp, resp, _, dlogits, dcomp = run_all_and_check(backend, z, logits, comp, g)
    np.testing.assert_allclose(resp, 1 / 500, rtol=1e-5)
    one, _ = forward(backend, z, np.zeros(1, np.float32), comp1)
    np.testing.assert_allclose(logp, one, rtol=0, atol=ulps(500) * (np.abs(one) + 1).max())
    # identical components get identical gradients
    np.testing.assert_array_equal(dcomp, np.repeat(dcomp[:1], 500, axis=0))


def test_backward_z_accumulates_and_g_weights_rows(backend):
    """dz is ADDED to (not overwritten), and a row with g = 0 keeps its dz bits exactly."""
    z, logits, comp, g = make_mixture(37, 3, 2, seed=5)
    g[::2] = 0
    _, resp = mixture.mixture_prior_forward(z, logits, comp)
    dz0 = np.random.default_rng(1).normal(0, 1, z.shape).astype(np.float32)
    dz = backward_z(backend, z, comp, resp, g, dz0)
    np.testing.assert_array_equal(dz[::2], dz0[::2])
    assert np.all(dz[1::2] != dz0[1::2])


@pytest.mark.parametrize("builder,args,message", [
    ("forward", dict(z=(4, 3), logits=(5,), components=(5, 5), logp=(4,), resp=(4, 5)), "components"),
    ("forward", dict(z=(4, 3), logits=(6,), components=(5, 6), logp=(4,), resp=(4, 5)), "logits"),
    ("forward", dict(z=(4, 3), logits=(5,), components=(5, 6), logp=(4,), resp=(5, 4)), "resp"),
    ("backward_z", dict(z=(4, 3), components=(5, 6), resp=(4, 5), g=(3,), dz=(4, 3)), "g must"),
    ("backward_params", dict(z=(4, 3), logits=(5,), components=(5, 6), resp=(4, 5), g=(4,),
                             dlogits=(5,), dcomponents=(5, 3)), "dcomponents"),
])
def test_builders_refuse_bad_shapes(builder, args, message):
    arrays = {name: np.zeros(shape, np.float32) for name, shape in args.items()}
    with pytest.raises(ValueError, match=message):
        getattr(ops, f"mixture_prior_{builder}")(**arrays)


def test_builders_refuse_float64():
    z, logits, comp, _ = make_mixture(4, 3, 2)
    with pytest.raises(ValueError, match="z must be float32"):
        ops.mixture_prior_forward(z.astype(np.float64), logits, comp, np.zeros(4, np.float32),
                                  np.zeros((4, 3), np.float32))
