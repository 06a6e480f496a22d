"""Seconds per training epoch on the CPU: cupyvae's NumPy path against PyTorch CPU eager,
epoch by epoch in one process.

Same models (784-200-2 and 784-200-20 at batch 100, 784-200-20 at batch 1000,
784-1024-1024-64 at batch 1024; ReLU, Gaussian posterior, Bernoulli likelihood), same
init (cupyvae's initial weights copied into PyTorch), same data (Fashion-MNIST's 60000
training images), same batch orders, batch size and Adam settings; each side draws its
noise its own way.  cupyvae trains through the public API, one `VAE.fit` call with
`threads=T`; after each of its epochs the `on_epoch` callback runs one epoch of each
PyTorch model: at torch's default thread count and at T threads (one model when the two
counts are equal).  So the sides alternate epoch by epoch, a machine whose speed drifts
slows all of them alike, and no side is ever timed on a fresh model alone: every epoch is
timed and kept in the JSON, the first included; the table reports the median over
epochs 2 and later, with min and max, and flags a run whose spread exceeds 25% of the
median ("noisy") instead of hiding it.  The final training losses (mean over the last
epoch) of cupyvae and each PyTorch model must agree within 0.5 nats; a row where they do
not is flagged too.

    python benchmarks/bench_train_cpu.py [--epochs 5] [--threads T] [--out benchmarks/results/cpu.json]
    python benchmarks/bench_train_cpu.py --quick      # 6000 images, 4 epochs: does it run?

Needs `pip install torch` (the baseline only; e.g. torch==2.13.0, a CPU wheel).
"""
from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _baseline import DATA_SHAPE, LR, Case  # noqa: E402
from _cpu import CASES, load_images, machine, spread, torch_trainer  # noqa: E402
from cupyvae.files import write_json  # noqa: E402

LOSS_AGREEMENT_NATS = 0.5
MIN_EPOCHS = 4


def cupyvae_epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The batch order VAE.fit uses in `epoch` (cupyvae/model.py: _train_one_epoch), so that
    PyTorch sees the same batches."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def race(case: Case, x: np.ndarray, epochs: int, threads: int) -> dict:
    """Train cupyvae and the PyTorch twins `epochs` epochs each, alternating; per-epoch
    seconds and final losses of every side."""
    import torch
    import cupyvae

    model = cupyvae.VAE(DATA_SHAPE, latent_dim=case.z_dim, hidden=case.hidden, seed=0)
    init = {name: view.copy() for name, view in model.params.items()}
    torch_default = torch.get_num_threads()
    sides = {"torch_default_threads": torch_trainer(case, init, x, None)}
    if threads != torch_default:
        sides["torch_same_threads"] = torch_trainer(case, init, x, threads)
    seconds = {name: [] for name in ("cupyvae", *sides)}
    losses = {}

    def after_cupyvae_epoch(record: dict) -> None:
        seconds["cupyvae"].append(record["seconds"])
        perm = cupyvae_epoch_order(model.config.seed, record["epoch"], len(x))
        for name, run_epoch in sides.items():
            start = time.perf_counter()
            losses[name] = run_epoch(perm)
            seconds[name].append(time.perf_counter() - start)
        print(f"  epoch {record['epoch']}: " + ", ".join(
            f"{name} {s[-1]:.2f} s" for name, s in seconds.items()), flush=True)

    model.fit(x, epochs=epochs, batch_size=case.batch, lr=LR, threads=threads,
              on_epoch=after_cupyvae_epoch)
    losses["cupyvae"] = model.history["train_loss"][-1]
    row = {"model": case.name, "batch": case.batch, "epochs": epochs, "threads": threads}
    for name in seconds:
        row[name] = {"threads": {"cupyvae": threads, "torch_default_threads": torch_default,
                                 "torch_same_threads": threads}[name],
                     "epoch_seconds": seconds[name], "steady": spread(seconds[name][1:]),
                     "final_train_loss": losses[name]}
    for name in sides:
        ours, theirs = np.array(seconds["cupyvae"][1:]), np.array(seconds[name][1:])
        row[f"ratio_vs_{name}"] = row["cupyvae"]["steady"]["median"] / row[name]["steady"]["median"]
        row[f"epoch_ratios_vs_{name}"] = (ours / theirs).tolist()
        row[f"loss_gap_vs_{name}"] = losses["cupyvae"] - losses[name]
    row["losses_agree"] = all(abs(row[f"loss_gap_vs_{n}"]) <= LOSS_AGREEMENT_NATS for n in sides)
    row["noisy"] = any(row[name]["steady"]["noisy"] for name in seconds)
    return row


def summary(row: dict) -> str:
    parts = [f"{row['model']} batch {row['batch']}: cupyvae ({row['threads']} threads) "
             f"{row['cupyvae']['steady']['median']:.2f} s/epoch"]
    for name in ("torch_default_threads", "torch_same_threads"):
        if name in row:
            parts.append(f"torch ({row[name]['threads']} threads) {row[name]['steady']['median']:.2f}"
                         f" s/epoch, ratio {row[f'ratio_vs_{name}']:.2f}")
    flags = [f for f, bad in (("NOISY", row["noisy"]), ("LOSSES DISAGREE", not row["losses_agree"]))
             if bad]
    return "; ".join(parts) + (f"  [{', '.join(flags)}]" if flags else "")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=5, help=f"epochs per side (at least {MIN_EPOCHS})")
    ap.add_argument("--threads", type=int, default=None,
                    help="cupyvae's BLAS threads (default: cupyvae.threads.default_threads())")
    ap.add_argument("--limit", type=int, default=None, help="use the first N training images")
    ap.add_argument("--models", default=None,
                    help="comma-separated subset, e.g. 784-200-2@100,784-1024-1024-64@1024")
    ap.add_argument("--quick", action="store_true",
                    help=f"6000 images and {MIN_EPOCHS} epochs, written to a temporary folder "
                         "unless --out is given: shows the harness works, measures nothing")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON path (default benchmarks/results/cpu.json)")
    args = ap.parse_args(argv)
    if args.epochs < MIN_EPOCHS:
        ap.error(f"--epochs must be at least {MIN_EPOCHS} (the median is over epochs 2 and later)")
    try:
        import torch
    except ImportError:
        sys.exit("PyTorch is the baseline of this benchmark: pip install torch==2.13.0")
    import cupyvae
    from cupyvae.threads import check_threads, default_threads

    threads = default_threads() if args.threads is None else check_threads(args.threads)
    epochs = MIN_EPOCHS if args.quick else args.epochs
    limit = args.limit or (6000 if args.quick else None)
    cases = CASES if args.models is None else [
        c for c in CASES if f"{c.name}@{c.batch}" in args.models.split(",")]
    if not cases:
        ap.error(f"--models matches none of {', '.join(f'{c.name}@{c.batch}' for c in CASES)}")
    out = args.out or (Path(tempfile.gettempdir()) / "cupyvae-bench" / "cpu-quick.json" if args.quick
                       else Path(__file__).resolve().parent / "results" / "cpu.json")
    result = {"benchmark": "train_cpu", "quick": args.quick, **machine(),
              "torch": torch.__version__, "torch_default_threads": torch.get_num_threads(),
              "cupyvae": cupyvae.__version__, "cupyvae_threads": threads,
              "command": "python benchmarks/bench_train_cpu.py" + "".join(
                  " " + shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
              "rows": []}
    x, result["dataset"] = load_images(limit)
    for case in cases:
        if len(x) < case.batch:
            print(f"skipping {case.name} at batch {case.batch}: only {len(x)} images")
            continue
        print(f"{case.name} at batch {case.batch}, {epochs} epochs per side:", flush=True)
        row = race(case, x, epochs, threads)
        result["rows"].append(row)
        print(summary(row), flush=True)
    write_json(out, result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
