"""The learnable priors (`mog`, `vamp`) on the NumPy path: densities against SciPy, hostile
corners, sampling, options, data initialisation, training, checkpoints."""
import json

import numpy as np

from cupyvae.objective_twins import importance_noise
import pytest
import scipy.stats as st
from scipy.special import logsumexp

import cupyvae
from cupyvae import philox, reference
from cupyvae.options import OptionError
from cupyvae.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from cupyvae.config import VAEConfig
from cupyvae.distributions import POSTERIORS, PRIORS, ParamSpec, Posterior
from cupyvae.distributions.mixture import MixturePrior
from cupyvae.spec import ModelSpec

LEARNABLE = ["mog", "vamp"]


def mog_density(means, logvars, logits):
    comp = np.concatenate([np.asarray(means, float), np.asarray(logvars, float)], axis=1)
    return {"logits": np.asarray(logits, float), "components": comp}


def scipy_log_density(z, means, logvars, logits):
    """log sum_k pi_k N(z; m_k, diag e^s_k) with scipy.stats.norm per dimension (exact for the
    extreme variances that multivariate_normal's eigen-decomposition would call singular)."""
    log_pi = logits - logsumexp(logits)
    per_k = np.stack([st.norm.logpdf(z, m, np.exp(0.5 * s)).sum(1) for m, s in zip(means, logvars)], 1)
    return logsumexp(per_k + log_pi, axis=1)


def test_mixture_log_density_matches_scipy_multivariate_normal():
    rng = np.random.default_rng(0)
    k, z_dim = 4, 3
    means, logvars, logits = rng.normal(0, 2, (k, z_dim)), rng.uniform(-2, 2, (k, z_dim)), rng.normal(0, 1, k)
    z = rng.normal(0, 3, (6, z_dim))
    want = logsumexp(np.stack([st.multivariate_normal(m, np.diag(np.exp(s))).logpdf(z)
                               for m, s in zip(means, logvars)], 1) + logits - logsumexp(logits), axis=1)
    got = MixturePrior(z_dim, k).log_prob(z, mog_density(means, logvars, logits))
    np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize("case", ["far-apart", "logvar-30", "logvar+30", "one-component"])
def test_mixture_log_density_hostile_corners(case):
    """float64 against SciPy to 1e-12, and float32 finite and within a few ulp of the scale of
    its terms (the largest of |log 2pi + s| + t^2 over the responsible components)."""
    z_dim = 2
    means = np.array([[-1e3, -1e3], [0.0, 0.0], [1e3, 1e3]])
    logvars = {"far-apart": np.zeros((3, 2)), "logvar-30": np.full((3, 2), -30.0),
               "logvar+30": np.full((3, 2), 30.0), "one-component": np.zeros((3, 2))}[case]
    logits = np.array([0.3, -0.2, 1.0])
    if case == "one-component":
        means, logvars, logits = means[1:2], logvars[1:2], logits[1:2]
    k = len(means)
    sigma = np.exp(0.5 * logvars[0, 0])
    z = np.concatenate([means + 0.5 * sigma, means - 1.5 * sigma, [[500.0, -500.0]]])
    prior = MixturePrior(z_dim, k)
    want = scipy_log_density(z, means, logvars, logits)
    np.testing.assert_allclose(prior.log_prob(z, mog_density(means, logvars, logits)), want, rtol=1e-12)
    # float32: against float64 evaluated at the float32-rounded inputs (1e3 + 0.5 sigma rounds
    # to 1e3 in float32 at sigma = 3e-7; that is the input's rounding, not the density's).
    z32, means32, logvars32, logits32 = (np.asarray(v, np.float32) for v in (z, means, logvars, logits))
    want32 = scipy_log_density(*(v.astype(np.float64) for v in (z32, means32, logvars32, logits32)))
    density32 = {"logits": logits32, "components": np.concatenate([means32, logvars32], 1)}
    got32 = prior.log_prob(z32, density32)
    assert np.isfinite(got32).all() and got32.dtype == np.float32
    t2 = ((z32[:, None].astype(float) - means32[None]) ** 2 * np.exp(-logvars32.astype(float))[None]).sum(2)
    scale = (t2 + np.abs(1.8379 + logvars32).sum(1)).min(1) + np.abs(logits).max() + 1
    # 64 units of the terms' scale: a handful of roundings per term (<= ~10), the exp/log of
    # the log-sum-exp, and sums of <= 3 terms; a wrong term would be off by O(1) of it.
    np.testing.assert_array_less(np.abs(got32 - want32), 64 * 2.0 ** -24 * scale)
    dz, dparams = prior.log_prob_grads(z32, density32)
    assert np.isfinite(dz).all() and all(np.isfinite(v).all() for v in dparams.values())


def test_remembered_terms_follow_the_values_not_the_arrays():
    """The mixture remembers its last point's terms: changing z (or the parameters) in place,
    or writing into a returned log p, must not give stale numbers."""
    rng = np.random.default_rng(1)
    prior = MixturePrior(2, 3)
    density = mog_density(rng.normal(size=(3, 2)), rng.normal(size=(3, 2)), rng.normal(size=3))
    z = rng.normal(size=(4, 2))
    first = prior.log_prob(z, density)
    kept = first.copy()
    first += 100.0
    np.testing.assert_array_equal(prior.log_prob(z, density), kept)
    z[0, 0] += 1.0
    want = scipy_log_density(z, density["components"][:, :2], density["components"][:, 2:], density["logits"])
    np.testing.assert_allclose(prior.log_prob(z, density), want, rtol=1e-12)
    density["components"][1, 3] -= 0.5
    want = scipy_log_density(z, density["components"][:, :2], density["components"][:, 2:], density["logits"])
    np.testing.assert_allclose(prior.log_prob(z, density), want, rtol=1e-12)
    np.testing.assert_allclose(prior.log_prob(z.astype(np.float32), {k: v.astype(np.float32) for k, v in
                                                                     density.items()}), want, rtol=1e-5)


def test_large_batches_are_evaluated_in_row_blocks_with_the_same_numbers(monkeypatch):
    """Past TERMS_LIMIT elements the (B, K, Z) terms are formed a block of rows at a time; the
    log-density is the same per row, the gradients the same up to the order of the batch sums."""
    rng = np.random.default_rng(2)
    prior = MixturePrior(3, 4)
    density = mog_density(rng.normal(size=(4, 3)), rng.normal(size=(4, 3)), rng.normal(size=4))
    z, g = rng.normal(size=(10, 3)), rng.normal(size=10)
    whole = prior.log_prob(z, density), prior.log_prob_grads(z, density, g)
    monkeypatch.setattr(MixturePrior, "TERMS_LIMIT", 3 * 4 * 3)     # blocks of 3 rows: 3, 3, 3, 1
    assert len(prior._row_blocks(10)) == 4
    np.testing.assert_array_equal(prior.log_prob(z, density), whole[0])
    dz, dparams = prior.log_prob_grads(z, density, g)
    np.testing.assert_array_equal(dz, whole[1][0])
    for name, value in dparams.items():
        np.testing.assert_allclose(value, whole[1][1][name], rtol=1e-13, atol=1e-15)


def small_model(prior, k=3, **kw):
    """K components where the prior takes them (pass k explicitly to test the refusal)."""
    if prior == "normal" and k == 3:
        k = None
    args = dict(data_shape=(4, 5), latent_dim=2, hidden=(16,), seed=3, prior=prior, prior_components=k)
    args.update(kw)
    return cupyvae.VAE(**args)


def toy_data(n=300, shape=(4, 5), seed=0):
    """Two clusters of binary-ish images, as in tests/test_model.py."""
    rng = np.random.default_rng(seed)
    proto = rng.random((2, *shape)) < 0.5
    flips = rng.random((n, *shape)) < 0.1
    return (proto[rng.integers(0, 2, n)] ^ flips).astype(np.float32)


# ---------------------------------------------------------------- options

@pytest.mark.parametrize("prior", LEARNABLE)
@pytest.mark.parametrize("k", [0, -3, 2.5, True])
def test_bad_component_counts_are_refused(prior, k):
    with pytest.raises(ValueError, match=rf"prior_components = {k!r}: must be an integer"):
        small_model(prior, k=k)


def test_prior_options_are_validated_and_defaulted():
    with pytest.raises(OptionError, match="prior_components = 4: prior normal has no components; "
                                          "leave prior_components unset"):
        small_model("normal", k=4)
    with pytest.raises(OptionError, match="prior_init = 'data': not available for prior mog; available: random"):
        small_model("mog", prior_init="data")
    assert small_model("mog", k=None).config.prior_components == 10
    assert small_model("vamp", k=None).config.prior_components == 500
    assert small_model("normal", k=None).config.prior_components is None
    config = small_model("vamp", k=7, prior_init="data").config
    assert VAEConfig.from_json(config.to_json()) == config
    assert json.loads(config.to_json())["prior_components"] == 7


def test_vamp_needs_a_mu_logvar_posterior(monkeypatch):
    class LaplacePosterior(Posterior):
        params = (ParamSpec("loc", "real"), ParamSpec("log_scale", "real"))
    monkeypatch.setitem(POSTERIORS._entries, "test-laplace", LaplacePosterior)
    config = VAEConfig(data_shape=(3,), posterior="test-laplace", prior="vamp", prior_components=2)
    with pytest.raises(ValueError, match=r"needs a \[mu \| logvar\] Gaussian posterior.*'loc', 'log_scale'"):
        ModelSpec(config)


def test_parameter_shapes_and_initialisation():
    mog = small_model("mog", k=4).params
    assert mog["prior.logits"].shape == (4,) and mog["prior.components"].shape == (4, 4)
    np.testing.assert_array_equal(mog["prior.logits"], 0)
    np.testing.assert_allclose(mog["prior.components"][:, 2:], np.log(0.75), rtol=1e-6)
    assert len(np.unique(mog["prior.components"][:, :2])) == 8          # symmetry broken
    w = small_model("vamp", k=50).params["prior.pseudo_inputs"]
    assert w.shape == (50, 20)
    assert abs(w.mean() - 0.05) < 0.003 and abs(w.std() - 0.01) < 0.002   # N(0.05, 0.01^2), 1000 draws


# ---------------------------------------------------------------- data initialisation

def test_data_initialised_vamp_refuses_more_components_than_examples():
    model = small_model("vamp", k=31, prior_init="data")
    with pytest.raises(OptionError, match="prior_components = 31: .*prior_init data.*x_train has 30"):
        model.fit(toy_data(30), epochs=1, batch_size=10)
    assert model.optimizer is None          # refused before any work
    small_model("vamp", k=31).fit(toy_data(30), epochs=1, batch_size=10)   # random init: any K


def test_data_initialisation_copies_training_examples_once():
    x = toy_data(40)
    lr, steps = 1e-4, 4                      # Adam moves a parameter by at most ~lr per step
    model = small_model("vamp", k=5, prior_init="data")
    model.fit(x, epochs=1, batch_size=10, lr=lr)
    w = model.params["prior.pseudo_inputs"].copy()
    flat_x = x.reshape(40, -1)
    nearest = np.abs(w[:, None, :] - flat_x[None]).max(axis=2).min(axis=1)
    assert np.all(nearest < 0.06), nearest                        # each is an example + N(0, 0.01^2)
    assert not np.array_equal(w, small_model("vamp", k=5).params["prior.pseudo_inputs"])
    model.fit(x, epochs=1, batch_size=10, lr=lr)
    # Re-initialising would redraw the N(0, 0.01^2) noise: moves of ~0.01, far above Adam's.
    assert np.abs(model.params["prior.pseudo_inputs"] - w).max() <= 1.5 * lr * steps


# ---------------------------------------------------------------- the prior pass

def test_equal_pseudo_inputs_give_the_posterior_at_that_input():
    """All pseudo-inputs equal: p(z) = 1/K sum_k q(z|u) = q(z|u), whatever K."""
    model = small_model("vamp", k=6)
    params = {n: v.astype(np.float64) for n, v in model.params.items()}
    params["prior.pseudo_inputs"][:] = np.linspace(0.1, 0.9, 20)
    z = np.random.default_rng(0).normal(0, 2, (5, 2))
    log_p, state = reference.prior_log_prob(model.spec, params, z)
    q_raw = reference.encode_raw(model.spec, params, params["prior.pseudo_inputs"][:1])
    want = model.spec.posterior.log_prob(np.repeat(q_raw, 5, 0), z)
    np.testing.assert_allclose(log_p, want, rtol=1e-12)
    grads = model.spec.layout.views(model.spec.layout.zeros(np.float64))
    reference.add_prior_param_grads(model.spec, params, grads, z, state, -np.ones(5) / 5)
    g = grads["prior.pseudo_inputs"]
    assert np.isfinite(g).all()
    np.testing.assert_allclose(g, np.repeat(g[:1], 6, 0), rtol=1e-12)    # symmetric


@pytest.mark.parametrize("prior", ["normal", *LEARNABLE])
def test_log_likelihood_goes_through_the_prior(prior):
    """With one importance sample, log_likelihood is minus the one-sample negative ELBO with the
    importance stream's noise: the same log p(z) as training (for vamp: the encoded pseudo-inputs)."""
    model = small_model(prior)
    x = toy_data(7).reshape(7, -1)
    model.fit(toy_data(40), epochs=1, batch_size=10)
    eps = importance_noise(model.config.seed, 0, 7, 0, 1, 2)   # the importance stream's keying
    model.spec.analytic_kl = None            # log_likelihood uses log q - log p for every prior
    want = -reference.negative_elbo_rows(model.spec, model.params, x, eps)
    np.testing.assert_allclose(model.log_likelihood(x, n_samples=1), want, rtol=1e-5)


def test_mixture_sampling_picks_components_by_the_uniform():
    prior = MixturePrior(2, 2)
    density = mog_density([[-10.0, 0.0], [10.0, 0.0]], np.full((2, 2), -20.0), np.log([0.2, 0.8]))
    u = np.array([0.01, 0.19, 0.21, 0.99, 0.5], np.float32)
    z = prior.sample(density, u, np.zeros((5, 2), np.float32))
    np.testing.assert_array_equal(z[:, 0], [-10, -10, 10, 10, 10])
    assert z.dtype == np.float32


@pytest.mark.parametrize("prior", LEARNABLE)
def test_samples_come_from_the_mixture_components(prior):
    model = small_model(prior, k=3)
    model.fit(toy_data(40), epochs=1, batch_size=10)
    state = reference.prior_state(model.spec, model.params)
    means = model.spec.prior.component_means(state.density)
    draws = model.spec.prior.sample(state.density, philox.uniform(1, 0, 200, 1)[:, 0],
                                    np.zeros((200, 2), np.float32))
    # with eps = 0 every draw IS one of the component means, each of them hit
    hits = np.abs(draws[:, None, :] - means[None]).max(axis=2).argmin(axis=1)
    np.testing.assert_array_equal(draws, means[hits])
    assert set(hits) == {0, 1, 2}
    images = model.sample(9)
    assert images.shape == (9, 4, 5) and np.array_equal(images, model.sample(9))


# ---------------------------------------------------------------- training and checkpoints

@pytest.mark.parametrize("prior", LEARNABLE)
def test_training_lowers_the_loss_and_moves_the_prior(prior):
    x = toy_data()
    model = small_model(prior)
    before_loss = model.loss(x[250:])
    before_prior = {n: v.copy() for n, v in model.params.items() if n.startswith("prior.")}
    history = model.fit(x[:250], x[250:], epochs=6, batch_size=25, lr=3e-3)
    assert history["val_loss"][-1] < 0.85 * before_loss, (before_loss, history["val_loss"])
    for name, value in before_prior.items():
        assert not np.array_equal(model.params[name], value), f"{name} did not train"


@pytest.mark.parametrize("prior", LEARNABLE)
def test_training_is_bitwise_repeatable_and_resumes_exactly(prior, tmp_path):
    x = toy_data(100)
    straight = small_model(prior, prior_init="data" if prior == "vamp" else "random")
    straight.fit(x, epochs=3, batch_size=20)
    again = small_model(prior, prior_init=straight.config.prior_init)
    again.fit(x, epochs=3, batch_size=20)
    np.testing.assert_array_equal(again.flat_params, straight.flat_params)

    first = small_model(prior, prior_init=straight.config.prior_init)
    first.fit(x, epochs=1, batch_size=20, checkpoint=tmp_path / "ckpt.safetensors")
    resumed = cupyvae.load(tmp_path / "ckpt.safetensors")
    assert resumed.config == first.config
    resumed.fit(x, epochs=2, batch_size=20)
    np.testing.assert_array_equal(resumed.flat_params, straight.flat_params)
    np.testing.assert_array_equal(resumed._executor.host_moments()[0],
                                  straight._executor.host_moments()[0])
    assert resumed.history["train_loss"] == straight.history["train_loss"]


def test_load_refuses_prior_tensors_that_do_not_match_the_config(tmp_path):
    path = tmp_path / "mog.safetensors"
    small_model("mog", k=3).save(path)
    tensors, meta = read_checkpoint(path)
    config = json.loads(meta["config"])
    config["prior_components"] = 4
    meta["config"] = json.dumps(config)
    save_checkpoint(path, tensors, meta)
    with pytest.raises(CheckpointError, match=r"'prior.components' is saved with shape \[3, 4\] but its "
                                              r"config \(prior 'mog', prior_components 4.*needs \[4, 4\]"):
        cupyvae.load(path)
    # The buffer's size alone cannot tell (K = 3 and 4 fit the same aligned room), so a
    # checkpoint without its layout cannot vouch for prior tensors.
    del meta["layout"]
    save_checkpoint(path, tensors, meta)
    with pytest.raises(CheckpointError, match="records no tensor layout.*prior_components 4"):
        cupyvae.load(path)


def test_checkpoints_without_a_layout_still_load_when_the_prior_has_no_tensors(tmp_path):
    path = tmp_path / "normal.safetensors"
    small_model("normal").save(path)
    tensors, meta = read_checkpoint(path)
    del meta["layout"]
    save_checkpoint(path, tensors, meta)
    assert cupyvae.load(path).config == small_model("normal").config


def test_every_registered_prior_builds_from_a_config():
    for name in PRIORS.names():
        k = 2 if PRIORS.get(name).default_components else None
        spec = ModelSpec(VAEConfig(data_shape=(3,), latent_dim=2, hidden=(4,), prior=name, prior_components=k))
        assert set(spec.prior.param_shapes()) == {n[len("prior."):] for n in spec.layout.names()
                                                  if n.startswith("prior.")}
