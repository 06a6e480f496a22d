"""kernels/linear.cu (linear_forward, and linear_backward: dW, db and dx_pre in one launch)
against the NumPy twins in cupyvae.layers, on every backend and under every emulator thread
order; the deterministic split-K against the twins, against the single-pass GEMM, and under
every block completion order."""
import re

import numpy as np
import pytest

from cupyvae import layers
from cupyvae.cuda import ops
from cupyvae.cuda.graph import bind, capture, issue
from cupyvae.cuda.launch import run, to_device, to_host
from cupyvae.cuda.loader import load_source, module_from_source

from gradcheck import assert_grad_close, numeric_grad

ACTIVATIONS = layers.ACTIVATIONS.names()  # identity, relu, softplus, tanh
# (B, I, O): none of B, I, O a multiple of the 32 x 32 output tile or the 64-deep k stage,
# except (64, 64, 64) (exact tiles, one full k stage) and the degenerate (1, 1, 1); then the
# MNIST VAE's batch-100 layers and a batch of 1024 (16 k stages in linear_backward_weight).
# The emulator runs the whole file in a few seconds on 2 cores (largest case ~0.3 s).
SHAPES = [(1, 1, 1), (1, 784, 200), (3, 5, 7), (37, 65, 33), (100, 200, 2), (100, 2, 200),
          (64, 64, 64), (130, 17, 70), (100, 784, 200), (100, 200, 784), (1024, 65, 40)]

# Tolerances.  The reference runs in float64 on the same float32 inputs (its own error,
# ~1e-16, is negligible), so the kernel's error is its float32 arithmetic alone:
# * A float32 sum of n products, in ANY order and with or without FMA, is within
#   gamma_n ~ n u of the exact value relative to the sum of |products| (Higham, "Accuracy
#   and Stability of Numerical Algorithms", eq. 3.5), u = 2^-24.  So each dot product gets
#   the rigorous bound sum_bound(n, |A| @ |B|) = (n + 1) u (|A| @ |B|), n = K terms (+1 for
#   the bias), +1 for the final rounding.  This is order-independent: it holds for the
#   kernel's split-K order, for the emulator and for the GPU alike.  It is still tight
#   enough to catch a dropped or doubled term (error ~ (|A| @ |B|) / K, above the bound
#   K u (|A| @ |B|) whenever K < 4096; K <= 1024 here).
# * The activation and its derivative are 1-Lipschitz (relu, tanh, softplus: |act'| <= 1),
#   so the sum's error passes through at most unchanged, and they add their own rounding:
#   CUDA's tanhf/expf/log1pf/expm1f are <= 2 ulp each and the emulator uses the host libm,
#   so FUNCTION_RTOL = 2e-6 (~17-34 ulp) covers the composed functions with margin while
#   an approximate form (1 - expf(-y) for small y, a non-FMA 1 - y*y near |y| = 1) fails.
UNIT_ROUNDOFF = 2.0 ** -24
FUNCTION_RTOL = 2e-6


def sum_bound(n_terms: int, magnitude: np.ndarray) -> np.ndarray:
    """Worst-case float32 error of an n-term dot product with sum of |terms| `magnitude`."""
    return (n_terms + 1) * UNIT_ROUNDOFF * magnitude


def assert_within(name: str, got: np.ndarray, ref: np.ndarray, bound: np.ndarray) -> None:
    """|got - ref| <= bound elementwise (NaN fails); the message says where and by how much."""
    got = np.asarray(got)
    assert got.shape == ref.shape, f"{name}: shape {got.shape}, expected {ref.shape}"
    err = np.abs(got.astype(np.float64) - ref)
    bad = ~(err <= bound)
    if bad.any():
        with np.errstate(divide="ignore", invalid="ignore"):
            excess = np.where(bad, np.nan_to_num(err / bound, nan=np.inf), -1.0)  # NaN: worst
        worst = np.unravel_index(int(excess.argmax()), err.shape)
        first = [tuple(int(i) for i in index) for index in np.argwhere(bad)[:5]]
        details = "\n".join(f"  {name}{index}: got {got[index]!r}, expected {ref[index]!r}, "
                            f"|err| {err[index]:.3g} > bound {bound[index]:.3g}"
                            for index in [worst, *first])
        pytest.fail(f"{name}: {int(bad.sum())} of {bad.size} elements outside the bound; "
                    f"worst first:\n{details}", pytrace=False)


# ----------------------------------------------------------------------------- inputs

def make_layer(batch, inputs, outputs, activation_x="identity", scale=1.0, seed=0):
    """float32 x (B, I) = act_x(N(0, scale^2)) (a valid previous-layer output), w (I, O) with
    unit-variance pre-activations, b (O,), da (B, O)."""
    rng = np.random.default_rng(seed)
    x = (scale * rng.standard_normal((batch, inputs))).astype(np.float32)
    x = layers.ACTIVATIONS.get(activation_x).forward(x)
    w = (rng.standard_normal((inputs, outputs)) / np.sqrt(inputs)).astype(np.float32)
    b = (0.5 * rng.standard_normal(outputs)).astype(np.float32)
    da = rng.standard_normal((batch, outputs)).astype(np.float32)
    return x, w, b, da


def _f64(*arrays):
    return [a.astype(np.float64) for a in arrays]


# ------------------------------------------------------ kernel runners (any module/backend)

def _launch(launch, backend, module):
    if module is None:
        run(launch, backend)
    else:
        module.get_function(launch.entry)(launch.grid, launch.block, launch.args,
                                          shared_mem=launch.shared_mem)


def _nan_output(shape, backend):
    # NaN prefill: an element the kernel forgets to write (or accumulates into) fails.
    return to_device(np.full(shape, np.nan, np.float32), backend)


def kernel_forward(backend, x, w, b, activation, module=None, workspace=None, splits=None):
    y = _nan_output((x.shape[0], w.shape[1]), backend)
    _launch(ops.linear_forward(to_device(x, backend), to_device(w, backend),
                               to_device(b, backend), activation, y, workspace=workspace,
                               splits=splits), backend, module)
    return to_host(y)


def kernel_backward(backend, x, w, da, activation_x, need_dx=True, module=None,
                    workspace=None, splits_w=None, splits_x=None):
    """(dw, db, dx_pre or None) from ONE linear_backward launch."""
    dw = _nan_output(w.shape, backend)
    db = _nan_output((w.shape[1],), backend)
    dx_pre = _nan_output(x.shape, backend) if need_dx else None
    _launch(ops.linear_backward(to_device(x, backend), to_device(w, backend),
                                to_device(da, backend), activation_x, dw, db, dx_pre,
                                workspace=workspace, splits_w=splits_w, splits_x=splits_x),
            backend, module)
    return to_host(dw), to_host(db), None if dx_pre is None else to_host(dx_pre)


def kernel_backward_input(backend, da, w, x, activation_x, module=None):
    return kernel_backward(backend, x, w, da, activation_x, module=module)[2]


def kernel_backward_weight(backend, x, da, module=None):
    """dW and db alone (no dx): w is only needed for its shape."""
    w = np.zeros((x.shape[1], da.shape[1]), np.float32)
    dw, db, _ = kernel_backward(backend, x, w, da, "identity", need_dx=False, module=module)
    return dw, db


# ------------------------------------------------------ checks against the float64 twins

def check_forward(y, x, w, b, activation):
    x64, w64, b64 = _f64(x, w, b)
    ref = layers.linear_forward(x64, w64, b64, activation)
    magnitude = np.abs(x64) @ np.abs(w64) + np.abs(b64)
    bound = sum_bound(x.shape[1] + 1, magnitude) + FUNCTION_RTOL * np.abs(ref)
    assert_within(f"y[{activation}]", y, ref, bound)


def check_backward_input(dx_pre, da, w, x, activation_x):
    da64, w64, x64 = _f64(da, w, x)
    ref = layers.linear_backward_input(da64, w64, x64, activation_x)
    derivative = np.abs(layers.ACTIVATIONS.get(activation_x).derivative(x64))
    magnitude = (np.abs(da64) @ np.abs(w64).T) * derivative
    bound = sum_bound(da.shape[1], magnitude) + FUNCTION_RTOL * np.abs(ref)
    assert_within(f"dx_pre[{activation_x}]", dx_pre, ref, bound)


def check_backward_weight(dw, db, x, da):
    x64, da64 = _f64(x, da)
    ref_dw, ref_db = layers.linear_backward_weight(x64, da64)
    # Plain sums: no function on top, so no relative term.
    assert_within("dw", dw, ref_dw, sum_bound(x.shape[0], np.abs(x64).T @ np.abs(da64)))
    assert_within("db", db, ref_db, sum_bound(x.shape[0], np.abs(da64).sum(axis=0)))


def _seed(shape, salt=0):
    batch, inputs, outputs = shape
    return batch * 1_000_003 + inputs * 1009 + outputs * 7 + salt


# ------------------------------------------------------------------------- kernel tests

@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_matches_twin(backend, shape, activation):
    x, w, b, _ = make_layer(*shape, seed=_seed(shape))
    check_forward(kernel_forward(backend, x, w, b, activation), x, w, b, activation)


@pytest.mark.parametrize("activation_x", ACTIVATIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_backward_matches_twins(backend, shape, activation_x):
    """One linear_backward launch writes dW, db and dx_pre, each matching its twin."""
    x, w, _, da = make_layer(*shape, activation_x=activation_x, seed=_seed(shape, 1))
    dw, db, dx_pre = kernel_backward(backend, x, w, da, activation_x)
    check_backward_input(dx_pre, da, w, x, activation_x)
    check_backward_weight(dw, db, x, da)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_backward_weight_matches_twin(backend, shape):
    x, _, _, da = make_layer(*shape, activation_x="tanh", seed=_seed(shape, 2))
    check_backward_weight(*kernel_backward_weight(backend, x, da), x, da)


def test_backward_weight_is_deterministic(backend):
    """No atomics, a fixed reduction order: two runs give identical bits."""
    shape = (300, 45, 70)  # 5 k-stages over the batch, partial row and column tiles
    x, _, _, da = make_layer(*shape, activation_x="relu", seed=5)
    first = kernel_backward_weight(backend, x, da)
    second = kernel_backward_weight(backend, x, da)
    for name, a, c in zip(("dw", "db"), first, second):
        assert np.array_equal(a.view(np.uint32), c.view(np.uint32)), f"{name} differs between runs"
    check_backward_weight(*first, x, da)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_extreme_preactivations(backend, activation):
    """Pre-activations of order +-100 (std 90): softplus and tanh saturate without overflow,
    relu/identity pass through; derivatives from saturated outputs (tanh ~ +-1, softplus
    ~ 0, down to float32 denormals, or ~ 100)."""
    shape = (5, 33, 9)
    x, w, b, da = make_layer(*shape, activation_x=activation, scale=30.0, seed=11)
    w *= 3.0
    y = kernel_forward(backend, x, w, b, activation)
    assert np.all(np.isfinite(y)), f"non-finite y[{activation}]: {y}"
    check_forward(y, x, w, b, activation)
    check_backward_input(kernel_backward_input(backend, da, w, x, activation),
                         da, w, x, activation)


def test_derivatives_from_small_and_saturated_outputs(backend):
    """The derivative-from-output forms in their hard corners: softplus y in [1e-7, 1e-2]
    (-expm1f(-y) ~ y; 1 - expf(-y) would lose up to all digits), tanh |y| -> 1 (1 - y^2 by one
    FMA rounding), relu y = 0 exactly (derivative 0)."""
    ys = {
        "softplus": np.geomspace(1e-7, 1e-2, 24),
        "tanh": np.concatenate([1 - np.geomspace(1e-7, 1e-2, 12),
                                -1 + np.geomspace(1e-7, 1e-2, 12)]),
        "relu": np.where(np.arange(24) % 2 == 0, 0.0, np.linspace(0.1, 3, 24)),
    }
    for activation_x, values in ys.items():
        x = values.astype(np.float32).reshape(1, 24)
        w = np.ones((24, 1), np.float32)  # dx = da @ w^T = 1 everywhere: dx_pre = act_x'(x)
        da = np.ones((1, 1), np.float32)
        got = kernel_backward_input(backend, da, w, x, activation_x)
        check_backward_input(got, da, w, x, activation_x)


def test_empty_batch(backend):
    """B = 0: one idle block; y and dx_pre stay empty, dW and db are written as zeros."""
    x, w, b, da = make_layer(0, 5, 7)
    assert kernel_forward(backend, x, w, b, "relu").shape == (0, 7)
    assert kernel_backward_input(backend, da, w, x, "tanh").shape == (0, 5)
    dw, db = kernel_backward_weight(backend, x, da)
    assert np.array_equal(dw, np.zeros((5, 7), np.float32)), "dw for an empty batch"
    assert np.array_equal(db, np.zeros(7, np.float32)), "db for an empty batch"


# Emulator schedules: fibers run in thread order, reversed, or shuffled (two seeds).
SCHEDULES = {"forward": ("forward", 0), "reverse": ("reverse", 0),
             "random-17": ("random", 17), "random-18": ("random", 18)}
ORDER_SHAPE = (130, 70, 90)  # K = 70 / 90 / 130: 2, 2, 3 k-stages; partial tiles everywhere


@pytest.fixture(scope="module")
def scheduled_modules():
    """The linear module compiled once per emulator schedule."""
    source = load_source("linear")
    return {name: module_from_source(source, "emulated", thread_order=order, seed=seed)
            for name, (order, seed) in SCHEDULES.items()}


def _run_all_kernels(module):
    x, w, b, da = make_layer(*ORDER_SHAPE, activation_x="softplus", seed=23)
    y = kernel_forward("emulated", x, w, b, "tanh", module=module)
    dx_pre = kernel_backward_input("emulated", da, w, x, "softplus", module=module)
    dw, db = kernel_backward_weight("emulated", x, da, module=module)
    return (x, w, b, da), {"y": y, "dx_pre": dx_pre, "dw": dw, "db": db}


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_kernels_are_correct_under_every_thread_order(scheduled_modules, schedule):
    """A missing or misplaced barrier shows up as a wrong result under some schedule."""
    (x, w, b, da), out = _run_all_kernels(scheduled_modules[schedule])
    check_forward(out["y"], x, w, b, "tanh")
    check_backward_input(out["dx_pre"], da, w, x, "softplus")
    check_backward_weight(out["dw"], out["db"], x, da)


def test_results_are_bit_identical_across_thread_orders(scheduled_modules):
    """Every sum has one fixed order, whatever order the threads run in."""
    results = {name: _run_all_kernels(module)[1] for name, module in scheduled_modules.items()}
    first = next(iter(SCHEDULES))
    for schedule in SCHEDULES:
        for name, value in results[schedule].items():
            assert np.array_equal(value.view(np.uint32), results[first][name].view(np.uint32)), \
                f"{name} differs between schedules {first!r} and {schedule!r}"


# ------------------------------------------------------------- the twins themselves (NumPy)

@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("activation_x", ACTIVATIONS)
def test_twins_match_linear_backward(activation, activation_x):
    """The kernel-shaped twins (from da) agree with layers.linear_backward (from dy)."""
    x, w, b, _ = make_layer(6, 5, 4, activation_x=activation_x, seed=3)
    x, w, b = _f64(x, w, b)
    y = layers.linear_forward(x, w, b, activation)
    dy = np.random.default_rng(4).standard_normal(y.shape)
    dw, db = np.empty_like(w), np.empty_like(b)
    dx = layers.linear_backward(x, w, y, dy, activation, dw, db)
    da = dy * layers.ACTIVATIONS.get(activation).derivative(y)
    twin_dw, twin_db = layers.linear_backward_weight(x, da)
    np.testing.assert_allclose(twin_dw, dw, rtol=1e-12, atol=1e-12, err_msg="dw")
    np.testing.assert_allclose(twin_db, db, rtol=1e-12, atol=1e-12, err_msg="db")
    expected = dx * layers.ACTIVATIONS.get(activation_x).derivative(x)
    np.testing.assert_allclose(layers.linear_backward_input(da, w, x, activation_x), expected,
                               rtol=1e-12, atol=1e-12, err_msg="dx_pre")


@pytest.mark.parametrize("activation_x", ACTIVATIONS)
def test_backward_input_twin_matches_finite_differences(activation_x):
    """dx_pre is d/d a_prev of  sum(g * act(act_x(a_prev) @ W + b)),  in float64."""
    rng = np.random.default_rng(8)
    a_prev = rng.standard_normal((3, 4))
    a_prev[np.abs(a_prev) < 0.05] += 0.2  # keep relu away from its kink
    w, b, g = rng.standard_normal((4, 5)), rng.standard_normal(5), rng.standard_normal((3, 5))
    act_x = layers.ACTIVATIONS.get(activation_x)

    def loss():
        x = act_x.forward(a_prev.copy())
        return float((g * layers.linear_forward(x, w, b, "softplus")).sum())

    x = act_x.forward(a_prev.copy())
    y = layers.linear_forward(x, w, b, "softplus")
    da = g * layers.ACTIVATIONS.get("softplus").derivative(y)
    assert_grad_close(layers.linear_backward_input(da, w, x, activation_x),
                      numeric_grad(loss, a_prev), f"dx_pre[{activation_x}]")


# ------------------------------------------------------------------- the launch builders

def test_tile_constants_match_the_kernel():
    source = load_source("linear")
    defines = dict(re.findall(r"^#define (LINEAR_\w+) (\d+)\b", source, flags=re.M))
    for name in ("LINEAR_TILE_M", "LINEAR_TILE_N", "LINEAR_TILE_K", "LINEAR_SPLIT_MAX_BLOCKS"):
        assert int(defines[name]) == getattr(ops.linear, name), name
    tile_mn = int(defines["LINEAR_TILE_M"]) * int(defines["LINEAR_TILE_N"])
    assert ops.linear.LINEAR_RECORD_FLOATS == tile_mn + int(defines["LINEAR_TILE_N"])
    assert ops.linear.LINEAR_WORKSPACE_FLOATS == (2 * int(defines["LINEAR_SPLIT_MAX_BLOCKS"])
                                                  * (1 + ops.linear.LINEAR_RECORD_FLOATS))
    assert ops.linear.LINEAR_SPLIT_MAX_BLOCKS >= 2 * ops.linear.SPLIT_K_TARGET_BLOCKS
    slices = int(defines["LINEAR_SLICES"])
    per_slice = ((int(defines["LINEAR_TILE_M"]) // int(defines["LINEAR_MICRO_M"]))
                 * (int(defines["LINEAR_TILE_N"]) // int(defines["LINEAR_MICRO_N"])))
    assert slices * per_slice == ops.linear.LINEAR_THREADS


def test_launches_have_exact_scalar_types_and_grids():
    x, w, b, da = make_layer(37, 65, 33)
    launch = ops.linear_forward(x, w, b, "softplus", np.empty((37, 33), np.float32))
    assert (launch.kernel, launch.entry) == ("linear", "linear_forward")
    assert [type(a) for a in launch.args[5:]] == [np.int32] * 5
    assert [int(a) for a in launch.args[5:]] == [37, 65, 33, 3, 1]
    assert launch.grid == (4,) and launch.block == (256,)        # 2 x 2 tiles, one pass

    launch = ops.linear_backward(x, w, da, "tanh", np.empty_like(w), np.empty_like(b),
                                 np.empty_like(x))
    assert launch.entry == "linear_backward"
    assert [type(a) for a in launch.args[7:]] == [np.int32] * 7
    assert [int(a) for a in launch.args[7:]] == [37, 65, 33, 2, 1, 1, 1]
    assert launch.grid == (3 * 2 + 2 * 3,)                       # dW (65, 33) + dx (37, 65) tiles
    launch = ops.linear_backward(x, w, da, "tanh", np.empty_like(w), np.empty_like(b))
    assert int(launch.args[-1]) == 0 and launch.grid == (6,)     # no dx: dW tiles only


def test_the_split_is_chosen_from_the_shape():
    """The heuristic of cupyvae.cuda.ops.linear: long K and few tiles split; the result
    never needs more than the workspace's partial tiles."""
    splits = ops.linear.linear_splits
    assert splits(100, 200, 784) == 5        # 28 tiles, 13 stages: ceil(132 / 28) = 5
    assert splits(100, 200, 511) == 1        # K below SPLIT_K_MIN_K
    assert splits(1024, 1024, 784) == 1      # 1024 tiles fill the GPU already
    assert splits(1, 1, 4096) == 16          # one tile, 64 stages: capped at SPLIT_K_MAX
    assert splits(1, 1, 600) == 5            # 10 stages: at least 2 stages per split
    assert splits(0, 200, 784) == 1          # no tiles, nothing to split
    for m in (1, 7, 33, 100, 130, 257, 500):
        for n in (1, 20, 64, 200, 784):
            for k in (0, 100, 512, 784, 1024, 5000):
                s_ = splits(m, n, k)
                tiles, stages = ops.linear.gemm_tiles(m, n), -(-k // 64)
                assert 1 <= s_ <= max(stages, 1)
                assert s_ == 1 or s_ * tiles <= ops.linear.LINEAR_SPLIT_MAX_BLOCKS, (m, n, k)


def test_a_workspace_turns_the_split_on():
    x, w, b, da = make_layer(100, 784, 200)
    workspace = ops.linear_workspace("emulated")
    y = np.empty((100, 200), np.float32)
    assert int(ops.linear_forward(x, w, b, "relu", y).args[-1]) == 1
    launch = ops.linear_forward(x, w, b, "relu", y, workspace=workspace)
    assert int(launch.args[-1]) == 5 and launch.grid == (5 * 28,) and launch.args[4] is workspace
    back = ops.linear_backward(y, w.T.copy(), np.empty((100, 784), np.float32), "relu",
                               np.empty((200, 784), np.float32), np.empty(784, np.float32),
                               np.empty_like(y), workspace=workspace)
    # dW (200, 784): K = 100, 175 tiles, no split; dx (100, 200): K = 784, 28 tiles, S = 5.
    assert [int(a) for a in back.args[-3:-1]] == [1, 5] and back.grid == (175 + 5 * 28,)


# ------------------------------------------------------------------------- split-K

# (B, I, O): odd sizes with a long K in every GEMM that has one -- forward K = I,
# dW K = B, dx K = O -- and few tiles, so the heuristic splits.
SPLIT_SHAPES = [(37, 700, 45), (3, 1000, 5), (37, 45, 700), (600, 40, 33), (1, 513, 1)]


@pytest.fixture(scope="module")
def workspace():
    return ops.linear_workspace("emulated")


def _splits_of(shape):
    batch, inputs, outputs = shape
    return {"forward": ops.linear.linear_splits(batch, outputs, inputs),
            "dw": ops.linear.linear_splits(inputs, outputs, batch),
            "dx": ops.linear.linear_splits(batch, inputs, outputs)}


def test_the_split_shapes_do_split():
    splits = [_splits_of(shape) for shape in SPLIT_SHAPES]
    assert all(max(s.values()) > 1 for s in splits), splits
    assert {key for s in splits for key, value in s.items() if value > 1} == {"forward", "dw", "dx"}


@pytest.mark.parametrize("shape", SPLIT_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_split_k_matches_the_twins(shape, workspace):
    """Every output of a split launch (the heuristic's S) within the same order-independent
    float32 bound as the single-pass GEMM; the workspace's counters are back to 0 after."""
    x, w, b, da = make_layer(*shape, activation_x="relu", seed=_seed(shape, 7))
    check_forward(kernel_forward("emulated", x, w, b, "tanh", workspace=workspace),
                  x, w, b, "tanh")
    dw, db, dx_pre = kernel_backward("emulated", x, w, da, "relu", workspace=workspace)
    check_backward_weight(dw, db, x, da)
    check_backward_input(dx_pre, da, w, x, "relu")
    counters = workspace[:ops.linear.LINEAR_COUNTER_WORDS].view(np.uint32)
    assert not counters.any(), "every split launch must leave its arrival counters at 0"


def _exact_layer(shape, seed):
    """Small integers (|x| <= 3, |w| <= 3, |da| <= 3) and a bias of quarters: every product
    and every partial sum (< 2^24) is exact in float32, so ANY summation order -- single
    pass, any split, NumPy -- gives the same bits."""
    rng = np.random.default_rng(seed)
    batch, inputs, outputs = shape
    x = rng.integers(-3, 4, (batch, inputs)).astype(np.float32)
    w = rng.integers(-3, 4, (inputs, outputs)).astype(np.float32)
    b = (rng.integers(-8, 9, outputs) / 4).astype(np.float32)
    da = rng.integers(-3, 4, (batch, outputs)).astype(np.float32)
    return x, w, b, da


@pytest.mark.parametrize("shape", SPLIT_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_split_k_equals_single_pass_bit_for_bit_where_sums_are_exact(shape, workspace):
    """With exact sums the summation order cannot matter, so every split factor must give
    the single-pass bits and NumPy's: a term dropped, doubled or taken from another split's
    range shows up as a difference of at least 1."""
    x, w, b, da = _exact_layer(shape, seed=_seed(shape, 8))
    batch, inputs, outputs = shape
    exact_y = x.astype(np.float64) @ w + b
    exact_dw, exact_db = layers.linear_backward_weight(x.astype(np.float64), da.astype(np.float64))
    exact_dx = da.astype(np.float64) @ w.T.astype(np.float64)
    single_y = kernel_forward("emulated", x, w, b, "identity")
    single = kernel_backward("emulated", x, w, da, "identity")
    np.testing.assert_array_equal(single_y, exact_y)
    for name, got, want in zip(("dw", "db", "dx"), single, (exact_dw, exact_db, exact_dx)):
        np.testing.assert_array_equal(got, want, err_msg=f"single-pass {name}")
    for s_ in sorted({2, 3, ops.linear.linear_splits(batch, outputs, inputs)}):
        if s_ <= -(-inputs // 64):
            y = kernel_forward("emulated", x, w, b, "identity", workspace=workspace, splits=s_)
            assert np.array_equal(y.view(np.uint32), single_y.view(np.uint32)), f"y, S = {s_}"
    for s_w in sorted({1, 2, ops.linear.linear_splits(inputs, outputs, batch)}):
        for s_x in sorted({1, 3, ops.linear.linear_splits(batch, inputs, outputs)}):
            if s_w > -(-batch // 64) or s_x > -(-outputs // 64):
                continue
            got = kernel_backward("emulated", x, w, da, "identity", workspace=workspace,
                                  splits_w=s_w, splits_x=s_x)
            for name, a, c in zip(("dw", "db", "dx"), got, single):
                assert np.array_equal(a.view(np.uint32), c.view(np.uint32)), \
                    f"{name} with splits (dW {s_w}, dx {s_x}) differs from the single pass"


def test_split_k_stays_within_twice_the_single_pass_bound(workspace):
    """Random inputs: a split sums the same terms in another grouping, so split and single
    pass may differ by a few roundings, each within the order-independent bound of its own
    sum; their difference is therefore within twice that bound (the documented tolerance)
    -- and, the groupings being different, they do differ somewhere."""
    shape = (37, 1000, 45)
    x, w, b, _ = make_layer(*shape, seed=31)
    single = kernel_forward("emulated", x, w, b, "identity")
    split = kernel_forward("emulated", x, w, b, "identity", workspace=workspace, splits=4)
    magnitude = np.abs(x.astype(np.float64)) @ np.abs(w.astype(np.float64)) + np.abs(b)
    assert_within("y split vs single", split, single.astype(np.float64),
                  2 * sum_bound(shape[1] + 1, magnitude))
    assert not np.array_equal(split, single), "S = 4 should round differently somewhere"


# Block completion orders: the emulator takes blocks in thread_order ("random": shuffled per
# seed) over `workers` OS threads, so which block of a tile arrives last varies.
BLOCK_ORDERS = {"forward-1": ("forward", 0, 1), "reverse-2": ("reverse", 0, 2),
                "random-3-1": ("random", 3, 1), "random-4-2": ("random", 4, 2)}


@pytest.fixture(scope="module")
def block_order_modules():
    source = load_source("linear")
    return {name: module_from_source(source, "emulated", thread_order=order, seed=seed,
                                     workers=workers)
            for name, (order, seed, workers) in BLOCK_ORDERS.items()}


def test_split_k_bits_do_not_depend_on_the_block_completion_order(block_order_modules, workspace):
    """The last block of a tile adds the partials in split order, whoever it is: the same
    bits under every thread order, block order and worker count, and correct ones."""
    shape = (37, 600, 520)          # forward S = 4 (K = 600), dx S = 4 (K = 520)
    x, w, b, da = make_layer(*shape, activation_x="softplus", seed=41)
    results = {}
    for name, module in block_order_modules.items():
        y = kernel_forward("emulated", x, w, b, "softplus", module=module, workspace=workspace)
        dw, db, dx_pre = kernel_backward("emulated", x, w, da, "softplus", module=module,
                                         workspace=workspace)
        results[name] = {"y": y, "dw": dw, "db": db, "dx_pre": dx_pre}
    assert _splits_of(shape)["forward"] > 1 and _splits_of(shape)["dx"] > 1
    first = results["forward-1"]
    check_forward(first["y"], x, w, b, "softplus")
    check_backward_input(first["dx_pre"], da, w, x, "softplus")
    check_backward_weight(first["dw"], first["db"], x, da)
    for name, outputs in results.items():
        for output, value in outputs.items():
            assert np.array_equal(value.view(np.uint32), first[output].view(np.uint32)), \
                f"{output} differs between block orders 'forward-1' and {name!r}"


def test_a_replayed_split_launch_gives_the_same_bits(workspace):
    """The counters reset by the last block make the next launch (a graph replay) work."""
    x, w, b, _ = make_layer(3, 1000, 5, seed=43)
    y = np.full((3, 5), np.nan, np.float32)
    step = bind([ops.linear_forward(x, w, b, "relu", y, workspace=workspace)], "emulated")
    issue(step)
    first = y.copy()
    y[...] = np.nan
    capture(step, 3, "emulated").launch()
    np.testing.assert_array_equal(y, first)
    check_forward(first, x, w, b, "relu")


def _forward_args(**change):
    args = dict(x=np.zeros((4, 6), np.float32), w=np.zeros((6, 3), np.float32),
                b=np.zeros(3, np.float32), activation="relu", y=np.zeros((4, 3), np.float32))
    return {**args, **change}


@pytest.mark.parametrize("change, message", [
    (dict(w=np.zeros((5, 3), np.float32)), r"x \(4, 6\) and w \(5, 3\)"),
    (dict(b=np.zeros(4, np.float32)), r"b must have shape \(3,\).*\(4,\)"),
    (dict(y=np.zeros((3, 4), np.float32)), r"y must have shape \(4, 3\).*got \(3, 4\)"),
    (dict(x=np.zeros((4, 6), np.float64)), "float32"),
    (dict(w=np.zeros((3, 6), np.float32).T), "C-contiguous"),
    (dict(x=np.zeros(24, np.float32)), r"2-D .*\(24,\)"),
    (dict(activation="gelu"), r"unknown activation 'gelu' \(did you mean 'relu'\?\); available: identity, relu"),
    (dict(splits=2), r"splits=2 needs a split-K workspace"),
    (dict(splits=0), "splits must be a positive integer"),
    (dict(workspace=np.zeros(10, np.float32)), r"workspace must be a flat float32 buffer"),
    (dict(workspace=np.zeros(ops.linear.LINEAR_WORKSPACE_FLOATS), splits=2), "workspace must be float32"),
    (dict(workspace=np.zeros(ops.linear.LINEAR_WORKSPACE_FLOATS, np.float32), splits=2),
     r"splits=2 exceeds the 1 k stages of K = 6"),
])
def test_forward_launch_rejects_bad_arguments(change, message):
    with pytest.raises(ValueError, match=message):
        ops.linear_forward(**_forward_args(**change))


def test_a_split_that_overflows_the_workspace_is_refused():
    x, w = np.zeros((100, 4096), np.float32), np.zeros((4096, 700), np.float32)
    with pytest.raises(ValueError, match=r"splits=16 x 88 tiles .* exceed .* 264"):
        ops.linear_forward(x, w, np.zeros(700, np.float32), "relu", np.zeros((100, 700), np.float32),
                           workspace=ops.linear_workspace("emulated"), splits=16)


@pytest.mark.parametrize("change, message", [
    (dict(da=np.zeros((4, 2), np.float32)), r"da must have shape \(4, 3\).*got \(4, 2\)"),
    (dict(dx_pre=np.zeros((4, 3), np.float32)), r"dx_pre must have shape \(4, 6\)"),
    (dict(x=np.zeros((4, 5), np.float32)), r"x \(4, 5\) and w \(6, 3\)"),
    (dict(activation_x="swish"), "unknown activation 'swish'"),
    (dict(dw=np.zeros((3, 6), np.float32)), r"dw must have shape \(6, 3\).*got \(3, 6\)"),
    (dict(db=np.zeros((1, 3), np.float32)), r"db must have shape \(3,\).*\(1, 3\)"),
    (dict(db=np.zeros(3, np.float64)), "db must be float32"),
    (dict(splits_x=2), "linear_backward dx: splits=2 needs a split-K workspace"),
    (dict(dx_pre=None, splits_x=1), "splits_x=1 splits the dx GEMM, but dx_pre is None"),
])
def test_backward_launch_rejects_bad_arguments(change, message):
    args = dict(x=np.zeros((4, 6), np.float32), w=np.zeros((6, 3), np.float32),
                da=np.zeros((4, 3), np.float32), activation_x="tanh",
                dw=np.zeros((6, 3), np.float32), db=np.zeros(3, np.float32),
                dx_pre=np.zeros((4, 6), np.float32))
    with pytest.raises(ValueError, match=message):
        ops.linear_backward(**{**args, **change})
