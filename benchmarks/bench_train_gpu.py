"""Seconds per training epoch on one GPU: cupyvae's kernels (eager, and CUDA graphs of 1,
50 and a whole epoch of steps) against PyTorch (eager with fused Adam, and torch.compile
in modes "reduce-overhead" and "max-autotune"), all in one run on the same GPU.

Same models (784-200-2 and 784-200-20 at batch 100, 784-1024-1024-64 at batch 1024; ReLU,
Bernoulli likelihood, Gaussian posterior, cupyvae's initial weights copied into PyTorch), same
data (Fashion-MNIST's 60000 training images, or a synthetic [0, 1] set of the same shape
when the dataset is not available offline -- the JSON says which), same batch orders,
batch size and Adam settings; the data sit on the GPU on both sides and each side reads
its loss back once per epoch.  Each side draws its reparameterization noise its own way
(Philox for cupyvae, torch.randn for PyTorch).  One warm-up epoch (compilation, capture),
then the median of --epochs timed epochs, each timed by synchronize + perf_counter.
cupyvae's epoch includes the uploads of the permutation, the counters and the
hyperparameters (the Adam moments stay on the device).  torch.compile runs in a child process per model and
mode, after everything else (all models' "reduce-overhead" first, then "max-autotune",
the most expendable), each under a timeout (--compile-timeout, cut to what is left of
--budget); "max-autotune" only for the models named by --max-autotune (its GEMM autotuning
costs minutes on the wide model).  What was skipped or timed out is recorded as such.
Prints ratios; writes JSON and a bar chart.

    python benchmarks/bench_train_gpu.py [--epochs 3] [--out benchmarks/results/gpu-train.json]
    python benchmarks/bench_train_gpu.py --device emulated --tiny     # harness smoke test, no GPU
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, Path(__file__).resolve().parent):   # a checkout without `pip install -e .`
    if str(_path) not in sys.path:                       # and benchmarks/_gpu.py
        sys.path.insert(0, str(_path))
from _baseline import DATA_SHAPE, LR, Case, torch_mlp     # noqa: E402
from _gpu import require_gpu                              # noqa: E402

CASES = (Case((200,), 2, 100), Case((200,), 20, 100), Case((1024, 1024), 64, 1024))
TINY_CASE = Case((16,), 2, 32)
TINY_ROWS = 128                      # 4 steps per epoch
# cupyvae variants: name -> (execution, steps_per_graph)
CUPYVAE_VARIANTS = {"cupyvae-eager": ("eager", 1), "cupyvae-graph-1": ("graph", 1),
                    "cupyvae-graph-50": ("graph", 50), "cupyvae-graph-epoch": ("graph", None)}
HEADLINE = "cupyvae-graph-50"        # the default execution (cupyvae.cuda.graph)
COMPILE_MODES = ("reduce-overhead", "max-autotune")
MIN_COMPILE_S = 30.0                 # no torch.compile child starts with less time than this


# ------------------------------------------------------------------------------ setup

def load_data(dataset: str, tiny: bool) -> tuple[np.ndarray, str]:
    """(N, 784) float32 in [0, 1] and a description.  Offline only: a missing dataset
    falls back to synthetic data of the same shape rather than trying the network."""
    if tiny:
        rng = np.random.default_rng(0)
        return rng.random((TINY_ROWS, 784), dtype=np.float32), f"synthetic uniform [0, 1] ({TINY_ROWS} rows)"
    from cupyvae.datasets import load_dataset

    try:
        data = load_dataset(dataset, download=False)
        x = np.ascontiguousarray(data.x_train.reshape(len(data.x_train), -1), np.float32)
        return x, f"{dataset} ({len(x)} train)"
    except Exception as exc:  # DatasetError: not installed / not cached on this machine
        print(f"note: dataset {dataset!r} not available offline ({exc}); using synthetic "
              "uniform [0, 1] data of shape (60000, 784) instead", flush=True)
        rng = np.random.default_rng(0)
        return rng.random((60000, 784), dtype=np.float32), "synthetic uniform [0, 1] (60000 rows)"


def permutations(n: int, epochs: int) -> list[np.ndarray]:
    """The batch orders: one for the warm-up epoch, then one per timed epoch."""
    rng = np.random.default_rng(0)
    return [rng.permutation(n) for _ in range(1 + epochs)]


def initial_params(case: Case) -> dict[str, np.ndarray]:
    """cupyvae's initialization (seed 0), name -> host array; the same in every process."""
    import cupyvae

    vae = cupyvae.VAE(DATA_SHAPE, latent_dim=case.z_dim, hidden=case.hidden, device="cpu", seed=0)
    return {name: np.array(p) for name, p in vae.params.items()}


# ------------------------------------------------------------------------------ cupyvae
def time_cupyvae(case: Case, x, perms, device: str, execution: str, steps_per_graph) -> dict:
    import cupyvae
    from cupyvae.optim import Adam
    from cupyvae.training import TrainingOptions

    vae = cupyvae.VAE(DATA_SHAPE, latent_dim=case.z_dim, hidden=case.hidden, device=device, seed=0)
    ex = vae._executor
    ex.execution, ex.steps_per_graph = execution, steps_per_graph
    init = ex.host_flat()
    options = TrainingOptions(batch_size=case.batch, lr=LR)
    ex.train_epoch(x, perms[0], options, Adam(lr=LR))   # compile, upload, capture
    ex.load_flat(init)                 # restart from the same init; data and graphs are kept
    ex.load_moments(None, None)
    optimizer = Adam(lr=LR)
    seconds, loss = [], None
    for perm in perms[1:]:
        _synchronize(device)
        start = time.perf_counter()
        loss = ex.train_epoch(x, perm, options, optimizer)   # ends with a read-back
        seconds.append(time.perf_counter() - start)
    method = execution_method(ex)
    del vae, ex
    _free_cupy(device)
    return {"seconds": seconds, "final_train_loss": loss, **method}


def execution_method(ex) -> dict:
    """How the timed epochs really ran: {"method": text, "captured": bool}.  A "graph"
    variant counts as captured only if its steps are replayed CUDA graphs, so a silent
    fallback to issuing launches could never pass for a graph timing."""
    from cupyvae.cuda.graph import CudaGraphSteps, EagerSteps, ReplayedSteps

    steps = ex._steps
    if isinstance(steps, EagerSteps):
        return {"method": "eager: every launch issued from Python", "captured": False}
    if isinstance(steps, ReplayedSteps):
        sizes = [g.steps for g in steps.graphs]
        if steps.graphs and all(isinstance(g, CudaGraphSteps) for g in steps.graphs):
            return {"method": f"replayed CUDA graphs of {sizes} steps", "captured": True}
        return {"method": f"emulator recordings of {sizes} steps (not CUDA graphs)",
                "captured": False}
    return {"method": f"unknown ({type(steps).__name__})", "captured": False}


def _synchronize(device: str) -> None:
    if device == "cuda":
        import cupy
        cupy.cuda.Device().synchronize()


def _free_cupy(device: str) -> None:
    if device == "cuda":
        import cupy
        cupy.get_default_memory_pool().free_all_blocks()


# ------------------------------------------------------------------------------ torch
def torch_modules(case: Case, params: dict[str, np.ndarray], device: str):
    """Encoder and decoder as nn.Sequential, with cupyvae's weights (W stored (in, out))."""
    return (torch_mlp(params, "encoder").to(device), torch_mlp(params, "decoder").to(device))


def time_torch(case: Case, x, perms, params, device: str, compile_mode: str | None) -> dict:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    enc, dec = torch_modules(case, params, device)
    z_dim, batch = case.z_dim, case.batch

    def loss_fn(xb, eps):
        q = enc(xb)
        mu, lv = q[:, :z_dim], q[:, z_dim:]
        z = mu + torch.exp(0.5 * lv) * eps
        logits = dec(z)
        nll = F.binary_cross_entropy_with_logits(logits, xb, reduction="none").sum(1)
        kl = -0.5 * (1 + lv - mu * mu - lv.exp()).sum(1)
        return (nll + kl).mean()

    if compile_mode is not None:
        loss_fn = torch.compile(loss_fn, mode=compile_mode)
    # cudagraph trees (both compile modes) must be told where a training iteration starts.
    mark_step = getattr(torch.compiler, "cudagraph_mark_step_begin", None) \
        if compile_mode is not None and device == "cuda" else None
    params_list = [*enc.parameters(), *dec.parameters()]
    initial = [p.detach().clone() for p in params_list]
    xt = torch.from_numpy(x).to(device)

    def make_optimizer():
        return torch.optim.Adam(params_list, lr=LR, fused=device == "cuda")

    def epoch(perm, optimizer) -> float:
        idx = torch.from_numpy(perm).to(device)
        n = len(perm) // batch
        total = torch.zeros((), device=device)
        for i in range(n):
            xb = xt.index_select(0, idx[i * batch:(i + 1) * batch])
            eps = torch.randn(batch, z_dim, device=device)
            if mark_step is not None:
                mark_step()
            loss = loss_fn(xb, eps)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach()
        return float(total) / n          # the one read-back of the epoch

    epoch(perms[0], make_optimizer())    # warm-up: compilation, cudagraph recording
    with torch.no_grad():                # restart from the same init, keeping compiled code
        for p, p0 in zip(params_list, initial):
            p.copy_(p0)
    optimizer = make_optimizer()
    seconds, loss = [], None
    for perm in perms[1:]:
        _torch_synchronize(device)
        start = time.perf_counter()
        loss = epoch(perm, optimizer)
        seconds.append(time.perf_counter() - start)
    return {"seconds": seconds, "final_train_loss": loss}


def _torch_synchronize(device: str) -> None:
    if device == "cuda":
        import torch
        torch.cuda.synchronize()


def time_torch_compiled_in_child(case: Case, mode: str, args, timeout: float) -> dict:
    """torch.compile in a child process, so its compile time can be cut off by a timeout."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", mode, "--case", case.name,
               "--epochs", str(args.epochs), "--dataset", args.dataset]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout after {timeout:.0f} s (compile + {1 + args.epochs} epochs)"}
    wall = time.perf_counter() - start
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("RESULT "):
            return {**json.loads(line[len("RESULT "):]), "child_wall_s": wall}
    tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
    return {"status": f"error (exit {done.returncode}): " + " | ".join(tail)}


def worker(args) -> None:
    """Child process: time one torch.compile mode on one model; print one RESULT line."""
    case = next(c for c in CASES if c.name == args.case)
    x, _ = load_data(args.dataset, tiny=False)
    result = time_torch(case, x, permutations(len(x), args.epochs), initial_params(case),
                        "cuda", args.worker)
    print("RESULT " + json.dumps(result), flush=True)


# ------------------------------------------------------------------------------ report
def median_or_none(result: dict):
    return statistics.median(result["seconds"]) if result.get("seconds") else None


def run_case(case: Case, x, perms, args, torch_device: str | None) -> dict:
    """Every variant that runs in this process; torch.compile comes later (add_compiled)."""
    results: dict[str, dict] = {}
    for name, (execution, steps_per_graph) in CUPYVAE_VARIANTS.items():
        results[name] = time_cupyvae(case, x, perms, args.device, execution, steps_per_graph)
    if torch_device is not None:
        results["torch-eager"] = time_torch(case, x, perms, initial_params(case), torch_device, None)
        _free_torch(torch_device)
    return {"model": case.name, "batch": case.batch, "steps_per_epoch": len(x) // case.batch,
            "epochs_timed": args.epochs, "results": results}


def add_compiled(rows: list[dict], cases: list[Case], args, torch_device: str | None) -> None:
    """torch.compile variants, mode by mode over all models, within the time budget."""
    if torch_device is None:
        return
    for mode in COMPILE_MODES:
        key = f"torch-compile-{mode}"
        for row, case in zip(rows, cases):
            left = args.budget - (time.perf_counter() - args.started)
            if args.skip_compile or torch_device != "cuda":
                row["results"][key] = {"status": "skipped (--skip-compile, or no GPU)"}
            elif mode == "max-autotune" and case.name not in args.max_autotune:
                row["results"][key] = {"status": "skipped (not in --max-autotune: its GEMM "
                                                 "autotuning takes minutes on this model)"}
            elif left < MIN_COMPILE_S:
                row["results"][key] = {"status": f"skipped (only {left:.0f} s left of the "
                                                 f"{args.budget:.0f} s budget)"}
            else:
                row["results"][key] = time_torch_compiled_in_child(
                    case, mode, args, min(args.compile_timeout, left))
                print(f"  {case.name} {key}: " + (
                    f"{median_or_none(row['results'][key]) * 1e3:.1f} ms/epoch"
                    if median_or_none(row["results"][key]) else row["results"][key]["status"]),
                    flush=True)


def summarize(row: dict) -> dict:
    """Medians and the ratios to the headline cupyvae variant."""
    row["seconds_per_epoch"] = {k: median_or_none(r) for k, r in row["results"].items()}
    # Eager and every graph size run the same kernels in the same order: the same bits.
    row["cupyvae_variants_agree"] = len({r["final_train_loss"] for k, r in row["results"].items()
                                         if k.startswith("cupyvae")}) == 1
    # On a GPU every "graph" variant must really have replayed captured graphs.
    row["cupyvae_graphs_captured"] = all(r.get("captured") for k, r in row["results"].items()
                                         if k.startswith("cupyvae-graph"))
    headline = row["seconds_per_epoch"][HEADLINE]
    row["time_relative_to_cupyvae_graph"] = {
        k: v / headline for k, v in row["seconds_per_epoch"].items()
        if v is not None and headline and k != HEADLINE}
    return row


def _free_torch(device: str) -> None:
    if device == "cuda":
        import torch
        torch.cuda.empty_cache()


def print_row(row: dict) -> None:
    print(f"{row['model']} (batch {row['batch']}, {row['steps_per_epoch']} steps/epoch):", flush=True)
    if not row["cupyvae_variants_agree"]:
        print("  WARNING: cupyvae eager and graph variants ended with different losses", flush=True)
    if not row["cupyvae_graphs_captured"]:
        print("  note: a cupyvae graph variant did not replay captured CUDA graphs: "
              + "; ".join(f"{k}: {r.get('method')}" for k, r in row["results"].items()
                          if k.startswith("cupyvae-graph")), flush=True)
    for name, seconds in row["seconds_per_epoch"].items():
        result = row["results"][name]
        if seconds is None:
            print(f"  {name:34s} {result.get('status', 'no result')}")
            continue
        ratio = row["time_relative_to_cupyvae_graph"].get(name)
        ratio_text = "" if ratio is None else f"  ({ratio:5.2f}x the time of {HEADLINE})"
        print(f"  {name:34s} {seconds * 1e3:9.1f} ms/epoch{ratio_text}   "
              f"loss {result['final_train_loss']:.2f}")


def environment(args, dataset: str) -> dict:
    import cupyvae

    env = {"benchmark": "train_gpu", "date": date.today().isoformat(), "device": args.device,
           "command": "python benchmarks/bench_train_gpu.py " + " ".join(sys.argv[1:]),
           "python": platform.python_version(), "numpy": np.__version__,
           "cupyvae": cupyvae.__version__, "dataset": dataset, "lr": LR,
           "timing": "median of the timed epochs after one warm-up epoch; synchronize + perf_counter"}
    if args.device == "cuda":
        import cupy
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        env.update(gpu=_text(props["name"]), cupy=cupy.__version__,
                   cuda_runtime=cupy.cuda.runtime.runtimeGetVersion(),
                   cuda_driver=cupy.cuda.runtime.driverGetVersion())
    else:
        env.update(gpu=None, cpu=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    try:
        import torch
        env.update(torch=torch.__version__, torch_cuda=torch.version.cuda)
    except ImportError:
        env.update(torch=None)
    return env


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def plot(rows: list[dict], title: str, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(rows[0]["seconds_per_epoch"])
    fig, ax = plt.subplots(figsize=(4.5 + 2.6 * len(rows), 4.2))
    width = 0.8 / len(variants)
    for j, name in enumerate(variants):
        # a skipped variant has no bar (NaN), rather than a zero on a log axis
        ms = [np.nan if row["seconds_per_epoch"][name] is None else row["seconds_per_epoch"][name] * 1e3
              for row in rows]
        ax.bar([i + (j - (len(variants) - 1) / 2) * width for i in range(len(rows))],
               ms, width, label=name)
    ax.set_xticks(range(len(rows)), [f"{r['model']}\nbatch {r['batch']}" for r in rows])
    ax.set_ylabel("ms per epoch (lower is better; missing = skipped)")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs (after one warm-up)")
    ap.add_argument("--out", default="benchmarks/results/gpu-train.json")
    ap.add_argument("--plot", default=None, help="PNG path (default: --out with .png)")
    ap.add_argument("--device", choices=["cuda", "emulated"], default="cuda")
    ap.add_argument("--tiny", action="store_true", help="one tiny model on a few rows (smoke test)")
    ap.add_argument("--dataset", default="fashion-mnist", help="dataset name or .npz path (offline)")
    ap.add_argument("--no-torch", action="store_true", help="time cupyvae only")
    ap.add_argument("--skip-compile", action="store_true", help="no torch.compile variants")
    ap.add_argument("--compile-timeout", type=float, default=150.0,
                    help="seconds per torch.compile child (compile + all epochs)")
    ap.add_argument("--max-autotune", default="784-200-2",
                    help="comma-separated models that get torch.compile max-autotune")
    ap.add_argument("--budget", type=float, default=1e9,
                    help="seconds for the whole run: torch.compile children are cut to fit")
    ap.add_argument("--worker", choices=COMPILE_MODES, help=argparse.SUPPRESS)
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.started = time.perf_counter()
    args.max_autotune = [name for name in args.max_autotune.split(",") if name]
    if args.worker:
        return worker(args)
    if args.device == "cuda":
        require_gpu()
    torch_device = None
    if not args.no_torch:
        try:
            import torch  # noqa: F401
            torch_device = "cuda" if args.device == "cuda" else "cpu"
            if torch_device == "cuda" and not torch.cuda.is_available():
                sys.exit("no CUDA GPU visible to PyTorch (CuPy sees one); use --no-torch")
        except ImportError:
            print("note: PyTorch not installed; timing cupyvae only", flush=True)
    x, dataset = load_data(args.dataset, args.tiny)
    cases = [TINY_CASE] if args.tiny else list(CASES)
    perms = permutations(len(x), args.epochs)
    env = environment(args, dataset)
    print(f"{env.get('gpu') or env.get('cpu')}: {dataset}, {args.epochs} timed epochs", flush=True)
    rows = []
    for case in cases:
        rows.append(run_case(case, x, perms, args, torch_device))
        print(f"  {case.name}: in-process variants done", flush=True)
    add_compiled(rows, cases, args, torch_device)
    for row in rows:
        print_row(summarize(row))
    result = {**env, "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    png = Path(args.plot) if args.plot else out.with_suffix(".png")
    plot(rows, f"{env.get('gpu') or env.get('cpu')} - {dataset} - {env['date']}", png)
    print(f"wrote {out} and {png}")


if __name__ == "__main__":
    main()
