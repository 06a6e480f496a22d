"""Markdown tables of the committed benchmark results, for the README.

Reads every JSON under --results (default benchmarks/results, sub-folders included) that a
benchmark wrote -- bench_train_cpu.py ("train_cpu"), bench_train_gpu.py ("train_gpu"),
bench_kernels.py ("kernels"), bench_priors.py ("priors") -- and prints one table per file,
each with a line naming the machine, the versions, the date, the dataset and the command
that produced it.

    python benchmarks/make_readme_table.py [--results benchmarks/results]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

def _seconds(side: dict | None) -> str:
    """median [min-max] of the steady epochs (2 and later)."""
    if not side:
        return ""
    steady = side["steady"]
    return f"{steady['median']:.2f} [{steady['min']:.2f}-{steady['max']:.2f}]"


def _cpu_notes(row: dict) -> str:
    notes = []
    if row.get("noisy"):
        notes.append("noisy (min-max spread > 25% of the median)")
    gaps = [abs(row[k]) for k in row if k.startswith("loss_gap_vs_")]
    if gaps and not row.get("losses_agree", True):
        notes.append(f"final losses differ by {max(gaps):.2f} nats")
    return "; ".join(notes)


# What each benchmark's rows hold: (column title, function of the row).
CPU_COLUMNS = [
    ("model", lambda r: r["model"]),
    ("batch", lambda r: r["batch"]),
    ("cupyvae NumPy (s/epoch)", lambda r: f"{_seconds(r['cupyvae'])} ({r['threads']} thr)"),
    ("PyTorch CPU eager, default threads (s/epoch)",
     lambda r: f"{_seconds(r['torch_default_threads'])} ({r['torch_default_threads']['threads']} thr)"),
    ("cupyvae / PyTorch default", lambda r: _num(r["ratio_vs_torch_default_threads"], 2)),
    ("PyTorch, cupyvae's threads (s/epoch)", lambda r: _seconds(r.get("torch_same_threads"))
     or "same as default"),
    ("cupyvae / PyTorch same threads", lambda r: _num(r.get(
        "ratio_vs_torch_same_threads", r["ratio_vs_torch_default_threads"]), 2)),
    ("final train loss: cupyvae / PyTorch default / same threads", lambda r: " / ".join(
        f"{r[k]['final_train_loss']:.2f}" for k in ("cupyvae", "torch_default_threads",
                                                    "torch_same_threads") if k in r)),
    ("notes", _cpu_notes),
]
GPU_VARIANTS = [
    ("cupyvae eager", "cupyvae-eager"),
    ("cupyvae graph (50 steps)", "cupyvae-graph-50"),
    ("cupyvae graph (1 step)", "cupyvae-graph-1"),
    ("cupyvae graph (epoch)", "cupyvae-graph-epoch"),
    ("PyTorch eager", "torch-eager"),
    ("torch.compile reduce-overhead", "torch-compile-reduce-overhead"),
    ("torch.compile max-autotune", "torch-compile-max-autotune"),
]
GPU_COLUMNS = [("model", lambda r: r["model"]), ("batch", lambda r: r["batch"])] + [
    (f"{title} (ms/epoch)", lambda r, key=key: _ms(r, key)) for title, key in GPU_VARIANTS
] + [("PyTorch eager / cupyvae graph",
      lambda r: _num(r.get("time_relative_to_cupyvae_graph", {}).get("torch-eager"), 2))]
KERNEL_COLUMNS = [
    ("kernel", lambda r: f"`{r['kernel']}`"),
    ("shape", lambda r: r["shape"]),
    ("time (us)", lambda r: "check failed" if r.get("check") != "ok" else _num(r["seconds"] * 1e6, 2)),
    ("GB/s (% of peak)", lambda r: "" if "gb_per_s" not in r else
     f"{r['gb_per_s']:.0f}" + ("" if r.get("pct_of_peak") is None else f" ({r['pct_of_peak']:.0f}%)")),
    ("GFLOP/s", lambda r: _num(r.get("gflop_per_s"), 0)),
    ("cuBLAS GFLOP/s", lambda r: _num(r.get("cublas", {}).get("gflop_per_s"), 0)),
    ("time / cuBLAS time", lambda r: _num(r.get("time_vs_cublas"), 2)),
]

PRIOR_COLUMNS = [
    ("prior", lambda r: f"`{r['prior']}`"
     + ("" if r.get("components") is None else f" (K = {r['components']})")),
    ("device", lambda r: r["device"]),
    ("log p(x), nats", lambda r: _status(r) or
     f"{r['test_log_likelihood']:.2f} ± {r['test_log_likelihood_stderr']:.2f}"),
    ("log p(x) - normal prior's (paired)", lambda r: _status(r) or _gain(r)),
    ("negative ELBO, nats", lambda r: _status(r) or _num(r["test_negative_elbo"], 2)),
    ("KL, nats", lambda r: _status(r) or _num(r["test_kl"], 2)),
    ("active units", lambda r: _status(r) or r["active_units"]),
    ("s/epoch", lambda r: _status(r) or _num(r["seconds_per_epoch"], 2)),
    ("time / normal prior's", lambda r: _status(r) or _num(r.get("seconds_vs_normal"), 2)),
    ("GEMM FLOPs / normal prior's", lambda r: _status(r) or _num(r.get("gemm_flops_vs_normal"), 2)),
]


def _gain(row: dict) -> str:
    if row.get("log_likelihood_vs_normal") is None:
        return ""
    return f"{row['log_likelihood_vs_normal']:+.2f} ± {row['log_likelihood_vs_normal_stderr']:.2f}"


def _status(row: dict) -> str:
    """'' for a measured row, else why it was not measured (e.g. a device that refused it)."""
    status = row.get("status", "ok")
    return "" if status == "ok" else status.split(":")[0]


def _num(value, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _ms(row: dict, key: str) -> str:
    seconds = row.get("seconds_per_epoch", {}).get(key)
    if seconds is not None:
        return f"{seconds * 1e3:.1f}"
    status = row.get("results", {}).get(key, {}).get("status", "")
    return status.split(" (")[0]           # "skipped", "timeout after 150 s", ...


def table(columns, rows) -> str:
    lines = ["| " + " | ".join(title for title, _ in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(cell(row)) for _, cell in columns) + " |")
    return "\n".join(lines)


def caption(result: dict, path: Path) -> str:
    machine = result.get("gpu") or result.get("machine") or result.get("cpu") or "unknown machine"
    if result.get("cores"):
        machine += f", {result['cores']} cores"
    versions = ", ".join(f"{name} {result[key]}" for name, key in (
        ("Python", "python"), ("NumPy", "numpy"), ("CuPy", "cupy"), ("PyTorch", "torch"),
        ("CUDA runtime", "cuda_runtime"), ("driver", "cuda_driver"), ("cupyvae", "cupyvae"))
        if result.get(key))
    command = result.get("command") or DEFAULT_COMMANDS.get(result.get("benchmark"), "")
    parts = [f"**{machine}**", versions, result.get("date", ""), result.get("dataset", "")]
    if result.get("benchmark") == "priors":
        parts.append(f"{result['model']}, batch {result['batch']}, Adam {result['lr']:g}, "
                     f"{result['epochs']} epochs; log p(x) importance sampled with "
                     f"{result['iw_samples']} samples per test image (± one standard error)")
    elif result.get("benchmark") == "train_cpu":
        parts.append("median over epochs 2 and later [min-max]; every epoch alternates between "
                     "the sides in one process")
        if result.get("load_average_at_start"):
            parts.append(f"load average at start {result['load_average_at_start'][0]:.2f}")
    if result.get("peak_bandwidth_gb_per_s"):
        parts.append(f"peak bandwidth {result['peak_bandwidth_gb_per_s']:.0f} GB/s")
    return "; ".join(p for p in parts if p) + f". Produced by `{command}` ({path.name})."


DEFAULT_COMMANDS = {"train_cpu": "python benchmarks/bench_train_cpu.py",
                    "priors": "python benchmarks/bench_priors.py"}
TITLES = {"train_cpu": "Training on the CPU (seconds per epoch, lower is better)",
          "train_gpu": "Training on the GPU (milliseconds per epoch, lower is better)",
          "kernels": "Kernels on the GPU",
          "priors": "Priors on dynamically binarized Fashion-MNIST (test set)"}
COLUMNS = {"train_cpu": CPU_COLUMNS, "train_gpu": GPU_COLUMNS, "kernels": KERNEL_COLUMNS,
           "priors": PRIOR_COLUMNS}


def render(path: Path) -> str | None:
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    kind = result.get("benchmark") if isinstance(result, dict) else None
    if kind not in COLUMNS:
        return None            # not a benchmark result (e.g. the suite's summary.json)
    if kind == "train_cpu" and any("cupyvae" not in row for row in result.get("rows", [])):
        print(f"{path}: written by the old bench_train_cpu.py (fresh models, no per-epoch "
              "record); rerun the benchmark", file=sys.stderr)
        return None
    title = TITLES[kind]
    if result.get("device") == "emulated":
        title += " -- emulator smoke run, not GPU numbers"
    if result.get("quick"):
        title += " -- quick smoke run, not a measurement"
    return f"#### {title}\n\n{table(COLUMNS[kind], result.get('rows', []))}\n\n{caption(result, path)}\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()
    order = {"train_cpu": 0, "train_gpu": 1, "kernels": 2, "priors": 3}
    rendered = []
    for path in sorted(args.results.rglob("*.json")):
        text = render(path)
        if text is not None:
            kind = json.loads(path.read_text())["benchmark"]
            rendered.append((order[kind], str(path), text))
    if not rendered:
        print(f"no benchmark results under {args.results}", file=sys.stderr)
        return 1
    print("\n".join(text for _, _, text in sorted(rendered)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
