// Q8_K: super-blocks of 256 int8 with an f32 scale and 16 partial sums; bit-compatible with ggml's
// block_q8_K. Only an activation format (vec_dot_type of every K-quant): bsums let a dot with an
// offset format (x = d*q - m) subtract the mins once per 16 values.
//   layout  : d (f32) | qs[256] (int8) | bsums[16] (int16, sum of each 16 quants) = 292 bytes per 256 values
//   rate    : 292 * 8 / 256 = 9.125 bits per value
//   formula : x[i] = d * qs[i];  d = -max / 127 where max is the signed value of largest magnitude
//             (so the largest-magnitude value maps to -127), quants rounded half to even.
// llama.cpp's CPU backend converts activations with the reference quantizer itself on x86, so
// quantize_row_q8_K_ref is both the weight-side and the runtime oracle.
#pragma once
#include <cstdint>

#include "k-quants-common.h"

namespace core {

struct block_q8_K {
    float d;                  // scale
    int8_t qs[QK_K];          // quants
    int16_t bsums[QK_K / 16]; // sum of quants in groups of 16
};
static_assert(sizeof(block_q8_K) == sizeof(float) + QK_K + QK_K / 16 * sizeof(int16_t), "wrong q8_K block size/padding");

void quantize_row_q8_K_ref(const float * x, void * y, int64_t n);
void dequantize_row_q8_K(const void * x, float * y, int64_t n);

} // namespace core
