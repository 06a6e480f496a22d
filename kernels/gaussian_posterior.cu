// gaussian_posterior: the reparameterized sample of q(z|x) = N(mu, diag(exp(lv))) and its
// closed-form KL to N(0, I), forward and backward.
//
// Forward (qraw = [mu | lv], eps = Philox normal of element (b, j), see philox.cuh):
//     eps[b, j] = normal(seed, step = counters[0], row = b, col = j, stream)
//     z[b, j]   = mu + expf(lv / 2) * eps
//     kl[b]     = -1/2 sum_j (1 + lv - mu^2 - exp(lv))
//               = -1/2 sum_j ((lv - expm1(lv)) - mu^2)
//       (the expm1 form is the same number without the cancellation of 1 + lv - exp(lv)
//        near lv = 0, where the float32 sum of three O(1) terms would lose ~ulp(1))
// Backward, given dz = d loss / dz and d loss / d kl[b] = kl_scale * beta (kl_scale = 1/B for
// a batch mean, beta = kl_weight[0], the KL weight the device holds for this step):
//     k         = kl_scale * beta                        (float32; beta = 1 leaves kl_scale)
//     dmu[b, j] = dz + k * mu
//     dlv[b, j] = dz * eps * exp(lv / 2) / 2  +  k * expm1(lv) / 2
//       (d z / d lv = eps exp(lv/2) / 2;  d kl / d mu = mu,  d kl / d lv = (exp(lv) - 1) / 2)
//     eps is recomputed from the counters, never stored.
// Monte-Carlo objectives (IWAE, the importance-sampled log-likelihood), per row b:
//     gaussian_posterior_log_q:  log_q[b] = -1/2 sum_j (log 2pi + lv + eps^2)
//       = log q(z_b | x_b) at z_b = mu + exp(lv/2) eps, from the noise: never from
//       (z - mu)^2 exp(-lv), which cancels to 0 in float32 and overflows for narrow q.
//     gaussian_posterior_weighted_backward, given dz (d loss / dz, the prior's term
//       included) and g[b] = d loss / d log_q[b] (IWAE: scale * the normalised weight):
//       dmu[b, j] = dz;   dlv[b, j] = dz * eps * exp(lv / 2) / 2 - g[b] / 2
//       (total derivative of log q at fixed eps: d/dmu = 0, d/dlv = -1/2).
// Free bits, per latent dimension j (the KL to N(0, I) factorises):
//     gaussian_posterior_kl_per_dimension:  kl_dim[b, j] = -1/2 ((lv - expm1(lv)) - mu^2)
//     gaussian_posterior_kl_per_dimension_backward, given weight[j] (free_bits_kl's
//       active[j]) and kl_scale (d loss / d KL term, e.g. beta / B):
//       dmu[b, j] += kl_scale * weight[j] * mu;  dlv[b, j] += kl_scale * weight[j] * expm1(lv) / 2
//       (ADDS to dqraw, after gaussian_posterior_backward wrote it with kl_scale = 0).
// Given noise: with eps_given != 0 both kernels read eps (B, Z) instead of drawing it
// (model.loss_and_grads(x, eps) takes the caller's noise); otherwise eps is never read.
// Layouts:  qraw, dqraw: (B, 2Z) float32 row-major, [mu | lv] / [dmu | dlv] per row;
//           z, dz: (B, Z); kl: (B,); counters: unsigned int[2] on the device,
//           counters[0] = global step (the Adam step count before this update);
//           kl_weight: float[1] on the device (a slot of `sched`, kernels/schedule.cuh).
// Outputs:  z, kl, dqraw, log_q, kl_dim are written with `=`; the per-dimension KL
//           backward alone accumulates into dqraw (`+=`).
//
// Launch:   both entries: one warp per row, block = (32 W,) with W rows per block,
//           grid = (ceil(B / W),); a smaller grid also works (warps stride over rows).
//           Lanes stride over Z (small: 2..256).  The forward's KL partials meet in a
//           shuffle tree (reduce.cuh), so no barrier is needed; the backward has no
//           reduction and shares the geometry (no per-element index division).
// Every entry shares that geometry (the elementwise ones need no reduction, but one
// geometry keeps one launch helper).
// NumPy twins: cupyvae.distributions.gaussian.<entry name>.
#include "philox.cuh"
#include "reduce.cuh"
#include "stable_math.cuh"

extern "C" __global__ void gaussian_posterior_forward(const float* qraw,
                                                      const unsigned int* counters,
                                                      float* z, float* kl, int B, int Z,
                                                      unsigned int seed_lo,
                                                      unsigned int seed_hi,
                                                      unsigned int stream,
                                                      const float* eps_in, int eps_given)
{
    int lane = threadIdx.x % REDUCE_WARP_SIZE;
    int warps_per_block = blockDim.x / REDUCE_WARP_SIZE;
    int row_stride = gridDim.x * warps_per_block;
    unsigned int step = counters[0];
    // `row` is the same in every lane of a warp, so each warp enters and leaves the loop
    // whole and the shuffles always see all 32 lanes.
    for (int row = blockIdx.x * warps_per_block + threadIdx.x / REDUCE_WARP_SIZE; row < B;
         row += row_stride) {
        const float* mu = qraw + (unsigned long long)row * (2ull * (unsigned long long)Z);
        const float* lv = mu + Z;
        float* z_row = z + (unsigned long long)row * (unsigned long long)Z;

        float partial = 0.0f;
        for (int j = lane; j < Z; j += REDUCE_WARP_SIZE) {
            float m = mu[j];
            float l = lv[j];
            float eps = eps_given ? eps_in[(unsigned long long)row * (unsigned long long)Z + j]
                                  : philox_element_normal(seed_lo, seed_hi, step, stream,
                                                          (unsigned int)row, (unsigned int)j);
            z_row[j] = m + expf(0.5f * l) * eps;
            partial += (l - expm1f(l)) - m * m;
        }
        float total = reduce_warp_sum(partial);
        if (lane == 0) {
            kl[row] = -0.5f * total;
        }
    }
}

extern "C" __global__ void gaussian_posterior_backward(const float* qraw, const float* dz,
                                                       const unsigned int* counters,
                                                       float* dqraw, int B, int Z,
                                                       unsigned int seed_lo,
                                                       unsigned int seed_hi,
                                                       unsigned int stream, float kl_scale,
                                                       const float* kl_weight,
                                                       const float* eps_in, int eps_given)
{
    float kl_coefficient = kl_scale * kl_weight[0];
    int lane = threadIdx.x % REDUCE_WARP_SIZE;
    int warps_per_block = blockDim.x / REDUCE_WARP_SIZE;
    int row_stride = gridDim.x * warps_per_block;
    unsigned int step = counters[0];
    for (int row = blockIdx.x * warps_per_block + threadIdx.x / REDUCE_WARP_SIZE; row < B;
         row += row_stride) {
        unsigned long long row_start = (unsigned long long)row * (2ull * (unsigned long long)Z);
        const float* mu = qraw + row_start;
        const float* lv = mu + Z;
        const float* dz_row = dz + (unsigned long long)row * (unsigned long long)Z;
        float* dmu = dqraw + row_start;
        float* dlv = dmu + Z;

        for (int j = lane; j < Z; j += REDUCE_WARP_SIZE) {
            float m = mu[j];
            float l = lv[j];
            float g = dz_row[j];
            float eps = eps_given ? eps_in[(unsigned long long)row * (unsigned long long)Z + j]
                                  : philox_element_normal(seed_lo, seed_hi, step, stream,
                                                          (unsigned int)row, (unsigned int)j);
            dmu[j] = g + kl_coefficient * m;
            dlv[j] = 0.5f * g * eps * expf(0.5f * l) + kl_coefficient * 0.5f * expm1f(l);
        }
    }
}

extern "C" __global__ void gaussian_posterior_log_q(const float* qraw,
                                                    const unsigned int* counters,
                                                    float* log_q, int B, int Z,
                                                    unsigned int seed_lo, unsigned int seed_hi,
                                                    unsigned int stream, const float* eps_in,
                                                    int eps_given)
{
    int lane = threadIdx.x % REDUCE_WARP_SIZE;
    int warps_per_block = blockDim.x / REDUCE_WARP_SIZE;
    int row_stride = gridDim.x * warps_per_block;
    unsigned int step = counters[0];
    for (int row = blockIdx.x * warps_per_block + threadIdx.x / REDUCE_WARP_SIZE; row < B;
         row += row_stride) {
        const float* lv = qraw + (unsigned long long)row * (2ull * (unsigned long long)Z) + Z;
        float partial = 0.0f;
        for (int j = lane; j < Z; j += REDUCE_WARP_SIZE) {
            float eps = eps_given ? eps_in[(unsigned long long)row * (unsigned long long)Z + j]
                                  : philox_element_normal(seed_lo, seed_hi, step, stream,
                                                          (unsigned int)row, (unsigned int)j);
            partial += (STABLE_LOG_2PI + lv[j]) + eps * eps;
        }
        float total = reduce_warp_sum(partial);
        if (lane == 0) {
            log_q[row] = -0.5f * total;
        }
    }
}

extern "C" __global__ void gaussian_posterior_weighted_backward(
    const float* qraw, const float* dz, const float* g, const unsigned int* counters,
    float* dqraw, int B, int Z, unsigned int seed_lo, unsigned int seed_hi, unsigned int stream,
    const float* eps_in, int eps_given)
{
    int lane = threadIdx.x % REDUCE_WARP_SIZE;
    int warps_per_block = blockDim.x / REDUCE_WARP_SIZE;
    int row_stride = gridDim.x * warps_per_block;
    unsigned int step = counters[0];
    for (int row = blockIdx.x * warps_per_block + threadIdx.x / REDUCE_WARP_SIZE; row < B;
         row += row_stride) {
        unsigned long long row_start = (unsigned long long)row * (2ull * (unsigned long long)Z);
        const float* lv = qraw + row_start + Z;
        const float* dz_row = dz + (unsigned long long)row * (unsigned long long)Z;
        float* dmu = dqraw + row_start;
        float* dlv = dmu + Z;
        float g_row = g[row];
        for (int j = lane; j < Z; j += REDUCE_WARP_SIZE) {
            float d = dz_row[j];
            float eps = eps_given ? eps_in[(unsigned long long)row * (unsigned long long)Z + j]
                                  : philox_element_normal(seed_lo, seed_hi, step, stream,
                                                          (unsigned int)row, (unsigned int)j);
            dmu[j] = d;
            dlv[j] = 0.5f * d * eps * expf(0.5f * lv[j]) - 0.5f * g_row;
        }
    }
}

extern "C" __global__ void gaussian_posterior_kl_per_dimension(const float* qraw, float* kl_dim,
                                                               int B, int Z)
{
    int lane = threadIdx.x % REDUCE_WARP_SIZE;
    int warps_per_block = blockDim.x / REDUCE_WARP_SIZE;
    int row_stride = gridDim.x * warps_per_block;
    for (int row = blockIdx.x * warps_per_block + threadIdx.x / REDUCE_WARP_SIZE; row < B;
         row += row_stride) {
        const float* mu = qraw + (unsigned long long)row * (2ull * (unsigned long long)Z);
        const float* lv = mu + Z;
        float* kl_row = kl_dim + (unsigned long long)row * (unsigned long long)Z;
        for (int j = lane; j < Z; j += REDUCE_WARP_SIZE) {
            float m = mu[j];
            float l = lv[j];
            kl_row[j] = -0.5f * ((l - expm1f(l)) - m * m);
        }
    }
}

extern "C" __global__ void gaussian_posterior_kl_per_dimension_backward(
    const float* qraw, const float* weight, float* dqraw, int B, int Z, float kl_scale)
{
    int lane = threadIdx.x % REDUCE_WARP_SIZE;
    int warps_per_block = blockDim.x / REDUCE_WARP_SIZE;
    int row_stride = gridDim.x * warps_per_block;
    for (int row = blockIdx.x * warps_per_block + threadIdx.x / REDUCE_WARP_SIZE; row < B;
         row += row_stride) {
        unsigned long long row_start = (unsigned long long)row * (2ull * (unsigned long long)Z);
        const float* mu = qraw + row_start;
        const float* lv = mu + Z;
        float* dmu = dqraw + row_start;
        float* dlv = dmu + Z;
        for (int j = lane; j < Z; j += REDUCE_WARP_SIZE) {
            float w = kl_scale * weight[j];
            dmu[j] += w * mu[j];
            dlv[j] += w * (0.5f * expm1f(lv[j]));
        }
    }
}
