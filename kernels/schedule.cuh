// schedule.cuh: where the training step's hyperparameters live on the device.
//
// Two small device arrays, next to the step counters, hold every hyperparameter, so the
// launches of a step never carry one as an argument: a captured CUDA graph replays the
// step with whatever the arrays hold, and changing a hyperparameter (between epochs or
// fit calls) is a write into `hyper`, never a new capture.
//
// hyper: double[HYPER_SIZE], written by the host (cupyvae.schedules.hyper_array), read by
//        schedule_step (schedule.cu) and grad_clip_scale (grad_clip.cu).  Doubles, so the
//        step counts of the schedules are exact and the schedules are computed once, in
//        double, then rounded to float32.
// sched: float[SCHED_SIZE], this step's values: written by schedule_step at the start of
//        every step (and SCHED_CLIP_SCALE / SCHED_GRAD_NORM by grad_clip_scale), read by
//        the step's kernels (the posterior's backward, end_step, the Adam update).
// Python mirror (checked by tests/test_schedules.py): cupyvae/schedules.py, same names.
#pragma once

#define HYPER_LR 0                // peak learning rate (after the warm-up)
#define HYPER_LR_MIN 1            // cosine schedule: the final learning rate
#define HYPER_LR_WARMUP_STEPS 2   // linear learning-rate warm-up length (0: none)
#define HYPER_LR_DECAY_STEPS 3    // cosine decay length after the warm-up (0: constant lr)
#define HYPER_BETA1 4             // Adam's beta1, beta2 and eps
#define HYPER_BETA2 5
#define HYPER_EPS 6
#define HYPER_WEIGHT_DECAY 7      // L2 weight decay added to the gradient
#define HYPER_KL_WEIGHT 8         // the KL weight beta (after its warm-up)
#define HYPER_KL_WARMUP_STEPS 9   // linear KL warm-up length from 0 (0: none)
#define HYPER_CLIP_NORM 10        // global gradient-norm bound (read only when clipping runs)
#define HYPER_SIZE 11

#define SCHED_LR 0                // this step's learning rate
#define SCHED_STEP_SIZE 1         // lr sqrt(c2) / c1: Adam's step with both bias corrections
#define SCHED_EPS_HAT 2           // eps sqrt(c2)
#define SCHED_BETA1 3             // float32 beta1 and 1 - beta1 (in float32), likewise beta2
#define SCHED_ONE_MINUS_BETA1 4
#define SCHED_BETA2 5
#define SCHED_ONE_MINUS_BETA2 6
#define SCHED_WEIGHT_DECAY 7
#define SCHED_KL_WEIGHT 8         // this step's KL weight
#define SCHED_CLIP_SCALE 9        // the factor the gradient is multiplied by (1: no clipping)
#define SCHED_GRAD_NORM 10        // the global gradient norm (written only when clipping runs)
#define SCHED_SIZE 11
