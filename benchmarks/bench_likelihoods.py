"""Likelihoods for grey-level images: bernoulli, continuous-bernoulli and discretized-logistic
on Fashion-MNIST grey levels (x = k/255), one 784-200-20 VAE each (ReLU, Adam 1e-3, batch 100).

For each it reports the test log-likelihood, importance sampled with K posterior draws per
example (VAE.log_likelihood), in nats per example and in bits per dimension
(VAE.bits_per_dim: discretized-logistic and bernoulli are mass functions, reported as
-log2 P(x) / 784; the continuous Bernoulli is a density, converted to the 0..255 pixel
scale, log p(255 x) = log p(x) - 784 log 255.  The Bernoulli's "likelihood" of grey levels
is a cross-entropy, not a normalised likelihood: its number is not comparable to the other
two), the test negative ELBO, the median seconds per training epoch (with the machine's load
average, since timings on a shared machine are not comparable), and a picture of 64 samples
from the prior decoded to the likelihood's mean -- the continuous Bernoulli's true mean,
not lambda -- per likelihood, with two numbers to read next to it (image_statistics), also
for test images.  Writes JSON and the pictures.

    python benchmarks/bench_likelihoods.py [--epochs 10] [--iw-samples 100] [--quick]
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np

import cupyvae
from cupyvae.datasets import load_dataset
from cupyvae.files import write_json
from cupyvae.plots import image_grid

LIKELIHOODS = ("bernoulli", "continuous-bernoulli", "discretized-logistic")
HIDDEN, LATENT, BATCH, LR = 200, 20, 100, 1e-3
FULL = dict(epochs=10, iw_samples=100, train_examples=60000, test_examples=10000)
QUICK = dict(epochs=1, iw_samples=5, train_examples=3000, test_examples=300)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, help=f"default {FULL['epochs']}")
    ap.add_argument("--iw-samples", type=int,
                    help=f"importance samples per test example for log p(x); default {FULL['iw_samples']}")
    ap.add_argument("--train-examples", type=int, help="default: all 60000")
    ap.add_argument("--test-examples", type=int, help="default: all 10000")
    ap.add_argument("--samples", type=int, default=64, help="images per samples picture")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--likelihoods", default=",".join(LIKELIHOODS))
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run; unset options default to "
                         + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    ap.add_argument("--out", default="benchmarks/results",
                    help="folder for likelihoods.json and likelihoods-samples-<name>.png")
    args = ap.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def image_statistics(images: np.ndarray) -> dict:
    """Two plain numbers for "sharper, less grey" (Loaiza-Ganem & Cunningham's claim about
    continuous-Bernoulli samples), to read next to the pictures: the fraction of pixels in
    the mid-grey band [0.25, 0.75], and the mean absolute difference between neighbouring
    pixels (larger = sharper edges)."""
    images = np.asarray(images, np.float64).reshape(len(images), 28, 28)
    steps = np.concatenate([np.abs(np.diff(images, axis=1)).reshape(len(images), -1),
                            np.abs(np.diff(images, axis=2)).reshape(len(images), -1)], axis=1)
    return {"mid_grey_fraction": float(np.mean((images >= 0.25) & (images <= 0.75))),
            "mean_abs_neighbour_difference": float(steps.mean())}


def train_and_evaluate(name: str, x_train, x_test, args, out: Path) -> dict:
    model = cupyvae.VAE((28, 28), latent_dim=LATENT, hidden=(HIDDEN,), likelihood=name,
                        device=args.device, seed=0)
    load_before = os.getloadavg()
    history = model.fit(x_train, epochs=args.epochs, batch_size=BATCH, lr=LR)
    load_after = os.getloadavg()
    start = time.perf_counter()
    log_px = model.log_likelihood(x_test, n_samples=args.iw_samples)
    iw_seconds = time.perf_counter() - start
    negative_elbo = model.loss(x_test)
    picture = out / f"likelihoods-samples-{name}.png"
    drawn = model.sample(args.samples)
    image_grid(drawn, picture, data_shape=(28, 28),
               title=f"{name}: {args.samples} samples, decoded to the likelihood mean\n"
                     f"784-{HIDDEN}-{LATENT}, {args.epochs} epochs on Fashion-MNIST")
    row = {
        "likelihood": name,
        "discrete": model.spec.likelihood.discrete,
        "bits_per_dim_basis": model.bits_per_dim_basis(x_test),
        "test_log_likelihood_nats": float(np.mean(log_px)),
        "test_log_likelihood_bits_per_dim": float(np.mean(model.bits_per_dim(log_px, x_test))),
        "test_negative_elbo_nats": negative_elbo,
        "test_negative_elbo_bits_per_dim": float(model.bits_per_dim(-negative_elbo, x_test)),
        "seconds_per_epoch": float(np.median(history["seconds"])),
        "epoch_seconds": history["seconds"],
        "load_average_1min": [load_before[0], load_after[0]],
        "importance_sampling_seconds": iw_seconds,
        "final_train_loss": history["train_loss"][-1],
        "samples_picture": picture.name,
        "samples_statistics": image_statistics(drawn),
    }
    print(f"{name}: log p(x) {row['test_log_likelihood_nats']:.2f} nats = "
          f"{row['test_log_likelihood_bits_per_dim']:.4f} bits/dim (K={args.iw_samples}), "
          f"-ELBO {negative_elbo:.2f}, {row['seconds_per_epoch']:.2f} s/epoch "
          f"(load {load_before[0]:.1f}-{load_after[0]:.1f}); wrote {picture}", flush=True)
    return row


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset("fashion-mnist")
    x_train = data.x_train[:args.train_examples].reshape(-1, 784)
    x_test = data.x_test[:args.test_examples].reshape(-1, 784)
    rows = [train_and_evaluate(name, x_train, x_test, args, out)
            for name in args.likelihoods.split(",")]
    result = {"benchmark": "likelihoods", "date": date.today().isoformat(),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "numpy": np.__version__, "cupyvae": cupyvae.__version__, "device": args.device,
              "dataset": "fashion-mnist grey levels (x = k/255)",
              "model": f"784-{HIDDEN}-{LATENT}, relu, gaussian posterior, normal prior",
              "batch": BATCH, "lr": LR, "epochs": args.epochs,
              "train_examples": len(x_train), "test_examples": len(x_test),
              "iw_samples": args.iw_samples, "quick": args.quick,
              "test_images_statistics": image_statistics(x_test[:args.samples]), "rows": rows}
    path = out / ("likelihoods-quick.json" if args.quick else "likelihoods.json")
    write_json(path, result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
