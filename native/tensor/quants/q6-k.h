// Q6_K: super-blocks of 256 weights in 16 sub-blocks of 16, 6-bit quants (4 low bits in ql, 2 high bits
// in qh) with int8 sub-scales and one f16 super-scale; bit-compatible with ggml's block_q6_K.
//   layout  : ql[128] | qh[64] | scales[16] (int8) | d (f16)               = 210 bytes per 256 weights
//   rate    : 210 * 8 / 256 = 6.5625 bits per weight
//   formula : x = d * scales[s] * (q - 32), q in [0, 63]; per 128-value half, value l + 32k (l < 32) has
//             its low nibble in ql[l + 32 (k & 1)] (low for k < 2, high otherwise) and its high bits at
//             shift 2k of qh[l]
// Activations are q8_K.
#pragma once
#include <cstdint>

#include "k-quants-common.h"
#include "../ggml-type.h"

namespace core {

struct block_q6_K {
    uint8_t ql[QK_K / 2];     // quants, lower 4 bits
    uint8_t qh[QK_K / 4];     // quants, upper 2 bits
    int8_t scales[QK_K / 16]; // scales, quantized with 8 bits
    f16_t d;                  // super-block scale
};
static_assert(sizeof(block_q6_K) == sizeof(f16_t) + QK_K / 16 + 3 * QK_K / 4, "wrong q6_K block size/padding");

void quantize_row_q6_K_ref(const float * x, void * y, int64_t n);
void dequantize_row_q6_K(const void * x, float * y, int64_t n);
void vec_dot_q6_K_q8_K_ref(int64_t n, float * s, const void * x, const void * y);

} // namespace core
