"""CPU emulator for cupyvae's hand-written CUDA kernels: the exact ``.cu`` source runs in CI.

A kernel file written in the disciplined CUDA subset below compiles UNCHANGED with
NVRTC for the GPU and with ``g++ -std=c++20 -include cuda_emu.h`` into a shared
library for the CPU.  The front end mirrors CuPy, so one launch path drives both::

    import numpy as np
    from cupyvae.emulator import EmulatedModule

    src = r'''
    extern "C" __global__ void scale(const float* x, float* y, float a, int n) {
        int i = blockIdx.x * blockDim.x + threadIdx.x;
        if (i < n) y[i] = a * x[i];
    }'''
    mod = EmulatedModule(src, thread_order="random", seed=1)   # cupy.RawModule(code=src)
    x = np.arange(1000, dtype=np.float32); y = np.empty_like(x)
    mod.get_function("scale")((4,), (256,), (x, y, np.float32(2), np.int32(x.size)))

API
---
``EmulatedModule(code, options=(), *, thread_order="forward", seed=0, workers=None)``,
``.get_function(name) -> EmulatedKernel``, ``EmulatedKernel(grid, block, args,
shared_mem=0)``; ``EmulatorError`` (a RuntimeError) for everything a GPU would report
badly or not at all.  NumPy arrays stand in for device pointers (C-contiguous, passed
by data pointer, writes visible); scalars must be NumPy scalars of the exact C++ type.
Every argument is checked against the kernel's real C++ parameter types (taken from
the compiled code) and a mismatch is a TypeError naming kernel, parameter, expected
type and what was given -- notably a Python ``float``/``int`` for a ``float``/``int``
parameter, which CuPy would silently pass as 8 bytes: use ``np.float32(...)`` /
``np.int32(...)`` on both paths.

Design
------
* Every CUDA thread of a block is a fiber (own 128 KiB stack, 64 KiB guard region) on
  one OS worker thread; fibers switch only at ``__syncthreads`` and warp operations
  (hand-written x86-64 switch, ~45 ns; ucontext elsewhere), so kernel code runs at
  native speed.  Blocks are spread over ``workers`` OS threads (default
  ``min(2, cpu_count)``, or ``$CUPYVAE_EMU_WORKERS``).
* Scheduling happens in passes: every runnable fiber, in ``thread_order`` ("forward",
  "reverse", or "random" seeded by ``seed`` and the block index), runs until it blocks;
  then complete warp operations, then the block barrier.  A missing ``__syncthreads``
  therefore produces wrong results under some order.  Blocks are also taken in that
  order.  Threads that returned count as arrived at barriers (as since Volta).
* A whole block runs on one worker, so static ``__shared__`` is ``thread_local`` and
  every ``extern __shared__`` name is aliased (generated assembly) to one per-worker
  227 KiB buffer.  At each block start ALL shared memory (static and dynamic) is
  poisoned with 0xFF bytes: NaN as float/double, -1 as integers.
* Warps are 32 lanes; a warp op completes when every live lane in its mask waits at
  the same op and source line (``__syncwarp``: any line).  Reading an exited or absent
  lane (e.g. lane 40 of a 33-thread block) yields poison: NaN for float/double,
  0xDEADBEEF / 0xDEADBEEFDEADBEEF for integers.

Diagnostics (each an EmulatorError naming kernel, block, threads and source lines)
---------------------------------------------------------------------------------
divergent ``__syncthreads`` (threads at different lines); divergent warp operation;
deadlock (e.g. thread 0 at a barrier while its warp waits in a shuffle); probable
deadlock when only warp ops progress for 2**22 passes while threads wait at a barrier
(``$CUPYVAE_EMU_LIVELOCK_LIMIT``); ``__trap()``; SIGSEGV/SIGBUS/SIGFPE/SIGILL inside a
kernel (out-of-bounds or null access, fiber stack overflow -- raise
``$CUPYVAE_EMU_STACK_KB`` --, integer division by zero) instead of a dead process;
bad launch configuration (block > 1024 threads or dims > (1024, 1024, 64), grid dims
> (2**31-1, 65535, 65535), shared_mem > 227 KiB); g++ errors with the full log.
Not detected: races that happen to give the right answer under every order, spin-waits
on memory without a barrier or warp op (they hang), out-of-bounds accesses that land in
mapped memory, inter-block spin-waits.

Supported CUDA subset (the shim ``cuda_emu.h`` provides it; no system headers)
----------------------------------------------------------------------------
``extern "C" __global__`` kernels (also inside ``extern "C" {}`` and namespaces; NOT
templates/name expressions), ``__device__ __host__ __forceinline__ __noinline__
__restrict__ __launch_bounds__(...) (ignored) __align__ __constant__ (plain global)``,
``threadIdx blockIdx blockDim gridDim`` (uint3/dim3), ``warpSize``, static and
``extern __shared__`` arrays, ``__syncthreads[_count|_and|_or]``, ``__syncwarp``,
``__shfl[_up|_down|_xor]_sync`` (4/8-byte types; width optional), ``__ballot_sync
__any_sync __all_sync __activemask __reduce_{add,min,max,and,or,xor}_sync``,
``atomicAdd`` (int, unsigned, long long, unsigned long long, float, double),
``atomicSub/Exch/Min/Max/And/Or/Xor/CAS`` (integers; Exch also float), ``atomicInc/Dec``,
``__threadfence[_block]``, ``__ldg``, vector types int2/3/4 uint2/3/4 float2/3/4 double2
longlong2 ulonglong2 + ``make_*``, ``__umulhi __mulhi __umul64hi __popc[ll] __clz[ll]
__ffs[ll] __brev[ll] __funnelshift_l/r``, ``__float_as_uint __uint_as_float
__float_as_int __int_as_float __double_as_longlong __longlong_as_double``, float/int
conversion intrinsics (``__float2int_rn`` ...), libm float and double math (exp log
log1p expm1 exp2 exp10 log2 log10 sin cos tan sincos asin acos atan atan2 sinh cosh tanh
asinh acosh atanh sqrt rsqrt cbrt pow fabs fmax fmin fmod floor ceil trunc round rint fma
erf erfc erfinv erfcinv normcdf normcdfinv lgamma tgamma hypot copysign ldexp ...) with
CUDA's C++ float overloads, ``min/max`` overloads, ``isnan/isinf/isfinite``,
``__expf __logf __fdividef __saturatef __sinf __cosf __powf __f*_rn``, ``INFINITY NAN``,
``printf``.  Kernel parameters: pointers to float, double, bool, (un)signed
char/short/int/long/long long, float2/4 double2 int2/4 uint2/4, void*; scalars of the
same arithmetic types.  ``__CUDA_ARCH__`` is 800, or taken from ``-arch``;
``__CUEMU__`` and ``CUPYVAE_EMULATOR`` are defined on the emulator only.
Not supported: template kernels, struct/vector-by-value parameters, half/bfloat16,
cooperative groups, inline PTX, textures/surfaces, dynamic parallelism, ``clock()``,
``__nanosleep``, C++ standard headers.

Building and caching
--------------------
``g++ -std=c++20 -O2 -shared -fPIC -fno-extern-tls-init -ffp-contract=off
-fno-exceptions -fno-rtti -fno-strict-aliasing -fno-math-errno -fvisibility=hidden
-fstack-clash-protection -include cuda_emu.h`` (+ ``$CUPYVAE_EMU_CXXFLAGS``, compiler
``$CUPYVAE_EMU_CXX``).  The source is first preprocessed (``g++ -E``) to find the
kernels and ``extern __shared__`` names; launch glue is appended after the unchanged
source.  The fiber runtime is its own library, built once.  Results live in
``$CUPYVAE_CACHE`` or ``$XDG_CACHE_HOME/cupyvae`` or ``~/.cache/cupyvae`` (subfolder
``emulator/``), keyed by a hash of source, flags, shim, runtime and compiler version,
written atomically (temp file, fsync, ``os.replace``) so concurrent pytest workers don't
clash; modules are also memoized per (source, options) in-process.  Each library has a
JSON manifest beside it holding its SHA-256; it is loaded only when the digest matches,
and rebuilt when anything is missing, truncated, corrupt or swapped.  The cache folders
are created private (0700), and a folder that group or others can write to, or that
another user owns, is refused with an EmulatorError naming it.
Options: ``-D``/``--define-macro``, ``-U``, ``-I`` are passed through; NVRTC code
generation options (``-arch``, ``--use_fast_math``, ``-lineinfo``, ``-G``, ``-ftz``,
``-prec-div``, ``-fmad``, ``-std`` ...) are accepted and ignored; anything else raises.

Known numerical differences from a GPU
--------------------------------------
No FMA contraction (``-ffp-contract=off``; NVRTC contracts a*b+c by default);
``__expf``/``__logf``/``__fdividef``/``__sinf`` ... are exact libm calls on the CPU but
approximate on the GPU, and ``--use_fast_math``/``-ftz`` are ignored (denormals kept);
libm and CUDA math differ by a few ulp; float ``atomicAdd`` and reduction orders differ
(use ``workers=1`` for a deterministic block order).
"""
from ._build import clear_memory_cache
from ._core import EmulatedKernel, EmulatedModule
from ._errors import EmulatorError

__all__ = ["EmulatorError", "EmulatedModule", "EmulatedKernel", "clear_memory_cache"]
