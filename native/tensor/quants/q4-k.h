// Q4_K: super-blocks of 256 weights in 8 sub-blocks of 32, 4-bit quants with a 6-bit scale and a 6-bit
// min per sub-block, scaled by f16 super-scales; bit-compatible with ggml's block_q4_K.
//   layout  : d (f16) | dmin (f16) | scales[12] (8 scales + 8 mins, 6 bits each) | qs[128]
//                                                                          = 144 bytes per 256 weights
//   rate    : 144 * 8 / 256 = 4.5 bits per weight
//   formula : x = d * sc[s] * q - dmin * m[s], q in [0, 15]; each 64-value chunk has 32 bytes of qs: low
//             nibbles are values 0..31 (sub-block 2c), high nibbles values 32..63 (sub-block 2c+1)
// Activations are q8_K.
#pragma once
#include <cstdint>

#include "k-quants-common.h"
#include "../ggml-type.h"

namespace core {

struct block_q4_K {
    f16_t d;                      // super-block scale of the scales
    f16_t dmin;                   // super-block scale of the mins
    uint8_t scales[K_SCALE_SIZE]; // scales and mins, 6 bits each
    uint8_t qs[QK_K / 2];         // 4-bit quants
};
static_assert(sizeof(block_q4_K) == 2 * sizeof(f16_t) + K_SCALE_SIZE + QK_K / 2, "wrong q4_K block size/padding");

void quantize_row_q4_K_ref(const float * x, void * y, int64_t n);
void dequantize_row_q4_K(const void * x, float * y, int64_t n);
void vec_dot_q4_K_q8_K_ref(int64_t n, float * s, const void * x, const void * y);

} // namespace core
