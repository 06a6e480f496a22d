"""The first look at a GPU, in one command and under 8 minutes on one H200: the GPU tests,
compute-sanitizer on the kernels at training shapes, the kernel microbenchmarks and the
training race against PyTorch eager -- everything under one folder, in at most 8 files.

    python benchmarks/gpu_first_look.py [OUT_DIR]     # default: $OUT, else
                                                      # benchmarks/results/first-look-<date>
    python benchmarks/gpu_first_look.py --dry-run     # on a CPU: every part that can run
                                                      # runs (the benchmarks as emulator smoke
                                                      # runs); the rest is skipped and listed

Parts, in order (a failing, crashing or timed-out part never stops the next one):
    environment    nvidia-smi, Python/NumPy/CuPy/PyTorch versions, the GPU's SM count and
                   L2, where compute-sanitizer is (or that it is absent), the dataset
    gpu-tests      python -m pytest -m gpu                          -> gpu-tests.xml (JUnit)
    bench-kernels  benchmarks/bench_kernels.py                      -> gpu-kernels.json
    bench-train    benchmarks/bench_train_gpu.py --skip-compile     -> gpu-train.json, .png
                   (cupyvae eager and CUDA graphs against PyTorch eager; no torch.compile)
    memcheck       compute-sanitizer --tool memcheck  python -m pytest -m gpu
    racecheck      compute-sanitizer --tool racecheck python -m pytest -m gpu
                   both on tests/test_gpu_parity.py: every kernel of the training step at the
                   784-200-Z shapes (batch 100), split-K included; memcheck with CuPy's memory
                   pool off (CUPYVAE_MEMCHECK=1), so an overrun leaves its allocation
Files (6): summary.json (every part: command, status, exit status, seconds, timeout, and
what was skipped and why; the sanitizers' error counts; the environment), first-look.log
(every part's output, in order), gpu-tests.xml, gpu-kernels.json, gpu-train.json,
gpu-train.png.  Both text files are rewritten atomically after every part, so a run that
is killed keeps what it had.

Every part runs under a timeout cut from --budget (default 450 s), keeping each later
part's floor; the repository root is put on PYTHONPATH, so the checkout runs as it is
(no install step).  Fashion-MNIST absent: bench_train_gpu.py trains on synthetic data of
the same shape and says so (summary.json "dataset").  compute-sanitizer is looked up on
PATH, in $CUDA_HOME/bin and /usr/local/cuda/bin, and in the pip wheels
(`pip install nvidia-cuda-sanitizer-api` for CUDA 13, `nvidia-cuda-sanitizer-api-cu12`
for CUDA 12: nvidia/*/bin/compute-sanitizer in site-packages); absent, the two parts are
skipped with that reason.  Exit status: 0 when every part that ran passed, 1 otherwise.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _load_write_atomic():
    """cupyvae.files.write_atomic, loaded from its file alone: the orchestrator must keep
    writing its results even where the cupyvae package itself cannot be imported (a
    missing dependency is then one failing part, not a dead script)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_cupyvae_files", ROOT / "cupyvae" / "files.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_atomic


write_atomic = _load_write_atomic()

DEFAULT_BUDGET_S = 450.0
LOG = "first-look.log"
SUMMARY = "summary.json"
OUTPUT_FILES = (SUMMARY, LOG, "gpu-tests.xml", "gpu-kernels.json", "gpu-train.json",
                "gpu-train.png")
SANITIZER_ERRORS_EXIT = 86      # compute-sanitizer --error-exitcode: errors found, not a test failure
PARITY_TESTS = "tests/test_gpu_parity.py"


@dataclass(frozen=True)
class Part:
    name: str
    command: tuple        # "{python}", "{out}", "{sanitizer}", "{budget}" are filled in
    cap_s: float          # the most this part may take
    floor_s: float        # the least worth starting it with (reserved while earlier parts run)
    needs_gpu: bool = True
    dry_command: tuple | None = None    # what runs instead with --dry-run (None: skipped)
    env: tuple = ()       # extra environment variables (name, value)
    needs_sanitizer: bool = False


PYTEST = ("{python}", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu")
PARTS = (
    Part("gpu-tests", (*PYTEST, "--junitxml={out}/gpu-tests.xml"), 150, 20,
         dry_command=(*PYTEST, PARITY_TESTS, "--junitxml={out}/gpu-tests.xml")),
    Part("bench-kernels", ("{python}", "benchmarks/bench_kernels.py", "--repeat", "100",
                           "--out", "{out}/gpu-kernels.json"), 90, 40,
         dry_command=("{python}", "benchmarks/bench_kernels.py", "--device", "emulated",
                      "--tiny", "--out", "{out}/gpu-kernels.json")),
    Part("bench-train", ("{python}", "benchmarks/bench_train_gpu.py", "--skip-compile",
                         "--epochs", "2", "--budget", "{budget}",
                         "--out", "{out}/gpu-train.json"), 150, 60,
         dry_command=("{python}", "benchmarks/bench_train_gpu.py", "--device", "emulated",
                      "--tiny", "--epochs", "1", "--skip-compile",
                      "--out", "{out}/gpu-train.json")),
    Part("memcheck", ("{sanitizer}", "--tool", "memcheck", "--error-exitcode",
                      str(SANITIZER_ERRORS_EXIT), "--print-limit", "20", *PYTEST, PARITY_TESTS),
         100, 45, env=(("CUPYVAE_MEMCHECK", "1"),), needs_sanitizer=True),
    Part("racecheck", ("{sanitizer}", "--tool", "racecheck", "--error-exitcode",
                       str(SANITIZER_ERRORS_EXIT), "--print-limit", "20", *PYTEST, PARITY_TESTS,
                       "-k", "linear or glue or likelihood or posterior or clipping"),
         120, 45, needs_sanitizer=True),
)
ENVIRONMENT_TIMEOUT_S = 60.0


# ------------------------------------------------------------------------------ environment
def find_sanitizer() -> tuple[str | None, str]:
    """(path of compute-sanitizer, how it was found) or (None, where it was looked for)."""
    found = shutil.which("compute-sanitizer")
    if found:
        return found, "on PATH"
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    for home in filter(None, homes):
        candidate = Path(home) / "bin" / "compute-sanitizer"
        if os.access(candidate, os.X_OK):
            return str(candidate), f"in {home}/bin"
    for site in filter(None, sys.path):
        for candidate in sorted(glob.glob(os.path.join(site, "nvidia", "*", "bin",
                                                       "compute-sanitizer"))):
            if os.access(candidate, os.X_OK):
                return candidate, "from a pip wheel (nvidia-cuda-sanitizer-api)"
    return None, ("not found on PATH, in $CUDA_HOME/bin or /usr/local/cuda/bin, or in a pip "
                  "wheel (pip install nvidia-cuda-sanitizer-api for CUDA 13, "
                  "nvidia-cuda-sanitizer-api-cu12 for CUDA 12)")


DESCRIBE = r"""
import json, platform, numpy
out = {"python": platform.python_version(), "numpy": numpy.__version__}
try:
    import torch
    out["torch"] = torch.__version__
except Exception as exc:
    out["torch"] = f"absent ({type(exc).__name__})"
try:
    import cupy
    out["cupy"] = cupy.__version__
    runtime = cupy.cuda.runtime
    out["devices"] = runtime.getDeviceCount()
    props = runtime.getDeviceProperties(0)
    name = props["name"]
    out.update(gpu=name.decode() if isinstance(name, bytes) else str(name),
               sm_count=props.get("multiProcessorCount"), l2_bytes=props.get("l2CacheSize"),
               compute_capability=f"{props.get('major')}.{props.get('minor')}",
               cuda_runtime=runtime.runtimeGetVersion(), cuda_driver=runtime.driverGetVersion())
except Exception as exc:
    out["cupy"] = f"no usable GPU ({type(exc).__name__}: {exc})"
try:
    from cupyvae.datasets import load_dataset
    load_dataset("fashion-mnist", download=False)
    out["fashion_mnist"] = "available"
except Exception as exc:
    out["fashion_mnist"] = f"absent ({type(exc).__name__}); the training race uses synthetic data"
print("DESCRIBE " + json.dumps(out))
"""


def describe_environment(env: dict) -> tuple[dict, str]:
    """(facts, log text): nvidia-smi's report and a child Python's view of the machine."""
    facts, log = {}, []
    smi = shutil.which("nvidia-smi")
    if smi is None:
        facts["nvidia_smi"] = "not found"
    else:
        done = _run([smi], env, ENVIRONMENT_TIMEOUT_S)
        facts["nvidia_smi"] = done["status"]
        log.append(done["output"])
    done = _run([sys.executable, "-c", DESCRIBE], env, ENVIRONMENT_TIMEOUT_S)
    log.append(done["output"])
    for line in done["output"].splitlines():
        if line.startswith("DESCRIBE "):
            facts.update(json.loads(line[len("DESCRIBE "):]))
    sanitizer, how = find_sanitizer()
    facts.update(compute_sanitizer=sanitizer, compute_sanitizer_found=how)
    return facts, "\n".join(log)


# ------------------------------------------------------------------------------ running
def part_timeout(index: int, parts: tuple[Part, ...], deadline: float) -> float:
    """This part's cap, cut so that every later part still gets its floor."""
    reserved = sum(p.floor_s for p in parts[index + 1:])
    return min(parts[index].cap_s, deadline - time.monotonic() - reserved)


def _run(command: list[str], env: dict, timeout: float) -> dict:
    """Run a command in its own process group; its status and combined output, whatever
    happens to it.  On timeout the whole group is killed (compute-sanitizer's target and a
    benchmark's torch children with it), so nothing outlives its part."""
    start = time.monotonic()
    try:
        child = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as exc:
        return {"status": f"failed to start ({exc})", "exit_status": None, "output": "",
                "seconds": 0.0}
    try:
        output, _ = child.communicate(timeout=timeout)
        exit_status = child.returncode
        status = "ok" if exit_status == 0 else f"failed (exit {exit_status})"
    except subprocess.TimeoutExpired:
        _kill_group(child)
        output, _ = child.communicate()
        exit_status, status = None, f"timeout after {timeout:.0f} s"
    return {"status": status, "exit_status": exit_status,
            "output": output.decode(errors="replace"),
            "seconds": round(time.monotonic() - start, 1)}


def _kill_group(child: subprocess.Popen) -> None:
    try:
        os.killpg(child.pid, signal.SIGKILL)   # the group this part started, and nothing else
    except ProcessLookupError:
        pass


def sanitizer_findings(output: str) -> dict:
    """The error and hazard counts compute-sanitizer printed."""
    found = {}
    for kind, pattern in (("errors", r"ERROR SUMMARY: (\d+) error"),
                          ("hazards", r"RACECHECK SUMMARY: (\d+) hazard")):
        counts = [int(n) for n in re.findall(pattern, output)]
        if counts:
            found[kind] = sum(counts)
    return found


def plan(part: Part, dry_run: bool, sanitizer: str | None) -> tuple[tuple | None, str | None]:
    """(command template to run, None) or (None, why it is skipped)."""
    if dry_run and part.needs_gpu:
        if part.dry_command is None:
            return None, "skipped: needs a GPU (--dry-run)"
        return part.dry_command, None
    if part.needs_sanitizer and sanitizer is None:
        return None, "skipped: compute-sanitizer not found (see environment)"
    return part.command, None


def run_parts(parts: tuple[Part, ...], out: Path, budget: float, dry_run: bool) -> dict:
    started = time.monotonic()
    deadline = started + budget
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    summary = {"suite": "gpu-first-look", "started": datetime.now().isoformat(timespec="seconds"),
               "out": str(out), "budget_s": budget, "dry_run": dry_run,
               "platform": platform.platform(), "files": list(OUTPUT_FILES), "parts": [],
               "skipped": []}
    log = [f"# gpu_first_look {'--dry-run ' if dry_run else ''}{summary['started']} -> {out}\n"]
    facts, text = describe_environment(env)
    summary["environment"] = facts
    log.append(_section("environment", "nvidia-smi; python -c DESCRIBE", text))
    _save(out, summary, log)
    for index, part in enumerate(parts):
        template, skip = plan(part, dry_run, facts.get("compute_sanitizer"))
        timeout = part_timeout(index, parts, deadline)
        if template is not None and timeout < max(part.floor_s / 2, 5.0):
            template, skip = None, f"skipped: out of time ({timeout:.0f} s left for it)"
        record = {"name": part.name, "timeout_s": round(timeout, 1)}
        if template is None:
            record.update(status=skip, exit_status=None, seconds=0.0, command=None)
            summary["skipped"].append(f"{part.name}: {skip[len('skipped: '):]}")
            log.append(_section(part.name, "", skip))
        else:
            command = [arg.format(python=sys.executable, out=out,
                                  sanitizer=facts.get("compute_sanitizer"),
                                  budget=f"{max(timeout - 15, 10):.0f}") for arg in template]
            print(f"[{time.monotonic() - started:5.0f} s] {part.name} (up to {timeout:.0f} s)",
                  flush=True)
            done = _run(command, {**env, **dict(part.env)}, timeout)
            if part.needs_sanitizer:
                record.update(sanitizer_findings(done["output"]))
                if done["exit_status"] == SANITIZER_ERRORS_EXIT:
                    done["status"] = "failed (the sanitizer reported errors)"
            record.update(command=" ".join(command), status=done["status"],
                          exit_status=done["exit_status"], seconds=done["seconds"])
            log.append(_section(part.name, record["command"], done["output"]))
            print(f"[{time.monotonic() - started:5.0f} s] {part.name}: {record['status']}",
                  flush=True)
        summary["parts"].append(record)
        _save(out, summary, log)
    summary.update(_results(out))
    summary["total_s"] = round(time.monotonic() - started, 1)
    summary["all_ok"] = all(p["status"] == "ok" for p in summary["parts"]
                            if not p["status"].startswith("skipped"))
    _save(out, summary, log)
    return summary


def _results(out: Path) -> dict:
    """What the benchmarks say about their own runs, lifted into the summary (a missing or
    malformed result file is said to be so, never an error here)."""
    found = {}
    train = _read_json(out / "gpu-train.json")
    if train is None:
        found["dataset"] = "no readable training result"
    else:
        found["dataset"] = train.get("dataset")
        found["graphs_captured"] = {row.get("model"): row.get("cupyvae_graphs_captured")
                                    for row in train.get("rows", []) if isinstance(row, dict)}
    kernels = _read_json(out / "gpu-kernels.json")
    if kernels is None:
        found["kernel_checks"] = "no readable kernel result"
    else:
        failed = {f"{r.get('kernel')} {r.get('shape')}": r.get("check")
                  for r in kernels.get("rows", []) if isinstance(r, dict) and r.get("check") != "ok"}
        found["kernel_checks"] = failed or "all ok"
    return found


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _section(name: str, command: str, text: str) -> str:
    return f"\n{'=' * 20} {name} {'=' * 20}\n$ {command}\n{text.rstrip()}\n"


def _save(out: Path, summary: dict, log: list[str]) -> None:
    write_atomic(out / SUMMARY, (json.dumps(summary, indent=2) + "\n").encode())
    write_atomic(out / LOG, "".join(log).encode())


def default_out() -> Path:
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"])
    return ROOT / "benchmarks" / "results" / f"first-look-{date.today().isoformat()}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", type=Path, default=None,
                    help="output folder (default: $OUT, else benchmarks/results/first-look-<date>)")
    ap.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds for everything")
    ap.add_argument("--dry-run", action="store_true",
                    help="on a CPU: run what can run (benchmarks as emulator smoke runs), "
                         "skip and list what needs a GPU")
    ap.add_argument("--parts", default=",".join(p.name for p in PARTS),
                    help="comma-separated subset of: " + ", ".join(p.name for p in PARTS))
    args = ap.parse_args()
    wanted = args.parts.split(",")
    unknown = sorted(set(wanted) - {p.name for p in PARTS})
    if unknown:
        ap.error(f"unknown parts {unknown}; available: {', '.join(p.name for p in PARTS)}")
    out = (args.out or default_out()).resolve()
    out.mkdir(parents=True, exist_ok=True)
    summary = run_parts(tuple(p for p in PARTS if p.name in wanted), out, args.budget,
                        args.dry_run)
    print(f"wrote {out} ({summary['total_s']} s): " + ", ".join(
        f"{p['name']} {p['status']}" for p in summary["parts"]))
    for line in summary["skipped"]:
        print(f"  skipped {line}")
    return 0 if summary["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
