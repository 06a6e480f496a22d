// schedule_step: this step's hyperparameters, from the device step counter, at the start of
// every training step (one thread).  Every schedule is a function of s = counters[0], the
// number of updates done before this one (0 for the first step), so a replayed CUDA graph
// follows the schedules by itself.
//
// Learning rate (W = warm-up steps, D = decay steps, lr and lr_min from `hyper`):
//     base(s) = lr                                                     D = 0 (constant)
//     base(s) = lr_min + (lr - lr_min) (1 + cos(pi p)) / 2,            D > 0 (cosine)
//               p = min(max(s - W, 0) / D, 1)
//         (cosine annealing, Loshchilov & Hutter 2017, SGDR eq. 5, without restarts;
//          steps after W + D keep lr_min)
//     lr(s)   = base(s) (s + 1) / W  for s < W,  base(s) after
//         (linear warm-up, Goyal et al. 2017: the first update uses lr / W, update W uses lr)
// Adam's bias corrections (Kingma & Ba 2015) for t = s + 1, from the float32 betas the
// update multiplies by, folded into the step (as cupyvae.optim documents):
//     c = 1 - b^t = -expm1(t log1p(-(1 - b)))   (1 - b exact; no cancellation at small t;
//                                                b = 0: log1p(-1) = -inf, c = 1)
//     step_size = lr(s) sqrt(c2) / c1,  eps_hat = eps sqrt(c2)
// KL weight beta (N = KL warm-up steps; KL annealing, Bowman et al. 2016; the linear
// warm-up from 0 of Sonderby et al. 2016):
//     kl(s) = beta s / N  for s < N (so the first step has weight 0),  beta after
// Clipping: SCHED_CLIP_SCALE = 1 here; grad_clip_scale (grad_clip.cu), when the plan runs
// it, overwrites it after the backward pass.
//
// Everything is computed in double and rounded to float32 once per value, so the NumPy
// twin (cupyvae.schedules.schedule_step, Python floats = IEEE doubles calling the same libm
// cos/expm1/log1p as the emulator) gives the same bits on the emulator.  On a GPU the
// arithmetic rounds alike (the one product feeding an addition is a __dmul_rn, never fused
// into an FMA), but CUDA's double cos/expm1/log1p may differ from glibc's by an ulp, and
// such an ulp survives the rounding to float32 with a probability of about 2^-28 per value.
// Layouts: counters: unsigned int[2] (counters[0] = global step); hyper: double[HYPER_SIZE];
//          sched: float[SCHED_SIZE], every slot but SCHED_GRAD_NORM written with `=`.
// Launch:  one thread (grid (1,), block (1,)); other threads return at once.
// No gradient: nothing here is differentiated.
#include "schedule.cuh"

#define SCHEDULE_PI 3.141592653589793  // the double nearest pi (Python's math.pi)

__device__ inline double schedule_learning_rate(double s, const double* hyper)
{
    double warmup = hyper[HYPER_LR_WARMUP_STEPS];
    double decay = hyper[HYPER_LR_DECAY_STEPS];
    double lr = hyper[HYPER_LR];
    if (decay > 0.0) {
        double progress = fmin(fmax(s - warmup, 0.0) / decay, 1.0);
        double lr_min = hyper[HYPER_LR_MIN];
        lr = lr_min + __dmul_rn(lr - lr_min, (1.0 + cos(SCHEDULE_PI * progress)) * 0.5);
    }
    if (s < warmup) {
        lr = lr * ((s + 1.0) / warmup);
    }
    return lr;
}

__device__ inline double schedule_bias_correction(float beta, double t)
{
    return -expm1(t * log1p(-(1.0 - (double)beta)));
}

__device__ inline double schedule_kl_weight(double s, const double* hyper)
{
    double warmup = hyper[HYPER_KL_WARMUP_STEPS];
    double kl_weight = hyper[HYPER_KL_WEIGHT];
    if (s < warmup) {
        kl_weight = kl_weight * (s / warmup);
    }
    return kl_weight;
}

extern "C" __global__ void schedule_step(const unsigned int* counters, const double* hyper,
                                         float* sched)
{
    if (blockIdx.x != 0 || threadIdx.x != 0) {
        return;
    }
    double s = (double)counters[0];
    double t = s + 1.0;
    double lr = schedule_learning_rate(s, hyper);
    float beta1 = (float)hyper[HYPER_BETA1];
    float beta2 = (float)hyper[HYPER_BETA2];
    double c1 = schedule_bias_correction(beta1, t);
    double sqrt_c2 = sqrt(schedule_bias_correction(beta2, t));
    sched[SCHED_LR] = (float)lr;
    sched[SCHED_STEP_SIZE] = (float)(lr * sqrt_c2 / c1);
    sched[SCHED_EPS_HAT] = (float)(hyper[HYPER_EPS] * sqrt_c2);
    sched[SCHED_BETA1] = beta1;
    sched[SCHED_ONE_MINUS_BETA1] = 1.0f - beta1;
    sched[SCHED_BETA2] = beta2;
    sched[SCHED_ONE_MINUS_BETA2] = 1.0f - beta2;
    sched[SCHED_WEIGHT_DECAY] = (float)hyper[HYPER_WEIGHT_DECAY];
    sched[SCHED_KL_WEIGHT] = (float)schedule_kl_weight(s, hyper);
    sched[SCHED_CLIP_SCALE] = 1.0f;
}
