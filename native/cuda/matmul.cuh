// Matrix products against device-resident weights (decode: matvec; prefill: tokens in groups of 8 that
// share each weight load). Weight types: f32, f16, bf16, q4_0, q4_1, q5_0, q5_1, q8_0, q2_K, q3_K, q4_K, q5_K,
// q6_K: every weight format of the CPU backend (supports_op(op::MATMUL, t)).
// Block formats are dequantized in registers bit-exactly as the CPU's to_float (`dequantize` below is
// that decode alone, for the bit-exact test), then dotted with f32 activations in f32 (FMA). The CPU
// oracle is cpu_matmul_ref (matmul.h); quantized CPU paths quantize the activations (q8_0 / q8_K), this
// one does not, so the CUDA error against an fp64 reference is the smaller one (STYLE §2.7 2x rule).
// Shapes in ggml order: W has n_out rows of n_in elements.
#pragma once
#include "backend-cuda.h"

namespace core {
namespace cuda {

struct weight_dev {
    const void * data = nullptr;  // device, n_out rows of row_bytes
    ggml_type type = GGML_TYPE_F32;
    int64_t n_in = 0, n_out = 0;
    size_t row_bytes = 0;
};

// y[t][o] = Σ_i W[o][i] x[t][i];  x: [n_tokens][n_in] f32, y: [n_tokens][n_out] f32 (device).
status matmul(const weight_dev & w, const float * x, float * y, int64_t n_tokens, stream_t s);
// dst[r][:] = to_float(W row rows[r]) for r < n_rows (the token embedding; rows: device int32, each < n_out).
status get_rows(const weight_dev & w, const int32_t * rows, int n_rows, float * dst, stream_t s);
// dst[i] = to_float(src)[i] for n elements of type t (n a multiple of the block size).
status dequantize(const void * src, ggml_type t, float * dst, int64_t n, stream_t s);

} // namespace cuda
} // namespace core
