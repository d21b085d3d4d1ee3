// Q4_0: blocks of 32 weights sharing one f16 scale, bit-compatible with ggml's block_q4_0.
//   layout  : d (f16, 2 bytes) | qs[16] (two 4-bit quants per byte)        = 18 bytes per 32 weights
//   rate    : 18 * 8 / 32 = 4.5 bits per weight
//   formula : x[j] = d * (q[j] - 8), q in [0, 15];  d = max / -8 where max is the signed value of largest
//             magnitude; byte j holds q[j] (low nibble) and q[j + 16] (high nibble)
// Activations for q4_0 weights are q8_0 (vec_dot_type), as in llama.cpp's CPU backend.
#pragma once
#include <cstdint>

#include "../ggml-type.h"

namespace core {

#define QK4_0 32

struct block_q4_0 {
    f16_t d;               // scale
    uint8_t qs[QK4_0 / 2]; // nibbles
};
static_assert(sizeof(block_q4_0) == sizeof(f16_t) + QK4_0 / 2, "wrong q4_0 block size/padding");

// ggml's quantize_row_q4_0_ref (what llama-quantize writes without an importance matrix). n % QK4_0 == 0.
void quantize_row_q4_0_ref(const float * x, void * y, int64_t n);
void dequantize_row_q4_0(const void * x, float * y, int64_t n);
// Scalar q4_0 . q8_0 (oracle): exact int32 sum per block, times d_x * d_y, accumulated in f32.
void vec_dot_q4_0_q8_0_ref(int64_t n, float * s, const void * x, const void * y);

} // namespace core
