// gaussian_real_nll: per-element Gaussian negative log-likelihood with a real-valued
// (unbounded) mean and a softly bounded log-variance, and its gradient, in one pass.
// (gaussian_likelihood.cu is the 'gaussian-sigmoid' variant, whose mean is a sigmoid.)
//
// Forward (raw = [m | r] per row, any finite target x, S = GAUSSIAN_REAL_LOGVAR_BOUND = 7):
//     s = S tanh(r / S)                                       (log-variance)
//     nll[b] = 1/2 sum_j (log 2pi + s + (x - m)^2 exp(-s))
// Gradient (sq = (x - m)^2 exp(-s)), times the upstream `scale` (1/B for a batch mean):
//     d nll / d m = -(x - m) exp(-s)
//     d nll / d r = (1 - sq) / 2 * sech^2(r / S)
//     draw[b, j] = scale * d nll / d m,  draw[b, D + j] = scale * d nll / d r
// Stability: s lies in [-S, S], so exp(-s) <= e^7 and every term is finite for finite x, m;
//     sech^2 = 4 e2 / (1 + e2)^2 with e2 = expf(-2 |r / S|) (stable_math.cuh).
// Layouts:  raw, draw: (B, 2D) float32 row-major ([m | r] per row); x: (B, D); nll: (B,).
// Outputs:  nll and draw are written with `=` (never accumulated).
//
// Launch:   grid = (B,), one block per row; block = (T,) with T a multiple of 32 (at most
//           1024); threads stride over D, partial sums meet in reduce_block_sum.
// NumPy twin: cupyvae.distributions.gaussian_real.gaussian_real_nll(raw, x, scale).
#include "reduce.cuh"
#include "stable_math.cuh"

#define GAUSSIAN_REAL_LOGVAR_BOUND 7.0f

extern "C" __global__ void gaussian_real_nll(const float* raw, const float* x, float* nll,
                                             float* draw, int B, int D, float scale)
{
    __shared__ float warp_totals[REDUCE_MAX_WARPS];
    int row = blockIdx.x;
    if (row >= B) {
        return;  // uniform across the block, so no thread misses the barrier
    }
    const float* m_row = raw + (unsigned long long)row * (2ull * (unsigned long long)D);
    const float* r_row = m_row + D;
    const float* x_row = x + (unsigned long long)row * (unsigned long long)D;
    float* dm_row = draw + (unsigned long long)row * (2ull * (unsigned long long)D);
    float* dr_row = dm_row + D;

    float partial = 0.0f;
    for (int j = threadIdx.x; j < D; j += blockDim.x) {
        float ds_dr;
        float s = soft_bound(r_row[j], GAUSSIAN_REAL_LOGVAR_BOUND, &ds_dr);
        float inv_var = expf(-s);
        float diff = x_row[j] - m_row[j];
        float sq = diff * diff * inv_var;
        partial += STABLE_LOG_2PI + s + sq;
        dm_row[j] = scale * (-diff * inv_var);
        dr_row[j] = scale * (0.5f * (1.0f - sq) * ds_dr);
    }

    float total = reduce_block_sum(partial, warp_totals);
    if (threadIdx.x == 0) {
        nll[row] = 0.5f * total;
    }
}
