"""The whole GPU check in one command: install, the GPU tests, the whole test suite, the kernel
microbenchmarks and the training benchmarks, everything written under one folder.

    python benchmarks/run_gpu_suite.py [OUT_DIR]      # default: $OUT if set, else
                                                      # benchmarks/results/gpu-<date>
    python benchmarks/run_gpu_suite.py --dry-run      # print the plan, run nothing

(The 8-minute first look at a new GPU, in a few files, is benchmarks/gpu_first_look.py.)

Parts, in order (each one's output in OUT_DIR/<part>.log):
    nvidia-smi      the GPU, driver and clocks                  nvidia-smi.log
    install         pip install --no-deps --no-build-isolation -e .
    gpu-tests       python -m pytest -m gpu -q                   gpu-tests.xml (JUnit)
    all-tests       python -m pytest -q                          all-tests.xml (JUnit)
    bench-kernels   benchmarks/bench_kernels.py                  gpu-kernels.json
    bench-train     benchmarks/bench_train_gpu.py                gpu-train.json, gpu-train.png
A failing part does not stop the others; OUT_DIR/summary.json records each part's command,
exit status, status (ok, failed, timeout, skipped) and seconds.  Every part runs under a
timeout cut to what is left of --budget (default 470 s: the whole run fits in 8 minutes on
an H100), keeping a floor of time for the benchmarks that follow it; the training benchmark
fits its torch.compile children into what it is given (torch.compile "max-autotune" only
for 784-200-2).  The repository root is put on PYTHONPATH, so the tests and benchmarks run
from this checkout even where the editable install fails (e.g. no setuptools offline).
Exit status: 0 when every part passed, 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BUDGET_S = 470.0


@dataclass(frozen=True)
class Part:
    name: str
    command: tuple          # "{out}" is replaced by the output folder, "{python}" by sys.executable
    cap_s: float            # the most this part may take
    floor_s: float = 0.0    # the least worth starting it with (reserved while earlier parts run)


PARTS = (
    Part("nvidia-smi", ("nvidia-smi",), 20),
    Part("install", ("{python}", "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                     "-e", "."), 120),
    Part("gpu-tests", ("{python}", "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                       "--junitxml={out}/gpu-tests.xml"), 150),
    Part("all-tests", ("{python}", "-m", "pytest", "-q", "-p", "no:cacheprovider",
                       "--junitxml={out}/all-tests.xml"), 180),
    Part("bench-kernels", ("{python}", "benchmarks/bench_kernels.py",
                           "--out", "{out}/gpu-kernels.json"), 120, floor_s=40),
    Part("bench-train", ("{python}", "benchmarks/bench_train_gpu.py", "--out", "{out}/gpu-train.json",
                         "--max-autotune", "784-200-2", "--compile-timeout", "150",
                         "--budget", "{budget}"), 330, floor_s=150),
)
# bench-train must leave itself time to write its JSON after its last torch.compile child.
TRAIN_BUDGET_MARGIN_S = 20.0


def default_out() -> Path:
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"])
    return ROOT / "benchmarks" / "results" / f"gpu-{date.today().isoformat()}"


def part_timeout(index: int, parts: tuple[Part, ...], deadline: float) -> float:
    """This part's cap, cut so that every later part still gets its floor."""
    reserved = sum(p.floor_s for p in parts[index + 1:])
    return min(parts[index].cap_s, deadline - time.monotonic() - reserved)


def command_for(part: Part, out: Path, timeout: float) -> list[str]:
    budget = max(timeout - TRAIN_BUDGET_MARGIN_S, 0.0)
    return [arg.format(out=out, python=sys.executable, budget=f"{budget:.0f}") for arg in part.command]


def run_part(part: Part, command: list[str], timeout: float, out: Path) -> dict:
    record = {"name": part.name, "command": " ".join(command), "timeout_s": round(timeout, 1),
              "log": f"{part.name}.log"}
    if timeout < max(part.floor_s, 5.0):
        return {**record, "status": "skipped (out of time)", "exit_status": None, "seconds": 0.0}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    start = time.monotonic()
    with open(out / record["log"], "w") as log:
        log.write(f"$ {record['command']}\n")
        log.flush()
        try:
            done = subprocess.run(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=timeout)
            exit_status = done.returncode
            status = "ok" if exit_status == 0 else "failed"
        except subprocess.TimeoutExpired:
            exit_status, status = None, f"timeout after {timeout:.0f} s"
        except OSError as exc:                      # e.g. nvidia-smi not installed
            exit_status, status = None, f"failed to start ({exc})"
            log.write(f"{status}\n")
    return {**record, "status": status, "exit_status": exit_status,
            "seconds": round(time.monotonic() - start, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", type=Path, default=None,
                    help="output folder (default: $OUT, else benchmarks/results/gpu-<date>)")
    ap.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds for everything")
    ap.add_argument("--parts", default=",".join(p.name for p in PARTS),
                    help="comma-separated subset of: " + ", ".join(p.name for p in PARTS))
    ap.add_argument("--dry-run", action="store_true", help="write the plan, run nothing")
    args = ap.parse_args()
    wanted = args.parts.split(",")
    unknown = sorted(set(wanted) - {p.name for p in PARTS})
    if unknown:
        ap.error(f"unknown parts {unknown}; available: {', '.join(p.name for p in PARTS)}")
    parts = tuple(p for p in PARTS if p.name in wanted)
    out = (args.out or default_out()).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    deadline = started + args.budget
    summary = {"suite": "gpu", "started": datetime.now().isoformat(timespec="seconds"),
               "out": str(out), "budget_s": args.budget, "python": sys.version.split()[0],
               "platform": platform.platform(), "parts": []}
    for index, part in enumerate(parts):
        timeout = part_timeout(index, parts, deadline)
        command = command_for(part, out, timeout)
        if args.dry_run:
            record = {"name": part.name, "command": " ".join(command), "status": "dry-run",
                      "exit_status": None, "timeout_s": round(timeout, 1), "seconds": 0.0}
        else:
            print(f"[{time.monotonic() - started:5.0f} s] {part.name} (up to {timeout:.0f} s)", flush=True)
            record = run_part(part, command, timeout, out)
            print(f"[{time.monotonic() - started:5.0f} s] {part.name}: {record['status']}", flush=True)
        summary["parts"].append(record)
        _write(out / "summary.json", summary)       # after every part: a killed run keeps its record
    summary["total_s"] = round(time.monotonic() - started, 1)
    summary["all_ok"] = all(p["status"] in ("ok", "dry-run") for p in summary["parts"])
    _write(out / "summary.json", summary)
    print(f"wrote {out / 'summary.json'} ({summary['total_s']} s)")
    for record in summary["parts"]:
        print(f"  {record['name']:14s} {record['status']}")
    return 0 if summary["all_ok"] else 1


def _write(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
