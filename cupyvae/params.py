"""One flat float32 buffer holds every parameter; named views index into it.

The fused Adam kernel updates the whole buffer in one launch and a CUDA graph captures
fixed addresses, so parameters, gradients and both Adam moments are four buffers with one
shared layout.  Each tensor starts at a multiple of ALIGN elements (256 bytes), so every
view is aligned for vector loads; the gaps are zero and stay zero under Adam (their
gradient is always zero).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ALIGN = 64


@dataclass(frozen=True)
class ParamEntry:
    name: str
    shape: tuple[int, ...]
    offset: int

    @property
    def size(self) -> int:
        return math.prod(self.shape)   # Python ints: a tampered config cannot overflow it


@dataclass(frozen=True)
class ParamLayout:
    entries: tuple[ParamEntry, ...]
    size: int

    @classmethod
    def from_shapes(cls, shapes: dict[str, tuple[int, ...]]) -> "ParamLayout":
        entries, offset = [], 0
        for name, shape in shapes.items():
            entries.append(ParamEntry(name, tuple(int(s) for s in shape), offset))
            offset += -(-entries[-1].size // ALIGN) * ALIGN
        return cls(tuple(entries), offset)

    def views(self, flat) -> dict[str, np.ndarray]:
        """Named views into `flat` (NumPy or CuPy): writing a view writes the buffer."""
        if flat.shape != (self.size,):
            raise ValueError(f"flat buffer has shape {flat.shape}, layout needs ({self.size},)")
        return {e.name: flat[e.offset:e.offset + e.size].reshape(e.shape) for e in self.entries}

    def zeros(self, dtype=np.float32) -> np.ndarray:
        return np.zeros(self.size, dtype=dtype)

    def names(self) -> list[str]:
        return [e.name for e in self.entries]
