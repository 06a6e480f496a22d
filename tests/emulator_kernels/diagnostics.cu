// Deliberately broken kernels for the emulator's diagnostics.  Each is valid
// CUDA that compiles with NVRTC; what they do at run time is the bug.
// Markers "@name" let the tests find line numbers.

extern "C" __global__ void divergent_barrier(float* out) {
    if (threadIdx.x < 16) {
        out[threadIdx.x] = 1.0f;
        __syncthreads();  // @barrier-a
    } else {
        out[threadIdx.x] = 2.0f;
        __syncthreads();  // @barrier-b
    }
}

// Thread 0 waits at the barrier while lanes 1..31 of its warp wait for it in a shuffle.
extern "C" __global__ void barrier_shuffle_deadlock(float* out) {
    float v = threadIdx.x;
    if (threadIdx.x == 0) {
        __syncthreads();  // @deadlock-bar
    } else {
        v = __shfl_xor_sync(0xffffffffu, v, 1);  // @deadlock-shfl
    }
    out[threadIdx.x] = v;
}

// Warp 0 spins on a shuffle waiting for a flag that the other warps set only
// after a barrier warp 0 never reaches.
extern "C" __global__ void spin_on_shuffle(int* out) {
    __shared__ int flag;
    if (threadIdx.x == 0) flag = 0;
    if (threadIdx.x >= 32) {
        __syncthreads();  // @spin-bar
        flag = 1;
    } else {
        int v = 0;
        while (!__shfl_sync(0xffffffffu, v, 0)) v = flag;  // @spin-shfl
        out[threadIdx.x] = v;
    }
}

// Lanes >= 8 have exited; lanes 4..7 read lanes 8..11 with shfl_down.
extern "C" __global__ void shuffle_from_exited(float* fout, int* iout, double* dout) {
    if (threadIdx.x >= 8) return;
    float v = threadIdx.x;
    int iv = threadIdx.x;
    double dv = threadIdx.x;
    fout[threadIdx.x] = __shfl_down_sync(0xffffffffu, v, 4);
    iout[threadIdx.x] = __shfl_down_sync(0xffffffffu, iv, 4);
    dout[threadIdx.x] = __shfl_down_sync(0xffffffffu, dv, 4);
}

extern "C" __global__ void traps(float* out) {
    if (threadIdx.x == 3) __trap();  // @trap
    out[threadIdx.x] = 1.0f;
}

extern "C" __global__ void write_through(float* out) { out[threadIdx.x] = 1.0f; }

extern "C" __global__ void int_divide(int* out, int d) { out[threadIdx.x] = 100 / (d - (int)threadIdx.x); }

// Lanes of one warp call full-mask shuffles at two different source lines.
extern "C" __global__ void divergent_shuffle(float* out) {
    float v = threadIdx.x;
    if (threadIdx.x & 1)
        v = __shfl_xor_sync(0xffffffffu, v, 2);  // @shfl-a
    else
        v = __shfl_xor_sync(0xffffffffu, v, 2);  // @shfl-b
    out[threadIdx.x] = v;
}
