"""Numbers in messages: every value shown with the digits that tell it apart.

`:g` keeps six significant digits, so 1.0000001 prints as "1" and a message saying
"values in [0, 1] but [0, 1] is needed" hides the very problem it reports.  `exact`
prints the shortest text that reads back as the same value in the value's own precision
(a float32 stays a float32: 1.0000001, not 1.0000001192092896).
"""
from __future__ import annotations

import numpy as np


def exact(value) -> str:
    """Shortest round-trip text of a number: NumPy scalars in their own precision
    (NumPy's str), Python numbers by repr."""
    if isinstance(value, np.generic):
        return str(value)
    return repr(value)


def nonfinite_problem(x: np.ndarray) -> str | None:
    """None if every value of x (N, ...) is finite, else "has K NaN/inf values (first in
    example index i, counting from 0)": the one wording the API, the CLI and the dataset
    loaders all use."""
    bad = ~np.isfinite(x)
    if not bad.any():
        return None
    first = int(np.argmax(bad.reshape(len(x), -1).any(axis=1))) if x.ndim else 0
    return f"has {int(bad.sum())} NaN/inf values (first in example index {first}, counting from 0)"


def outside_problem(x: np.ndarray, lo: float, hi: float) -> str | None:
    """None if lo <= x <= hi everywhere, else "has values in [min, max] (first outside
    [lo, hi] in example index i, counting from 0)" with exact digits (x finite, shaped
    (N, ...))."""
    low, high = x.min(), x.max()
    if low >= lo and high <= hi:
        return None
    outside = ((x < lo) | (x > hi)).reshape(len(x), -1).any(axis=1)
    return (f"has values in [{exact(low)}, {exact(high)}] (first outside [{exact(lo)}, "
            f"{exact(hi)}] in example index {int(np.argmax(outside))}, counting from 0)")
