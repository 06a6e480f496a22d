// mixture_prior: log p(z) under a mixture of K diagonal Gaussians, one row of z at a time, and
// its backward wrt z and wrt the mixture's parameters (reduced over the batch, no atomics).
//
// Parameters: logits a (K,) (weights pi = softmax(a)); components c (K, 2Z) = [m | s] per row,
// the means then the log-variances: the Gaussian posterior's raw layout [mu | logvar], so the
// VampPrior hands over the encoder's output on its pseudo-inputs as it stands (with a = 0).
// Forward (mixture_prior_forward), per row b of z (B, Z):
//     lse_a      = LSE_k a_k
//     t_bkj      = (z_bj - m_kj) h_kj,   h_kj = exp(-s_kj / 2)
//     l_bk       = a_k - lse_a - 1/2 sum_j (log 2pi + s_kj + t_bkj^2)
//     logp[b]    = LSE_k l_bk          (online: a running max and a sum rescaled to it)
//     resp[b, k] = exp(l_bk - logp[b]) (the responsibilities r_bk; sum_k r_bk = 1)
// Backward wrt z (mixture_prior_backward_z), g (B,) = d loss / d logp[b]:
//     dz[b, j]    += g[b] * sum_k r_bk (-t_bkj h_kj)        = g[b] d logp[b] / d z_bj
// Backward wrt the parameters (mixture_prior_backward_params):
//     dlogits[k]   = sum_b g[b] (r_bk - pi_k),    pi_k = exp(a_k - lse_a)
//     dc[k, j]     = (sum_b g[b] r_bk t_bkj) h_kj             = d/d m_kj of sum_b g[b] logp[b]
//     dc[k, Z + j] = 1/2 sum_b g[b] r_bk (t_bkj^2 - 1)        = d/d s_kj
//   Derivation (d LSE = sum_k r d l; d l/d z = -t h, d l/d m = t h, d l/d s = (t^2 - 1)/2,
//   d log pi_k'/d a_k = [k = k'] - pi_k): cupyvae/distributions/mixture.py, where finite
//   differences check it.
// Numerics: every expf is of a non-positive number (l - LSE) or of -s/2 (e^15 at s = -30:
//   finite); t is formed before squaring; a component far from z gets r_bk = 0 exactly, and
//   the backward kernels skip a zero weight (so a component whose t overflows can never turn
//   0 * inf into NaN there).  Tested: means 1e3 apart, log-variances +-30, K = 1.
// Layouts:  z, dz (B, Z); logits, dlogits (K,); c, dc (K, 2Z); logp, g (B,); resp (B, K);
//           all float32 row-major, contiguous.
// Outputs:  logp, resp, dlogits, dc are written with `=`.  dz is ACCUMULATED (`+=`): in a
//           training step it already holds d loss / dz from the decoder, and the prior's term
//           is added in place (each element by one thread: deterministic, no atomics).
// Determinism: every sum has one order fixed by the indices (k ascending within a lane, then a
//           shuffle tree over lanes; or b ascending in one thread), never by the grid or the
//           thread schedule: the same inputs give the same bits, on the GPU and on the
//           emulator under any thread order.
//
// Launch:   mixture_prior_forward, mixture_prior_backward_z: one warp per row b, block =
//           (32 W,) with W rows per block, grid = (ceil(B / W),); warps stride over rows, so a
//           smaller grid also works.  forward: lanes over components (lane handles k = lane,
//           lane + 32, ...; j serially), each lane's (max, sum) pairs meet in a shuffle tree;
//           a lane rescales the resp entries it wrote itself (no barrier needed).
//           backward_z: lanes over j, k ascending.
//           mixture_prior_backward_params: one warp per component k (same block shape, grid =
//           (ceil(K / W),)); dlogits: lanes over b and a shuffle tree; dc: lanes over j, b
//           ascending.
// NumPy twins: cupyvae.distributions.mixture.mixture_prior_forward / _backward_z /
//           _backward_params.
#include "reduce.cuh"
#include "stable_math.cuh"


// Adds exp(value) to the running (peak, total): sum = total * exp(peak).  A -inf value adds
// nothing (and never forms -inf - -inf); a NaN value makes the sum NaN.
__device__ inline void mixture_lse_push(float value, float& peak, float& total)
{
    if (value == REDUCE_NEG_INF_FLOAT) {
        return;
    }
    if (value > peak) {
        total = total * expf(peak - value) + 1.0f;   // expf(-inf) = 0 on the first push
        peak = value;
    } else {
        total += expf(value - peak);
    }
}

__device__ inline void mixture_lse_merge(float other_peak, float other_total, float& peak,
                                         float& total)
{
    if (other_peak == REDUCE_NEG_INF_FLOAT) {
        return;
    }
    if (peak == REDUCE_NEG_INF_FLOAT) {
        peak = other_peak;
        total = other_total;
    } else if (other_peak > peak) {
        total = total * expf(peak - other_peak) + other_total;
        peak = other_peak;
    } else {
        total += other_total * expf(other_peak - peak);
    }
}

// LSE of the whole warp's (peak, total) pairs, returned in every lane.  Tree fixed by the
// lane index, like reduce_warp_sum.  All 32 lanes must call it.
__device__ inline float mixture_warp_lse(float peak, float total)
{
    for (int offset = REDUCE_WARP_SIZE / 2; offset > 0; offset /= 2) {
        float other_peak = __shfl_down_sync(REDUCE_FULL_MASK, peak, offset);
        float other_total = __shfl_down_sync(REDUCE_FULL_MASK, total, offset);
        mixture_lse_merge(other_peak, other_total, peak, total);
    }
    peak = __shfl_sync(REDUCE_FULL_MASK, peak, 0);
    total = __shfl_sync(REDUCE_FULL_MASK, total, 0);
    return peak + logf(total);
}

// LSE_k a_k over the logits, in every lane of the calling warp (whole warp must call it).
__device__ inline float mixture_logits_lse(const float* logits, int K, int lane)
{
    float peak = REDUCE_NEG_INF_FLOAT;
    float total = 0.0f;
    for (int k = lane; k < K; k += REDUCE_WARP_SIZE) {
        mixture_lse_push(logits[k], peak, total);
    }
    return mixture_warp_lse(peak, total);
}

extern "C" __global__ void mixture_prior_forward(const float* z, const float* logits,
                                                 const float* components, float* logp, float* resp,
                                                 int B, int K, int Z)
{
    int lane = threadIdx.x % REDUCE_WARP_SIZE;
    int warps_per_block = blockDim.x / REDUCE_WARP_SIZE;
    int row_stride = gridDim.x * warps_per_block;
    float lse_a = mixture_logits_lse(logits, K, lane);
    // `row` is the same in every lane of a warp: warps enter and leave the loop whole.
    for (int row = blockIdx.x * warps_per_block + threadIdx.x / REDUCE_WARP_SIZE; row < B;
         row += row_stride) {
        const float* z_row = z + (unsigned long long)row * (unsigned long long)Z;
        float* resp_row = resp + (unsigned long long)row * (unsigned long long)K;
        float peak = REDUCE_NEG_INF_FLOAT;
        float total = 0.0f;
        for (int k = lane; k < K; k += REDUCE_WARP_SIZE) {
            const float* mean = components + (unsigned long long)k * (2ull * (unsigned long long)Z);
            const float* logvar = mean + Z;
            float quad = 0.0f;
            for (int j = 0; j < Z; ++j) {
                float t = (z_row[j] - mean[j]) * expf(-0.5f * logvar[j]);
                quad += STABLE_LOG_2PI + logvar[j] + t * t;
            }
            float ell = (logits[k] - lse_a) - 0.5f * quad;
            resp_row[k] = ell;
            mixture_lse_push(ell, peak, total);
        }
        float lse = mixture_warp_lse(peak, total);
        for (int k = lane; k < K; k += REDUCE_WARP_SIZE) {
            resp_row[k] = expf(resp_row[k] - lse);   // this lane wrote resp_row[k] above
        }
        if (lane == 0) {
            logp[row] = lse;
        }
    }
}

extern "C" __global__ void mixture_prior_backward_z(const float* z, const float* components,
                                                    const float* resp, const float* g,
                                                    float* dz, int B, int K, int Z)
{
    int lane = threadIdx.x % REDUCE_WARP_SIZE;
    int warps_per_block = blockDim.x / REDUCE_WARP_SIZE;
    int row_stride = gridDim.x * warps_per_block;
    for (int row = blockIdx.x * warps_per_block + threadIdx.x / REDUCE_WARP_SIZE; row < B;
         row += row_stride) {
        const float* z_row = z + (unsigned long long)row * (unsigned long long)Z;
        const float* resp_row = resp + (unsigned long long)row * (unsigned long long)K;
        float* dz_row = dz + (unsigned long long)row * (unsigned long long)Z;
        float g_row = g[row];
        for (int j = lane; j < Z; j += REDUCE_WARP_SIZE) {
            float z_j = z_row[j];
            float acc = 0.0f;
            for (int k = 0; k < K; ++k) {
                float r = resp_row[k];
                if (r == 0.0f) {
                    continue;
                }
                const float* mean =
                    components + (unsigned long long)k * (2ull * (unsigned long long)Z);
                float h = expf(-0.5f * mean[Z + j]);
                float t = (z_j - mean[j]) * h;
                acc += r * (t * h);
            }
            dz_row[j] += g_row * -acc;
        }
    }
}

extern "C" __global__ void mixture_prior_backward_params(const float* z, const float* logits,
                                                         const float* components, const float* resp,
                                                         const float* g, float* dlogits,
                                                         float* dcomponents, int B, int K, int Z)
{
    int lane = threadIdx.x % REDUCE_WARP_SIZE;
    int warps_per_block = blockDim.x / REDUCE_WARP_SIZE;
    int k_stride = gridDim.x * warps_per_block;
    float lse_a = mixture_logits_lse(logits, K, lane);
    for (int k = blockIdx.x * warps_per_block + threadIdx.x / REDUCE_WARP_SIZE; k < K;
         k += k_stride) {
        float pi = expf(logits[k] - lse_a);
        float partial = 0.0f;
        for (int b = lane; b < B; b += REDUCE_WARP_SIZE) {
            partial += g[b] * (resp[(unsigned long long)b * (unsigned long long)K + k] - pi);
        }
        float total = reduce_warp_sum(partial);
        if (lane == 0) {
            dlogits[k] = total;
        }
        const float* mean = components + (unsigned long long)k * (2ull * (unsigned long long)Z);
        float* dmean = dcomponents + (unsigned long long)k * (2ull * (unsigned long long)Z);
        for (int j = lane; j < Z; j += REDUCE_WARP_SIZE) {
            float m = mean[j];
            float h = expf(-0.5f * mean[Z + j]);
            float acc_mean = 0.0f;
            float acc_logvar = 0.0f;
            for (int b = 0; b < B; ++b) {
                float w = g[b] * resp[(unsigned long long)b * (unsigned long long)K + k];
                if (w == 0.0f) {
                    continue;
                }
                float t = (z[(unsigned long long)b * (unsigned long long)Z + j] - m) * h;
                acc_mean += w * t;
                acc_logvar += w * (t * t - 1.0f);
            }
            dmean[j] = acc_mean * h;
            dmean[Z + j] = 0.5f * acc_logvar;
        }
    }
}
