// CPU kernel registry (see quant-traits-cpu.h). Two tables:
//   VEC_DOT_TYPES : per weight type, the activation type and the scalar oracle (as ggml-cpu's
//                   type_traits_cpu[].vec_dot_type);
//   KERNELS       : every SIMD implementation, with the dispatch level and extra features it needs.
// Dispatch resolves, once per (type, level), the best usable row for each function; the scalar fallback
// is the reference itself. Adding a type: its VEC_DOT_TYPES row plus its SIMD rows (if any).
#include "quant-traits-cpu.h"

#include <cassert>
#include <mutex>

#include "../../tensor/quant-traits.h"
#include "../../tensor/quants/float-types.h"
#include "../../tensor/quants/q2-k.h"
#include "../../tensor/quants/q3-k.h"
#include "../../tensor/quants/q4-0.h"
#include "../../tensor/quants/q4-1.h"
#include "../../tensor/quants/q4-k.h"
#include "../../tensor/quants/q5-0.h"
#include "../../tensor/quants/q5-1.h"
#include "../../tensor/quants/q5-k.h"
#include "../../tensor/quants/q6-k.h"
#include "../../tensor/quants/q8-0.h"
#include "../../tensor/quants/q8-1.h"
#include "../../tensor/quants/q8-k.h"
#include "arch/x86-kernels.h"

namespace core {

namespace {

struct vec_dot_type_row {
    ggml_type type;
    ggml_type vec_dot_type;
    vec_dot_fn vec_dot_ref;
};

const vec_dot_type_row VEC_DOT_TYPES[] = {
    {GGML_TYPE_F32, GGML_TYPE_F32, vec_dot_f32_ref},
    {GGML_TYPE_F16, GGML_TYPE_F16, vec_dot_f16_ref},
    {GGML_TYPE_BF16, GGML_TYPE_BF16, vec_dot_bf16_ref},
    {GGML_TYPE_Q8_0, GGML_TYPE_Q8_0, vec_dot_q8_0_q8_0_ref},
    {GGML_TYPE_Q4_0, GGML_TYPE_Q8_0, vec_dot_q4_0_q8_0_ref},
    {GGML_TYPE_Q4_1, GGML_TYPE_Q8_1, vec_dot_q4_1_q8_1_ref},
    {GGML_TYPE_Q5_0, GGML_TYPE_Q8_0, vec_dot_q5_0_q8_0_ref},
    {GGML_TYPE_Q5_1, GGML_TYPE_Q8_1, vec_dot_q5_1_q8_1_ref},
    {GGML_TYPE_Q2_K, GGML_TYPE_Q8_K, vec_dot_q2_K_q8_K_ref},
    {GGML_TYPE_Q3_K, GGML_TYPE_Q8_K, vec_dot_q3_K_q8_K_ref},
    {GGML_TYPE_Q4_K, GGML_TYPE_Q8_K, vec_dot_q4_K_q8_K_ref},
    {GGML_TYPE_Q5_K, GGML_TYPE_Q8_K, vec_dot_q5_K_q8_K_ref},
    {GGML_TYPE_Q6_K, GGML_TYPE_Q8_K, vec_dot_q6_K_q8_K_ref},
};
constexpr size_t N_VEC_DOT_TYPES = sizeof(VEC_DOT_TYPES) / sizeof(VEC_DOT_TYPES[0]);

#if defined(__x86_64__)
bool has_vnni(const cpu_features_t & f) { return f.avx512_vnni; }
bool has_avx512_bf16(const cpu_features_t & f) { return f.avx512_bf16; }
#endif

// Within one type and level, list the most specific variant first.
const quant_cpu_kernel KERNELS[] = {
#if defined(__x86_64__)
    // type          level             name           usable           from_float                      vec_dot                       gemm                          packed
    {GGML_TYPE_F32,  CPU_LEVEL_AVX512, "avx512",      nullptr,         nullptr,                        vec_dot_f32_avx512},
    {GGML_TYPE_F32,  CPU_LEVEL_AVX2,   "avx2",        nullptr,         nullptr,                        vec_dot_f32_avx2},
    {GGML_TYPE_F16,  CPU_LEVEL_AVX512, "avx512",      nullptr,         convert_row_f32_to_f16_avx512,  vec_dot_f16_avx512,           nullptr,                      &gemm_packed_f16_avx512},
    {GGML_TYPE_F16,  CPU_LEVEL_AVX2,   "avx2",        nullptr,         convert_row_f32_to_f16_avx2,    vec_dot_f16_avx2},
    {GGML_TYPE_BF16, CPU_LEVEL_AVX512, "avx512_bf16", has_avx512_bf16, nullptr,                        vec_dot_bf16_avx512bf16,      gemm_bf16_avx512bf16},
    {GGML_TYPE_BF16, CPU_LEVEL_AVX512, "avx512",      nullptr,         convert_row_f32_to_bf16_avx512, vec_dot_bf16_avx512},
    {GGML_TYPE_BF16, CPU_LEVEL_AVX2,   "avx2",        nullptr,         convert_row_f32_to_bf16_avx2,   vec_dot_bf16_avx2},
    {GGML_TYPE_Q8_0, CPU_LEVEL_AVX512, "avx512_vnni", has_vnni,        nullptr,                        vec_dot_q8_0_q8_0_avx512vnni, gemm_q8_0_q8_0_avx512vnni, &gemm_packed_q8_0_avx512vnni},
    {GGML_TYPE_Q8_0, CPU_LEVEL_AVX512, "avx512",      nullptr,         quantize_row_q8_0_avx512,       nullptr},
    {GGML_TYPE_Q8_0, CPU_LEVEL_AVX2,   "avx2",        nullptr,         quantize_row_q8_0_avx2,         vec_dot_q8_0_q8_0_avx2,       gemm_q8_0_q8_0_avx2},
    {GGML_TYPE_Q8_1, CPU_LEVEL_AVX512, "avx512_vnni", has_vnni,        quantize_row_q8_1_avx512vnni,   nullptr},
    {GGML_TYPE_Q8_1, CPU_LEVEL_AVX2,   "avx2",        nullptr,         quantize_row_q8_1_avx2,         nullptr},
    {GGML_TYPE_Q4_0, CPU_LEVEL_AVX512, "avx512_vnni", has_vnni,        nullptr,                        vec_dot_q4_0_q8_0_avx512vnni, gemm_q4_0_q8_0_avx512vnni, &gemm_packed_q4_0_avx512vnni},
    {GGML_TYPE_Q4_0, CPU_LEVEL_AVX2,   "avx2",        nullptr,         nullptr,                        vec_dot_q4_0_q8_0_avx2,       gemm_q4_0_q8_0_avx2},
    {GGML_TYPE_Q4_1, CPU_LEVEL_AVX512, "avx512_vnni", has_vnni,        nullptr,                        vec_dot_q4_1_q8_1_avx512vnni},
    {GGML_TYPE_Q4_1, CPU_LEVEL_AVX2,   "avx2",        nullptr,         nullptr,                        vec_dot_q4_1_q8_1_avx2},
    {GGML_TYPE_Q5_0, CPU_LEVEL_AVX512, "avx512_vnni", has_vnni,        nullptr,                        vec_dot_q5_0_q8_0_avx512vnni, gemm_q5_0_q8_0_avx512vnni, &gemm_packed_q5_0_avx512vnni},
    {GGML_TYPE_Q5_0, CPU_LEVEL_AVX2,   "avx2",        nullptr,         nullptr,                        vec_dot_q5_0_q8_0_avx2,       gemm_q5_0_q8_0_avx2},
    {GGML_TYPE_Q5_1, CPU_LEVEL_AVX512, "avx512_vnni", has_vnni,        nullptr,                        vec_dot_q5_1_q8_1_avx512vnni},
    {GGML_TYPE_Q5_1, CPU_LEVEL_AVX2,   "avx2",        nullptr,         nullptr,                        vec_dot_q5_1_q8_1_avx2},
    {GGML_TYPE_Q2_K, CPU_LEVEL_AVX512, "avx512_vnni", has_vnni,        nullptr,                        vec_dot_q2_K_q8_K_avx512vnni},
    {GGML_TYPE_Q2_K, CPU_LEVEL_AVX2,   "avx2",        nullptr,         nullptr,                        vec_dot_q2_K_q8_K_avx2},
    {GGML_TYPE_Q3_K, CPU_LEVEL_AVX512, "avx512_vnni", has_vnni,        nullptr,                        vec_dot_q3_K_q8_K_avx512vnni},
    {GGML_TYPE_Q3_K, CPU_LEVEL_AVX2,   "avx2",        nullptr,         nullptr,                        vec_dot_q3_K_q8_K_avx2},
    {GGML_TYPE_Q4_K, CPU_LEVEL_AVX512, "avx512_vnni", has_vnni,        nullptr,                        vec_dot_q4_K_q8_K_avx512vnni, gemm_q4_K_q8_K_avx512vnni},
    {GGML_TYPE_Q4_K, CPU_LEVEL_AVX2,   "avx2",        nullptr,         nullptr,                        vec_dot_q4_K_q8_K_avx2,       gemm_q4_K_q8_K_avx2},
    {GGML_TYPE_Q5_K, CPU_LEVEL_AVX512, "avx512_vnni", has_vnni,        nullptr,                        vec_dot_q5_K_q8_K_avx512vnni},
    {GGML_TYPE_Q5_K, CPU_LEVEL_AVX2,   "avx2",        nullptr,         nullptr,                        vec_dot_q5_K_q8_K_avx2},
    {GGML_TYPE_Q6_K, CPU_LEVEL_AVX512, "avx512_vnni", has_vnni,        nullptr,                        vec_dot_q6_K_q8_K_avx512vnni, gemm_q6_K_q8_K_avx512vnni},
    {GGML_TYPE_Q6_K, CPU_LEVEL_AVX2,   "avx2",        nullptr,         nullptr,                        vec_dot_q6_K_q8_K_avx2,       gemm_q6_K_q8_K_avx2},
#endif
    // keeps the array non-empty on every architecture; matches nothing
    {GGML_TYPE_COUNT_KNOWN, CPU_LEVEL_SCALAR, "end", nullptr, nullptr, nullptr},
};
constexpr size_t N_KERNELS = sizeof(KERNELS) / sizeof(KERNELS[0]) - 1;

bool kernel_usable_at(const quant_cpu_kernel & k, cpu_level level) {
    return k.level <= level && k.level <= cpu_level_supported() && (!k.usable || k.usable(cpu_features()));
}

// resolved traits, [row of VEC_DOT_TYPES][level]
quant_traits_cpu g_resolved[N_VEC_DOT_TYPES][CPU_LEVEL_COUNT];

void resolve_all() {
    for (size_t r = 0; r < N_VEC_DOT_TYPES; r++) {
        const vec_dot_type_row & row = VEC_DOT_TYPES[r];
        assert(quant_act_from_float_ref(row.vec_dot_type) && "vec_dot_type must have an activation conversion");
        for (int l = 0; l < CPU_LEVEL_COUNT; l++) {
            quant_traits_cpu & t = g_resolved[r][l];
            t.type = row.type;
            t.vec_dot_type = row.vec_dot_type;
            t.from_float = quant_act_from_float_ref(row.vec_dot_type);
            t.vec_dot = row.vec_dot_ref;
            t.vec_dot_ref = row.vec_dot_ref;
            t.gemm = nullptr;
            t.packed = nullptr;
            bool have_from_float = false, have_vec_dot = false, have_gemm = false, have_packed = false;
            for (size_t k = 0; k < N_KERNELS; k++) {
                const quant_cpu_kernel & kr = KERNELS[k];
                if (!kernel_usable_at(kr, (cpu_level) l)) continue;
                // the conversion belongs to the activation type; the dot to the weight type
                if (!have_from_float && kr.from_float && kr.type == row.vec_dot_type) {
                    t.from_float = kr.from_float;
                    have_from_float = true;
                }
                if (!have_vec_dot && kr.vec_dot && kr.type == row.type) {
                    t.vec_dot = kr.vec_dot;
                    have_vec_dot = true;
                }
                if (!have_gemm && kr.gemm && kr.type == row.type) {
                    t.gemm = kr.gemm;
                    have_gemm = true;
                }
                if (!have_packed && kr.packed && kr.type == row.type) {
                    t.packed = kr.packed;
                    have_packed = true;
                }
            }
        }
    }
}

} // namespace

from_float_fn quant_act_from_float_ref(ggml_type act_type) {
    if (act_type == GGML_TYPE_Q8_0) return quantize_row_q8_0_act_ref;
    if (act_type == GGML_TYPE_Q8_1) return quantize_row_q8_1_act_ref;
    const quant_traits * t = quant_traits_get(act_type);
    return t ? t->from_float_ref : nullptr;
}

const quant_traits_cpu * quant_traits_cpu_get_level(uint32_t type, cpu_level level) {
    static std::once_flag once;
    std::call_once(once, resolve_all);
    if (level < CPU_LEVEL_SCALAR) level = CPU_LEVEL_SCALAR;
    if (level >= CPU_LEVEL_COUNT) level = (cpu_level) (CPU_LEVEL_COUNT - 1);
    for (size_t r = 0; r < N_VEC_DOT_TYPES; r++)
        if ((uint32_t) VEC_DOT_TYPES[r].type == type) return &g_resolved[r][level];
    return nullptr;
}

const quant_traits_cpu * quant_traits_cpu_get(uint32_t type) { return quant_traits_cpu_get_level(type, cpu_level_active()); }

const quant_cpu_kernel * quant_cpu_kernels_all(size_t * count) {
    *count = N_KERNELS;
    return KERNELS;
}

bool quant_cpu_kernel_usable(const quant_cpu_kernel & k) { return kernel_usable_at(k, cpu_level_supported()); }

} // namespace core
