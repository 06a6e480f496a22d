"""Launch builder for kernels/schedule.cu (twin: cupyvae.schedules.schedule_step).

`counters`: the device step counters [step, batch] (see cupyvae.cuda.ops._checks.require_counters);
`hyper` (float64) and `sched` (float32): the device hyperparameters (kernels/schedule.cuh).
"""
from __future__ import annotations

from ..launch import Launch
from ._checks import require_counters, require_hyper, require_same_array_kind, require_sched


def schedule_step(counters, hyper, sched) -> Launch:
    """sched = this step's learning rate, Adam step size and constants, KL weight and a clip
    scale of 1, from hyper and the step counter counters[0]; one thread."""
    require_counters(counters)
    require_hyper(hyper)
    require_sched(sched)
    require_same_array_kind(counters, hyper, sched)
    return Launch(kernel="schedule", entry="schedule_step", grid=(1,), block=(1,),
                  args=(counters, hyper, sched))

