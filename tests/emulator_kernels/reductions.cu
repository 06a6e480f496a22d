// Reductions used by tests/test_emulator.py (valid CUDA: also compiled with NVRTC).

// Shared-memory tree reduction that works for ANY block size <= 1024.
// out[blockIdx.x] = sum of the grid-stride slice handled by this block.
extern "C" __global__ void tree_reduce(const float* __restrict__ x, float* __restrict__ out, int n) {
    __shared__ float s[1024];
    const int tid = threadIdx.x;
    float acc = 0.0f;
    for (int i = blockIdx.x * blockDim.x + tid; i < n; i += blockDim.x * gridDim.x) acc += x[i];
    s[tid] = acc;
    __syncthreads();
    for (int stride = 1; stride < (int)blockDim.x; stride <<= 1) {
        if ((tid % (2 * stride)) == 0 && tid + stride < (int)blockDim.x) s[tid] += s[tid + stride];
        __syncthreads();
    }
    if (tid == 0) out[blockIdx.x] = s[0];
}

// The same reduction with a power-of-two halving loop but WITHOUT the barrier
// after the initial store: a classic bug that only some schedules expose.
extern "C" __global__ void tree_reduce_missing_sync(const float* __restrict__ x, float* __restrict__ out, int n) {
    __shared__ float s[1024];
    const int tid = threadIdx.x;
    float acc = 0.0f;
    for (int i = blockIdx.x * blockDim.x + tid; i < n; i += blockDim.x * gridDim.x) acc += x[i];
    s[tid] = acc;
    // BUG: __syncthreads() missing here
    for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
        if (tid < stride) s[tid] += s[tid + stride];
        __syncthreads();
    }
    if (tid == 0) out[blockIdx.x] = s[0];
}

__device__ __forceinline__ float warp_sum_xor(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_sum_down(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    return v;
}

// Warp-shuffle reductions; every warp adds its total into *out with atomicAdd.
extern "C" __global__ void warp_reduce_xor(const float* __restrict__ x, float* out, int n) {
    float acc = 0.0f;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) acc += x[i];
    acc = warp_sum_xor(acc);
    if ((threadIdx.x & 31) == 0) atomicAdd(out, acc);
}

extern "C" __global__ void warp_reduce_down(const float* __restrict__ x, float* out, int n) {
    float acc = 0.0f;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) acc += x[i];
    acc = warp_sum_down(acc);
    if ((threadIdx.x & 31) == 0) atomicAdd(out, acc);
}

// Block reduction through dynamic shared memory (blockDim.x floats), correct
// for any block size.  Needs shared_mem >= blockDim.x * sizeof(float).
extern "C" __global__ void dyn_block_reduce(const float* __restrict__ x, float* __restrict__ out, int n) {
    extern __shared__ float partial[];
    const int tid = threadIdx.x;
    float acc = 0.0f;
    for (int i = blockIdx.x * blockDim.x + tid; i < n; i += blockDim.x * gridDim.x) acc += x[i];
    partial[tid] = acc;
    __syncthreads();
    for (int active = blockDim.x; active > 1;) {
        const int half = (active + 1) / 2;
        if (tid < active - half) partial[tid] += partial[tid + half];
        __syncthreads();
        active = half;
    }
    if (tid == 0) out[blockIdx.x] = partial[0];
}

// Reads dynamic shared memory before anything wrote it (must see the poison),
// then writes it so a later block on the same worker would see stale data
// if the emulator did not re-poison at every block start.
extern "C" __global__ void dyn_read_before_write(float* out, unsigned int* bits) {
    extern __shared__ float buf[];
    const int g = blockIdx.x * blockDim.x + threadIdx.x;
    out[g] = buf[threadIdx.x];
    bits[g] = __float_as_uint(buf[threadIdx.x]);
    buf[threadIdx.x] = 1.0f;
}

// Static shared memory read before write (the emulator poisons it too).
extern "C" __global__ void static_read_before_write(float* out) {
    __shared__ float s[256];
    out[blockIdx.x * blockDim.x + threadIdx.x] = s[threadIdx.x];
    s[threadIdx.x] = 2.0f;
}

// Many blocks add into one float / one int / an int max.
extern "C" __global__ void atomics(const float* __restrict__ x, float* fsum, int* count, int* imax,
                                   unsigned long long* usum, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    atomicAdd(fsum, x[i]);
    atomicAdd(count, 1);
    atomicMax(imax, (int)(x[i] * 1000.0f));
    atomicAdd(usum, (unsigned long long)i);
}

// 1-D three-point stencil through a shared tile with halo; the buggy variant
// omits the barrier between filling the tile and reading neighbours.
extern "C" __global__ void stencil3(const float* __restrict__ x, float* __restrict__ y, int n) {
    extern __shared__ float tile[];  // blockDim.x + 2 floats
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const int t = threadIdx.x + 1;
    tile[t] = i < n ? x[i] : 0.0f;
    if (threadIdx.x == 0) tile[0] = i > 0 && i - 1 < n ? x[i - 1] : 0.0f;
    if (threadIdx.x == blockDim.x - 1) tile[t + 1] = i + 1 < n ? x[i + 1] : 0.0f;
    __syncthreads();
    if (i < n) y[i] = tile[t - 1] + 2.0f * tile[t] + tile[t + 1];
}

extern "C" __global__ void stencil3_missing_sync(const float* __restrict__ x, float* __restrict__ y, int n) {
    extern __shared__ float tile[];
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const int t = threadIdx.x + 1;
    tile[t] = i < n ? x[i] : 0.0f;
    if (threadIdx.x == 0) tile[0] = i > 0 && i - 1 < n ? x[i - 1] : 0.0f;
    if (threadIdx.x == blockDim.x - 1) tile[t + 1] = i + 1 < n ? x[i + 1] : 0.0f;
    // BUG: __syncthreads() missing here
    if (i < n) y[i] = tile[t - 1] + 2.0f * tile[t] + tile[t + 1];
}
