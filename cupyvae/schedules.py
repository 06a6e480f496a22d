"""Training schedules and the device-resident hyperparameters (NumPy twin of kernels/schedule.cu).

Every hyperparameter a training step reads lives in two small arrays next to the step
counters (kernels/schedule.cuh): `hyper` (float64, HYPER_SIZE), written by the host from the
training options (`hyper_array`), and `sched` (float32, SCHED_SIZE), this step's values,
computed from `hyper` and the step counter at the start of every step (`schedule_step`, the
twin of the kernel of the same name).  So no launch carries a hyperparameter, a captured
CUDA graph follows every schedule by itself, and changing a value between epochs or fit
calls is one write into `hyper`, never a new capture.  The NumPy executor calls the same
`schedule_step` every step, so both paths train with the very same float32 values.

Schedules, each a function of s = the number of updates done before this one (0-based):
    learning rate   optional linear warm-up over `lr_warmup_steps` (Goyal et al. 2017,
                    "Accurate, large minibatch SGD"): update s < W uses lr (s + 1) / W;
                    then `lr_schedule`: "constant", or "cosine" decay from lr to lr_min over
                    `lr_decay_steps` steps after the warm-up (Loshchilov & Hutter 2017,
                    "SGDR", eq. 5 without restarts): lr_min + (lr - lr_min)(1 + cos(pi p)) / 2,
                    p = min((s - W) / D, 1).
    KL weight beta  constant `kl_weight`, optionally with a linear warm-up from 0 over
                    `kl_warmup_steps` steps: beta s / N for s < N (KL annealing, Bowman et al.
                    2016, "Generating sentences from a continuous space"; the linear warm-up
                    of Sonderby et al. 2016, "Ladder variational autoencoders").
    Adam            the bias corrections of step t = s + 1 folded into step_size and eps_hat
                    (cupyvae.optim).
Gradient clipping by global norm is not a schedule: its factor comes from the gradient
(cupyvae.optim.grad_clip_scale, kernels/grad_clip.cu) and lands in sched[SCHED_CLIP_SCALE].

    hyper = hyper_array(options, adam)                # float64 (HYPER_SIZE,)
    sched = schedule_step(np.array([s, 0], np.uint32), hyper)   # float32 (SCHED_SIZE,)
"""
from __future__ import annotations

import math

import numpy as np

from .options import OptionError
from .registry import Registry

# Slots of `hyper` and `sched`: mirrors of the #defines in kernels/schedule.cuh (a test
# reads the header and compares).
HYPER_LR = 0
HYPER_LR_MIN = 1
HYPER_LR_WARMUP_STEPS = 2
HYPER_LR_DECAY_STEPS = 3
HYPER_BETA1 = 4
HYPER_BETA2 = 5
HYPER_EPS = 6
HYPER_WEIGHT_DECAY = 7
HYPER_KL_WEIGHT = 8
HYPER_KL_WARMUP_STEPS = 9
HYPER_CLIP_NORM = 10
HYPER_SIZE = 11

SCHED_LR = 0
SCHED_STEP_SIZE = 1
SCHED_EPS_HAT = 2
SCHED_BETA1 = 3
SCHED_ONE_MINUS_BETA1 = 4
SCHED_BETA2 = 5
SCHED_ONE_MINUS_BETA2 = 6
SCHED_WEIGHT_DECAY = 7
SCHED_KL_WEIGHT = 8
SCHED_CLIP_SCALE = 9
SCHED_GRAD_NORM = 10
SCHED_SIZE = 11

OWNER = "training option"

# A learning-rate schedule maps the training options to the two numbers the device formula
# reads besides lr: (lr_min, decay steps); decay steps 0 means no decay.  It refuses options
# that do not fit it (OptionError naming the field).
LR_SCHEDULES: Registry = Registry("learning-rate schedule")


@LR_SCHEDULES.register("constant")
def constant_lr(options) -> tuple[float, int]:
    """lr at every step after the warm-up."""
    for name in ("lr_decay_steps", "lr_min"):
        if getattr(options, name):
            raise OptionError(name, getattr(options, name),
                              "applies to {lr_schedule} cosine only ({lr_schedule} is constant)",
                              OWNER)
    return 0.0, 0


@LR_SCHEDULES.register("cosine")
def cosine_lr(options) -> tuple[float, int]:
    """Cosine decay from lr to lr_min over lr_decay_steps steps after the warm-up
    (Loshchilov & Hutter 2017); later steps keep lr_min."""
    if options.lr_decay_steps < 1:
        raise OptionError("lr_decay_steps", options.lr_decay_steps,
                          "the cosine schedule needs the number of steps to decay over (>= 1)",
                          OWNER)
    if options.lr_min > options.lr:
        raise OptionError("lr_min", options.lr_min,
                          f"must not exceed {{lr}} {options.lr!r} (the cosine schedule decays "
                          "from {lr} to {lr_min})", OWNER)
    return options.lr_min, options.lr_decay_steps


def hyper_array(options, adam) -> np.ndarray:
    """The device's `hyper` (float64, (HYPER_SIZE,)) for TrainingOptions `options` and the
    Adam constants of `adam` (cupyvae.optim.Adam: beta1, beta2, eps).  HYPER_CLIP_NORM is 0
    without clipping (the plan then skips the clipping kernels)."""
    hyper = np.zeros(HYPER_SIZE, np.float64)
    lr_min, decay_steps = LR_SCHEDULES.get(options.lr_schedule)(options)
    hyper[HYPER_LR] = options.lr
    hyper[HYPER_LR_MIN] = lr_min
    hyper[HYPER_LR_WARMUP_STEPS] = options.lr_warmup_steps
    hyper[HYPER_LR_DECAY_STEPS] = decay_steps
    hyper[HYPER_BETA1] = adam.beta1
    hyper[HYPER_BETA2] = adam.beta2
    hyper[HYPER_EPS] = adam.eps
    hyper[HYPER_WEIGHT_DECAY] = options.weight_decay
    hyper[HYPER_KL_WEIGHT] = options.kl_weight
    hyper[HYPER_KL_WARMUP_STEPS] = options.kl_warmup_steps
    hyper[HYPER_CLIP_NORM] = 0.0 if options.clip_norm is None else options.clip_norm
    return hyper


# ---------------------------------------------------------------------------------------
# Twin of kernels/schedule.cu: the same double operations in the same order (Python floats
# are IEEE doubles, and math.cos/expm1/log1p call the C library the emulator's kernels
# call), each result rounded to float32 once: the same bits as the kernel on the emulator.
# ---------------------------------------------------------------------------------------

def learning_rate(s: float, hyper: np.ndarray) -> float:
    """The learning rate of update s (0-based), in double: the warm-up times the schedule."""
    warmup, decay = float(hyper[HYPER_LR_WARMUP_STEPS]), float(hyper[HYPER_LR_DECAY_STEPS])
    lr = float(hyper[HYPER_LR])
    if decay > 0.0:
        progress = min(max(s - warmup, 0.0) / decay, 1.0)
        lr_min = float(hyper[HYPER_LR_MIN])
        lr = lr_min + (lr - lr_min) * ((1.0 + math.cos(math.pi * progress)) * 0.5)
    if s < warmup:
        lr = lr * ((s + 1.0) / warmup)
    return lr


def bias_correction(beta: np.float32, t: float) -> float:
    """1 - beta^t for the float32 beta, as -expm1(t log1p(-(1 - beta))) in double."""
    x = -(1.0 - float(beta))
    log = -math.inf if x == -1.0 else math.log1p(x)   # C's log1p(-1) = -inf; Python raises
    return -math.expm1(t * log)


def kl_weight(s: float, hyper: np.ndarray) -> float:
    """The KL weight of update s, in double: linear from 0 over the warm-up, then constant."""
    warmup, weight = float(hyper[HYPER_KL_WARMUP_STEPS]), float(hyper[HYPER_KL_WEIGHT])
    if s < warmup:
        weight = weight * (s / warmup)
    return weight


def schedule_step(counters: np.ndarray, hyper: np.ndarray) -> np.ndarray:
    """This step's `sched` (float32, (SCHED_SIZE,)) for the step counter counters[0]; the twin
    of kernels/schedule.cu schedule_step (SCHED_GRAD_NORM, which only clipping writes, is 0)."""
    s = float(counters[0])
    t = s + 1.0
    lr = learning_rate(s, hyper)
    beta1, beta2 = np.float32(hyper[HYPER_BETA1]), np.float32(hyper[HYPER_BETA2])
    c1 = bias_correction(beta1, t)
    sqrt_c2 = math.sqrt(bias_correction(beta2, t))
    sched = np.zeros(SCHED_SIZE, np.float32)
    sched[SCHED_LR] = lr
    sched[SCHED_STEP_SIZE] = lr * sqrt_c2 / c1
    sched[SCHED_EPS_HAT] = float(hyper[HYPER_EPS]) * sqrt_c2
    sched[SCHED_BETA1] = beta1
    sched[SCHED_ONE_MINUS_BETA1] = np.float32(1) - beta1
    sched[SCHED_BETA2] = beta2
    sched[SCHED_ONE_MINUS_BETA2] = np.float32(1) - beta2
    sched[SCHED_WEIGHT_DECAY] = hyper[HYPER_WEIGHT_DECAY]
    sched[SCHED_KL_WEIGHT] = kl_weight(s, hyper)
    sched[SCHED_CLIP_SCALE] = 1.0
    return sched
