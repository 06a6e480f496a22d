// cuda_emu.h -- forced-include shim that lets a disciplined subset of CUDA C++
// compile unchanged with g++ (-std=c++20 -include cuda_emu.h) and run on the
// CPU under the cupyvae emulator runtime (cuda_emu_runtime.hpp).
//
// Deliberately includes NO system header: kernel sources must not rely on
// anything NVRTC would not provide either.  libm functions are declared here.
//
// Modes:
//   __CUEMU_PARSE__        only the predefined macros (used for `g++ -E`
//                          so the Python side can find kernels/parameters)
//   __CUEMU_RUNTIME_BUILD__ only the structs shared with the runtime library
//   (default)              the full device-side API
#ifndef CUPYVAE_CUDA_EMU_H
#define CUPYVAE_CUDA_EMU_H

#define __CUEMU__ 1
#define CUPYVAE_EMULATOR 1
#ifndef __CUDACC__
#define __CUDACC__ 1
#endif
#ifndef __CUDA_ARCH__
#define __CUDA_ARCH__ 800
#endif

#ifndef __CUEMU_PARSE__

// ---------------------------------------------------------------- shared types
#ifdef __CUEMU_RUNTIME_BUILD__
#define CUEMU_RO
#else
#define CUEMU_RO const
#endif

struct uint3 { unsigned int x, y, z; };
struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return uint3{x, y, z}; }
};

namespace cuemu {
typedef __UINT32_TYPE__ u32;
typedef __UINT64_TYPE__ u64;
typedef __INT64_TYPE__ i64;

// The part of a fiber's state that kernel code reads.  The runtime's Fiber
// struct starts with exactly this layout.
struct FiberHead {
    CUEMU_RO uint3 threadIdx;
    CUEMU_RO uint3 blockIdx;
    CUEMU_RO dim3 blockDim;
    CUEMU_RO dim3 gridDim;
    CUEMU_RO unsigned int lane;
    CUEMU_RO unsigned int tid;
};

// warp operation codes (shared with the runtime)
enum WarpOp : int {
    OP_SHFL_IDX = 0, OP_SHFL_UP = 1, OP_SHFL_DOWN = 2, OP_SHFL_XOR = 3,
    OP_BALLOT = 4, OP_ANY = 5, OP_ALL = 6, OP_SYNCWARP = 7,
    OP_RED_ADD = 8, OP_RED_MIN = 9, OP_RED_MAX = 10,
    OP_RED_AND = 11, OP_RED_OR = 12, OP_RED_XOR = 13,
};
// value kinds for warp ops: decides the poison pattern and reduction signedness
enum ValKind : int { VK_I32 = 0, VK_F32 = 1, VK_I64 = 2, VK_F64 = 3, VK_U32 = 4, VK_U64 = 5 };
// block barrier kinds
enum SyncKind : int { SYNC_PLAIN = 0, SYNC_COUNT = 1, SYNC_AND = 2, SYNC_OR = 3 };
}  // namespace cuemu

extern "C" {
int cuemu_rt_sync(cuemu::FiberHead* f, int kind, int pred, int line);
cuemu::u64 cuemu_rt_warp(cuemu::FiberHead* f, int op, unsigned int mask, cuemu::u64 val,
                         int param, int width, int vkind, int line);
unsigned int cuemu_rt_activemask(cuemu::FiberHead* f);
[[noreturn]] void cuemu_rt_trap(cuemu::FiberHead* f, int line, const char* what);
}

#ifndef __CUEMU_RUNTIME_BUILD__
// ============================================================== device side

#define __global__
#define __device__
#define __host__
#define __constant__
#define __managed__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
#define __grid_constant__
// static __shared__ -> thread_local (one OS worker runs a whole block);
// `extern __shared__ T name[]` -> extern thread_local, aliased by generated
// assembly to one per-worker dynamic-shared-memory buffer.
#define __shared__ thread_local
// __restrict__ is a g++ keyword already.

typedef __SIZE_TYPE__ size_t;
typedef __PTRDIFF_TYPE__ ptrdiff_t;

namespace cuemu {
static thread_local FiberHead* cur = nullptr;  // the fiber running on this worker
}

#define threadIdx (::cuemu::cur->threadIdx)
#define blockIdx (::cuemu::cur->blockIdx)
#define blockDim (::cuemu::cur->blockDim)
#define gridDim (::cuemu::cur->gridDim)
#define warpSize 32

// ------------------------------------------------------------ vector types
#define CUEMU_VEC2(T, N, A) struct __attribute__((aligned(A))) N { T x, y; }; \
    static inline N make_##N(T x, T y) { N v; v.x = x; v.y = y; return v; }
#define CUEMU_VEC3(T, N) struct N { T x, y, z; }; \
    static inline N make_##N(T x, T y, T z) { N v; v.x = x; v.y = y; v.z = z; return v; }
#define CUEMU_VEC4(T, N, A) struct __attribute__((aligned(A))) N { T x, y, z, w; }; \
    static inline N make_##N(T x, T y, T z, T w) { N v; v.x = x; v.y = y; v.z = z; v.w = w; return v; }
CUEMU_VEC2(int, int2, 8)
CUEMU_VEC3(int, int3)
CUEMU_VEC4(int, int4, 16)
CUEMU_VEC2(unsigned int, uint2, 8)
CUEMU_VEC4(unsigned int, uint4, 16)
CUEMU_VEC2(float, float2, 8)
CUEMU_VEC3(float, float3)
CUEMU_VEC4(float, float4, 16)
CUEMU_VEC2(double, double2, 16)
CUEMU_VEC2(long long, longlong2, 16)
CUEMU_VEC2(unsigned long long, ulonglong2, 16)
#undef CUEMU_VEC2
#undef CUEMU_VEC3
#undef CUEMU_VEC4
static inline uint3 make_uint3(unsigned int x, unsigned int y, unsigned int z) { return uint3{x, y, z}; }

// --------------------------------------------------------- tiny type traits
namespace cuemu {
template <class A, class B> struct same { static constexpr bool value = false; };
template <class A> struct same<A, A> { static constexpr bool value = true; };
template <class T> struct rm_cv { typedef T type; };
template <class T> struct rm_cv<const T> { typedef T type; };
template <class T> struct rm_cv<volatile T> { typedef T type; };
template <class T> struct rm_cv<const volatile T> { typedef T type; };

template <class T> constexpr int vkind() {
    typedef typename rm_cv<T>::type U;
    if constexpr (same<U, float>::value) return VK_F32;
    else if constexpr (same<U, double>::value) return VK_F64;
    else if constexpr (sizeof(U) == 8) return (U(-1) < U(0)) ? VK_I64 : VK_U64;
    else return (U(-1) < U(0)) ? VK_I32 : VK_U32;
}

// ------------------------------------------------- barrier / warp plumbing
__attribute__((always_inline)) inline int block_sync(int kind, int pred, int line) {
    FiberHead* me = cur;
    int r = cuemu_rt_sync(me, kind, pred, line);
    cur = me;  // other fibers of this worker ran meanwhile
    return r;
}
__attribute__((always_inline)) inline u64 warp_call(int op, unsigned int mask, u64 v, int param,
                                                    int width, int vk, int line) {
    FiberHead* me = cur;
    u64 r = cuemu_rt_warp(me, op, mask, v, param, width, vk, line);
    cur = me;
    return r;
}
// bool/char/short promote to int, like overload resolution on CUDA's __shfl_*_sync
template <class V, class T = decltype(+V())>
__attribute__((always_inline)) inline T shfl(int op, int line, unsigned int mask, V v, int param,
                                             int width = 32) {
    static_assert(sizeof(T) == 4 || sizeof(T) == 8, "emulated shuffles move 4- or 8-byte scalars");
    T var = v;
    u64 bits = 0;
    __builtin_memcpy(&bits, &var, sizeof(T));
    u64 r = warp_call(op, mask, bits, param, width, vkind<T>(), line);
    T out;
    __builtin_memcpy(&out, &r, sizeof(T));
    return out;
}
template <class T>
__attribute__((always_inline)) inline T reduce(int op, int line, unsigned int mask, T v) {
    static_assert(sizeof(T) == 4, "__reduce_*_sync takes int or unsigned");
    u64 bits = 0;
    __builtin_memcpy(&bits, &v, 4);
    u64 r = warp_call(op, mask, bits, 0, 32, vkind<T>(), line);
    T out;
    __builtin_memcpy(&out, &r, 4);
    return out;
}
__attribute__((always_inline)) inline void syncwarp(int line, unsigned int mask = 0xffffffffu) {
    (void)warp_call(OP_SYNCWARP, mask, 0, 0, 32, VK_U32, line);
}
[[noreturn]] inline void trap(int line, const char* what) { cuemu_rt_trap(cur, line, what); }
}  // namespace cuemu

#define __syncthreads() ((void)::cuemu::block_sync(::cuemu::SYNC_PLAIN, 0, __LINE__))
#define __syncthreads_count(p) ::cuemu::block_sync(::cuemu::SYNC_COUNT, (p) ? 1 : 0, __LINE__)
#define __syncthreads_and(p) ::cuemu::block_sync(::cuemu::SYNC_AND, (p) ? 1 : 0, __LINE__)
#define __syncthreads_or(p) ::cuemu::block_sync(::cuemu::SYNC_OR, (p) ? 1 : 0, __LINE__)
#define __syncwarp(...) ::cuemu::syncwarp(__LINE__ __VA_OPT__(, ) __VA_ARGS__)
#define __shfl_sync(...) ::cuemu::shfl(::cuemu::OP_SHFL_IDX, __LINE__, __VA_ARGS__)
#define __shfl_up_sync(...) ::cuemu::shfl(::cuemu::OP_SHFL_UP, __LINE__, __VA_ARGS__)
#define __shfl_down_sync(...) ::cuemu::shfl(::cuemu::OP_SHFL_DOWN, __LINE__, __VA_ARGS__)
#define __shfl_xor_sync(...) ::cuemu::shfl(::cuemu::OP_SHFL_XOR, __LINE__, __VA_ARGS__)
#define __ballot_sync(mask, pred) \
    ((unsigned int)::cuemu::warp_call(::cuemu::OP_BALLOT, (mask), (pred) ? 1 : 0, 0, 32, ::cuemu::VK_U32, __LINE__))
#define __any_sync(mask, pred) \
    ((int)::cuemu::warp_call(::cuemu::OP_ANY, (mask), (pred) ? 1 : 0, 0, 32, ::cuemu::VK_I32, __LINE__))
#define __all_sync(mask, pred) \
    ((int)::cuemu::warp_call(::cuemu::OP_ALL, (mask), (pred) ? 1 : 0, 0, 32, ::cuemu::VK_I32, __LINE__))
#define __reduce_add_sync(mask, v) ::cuemu::reduce(::cuemu::OP_RED_ADD, __LINE__, (mask), (v))
#define __reduce_min_sync(mask, v) ::cuemu::reduce(::cuemu::OP_RED_MIN, __LINE__, (mask), (v))
#define __reduce_max_sync(mask, v) ::cuemu::reduce(::cuemu::OP_RED_MAX, __LINE__, (mask), (v))
#define __reduce_and_sync(mask, v) ::cuemu::reduce(::cuemu::OP_RED_AND, __LINE__, (mask), (v))
#define __reduce_or_sync(mask, v) ::cuemu::reduce(::cuemu::OP_RED_OR, __LINE__, (mask), (v))
#define __reduce_xor_sync(mask, v) ::cuemu::reduce(::cuemu::OP_RED_XOR, __LINE__, (mask), (v))
#define __activemask() ::cuemu_rt_activemask(::cuemu::cur)
#define __trap() ::cuemu::trap(__LINE__, "__trap() called")

static inline unsigned int __lanemask_lt() { return (1u << ::cuemu::cur->lane) - 1u; }
static inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline void __threadfence_block() { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
static inline void __threadfence_system() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
template <class T> static inline T __ldg(const T* p) { return *p; }

extern "C" int printf(const char*, ...);

// ---------------------------------------------------------------- atomics
// Blocks run concurrently on several OS workers, so these are real atomics.
#define CUEMU_ATOMIC_INT(T)                                                                        \
    static inline T atomicAdd(T* a, T v) { return __atomic_fetch_add(a, v, __ATOMIC_RELAXED); }   \
    static inline T atomicSub(T* a, T v) { return __atomic_fetch_sub(a, v, __ATOMIC_RELAXED); }   \
    static inline T atomicExch(T* a, T v) { return __atomic_exchange_n(a, v, __ATOMIC_RELAXED); } \
    static inline T atomicAnd(T* a, T v) { return __atomic_fetch_and(a, v, __ATOMIC_RELAXED); }   \
    static inline T atomicOr(T* a, T v) { return __atomic_fetch_or(a, v, __ATOMIC_RELAXED); }     \
    static inline T atomicXor(T* a, T v) { return __atomic_fetch_xor(a, v, __ATOMIC_RELAXED); }   \
    static inline T atomicCAS(T* a, T cmp, T v) {                                                  \
        __atomic_compare_exchange_n(a, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);        \
        return cmp;                                                                                \
    }                                                                                              \
    static inline T atomicMax(T* a, T v) {                                                         \
        T old = __atomic_load_n(a, __ATOMIC_RELAXED);                                              \
        while (old < v && !__atomic_compare_exchange_n(a, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {} \
        return old;                                                                                \
    }                                                                                              \
    static inline T atomicMin(T* a, T v) {                                                         \
        T old = __atomic_load_n(a, __ATOMIC_RELAXED);                                              \
        while (old > v && !__atomic_compare_exchange_n(a, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {} \
        return old;                                                                                \
    }
CUEMU_ATOMIC_INT(int)
CUEMU_ATOMIC_INT(unsigned int)
CUEMU_ATOMIC_INT(long long)
CUEMU_ATOMIC_INT(unsigned long long)
#undef CUEMU_ATOMIC_INT

namespace cuemu {
template <class F, class U, class Op>
static inline F atomic_float(F* a, F v, Op op) {
    U* p = reinterpret_cast<U*>(a);
    U old = __atomic_load_n(p, __ATOMIC_RELAXED);
    for (;;) {
        F f;
        __builtin_memcpy(&f, &old, sizeof(F));
        F n = op(f, v);
        U nb;
        __builtin_memcpy(&nb, &n, sizeof(F));
        if (__atomic_compare_exchange_n(p, &old, nb, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) return f;
    }
}
}  // namespace cuemu
static inline float atomicAdd(float* a, float v) {
    return ::cuemu::atomic_float<float, ::cuemu::u32>(a, v, [](float x, float y) { return x + y; });
}
static inline double atomicAdd(double* a, double v) {
    return ::cuemu::atomic_float<double, ::cuemu::u64>(a, v, [](double x, double y) { return x + y; });
}
static inline float atomicExch(float* a, float v) {
    return ::cuemu::atomic_float<float, ::cuemu::u32>(a, v, [](float, float y) { return y; });
}
static inline unsigned int atomicInc(unsigned int* a, unsigned int lim) {
    unsigned int old = __atomic_load_n(a, __ATOMIC_RELAXED);
    while (!__atomic_compare_exchange_n(a, &old, old >= lim ? 0u : old + 1u, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {}
    return old;
}
static inline unsigned int atomicDec(unsigned int* a, unsigned int lim) {
    unsigned int old = __atomic_load_n(a, __ATOMIC_RELAXED);
    while (!__atomic_compare_exchange_n(a, &old, (old == 0u || old > lim) ? lim : old - 1u, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {}
    return old;
}

// ------------------------------------------------------- bit reinterpretation
static inline unsigned int __float_as_uint(float x) { unsigned int r; __builtin_memcpy(&r, &x, 4); return r; }
static inline int __float_as_int(float x) { int r; __builtin_memcpy(&r, &x, 4); return r; }
static inline float __uint_as_float(unsigned int x) { float r; __builtin_memcpy(&r, &x, 4); return r; }
static inline float __int_as_float(int x) { float r; __builtin_memcpy(&r, &x, 4); return r; }
static inline long long __double_as_longlong(double x) { long long r; __builtin_memcpy(&r, &x, 8); return r; }
static inline double __longlong_as_double(long long x) { double r; __builtin_memcpy(&r, &x, 8); return r; }

// ------------------------------------------------------- integer intrinsics
static inline unsigned int __umulhi(unsigned int a, unsigned int b) { return (unsigned int)(((unsigned long long)a * b) >> 32); }
static inline int __mulhi(int a, int b) { return (int)(((long long)a * b) >> 32); }
static inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) { return (unsigned long long)(((unsigned __int128)a * b) >> 64); }
static inline long long __mul64hi(long long a, long long b) { return (long long)(((__int128)a * b) >> 64); }
static inline int __popc(unsigned int x) { return __builtin_popcount(x); }
static inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned int)x); }
static inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
static inline int __ffs(int x) { return __builtin_ffs(x); }
static inline int __ffsll(long long x) { return __builtin_ffsll(x); }
static inline unsigned int __brev(unsigned int x) {
    x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
    x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
    x = ((x >> 4) & 0x0F0F0F0Fu) | ((x & 0x0F0F0F0Fu) << 4);
    return __builtin_bswap32(x);
}
static inline unsigned long long __brevll(unsigned long long x) {
    return ((unsigned long long)__brev((unsigned int)x) << 32) | __brev((unsigned int)(x >> 32));
}
static inline unsigned int __funnelshift_l(unsigned int lo, unsigned int hi, unsigned int s) {
    unsigned long long v = ((unsigned long long)hi << 32) | lo; return (unsigned int)((v << (s & 31)) >> 32);
}
static inline unsigned int __funnelshift_r(unsigned int lo, unsigned int hi, unsigned int s) {
    unsigned long long v = ((unsigned long long)hi << 32) | lo; return (unsigned int)(v >> (s & 31));
}

// --------------------------------------------------------------- libm (C)
extern "C" {
#define CUEMU_M1(F) double F(double) noexcept; float F##f(float) noexcept;
#define CUEMU_M2(F) double F(double, double) noexcept; float F##f(float, float) noexcept;
CUEMU_M1(exp) CUEMU_M1(exp2) CUEMU_M1(exp10) CUEMU_M1(expm1) CUEMU_M1(log) CUEMU_M1(log2)
CUEMU_M1(log10) CUEMU_M1(log1p) CUEMU_M1(sin) CUEMU_M1(cos) CUEMU_M1(tan) CUEMU_M1(asin)
CUEMU_M1(acos) CUEMU_M1(atan) CUEMU_M1(sinh) CUEMU_M1(cosh) CUEMU_M1(tanh) CUEMU_M1(asinh)
CUEMU_M1(acosh) CUEMU_M1(atanh) CUEMU_M1(sqrt) CUEMU_M1(cbrt) CUEMU_M1(fabs) CUEMU_M1(floor)
CUEMU_M1(ceil) CUEMU_M1(trunc) CUEMU_M1(round) CUEMU_M1(rint) CUEMU_M1(nearbyint) CUEMU_M1(erf)
CUEMU_M1(erfc) CUEMU_M1(lgamma) CUEMU_M1(tgamma) CUEMU_M1(logb)
CUEMU_M2(pow) CUEMU_M2(atan2) CUEMU_M2(fmax) CUEMU_M2(fmin) CUEMU_M2(fmod) CUEMU_M2(hypot)
CUEMU_M2(copysign) CUEMU_M2(fdim) CUEMU_M2(remainder) CUEMU_M2(nextafter)
#undef CUEMU_M1
#undef CUEMU_M2
double fma(double, double, double) noexcept;
float fmaf(float, float, float) noexcept;
double ldexp(double, int) noexcept;
float ldexpf(float, int) noexcept;
double frexp(double, int*) noexcept;
float frexpf(float, int*) noexcept;
double modf(double, double*) noexcept;
float modff(float, float*) noexcept;
void sincos(double, double*, double*) noexcept;
void sincosf(float, float*, float*) noexcept;
long lrint(double) noexcept;
long lrintf(float) noexcept;
long long llrint(double) noexcept;
long long llrintf(float) noexcept;
long lround(double) noexcept;
long lroundf(float) noexcept;
long long llround(double) noexcept;
long long llroundf(float) noexcept;
int abs(int) noexcept;
long labs(long) noexcept;
long long llabs(long long) noexcept;
}

#define INFINITY (__builtin_inff())
#define NAN (__builtin_nanf(""))
#define HUGE_VALF (__builtin_huge_valf())
#define HUGE_VAL (__builtin_huge_val())

// C++ float overloads CUDA provides (exp(float) -> float, ...)
#define CUEMU_O1(F) static inline float F(float x) { return F##f(x); }
#define CUEMU_O2(F) static inline float F(float x, float y) { return F##f(x, y); }
CUEMU_O1(exp) CUEMU_O1(exp2) CUEMU_O1(exp10) CUEMU_O1(expm1) CUEMU_O1(log) CUEMU_O1(log2)
CUEMU_O1(log10) CUEMU_O1(log1p) CUEMU_O1(sin) CUEMU_O1(cos) CUEMU_O1(tan) CUEMU_O1(asin)
CUEMU_O1(acos) CUEMU_O1(atan) CUEMU_O1(sinh) CUEMU_O1(cosh) CUEMU_O1(tanh) CUEMU_O1(asinh)
CUEMU_O1(acosh) CUEMU_O1(atanh) CUEMU_O1(sqrt) CUEMU_O1(cbrt) CUEMU_O1(fabs) CUEMU_O1(floor)
CUEMU_O1(ceil) CUEMU_O1(trunc) CUEMU_O1(round) CUEMU_O1(rint) CUEMU_O1(nearbyint) CUEMU_O1(erf)
CUEMU_O1(erfc) CUEMU_O1(lgamma) CUEMU_O1(tgamma) CUEMU_O1(logb)
CUEMU_O2(pow) CUEMU_O2(atan2) CUEMU_O2(fmax) CUEMU_O2(fmin) CUEMU_O2(fmod) CUEMU_O2(hypot)
CUEMU_O2(copysign) CUEMU_O2(fdim) CUEMU_O2(remainder) CUEMU_O2(nextafter)
#undef CUEMU_O1
#undef CUEMU_O2
static inline float pow(float x, int n) { return powf(x, (float)n); }
static inline double pow(double x, int n) { return pow(x, (double)n); }
static inline float fma(float a, float b, float c) { return fmaf(a, b, c); }
static inline float ldexp(float x, int e) { return ldexpf(x, e); }
static inline float abs(float x) { return fabsf(x); }
static inline double abs(double x) { return fabs(x); }
static inline long long abs(long long x) { return llabs(x); }
static inline void sincos(float x, float* s, float* c) { sincosf(x, s, c); }

static inline bool isnan(float x) { return __builtin_isnan(x); }
static inline bool isnan(double x) { return __builtin_isnan(x); }
static inline bool isinf(float x) { return __builtin_isinf(x); }
static inline bool isinf(double x) { return __builtin_isinf(x); }
static inline bool isfinite(float x) { return __builtin_isfinite(x); }
static inline bool isfinite(double x) { return __builtin_isfinite(x); }
static inline bool signbit(float x) { return __builtin_signbit(x); }
static inline bool signbit(double x) { return __builtin_signbit(x); }

// CUDA-only math
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline double rsqrt(double x) { return 1.0 / sqrt(x); }
static inline float rsqrt(float x) { return rsqrtf(x); }
static inline float rcbrtf(float x) { return 1.0f / cbrtf(x); }
static inline float sinpif(float x) { return (float)sin(3.14159265358979323846 * (double)x); }
static inline float cospif(float x) { return (float)cos(3.14159265358979323846 * (double)x); }
static inline float fdividef(float a, float b) { return a / b; }

namespace cuemu {
// erfinv / erfcinv: Giles' (2010) approximation evaluated in double, then
// two Newton steps on erf / erfc.  Accurate to ~1 ulp in float.
static inline double erfinv_guess(double y /* = 1 - x */, double x) {
    double w = -log(y * (2.0 - y)), p;
    if (w < 6.25) {
        w -= 3.125;
        p = -3.6444120640178196996e-21; p = -1.685059138182016589e-19 + p * w;
        p = 1.2858480715256400167e-18 + p * w; p = 1.115787767802518096e-17 + p * w;
        p = -1.333171662854620906e-16 + p * w; p = 2.0972767875968561637e-17 + p * w;
        p = 6.6376381343583238325e-15 + p * w; p = -4.0545662729752068639e-14 + p * w;
        p = -8.1519341976054721522e-14 + p * w; p = 2.6335093153082322977e-12 + p * w;
        p = -1.2975133253453532498e-11 + p * w; p = -5.4154120542946279317e-11 + p * w;
        p = 1.051212273321532285e-09 + p * w; p = -4.1126339803469836976e-09 + p * w;
        p = -2.9070369957882005086e-08 + p * w; p = 4.2347877827932403518e-07 + p * w;
        p = -1.3654692000834678645e-06 + p * w; p = -1.3882523362786468719e-05 + p * w;
        p = 0.0001867342080340571352 + p * w; p = -0.00074070253416626697512 + p * w;
        p = -0.0060336708714301490533 + p * w; p = 0.24015818242558961693 + p * w;
        p = 1.6536545626831027356 + p * w;
    } else if (w < 16.0) {
        w = sqrt(w) - 3.25;
        p = 2.2137376921775787049e-09; p = 9.0756561938885390979e-08 + p * w;
        p = -2.7517406297064545428e-07 + p * w; p = 1.8239629214389227755e-08 + p * w;
        p = 1.5027403968909827627e-06 + p * w; p = -4.013867526981545969e-06 + p * w;
        p = 2.9234449089955446044e-06 + p * w; p = 1.2475304481671778723e-05 + p * w;
        p = -4.7318229009055733981e-05 + p * w; p = 6.8284851459573175448e-05 + p * w;
        p = 2.4031110387097893999e-05 + p * w; p = -0.0003550375203628474796 + p * w;
        p = 0.00095328937973738049703 + p * w; p = -0.0016882755560235047313 + p * w;
        p = 0.0024914420961078508066 + p * w; p = -0.0037512085075692412107 + p * w;
        p = 0.005370914553590063617 + p * w; p = 1.0052589676941592334 + p * w;
        p = 3.0838856104922207635 + p * w;
    } else {
        w = sqrt(w) - 5.0;
        p = -2.7109920616438573243e-11; p = -2.5556418169965252055e-10 + p * w;
        p = 1.5076572693500548083e-09 + p * w; p = -3.7894654401267369937e-09 + p * w;
        p = 7.6157012080783393804e-09 + p * w; p = -1.4960026627149240478e-08 + p * w;
        p = 2.9147953450901080826e-08 + p * w; p = -6.7711997758452339498e-08 + p * w;
        p = 2.2900482228026654717e-07 + p * w; p = -9.9298272942317002539e-07 + p * w;
        p = 4.5260625972231537039e-06 + p * w; p = -1.9681778105531670567e-05 + p * w;
        p = 7.5995277030017761139e-05 + p * w; p = -0.00021503011930044477347 + p * w;
        p = -0.00013871931833623122026 + p * w; p = 1.0103004648645343977 + p * w;
        p = 4.8499064014085844221 + p * w;
    }
    return p * x;
}
static inline double erfinv_d(double x) {
    if (__builtin_isnan(x) || x < -1.0 || x > 1.0) return __builtin_nan("");
    if (x == 1.0) return __builtin_inf();
    if (x == -1.0) return -__builtin_inf();
    double ax = x < 0 ? -x : x;
    double t = erfinv_guess(1.0 - ax, ax);
    for (int k = 0; k < 2; ++k) t -= (erf(t) - ax) / (1.1283791670955126 * exp(-t * t));
    return x < 0 ? -t : t;
}
static inline double erfcinv_d(double y) {
    if (__builtin_isnan(y) || y < 0.0 || y > 2.0) return __builtin_nan("");
    if (y == 0.0) return __builtin_inf();
    if (y == 2.0) return -__builtin_inf();
    if (y > 1.0) return -erfcinv_d(2.0 - y);
    double t = erfinv_guess(y, 1.0 - y);
    for (int k = 0; k < 2; ++k) {
        double d = 1.1283791670955126 * exp(-t * t);
        if (d == 0.0) break;
        t += (erfc(t) - y) / d;
    }
    return t;
}
}  // namespace cuemu
static inline double erfinv(double x) { return ::cuemu::erfinv_d(x); }
static inline float erfinvf(float x) { return (float)::cuemu::erfinv_d(x); }
static inline float erfinv(float x) { return erfinvf(x); }
static inline double erfcinv(double y) { return ::cuemu::erfcinv_d(y); }
static inline float erfcinvf(float y) { return (float)::cuemu::erfcinv_d(y); }
static inline float erfcinv(float y) { return erfcinvf(y); }
static inline double normcdf(double x) { return 0.5 * erfc(-x * 0.70710678118654752440); }
static inline float normcdff(float x) { return (float)normcdf((double)x); }
static inline float normcdf(float x) { return normcdff(x); }
static inline double normcdfinv(double p) { return -1.4142135623730950488 * ::cuemu::erfcinv_d(2.0 * p); }
static inline float normcdfinvf(float p) { return (float)normcdfinv((double)p); }
static inline float normcdfinv(float p) { return normcdfinvf(p); }

// fast-math intrinsics: exact on the CPU (approximate on a GPU)
static inline float __expf(float x) { return expf(x); }
static inline float __exp10f(float x) { return exp10f(x); }
static inline float __logf(float x) { return logf(x); }
static inline float __log2f(float x) { return log2f(x); }
static inline float __log10f(float x) { return log10f(x); }
static inline float __sinf(float x) { return sinf(x); }
static inline float __cosf(float x) { return cosf(x); }
static inline float __tanf(float x) { return tanf(x); }
static inline void __sincosf(float x, float* s, float* c) { sincosf(x, s, c); }
static inline float __powf(float x, float y) { return powf(x, y); }
static inline float __fdividef(float a, float b) { return a / b; }
static inline float __saturatef(float x) { return x > 0.0f ? (x < 1.0f ? x : 1.0f) : 0.0f; }  // NaN -> 0
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
static inline float __frcp_rn(float a) { return 1.0f / a; }
static inline float __fsqrt_rn(float a) { return sqrtf(a); }
static inline float __frsqrt_rn(float a) { return 1.0f / sqrtf(a); }
static inline double __dadd_rn(double a, double b) { return a + b; }
static inline double __dmul_rn(double a, double b) { return a * b; }
static inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }

// conversions (default rounding mode is round-to-nearest-even)
static inline int __float2int_rn(float x) { return (int)rintf(x); }
static inline int __float2int_rz(float x) { return (int)x; }
static inline int __float2int_rd(float x) { return (int)floorf(x); }
static inline int __float2int_ru(float x) { return (int)ceilf(x); }
static inline unsigned int __float2uint_rn(float x) { return (unsigned int)rintf(x); }
static inline unsigned int __float2uint_rz(float x) { return (unsigned int)x; }
static inline long long __float2ll_rn(float x) { return (long long)rintf(x); }
static inline long long __float2ll_rz(float x) { return (long long)x; }
static inline float __int2float_rn(int x) { return (float)x; }
static inline float __uint2float_rn(unsigned int x) { return (float)x; }
static inline float __ll2float_rn(long long x) { return (float)x; }
static inline float __double2float_rn(double x) { return (float)x; }
static inline int __double2int_rn(double x) { return (int)rint(x); }

// min / max overloads as CUDA provides them
#define CUEMU_MINMAX(T) \
    static inline T min(T a, T b) { return a < b ? a : b; } \
    static inline T max(T a, T b) { return a > b ? a : b; }
CUEMU_MINMAX(int)
CUEMU_MINMAX(unsigned int)
CUEMU_MINMAX(long long)
CUEMU_MINMAX(unsigned long long)
#undef CUEMU_MINMAX
static inline float min(float a, float b) { return fminf(a, b); }
static inline float max(float a, float b) { return fmaxf(a, b); }
static inline double min(double a, double b) { return fmin(a, b); }
static inline double max(double a, double b) { return fmax(a, b); }
static inline double min(float a, double b) { return fmin((double)a, b); }
static inline double max(float a, double b) { return fmax((double)a, b); }
static inline double min(double a, float b) { return fmin(a, (double)b); }
static inline double max(double a, float b) { return fmax(a, (double)b); }
static inline unsigned int min(int a, unsigned int b) { return min((unsigned int)a, b); }
static inline unsigned int max(int a, unsigned int b) { return max((unsigned int)a, b); }
static inline unsigned int min(unsigned int a, int b) { return min(a, (unsigned int)b); }
static inline unsigned int max(unsigned int a, int b) { return max(a, (unsigned int)b); }

// ------------------------------------------------ launch glue (used by the
// code the Python side appends after the kernel source)
namespace cuemu {
template <unsigned long... I> struct iseq {};
template <class... A, unsigned long... I>
__attribute__((always_inline)) inline void invoke_(void (*k)(A...), void** a, iseq<I...>) {
    k(*static_cast<A*>(a[I])...);
}
template <class... A>
__attribute__((always_inline)) inline void invoke(void (*k)(A...), void** a) {
    invoke_(k, a, iseq<__integer_pack(sizeof...(A))...>{});
}
// canonical C++ spelling of each supported parameter type ("?" = unsupported)
template <class T> struct tname { static constexpr const char* s = "?"; };
#define CUEMU_TN(T, S)                                                                  \
    template <> struct tname<T> { static constexpr const char* s = S; };               \
    template <> struct tname<T*> { static constexpr const char* s = S "*"; };          \
    template <> struct tname<const T*> { static constexpr const char* s = "const " S "*"; };
CUEMU_TN(float, "float") CUEMU_TN(double, "double") CUEMU_TN(bool, "bool")
CUEMU_TN(char, "char") CUEMU_TN(signed char, "signed char") CUEMU_TN(unsigned char, "unsigned char")
CUEMU_TN(short, "short") CUEMU_TN(unsigned short, "unsigned short")
CUEMU_TN(int, "int") CUEMU_TN(unsigned int, "unsigned int")
CUEMU_TN(long, "long") CUEMU_TN(unsigned long, "unsigned long")
CUEMU_TN(long long, "long long") CUEMU_TN(unsigned long long, "unsigned long long")
CUEMU_TN(float2, "float2") CUEMU_TN(float4, "float4") CUEMU_TN(double2, "double2")
CUEMU_TN(int2, "int2") CUEMU_TN(int4, "int4") CUEMU_TN(uint2, "uint2") CUEMU_TN(uint4, "uint4")
#undef CUEMU_TN
template <> struct tname<void*> { static constexpr const char* s = "void*"; };
template <> struct tname<const void*> { static constexpr const char* s = "const void*"; };
template <class... A> inline const char* const* signature(void (*)(A...)) {
    static const char* const s[] = {tname<A>::s..., nullptr};
    return s;
}
}  // namespace cuemu

#endif  // !__CUEMU_RUNTIME_BUILD__
#endif  // !__CUEMU_PARSE__
#endif  // CUPYVAE_CUDA_EMU_H
