// Q2_K: super-blocks of 256 weights in 16 sub-blocks of 16, 2-bit quants with a 4-bit scale and a 4-bit
// min per sub-block, scaled by f16 super-scales; bit-compatible with ggml's block_q2_K.
//   layout  : scales[16] (low nibble scale, high nibble min) | qs[64] (four 2-bit quants per byte) |
//             d (f16) | dmin (f16)                                          = 84 bytes per 256 weights
//   rate    : 84 * 8 / 256 = 2.625 bits per weight
//   formula : x = d * (scales[s] & 15) * q - dmin * (scales[s] >> 4), q in [0, 3]; within each 128-value
//             half, byte l of qs (32 bytes) holds values l, l+32, l+64, l+96 at bit shifts 0, 2, 4, 6
// Activations are q8_K.
#pragma once
#include <cstdint>

#include "k-quants-common.h"
#include "../ggml-type.h"

namespace core {

struct block_q2_K {
    uint8_t scales[QK_K / 16]; // scales and mins, 4 bits each
    uint8_t qs[QK_K / 4];      // quants
    f16_t d;                   // super-block scale of the scales
    f16_t dmin;                // super-block scale of the mins
};
static_assert(sizeof(block_q2_K) == 2 * sizeof(f16_t) + QK_K / 16 + QK_K / 4, "wrong q2_K block size/padding");

void quantize_row_q2_K_ref(const float * x, void * y, int64_t n);
void dequantize_row_q2_K(const void * x, float * y, int64_t n);
void vec_dot_q2_K_q8_K_ref(int64_t n, float * s, const void * x, const void * y);

} // namespace core
