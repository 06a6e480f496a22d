// step.cu: the glue of a training step that reads the device counters, so a whole step
// (gather, forward, backward, Adam, loss bookkeeping) can be captured in one CUDA graph
// and replayed with no host-side scalars.
//
// counters: unsigned int[2] on the device
//     counters[0] = global step: the Adam step count before this step's update, and the
//                   Philox `step` key of all of this step's noise
//     counters[1] = batch index within the epoch
//
// gather_rows:      xb[b, j] = data[perm[counters[1] B + b], j]
//                   and, with binarize != 0 (dynamic binarization),
//                   xb[b, j] = (u < data[...]) ? 1 : 0,
//                   u = Philox uniform(seed, step = counters[0], row = b, col = j,
//                                      STREAM_BINARIZE)
//                   bit-identical to cupyvae.executors.binarize_batch (uniforms are exact).
//                   data: (N, D), xb: (B, D) float32 row-major; perm: int32, length >= the
//                   batches of an epoch times B (the caller guarantees perm[...] < N).
//                   Writes xb with `=`.  Blocks stride over rows (one perm lookup per
//                   row), threads over columns: any grid, any block.
// batch_loss:       losses[counters[1]] = (1 / B) sum_b (nll[b] + beta kl[b])
//                   nll, kl: (B,); beta = kl_weight[0], the step's KL weight on the device
//                   (a slot of `sched`, kernels/schedule.cuh; beta = 1 adds kl unchanged);
//                   losses: (batches per epoch,), one slot written with `=`.
//                   One block, fixed reduction tree: deterministic for a given block size.
//                   The host reads `losses` once per epoch.
// advance_counters: counters[0] += 1, counters[1] += 1.  One thread; the last launch of a step.
// start_epoch:      counters[1] = 0.  One thread; before an epoch's first step.
// No gradients here: nothing in this file is differentiated.
// NumPy twins: cupyvae.step_twins (same names, same arguments).
#include "philox.cuh"
#include "reduce.cuh"

extern "C" __global__ void gather_rows(const float* data, const int* perm,
                                       const unsigned int* counters, float* xb, int B, int D,
                                       int binarize, unsigned int seed_lo,
                                       unsigned int seed_hi)
{
    unsigned int step = counters[0];
    unsigned long long batch_start = (unsigned long long)counters[1] * (unsigned long long)B;
    for (int row = blockIdx.x; row < B; row += gridDim.x) {
        unsigned long long source = (unsigned long long)perm[batch_start + row];
        const float* data_row = data + source * (unsigned long long)D;
        float* xb_row = xb + (unsigned long long)row * (unsigned long long)D;
        for (int col = threadIdx.x; col < D; col += blockDim.x) {
            float value = data_row[col];
            if (binarize) {
                float u = philox_element_uniform(seed_lo, seed_hi, step, PHILOX_STREAM_BINARIZE,
                                                 (unsigned int)row, (unsigned int)col);
                value = u < value ? 1.0f : 0.0f;
            }
            xb_row[col] = value;
        }
    }
}

extern "C" __global__ void batch_loss(const float* nll, const float* kl,
                                      const float* kl_weight, float* losses,
                                      const unsigned int* counters, int B)
{
    __shared__ float warp_totals[REDUCE_MAX_WARPS];
    if (blockIdx.x != 0) {
        return;  // one block by contract; extra blocks (uniformly) do nothing
    }
    float beta = kl_weight[0];
    float partial = 0.0f;
    for (int b = threadIdx.x; b < B; b += blockDim.x) {
        partial += nll[b] + __fmul_rn(beta, kl[b]);  // never fused: beta = 1 adds kl exactly
    }
    float total = reduce_block_sum(partial, warp_totals);
    if (threadIdx.x == 0) {
        losses[counters[1]] = total / (float)B;
    }
}

extern "C" __global__ void advance_counters(unsigned int* counters)
{
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        counters[0] += 1u;
        counters[1] += 1u;
    }
}

extern "C" __global__ void start_epoch(unsigned int* counters)
{
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        counters[1] = 0u;
    }
}
