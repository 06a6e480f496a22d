"""Where a steady-state training step of the NumPy path spends its time.

Trains the model for --warm-epochs epochs (so Adam's moments are what they are in steady
state, subnormals included if the optimizer makes them), then times --steps steps through
the library's own functions, each wrapped by a timer that charges a call's time to it minus
the time of the wrapped calls inside it (self time).  Also times the step's matrix products
alone, back to back on the same shapes (the BLAS floor no NumPy-level change can go below).

With one thread the clock is the main thread's CPU time (time.thread_time), which another
process on the machine slows far less than the wall clock; with more threads it is the
wall clock (BLAS worker threads' CPU time is not the main thread's).

    python benchmarks/profile_step_cpu.py [--model 784-200-20] [--batch 100] [--threads 1]
"""
from __future__ import annotations

import argparse
import functools
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _baseline import DATA_SHAPE, LR  # noqa: E402
from _cpu import load_images  # noqa: E402


class StageTimer:
    """Self time per stage: a wrapped call's time minus the wrapped calls inside it."""

    def __init__(self, clock):
        self.clock = clock
        self.self_time = defaultdict(float)
        self.calls = defaultdict(int)
        self._children = [0.0]

    def wrap(self, owner, attribute: str, stage: str) -> None:
        original = getattr(owner, attribute)
        timer = self

        @functools.wraps(original)
        def timed(*args, **kwargs):
            timer._children.append(0.0)
            start = timer.clock()
            try:
                return original(*args, **kwargs)
            finally:
                elapsed = timer.clock() - start
                inner = timer._children.pop()
                timer.self_time[stage] += elapsed - inner
                timer.calls[stage] += 1
                timer._children[-1] += elapsed

        setattr(owner, attribute, staticmethod(timed) if isinstance(
            owner.__dict__.get(attribute), staticmethod) else timed)


def instrument(timer: StageTimer, model) -> None:
    """Wrap the functions a NumPy training step goes through (looked up at call time)."""
    from cupyvae import executors, layers, objectives, philox, reference
    timer.wrap(executors, "adam_update", "Adam update (flat buffer)")
    timer.wrap(executors, "schedule_step", "schedules (lr, KL weight, clip scale)")
    timer.wrap(executors, "grad_norm_partials", "gradient clipping: norm")
    timer.wrap(philox, "normal_steps", "Philox noise (drawn ahead)")
    timer.wrap(philox, "uniform", "Philox uniforms (binarization)")
    timer.wrap(reference, "linear_forward", "linear forward: GEMM + bias + activation")
    timer.wrap(layers, "linear_backward_weight", "linear backward: dW GEMM + db sum")
    timer.wrap(layers, "linear_backward_input", "linear backward: dx GEMM")
    timer.wrap(reference, "linear_backward", "linear backward: activation derivative")
    spec = model.spec
    for owner, names in ((spec.likelihood, ("nll",)),
                         (spec.posterior, ("rsample", "rsample_backward", "log_prob",
                                           "log_prob_grads", "log_prob_of_draw",
                                           "log_prob_of_draw_grad"))):
        for name in names:
            timer.wrap(owner, name, f"{type(owner).__name__}.{name}")
    if spec.analytic_kl is not None:
        spec.analytic_kl = _timed_function(timer, spec.analytic_kl, "analytic KL")
    timer.wrap(objectives, "negative_elbo_and_grads", "step glue (reference.py, ELBO)")
    timer.wrap(objectives, "iwae_loss_and_grads", "step glue (reference.py, IWAE)")
    timer.wrap(executors.NumpyExecutor, "train_epoch",
               "loop, gather (np.take), binarization compare")


def _timed_function(timer: StageTimer, fn, stage: str):
    holder = type("Holder", (), {"fn": staticmethod(fn)})
    timer.wrap(holder, "fn", stage)
    return holder.fn


def gemm_floor(model, batch: int, repeats: int, clock) -> float:
    """Seconds per step of the step's matrix products alone: per layer the forward product,
    dW = x^T da, and dx = da W^T (not for the encoder's first layer)."""
    rng = np.random.default_rng(0)
    products = []
    for i, layer in enumerate(model.spec.encoder + model.spec.decoder):
        x = rng.random((batch, layer.n_in), dtype=np.float32)
        w = rng.random((layer.n_in, layer.n_out), dtype=np.float32)
        da = rng.random((batch, layer.n_out), dtype=np.float32)
        products += [(x, w), (x.T, da)]
        if i > 0:
            products.append((da, w.T))
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        for _ in range(20):
            for a, b in products:
                a @ b
        best = min(best, (clock() - start) / 20)
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="784-200-20", help="784-H1[-H2...]-Z")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warm-epochs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--binarize", action="store_true")
    args = ap.parse_args(argv)
    import cupyvae
    from cupyvae.threads import blas_threads

    widths = [int(w) for w in args.model.split("-")]
    if widths[0] != 784 or len(widths) < 3:
        ap.error("--model must look like 784-200-20")
    x, dataset = load_images()
    model = cupyvae.VAE(DATA_SHAPE, latent_dim=widths[-1], hidden=tuple(widths[1:-1]), seed=0)
    print(f"{args.model} batch {args.batch}, {args.threads} thread(s), {dataset}: "
          f"{args.warm_epochs} warm-up epochs ...", flush=True)
    model.fit(x, epochs=args.warm_epochs, batch_size=args.batch, lr=LR, threads=args.threads,
              binarize=args.binarize)
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    timer = StageTimer(clock)
    instrument(timer, model)
    subset = x[:args.steps * args.batch]
    start = clock()
    model.fit(subset, epochs=1, batch_size=args.batch, lr=LR, threads=args.threads,
              binarize=args.binarize)
    total = clock() - start
    steps = len(subset) // args.batch
    with blas_threads(args.threads):
        floor = gemm_floor(model, args.batch, 5, clock)
    clock_name = "main-thread CPU time" if args.threads == 1 else "wall clock"
    print(f"\n{steps} steady-state steps, {total / steps * 1e6:.0f} us per step ({clock_name}):")
    accounted = 0.0
    for stage, seconds in sorted(timer.self_time.items(), key=lambda kv: -kv[1]):
        accounted += seconds
        print(f"  {seconds / steps * 1e6:8.0f} us  {100 * seconds / total:5.1f}%  {stage}")
    rest = total - accounted
    print(f"  {rest / steps * 1e6:8.0f} us  {100 * rest / total:5.1f}%  fit() around the epoch")
    print(f"\nthe step's matrix products alone, back to back: {floor * 1e6:.0f} us per step "
          f"({100 * floor / (total / steps):.0f}% of the step)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
