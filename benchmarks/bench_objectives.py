"""Training objectives and initialisations, measured (issue #9).  Not a test: it writes JSON.

Part "objectives" (the IWAE paper's one-stochastic-layer architecture, Burda, Grosse &
Salakhutdinov 2016, section 5): Fashion-MNIST dynamically binarized, 784-200-200-50 tanh,
Bernoulli likelihood, batch 100, Adam, the layer initialisation --init (default: the
library's); the ELBO against IWAE with k = 5 and k = 50.  For each: the test log-likelihood
(importance sampled, VAE.log_likelihood with --ll-samples samples; the paper uses 5000), the
test negative ELBO, the active units (Burda et al., section 5.2) and the median seconds per
training epoch (training only: the test metrics are
computed once, after the last epoch).  The test set is binarized once with a fixed draw.

Part "init": Fashion-MNIST (grey levels, not binarized), 784-200-2 ReLU, batch 100, Adam
1e-3; the glorot and pytorch initialisations (cupyvae.initialization) over several seeds,
reporting the validation (test split) negative ELBO after each epoch listed in --init-epochs
(one run per seed and scheme: the loss after 5 epochs of a 50-epoch run is the 5-epoch run's,
since nothing depends on the total).

    python benchmarks/bench_objectives.py                         # both parts, full settings
    python benchmarks/bench_objectives.py --part init --seeds 4   # the initialisation table
    python benchmarks/bench_objectives.py --quick                 # a minute-long smoke run

Full settings on the CPU: 50 epochs per objective, the log-likelihood with 5000 samples on
the first 1000 test images (all 10000 on a kernel device); --ll-examples 10000 measures the
whole test set (about ten times longer).  Results go to benchmarks/results/objectives.json
(--quick: objectives-quick.json; a smoke run is not a measurement).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import date

import numpy as np

import cupyvae
from cupyvae.datasets import load_dataset
from cupyvae.executors import binarize_batch
from cupyvae.files import write_json
from cupyvae.initialization import DEFAULT_INITIALIZATION

OBJECTIVES = [("elbo", 1), ("iwae", 5), ("iwae", 50)]
SCHEMES = ["glorot", "pytorch"]
BATCH = 100


def objectives_part(args, data) -> list[dict]:
    x_train = data.x_train.reshape(len(data.x_train), -1)[:args.train_examples]
    x_test = binarize_batch(data.x_test.reshape(len(data.x_test), -1), args.seed, 0)
    ll_examples = args.ll_examples or (1000 if args.device == "cpu" else len(x_test))
    rows = []
    for objective, k in OBJECTIVES:
        model = cupyvae.VAE((28, 28), latent_dim=50, hidden=(200, 200), activation="tanh",
                            seed=args.seed, init=args.init, device=args.device)
        label = "ELBO" if objective == "elbo" else f"IWAE k={k}"
        print(f"[objectives] {label}: training {args.epochs} epochs on {len(x_train)} examples",
              flush=True)
        history = model.fit(x_train, epochs=args.epochs, batch_size=BATCH, lr=args.lr, binarize=True,
                            objective=objective, iw_samples=k)
        terms = model.elbo_terms(x_test)
        start = time.perf_counter()
        log_px = model.log_likelihood(x_test[:ll_examples], n_samples=args.ll_samples,
                                      progress=_progress(f"  log-likelihood, {args.ll_samples} samples",
                                                         ll_examples))
        row = {"objective": objective, "iw_samples": k, "epochs": args.epochs,
               "seconds_per_epoch": float(np.median(history["seconds"])),
               "final_train_loss": history["train_loss"][-1],
               "test_log_likelihood": float(np.mean(log_px)),
               "test_log_likelihood_stderr": float(np.std(log_px) / np.sqrt(len(log_px))),
               "log_likelihood_samples": args.ll_samples, "log_likelihood_examples": ll_examples,
               "log_likelihood_seconds": time.perf_counter() - start,
               "test_negative_elbo": terms["negative_elbo"], "test_kl": terms["kl"],
               "active_units": terms["active_units"]}
        rows.append(row)
        print(f"  {label}: log p(x) {row['test_log_likelihood']:.2f} nats (k={args.ll_samples}, "
              f"{ll_examples} images), -ELBO {row['test_negative_elbo']:.2f}, active units "
              f"{row['active_units']}/50, {row['seconds_per_epoch']:.2f} s/epoch", flush=True)
    return rows


def init_part(args, data) -> list[dict]:
    x_train = data.x_train.reshape(len(data.x_train), -1)[:args.train_examples]
    x_val = data.x_test.reshape(len(data.x_test), -1)[:args.val_examples]
    epochs = max(args.init_epochs)
    rows = []
    for scheme in SCHEMES:
        for seed in range(args.seeds):
            print(f"[init] {scheme}, seed {seed}: {epochs} epochs", flush=True)
            model = cupyvae.VAE((28, 28), latent_dim=2, hidden=(200,), seed=seed, init=scheme,
                                device=args.device)
            history = model.fit(x_train, x_val, epochs=epochs, batch_size=BATCH, lr=1e-3)
            rows.append({"init": scheme, "seed": seed,
                         "val_loss": {str(e): history["val_loss"][e - 1] for e in args.init_epochs},
                         "seconds_per_epoch": float(np.median(history["seconds"]))})
    for scheme in SCHEMES:
        for e in args.init_epochs:
            values = [row["val_loss"][str(e)] for row in rows if row["init"] == scheme]
            print(f"  {scheme:8s} after {e:3d} epochs: validation -ELBO mean {np.mean(values):.2f} "
                  f"(min {np.min(values):.2f}, max {np.max(values):.2f}, {len(values)} seeds)")
    return rows


def _progress(label: str, total: int):
    done = [0]

    def report(n: int) -> None:
        done[0] += n
        print(f"\r{label}: {done[0]}/{total} images", end="\n" if done[0] >= total else "",
              file=sys.stderr, flush=True)
    return report


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["objectives", "init", "both"], default="both")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or emulated (every objective trains on each)")
    ap.add_argument("--epochs", type=int, default=50, help="training epochs per objective")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--init", choices=SCHEMES, default=DEFAULT_INITIALIZATION,
                    help="the objectives part's layer initialisation")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ll-samples", type=int, default=5000, help="importance samples per test image")
    ap.add_argument("--ll-examples", type=int, default=None,
                    help="test images for the log-likelihood (default: 1000 on cpu, all elsewhere)")
    ap.add_argument("--train-examples", type=int, default=None, help="first N training images (default all)")
    ap.add_argument("--val-examples", type=int, default=None, help="first N test images for the init part")
    ap.add_argument("--init-epochs", type=lambda s: [int(v) for v in s.split(",")], default=[5, 50])
    ap.add_argument("--seeds", type=int, default=4, help="seeds per initialisation")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 2000 training images, 1-2 epochs, k=20 on 100 images, 2 seeds")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.epochs, args.ll_samples, args.ll_examples = 1, 20, 100
        args.train_examples, args.val_examples = 2000, 500
        args.init_epochs, args.seeds = [1, 2], 2
    args.out = args.out or f"benchmarks/results/objectives{'-quick' if args.quick else ''}.json"
    return args


def main(argv=None):
    args = parse_args(argv)
    data = load_dataset("fashion-mnist")
    result = {"benchmark": "objectives", "date": date.today().isoformat(), "quick": args.quick,
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "numpy": np.__version__, "cupyvae": cupyvae.__version__, "device": args.device,
              "dataset": "fashion-mnist", "batch": BATCH}
    if args.part in ("objectives", "both"):
        result["objectives"] = {"model": "784-200-200-50 tanh, Bernoulli, dynamically binarized",
                                "lr": args.lr, "init": args.init,
                                "rows": objectives_part(args, data)}
    if args.part in ("init", "both"):
        result["init"] = {"model": "784-200-2 relu, Bernoulli, grey levels", "lr": 1e-3,
                          "rows": init_part(args, data)}
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
