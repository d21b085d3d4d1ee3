// Q5_0: blocks of 32 weights sharing one f16 scale, 5-bit quants (4 low bits packed in nibbles, the 5th
// bits in a 32-bit mask); bit-compatible with ggml's block_q5_0.
//   layout  : d (f16) | qh (4 bytes, bit j = 5th bit of q[j]) | qs[16]   = 22 bytes per 32 weights
//   rate    : 22 * 8 / 32 = 5.5 bits per weight
//   formula : x[j] = d * (q[j] - 16), q in [0, 31];  d = max / -16 (max = signed value of largest
//             magnitude); byte j of qs holds q[j] & 15 (low nibble) and q[j + 16] & 15 (high nibble)
// Activations for q5_0 weights are q8_0.
#pragma once
#include <cstdint>

#include "../ggml-type.h"

namespace core {

#define QK5_0 32

struct block_q5_0 {
    f16_t d;               // scale
    uint8_t qh[4];         // 5th bits
    uint8_t qs[QK5_0 / 2]; // low nibbles
};
static_assert(sizeof(block_q5_0) == sizeof(f16_t) + sizeof(uint32_t) + QK5_0 / 2, "wrong q5_0 block size/padding");

void quantize_row_q5_0_ref(const float * x, void * y, int64_t n);
void dequantize_row_q5_0(const void * x, float * y, int64_t n);
void vec_dot_q5_0_q8_0_ref(int64_t n, float * s, const void * x, const void * y);

} // namespace core
