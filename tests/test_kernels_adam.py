"""The Adam ElementwiseKernel (kernels/adam.cuh through cupyvae.cuda.ops.adam.ADAM_UPDATE)
against its NumPy twin cupyvae.optim.adam_update (bit for bit), and the twin against a
textbook float64 Adam; the subnormal flushes of m and v."""
import numpy as np
import pytest

from cupyvae import optim, schedules
from cupyvae.cuda import ops
from cupyvae.cuda.launch import ElementwiseLaunch, run, to_device, to_host
from cupyvae.schedules import SCHED_CLIP_SCALE, SCHED_SIZE, hyper_array, schedule_step
from cupyvae.training import TrainingOptions

# Betas exact in float32 (and 1 - beta too), so the kernel's float32 constants are the
# textbook's float64 ones and only rounding separates them; and the defaults.
EXACT_BETAS = dict(beta1=0.875, beta2=1 - 2.0 ** -10)
DEFAULT_BETAS = dict(beta1=0.9, beta2=0.999)
SIZES = [1, 3, 257, 4099]      # 1, 3: less than a warp; 257, 4099: not block multiples
TINY = np.finfo(np.float32).tiny


def sched_of(step, lr=1e-3, weight_decay=0.0, eps=1e-8, clip_scale=1.0, **betas):
    options = TrainingOptions(lr=lr, weight_decay=weight_decay)
    hyper = hyper_array(options, optim.Adam(lr=lr, eps=eps, **(betas or DEFAULT_BETAS)))
    sched = schedule_step(np.array([step, 0], np.uint32), hyper)
    sched[SCHED_CLIP_SCALE] = clip_scale
    return sched


def make_state(n, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.normal(0, 1, n).astype(np.float32)
    m = rng.normal(0, 0.1, n).astype(np.float32)
    v = rng.random(n, dtype=np.float32) * 0.01
    g = rng.normal(0, 1, n).astype(np.float32)
    g[::11] = 0.0
    return p, m, v, g


def kernel_update(backend, p, g, m, v, sched, function=None):
    """adam_update on device copies; returns the new (p, m, v) on the host."""
    buffers = [to_device(a.copy(), backend) for a in (p, g, m, v)]   # never the caller's arrays
    launch = ops.adam_update(*buffers, to_device(sched, backend))
    if function is None:
        run(launch, backend)
    else:
        function(*launch.args)
    p_d, g_d, m_d, v_d = (np.array(to_host(a)) for a in buffers)
    np.testing.assert_array_equal(g_d, g, err_msg="g must be left untouched")
    return p_d, m_d, v_d


def twin_update(p, g, m, v, sched):
    p, m, v = p.copy(), m.copy(), v.copy()
    assert optim.adam_update(p, g, m, v, sched) is None    # in place
    return p, m, v


def assert_same_bits(got, want, names=("p", "m", "v"), what=""):
    for name, a, b in zip(names, got, want):
        differ = a.view(np.uint32) != b.view(np.uint32)
        if differ.any():
            i = int(np.argmax(differ))
            raise AssertionError(f"{what} {name}: {int(differ.sum())} of {a.size} differ; first at "
                                 f"[{i}]: kernel {a[i]!r} vs twin {b[i]!r}")


@pytest.mark.parametrize("clip_scale", [1.0, 0.37])
@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
@pytest.mark.parametrize("n", SIZES)
def test_kernel_equals_twin_bit_for_bit(backend, n, weight_decay, clip_scale):
    """Same float32 operations in the same order: the emulator gives the twin's very bits.
    (On a GPU NVRTC may contract a*b + c into an FMA, an ulp apart: see the GPU parity test
    of the gpu-path work; here 'cuda' is held to the same bits, which holds with --fmad=false.)"""
    p, m, v, g = make_state(n, seed=n)
    sched = sched_of(step=3, weight_decay=weight_decay, clip_scale=clip_scale)
    got = kernel_update(backend, p, g, m, v, sched)
    assert_same_bits(got, twin_update(p, g, m, v, sched), what=f"n={n}")


@pytest.mark.parametrize("betas", [EXACT_BETAS, DEFAULT_BETAS, dict(beta1=0.0, beta2=0.5)])
@pytest.mark.parametrize("step", [0, 999, 2 ** 32 - 1])
def test_kernel_equals_twin_for_any_betas_and_step(backend, betas, step):
    p, m, v, g = make_state(1003, seed=step % 97)
    sched = sched_of(step=step, lr=3e-3, weight_decay=1e-3, eps=1e-6, **betas)
    assert_same_bits(kernel_update(backend, p, g, m, v, sched), twin_update(p, g, m, v, sched))


def test_kernel_equals_twin_under_every_thread_order():
    """Elements are independent: the emulator's thread orders must not change a bit."""
    p, m, v, g = make_state(777, seed=5)
    sched = sched_of(step=2, weight_decay=1e-3, clip_scale=0.5)
    want = twin_update(p, g, m, v, sched)
    for order in ("reverse", "random"):
        got = kernel_update("emulated", p, g, m, v, sched,
                            function=ops.ADAM_UPDATE.emulated(thread_order=order, seed=3))
        assert_same_bits(got, want, what=order)


@pytest.mark.parametrize("extreme", [1e18, -1e18, 1e-30, 0.0])
def test_hostile_gradients(backend, extreme):
    """Huge (g^2 still finite in float32: 1e36 < 3.4e38), tiny and zero gradients: kernel
    and twin agree bit for bit and stay finite."""
    p, m, v, _ = make_state(300, seed=7)
    g = np.full(300, extreme, np.float32)
    g[::2] = -g[::2]
    sched = sched_of(step=0, weight_decay=1e-2)
    got = kernel_update(backend, p, g, m, v, sched)
    assert_same_bits(got, twin_update(p, g, m, v, sched))
    assert all(np.isfinite(a).all() for a in got)


# --------------------------------------------------------------------- the twin is Adam
def textbook_adam(p0, grads, lr, beta1, beta2, eps, weight_decay):
    """Kingma & Ba 2015, Algorithm 1, in float64 (with L2 decay added to the gradient), with
    the float32 betas the kernel multiplies by; yields p after each step."""
    b1, b2 = float(np.float32(beta1)), float(np.float32(beta2))
    one_minus_b1 = float(np.float32(1) - np.float32(beta1))
    one_minus_b2 = float(np.float32(1) - np.float32(beta2))
    p = p0.astype(np.float64)
    m, v = np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        g = g + weight_decay * p
        m = b1 * m + one_minus_b1 * g
        v = b2 * v + one_minus_b2 * g * g
        p = p - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
        yield p, m, v


@pytest.mark.parametrize("betas", [EXACT_BETAS, DEFAULT_BETAS])
@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_twin_follows_textbook_adam(betas, weight_decay):
    """Five steps from zero moments.  Tolerances: m and v are the same multiply-adds, a few
    float32 roundings per step of the magnitudes added (M = b1 M + (1 - b1)|g| for m, which
    may cancel; v never cancels): 1e-6 of them is ~8 ulp.  p moves by the sum of the
    updates, each within ~1e-6 relative (step_size and eps_hat are rounded once from double,
    the division and sqrt once each), plus one rounding of p per step.  A 0.1% error in a
    bias correction or a gradient would be ~1e-3 of the update: caught."""
    n, lr, eps = 4099, 1e-3, 1e-8
    p0, _, _, _ = make_state(n, seed=1)
    grads = [make_state(n, seed=100 + k)[3] for k in range(5)]
    p, m, v = p0.copy(), np.zeros(n, np.float32), np.zeros(n, np.float32)
    moved, m_scale = np.zeros(n), np.zeros(n)
    before = p0.astype(np.float64)
    for k, (p_ref, m_ref, v_ref) in enumerate(textbook_adam(p0, grads, lr, eps=eps,
                                                            weight_decay=weight_decay, **betas)):
        sched = sched_of(step=k, lr=lr, eps=eps, weight_decay=weight_decay, **betas)
        optim.adam_update(p, grads[k], m, v, sched)
        m_scale = betas["beta1"] * m_scale + (1 - betas["beta1"]) * np.abs(
            grads[k] + weight_decay * before)
        moved += np.abs(p_ref - before)
        before = p_ref
        assert (np.abs(m - m_ref) <= 1e-6 * m_scale).all(), f"m, step {k}"
        np.testing.assert_allclose(v, v_ref, rtol=1e-6, atol=1e-14, err_msg=f"v, step {k}")
        err = np.abs(p.astype(np.float64) - p_ref)
        bound = 1e-6 * moved + (k + 1) * np.spacing(np.abs(p_ref).astype(np.float32))
        assert (err <= bound).all(), f"p, step {k}: max err {err.max():.3g}"


# --------------------------------------------------------------------- subnormals (issue #11)
def test_zero_gradients_flush_m_and_v_to_exactly_zero_and_keep_them_there(backend):
    """Entries whose gradient is always exactly 0 decay as b1^k (m) and b2^k (v).  Without
    the flush m would go subnormal after ~700 steps from 1e-7; with it, m is exactly 0 from
    the step it falls below 1e-30 on, v from below 1e-36, never subnormal in between, and
    they stay 0 (0 * b + 0 = 0).  The kernel flushes at the very same step as the twin."""
    n, steps = 64, 700
    p, _, _, _ = make_state(n, seed=2)
    m = np.geomspace(1e-7, 1e-29, n).astype(np.float32)
    v0 = np.geomspace(1e-33, 1e-37, n)
    v = v0.astype(np.float32)
    g = np.zeros(n, np.float32)
    m_dev, v_dev, p_dev = m.copy(), v.copy(), p.copy()
    first_zero = np.full(n, -1)
    for step in range(steps):
        sched = sched_of(step=step)
        p, m, v = twin_update(p, g, m, v, sched)
        p_dev, m_dev, v_dev = kernel_update(backend, p_dev, g, m_dev, v_dev, sched)
        for name, a in (("m", m), ("v", v), ("kernel m", m_dev), ("kernel v", v_dev)):
            assert not ((a != 0) & (np.abs(a) < TINY)).any(), f"{name} subnormal at step {step}"
        first_zero[(first_zero < 0) & (m == 0)] = step
        assert (m[first_zero >= 0] == 0).all(), "a flushed m must stay exactly 0"
        if step % 50 == 0 or step == steps - 1:
            assert_same_bits((p_dev, m_dev, v_dev), (p, m, v), what=f"step {step}")
    assert (m == 0).all(), "every m decays below 1e-30 within 700 steps of b1 = 0.9"
    assert first_zero[0] > first_zero[-1] > 0, "larger m must flush later"
    # v decays by 0.999 per step: an entry is 0 now exactly if v0 0.999^k fell below 1e-36
    # (entries within 1% of the boundary are left out: float32 decay vs this float64 estimate).
    decayed = v0 * 0.999 ** steps
    clear = np.abs(decayed / 1e-36 - 1) > 0.01
    np.testing.assert_array_equal((v == 0)[clear], (decayed < 1e-36)[clear])
    assert 0 < (v == 0).sum() < n and (v[v != 0] >= np.float32(1e-36)).all()


def test_flush_thresholds_match_the_kernel_header():
    text = ops.ADAM_UPDATE.preamble
    assert "#define ADAM_M_FLUSH 1e-30f" in text and "#define ADAM_V_FLUSH 1e-36f" in text
    assert optim.M_FLUSH == np.float32(1e-30) and optim.V_FLUSH == np.float32(1e-36)


def test_a_flushed_v_changes_no_bit_of_the_update():
    """The docstring's claim: with v < 1e-36, sqrt(v) < half an ulp of eps_hat, so the update
    of p is the same whether v is flushed or not (default eps and betas, any step)."""
    n = 1000
    rng = np.random.default_rng(3)
    p = rng.normal(0, 1, n).astype(np.float32)
    m = rng.normal(0, 1e-3, n).astype(np.float32)
    v_small = (rng.random(n) * 1e-36).astype(np.float32)     # below the flush, some subnormal
    for step in (0, 10, 10 ** 6):
        sched = sched_of(step=step)
        eps_hat, step_size = sched[schedules.SCHED_EPS_HAT], sched[schedules.SCHED_STEP_SIZE]
        kept = p - step_size * (m / (np.sqrt(v_small) + eps_hat))
        flushed = p - step_size * (m / (np.float32(0) + eps_hat))
        np.testing.assert_array_equal(kept, flushed, err_msg=f"step {step}")


# --------------------------------------------------------------------- the launch
def test_launch_is_an_elementwise_launch_of_the_spec():
    n = 4099
    p, g, m, v = (np.zeros(n, np.float32) for _ in range(4))
    sched = np.zeros(SCHED_SIZE, np.float32)
    launch = ops.adam_update(p, g, m, v, sched)
    assert isinstance(launch, ElementwiseLaunch) and launch.spec is ops.ADAM_UPDATE
    assert launch.name == "elementwise.adam_update"
    assert launch.args[0] is g and launch.args[1] is sched and launch.args[2:] == (p, m, v)
    assert ops.elementwise_specs()["adam_update"] is ops.ADAM_UPDATE   # compiled by test_nvrtc
    # the hyperparameters are device data, not arguments: nothing scalar in the launch
    assert all(isinstance(a, np.ndarray) for a in launch.args)


def _args(n=8):
    return dict(p=np.zeros(n, np.float32), g=np.zeros(n, np.float32), m=np.zeros(n, np.float32),
                v=np.zeros(n, np.float32), sched=np.zeros(SCHED_SIZE, np.float32))


@pytest.mark.parametrize("change, message", [
    (dict(g=np.zeros(9, np.float32)), r"g \(9,\)"),
    (dict(p=np.zeros((2, 4), np.float32)), r"flat .*\(2, 4\)"),
    (dict(v=np.zeros(8, np.float64)), "v must be float32"),
    (dict(sched=np.zeros(3, np.float32)), r"sched must be a contiguous \(11,\) float32 array"),
    (dict(sched=np.zeros(SCHED_SIZE, np.float64)), "sched must be float32"),
    (dict(p=np.zeros(0, np.float32), g=np.zeros(0, np.float32), m=np.zeros(0, np.float32),
          v=np.zeros(0, np.float32)), "empty"),
])
def test_launch_rejects_bad_arguments(change, message):
    with pytest.raises(ValueError, match=message):
        ops.adam_update(**{**_args(), **change})


@pytest.mark.parametrize("bad, message", [
    (dict(beta1=1.0), "beta1"), (dict(beta2=1 - 1e-9), "beta2"),   # 1 - 1e-9 is 1.0 in float32
    (dict(eps=0.0), "eps"), (dict(eps=1e-50), "eps"), (dict(lr=0.0), "learning rate"),
    (dict(weight_decay=-1.0), "weight_decay"),
])
def test_adam_refuses_bad_constants(bad, message):
    with pytest.raises(ValueError, match=message):
        optim.Adam(**bad)


# --------------------------------------------------------------------- captured with the step
def test_the_update_is_recorded_in_every_step_of_the_emulated_graph():
    """Graph mode on the emulator records the step's bound launches as capture would: the
    elementwise update is one of them, once per step, after the RawKernels before it."""
    import cupyvae

    model = cupyvae.VAE((4, 5), latent_dim=2, hidden=(6,), device="emulated", execution="graph")
    model._executor.steps_per_graph = 3
    model.fit(np.random.default_rng(0).random((20, 4, 5)).astype(np.float32), epochs=1,
              batch_size=5)
    recorded = model._executor._steps.chunk
    names = [call.name for call in recorded.calls]
    assert recorded.steps == 3 and names.count("elementwise.adam_update") == 3
    per_step = len(names) // 3
    assert names[per_step - 3] == "elementwise.adam_update"    # then step_terms, end_step


gpu = pytest.mark.gpu


@gpu
def test_cuda_graph_captures_the_update_without_allocating():
    """The ElementwiseKernel inside CUDA stream capture, under the allocator that refuses
    any allocation (cupyvae.cuda.graph.capture): captured, replayed twice, the twin's bits."""
    from conftest import cuda_available
    if not cuda_available():
        pytest.skip("no CUDA GPU visible to CuPy")
    import cupy

    from cupyvae.cuda.graph import bind, capture

    p, m, v, g = make_state(4099, seed=9)
    sched = sched_of(step=3, weight_decay=1e-3, clip_scale=0.5)
    buffers = [cupy.asarray(a) for a in (p, g, m, v)]
    step = bind([ops.adam_update(*buffers, cupy.asarray(sched))], "cuda")
    step[0]()                                   # compiles and loads outside capture
    for buffer, host in zip(buffers, (p, g, m, v)):
        buffer.set(host)
    cupy.cuda.Device().synchronize()
    stream = cupy.cuda.Stream(non_blocking=True)
    replay = capture(step, 2, "cuda", stream)   # GraphCaptureError on any allocation
    np.testing.assert_array_equal(buffers[0].get(), p, "capture must not run the step")
    replay.launch()
    stream.synchronize()
    p2, m2, v2 = twin_update(p, g, m, v, sched)
    want = twin_update(p2, g, m2, v2, sched)
    assert_same_bits(tuple(buffers[i].get() for i in (0, 2, 3)), want, what="captured x2")
