// Unblocked float element types: f32 (identity), f16 (IEEE binary16) and bf16 (bfloat16), each one
// element per "block". Conversions round to nearest even and keep NaN/inf, bit-exact with the scalar
// helpers in ggml-type.h and with F16C / ggml's GGML_FP32_TO_BF16.
#pragma once
#include <cstdint>

#include "../ggml-type.h"

namespace core {

void copy_row_f32(const void * x, float * y, int64_t n);
void copy_row_f32_from(const float * x, void * y, int64_t n);
void convert_row_f16_to_f32(const void * x, float * y, int64_t n);
void convert_row_f32_to_f16_ref(const float * x, void * y, int64_t n);
void convert_row_bf16_to_f32(const void * x, float * y, int64_t n);
void convert_row_f32_to_bf16_ref(const float * x, void * y, int64_t n);

// Scalar dot products (the oracles for the SIMD kernels): products in f32, as ggml, summed in double.
void vec_dot_f32_ref(int64_t n, float * s, const void * x, const void * y);
void vec_dot_f16_ref(int64_t n, float * s, const void * x, const void * y);   // f16 . f16
void vec_dot_bf16_ref(int64_t n, float * s, const void * x, const void * y);  // bf16 . bf16

} // namespace core
