// Warp votes, scans, barrier reductions, integer and float intrinsics, math
// (valid CUDA: also compiled with NVRTC).

extern "C" __global__ void warp_intrinsics(int* out, float* fout) {
    const int t = threadIdx.x;
    bool odd = t & 1;
    out[t] = __shfl_sync(0xffffffffu, odd, (t + 1) & 31);                  // bool promotes to int
    out[32 + t] = (int)__ballot_sync(0xffffffffu, t < 5);
    out[64 + t] = __any_sync(0xffffffffu, t == 7) + 2 * __all_sync(0xffffffffu, t < 40);
    out[96 + t] = __syncthreads_count(t % 3 == 0);
    int sc = t;  // inclusive warp scan
    for (int o = 1; o < 32; o <<= 1) {
        int v = __shfl_up_sync(0xffffffffu, sc, o);
        if ((t & 31) >= o) sc += v;
    }
    out[128 + t] = sc;
    out[160 + t] = __reduce_add_sync(0xffffffffu, t) + 1000 * __reduce_max_sync(0xffffffffu, t);
    double d = t * 0.5;
    fout[t] = (float)__shfl_down_sync(0xffffffffu, d, 2, 8);                 // width 8
    long long L = (long long)t << 33;
    out[192 + t] = (int)(__shfl_xor_sync(0xffffffffu, L, 3, 4) >> 33);      // width 4
    __syncwarp();
    out[224 + t] = __syncthreads_or(t == 5) + 2 * __syncthreads_and(t < 31);
}

extern "C" __global__ void int_intrinsics(const unsigned int* a, unsigned int* out) {
    const int t = threadIdx.x;
    const unsigned int v = a[t];
    out[8 * t + 0] = __umulhi(v, 0x9E3779B9u);
    out[8 * t + 1] = __popc(v);
    out[8 * t + 2] = __clz((int)v);
    out[8 * t + 3] = __ffs((int)v);
    out[8 * t + 4] = __brev(v);
    out[8 * t + 5] = __float_as_uint(__uint_as_float(v));
    out[8 * t + 6] = (unsigned int)__float_as_int(__int_as_float((int)v));
    out[8 * t + 7] = __float_as_uint((float)min(max((int)(v & 0xff), 10), 200));
}

extern "C" __global__ void math_funcs(const float* __restrict__ x, float* __restrict__ out, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float v = x[i];  // in (-1, 1)
    float s, c;
    sincosf(v, &s, &c);
    float* o = out + 16 * i;
    o[0] = expf(v);  o[1] = logf(v + 2.0f); o[2] = log1pf(v); o[3] = expm1f(v);
    o[4] = s;        o[5] = c;              o[6] = sqrtf(v + 1.0f); o[7] = rsqrtf(v + 1.5f);
    o[8] = tanhf(v); o[9] = powf(v + 1.0f, 1.5f); o[10] = erff(v); o[11] = erfinvf(v);
    o[12] = fmaf(v, 2.0f, 1.0f); o[13] = fmaxf(v, 0.0f) + fminf(v, 0.0f) * 2.0f + fabsf(v);
    o[14] = floorf(v * 10.0f) + ceilf(v * 10.0f); o[15] = __saturatef(v) + __expf(v) - __fdividef(v, 2.0f);
}

// Kernels inside an extern "C" block and inside a namespace; vector types.
extern "C" {
__global__ void vec_add4(const float4* __restrict__ a, const float4* __restrict__ b, float4* __restrict__ c, int n4) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n4) {
        float4 x = a[i], y = b[i];
        c[i] = make_float4(x.x + y.x, x.y + y.y, x.z + y.z, x.w + y.w);
    }
}
}

namespace emu_test {
__device__ inline float twice(float v) { return 2.0f * v; }
extern "C" __global__ void ns_scale(float* x, double f, unsigned long long n) {
    unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (i < n) x[i] = twice(x[i]) * (float)f;
}
}  // namespace emu_test

template <typename T>
__global__ void templated(T* x) { x[threadIdx.x] = T(1); }

// Half-warp masks at different lines, and __syncwarp at different lines (legal since Volta).
extern "C" __global__ void partial_masks(int* out) {
    const int t = threadIdx.x;
    int v = t;
    if (t < 16) {
        v = __shfl_sync(0x0000ffffu, v, 3);         // lane 3 of the low half
        __syncwarp();
    } else {
        v = __shfl_down_sync(0xffff0000u, v, 1);    // lane 31 keeps its own value
        __syncwarp();
    }
    out[t] = v + 1000 * __popc(__activemask());
}

#define DEFINE_FILL(NAME, T) \
    extern "C" __global__ void __launch_bounds__(128) NAME(T* o, T v, int n) { \
        int i = blockIdx.x * blockDim.x + threadIdx.x; if (i < n) o[i] = v; }
DEFINE_FILL(fill_u8, unsigned char)
DEFINE_FILL(fill_i64, long long)
extern "C" __global__ void proto_only(float* a);
extern "C" __global__ __launch_bounds__(64, 2) void proto_only(float* a) { a[threadIdx.x] += 1.0f; }
