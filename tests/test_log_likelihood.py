"""VAE.log_likelihood (importance sampled, log q from the noise, float64) and VAE.loss's
float64 accumulation, including the narrow-posterior defects they had."""
import numpy as np
import pytest
import scipy.special
import scipy.stats as st

import cupyvae
from cupyvae import philox
from cupyvae.reference import negative_elbo_rows

X6 = np.array([[1, 0, 1, 1, 0, 0], [0, 0, 1, 0, 1, 1]], np.float32)   # a 6-pixel binary example (and one more)
Z_DIM = 2
K = 8


def fixed_posterior_model(mu: float, lv: float, seed: int = 4) -> cupyvae.VAE:
    """No hidden layer; the encoder ignores x and emits q = N(mu, exp(lv)) in every dimension;
    the decoder keeps its random initial weights, plus non-zero biases."""
    model = cupyvae.VAE((6,), latent_dim=Z_DIM, hidden=(), seed=seed)
    model.params["encoder.0.weight"][...] = 0
    model.params["encoder.0.bias"][...] = [mu] * Z_DIM + [lv] * Z_DIM
    model.params["decoder.0.bias"][...] = np.linspace(-1, 1, 6)
    return model


def float64_reference(model: cupyvae.VAE, x: np.ndarray, mu: float, lv: float, k: int) -> np.ndarray:
    """log (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x) in float64 from the documented noise
    (Philox step = example index, row = sample index, stream IMPORTANCE), with every density
    written out here (log q from the noise, as -1/2 sum(log 2pi + lv + eps^2))."""
    w = model.params["decoder.0.weight"].astype(np.float64)
    b = model.params["decoder.0.bias"].astype(np.float64)
    out = []
    for n, row in enumerate(x.astype(np.float64)):
        eps = philox.normal(model.config.seed, n, k, Z_DIM, philox.STREAM_IMPORTANCE).astype(np.float64)
        z = mu + np.exp(0.5 * lv) * eps
        logits = z @ w + b
        log_px_z = (row * logits - np.logaddexp(0, logits)).sum(axis=1)
        log_pz = st.norm.logpdf(z).sum(axis=1)
        log_qz = -0.5 * (np.log(2 * np.pi) + lv + eps ** 2).sum(axis=1)
        out.append(scipy.special.logsumexp(log_px_z + log_pz - log_qz) - np.log(k))
    return np.array(out)


# The model decodes in float32: 6 logits of size ~1 carry ~1e-7 relative error each, and
# log p(z) is taken at the float32 z (3 + 4e-8 eps rounds to 3 at lv = -34), which moves it
# by <= 3 * 4e-8 * |eps| per dimension; together well under 1e-5 nats.  The defects this
# replaces were +inf, NaN and 1.7 nats.
NARROW_ATOL = 1e-5


@pytest.mark.parametrize("mu, lv", [(0.0, -90.0), (0.0, -100.0), (3.0, -34.0), (0.5, 0.3)])
def test_narrow_posteriors_give_the_float64_value(mu, lv):
    model = fixed_posterior_model(mu, lv)
    got = model.log_likelihood(X6, n_samples=K)
    expected = float64_reference(model, X6, mu, lv, K)
    assert got.dtype == np.float64 and got.shape == (2,)
    assert np.all(np.isfinite(got)), got
    np.testing.assert_allclose(got, expected, rtol=0, atol=NARROW_ATOL)


def test_the_old_formula_was_wrong_where_the_new_one_is_right():
    """At mu = 3, lv = -34 the float32 z rounds to mu, so log q from (z - mu)^2 exp(-lv)
    misses sum eps^2 / 2 (about 1.7 nats for these draws): the test above would catch it."""
    model = fixed_posterior_model(3.0, -34.0)
    eps = philox.normal(model.config.seed, 0, K, Z_DIM, philox.STREAM_IMPORTANCE)
    z32 = np.float32(3.0) + np.exp(np.float32(-17.0)) * eps
    assert np.all(z32 == 3.0)
    missing = 0.5 * (eps.astype(np.float64) ** 2).sum(axis=1)
    assert missing.min() > 100 * NARROW_ATOL


def test_result_does_not_depend_on_the_chunking(monkeypatch):
    model = cupyvae.VAE((6,), latent_dim=3, hidden=(7,), seed=5)
    x = (np.random.default_rng(0).random((11, 6)) < 0.5).astype(np.float32)
    whole = model.log_likelihood(x, n_samples=9)
    calls = []
    for rows in (20, 9, 4):       # several examples per call; one each; samples split up
        monkeypatch.setattr(model._executor, "importance_rows", rows)
        calls.clear()
        chunked = model.log_likelihood(x, n_samples=9, progress=calls.append)
        # float32 decoding of the same rows in other batch shapes (BLAS blocking): ~1e-7
        np.testing.assert_allclose(chunked, whole, rtol=1e-6)
        assert sum(calls) == len(x) and len(calls) == -(-len(x) // max(1, rows // 9))


def test_one_sample_is_minus_the_negative_elbo_with_a_monte_carlo_kl():
    model = cupyvae.VAE((6,), latent_dim=3, hidden=(7,), seed=6)
    model.spec.analytic_kl = None
    x = (np.random.default_rng(1).random((5, 6)) < 0.5).astype(np.float32)
    got = model.log_likelihood(x, n_samples=1)
    params = model.spec.layout.views(model.flat_params.astype(np.float64))
    expected = [-negative_elbo_rows(model.spec, params, x[n:n + 1].astype(np.float64),
                                    philox.normal(6, n, 1, 3, philox.STREAM_IMPORTANCE).astype(np.float64))[0]
                for n in range(5)]
    np.testing.assert_allclose(got, expected, rtol=1e-5)    # float32 decoding vs float64


def test_more_samples_tighten_the_estimate_on_average():
    model = cupyvae.VAE((6,), latent_dim=2, hidden=(7,), seed=7)
    x = (np.random.default_rng(2).random((40, 6)) < 0.5).astype(np.float32)
    model.fit(x, epochs=3, batch_size=10)
    one, many = model.log_likelihood(x, 1).mean(), model.log_likelihood(x, 64).mean()
    assert one < many <= 0.0, (one, many)


@pytest.mark.parametrize("bad", [0, -3, 2.5, 4.0, True, "8", None])
def test_bad_sample_counts_are_refused(bad):
    """Integer arguments follow the option fields' rule (options.positive_int), one wording."""
    model = cupyvae.VAE((6,), latent_dim=2, hidden=())
    rule = r" = .*: must be an integer >= 1"
    with pytest.raises(ValueError, match="argument n_samples" + rule):
        model.log_likelihood(X6, n_samples=bad)
    with pytest.raises(ValueError, match="argument n" + rule):
        model.sample(bad)
    with pytest.raises(ValueError, match="argument n" + rule):
        model.sample_latent(bad)


def test_emulated_log_likelihood_matches_the_cpu():
    ref = cupyvae.VAE((6,), latent_dim=2, hidden=(5,), seed=8)
    dev = cupyvae.VAE((6,), latent_dim=2, hidden=(5,), seed=8, device="emulated")
    x = (np.random.default_rng(3).random((3, 6)) < 0.5).astype(np.float32)
    np.testing.assert_allclose(dev.log_likelihood(x, 5), ref.log_likelihood(x, 5), rtol=1e-5)


def test_loss_sums_extreme_rows_in_float64():
    """Rows of 1.8e38 nats are finite in float32; ten of them overflowed the float32 sum."""
    model = cupyvae.VAE((6,), latent_dim=2, hidden=(), seed=9)
    model.params["decoder.0.weight"][...] = 0
    model.params["decoder.0.bias"][...] = 3e37          # softplus(3e37) = 3e37 per pixel of x = 0
    x = np.zeros((10, 6), np.float32)
    rows = model._executor.loss_rows(x, 0, philox.STREAM_EVAL)
    with np.errstate(over="ignore"):
        assert np.all(np.isfinite(rows)) and not np.isfinite(rows.astype(np.float32).sum())
    assert model.loss(x) == pytest.approx(6 * 3e37, rel=1e-6)


@pytest.mark.parametrize("mu, lv", [(0.0, -90.0), (0.0, -100.0), (3.0, -34.0), (-2.0, 30.0)])
def test_gaussian_log_q_from_the_noise_is_exact_in_float32(mu, lv):
    """log q at z = rsample(eps) from eps: float32 gives the float64 value, where the
    (z - mu)^2 exp(-lv) form gives +inf, NaN or misses sum eps^2 / 2."""
    from cupyvae.distributions import POSTERIORS
    post = POSTERIORS.get("gaussian")(Z_DIM)
    raw = np.array([[mu] * Z_DIM + [lv] * Z_DIM] * K, np.float32)
    eps = philox.normal(1, 2, K, Z_DIM, philox.STREAM_IMPORTANCE)
    expected = -0.5 * (np.log(2 * np.pi) + lv + eps.astype(np.float64) ** 2).sum(axis=1)
    np.testing.assert_allclose(post.log_prob_of_draw(raw, eps), expected, rtol=1e-6)
    if lv < -30:
        with np.errstate(all="ignore"):
            old = post.log_prob(raw, post.rsample(raw, eps))
        assert not np.allclose(old, expected, rtol=1e-3, atol=0.1)
