// normal_fill: out = Philox standard normals, one per element.
//
// Forward:   out[r, c] = sqrtf(-2 logf(u0)) * cosf(2 pi u1), with u0, u1 the uniforms of
//            words x0, x1 of Philox4x32-10(counter = (c, r, step, stream),
//                                          key = (seed_lo, seed_hi))   -- see philox.cuh.
// Gradient:  none; the noise is a constant of the computation graph.
// Layout:    out is (rows, cols) float32, row-major, contiguous.
// Outputs:   out is written with `=` (every element, previous contents ignored).
//
// A grid-stride loop covers any shape with any grid; the value of an element depends
// only on its (row, col), never on which thread computes it.
// NumPy twin: cupyvae.philox.normal(seed, step, rows, cols, stream).
#include "philox.cuh"

extern "C" __global__ void normal_fill(float* out, int rows, int cols,
                                       unsigned int seed_lo, unsigned int seed_hi,
                                       unsigned int step, unsigned int stream)
{
    // 64-bit linear indices: rows * cols may exceed 2^31 for large sample batches.
    unsigned long long total = (unsigned long long)rows * (unsigned long long)cols;
    unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         i < total; i += stride) {
        unsigned int row = (unsigned int)(i / (unsigned long long)cols);
        unsigned int col = (unsigned int)(i % (unsigned long long)cols);
        out[i] = philox_element_normal(seed_lo, seed_hi, step, stream, row, col);
    }
}
