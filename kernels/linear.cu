// linear: the MLP layer y = act(x W + b), forward and hand-derived backward, as three kernels
// sharing one tiled SGEMM main loop.
//
// Shapes (all float32, row-major, contiguous):
//     x (B, I)   layer input (= previous layer's output y_prev = act_x(a_prev))
//     W (I, O)   weight;  b (O,) bias
//     a (B, O)   pre-activation (never stored);  y (B, O) output
//     da (B, O)  dLoss/da, the gradient wrt the PRE-activation
// Forward:
//     a[r, o] = sum_i x[r, i] W[i, o] + b[o],    y = act(a)                     (linear_forward)
// Backward (L the loss; r runs over the batch):
//     dW[i, o] = dL/dW[i, o] = sum_r x[r, i] da[r, o]       dW = x^T da  (I, O)
//     db[o]    = dL/db[o]    = sum_r da[r, o]                 column sums of da (O,)
//                                                                         (linear_backward_weight)
//     dx[r, i] = dL/dx[r, i] = sum_o da[r, o] W[i, o]         dx = da W^T  (B, I)
//     x = act_x(a_prev), so the previous layer's pre-activation gradient is
//     da_prev = dx * act_x'(a_prev), with act_x' written from the output x
//     (activations.cuh: relu x > 0, tanh 1 - x^2, softplus -expm1(-x), identity 1):
//     dx_pre = (da W^T) * act_x'(x)                                    (linear_backward_input)
//     With act_x = identity (0) this is the plain dx (e.g. dz for a decoder's first layer).
// Outputs are written with `=` (never accumulated): y, dx_pre, dW, db.  Outputs must not
// overlap inputs (the pointers are __restrict__).
// Determinism: no atomics anywhere; every sum has one fixed order (below), so two runs give
// identical bits, on the GPU and on the emulator under any thread order.
//
// All three are C (M, N) = A (M, K) . B (K, N) with a fused epilogue:
//     kernel                  M  N  K   A stored as          B stored as        epilogue
//     linear_forward          B  O  I   x  (M, K)            W  (K, N)          act(c + b[n])
//     linear_backward_input   B  I  O   da (M, K)            W  (N, K)  (W^T)   c * act_x'(x[m, n])
//     linear_backward_weight  I  O  B   x  (K, M)  (x^T)     da (K, N)          c; db = colsum(da)
//
// Tiling (compile-time constants below; cupyvae/cuda/ops_linear.py mirrors the grid/block ones):
//     grid  = (ceil(N / LINEAR_TILE_N), ceil(M / LINEAR_TILE_M)): one block per 32 x 32 tile of C.
//     block = (LINEAR_THREADS,) = 256 threads = LINEAR_SLICES (4) slices of 64 threads.
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
// Summation order (fixed): each slice accumulates its k values in increasing order with fmaf
// (stage after stage), then the 4 slice partials are added in slice order 0, 1, 2, 3;
// the forward then adds b[n] once.  db: slice s sums its k rows of each stage in order, the
// slices are added in order 0..3 -- computed by the blocks with blockIdx.y == 0 from the da
// tiles they load anyway (no second kernel, no atomics).
// Indices are 32-bit: the launch builder refuses arrays of 2^31 elements or more.
// NumPy twins: cupyvae.layers.linear_forward / linear_backward_input / linear_backward_weight.
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

static_assert(LINEAR_TILE_M == LINEAR_TILE_N, "A and B stage tiles share LINEAR_STRIDE");
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

// The shared main loop.  On return (after a barrier) smem holds, for this block's tile,
//     smem[s * LINEAR_TILE_MN + m * LINEAR_TILE_N + n]        slice s's partial of C(m, n)
//     smem[LINEAR_SLICES * LINEAR_TILE_MN + s * LINEAR_TILE_N + n]
//                                                           slice s's partial sum over k of
//                                                           B(k, n)   (only if column_sum)
// column_sum must be the same for the whole block.
template <bool A_STORED_KM, bool B_STORED_NK>
__device__ inline void linear_block_product(const float* __restrict__ A,
                                            const float* __restrict__ Bm, int M, int N, int K,
                                            bool column_sum, float* __restrict__ smem)
{
    int m0 = (int)blockIdx.y * LINEAR_TILE_M;
    int n0 = (int)blockIdx.x * LINEAR_TILE_N;
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
    int stages = (K + LINEAR_TILE_K - 1) / LINEAR_TILE_K;
    if (stages > 0) {
        linear_load_stage<A_STORED_KM, B_STORED_NK>(A, Bm, M, N, K, m0, n0, 0, a_reg, b_reg);
        linear_store_stage<A_STORED_KM, B_STORED_NK>(smem, smem + LINEAR_TILE_FLOATS, a_reg, b_reg);
    }
    __syncthreads();  // stage 0 is in buffer 0
    for (int t = 0; t < stages; ++t) {  // `stages` is uniform: every thread meets every barrier
        bool more = t + 1 < stages;
        if (more) {  // issue stage t+1's global loads now; they land while stage t computes
            linear_load_stage<A_STORED_KM, B_STORED_NK>(A, Bm, M, N, K, m0, n0,
                                                        (t + 1) * LINEAR_TILE_K, a_reg, b_reg);
        }
        float* current = smem + (t % 2) * 2 * LINEAR_TILE_FLOATS;
        linear_compute_stage(current, current + LINEAR_TILE_FLOATS, acc, col_acc, sums_columns);
        if (more) {
            // The other buffer was last read while computing stage t-1; the barrier that
            // ended iteration t-1 guarantees every thread is done with it.
            float* next = smem + ((t + 1) % 2) * 2 * LINEAR_TILE_FLOATS;
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
    __syncthreads();  // every slice partial is stored before the epilogue reads them
}

// C(m, n) of this block's tile, element e = m * LINEAR_TILE_N + n: slices added in order 0..S-1.
__device__ inline float linear_tile_sum(const float* __restrict__ smem, int e)
{
    float total = smem[e];
#pragma unroll
    for (int s = 1; s < LINEAR_SLICES; ++s) {
        total += smem[s * LINEAR_TILE_MN + e];
    }
    return total;
}

// y = act(x W + b).  x (B, I), w (I, O), b (O,), y (B, O) written with `=`.
extern "C" __global__ void __launch_bounds__(LINEAR_THREADS)
linear_forward(const float* __restrict__ x, const float* __restrict__ w,
               const float* __restrict__ b, float* __restrict__ y, int B, int I, int O, int act)
{
    __shared__ float4 smem4[LINEAR_SMEM_FLOATS / 4];  // float4: 16-byte aligned
    float* smem = reinterpret_cast<float*>(smem4);
    linear_block_product<false, false>(x, w, B, O, I, false, smem);

    int m0 = (int)blockIdx.y * LINEAR_TILE_M;
    int n0 = (int)blockIdx.x * LINEAR_TILE_N;
    for (int e = (int)threadIdx.x; e < LINEAR_TILE_MN; e += LINEAR_THREADS) {
        int row = m0 + e / LINEAR_TILE_N;
        int col = n0 + e % LINEAR_TILE_N;
        if (row < B && col < O) {
            y[row * O + col] = activation_forward(linear_tile_sum(smem, e) + b[col], act);
        }
    }
}

// dx_pre = (da W^T) * act_x'(x).  da (B, O), w (I, O), x (B, I), dx_pre (B, I) written with `=`.
extern "C" __global__ void __launch_bounds__(LINEAR_THREADS)
linear_backward_input(const float* __restrict__ da, const float* __restrict__ w,
                      const float* __restrict__ x, float* __restrict__ dx_pre,
                      int B, int I, int O, int act_x)
{
    __shared__ float4 smem4[LINEAR_SMEM_FLOATS / 4];
    float* smem = reinterpret_cast<float*>(smem4);
    linear_block_product<false, true>(da, w, B, I, O, false, smem);

    int m0 = (int)blockIdx.y * LINEAR_TILE_M;
    int n0 = (int)blockIdx.x * LINEAR_TILE_N;
    for (int e = (int)threadIdx.x; e < LINEAR_TILE_MN; e += LINEAR_THREADS) {
        int row = m0 + e / LINEAR_TILE_N;
        int col = n0 + e % LINEAR_TILE_N;
        if (row < B && col < I) {
            float dx = linear_tile_sum(smem, e);
            if (act_x != ACT_IDENTITY) {  // identity: x is not read at all
                dx *= activation_derivative_from_output(x[row * I + col], act_x);
            }
            dx_pre[row * I + col] = dx;
        }
    }
}

// dW = x^T da (I, O) and db = column sums of da (O,), both written with `=`.
// db is written by the blocks with blockIdx.y == 0 (one per 32 columns).
extern "C" __global__ void __launch_bounds__(LINEAR_THREADS)
linear_backward_weight(const float* __restrict__ x, const float* __restrict__ da,
                       float* __restrict__ dw, float* __restrict__ db, int B, int I, int O)
{
    __shared__ float4 smem4[LINEAR_SMEM_FLOATS / 4];
    float* smem = reinterpret_cast<float*>(smem4);
    bool writes_db = blockIdx.y == 0;  // uniform across the block
    linear_block_product<true, false>(x, da, I, O, B, writes_db, smem);

    int m0 = (int)blockIdx.y * LINEAR_TILE_M;
    int n0 = (int)blockIdx.x * LINEAR_TILE_N;
    for (int e = (int)threadIdx.x; e < LINEAR_TILE_MN; e += LINEAR_THREADS) {
        int row = m0 + e / LINEAR_TILE_N;
        int col = n0 + e % LINEAR_TILE_N;
        if (row < I && col < O) {
            dw[row * O + col] = linear_tile_sum(smem, e);
        }
    }
    if (writes_db && (int)threadIdx.x < LINEAR_TILE_N) {
        int col = n0 + (int)threadIdx.x;
        if (col < O) {
            const float* column_partial = smem + LINEAR_SLICES * LINEAR_TILE_MN;
            float total = column_partial[threadIdx.x];
#pragma unroll
            for (int s = 1; s < LINEAR_SLICES; ++s) {  // slices in order 0..S-1
                total += column_partial[s * LINEAR_TILE_N + threadIdx.x];
            }
            db[col] = total;
        }
    }
}
