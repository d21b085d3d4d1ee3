// Q8_1: blocks of 32 int8 with an f16 scale and the f16 of scale * sum(quants); bit-compatible with
// ggml's block_q8_1. Only an activation format here (vec_dot_type of q4_1 and q5_1 weights): the sum
// lets a dot with an offset format (x = d*q + m) add m * s once per block.
//   layout  : d (f16) | s (f16) | qs[32] (int8)                         = 36 bytes per 32 values
//   rate    : 36 * 8 / 32 = 9 bits per value
//   formula : x[i] = d * qs[i];  d = max|x| / 127;  s = d * sum(qs)
#pragma once
#include <cstdint>

#include "../ggml-type.h"

namespace core {

#define QK8_1 32

struct block_q8_1 {
    f16_t d;          // scale
    f16_t s;          // d * sum(qs)
    int8_t qs[QK8_1]; // quants
};
static_assert(sizeof(block_q8_1) == 2 * sizeof(f16_t) + QK8_1, "wrong q8_1 block size/padding");

// ggml's quantize_row_q8_1_ref: id = 1/d, roundf (half away from zero). n % QK8_1 == 0.
void quantize_row_q8_1_ref(const float * x, void * y, int64_t n);
void dequantize_row_q8_1(const void * x, float * y, int64_t n);
// Activation quantizer as llama.cpp's CPU backend runs it (ggml-cpu's x86 quantize_row_q8_1): inverse
// scale 127/amax, round half to even, s = f16(d * sum) with d the f32 scale.
void quantize_row_q8_1_act_ref(const float * x, void * y, int64_t n);

} // namespace core
