"""Eager vs replayed ("graph") execution of the training step (cupyvae.cuda.graph).

On the CPU the emulator replays a *recorded* launch list exactly as a CUDA graph replays a
capture, so everything except the capture itself is checked here: the device counters over
whole epochs, recorded == eager bit for bit (graphs of 1, 3, all and more-than-all steps),
the warm-up leaving no trace, capture once per plan, the batches an epoch consumes, and
bitwise reproducibility.  The capture itself (CuPy stream capture, the allocation guard)
is tested under the `gpu` marker and skipped without a GPU.
"""
import numpy as np
import pytest

import cupyvae
from cupyvae.cuda import graph
from cupyvae.cuda.graph import (DEFAULT_EXECUTION, EXECUTION_MODES, GraphCaptureError,
                                ReplayedSteps, RecordedSteps, bind, capture, issue)
from cupyvae.cuda.launch import to_host
from cupyvae.executors import EXECUTORS
from conftest import cuda_available

SHAPE = (4, 5)


def data(n, seed=0, shape=SHAPE):
    return np.random.default_rng(seed).random((n, *shape)).astype(np.float32)


def model(device="emulated", execution=None, steps_per_graph=graph.DEFAULT_STEPS_PER_GRAPH,
          **kw):
    """A small model whose executor runs in the given mode (set on the executor, so these
    tests do not depend on how VAE exposes the switch)."""
    args = dict(latent_dim=3, hidden=(7, 6), activation="tanh", seed=11)
    args.update(kw)
    vae = cupyvae.VAE(SHAPE, device=device, **args)
    vae._executor.execution = execution
    vae._executor.steps_per_graph = steps_per_graph
    return vae


def state(vae):
    """Everything training carries from step to step, as host arrays."""
    ex = vae._executor
    m, v = ex.host_moments()
    return {"params": ex.host_flat(), "adam.m": m, "adam.v": v,
            "counters": np.array(to_host(ex.counters))}


def assert_same_bits(a, b, what):
    for name in a:
        np.testing.assert_array_equal(a[name].view(np.uint8), b[name].view(np.uint8),
                                      err_msg=f"{what}: {name} differs")


def train(vae, x, epochs=2, batch_size=5, **kw):
    history = vae.fit(x, epochs=epochs, batch_size=batch_size, lr=3e-3, **kw)
    return history["train_loss"]


# ----------------------------------------------------------------------------- the switch
def test_execution_defaults_and_validation():
    spec = cupyvae.VAE(SHAPE, latent_dim=2, hidden=(3,)).spec
    assert DEFAULT_EXECUTION == {"cuda": "graph", "emulated": "eager"}
    ex = EXECUTORS.get("emulated")(spec)
    assert ex.execution == "eager" and ex.steps_per_graph == graph.DEFAULT_STEPS_PER_GRAPH
    ex = EXECUTORS.get("emulated")(spec, execution="graph", steps_per_graph=None)
    assert ex.execution == "graph" and ex.steps_per_graph is None
    with pytest.raises(ValueError, match="execution must be one of eager, graph.*'lazy'"):
        EXECUTORS.get("emulated")(spec, execution="lazy")
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="steps_per_graph must be a positive integer"):
            EXECUTORS.get("emulated")(spec, steps_per_graph=bad)
    assert EXECUTION_MODES == ("eager", "graph")


# ----------------------------------------------------------------------------- counters
@pytest.mark.parametrize("execution, steps_per_graph", [("eager", 1), ("graph", 1), ("graph", 3)])
def test_device_counters_advance_over_whole_epochs(execution, steps_per_graph):
    """counters = [global step, batch in epoch]: after each epoch of 23 // 5 = 4 batches the
    step has advanced by 4 (it keys Philox and Adam) and the batch index equals 4."""
    vae = model(execution=execution, steps_per_graph=steps_per_graph)
    x = data(23)
    for epoch in (1, 2, 3):
        train(vae, x, epochs=1)
        counters = state(vae)["counters"]
        np.testing.assert_array_equal(counters, [4 * epoch, 4], err_msg=f"after epoch {epoch}")
        assert vae.optimizer.step_count == 4 * epoch


# ----------------------------------------------------------------------------- replay
def test_a_recorded_step_replays_n_times_like_eager_execution_bit_for_bit():
    """Record the launches of one step into a list, as capture does (nothing runs while
    recording), replay the list N times: the same bits as issuing the step N times."""
    steps = 7
    x = data(5 * steps)
    eager, replayed = model(), model()
    train(eager, x, epochs=1)                      # one epoch each: plans, moments, permutation
    train(replayed, x, epochs=1)
    for vae in (eager, replayed):                  # the next epoch's counters, as train_epoch sets
        vae._executor.counters[...] = [steps, 0]
    step_e = bind(eager._executor._plan, "emulated")
    step_r = bind(replayed._executor._plan, "emulated")
    before = {"flat": replayed._executor.flat.copy(), "counters": replayed._executor.counters.copy()}
    recording = capture(step_r, steps, "emulated")
    assert isinstance(recording, RecordedSteps) and recording.steps == steps
    assert recording.calls == step_r * steps, "the recording is the step's launches, in order"
    np.testing.assert_array_equal(replayed._executor.flat, before["flat"], "recording ran a kernel")
    np.testing.assert_array_equal(replayed._executor.counters, before["counters"])
    issue(step_e, steps)
    recording.launch()
    for name in ("flat", "m", "v", "grad_flat", "counters", "_epoch_out"):
        np.testing.assert_array_equal(getattr(replayed._executor, name),
                                      getattr(eager._executor, name), err_msg=name)
    np.testing.assert_array_equal(eager._executor.counters, [2 * steps, steps])


@pytest.mark.parametrize("steps_per_graph", [1, 3, 4, None, 50])
@pytest.mark.parametrize("binarize", [False, True])
def test_graph_execution_equals_eager_bit_for_bit(steps_per_graph, binarize):
    """23 rows in batches of 5: 4 steps per epoch, so K = 3 leaves a remainder graph of 1,
    K = 4 and None take the epoch in one graph, K = 50 is capped to the epoch.  The first
    epoch also checks that the warm-up step before capture leaves no trace."""
    x = data(23, seed=1)
    eager = model(execution="eager")
    replayed = model(execution="graph", steps_per_graph=steps_per_graph)
    losses_e = train(eager, x, epochs=3, binarize=binarize)
    losses_r = train(replayed, x, epochs=3, binarize=binarize)
    assert losses_r == losses_e
    assert_same_bits(state(replayed), state(eager), f"graph K={steps_per_graph} vs eager")
    assert replayed.loss(x) == eager.loss(x)


def test_gaussian_likelihood_and_relu_replay_like_eager():
    x = data(16, seed=2)
    kw = dict(likelihood="gaussian-sigmoid", activation="relu", hidden=(8,))
    eager = model(execution="eager", **kw)
    replayed = model(execution="graph", steps_per_graph=2, **kw)
    assert train(replayed, x, batch_size=4) == train(eager, x, batch_size=4)
    assert_same_bits(state(replayed), state(eager), "gaussian likelihood")


def test_switching_modes_between_epochs_changes_no_number():
    x = data(20, seed=3)
    reference, mixed = model(execution="eager"), model(execution="graph", steps_per_graph=3)
    train(reference, x, epochs=4)
    for epoch in range(4):
        mixed._executor.execution = ("graph", "eager")[epoch % 2]
        train(mixed, x, epochs=1)
    assert_same_bits(state(mixed), state(reference), "alternating eager/graph epochs")


def test_steps_are_captured_once_per_plan():
    """Within a fit the plan (data, batch size, optimizer settings) stays the same, so its
    graphs are captured at the first epoch and replayed by the others.  (A later fit call
    with data of the same shape reuses them too: tests/test_schedules.py.)"""
    vae = model(execution="graph", steps_per_graph=3)
    x = data(23, seed=4)
    per_epoch = []
    vae.fit(x, epochs=3, batch_size=5, on_epoch=lambda _: per_epoch.append(vae._executor._steps))
    assert isinstance(per_epoch[0], ReplayedSteps)
    assert per_epoch[1] is per_epoch[0] and per_epoch[2] is per_epoch[0], "recaptured"
    assert [g.steps for g in per_epoch[0].graphs] == [3, 1]   # 4 steps: a graph of 3, one of 1
    train(vae, x, epochs=1, batch_size=4)                      # 5 steps
    assert [g.steps for g in vae._executor._steps.graphs] == [3, 2]
    vae._executor.steps_per_graph = None                       # whole epochs
    assert vae._executor._steps is None, "a new K must drop the old graphs"
    train(vae, x, epochs=1, batch_size=4)
    assert [g.steps for g in vae._executor._steps.graphs] == [5]


def test_progress_counts_every_step_in_both_modes():
    x = data(23, seed=5)
    for execution, steps_per_graph, expected in [("eager", 3, [1, 1, 1, 1]),
                                                 ("graph", 3, [3, 1]), ("graph", None, [4])]:
        calls = []
        train(model(execution=execution, steps_per_graph=steps_per_graph), x, epochs=1,
              progress=calls.append)
        assert calls == expected, (execution, steps_per_graph)


def test_replayed_steps_run_exactly_their_step_count():
    calls = []
    replay = ReplayedSteps([lambda: calls.append("a"), lambda: calls.append("b")], 5, 2, "emulated")
    assert calls == [], "capture must not run the step"
    replay.run(5)
    assert calls == ["a", "b"] * 5
    with pytest.raises(ValueError, match="exactly 5 steps, asked for 4"):
        replay.run(4)
    ReplayedSteps([calls.append], 0, 2, "emulated").run(0)   # an empty epoch captures nothing
    with pytest.raises(ValueError, match="at least one step"):
        capture([], 0, "emulated")


# ----------------------------------------------------------------------------- progress from events
class FakeDevice:
    """Events complete in the order recorded, when the test says the 'device' got there
    (finished = how many have completed) or when the host waits for one."""

    def __init__(self):
        self.recorded = self.finished = 0

    def record(self):
        event = FakeEvent(self, self.recorded)
        self.recorded += 1
        return event


class FakeEvent:
    def __init__(self, device, index):
        self.device, self.index = device, index

    @property
    def done(self):
        return self.index < self.device.finished

    def synchronize(self):
        self.device.finished = max(self.device.finished, self.index + 1)


def _replay_with(device, n_steps=7, steps_per_graph=2, lag=None):
    """A ReplayedSteps of a trivial step whose events come from `device`; with lag=True the
    device completes every earlier graph just before the next is launched."""
    log = []
    replay = ReplayedSteps([lambda: None], n_steps, steps_per_graph, "emulated")
    replay.new_event = device.record
    for graph_ in replay.graphs:
        original = graph_.launch

        def launch(original=original):
            if lag:
                device.finished = device.recorded
            log.append("launch")
            original()
        graph_.launch = launch
    return replay, log


def test_progress_reports_steps_done_not_steps_queued():
    """The device has finished nothing while the host queues the epoch's graphs, so no
    progress is reported then; the rest is reported in order as the host waits for each
    graph's event -- never ahead of the device."""
    device = FakeDevice()
    replay, log = _replay_with(device)
    seen = []

    def progress(n):
        assert device.finished >= len(seen) + 1, "reported a graph whose event is not done"
        seen.append(n)
        log.append(f"progress {n}")

    replay.run(7, progress)
    assert log == ["launch"] * 4 + ["progress 2", "progress 2", "progress 2", "progress 1"]
    assert seen == [2, 2, 2, 1] and device.recorded == 4


def test_progress_follows_the_device_while_work_is_queued():
    """A device one graph behind the host: each finished graph is reported at the next
    launch, without waiting; only the last is waited for."""
    device = FakeDevice()
    replay, log = _replay_with(device, lag=True)
    replay.run(7, lambda n: log.append(f"progress {n}"))
    assert log == ["launch", "launch", "progress 2", "launch", "progress 2", "launch",
                   "progress 2", "progress 1"]


def test_no_events_without_a_progress_callback():
    device = FakeDevice()
    replay, _ = _replay_with(device)
    replay.run(7)
    assert device.recorded == 0


def test_eager_progress_counts_completed_steps():
    device = FakeDevice()
    eager = graph.EagerSteps([lambda: None], "emulated")
    eager.new_event = device.record
    seen = []
    eager.run(3, lambda n: seen.append((n, device.finished)))
    assert seen == [(1, 1), (1, 2), (1, 3)], "each step reported only once its event is done"


def test_emulated_events_are_complete_at_once():
    event = graph.record_event("emulated")
    assert event.done
    event.synchronize()


# ----------------------------------------------------------------------------- the data an epoch sees
@pytest.mark.parametrize("execution", ["eager", "graph"])
@pytest.mark.parametrize("n, batch", [(20, 5), (23, 5), (23, 23), (7, 1)])
def test_an_epoch_gathers_each_example_at_most_once(execution, n, batch):
    """Rows carry their index; after every step (progress is called per step with K = 1,
    and the emulator has finished the step by then) the gathered batch is read back.  The
    whole batches of one epoch hold each example at most once, and all of them when B | N;
    the next epoch has another order."""
    ids = np.arange(n, dtype=np.float32) / 64           # exact in float32, inside [0, 1]
    x = np.repeat(ids[:, None], np.prod(SHAPE), axis=1).reshape(n, *SHAPE)
    vae = model(execution=execution, steps_per_graph=1)
    seen = []

    def record_batch(_):
        gather = vae._executor._plan[0]
        assert gather.entry == "gather_rows"
        xb = gather.args[3]
        assert (xb == xb[:, :1]).all()
        seen.append(np.rint(xb[:, 0] * 64).astype(int))

    orders = []
    for _ in range(2):
        seen.clear()
        vae.fit(x, epochs=1, batch_size=batch, progress=record_batch)
        rows = np.concatenate(seen)
        assert len(seen) == n // batch and len(rows) == (n // batch) * batch
        assert len(np.unique(rows)) == len(rows), f"an example appeared twice: {sorted(rows)}"
        if n % batch == 0:
            np.testing.assert_array_equal(np.sort(rows), np.arange(n))
        orders.append(rows)
    if n > 1 and len(orders[0]) > 1:
        assert not np.array_equal(orders[0], orders[1]), "every epoch must reshuffle"


# ----------------------------------------------------------------------------- reproducibility
@pytest.mark.parametrize("execution", ["eager", "graph"])
def test_two_emulated_runs_with_one_seed_are_bitwise_identical(execution):
    x = data(25, seed=6)
    runs = [model(execution=execution, steps_per_graph=2) for _ in range(2)]
    losses = [train(vae, x, epochs=2, binarize=True) for vae in runs]
    assert losses[0] == losses[1]
    assert_same_bits(state(runs[0]), state(runs[1]), f"two {execution} runs")
    other = model(execution=execution, seed=12)
    assert train(other, x, epochs=2, binarize=True) != losses[0], "the seed must matter"


def test_inference_buffers_are_reused_and_give_the_same_numbers():
    """Evaluation keeps its forward-only buffers in one workspace between calls (fewer rows
    use the leading rows of the same buffers); results must not depend on what an earlier
    call left in them."""
    vae = model()
    x = data(12, seed=7)
    first = vae.loss(x), vae.encode(x), vae.decode(np.ones((5, 3), np.float32))
    buffers = dict(vae._executor._inference.ws.buffers)
    again = vae.loss(x), vae.encode(x[:5]), vae.encode(x), vae.decode(np.ones((5, 3), np.float32))
    assert again[0] == first[0]
    np.testing.assert_array_equal(again[1], first[1][:5])
    np.testing.assert_array_equal(again[2], first[1])
    np.testing.assert_array_equal(again[3], first[2])
    assert vae._executor._inference.ws.buffers.keys() == buffers.keys()
    assert all(vae._executor._inference.ws.buffers[name] is buffer
               for name, buffer in buffers.items()), "a buffer was allocated again"


# ----------------------------------------------------------------------------- CUDA capture
gpu = pytest.mark.gpu
needs_gpu = pytest.mark.skipif(not cuda_available(), reason="no CUDA GPU visible to CuPy")


@gpu
@needs_gpu
@pytest.mark.parametrize("steps_per_graph", [graph.DEFAULT_STEPS_PER_GRAPH, 3, None])
def test_cuda_graph_equals_cuda_eager_bit_for_bit(steps_per_graph):
    """Same kernels, same order, same device: the captured epoch must give the same bits as
    the eager one (23 rows, batch 5: 4 steps; K = 3 leaves a remainder graph)."""
    x = data(23, seed=8)
    eager = model("cuda", execution="eager")
    replayed = model("cuda", execution="graph", steps_per_graph=steps_per_graph)
    assert replayed._executor.execution == "graph"
    losses_e = train(eager, x, epochs=3, binarize=True)
    losses_r = train(replayed, x, epochs=3, binarize=True)
    steps = replayed._executor._steps
    assert isinstance(steps, ReplayedSteps)
    assert all(isinstance(g, graph.CudaGraphSteps) for g in steps.graphs), "not captured"
    assert losses_r == losses_e
    assert_same_bits(state(replayed), state(eager), f"cuda graph K={steps_per_graph} vs eager")
    assert replayed.loss(x) == eager.loss(x)


@gpu
@needs_gpu
def test_cuda_defaults_to_graph_of_the_default_size():
    x = data(40, seed=9)
    default, explicit = model("cuda", execution=None), model("cuda", execution="graph")
    assert default._executor.execution == "graph"
    assert default._executor.steps_per_graph == graph.DEFAULT_STEPS_PER_GRAPH
    losses = train(default, x, epochs=2, batch_size=8)
    assert all(np.isfinite(losses)) and losses == train(explicit, x, epochs=2, batch_size=8)


@gpu
@needs_gpu
def test_load_flat_before_a_graph_epoch_is_seen_by_the_graph():
    """load_flat queues its copy on the default stream; the graph runs on a private stream
    that must wait for it (the executor orders them with an event)."""
    x = data(20, seed=10)
    a, b = model("cuda", execution="graph"), model("cuda", execution="eager")
    train(a, x, epochs=1)
    train(b, x, epochs=1)
    fresh = a.spec.layout.zeros() + np.float32(0.01)
    for vae in (a, b):
        vae._executor.load_flat(fresh)
    train(a, x, epochs=1)
    train(b, x, epochs=1)
    assert_same_bits(state(a), state(b), "after load_flat")


@gpu
@needs_gpu
def test_allocation_during_capture_raises_and_leaves_the_stream_usable():
    import cupy

    stream = cupy.cuda.Stream(non_blocking=True)
    with pytest.raises(GraphCaptureError, match="allocation of .* bytes during CUDA graph capture"):
        capture([lambda: cupy.zeros(4, np.float32)], 1, "cuda", stream)
    assert not stream.is_capturing()
    # A legal step (one kernel, compiled and loaded beforehand) then captures and replays.
    out = cupy.zeros(4, np.float32)
    add_one = cupy.RawKernel(r'''extern "C" __global__ void add_one(float* y, int n) {
        int i = blockIdx.x * blockDim.x + threadIdx.x; if (i < n) y[i] += 1.0f; }''', "add_one")
    add_one((1,), (32,), (out, np.int32(0)))       # n = 0: loads the kernel, changes nothing
    replay = capture([lambda: add_one((1,), (32,), (out, np.int32(4)))], 3, "cuda", stream)
    np.testing.assert_array_equal(to_host(out), 0, "capture must not run the step")
    replay.launch()
    stream.synchronize()
    np.testing.assert_array_equal(to_host(out), 3)


@gpu
@needs_gpu
def test_capture_is_thread_local_so_a_raw_cuda_malloc_is_refused():
    """cudaMalloc called past CuPy's allocator (as non-CuPy code would) is an unsafe call:
    in THREAD_LOCAL capture mode CUDA refuses it, where CuPy's default relaxed mode would
    let it run silently outside the graph."""
    import cupy

    stream = cupy.cuda.Stream(non_blocking=True)
    pointers = []
    with pytest.raises(GraphCaptureError, match="capturing the training step failed"):
        capture([lambda: pointers.append(cupy.cuda.runtime.malloc(256))], 1, "cuda", stream)
    for pointer in pointers:
        cupy.cuda.runtime.free(pointer)
    assert not pointers, "the malloc should have been refused during capture"
    assert not stream.is_capturing()


@gpu
@needs_gpu
def test_elementwise_and_raw_kernels_capture_with_nothing_allocated():
    """Both kinds of launch, bound once, capture into one CUDA graph under the allocation
    guard, and its replay gives the eager launches' bits."""
    import cupy

    from cupyvae.cuda import ops
    from cupyvae.cuda.launch import run

    qraw = cupy.asarray(np.random.default_rng(0).standard_normal((37, 6)).astype(np.float32))
    z, zf, kl = (cupy.zeros((37, 3), np.float32), cupy.zeros((37, 3), np.float32),
                 cupy.zeros(37, np.float32))
    noise = cupy.zeros((5, 33), np.float32)
    counters = cupy.asarray(np.array([4, 0], np.uint32))
    launches = [ops.normal_fill(noise, 3, 2, 1), ops.gaussian_posterior_sample(qraw, 11, 4, 0, z),
                ops.gaussian_posterior_forward(qraw, counters, 11, 0, zf, kl)]
    run(launches, "cuda")
    eager = [to_host(a).copy() for a in (noise, z, zf)]
    for a in (noise, z, zf):
        a[...] = np.nan
    stream = cupy.cuda.Stream(non_blocking=True)
    replay = capture(bind(launches, "cuda"), 2, "cuda", stream)
    replay.launch()
    stream.synchronize()
    for name, got, want in zip(("normal_fill", "sample", "forward z"), (noise, z, zf), eager):
        np.testing.assert_array_equal(to_host(got), want, err_msg=name)
    np.testing.assert_array_equal(to_host(z), to_host(zf), "sample vs the forward's draw")


@gpu
@needs_gpu
def test_synchronizing_during_capture_is_reported_and_the_stream_recovers():
    import cupy

    stream = cupy.cuda.Stream(non_blocking=True)
    with pytest.raises(GraphCaptureError, match="capturing the training step failed"):
        capture([stream.synchronize], 1, "cuda", stream)
    assert not stream.is_capturing()
    with pytest.raises(ValueError, match="private stream"):
        capture([], 1, "cuda", cupy.cuda.Stream.null)
