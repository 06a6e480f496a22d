"""kernels/step.cu (gather_rows, end_step, step_terms) against the NumPy twins in
cupyvae.step_twins, on every backend, including steps replayed past the epoch's end."""
import dataclasses
import functools

import numpy as np
import pytest

from cupyvae import step_twins
from cupyvae.cuda import ops
from cupyvae.cuda.launch import run, to_device, to_host
from cupyvae.cuda.loader import load_source, module_from_source
from cupyvae.executors import binarize_batch

THREAD_ORDERS = ["forward", "reverse", "random"]
SEED = 2 ** 33 + 2 ** 20 + 5
# end_step's loss: a double tree sum of the B float64 terms nll[b] + beta kl[b], rounded once
# to float32.  The twin sums the same terms in float64 in another order (a relative
# difference ~B 2^-53, far below float32's 2^-24), so both round to the same float32 or, at
# a rounding boundary, to neighbours: one ulp.  Against an exact float64 mean, the one
# rounding to float32: half an ulp, <= 2^-24 relative.
LOSS_RTOL = 2.0 ** -24


def within_one_ulp(got, want) -> bool:
    return abs(float(got) - float(want)) <= float(np.spacing(np.float32(abs(want))))


@functools.lru_cache(maxsize=None)
def emulated_module(thread_order):
    return module_from_source(load_source("step"), "emulated", thread_order=thread_order, seed=11)


def launch_on(backend, launch, thread_order=None):
    if thread_order is None:
        run(launch, backend)
    else:
        emulated_module(thread_order).get_function(launch.entry)(
            launch.grid, launch.block, launch.args, shared_mem=launch.shared_mem)


def make_data(n, dim, seed=0):
    """Grey levels in [0, 1] with exact 0s and 1s, and a permutation of the rows (int32)."""
    rng = np.random.default_rng(seed)
    data = rng.random((n, dim), dtype=np.float32)
    data.flat[::3] = 0.0
    data.flat[1::7] = 1.0
    return data, rng.permutation(n).astype(np.int32)


def gather(backend, data, perm, counters, batch, binarize, seed=SEED, grid=None):
    xb = to_device(np.full((batch, data.shape[1]), np.nan, np.float32), backend)
    launch = ops.gather_rows(to_device(data, backend), to_device(perm, backend),
                                  to_device(counters, backend), batch, binarize, seed, xb)
    if grid is not None:
        launch = dataclasses.replace(launch, grid=grid)
    run(launch, backend)
    return to_host(xb)


@pytest.mark.parametrize("binarize", [False, True])
@pytest.mark.parametrize("dim", [1, 5, 33, 784])
@pytest.mark.parametrize("batch", [1, 3, 7])
def test_gather_rows_equals_twin_exactly(backend, batch, dim, binarize):
    data, perm = make_data(40, dim, seed=dim)
    counters = np.array([77 + batch, 40 // batch - 1], np.uint32)   # the epoch's last batch
    xb = gather(backend, data, perm, counters, batch, binarize)
    expected = step_twins.gather_rows(data, perm, counters, batch, binarize, SEED)
    np.testing.assert_array_equal(xb, expected, err_msg=f"xb (B, D) = ({batch}, {dim})")
    rows = perm[int(counters[1]) * batch:(int(counters[1]) + 1) * batch]
    if binarize:
        # Uniforms are bit-exact, so binarization is too: it is executors.binarize_batch.
        np.testing.assert_array_equal(xb, binarize_batch(data[rows], SEED, int(counters[0])))
        assert set(np.unique(xb)) <= {0.0, 1.0}
        np.testing.assert_array_equal(xb[data[rows] == 0.0], 0.0)   # u > 0 always
        np.testing.assert_array_equal(xb[data[rows] == 1.0], 1.0)   # u < 1 always
    else:
        np.testing.assert_array_equal(xb, data[rows])


def test_gather_rows_binarization_follows_the_step(backend):
    data, perm = make_data(20, 300, seed=1)
    a = gather(backend, data, perm, np.array([5, 1], np.uint32), 4, True)
    b = gather(backend, data, perm, np.array([6, 1], np.uint32), 4, True)
    assert np.mean(a != b) > 0.05, "a new step must draw new binarization noise"
    np.testing.assert_array_equal(b, step_twins.gather_rows(data, perm, np.array([6, 1], np.uint32),
                                                            4, True, SEED))


def test_gather_rows_grid_stride_loop(backend):
    """Two blocks for 7 rows of 784: blocks loop over rows, 256 threads loop over columns."""
    data, perm = make_data(30, 784, seed=2)
    counters = np.array([3, 2], np.uint32)
    xb = gather(backend, data, perm, counters, 7, True, grid=(2,))
    np.testing.assert_array_equal(xb, step_twins.gather_rows(data, perm, counters, 7, True, SEED))


def loss_inputs(batch, seed=0):
    rng = np.random.default_rng(seed)
    nll = rng.uniform(50.0, 300.0, batch).astype(np.float32)
    kl = rng.uniform(0.0, 30.0, batch).astype(np.float32)
    return nll, kl


ONE = np.ones(1, np.float32)     # the KL weight of the plain negative ELBO


def end_step(backend, nll, kl, counters, n_slots, thread_order=None, kl_weight=ONE):
    """(losses, counters) after one end_step launch; losses start NaN."""
    losses = to_device(np.full(n_slots, np.nan, np.float32), backend)
    counters = to_device(np.array(counters, np.uint32), backend)
    launch = ops.end_step(to_device(nll, backend), to_device(kl, backend),
                          to_device(kl_weight, backend), counters, losses)
    launch_on(backend, launch, thread_order)
    return to_host(losses), to_host(counters)


@pytest.mark.parametrize("kl_weight", [1.0, 0.0, 0.3])
@pytest.mark.parametrize("batch", [1, 3, 37, 100, 1000])
def test_end_step_matches_twin(backend, batch, kl_weight):
    nll, kl = loss_inputs(batch, seed=batch)
    counters = np.array([9, 2], np.uint32)
    weight = np.array([kl_weight], np.float32)
    losses, counters_after = end_step(backend, nll, kl, counters, 4, kl_weight=weight)
    expected, expected_counters = step_twins.end_step(nll, kl, weight, counters.copy(),
                                                      np.full(4, np.nan, np.float32))
    assert np.isnan(losses[[0, 1, 3]]).all(), "only slot counters[1] may be written"
    assert within_one_ulp(losses[2], expected[2]), \
        f"loss {losses[2]!r} vs twin {expected[2]!r} (B = {batch})"
    np.testing.assert_array_equal(counters_after, expected_counters)
    np.testing.assert_array_equal(counters_after, [10, 3])


def test_end_step_keeps_small_terms_beside_large_cancelling_ones(backend):
    """nll of +-3e7 (a continuous likelihood's per-row nll can be either sign) beside terms
    of 0.25: a float32 sum would drop the small terms its thread adds to 3e7 (float32's ulp
    there is 2); the double sum keeps them, and the mean comes out exact."""
    nll = np.full(1000, 0.25, np.float32)
    nll[:2] = (3e7, -3e7)
    kl = np.zeros(1000, np.float32)
    losses, _ = end_step(backend, nll, kl, np.array([0, 0], np.uint32), 1)
    exact = (nll.astype(np.float64) + kl).sum() / 1000            # 0.2495, as a float64
    assert losses[0] == np.float32(exact), f"loss {losses[0]!r}, exact mean {exact!r}"


@pytest.mark.parametrize("batch", [37, 1000])
def test_end_step_is_deterministic_across_thread_orders(batch):
    """The reduction tree is fixed by the thread indices, so every execution order must give
    the very same bits (missing barriers would make the sum order-dependent)."""
    nll, kl = loss_inputs(batch, seed=1)
    counters = np.array([0, 0], np.uint32)
    results = {order: end_step("emulated", nll, kl, counters, 1, thread_order=order)[0][0]
               for order in THREAD_ORDERS}
    results["again"] = end_step("emulated", nll, kl, counters, 1, thread_order="random")[0][0]
    assert len({r.tobytes() for r in results.values()}) == 1, f"order-dependent sums: {results}"
    expected = step_twins.end_step(nll, kl, ONE, counters.copy(), np.zeros(1, np.float32))[0][0]
    assert within_one_ulp(results["forward"], expected)


@pytest.mark.parametrize("start", [(0, 0), (41, 3), (2 ** 32 - 1, 7)])
def test_end_step_advances_the_counters(backend, start):
    """end_step: step and batch both +1 (uint32, wrapping like the twin), even past the
    last slot (where it writes no loss)."""
    nll, kl = loss_inputs(3)
    losses, got = end_step(backend, nll, kl, start, 2)
    twin_losses, twin = step_twins.end_step(nll, kl, ONE, np.array(start, np.uint32),
                                            np.full(2, np.nan, np.float32))
    np.testing.assert_array_equal(got, twin)
    np.testing.assert_array_equal(np.isnan(losses), np.isnan(twin_losses))
    assert int(got[0]) == (start[0] + 1) % 2 ** 32 and int(got[1]) == start[1] + 1


# ------------------------------------------------------------------ replay past the end
def test_a_step_past_the_epoch_writes_nothing(backend):
    """counters[1] == the epoch's batch count (a replay one step too many): gather_rows
    leaves xb untouched (perm has no rows for that batch) and end_step writes no loss
    slot -- neither reads nor writes out of bounds -- while the counters still advance.
    The twins say the same (None, losses unchanged)."""
    data, perm = make_data(23, 6, seed=9)
    batch = 5
    n_batches = 23 // batch                                   # 4: perm[20:23] is no batch
    for past in (n_batches, n_batches + 1, 2 ** 32 - 1):
        counters = np.array([7, past], np.uint32)
        xb = gather(backend, data, perm, counters, batch, True)
        assert np.isnan(xb).all(), f"gather_rows wrote a batch at counters[1] = {past}"
        assert step_twins.gather_rows(data, perm, counters, batch, True, SEED) is None
        nll, kl = loss_inputs(batch)
        losses, after = end_step(backend, nll, kl, counters, n_batches)
        assert np.isnan(losses).all(), f"end_step wrote a loss at counters[1] = {past}"
        twin_losses, twin_counters = step_twins.end_step(
            nll, kl, ONE, counters.copy(), np.full(n_batches, np.nan, np.float32))
        assert np.isnan(twin_losses).all()
        np.testing.assert_array_equal(after, twin_counters)
    # The last real batch is still written: the bound is exact.
    last = np.array([7, n_batches - 1], np.uint32)
    xb = gather(backend, data, perm, last, batch, False)
    np.testing.assert_array_equal(xb, data[perm[15:20]])


def test_a_recorded_epoch_replayed_one_step_too_far_stays_in_bounds():
    """The emulator's graph mode replays recorded launches like a CUDA graph: record the
    step glue of a 4-batch epoch as 5 steps; the 5th writes no loss beyond the 4 slots
    and gathers nothing (the emulator would report an out-of-bounds access as a crash,
    and the NaN-filled guard slot after the losses stays NaN)."""
    from cupyvae.cuda.graph import bind, capture

    data, perm = make_data(23, 6, seed=10)
    batch, n_batches = 5, 4
    counters = np.array([0, 0], np.uint32)
    slots = np.full(n_batches + 1, np.nan, np.float32)       # the last slot is a guard
    losses = slots[:n_batches]
    xb = np.zeros((batch, 6), np.float32)
    nll, kl = loss_inputs(batch)
    step = bind([ops.gather_rows(data, perm, counters, batch, False, SEED, xb),
                 ops.end_step(nll, kl, ONE, counters, losses)], "emulated")
    capture(step, n_batches + 1, "emulated").launch()
    assert np.isfinite(losses).all() and np.isnan(slots[-1]), slots
    np.testing.assert_array_equal(counters, [n_batches + 1, n_batches + 1])
    np.testing.assert_array_equal(xb, data[perm[15:20]], "the 5th step must not gather")


def test_two_epochs_of_step_glue_match_the_numpy_executor_loop(backend):
    """Counters [step count, 0] uploaded per epoch (as the kernel executor does), then per
    batch: gather (binarized), end_step -- all driven by the device counters alone, exactly as NumpyExecutor.train_epoch keys its
    batches (perm slice i) and noise (step = optimizer.step_count before the update)."""
    n, dim, batch = 23, 10, 5
    n_batches = n // batch                      # whole batches only, as train_epoch
    data, _ = make_data(n, dim, seed=3)
    rng = np.random.default_rng(4)
    counters = to_device(np.array([100, 17], np.uint32), backend)   # stale batch index
    data_d = to_device(data, backend)
    xb = to_device(np.zeros((batch, dim), np.float32), backend)
    nll = to_device(np.zeros(batch, np.float32), backend)
    kl = to_device(np.zeros(batch, np.float32), backend)
    step_count = 100                            # the optimizer's step count
    for epoch in range(2):
        perm = rng.permutation(n).astype(np.int32)
        perm_d = to_device(perm, backend)
        losses = to_device(np.full(n_batches, np.nan, np.float32), backend)
        counters[...] = to_device(np.array([step_count, 0], np.uint32), backend)
        expected_losses = []
        for i in range(n_batches):
            run(ops.gather_rows(data_d, perm_d, counters, batch, True, SEED, xb), backend)
            expected_xb = binarize_batch(data[perm[i * batch:(i + 1) * batch]], SEED, step_count)
            np.testing.assert_array_equal(to_host(xb), expected_xb,
                                          err_msg=f"epoch {epoch} batch {i}")
            # stand-ins for the model's per-row nll and kl
            nll_h, kl_h = expected_xb.sum(axis=1) + i, np.full(batch, 0.5 * epoch, np.float32)
            nll[...], kl[...] = to_device(nll_h.astype(np.float32), backend), to_device(kl_h, backend)
            run(ops.end_step(nll, kl, to_device(ONE, backend), counters, losses), backend)
            expected_losses.append((nll_h.astype(np.float64) + kl_h).mean())
            step_count += 1
        np.testing.assert_allclose(to_host(losses), expected_losses, rtol=LOSS_RTOL)
        np.testing.assert_array_equal(to_host(counters), [step_count, n_batches])


def test_launch_shapes_and_types():
    data, perm = make_data(10, 4)
    counters = np.zeros(2, np.uint32)
    launch = ops.gather_rows(data, perm, counters, 3, True, 2 ** 32 + 9, np.zeros((3, 4), np.float32))
    assert [type(a) for a in launch.args[4:]] == [np.int32] * 3 + [np.uint32] * 3
    assert [int(a) for a in launch.args[4:]] == [3, 4, 1, 9, 1, 3]   # 10 // 3 = 3 batches
    end = ops.end_step(np.zeros(37, np.float32), np.zeros(37, np.float32), ONE, counters,
                       np.zeros(5, np.float32))
    assert end.grid == (1,) and end.block == (64,)
    assert end.args[2] is ONE, "the KL weight is read on the device, never passed by value"
    assert [type(a) for a in end.args[5:]] == [np.int32, np.uint32]
    assert [int(a) for a in end.args[5:]] == [37, 5]


@pytest.mark.parametrize("change, message", [
    (dict(perm=np.zeros(10, np.int64)), "perm .*int32"),     # cast int64 permutations first
    (dict(batch_size=11), r"batch_size .*\[1, 10\]"),
    (dict(xb=np.zeros((3, 5), np.float32)), r"xb must have shape \(3, 4\).*\(3, 5\)"),
    (dict(data=np.zeros(40, np.float32)), r"data .*2-D .*\(40,\)"),
    (dict(counters=np.zeros(2, np.uint64)), "counters"),
])
def test_gather_rows_rejects_bad_arguments(change, message):
    args = dict(data=np.zeros((10, 4), np.float32), perm=np.zeros(10, np.int32),
                counters=np.zeros(2, np.uint32), batch_size=3, binarize=False, seed=1,
                xb=np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match=message):
        ops.gather_rows(**{**args, **change})


def test_end_step_rejects_bad_arguments():
    counters = np.zeros(2, np.uint32)
    with pytest.raises(ValueError, match=r"nll \(4,\) and kl \(5,\)"):
        ops.end_step(np.zeros(4, np.float32), np.zeros(5, np.float32), ONE, counters,
                     np.zeros(2, np.float32))
    with pytest.raises(ValueError, match=r"nll \(0,\).*B >= 1"):
        ops.end_step(np.zeros(0, np.float32), np.zeros(0, np.float32), ONE, counters,
                     np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="losses"):
        ops.end_step(np.zeros(4, np.float32), np.zeros(4, np.float32), ONE, counters,
                     np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="counters"):
        ops.end_step(np.zeros(4, np.float32), np.zeros(4, np.float32), ONE,
                     np.zeros(3, np.uint32), np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="kl_weight"):
        ops.end_step(np.zeros(4, np.float32), np.zeros(4, np.float32), np.ones(2, np.float32),
                     counters, np.zeros(2, np.float32))


# ------------------------------------------------------------------ step_terms
def step_terms(backend, recon, kl, counters, n_slots, thread_order=None):
    """terms after one step_terms launch; they start NaN."""
    terms = to_device(np.full((2, n_slots), np.nan, np.float32), backend)
    launch = ops.step_terms(to_device(recon, backend), to_device(kl, backend),
                            to_device(np.array(counters, np.uint32), backend), terms)
    launch_on(backend, launch, thread_order)
    return to_host(terms)


@pytest.mark.parametrize("rows", [1, 37, 1000, 5000])
def test_step_terms_match_twin(backend, rows):
    """Double sums of float32 rows, rounded once: the twin's float64 sum rounds to the same
    float32 but in the last place (a double tree sum of <= 5000 terms errs by ~1e-13 of
    the total, far below float32's 6e-8)."""
    recon, kl = loss_inputs(rows, seed=rows)
    kl = kl - 0.25                                       # KL estimates can be negative
    got = step_terms(backend, recon, kl, [5, 1], 3)
    want = step_twins.step_terms(recon, kl, np.array([5, 1], np.uint32),
                                 np.full((2, 3), np.nan, np.float32))
    assert np.isnan(got[:, [0, 2]]).all(), "only slot counters[1] may be written"
    np.testing.assert_allclose(got[:, 1], want[:, 1], rtol=2 ** -23)


def test_step_terms_are_deterministic_and_write_nothing_past_the_epoch():
    recon, kl = loss_inputs(1000, seed=3)
    results = {order: step_terms("emulated", recon, kl, [0, 0], 1, order) for order in THREAD_ORDERS}
    assert len({r.tobytes() for r in results.values()}) == 1, f"order-dependent sums: {results}"
    assert np.isnan(step_terms("emulated", recon, kl, [0, 2], 2)).all()    # batch 2 of 2 slots
    assert np.isnan(step_twins.step_terms(recon, kl, np.array([0, 2], np.uint32),
                                          np.full((2, 2), np.nan, np.float32))).all()


def test_step_terms_rejects_bad_arguments():
    counters = np.zeros(2, np.uint32)
    with pytest.raises(ValueError, match=r"recon \(4,\) and kl \(5,\)"):
        ops.step_terms(np.zeros(4, np.float32), np.zeros(5, np.float32), counters,
                       np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"terms must have shape \(2, batches"):
        ops.step_terms(np.zeros(4, np.float32), np.zeros(4, np.float32), counters,
                       np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="counters"):
        ops.step_terms(np.zeros(4, np.float32), np.zeros(4, np.float32), np.zeros(2, np.int32),
                       np.zeros((2, 3), np.float32))
