"""Kernel microbenchmarks on one GPU: each kernel checked against its NumPy twin, then timed.

    kernel                     measure        against
    bernoulli_nll              GB/s           the device's peak memory bandwidth
    gaussian_likelihood_nll    GB/s           the device's peak memory bandwidth
    linear_forward             GFLOP/s        cuBLAS SGEMM on the same GEMM; and our own
                                              single pass (split-K off), to show the split
    linear_backward            GFLOP/s        cuBLAS: the two SGEMMs x^T da and da W^T
                                              (ours: dW, db and dx_pre in ONE launch)
    adam_update                GB/s           the device's peak memory bandwidth

Bandwidth is only compared with the HBM peak where the working set is at least 4x the
device's L2 cache (read from the device, cudaDevAttrL2CacheSize): a smaller set stays in L2
between the back-to-back launches of a timed graph and would report L2 speed.  The loss
kernels' batch is sized from the L2 (at least 4096 rows of 784); Adam runs at the flat
buffers of the two training models (in L2: latency, not bandwidth -- no peak percentage)
and at a buffer sized from the L2.  GEMMs at the shapes of training: (B, I, O) =
(100, 784, 200) and (100, 200, 784) (784-200-Z at batch 100), and (1024, 784, 1024),
(1024, 1024, 1024), (1024, 1024, 784) (784-1024-1024-64 at batch 1024).  Ours fuse more than
cuBLAS's plain GEMM does (bias and activation; the activation derivative; the bias gradient),
so equal time means ours does more per byte.

Like cupy's examples/gemm: correctness first (a kernel that disagrees with its twin is not
timed), then CUDA events on the same device.  Timing replays a CUDA graph of --repeat
back-to-back launches, so a kernel of a few microseconds is measured on the GPU rather than
through Python's launch overhead.  cuBLAS is checked through cupy.cublas.gemm on C-contiguous
operands with transpose flags, and timed as torch.matmul on zero-copy views of the same
arrays captured in a torch CUDA graph (CuPy refuses cuBLAS calls during stream capture; where
PyTorch is absent the CuPy loop is timed, labelled).  Every timing records its method ("captured": true for a CUDA graph); where a
launch cannot be captured a plain loop is timed instead, labelled as a host-bound upper
bound, and then no ours-vs-cuBLAS ratio is given ("comparison" says why).  Peak bandwidth
= 2 (DDR) x memory clock x bus width, from cudaDeviceGetAttribute (CUDA 13 removed the
clock from cudaDeviceProp); recorded as unavailable where the driver does not report it.

    python benchmarks/bench_kernels.py [--repeat 200] [--out benchmarks/results/gpu-kernels.json]
    python benchmarks/bench_kernels.py --device emulated --tiny     # harness smoke test, no GPU
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, Path(__file__).resolve().parent):   # a checkout without `pip install -e .`
    if str(_path) not in sys.path:                       # and benchmarks/_gpu.py
        sys.path.insert(0, str(_path))
from _gpu import require_gpu                              # noqa: E402

from cupyvae import layers, optim                                     # noqa: E402
from cupyvae.cuda import ops                                          # noqa: E402
from cupyvae.cuda.graph import GraphCaptureError, bind, capture, issue  # noqa: E402
from cupyvae.cuda.launch import to_device, to_host                    # noqa: E402
from cupyvae.distributions.bernoulli import bernoulli_nll            # noqa: E402
from cupyvae.distributions.gaussian import gaussian_likelihood_nll   # noqa: E402

LOSS_SHAPE = (4096, 784)           # at least; grown to 4x the L2 (loss_shape)
L2_FACTOR = 4                      # bandwidth working sets >= L2_FACTOR x the L2 cache
GEMM_SHAPES = [(100, 784, 200), (100, 200, 784),
               (1024, 784, 1024), (1024, 1024, 1024), (1024, 1024, 784)]
ADAM_MODELS = {"784-200-2": ((200,), 2), "784-1024-1024-64": ((1024, 1024), 64)}  # hidden, Z
TINY = dict(loss=(8, 33), gemms=[(5, 33, 7), (5, 7, 33), (3, 600, 5)], adam={"tiny": 1029})
TRIALS = 5
# Checks against the NumPy twin (a wrong kernel is not timed).  Loose next to the unit tests
# (tests/test_kernels_*), tight enough for a 0.1% bug: a float32 sum of K products carries
# at most ~K 2^-24 of sum |x_i w_i| and typically sqrt(K) 2^-24 (K <= 1024: 6e-5 / 2e-6).
GEMM_RTOL = 2e-5
# Row sums of D loss terms: relative to the sum of |terms|, which is at most |nll| + 8 D
# (Bernoulli terms are >= 0; Gaussian ones are >= -(log 2 pi + 7) / 2 since |log var| <= 7).
SUM_RTOL = 1e-5
# Loss gradients: relative to the tensor's largest element (their formulas cancel where
# the mean meets the target, so a per-element relative bound would be meaningless there).
GRAD_RTOL = 1e-5
MOMENT_RTOL = 1e-6      # Adam moments: the same float32 multiply-adds, a few ulp


# ------------------------------------------------------------------------------ device

def peak_bandwidth() -> tuple[float | None, str]:
    """(GB/s, how it was obtained) of the current device's memory."""
    import cupy

    runtime, dev = cupy.cuda.runtime, cupy.cuda.Device().id
    props = runtime.getDeviceProperties(dev)
    try:
        clock_khz = props.get("memoryClockRate") or runtime.deviceGetAttribute(
            getattr(runtime, "cudaDevAttrMemoryClockRate", 36), dev)
        bus_bits = props.get("memoryBusWidth") or runtime.deviceGetAttribute(
            getattr(runtime, "cudaDevAttrGlobalMemoryBusWidth", 37), dev)
    except Exception as exc:  # an attribute the driver does not support
        return None, f"unavailable ({type(exc).__name__}: {exc})"
    if not clock_khz or not bus_bits:
        return None, f"unavailable (memory clock {clock_khz} kHz, bus {bus_bits} bits)"
    peak = 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9
    return peak, f"2 x {clock_khz / 1e6:.3f} GHz x {bus_bits} bit / 8"


def l2_cache_bytes() -> int | None:
    """The current device's L2 cache size in bytes (cudaDevAttrL2CacheSize), None if unknown."""
    import cupy

    runtime, dev = cupy.cuda.runtime, cupy.cuda.Device().id
    try:
        size = runtime.getDeviceProperties(dev).get("l2CacheSize") or runtime.deviceGetAttribute(
            getattr(runtime, "cudaDevAttrL2CacheSize", 38), dev)
    except Exception:  # noqa: BLE001 -- an attribute the driver does not support
        return None
    return int(size) or None


def loss_shape(l2_bytes: int | None, dim: int = LOSS_SHAPE[1]) -> tuple[int, int]:
    """(B, D) for the loss kernels: at least LOSS_SHAPE, and enough rows that the smallest
    working set (bernoulli: read raw and x, write draw and nll) is L2_FACTOR x the L2."""
    if l2_bytes is None:
        return LOSS_SHAPE
    per_row = 3 * dim * 4 + 4
    return max(LOSS_SHAPE[0], -(-L2_FACTOR * l2_bytes // per_row)), dim


def adam_sizes(l2_bytes: int | None) -> dict:
    """The two models' flat buffers (in L2), and one sized to L2_FACTOR x the L2."""
    sizes = dict(ADAM_MODELS)
    if l2_bytes is not None:
        sizes[f"{L2_FACTOR}x L2"] = -(-L2_FACTOR * l2_bytes // (7 * 4))   # 7 floats per element
    return sizes


# ------------------------------------------------------------------------------ timing
class CudaTimer:
    """Seconds per launch of a step (a list of callables), from CUDA events around a graph
    of `repeat` steps; a plain loop where the step cannot be captured."""

    def __init__(self, repeat: int):
        import cupy

        self.cupy, self.repeat = cupy, repeat
        self.stream = cupy.cuda.Stream(non_blocking=True)

    def __call__(self, step) -> dict:
        cupy, stream = self.cupy, self.stream
        with stream:
            issue(step)                                    # loads kernels, cuBLAS heuristics
            stream.synchronize()
        try:
            graph = capture(step, self.repeat, "cuda", stream)
            run, method, captured = graph.launch, f"CUDA graph of {self.repeat} launches", True
        except GraphCaptureError as exc:
            def run():
                with stream:
                    issue(step, self.repeat)
            method = (f"loop of {self.repeat} launches (capture refused: "
                      f"{str(exc).splitlines()[0][:80]}); host-bound upper bound")
            captured = False
        times = []
        for _ in range(TRIALS + 1):                        # the first trial warms up
            start, end = cupy.cuda.Event(), cupy.cuda.Event()
            start.record(stream)
            run()
            end.record(stream)
            end.synchronize()
            times.append(cupy.cuda.get_elapsed_time(start, end) / 1e3 / self.repeat)
        return {"seconds": statistics.median(times[1:]), "method": method, "captured": captured}


class HostTimer:
    """The emulator's stand-in: wall time of a few launches (exercises the harness only)."""

    def __init__(self, repeat: int):
        self.repeat = max(1, min(repeat, 3))

    def __call__(self, step) -> dict:
        issue(step)
        start = time.perf_counter()
        issue(step, self.repeat)
        return {"seconds": (time.perf_counter() - start) / self.repeat,
                "method": f"emulator wall time of {self.repeat} launches (not a GPU number)",
                "captured": False}


# ------------------------------------------------------------------------------ checks
def check(name: str, got, want, bound) -> str | None:
    """None when |got - want| <= bound everywhere, else a message naming the worst element."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    err = np.abs(got - want)
    bad = ~(err <= bound)                                  # NaN counts as bad
    if not bad.any():
        return None
    rank = np.where(bad, np.where(np.isnan(err), np.inf, err), -1.0)   # NaN is the worst
    worst = tuple(int(i) for i in np.unravel_index(int(np.argmax(rank)), err.shape))
    bound_at = np.broadcast_to(bound, err.shape)[worst]
    return (f"{name}: {int(bad.sum())} of {bad.size} beyond tolerance; worst at {worst}: "
            f"got {got[worst]:.8g}, want {want[worst]:.8g} (bound {bound_at:.3g})")


def first_failure(*messages) -> str:
    failures = [m for m in messages if m]
    return failures[0] if failures else "ok"


# ------------------------------------------------------------------------------ benchmarks
def bench_losses(device, timer, shape, peak, l2_bytes) -> list[dict]:
    batch, dim = shape
    rng = np.random.default_rng(0)
    x = rng.random((batch, dim), dtype=np.float32)
    scale = 1.0 / batch
    rows = []
    cases = {
        "bernoulli_nll": (rng.normal(0, 3, (batch, dim)).astype(np.float32), bernoulli_nll,
                          ops.bernoulli_nll),
        "gaussian_likelihood_nll": (rng.normal(0, 2, (batch, 2 * dim)).astype(np.float32),
                                    gaussian_likelihood_nll, ops.gaussian_likelihood_nll),
    }
    for name, (raw, twin, builder) in cases.items():
        raw_d, x_d = to_device(raw, device), to_device(x, device)
        nll_d = to_device(np.zeros(batch, np.float32), device)
        draw_d = to_device(np.zeros_like(raw), device)
        step = bind([builder(raw_d, x_d, scale, nll_d, draw_d)], device)
        issue(step)
        want_nll, want_draw = twin(raw.astype(np.float64), x.astype(np.float64), scale)
        status = first_failure(
            check(f"{name} nll", to_host(nll_d), want_nll, SUM_RTOL * (np.abs(want_nll) + 8 * dim)),
            check(f"{name} draw", to_host(draw_d), want_draw, GRAD_RTOL * np.abs(want_draw).max()))
        moved = (raw.nbytes + x.nbytes) + (raw.nbytes + batch * 4)   # read raw, x; write draw, nll
        rows.append(_bandwidth_row(name, f"B x D = {batch} x {dim}", status, step, timer, moved,
                                   peak, l2_bytes))
    return rows


def bench_adam(device, timer, sizes, peak, l2_bytes) -> list[dict]:
    from cupyvae.schedules import hyper_array, schedule_step
    from cupyvae.training import TrainingOptions

    rows = []
    lr = 1e-3
    hyper = hyper_array(TrainingOptions(lr=lr), optim.Adam())
    sched = schedule_step(np.array([9, 0], np.uint32), hyper)
    for model, n in sizes.items():
        if not isinstance(n, int):          # (hidden, Z): the flat buffer of that model
            n = flat_size(*n)
        rng = np.random.default_rng(1)
        p, g = rng.normal(0, 0.05, n).astype(np.float32), rng.normal(0, 1e-3, n).astype(np.float32)
        m, v = rng.normal(0, 1e-4, n).astype(np.float32), (rng.random(n, dtype=np.float32) * 1e-6)
        want = [a.copy() for a in (p, m, v)]     # first: on the emulator buffers alias p, m, v
        optim.adam_update(want[0], g, want[1], want[2], sched)
        buffers = [to_device(a, device) for a in (p, g, m, v)]
        step = bind([ops.adam_update(*buffers, to_device(sched, device))], device)
        issue(step)
        got_p, got_m, got_v = (to_host(buffers[i]) for i in (0, 2, 3))
        # p moves by ~lr per step: a few ulp of p plus 1e-5 of the step size
        status = first_failure(
            check("adam p", got_p, want[0], 2.0 ** -22 * np.abs(want[0]) + 1e-5 * lr),
            check("adam m", got_m, want[1], MOMENT_RTOL * (np.abs(want[1]) + np.abs(g))),
            check("adam v", got_v, want[2], MOMENT_RTOL * (np.abs(want[2]) + g * g)))
        moved = 4 * n * 4 + 3 * n * 4                        # read p, g, m, v; write p, m, v
        rows.append(_bandwidth_row("adam_update", f"n = {n} ({model})", status, step, timer, moved,
                                   peak, l2_bytes))
    return rows


def flat_size(hidden: tuple, z_dim: int) -> int:
    import cupyvae

    return cupyvae.VAE((28, 28), latent_dim=z_dim, hidden=hidden, device="cpu").spec.layout.size


def _bandwidth_row(name, shape, status, step, timer, moved_bytes, peak, l2_bytes) -> dict:
    """GB/s of a memory-bound kernel; compared with the HBM peak only when the working set
    is at least L2_FACTOR x the L2 (otherwise it is an L2 / latency number)."""
    row = {"kernel": name, "shape": shape, "check": status, "bytes": moved_bytes,
           "l2_bytes": l2_bytes}
    if status != "ok":
        return row
    timing = timer(step)
    gbs = moved_bytes / timing["seconds"] / 1e9
    beyond_l2 = l2_bytes is not None and moved_bytes >= L2_FACTOR * l2_bytes
    row.update(timing, gb_per_s=gbs, beyond_l2=beyond_l2,
               pct_of_peak=100 * gbs / peak if peak is not None and beyond_l2 else None)
    return row


def bench_gemms(device, timer, shapes) -> list[dict]:
    """linear_forward (split-K as the library picks it, and single pass) and linear_backward
    (dW + db + dx_pre in one launch) against their twins, then timed against cuBLAS."""
    rows = []
    workspace = ops.linear_workspace(device)
    for batch, n_in, n_out in shapes:
        rng = np.random.default_rng(2)
        limit = np.sqrt(6.0 / (n_in + n_out))
        x = rng.random((batch, n_in), dtype=np.float32)                    # ReLU outputs / pixels
        w = rng.uniform(-limit, limit, (n_in, n_out)).astype(np.float32)
        b = rng.uniform(-0.1, 0.1, n_out).astype(np.float32)
        da = (rng.normal(0, 1e-3, (batch, n_out))).astype(np.float32)
        d = {k: to_device(a, device) for k, a in dict(x=x, w=w, b=b, da=da).items()}
        y_d = to_device(np.zeros((batch, n_out), np.float32), device)
        dx_d = to_device(np.zeros((batch, n_in), np.float32), device)
        dw_d = to_device(np.zeros((n_in, n_out), np.float32), device)
        db_d = to_device(np.zeros(n_out, np.float32), device)
        x64, w64, da64 = (a.astype(np.float64) for a in (x, w, da))
        abs_xw = np.abs(x64) @ np.abs(w64) + np.abs(b)
        forward_check = [("y", y_d, layers.linear_forward(x64, w64, b.astype(np.float64), "relu"),
                          GEMM_RTOL * abs_xw)]
        forward_flops = 2.0 * batch * n_in * n_out
        cases = {
            # name: (launch, outputs and twins with bounds, cuBLAS GEMMs (transa, transb,
            # a, b, out), flops)
            "linear_forward": (
                ops.linear_forward(d["x"], d["w"], d["b"], "relu", y_d, workspace=workspace),
                forward_check, [("N", "N", d["x"], d["w"], y_d)], forward_flops),
            "linear_forward (single pass)": (
                ops.linear_forward(d["x"], d["w"], d["b"], "relu", y_d),
                forward_check, [("N", "N", d["x"], d["w"], y_d)], forward_flops),
            "linear_backward": (
                ops.linear_backward(d["x"], d["w"], d["da"], "relu", dw_d, db_d, dx_d,
                                    workspace=workspace),
                [("dx_pre", dx_d, layers.linear_backward_input(da64, w64, x64, "relu"),
                  GEMM_RTOL * (np.abs(da64) @ np.abs(w64).T)),
                 *zip(("dw", "db"), (dw_d, db_d), layers.linear_backward_weight(x64, da64),
                      (GEMM_RTOL * (np.abs(x64).T @ np.abs(da64)),
                       GEMM_RTOL * np.abs(da64).sum(axis=0)))],
                [("T", "N", d["x"], d["da"], dw_d), ("N", "T", d["da"], d["w"], dx_d)],
                2 * forward_flops),
        }
        for name, (launch, outputs, blas, flops) in cases.items():
            step = bind([launch], device)
            issue(step)
            status = first_failure(*(check(f"{name} {out}", to_host(got), want, bound)
                                     for out, got, want, bound in outputs))
            row = {"kernel": name, "shape": f"(B, I, O) = ({batch}, {n_in}, {n_out})",
                   "check": status, "blocks": launch.grid[0], "splits": _splits(launch)}
            if status == "ok":
                row.update(timer(step))
                row["gflop_per_s"] = flops / row["seconds"] / 1e9
                row["cublas"] = cublas_row(device, timer, blas, flops)
                _compare(row)
            rows.append(row)
    return rows


def _splits(launch) -> list[int]:
    """The split-K factors of a linear launch: [S] forward, [S_dW, S_dx] backward."""
    if launch.entry == "linear_forward":
        return [int(launch.args[-1])]
    return [int(launch.args[-3]), int(launch.args[-2])]


def _compare(row: dict) -> None:
    """time_vs_cublas, only when both sides were timed the same way (captured graphs)."""
    blas = row["cublas"]
    if not blas.get("seconds"):
        row["comparison"] = f"no cuBLAS timing ({blas.get('status')})"
    elif not (row.get("captured") and blas.get("captured")):
        row["comparison"] = ("not comparable: " + ("ours" if not row.get("captured") else "cuBLAS")
                             + " ran as a host loop, not a captured graph")
    else:
        row["time_vs_cublas"] = row["seconds"] / blas["seconds"]
        row["comparison"] = "both captured"


def cublas_row(device, timer, gemms, flops) -> dict:
    """cupy.cublas.gemm on C-contiguous operands with transpose flags, into preallocated
    outputs (nothing copied, nothing allocated: capturable); checked, then timed."""
    if device != "cuda":
        return {"status": "skipped (no cuBLAS on the emulator)"}
    from cupy import cublas

    step = [lambda g=g: cublas.gemm(g[0], g[1], g[2], g[3], out=g[4]) for g in gemms]
    issue(step)
    failures = []
    for transa, transb, a, b_, out in gemms:
        lhs, rhs = to_host(a).astype(np.float64), to_host(b_).astype(np.float64)
        lhs, rhs = (lhs.T if transa == "T" else lhs), (rhs.T if transb == "T" else rhs)
        failures.append(check("cublas", to_host(out), lhs @ rhs, GEMM_RTOL * (np.abs(lhs) @ np.abs(rhs))))
    status = first_failure(*failures)
    if status != "ok":
        return {"status": status}
    # CuPy refuses cuBLAS calls during stream capture (NotImplementedError, seen on an H200),
    # so the same GEMMs are captured through PyTorch's CUDA graphs where PyTorch is there.
    timing = _torch_captured_gemms(gemms, timer.repeat) or timer(step)
    row = {"status": "ok", "calls": len(gemms), **timing}
    row["gflop_per_s"] = flops / row["seconds"] / 1e9
    return row


def _torch_captured_gemms(gemms, repeat: int) -> dict | None:
    """The GEMMs as torch.matmul on zero-copy views of the same CuPy arrays (transposes as
    views, so cuBLAS gets transpose flags), `repeat` of them captured in one torch CUDA graph
    and timed by CUDA events; None where PyTorch or its capture is unavailable."""
    try:
        import torch

        views = [(torch.as_tensor(a, device="cuda"), torch.as_tensor(b, device="cuda"),
                  torch.as_tensor(out, device="cuda"), ta, tb) for ta, tb, a, b, out in gemms]

        def step():
            for a, b, out, ta, tb in views:
                torch.matmul(a.T if ta == "T" else a, b.T if tb == "T" else b, out=out)

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                step()                                     # cuBLAS handles and heuristics
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(repeat):
                step()
        times = []
        for _ in range(TRIALS + 1):                        # the first trial warms up
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3 / repeat)
    except Exception:  # noqa: BLE001 -- no torch, no CUDA torch, or capture refused: CuPy's path
        return None
    return {"seconds": statistics.median(times[1:]), "captured": True,
            "method": f"torch.matmul (cuBLAS) captured in a torch CUDA graph of {repeat} launches"}


# ------------------------------------------------------------------------------ report
def print_rows(rows: list[dict]) -> None:
    for row in rows:
        head = f"{row['kernel']:28s} {row['shape']:34s}"
        if row["check"] != "ok":
            print(f"{head} CHECK FAILED: {row['check']}", flush=True)
        elif "gflop_per_s" in row:
            blas = row.get("cublas", {})
            blas_text = (f"  cuBLAS {blas['gflop_per_s']:8.1f} GFLOP/s, ours take "
                         f"{row['time_vs_cublas']:.2f}x its time" if "time_vs_cublas" in row
                         else f"  cuBLAS: {row.get('comparison') or blas.get('status')}")
            print(f"{head} {row['seconds'] * 1e6:8.2f} us {row['gflop_per_s']:8.1f} GFLOP/s{blas_text}",
                  flush=True)
        else:
            pct = (f" ({row['pct_of_peak']:.0f}% of peak)" if row["pct_of_peak"] is not None
                   else " (in L2: not compared with the peak)")
            print(f"{head} {row['seconds'] * 1e6:8.2f} us {row['gb_per_s']:8.1f} GB/s{pct}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=200, help="launches per timed graph")
    ap.add_argument("--out", default="benchmarks/results/gpu-kernels.json")
    ap.add_argument("--device", choices=["cuda", "emulated"], default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes (smoke test)")
    args = ap.parse_args()
    if args.device == "cuda":
        require_gpu()
        import cupy

        timer = CudaTimer(args.repeat)
        peak, peak_note = peak_bandwidth()
        l2_bytes = l2_cache_bytes()
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        env = {"gpu": name, "cupy": cupy.__version__,
               "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
               "cuda_driver": cupy.cuda.runtime.driverGetVersion(),
               "sm_count": props.get("multiProcessorCount"), "l2_bytes": l2_bytes}
    else:
        timer, peak, peak_note = HostTimer(args.repeat), None, "emulator: no device bandwidth"
        l2_bytes = None
        env = {"gpu": None, "cpu": platform.processor() or platform.machine(), "l2_bytes": None}
    shapes = TINY if args.tiny else dict(loss=loss_shape(l2_bytes), gemms=GEMM_SHAPES,
                                         adam=adam_sizes(l2_bytes))
    print(f"{env.get('gpu') or env.get('cpu')}: peak bandwidth "
          f"{'n/a' if peak is None else f'{peak:.0f} GB/s'} ({peak_note}), L2 "
          f"{'n/a' if l2_bytes is None else f'{l2_bytes / 2 ** 20:.0f} MiB'}", flush=True)
    rows = []
    for part in (lambda: bench_losses(args.device, timer, shapes["loss"], peak, l2_bytes),
                 lambda: bench_gemms(args.device, timer, shapes["gemms"]),
                 lambda: bench_adam(args.device, timer, shapes["adam"], peak, l2_bytes)):
        new = part()
        print_rows(new)
        rows.extend(new)
    result = {"benchmark": "kernels", "date": date.today().isoformat(), "device": args.device,
              "command": "python benchmarks/bench_kernels.py " + " ".join(sys.argv[1:]),
              "python": platform.python_version(), "numpy": np.__version__, **env,
              "peak_bandwidth_gb_per_s": peak, "peak_bandwidth_note": peak_note,
              "repeat": args.repeat, "trials": TRIALS, "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    if any(row["check"] != "ok" for row in rows):
        sys.exit("some kernels disagree with their NumPy twins (see CHECK FAILED above)")


if __name__ == "__main__":
    main()
