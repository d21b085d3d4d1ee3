// Q8_0: blocks of 32 weights sharing one f16 scale, bit-compatible with ggml's block_q8_0.
//   layout  : d (f16, 2 bytes) | qs[32] (int8)                      = 34 bytes per 32 weights
//   rate    : 34 * 8 / 32 = 8.5 bits per weight
//   formula : x[i] = d * qs[i];   d = max|x| / 127,  qs[i] = roundf(x[i] / d)  (half away from zero)
// Also the activation format for Q8_0 weights on the CPU (vec_dot_type), so the reference quantizer
// below is the oracle both for converting weights and for the SIMD activation quantizers.
#pragma once
#include <cstdint>

#include "../ggml-type.h"

namespace core {

#define QK8_0 32

struct block_q8_0 {
    f16_t d;          // scale
    int8_t qs[QK8_0]; // quants
};
static_assert(sizeof(block_q8_0) == sizeof(f16_t) + QK8_0, "wrong q8_0 block size/padding");

// Same result as ggml's quantize_row_q8_0_ref: the inverse scale is 1/d computed from the f32 d (not
// the f16-rounded one) and quants round half away from zero. n % QK8_0 == 0.
void quantize_row_q8_0_ref(const float * x, void * y, int64_t n);
void dequantize_row_q8_0(const void * x, float * y, int64_t n);
// Activation quantizer as llama.cpp's CPU backend runs it at inference time (ggml-cpu's x86
// quantize_row_q8_0): inverse scale 127/amax (not 1/d) and round-half-to-even. Weights use the _ref
// quantizer above; activations use this one so our dot products see the same bytes as llama.cpp's.
void quantize_row_q8_0_act_ref(const float * x, void * y, int64_t n);
// Scalar q8_0 . q8_0 (oracle): exact int32 sum per block, times d_x * d_y, accumulated in f32 (as ggml).
void vec_dot_q8_0_q8_0_ref(int64_t n, float * s, const void * x, const void * y);

} // namespace core
