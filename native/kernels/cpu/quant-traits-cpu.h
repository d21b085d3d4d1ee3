// CPU fast paths per type (after ggml-cpu's `type_traits_cpu`). A matrix-vector product with weights of
// type T first converts the activation row to `vec_dot_type` (F32 for f32 weights, F16 for f16, BF16 for
// bf16, Q8_0 for q8_0/q4_0/q5_0, Q8_1 for q4_1/q5_1, Q8_K for the K-quants — the same choice as llama.cpp,
// so the rounding of the activations, and therefore the greedy tokens, match), then calls `vec_dot` per
// weight row, or for several tokens `gemm` (a micro-kernel over up to GEMM_MR rows x GEMM_NT tokens that
// computes the same per-pair expression as vec_dot, so prefill and decode round alike). Implementations: scalar `_ref`
// (always), AVX2 and AVX-512 variants picked once at startup from cpuid (`cpu_features()`).
#pragma once
#include <cstddef>
#include <cstdint>

#include "../../tensor/ggml-type.h"

namespace core {

struct cpu_features_t {
    bool avx2 = false, fma = false, f16c = false;
    bool avx512f = false, avx512bw = false, avx512vl = false, avx512_vnni = false, avx512_bf16 = false;
};
const cpu_features_t & cpu_features();
// e.g. "avx512" / "avx2" / "scalar" — which dispatch level is active. Env THINKCACHE_CPU=scalar|avx2|avx512
// caps it (for tests and A/B).
const char * cpu_dispatch_level();

// s = sum_i x[i] * y[i], x of the weight type, y of vec_dot_type, n elements.
using vec_dot_fn = void (*)(int64_t n, float * s, const void * x, const void * y);
using from_float_fn = void (*)(const float * src, void * dst, int64_t n);
// s[t * s_stride + r] = dot(x row r, y row t) for r < nr <= GEMM_MR, t < nt <= GEMM_NT (strides in bytes
// for x and y, in floats for s).
using gemm_fn = void (*)(int64_t n, const void * x, size_t x_stride, int nr, const void * y, size_t y_stride, int nt,
                         float * s, size_t s_stride);
constexpr int GEMM_MR = 4;
// 8 tokens per call: the K-quant row kernels unpack each super-block's scales and nibbles once per 8 tokens
// (perf/matmul-prefill, 1.5B FFN shapes, one thread: q4_K 109 -> 121 GFLOP/s, q6_K 117 -> 135 against 4 tokens);
// the q8_0/q4_0/q5_0 tiles cover up to 4 tokens and are called twice.
constexpr int GEMM_NT = 8;
// Prefill form of gemm where the kernel wants the activations in a layout of its own: pack() writes up to GEMM_NT
// tokens' activation rows (vec_dot_type, stride y_stride) into `bytes(n)` bytes (64-byte aligned), once per
// matmul, and gemm() runs GEMM_MR rows against such a group — the same per-(row, token) expression as vec_dot.
struct gemm_pack_kernel {
    size_t (*bytes)(int64_t n);
    void (*pack)(int64_t n, const void * y, size_t y_stride, int nt, void * dst);
    void (*gemm)(int64_t n, const void * x, size_t x_stride, int nr, const void * packed, int nt, float * s, size_t s_stride);
};

struct quant_traits_cpu {
    ggml_type type;
    ggml_type vec_dot_type;
    from_float_fn from_float;     // fast activation conversion into vec_dot_type (same result as _ref)
    vec_dot_fn vec_dot;           // dispatched fast path
    vec_dot_fn vec_dot_ref;       // scalar oracle
    gemm_fn gemm;                 // nullptr: no micro-kernel at this level (matmul loops over vec_dot)
    const gemm_pack_kernel * packed;  // nullptr: prefill runs gemm on the activation rows as they are
};

// Scalar oracle of the activation conversion into `act_type` (what `from_float` must reproduce bit for
// bit). Equals quant_traits' from_float_ref except for q8_0 and q8_1, whose runtime quantizers follow
// llama.cpp's (see quantize_row_q8_0_act_ref). nullptr for a type that is never an activation type.
from_float_fn quant_act_from_float_ref(ggml_type act_type);

// nullptr when the CPU backend has no kernels for the type.
const quant_traits_cpu * quant_traits_cpu_get(uint32_t type);

// ---- dispatch levels and kernel variants (tests, A/B runs) ----

// Ordered: a level includes the ones below it. AVX2 means AVX2+FMA+F16C; AVX512 means F+BW+VL on top
// (kernels that also need VNNI or BF16 are separate variants at the AVX512 level).
enum cpu_level : int {
    CPU_LEVEL_SCALAR = 0,
    CPU_LEVEL_AVX2 = 1,
    CPU_LEVEL_AVX512 = 2,
    CPU_LEVEL_COUNT,
};
const char * cpu_level_name(cpu_level level);
cpu_level cpu_level_supported(); // highest level this CPU and OS can run
cpu_level cpu_level_active();    // cpu_level_supported() capped by THINKCACHE_CPU (read once)

// The traits dispatch would pick if the active level were `level` (capped by cpu_level_supported()).

// nullptr when the CPU backend has no kernels for the type.
const quant_traits_cpu * quant_traits_cpu_get_level(uint32_t type, cpu_level level);

// One registered implementation of a type's activation conversion and/or dot product. Dispatch picks,
// per function, the first usable row of the highest level not above the active level.
struct quant_cpu_kernel {
    ggml_type type;
    cpu_level level;
    const char * name;                           // "avx512_vnni", ...
    bool (*usable)(const cpu_features_t & cpu);  // nullptr: usable whenever `level` is
    from_float_fn from_float;                    // nullptr: this row has no conversion
    vec_dot_fn vec_dot;                          // nullptr: this row has no dot product
    gemm_fn gemm = nullptr;                      // nullptr: this row has no micro-kernel
    const gemm_pack_kernel * packed = nullptr;   // nullptr: no packed-activation prefill kernel
};
// All rows, including ones this CPU cannot run (check quant_cpu_kernel_usable()).
const quant_cpu_kernel * quant_cpu_kernels_all(size_t * count);
bool quant_cpu_kernel_usable(const quant_cpu_kernel & k);

} // namespace core
