// step.cu: the glue of a training step that reads the device counters, so a whole step
// (gather, forward, backward, Adam, loss bookkeeping) can be captured in one CUDA graph
// and replayed with no host-side scalars.
//
// counters: unsigned int[2] on the device
//     counters[0] = global step: the Adam step count before this step's update, and the
//                   Philox `step` key of all of this step's noise
//     counters[1] = batch index within the epoch
// n_batches: the batches of the epoch, the bound of counters[1].  A step replayed past
//     the end (a caller's bug: cupyvae.cuda.graph replays exactly the epoch's steps) makes
//     gather_rows and end_step write nothing, instead of indexing perm / losses out of
//     bounds.  The check reads counters[1], the same value in every thread: the early
//     return is uniform, and no barrier follows it.
//
// gather_rows:      xb[b, j] = data[perm[counters[1] B + b], j]
//                   and, with binarize != 0 (dynamic binarization),
//                   xb[b, j] = (u < data[...]) ? 1 : 0,
//                   u = Philox uniform(seed, step = counters[0], row = b, col = j,
//                                      STREAM_BINARIZE)
//                   bit-identical to cupyvae.executors.binarize_batch (uniforms are exact).
//                   data: (N, D), xb: (B, D) float32 row-major; perm: int32, at least
//                   n_batches B long (the caller guarantees perm[...] < N).
//                   Writes xb with `=`.  Blocks stride over rows (one perm lookup per
//                   row), threads over columns: any grid, any block.
//                   Binarization stays fused here rather than in a separate elementwise
//                   pass: the gather reads each pixel once and writes it once either way,
//                   and a second pass would re-read and re-write the whole batch and add
//                   one launch (a graph node, ~1-2 us) to every step, for no gain; the
//                   Philox draw it needs is keyed by (row, col), which this loop has.
// end_step:         the last launch of a step (after Adam; schedule_step, at the step's
//                   start, is what reads counters[0] for the update):
//                   losses[counters[1]] = (1 / B) sum_b (nll[b] + beta kl[b])  (if in bounds)
//                   counters[0] += 1, counters[1] += 1
//                   nll, kl: (B,); beta = kl_weight[0], the step's KL weight on the device
//                   (a slot of `sched`, kernels/schedule.cuh; beta = 1 adds kl unchanged);
//                   losses: (n_batches,), one slot written with `=`.
//                   The float32 products beta kl[b] are summed with nll[b] in double (the
//                   NumPy path's float64 loss, like step_terms), then rounded to float32;
//                   one block, fixed reduction tree: deterministic for a given block size.
//                   Thread 0 writes the loss and then advances the counters, so the slot
//                   it writes is the one of this step.  The host reads `losses` once per
//                   epoch.  (One launch for what were batch_loss and advance_counters.)
// step_terms:       the step's two ELBO terms, for the epoch's metrics (before end_step,
//                   which advances counters[1]):
//                   terms[counters[1]]             = (1 / R) sum_r recon[r]
//                   terms[n_batches + counters[1]] = (1 / R) sum_r kl[r]   (if in bounds)
//                   recon, kl: (R,) per-row reconstruction (nll) and KL terms of the
//                   step (R = B, or B*k rows for IWAE); terms: (2, n_batches) float32,
//                   two slots written with `=`.  Summed in double (the NumPy path's
//                   float64 means), then rounded; one block, fixed reduction trees:
//                   deterministic for a given block size.
// An epoch starts with counters = [the optimizer's step count, 0], uploaded by the executor.
// No gradients here: nothing in this file is differentiated.
// NumPy twins: cupyvae.step_twins (same names, same arguments).
#include "philox.cuh"
#include "reduce.cuh"

extern "C" __global__ void gather_rows(const float* data, const int* perm,
                                       const unsigned int* counters, float* xb, int B, int D,
                                       int binarize, unsigned int seed_lo,
                                       unsigned int seed_hi, unsigned int n_batches)
{
    unsigned int step = counters[0];
    unsigned int batch = counters[1];
    if (batch >= n_batches) {
        return;  // past the epoch: perm has no rows for this batch
    }
    unsigned long long batch_start = (unsigned long long)batch * (unsigned long long)B;
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

extern "C" __global__ void end_step(const float* nll, const float* kl, const float* kl_weight,
                                    float* losses, unsigned int* counters, int B,
                                    unsigned int n_batches)
{
    __shared__ double warp_totals[REDUCE_MAX_WARPS];
    if (blockIdx.x != 0) {
        return;  // one block by contract; extra blocks (uniformly) do nothing
    }
    float beta = kl_weight[0];
    double partial = 0.0;
    for (int b = threadIdx.x; b < B; b += blockDim.x) {
        float weighted = __fmul_rn(beta, kl[b]);  // never fused: beta = 1 adds kl exactly
        partial += (double)nll[b] + (double)weighted;
    }
    double total = reduce_block_sum(partial, warp_totals);
    if (threadIdx.x == 0) {
        unsigned int batch = counters[1];
        if (batch < n_batches) {
            losses[batch] = (float)(total / (double)B);
        }
        counters[0] = counters[0] + 1u;
        counters[1] = batch + 1u;
    }
}

extern "C" __global__ void step_terms(const float* recon, const float* kl, float* terms,
                                      const unsigned int* counters, int R,
                                      unsigned int n_batches)
{
    __shared__ double warp_totals[REDUCE_MAX_WARPS];
    if (blockIdx.x != 0) {
        return;  // one block by contract; extra blocks (uniformly) do nothing
    }
    double recon_partial = 0.0;
    double kl_partial = 0.0;
    for (int r = threadIdx.x; r < R; r += blockDim.x) {
        recon_partial += (double)recon[r];
        kl_partial += (double)kl[r];
    }
    double recon_total = reduce_block_sum(recon_partial, warp_totals);
    __syncthreads();  // warp 0 has read warp_totals before they are reused
    double kl_total = reduce_block_sum(kl_partial, warp_totals);
    if (threadIdx.x == 0) {
        unsigned int batch = counters[1];
        if (batch < n_batches) {
            terms[batch] = (float)(recon_total / (double)R);
            terms[n_batches + batch] = (float)(kl_total / (double)R);
        }
    }
}
