"""What the CPU and GPU training races share: the benchmarked models (Case: 784-H...-Z at a
batch size, Adam at LR, 28x28 images) and the PyTorch baseline's networks (torch_mlp)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LR = 1e-3
DATA_SHAPE = (28, 28)


@dataclass(frozen=True)
class Case:
    hidden: tuple
    z_dim: int
    batch: int

    @property
    def name(self) -> str:
        return "-".join(map(str, (784, *self.hidden, self.z_dim)))



def torch_mlp(params: dict[str, np.ndarray], prefix: str):
    """cupyvae's `prefix` MLP ("encoder" or "decoder") as a torch nn.Sequential with its
    weights copied (cupyvae stores W as (in, out), nn.Linear as (out, in)); ReLU after every
    layer but the last, as in the benchmarked models."""
    import torch
    from torch import nn

    layers, i = [], 0
    while f"{prefix}.{i}.weight" in params:
        w = params[f"{prefix}.{i}.weight"]
        linear = nn.Linear(*w.shape)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(w.T.copy()))
            linear.bias.copy_(torch.from_numpy(params[f"{prefix}.{i}.bias"].copy()))
        layers.append(linear)
        i += 1
        if f"{prefix}.{i}.weight" in params:          # every hidden layer: ReLU
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)
