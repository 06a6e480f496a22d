"""Running a training step many times: issued launch by launch ("eager"), or captured once
and replayed ("graph": a CUDA graph on device "cuda", a recorded launch list on "emulated").

Why graphs: a step of the 784-200-2 model is ~18 small kernels of a few microseconds each,
and issuing one from Python through CuPy costs several microseconds of host time, so an
eager step is bound by the host, not by the GPU.  A CUDA graph freezes the step's kernels,
grids, blocks and arguments, and one cudaGraphLaunch replays all of them.  That is sound
because the step plan (cupyvae.cuda.executor) allocates nothing, reads nothing back and
keeps every per-step value (step count, batch index) in the device array `counters`,
advanced by the step's last kernel: replaying the frozen launches is running the next step.

Execution modes (EXECUTION_MODES; DEFAULT_EXECUTION per device):
    "eager"  every launch of every step is issued from Python (kernels bound once).
    "graph"  the step is captured into graphs of `steps_per_graph` consecutive steps
             (DEFAULT_STEPS_PER_GRAPH; None = the whole epoch in one graph), each replayed
             with one launch; the n % K steps left over get a graph of their own.  On
             "cuda" that is CuPy stream capture; on "emulated" the launches are *recorded*
             into a list exactly as capture records them and the list is replayed, so the
             chunking, warm-up and replay logic all run in CI.

Rules of CUDA stream capture this module enforces (it is what makes a capture fail):
    * nothing may be compiled or loaded during capture: bind() resolves every kernel
      first, and the executor runs one eager warm-up step (lazy kernel loading) first;
    * nothing may be allocated: a thread-local CuPy allocator that raises
      GraphCaptureError is installed for the capture (cupy.cuda.using_allocator);
    * nothing may synchronize or copy host<->device (CUDA invalidates the capture; the
      error is re-raised as GraphCaptureError);
    * capture runs in CUDA's THREAD-LOCAL mode, not CuPy's default relaxed one: a
      potentially unsafe call made by this thread during the capture (cudaMalloc from
      code that bypasses CuPy's allocator, a legacy-stream call, a module load) is then
      an error CUDA reports, instead of something silently captured or silently run
      outside the graph.  Other threads' calls are not affected;
    * the legacy default stream cannot be captured: capture and replay use the caller's
      private non-blocking stream, and a failed capture is always ended, so that stream
      stays usable.

Both kinds of launch (cupyvae.cuda.launch: RawKernel Launch and ElementwiseLaunch) bind
to a callable that only issues its kernel, so both capture the same way.

Progress counts steps DONE, not steps queued: after each graph launch (each eager step)
an event is recorded on the stream, and `progress(n)` is called once the event has
completed -- polled without blocking while work is queued, then waited for in order at
the end of the epoch.  On "cuda" that is a cupy.cuda.Event; on "emulated" every launch
has finished when the call returns, so its event (CompletedEvent) is complete at once.
The bookkeeping (StepProgress) is the same on both, and a test drives it with events
that complete late.

    step = bind(plan, "cuda")                       # plan: list of Launch
    graph = capture(step, 50, "cuda", stream)       # 50 steps, one graph
    graph.launch()                                  # runs the 50 steps on `stream`
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from .ops._checks import positive_int

EXECUTION_MODES = ("eager", "graph")
# The emulator's "graph" is a recorded replay: no faster there, so eager stays its default.
DEFAULT_EXECUTION = {"cuda": "graph", "emulated": "eager"}
# Steps per captured graph.  One graph launch costs a few microseconds of host time and a
# small gap on the GPU; at 50 steps that is < 0.1 us per step, while capture and
# instantiation (~18 nodes per step) stay in the milliseconds.  None captures whole epochs.
DEFAULT_STEPS_PER_GRAPH = 50


class GraphCaptureError(RuntimeError):
    """Something issued inside a captured step did what capture forbids (allocate memory,
    synchronize, copy between host and device, load a module)."""


def resolve_execution(device: str, execution: str | None) -> str:
    """`execution` checked, or the device's default when it is None."""
    if execution is None:
        return DEFAULT_EXECUTION[device]
    if execution not in EXECUTION_MODES:
        raise ValueError(f"execution must be one of {', '.join(EXECUTION_MODES)} "
                         f"(or None for the device's default), got {execution!r}")
    return execution


def check_steps_per_graph(steps_per_graph) -> int | None:
    """A positive int, or None for whole epochs."""
    if steps_per_graph is None:
        return None
    return positive_int("steps_per_graph", steps_per_graph, " or None (whole epochs)")


@dataclass(frozen=True)
class BoundLaunch:
    """A launch whose kernel is already resolved (compiled and loaded): calling it issues
    the kernel on the current stream and does nothing else."""

    call: Callable[[], None]
    name: str       # "file.entry" or "elementwise.name", for messages

    def __call__(self) -> None:
        self.call()


def bind(launches: Iterable, device: str) -> tuple[BoundLaunch, ...]:
    """Resolve each launch's kernel once (compiling and loading its module if needed);
    launches are cupyvae.cuda.launch.Launch or ElementwiseLaunch."""
    return tuple(BoundLaunch(launch.bind(device), launch.name) for launch in launches)


def issue(step: Sequence[Callable[[], None]], steps: int = 1) -> None:
    """Issue the calls of `step`, in order, `steps` times (on the current stream)."""
    for _ in range(steps):
        for call in step:
            call()


class RecordedSteps:
    """The emulator's graph: the calls `steps` steps issue, recorded once as capture
    records them, replayed in order by launch()."""

    def __init__(self, step: Sequence[Callable[[], None]], steps: int):
        recorded: list[Callable[[], None]] = []
        issue([_recorder(recorded, call) for call in step], steps)
        self.calls = tuple(recorded)
        self.steps = steps

    def launch(self) -> None:
        for call in self.calls:
            call()


def _recorder(recorded: list, call: Callable[[], None]) -> Callable[[], None]:
    """A stand-in for `call` that, issued, records `call` instead of running it."""
    return lambda: recorded.append(call)


class CudaGraphSteps:
    """`steps` steps captured in one instantiated CUDA graph; launch() replays them on the
    stream they were captured on (asynchronously, like any launch)."""

    def __init__(self, graph, steps: int, stream):
        self.graph, self.steps, self.stream = graph, steps, stream

    def launch(self) -> None:
        self.graph.launch(self.stream)


def capture(step: Sequence[Callable[[], None]], steps: int, device: str, stream=None):
    """`steps` repetitions of `step` as one replayable object with .launch() and .steps.

    "cuda": CUDA stream capture on `stream` (a cupy.cuda.Stream, not the default stream);
    nothing runs now.  "emulated": a RecordedSteps (`stream` is unused).
    """
    if steps < 1:
        raise ValueError(f"a graph must hold at least one step, got {steps}")
    if device == "emulated":
        return RecordedSteps(step, steps)
    if device != "cuda":
        raise ValueError(f"device must be 'cuda' or 'emulated', got {device!r}")
    return CudaGraphSteps(_capture_cuda(step, steps, stream), steps, stream)


def _capture_cuda(step, steps: int, stream):
    import cupy  # lazy: CuPy exists only on GPU machines

    if stream is None or stream.ptr in (0, 1):   # 0: legacy default stream, 1: per-thread
        raise ValueError("CUDA graph capture needs a private stream, e.g. "
                         "cupy.cuda.Stream(non_blocking=True); got the default stream")
    with stream:
        stream.begin_capture(mode=cupy.cuda.runtime.streamCaptureModeThreadLocal)
        try:
            with cupy.cuda.using_allocator(_refuse_allocation):
                issue(step, steps)
        except GraphCaptureError:
            _end_failed_capture(stream)
            raise
        except Exception as exc:   # e.g. CUDARuntimeError: a synchronizing call in the step
            _end_failed_capture(stream)
            raise GraphCaptureError(
                f"capturing the training step failed ({type(exc).__name__}: {exc}); inside "
                "capture no call may synchronize, copy between host and device, allocate "
                "memory or load a module") from exc
        except BaseException:      # KeyboardInterrupt: end the capture, keep the exception
            _end_failed_capture(stream)
            raise
        return stream.end_capture()


def _refuse_allocation(size: int):
    """The CuPy allocator during capture: memory allocated there would be reused after the
    capture while the graph still points at it, so any allocation is a bug in the plan."""
    raise GraphCaptureError(
        f"device allocation of {size} bytes during CUDA graph capture: every buffer a "
        "captured step uses must be allocated before capture (the workspace)")


def _end_failed_capture(stream) -> None:
    """End a capture that went wrong, so the stream can be used again.  CUDA reports an
    invalidated capture as an error of cudaStreamEndCapture: expected here, and dropped."""
    try:
        stream.end_capture()
    except Exception:  # noqa: BLE001 -- the error that broke the capture is what matters
        pass


class CompletedEvent:
    """The emulator's event: its launches ran to completion before the call returned."""

    done = True

    def synchronize(self) -> None:
        pass


COMPLETED = CompletedEvent()


def record_event(device: str):
    """An event recorded on the current stream, with .done (non-blocking query) and
    .synchronize(); complete once everything queued before it has run."""
    if device == "emulated":
        return COMPLETED
    import cupy  # lazy: CuPy exists only on GPU machines

    event = cupy.cuda.Event(disable_timing=True)
    event.record()
    return event


class StepProgress:
    """Calls `progress(n)` for steps that have RUN: queued(n) records an event after n
    newly issued steps and reports, in order, every batch whose event has completed;
    finish() waits for the rest, in order.  Events on one stream complete in the order
    they were recorded, so only the oldest pending one is ever queried."""

    def __init__(self, progress: Callable[[int], None] | None,
                 new_event: Callable[[], object]):
        self.progress, self.new_event = progress, new_event
        self.pending: deque = deque()

    def queued(self, steps: int) -> None:
        if self.progress is None:
            return
        self.pending.append((self.new_event(), steps))
        self._report(wait=False)

    def finish(self) -> None:
        self._report(wait=True)

    def _report(self, wait: bool) -> None:
        while self.pending:
            event, steps = self.pending[0]
            if not event.done:
                if not wait:
                    return
                event.synchronize()
            self.pending.popleft()
            self.progress(steps)


class EagerSteps:
    """Runs `n_steps` steps by issuing every launch from Python."""

    def __init__(self, step: Sequence[Callable[[], None]], device: str):
        self.step = tuple(step)
        self.new_event = lambda: record_event(device)

    def run(self, n_steps: int, progress: Callable[[int], None] | None = None) -> None:
        done = StepProgress(progress, self.new_event)
        for _ in range(n_steps):
            issue(self.step)
            done.queued(1)
        done.finish()


class ReplayedSteps:
    """Runs exactly `n_steps` steps as replays of graphs of up to `steps_per_graph` steps
    (None: one graph for all `n_steps`); the n_steps % K left over have their own graph.
    Both graphs are captured here, once."""

    def __init__(self, step: Sequence[Callable[[], None]], n_steps: int,
                 steps_per_graph: int | None, device: str, stream=None):
        self.n_steps = n_steps
        self.chunk = self.rest = None
        self.new_event = lambda: record_event(device)
        if n_steps == 0:
            return
        chunk = n_steps if steps_per_graph is None else min(steps_per_graph, n_steps)
        self.chunk = capture(step, chunk, device, stream)
        if n_steps % chunk:
            self.rest = capture(step, n_steps % chunk, device, stream)

    @property
    def graphs(self) -> tuple:
        return tuple(g for g in (self.chunk, self.rest) if g is not None)

    def run(self, n_steps: int, progress: Callable[[int], None] | None = None) -> None:
        """Replays on the graphs' stream (their events are recorded on the current stream,
        which the executor makes that same stream)."""
        if n_steps != self.n_steps:
            raise ValueError(f"these graphs replay exactly {self.n_steps} steps, asked for {n_steps}")
        if self.chunk is None:
            return
        launches = [self.chunk] * (n_steps // self.chunk.steps)
        if self.rest is not None:
            launches.append(self.rest)
        done = StepProgress(progress, self.new_event)
        for graph in launches:
            graph.launch()
            done.queued(graph.steps)
        done.finish()
