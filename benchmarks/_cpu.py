"""What the CPU benchmarks share: the models, the data, the machine description, a
process that keeps one core busy, and the PyTorch twin of a cupyvae model."""
from __future__ import annotations

import multiprocessing
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from _baseline import LR, Case, torch_mlp

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:        # a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

# An epoch whose slowest and fastest timed epochs differ by more than this fraction of
# their median is flagged "noisy" in the JSON and the README table.
NOISY_SPREAD = 0.25

CASES = [Case((200,), 2, 100), Case((200,), 20, 100), Case((200,), 20, 1000),
         Case((1024, 1024), 64, 1024)]


def load_images(limit: int | None = None) -> tuple[np.ndarray, str]:
    """Fashion-MNIST's training images as (N, 784) float32 in [0, 1] (Debian's
    dataset-fashion-mnist); synthetic uniform data of the same shape where it is missing."""
    from cupyvae.datasets import load_dataset
    try:
        x = load_dataset("fashion-mnist", download=False).x_train.reshape(-1, 784)
        name = "fashion-mnist"
    except Exception as exc:  # DatasetError: not installed / not cached here
        print(f"note: fashion-mnist not available offline ({exc}); using synthetic data",
              file=sys.stderr)
        x = np.random.default_rng(0).random((60000, 784), dtype=np.float32)
        name = "synthetic uniform [0, 1]"
    x = x[:limit] if limit else x
    return np.ascontiguousarray(x), f"{name} ({len(x)} train)"


def machine() -> dict:
    """Where and when: CPU, cores, load, versions (filled in by each benchmark)."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from cupyvae.threads import usable_cores
    info = {"cpu": model, "cores": usable_cores(), "python": platform.python_version(),
            "numpy": np.__version__,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = [round(v, 2) for v in os.getloadavg()]
    try:
        from threadpoolctl import threadpool_info
        info["blas"] = [{k: lib.get(k) for k in ("internal_api", "version", "architecture",
                                                  "num_threads")}
                        for lib in threadpool_info() if lib.get("user_api") == "blas"]
    except ImportError:
        pass
    return info


def spread(seconds: list[float]) -> dict:
    """Median, min, max and whether (max - min) / median exceeds NOISY_SPREAD."""
    med = float(np.median(seconds))
    lo, hi = float(min(seconds)), float(max(seconds))
    return {"median": med, "min": lo, "max": hi, "noisy": (hi - lo) / med > NOISY_SPREAD}


def _spin() -> None:
    while True:
        pass


class BusyCore:
    """Another process that keeps one core busy for the duration of the block (the
    "shared machine" of the thread measurements); a no-op when `active` is False."""

    def __init__(self, active: bool = True):
        self.active = active
        self._process = None

    def __enter__(self):
        if self.active:
            self._process = multiprocessing.get_context("spawn").Process(target=_spin, daemon=True)
            self._process.start()
            time.sleep(0.2)          # let it reach its loop
        return self

    def __exit__(self, *exc):
        if self._process is not None:
            self._process.terminate()
            self._process.join()
            self._process = None
        return False


# ---------------------------------------------------------------------------- PyTorch
def torch_trainer(case: Case, params: dict[str, np.ndarray], x: np.ndarray, threads: int | None):
    """run_epoch(perm) -> mean training loss, for the same VAE in PyTorch CPU eager: the
    same layers and init (cupyvae's initial weights copied), the same batch order, Adam
    with torch's defaults; its own noise (torch.randn).  `threads`: torch.set_num_threads
    before each epoch (None: torch's default, as it was when this process started)."""
    import torch
    import torch.nn.functional as F

    default_threads = torch.get_num_threads()
    torch.manual_seed(0)

    enc, dec = torch_mlp(params, "encoder"), torch_mlp(params, "decoder")
    optimizer = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=LR)
    xt = torch.from_numpy(x)
    z_dim, batch = case.z_dim, case.batch

    def step(xb):
        q = enc(xb)
        mu, lv = q[:, :z_dim], q[:, z_dim:]
        z = mu + torch.exp(0.5 * lv) * torch.randn_like(mu)
        logits = dec(z)
        nll = F.binary_cross_entropy_with_logits(logits, xb, reduction="none").sum(1)
        kl = -0.5 * (1 + lv - mu * mu - lv.exp()).sum(1)
        loss = (nll + kl).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    def run_epoch(perm: np.ndarray) -> float:
        torch.set_num_threads(default_threads if threads is None else threads)
        idx = torch.from_numpy(perm)
        n = len(perm) // batch
        total = torch.zeros(())
        for i in range(n):
            total += step(xt.index_select(0, idx[i * batch:(i + 1) * batch]))
        return float(total) / n

    return run_epoch
