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
