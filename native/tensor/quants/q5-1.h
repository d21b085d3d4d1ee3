// Q5_1: blocks of 32 weights with an f16 scale and an f16 minimum, 5-bit quants; bit-compatible with
// ggml's block_q5_1.
//   layout  : d (f16) | m (f16) | qh (4 bytes, 5th bits) | qs[16] (low nibbles) = 24 bytes per 32 weights
//   rate    : 24 * 8 / 32 = 6 bits per weight
//   formula : x[j] = d * q[j] + m, q in [0, 31];  m = min(x), d = (max(x) - min(x)) / 31
// Activations for q5_1 weights are q8_1.
#pragma once
#include <cstdint>

#include "../ggml-type.h"

namespace core {

#define QK5_1 32

struct block_q5_1 {
    f16_t d;               // scale
    f16_t m;               // minimum
    uint8_t qh[4];         // 5th bits
    uint8_t qs[QK5_1 / 2]; // low nibbles
};
static_assert(sizeof(block_q5_1) == 2 * sizeof(f16_t) + sizeof(uint32_t) + QK5_1 / 2, "wrong q5_1 block size/padding");

void quantize_row_q5_1_ref(const float * x, void * y, int64_t n);
void dequantize_row_q5_1(const void * x, float * y, int64_t n);
void vec_dot_q5_1_q8_1_ref(int64_t n, float * s, const void * x, const void * y);

} // namespace core
