"""The kernel step plan against the NumPy reference, on the emulator (and on CUDA when present).

Every comparison is between float32 kernels and the float32 NumPy path from identical
parameters and identical Philox noise; the two differ only by summation order, FMA
contraction on the GPU and a few ulp of expf/logf, so after one step they agree to ~1e-7
relative and after a few dozen Adam steps to ~1e-5 (Adam divides by sqrt(v), which
amplifies the relative error of tiny gradients; measured here: ~3e-8 absolute after 12 steps).
"""
import numpy as np
import pytest

import cupyvae
from cupyvae import philox
from cupyvae.distributions.gaussian import NormalPrior
from cupyvae.distributions.base import LIKELIHOODS, PRIORS, register_prior

STEP_RTOL = 1e-5


def assert_tensor_close(got, want, name, rtol=STEP_RTOL):
    """|got - want| <= rtol * max(|want|_inf, 1e-3) per tensor, reporting where."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    err = np.abs(got - want)
    scale = max(float(np.abs(want).max(initial=0.0)), 1e-3)
    worst = np.unravel_index(int(err.argmax()), err.shape) if err.size else ()
    assert err.max(initial=0.0) <= rtol * scale, (
        f"{name}: max err {err.max():.3e} at {worst} (got {got[worst]:.8g}, want {want[worst]:.8g}), "
        f"scale {scale:.3g}")


def pair(backend, **kw):
    args = dict(data_shape=(5, 7), latent_dim=3, hidden=(9, 6), activation=("tanh", "relu"), seed=5)
    args.update(kw)
    return cupyvae.VAE(**args, device="cpu"), cupyvae.VAE(**args, device=backend)


def binary_data(n, shape=(5, 7), seed=0):
    return (np.random.default_rng(seed).random((n, *shape)) < 0.4).astype(np.float32)


def grid_data(n, shape=(5, 7), seed=1):
    """8-bit grey levels k/255: inside every likelihood's support (the discretized logistic's too)."""
    return (np.random.default_rng(seed).integers(0, 256, (n, *shape)) / 255).astype(np.float32)


@pytest.mark.parametrize("likelihood", LIKELIHOODS.names())
@pytest.mark.parametrize("activation", ["relu", "tanh", "softplus"])
def test_loss_and_every_gradient_match_the_reference(backend, likelihood, activation):
    ref, dev = pair(backend, likelihood=likelihood, activation=activation, hidden=(11, 4))
    x = grid_data(13)                                                      # 13: no tile multiple
    eps = philox.normal(9, 4, 13, 3)
    loss_ref, grads_ref = ref.loss_and_grads(x, eps)
    loss_dev, grads_dev = dev.loss_and_grads(x, eps)
    assert loss_dev == pytest.approx(loss_ref, rel=STEP_RTOL)
    for name in grads_ref:
        assert_tensor_close(grads_dev[name], grads_ref[name], f"{backend} d{name}")


@pytest.mark.parametrize("binarize", [False, True])
def test_one_training_step_updates_every_parameter_like_the_reference(backend, binarize):
    ref, dev = pair(backend)
    x = np.random.default_rng(2).random((10, 5, 7)).astype(np.float32)
    h_ref = ref.fit(x, epochs=1, batch_size=10, binarize=binarize)     # exactly one step
    h_dev = dev.fit(x, epochs=1, batch_size=10, binarize=binarize)
    assert dev.optimizer.step_count == ref.optimizer.step_count == 1
    assert h_dev["train_loss"][0] == pytest.approx(h_ref["train_loss"][0], rel=STEP_RTOL)
    dev_params = dev.spec.layout.views(dev._executor.host_flat())
    for name, value in ref.params.items():
        assert_tensor_close(dev_params[name], value, f"{backend} updated {name}")
    for name, got, want in zip(("adam m", "adam v"), dev._executor.host_moments(),
                               ref._executor.host_moments()):
        assert_tensor_close(got, want, name)


@pytest.mark.parametrize("likelihood", ["continuous-bernoulli", "discretized-logistic", "laplace",
                                        "gaussian-real"])
def test_training_with_each_likelihood_tracks_the_reference_step_for_step(backend, likelihood):
    """Four epochs of five steps: losses, validation losses, parameters and Adam moments."""
    ref, dev = pair(backend, likelihood=likelihood)
    x = grid_data(60, seed=7)
    h_ref = ref.fit(x[:50], x[50:], epochs=4, batch_size=10)
    h_dev = dev.fit(x[:50], x[50:], epochs=4, batch_size=10)
    np.testing.assert_allclose(h_dev["train_loss"], h_ref["train_loss"], rtol=STEP_RTOL)
    np.testing.assert_allclose(h_dev["val_loss"], h_ref["val_loss"], rtol=STEP_RTOL)
    assert h_ref["train_loss"][-1] < h_ref["train_loss"][0]
    dev_params = dev.spec.layout.views(dev._executor.host_flat())
    for name, value in ref.params.items():   # 20 Adam steps: see the module docstring
        assert_tensor_close(dev_params[name], value, f"{backend} {likelihood} {name}", rtol=1e-4)
    assert_tensor_close(dev._executor.host_moments()[1], ref._executor.host_moments()[1], "adam v",
                        rtol=1e-4)
    assert_tensor_close(dev.decode(ref.encode(x[:3])), ref.decode(ref.encode(x[:3])), "decode")


def test_training_on_real_data_tracks_the_reference_step_for_step(backend):
    """784-32-2 on 300 Fashion-MNIST images, batch 50, three epochs (18 steps)."""
    from cupyvae.datasets import DatasetError, load_dataset
    try:
        data = load_dataset("fashion-mnist", download=False)
        x = data.x_train[:300]
    except DatasetError:
        x = np.random.default_rng(3).random((300, 28, 28)).astype(np.float32)   # same shapes
    ref = cupyvae.VAE((28, 28), latent_dim=2, hidden=(32,), seed=1)
    dev = cupyvae.VAE((28, 28), latent_dim=2, hidden=(32,), seed=1, device=backend)
    h_ref = ref.fit(x[:250], x[250:], epochs=3, batch_size=50)
    h_dev = dev.fit(x[:250], x[250:], epochs=3, batch_size=50)
    np.testing.assert_allclose(h_dev["train_loss"], h_ref["train_loss"], rtol=STEP_RTOL)
    np.testing.assert_allclose(h_dev["val_loss"], h_ref["val_loss"], rtol=STEP_RTOL)
    assert h_ref["train_loss"][-1] < h_ref["train_loss"][0]
    # Parameters after 15 Adam steps: relative to each tensor's scale (see module docstring).
    dev_params = dev.spec.layout.views(dev._executor.host_flat())
    for name, value in ref.params.items():
        assert_tensor_close(dev_params[name], value, f"{backend} {name} after 15 steps", rtol=1e-4)


def test_inference_matches_the_reference(backend):
    ref, dev = pair(backend)
    x = binary_data(23)
    ref.fit(x, epochs=1, batch_size=5)
    dev._executor.load_flat(ref.flat_params)
    assert dev.loss(x) == pytest.approx(ref.loss(x), rel=STEP_RTOL)
    assert_tensor_close(dev.encode(x), ref.encode(x), "encode")
    assert_tensor_close(dev.encode(x, sample=True), ref.encode(x, sample=True), "encode(sample)")
    assert_tensor_close(dev.decode(ref.encode(x)), ref.decode(ref.encode(x)), "decode")
    assert_tensor_close(dev.sample(6), ref.sample(6), "sample")


def test_two_runs_with_one_seed_are_bitwise_identical(backend):
    x = binary_data(40)
    runs = []
    for _ in range(2):
        _, dev = pair(backend)
        dev.fit(x, epochs=2, batch_size=10, binarize=True)
        runs.append(dev._executor.host_flat())
    np.testing.assert_array_equal(runs[0], runs[1])


def test_checkpoints_move_between_devices(backend, tmp_path):
    _, dev = pair(backend)
    x = binary_data(20)
    dev.fit(x, epochs=1, batch_size=10, checkpoint=tmp_path / "ck.safetensors")
    on_cpu = cupyvae.load(tmp_path / "ck.safetensors", device="cpu")
    assert on_cpu.loss(x) == pytest.approx(dev.loss(x), rel=STEP_RTOL)
    back = cupyvae.load(tmp_path / "ck.safetensors", device=backend)
    np.testing.assert_array_equal(back._executor.host_flat(), dev._executor.host_flat())
    # Continuing on the other device picks up the Adam state from the checkpoint.
    on_cpu.fit(x, epochs=1, batch_size=10)
    back.fit(x, epochs=1, batch_size=10)
    assert_tensor_close(back._executor.host_flat(), on_cpu.flat_params, "resumed across devices")


if "test-normal-no-kl" not in PRIORS:
    @register_prior("test-normal-no-kl")
    class _NormalWithoutClosedForm(NormalPrior):
        """N(0, I) without a registered closed-form KL: forces the Monte-Carlo KL path."""


def test_models_without_kernels_are_refused_at_construction():
    with pytest.raises(ValueError, match="cannot run this model.*KL.*Use device='cpu'"):
        cupyvae.VAE((5, 7), prior="test-normal-no-kl", device="emulated")
    # ...while the NumPy path trains it with the Monte-Carlo KL.
    model = cupyvae.VAE((5, 7), prior="test-normal-no-kl", hidden=(8,))
    model.fit(binary_data(20), epochs=1, batch_size=10)


def test_graph_and_eager_execution_train_identically_through_the_api(backend):
    x = binary_data(30)
    runs = {}
    for execution in ("eager", "graph"):
        model = cupyvae.VAE((5, 7), latent_dim=3, hidden=(9,), seed=2, device=backend,
                            execution=execution)
        model.fit(x, epochs=2, batch_size=10)
        runs[execution] = model._executor.host_flat()
    np.testing.assert_array_equal(runs["graph"], runs["eager"])
    with pytest.raises(ValueError, match="eagerly only"):
        cupyvae.VAE((5, 7), execution="graph")


@pytest.mark.parametrize("device", ["cpu", "emulated"])
def test_an_epoch_past_the_uint32_step_counter_is_refused_alike_before_any_step(device):
    """The Adam step count keys Philox and the schedules as a uint32 on every device."""
    model = cupyvae.VAE(data_shape=(6,), latent_dim=2, hidden=(5,), seed=1, device=device)
    x = np.random.default_rng(0).random((8, 6)).astype(np.float32)
    model.fit(x[:4], epochs=1, batch_size=4)           # creates the optimizer
    model.optimizer.step_count = 2 ** 32 - 2           # room for one batch: 2 ** 32 - 1 fits
    model.fit(x[:4], epochs=1, batch_size=4)
    before = model.flat_params.copy()
    with pytest.raises(OverflowError, match=r"step counter would pass 2\^32 \(4294967295 \+ 2 steps"):
        model.fit(x, epochs=1, batch_size=4)
    assert model.optimizer.step_count == 2 ** 32 - 1
    np.testing.assert_array_equal(model.flat_params, before)
