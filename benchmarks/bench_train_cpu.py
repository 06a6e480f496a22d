"""One training epoch on the CPU: cupyvae's NumPy path against PyTorch CPU eager.

Same model (784-H-Z Bernoulli VAE, ReLU, Glorot init copied into PyTorch), same data
(Fashion-MNIST from Debian's dataset-fashion-mnist), same batch order, batch size and
Adam settings; each side draws its reparameterization noise its own way (Philox for
cupyvae, torch.randn for PyTorch).  Epochs alternate between the two sides, and the
median seconds per epoch of each is reported with their ratio and the final losses;
writes JSON.

    python benchmarks/bench_train_cpu.py [--epochs 5] [--out benchmarks/results/cpu.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np

import cupyvae
from cupyvae.datasets import load_dataset
from cupyvae.training import TrainingOptions

MODELS = [(200, 2), (200, 20)]
BATCH = 100
LR = 1e-3


def cupyvae_trainer(x, hidden, z_dim):
    """(model, initial flat parameters, run_epoch(perm) -> mean loss)."""
    model = cupyvae.VAE((28, 28), latent_dim=z_dim, hidden=(hidden,), seed=0)
    init = model.flat_params.copy()
    model.fit(x[:BATCH * 5], epochs=1, batch_size=BATCH, lr=LR)      # warm-up (caches, BLAS threads)
    model._executor.load_flat(init)
    model.optimizer = None
    model._ensure_optimizer(LR, 0.0)
    options = TrainingOptions(batch_size=BATCH, lr=LR)
    return model, init, lambda perm: model._executor.train_epoch(x, perm, options, model.optimizer)


def torch_model(spec_params, z_dim):
    import torch
    from torch import nn

    enc = nn.Sequential(nn.Linear(784, spec_params["encoder.0.weight"].shape[1]), nn.ReLU(),
                        nn.Linear(spec_params["encoder.1.weight"].shape[0], 2 * z_dim))
    dec = nn.Sequential(nn.Linear(z_dim, spec_params["decoder.0.weight"].shape[1]), nn.ReLU(),
                        nn.Linear(spec_params["decoder.1.weight"].shape[0], 784))
    with torch.no_grad():
        for prefix, net in (("encoder", enc), ("decoder", dec)):
            for i, layer in enumerate(m for m in net if isinstance(m, nn.Linear)):
                layer.weight.copy_(torch.from_numpy(spec_params[f"{prefix}.{i}.weight"].T.copy()))
                layer.bias.copy_(torch.from_numpy(spec_params[f"{prefix}.{i}.bias"].copy()))
    return enc, dec


def torch_trainer(x, z_dim, init_params):
    """run_epoch(perm) -> mean loss for the same model in PyTorch eager."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    enc, dec = torch_model(init_params, z_dim)
    opt = torch.optim.Adam(list(enc.parameters()) + list(dec.parameters()), lr=LR)
    xt = torch.from_numpy(x)

    def step(xb):
        q = enc(xb)
        mu, lv = q[:, :z_dim], q[:, z_dim:]
        z = mu + torch.exp(0.5 * lv) * torch.randn_like(mu)
        logits = dec(z)
        nll = F.binary_cross_entropy_with_logits(logits, xb, reduction="none").sum(1)
        kl = -0.5 * (1 + lv - mu * mu - lv.exp()).sum(1)
        loss = (nll + kl).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    def epoch(perm):
        idx = torch.from_numpy(perm)
        total = torch.zeros(())
        n = len(perm) // BATCH
        for i in range(n):
            total += step(xt[idx[i * BATCH:(i + 1) * BATCH]])
        return float(total) / n

    return epoch


def interleaved_epochs(trainers: dict, perms) -> dict:
    """Epoch i of every trainer back to back before epoch i + 1, so a machine whose speed
    drifts (a shared VM) slows both sides alike; per-epoch seconds and the last loss."""
    seconds = {name: [] for name in trainers}
    losses = {}
    for perm in perms:
        for name, run_epoch in trainers.items():
            start = time.perf_counter()
            losses[name] = run_epoch(perm)
            seconds[name].append(time.perf_counter() - start)
    return {name: (seconds[name], losses[name]) for name in trainers}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=5, help="epochs per side (median reported)")
    ap.add_argument("--out", default="benchmarks/results/cpu.json")
    args = ap.parse_args()
    import torch

    data = load_dataset("fashion-mnist")
    x = data.x_train.reshape(len(data.x_train), -1)
    rng = np.random.default_rng(0)
    perms = [rng.permutation(len(x)) for _ in range(args.epochs)]
    rows = []
    for hidden, z_dim in MODELS:
        model, init, ours = cupyvae_trainer(x, hidden, z_dim)
        theirs = torch_trainer(x, z_dim, model.spec.layout.views(init))
        runs = interleaved_epochs({"cupyvae": ours, "torch": theirs}, perms)
        (our_s, our_loss), (their_s, their_loss) = runs["cupyvae"], runs["torch"]
        ours_med, theirs_med = float(np.median(our_s)), float(np.median(their_s))
        row = {"model": f"784-{hidden}-{z_dim}", "batch": BATCH, "epochs": args.epochs,
               "cupyvae_numpy_s_per_epoch": ours_med, "torch_cpu_eager_s_per_epoch": theirs_med,
               "ratio": ours_med / theirs_med, "cupyvae_epoch_seconds": our_s,
               "torch_epoch_seconds": their_s, "cupyvae_final_train_loss": our_loss,
               "torch_final_train_loss": their_loss}
        rows.append(row)
        print(f"{row['model']}: cupyvae {ours_med:.2f} s/epoch, torch {theirs_med:.2f} s/epoch, "
              f"ratio {row['ratio']:.2f}  (loss after {args.epochs} epochs {our_loss:.2f} vs "
              f"{their_loss:.2f})", flush=True)
    result = {"benchmark": "train_cpu", "date": date.today().isoformat(),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "numpy": np.__version__, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
              "cupyvae": cupyvae.__version__, "dataset": "fashion-mnist (60000 train)", "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
