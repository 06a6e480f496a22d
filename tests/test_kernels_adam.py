"""kernels/adam.cu adam_update against cupyvae.optim: the Adam class and the kernel-shaped
twin optim.adam_update, on every backend."""
import dataclasses

import numpy as np
import pytest

from cupyvae import optim
from cupyvae.cuda import ops
from cupyvae.cuda.launch import run, to_device, to_host

# Betas exact in float32 (and 1 - beta exact too), so the kernel's float32 scalars are the
# Adam class's float64 ones and only rounding separates them.
EXACT_BETAS = dict(beta1=0.875, beta2=1 - 2.0 ** -10)
DEFAULT_BETAS = dict(beta1=0.9, beta2=0.999)
LR, EPS = 1e-3, 1e-8
SIZES = [1, 3, 64, 4099]  # 1 and 3: only the scalar tail; 4099: float4 body + a 3-element tail

# m, v: the same multiply-adds, possibly FMA-contracted in the kernel: <= ~2 ulp per step of
# the terms' magnitude (M below), accumulated over <= 5 steps: 1e-6 is ~8 ulp.
MOMENT_RTOL = 1e-6
# p: the update's step size lr sqrt(c2) / c1 comes from expm1f / log1pf in the kernel (a few
# float32 ulp, <= ~5e-7 relative) against float64 pow in the class, and each step's
# p - update may round to a neighbouring float32: so 1e-6 of the summed |updates| plus one
# ulp of p per step.  A gradient or bias-correction bug of 0.1% is ~1e-6 of p: caught.
UPDATE_RTOL = 1e-6
# With the default betas the kernel's v differs from the class's by the float32 rounding
# of beta2: the kernel adds (1 - 0.999f) g^2 = 0.99998713e-3 g^2, the class adds
# float32(1 - 0.999) g^2 = 1.00000005e-3 g^2, a 1.29e-5 relative difference (measured:
# 1.32e-5 over 5 steps).  Each side divides by its own consistent c2 (1 - 0.999f^t vs
# 1 - 0.999^t), so v / c2 and the update agree to rounding (measured 1.5e-7 of the update
# sums), and m is off only by (1 - 0.9f) vs float32(0.1), 2.3e-7 relative.  2x margin on v:
V_DEFAULT_BETAS_RTOL = 2.6e-5


def adam_kernel(backend, p, g, m, v, counters, hyper, grid=None, offset=0):
    """Run adam_update on device copies; returns new (p, m, v) on the host.

    offset=1 places every buffer one float past a 16-byte boundary (the scalar path)."""
    def place(a):
        padded = to_device(np.concatenate([np.zeros(offset, np.float32), a]), backend)
        return padded[offset:]

    buffers = [place(a) for a in (p, g, m, v)]
    launch = ops.adam_update(*buffers, to_device(counters, backend), **hyper)
    if grid is not None:
        launch = dataclasses.replace(launch, grid=grid)
    run(launch, backend)
    p_d, g_d, m_d, v_d = (to_host(a) for a in buffers)
    np.testing.assert_array_equal(g_d, g, err_msg="g must be left untouched")
    return p_d, m_d, v_d


def make_state(n, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.normal(0, 1, n).astype(np.float32)
    m = rng.normal(0, 0.1, n).astype(np.float32)
    v = rng.random(n, dtype=np.float32) * 0.01
    return p, m, v


def make_grad(n, seed):
    g = np.random.default_rng(seed).normal(0, 1, n).astype(np.float32)
    g[::11] = 0.0
    return g


def assert_close(name, got, expected, bound):
    err = np.abs(got.astype(np.float64) - expected)
    bad = ~(err <= bound)
    if bad.any():
        i = int(np.argmax(np.where(bad, err / np.maximum(bound, 1e-300), 0)))
        raise AssertionError(f"{name}: {bad.sum()} of {bad.size} beyond tolerance; worst at [{i}]: "
                             f"got {got[i]!r}, expected {expected[i]!r}, |err| {err[i]:.3g} > "
                             f"bound {np.broadcast_to(bound, err.shape)[i]:.3g}")


def run_steps(backend, n, hyper, steps=5, start_step=0, offset=0, grid=None):
    """`steps` consecutive updates from zero moments, kernel against the Adam class,
    comparing p, m, v after every step."""
    p0 = make_state(n, seed=n)[0]
    reference = optim.Adam(lr=hyper["lr"], beta1=hyper["beta1"], beta2=hyper["beta2"],
                           eps=hyper["eps"], weight_decay=hyper["weight_decay"],
                           step_count=start_step)
    p_ref = p0.copy()
    p, m, v = p0.copy(), np.zeros(n, np.float32), np.zeros(n, np.float32)
    m_scale = np.zeros(n)     # the magnitude recursion of m: b1 M + (1 - b1) |g|
    update_sum = np.zeros(n)  # sum of |p update| so far
    for k in range(steps):
        g = make_grad(n, seed=1000 + k)
        counters = np.array([start_step + k, k], np.uint32)
        assert reference.step_count == counters[0]
        p, m, v = adam_kernel(backend, p, g, m, v, counters, hyper, grid=grid, offset=offset)
        before = p_ref.copy()
        reference.step(p_ref, g)
        g_eff = np.abs(g.astype(np.float64) + hyper["weight_decay"] * before)
        m_scale = hyper["beta1"] * m_scale + (1 - hyper["beta1"]) * g_eff
        update_sum += np.abs(p_ref.astype(np.float64) - before)
        yield k, (p, m, v), (p_ref, reference.m, reference.v), (m_scale, update_sum)


def check_step(k, got, expected, scales, v_rtol=MOMENT_RTOL):
    (p, m, v), (p_ref, m_ref, v_ref), (m_scale, update_sum) = got, expected, scales
    assert_close(f"m after step {k}", m, m_ref.astype(np.float64), MOMENT_RTOL * m_scale)
    assert_close(f"v after step {k}", v, v_ref.astype(np.float64), v_rtol * v_ref)
    assert_close(f"p after step {k}", p, p_ref.astype(np.float64),
                 UPDATE_RTOL * update_sum + (k + 1) * np.spacing(np.abs(p_ref)))


@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
@pytest.mark.parametrize("n", SIZES)
def test_consecutive_steps_match_adam_class(backend, n, weight_decay):
    hyper = dict(lr=LR, eps=EPS, weight_decay=weight_decay, **EXACT_BETAS)
    for k, got, expected, scales in run_steps(backend, n, hyper):
        check_step(k, got, expected, scales)


@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_default_betas_match_adam_class_to_their_float32_rounding(backend, weight_decay):
    hyper = dict(lr=LR, eps=EPS, weight_decay=weight_decay, **DEFAULT_BETAS)
    for k, got, expected, scales in run_steps(backend, 4099, hyper):
        check_step(k, got, expected, scales, v_rtol=V_DEFAULT_BETAS_RTOL)


@pytest.mark.parametrize("start_step", [1, 999, 10 ** 6])
def test_bias_correction_at_later_steps(backend, start_step):
    """c2 = 1 - b2^t away from t = 1 (1e-3 .. 0.6 .. 1): counters[0] sets t, nothing else."""
    hyper = dict(lr=LR, eps=EPS, weight_decay=0.0, **EXACT_BETAS)
    for k, got, expected, scales in run_steps(backend, 64, hyper, steps=2, start_step=start_step):
        check_step(k, got, expected, scales)


def test_unaligned_buffers_take_the_scalar_path(backend):
    """Buffers one float past a 16-byte boundary: no float4 access, same numbers."""
    hyper = dict(lr=LR, eps=EPS, weight_decay=1e-2, **EXACT_BETAS)
    for k, got, expected, scales in run_steps(backend, 1001, hyper, steps=2, offset=1):
        check_step(k, got, expected, scales)


def test_grid_stride_loop_covers_the_buffer(backend):
    """One block of 256 threads for 4099 elements: ~4 float4s per thread, then the tail."""
    hyper = dict(lr=LR, eps=EPS, weight_decay=0.0, **EXACT_BETAS)
    for k, got, expected, scales in run_steps(backend, 4099, hyper, steps=2, grid=(1,)):
        check_step(k, got, expected, scales)


@pytest.mark.parametrize("betas", [EXACT_BETAS, DEFAULT_BETAS, dict(beta1=0.0, beta2=0.5)])
@pytest.mark.parametrize("step", [0, 3, 100000])
def test_kernel_matches_kernel_shaped_twin(backend, betas, step):
    """optim.adam_update does the kernel's float32 arithmetic: agreement to rounding only
    (FMA contraction and the few-ulp bias corrections), for any betas, beta1 = 0 included."""
    n = 1003
    p, m, v = make_state(n, seed=step)
    g = make_grad(n, seed=step + 1)
    counters = np.array([step, 0], np.uint32)
    hyper = dict(lr=3e-3, eps=1e-6, weight_decay=1e-3, **betas)
    p_k, m_k, v_k = adam_kernel(backend, p, g, m, v, counters, hyper)
    p_t, m_t, v_t = p.copy(), m.copy(), v.copy()
    assert optim.adam_update(p_t, g, m_t, v_t, counters, **hyper) is None   # in place
    g_eff = np.abs(g.astype(np.float64) + hyper["weight_decay"] * p)
    b1, b2 = hyper["beta1"], hyper["beta2"]
    assert_close("m", m_k, m_t.astype(np.float64), MOMENT_RTOL * (b1 * np.abs(m) + (1 - b1) * g_eff))
    assert_close("v", v_k, v_t.astype(np.float64), MOMENT_RTOL * (b2 * v + (1 - b2) * g_eff ** 2))
    assert_close("p", p_k, p_t.astype(np.float64),
                 UPDATE_RTOL * np.abs(p_t.astype(np.float64) - p) + np.spacing(np.abs(p_t)))


def test_twin_matches_adam_class():
    """The twin against the class directly, float64 betas exact in float32."""
    n = 257
    p, _, _ = make_state(n, seed=4)
    reference = optim.Adam(lr=LR, eps=EPS, weight_decay=1e-2, **EXACT_BETAS)
    p_ref, p_t = p.copy(), p.copy()
    m_t, v_t = np.zeros(n, np.float32), np.zeros(n, np.float32)
    for k in range(3):
        g = make_grad(n, seed=k)
        optim.adam_update(p_t, g, m_t, v_t, np.array([k, 0], np.uint32), lr=LR, eps=EPS,
                          weight_decay=1e-2, **EXACT_BETAS)
        reference.step(p_ref, g)
    np.testing.assert_allclose(m_t, reference.m, rtol=1e-6, atol=1e-12, err_msg="m")
    np.testing.assert_allclose(v_t, reference.v, rtol=1e-6, atol=1e-12, err_msg="v")
    np.testing.assert_allclose(p_t - p, p_ref - p, rtol=1e-4, atol=4 * np.spacing(np.abs(p)).max(),
                               err_msg="p - p0")  # storage rounding of p: a few ulp of |p| <~ 4


def _args(n=8):
    return dict(p=np.zeros(n, np.float32), g=np.zeros(n, np.float32), m=np.zeros(n, np.float32),
                v=np.zeros(n, np.float32), counters=np.zeros(2, np.uint32), lr=1e-3, beta1=0.9,
                beta2=0.999, eps=1e-8, weight_decay=0.0)


def test_launch_arguments_have_exact_types():
    launch = ops.adam_update(**_args(4099))
    assert [type(a) for a in launch.args[5:]] == [np.int32] + [np.float32] * 5
    assert (launch.kernel, launch.entry) == ("adam", "adam_update")
    assert launch.grid == (5,) and launch.block == (256,)   # ceil(4099 / 4 / 256) blocks


@pytest.mark.parametrize("change, message", [
    (dict(g=np.zeros(9, np.float32)), r"g \(9,\)"),
    (dict(p=np.zeros((2, 4), np.float32)), r"flat .*\(2, 4\)"),
    (dict(v=np.zeros(8, np.float64)), "float32"),
    (dict(counters=np.zeros(3, np.uint32)), r"counters .*\(3,\)"),
    (dict(counters=np.zeros(2, np.int32)), "counters .*int32"),
    (dict(beta2=1.0), "beta2"),
    (dict(beta1=1 - 1e-9), "beta1"),   # rounds to 1.0 in float32
    (dict(lr=0.0), "lr"),
    (dict(weight_decay=-1.0), "weight_decay"),
])
def test_launch_rejects_bad_arguments(change, message):
    with pytest.raises(ValueError, match=message):
        ops.adam_update(**{**_args(), **change})
