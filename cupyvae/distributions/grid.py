"""The 8-bit grid: images stored as x = k/255, k = 0..255 (uint8 / 255).

The discretized logistic requires it; bits per dimension use it to decide whether a
continuous density is reported on the 0..255 pixel scale (distributions.bits_per_dim).
"""
from __future__ import annotations

import numpy as np

LEVELS = 256
# |255 x - round(255 x)| allowed for data on the grid, in bins.  x = float32(k/255) is off
# k/255 by at most half an ulp of a number <= 1 (2^-25), i.e. 255 * 2^-25 = 7.6e-6 bins;
# forming 255 x in float32 adds at most half an ulp of 255 (another 7.6e-6 bins), and data
# made as k * float32(1/255) (two roundings) another 7.6e-6: at most 2.3e-5 bins in all.
# 1e-4 leaves a 4x margin, and any real off-grid data misses by far more (data scaled by
# 1/256 instead of 1/255 is off by k/256 bins, at least 0.0039; 16-bit data by up to 1/2).
GRID_TOLERANCE = 1e-4


def off_grid(x: np.ndarray) -> np.ndarray:
    """Boolean mask of the values of x that are not k/255 for an integer k (range not checked)."""
    scaled = np.asarray(x, np.float32) * np.float32(LEVELS - 1)
    return np.abs(scaled - np.rint(scaled)) > GRID_TOLERANCE


def on_8bit_grid(x: np.ndarray) -> bool:
    """True when every value of x is k/255 for an integer k in [0, 255]."""
    x = np.asarray(x)
    return bool(x.size and x.min() >= 0 and x.max() <= 1 and not off_grid(x).any())


def eight_bit_scale(x: np.ndarray) -> float:
    """255 when x holds 8-bit images scaled to [0, 1], else 1: the `data_scale` that
    distributions.bits_per_dim applies to continuous densities."""
    return float(LEVELS - 1) if on_8bit_grid(x) else 1.0
