"""kernels/continuous_bernoulli.cu, discretized_logistic.cu, laplace.cu and gaussian_real.cu
against their NumPy twins (cupyvae.distributions.*), on every backend.

Each kernel is compared with the twin evaluated in float64 on the same float32 inputs (an
exact reference for the float32 kernel) and with the float32 twin the CPU path trains with.
Bounds are relative to the sum of |terms| the kernel rounds, per element (gradients) or per
row (nll), not to the possibly small result: float32 rounding and a different summation order
(lane-strided partials and warp/block trees vs NumPy's pairwise sum) stay within a few ulp of
that scale.  RTOL = 1e-5 is ~80 ulp of it: generous for rounding, far below any wrong term.
"""
import functools
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest

from cupyvae.cuda import ops
from cupyvae.cuda.launch import run, to_device, to_host
from cupyvae.cuda.loader import load_source, module_from_source
from cupyvae.cuda.nvrtc import compile_ptx, nvrtc_available
from cupyvae.distributions import LIKELIHOODS
from cupyvae.distributions import continuous_bernoulli as cb
from cupyvae.distributions import discretized_logistic as dl
from cupyvae.distributions.continuous_bernoulli import continuous_bernoulli_nll
from cupyvae.distributions.discretized_logistic import discretized_logistic_nll
from cupyvae.distributions.gaussian_real import gaussian_real_nll
from cupyvae.distributions.laplace import laplace_nll
from cupyvae.distributions.stable import soft_bound

RTOL = 1e-5
THREAD_ORDERS = ["forward", "reverse", "random"]
BATCH_SIZES = [1, 3, 37]
DATA_DIMS = [1, 5, 33, 784]          # none a multiple of the block sizes the launcher picks


# ---------------------------------------------------------------------- per-likelihood data
def cb_inputs(rng, batch, dim):
    logits = rng.normal(0.0, 4.0, (batch, dim))
    hostile = [50, -50, 0, 4e-7, -4e-7, 1, -1, 1 - 1e-6, 1 + 1e-6, 0.5, -0.999, 3]
    logits.flat[::3] = rng.choice(hostile, logits.flat[::3].shape)
    x = rng.random((batch, dim))
    x.flat[::4] = rng.choice([0.0, 1.0, 0.5], x.flat[::4].shape)
    return logits.astype(np.float32), x.astype(np.float32)


def cb_magnitudes(raw, x, scale):
    a = np.abs(raw)
    log_c, d = cb.log_normalizer(raw)
    nll = (np.maximum(raw, 0) + np.abs(x * raw) + np.log1p(np.exp(-a)) + np.abs(log_c)).sum(1)
    return nll, abs(scale) * (1 + np.abs(x) + np.abs(d))


def two_block_inputs(loc, log_scale_raw, x):
    return np.concatenate([loc, log_scale_raw], axis=1).astype(np.float32), x.astype(np.float32)


def dl_inputs(rng, batch, dim):
    x = rng.integers(0, 256, (batch, dim)) / 255
    x.flat[::5] = rng.choice([0.0, 1.0], x.flat[::5].shape)
    mu = rng.normal(0.5, 0.8, (batch, dim))
    mu.flat[::3] = rng.choice([50.0, -50.0, 0.0, 1.0], mu.flat[::3].shape)
    mu.flat[1::7] = x.flat[1::7] + dl.BIN_HALF_WIDTH          # the mean on a bin edge
    r = rng.normal(-3.0, 4.0, (batch, dim))
    r.flat[::4] = rng.choice([30.0, -30.0, 1e4, -1e4, 0.0], r.flat[::4].shape)
    return two_block_inputs(mu, r, x)


def dl_magnitudes(raw, x, scale):
    dim = x.shape[1]
    mu, r = raw[:, :dim], raw[:, dim:]
    log_s, sech2 = soft_bound(r, dl.LOG_SCALE_BOUND)
    inv_s = np.exp(-log_s)
    upper = inv_s * (np.abs(x - mu) + dl.BIN_HALF_WIDTH)       # |upper|, |lower| <= this
    delta = inv_s / 255
    # upper/lower carry ~10 eps relative error (x - mu, then inv_s = exp(-7 tanh)), which
    # reaches the nll through softplus' slope <= 1 and the gradient through sigmoid' <= 1/4.
    nll = (2 * upper + 2 * np.log1p(upper) + np.abs(np.log(-np.expm1(-delta))) + 1).sum(1)
    dmu = abs(scale) * inv_s * (2 + upper)
    dr = abs(scale) * (2 * upper + 1) * np.maximum(sech2, 1e-30) * (1 + np.abs(log_s))
    return nll, np.concatenate([dmu, dr], axis=1)


def real_inputs(rng, batch, dim):
    mu = rng.normal(0.0, 3.0, (batch, dim))
    mu.flat[::5] = rng.choice([50.0, -50.0, 0.0], mu.flat[::5].shape)
    r = rng.normal(0.0, 5.0, (batch, dim))
    r.flat[::3] = rng.choice([30.0, -30.0, 1e4, -1e4], r.flat[::3].shape)
    x = rng.normal(0.0, 5.0, (batch, dim))
    x.flat[::4] = rng.choice([0.0, 1.0, -3.7, 12.0], x.flat[::4].shape)
    return two_block_inputs(mu, r, x)


def laplace_magnitudes(raw, x, scale):
    dim = x.shape[1]
    mu, r = raw[:, :dim], raw[:, dim:]
    log_b, sech2 = soft_bound(r, 3.5)
    spread = (np.abs(x) + np.abs(mu)) * np.exp(-log_b)           # rounding of |x - mu| / b
    nll = (np.log(2) + np.abs(log_b) + spread).sum(1)
    return nll, abs(scale) * np.concatenate([np.exp(-log_b), (1 + spread) * sech2], axis=1)


def gaussian_real_magnitudes(raw, x, scale):
    dim = x.shape[1]
    m, r = raw[:, :dim], raw[:, dim:]
    s, sech2 = soft_bound(r, 7.0)
    spread = np.abs(x) + np.abs(m)
    sq = spread * spread * np.exp(-s)
    nll = 0.5 * (np.log(2 * np.pi) + np.abs(s) + sq).sum(1)
    return nll, abs(scale) * np.concatenate([spread * np.exp(-s), 0.5 * (1 + sq) * sech2], axis=1)


@dataclass(frozen=True)
class Case:
    name: str                    # registered likelihood
    twin: Callable               # NumPy twin (raw, x, scale) -> (nll, draw)
    inputs: Callable             # (rng, batch, dim) -> (raw, x) float32
    magnitudes: Callable         # float64 (raw, x, scale) -> (nll terms (B,), draw terms)

    @property
    def kernel(self) -> str:
        return LIKELIHOODS.get(self.name).kernel

    @property
    def builder(self):
        return getattr(ops, f"{self.kernel}_nll")


CASES = {case.name: case for case in [
    Case("continuous-bernoulli", continuous_bernoulli_nll, cb_inputs, cb_magnitudes),
    Case("discretized-logistic", discretized_logistic_nll, dl_inputs, dl_magnitudes),
    Case("laplace", laplace_nll, real_inputs, laplace_magnitudes),
    Case("gaussian-real", gaussian_real_nll, real_inputs, gaussian_real_magnitudes),
]}


# ---------------------------------------------------------------------- running and checking
@functools.lru_cache(maxsize=None)
def emulated_module(kernel, thread_order):
    return module_from_source(load_source(kernel), "emulated", thread_order=thread_order, seed=11)


def run_kernel(case, backend, raw, x, scale, thread_order=None):
    """(nll, draw) from the kernel; outputs prefilled with NaN to prove `=` writes."""
    nll = to_device(np.full(x.shape[0], np.nan, np.float32), backend)
    draw = to_device(np.full(raw.shape, np.nan, np.float32), backend)
    launch = case.builder(to_device(raw, backend), to_device(x, backend), scale, nll, draw)
    if thread_order is None:
        run(launch, backend)
    else:
        function = emulated_module(launch.kernel, thread_order).get_function(launch.entry)
        function(launch.grid, launch.block, launch.args, shared_mem=launch.shared_mem)
    return to_host(nll), to_host(draw)


def assert_within(got, want, bound, name):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{name}: shape {got.shape} vs {want.shape}"
    assert np.all(np.isfinite(got)), f"{name}: non-finite at {np.argwhere(~np.isfinite(got))[:5].tolist()}"
    err = np.abs(got - want)
    bad = ~(err <= bound)
    if bad.any():
        worst = np.unravel_index(np.argmax(np.where(bad, err / np.maximum(bound, 1e-300), 0)), err.shape)
        raise AssertionError(
            f"{name}: {bad.sum()} of {bad.size} beyond tolerance; worst at {tuple(map(int, worst))}: "
            f"got {got[worst]!r}, want {want[worst]!r}, |err| {err[worst]:.3g} > "
            f"bound {np.broadcast_to(bound, err.shape)[worst]:.3g}")


def assert_matches_twin(case, raw, x, scale, nll, draw):
    raw64, x64 = raw.astype(np.float64), x.astype(np.float64)
    exact_nll, exact_draw = case.twin(raw64, x64, float(scale))
    twin_nll, twin_draw = case.twin(raw, x, np.float32(scale))
    nll_terms, draw_terms = case.magnitudes(raw64, x64, float(scale))
    for label, want_nll, want_draw in (("float64", exact_nll, exact_draw),
                                       ("float32 twin", twin_nll, twin_draw)):
        assert_within(nll, want_nll, RTOL * nll_terms, f"{case.name} nll vs {label}")
        assert_within(draw, want_draw, RTOL * draw_terms, f"{case.name} draw vs {label}")


# ---------------------------------------------------------------------- tests
@pytest.mark.parametrize("dim", DATA_DIMS)
@pytest.mark.parametrize("batch", BATCH_SIZES)
@pytest.mark.parametrize("name", sorted(CASES))
def test_kernel_matches_twin(backend, name, batch, dim):
    case = CASES[name]
    raw, x = case.inputs(np.random.default_rng(batch * 1000 + dim), batch, dim)
    scale = np.float32(1.0 / batch)
    nll, draw = run_kernel(case, backend, raw, x, scale)
    assert_matches_twin(case, raw, x, scale, nll, draw)


@pytest.mark.parametrize("name", sorted(CASES))
def test_kernel_bits_do_not_depend_on_thread_order(name):
    """A missing barrier or a race shows up as order-dependent bits on the emulator."""
    case = CASES[name]
    for dim in (33, 784):   # one partial warp; several warps with a strided tail
        raw, x = case.inputs(np.random.default_rng(dim), 3, dim)
        default = run_kernel(case, "emulated", raw, x, np.float32(0.5))
        assert_matches_twin(case, raw, x, np.float32(0.5), *default)
        for order in THREAD_ORDERS:
            ordered = run_kernel(case, "emulated", raw, x, np.float32(0.5), thread_order=order)
            np.testing.assert_array_equal(ordered[0], default[0], err_msg=f"{name} nll, {order}")
            np.testing.assert_array_equal(ordered[1], default[1], err_msg=f"{name} draw, {order}")


def test_continuous_bernoulli_hostile_corners(backend):
    """Logits +-50, 0, lambda within 1e-7 of 1/2 (l = +-4e-7) and both sides of the series
    band's edge, each with x exactly 0, 1 and 1/2: finite, exact, and the far tail by hand."""
    logits = np.array([50, -50, 0, 4e-7, -4e-7, 1 - 2 ** -23, 1, 1 + 2 ** -23, -1], np.float32)
    grid = np.array(np.meshgrid(logits, [0.0, 1.0, 0.5], indexing="ij"), np.float32).reshape(2, -1)
    raw, x = grid[0][None, :], grid[1][None, :]
    case = CASES["continuous-bernoulli"]
    nll, dlogits = run_kernel(case, backend, raw, x, np.float32(1))
    assert_matches_twin(case, raw, x, np.float32(1), nll, dlogits)
    # At |l| = 50: log C = log 50, D = 1/l, so d/dl = sigmoid(l) - x - 1/l.
    far = np.abs(raw) == 50
    expected = (raw[far] > 0) - x[far] - 1 / raw[far]
    np.testing.assert_allclose(dlogits[far], expected, rtol=1e-6)
    # At l = 0 (lambda = 1/2) the density is uniform: C = 2 cancels softplus(0) = log 2.
    center = raw == 0
    np.testing.assert_allclose(dlogits[center], 0.5 - x[center], rtol=1e-6)


def test_discretized_logistic_hostile_corners(backend):
    """Edge bins x = 0 and 1 and a middle bin, the mean at +-50 (masses ~e^-5e4: log space),
    at the data and on a bin edge, log-scales at both bounds and saturated (r = +-1e4)."""
    values = [0.0, 1.0, 128 / 255]
    mus = [50.0, -50.0, 0.0, 1.0, 0.5, 0.5 + dl.BIN_HALF_WIDTH]
    rs = [30.0, -30.0, 1e4, -1e4, 0.0]
    grid = np.array(np.meshgrid(mus, rs, values, indexing="ij"), np.float64).reshape(3, -1)
    raw, x = two_block_inputs(grid[0][None, :], grid[1][None, :], grid[2][None, :])
    case = CASES["discretized-logistic"]
    nll, draw = run_kernel(case, backend, raw, x, np.float32(1))
    assert_matches_twin(case, raw, x, np.float32(1), nll, draw)
    dim = x.shape[1]
    assert np.all(draw[:, dim:][np.abs(raw[:, dim:]) == 1e4] == 0), "saturated bound: d/dr must be 0"


@pytest.mark.parametrize("name", ["laplace", "gaussian-real"])
def test_real_valued_hostile_corners(backend, name):
    mus = [50.0, -50.0, 0.0]
    rs = [30.0, -30.0, 1e4, -1e4, 0.0]
    values = [0.0, 1.0, -3.7, 12.0]
    grid = np.array(np.meshgrid(mus, rs, values, indexing="ij"), np.float64).reshape(3, -1)
    raw, x = two_block_inputs(grid[0][None, :], grid[1][None, :], grid[2][None, :])
    case = CASES[name]
    nll, draw = run_kernel(case, backend, raw, x, np.float32(1))
    assert_matches_twin(case, raw, x, np.float32(1), nll, draw)
    dim = x.shape[1]
    assert np.all(draw[:, dim:][np.abs(raw[:, dim:]) == 1e4] == 0)


@pytest.mark.parametrize("name", sorted(CASES))
def test_empty_batch_and_empty_rows(backend, name):
    case = CASES[name]
    width = LIKELIHOODS.get(name)(1).raw_width
    for batch, dim in ((0, 5), (2, 0)):
        raw = np.zeros((batch, width * dim), np.float32)
        x = np.zeros((batch, dim), np.float32)
        nll, draw = run_kernel(case, backend, raw, x, np.float32(1))
        np.testing.assert_array_equal(nll, np.zeros(batch, np.float32))
        assert draw.shape == raw.shape


@pytest.mark.parametrize("name", sorted(CASES))
def test_launch_builder_is_the_shared_row_launch(name):
    case = CASES[name]
    lik = LIKELIHOODS.get(name)(5)
    raw, x = np.zeros((2, lik.raw_width), np.float32), np.zeros((2, 5), np.float32)
    launch = case.builder(raw, x, 0.5, np.zeros(2, np.float32), np.zeros_like(raw))
    assert (launch.kernel, launch.entry) == (case.kernel, f"{case.kernel}_nll")
    assert [type(a) for a in launch.args[4:]] == [np.int32, np.int32, np.float32]
    assert launch.grid == (2,) and launch.block == (32,)
    with pytest.raises(ValueError, match=r"\(2, 5\)"):
        case.builder(np.zeros((2, lik.raw_width - 1), np.float32), x, 0.5, np.zeros(2, np.float32),
                     np.zeros_like(raw))
    with pytest.raises(ValueError, match="float32"):
        case.builder(raw.astype(np.float64), x, 0.5, np.zeros(2, np.float32), np.zeros_like(raw))


def cu_table(source: str, name: str) -> list[float]:
    body = re.search(rf"{name}\[\w+\] = \{{([^}}]*)\}}", source).group(1)
    return [float(v.rstrip("f")) for v in body.replace("\n", " ").split(",")]


def test_continuous_bernoulli_kernel_uses_the_twins_series():
    source = load_source("continuous_bernoulli")
    assert re.search(r"#define CB_SERIES_BAND (\S+)f", source).group(1) == f"{cb.SERIES_BAND:.1f}"
    assert int(re.search(r"#define CB_SERIES_TERMS (\d+)", source).group(1)) == cb.SERIES_TERMS
    for table, coeffs in (("CB_D_COEFFS", cb.SERIES_D_COEFFS),
                          ("CB_LOG_C_COEFFS", cb.SERIES_LOG_C_COEFFS)):
        literals = cu_table(source, table)
        assert len(literals) == cb.SERIES_TERMS
        # Each literal rounds to the same float32 as the twin's float64 coefficient.
        np.testing.assert_array_equal(np.float32(literals), np.float32(coeffs), err_msg=table)


@pytest.mark.skipif(not nvrtc_available(), reason="NVRTC unavailable (the nvrtc extra)")
@pytest.mark.parametrize("name", LIKELIHOODS.names())
def test_every_registered_likelihood_kernel_exports_its_entry(name):
    """The executor launches `<kernel>_nll` through Likelihood.kernel alone."""
    kernel = LIKELIHOODS.get(name).kernel
    ptx = compile_ptx(load_source(kernel), name=f"{kernel}.cu")
    assert f".entry {kernel}_nll(" in ptx
    assert hasattr(ops, f"{kernel}_nll")
