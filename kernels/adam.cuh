// adam.cuh: one element of the Adam update (Kingma & Ba 2015), the body of the adam_update
// ElementwiseKernel over the flat buffers.  cupyvae/cuda/ops/adam.py builds it from one
// ElementwiseSpec (this header is its preamble): a cupy.ElementwiseKernel on the GPU, the same
// operation as a grid-stride kernel on the emulator.  Like Chainer's Adam on CuPy
// (chainer/optimizers/adam.py, AdamRule.update_core_gpu: one cuda.elementwise over param, m, v,
// with the bias corrections folded into the step size), except that the hyperparameters are
// not kernel arguments: they are read from the device array `sched` (raw), which
// schedule_step fills from the device step counter at the start of every step.  So the
// launch is the same every step and a captured graph replays the schedules.
//
// Per element, with this step's values s = sched (kernels/schedule.cuh):
//     g  = g * s[CLIP_SCALE] + wd p        (the `+ wd p` only when wd = s[WEIGHT_DECAY] != 0:
//                                           L2 decay added to the gradient, as torch.optim.Adam)
//     m  = b1 m + (1 - b1) g,     then m = 0 where |m| < ADAM_M_FLUSH (1e-30)
//     v  = b2 v + (1 - b2) g^2,   then v = 0 where  v  < ADAM_V_FLUSH (1e-36)
//     p  = p - step_size (m / (sqrt(v) + eps_hat))
// with step_size = lr sqrt(c2) / c1 and eps_hat = eps sqrt(c2) (both bias corrections folded
// in: lr (m / c1) / (sqrt(v / c2) + eps) = step_size m / (sqrt(v) + eps_hat)).
// The flushes keep m and v out of float32's subnormal range, where CPU arithmetic is ~60x
// slower; why they change no result (a weight moves by < 1e-22 in all, v's not at all):
// the docstring of cupyvae.optim.adam_update.
// Not a gradient kernel: g is read; p, m, v are updated in place (read-modify-write).
// float32 throughout, every operation rounded once, in this order: the NumPy twin
// cupyvae.optim.adam_update does the same operations in the same order, so the two agree
// bit for bit on the emulator, and on a GPU too: every product that meets an addition is a
// __fmul_rn, which is never contracted into an FMA; division and sqrtf are IEEE-rounded
// (no fast math).
// Layouts: p, g, m, v: (n,) float32, the flat buffers of one layout; sched: float[SCHED_SIZE].
#pragma once
#include "schedule.cuh"

#define ADAM_M_FLUSH 1e-30f
#define ADAM_V_FLUSH 1e-36f

// __fmul_rn: a product that is never fused with the addition after it, whatever NVRTC's
// --fmad setting, so the GPU rounds exactly like the emulator and the twin.
__device__ inline void adam_element(float& p, float g, float& m, float& v, const float* sched)
{
    g = __fmul_rn(g, sched[SCHED_CLIP_SCALE]);
    float weight_decay = sched[SCHED_WEIGHT_DECAY];
    if (weight_decay != 0.0f) {
        g = g + __fmul_rn(weight_decay, p);
    }
    m = __fmul_rn(sched[SCHED_BETA1], m) + __fmul_rn(sched[SCHED_ONE_MINUS_BETA1], g);
    m = fabsf(m) < ADAM_M_FLUSH ? 0.0f : m;
    v = __fmul_rn(sched[SCHED_BETA2], v) + __fmul_rn(sched[SCHED_ONE_MINUS_BETA2], __fmul_rn(g, g));
    v = v < ADAM_V_FLUSH ? 0.0f : v;
    p = p - __fmul_rn(sched[SCHED_STEP_SIZE], m / (sqrtf(v) + sched[SCHED_EPS_HAT]));
}
