// reduce.cuh: sums and maxima over a warp and over a block, for kernels that reduce rows.
//
// reduce_warp_sum(v):  sum of v over the 32 lanes of the calling warp, by shuffles
//                      (tree order fixed by the lane index, so deterministic); the total
//                      is valid in lane 0.  All 32 lanes must call it (full-warp mask):
//                      launchers never pick a block that is not a multiple of 32, and a
//                      kernel that exits early does so for whole warps.
// reduce_block_sum(v, warp_totals):
//                      sum of v over the block; the total is valid in thread 0 only.
//                      warp_totals is the caller's __shared__ float[REDUCE_MAX_WARPS].
//                      It ends with warp 0 still reading warp_totals: a kernel calling it
//                      twice must __syncthreads() in between.
// reduce_warp_max / reduce_block_max(v, warp_totals): the same for the maximum (identity
//                      -INFINITY; fmax ignores NaN).
// Each is one template for float and double (warp_totals then __shared__ double[...]);
// the double sums' trees are what cupyvae.optim.block_sum_twin reproduces in NumPy.
// All trees are fixed by the thread indices, so the same launch shape always gives
// the same bits (the order of thread execution does not matter).
#pragma once

#define REDUCE_WARP_SIZE 32
#define REDUCE_MAX_WARPS 32
#define REDUCE_FULL_MASK 0xffffffffu
// -infinity, the identity of max (no math header defines INFINITY under NVRTC)
#define REDUCE_NEG_INF_FLOAT __int_as_float((int)0xff800000u)
#define REDUCE_NEG_INF_DOUBLE __longlong_as_double((long long)0xfff0000000000000ull)

// The maximum ignoring NaN, and its identity -infinity, per type (fmaxf stays the float
// instruction); everything below is one template for float and double.
__device__ inline float reduce_max_pair(float a, float b) { return fmaxf(a, b); }
__device__ inline double reduce_max_pair(double a, double b) { return fmax(a, b); }
__device__ inline float reduce_neg_inf(float) { return REDUCE_NEG_INF_FLOAT; }
__device__ inline double reduce_neg_inf(double) { return REDUCE_NEG_INF_DOUBLE; }

template <typename T>
__device__ inline T reduce_warp_sum(T value)
{
    for (int offset = REDUCE_WARP_SIZE / 2; offset > 0; offset /= 2) {
        value += __shfl_down_sync(REDUCE_FULL_MASK, value, offset);
    }
    return value;
}

template <typename T>
__device__ inline T reduce_warp_max(T value)
{
    for (int offset = REDUCE_WARP_SIZE / 2; offset > 0; offset /= 2) {
        value = reduce_max_pair(value, __shfl_down_sync(REDUCE_FULL_MASK, value, offset));
    }
    return value;
}

template <typename T>
__device__ inline T reduce_block_sum(T value, T* warp_totals)
{
    int lane = threadIdx.x % REDUCE_WARP_SIZE;
    int warp = threadIdx.x / REDUCE_WARP_SIZE;
    int warp_count = (blockDim.x + REDUCE_WARP_SIZE - 1) / REDUCE_WARP_SIZE;

    value = reduce_warp_sum(value);
    if (lane == 0) {
        warp_totals[warp] = value;
    }
    __syncthreads();  // every warp total is stored before warp 0 reads them
    if (warp == 0) {
        value = lane < warp_count ? warp_totals[lane] : T(0);
        value = reduce_warp_sum(value);
    }
    return value;
}

template <typename T>
__device__ inline T reduce_block_max(T value, T* warp_totals)
{
    int lane = threadIdx.x % REDUCE_WARP_SIZE;
    int warp = threadIdx.x / REDUCE_WARP_SIZE;
    int warp_count = (blockDim.x + REDUCE_WARP_SIZE - 1) / REDUCE_WARP_SIZE;

    value = reduce_warp_max(value);
    if (lane == 0) {
        warp_totals[warp] = value;
    }
    __syncthreads();  // every warp total is stored before warp 0 reads them
    if (warp == 0) {
        value = lane < warp_count ? warp_totals[lane] : reduce_neg_inf(value);
        value = reduce_warp_max(value);
    }
    return value;
}
