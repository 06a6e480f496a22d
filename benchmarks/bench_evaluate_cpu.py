"""Wall-clock seconds of `cupyvae evaluate RUN --iw-samples 100` on the 10000 Fashion-MNIST
test images, on an idle machine and while another process keeps one core busy (the goal:
under 20 s with one core busy).

The command runs as a user runs it, a fresh `python -m cupyvae.cli evaluate` process
(start-up and the dataset read included), on the CPU.  Without --run a run folder is made
first: the 784-200-2 model trained for one epoch on the first 6000 training images (the
weights do not change the work an evaluation does).  Conditions alternate over --repeats
rounds; the median, min and max of each are reported and written as JSON.

    python benchmarks/bench_evaluate_cpu.py [--run runs/fashion] [--repeats 3] [--threads N]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cpu import ROOT, BusyCore, machine, spread  # noqa: E402
from cupyvae.files import write_json  # noqa: E402

GOAL_SECONDS = 20.0


def cli(*args, timeout: float | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "MPLBACKEND": "Agg",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "cupyvae.cli", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=timeout)


def make_run(folder: Path) -> Path:
    result = cli("train", "--data", "fashion-mnist", "--limit", 6000, "--epochs", 1,
                 "--device", "cpu", "--out", folder, "--force")
    if result.returncode != 0:
        sys.exit(f"could not train the run to evaluate:\n{result.stderr}")
    return folder


def time_evaluate(run: Path, iw_samples: int, threads: int | None, timeout: float) -> float:
    extra = [] if threads is None else ["--threads", threads]
    start = time.perf_counter()
    result = cli("evaluate", run, "--device", "cpu", "--iw-samples", iw_samples, *extra,
                 timeout=timeout)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"cupyvae evaluate failed:\n{result.stderr}")
    return seconds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=None, help="a trained run folder (default: make one)")
    ap.add_argument("--iw-samples", type=int, default=100)
    ap.add_argument("--threads", type=int, default=None,
                    help="passed to `cupyvae evaluate --threads` (default: the run's count)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--conditions", default="idle,busy")
    ap.add_argument("--timeout", type=float, default=600, help="seconds allowed per evaluation")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON path (default benchmarks/results/evaluate-cpu.json)")
    args = ap.parse_args(argv)
    import cupyvae

    with tempfile.TemporaryDirectory() as scratch:
        run = args.run or make_run(Path(scratch) / "run")
        conditions = args.conditions.split(",")
        seconds = {c: [] for c in conditions}
        for r in range(args.repeats):
            for condition in (conditions if r % 2 == 0 else conditions[::-1]):
                with BusyCore(active=condition == "busy"):
                    seconds[condition].append(
                        time_evaluate(run, args.iw_samples, args.threads, args.timeout))
                print(f"  {condition}: {seconds[condition][-1]:.1f} s", flush=True)
    result = {"benchmark": "evaluate_cpu", **machine(), "cupyvae": cupyvae.__version__,
              "command": f"cupyvae evaluate RUN --iw-samples {args.iw_samples}"
                         + ("" if args.threads is None else f" --threads {args.threads}"),
              "test_images": 10000, "goal_seconds_with_one_core_busy": GOAL_SECONDS,
              "seconds": {c: {"runs": s, **spread(s)} for c, s in seconds.items()}}
    for condition, s in result["seconds"].items():
        verdict = "" if condition != "busy" else (
            f" (goal < {GOAL_SECONDS:.0f} s: {'met' if s['median'] < GOAL_SECONDS else 'NOT met'})")
        print(f"{condition}: median {s['median']:.1f} s [{s['min']:.1f}-{s['max']:.1f}]{verdict}")
    out = args.out or Path(__file__).resolve().parent / "results" / "evaluate-cpu.json"
    write_json(out, result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
