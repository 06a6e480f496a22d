// stable_math.cuh: overflow- and cancellation-free pieces shared by the likelihood kernels,
// and the float32 constants log(2 pi), log 2 (NVRTC has no math headers: no M_LN2).
// NumPy twins: cupyvae/distributions/stable.py (softplus, soft_bound) and
// cupyvae/distributions/bernoulli.py (sigmoid).
//
// stable_softplus(v)    = log(1 + e^v) = max(v, 0) + log1pf(expf(-|v|))   expf of -|v| <= 0 only
// stable_sigmoid(v)     = 1 / (1 + e^-v) from e = expf(-|v|):  v >= 0: 1 / (1 + e),  v < 0: e / (1 + e)
// soft_bound(r, S, &d)  = S tanh(r / S), and d = its derivative sech^2(r / S) taken as
//                         4 e2 / (1 + e2)^2 with e2 = expf(-2 |r / S|) <= 1: no 1 - tanh^2
//                         cancellation as tanh saturates (0, not NaN, for |r| = 1e4).
#pragma once

#define STABLE_LOG_2PI 1.8378770664093453f
#define STABLE_LOG_2 0.69314718055994531f

__device__ inline float stable_softplus(float v)
{
    return fmaxf(v, 0.0f) + log1pf(expf(-fabsf(v)));
}

__device__ inline float stable_sigmoid(float v)
{
    float e = expf(-fabsf(v));
    return v >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
}

__device__ inline float soft_bound(float r, float bound, float* derivative)
{
    float y = r / bound;
    float e2 = expf(-2.0f * fabsf(y));
    *derivative = 4.0f * e2 / ((1.0f + e2) * (1.0f + e2));
    return bound * tanhf(y);
}
