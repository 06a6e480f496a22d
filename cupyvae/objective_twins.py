"""NumPy twins of kernels/importance.cu and kernels/free_bits.cu: the pieces of the IWAE
bound, of the importance-sampled log-likelihood and of free bits.

Each twin takes the kernel's leading arguments (outputs returned instead of written, or,
for kernels that update in place, updated in place and returned) and works in any float
dtype, so the NumPy reference (cupyvae.reference) and VAE.log_likelihood are built on
them and the finite-difference tests run them in float64.

Rows of k samples per example: row r = b*k + i is sample i of example b (so the k rows of
an example are contiguous, and with k = 1 row r is example r).

Importance weights (Burda, Grosse & Salakhutdinov 2016, "Importance Weighted
Autoencoders", eq. 8 and section 3):
    log w_r     = log p(z_r) - log q(z_r|x_b) - nll_r            (nll_r = -log p(x_b|z_r))
    bound_b     = -(log (1/k) sum_i w_bi)
                = -(m_b + log sum_i exp(log w_bi - m_b) - log k),  m_b = max_i log w_bi
    weight_r    = scale * exp(log w_r - m_b) / sum_i exp(log w_bi - m_b)
                = scale * (normalised importance weight of r)
    With loss = scale * sum_b bound_b, weight_r = d loss / d nll_r = d loss / d log q_r
                = -d loss / d log p_r, which is how the IWAE gradient weights each sample.
Free bits (Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling 2016, "Improved
Variational Inference with Inverse Autoregressive Flow", eq. 15):
    KL term     = sum_j max(lambda, (1/B) sum_b kl[b, j])
"""
from __future__ import annotations

import numpy as np

from . import philox


# --------------------------------------------------------------------- kernels/importance.cu
def importance_noise(seed: int, first_example: int, examples: int, first_sample: int,
                     samples: int, z_dim: int) -> np.ndarray:
    """eps (examples * samples, Z) float32: row r = e * samples + i holds sample
    first_sample + i of example first_example + e.

    Keying (the importance-sampled log-likelihood's, on every device): element j of sample
    i of example n is the Philox normal of (step = n, row = i, col = j,
    stream = philox.STREAM_IMPORTANCE).  So an example's noise depends only on its index
    in the evaluated set and the sample's index, never on how examples and samples are
    cut into chunks.
    """
    key0, key1 = philox.split_seed(seed)
    rows = int(examples) * int(samples)
    step = (int(first_example) + np.arange(rows, dtype=np.uint64) // np.uint64(samples))
    row = int(first_sample) + np.arange(rows, dtype=np.uint64) % np.uint64(samples)
    if rows and (step[-1] > 0xFFFFFFFF or first_sample + samples - 1 > 0xFFFFFFFF):
        raise ValueError("example and sample indices must fit in uint32")
    col = np.arange(z_dim, dtype=np.uint64)
    counter = np.stack([np.broadcast_to(col[None, :], (rows, z_dim)).ravel(),
                        np.broadcast_to(row[:, None], (rows, z_dim)).ravel(),
                        np.broadcast_to(step[:, None], (rows, z_dim)).ravel(),
                        np.full(rows * z_dim, philox.STREAM_IMPORTANCE, np.uint64)])
    words = philox.philox4x32(counter, np.array([key0, key1], np.uint64))
    eps = philox.box_muller(philox.uniform_from_bits(words[0]), philox.uniform_from_bits(words[1]))
    return eps.reshape(rows, z_dim)


def repeat_rows(src: np.ndarray, samples: int) -> np.ndarray:
    """dst (B*k, C): dst[b*k + i] = src[b] for i < k."""
    return np.repeat(src, int(samples), axis=0)


def sum_row_groups(src: np.ndarray, samples: int) -> np.ndarray:
    """dst (B, C): dst[b] = sum_{i<k} src[b*k + i], added in the order i = 0, 1, ..., k-1
    (the backward of repeat_rows)."""
    k = int(samples)
    groups = src.reshape(-1, k, src.shape[1])
    dst = groups[:, 0].copy()
    for i in range(1, k):
        dst += groups[:, i]
    return dst


def scale_rows(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """x[r, c] *= g[r], in place (the per-row gradient scaling of IWAE); returns x."""
    x *= g[:, None]
    return x


def log_weights(nll: np.ndarray, log_p: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    """log w_r = log p(z_r) - log q(z_r|x) - nll_r, in this order of operations."""
    return (log_p - log_q) - nll


def iwae_weights(nll: np.ndarray, log_p: np.ndarray, log_q: np.ndarray, samples: int,
                 scale) -> tuple[np.ndarray, np.ndarray]:
    """(bound (B,), weight (B*k,)): the negative IWAE bound per example and
    scale * the normalised importance weights (see the top); nll, log_p, log_q: (B*k,)."""
    k = int(samples)
    lw = log_weights(nll, log_p, log_q).reshape(-1, k)
    m = lw.max(axis=1, keepdims=True)
    e = np.exp(lw - m)
    s = e.sum(axis=1, keepdims=True)
    bound = -(m[:, 0] + np.log(s[:, 0]) - np.log(lw.dtype.type(k)))
    weight = np.asarray(scale, lw.dtype) * (e / s)
    return bound, weight.reshape(-1)


def log_mean_exp_accumulate(nll: np.ndarray, log_p: np.ndarray, log_q: np.ndarray,
                            running_max: np.ndarray, running_sum: np.ndarray,
                            samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Merges k more samples per example (rows b*k + i, as above) into the running
    log-sum-exp state of the importance-sampled log-likelihood, in place and in float64:
        M = max(running_max, max_i log w_bi)
        running_sum = running_sum exp(running_max - M) + sum_i exp(log w_bi - M)
        running_max = M
    Start from running_max = -inf, running_sum = 0; returns (running_max, running_sum)."""
    k = int(samples)
    lw = log_weights(nll.astype(np.float64), log_p.astype(np.float64),
                     log_q.astype(np.float64)).reshape(-1, k)
    new_max = np.maximum(running_max, lw.max(axis=1))
    with np.errstate(invalid="ignore"):   # -inf - -inf only for an example with no finite weight
        running_sum *= np.exp(running_max - new_max)
    running_sum += np.exp(lw - new_max[:, None]).sum(axis=1)
    running_max[...] = new_max
    return running_max, running_sum


def log_mean_exp_finish(running_max: np.ndarray, running_sum: np.ndarray,
                        total_samples: int) -> np.ndarray:
    """log p(x) per example (float64) = running_max + log running_sum - log K."""
    return running_max + np.log(running_sum) - np.log(float(total_samples))


# --------------------------------------------------------------------- kernels/free_bits.cu
def free_bits_kl(kl_dim: np.ndarray, free_bits) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The free-bits floor on the batch-averaged KL per latent dimension.

    kl_dim (B, Z): the KL of each example and dimension; free_bits = lambda >= 0 (nats).
    Returns
        kl_rows (B,):  sum_j (active_j ? kl[b, j] : lambda), whose batch mean is the floored
                       KL term sum_j max(lambda, kl_mean_j), so the step's loss needs no
                       other bookkeeping;
        active (Z,):   1 where kl_mean_j > lambda (the dimension's KL receives gradient),
                       else 0: d KL term / d kl[b, j] = active_j / B;
        kl_mean (Z,):  (1/B) sum_b kl[b, j].
    """
    dtype = kl_dim.dtype.type
    # Rows added in order b = 0, 1, ... like the kernel: accumulate is sequential, whereas
    # sum(axis=0) sums pairwise whenever the column is contiguous (Z = 1), which changes
    # the last bit and can flip active[j] at the floor.
    kl_mean = np.add.accumulate(kl_dim, axis=0)[-1] / dtype(kl_dim.shape[0])
    active = (kl_mean > dtype(free_bits)).astype(kl_dim.dtype)
    floored = np.where(active > 0, kl_dim, dtype(free_bits))
    kl_rows = floored[:, 0].copy()
    for j in range(1, floored.shape[1]):                     # columns added in order j = 0, 1, ...
        kl_rows += floored[:, j]
    return kl_rows, active, kl_mean


# --------------------------------------------------------- cupyvae/cuda/ops/objective_weights.py
def monte_carlo_kl(log_q: np.ndarray, log_p: np.ndarray) -> np.ndarray:
    """kl (R,) = log q(z_r|x) - log p(z_r): the one-sample KL estimate per row."""
    return log_q - log_p


def monte_carlo_kl_weights(kl_weight: np.ndarray, scale, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(g_q, g_p), (rows,) float32: g_q = scale * kl_weight[0] (the float32 product) =
    d loss / d log q(z_r), and g_p = -g_q = d loss / d log p(z_r)."""
    g_q = np.full(int(rows), np.float32(scale) * np.float32(np.asarray(kl_weight).reshape(-1)[0]),
                  np.float32)
    return g_q, -g_q


def negated(x: np.ndarray) -> np.ndarray:
    """-x."""
    return -x


def scaled_by(x: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """x * factor[0] (factor: a (1,) array, the device scalar)."""
    return x * np.asarray(factor, x.dtype).reshape(-1)[0]
