// discretized_logistic_nll: one-component discretized logistic negative log-likelihood for
// 8-bit data x = k/255 in [0, 1] (Kingma et al. 2016, IAF; Salimans et al. 2017, PixelCNN++,
// openai/pixel-cnn pixel_cnn_pp/nn.py discretized_mix_logistic_loss), and its gradient.
//
// Forward (raw = [mu | r] per row, h = 1/510 = half a bin, S = DL_LOG_SCALE_BOUND = 7):
//     log s = S tanh(r / S),  inv_s = expf(-log s)
//     upper = inv_s (x - mu + h),  lower = inv_s (x - mu - h),  delta = inv_s / 255
//     P(x)  = sigmoid(upper) - sigmoid(lower) = sigmoid(upper) (1 - sigmoid(lower)) (1 - e^-delta)
//     -log P = softplus(-upper) [bin has an upper edge: x < 1 - h]
//            + softplus(lower)  [bin has a lower edge: x > h]
//            - logf(-expm1f(-delta))  [both]
//     (the edge bins x = 0 and x = 1 are open-ended: each drops the term of its open side,
//     leaving PixelCNN++'s log_cdf_plus and log_one_minus_cdf_min)
//     nll[b] = sum_j -log P(x[b, j])
// Gradient (terms present for the bin as above; the others are 0):
//     g_u = sigmoid(-upper),  g_l = -sigmoid(lower),  g_d = 1 / expm1f(delta)
//     d nll / d mu    = inv_s (g_u + g_l)
//     d nll / d log s = upper g_u + lower g_l + delta g_d
//     d nll / d r     = d nll / d log s * sech^2(r / S)
//     draw[b, j] = scale * d nll / d mu,  draw[b, D + j] = scale * d nll / d r
// Stability: the factored P has no subtraction, so it needs no mid-bin density fallback
//     (PixelCNN++ subtracts the two sigmoids and falls back when the mass is < 1e-5; the
//     factored form is exact there and tends to that density as delta -> 0; see
//     cupyvae/distributions/discretized_logistic.py).  delta lies in [e^-7, e^7] / 255 by the
//     soft bound, every softplus/sigmoid takes expf of a non-positive number, and
//     sech^2 = 4 e2 / (1 + e2)^2 with e2 = expf(-2 |r / S|) (stable_math.cuh).
// Layouts:  raw, draw: (B, 2D) float32 row-major ([mu | r] per row); x: (B, D); nll: (B,).
// Outputs:  nll and draw are written with `=` (never accumulated).
//
// Launch:   grid = (B,), one block per row; block = (T,) with T a multiple of 32 (at most
//           1024); threads stride over D, partial sums meet in reduce_block_sum.
// NumPy twin: cupyvae.distributions.discretized_logistic.discretized_logistic_nll(raw, x, scale).
#include "reduce.cuh"
#include "stable_math.cuh"

#define DL_LOG_SCALE_BOUND 7.0f
#define DL_BIN_HALF_WIDTH (0.5f / 255.0f)
#define DL_BIN_WIDTH (1.0f / 255.0f)

extern "C" __global__ void discretized_logistic_nll(const float* raw, const float* x,
                                                    float* nll, float* draw, int B, int D,
                                                    float scale)
{
    __shared__ float warp_totals[REDUCE_MAX_WARPS];
    int row = blockIdx.x;
    if (row >= B) {
        return;  // uniform across the block, so no thread misses the barrier
    }
    const float* mu_row = raw + (unsigned long long)row * (2ull * (unsigned long long)D);
    const float* r_row = mu_row + D;
    const float* x_row = x + (unsigned long long)row * (unsigned long long)D;
    float* dmu_row = draw + (unsigned long long)row * (2ull * (unsigned long long)D);
    float* dr_row = dmu_row + D;

    float partial = 0.0f;
    for (int j = threadIdx.x; j < D; j += blockDim.x) {
        float target = x_row[j];
        float dlog_s_dr;
        float log_s = soft_bound(r_row[j], DL_LOG_SCALE_BOUND, &dlog_s_dr);
        float inv_s = expf(-log_s);
        float centered = target - mu_row[j];
        float upper = inv_s * (centered + DL_BIN_HALF_WIDTH);
        float lower = inv_s * (centered - DL_BIN_HALF_WIDTH);
        float delta = inv_s * DL_BIN_WIDTH;
        bool has_upper = target < 1.0f - DL_BIN_HALF_WIDTH;
        bool has_lower = target > DL_BIN_HALF_WIDTH;

        float neg_log_p = 0.0f;
        float g_u = 0.0f;
        float g_l = 0.0f;
        float g_d = 0.0f;
        if (has_upper) {
            neg_log_p += stable_softplus(-upper);
            g_u = stable_sigmoid(-upper);
        }
        if (has_lower) {
            neg_log_p += stable_softplus(lower);
            g_l = -stable_sigmoid(lower);
        }
        if (has_upper && has_lower) {
            neg_log_p -= logf(-expm1f(-delta));
            g_d = 1.0f / expm1f(delta);
        }
        partial += neg_log_p;
        dmu_row[j] = scale * (inv_s * (g_u + g_l));
        dr_row[j] = scale * ((upper * g_u + lower * g_l + delta * g_d) * dlog_s_dr);
    }

    float total = reduce_block_sum(partial, warp_totals);
    if (threadIdx.x == 0) {
        nll[row] = total;
    }
}
