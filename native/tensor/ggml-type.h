// Tensor element types as numbered in GGUF files (ggml's `ggml_type`). The numbers are stored in files,
// so they are fixed forever; removed types stay commented out, never reused.
#pragma once
#include <cstdint>
#include <cstring>

namespace core {

enum ggml_type : uint32_t {
    GGML_TYPE_F32 = 0,
    GGML_TYPE_F16 = 1,
    GGML_TYPE_Q4_0 = 2,
    GGML_TYPE_Q4_1 = 3,
    // 4 (Q4_2) and 5 (Q4_3) were removed from ggml
    GGML_TYPE_Q5_0 = 6,
    GGML_TYPE_Q5_1 = 7,
    GGML_TYPE_Q8_0 = 8,
    GGML_TYPE_Q8_1 = 9,
    GGML_TYPE_Q2_K = 10,
    GGML_TYPE_Q3_K = 11,
    GGML_TYPE_Q4_K = 12,
    GGML_TYPE_Q5_K = 13,
    GGML_TYPE_Q6_K = 14,
    GGML_TYPE_Q8_K = 15,
    GGML_TYPE_IQ2_XXS = 16,
    GGML_TYPE_IQ2_XS = 17,
    GGML_TYPE_IQ3_XXS = 18,
    GGML_TYPE_IQ1_S = 19,
    GGML_TYPE_IQ4_NL = 20,
    GGML_TYPE_IQ3_S = 21,
    GGML_TYPE_IQ2_S = 22,
    GGML_TYPE_IQ4_XS = 23,
    GGML_TYPE_I8 = 24,
    GGML_TYPE_I16 = 25,
    GGML_TYPE_I32 = 26,
    GGML_TYPE_I64 = 27,
    GGML_TYPE_F64 = 28,
    GGML_TYPE_IQ1_M = 29,
    GGML_TYPE_BF16 = 30,
    GGML_TYPE_COUNT_KNOWN = 40,
};

// Name of any type number seen in a file ("q4_K", "bf16"), or "unknown(N)" style null for gaps.
const char * ggml_type_name(uint32_t t);

// ---- scalar half-precision conversions (bit-exact with IEEE 754 binary16 / bfloat16) ----

using f16_t = uint16_t;
using bf16_t = uint16_t;

inline uint32_t f32_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float bits_f32(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

// IEEE half -> float, exact (handles subnormals, inf, nan).
inline float f16_to_f32(f16_t h) {
    const uint32_t sign = (uint32_t) (h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    if (exp == 0) {
        if (man == 0) return bits_f32(sign);
        // subnormal: normalize
        int e = -1;
        do { man <<= 1; e++; } while ((man & 0x400u) == 0);
        man &= 0x3ffu;
        return bits_f32(sign | ((uint32_t) (127 - 15 - e) << 23) | (man << 13));
    }
    if (exp == 31) return bits_f32(sign | 0x7f800000u | (man << 13));
    return bits_f32(sign | ((exp + 127 - 15) << 23) | (man << 13));
}

// float -> IEEE half, round to nearest even (matches F16C's _cvtss_sh(x, 0)).
inline f16_t f32_to_f16(float f) {
    const uint32_t x = f32_bits(f);
    const uint32_t sign = (x >> 16) & 0x8000u;
    const uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return (f16_t) (sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0));
    if (ax >= 0x477ff000u) return (f16_t) (sign | 0x7c00u); // overflow after rounding
    if (ax < 0x38800000u) {
        // subnormal half (or zero): value = ax as float; scale by 2^24 and round
        if (ax < 0x33000000u) return (f16_t) sign; // < 2^-25 rounds to zero
        const uint32_t e = ax >> 23;
        const uint32_t m = (ax & 0x7fffffu) | 0x800000u;
        const uint32_t shift = 126 - e; // 14..24
        uint32_t r = m >> shift;
        const uint32_t rem = m & ((1u << shift) - 1);
        const uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1))) r++;
        return (f16_t) (sign | r);
    }
    uint32_t r = ((ax >> 13) - ((127 - 15) << 10));
    const uint32_t rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1))) r++;
    return (f16_t) (sign | r);
}

inline float bf16_to_f32(bf16_t h) { return bits_f32((uint32_t) h << 16); }

// float -> bfloat16, round to nearest even; NaN stays NaN (as ggml's GGML_FP32_TO_BF16).
inline bf16_t f32_to_bf16(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16_t) ((u >> 16) | 64);
    return (bf16_t) ((u + (0x7fffu + ((u >> 16) & 1))) >> 16);
}

} // namespace core

namespace core {
// Block layout of every type number known to GGUF (not only the ones we compute with), so the GGUF
// reader can bounds-check any file. Returns false for unknown numbers.
bool ggml_type_layout(uint32_t t, int64_t * block_size, size_t * type_size);
} // namespace core
