// grad_clip: gradient clipping by global norm (Pascanu, Mikolov & Bengio 2013, "On the
// difficulty of training recurrent neural networks", section 3.2) over the whole flat
// gradient buffer, in two launches that make one deterministic reduction: no atomics, and
// a summation order fixed by the launch shape alone, so the same gradient always gives the
// same bits whatever order the blocks run in.
//
//   grad_norm_partials:  partials[b] = sum_{threads T of block b} sum_{i = T, T + S, ...} g[i]^2
//                        (S = gridDim.x blockDim.x; each thread sums its elements in index
//                        order, then the block's tree of reduce.cuh)
//   grad_clip_scale:     norm  = sqrt(sum_b partials[b])   (one block: each thread sums the
//                                partials b = T, T + blockDim.x, ... in order, then the tree)
//                        scale = c / norm  if norm > c,  else 1       (c = hyper[HYPER_CLIP_NORM])
//                        sched[SCHED_CLIP_SCALE] = scale, sched[SCHED_GRAD_NORM] = norm  (`=`)
// The Adam update (kernels/adam.cuh) then uses g * scale: the clipped gradient has norm
// min(norm, c).  A NaN norm compares false and leaves scale = 1: a NaN gradient is not
// hidden, so the epoch's loss shows it and training stops (cupyvae.model.TrainingDiverged).
// Precision: squares and sums in double.  A float32 g squared is exact in double (48
// significant bits), so an FMA contraction of `sum += x * x` gives the same bits, and no
// float32 gradient can overflow the sum.
// Layouts:  g: (n,) float32, the flat gradient buffer; partials: (gridDim.x of the first
//           launch,) double; hyper: double[HYPER_SIZE]; sched: float[SCHED_SIZE].
// Launch:   grad_norm_partials: any grid, block a multiple of 32 (the builder: 256 threads,
//           up to 1024 blocks); grad_clip_scale: one block, a multiple of 32 threads.
// NumPy twins: cupyvae.optim.grad_norm_partials / grad_clip_scale (the same trees, in
//           float64: the same bits).  No gradient: nothing here is differentiated.
#include "reduce.cuh"
#include "schedule.cuh"

extern "C" __global__ void grad_norm_partials(const float* g, double* partials, int n)
{
    __shared__ double warp_totals[REDUCE_MAX_WARPS];
    unsigned int stride = gridDim.x * blockDim.x;
    double sum = 0.0;
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < (unsigned int)n;
         i += stride) {
        double x = (double)g[i];
        sum += x * x;
    }
    double total = reduce_block_sum(sum, warp_totals);
    if (threadIdx.x == 0) {
        partials[blockIdx.x] = total;
    }
}

extern "C" __global__ void grad_clip_scale(const double* partials, int blocks,
                                           const double* hyper, float* sched)
{
    __shared__ double warp_totals[REDUCE_MAX_WARPS];
    if (blockIdx.x != 0) {
        return;  // one block by contract; extra blocks (uniformly) do nothing
    }
    double sum = 0.0;
    for (int b = threadIdx.x; b < blocks; b += blockDim.x) {
        sum += partials[b];
    }
    double total = reduce_block_sum(sum, warp_totals);
    if (threadIdx.x == 0) {
        double norm = sqrt(total);
        double bound = hyper[HYPER_CLIP_NORM];
        sched[SCHED_CLIP_SCALE] = (float)(norm > bound ? bound / norm : 1.0);
        sched[SCHED_GRAD_NORM] = (float)norm;
    }
}
