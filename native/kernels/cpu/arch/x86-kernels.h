// x86 SIMD kernels, registered in quant-traits-cpu.cpp. Each function carries its own target attribute,
// so the library builds for baseline x86-64 and a kernel runs only after cpuid said its ISA exists.
// Every conversion here is bit-exact with its `_ref`; the dot products differ only in float summation
// order (per-lane partial sums).
#pragma once
#include <cstddef>
#include <cstdint>

#include "../quant-traits-cpu.h"

#if defined(__x86_64__)
namespace core {

// x86-avx2.cpp: AVX2 + FMA + F16C
void vec_dot_f32_avx2(int64_t n, float * s, const void * x, const void * y);
void vec_dot_f16_avx2(int64_t n, float * s, const void * x, const void * y);
void vec_dot_bf16_avx2(int64_t n, float * s, const void * x, const void * y);
void convert_row_f32_to_f16_avx2(const float * x, void * y, int64_t n);
void convert_row_f32_to_bf16_avx2(const float * x, void * y, int64_t n);
void quantize_row_q8_0_avx2(const float * x, void * y, int64_t n);
// x86-quant-dots.inc (block formats against their vec_dot_type; gemm: several rows x tokens per call)
void vec_dot_q8_0_q8_0_avx2(int64_t n, float * s, const void * x, const void * y);
void vec_dot_q4_0_q8_0_avx2(int64_t n, float * s, const void * x, const void * y);
void vec_dot_q4_1_q8_1_avx2(int64_t n, float * s, const void * x, const void * y);
void vec_dot_q5_0_q8_0_avx2(int64_t n, float * s, const void * x, const void * y);
void vec_dot_q5_1_q8_1_avx2(int64_t n, float * s, const void * x, const void * y);
void vec_dot_q2_K_q8_K_avx2(int64_t n, float * s, const void * x, const void * y);
void vec_dot_q3_K_q8_K_avx2(int64_t n, float * s, const void * x, const void * y);
void vec_dot_q4_K_q8_K_avx2(int64_t n, float * s, const void * x, const void * y);
void vec_dot_q5_K_q8_K_avx2(int64_t n, float * s, const void * x, const void * y);
void vec_dot_q6_K_q8_K_avx2(int64_t n, float * s, const void * x, const void * y);
void gemm_q8_0_q8_0_avx2(int64_t n, const void * x, size_t x_stride, int nr, const void * y, size_t y_stride, int nt, float * s, size_t s_stride);
void gemm_q4_0_q8_0_avx2(int64_t n, const void * x, size_t x_stride, int nr, const void * y, size_t y_stride, int nt, float * s, size_t s_stride);
void gemm_q5_0_q8_0_avx2(int64_t n, const void * x, size_t x_stride, int nr, const void * y, size_t y_stride, int nt, float * s, size_t s_stride);
void gemm_q4_K_q8_K_avx2(int64_t n, const void * x, size_t x_stride, int nr, const void * y, size_t y_stride, int nt, float * s, size_t s_stride);
void gemm_q6_K_q8_K_avx2(int64_t n, const void * x, size_t x_stride, int nr, const void * y, size_t y_stride, int nt, float * s, size_t s_stride);
void quantize_row_q8_1_avx2(const float * x, void * y, int64_t n);

// x86-avx512.cpp: AVX-512 F + BW + VL (plus VNNI / BF16 where named)
void vec_dot_f32_avx512(int64_t n, float * s, const void * x, const void * y);
void vec_dot_f16_avx512(int64_t n, float * s, const void * x, const void * y);
void vec_dot_bf16_avx512(int64_t n, float * s, const void * x, const void * y);
void vec_dot_bf16_avx512bf16(int64_t n, float * s, const void * x, const void * y);
void gemm_bf16_avx512bf16(int64_t n, const void * x, size_t x_stride, int nr, const void * y, size_t y_stride, int nt, float * s, size_t s_stride);
void convert_row_f32_to_f16_avx512(const float * x, void * y, int64_t n);
void convert_row_f32_to_bf16_avx512(const float * x, void * y, int64_t n);
void quantize_row_q8_0_avx512(const float * x, void * y, int64_t n);
extern const gemm_pack_kernel gemm_packed_f16_avx512;  // f16 prefill: the tokens as f32 rows
// x86-quant-dots.inc (block formats against their vec_dot_type; gemm: several rows x tokens per call)
void vec_dot_q8_0_q8_0_avx512vnni(int64_t n, float * s, const void * x, const void * y);
void vec_dot_q4_0_q8_0_avx512vnni(int64_t n, float * s, const void * x, const void * y);
void vec_dot_q4_1_q8_1_avx512vnni(int64_t n, float * s, const void * x, const void * y);
void vec_dot_q5_0_q8_0_avx512vnni(int64_t n, float * s, const void * x, const void * y);
void vec_dot_q5_1_q8_1_avx512vnni(int64_t n, float * s, const void * x, const void * y);
void vec_dot_q2_K_q8_K_avx512vnni(int64_t n, float * s, const void * x, const void * y);
void vec_dot_q3_K_q8_K_avx512vnni(int64_t n, float * s, const void * x, const void * y);
void vec_dot_q4_K_q8_K_avx512vnni(int64_t n, float * s, const void * x, const void * y);
void vec_dot_q5_K_q8_K_avx512vnni(int64_t n, float * s, const void * x, const void * y);
void vec_dot_q6_K_q8_K_avx512vnni(int64_t n, float * s, const void * x, const void * y);
void gemm_q8_0_q8_0_avx512vnni(int64_t n, const void * x, size_t x_stride, int nr, const void * y, size_t y_stride, int nt, float * s, size_t s_stride);
void gemm_q4_0_q8_0_avx512vnni(int64_t n, const void * x, size_t x_stride, int nr, const void * y, size_t y_stride, int nt, float * s, size_t s_stride);
void gemm_q5_0_q8_0_avx512vnni(int64_t n, const void * x, size_t x_stride, int nr, const void * y, size_t y_stride, int nt, float * s, size_t s_stride);
void gemm_q4_K_q8_K_avx512vnni(int64_t n, const void * x, size_t x_stride, int nr, const void * y, size_t y_stride, int nt, float * s, size_t s_stride);
void gemm_q6_K_q8_K_avx512vnni(int64_t n, const void * x, size_t x_stride, int nr, const void * y, size_t y_stride, int nt, float * s, size_t s_stride);
void quantize_row_q8_1_avx512vnni(const float * x, void * y, int64_t n);
// prefill on packed activation pairs (x86-quant-dots.inc, qd_gemm_q8_packed_tile)
extern const gemm_pack_kernel gemm_packed_q8_0_avx512vnni, gemm_packed_q4_0_avx512vnni, gemm_packed_q5_0_avx512vnni;

} // namespace core
#endif
