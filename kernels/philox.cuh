// Philox4x32-10 counter-based random numbers: the device twin of cupyvae/philox.py.
//
// Keying convention, shared by EVERY path (NumPy reference, CUDA kernels, emulator):
//
//   noise element (row, col) of training step `step` in stream `stream`:
//       counter = (col, row, step, stream)            four uint32 words
//       key     = (seed & 0xffffffff, seed >> 32)     seed is a uint64, passed as lo/hi
//
//   Philox4x32-10 maps (counter, key) to words x0..x3; we use x0 and x1:
//       uniform(x)      = float(x >> 9) * 2^-23 + 2^-24
//                         exact in float32 ((2m + 1) * 2^-24 with 2m + 1 < 2^24), so it
//                         lies strictly inside (0, 1) and matches NumPy bit for bit
//       uniform element = uniform(x0)
//       standard normal = sqrtf(-2 logf(uniform(x0))) * cosf(6.2831853f * uniform(x1))
//                         (Box-Muller, ONE normal per element)
//
// Accurate logf/cosf/sqrtf on purpose (never __logf/__cosf, never --use_fast_math): the
// NumPy twin then agrees to a few ulp, the error of CUDA's logf/cosf (<= 1-2 ulp).
// The uint32 words themselves are bit-exact with cupyvae.philox.philox4x32.
//
// No system headers: NVRTC has none by default, and the emulator compiles this too.
#pragma once

// Streams: keep in sync with STREAM_* in cupyvae/philox.py.
#define PHILOX_STREAM_POSTERIOR 0u
#define PHILOX_STREAM_PRIOR 1u
#define PHILOX_STREAM_BINARIZE 2u
#define PHILOX_STREAM_EVAL 3u
#define PHILOX_STREAM_IMPORTANCE 4u

// Round multipliers and Weyl key increments (Salmon et al., SC'11).
#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

__device__ inline uint4 philox_round(uint4 ctr, uint2 key)
{
    unsigned int hi0 = __umulhi(PHILOX_M0, ctr.x);
    unsigned int lo0 = PHILOX_M0 * ctr.x;
    unsigned int hi1 = __umulhi(PHILOX_M1, ctr.z);
    unsigned int lo1 = PHILOX_M1 * ctr.z;
    return make_uint4(hi1 ^ ctr.y ^ key.x, lo1, hi0 ^ ctr.w ^ key.y, lo0);
}

__device__ inline uint2 philox_bump_key(uint2 key)
{
    return make_uint2(key.x + PHILOX_W0, key.y + PHILOX_W1);
}

// Ten rounds, the key bumped between consecutive rounds (Random123's philox4x32_R(10)).
__device__ inline uint4 philox4x32_10(uint4 ctr, uint2 key)
{
    ctr = philox_round(ctr, key);
    for (int round_index = 1; round_index < 10; ++round_index) {
        key = philox_bump_key(key);
        ctr = philox_round(ctr, key);
    }
    return ctr;
}

// Every uniform has 23 random bits so the offset add stays exact (see the top).
__device__ inline float philox_uniform_from_bits(unsigned int x)
{
    return (float)(x >> 9) * 1.1920928955078125e-07f + 5.9604644775390625e-08f;
}

__device__ inline float philox_box_muller(float u0, float u1)
{
    float radius = sqrtf(-2.0f * logf(u0));
    return radius * cosf(6.2831853f * u1);
}

__device__ inline uint4 philox_element_words(unsigned int seed_lo, unsigned int seed_hi,
                                             unsigned int step, unsigned int stream,
                                             unsigned int row, unsigned int col)
{
    return philox4x32_10(make_uint4(col, row, step, stream), make_uint2(seed_lo, seed_hi));
}

__device__ inline float philox_element_uniform(unsigned int seed_lo, unsigned int seed_hi,
                                               unsigned int step, unsigned int stream,
                                               unsigned int row, unsigned int col)
{
    uint4 words = philox_element_words(seed_lo, seed_hi, step, stream, row, col);
    return philox_uniform_from_bits(words.x);
}

__device__ inline float philox_element_normal(unsigned int seed_lo, unsigned int seed_hi,
                                              unsigned int step, unsigned int stream,
                                              unsigned int row, unsigned int col)
{
    uint4 words = philox_element_words(seed_lo, seed_hi, step, stream, row, col);
    return philox_box_muller(philox_uniform_from_bits(words.x),
                             philox_uniform_from_bits(words.y));
}
