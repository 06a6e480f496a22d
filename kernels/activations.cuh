// activations.cuh: the MLP activations, forward and derivative, as device functions.
//
// Codes match cupyvae.layers.ACTIVATIONS (Activation.code); a kernel receives one as an
// `int act` argument, the same for every thread, so the switch never diverges.
//
//     code  name      y = act(a)                            act'(a), written from y
//     0     identity  a                                     1
//     1     relu      max(a, 0)                             y > 0 ? 1 : 0
//     2     tanh      tanh(a)                               1 - y^2
//     3     softplus  max(a, 0) + log1p(exp(-|a|))          sigmoid(a) = 1 - exp(-y) = -expm1(-y)
//
// The derivative is a function of the OUTPUT y, so a backward pass needs only the
// layer's stored output, never its pre-activation.  Softplus: exp(-y) = 1 / (1 + exp(a)),
// hence 1 - exp(-y) = sigmoid(a); -expm1f(-y) keeps full relative precision for small y
// (very negative a).  tanh: fmaf(-y, y, 1) rounds once, so 1 - y^2 keeps full relative
// precision near |y| = 1 where the two-rounding form would cancel.
// An unknown code behaves as identity (launch builders only pass registered codes).
#pragma once

#define ACT_IDENTITY 0
#define ACT_RELU 1
#define ACT_TANH 2
#define ACT_SOFTPLUS 3

__device__ inline float activation_forward(float a, int act)
{
    switch (act) {
    case ACT_RELU:
        return fmaxf(a, 0.0f);
    case ACT_TANH:
        return tanhf(a);
    case ACT_SOFTPLUS:
        // expf is taken of -|a| <= 0 only: no overflow for any a.
        return fmaxf(a, 0.0f) + log1pf(expf(-fabsf(a)));
    default:
        return a;
    }
}

// act'(a) as a function of y = act(a).
__device__ inline float activation_derivative_from_output(float y, int act)
{
    switch (act) {
    case ACT_RELU:
        return y > 0.0f ? 1.0f : 0.0f;
    case ACT_TANH:
        return fmaf(-y, y, 1.0f);
    case ACT_SOFTPLUS:
        return -expm1f(-y);
    default:
        return 1.0f;
    }
}
