// AVX2 + FMA + F16C kernels (Haswell / Zen 1 and later). Dot products keep 8-lane f32 partial sums in
// several accumulators (to hide FMA latency) and reduce once at the end; q8_0 blocks multiply as
// |x| (u8) times sign(y, x) (s8), which is exact: |x| <= 128 and |y| <= 127 because activations come from
// our own quantizer, so a pair sum never saturates int16.
#if defined(__x86_64__)
#include <immintrin.h>

#include <cstring>

#include "../../../tensor/quants/q2-k.h"
#include "../../../tensor/quants/q3-k.h"
#include "../../../tensor/quants/q4-0.h"
#include "../../../tensor/quants/q4-1.h"
#include "../../../tensor/quants/q4-k.h"
#include "../../../tensor/quants/q5-0.h"
#include "../../../tensor/quants/q5-1.h"
#include "../../../tensor/quants/q5-k.h"
#include "../../../tensor/quants/q6-k.h"
#include "../../../tensor/quants/q8-0.h"
#include "../../../tensor/quants/q8-1.h"
#include "../../../tensor/quants/q8-k.h"
#include "x86-kernels.h"

#define TC_AVX2 __attribute__((target("avx2,fma,f16c")))

namespace core {

namespace {

TC_AVX2 inline float hsum_f32x8(__m256 v) {
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

TC_AVX2 inline float hmax_f32x8(__m256 v) {
    __m128 r = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    r = _mm_max_ps(r, _mm_movehl_ps(r, r));
    r = _mm_max_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

// lanes [0, r) set, r in [0, 8]
TC_AVX2 inline __m256i mask_first_i32x8(int64_t r) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int) r), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

TC_AVX2 inline __m256 load_f16x8(const f16_t * p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) p)); }

// A bf16 is the high half of an f32, so 16 packed bf16 split into two f32 vectors with one op each: the
// even elements shifted up, the odd ones masked in place. The dot product pairs x and y lanes the same
// way, so the element order inside the vectors does not matter.
TC_AVX2 inline __m256 bf16_even_f32x8(__m256i v) { return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)); }
TC_AVX2 inline __m256 bf16_odd_f32x8(__m256i v) {
    return _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32((int) 0xffff0000u)));
}

} // namespace

TC_AVX2 void vec_dot_f32_avx2(int64_t n, float * s, const void * vx, const void * vy) {
    const float * x = (const float *) vx;
    const float * y = (const float *) vy;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8), _mm256_loadu_ps(y + i + 8), a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 16), _mm256_loadu_ps(y + i + 16), a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 24), _mm256_loadu_ps(y + i + 24), a3);
    }
    for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), a0);
    if (i < n) {
        const __m256i m = mask_first_i32x8(n - i);
        a1 = _mm256_fmadd_ps(_mm256_maskload_ps(x + i, m), _mm256_maskload_ps(y + i, m), a1);
    }
    *s = hsum_f32x8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
}

// Same expression as the AVX-512 f16 dot (ggml_vec_dot_f16, see x86-avx512.cpp): four 16-lane
// accumulators held as 8-lane halves (h[2k] lanes 0-7 of a_k, h[2k+1] lanes 8-15).
TC_AVX2 void vec_dot_f16_avx2(int64_t n, float * s, const void * vx, const void * vy) {
    const f16_t * x = (const f16_t *) vx;
    const f16_t * y = (const f16_t *) vy;
    const int64_t np = n & ~(int64_t) 63;
    __m256 h[8];
    for (auto & v : h) v = _mm256_setzero_ps();
    for (int64_t i = 0; i < np; i += 64) {
        for (int k = 0; k < 8; k++) h[k] = _mm256_fmadd_ps(load_f16x8(x + i + 8 * k), load_f16x8(y + i + 8 * k), h[k]);
    }
    const __m256 lo = _mm256_add_ps(_mm256_add_ps(h[0], h[4]), _mm256_add_ps(h[2], h[6]));
    const __m256 hi = _mm256_add_ps(_mm256_add_ps(h[1], h[5]), _mm256_add_ps(h[3], h[7]));
    double sum = hsum_f32x8(_mm256_add_ps(lo, hi));
    for (int64_t i = np; i < n; i++) sum += (double) (f16_to_f32(x[i]) * f16_to_f32(y[i]));
    *s = (float) sum;
}

// Same expression as the AVX-512 bf16 dot (see x86-avx512.cpp): each 16-lane accumulator held as two
// 8-lane halves (lanes 0-7 take elements 0-15 of a 32-element chunk, lanes 8-15 elements 16-31).
TC_AVX2 void vec_dot_bf16_avx2(int64_t n, float * s, const void * vx, const void * vy) {
    const bf16_t * x = (const bf16_t *) vx;
    const bf16_t * y = (const bf16_t *) vy;
    __m256 c[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};  // c1.lo c1.hi c2.lo c2.hi
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        for (int k = 0; k < 4; k++) {
            const __m256i xv = _mm256_loadu_si256((const __m256i *) (x + i + 16 * k));
            const __m256i yv = _mm256_loadu_si256((const __m256i *) (y + i + 16 * k));
            c[k] = _mm256_fmadd_ps(bf16_odd_f32x8(xv), bf16_odd_f32x8(yv), c[k]);
            c[k] = _mm256_fmadd_ps(bf16_even_f32x8(xv), bf16_even_f32x8(yv), c[k]);
        }
    }
    // _mm512_reduce_add_ps adds the upper 8 lanes to the lower 8 first: hsum_f32x8(lo + hi)
    double sum = hsum_f32x8(_mm256_add_ps(c[0], c[1]));
    sum += hsum_f32x8(_mm256_add_ps(c[2], c[3]));
    for (; i < n; i++) sum += (double) (bf16_to_f32(x[i]) * bf16_to_f32(y[i]));
    *s = (float) sum;
}

TC_AVX2 void convert_row_f32_to_f16_avx2(const float * x, void * vy, int64_t n) {
    f16_t * y = (f16_t *) vy;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *) (y + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) y[i] = f32_to_f16(x[i]);
}

TC_AVX2 void convert_row_f32_to_bf16_avx2(const float * x, void * vy, int64_t n) {
    bf16_t * y = (bf16_t *) vy;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        // same integer rounding as f32_to_bf16: add 0x7fff + lsb, keep the high half; quiet NaNs
        const __m256i u = _mm256_castps_si256(_mm256_loadu_ps(x + i));
        const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
        const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), lsb)), 16);
        const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)),
                                               _mm256_set1_epi32(0x7f800000));
        const __m256i qnan = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(64));
        const __m256i h = _mm256_blendv_epi8(r, qnan, nan);
        // 8 x u32 (all <= 0xffff) -> 8 x u16: packus works per 128-bit lane, then gather qwords 0 and 2
        const __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(h, h), 0x08);
        _mm_storeu_si128((__m128i *) (y + i), _mm256_castsi256_si128(p));
    }
    for (; i < n; i++) y[i] = f32_to_bf16(x[i]);
}

TC_AVX2 void quantize_row_q8_0_avx2(const float * x, void * vy, int64_t n) {
    block_q8_0 * y = (block_q8_0 *) vy;
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t ib = 0; ib < n / QK8_0; ib++) {
        const float * xb = x + ib * QK8_0;
        __m256 v0 = _mm256_loadu_ps(xb), v1 = _mm256_loadu_ps(xb + 8);
        __m256 v2 = _mm256_loadu_ps(xb + 16), v3 = _mm256_loadu_ps(xb + 24);
        const __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v0), _mm256_andnot_ps(sign, v1)),
                                       _mm256_max_ps(_mm256_andnot_ps(sign, v2), _mm256_andnot_ps(sign, v3)));
        // as quantize_row_q8_0_act_ref (llama.cpp's runtime quantizer): id = 127/amax, round half to even
        const float amax = hmax_f32x8(m);
        const float d = amax / 127.0f;
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        y[ib].d = f32_to_f16(d);
        const __m256 vid = _mm256_set1_ps(id);
        const __m256i i0 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v0, vid), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        const __m256i i1 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v1, vid), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        const __m256i i2 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v2, vid), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        const __m256i i3 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v3, vid), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        // packs interleave 128-bit lanes: bytes come out as i0[0:4] i1[0:4] i2[0:4] i3[0:4] i0[4:8] ...;
        // the dword permute restores element order
        const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
        const __m256i q = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *) y[ib].qs, q);
    }
}

// block-format dots and micro-kernels, shared with the AVX-512 VNNI build
#define TC_QD TC_AVX2
#define QD_NAME(f) f##_avx2
#define QD_VNNI 0
#include "x86-quant-dots.inc"

} // namespace core

#endif // __x86_64__
