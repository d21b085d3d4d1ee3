// Q5_K: super-blocks of 256 weights in 8 sub-blocks of 32, 5-bit quants (4 low bits in nibbles, 5th bit
// in qh) with a 6-bit scale and a 6-bit min per sub-block; bit-compatible with ggml's block_q5_K.
//   layout  : d (f16) | dmin (f16) | scales[12] | qh[32] | qs[128]         = 176 bytes per 256 weights
//   rate    : 176 * 8 / 256 = 5.5 bits per weight
//   formula : x = d * sc[s] * q - dmin * m[s], q in [0, 31]; nibbles as q4_K, the 5th bit of value l of
//             sub-block s is bit s of qh[l]
// Activations are q8_K.
#pragma once
#include <cstdint>

#include "k-quants-common.h"
#include "../ggml-type.h"

namespace core {

struct block_q5_K {
    f16_t d;                      // super-block scale of the scales
    f16_t dmin;                   // super-block scale of the mins
    uint8_t scales[K_SCALE_SIZE]; // scales and mins, 6 bits each
    uint8_t qh[QK_K / 8];         // 5th bits
    uint8_t qs[QK_K / 2];         // low 4 bits
};
static_assert(sizeof(block_q5_K) == 2 * sizeof(f16_t) + K_SCALE_SIZE + QK_K / 2 + QK_K / 8, "wrong q5_K block size/padding");

void quantize_row_q5_K_ref(const float * x, void * y, int64_t n);
void dequantize_row_q5_K(const void * x, float * y, int64_t n);
void vec_dot_q5_K_q8_K_ref(int64_t n, float * s, const void * x, const void * y);

} // namespace core
