// Q3_K: super-blocks of 256 weights in 16 sub-blocks of 16, 3-bit quants (2 low bits + a high-bit mask)
// with 6-bit signed sub-scales and one f16 super-scale; bit-compatible with ggml's block_q3_K.
//   layout  : hmask[32] (high bits) | qs[64] (low 2 bits) | scales[12] (16 x 6 bits) | d (f16)
//                                                                          = 110 bytes per 256 weights
//   rate    : 110 * 8 / 256 = 3.4375 bits per weight
//   formula : x = d * (sc - 32) * (q - (hbit ? 0 : 4)), q in [0, 3] low bits, sc in [0, 63]; value
//             k of a 128-half sits at qs byte k % 32, shift 2 * (k / 32); its high bit is bit
//             (half * 4 + k / 32) of hmask[k % 32]
// Activations are q8_K.
#pragma once
#include <cstdint>

#include "k-quants-common.h"
#include "../ggml-type.h"

namespace core {

struct block_q3_K {
    uint8_t hmask[QK_K / 8]; // high bit of the quants
    uint8_t qs[QK_K / 4];    // low 2 bits
    uint8_t scales[12];      // 16 scales, 6 bits each
    f16_t d;                 // super-block scale
};
static_assert(sizeof(block_q3_K) == sizeof(f16_t) + QK_K / 4 + QK_K / 8 + 12, "wrong q3_K block size/padding");

void quantize_row_q3_K_ref(const float * x, void * y, int64_t n);
void dequantize_row_q3_K(const void * x, float * y, int64_t n);
void vec_dot_q3_K_q8_K_ref(int64_t n, float * s, const void * x, const void * y);
// The 16 signed sub-scales (sc - 32) of a block.
void q3_K_unpack_scales(const uint8_t * packed /* [12] */, int8_t * scales /* [16] */);

} // namespace core
