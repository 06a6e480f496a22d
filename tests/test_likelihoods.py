"""The likelihoods' NumPy math: densities against SciPy and quadrature, the continuous
Bernoulli's series band, the discretized logistic's edge bins and tiny masses, finite
differences where the shared sweep (test_gradients.py) does not reach, means, sampling,
data validation, bits per dimension, and the retired name 'gaussian'.

tests/test_gradients.py checks every registered likelihood's gradient at random points;
the kernels are checked against these methods in tests/test_kernels_likelihoods.py."""
import json
import math
import shutil
import subprocess
import sys
from decimal import Decimal, getcontext
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import scipy.stats as st
from scipy.integrate import quad

import cupyvae
from cupyvae import philox
from cupyvae.distributions import LIKELIHOODS, bits_per_dim
from cupyvae.distributions import continuous_bernoulli as cb
from cupyvae.distributions import discretized_logistic as dl
from cupyvae.distributions.grid import eight_bit_scale, off_grid, on_8bit_grid
from cupyvae.distributions.stable import soft_bound

from gradcheck import assert_grad_close, numeric_grad

rng = np.random.default_rng(2024)
LEGACY_RUN = Path(__file__).parent / "data" / "legacy-gaussian-run"


def logit(lam):
    return np.log(lam) - np.log1p(-lam)


# ---------------------------------------------------------------------- continuous Bernoulli
LAMBDAS = [1e-4, 1e-3, 0.05, 0.2, 0.2689, 0.2690, 0.4, 0.5 - 1e-7, 0.5, 0.5 + 1e-7, 0.6, 0.731,
           0.95, 1 - 1e-4]   # 0.2689/0.2690 and 0.731: both sides of the band edge |l| = 1


@pytest.mark.parametrize("lam", LAMBDAS)
def test_continuous_bernoulli_normaliser_matches_quadrature(lam):
    """C(lam) = 1 / int_0^1 lam^x (1 - lam)^(1 - x) dx, by scipy.integrate.quad."""
    integral, error = quad(lambda x: lam ** x * (1 - lam) ** (1 - x), 0, 1, epsabs=0, epsrel=1e-13)
    log_c, _ = cb.log_normalizer(np.array([logit(lam)]))
    # quad reaches ~1e-15 relative on this smooth integrand; 1e-12 is a 1000x margin.
    assert log_c[0] == pytest.approx(-math.log(integral), abs=1e-12), (lam, error)


@pytest.mark.parametrize("lam", LAMBDAS)
def test_continuous_bernoulli_density_integrates_to_one_and_mean_is_the_true_mean(lam):
    lik = LIKELIHOODS.get("continuous-bernoulli")(1)
    raw = np.array([[logit(lam)]])

    def density(x):
        return math.exp(lik.log_prob(raw, np.array([[x]]))[0])
    total = quad(density, 0, 1, epsabs=0, epsrel=1e-12)[0]
    mean = quad(lambda x: x * density(x), 0, 1, epsabs=0, epsrel=1e-12)[0]
    assert total == pytest.approx(1.0, abs=1e-11)
    assert lik.mean(raw)[0, 0] == pytest.approx(mean, abs=1e-11)
    if abs(lam - 0.5) > 0.01:
        assert abs(lik.mean(raw)[0, 0] - lam) > 1e-3   # the mean is not lambda


def exact_log_c_and_d(l: float) -> tuple[Decimal, Decimal]:
    """log C(l) = log(l / tanh(l/2)) and D(l) = 1/l - 1/sinh(l) with 150-digit decimals
    (1/l - 1/sinh l at l = 1e-30 cancels 61 digits)."""
    getcontext().prec = 150
    x = Decimal(l)
    if x == 0:
        return Decimal(2).ln(), Decimal(0)
    ex, emx = x.exp(), (-x).exp()
    sinh = (ex - emx) / 2
    tanh_half = ((x / 2).exp() - (-x / 2).exp()) / ((x / 2).exp() + (-x / 2).exp())
    return (x / tanh_half).ln(), 1 / x - 1 / sinh


BAND_GRID = np.concatenate([[0.0, 1e-30, 1e-7, 4e-7, 1e-3, 0.1, 0.5, 0.9, 1 - 1e-12, 1.0,
                             1 + 1e-12, 1.5, 3.0, 20.0, 50.0],
                            np.linspace(0.01, 3.0, 60)])


def test_series_band_error_in_float64_is_the_first_omitted_term():
    """The documented budget: inside |l| < 1 the 12-term series is off by at most its first
    omitted term (|d_13| |l|^25 for D, |d_13| / 26 l^26 for log C: at most 2.4e-13 and
    9.1e-15, at the edge), outside the closed form by a few float64 ulp; 150-digit truth."""
    b26 = cb.bernoulli_numbers(26)[26]
    d13 = abs(float(2 * (2 ** 25 - 1) * b26 / math.factorial(26)))
    assert d13 == pytest.approx(2.37e-13, rel=1e-2)
    for sign in (1.0, -1.0):
        l = sign * BAND_GRID
        log_c, d = cb.log_normalizer(l)
        for i, li in enumerate(l):
            want_c, want_d = (float(v) for v in exact_log_c_and_d(float(li)))
            inside = abs(li) < cb.SERIES_BAND
            # Rounding: a few float64 ulp of log C (>= log 2), and for D (<= 1) of the
            # 1/|l| <= 1 the closed form cancels: a few ulp of 1.
            trunc_c = d13 / 26 * abs(li) ** 26 if inside else 0.0
            trunc_d = d13 * abs(li) ** 25 if inside else 0.0
            assert abs(log_c[i] - want_c) <= trunc_c + 1e-15 * want_c, (li, log_c[i], want_c)
            assert abs(d[i] - want_d) <= trunc_d + 2e-15, (li, d[i], want_d)


def test_series_band_switch_is_invisible_to_finite_differences():
    """Just inside and just outside the edge the two forms differ by the true change over
    the 2e-12 between the points plus the truncation error (9.1e-15 for log C, 2.4e-13 for
    D): a central difference with h = 1e-5 across the edge moves by < 1e-9."""
    gap = 2e-12
    d_at_edge = 1 - 1 / math.sinh(1.0)                                   # D(1)
    slope_at_edge = -1 + math.cosh(1.0) / math.sinh(1.0) ** 2            # D'(1)
    for edge in (1.0, -1.0):
        points = np.array([edge - math.copysign(gap / 2, edge), edge + math.copysign(gap / 2, edge)])
        log_c, d = cb.log_normalizer(points)
        assert abs(log_c[1] - log_c[0] - d_at_edge * gap) <= 9.2e-15 + 4e-16, (edge, log_c)
        assert abs(abs(d[1] - d[0]) - slope_at_edge * gap) <= 2.4e-13 + 4e-16, (edge, d)


def test_series_band_keeps_float32_within_its_documented_error():
    """float32: |error of D| <= 2e-7 everywhere (measured 1.5e-7 at the band edge; the closed
    form's 3.5 eps / |l| is 2.1e-7 there), log C within 3 ulp of its value."""
    l = np.concatenate([BAND_GRID, -BAND_GRID]).astype(np.float32)
    log_c, d = cb.log_normalizer(l)
    assert log_c.dtype == d.dtype == np.float32
    for li, ci, di in zip(l, log_c, d):
        want_c, want_d = (float(v) for v in exact_log_c_and_d(float(li)))
        assert abs(float(di) - want_d) <= 2e-7, (li, di, want_d)
        assert abs(float(ci) - want_c) <= 3 * np.spacing(np.float32(want_c)), (li, ci, want_c)


# B_2 .. B_24 as tabulated (Abramowitz & Stegun, table 23.2).
TABULATED_BERNOULLI = [Fraction(1, 6), Fraction(-1, 30), Fraction(1, 42), Fraction(-1, 30),
                       Fraction(5, 66), Fraction(-691, 2730), Fraction(7, 6), Fraction(-3617, 510),
                       Fraction(43867, 798), Fraction(-174611, 330), Fraction(854513, 138),
                       Fraction(-236364091, 2730)]


def test_series_coefficients_come_from_the_exact_bernoulli_numbers():
    assert cb.bernoulli_numbers(24)[2::2] == TABULATED_BERNOULLI
    for n, b in enumerate(TABULATED_BERNOULLI, start=1):
        d = 2 * (2 ** (2 * n - 1) - 1) * b / math.factorial(2 * n)
        assert cb.SERIES_D_COEFFS[n - 1] == float(d)                  # correctly rounded
        assert cb.SERIES_LOG_C_COEFFS[n - 1] == float(d / (2 * n))
        assert cb.SERIES_MEAN_COEFFS[n - 1] == float(b / math.factorial(2 * n))


# FD points: inside the band, at its edges (the finite difference straddles the switch), near
# lambda = 1/2 (l = 4e-7 is lambda = 1/2 + 1e-7) and far out.
CB_FD_LOGITS = [0.0, 4e-7, -4e-7, 0.37, -0.81, 1.0 - 1e-5, 1.0, 1.0 + 1e-5, -1.0, 1.3, -4.0, 30.0]


@pytest.mark.parametrize("x", [0.0, 0.3, 1.0])
def test_continuous_bernoulli_gradient_inside_and_at_the_edges_of_the_band(x):
    lik = LIKELIHOODS.get("continuous-bernoulli")(len(CB_FD_LOGITS))
    raw = np.array([CB_FD_LOGITS])
    target = np.full_like(raw, x)
    _, draw = lik.nll(raw, target, 1.0)
    numeric = numeric_grad(lambda: float(lik.nll(raw, target, 1.0)[0].sum()), raw)
    assert_grad_close(draw, numeric, f"continuous-bernoulli d nll / d l at x = {x}")


@pytest.mark.parametrize("extreme", [-50.0, 50.0])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_continuous_bernoulli_is_exact_for_extreme_logits(extreme, dtype):
    """At |l| = 50, log C = log 50 (+ e^-50) and D = 1/l: nll = 50 (1 - x) - log 50 for
    l = 50 (50 x - log 50 for l = -50), d/dl = sigmoid(l) - x - 1/l."""
    x = np.array([[0.0, 1.0, 0.5]], dtype)
    raw = np.full_like(x, extreme)
    nll, d = cb.continuous_bernoulli_nll(raw, x, 1.0)
    far = np.where(extreme > 0, 1 - x, x)
    np.testing.assert_allclose(nll, (50 * far - math.log(50)).sum(1), rtol=1e-6)
    np.testing.assert_allclose(d, (extreme > 0) - x - 1 / extreme, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------- discretized logistic
H = dl.BIN_HALF_WIDTH


def dl_masses(mu: float, s: float) -> np.ndarray:
    """The 256 bin masses from scipy.stats.logistic CDF differences, edges open."""
    edges = np.concatenate([[-np.inf], (np.arange(255) + 0.5) / 255, [np.inf]])
    cdf = st.logistic.cdf(edges, mu, s)
    sf = st.logistic.sf(edges, mu, s)
    # CDF differences below the median, survival-function differences above: no cancellation.
    return np.where(edges[1:] <= mu, cdf[1:] - cdf[:-1], sf[:-1] - sf[1:])


def dl_raw(mu, r, dim):
    return np.concatenate([np.full((1, dim), mu, float), np.full((1, dim), r, float)], axis=1)


@pytest.mark.parametrize("mu, r", [(0.3, -3.0), (0.0, -6.0), (1.0, 0.5), (0.55, -9.0), (-0.2, 2.0)])
def test_discretized_logistic_matches_scipy_logistic_cdf_differences(mu, r):
    grid = np.arange(256) / 255
    lik = LIKELIHOODS.get("discretized-logistic")(256)
    raw = dl_raw(mu, r, 256)
    log_p = -dl.discretized_logistic_nll(raw, grid[None, :], 1.0)[0]     # one row: the sum
    s = math.exp(soft_bound(np.array(r), dl.LOG_SCALE_BOUND)[0])
    masses = dl_masses(mu, s)
    per_bin = np.array([-dl.discretized_logistic_nll(dl_raw(mu, r, 1), np.array([[k / 255]]), 1.0)[0][0]
                        for k in range(256)])
    keep = masses > 1e-300                     # SciPy's tail masses underflow; ours do not
    np.testing.assert_allclose(per_bin[keep], np.log(masses[keep]), rtol=1e-9, atol=1e-12)
    assert log_p[0] == pytest.approx(per_bin.sum(), rel=1e-12)
    assert math.fsum(np.exp(per_bin)) == pytest.approx(1.0, abs=1e-12)   # the 256 masses sum to 1
    assert lik.log_prob(raw, grid[None, :])[0] == pytest.approx(log_p[0], rel=1e-12)


def pixelcnn_pp_log_prob(x, mu, log_s):
    """openai/pixel-cnn, pixel_cnn_pp/nn.py, discretized_mix_logistic_loss, one component,
    ported to NumPy float64 and to data on [0, 1] (bin half-width 1/510 instead of 1/255,
    edges at half a bin, fallback log width log(1/255) instead of -log 127.5)."""
    inv_s = np.exp(-log_s)
    centered = x - mu
    plus_in = inv_s * (centered + H)
    min_in = inv_s * (centered - H)
    cdf_delta = 1 / (1 + np.exp(-plus_in)) - 1 / (1 + np.exp(-min_in))
    mid_in = inv_s * centered
    log_pdf_mid = mid_in - log_s - 2 * np.logaddexp(0, mid_in)
    with np.errstate(divide="ignore"):
        middle = np.where(cdf_delta > 1e-5, np.log(np.maximum(cdf_delta, 1e-12)),
                          log_pdf_mid - np.log(255))
    return np.where(x < H, plus_in - np.logaddexp(0, plus_in),
                    np.where(x > 1 - H, -np.logaddexp(0, min_in), middle)), cdf_delta


def test_discretized_logistic_agrees_with_pixelcnn_pp_and_its_mid_bin_fallback():
    """Where PixelCNN++'s direct difference is accurate (mass > 1e-3) the two agree to
    float64 rounding.  Where it falls back to the mid-bin density (mass < 1e-5, deep in a
    tail where the logistic density is exp(+-(x - mu)/s) to within the mass itself), our
    exact mass exceeds that midpoint-rule value by exactly the rule's error for an
    exponential, log(sinh(delta/2) / (delta/2)) = delta^2/24 + ... (delta = bin width / s):
    so the factored form is the fallback made exact, not a different model."""
    x = np.arange(256)[None, :] / 255
    fallbacks = 0
    for mu, log_s in [(0.4, -2.0), (0.0, -4.0), (0.9, -1.0), (-0.3, -3.0), (1.2, -3.5)]:
        r = np.full_like(x, dl.LOG_SCALE_BOUND * np.arctanh(log_s / dl.LOG_SCALE_BOUND))
        raw = np.concatenate([np.full_like(x, mu), r], axis=1)
        ours = -np.array([dl.discretized_logistic_nll(raw[:, [j, 256 + j]], x[:, [j]], 1.0)[0][0]
                          for j in range(256)])
        theirs, cdf_delta = pixelcnn_pp_log_prob(x[0], mu, log_s)
        accurate = (cdf_delta > 1e-3) | (x[0] < H) | (x[0] > 1 - H)
        np.testing.assert_allclose(ours[accurate], theirs[accurate], rtol=1e-9, atol=1e-12)
        fallback = (cdf_delta <= 1e-5) & (x[0] > H) & (x[0] < 1 - H)
        delta = math.exp(-log_s) / 255
        midpoint_error = math.log(math.sinh(delta / 2) / (delta / 2))     # 7e-4 .. 2e-3 here
        # The tail is exponential up to relative corrections of the order of the mass (< 1e-5).
        np.testing.assert_allclose(ours[fallback] - theirs[fallback], midpoint_error, rtol=0, atol=1e-5)
        assert accurate.any()
        fallbacks += int(fallback.sum())
    assert fallbacks > 50    # the fallback regime was exercised (tails of the narrow cases)


@pytest.mark.parametrize("x", [0.0, 1 / 255, 128 / 255, 254 / 255, 1.0])
def test_discretized_logistic_gradient_at_the_edge_bins_and_in_the_tails(x):
    """Finite differences for the edge bins (one open side) and their neighbours, with the
    mean inside, at and far beyond the data range, and scales from the soft bound's floor
    (tiny masses, ~-1e4 nats) to its ceiling."""
    mus = [x, x + 0.3, x - 0.4, 3.0, -2.0, x + H]
    rs = [-3.0, -12.0, 0.4, 9.0, -30.0, 2.0]
    lik = LIKELIHOODS.get("discretized-logistic")(len(mus))
    raw = np.array([mus + rs], float)
    target = np.full((1, len(mus)), x)
    nll, draw = lik.nll(raw, target, 1.0)
    assert np.all(np.isfinite(nll)) and np.all(np.isfinite(draw))
    numeric = numeric_grad(lambda: float(lik.nll(raw, target, 1.0)[0].sum()), raw)
    # The tails put |d nll / d mu| near 2e4 (inv_s = e^7 at r = -30 after the bound): the
    # gradcheck tolerance is relative to the largest entry, so check each entry on its own.
    for j in range(raw.shape[1]):
        assert_grad_close(draw[:, [j]], numeric[:, [j]], f"discretized-logistic x={x} raw[{j}]")


def test_discretized_logistic_mean_and_samples_follow_the_masses():
    mu, r = 0.37, -3.2
    lik = LIKELIHOODS.get("discretized-logistic")(1)
    s = math.exp(soft_bound(np.array(r), dl.LOG_SCALE_BOUND)[0])
    masses = dl_masses(mu, s)
    values = np.arange(256) / 255
    raw = dl_raw(mu, r, 1)
    assert lik.mean(raw)[0, 0] == pytest.approx((masses * values).sum(), abs=1e-12)
    n = 200_000
    u = philox.uniform(3, 0, n, 1).astype(np.float64)
    drawn = lik.sample(np.repeat(raw, n, axis=0), u, None)[:, 0]
    assert not off_grid(drawn).any() and drawn.min() >= 0 and drawn.max() <= 1
    counts = np.bincount(np.rint(drawn * 255).astype(int), minlength=256)
    # Per-bin frequency within 5 binomial standard deviations (plus one count).
    sd = np.sqrt(n * masses * (1 - masses))
    assert np.all(np.abs(counts - n * masses) <= 5 * sd + 1)


# ---------------------------------------------------------------------- Laplace, gaussian-real
def test_laplace_and_gaussian_real_log_densities_match_scipy():
    x = rng.normal(0, 4, (3, 5))
    raw = np.concatenate([rng.normal(0, 3, (3, 5)), rng.normal(0, 6, (3, 5))], axis=1)
    mu, r = raw[:, :5], raw[:, 5:]
    laplace = LIKELIHOODS.get("laplace")(5)
    b = np.exp(3.5 * np.tanh(r / 3.5))
    np.testing.assert_allclose(laplace.log_prob(raw, x), st.laplace.logpdf(x, mu, b).sum(1), rtol=1e-12)
    real = LIKELIHOODS.get("gaussian-real")(5)
    sigma = np.exp(0.5 * 7 * np.tanh(r / 7))
    np.testing.assert_allclose(real.log_prob(raw, x), st.norm.logpdf(x, mu, sigma).sum(1), rtol=1e-12)


@pytest.mark.parametrize("name", ["laplace", "gaussian-real"])
def test_real_valued_likelihoods_are_finite_and_exact_in_hostile_corners(name):
    """mu = +-50, raw log-scale +-30 and +-1e4 (saturated bound: d/dr exactly 0)."""
    lik = LIKELIHOODS.get(name)(8)
    mu = np.array([[50, -50, 0, 50, -50, 0, 1, -1]], np.float32)
    r = np.array([[30, -30, 1e4, -1e4, 30, -30, 1e4, -1e4]], np.float32)
    x = np.array([[0, 1, -3.7, 12, 0, 1, 0, 1]], np.float32)
    raw = np.concatenate([mu, r], axis=1)
    nll, draw = lik.nll(raw, x, np.float32(1))
    nll64, draw64 = lik.nll(raw.astype(np.float64), x.astype(np.float64), 1.0)
    assert np.isfinite(nll).all() and np.isfinite(draw).all()
    np.testing.assert_allclose(nll, nll64, rtol=1e-6)
    np.testing.assert_allclose(draw, draw64, rtol=1e-5, atol=1e-30)
    assert np.all(draw[:, 8:][np.abs(r) == 1e4] == 0)


@pytest.mark.parametrize("name, dist", [
    ("laplace", lambda mu, s: st.laplace(mu, np.exp(s))),
    ("gaussian-real", lambda mu, s: st.norm(mu, np.exp(0.5 * s))),
])
def test_real_valued_samples_follow_the_distribution(name, dist):
    lik = LIKELIHOODS.get(name)(1)
    raw = np.array([[1.7, 1.2]])
    n = 50_000
    u = philox.uniform(11, 0, n, 1).astype(np.float64)
    eps = philox.normal(11, 1, n, 1).astype(np.float64)
    drawn = lik.sample(np.repeat(raw, n, axis=0), u, eps)[:, 0]
    bound = 3.5 if name == "laplace" else 7.0
    target = dist(1.7, bound * np.tanh(1.2 / bound))
    # KS statistic against the exact CDF; the 1e-4 critical value at n = 5e4 is 0.0086.
    assert st.kstest(drawn, target.cdf).statistic < 0.0086
    assert lik.mean(raw)[0, 0] == 1.7


def test_continuous_bernoulli_samples_follow_its_cdf():
    lik = LIKELIHOODS.get("continuous-bernoulli")(1)
    n = 50_000
    u = philox.uniform(5, 0, n, 1).astype(np.float64)
    for lam in (0.05, 0.5, 0.5 + 1e-7, 0.8, 0.999):
        l = logit(lam)
        drawn = lik.sample(np.full((n, 1), l), u, None)[:, 0]
        assert drawn.min() >= 0 and drawn.max() <= 1

        def cdf(x):
            if abs(lam - 0.5) < 1e-9:
                return x
            return (lam ** x * (1 - lam) ** (1 - x) + lam - 1) / (2 * lam - 1)
        assert st.kstest(drawn, np.vectorize(cdf)).statistic < 0.0086, lam
    assert lik.sample(np.zeros((3, 1)), np.array([[0.1], [0.5], [0.9]]), None)[:, 0] \
        == pytest.approx([0.1, 0.5, 0.9])


# ---------------------------------------------------------------------- data validation
def test_discretized_logistic_accepts_float32_grids_and_names_off_grid_values():
    lik = LIKELIHOODS.get("discretized-logistic")(256)
    k = np.arange(256)
    for x in ((k / 255).astype(np.float32), k.astype(np.float32) / np.float32(255),
              k.astype(np.float32) * np.float32(1 / 255)):
        lik.validate_data(x[None, :])
    for bad, value in [(k / 256, "0.00390625"), (np.full(256, 0.5), "0.5")]:
        x = bad.astype(np.float32)[None, :]
        with pytest.raises(ValueError, match=rf"off the 8-bit grid k/255 \(first: {value}.*example index 0, "
                                              r"element \d+, counting from 0\).*uint8 / 255"):
            lik.validate_data(x, "x_train")
    with pytest.raises(ValueError, match=r"x_train has values in \[0.0, 2.0\].*\[0, 1\]"):
        lik.validate_data(np.array([[0.0, 2.0]], np.float32), "x_train")


def test_grid_tolerance_sits_between_float32_rounding_and_real_off_grid_data():
    k = np.arange(256)
    worst = np.abs((k / 255).astype(np.float32).astype(np.float64) * 255 - k).max()
    assert worst < 1e-4 / 4     # the documented 4x margin over float32 rounding
    near = (k / 255 + 2e-4 / 255).astype(np.float32)     # 2e-4 of a bin off: refused
    assert off_grid(near[1:-1]).all()
    assert on_8bit_grid(k / 255) and not on_8bit_grid(k / 256) and not on_8bit_grid(np.array([-1.0]))


@pytest.mark.parametrize("name, needs_unit_interval", [
    ("continuous-bernoulli", True), ("gaussian-sigmoid", True), ("bernoulli", True),
    ("laplace", False), ("gaussian-real", False)])
def test_support_checks(name, needs_unit_interval):
    model = cupyvae.VAE((2, 2), hidden=(4,), likelihood=name)
    x = np.array([[[0.2, -3.0], [12.5, 1.0]]], np.float32)
    if needs_unit_interval:
        with pytest.raises(ValueError, match=rf"x has values in \[-3.0, 12.5\] \(first outside \[0, 1\] in example index 0, counting from 0\) but the {name} likelihood"):
            model.validate_data(x, "x")
    else:
        assert model.validate_data(x, "x").shape == (1, 4)


@pytest.mark.parametrize("name", ["gaussian-sigmoid", "bernoulli", "gaussian"])
def test_unit_interval_errors_name_the_likelihoods_for_real_data(name):
    with pytest.raises(ValueError, match=r"needs \[0, 1\].*choose a likelihood for real-valued "
                                         r"data \(gaussian-real or laplace\)"):
        LIKELIHOODS.get(name)(1).validate_data(np.array([[2.0]], np.float32))


# ---------------------------------------------------------------------- bits per dimension
def test_bits_per_dim_of_a_discrete_likelihood_is_its_mass_in_bits():
    """The uniform mass over 256 levels is exactly 8 bits per dimension."""
    dim = 10
    log_p = np.array([dim * math.log(1 / 256)])
    assert bits_per_dim(log_p, dim, discrete=True, data_scale=255)[0] == pytest.approx(8.0, rel=1e-14)
    lik = LIKELIHOODS.get("discretized-logistic")(dim)
    assert lik.discrete and lik.bits_per_dim(log_p, 255)[0] == pytest.approx(8.0, rel=1e-14)


def test_bits_per_dim_of_a_density_is_that_of_the_rescaled_data():
    """Change of variables, checked independently: the density of y = 255 x under
    N(255 m, 255 sigma) is SciPy's, and its bits per dimension must equal ours."""
    dim = 6
    lik = LIKELIHOODS.get("gaussian-real")(dim)
    raw = np.concatenate([rng.random((4, dim)), rng.normal(0, 2, (4, dim)) - 6], axis=1)
    x = rng.integers(0, 256, (4, dim)) / 255
    m, s = raw[:, :dim], 7 * np.tanh(raw[:, dim:] / 7)
    log_py = st.norm.logpdf(255 * x, 255 * m, 255 * np.exp(0.5 * s)).sum(1)
    ours = lik.bits_per_dim(lik.log_prob(raw, x), data_scale=255)
    np.testing.assert_allclose(ours, -log_py / (dim * math.log(2)), rtol=1e-12)
    assert "255 x" in lik.bits_per_dim_basis(255)
    np.testing.assert_allclose(lik.bits_per_dim(lik.log_prob(raw, x)),
                               -lik.log_prob(raw, x) / (dim * math.log(2)), rtol=1e-14)
    with pytest.raises(ValueError, match="data_scale"):
        bits_per_dim(np.zeros(1), 3, discrete=False, data_scale=0)


def test_model_bits_per_dim_detects_8bit_data():
    model = cupyvae.VAE((2, 3), hidden=(4,), likelihood="continuous-bernoulli")
    grid = (rng.integers(0, 256, (5, 6)) / 255).astype(np.float32)
    log_p = np.array([-3.0, 1.5, 0.0, -40.0, 7.25])      # one per example of grid
    assert eight_bit_scale(grid) == 255 and eight_bit_scale(grid + 1e-3) == 1
    np.testing.assert_allclose(model.bits_per_dim(log_p, grid),
                               -log_p / (6 * math.log(2)) + math.log2(255), rtol=1e-14)
    np.testing.assert_allclose(model.bits_per_dim(log_p, grid * 0.99),
                               -log_p / (6 * math.log(2)), rtol=1e-14)
    assert "y = 255 x" in model.bits_per_dim_basis(grid)
    assert "of x itself" in model.bits_per_dim_basis(grid * 0.99)
    # uint8 images are k/255 to the model (validate_data), so the same basis and numbers:
    pixels = np.round(grid * 255).astype(np.uint8)
    np.testing.assert_array_equal(model.bits_per_dim(log_p, pixels), model.bits_per_dim(log_p, grid))
    assert model.bits_per_dim_basis(pixels) == model.bits_per_dim_basis(grid)
    # Binarized {0, 1} outcomes are no 8-bit intensities: the density of x itself.
    binary = (grid > 0.5).astype(np.float32)
    assert "y = 255 x" in model.bits_per_dim_basis(binary)
    assert "of x itself" in model.bits_per_dim_basis(binary, binarized=True)
    np.testing.assert_allclose(model.bits_per_dim(log_p, binary, binarized=True),
                               -log_p / (6 * math.log(2)), rtol=1e-14)
    bern = cupyvae.VAE((2, 3), hidden=(4,))
    assert "mass function" in bern.bits_per_dim_basis(grid)
    np.testing.assert_allclose(bern.bits_per_dim(log_p, grid), -log_p / (6 * math.log(2)), rtol=1e-14)


# ---------------------------------------------------------------------- names
def test_gaussian_is_a_retired_alias_of_gaussian_sigmoid():
    assert "gaussian" not in LIKELIHOODS.names()
    assert {"gaussian-sigmoid", "gaussian-real"} <= set(LIKELIHOODS.names())
    assert LIKELIHOODS.get("gaussian") is LIKELIHOODS.get("gaussian-sigmoid")
    assert "gaussian" in LIKELIHOODS
    with pytest.raises(ValueError, match="already registered"):
        cupyvae.register_likelihood("gaussian")(type("Again", (cupyvae.Likelihood,), {}))
    with pytest.raises(ValueError, match="already registered or an alias"):
        LIKELIHOODS.alias("gaussian", "bernoulli")


def test_checkpoint_saved_before_the_rename_loads_and_evaluates_the_same():
    """tests/data/legacy-gaussian-run was written by the code before 'gaussian' became
    'gaussian-sigmoid' (see its README.md): same model, same test loss."""
    model = cupyvae.load(LEGACY_RUN / "checkpoint.safetensors")
    assert model.config.likelihood == "gaussian"
    assert type(model.spec.likelihood).name == "gaussian-sigmoid"
    expected = json.loads((LEGACY_RUN / "evaluation.json").read_text())
    with np.load(LEGACY_RUN / "data.npz") as data:
        x_test = data["x_test"]
    # The old code summed the float32 rows in float32, loss() now sums them in float64: the
    # same terms, at most one float32 rounding (2^-24 relative) per addition apart.
    rows = len(x_test)
    assert model.loss(x_test) == pytest.approx(expected["negative_elbo"], rel=rows * 2.0 ** -24)
    model.fit(x_test, epochs=1, batch_size=6)       # and it keeps training


def test_old_run_folder_still_evaluates_through_the_cli(tmp_path):
    run_dir = Path(shutil.copytree(LEGACY_RUN, tmp_path / "run"))
    config = json.loads((run_dir / "config.json").read_text())
    config["training"]["data"] = str(run_dir / "data.npz")        # it held an absolute path
    (run_dir / "config.json").write_text(json.dumps(config))
    done = subprocess.run([sys.executable, "-m", "cupyvae.cli", "evaluate", str(run_dir),
                           "--device", "cpu"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    expected = json.loads((LEGACY_RUN / "evaluation.json").read_text())
    # float32 sum then, float64 sum now (see the test above)
    assert evaluation["negative_elbo"] == pytest.approx(expected["negative_elbo"],
                                                        rel=evaluation["examples"] * 2.0 ** -24)
    assert "bits/dim" in done.stdout


def test_log_likelihood_note_says_what_log_p_x_is():
    binary = np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]], np.float32)
    grey = np.array([[0.0, 0.5, 1.0], [0.25, 0.0, 1.0]], np.float32)
    bernoulli = LIKELIHOODS.get("bernoulli")(3)
    assert bernoulli.log_likelihood_note(binary) is None          # a log-probability: no note
    note = bernoulli.log_likelihood_note(grey)
    assert note.startswith("2 of the 6 data values lie strictly between 0 and 1")
    assert "cross-entropy" in note
    for name in ("gaussian-real", "laplace", "gaussian-sigmoid"):
        note = LIKELIHOODS.get(name)(3).log_likelihood_note(binary)
        assert note.startswith(f"the {name} likelihood is a density") and "^3" in note
