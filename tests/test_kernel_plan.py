"""The kernel step plan composed from fragments (cupyvae.cuda.fragments) against the NumPy
path: every valid prior x objective trains step for step on the emulator (eager and graph),
bitwise repeatable, resumable, without re-capture; the learnable priors' hostile corners;
the device log-likelihood; and, marked `gpu`, one epoch of each combination on CUDA.

Tolerances are tests/test_executor.py's: float32 kernels and the float32 NumPy path differ by
summation order and a few ulp of expf/logf, ~1e-7 relative after one step; after a few
dozen Adam steps parameters agree to ~1e-5 relative (Adam divides by sqrt(v), which
amplifies the relative error of tiny gradients), so they are compared at 1e-4 of each
tensor's scale.
"""
import re
from pathlib import Path

import numpy as np
import pytest

import cupyvae
from cupyvae import philox
from cupyvae.cuda import executor as kernel_executor
from cupyvae.cuda import graph
from cupyvae.cuda.fragments import KL_FRAGMENTS, GaussianNormalKl
from cupyvae.distributions import (KL_PAIRS, POSTERIORS, PRIORS, kl_key, register_kl,
                                   register_prior)
from cupyvae.distributions.gaussian import NormalPrior, kl_gaussian_normal
from cupyvae.objectives import OBJECTIVES
from conftest import cuda_available

STEP_RTOL = 1e-5
PARAM_RTOL = 1e-4          # after 10 Adam steps: see the module docstring
SHAPE, Z, K = (6,), 2, 3
SCHEDULES = dict(lr_schedule="cosine", lr_decay_steps=12, lr_min=1e-4)
WARM_UP = dict(kl_warmup_steps=4, **SCHEDULES)
# (prior, training options): every valid prior x objective (free bits need the per-dimension
# KL of the closed-form normal pair), the ELBO ones with a KL warm-up and a cosine schedule.
COMBINATIONS = {
    "normal-elbo": ("normal", WARM_UP),
    "normal-free-bits": ("normal", dict(free_bits=0.2, **WARM_UP)),
    "normal-iwae": ("normal", dict(objective="iwae", iw_samples=3, **SCHEDULES)),
    "mog-elbo": ("mog", WARM_UP),
    "mog-iwae": ("mog", dict(objective="iwae", iw_samples=3)),
    "vamp-elbo": ("vamp", WARM_UP),
    "vamp-iwae": ("vamp", dict(objective="iwae", iw_samples=2, **SCHEDULES)),
}


def make(device, prior="normal", execution=None, **kw):
    args = dict(data_shape=SHAPE, latent_dim=Z, hidden=(5,), activation="tanh", seed=3,
                prior=prior, prior_components=None if PRIORS.get(prior).default_components is None
                else K)
    args.update(kw)
    return cupyvae.VAE(**args, device=device, execution=execution)


def binary(n, seed=0):
    return (np.random.default_rng(seed).random((n, *SHAPE)) < 0.4).astype(np.float32)


X = binary(32)
TRAIN, VAL = X[:25], X[25:]          # 5 steps of 5 an epoch; 7 validation examples


def assert_tensor_close(got, want, name, rtol=STEP_RTOL):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert np.isfinite(got).all(), f"{name}: non-finite values"
    err = np.abs(got - want)
    scale = max(float(np.abs(want).max(initial=0.0)), 1e-3)
    worst = np.unravel_index(int(err.argmax()), err.shape) if err.size else ()
    assert err.max(initial=0.0) <= rtol * scale, (
        f"{name}: max err {err.max():.3e} at {worst} (got {got[worst]:.8g}, want "
        f"{want[worst]:.8g}), scale {scale:.3g}")


def state(model):
    return (model._executor.host_flat(), *model._executor.host_moments())


def same_bits(a, b):
    return all(np.array_equal(np.asarray(x).view(np.uint32), np.asarray(y).view(np.uint32))
               for x, y in zip(a, b))


# ------------------------------------------------------------------ step for step
@pytest.mark.parametrize("combination", COMBINATIONS)
def test_training_tracks_the_reference_step_for_step(combination):
    """Two epochs (10 Adam steps): losses, the ELBO's terms, validation losses, every
    parameter and Adam's v, cpu against the emulator's eager plan; the emulator's graph
    plan (recorded, in graphs of 3 steps) then gives the eager plan's very bits."""
    prior, options = COMBINATIONS[combination]
    ref, dev = make("cpu", prior), make("emulated", prior, execution="eager")
    h_ref = ref.fit(TRAIN, VAL, epochs=2, batch_size=5, **options)
    h_dev = dev.fit(TRAIN, VAL, epochs=2, batch_size=5, **options)
    for column in ("train_loss", "train_recon", "train_kl", "val_loss", "val_kl"):
        np.testing.assert_allclose(h_dev[column], h_ref[column], rtol=STEP_RTOL, atol=1e-6,
                                   err_msg=f"{combination} {column}")
    assert h_ref["train_loss"][1] != h_ref["train_loss"][0]
    dev_params = dev.spec.layout.views(dev._executor.host_flat())
    for name, value in ref.params.items():
        assert_tensor_close(dev_params[name], value, f"{combination} {name}", rtol=PARAM_RTOL)
    assert_tensor_close(dev._executor.host_moments()[1], ref._executor.host_moments()[1],
                        f"{combination} adam v", rtol=PARAM_RTOL)
    replayed = make("emulated", prior, execution="graph")
    replayed._executor.steps_per_graph = 3
    h_graph = replayed.fit(TRAIN, VAL, epochs=2, batch_size=5, **options)
    assert h_graph["train_loss"] == h_dev["train_loss"]
    assert h_graph["train_kl"] == h_dev["train_kl"]
    assert same_bits(state(replayed), state(dev)), f"{combination}: graph and eager differ"


@pytest.mark.parametrize("prior", ["normal", "mog", "vamp"])
def test_loss_and_every_gradient_match_the_reference(prior):
    """One forward-backward pass with given noise (VAE.loss_and_grads): the ELBO, with the
    Monte-Carlo KL for the learnable priors, and the gradient of every parameter --
    the pseudo-inputs' and the prior's own included."""
    ref, dev = make("cpu", prior, hidden=(7, 4)), make("emulated", prior, hidden=(7, 4))
    flat = ref._executor.host_flat()
    flat += np.random.default_rng(1).normal(0, 0.2, flat.shape).astype(np.float32)
    for model in (ref, dev):
        model._executor.load_flat(flat)
    x, eps = binary(7, seed=2), philox.normal(9, 4, 7, Z)
    loss_ref, grads_ref = ref.loss_and_grads(x, eps)
    loss_dev, grads_dev = dev.loss_and_grads(x, eps)
    assert loss_dev == pytest.approx(loss_ref, rel=STEP_RTOL)
    for name in grads_ref:
        assert_tensor_close(grads_dev[name], grads_ref[name], f"{prior} d{name}")
    assert set(grads_ref) >= {f"prior.{n}" for n in ref.spec.prior.param_shapes()}


# ------------------------------------------------------------------ graphs, bits, resume
def test_schedule_changes_never_recapture_with_learnable_priors_and_iwae(monkeypatch):
    """Graph mode, 5 steps an epoch in graphs of 3 (+ 2): the first epoch captures two graphs,
    later epochs and a fit call with a new learning rate, KL warm-up and cosine length
    capture nothing; another objective (a new plan) captures once more."""
    captures = []
    real_capture = graph.capture
    monkeypatch.setattr(graph, "capture",
                        lambda *a, **k: captures.append(a[1]) or real_capture(*a, **k))
    for prior, first, changed in (
            ("mog", WARM_UP, dict(WARM_UP, lr=3e-3, kl_weight=0.5, kl_warmup_steps=9)),
            ("vamp", COMBINATIONS["vamp-iwae"][1], dict(COMBINATIONS["vamp-iwae"][1], lr=2e-3,
                                                        lr_decay_steps=40, clip_norm=None))):
        captures.clear()
        model = make("emulated", prior, execution="graph")
        model._executor.steps_per_graph = 3
        model.fit(TRAIN, epochs=2, batch_size=5, **first)
        model.fit(TRAIN.copy(), epochs=2, batch_size=5, **changed)
        assert captures == [3, 2], f"{prior}: {captures}"
    model.fit(TRAIN, epochs=1, batch_size=5, objective="elbo")
    assert captures == [3, 2, 3, 2], "a new objective is a new plan: captured once"


@pytest.mark.parametrize("combination", ["mog-iwae", "vamp-elbo", "normal-free-bits"])
def test_two_runs_with_one_seed_are_bitwise_identical(combination):
    prior, options = COMBINATIONS[combination]
    runs = []
    for _ in range(2):
        model = make("emulated", prior)
        runs.append((model.fit(TRAIN, epochs=2, batch_size=5, binarize=True, **options), state(model)))
    assert runs[0][0]["train_loss"] == runs[1][0]["train_loss"]
    assert same_bits(runs[0][1], runs[1][1])


@pytest.mark.parametrize("combination, prior_init", [("mog-elbo", "random"),
                                                     ("vamp-iwae", "data"), ("vamp-elbo", "data")])
def test_checkpoint_and_resume_are_exact(tmp_path, combination, prior_init):
    """Two epochs in one go, or one epoch, a checkpoint, a fresh process's load and one
    more: the same bits (parameters, moments) and the same history, on the emulator.  The
    data-initialised VampPrior takes its pseudo-inputs from the first fit alone."""
    prior, options = COMBINATIONS[combination]
    kw = dict(prior_init=prior_init) if prior == "vamp" else {}
    straight = make("emulated", prior, **kw)
    straight.fit(TRAIN, VAL, epochs=2, batch_size=5, **options)
    first = make("emulated", prior, **kw)
    first.fit(TRAIN, VAL, epochs=1, batch_size=5, checkpoint=tmp_path / "ck.safetensors",
              **options)
    resumed = cupyvae.load(tmp_path / "ck.safetensors", device="emulated")
    resumed.fit(TRAIN, VAL, epochs=1, batch_size=5, **options)
    assert same_bits(state(resumed), state(straight))
    assert resumed.history["train_loss"] == straight.history["train_loss"]
    assert resumed.history["train_recon"] == straight.history["train_recon"]
    if prior_init == "data":   # the pseudo-inputs start at training examples (+ 0.01 noise)
        start = make("cpu", prior, **kw)
        start._init_prior_from_data(TRAIN)
        w = start.params["prior.pseudo_inputs"]
        assert np.abs(w[:, None, :] - TRAIN[None]).max(axis=2).min(axis=1).max() < 0.05


# ------------------------------------------------------------------ hostile priors
def test_mixture_components_far_apart_and_with_extreme_variances():
    """A mixture with means 1e3 apart and log-variances -30 and +30: the training pass on
    the emulator is finite and equals the NumPy one (loss and every gradient), and a few
    Adam steps follow it."""
    ref, dev = make("cpu", "mog"), make("emulated", "mog")
    flat = ref._executor.host_flat()
    params = ref.spec.layout.views(flat)
    params["prior.components"][...] = [[0.0, 0.5, -30.0, -30.0],
                                       [1e3, -1e3, 30.0, 30.0],
                                       [-1e3, 0.2, 0.0, -30.0]]
    params["prior.logits"][...] = [0.0, 2.0, -1.0]
    for model in (ref, dev):
        model._executor.load_flat(flat)
    x, eps = binary(9, seed=4), philox.normal(2, 0, 9, Z)
    loss_ref, grads_ref = ref.loss_and_grads(x, eps)
    loss_dev, grads_dev = dev.loss_and_grads(x, eps)
    assert np.isfinite(loss_dev) and loss_dev == pytest.approx(loss_ref, rel=STEP_RTOL)
    for name in grads_ref:
        assert_tensor_close(grads_dev[name], grads_ref[name], f"hostile mixture d{name}")
    h_ref = ref.fit(TRAIN, epochs=1, batch_size=5)
    h_dev = dev.fit(TRAIN, epochs=1, batch_size=5)
    np.testing.assert_allclose(h_dev["train_loss"], h_ref["train_loss"], rtol=STEP_RTOL)
    assert np.isfinite(dev._executor.host_flat()).all()


def test_vamp_prior_with_all_pseudo_inputs_equal():
    """Identical pseudo-inputs are identical components: every one gets the same gradient,
    bit for bit, and the pass equals the NumPy one."""
    ref, dev = make("cpu", "vamp"), make("emulated", "vamp")
    flat = ref._executor.host_flat()
    ref.spec.layout.views(flat)["prior.pseudo_inputs"][...] = [0.3, 0.9, 0.5, 0.0, 0.7, 0.25]
    for model in (ref, dev):
        model._executor.load_flat(flat)
    x, eps = binary(6, seed=5), philox.normal(3, 1, 6, Z)
    loss_ref, grads_ref = ref.loss_and_grads(x, eps)
    loss_dev, grads_dev = dev.loss_and_grads(x, eps)
    assert loss_dev == pytest.approx(loss_ref, rel=STEP_RTOL)
    for name in grads_ref:
        assert_tensor_close(grads_dev[name], grads_ref[name], f"equal pseudo-inputs d{name}")
    dw = grads_dev["prior.pseudo_inputs"]
    np.testing.assert_array_equal(dw, np.repeat(dw[:1], K, axis=0))
    assert np.abs(dw).max() > 0


# ------------------------------------------------------------------ inference
@pytest.mark.parametrize("prior", ["normal", "mog", "vamp"])
def test_inference_with_each_prior_matches_the_reference(prior, monkeypatch):
    """loss (the ELBO with the prior's KL), sample (drawn where the prior says) and the
    device log-likelihood in example groups and sample chunks (5 rows at a time: groups
    of 1 example, 2 + 2 + 1 samples of 5) -- against the NumPy path, which chunks the
    same way; progress counts examples."""
    ref, dev = make("cpu", prior), make("emulated", prior)
    ref.fit(TRAIN, epochs=1, batch_size=5, **COMBINATIONS[f"{prior}-elbo"][1])
    dev._executor.load_flat(ref._executor.host_flat())
    assert dev.loss(VAL) == pytest.approx(ref.loss(VAL), rel=STEP_RTOL)
    assert_tensor_close(dev.sample(4), ref.sample(4), f"{prior} sample")
    want = ref.log_likelihood(VAL, n_samples=5)
    for rows in (2, 5, 12):
        monkeypatch.setattr(dev._executor, "importance_rows", rows)
        done = []
        got = dev.log_likelihood(VAL, n_samples=5, progress=done.append)
        # float32 log q on the device, float64 on the host: |log q| ~ 3 here.
        np.testing.assert_allclose(got, want, rtol=STEP_RTOL, err_msg=f"rows {rows}")
        assert got.dtype == np.float64 and sum(done) == len(VAL)
        assert len(done) == -(-len(VAL) // max(1, rows // 5))


def test_the_device_log_likelihood_reads_one_float64_per_example(monkeypatch):
    model = make("emulated", "vamp")
    downloads = []
    real_to_host = kernel_executor.to_host
    monkeypatch.setattr(kernel_executor, "to_host",
                        lambda a: downloads.append((np.shape(a), a.dtype)) or real_to_host(a))
    monkeypatch.setattr(model._executor, "importance_rows", 8)
    model.log_likelihood(X[:11], n_samples=3)
    assert downloads == [((11,), np.float64)]


@pytest.mark.parametrize("mu, lv", [(0.0, -90.0), (3.0, -34.0)])
def test_the_device_log_likelihood_of_narrow_posteriors(mu, lv):
    """log q from the noise on the device too: finite and within float32 rounding of the
    float64 value.  The kernels form log q in float32: |log q| ~ |lv| Z / 2 ~ 90 carries
    ~1e-5 absolute rounding (ulp(90) = 7.6e-6), and log w = log p - log q - nll adds a
    few more ulps before the float64 log-sum-exp."""
    ref = make("cpu", hidden=())
    ref.params["encoder.0.weight"][...] = 0
    ref.params["encoder.0.bias"][...] = [mu] * Z + [lv] * Z
    ref.params["decoder.0.bias"][...] = np.linspace(-1, 1, 6)
    dev = make("emulated", hidden=())
    dev._executor.load_flat(ref.flat_params)
    got, want = dev.log_likelihood(X[:4], 8), ref.log_likelihood(X[:4], 8)
    assert np.isfinite(got).all() and (got <= 0).all()
    ulp = np.spacing(np.float32(abs(lv) * Z / 2))
    np.testing.assert_allclose(got, want, rtol=0, atol=8 * ulp)


# ------------------------------------------------------------------ what is refused
if "test-normal-closed-form-only" not in PRIORS:
    @register_prior("test-normal-closed-form-only")
    class _ClosedFormOnly(NormalPrior):
        """N(0, I) with the closed-form KL pair (NumPy and kernel) but no prior fragment:
        the ELBO runs on kernels, IWAE (which needs log p(z) on the device) cannot."""

    register_kl("gaussian", "test-normal-closed-form-only")(kl_gaussian_normal)
    KL_FRAGMENTS.register(kl_key("gaussian", "test-normal-closed-form-only"))(GaussianNormalKl)


def test_an_objective_the_fragments_cannot_build_is_refused_before_any_work():
    model = make("emulated", "test-normal-closed-form-only")
    model.fit(TRAIN, epochs=1, batch_size=5)                        # the ELBO: closed form
    step = model.optimizer.step_count
    with pytest.raises(ValueError, match="device 'emulated' cannot train this: objective "
                                         "'iwae'.*'test-normal-closed-form-only'.*device='cpu'"):
        model.fit(TRAIN, epochs=1, batch_size=5, objective="iwae", iw_samples=2)
    assert model.optimizer.step_count == step
    make("cpu", "test-normal-closed-form-only").fit(TRAIN, epochs=1, batch_size=5,
                                                    objective="iwae", iw_samples=2)


def test_the_executor_names_no_distribution_and_no_objective():
    """The plan is composed from registered fragments: no registered name appears as a
    string in the kernel executor's source."""
    source = Path(kernel_executor.__file__).read_text()
    names = set(POSTERIORS.names()) | set(PRIORS.names()) | set(OBJECTIVES.names()) \
        | set(KL_PAIRS.names())
    quoted = {name for name in names if re.search(rf"[\"']{re.escape(name)}[\"']", source)}
    assert not quoted, f"cupyvae/cuda/executor.py names {sorted(quoted)}"


# ------------------------------------------------------------------ GPU
@pytest.mark.gpu
@pytest.mark.skipif(not cuda_available(), reason="no CUDA GPU visible to CuPy")
@pytest.mark.parametrize("execution", ["eager", "graph"])
@pytest.mark.parametrize("combination", COMBINATIONS)
def test_an_epoch_on_the_gpu_tracks_the_emulator(combination, execution):
    """One epoch of each combination on CUDA against the emulator (same kernels; the GPU's
    expf/logf differ by an ulp and flush sub-2^-126 responsibilities, see
    tests/test_kernels_mixture_prior.py), then the device log-likelihood."""
    prior, options = COMBINATIONS[combination]
    emulated, gpu = make("emulated", prior), make("cuda", prior, execution=execution)
    h_emu = emulated.fit(TRAIN, VAL, epochs=1, batch_size=5, **options)
    h_gpu = gpu.fit(TRAIN, VAL, epochs=1, batch_size=5, **options)
    for column in ("train_loss", "train_recon", "train_kl", "val_loss"):
        np.testing.assert_allclose(h_gpu[column], h_emu[column], rtol=STEP_RTOL, atol=1e-6,
                                   err_msg=f"{combination} {column}")
    gpu_params = gpu.spec.layout.views(gpu._executor.host_flat())
    for name, value in emulated.spec.layout.views(emulated._executor.host_flat()).items():
        assert_tensor_close(gpu_params[name], value, f"cuda {combination} {name}", rtol=PARAM_RTOL)
    np.testing.assert_allclose(gpu.log_likelihood(VAL, 7), emulated.log_likelihood(VAL, 7),
                               rtol=STEP_RTOL)
