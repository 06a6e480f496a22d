// free_bits.cu: free bits (Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling 2016,
// "Improved Variational Inference with Inverse Autoregressive Flow", eq. 15): a floor of
// lambda nats on each latent dimension's batch-averaged KL.
//
// Forward, given kl_dim (B, Z) = the KL of example b in latent dimension j (from the KL
// pair's per-dimension kernel, e.g. gaussian_posterior_kl_per_dimension):
//     kl_mean[j] = (1/B) sum_b kl_dim[b, j]            (summed in the order b = 0, 1, ...)
//     active[j]  = kl_mean[j] > lambda ? 1 : 0
//     kl_rows[b] = sum_j (active[j] ? kl_dim[b, j] : lambda)   (in the order j = 0, 1, ...)
//   so that (1/B) sum_b kl_rows[b] = sum_j max(lambda, kl_mean[j]) is the floored KL term,
//   and the step's end_step loss (nll + beta kl rows) needs no other bookkeeping.
// Gradient of the floored KL term T = sum_j max(lambda, kl_mean[j]):
//     d T / d kl_dim[b, j] = active[j] / B
//   (zero below the floor: a dimension under lambda nats gets no pressure towards the
//   prior); the per-dimension KL backward multiplies its gradient by active[j] * scale.
// Layouts: kl_dim (B, Z) row-major float32; kl_rows (B,); active, kl_mean (Z,).
// Outputs: kl_rows, active, kl_mean, all written with `=`.
//
// Launch: ONE block (grid = (1,)); threads stride over the Z columns (phase 1), then, after
//         a barrier, over the B rows (phase 2).  Every sum is one thread's sequential loop:
//         deterministic, no atomics, whatever the block size and thread order.  The batch
//         is small (B*Z ~ 1e4 elements per step), so one block costs microseconds.
// NumPy twin: cupyvae.objective_twins.free_bits_kl(kl_dim, free_bits).

extern "C" __global__ void free_bits_kl(const float* kl_dim, float* kl_rows, float* active,
                                        float* kl_mean, int B, int Z, float free_bits)
{
    if (blockIdx.x != 0) {
        return;  // one block by contract; extra blocks (uniformly) do nothing
    }
    for (int j = threadIdx.x; j < Z; j += blockDim.x) {
        float total = 0.0f;
        for (int b = 0; b < B; ++b) {
            total += kl_dim[(unsigned long long)b * (unsigned long long)Z + j];
        }
        float mean = total / (float)B;
        kl_mean[j] = mean;
        active[j] = mean > free_bits ? 1.0f : 0.0f;
    }
    __syncthreads();  // every active[j] is written before any row reads it
    for (int b = threadIdx.x; b < B; b += blockDim.x) {
        const float* row = kl_dim + (unsigned long long)b * (unsigned long long)Z;
        float total = 0.0f;
        for (int j = 0; j < Z; ++j) {
            total += active[j] > 0.0f ? row[j] : free_bits;
        }
        kl_rows[b] = total;
    }
}
