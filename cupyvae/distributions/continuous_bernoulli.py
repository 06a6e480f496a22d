"""Continuous Bernoulli likelihood (Loaiza-Ganem & Cunningham, "The continuous Bernoulli:
fixing a pervasive error in variational autoencoders", NeurIPS 2019), for data in [0, 1].

The Bernoulli cross-entropy used on grey levels is not a normalised density on [0, 1];
the continuous Bernoulli is, and differs from it only by the log normalising constant:

    p(x | lam) = C(lam) lam^x (1 - lam)^(1 - x),   x in [0, 1]
    C(lam)     = 2 atanh(1 - 2 lam) / (1 - 2 lam)  (lam != 1/2),   C(1/2) = 2   (paper, eq. 7)

The decoder emits the logit l, lam = sigmoid(l).  Then 1 - 2 lam = -tanh(l/2) and
2 atanh(1 - 2 lam) = -l, so C = l / tanh(l/2), even in l; with a = |l|, e = exp(-a) and
tanh(a/2) = (1 - e) / (1 + e):

    log C(l)      = log(a / -expm1(-a)) + log1p(e)
    -log p(x | l) = softplus(l) - x l - log C(l)        (Bernoulli cross-entropy - log C)
    d/dl          = sigmoid(l) - x - D(l)
    D(l)          = d log C / dl = 1/l - 1/sinh(l)
                    (d log l / dl = 1/l;  d log tanh(l/2) / dl = 1 / (2 sinh(l/2) cosh(l/2))
                     = 1 / sinh l), with 1/sinh(a) = 2 e / (1 - e^2) = 2 e / -expm1(-2a)

Mean (paper, section 3: E[x] = lam / (2 lam - 1) + 1 / (2 atanh(1 - 2 lam))), with
lam / (2 lam - 1) = sigmoid(l) / tanh(l/2) = 1 / (1 - e^-l):

    E[x] = 1 / -expm1(-l) - 1/l          (-> 0 as l -> -inf, 1/2 at l = 0, -> 1 as l -> +inf)

It is not lam: decode() returns E[x], which is pulled towards 1/2 (lam = 0.9 has mean 0.67).

Sampling by inverting the CDF F(x) = (lam^x (1 - lam)^(1 - x) + lam - 1) / (2 lam - 1)
(paper, section 3), where (2 lam - 1) / (1 - lam) = expm1(l):

    x = log1p(u expm1(l)) / l                   for l < 0
    x = 1 + log1p((1 - u) expm1(-l)) / l        for l > 0 (the mirror image x(l, u) = 1 - x(-l, 1 - u),
                                                 so expm1 is only taken of a negative number)
    x = u                                       at l = 0 (the uniform distribution)

The series band.  D = 1/l - 1/sinh l subtracts two numbers close to 1/l to get about l/6:
in float32 its absolute error is a few ulp of 1/|l|, i.e. a relative error of about
20 eps / l^2 (100% near |l| = 1e-3).  The mean cancels the same way.  (log C itself is
accurate in this logit form; the cancellation the paper warns about is that of 1 - 2 lam in
the lam form.)  So for |l| < SERIES_BAND = 1 (lam in (0.269, 0.731)) log C, D and the mean
are their Taylor series around l = 0, from the Bernoulli numbers B_2n:

    D(l)   = sum_{n=1..N} d_n l^(2n-1),        d_n = 2 (2^(2n-1) - 1) B_2n / (2n)!
             (the series of 1/l - 1/sinh l, Abramowitz & Stegun 4.5.65)
    log C  = log 2 + sum_{n=1..N} d_n / (2n) l^(2n)     (D integrated; C(0) = 2)
    E[x]   = 1/2 + sum_{n=1..N} B_2n / (2n)! l^(2n-1)   (from x / (e^x - 1) = sum B_n x^n / n!)

with N = SERIES_TERMS = 12.  The terms shrink like (l / pi)^2n, so the truncation error is
the first omitted term, largest at the band edge: |d_13| |l|^25 <= 2.4e-13 (D) and
|d_13| / 26 l^26 <= 9.1e-15 (log C) -- a millionth of a float32 ulp, and far below what the
float64 finite-difference tests resolve (the step of at most 9.1e-15 the switch leaves in
log C moves a central difference with h = 1e-5 by < 5e-10).  Outside the band the closed
form of D is off by about 3.5 eps / |l| absolute (1/|l| and 1/sinh |l| each within ~2 ulp),
largest at the edge: 2e-7 in float32, 1e-6 of D(1) = 0.149.  So |l| = 1 balances the two:
a wider band needs more terms (the series converges only for |l| < pi, ever more slowly),
a narrower one lets the closed form's error grow as 1/|l|.  Measured in float32 against
40-digit values over l in [1e-7, 50]: |error of D| <= 1.5e-7 everywhere, <= 2e-8 inside the
band (tests/test_likelihoods.py checks these bounds).

Kernel twin: kernels/continuous_bernoulli.cu (the same band, terms and coefficients; a test
checks its coefficient table against SERIES_D_COEFFS / SERIES_LOG_C_COEFFS).
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from .base import Likelihood, ParamSpec, register_likelihood
from .bernoulli import require_unit_interval, sigmoid
from .stable import softplus

SERIES_BAND = 1.0
SERIES_TERMS = 12
LOG_2 = math.log(2.0)


def bernoulli_numbers(count: int) -> list[Fraction]:
    """B_0 .. B_count exactly, from sum_{k=0..m} C(m+1, k) B_k = 0 (m >= 1).

    Exact fractions, because scipy.special.bernoulli's floats drift (its B_4 is off by
    1.7e-12 relative), which would put the series' error far above float64 rounding."""
    numbers = [Fraction(1)]
    for m in range(1, count + 1):
        numbers.append(-sum(math.comb(m + 1, k) * numbers[k] for k in range(m)) / (m + 1))
    return numbers


_B = bernoulli_numbers(2 * SERIES_TERMS)
_D_EXACT = [2 * (2 ** (2 * n - 1) - 1) * _B[2 * n] / math.factorial(2 * n)
            for n in range(1, SERIES_TERMS + 1)]
SERIES_D_COEFFS = tuple(float(d) for d in _D_EXACT)
SERIES_LOG_C_COEFFS = tuple(float(d / (2 * n)) for n, d in enumerate(_D_EXACT, start=1))
SERIES_MEAN_COEFFS = tuple(float(_B[2 * n] / math.factorial(2 * n))
                           for n in range(1, SERIES_TERMS + 1))


def _polynomial(coeffs, t: np.ndarray) -> np.ndarray:
    """sum_n coeffs[n-1] t^(n-1) by Horner's rule, in t's dtype."""
    acc = np.zeros_like(t)
    for c in reversed(coeffs):
        acc = acc * t + t.dtype.type(c)
    return acc


def log_normalizer(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(log C(l), D(l) = d log C / dl), elementwise, same dtype as logits."""
    a = np.abs(logits)
    inside = a < SERIES_BAND
    # Each form only sees arguments it is meant for: no overflow of t^11 far outside the
    # band, no 0/0 of the closed form at l = 0.
    t = np.where(inside, a, 0) ** 2
    series_log_c = logits.dtype.type(LOG_2) + t * _polynomial(SERIES_LOG_C_COEFFS, t)
    series_d = logits * _polynomial(SERIES_D_COEFFS, t)
    safe = np.where(inside, logits.dtype.type(SERIES_BAND), a)
    e = np.exp(-safe)
    closed_log_c = np.log(safe / -np.expm1(-safe)) + np.log1p(e)
    closed_d = np.sign(logits) * (1 / safe - 2 * e / -np.expm1(-2 * safe))
    return np.where(inside, series_log_c, closed_log_c), np.where(inside, series_d, closed_d)


def continuous_bernoulli_nll(logits: np.ndarray, x: np.ndarray, scale) -> tuple[np.ndarray, np.ndarray]:
    """nll (B,) = sum_j softplus(l) - x l - log C(l) and
    dlogits (B, D) = scale * (sigmoid(l) - x - D(l)); logits, x: (B, D)."""
    log_c, d_log_c = log_normalizer(logits)
    nll = softplus(logits) - x * logits - log_c
    dlogits = (sigmoid(logits) - x - d_log_c) * scale
    return nll.sum(axis=1), dlogits.astype(logits.dtype, copy=False)


def continuous_bernoulli_mean(logits: np.ndarray) -> np.ndarray:
    """E[x] = 1 / -expm1(-l) - 1/l (the series inside the band), same dtype as logits."""
    inside = np.abs(logits) < SERIES_BAND
    t = np.where(inside, logits, 0) ** 2
    series = logits.dtype.type(0.5) + logits * _polynomial(SERIES_MEAN_COEFFS, t)
    safe = np.where(inside, logits.dtype.type(SERIES_BAND), logits)
    with np.errstate(over="ignore"):   # expm1(88+) = inf gives the right limit 1/-inf = -0
        closed = 1 / -np.expm1(-safe) - 1 / safe
    return np.where(inside, series, closed)


@register_likelihood("continuous-bernoulli")
class ContinuousBernoulli(Likelihood):
    """Independent continuous Bernoulli pixels: a normalised density on [0, 1]^D.

    raw (B, D) are the logits of lam; nll/gradient, mean and sampling as in the module
    docstring.  Data must lie in [0, 1]."""
    params = (ParamSpec("logits", "real; lambda = sigmoid(logits)"),)
    kernel = "continuous_bernoulli"

    def nll(self, raw, x, scale):
        return continuous_bernoulli_nll(raw, x, scale)

    def mean(self, raw):
        return continuous_bernoulli_mean(raw)

    def sample(self, raw, u, eps):
        dtype = raw.dtype.type
        negative = raw < 0
        safe = np.where(raw == 0, dtype(1), raw)
        with np.errstate(over="ignore", invalid="ignore"):   # the branch not taken may overflow
            low = np.log1p(u * np.expm1(safe)) / safe
            high = 1 + np.log1p((1 - u) * np.expm1(-safe)) / safe
        x = np.where(raw == 0, u, np.where(negative, low, high))
        return np.clip(x, 0, 1).astype(raw.dtype, copy=False)

    def validate_data(self, x, what="data"):
        require_unit_interval(x, what, "the continuous-bernoulli likelihood")
