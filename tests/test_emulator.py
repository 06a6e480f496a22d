"""Tests of the CPU CUDA emulator (cupyvae.emulator): the .cu kernels under
tests/emulator_kernels/ run unchanged on the CPU, and are also compiled with NVRTC
(when cuda-bindings is installed) to prove they are valid CUDA."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from cupyvae.emulator import EmulatedModule, EmulatorError, clear_memory_cache
from cupyvae.emulator import _build
from cupyvae.emulator.elementwise import ElementwiseSpec

KDIR = Path(__file__).parent / "emulator_kernels"
KERNEL_FILES = sorted(KDIR.glob("*.cu"))
ORDERS = ["forward", "reverse", "random"]


def src(name: str) -> str:
    return (KDIR / name).read_text()


def module(name: str, **kw) -> EmulatedModule:
    return EmulatedModule(src(name), **kw)


def line_of(name: str, marker: str) -> int:
    for i, line in enumerate(src(name).splitlines(), 1):
        if f"@{marker}" in line:
            return i
    raise AssertionError(f"marker @{marker} not in {name}")


def data(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(n).astype(np.float32)


# ------------------------------------------------------------------ reductions
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("block", [32, 33, 100, 256, 1024])
def test_shared_memory_tree_reduction(block, order):
    x = data(10_007)  # not a multiple of any block size
    grid = 7
    out = np.full(grid, -1.0, np.float32)
    module("reductions.cu", thread_order=order, seed=block).get_function("tree_reduce")(
        (grid,), (block,), (x, out, np.int32(x.size)))
    np.testing.assert_allclose(out.sum(dtype=np.float64), x.sum(dtype=np.float64), rtol=1e-5)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("block", [32, 64, 256, 1024])
@pytest.mark.parametrize("kernel", ["warp_reduce_xor", "warp_reduce_down"])
def test_warp_shuffle_reduction(kernel, block, order):
    x = data(5_003, seed=1)
    out = np.zeros(1, np.float32)
    module("reductions.cu", thread_order=order).get_function(kernel)(
        (5,), (block,), (x, out, np.int32(x.size)))
    np.testing.assert_allclose(out[0], x.sum(dtype=np.float64), rtol=1e-5)


@pytest.mark.parametrize("kernel", ["warp_reduce_xor", "warp_reduce_down"])
def test_partial_warp_shuffle_reads_poison(kernel):
    # 33 threads: warp 1 has a single live lane, so a full-width shuffle tree reads
    # absent lanes -> NaN poison (undefined behaviour on a GPU).
    x = data(1000)
    out = np.zeros(1, np.float32)
    module("reductions.cu").get_function(kernel)((2,), (33,), (x, out, np.int32(x.size)))
    assert np.isnan(out[0])


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("block", [32, 33, 100, 256, 1024])
def test_dynamic_shared_memory_reduction(block, order):
    x = data(20_001, seed=2)
    grid = 3
    out = np.zeros(grid, np.float32)
    module("reductions.cu", thread_order=order).get_function("dyn_block_reduce")(
        (grid,), (block,), (x, out, np.int32(x.size)), shared_mem=block * 4)
    np.testing.assert_allclose(out.sum(dtype=np.float64), x.sum(dtype=np.float64), rtol=1e-5)


@pytest.mark.parametrize("workers", [1, 2])
def test_dynamic_shared_memory_is_poisoned_at_every_block_start(workers):
    block, grid = 64, 6
    out = np.zeros(block * grid, np.float32)
    bits = np.zeros(block * grid, np.uint32)
    module("reductions.cu", workers=workers).get_function("dyn_read_before_write")(
        grid, block, (out, bits), shared_mem=block * 4)
    assert np.isnan(out).all()
    assert (bits == 0xFFFFFFFF).all()


def test_static_shared_memory_is_poisoned_too():
    out = np.zeros(256 * 4, np.float32)
    k = module("reductions.cu", workers=1).get_function("static_read_before_write")
    k(4, 256, (out,))
    k(4, 256, (out,))  # a second launch must not see the first one's writes
    assert np.isnan(out).all()


@pytest.mark.parametrize("workers", [1, 2])
def test_atomics_across_blocks(workers):
    n = 40_000
    x = (np.arange(n) % 997).astype(np.float32) / 997.0
    fsum = np.zeros(1, np.float32)
    count = np.zeros(1, np.int32)
    imax = np.full(1, -5, np.int32)
    usum = np.zeros(1, np.uint64)
    module("reductions.cu", workers=workers).get_function("atomics")(
        ((n + 255) // 256,), (256,), (x, fsum, count, imax, usum, np.int32(n)))
    assert count[0] == n
    assert usum[0] == n * (n - 1) // 2
    assert imax[0] == int(np.float32(996 / 997) * np.float32(1000))
    np.testing.assert_allclose(fsum[0], x.sum(dtype=np.float64), rtol=1e-4)


# ------------------------------------------------------------ 2-D / 3-D launches
@pytest.mark.parametrize("grid,block", [((3, 2, 2), (8, 4, 2)), ((2, 5), (16, 3)), (4, (33,))])
def test_multidimensional_index_map(grid, block):
    g = tuple(grid) if isinstance(grid, tuple) else (grid,)
    g = g + (1,) * (3 - len(g))
    b = tuple(block) + (1,) * (3 - len(block))
    nthreads = int(np.prod(g)) * int(np.prod(b))
    out = np.full((nthreads, 6), -1, np.int32)
    module("grid.cu", thread_order="random").get_function("index_map")(grid, block, (out,))
    tz, ty, tx = np.meshgrid(range(b[2]), range(b[1]), range(b[0]), indexing="ij")
    bz, by, bx = np.meshgrid(range(g[2]), range(g[1]), range(g[0]), indexing="ij")
    thr = np.stack([tx.ravel(), ty.ravel(), tz.ravel()], 1)
    blk = np.stack([bx.ravel(), by.ravel(), bz.ravel()], 1)
    expect = np.concatenate([np.tile(thr, (len(blk), 1)), np.repeat(blk, len(thr), 0)], 1)
    np.testing.assert_array_equal(out, expect)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("shape", [(70, 45), (32, 32), (1, 100)])
def test_tiled_transpose_2d(shape, order):
    rows, cols = shape
    a = np.arange(rows * cols, dtype=np.float32).reshape(rows, cols)
    out = np.zeros((cols, rows), np.float32)
    module("grid.cu", thread_order=order).get_function("transpose")(
        ((cols + 31) // 32, (rows + 31) // 32), (32, 8), (a, out, np.int32(rows), np.int32(cols)))
    np.testing.assert_array_equal(out, a.T)


def test_thread_order_controls_fiber_and_block_order():
    counter = np.zeros(1, np.int32)
    ticket = np.zeros(128, np.int32)
    got = {}
    for order in ORDERS:
        counter[0] = 0
        module("grid.cu", thread_order=order, seed=5).get_function("thread_tickets")(1, 64, (counter, ticket))
        got[order] = ticket.copy()
    np.testing.assert_array_equal(got["forward"], np.arange(128))
    np.testing.assert_array_equal(got["reverse"][:64], np.arange(64)[::-1])
    assert sorted(got["random"][:64]) == list(range(64)) and not (got["random"][:64] == np.arange(64)).all()
    # the random order is reshuffled after the barrier and is reproducible
    assert not (got["random"][64:] - 64 == got["random"][:64]).all()
    counter[0] = 0
    module("grid.cu", thread_order="random", seed=5).get_function("thread_tickets")(1, 64, (counter, ticket))
    np.testing.assert_array_equal(ticket, got["random"])

    bt = np.zeros(50, np.int32)
    for order, expect in [("forward", np.arange(50)), ("reverse", np.arange(50)[::-1])]:
        counter[0] = 0
        module("grid.cu", thread_order=order, workers=1).get_function("block_tickets")(50, 32, (counter, bt))
        np.testing.assert_array_equal(bt, expect)
    counter[0] = 0
    module("grid.cu", thread_order="random", workers=1).get_function("block_tickets")(50, 32, (counter, bt))
    assert sorted(bt) == list(range(50)) and not (bt == np.arange(50)).all()


# ------------------------------------------------------------- missing barriers
def test_missing_syncthreads_gives_wrong_results():
    x = data(5000, seed=3)
    n = np.int32(x.size)
    m = {o: module("reductions.cu", thread_order=o, seed=11) for o in ORDERS}
    # the buggy tree reduction: reverse order happens to hide the bug, random exposes it
    out = np.zeros(4, np.float32)
    m["random"].get_function("tree_reduce_missing_sync")(4, 256, (x, out, n))
    assert not np.isclose(out.sum(), x.sum(dtype=np.float64), rtol=1e-3)
    # the buggy stencil is wrong under reverse and random order; the correct one passes everywhere
    ref = np.convolve(np.pad(x, 1), [1, 2, 1], "valid").astype(np.float32)
    for order in ORDERS:
        y = np.zeros_like(x)
        m[order].get_function("stencil3")(((x.size + 127) // 128,), (128,), (x, y, n), shared_mem=130 * 4)
        np.testing.assert_allclose(y, ref, rtol=1e-6)
        if order != "forward":
            y = np.zeros_like(x)
            m[order].get_function("stencil3_missing_sync")(((x.size + 127) // 128,), (128,), (x, y, n),
                                                           shared_mem=130 * 4)
            assert not np.allclose(y, ref, rtol=1e-6, equal_nan=False)


# ------------------------------------------------------------------ diagnostics
@pytest.mark.parametrize("order", ORDERS)
def test_divergent_barrier_names_both_lines(order):
    out = np.zeros(64, np.float32)
    with pytest.raises(EmulatorError) as ei:
        module("diagnostics.cu", thread_order=order).get_function("divergent_barrier")(1, 64, (out,))
    msg = str(ei.value)
    assert "divergent __syncthreads" in msg and "divergent_barrier" in msg
    a, b = line_of("diagnostics.cu", "barrier-a"), line_of("diagnostics.cu", "barrier-b")
    assert f"threads 0-15 wait at __syncthreads (line {a})" in msg
    assert f"threads 16-63 wait at __syncthreads (line {b})" in msg


def test_barrier_vs_shuffle_deadlock():
    out = np.zeros(64, np.float32)
    with pytest.raises(EmulatorError, match="deadlock") as ei:
        module("diagnostics.cu").get_function("barrier_shuffle_deadlock")(1, 64, (out,))
    msg = str(ei.value)
    assert f"thread 0 waits at __syncthreads (line {line_of('diagnostics.cu', 'deadlock-bar')})" in msg
    assert f"threads 1-31 wait at __shfl_xor_sync (line {line_of('diagnostics.cu', 'deadlock-shfl')})" in msg


def test_spin_on_shuffle_while_others_wait_at_barrier(monkeypatch):
    monkeypatch.setenv("CUPYVAE_EMU_LIVELOCK_LIMIT", "2000")
    out = np.zeros(64, np.int32)
    with pytest.raises(EmulatorError, match="probable deadlock") as ei:
        module("diagnostics.cu").get_function("spin_on_shuffle")(1, 64, (out,))
    assert f"threads 32-63 wait at __syncthreads (line {line_of('diagnostics.cu', 'spin-bar')})" in str(ei.value)


def test_shuffle_from_exited_lane_is_poison():
    f = np.zeros(8, np.float32)
    i = np.zeros(8, np.int32)
    d = np.zeros(8, np.float64)
    module("diagnostics.cu").get_function("shuffle_from_exited")(1, 64, (f, i, d))
    np.testing.assert_array_equal(f[:4], [4, 5, 6, 7])
    np.testing.assert_array_equal(i[:4], [4, 5, 6, 7])
    np.testing.assert_array_equal(d[:4], [4, 5, 6, 7])
    assert np.isnan(f[4:]).all() and np.isnan(d[4:]).all()
    assert (i[4:].view(np.uint32) == 0xDEADBEEF).all()


def test_trap_and_faults_become_errors_not_crashes():
    out = np.zeros(64, np.float32)
    m = module("diagnostics.cu")
    with pytest.raises(EmulatorError, match=rf"thread \(3,0,0\): __trap\(\) called \(line "
                                            rf"{line_of('diagnostics.cu', 'trap')}\)"):
        m.get_function("traps")(1, 64, (out,))
    with pytest.raises(EmulatorError, match="invalid memory access"):
        m.get_function("write_through")(2, 64, (None,))  # NULL pointer
    with pytest.raises(EmulatorError, match="division by zero"):
        m.get_function("int_divide")(1, 32, (np.zeros(32, np.int32), np.int32(7)))
    m.get_function("write_through")(1, 64, (out,))  # the process and the emulator still work
    assert (out == 1).all()


def test_fiber_stack_overflow_is_reported():
    code = textwrap.dedent("""
        __device__ float deep(volatile float* p, int n) {
            volatile float big[2048];
            for (int i = 0; i < 2048; ++i) big[i] = p[0];
            return n ? deep(p, n - 1) + big[7] : big[3];
        }
        extern "C" __global__ void recurse(float* a, int n) { a[threadIdx.x] = deep(a, n); }
    """)
    a = np.zeros(32, np.float32)
    with pytest.raises(EmulatorError, match="stack overflow"):
        EmulatedModule(code, workers=2).get_function("recurse")(2, 32, (a, np.int32(1000)))
    EmulatedModule(code).get_function("recurse")(1, 32, (a, np.int32(2)))  # shallow recursion is fine


# -------------------------------------------------------------- argument checks
def test_argument_type_checks():
    k = module("reductions.cu").get_function("tree_reduce")
    assert k.param_types == ("const float*", "float*", "int")
    x, out = data(100), np.zeros(1, np.float32)
    with pytest.raises(TypeError) as ei:
        k(1, 32, (x.astype(np.float64), out, np.int32(100)))
    msg = str(ei.value)
    assert "tree_reduce" in msg and "argument 0 ('x')" in msg and "const float*" in msg and "float64" in msg
    with pytest.raises(TypeError, match=r"argument 2 \('n'\).*'int'.*Python int.*np\.int32\(100\)"):
        k(1, 32, (x, out, 100))
    with pytest.raises(TypeError, match=r"takes 3 argument\(s\) \(const float\* x, float\* out, int n\) "
                                        r"but 2 were given"):
        k(1, 32, (x, out))
    with pytest.raises(TypeError, match="not C-contiguous"):
        k(1, 32, (data(200)[::2], out, np.int32(100)))
    with pytest.raises(TypeError, match="read-only"):
        ro = np.zeros(1, np.float32)
        ro.flags.writeable = False
        k(1, 32, (x, ro, np.int32(100)))
    with pytest.raises(TypeError, match="numpy.int32 scalar.*got a numpy.int64 scalar"):
        k(1, 32, (x, out, np.int64(100)))
    ns = module("intrinsics.cu").get_function("ns_scale")
    with pytest.raises(TypeError, match=r"argument 1 \('f'\).*'double'.*Python float"):
        ns(1, 32, (x, 2.0, np.uint64(100)))
    with pytest.raises(TypeError, match=r"'int\*' and needs.*int32.*dtype int64"):
        module("reductions.cu").get_function("atomics")(
            1, 32, (x, out, np.zeros(1, np.int64), np.zeros(1, np.int32), np.zeros(1, np.uint64), np.int32(1)))


def test_float_parameter_refuses_python_float():
    code = 'extern "C" __global__ void fill(float* y, float v, int n) { if ((int)threadIdx.x < n) y[threadIdx.x] = v; }'
    k = EmulatedModule(code).get_function("fill")
    y = np.zeros(8, np.float32)
    with pytest.raises(TypeError, match=r"argument 1 \('v'\) has C\+\+ type 'float'.*8-byte double.*np\.float32"):
        k(1, 8, (y, 2.5, np.int32(8)))
    k(1, 8, (y, np.float32(2.5), np.int32(8)))
    assert (y == 2.5).all()


def test_launch_configuration_errors():
    k = module("reductions.cu").get_function("tree_reduce")
    args = (data(10), np.zeros(1, np.float32), np.int32(10))
    for block in [1025, (1, 1, 65), (64, 32), 0, (1, 2, 3, 4)]:
        with pytest.raises(EmulatorError):
            k(1, block, args)
    with pytest.raises(EmulatorError, match="227 KiB"):
        k(1, 32, args, shared_mem=227 * 1024 + 1)
    with pytest.raises(EmulatorError):
        k((1, 70000), 32, args)
    with pytest.raises(ValueError):
        module("reductions.cu", thread_order="sideways")


def test_unknown_and_template_kernels():
    m = module("intrinsics.cu")
    with pytest.raises(EmulatorError, match="no kernel named 'nope'.*vec_add4"):
        m.get_function("nope")
    with pytest.raises(EmulatorError, match="template"):
        m.get_function("templated")


# ------------------------------------------------------------------ intrinsics
def test_warp_and_block_intrinsics():
    out = np.zeros(256, np.int32)
    fo = np.zeros(32, np.float32)
    module("intrinsics.cu", thread_order="random").get_function("warp_intrinsics")(1, 32, (out, fo))
    t = np.arange(32)
    np.testing.assert_array_equal(out[:32], (t + 1) % 32 & 1)
    assert (out[32:64] == 0b11111).all()
    assert (out[64:96] == 3).all()
    assert (out[96:128] == 11).all()
    np.testing.assert_array_equal(out[128:160], np.cumsum(t))
    assert (out[160:192] == 496 + 31000).all()
    seg = t % 8
    np.testing.assert_array_equal(fo, np.where(seg + 2 < 8, t + 2, t) * 0.5)
    np.testing.assert_array_equal(out[192:224], (t & ~3) | ((t & 3) ^ 3))
    assert (out[224:256] == 1).all()


def test_integer_intrinsics():
    a = np.array([0, 1, 2, 3, 0x80000000, 0xFFFFFFFF, 12345, 0x0F0F0000] * 4, np.uint32)
    out = np.zeros((a.size, 8), np.uint32)
    module("intrinsics.cu").get_function("int_intrinsics")(1, a.size, (a, out))
    v = a.astype(np.uint64)
    np.testing.assert_array_equal(out[:, 0], (v * 0x9E3779B9) >> 32)
    np.testing.assert_array_equal(out[:, 1], [bin(int(q)).count("1") for q in a])
    np.testing.assert_array_equal(out[:, 2], [32 - int(q).bit_length() for q in a])
    np.testing.assert_array_equal(out[:, 3], [(int(q) & -int(q)).bit_length() for q in a])
    np.testing.assert_array_equal(out[:, 4], [int(f"{int(q):032b}"[::-1], 2) for q in a])
    np.testing.assert_array_equal(out[:, 5], a)
    np.testing.assert_array_equal(out[:, 6], a)
    np.testing.assert_array_equal(out[:, 7].view(np.float32), np.clip(a & 0xFF, 10, 200).astype(np.float32))


def test_math_functions_match_numpy():
    scipy_special = pytest.importorskip("scipy.special")
    x = np.linspace(-0.99, 0.99, 301).astype(np.float32)
    out = np.zeros((x.size, 16), np.float32)
    module("intrinsics.cu").get_function("math_funcs")((x.size + 127) // 128, 128, (x, out, np.int32(x.size)))
    d = x.astype(np.float64)
    expect = [np.exp(d), np.log(d + 2), np.log1p(d), np.expm1(d), np.sin(d), np.cos(d), np.sqrt(d + 1),
              1 / np.sqrt(d + 1.5), np.tanh(d), (d + 1) ** 1.5, scipy_special.erf(d), scipy_special.erfinv(d),
              2 * d + 1, np.maximum(d, 0) + 2 * np.minimum(d, 0) + np.abs(d),
              np.floor(x * np.float32(10)) + np.ceil(x * np.float32(10)), np.clip(d, 0, 1) + np.exp(d) - d / 2]
    for j, e in enumerate(expect):
        np.testing.assert_allclose(out[:, j], e, rtol=2e-6, atol=2e-6, err_msg=f"column {j}")


def test_vector_types_namespaces_and_extern_c_blocks():
    m = module("intrinsics.cu")
    a, b = data(64).reshape(16, 4), data(64, 1).reshape(16, 4)
    c = np.zeros_like(a)
    m.get_function("vec_add4")(1, 32, (a, b, c, np.int32(16)))
    np.testing.assert_array_equal(c, a + b)
    x = data(100)
    y = x.copy()
    m.get_function("ns_scale")(4, 32, (y, np.float64(1.5), np.uint64(100)))
    np.testing.assert_allclose(y, x * 3, rtol=1e-6)


# ------------------------------------------------------------ build and cache
def test_compile_error_contains_gxx_log():
    with pytest.raises(EmulatorError) as ei:
        EmulatedModule('extern "C" __global__ void broken(float* a) { a[0] = undefined_thing_xyz; }')
    msg = str(ei.value)
    assert "undefined_thing_xyz" in msg and "error" in msg and "kernel.cu:1" in msg


def test_options_passthrough_and_rejection():
    code = 'extern "C" __global__ void k(int* o) { o[threadIdx.x] = SCALE * __CUDA_ARCH__; }'
    o = np.zeros(4, np.int32)
    EmulatedModule(code, options=("-DSCALE=3", "--gpu-architecture=sm_90", "--use_fast_math", "-std=c++17")
                   ).get_function("k")(1, 4, (o,))
    assert (o == 2700).all()
    EmulatedModule(code, options=("--define-macro=SCALE=2",)).get_function("k")(1, 4, (o,))
    assert (o == 1600).all()
    with pytest.raises(EmulatorError, match="not supported"):
        EmulatedModule(code, options=("-DSCALE=1", "--frobnicate"))


def test_so_cache_is_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("CUPYVAE_CACHE", str(tmp_path))
    code = src("grid.cu") + f"\n// cache test {time.time_ns()}\n"
    before = dict(_build.STATS)
    EmulatedModule(code)
    assert _build.STATS["compiles"] == before["compiles"] + 1
    assert list(tmp_path.glob("emulator/*/*.so"))
    EmulatedModule(code, thread_order="random")  # memoized in-process
    assert _build.STATS["memory_hits"] > before["memory_hits"]
    clear_memory_cache()
    t0 = time.perf_counter()
    m = EmulatedModule(code)  # from the on-disk cache: no g++ run
    elapsed = time.perf_counter() - t0
    assert _build.STATS["compiles"] == before["compiles"] + 1
    assert _build.STATS["disk_hits"] == before["disk_hits"] + 1
    assert elapsed < 0.5
    out = np.zeros((4 * 32, 6), np.int32)
    m.get_function("index_map")(4, 32, (out,))
    assert out[-1].tolist() == [31, 0, 0, 3, 0, 0]
    # different options -> a different cache entry
    EmulatedModule(code, options=("-DUNUSED=1",))
    assert _build.STATS["compiles"] == before["compiles"] + 2


def test_ucontext_fallback_runtime(tmp_path):
    """The portable ucontext fiber switch (used off x86-64) gives the same results."""
    script = textwrap.dedent(f"""
        import numpy as np
        from cupyvae.emulator import EmulatedModule, EmulatorError
        m = EmulatedModule(open({str(KDIR / 'reductions.cu')!r}).read(), thread_order="random")
        x = np.arange(3000, dtype=np.float32)
        out = np.zeros(3, np.float32)
        m.get_function("dyn_block_reduce")(3, 100, (x, out, np.int32(x.size)), shared_mem=400)
        assert abs(out.sum() - x.sum()) < 1e-3 * x.sum(), out
        d = EmulatedModule(open({str(KDIR / 'diagnostics.cu')!r}).read())
        try:
            d.get_function("divergent_barrier")(1, 64, (np.zeros(64, np.float32),))
        except EmulatorError as e:
            assert "divergent" in str(e)
        else:
            raise SystemExit("no error")
        print("ucontext ok")
    """)
    env = dict(os.environ, CUPYVAE_EMU_RUNTIME_CXXFLAGS="-DCUEMU_USE_UCONTEXT")
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "ucontext ok" in r.stdout, r.stdout + r.stderr


# ------------------------------------------------------------------ elementwise
def test_elementwise_spec_emulated():
    spec = ElementwiseSpec("float32 x, float32 a, raw float32 t", "float32 z, int32 idx",
                           "z = sq(a * x) + t[i % 3] + _n; idx = (int)i", "ew_test",
                           preamble="__device__ inline float sq(float v) { return v * v; }")
    f = spec.emulated(thread_order="random")
    x = data(1001)
    t = np.array([1, 2, 3], np.float32)
    z, idx = f(x, 2.0, t)  # scalar input (cast to float32, like CuPy)
    ref = (2 * x) ** 2 + t[np.arange(x.size) % 3] + x.size
    np.testing.assert_allclose(z, ref, rtol=1e-6)
    np.testing.assert_array_equal(idx, np.arange(x.size))
    z2, idx2 = np.empty_like(z), np.empty_like(idx)
    res = f(x, np.full_like(x, 2.0), t, z2, idx2)  # array input, outputs given
    assert res[0] is z2 and res[1] is idx2
    np.testing.assert_allclose(z2, ref, rtol=1e-6)
    with pytest.raises(ValueError, match="broadcast"):
        f(x, np.ones(5, np.float32), t)
    with pytest.raises(TypeError, match="dtype float32"):
        f(x.astype(np.float64), 2.0, t)
    assert "ind" not in spec.cuda_source()
    spec2 = ElementwiseSpec("int32 x", "int32 y", "y = x + (int)_ind.size()", "ew_ind")
    np.testing.assert_array_equal(spec2.emulated()(np.arange(10, dtype=np.int32)), np.arange(10) + 10)
    assert spec2.emulated()(np.zeros(0, np.int32)).shape == (0,)


def _nvrtc_compile(code: str, arch: str, name: str = "k.cu") -> tuple[bool, str]:
    nvrtc = pytest.importorskip("cuda.bindings.nvrtc")
    err, prog = nvrtc.nvrtcCreateProgram(code.encode(), name.encode(), 0, [], [])
    assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS
    try:
        (res,) = nvrtc.nvrtcCompileProgram(prog, 1, [f"--gpu-architecture={arch}".encode()])
        _, size = nvrtc.nvrtcGetProgramLogSize(prog)
        log = b" " * size
        nvrtc.nvrtcGetProgramLog(prog, log)
        return res == nvrtc.nvrtcResult.NVRTC_SUCCESS, log.decode(errors="replace").strip("\0 \n")
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def test_elementwise_generated_source_compiles_with_nvrtc():
    spec = ElementwiseSpec("float32 x, float32 a, raw float32 t", "float32 z", "z = a * x + t[0] + _n",
                           "ew_nvrtc", preamble="__device__ inline float id(float v) { return v; }")
    for scalars in [(), ("a",)]:
        ok, log = _nvrtc_compile(spec.cuda_source(scalars), "sm_90")
        assert ok, log


def test_elementwise_cupy_kernel_is_lazy():
    spec = ElementwiseSpec("float32 x", "float32 y", "y = 2 * x + _n", "ew_cupy")
    try:
        import cupy  # noqa: F401
    except Exception:
        with pytest.raises(ImportError):
            spec.cupy_kernel()
    else:
        assert spec.cupy_kernel() is not None


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("path", KERNEL_FILES, ids=[p.name for p in KERNEL_FILES])
def test_test_kernels_are_valid_cuda(path, arch):
    ok, log = _nvrtc_compile(path.read_text(), arch, path.name)
    assert ok, log
    assert not re.search(r"\berror\b", log), log


def test_divergent_warp_operation():
    with pytest.raises(EmulatorError, match="divergent warp operation") as ei:
        module("diagnostics.cu").get_function("divergent_shuffle")(1, 32, (np.zeros(32, np.float32),))
    msg = str(ei.value)
    for marker in ("shfl-a", "shfl-b"):
        assert f"line {line_of('diagnostics.cu', marker)}" in msg


@pytest.mark.parametrize("order", ORDERS)
def test_partial_masks_and_syncwarp(order):
    out = np.zeros(32, np.int32)
    module("intrinsics.cu", thread_order=order).get_function("partial_masks")(1, 32, (out,))
    t = np.arange(32)
    np.testing.assert_array_equal(out, np.where(t < 16, 3, np.minimum(t + 1, 31)) + 32000)


def test_macro_generated_kernels_and_prototypes():
    m = module("intrinsics.cu")
    assert {"fill_u8", "fill_i64", "proto_only"} <= set(m.kernel_names)
    o8, o64 = np.zeros(300, np.uint8), np.zeros(300, np.int64)
    m.get_function("fill_u8")(3, 128, (o8, np.uint8(7), np.int32(300)))
    m.get_function("fill_i64")(3, 128, (o64, np.int64(-2**40), np.int32(300)))
    assert (o8 == 7).all() and (o64 == -2**40).all()
    with pytest.raises(TypeError, match="unsigned char"):
        m.get_function("fill_u8")(3, 128, (o8, np.int8(7), np.int32(300)))
    a = np.zeros(64, np.float32)
    m.get_function("proto_only")(1, 64, (a,))
    assert (a == 1).all()
