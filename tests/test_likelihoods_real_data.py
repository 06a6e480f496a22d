"""Each new likelihood trains a 784-200-2 VAE on real Fashion-MNIST images (a subset, three
epochs) to a validation loss below a threshold derived from two reference models.

The threshold.  Both references are independent-pixel models of the same family, fitted to
the same training images, and their negative log-likelihoods on the validation images are
exact (no bound):
  * the z-blind model: one distribution per pixel for all images (maximum likelihood, see
    fit_pixels).  The decoder's biases alone can express it, so a VAE that learned nothing
    in its code ends at or above it (its KL term is >= 0);
  * the class mixture: ten such models, one per class, mixed with equal weights.  It knows
    the class, log 10 = 2.3 nats of information about each image.
A VAE's validation loss is its mean negative ELBO, an upper bound on its own negative
log-likelihood.  It must beat the z-blind model by at least a quarter of what the class
label buys that model:  threshold = blind - (blind - mixture) / 4.  On the grey levels the
mixture's gain is 85 (bernoulli) to 940 (continuous Bernoulli) nats, so the required margin
is tens to hundreds of nats -- unreachable without a working likelihood gradient and a code
that carries information, while a correct model passes it within three epochs with a wide
margin (measured: the VAE's loss lies 0.5 to 2 times the mixture's gain below the blind
model).  A full class's worth is not required: with a 2-D code and three epochs the
Gaussian and Laplace VAEs are still above the mixture, whose per-class scales are tight.

Data: the grey levels (x = k/255) for the continuous Bernoulli and the discretized
logistic; for Laplace and gaussian-real the same images standardised to zero mean and unit
variance (values in [-0.8, 2.0]): real-valued data, which gaussian-sigmoid would refuse.
"""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.special import logsumexp

import cupyvae
from cupyvae.distributions import LIKELIHOODS
from cupyvae.distributions import continuous_bernoulli as cb
from cupyvae.distributions import discretized_logistic as dl
from cupyvae.distributions.laplace import LOG_SCALE_BOUND as LAPLACE_BOUND
from cupyvae.distributions.gaussian_real import LOGVAR_BOUND

TRAIN, VAL = 10_000, 2_000
# Parameters are kept just inside the likelihoods' soft bounds (an arctanh of +-1 is inf).
INSIDE = 0.999


def fashion_mnist():
    datasets = pytest.importorskip("cupyvae.datasets")
    try:
        data = datasets.load_dataset("fashion-mnist", download=False)
    except datasets.DatasetError as exc:
        pytest.skip(f"Fashion-MNIST not installed ({exc}); .ci/run installs dataset-fashion-mnist")
    flat = lambda a, n: a[:n].reshape(n, -1).astype(np.float32)   # noqa: E731
    return flat(data.x_train, TRAIN), data.y_train[:TRAIN], flat(data.x_test, VAL)


def bounded_raw(value, bound):
    """The raw network output whose soft bound S tanh(raw / S) gives `value`."""
    return bound * np.arctanh(np.clip(value / bound, -INSIDE, INSIDE))


def cb_logits_with_mean(mean):
    """Maximum likelihood for the continuous Bernoulli (an exponential family in x): the
    logit whose mean is the data mean, by bisection (the mean increases with the logit)."""
    lo, hi = np.full_like(mean, -1e3), np.full_like(mean, 1e3)
    for _ in range(100):
        mid = (lo + hi) / 2
        below = cb.continuous_bernoulli_mean(mid) < mean
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return (lo + hi) / 2


def fit_pixels(name, x):
    """Raw parameters (raw_width,) of the independent-pixel model of x (n, D): maximum
    likelihood for the continuous Bernoulli (pixel means clipped to [1e-3, 1 - 1e-3], else
    a never-lit pixel has logit -inf), Laplace (median, mean absolute deviation) and the
    Gaussian (mean, variance); moments for the logistic (mean, s = sd sqrt(3) / pi, at least
    one bin).  Scales are clipped into the likelihoods' bounds."""
    x = x.astype(np.float64)
    mean = x.mean(0)
    if name == "continuous-bernoulli":
        return cb_logits_with_mean(np.clip(mean, 1e-3, 1 - 1e-3))
    if name == "discretized-logistic":
        s = np.maximum(x.std(0) * np.sqrt(3) / np.pi, 1 / 255)
        return np.concatenate([mean, bounded_raw(np.log(s), dl.LOG_SCALE_BOUND)])
    if name == "laplace":
        median = np.median(x, 0)
        b = np.maximum(np.abs(x - median).mean(0), 1e-12)
        return np.concatenate([median, bounded_raw(np.log(b), LAPLACE_BOUND)])
    if name == "gaussian-real":
        return np.concatenate([mean, bounded_raw(np.log(np.maximum(x.var(0), 1e-24)), LOGVAR_BOUND)])
    raise AssertionError(name)


def pixel_model_nll(name, raw, x):
    lik = LIKELIHOODS.get(name)(x.shape[1])
    return lik.nll(np.repeat(raw[None, :], len(x), axis=0), x.astype(np.float64), 1.0)[0]


def reference_losses(name, x_train, y_train, x_val):
    blind = pixel_model_nll(name, fit_pixels(name, x_train), x_val).mean()
    per_class = np.stack([pixel_model_nll(name, fit_pixels(name, x_train[y_train == c]), x_val)
                          for c in range(10)])
    mixture = -(logsumexp(-per_class, axis=0) - np.log(10)).mean()
    return blind, mixture


def standardised(x, reference):
    return ((x - reference.mean()) / reference.std()).astype(np.float32)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["continuous-bernoulli", "discretized-logistic", "laplace",
                                  "gaussian-real"])
def test_likelihood_learns_fashion_mnist(name):
    x_train, y_train, x_val = fashion_mnist()
    if name in ("laplace", "gaussian-real"):
        x_train, x_val = standardised(x_train, x_train), standardised(x_val, x_train)
    blind, mixture = reference_losses(name, x_train, y_train, x_val)
    assert mixture < blind, (name, blind, mixture)        # the class helps the pixel model
    model = cupyvae.VAE((28, 28), latent_dim=2, hidden=(200,), likelihood=name, seed=0)
    history = model.fit(x_train, x_val, epochs=3, batch_size=100, lr=1e-3)
    threshold = blind - (blind - mixture) / 4
    assert history["val_loss"][-1] < threshold, (name, history["val_loss"], blind, mixture)
    assert history["train_loss"][-1] < history["train_loss"][0]


def test_likelihood_benchmark_runs_end_to_end(tmp_path):
    """benchmarks/bench_likelihoods.py --quick, shrunk further: JSON and one picture each."""
    fashion_mnist()                      # skips without the dataset
    bench = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_likelihoods.py"
    done = subprocess.run([sys.executable, str(bench), "--quick", "--train-examples", "200",
                           "--test-examples", "20", "--iw-samples", "2", "--samples", "4",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "likelihoods-quick.json").read_text())
    assert [row["likelihood"] for row in result["rows"]] == ["bernoulli", "continuous-bernoulli",
                                                             "discretized-logistic"]
    assert result["iw_samples"] == 2 and result["test_examples"] == 20 and result["epochs"] == 1
    for row in result["rows"]:
        assert math.isfinite(row["test_log_likelihood_nats"]) and row["seconds_per_epoch"] > 0
        # bits/dim restate the nats: mass functions as -log2 P / D, the density on 255 x.
        correction = 0 if row["discrete"] else math.log2(255)
        assert row["test_log_likelihood_bits_per_dim"] == pytest.approx(
            -row["test_log_likelihood_nats"] / (784 * math.log(2)) + correction, rel=1e-9)
        assert (tmp_path / row["samples_picture"]).stat().st_size > 1000
