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

import operator

import numpy as np

STREAM_POSTERIOR = 0  # reparameterization noise eps in z = mu + sigma * eps
STREAM_PRIOR = 1      # samples z ~ N(0, I) for generation
STREAM_BINARIZE = 2   # dynamic binarization of [0, 1] data: x = (u < p)
STREAM_EVAL = 3       # the one posterior draw per example of VAE.loss (repeatable values)
STREAM_IMPORTANCE = 4 # the K posterior draws per example of VAE.log_likelihood
# Prior draws (VAE.sample, executors.prior_draws): the steps of STREAM_PRIOR giving the
# component choices u and the normals eps.
PRIOR_U_STEP, PRIOR_EPS_STEP = 0, 1

# Philox4x32 round multipliers and Weyl key increments (Salmon et al., SC'11).
PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
PHILOX_ROUNDS = 10

_M0, _M1 = np.uint64(PHILOX_M0), np.uint64(PHILOX_M1)
_W0, _W1 = np.uint64(PHILOX_W0), np.uint64(PHILOX_W1)
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


def _philox_rounds(c0, c1, c2, c3, k0, k1, words: int = 4):
    """The ten Philox rounds on uint64 arrays holding uint32 values; returns the first
    `words` output words (x0, x1, ...) as uint64 arrays of the broadcast shape.

    c0..c3 broadcast against each other; k0, k1 are uint64 scalars or arrays that
    broadcast too.  uint64 keeps each 32x32 -> 64-bit product exact, so mulhi is a
    shift and mullo a mask.  Every pass writes into one of six buffers of the full
    shape (no temporaries), and the last round computes only the words asked for
    (x0 and x1 need one product of the two).
    """
    shape = np.broadcast_shapes(np.shape(c0), np.shape(c1), np.shape(c2), np.shape(c3))
    c0, c1, c2, c3 = (np.array(np.broadcast_to(c, shape), dtype=np.uint64, order="C")
                      for c in (c0, c1, c2, c3))
    p0, p1 = np.empty(shape, np.uint64), np.empty(shape, np.uint64)
    for round_index in range(PHILOX_ROUNDS):
        if round_index:
            k0 = (k0 + _W0) & _MASK32
            k1 = (k1 + _W1) & _MASK32
        last = round_index == PHILOX_ROUNDS - 1
        if not (last and words <= 2):
            np.multiply(c0, _M0, out=p0)
        np.multiply(c2, _M1, out=p1)
        np.right_shift(p1, _SHIFT32, out=c0)      # new c0 = mulhi(c2) ^ c1 ^ k0
        c0 ^= c1
        c0 ^= k0
        np.bitwise_and(p1, _MASK32, out=c1)       # new c1 = mullo(c2)
        if last and words <= 2:
            break
        np.right_shift(p0, _SHIFT32, out=c2)      # new c2 = mulhi(c0) ^ c3 ^ k1
        c2 ^= c3
        c2 ^= k1
        np.bitwise_and(p0, _MASK32, out=c3)       # new c3 = mullo(c0)
    return (c0, c1, c2, c3)[:words]


def uniform(seed: int, step: int, rows: int, cols: int, stream: int = 0) -> np.ndarray:
    """float32 (rows, cols) uniforms in (0, 1) from word x0 of each element's Philox block."""
    return _draw(seed, step, 1, rows, cols, stream, 1, uniform_from_bits)[0]


def normal(seed: int, step: int, rows: int, cols: int, stream: int = 0) -> np.ndarray:
    """float32 (rows, cols) standard normals, one Box-Muller draw per element (see top)."""
    return _draw(seed, step, 1, rows, cols, stream, 2, _normal_from_bits)[0]


def normal_steps(seed: int, first_step: int, n_steps: int, rows: int, cols: int,
                 stream: int = 0) -> np.ndarray:
    """float32 (n_steps, rows, cols): [normal(seed, first_step + i, rows, cols, stream)
    for i in range(n_steps)], the same values drawn in one go (a training loop draws
    its small per-step noise ahead, so the fixed cost of the rounds is paid once)."""
    return _draw(seed, first_step, n_steps, rows, cols, stream, 2, _normal_from_bits)


def uniform_from_bits(x: np.ndarray) -> np.ndarray:
    """float(x >> 9) * 2^-23 + 2^-24 in float32: exact, so bit-identical to the kernel."""
    u = (np.asarray(x, dtype=np.uint64) >> np.uint64(9)).astype(np.float32)
    u *= _UNIFORM_SCALE
    u += _UNIFORM_OFFSET
    return u


def box_muller(u0: np.ndarray, u1: np.ndarray) -> np.ndarray:
    """sqrtf(-2 logf(u0)) * cosf(2 pi u1), float32 throughout in the kernel's order."""
    radius = np.log(u0)
    radius *= np.float32(-2.0)
    np.sqrt(radius, out=radius)
    angle = np.multiply(_TWO_PI, u1)
    radius *= np.cos(angle, out=angle)
    return radius


def _normal_from_bits(x0: np.ndarray, x1: np.ndarray) -> np.ndarray:
    return box_muller(uniform_from_bits(x0), uniform_from_bits(x1))


def split_seed(seed: int) -> tuple[int, int]:
    """The (key0, key1) = (low, high) uint32 halves of a uint64 seed."""
    seed = operator.index(seed)  # refuses floats: a truncated seed would be a silent bug
    if not 0 <= seed < 2 ** 64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    return seed & 0xFFFFFFFF, seed >> 32


# Elements per block of rounds: the rounds' six uint64 buffers (768 KiB) then stay in a
# 1 MiB L2 cache.  Measured on the 2-core EPYC dev VM (CPU time, 7 repeats, spread < 5%):
# 100 x 784 uniforms took 1.4 ms in blocks of 8192, 1.1 ms in blocks of 16384 and 2.2-2.9 ms
# in blocks of 32768 (3.6 ms for the previous whole-array rounds with a temporary per pass).
_BLOCK_ELEMENTS = 16384


def _draw(seed, first_step, n_steps, rows, cols, stream, words, finish) -> np.ndarray:
    """(n_steps, rows, cols) float32 = finish(x0, ...) of the Philox words of every element
    (row, col) of steps first_step .. first_step + n_steps - 1, in cache-sized blocks."""
    key0, key1 = (np.uint64(k) for k in split_seed(seed))
    rows, cols, n_steps = (_check_count(name, value) for name, value in
                           (("rows", rows), ("cols", cols), ("n_steps", n_steps)))
    _check_uint32_scalar("step", first_step)
    _check_uint32_scalar("stream", stream)
    if n_steps:
        _check_uint32_scalar("last step", operator.index(first_step) + n_steps - 1)
    out = np.empty((n_steps * rows, cols), np.float32)
    col = np.arange(cols, dtype=np.uint64)
    stream = np.uint64(stream)
    per_block = max(1, _BLOCK_ELEMENTS // max(cols, 1))
    for start in range(0, len(out), per_block):
        flat = np.arange(start, min(start + per_block, len(out)), dtype=np.uint64)[:, None]
        row, step = np.divmod(flat, np.uint64(max(rows, 1)))[::-1]
        step += np.uint64(first_step)
        out[start:start + len(flat)] = finish(*_philox_rounds(col, row, step, stream,
                                                              key0, key1, words))
    return out.reshape(n_steps, rows, cols)


def _check_count(name: str, value) -> int:
    value = operator.index(value)
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"{name} must be a uint32 value, got {value}")
    return value


def _check_uint32_scalar(name: str, value) -> None:
    if not 0 <= operator.index(value) <= 0xFFFFFFFF:
        raise ValueError(f"{name} must be a uint32 value, got {value}")


def _check_uint32_values(name: str, values: np.ndarray) -> None:
    if values.dtype.kind not in "ui":
        raise ValueError(f"{name} must hold integers, got dtype {values.dtype}")
    if values.size and (values.min() < 0 or values.max() > 0xFFFFFFFF):
        raise ValueError(f"{name} values must fit in uint32")
