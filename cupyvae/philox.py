"""Philox4x32-10 counter-based random numbers: the NumPy twin of kernels/philox.cuh.

Keying convention, shared by EVERY path (NumPy reference, CUDA kernels, emulator):

    noise element (row, col) of training step `step` in stream `stream`:
        counter = (col, row, step, stream)          four uint32 words
        key     = (seed & 0xffffffff, seed >> 32)   seed is a uint64

    Philox4x32-10 maps (counter, key) to four uint32 words x0..x3; we use x0 and x1:

        uniform(x) = float(x >> 9) * 2^-23 + 2^-24
            23 random bits; the sum is exact in float32 (it is (2m + 1) * 2^-24 with
            2m + 1 < 2^24), so u lies in [2^-24, 1 - 2^-24], strictly inside (0, 1),
            and both sides compute it bit-identically.  (Keeping 24 bits,
            float(x >> 8) * 2^-24 + 2^-25, needs 25 significant bits: float32 rounds
            half of those values, and the largest one to exactly 1.0.)
        uniform element    = uniform(x0)
        standard normal    = sqrtf(-2 * logf(uniform(x0))) * cosf(6.2831853f * uniform(x1))
            Box-Muller, ONE normal per element: the sine partner would need a second
            element index, and one-counter-per-element keeps every element independent
            of the launch shape.

Because the counter holds (col, row), the values depend only on the element's
coordinates, never on the tensor shape or on which thread draws them.

Agreement: the uint32 words are bit-exact between this module and the kernels.  The
normals are computed here in float32 with the same operation order, but CUDA's logf
and cosf carry up to 1-2 ulp of error and NumPy's float32 log/cos differ from them, so
normals agree to a few ulp (tests use rtol 1e-5 plus a tiny atol for values near 0).

Streams separate independent uses of the same (seed, step): keep them in sync with the
PHILOX_STREAM_* constants in kernels/philox.cuh.
"""
from __future__ import annotations

import functools
import operator

import numpy as np

STREAM_POSTERIOR = 0  # reparameterization noise eps in z = mu + sigma * eps
STREAM_PRIOR = 1      # samples z ~ N(0, I) for generation
STREAM_BINARIZE = 2   # dynamic binarization of [0, 1] data: x = (u < p)
STREAM_EVAL = 3       # the one posterior draw per example of VAE.loss (repeatable values)
STREAM_IMPORTANCE = 4 # the K posterior draws per example of VAE.log_likelihood

# Philox4x32 round multipliers and Weyl key increments (Salmon et al., SC'11).
PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
PHILOX_ROUNDS = 10

_MASK32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)
_TWO_PI = np.float32(6.2831853)
_UNIFORM_SCALE = np.float32(2.0 ** -23)
_UNIFORM_OFFSET = np.float32(2.0 ** -24)


def philox4x32(counter, key) -> np.ndarray:
    """Philox4x32-10 on N counters at once.

    counter: uint32-valued array (4, N); key: uint32-valued array (2, N), or (2,) for
    one key shared by every counter.  Returns uint32 (4, N).
    """
    counter = np.asarray(counter)
    key = np.asarray(key)
    if counter.ndim != 2 or counter.shape[0] != 4:
        raise ValueError(f"counter must have shape (4, N), got {counter.shape}")
    if key.shape not in ((2,), (2, counter.shape[1])):
        raise ValueError(f"key must have shape (2,) or (2, {counter.shape[1]}), got {key.shape}")
    _check_uint32_values("counter", counter)
    _check_uint32_values("key", key)
    c = [w.astype(np.uint64) for w in counter]
    k = [w.astype(np.uint64) for w in key]
    out = _philox_rounds(c[0], c[1], c[2], c[3], k[0], k[1])
    return np.stack([w.astype(np.uint32) for w in out])


def _philox_rounds(c0, c1, c2, c3, k0, k1):
    """The ten Philox rounds on uint64 arrays (or scalars) holding uint32 values.

    uint64 keeps each 32x32 -> 64-bit product exact, so mulhi is a shift and mullo a mask.
    """
    m0, m1 = np.uint64(PHILOX_M0), np.uint64(PHILOX_M1)
    w0, w1 = np.uint64(PHILOX_W0), np.uint64(PHILOX_W1)
    for round_index in range(PHILOX_ROUNDS):
        if round_index:
            k0 = (k0 + w0) & _MASK32
            k1 = (k1 + w1) & _MASK32
        p0 = c0 * m0
        p1 = c2 * m1
        c0, c1, c2, c3 = (p1 >> _SHIFT32) ^ c1 ^ k0, p1 & _MASK32, (p0 >> _SHIFT32) ^ c3 ^ k1, p0 & _MASK32
    return c0, c1, c2, c3


def uniform(seed: int, step: int, rows: int, cols: int, stream: int = 0) -> np.ndarray:
    """float32 (rows, cols) uniforms in (0, 1) from word x0 of each element's Philox block."""
    x0, _ = _element_words(seed, step, rows, cols, stream)
    return uniform_from_bits(x0)


def normal(seed: int, step: int, rows: int, cols: int, stream: int = 0) -> np.ndarray:
    """float32 (rows, cols) standard normals, one Box-Muller draw per element (see top)."""
    x0, x1 = _element_words(seed, step, rows, cols, stream)
    return box_muller(uniform_from_bits(x0), uniform_from_bits(x1))


def uniform_from_bits(x: np.ndarray) -> np.ndarray:
    """float(x >> 9) * 2^-23 + 2^-24 in float32: exact, so bit-identical to the kernel."""
    mantissa = (np.asarray(x, dtype=np.uint64) >> np.uint64(9)).astype(np.float32)
    return mantissa * _UNIFORM_SCALE + _UNIFORM_OFFSET


def box_muller(u0: np.ndarray, u1: np.ndarray) -> np.ndarray:
    """sqrtf(-2 logf(u0)) * cosf(2 pi u1), float32 throughout in the kernel's order."""
    radius = np.sqrt(np.float32(-2.0) * np.log(u0))
    return radius * np.cos(_TWO_PI * u1)


def split_seed(seed: int) -> tuple[int, int]:
    """The (key0, key1) = (low, high) uint32 halves of a uint64 seed."""
    seed = operator.index(seed)  # refuses floats: a truncated seed would be a silent bug
    if not 0 <= seed < 2 ** 64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    return seed & 0xFFFFFFFF, seed >> 32


def _element_words(seed, step, rows, cols, stream):
    """Words x0, x1 (uint64 arrays of shape (rows, cols)) for every element of the grid."""
    key0, key1 = split_seed(seed)
    _check_uint32_scalar("step", step)
    _check_uint32_scalar("stream", stream)
    col, row = _coordinate_grid(int(rows), int(cols))
    x0, x1, _, _ = _philox_rounds(col, row, np.uint64(step), np.uint64(stream),
                                  np.uint64(key0), np.uint64(key1))
    return (np.broadcast_to(x0, (rows, cols)), np.broadcast_to(x1, (rows, cols)))


@functools.lru_cache(maxsize=32)
def _coordinate_grid(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """(col, row) as broadcastable uint64 arrays; cached because training reuses shapes."""
    if rows < 0 or cols < 0 or rows > 0xFFFFFFFF or cols > 0xFFFFFFFF:
        raise ValueError(f"rows and cols must be uint32 values, got shape ({rows}, {cols})")
    col = np.arange(cols, dtype=np.uint64)[None, :]
    row = np.arange(rows, dtype=np.uint64)[:, None]
    col.flags.writeable = False
    row.flags.writeable = False
    return col, row


def _check_uint32_scalar(name: str, value) -> None:
    if not 0 <= operator.index(value) <= 0xFFFFFFFF:
        raise ValueError(f"{name} must be a uint32 value, got {value}")


def _check_uint32_values(name: str, values: np.ndarray) -> None:
    if values.dtype.kind not in "ui":
        raise ValueError(f"{name} must hold integers, got dtype {values.dtype}")
    if values.size and (values.min() < 0 or values.max() > 0xFFFFFFFF):
        raise ValueError(f"{name} values must fit in uint32")
