"""kernels/bernoulli.cu bernoulli_nll against the NumPy reference, on every backend."""
import numpy as np
import pytest

from cupyvae.cuda import ops
from cupyvae.cuda.launch import run, to_device, to_host
from cupyvae.cuda.loader import load_source, module_from_source
from cupyvae.distributions.bernoulli import bernoulli_nll as reference_bernoulli_nll

# nll: float32 sums in a different order (per-thread strided partials, then warp and block
# trees, vs NumPy's pairwise sum), and the compiler may fuse x*l into an FMA; both errors
# are bounded by a few ulp of the sum of |terms|, not of the (possibly small) result.
NLL_RTOL = 1e-5
# dlogits: one expf per element (CUDA <= 2 ulp) and a subtraction that can cancel,
# so relative 1e-6 plus an absolute floor of 1e-6 * |scale|.
DLOGITS_RTOL = 1e-6

BATCH_SIZES = [1, 3, 7]
DIMS = [1, 5, 33, 784, 1000]  # none a multiple of any block size the launcher picks
THREAD_ORDERS = ["forward", "reverse", "random"]


def make_inputs(batch, dim, targets, seed=0):
    """Logits mixing +-50, 0 and moderate values; x binary or continuous in [0, 1]."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 4.0, size=(batch, dim)).astype(np.float32)
    extremes = np.array([50.0, -50.0, 0.0], np.float32)
    logits.flat[: min(3, logits.size)] = extremes[: min(3, logits.size)]
    logits.flat[::7] = rng.choice(extremes, size=logits.flat[::7].shape)
    if targets == "binary":
        x = (rng.random((batch, dim)) < 0.5).astype(np.float32)
    else:
        x = rng.random((batch, dim), dtype=np.float32)
    return logits, x


def run_kernel(backend, logits, x, scale, module=None):
    """(nll, dlogits) from the kernel; outputs prefilled with NaN to prove `=` writes."""
    nll = to_device(np.full(logits.shape[0], np.nan, np.float32), backend)
    dlogits = to_device(np.full(logits.shape, np.nan, np.float32), backend)
    launch = ops.bernoulli_nll(to_device(logits, backend), to_device(x, backend), scale,
                               nll, dlogits)
    if module is None:
        run(launch, backend)
    else:
        module.get_function(launch.entry)(launch.grid, launch.block, launch.args,
                                          shared_mem=launch.shared_mem)
    return to_host(nll), to_host(dlogits)


def assert_matches_reference(logits, x, scale, nll, dlogits):
    expected_nll, expected_dlogits = reference_bernoulli_nll(logits, x, scale)
    # Sum of |summands| (>= nll): the scale float32 summation error is relative to.
    term_magnitude = (np.maximum(logits, 0) + np.abs(x * logits)
                      + np.log1p(np.exp(-np.abs(logits)))).sum(axis=1)
    assert np.all(np.abs(nll - expected_nll) <= NLL_RTOL * term_magnitude), \
        f"nll {nll} vs reference {expected_nll} (B, D = {logits.shape})"
    np.testing.assert_allclose(dlogits, expected_dlogits, rtol=DLOGITS_RTOL,
                               atol=DLOGITS_RTOL * abs(float(scale)))


@pytest.mark.parametrize("targets", ["binary", "continuous"])
@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("batch", BATCH_SIZES)
def test_matches_reference(backend, batch, dim, targets):
    logits, x = make_inputs(batch, dim, targets, seed=batch * 1000 + dim)
    scale = np.float32(1.0 / batch)
    nll, dlogits = run_kernel(backend, logits, x, scale)
    assert_matches_reference(logits, x, scale, nll, dlogits)


@pytest.mark.parametrize("thread_order", THREAD_ORDERS)
def test_reduction_is_independent_of_thread_order(thread_order):
    """Wrong or missing barriers show up as order-dependent sums on the emulator."""
    module = module_from_source(load_source("bernoulli"), "emulated",
                                thread_order=thread_order, seed=3)
    for dim in (33, 1000):  # one partial warp; several warps with a strided tail
        logits, x = make_inputs(3, dim, "continuous", seed=dim)
        scale = np.float32(0.5)
        nll, dlogits = run_kernel("emulated", logits, x, scale, module=module)
        assert_matches_reference(logits, x, scale, nll, dlogits)


def test_extreme_logits_are_finite_and_exact(backend):
    logits = np.array([[50.0, -50.0, 50.0, -50.0, 0.0, 0.0]], np.float32)
    x = np.array([[0.0, 1.0, 1.0, 0.0, 0.0, 1.0]], np.float32)
    nll, dlogits = run_kernel(backend, logits, x, np.float32(2.0))
    # softplus(50) = 50, softplus(-50) - (-50) = 50 (to float32), correct ones ~2e-22, log 2 twice.
    np.testing.assert_allclose(nll, [100.0 + 2 * np.log(2.0)], rtol=1e-6)
    np.testing.assert_allclose(dlogits, [[2.0, -2.0, 0.0, 0.0, 1.0, -1.0]], atol=1e-6)


@pytest.mark.parametrize("batch, dim", [(2, 0), (0, 5)])
def test_empty_rows_and_empty_batch(backend, batch, dim):
    logits, x = make_inputs(batch, dim, "binary")
    nll, dlogits = run_kernel(backend, logits, x, np.float32(1.0))
    np.testing.assert_array_equal(nll, np.zeros(batch, np.float32))
    assert dlogits.shape == (batch, dim)


@pytest.mark.parametrize("dim, block", [(0, 32), (1, 32), (33, 64), (200, 256), (1000, 256)])
def test_row_block_size(dim, block):
    assert ops._checks.row_block_size(dim) == block


def test_launch_arguments_have_exact_types():
    logits, x = make_inputs(2, 5, "binary")
    launch = ops.bernoulli_nll(logits, x, 0.5, np.zeros(2, np.float32), np.zeros_like(logits))
    assert [type(a) for a in launch.args[4:]] == [np.int32, np.int32, np.float32]
    assert launch.grid == (2,) and launch.block == (32,)
    assert (launch.kernel, launch.entry) == ("bernoulli", "bernoulli_nll")


def _shapes(batch=2, dim=5):
    return dict(logits=np.zeros((batch, dim), np.float32), x=np.zeros((batch, dim), np.float32),
                scale=1.0, nll=np.zeros(batch, np.float32),
                dlogits=np.zeros((batch, dim), np.float32))


@pytest.mark.parametrize("change, message", [
    (dict(x=np.zeros((2, 4), np.float32)), r"x \(2, 4\)"),
    (dict(nll=np.zeros(3, np.float32)), r"\(2,\).*\(3,\)"),
    (dict(dlogits=np.zeros((5, 2), np.float32)), r"dlogits \(5, 2\)"),
    (dict(x=np.zeros((2, 5), np.float64)), "float32"),
    (dict(logits=np.zeros((5, 2), np.float32).T), "C-contiguous"),
    (dict(logits=np.zeros(10, np.float32)), r"2-D .*\(10,\)"),
    (dict(scale=np.ones(2)), "scalar"),
])
def test_launch_rejects_bad_arguments(change, message):
    with pytest.raises(ValueError, match=message):
        ops.bernoulli_nll(**{**_shapes(), **change})
