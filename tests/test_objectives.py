"""The training objectives of the NumPy reference (KL weight, free bits, IWAE) against central
finite differences in float64, their twins, their options and their refusals."""
import types

import numpy as np
import pytest
import scipy.special
import scipy.stats as st

import cupyvae
from cupyvae import objective_twins as twins
from cupyvae.config import VAEConfig
from cupyvae.distributions import PRIORS, Prior, register_prior
from cupyvae.objectives import OBJECTIVES, Elbo, Iwae
from cupyvae.options import OptionError
from cupyvae.reference import (decode_raw, encode_raw, iwae_loss_and_grads, iwae_rows, kl_rows,
                               negative_elbo_and_grads, negative_elbo_rows)
from cupyvae.spec import ModelSpec
from cupyvae.training import TrainingOptions

from gradcheck import assert_grad_close, numeric_grad

LEARNABLE_PRIOR = "test-learnable-shift"


if LEARNABLE_PRIOR not in PRIORS:
    @register_prior(LEARNABLE_PRIOR)
    class _LearnableShift(Prior):
        """N(m, I) with a learnable mean m: exercises the prior seam's per-row weights g."""
        learnable = True

        def param_shapes(self):
            return {"mean": (self.dim,)}

        def init_params(self, rng):
            return {"mean": rng.normal(0.0, 0.5, self.dim)}

        def log_prob(self, z, params):
            return st.norm.logpdf(z, params["mean"]).sum(axis=1)

        def log_prob_grads(self, z, params, g=None):
            d = z - params["mean"]
            g = np.ones(len(z), z.dtype) if g is None else g
            return -d, {"mean": (g[:, None] * d).sum(axis=0)}


def spec_and_params(likelihood="bernoulli", prior="normal", activation="tanh", seed=0, hidden=(5, 4)):
    spec = ModelSpec(VAEConfig(data_shape=(2, 3), latent_dim=3, hidden=hidden, activation=activation,
                               likelihood=likelihood, prior=prior, seed=seed))
    flat = spec.layout.zeros(np.float64)
    spec.init_params(flat)
    flat += 0.1 * np.random.default_rng(seed + 1).standard_normal(flat.shape)   # non-zero biases
    return spec, spec.layout.views(flat)


def new_grads(spec):
    return spec.layout.views(spec.layout.zeros(np.float64))


def data(batch, seed=2):
    """Grey-level examples in [0, 1] (both likelihoods accept them)."""
    return np.random.default_rng(seed).random((batch, 6))


def assert_every_gradient(spec, params, grads, value, label):
    for name in spec.layout.names():
        assert_grad_close(grads[name], numeric_grad(value, params[name]), f"{label}: d loss / d {name}")


# ------------------------------------------------------------------------------ KL weight
def beta_objective(spec, params, x, eps, beta):
    """mean nll + beta mean KL, from the row functions (an independent forward)."""
    q_raw = encode_raw(spec, params, x)
    nll, _ = spec.likelihood.nll(decode_raw(spec, params, spec.posterior.rsample(q_raw, eps)), x, 1.0)
    return float(nll.mean() + beta * kl_rows(spec, params, q_raw, eps).mean())


@pytest.mark.parametrize("beta", [0.0, 0.3, 2.5])
@pytest.mark.parametrize("kl", ["analytic", "monte-carlo"])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_kl_weighted_loss_gradient_wrt_every_parameter(likelihood, kl, beta):
    spec, params = spec_and_params(likelihood)
    if kl == "monte-carlo":
        spec.analytic_kl = None
    x, eps = data(4), np.random.default_rng(3).standard_normal((4, 3))
    grads = new_grads(spec)
    loss = negative_elbo_and_grads(spec, params, grads, x, eps, kl_weight=beta)
    assert loss == pytest.approx(beta_objective(spec, params, x, eps, beta), rel=1e-12)
    assert_every_gradient(spec, params, grads, lambda: beta_objective(spec, params, x, eps, beta),
                          f"beta {beta} {kl} {likelihood}")


def test_kl_weight_one_is_the_negative_elbo_and_terms_are_reported():
    spec, params = spec_and_params()
    x, eps = data(5), np.random.default_rng(4).standard_normal((5, 3))
    terms = {}
    loss = negative_elbo_and_grads(spec, params, new_grads(spec), x, eps, terms=terms)
    assert loss == pytest.approx(negative_elbo_rows(spec, params, x, eps).mean(), rel=1e-12)
    assert terms["recon"] + terms["kl"] == pytest.approx(loss, rel=1e-12)
    assert terms["kl"] == pytest.approx(spec.analytic_kl(encode_raw(spec, params, x))[0].mean(), rel=1e-12)


def test_kl_weight_learnable_prior_gradient():
    """The Monte-Carlo KL through the prior seam, beta-weighted, including d prior.mean."""
    spec, params = spec_and_params(prior=LEARNABLE_PRIOR)
    x, eps = data(4), np.random.default_rng(5).standard_normal((4, 3))
    grads = new_grads(spec)
    negative_elbo_and_grads(spec, params, grads, x, eps, kl_weight=0.7)
    assert_every_gradient(spec, params, grads, lambda: beta_objective(spec, params, x, eps, 0.7),
                          "beta 0.7 learnable prior")


# ------------------------------------------------------------------------------ free bits
def free_bits_objective(spec, params, x, eps, free_bits, beta=1.0):
    """mean nll + beta sum_j max(lambda, mean_b KL_bj), with the Gaussian per-dimension KL
    written out here."""
    q_raw = encode_raw(spec, params, x)
    nll, _ = spec.likelihood.nll(decode_raw(spec, params, spec.posterior.rsample(q_raw, eps)), x, 1.0)
    mu, lv = q_raw[:, :3], q_raw[:, 3:]
    kl_mean = (0.5 * (mu ** 2 + np.exp(lv) - 1 - lv)).mean(axis=0)
    return float(nll.mean() + beta * np.maximum(free_bits, kl_mean).sum())


def kl_means(spec, params, x):
    return spec.kl_per_dimension(encode_raw(spec, params, x))[0].mean(axis=0)


@pytest.mark.parametrize("where", ["between", "below every dimension", "above every dimension"])
def test_free_bits_gradient_on_both_sides_of_the_floor(where):
    spec, params = spec_and_params("gaussian", activation="softplus")
    x, eps = data(6), np.random.default_rng(6).standard_normal((6, 3))
    means = np.sort(kl_means(spec, params, x))
    # Floors at least 1e-3 nats from every dimension's mean KL: the finite-difference steps
    # (1e-5 on a parameter) move a mean KL by ~1e-5, so no perturbation crosses the kink.
    floor = {"between": 0.5 * (means[0] + means[1]), "below every dimension": means[0] - 0.05,
             "above every dimension": means[-1] + 0.05}[where]
    assert np.min(np.abs(means - floor)) > 1e-3, (means, floor)
    grads = new_grads(spec)
    loss = negative_elbo_and_grads(spec, params, grads, x, eps, kl_weight=1.5, free_bits=floor)
    assert loss == pytest.approx(free_bits_objective(spec, params, x, eps, floor, 1.5), rel=1e-12)
    assert_every_gradient(spec, params, grads,
                          lambda: free_bits_objective(spec, params, x, eps, floor, 1.5),
                          f"free bits {where}")


def test_free_bits_below_every_dimension_is_the_weighted_elbo_and_above_removes_the_kl_gradient():
    spec, params = spec_and_params()
    x, eps = data(5), np.random.default_rng(7).standard_normal((5, 3))
    means = kl_means(spec, params, x)
    plain, floored = new_grads(spec), new_grads(spec)
    negative_elbo_and_grads(spec, params, plain, x, eps, kl_weight=0.5)
    negative_elbo_and_grads(spec, params, floored, x, eps, kl_weight=0.5, free_bits=means.min() / 2)
    for name in spec.layout.names():
        np.testing.assert_allclose(floored[name], plain[name], rtol=1e-12, atol=1e-15, err_msg=name)
    no_kl = new_grads(spec)
    negative_elbo_and_grads(spec, params, no_kl, x, eps, kl_weight=0.0)
    negative_elbo_and_grads(spec, params, floored, x, eps, kl_weight=0.5, free_bits=means.max() + 1)
    for name in spec.layout.names():      # every dimension floored: only the reconstruction trains
        np.testing.assert_allclose(floored[name], no_kl[name], rtol=1e-12, atol=1e-15, err_msg=name)


def test_free_bits_twin_floors_each_dimension():
    kl_dim = np.array([[0.1, 2.0, 0.5], [0.3, 1.0, 0.7]])
    kl_rows_, active, kl_mean = twins.free_bits_kl(kl_dim, 0.6)
    np.testing.assert_allclose(kl_mean, [0.2, 1.5, 0.6])
    np.testing.assert_array_equal(active, [0, 1, 0])           # 0.6 is not above the floor 0.6
    np.testing.assert_allclose(kl_rows_, [0.6 + 2.0 + 0.6, 0.6 + 1.0 + 0.6])
    assert kl_rows_.mean() == pytest.approx(np.maximum(0.6, kl_mean).sum())


@pytest.mark.parametrize("z_dim", [1, 3])
def test_free_bits_twin_adds_rows_in_order_like_the_kernel(z_dim):
    """One latent dimension is a contiguous column, which NumPy's sum adds pairwise: the
    batch mean must still be the kernel's sequential float32 sum, bit for bit."""
    rng = np.random.default_rng(3)
    kl_dim = (rng.random((1000, z_dim)) * rng.choice([1e-3, 1.0, 1e3], (1000, z_dim))).astype(np.float32)
    in_order = np.zeros(z_dim, np.float32)
    for row in kl_dim:
        in_order += row
    _, _, kl_mean = twins.free_bits_kl(kl_dim, 0.1)
    np.testing.assert_array_equal(kl_mean.view(np.uint32), (in_order / np.float32(1000)).view(np.uint32))


def test_free_bits_without_a_per_dimension_kl_is_refused_naming_the_pair():
    spec, params = spec_and_params(prior=LEARNABLE_PRIOR)
    x, eps = data(3), np.zeros((3, 3))
    # An OptionError: the CLI names both flags (--posterior, --prior) and the fix.
    rule = (f"free_bits = 0.1: free bits need a KL that factorises per latent dimension; "
            f"posterior gaussian with prior {LEARNABLE_PRIOR} has none.*leave free_bits at 0")
    with pytest.raises(OptionError, match=rule):           # the reference and the objective
        negative_elbo_and_grads(spec, params, new_grads(spec), x, eps, free_bits=0.1)
    with pytest.raises(OptionError, match=rule):            # say it alike
        Elbo(free_bits=0.1).check_model(spec)
    model = cupyvae.VAE((2, 3), prior=LEARNABLE_PRIOR)
    with pytest.raises(OptionError, match="free_bits = 0.1: free bits need a KL that factorises"):
        model.fit(np.zeros((4, 6), np.float32), epochs=1, batch_size=2, free_bits=0.1)
    assert model.optimizer is None       # refused before any work


# ------------------------------------------------------------------------------ IWAE
def iwae_objective(spec, params, x, eps, k):
    """-mean_b log (1/k) sum_i w_bi with every density written out here in float64."""
    q_raw = encode_raw(spec, params, x)
    q_rows = np.repeat(q_raw, k, axis=0)
    mu, lv = q_rows[:, :3], q_rows[:, 3:]
    z = mu + np.exp(0.5 * lv) * eps
    nll, _ = spec.likelihood.nll(decode_raw(spec, params, z), np.repeat(x, k, axis=0), 1.0)
    log_q = st.norm.logpdf(z, mu, np.exp(0.5 * lv)).sum(axis=1)
    log_p = spec.prior.log_prob(z, spec.prior_params(params))
    log_w = (log_p - log_q - nll).reshape(len(x), k)
    return float(-(scipy.special.logsumexp(log_w, axis=1) - np.log(k)).mean())


@pytest.mark.parametrize("k", [1, 2, 7])
@pytest.mark.parametrize("likelihood, prior", [("bernoulli", "normal"), ("gaussian", "normal"),
                                               ("bernoulli", LEARNABLE_PRIOR)])
def test_iwae_gradient_wrt_every_parameter(likelihood, prior, k):
    spec, params = spec_and_params(likelihood, prior, activation="relu")
    batch = 3
    x = data(batch)
    eps = np.random.default_rng(8).standard_normal((batch * k, 3))
    grads = new_grads(spec)
    terms = {}
    loss = iwae_loss_and_grads(spec, params, grads, x, eps, k, terms=terms)
    assert loss == pytest.approx(iwae_objective(spec, params, x, eps, k), rel=1e-12)
    assert loss == pytest.approx(iwae_rows(spec, params, x, eps, k).mean(), rel=1e-12)
    assert np.isfinite(terms["recon"]) and np.isfinite(terms["kl"])
    assert_every_gradient(spec, params, grads, lambda: iwae_objective(spec, params, x, eps, k),
                          f"IWAE k={k} {likelihood}/{prior}")


@pytest.mark.parametrize("prior", ["normal", LEARNABLE_PRIOR])
def test_iwae_with_one_sample_is_the_elbo_with_a_monte_carlo_kl(prior):
    spec, params = spec_and_params("gaussian", prior)
    spec.analytic_kl = None
    x, eps = data(5), np.random.default_rng(9).standard_normal((5, 3))
    elbo_grads, iwae_grads = new_grads(spec), new_grads(spec)
    elbo_terms, iwae_terms = {}, {}
    elbo = negative_elbo_and_grads(spec, params, elbo_grads, x, eps, terms=elbo_terms)
    iwae = iwae_loss_and_grads(spec, params, iwae_grads, x, eps, 1, terms=iwae_terms)
    assert iwae == pytest.approx(elbo, rel=1e-13)
    assert iwae_terms == pytest.approx(elbo_terms, rel=1e-12)
    for name in spec.layout.names():
        np.testing.assert_allclose(iwae_grads[name], elbo_grads[name], rtol=1e-12, atol=1e-14,
                                   err_msg=name)


def test_iwae_bound_is_at_least_as_tight_as_the_average_elbo_of_its_samples():
    """Jensen: -log mean_i w_i <= -mean_i log w_i, example by example, for any noise."""
    spec, params = spec_and_params()
    spec.analytic_kl = None
    k, x = 6, data(4)
    eps = np.random.default_rng(10).standard_normal((4 * k, 3))
    per_sample = negative_elbo_rows(spec, params, np.repeat(x, k, axis=0), eps).reshape(4, k)
    bound = iwae_rows(spec, params, x, eps, k)
    assert np.all(bound <= per_sample.mean(axis=1) + 1e-12), (bound, per_sample.mean(axis=1))
    assert np.all(bound < per_sample.mean(axis=1) - 1e-6)     # strictly, as the weights differ


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_iwae_weights_are_stable_for_huge_log_weights(dtype):
    rng = np.random.default_rng(11)
    k = 5
    log_p = rng.normal(0, 3, 3 * k).astype(dtype)
    log_q = rng.normal(0, 3, 3 * k).astype(dtype)
    nll = np.array([1e4] * k + [-3e4] * k + list(rng.normal(0, 1, k)), dtype)  # exp over/underflows
    bound, weight = twins.iwae_weights(nll, log_p, log_q, k, 0.25)
    assert bound.dtype == weight.dtype == dtype
    assert np.isfinite(bound).all() and np.isfinite(weight).all()
    # log w rounded like the twin rounds it (in float32 its ulp at 3e4 is 2e-3 nats, which
    # no log-sum-exp can undo), then the log-sum-exp and softmax in float64.
    log_w = ((log_p - log_q) - nll).astype(np.float64).reshape(3, k)
    rtol = 1e-6 if dtype == np.float32 else 1e-12     # float32: a few ulp of the log-sum-exp
    np.testing.assert_allclose(bound, -(scipy.special.logsumexp(log_w, axis=1) - np.log(k)), rtol=rtol)
    np.testing.assert_allclose(weight.reshape(3, k).sum(axis=1), 0.25, rtol=rtol)
    np.testing.assert_allclose(weight, 0.25 * scipy.special.softmax(log_w, axis=1).ravel(),
                               rtol=10 * rtol, atol=1e-30)


def test_row_twins():
    src = np.arange(6.0).reshape(2, 3)
    rep = twins.repeat_rows(src, 3)
    np.testing.assert_array_equal(rep[[0, 1, 2]], np.repeat(src[:1], 3, axis=0))
    np.testing.assert_array_equal(twins.sum_row_groups(rep, 3), 3 * src)
    g = np.array([1, 2, 3, 4, 5, 6.0])
    np.testing.assert_array_equal(twins.scale_rows(rep.copy(), g), rep * g[:, None])


def test_importance_noise_keying_is_independent_of_the_chunking():
    from cupyvae import philox
    seed, z_dim = 2 ** 33 + 5, 3
    whole = twins.importance_noise(seed, 4, 3, 0, 5, z_dim)          # examples 4..6, samples 0..4
    for e in range(3):   # example n, sample i is Philox (step n, row i, col j, STREAM_IMPORTANCE)
        np.testing.assert_array_equal(whole[e * 5:(e + 1) * 5],
                                      philox.normal(seed, 4 + e, 5, z_dim, philox.STREAM_IMPORTANCE))
    part = twins.importance_noise(seed, 5, 2, 2, 3, z_dim)           # examples 5..6, samples 2..4
    np.testing.assert_array_equal(part.reshape(2, 3, z_dim), whole.reshape(3, 5, z_dim)[1:, 2:])


def test_log_mean_exp_accumulates_in_chunks_like_one_log_sum_exp():
    rng = np.random.default_rng(12)
    nll, log_p, log_q = (rng.normal(0, 50, (2, 12)).astype(np.float32) for _ in range(3))
    running = (np.full(2, -np.inf), np.zeros(2))
    for start in (0, 5, 9):   # chunks of 5, 4 and 3 samples per example
        stop = {0: 5, 5: 9, 9: 12}[start]
        twins.log_mean_exp_accumulate(nll[:, start:stop].ravel(), log_p[:, start:stop].ravel(),
                                      log_q[:, start:stop].ravel(), *running, stop - start)
    log_w = log_p.astype(np.float64) - log_q - nll
    np.testing.assert_allclose(twins.log_mean_exp_finish(*running, 12),
                               scipy.special.logsumexp(log_w, axis=1) - np.log(12), rtol=1e-14)


# ------------------------------------------------------------------------------ options
@pytest.mark.parametrize("changes, field", [
    (dict(free_bits=-0.1), "free_bits"), (dict(free_bits=float("nan")), "free_bits"),
    (dict(free_bits=float("inf")), "free_bits"), (dict(iw_samples=0), "iw_samples"),
    (dict(iw_samples=2.5), "iw_samples"), (dict(iw_samples=float("nan")), "iw_samples"),
    (dict(objective="iwae", iw_samples=0), "iw_samples"), (dict(objective="vae"), "objective"),
    (dict(objective="iwae", iw_samples=5, free_bits=0.5), "free_bits"),
    (dict(iw_samples=5), "iw_samples"),      # importance samples without the IWAE objective
])
def test_bad_objective_options_are_refused_naming_the_field(changes, field):
    with pytest.raises(OptionError, match=f"training option {field} = ") as raised:
        TrainingOptions(**changes)
    assert raised.value.field == field


def test_kl_weight_and_warm_up_are_refused_with_iwae():
    """The KL-weight fields come with the schedules (same issue); the rule is checked here
    on a stand-in carrying them."""
    base = dict(objective="iwae", batch_size=100, iw_samples=5, free_bits=0.0, kl_weight=1.0, kl_warmup_steps=0)
    Iwae.check_options(types.SimpleNamespace(**base))
    for field, value in (("kl_weight", 0.5), ("kl_warmup_steps", 100)):
        with pytest.raises(OptionError, match=f"{field} = .*IWAE bound does not have"):
            Iwae.check_options(types.SimpleNamespace(**{**base, field: value}))


def test_objectives_are_registered_by_name():
    assert OBJECTIVES.names() == ["elbo", "iwae"]
    options = TrainingOptions(objective="iwae", iw_samples=4)
    assert TrainingOptions.from_dict(options.to_dict()) == options


# ------------------------------------------------------------------------------ training
def toy(n=120, seed=0):
    rng = np.random.default_rng(seed)
    proto = rng.random((2, 2, 3)) < 0.5
    return (proto[rng.integers(0, 2, n)] ^ (rng.random((n, 2, 3)) < 0.1)).astype(np.float32)


def test_iwae_training_draws_k_rows_of_noise_per_example_and_lowers_the_bound():
    from cupyvae import philox
    x = toy()
    model = cupyvae.VAE((2, 3), latent_dim=2, hidden=(8,), seed=1)
    history = model.fit(x, x[:40], epochs=6, batch_size=20, lr=5e-3, objective="iwae", iw_samples=4)
    assert history["train_loss"][-1] < history["train_loss"][0]
    # One step by hand: its loss is the bound at the initial parameters, with noise rows
    # b*k + i of Philox step 0 and the epoch's order (seed, epoch 1).
    once = cupyvae.VAE((2, 3), latent_dim=2, hidden=(8,), seed=1)
    initial = once.spec.layout.views(once.flat_params.copy())
    once.fit(x[:20], epochs=1, batch_size=20, objective="iwae", iw_samples=4)
    order = np.random.default_rng([1, 1]).permutation(20)
    eps = philox.normal(1, 0, 20 * 4, 2, philox.STREAM_POSTERIOR)
    expected = iwae_rows(once.spec, initial, x[:20][order].reshape(20, -1), eps, 4).mean()
    assert once.history["train_loss"][0] == pytest.approx(expected, rel=1e-6)


def test_history_has_the_elbo_terms_and_active_units():
    x = toy()
    model = cupyvae.VAE((2, 3), latent_dim=3, hidden=(8,), seed=2)
    history = model.fit(x, x[:50], epochs=2, batch_size=20)
    for key in ("train_recon", "train_kl", "val_recon", "val_kl", "active_units"):
        assert len(history[key]) == 2, key
    assert history["val_recon"][-1] + history["val_kl"][-1] == pytest.approx(history["val_loss"][-1])
    # The train terms are running means of the steps, whose losses they add up to.
    assert history["train_recon"][0] + history["train_kl"][0] == pytest.approx(history["train_loss"][0])
    terms = model.elbo_terms(x[:50])
    assert terms["negative_elbo"] == pytest.approx(model.loss(x[:50]), rel=1e-15)
    assert terms["kl"] > 0 and 0 <= terms["active_units"] <= 3


def test_active_units_count_dimensions_whose_posterior_mean_varies():
    x = toy()
    model = cupyvae.VAE((2, 3), latent_dim=3, hidden=(), seed=3)
    weight, bias = model.params["encoder.0.weight"], model.params["encoder.0.bias"]
    weight[:, :3] = np.array([[2.0, 0.0, 0.03]] * 6)      # means: varying, constant, barely varying
    bias[:3] = [0.5, 1.5, -0.5]
    means = model.encode(x)
    assert np.var(means[:, 0]) > 0.01 and np.var(means[:, 1]) == 0 and np.var(means[:, 2]) < 0.01
    assert model.elbo_terms(x)["active_units"] == 1


def test_a_history_without_the_new_columns_is_padded():
    x = toy()
    model = cupyvae.VAE((2, 3), latent_dim=2, hidden=(8,))
    model.history = {"epoch": [1], "train_loss": [5.0], "val_loss": [None], "seconds": [0.1]}
    model.fit(x, x[:20], epochs=1, batch_size=20)
    assert {len(column) for column in model.history.values()} == {2}
    assert model.history["train_kl"][0] is None and model.history["train_kl"][1] > 0
