// vamp_prior: the VampPrior's bound on its pseudo-inputs (Tomczak & Welling 2018; the paper's
// code applies nn.Hardtanh(0, 1) to the stored weights w), forward and backward.  The rest
// of the VampPrior runs on other kernels: the encoder (linear.cu) maps u to the components
// [mu | logvar] (K, 2Z), which mixture_prior.cu reads as they stand with zero logits.
//
// Forward (vamp_pseudo_inputs_forward):   u[k, d]  = min(max(w[k, d], 0), 1)  (NaN passes)
// Backward (vamp_pseudo_inputs_backward): dw[k, d] = du[k, d] if 0 < w[k, d] < 1, else 0
//     (hardtanh' is 1 strictly inside the bound and 0 outside, as torch.nn.Hardtanh's
//      backward: a pseudo-input pixel at or beyond the bound gets no gradient)
// Layouts:  w, u, du, dw: (K, D) float32 row-major, contiguous (w = prior.pseudo_inputs).
// Outputs:  u and dw are written with `=` (every element).
// Launch:   grid-stride loops over the K D elements: any grid, any block; 64-bit indices.
// NumPy twins: cupyvae.distributions.vamp.vamp_pseudo_inputs_forward / _backward.

extern "C" __global__ void vamp_pseudo_inputs_forward(const float* w, float* u, int K, int D)
{
    unsigned long long total = (unsigned long long)K * (unsigned long long)D;
    unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         i < total; i += stride) {
        float value = w[i];
        u[i] = value < 0.0f ? 0.0f : (value > 1.0f ? 1.0f : value);   // NaN stays NaN, as np.clip
    }
}

extern "C" __global__ void vamp_pseudo_inputs_backward(const float* w, const float* du, float* dw,
                                                       int K, int D)
{
    unsigned long long total = (unsigned long long)K * (unsigned long long)D;
    unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         i < total; i += stride) {
        float value = w[i];
        dw[i] = (value > 0.0f && value < 1.0f) ? du[i] : 0.0f;
    }
}
