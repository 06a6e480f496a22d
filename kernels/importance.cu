// importance.cu: k importance samples per example -- the rows of B*k-row batches, the IWAE
// weights and bound, and the log-sum-exp of the importance-sampled log-likelihood.
// Distribution-free: the per-sample nll, log p(z) and log q(z|x) come from the likelihood,
// prior and posterior kernels.
//
// Rows: row r = b*k + i is sample i of example b (k = `samples`, or K).
//
// importance_noise:  eps[r, j] = Philox normal(seed, step = first_example + r / k,
//                    row = first_sample + r % k, col = j, PHILOX_STREAM_IMPORTANCE)
//                    (the log-likelihood's keying: example index, sample index).
//                    eps: (rows, Z); written with `=`.  No gradient (noise).
// repeat_rows:       dst[r, c] = src[r / k, c].  src (B, C), dst (B*k, C); `=`.
//                    Backward: sum_row_groups.
// sum_row_groups:    dst[b, c] = sum_{i = 0..k-1} src[b*k + i, c], added in that order.
//                    src (B*k, C), dst (B, C); `=`.
// scale_rows:        x[r, c] *= g[r].  x (R, C), g (R,); x updated in place.  The IWAE
//                    gradient of a per-row term: d loss / d raw_r = g_r * d term_r / d raw_r.
// iwae_weights:      log w_r  = (log_p[r] - log_q[r]) - nll[r]
//                    m_b      = max_i log w_bi,  s_b = sum_i exp(log w_bi - m_b)
//                    bound[b] = -(m_b + log s_b - log K)    (negative IWAE bound, Burda et
//                               al. 2016 eq. 8; stable: every exp argument is <= 0)
//                    weight[r] = scale * (exp(log w_r - m_b) / s_b)
//                    Derivation: with loss = scale * sum_b bound_b,
//                      d loss / d log w_r = -scale * w~_r  (w~ = the normalised weights),
//                    so weight_r = d loss / d nll_r = d loss / d log q_r = -d loss / d log p_r.
//                    nll, log_p, log_q, weight: (B*K,); bound: (B,); both written with `=`.
// log_mean_exp_accumulate:
//                    merges K more samples per example into the running log-sum-exp of
//                    the importance-sampled log-likelihood, in double:
//                    M = max(running_max[b], max_i log w_bi)
//                    running_sum[b] = running_sum[b] exp(running_max[b] - M)
//                                     + sum_i exp(log w_bi - M);   running_max[b] = M
//                    (start: running_max = -inf, running_sum = 0).  Updated in place.
// log_mean_exp_finish:
//                    log_px[b] = running_max[b] + log running_sum[b] - log total_samples
//                    (double, `=`): the host reads this one number per example.
//
// Launch: the elementwise entries (noise, rows) are grid-stride loops over 64-bit
//         indices: any grid, any block.  iwae_weights and log_mean_exp_accumulate: one
//         block per example (blocks stride over examples), threads stride over K, block
//         reductions with fixed trees (reduce.cuh): deterministic for a given block size.
//         log_mean_exp_finish: grid-stride over B.
// NumPy twins: cupyvae.objective_twins (same names, same leading arguments).
#include "philox.cuh"
#include "reduce.cuh"

__device__ inline unsigned long long grid_stride_start()
{
    return (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
}

__device__ inline unsigned long long grid_stride()
{
    return (unsigned long long)gridDim.x * blockDim.x;
}

extern "C" __global__ void importance_noise(float* eps, int rows, int Z, int samples,
                                            unsigned int first_example,
                                            unsigned int first_sample, unsigned int seed_lo,
                                            unsigned int seed_hi)
{
    unsigned long long total = (unsigned long long)rows * (unsigned long long)Z;
    for (unsigned long long e = grid_stride_start(); e < total; e += grid_stride()) {
        unsigned long long r = e / (unsigned long long)Z;
        unsigned int j = (unsigned int)(e % (unsigned long long)Z);
        unsigned int example = first_example + (unsigned int)(r / (unsigned long long)samples);
        unsigned int sample = first_sample + (unsigned int)(r % (unsigned long long)samples);
        eps[e] = philox_element_normal(seed_lo, seed_hi, example, PHILOX_STREAM_IMPORTANCE,
                                       sample, j);
    }
}

extern "C" __global__ void repeat_rows(const float* src, float* dst, int rows, int cols,
                                       int samples)
{
    unsigned long long total = (unsigned long long)rows * (unsigned long long)samples *
                               (unsigned long long)cols;
    for (unsigned long long e = grid_stride_start(); e < total; e += grid_stride()) {
        unsigned long long r = e / (unsigned long long)cols;
        unsigned long long c = e % (unsigned long long)cols;
        dst[e] = src[(r / (unsigned long long)samples) * (unsigned long long)cols + c];
    }
}

extern "C" __global__ void sum_row_groups(const float* src, float* dst, int rows, int cols,
                                          int samples)
{
    unsigned long long total = (unsigned long long)rows * (unsigned long long)cols;
    unsigned long long group = (unsigned long long)samples * (unsigned long long)cols;
    for (unsigned long long e = grid_stride_start(); e < total; e += grid_stride()) {
        unsigned long long b = e / (unsigned long long)cols;
        unsigned long long c = e % (unsigned long long)cols;
        const float* first = src + b * group + c;
        float total_value = first[0];
        for (int i = 1; i < samples; ++i) {
            total_value += first[(unsigned long long)i * (unsigned long long)cols];
        }
        dst[e] = total_value;
    }
}

extern "C" __global__ void scale_rows(float* x, const float* g, int rows, int cols)
{
    unsigned long long total = (unsigned long long)rows * (unsigned long long)cols;
    for (unsigned long long e = grid_stride_start(); e < total; e += grid_stride()) {
        x[e] *= g[e / (unsigned long long)cols];
    }
}

__device__ inline float log_weight(const float* nll, const float* log_p, const float* log_q,
                                   unsigned long long r)
{
    return (log_p[r] - log_q[r]) - nll[r];
}

__device__ inline double log_weight_double(const float* nll, const float* log_p,
                                           const float* log_q, unsigned long long r)
{
    return ((double)log_p[r] - (double)log_q[r]) - (double)nll[r];
}

extern "C" __global__ void iwae_weights(const float* nll, const float* log_p,
                                        const float* log_q, float* bound, float* weight,
                                        int B, int K, float scale)
{
    __shared__ float warp_totals[REDUCE_MAX_WARPS];
    __shared__ float block_value;
    // `b` is the same in every thread of a block: all of them take every barrier.
    for (int b = blockIdx.x; b < B; b += gridDim.x) {
        unsigned long long first = (unsigned long long)b * (unsigned long long)K;

        float local_max = REDUCE_NEG_INF_FLOAT;
        for (int i = threadIdx.x; i < K; i += blockDim.x) {
            local_max = fmaxf(local_max, log_weight(nll, log_p, log_q, first + i));
        }
        float m = reduce_block_max(local_max, warp_totals);
        if (threadIdx.x == 0) {
            block_value = m;
        }
        __syncthreads();  // m is stored, and warp 0 has finished reading warp_totals
        m = block_value;

        float local_sum = 0.0f;
        for (int i = threadIdx.x; i < K; i += blockDim.x) {
            local_sum += expf(log_weight(nll, log_p, log_q, first + i) - m);
        }
        // Thread 0 overwrites block_value only after the barrier inside the reduction,
        // which every thread reaches after reading m.
        float s = reduce_block_sum(local_sum, warp_totals);
        if (threadIdx.x == 0) {
            block_value = s;
            bound[b] = -(m + logf(s) - logf((float)K));
        }
        __syncthreads();
        s = block_value;

        for (int i = threadIdx.x; i < K; i += blockDim.x) {
            weight[first + i] = scale * (expf(log_weight(nll, log_p, log_q, first + i) - m) / s);
        }
        __syncthreads();  // block_value and warp_totals are free for the next example
    }
}

extern "C" __global__ void log_mean_exp_accumulate(const float* nll, const float* log_p,
                                                   const float* log_q, double* running_max,
                                                   double* running_sum, int B, int K)
{
    __shared__ double warp_totals[REDUCE_MAX_WARPS];
    __shared__ double block_value;
    for (int b = blockIdx.x; b < B; b += gridDim.x) {
        unsigned long long first = (unsigned long long)b * (unsigned long long)K;

        double local_max = REDUCE_NEG_INF_DOUBLE;
        for (int i = threadIdx.x; i < K; i += blockDim.x) {
            local_max = fmax(local_max, log_weight_double(nll, log_p, log_q, first + i));
        }
        double chunk_max = reduce_block_max(local_max, warp_totals);
        if (threadIdx.x == 0) {
            block_value = fmax(running_max[b], chunk_max);
        }
        __syncthreads();
        double m = block_value;

        double local_sum = 0.0;
        for (int i = threadIdx.x; i < K; i += blockDim.x) {
            local_sum += exp(log_weight_double(nll, log_p, log_q, first + i) - m);
        }
        double s = reduce_block_sum(local_sum, warp_totals);
        if (threadIdx.x == 0) {
            running_sum[b] = running_sum[b] * exp(running_max[b] - m) + s;
            running_max[b] = m;
        }
        __syncthreads();  // block_value and warp_totals are free for the next example
    }
}

extern "C" __global__ void log_mean_exp_finish(const double* running_max,
                                               const double* running_sum, double* log_px,
                                               int B, double total_samples)
{
    for (unsigned long long b = grid_stride_start(); b < (unsigned long long)B;
         b += grid_stride()) {
        log_px[b] = running_max[b] + log(running_sum[b]) - log(total_samples);
    }
}
