// Q4_1: blocks of 32 weights with an f16 scale and an f16 minimum, bit-compatible with ggml's block_q4_1.
//   layout  : d (f16) | m (f16) | qs[16] (two 4-bit quants per byte)      = 20 bytes per 32 weights
//   rate    : 20 * 8 / 32 = 5 bits per weight
//   formula : x[j] = d * q[j] + m, q in [0, 15];  m = min(x), d = (max(x) - min(x)) / 15;
//             byte j holds q[j] (low nibble) and q[j + 16] (high nibble)
// Activations for q4_1 weights are q8_1 (vec_dot_type), whose per-block sum carries the m term.
#pragma once
#include <cstdint>

#include "../ggml-type.h"

namespace core {

#define QK4_1 32

struct block_q4_1 {
    f16_t d;               // scale
    f16_t m;               // minimum
    uint8_t qs[QK4_1 / 2]; // nibbles
};
static_assert(sizeof(block_q4_1) == 2 * sizeof(f16_t) + QK4_1 / 2, "wrong q4_1 block size/padding");

void quantize_row_q4_1_ref(const float * x, void * y, int64_t n);
void dequantize_row_q4_1(const void * x, float * y, int64_t n);
// Scalar q4_1 . q8_1: sum_blocks d_x * d_y * sumi + m_x * s_y.
void vec_dot_q4_1_q8_1_ref(int64_t n, float * s, const void * x, const void * y);

} // namespace core
