#include "ops.h"

#include <cmath>
#include <cstring>
#include <vector>

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

// glibc's expf (sysdeps/ieee754/flt-32/e_expf.c as its FMA build computes it), 8 lanes in double. Constants
// are glibc's __exp2f_data: T[i] = bits(2^(i/32)) − (i << 47), 32/ln2, the shift 1.5·2^52 and the cubic.
alignas(64) const uint64_t kExpfTab[32] = {
    0x3ff0000000000000, 0x3fefd9b0d3158574, 0x3fefb5586cf9890f, 0x3fef9301d0125b51, 0x3fef72b83c7d517b, 0x3fef54873168b9aa,
    0x3fef387a6e756238, 0x3fef1e9df51fdee1, 0x3fef06fe0a31b715, 0x3feef1a7373aa9cb, 0x3feedea64c123422, 0x3feece086061892d,
    0x3feebfdad5362a27, 0x3feeb42b569d4f82, 0x3feeab07dd485429, 0x3feea47eb03a5585, 0x3feea09e667f3bcd, 0x3fee9f75e8ec5f74,
    0x3feea11473eb0187, 0x3feea589994cce13, 0x3feeace5422aa0db, 0x3feeb737b0cdc5e5, 0x3feec49182a3f090, 0x3feed503b23e255d,
    0x3feee89f995ad3ad, 0x3feeff76f2fb5e47, 0x3fef199bdd85529c, 0x3fef3720dcef9069, 0x3fef5818dcfba487, 0x3fef7c97337b9b5f,
    0x3fefa4afa2a490da, 0x3fefd0765b6e4540,
};
constexpr uint64_t kExpfInvLn2N = 0x40471547652b82fe, kExpfShift = 0x4338000000000000;
constexpr uint64_t kExpfC0 = 0x3ebc6af84b912394, kExpfC1 = 0x3f2ebfce50fac4f3, kExpfC2 = 0x3f962e42ff0c52d6;
constexpr float kExpfFastMin = -0x1.9d1d9ep6f;  // −103.278923: below it glibc returns its underflow results

__attribute__((target("avx512f"))) inline __m512d set1_bits_pd(uint64_t b) { return _mm512_castsi512_pd(_mm512_set1_epi64((long long) b)); }

__attribute__((target("avx512f,fma"))) inline __m256 expf_libm_8_avx512(__m256 xf) {
    const auto c = set1_bits_pd;
    const __m512d xd = _mm512_cvtps_pd(xf), invln2n = c(kExpfInvLn2N), shift = c(kExpfShift);
    __m512d kd = _mm512_fmadd_pd(invln2n, xd, shift);         // (glibc's FMA build fuses x·32/ln2 + shift)
    const __m512i ki = _mm512_castpd_si512(kd);
    kd = _mm512_sub_pd(kd, shift);
    const __m512d r = _mm512_fmsub_pd(invln2n, xd, kd);       // (and x·32/ln2 − k)
    const __m512d t0 = _mm512_load_pd(kExpfTab), t1 = _mm512_load_pd(kExpfTab + 8), t2 = _mm512_load_pd(kExpfTab + 16), t3 = _mm512_load_pd(kExpfTab + 24);
    const __m512d lo = _mm512_permutex2var_pd(t0, ki, t1), hi = _mm512_permutex2var_pd(t2, ki, t3);
    const __m512d tab = _mm512_mask_blend_pd(_mm512_test_epi64_mask(ki, _mm512_set1_epi64(16)), lo, hi);
    const __m512d sc = _mm512_castsi512_pd(_mm512_add_epi64(_mm512_castpd_si512(tab), _mm512_slli_epi64(ki, 47)));
    const __m512d z = _mm512_fmadd_pd(r, c(kExpfC0), c(kExpfC1));
    const __m512d r2 = _mm512_mul_pd(r, r);
    __m512d y = _mm512_fmadd_pd(r, c(kExpfC2), _mm512_set1_pd(1.0));
    y = _mm512_fmadd_pd(z, r2, y);
    return _mm512_cvtpd_ps(_mm512_mul_pd(y, sc));
}

__attribute__((target("avx512f,fma"))) void expf_libm_avx512(const float * x, float * y, int n) {
    for (int i = 0; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? (__mmask16) 0xffff : (__mmask16) ((1u << (n - i)) - 1);
        const __m512 v = _mm512_maskz_loadu_ps(m, x + i);
        const __m256 a = expf_libm_8_avx512(_mm512_castps512_ps256(v));
        const __m256 b = expf_libm_8_avx512(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
        _mm512_mask_storeu_ps(y + i, m, _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castps_pd(_mm512_castps256_ps512(a)), _mm256_castps_pd(b), 1)));
        // lanes outside [−103.28, 88] or NaN: glibc's own special paths
        __mmask16 slow = m & ~(_mm512_cmp_ps_mask(v, _mm512_set1_ps(kExpfFastMin), _CMP_GE_OQ) & _mm512_cmp_ps_mask(v, _mm512_set1_ps(88.0f), _CMP_LE_OQ));
        while (slow) {
            const int l = __builtin_ctz(slow);
            y[i + l] = std::exp(x[i + l]);
            slow &= (__mmask16) (slow - 1);
        }
    }
}

// The same with AVX2 (4 doubles per register, the table read by a gather): glibc runs __expf_fma on every CPU
// with AVX2 and FMA, so these are its bits there too.
__attribute__((target("avx2"))) inline __m256d set1_bits_pd256(uint64_t b) { return _mm256_castsi256_pd(_mm256_set1_epi64x((long long) b)); }

__attribute__((target("avx2,fma"))) inline __m128 expf_libm_4_avx2(__m128 xf) {
    const auto c = set1_bits_pd256;
    const __m256d xd = _mm256_cvtps_pd(xf), invln2n = c(kExpfInvLn2N), shift = c(kExpfShift);
    __m256d kd = _mm256_fmadd_pd(invln2n, xd, shift);
    const __m256i ki = _mm256_castpd_si256(kd);
    kd = _mm256_sub_pd(kd, shift);
    const __m256d r = _mm256_fmsub_pd(invln2n, xd, kd);
    const __m256d tab = _mm256_i64gather_pd((const double *) kExpfTab, _mm256_and_si256(ki, _mm256_set1_epi64x(31)), 8);
    const __m256d sc = _mm256_castsi256_pd(_mm256_add_epi64(_mm256_castpd_si256(tab), _mm256_slli_epi64(ki, 47)));
    const __m256d z = _mm256_fmadd_pd(r, c(kExpfC0), c(kExpfC1));
    const __m256d r2 = _mm256_mul_pd(r, r);
    __m256d y = _mm256_fmadd_pd(r, c(kExpfC2), _mm256_set1_pd(1.0));
    y = _mm256_fmadd_pd(z, r2, y);
    return _mm256_cvtpd_ps(_mm256_mul_pd(y, sc));
}

__attribute__((target("avx2,fma"))) void expf_libm_avx2(const float * x, float * y, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_loadu_ps(x + i);
        const __m128 a = expf_libm_4_avx2(_mm256_castps256_ps128(v)), b = expf_libm_4_avx2(_mm256_extractf128_ps(v, 1));
        _mm256_storeu_ps(y + i, _mm256_insertf128_ps(_mm256_castps128_ps256(a), b, 1));
        const __m256 ok = _mm256_and_ps(_mm256_cmp_ps(v, _mm256_set1_ps(kExpfFastMin), _CMP_GE_OQ), _mm256_cmp_ps(v, _mm256_set1_ps(88.0f), _CMP_LE_OQ));
        int slow = ~_mm256_movemask_ps(ok) & 0xff;
        while (slow) {
            const int l = __builtin_ctz((unsigned) slow);
            y[i + l] = std::exp(x[i + l]);
            slow &= slow - 1;
        }
    }
    for (; i < n; i++) y[i] = std::exp(x[i]);
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

void expf_libm_ref(const float * x, float * y, int n) {
    for (int i = 0; i < n; i++) y[i] = std::exp(x[i]);
}

void expf_libm(const float * x, float * y, int n) {
#if defined(__x86_64__)
    // The vector paths reproduce glibc's expf. Where the C library's expf computes other bits (musl, an old glibc),
    // they would not be libm's: a one-time check over a spread of arguments against std::exp decides, and the
    // scalar ref runs on a mismatch.
    static const int level = [] {
        const int l = simd_level();
        if (l == 0) return 0;
        std::vector<float> a(4099), v(a.size()), r(a.size());
        for (size_t i = 0; i < a.size(); i++) a[i] = -103.27f * (float) i / (float) (a.size() - 1) + (i % 3 ? 1e-3f * (float) (i % 7) : 0.0f);
        if (l == 2) expf_libm_avx512(a.data(), v.data(), (int) a.size());
        else expf_libm_avx2(a.data(), v.data(), (int) a.size());
        expf_libm_ref(a.data(), r.data(), (int) a.size());
        return std::memcmp(v.data(), r.data(), v.size() * sizeof(float)) == 0 ? l : 0;
    }();
    if (level == 2) return expf_libm_avx512(x, y, n);
    if (level == 1) return expf_libm_avx2(x, y, n);
#endif
    expf_libm_ref(x, y, n);
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
