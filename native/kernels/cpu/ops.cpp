#include "ops.h"

#include <cmath>
#include <cstring>

#include "quant-traits-cpu.h"
#if defined(__x86_64__)
#include <immintrin.h>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#endif

namespace core {

void rms_norm_ref(const float * x, const float * w, float * y, int64_t n, float eps) {
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) sum += (double) (x[i] * x[i]);
    const float mean = (float) (sum / (double) n);
    const float scale = 1.0f / std::sqrt(mean + eps);
    if (w) {
        for (int64_t i = 0; i < n; i++) y[i] = (x[i] * scale) * w[i];
    } else {
        for (int64_t i = 0; i < n; i++) y[i] = x[i] * scale;
    }
}

void rope_cache_ref(float * cs, int32_t pos, int n_rot, float freq_base, float freq_scale, const float * freq_factors) {
    const float theta_scale = std::pow(freq_base, -2.0f / (float) n_rot);
    float theta = (float) pos;
    for (int i = 0; i < n_rot / 2; i++) {
        const float ff = freq_factors ? freq_factors[i] : 1.0f;
        const float t = freq_scale * (theta / ff);
        cs[2 * i] = std::cos(t);
        cs[2 * i + 1] = std::sin(t);
        theta *= theta_scale;
    }
}

// llama.cpp's build contracts `x0*cos - x1*sin` and `x0*sin + x1*cos` into FMAs on the first product
// (what GCC does with -ffp-contract=fast); spelled out so the rounding is the same with any compiler.
static inline float rope_rot0(float x0, float x1, float c, float s) { return std::fma(x0, c, -(x1 * s)); }
static inline float rope_rot1(float x0, float x1, float c, float s) { return std::fma(x0, s, x1 * c); }

void rope_apply_ref(float * x, int n_head, int head_dim, int n_rot, rope_style style, const float * cs) {
    for (int h = 0; h < n_head; h++) {
        float * xh = x + (size_t) h * head_dim;
        if (style == ROPE_STYLE_NORM) {
            for (int i = 0; i < n_rot / 2; i++) {
                const float c = cs[2 * i], s = cs[2 * i + 1];
                const float x0 = xh[2 * i], x1 = xh[2 * i + 1];
                xh[2 * i] = rope_rot0(x0, x1, c, s);
                xh[2 * i + 1] = rope_rot1(x0, x1, c, s);
            }
        } else {
            const int half = n_rot / 2;
            for (int i = 0; i < half; i++) {
                const float c = cs[2 * i], s = cs[2 * i + 1];
                const float x0 = xh[i], x1 = xh[i + half];
                xh[i] = rope_rot0(x0, x1, c, s);
                xh[i + half] = rope_rot1(x0, x1, c, s);
            }
        }
    }
}

void silu_mul_ref(float * g, const float * u, int64_t n) {
    for (int64_t i = 0; i < n; i++) g[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

void add_ref(float * y, const float * x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += x[i];
}

#if defined(__x86_64__)
namespace {

// exp(x): n = round(x / ln2) via the 1.5·2^23 shift, b = x − n·ln2 in two steps, a degree-5 polynomial
// in b, scaled by 2^n (AVX-512: scalef; overflow/underflow lanes fixed up as ggml does).
__attribute__((target("avx512f,avx512dq,fma"))) inline __m512 v_expf_avx512(__m512 x) {
    const __m512 r = _mm512_set1_ps(0x1.8p23f);
    const __m512 z = _mm512_fmadd_ps(x, _mm512_set1_ps(0x1.715476p+0f), r);
    const __m512 n = _mm512_sub_ps(z, r);
    const __m512 b = _mm512_fnmadd_ps(n, _mm512_set1_ps(0x1.7f7d1cp-20f), _mm512_fnmadd_ps(n, _mm512_set1_ps(0x1.62e4p-1f), x));
    const __mmask16 d = _mm512_cmp_ps_mask(_mm512_abs_ps(n), _mm512_set1_ps(192), _CMP_GT_OQ);
    const __m512 u = _mm512_mul_ps(b, b);
    const __m512 j = _mm512_fmadd_ps(
        _mm512_fmadd_ps(_mm512_fmadd_ps(_mm512_set1_ps(0x1.0e4020p-7f), b, _mm512_set1_ps(0x1.573e2ep-5f)), u,
                        _mm512_fmadd_ps(_mm512_set1_ps(0x1.555e66p-3f), b, _mm512_set1_ps(0x1.fffdb6p-2f))),
        u, _mm512_fmadd_ps(_mm512_set1_ps(0x1.ffffecp-1f), b, _mm512_set1_ps(1.0f)));
    const __m512 res = _mm512_scalef_ps(j, n);
    if (_mm512_kortestz(d, d)) return res;
    const __m512 zero = _mm512_setzero_ps();
    const __m512 alt = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(n, zero, _CMP_LE_OQ), _mm512_set1_ps(INFINITY), zero);
    return _mm512_mask_blend_ps(d, res, alt);
}

__attribute__((target("avx512f,avx512dq,fma"))) void silu_mul_avx512(float * g, const float * u, int64_t n) {
    int64_t i = 0;
    const __m512 one = _mm512_set1_ps(1.0f);
    for (; i + 16 <= n; i += 16) {
        const __m512 x = _mm512_loadu_ps(g + i);
        const __m512 e = v_expf_avx512(_mm512_sub_ps(_mm512_setzero_ps(), x));
        _mm512_storeu_ps(g + i, _mm512_mul_ps(_mm512_div_ps(x, _mm512_add_ps(one, e)), _mm512_loadu_ps(u + i)));
    }
    silu_mul_ref(g + i, u + i, n - i);
}

// ggml's AVX2 variant: 2^n built in the exponent bits, result k + k·j.
__attribute__((target("avx2,fma"))) inline __m256 v_expf_avx2(__m256 x) {
    const __m256 r = _mm256_set1_ps(0x1.8p23f);
    const __m256 z = _mm256_fmadd_ps(x, _mm256_set1_ps(0x1.715476p+0f), r);
    const __m256 n = _mm256_sub_ps(z, r);
    const __m256 b = _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.7f7d1cp-20f), _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.62e4p-1f), x));
    const __m256i e = _mm256_slli_epi32(_mm256_castps_si256(z), 23);
    const __m256 k = _mm256_castsi256_ps(_mm256_add_epi32(e, _mm256_castps_si256(_mm256_set1_ps(1))));
    const __m256i c = _mm256_castps_si256(_mm256_cmp_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.f), n), _mm256_set1_ps(126), _CMP_GT_OQ));
    const __m256 u = _mm256_mul_ps(b, b);
    const __m256 j = _mm256_fmadd_ps(
        _mm256_fmadd_ps(_mm256_fmadd_ps(_mm256_set1_ps(0x1.0e4020p-7f), b, _mm256_set1_ps(0x1.573e2ep-5f)), u,
                        _mm256_fmadd_ps(_mm256_set1_ps(0x1.555e66p-3f), b, _mm256_set1_ps(0x1.fffdb6p-2f))),
        u, _mm256_mul_ps(_mm256_set1_ps(0x1.ffffecp-1f), b));
    if (!_mm256_movemask_ps(_mm256_castsi256_ps(c))) return _mm256_fmadd_ps(j, k, k);
    const __m256i g = _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps(n, _mm256_setzero_ps(), _CMP_LE_OQ)), _mm256_set1_epi32(0x82000000u));
    const __m256 s1 = _mm256_castsi256_ps(_mm256_add_epi32(g, _mm256_set1_epi32(0x7f000000u)));
    const __m256 s2 = _mm256_castsi256_ps(_mm256_sub_epi32(e, g));
    const __m256i d = _mm256_castps_si256(_mm256_cmp_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.f), n), _mm256_set1_ps(192), _CMP_GT_OQ));
    return _mm256_or_ps(
        _mm256_and_ps(_mm256_castsi256_ps(d), _mm256_mul_ps(s1, s1)),
        _mm256_andnot_ps(_mm256_castsi256_ps(d),
                         _mm256_or_ps(_mm256_and_ps(_mm256_castsi256_ps(c), _mm256_mul_ps(_mm256_fmadd_ps(s2, j, s2), s1)),
                                      _mm256_andnot_ps(_mm256_castsi256_ps(c), _mm256_fmadd_ps(k, j, k)))));
}

__attribute__((target("avx512f,avx512dq,fma"))) float exp_sub_sum_avx512(float * x, int64_t n, float mx) {
    int64_t i = 0;
    __m512 acc = _mm512_setzero_ps();
    const __m512 m = _mm512_set1_ps(mx);
    for (; i + 16 <= n; i += 16) {
        const __m512 e = v_expf_avx512(_mm512_sub_ps(_mm512_loadu_ps(x + i), m));
        _mm512_storeu_ps(x + i, e);
        acc = _mm512_add_ps(acc, e);
    }
    return _mm512_reduce_add_ps(acc) + exp_sub_sum_ref(x + i, n - i, mx);
}

__attribute__((target("avx2,fma"))) void silu_mul_avx2(float * g, const float * u, int64_t n) {
    int64_t i = 0;
    const __m256 one = _mm256_set1_ps(1.0f);
    for (; i + 8 <= n; i += 8) {
        const __m256 x = _mm256_loadu_ps(g + i);
        const __m256 e = v_expf_avx2(_mm256_sub_ps(_mm256_setzero_ps(), x));
        _mm256_storeu_ps(g + i, _mm256_mul_ps(_mm256_div_ps(x, _mm256_add_ps(one, e)), _mm256_loadu_ps(u + i)));
    }
    silu_mul_ref(g + i, u + i, n - i);
}

__attribute__((target("avx2,fma"))) float exp_sub_sum_avx2(float * x, int64_t n, float mx) {
    int64_t i = 0;
    __m256 acc = _mm256_setzero_ps();
    const __m256 m = _mm256_set1_ps(mx);
    for (; i + 8 <= n; i += 8) {
        const __m256 e = v_expf_avx2(_mm256_sub_ps(_mm256_loadu_ps(x + i), m));
        _mm256_storeu_ps(x + i, e);
        acc = _mm256_add_ps(acc, e);
    }
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s) + exp_sub_sum_ref(x + i, n - i, mx);
}

int simd_level() {
    static const int level = [] {
        const char * l = cpu_dispatch_level();
        if (!std::strcmp(l, "avx512") && cpu_features().avx512f) return 2;
        if (!std::strcmp(l, "avx2") || !std::strcmp(l, "avx512")) return 1;
        return 0;
    }();
    return level;
}

} // namespace
#endif

float exp_sub_sum_ref(float * x, int64_t n, float mx) {
    float s = 0;
    for (int64_t i = 0; i < n; i++) { x[i] = std::exp(x[i] - mx); s += x[i]; }
    return s;
}

float exp_sub_sum(float * x, int64_t n, float mx) {
#if defined(__x86_64__)
    const int level = simd_level();
    if (level == 2) return exp_sub_sum_avx512(x, n, mx);
    if (level == 1) return exp_sub_sum_avx2(x, n, mx);
#endif
    return exp_sub_sum_ref(x, n, mx);
}

void silu_mul(float * g, const float * u, int64_t n) {
#if defined(__x86_64__)
    const int level = simd_level();
    if (level == 2) return silu_mul_avx512(g, u, n);
    if (level == 1) return silu_mul_avx2(g, u, n);
#endif
    silu_mul_ref(g, u, n);
}

} // namespace core
