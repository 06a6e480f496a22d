// adam_update: one Adam step over the whole flat parameter buffer, in one launch.
//
// Update (step t = counters[0] + 1, i.e. the step count before this update plus one;
// L2 weight decay wd added to the gradient, as in cupyvae/optim.py and torch.optim.Adam):
//     g  = g + wd p
//     m  = b1 m + (1 - b1) g
//     v  = b2 v + (1 - b2) g^2
//     p -= lr (m / c1) / (sqrt(v / c2) + eps),   c1 = 1 - b1^t,  c2 = 1 - b2^t
// folded as in optim.py (one division per element, no per-element sqrt(c2)):
//     p -= (lr sqrt(c2) / c1) * m / (sqrt(v) + eps sqrt(c2))
// Bias corrections: 1 - b^t = -expm1(t log1p(-(1 - b))), in float32.  Mathematically
//     1 - powf(b, t), but that subtraction cancels for small t: c2 = 1 - 0.999^1 = 1e-3,
//     so one ulp of powf's result (6e-8, and CUDA's powf allows 4) is already 6e-5 of c2.
//     1 - b is exact (Sterbenz, b in [0.5, 1)), log1pf and expm1f are accurate to a few
//     ulp relative, so c1 and c2 come out within a few ulp for every t.  b = 0 gives
//     log1pf(-1) = -inf and c = 1, as it should.
// Not a gradient kernel: g is read only; p, m, v are updated in place (read-modify-write).
// Layouts:  p, g, m, v: (n,) float32 contiguous, the flat buffers of one layout;
//           counters: unsigned int[2] on the device (counters[0] = global step).
//
// Launch:   grid-stride over n, any grid and block.  When p, g, m, v are all 16-byte
//           aligned (always for whole CuPy/NumPy buffers) the body moves float4s over the
//           first 4 floor(n / 4) elements and finishes the (< 4) tail one float at a time;
//           otherwise every element is scalar.  Each element is independent, so the
//           result never depends on the launch shape or thread order.
// NumPy twin: cupyvae.optim.adam_update(p, g, m, v, counters, lr, beta1, beta2, eps,
//             weight_decay); cupyvae.optim.Adam.step is the reference it is checked against.

struct AdamScalars {
    float beta1, one_minus_beta1;
    float beta2, one_minus_beta2;
    float weight_decay;
    float step_size;  // lr sqrt(c2) / c1
    float eps_hat;    // eps sqrt(c2)
};

__device__ inline float adam_bias_correction(float beta, float t)
{
    return -expm1f(t * log1pf(-(1.0f - beta)));
}

__device__ inline void adam_element(float& p, float g, float& m, float& v, const AdamScalars& s)
{
    g = g + s.weight_decay * p;
    m = s.beta1 * m + s.one_minus_beta1 * g;
    v = s.beta2 * v + s.one_minus_beta2 * (g * g);
    p = p - s.step_size * (m / (sqrtf(v) + s.eps_hat));
}

extern "C" __global__ void adam_update(float* p, const float* g, float* m, float* v,
                                       const unsigned int* counters, int n, float lr,
                                       float beta1, float beta2, float eps,
                                       float weight_decay)
{
    float t = (float)(counters[0] + 1u);
    float c1 = adam_bias_correction(beta1, t);
    float sqrt_c2 = sqrtf(adam_bias_correction(beta2, t));
    AdamScalars s;
    s.beta1 = beta1;
    s.one_minus_beta1 = 1.0f - beta1;
    s.beta2 = beta2;
    s.one_minus_beta2 = 1.0f - beta2;
    s.weight_decay = weight_decay;
    s.step_size = lr * sqrt_c2 / c1;
    s.eps_hat = eps * sqrt_c2;

    unsigned int start = blockIdx.x * blockDim.x + threadIdx.x;
    unsigned int stride = gridDim.x * blockDim.x;
    unsigned int count = (unsigned int)n;
    unsigned int scalar_start = 0;

    unsigned long long address_bits = (unsigned long long)p | (unsigned long long)g
                                    | (unsigned long long)m | (unsigned long long)v;
    if ((address_bits & 15ull) == 0) {  // the same answer in every thread
        float4* p4 = reinterpret_cast<float4*>(p);
        const float4* g4 = reinterpret_cast<const float4*>(g);
        float4* m4 = reinterpret_cast<float4*>(m);
        float4* v4 = reinterpret_cast<float4*>(v);
        unsigned int count4 = count / 4u;
        for (unsigned int i = start; i < count4; i += stride) {
            float4 pi = p4[i];
            float4 gi = g4[i];
            float4 mi = m4[i];
            float4 vi = v4[i];
            adam_element(pi.x, gi.x, mi.x, vi.x, s);
            adam_element(pi.y, gi.y, mi.y, vi.y, s);
            adam_element(pi.z, gi.z, mi.z, vi.z, s);
            adam_element(pi.w, gi.w, mi.w, vi.w, s);
            p4[i] = pi;
            m4[i] = mi;
            v4[i] = vi;
        }
        scalar_start = count4 * 4u;
    }
    for (unsigned int i = scalar_start + start; i < count; i += stride) {
        float pi = p[i];
        float mi = m[i];
        float vi = v[i];
        adam_element(pi, g[i], mi, vi, s);
        p[i] = pi;
        m[i] = mi;
        v[i] = vi;
    }
}
