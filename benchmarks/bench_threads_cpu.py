"""How cupyvae's NumPy path scales with BLAS threads, on an idle machine and with one
core kept busy by another process: the measurement behind cupyvae.threads.default_threads.

For each model of bench_train_cpu.py, and for the validation loss of 10000 images, every
thread count (1 .. the usable cores) is timed in rounds, the counts alternating within a
round; one condition (idle, then one core busy) at a time.  A training measurement is one
`VAE.fit` epoch over just enough images for --steps steps (after a warm-up epoch), so it
is seconds per step of a steady state; the loss measurement is `VAE.loss` on 10000 images.
Reports the median over rounds with min and max, the speed-up of each count over one
thread, and the load average before each condition (a loaded machine is noted, not hidden).

    python benchmarks/bench_threads_cpu.py [--rounds 5] [--out benchmarks/results/threads-cpu.json]
    python benchmarks/bench_threads_cpu.py --quick      # does it run?
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _baseline import DATA_SHAPE, LR  # noqa: E402
from _cpu import CASES, BusyCore, load_images, machine, spread  # noqa: E402
from cupyvae.files import write_json  # noqa: E402

EVAL_ROWS = 10_000


def time_training(model, x: np.ndarray, batch: int, threads: int) -> float:
    """Seconds per step of one epoch over x."""
    start = time.perf_counter()
    model.fit(x, epochs=1, batch_size=batch, lr=LR, threads=threads)
    return (time.perf_counter() - start) / (len(x) // batch)


def time_loss(model, x: np.ndarray, threads: int) -> float:
    start = time.perf_counter()
    model.loss(x, threads=threads)
    return time.perf_counter() - start


def measure(jobs: dict, counts: list[int], rounds: int) -> dict:
    """jobs: name -> f(threads) -> seconds.  Rounds of every (job, count), counts alternating."""
    seconds = {name: {n: [] for n in counts} for name in jobs}
    for r in range(rounds):
        for name, job in jobs.items():
            for n in (counts if r % 2 == 0 else counts[::-1]):
                seconds[name][n].append(job(n))
    out = {}
    for name, per_count in seconds.items():
        out[name] = {str(n): {"seconds": s, **spread(s)} for n, s in per_count.items()}
        base = out[name][str(counts[0])]["median"]
        for n in counts:
            out[name][str(n)]["speedup_over_1"] = base / out[name][str(n)]["median"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=100,
                    help="training steps per timed epoch (at most 20 for the batch-1024 model)")
    ap.add_argument("--threads", default=None,
                    help="comma-separated counts (default 1 .. the usable cores)")
    ap.add_argument("--conditions", default="idle,busy",
                    help="idle: nothing else started; busy: another process spins on one core")
    ap.add_argument("--quick", action="store_true", help="2 rounds of 10 steps")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON path (default benchmarks/results/threads-cpu.json)")
    args = ap.parse_args(argv)
    import cupyvae
    from cupyvae.threads import usable_cores

    rounds, steps = (2, 10) if args.quick else (args.rounds, args.steps)
    counts = (list(range(1, usable_cores() + 1)) if args.threads is None
              else [int(n) for n in args.threads.split(",")])
    if counts[0] != 1:
        counts = [1] + [n for n in counts if n != 1]
    out = args.out or (Path(tempfile.gettempdir()) / "cupyvae-bench" / "threads-quick.json"
                       if args.quick else Path(__file__).resolve().parent / "results" / "threads-cpu.json")
    x, dataset = load_images()
    result = {"benchmark": "threads_cpu", "quick": args.quick, **machine(),
              "cupyvae": cupyvae.__version__, "dataset": dataset, "thread_counts": counts,
              "rounds": rounds, "conditions": {}}
    jobs = {}
    for case in CASES:
        n_steps = min(steps, 20) if case.batch >= 1024 else steps
        model = cupyvae.VAE(DATA_SHAPE, latent_dim=case.z_dim, hidden=case.hidden, seed=0)
        subset = x[:n_steps * case.batch]
        model.fit(subset, epochs=1, batch_size=case.batch, lr=LR, threads=1)   # warm-up
        jobs[f"train {case.name} batch {case.batch} (s/step)"] = (
            lambda n, m=model, s=subset, b=case.batch: time_training(m, s, b, n))
    jobs[f"loss {CASES[1].name} on {EVAL_ROWS} images (s)"] = (
        lambda n, m=cupyvae.VAE(DATA_SHAPE, latent_dim=20, seed=0): time_loss(m, x[:EVAL_ROWS], n))
    for condition in args.conditions.split(","):
        load = [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None
        print(f"{condition} (load average {load}):", flush=True)
        with BusyCore(active=condition == "busy"):
            timings = measure(jobs, counts, rounds)
        result["conditions"][condition] = {"load_average_before": load, "timings": timings}
        for name, per_count in timings.items():
            print(f"  {name}: " + "; ".join(
                f"{n} thr {t['median'] * 1e3:.1f} ms [{t['min'] * 1e3:.1f}-{t['max'] * 1e3:.1f}]"
                f" x{t['speedup_over_1']:.2f}" for n, t in per_count.items()), flush=True)
    write_json(out, result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
