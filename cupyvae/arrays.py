"""The one rule for the element types of example arrays, shared by the API (VAE.validate_data)
and the file loaders (cupyvae.datasets), so `fit(x)` and `cupyvae train --data x.npy` accept
and scale exactly the same arrays:

    floating point   used as given (cast to float32)
    bool             False -> 0.0, True -> 1.0
    uint8            8-bit images: divided by 255, so 0..255 becomes 0..1
    anything else    refused: other integer types have no agreed scale (12-bit? 16-bit?
                     counts?); divide them by their maximum value yourself
"""
from __future__ import annotations

import numpy as np

RULE = "use floating point, bool (0/1) or uint8 (8-bit images, divided by 255)"


def as_float32_examples(array: np.ndarray) -> np.ndarray:
    """`array` as float32 by the rule above (a copy unless it already is float32);
    ValueError("dtype ...") for any other element type."""
    array = np.asarray(array)
    if array.dtype == np.uint8:
        return array.astype(np.float32) / np.float32(255)
    if array.dtype == np.bool_ or array.dtype.kind == "f":
        return array.astype(np.float32, copy=False)
    hint = ("; other integers have no agreed scale: divide by their maximum value first, "
            "e.g. x.astype(np.float32) / 65535 for 16-bit images") if array.dtype.kind in "iu" else ""
    raise ValueError(f"dtype {array.dtype}: {RULE}{hint}")
