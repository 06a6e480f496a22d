"""Learnable priors, measured (issue #8): the standard normal prior against a mixture of
Gaussians (`mog`, K = 10) and the VampPrior (`vamp`, K = 500 pseudo-inputs as in Tomczak &
Welling 2018).  Not a test: it writes JSON.

The same model for every prior: 784-200-20 (ReLU), Gaussian posterior, Bernoulli likelihood,
the library's default initialisation, seed 0, Adam 1e-3, batch 100, trained on Fashion-MNIST
dynamically binarized (a fresh Bernoulli draw of every image at every step, `binarize=True`).  The test
set is binarized once with a fixed draw.  After training, for each prior and device:

  * the test log-likelihood, importance sampled with --iw-samples draws from q(z|x) per
    image (VAE.log_likelihood; Burda et al. 2016, eq. 8), nats per image, with its standard
    error over the images.  The VampPrior paper evaluates with 5000 samples; the default
    here, 1000 on all 10000 test images, is what a 2-core CPU does in a few minutes per prior
    (about 10^7 decoder rows);
  * the test negative ELBO, its KL term and the active units (VAE.elbo_terms);
  * the median seconds per training epoch on each device: "cpu", and "cuda" where CuPy sees a
    GPU (--devices chooses).  On one device the priors' epochs alternate (epoch 1 of every
    prior, then epoch 2, ...), so a machine whose speed drifts slows every prior alike;
    `seconds` is fit's own per-epoch clock (training steps only, no validation pass).

The CPU cost of a learnable prior against the 1.3x goal: `seconds_vs_normal` is the prior's
median seconds per epoch divided by the normal prior's, on the same device, from the
alternating epochs above.  Next to it, `gemm_flops_vs_normal` predicts the ratio from the
matrix products alone (gemm_flops_per_step, counted from the model's layer shapes), since
on the NumPy path a step's time is almost all GEMMs: the VampPrior runs the encoder on its
K pseudo-inputs at every step -- forward, weight gradient, and the input gradient into the
pseudo-inputs -- 3 K x 784 x 200 products against the normal step's 5 B x 784 x 200
(encoder forward and weight gradient, decoder forward, weight and input gradient).  With
K = 500 and B = 100 that is (5 + 15) / 5 = 4x the FLOPs: no NumPy implementation of the
paper's method meets 1.3x at K = 500; K <= 50 would (K = 50: 1.3x).  The mixture prior adds
only B x K x Z terms (about 1.0x).

    python benchmarks/bench_priors.py                      # full settings (see --help)
    python benchmarks/bench_priors.py --quick              # a smoke run of a minute or two
    python benchmarks/bench_priors.py --epochs 100 --iw-samples 5000 --devices cuda

Results go to benchmarks/results/priors.json (--quick: priors-quick.json, a smoke run that
is not a measurement); `python benchmarks/make_readme_table.py` turns them into the README's
table.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

import cupyvae
from cupyvae.datasets import load_dataset
from cupyvae.executors import binarize_batch, cuda_available
from cupyvae.files import write_json
from cupyvae.initialization import DEFAULT_INITIALIZATION
from cupyvae.training import TrainingOptions

HIDDEN, LATENT, BATCH, LR, SEED = 200, 20, 100, 1e-3, 0
PRIORS = ("normal", "mog", "vamp")
FULL = dict(epochs=50, iw_samples=1000, train_examples=60000, test_examples=10000)
QUICK = dict(epochs=2, iw_samples=10, train_examples=2000, test_examples=200)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int,
                    help=f"training epochs per prior; default {FULL['epochs']}")
    ap.add_argument("--iw-samples", type=int,
                    help="importance samples per test image for log p(x); "
                         f"default {FULL['iw_samples']}")
    ap.add_argument("--train-examples", type=int, help="first N training images; default all 60000")
    ap.add_argument("--test-examples", type=int, help="first N test images; default all 10000")
    ap.add_argument("--priors", default=",".join(PRIORS),
                    help="comma-separated, from " + ", ".join(PRIORS))
    ap.add_argument("--mog-components", type=int, default=10)
    ap.add_argument("--vamp-components", type=int, default=500)
    ap.add_argument("--vamp-init", choices=["random", "data"], default="random",
                    help="the paper's default is random, N(0.05, 0.01^2)")
    ap.add_argument("--devices", default=None,
                    help="comma-separated; default: cpu, and cuda where CuPy sees a GPU")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run; unset options default to "
                         + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    ap.add_argument("--out", default=None, help="default benchmarks/results/priors[-quick].json")
    args = ap.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.devices is None:
        args.devices = "cpu,cuda" if cuda_available() else "cpu"
    args.priors, args.devices = args.priors.split(","), args.devices.split(",")
    unknown = sorted(set(args.priors) - set(PRIORS))
    if unknown:
        ap.error(f"unknown priors {unknown}; choose from {', '.join(PRIORS)}")
    args.out = args.out or f"benchmarks/results/priors{'-quick' if args.quick else ''}.json"
    return args


def prior_options(prior: str, args) -> dict:
    return {"normal": {},
            "mog": {"prior_components": args.mog_components},
            "vamp": {"prior_components": args.vamp_components, "prior_init": args.vamp_init}}[prior]


def gemm_flops_per_step(model, batch: int) -> int:
    """Multiply-add FLOPs (2 per multiply-add) of one training step's matrix products: every
    layer's forward, weight gradient and input gradient on the batch (no input gradient for
    the first encoder layer: the data are not trained), plus, for a prior with pseudo-inputs,
    the encoder's forward, weight gradient and input gradient on its K rows."""
    shapes = {name: value.shape for name, value in model.params.items() if name.endswith(".weight")}
    encoder = [shape for name, shape in shapes.items() if name.startswith("encoder.")]
    decoder = [shape for name, shape in shapes.items() if name.startswith("decoder.")]

    def products(rows, layers, first_dx):
        return sum(rows * d_in * d_out * (3 if i > 0 or first_dx else 2)
                   for i, (d_in, d_out) in enumerate(layers))

    total = products(batch, encoder, False) + products(batch, decoder, True)
    pseudo = model.pseudo_inputs()
    if pseudo is not None:
        total += products(len(pseudo), encoder, True)
    return 2 * total


def warm_up(models: dict, x_train, args) -> None:
    """Two steps of a throwaway copy of each model, so that the first timed epoch pays no
    one-time costs (BLAS threads, kernel compilation, allocator pools)."""
    for name, model in models.items():
        copy = cupyvae.VAE((28, 28), latent_dim=LATENT, hidden=(HIDDEN,), prior=name,
                           device=model.device, seed=SEED + 1, **prior_options(name, args))
        copy.fit(x_train[:2 * BATCH], options=training_options())


def train_alternating(models: dict, x_train, epochs: int) -> dict:
    """Epoch e of every model back to back before epoch e + 1; fit's per-epoch seconds."""
    seconds = {name: [] for name in models}
    for epoch in range(1, epochs + 1):
        for name, model in models.items():
            history = model.fit(x_train, options=training_options())
            seconds[name].append(history["seconds"][0])
            print(f"  epoch {epoch}/{epochs} {name}: train loss {history['train_loss'][0]:.2f}, "
                  f"{history['seconds'][0]:.2f} s", flush=True)
    return seconds


def evaluate(model, x_test, iw_samples: int) -> tuple[dict, np.ndarray]:
    """(the row's test metrics, log p(x) per test image)."""
    terms = model.elbo_terms(x_test)
    start = time.perf_counter()
    log_px = model.log_likelihood(x_test, n_samples=iw_samples)
    return {"test_log_likelihood": float(np.mean(log_px)),
            "test_log_likelihood_stderr": float(np.std(log_px) / np.sqrt(len(log_px))),
            "iw_samples": iw_samples, "log_likelihood_seconds": time.perf_counter() - start,
            "test_negative_elbo": terms["negative_elbo"], "test_kl": terms["kl"],
            "test_reconstruction": terms["reconstruction"],
            "active_units": terms["active_units"]}, log_px


def paired_difference(log_px: np.ndarray, baseline: np.ndarray | None) -> dict:
    """Mean log p(x) gain over the normal prior on the same test images, with the standard
    error of the per-image differences (much smaller than either mean's: the images' own
    spread cancels)."""
    if baseline is None:
        return {"log_likelihood_vs_normal": None, "log_likelihood_vs_normal_stderr": None}
    gain = log_px - baseline
    return {"log_likelihood_vs_normal": float(np.mean(gain)),
            "log_likelihood_vs_normal_stderr": float(np.std(gain) / np.sqrt(len(gain)))}


def device_rows(device: str, args, x_train, x_test) -> list[dict]:
    models, refused = {}, {}
    for prior in args.priors:
        try:
            model = cupyvae.VAE((28, 28), latent_dim=LATENT, hidden=(HIDDEN,), prior=prior,
                                device=device, seed=SEED, **prior_options(prior, args))
            model.validate_training_options(training_options())
            models[prior] = model
        except (ValueError, RuntimeError) as exc:       # e.g. a device that cannot train it yet
            refused[prior] = f"refused: {exc}"
            print(f"[{device}] {prior}: {refused[prior]}", flush=True)
    print(f"[{device}] training {', '.join(models)} for {args.epochs} epochs, alternating",
          flush=True)
    warm_up(models, x_train, args)
    load_before = os.getloadavg()[0]
    seconds = train_alternating(models, x_train, args.epochs) if models else {}
    load_after = os.getloadavg()[0]
    normal = float(np.median(seconds["normal"])) if "normal" in seconds else None
    normal_flops = gemm_flops_per_step(models["normal"], BATCH) if "normal" in models else None
    rows, baseline = [], None
    for prior in sorted(args.priors, key=lambda name: name != "normal"):   # the baseline first
        row = {"device": device, "prior": prior,
               "components": prior_options(prior, args).get("prior_components"),
               "prior_init": prior_options(prior, args).get("prior_init", "random")}
        if prior in refused:
            rows.append({**row, "status": refused[prior]})
            continue
        model = models[prior]
        median = float(np.median(seconds[prior]))
        flops = gemm_flops_per_step(model, BATCH)
        row.update(status="ok", epochs=args.epochs, seconds_per_epoch=median,
                   epoch_seconds=seconds[prior],
                   seconds_vs_normal=None if normal is None else median / normal,
                   gemm_flops_per_step=flops,
                   gemm_flops_vs_normal=None if normal_flops is None else flops / normal_flops,
                   load_average_1min=[load_before, load_after],
                   final_train_loss=model.history["train_loss"][-1])
        print(f"[{device}] {prior}: evaluating ({args.iw_samples} importance samples x "
              f"{len(x_test)} test images)", flush=True)
        metrics, log_px = evaluate(model, x_test, args.iw_samples)
        baseline = log_px if prior == "normal" else baseline
        row.update(metrics, **paired_difference(log_px, baseline))
        print(f"[{device}] {prior}: log p(x) {row['test_log_likelihood']:.2f} nats "
              f"(+-{row['test_log_likelihood_stderr']:.2f}), -ELBO {row['test_negative_elbo']:.2f}, "
              f"active units {row['active_units']}/{LATENT}, {median:.2f} s/epoch"
              + ("" if row["seconds_vs_normal"] is None else
                 f" = {row['seconds_vs_normal']:.2f}x normal "
                 f"(GEMM FLOPs {row['gemm_flops_vs_normal']:.2f}x)"),
              flush=True)
        rows.append(row)
    return rows


def training_options() -> TrainingOptions:
    """What train_alternating's fit calls train with (checked against each model first)."""
    return TrainingOptions(epochs=1, batch_size=BATCH, lr=LR, binarize=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    data = load_dataset("fashion-mnist")
    x_train = data.x_train.reshape(len(data.x_train), -1)[:args.train_examples]
    x_test = binarize_batch(data.x_test.reshape(len(data.x_test), -1)[:args.test_examples], SEED, 0)
    rows = [row for device in args.devices for row in device_rows(device, args, x_train, x_test)]
    result = {"benchmark": "priors", "date": date.today().isoformat(), "quick": args.quick,
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "python": platform.python_version(), "numpy": np.__version__,
              "cupyvae": cupyvae.__version__, "devices": args.devices,
              "dataset": f"fashion-mnist, dynamically binarized ({len(x_train)} train, "
                         f"{len(x_test)} test images binarized once)",
              "model": f"784-{HIDDEN}-{LATENT} relu, gaussian posterior, bernoulli likelihood, "
                       f"{DEFAULT_INITIALIZATION} initialisation",
              "batch": BATCH, "lr": LR, "epochs": args.epochs, "iw_samples": args.iw_samples,
              "command": " ".join(["python benchmarks/bench_priors.py",
                                  *(sys.argv[1:] if argv is None else argv)]),
              "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
