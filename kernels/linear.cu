// linear: the MLP layer y = act(x W + b), forward and hand-derived backward, as two kernels
// sharing one tiled SGEMM main loop with an optional deterministic split-K.
//
// Shapes (all float32, row-major, contiguous):
//     x (B, I)   layer input (= previous layer's output y_prev = act_x(a_prev))
//     W (I, O)   weight;  b (O,) bias
//     a (B, O)   pre-activation (never stored);  y (B, O) output
//     da (B, O)  dLoss/da, the gradient wrt the PRE-activation
// Forward:
//     a[r, o] = sum_i x[r, i] W[i, o] + b[o],    y = act(a)                     (linear_forward)
// Backward (L the loss; r runs over the batch), ONE launch per layer    (linear_backward):
//     dW[i, o] = dL/dW[i, o] = sum_r x[r, i] da[r, o]       dW = x^T da  (I, O)
//     db[o]    = dL/db[o]    = sum_r da[r, o]                 column sums of da (O,)
//     dx[r, i] = dL/dx[r, i] = sum_o da[r, o] W[i, o]         dx = da W^T  (B, I)
//     x = act_x(a_prev), so the previous layer's pre-activation gradient is
//     da_prev = dx * act_x'(a_prev), with act_x' written from the output x
//     (activations.cuh: relu x > 0, tanh 1 - x^2, softplus -expm1(-x), identity 1):
//     dx_pre = (da W^T) * act_x'(x)            (skipped with has_dx = 0: the first layer)
//     With act_x = identity (0) this is the plain dx (e.g. dz for a decoder's first layer).
// Outputs are written with `=` (never accumulated): y, dx_pre, dW, db.  Outputs must not
// overlap inputs (the pointers are __restrict__).
// Determinism: every sum has one fixed order (below), so two runs give identical bits, on
// the GPU and on the emulator, under any thread order and any block completion order.
// The only atomic (the split-K arrival count) elects which block adds the partials; it
// never touches a value.
//
// Every output is a GEMM C (M, N) = A (M, K) . B (K, N) with a fused epilogue:
//     output  M  N  K   A stored as          B stored as        epilogue
//     y       B  O  I   x  (M, K)            W  (K, N)          act(c + b[n])
//     dW      I  O  B   x  (K, M)  (x^T)     da (K, N)          c; db = colsum(da)
//     dx_pre  B  I  O   da (M, K)            W  (N, K)  (W^T)   c * act_x'(x[m, n])
// linear_backward's grid holds the dW blocks first, then the dx_pre blocks: the two GEMMs of
// a layer's backward run side by side in one launch (at batch 100 the decoder's 200 -> 784
// layer has 175 dW tiles and 28 dx tiles, so together they fill an H100/H200's 132 SMs).
//
// Tiling (compile-time constants below; cupyvae/cuda/ops/linear.py mirrors them):
//     one block of LINEAR_THREADS = 256 threads per 32 x 32 tile of C and per k range;
//     1-D grid: block = split * tiles + tile, tile = tile_row * tiles_n + tile_col.
//     256 threads = LINEAR_SLICES (4) slices of 64 threads.
//     Stage: the block loads a 32 x 64 tile of A and a 64 x 32 tile of B (LINEAR_TILE_K = 64
//     k values) into shared memory, each thread 8 + 8 coalesced scalar loads, zero-filled
//     outside the matrix (any M, N, K; no multiple assumed).  Slice s multiplies k values
//     [16 s, 16 s + 16) of the stage: in-block split-K, so small output tiles still get 8 warps.
//     Each thread of a slice owns a 4 x 4 micro-tile of C in registers and reads its A and B
//     fragments as float4 from shared memory (rows padded to 36 floats: 16-byte aligned, and
//     the transposing stores hit 8 banks instead of 1).
//     Double-buffered shared tiles + register prefetch: the global loads of stage t+1 are
//     issued before stage t is computed; one barrier per stage.
//     Scalar global loads: rows of x / da are 16-byte aligned only when their width is a
//     multiple of 4, so no float4 global loads (a benchmark variant may add guarded ones).
//
// Split-K across blocks (`splits` S > 1, chosen by the launch builder from the shape):
//     the K stages are cut into S contiguous ranges, split j taking stages
//     [j T / S, (j + 1) T / S) of the T = ceil(K / 64); each (split, tile) block writes its
//     partial tile (and, for dW's first tile row, its partial column sums of da) to the
//     workspace, then counts its arrival on the tile's counter (__threadfence first, so the
//     partial is visible before it is counted).  The block that arrives last -- whichever it
//     is -- adds the S partials IN SPLIT ORDER 0, 1, ..., S-1, applies the epilogue, and resets
//     the counter to 0 for the next launch.  The sum order is fixed, so the bits never depend
//     on which block finishes first.  No block ever waits for another (no spin loops).
//   Occupancy, 100 x 784 -> 200 (the 784-200-Z encoder's first layer at batch 100; the
//   decoder's dx for 200 -> 784 has the same M, N, K): 7 x 4 = 28 tiles, K = 784 = 13 stages.
//     single pass: 28 blocks -- 21% of an H100/H200's 132 SMs busy, each block 13 stages long;
//     split-K (S = 5, from ceil(132 / 28) = 5, capped at 13 / 2 = 6 stages per 2): 140 blocks
//     of 2-3 stages.  ptxas (sm_90) gives linear_forward 123 registers and 36 KiB of shared
//     memory per 256-thread block: 2 blocks per SM by registers, 264 resident on 132 SMs, so
//     all 140 run at once; the critical path drops from 13 stages to 3 plus one pass over 5
//     partial tiles (20 KiB, from L2), i.e. ~4x less latency for the same 31 MFLOP.
//   The decoder's backward at that batch (one launch): 175 dW tiles of 2 stages (K = 100)
//   plus 5 x 28 dx blocks of 2-3 stages (K = 784 split) = 315 blocks (linear_backward: 91
//   registers, also 2 per SM): about 5 stages deep instead of the 13 of an unsplit dx.
//
// Workspace (float32, LINEAR_WORKSPACE_FLOATS words, zero when allocated; every launch leaves
// its counters at zero again):
//     words [0, LINEAR_COUNTER_WORDS): arrival counters (unsigned int bit patterns),
//         part p (0: y or dW, 1: dx_pre) tile t at p * LINEAR_SPLIT_MAX_BLOCKS + t;
//     then per part p, LINEAR_SPLIT_MAX_BLOCKS records of LINEAR_RECORD_FLOATS floats,
//         record (split j, tile t) = j * tiles + t: the tile's 32 x 32 partial, then its 32
//         partial column sums (used by dW's first tile row only).
//     A split launch has S x tiles <= LINEAR_SPLIT_MAX_BLOCKS per part (the builder checks).
//     With S = 1 the workspace is never touched (any float pointer may stand in).
//
// Summation order (fixed): each slice accumulates its k values in increasing order with fmaf
// (stage after stage of its split's range), the 4 slice partials are added in slice order
// 0, 1, 2, 3, the S split partials in split order 0..S-1; the forward then adds b[n] once.
// db: slice s sums its k rows of each stage in order, slices in order 0..3, splits in order
// 0..S-1 -- computed by the dW blocks of tile row 0 from the da tiles they load anyway.
// With S = 1 this is exactly the single-pass order.  Different S give different (equally
// accurate) roundings: the split is a function of the launch shape only, never of the device,
// so the emulator and every GPU pick the same S and give the same bits.
// Indices are 32-bit: the launch builder refuses arrays of 2^31 elements or more.
// NumPy twins: cupyvae.layers.linear_forward; linear_backward_weight (dW, db) and
// linear_backward_input (dx_pre) for the two halves of linear_backward.
#include "activations.cuh"

#define LINEAR_TILE_M 32                                  // rows of C per block
#define LINEAR_TILE_N 32                                  // columns of C per block
#define LINEAR_TILE_K 64                                  // k values per stage
#define LINEAR_SLICES 4                                   // in-block split-K factor
#define LINEAR_SLICE_K (LINEAR_TILE_K / LINEAR_SLICES)    // k values per slice per stage
#define LINEAR_MICRO_M 4                                  // C rows per thread
#define LINEAR_MICRO_N 4                                  // C columns per thread
#define LINEAR_THREADS_N (LINEAR_TILE_N / LINEAR_MICRO_N) // threads across a slice's tile
#define LINEAR_SLICE_THREADS ((LINEAR_TILE_M / LINEAR_MICRO_M) * LINEAR_THREADS_N)
#define LINEAR_THREADS (LINEAR_SLICE_THREADS * LINEAR_SLICES)  // block size: 256
#define LINEAR_STRIDE (LINEAR_TILE_M + 4)                 // padded shared row (floats)
#define LINEAR_TILE_FLOATS (LINEAR_TILE_K * LINEAR_STRIDE)     // one A or B stage tile
#define LINEAR_SMEM_FLOATS (4 * LINEAR_TILE_FLOATS)       // A, B x double buffer: 36 KiB
#define LINEAR_LOADS_A (LINEAR_TILE_M * LINEAR_TILE_K / LINEAR_THREADS)  // per thread per stage
#define LINEAR_LOADS_B (LINEAR_TILE_K * LINEAR_TILE_N / LINEAR_THREADS)
#define LINEAR_TILE_MN (LINEAR_TILE_M * LINEAR_TILE_N)
#define LINEAR_ELEMENTS (LINEAR_TILE_MN / LINEAR_THREADS)         // C elements per thread: 4
#define LINEAR_RECORD_FLOATS (LINEAR_TILE_MN + LINEAR_TILE_N)    // one split partial
#define LINEAR_SPLIT_MAX_BLOCKS 264                              // splits x tiles, per part
#define LINEAR_COUNTER_WORDS (2 * LINEAR_SPLIT_MAX_BLOCKS)
#define LINEAR_WORKSPACE_FLOATS \
    (LINEAR_COUNTER_WORDS + 2 * LINEAR_SPLIT_MAX_BLOCKS * LINEAR_RECORD_FLOATS)

static_assert(LINEAR_TILE_M == LINEAR_TILE_N, "A and B stage tiles share LINEAR_STRIDE");
static_assert(LINEAR_TILE_MN % LINEAR_THREADS == 0, "C elements split evenly over the threads");
static_assert(LINEAR_TILE_N <= LINEAR_THREADS, "one thread per column for the column sums");
static_assert(LINEAR_MICRO_M % 4 == 0 && LINEAR_MICRO_N % 4 == 0, "fragments are read as float4");
static_assert(LINEAR_STRIDE % 4 == 0, "shared rows must stay 16-byte aligned for float4 reads");
static_assert(LINEAR_TILE_M * LINEAR_TILE_K % LINEAR_THREADS == 0, "A stage splits evenly");
static_assert(LINEAR_TILE_K * LINEAR_TILE_N % LINEAR_THREADS == 0, "B stage splits evenly");
static_assert(LINEAR_TILE_K % LINEAR_SLICES == 0, "slices split a stage evenly");
static_assert(LINEAR_SLICES * LINEAR_TILE_MN + LINEAR_SLICES * LINEAR_TILE_N <= LINEAR_SMEM_FLOATS,
              "slice partials fit in the (then idle) stage buffers");

// Element r of this thread's share of a stage: its (row, k) in the A tile and (k, col) in the
// B tile.  The mapping follows the storage order so that consecutive threads read consecutive
// addresses (coalesced) whichever way the operand is stored.
template <bool A_STORED_KM>
__device__ inline void linear_a_coords(int r, int& m, int& k)
{
    int e = (int)threadIdx.x + r * LINEAR_THREADS;
    if (A_STORED_KM) {  // A element (m, k) at A[k * M + m]: m fastest
        k = e / LINEAR_TILE_M;
        m = e % LINEAR_TILE_M;
    } else {            // A element (m, k) at A[m * K + k]: k fastest
        m = e / LINEAR_TILE_K;
        k = e % LINEAR_TILE_K;
    }
}

template <bool B_STORED_NK>
__device__ inline void linear_b_coords(int r, int& k, int& n)
{
    int e = (int)threadIdx.x + r * LINEAR_THREADS;
    if (B_STORED_NK) {  // B element (k, n) at B[n * K + k]: k fastest
        n = e / LINEAR_TILE_K;
        k = e % LINEAR_TILE_K;
    } else {            // B element (k, n) at B[k * N + n]: n fastest
        k = e / LINEAR_TILE_N;
        n = e % LINEAR_TILE_N;
    }
}

// Global -> registers: this thread's share of the stage starting at k0, zero outside the matrix.
template <bool A_STORED_KM, bool B_STORED_NK>
__device__ inline void linear_load_stage(const float* __restrict__ A, const float* __restrict__ Bm,
                                         int M, int N, int K, int m0, int n0, int k0,
                                         float (&a_reg)[LINEAR_LOADS_A],
                                         float (&b_reg)[LINEAR_LOADS_B])
{
#pragma unroll
    for (int r = 0; r < LINEAR_LOADS_A; ++r) {
        int m, k;
        linear_a_coords<A_STORED_KM>(r, m, k);
        int gm = m0 + m;
        int gk = k0 + k;
        float value = 0.0f;
        if (gm < M && gk < K) {
            value = A_STORED_KM ? A[gk * M + gm] : A[gm * K + gk];
        }
        a_reg[r] = value;
    }
#pragma unroll
    for (int r = 0; r < LINEAR_LOADS_B; ++r) {
        int k, n;
        linear_b_coords<B_STORED_NK>(r, k, n);
        int gk = k0 + k;
        int gn = n0 + n;
        float value = 0.0f;
        if (gk < K && gn < N) {
            value = B_STORED_NK ? Bm[gn * K + gk] : Bm[gk * N + gn];
        }
        b_reg[r] = value;
    }
}

// Registers -> shared: As[k][m] and Bs[k][n], k-major so a micro-tile fragment is contiguous.
template <bool A_STORED_KM, bool B_STORED_NK>
__device__ inline void linear_store_stage(float* __restrict__ As, float* __restrict__ Bs,
                                          const float (&a_reg)[LINEAR_LOADS_A],
                                          const float (&b_reg)[LINEAR_LOADS_B])
{
#pragma unroll
    for (int r = 0; r < LINEAR_LOADS_A; ++r) {
        int m, k;
        linear_a_coords<A_STORED_KM>(r, m, k);
        As[k * LINEAR_STRIDE + m] = a_reg[r];
    }
#pragma unroll
    for (int r = 0; r < LINEAR_LOADS_B; ++r) {
        int k, n;
        linear_b_coords<B_STORED_NK>(r, k, n);
        Bs[k * LINEAR_STRIDE + n] = b_reg[r];
    }
}

// C tile (partial, one slice) += As^T-fragment x Bs-fragment over this slice's k values.
// With column_sum, also col_acc[j] += B(k, n_j) over the same k values (for db).
__device__ inline void linear_compute_stage(const float* __restrict__ As,
                                            const float* __restrict__ Bs,
                                            float (&acc)[LINEAR_MICRO_M][LINEAR_MICRO_N],
                                            float (&col_acc)[LINEAR_MICRO_N], bool column_sum)
{
    int slice = (int)threadIdx.x / LINEAR_SLICE_THREADS;
    int local = (int)threadIdx.x % LINEAR_SLICE_THREADS;
    int row0 = (local / LINEAR_THREADS_N) * LINEAR_MICRO_M;
    int col0 = (local % LINEAR_THREADS_N) * LINEAR_MICRO_N;
#pragma unroll
    for (int kk = 0; kk < LINEAR_SLICE_K; ++kk) {
        int k = slice * LINEAR_SLICE_K + kk;
        float a[LINEAR_MICRO_M];
        float b[LINEAR_MICRO_N];
#pragma unroll
        for (int i = 0; i < LINEAR_MICRO_M; i += 4) {
            float4 v = *reinterpret_cast<const float4*>(As + k * LINEAR_STRIDE + row0 + i);
            a[i] = v.x;
            a[i + 1] = v.y;
            a[i + 2] = v.z;
            a[i + 3] = v.w;
        }
#pragma unroll
        for (int j = 0; j < LINEAR_MICRO_N; j += 4) {
            float4 v = *reinterpret_cast<const float4*>(Bs + k * LINEAR_STRIDE + col0 + j);
            b[j] = v.x;
            b[j + 1] = v.y;
            b[j + 2] = v.z;
            b[j + 3] = v.w;
        }
#pragma unroll
        for (int i = 0; i < LINEAR_MICRO_M; ++i) {
#pragma unroll
            for (int j = 0; j < LINEAR_MICRO_N; ++j) {
                acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
            }
        }
        if (column_sum) {
#pragma unroll
            for (int j = 0; j < LINEAR_MICRO_N; ++j) {
                col_acc[j] += b[j];
            }
        }
    }
}

// One GEMM of a launch: C (M, N) = A (M, K) B (K, N), cut into tiles and `splits` k ranges.
struct LinearPart {
    int M, N, K;
    int splits;     // k ranges (1: single pass)
    int tiles_n;    // tile columns
    int tiles;      // output tiles
    int stages;     // k stages of LINEAR_TILE_K
};

__device__ inline LinearPart linear_part(int M, int N, int K, int splits)
{
    LinearPart part;
    part.M = M;
    part.N = N;
    part.K = K;
    part.splits = splits;
    part.tiles_n = (N + LINEAR_TILE_N - 1) / LINEAR_TILE_N;
    part.tiles = part.tiles_n * ((M + LINEAR_TILE_M - 1) / LINEAR_TILE_M);
    part.stages = (K + LINEAR_TILE_K - 1) / LINEAR_TILE_K;
    return part;
}

// The shared main loop over stages [stage_begin, stage_end) of the tile at (m0, n0).  On
// return (after a barrier) smem holds
//     smem[s * LINEAR_TILE_MN + m * LINEAR_TILE_N + n]        slice s's partial of C(m, n)
//     smem[LINEAR_SLICES * LINEAR_TILE_MN + s * LINEAR_TILE_N + n]
//                                                           slice s's partial sum over k of
//                                                           B(k, n)   (only if column_sum)
// column_sum must be the same for the whole block.
template <bool A_STORED_KM, bool B_STORED_NK>
__device__ inline void linear_block_product(const float* __restrict__ A,
                                            const float* __restrict__ Bm, int M, int N, int K,
                                            int m0, int n0, int stage_begin, int stage_end,
                                            bool column_sum, float* __restrict__ smem)
{
    float acc[LINEAR_MICRO_M][LINEAR_MICRO_N];
    float col_acc[LINEAR_MICRO_N];
#pragma unroll
    for (int i = 0; i < LINEAR_MICRO_M; ++i) {
#pragma unroll
        for (int j = 0; j < LINEAR_MICRO_N; ++j) {
            acc[i][j] = 0.0f;
        }
    }
#pragma unroll
    for (int j = 0; j < LINEAR_MICRO_N; ++j) {
        col_acc[j] = 0.0f;
    }
    // Only the first row of each slice's threads sums columns: each column once per slice.
    int local = (int)threadIdx.x % LINEAR_SLICE_THREADS;
    bool sums_columns = column_sum && local < LINEAR_THREADS_N;

    float a_reg[LINEAR_LOADS_A];
    float b_reg[LINEAR_LOADS_B];
    if (stage_begin < stage_end) {
        linear_load_stage<A_STORED_KM, B_STORED_NK>(A, Bm, M, N, K, m0, n0,
                                                    stage_begin * LINEAR_TILE_K, a_reg, b_reg);
        linear_store_stage<A_STORED_KM, B_STORED_NK>(smem, smem + LINEAR_TILE_FLOATS, a_reg, b_reg);
    }
    __syncthreads();  // the first stage is in buffer 0
    // The stage range is uniform across the block: every thread meets every barrier.
    for (int t = stage_begin; t < stage_end; ++t) {
        int buffer = (t - stage_begin) % 2;
        bool more = t + 1 < stage_end;
        if (more) {  // issue stage t+1's global loads now; they land while stage t computes
            linear_load_stage<A_STORED_KM, B_STORED_NK>(A, Bm, M, N, K, m0, n0,
                                                        (t + 1) * LINEAR_TILE_K, a_reg, b_reg);
        }
        float* current = smem + buffer * 2 * LINEAR_TILE_FLOATS;
        linear_compute_stage(current, current + LINEAR_TILE_FLOATS, acc, col_acc, sums_columns);
        if (more) {
            // The other buffer was last read while computing stage t-1; the barrier that
            // ended iteration t-1 guarantees every thread is done with it.
            float* next = smem + (1 - buffer) * 2 * LINEAR_TILE_FLOATS;
            linear_store_stage<A_STORED_KM, B_STORED_NK>(next, next + LINEAR_TILE_FLOATS,
                                                         a_reg, b_reg);
        }
        __syncthreads();  // stage t+1 stored; every read of stage t done
    }

    // Slice partials overwrite the stage buffers: all reads ended at the last barrier.
    int slice = (int)threadIdx.x / LINEAR_SLICE_THREADS;
    int row0 = (local / LINEAR_THREADS_N) * LINEAR_MICRO_M;
    int col0 = (local % LINEAR_THREADS_N) * LINEAR_MICRO_N;
    float* partial = smem + slice * LINEAR_TILE_MN;
#pragma unroll
    for (int i = 0; i < LINEAR_MICRO_M; ++i) {
#pragma unroll
        for (int j = 0; j < LINEAR_MICRO_N; ++j) {
            partial[(row0 + i) * LINEAR_TILE_N + col0 + j] = acc[i][j];
        }
    }
    if (sums_columns) {
        float* column_partial = smem + LINEAR_SLICES * LINEAR_TILE_MN + slice * LINEAR_TILE_N;
#pragma unroll
        for (int j = 0; j < LINEAR_MICRO_N; ++j) {
            column_partial[col0 + j] = col_acc[j];
        }
    }
    __syncthreads();  // every slice partial is stored before the totals read them
}

// This block's share of a tile: total[r] = C element e = threadIdx.x + r * LINEAR_THREADS of
// the tile (e = m * LINEAR_TILE_N + n) over the block's k range, slices added in order 0..3;
// with column_sum, thread n < LINEAR_TILE_N also gets column n's sum over that k range.
template <bool A_STORED_KM, bool B_STORED_NK>
__device__ inline void linear_tile_product(const float* __restrict__ A,
                                           const float* __restrict__ Bm, const LinearPart& part,
                                           int split, int tile, bool column_sum,
                                           float* __restrict__ smem,
                                           float (&total)[LINEAR_ELEMENTS], float& column_total)
{
    int m0 = (tile / part.tiles_n) * LINEAR_TILE_M;
    int n0 = (tile % part.tiles_n) * LINEAR_TILE_N;
    int stage_begin = (int)(((long long)split * part.stages) / part.splits);
    int stage_end = (int)(((long long)(split + 1) * part.stages) / part.splits);
    linear_block_product<A_STORED_KM, B_STORED_NK>(A, Bm, part.M, part.N, part.K, m0, n0,
                                                   stage_begin, stage_end, column_sum, smem);
#pragma unroll
    for (int r = 0; r < LINEAR_ELEMENTS; ++r) {
        int e = (int)threadIdx.x + r * LINEAR_THREADS;
        float sum = smem[e];
#pragma unroll
        for (int s = 1; s < LINEAR_SLICES; ++s) {
            sum += smem[s * LINEAR_TILE_MN + e];
        }
        total[r] = sum;
    }
    column_total = 0.0f;
    if (column_sum && (int)threadIdx.x < LINEAR_TILE_N) {
        const float* column_partial = smem + LINEAR_SLICES * LINEAR_TILE_MN;
        float sum = column_partial[threadIdx.x];
#pragma unroll
        for (int s = 1; s < LINEAR_SLICES; ++s) {
            sum += column_partial[s * LINEAR_TILE_N + threadIdx.x];
        }
        column_total = sum;
    }
}

// Split-K: publish this block's partial, and if it is the tile's last to arrive, replace
// total / column_total by the sum of all S partials in split order.  Returns whether this
// block writes the tile (uniform across the block).  `arrival` is a __shared__ word of the
// calling kernel.  With S = 1 the totals are final already and nothing is touched.
__device__ inline bool linear_combine_splits(const LinearPart& part, int part_index, int split,
                                             int tile, bool column_sum, float* workspace,
                                             unsigned int* arrival,
                                             float (&total)[LINEAR_ELEMENTS],
                                             float& column_total)
{
    if (part.splits == 1) {
        return true;
    }
    unsigned int* counter = reinterpret_cast<unsigned int*>(workspace)
                          + part_index * LINEAR_SPLIT_MAX_BLOCKS + tile;
    float* records = workspace + LINEAR_COUNTER_WORDS
                   + part_index * LINEAR_SPLIT_MAX_BLOCKS * LINEAR_RECORD_FLOATS;
    float* mine = records + (split * part.tiles + tile) * LINEAR_RECORD_FLOATS;
#pragma unroll
    for (int r = 0; r < LINEAR_ELEMENTS; ++r) {
        mine[(int)threadIdx.x + r * LINEAR_THREADS] = total[r];
    }
    bool sums_column = column_sum && (int)threadIdx.x < LINEAR_TILE_N;
    if (sums_column) {
        mine[LINEAR_TILE_MN + threadIdx.x] = column_total;
    }
    __threadfence();  // this thread's part of the record is visible device-wide ...
    __syncthreads();  // ... for every thread, before the block counts its arrival
    if (threadIdx.x == 0) {
        *arrival = atomicAdd(counter, 1u);
    }
    __syncthreads();
    if (*arrival != (unsigned int)(part.splits - 1)) {
        return false;  // another block of this tile arrives later and adds the partials
    }
    __threadfence();  // pairs with the other blocks' fences before their arrivals
    // Volatile: the partials were written by other blocks during this launch, so they are
    // read from memory (L2), never from a stale non-coherent L1 line.
    const volatile float* first = records + tile * LINEAR_RECORD_FLOATS;
#pragma unroll
    for (int r = 0; r < LINEAR_ELEMENTS; ++r) {
        int e = (int)threadIdx.x + r * LINEAR_THREADS;
        float sum = first[e];
        for (int j = 1; j < part.splits; ++j) {
            sum += first[j * part.tiles * LINEAR_RECORD_FLOATS + e];
        }
        total[r] = sum;
    }
    if (sums_column) {
        float sum = first[LINEAR_TILE_MN + threadIdx.x];
        for (int j = 1; j < part.splits; ++j) {
            sum += first[j * part.tiles * LINEAR_RECORD_FLOATS + LINEAR_TILE_MN + threadIdx.x];
        }
        column_total = sum;
    }
    if (threadIdx.x == 0) {
        *counter = 0u;  // every block of this tile has arrived: ready for the next launch
    }
    return true;
}

// y = act(x W + b).  x (B, I), w (I, O), b (O,), y (B, O) written with `=`.
extern "C" __global__ void __launch_bounds__(LINEAR_THREADS)
linear_forward(const float* __restrict__ x, const float* __restrict__ w,
               const float* __restrict__ b, float* __restrict__ y, float* workspace,
               int B, int I, int O, int act, int splits)
{
    __shared__ float4 smem4[LINEAR_SMEM_FLOATS / 4];  // float4: 16-byte aligned
    __shared__ unsigned int arrival;
    float* smem = reinterpret_cast<float*>(smem4);
    LinearPart part = linear_part(B, O, I, splits);
    int block = (int)blockIdx.x;
    if (block >= part.splits * part.tiles) {
        return;  // uniform: the grid has at least one block, even for an empty output
    }
    int split = block / part.tiles;
    int tile = block % part.tiles;
    float total[LINEAR_ELEMENTS];
    float column_total;
    linear_tile_product<false, false>(x, w, part, split, tile, false, smem, total, column_total);
    if (!linear_combine_splits(part, 0, split, tile, false, workspace, &arrival, total,
                               column_total)) {
        return;
    }
    int m0 = (tile / part.tiles_n) * LINEAR_TILE_M;
    int n0 = (tile % part.tiles_n) * LINEAR_TILE_N;
#pragma unroll
    for (int r = 0; r < LINEAR_ELEMENTS; ++r) {
        int e = (int)threadIdx.x + r * LINEAR_THREADS;
        int row = m0 + e / LINEAR_TILE_N;
        int col = n0 + e % LINEAR_TILE_N;
        if (row < B && col < O) {
            y[row * O + col] = activation_forward(total[r] + b[col], act);
        }
    }
}

// dW (I, O) = x^T da and db (O,) = column sums of da, and (if has_dx) dx_pre (B, I) =
// (da W^T) * act_x'(x), all written with `=`, in one launch: blocks [0, splits_w tiles_w)
// compute dW tiles (those of tile row 0 also db), the next splits_x tiles_x blocks dx_pre.
// x (B, I), w (I, O), da (B, O).  Without dx, dx_pre is never touched.
extern "C" __global__ void __launch_bounds__(LINEAR_THREADS)
linear_backward(const float* __restrict__ x, const float* __restrict__ w,
                const float* __restrict__ da, float* __restrict__ dw, float* __restrict__ db,
                float* __restrict__ dx_pre, float* workspace, int B, int I, int O, int act_x,
                int splits_w, int splits_x, int has_dx)
{
    __shared__ float4 smem4[LINEAR_SMEM_FLOATS / 4];
    __shared__ unsigned int arrival;
    float* smem = reinterpret_cast<float*>(smem4);
    LinearPart part_w = linear_part(I, O, B, splits_w);
    int blocks_w = part_w.splits * part_w.tiles;
    int block = (int)blockIdx.x;
    float total[LINEAR_ELEMENTS];
    float column_total;
    if (block < blocks_w) {  // uniform: a block is wholly dW or wholly dx_pre
        int split = block / part_w.tiles;
        int tile = block % part_w.tiles;
        bool writes_db = tile < part_w.tiles_n;  // tile row 0
        linear_tile_product<true, false>(x, da, part_w, split, tile, writes_db, smem, total,
                                         column_total);
        if (!linear_combine_splits(part_w, 0, split, tile, writes_db, workspace, &arrival,
                                   total, column_total)) {
            return;
        }
        int m0 = (tile / part_w.tiles_n) * LINEAR_TILE_M;
        int n0 = (tile % part_w.tiles_n) * LINEAR_TILE_N;
#pragma unroll
        for (int r = 0; r < LINEAR_ELEMENTS; ++r) {
            int e = (int)threadIdx.x + r * LINEAR_THREADS;
            int row = m0 + e / LINEAR_TILE_N;
            int col = n0 + e % LINEAR_TILE_N;
            if (row < I && col < O) {
                dw[row * O + col] = total[r];
            }
        }
        if (writes_db && (int)threadIdx.x < LINEAR_TILE_N) {
            int col = n0 + (int)threadIdx.x;
            if (col < O) {
                db[col] = column_total;
            }
        }
        return;
    }
    if (!has_dx) {
        return;
    }
    LinearPart part_x = linear_part(B, I, O, splits_x);
    block -= blocks_w;
    if (block >= part_x.splits * part_x.tiles) {
        return;
    }
    int split = block / part_x.tiles;
    int tile = block % part_x.tiles;
    linear_tile_product<false, true>(da, w, part_x, split, tile, false, smem, total,
                                     column_total);
    if (!linear_combine_splits(part_x, 1, split, tile, false, workspace, &arrival, total,
                               column_total)) {
        return;
    }
    int m0 = (tile / part_x.tiles_n) * LINEAR_TILE_M;
    int n0 = (tile % part_x.tiles_n) * LINEAR_TILE_N;
#pragma unroll
    for (int r = 0; r < LINEAR_ELEMENTS; ++r) {
        int e = (int)threadIdx.x + r * LINEAR_THREADS;
        int row = m0 + e / LINEAR_TILE_N;
        int col = n0 + e % LINEAR_TILE_N;
        if (row < B && col < I) {
            float dx = total[r];
            if (act_x != ACT_IDENTITY) {  // identity: x is not read at all
                dx *= activation_derivative_from_output(x[row * I + col], act_x);
            }
            dx_pre[row * I + col] = dx;
        }
    }
}
