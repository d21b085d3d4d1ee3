// AVX-512 kernels (F + BW + VL; Skylake-X / Zen 4 and later). Tails use masked loads instead of scalar
// loops. Block-format dots (x86-quant-dots.inc) use VNNI's vpdpbusd on 256-bit vectors (one q8_0 block per vector, so no
// cross-block shuffles; on Zen 4 a 512-bit op costs two 256-bit ones anyway), and the bf16 dot uses
// AVX512_BF16's vdpbf16ps when present. Note vdpbf16ps treats bf16 subnormals as zero, which changes a
// dot product only at the 1e-38 level.
#if defined(__x86_64__)
// GCC 12's AVX-512 headers self-initialize their "undefined" vectors (`__m512 __Y = __Y;`), which
// -Wall reports at every use inside a target("avx512f") function (GCC bug 105593, fixed in GCC 13).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <algorithm>
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

#define TC_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))
#define TC_AVX512_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))
#define TC_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")))

namespace core {

namespace {

TC_AVX512 inline float hsum_f32x8_512(__m256 v) {
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

TC_AVX512 inline __m512 load_f16x16(const f16_t * p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *) p)); }

TC_AVX512 inline float hsum_f32x16(__m512 v) {
    const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    return hsum_f32x8_512(_mm256_add_ps(_mm512_castps512_ps256(v), hi));
}

TC_AVX512 inline float hmax_f32x16(__m512 v) {
    const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    const __m256 m8 = _mm256_max_ps(_mm512_castps512_ps256(v), hi);
    __m128 r = _mm_max_ps(_mm256_castps256_ps128(m8), _mm256_extractf128_ps(m8, 1));
    r = _mm_max_ps(r, _mm_movehl_ps(r, r));
    r = _mm_max_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

TC_AVX512 inline __m256 load_f16x8(const f16_t * p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) p)); }

TC_AVX512_BF16 inline __m512bh load_bf16x32(const bf16_t * p) { return (__m512bh) _mm512_loadu_si512(p); }

// f32 bit patterns -> bf16 in the low half of each lane, with the integer rounding of f32_to_bf16 (round
// to nearest even, quiet NaNs). vcvtneps2bf16 is not used because it flushes subnormals.
TC_AVX512 inline __m512i f32_bits_to_bf16x16(__m512i u) {
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    const __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lsb)), 16);
    const __mmask16 nan = _mm512_cmpgt_epi32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                                  _mm512_set1_epi32(0x7f800000));
    return _mm512_mask_blend_epi32(nan, r, _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(64)));
}

// bf16 pairs -> f32: even elements shifted up, odd ones masked in place (see x86-avx2.cpp)
TC_AVX512 inline __m512 bf16_even_f32x16(__m512i v) { return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)); }
TC_AVX512 inline __m512 bf16_odd_f32x16(__m512i v) {
    return _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32((int) 0xffff0000u)));
}

} // namespace

TC_AVX512 void vec_dot_f32_avx512(int64_t n, float * s, const void * vx, const void * vy) {
    const float * x = (const float *) vx;
    const float * y = (const float *) vy;
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(y + i + 16), a1);
        a2 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 32), _mm512_loadu_ps(y + i + 32), a2);
        a3 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 48), _mm512_loadu_ps(y + i + 48), a3);
    }
    for (; i + 16 <= n; i += 16) a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i), a0);
    if (i < n) {
        const __mmask16 m = (__mmask16) ((1u << (n - i)) - 1);
        a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i), a1);
    }
    *s = hsum_f32x16(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

// 256-bit conversions on purpose: on Zen 4 a 512-bit vcvtph2ps costs more than two 256-bit ones
// (measured 0.145 vs 0.090 cycles per element), so AVX-512 only contributes the masked tail here.
// As ggml_vec_dot_f16 on AVX-512 (what llama.cpp's CPU backend runs for f16 weights): four 16-lane f32
// accumulators over 64-element steps, combined (a0 + a2) + (a1 + a3), reduced with _mm512_reduce_add_ps's
// tree into a double, the n % 64 tail added in double. Same expression, same bits — measured against
// llama.cpp's logits on the f16 fixtures (test/e2e/parity.test.ts).
TC_AVX512 void vec_dot_f16_avx512(int64_t n, float * s, const void * vx, const void * vy) {
    const f16_t * x = (const f16_t *) vx;
    const f16_t * y = (const f16_t *) vy;
    const int64_t np = n & ~(int64_t) 63;
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    for (int64_t i = 0; i < np; i += 64) {
        a0 = _mm512_fmadd_ps(load_f16x16(x + i), load_f16x16(y + i), a0);
        a1 = _mm512_fmadd_ps(load_f16x16(x + i + 16), load_f16x16(y + i + 16), a1);
        a2 = _mm512_fmadd_ps(load_f16x16(x + i + 32), load_f16x16(y + i + 32), a2);
        a3 = _mm512_fmadd_ps(load_f16x16(x + i + 48), load_f16x16(y + i + 48), a3);
    }
    double sum = hsum_f32x16(_mm512_add_ps(_mm512_add_ps(a0, a2), _mm512_add_ps(a1, a3)));
    for (int64_t i = np; i < n; i++) sum += (double) (f16_to_f32(x[i]) * f16_to_f32(y[i]));
    *s = (float) sum;
}

// f16 prefill (gemm_pack_kernel): the tokens' f16 rows converted to f32 once per matmul (exact), so a tile of R
// weight rows x T tokens converts only its weights, each once per T tokens, and the tokens' values are fma
// operands straight from memory. Per (row, token) the vec_dot expression above: four 16-lane accumulators over
// 64-element steps, (a0 + a2) + (a1 + a3), the same reduction into a double and the tail in double.
namespace {
inline size_t f16_packed_row_bytes(int64_t n) { return ((size_t) n * sizeof(float) + 63) / 64 * 64; }
size_t f16_packed_bytes(int64_t n) { return GEMM_NT * f16_packed_row_bytes(n); }

TC_AVX512 void f16_pack(int64_t n, const void * y, size_t y_stride, int nt, void * dst) {
    for (int t = 0; t < nt; t++) {
        const f16_t * src = (const f16_t *) ((const uint8_t *) y + t * y_stride);
        float * out = (float *) ((uint8_t *) dst + t * f16_packed_row_bytes(n));
        int64_t i = 0;
        for (; i + 16 <= n; i += 16) _mm512_store_ps(out + i, load_f16x16(src + i));
        for (; i < n; i++) out[i] = f16_to_f32(src[i]);
    }
}

template <int R, int T>
TC_AVX512 void f16_tile(int64_t n, const uint8_t * x, size_t x_stride, const float * y, size_t y_floats, float * s, size_t s_stride) {
    const int64_t np = n & ~(int64_t) 63;
    __m512 acc[R][T][4];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++)
            for (int k = 0; k < 4; k++) acc[r][t][k] = _mm512_setzero_ps();
    for (int64_t i = 0; i < np; i += 64)
        for (int k = 0; k < 4; k++) {
            __m512 w[R];
            for (int r = 0; r < R; r++) w[r] = load_f16x16((const f16_t *) (x + r * x_stride) + i + 16 * k);
            for (int t = 0; t < T; t++) {
                const __m512 v = _mm512_load_ps(y + t * y_floats + i + 16 * k);
                for (int r = 0; r < R; r++) acc[r][t][k] = _mm512_fmadd_ps(w[r], v, acc[r][t][k]);
            }
        }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) {
            double sum = hsum_f32x16(_mm512_add_ps(_mm512_add_ps(acc[r][t][0], acc[r][t][2]), _mm512_add_ps(acc[r][t][1], acc[r][t][3])));
            const f16_t * xr = (const f16_t *) (x + r * x_stride);
            for (int64_t i = np; i < n; i++) sum += (double) (f16_to_f32(xr[i]) * y[t * y_floats + i]);
            s[t * s_stride + r] = (float) sum;
        }
}

// tiles of 2 rows x 3 tokens (24 accumulators of the 32 registers)
TC_AVX512 void f16_gemm_packed(int64_t n, const void * x, size_t x_stride, int nr, const void * packed, int nt, float * s, size_t s_stride) {
    const size_t yf = f16_packed_row_bytes(n) / sizeof(float);
    for (int t0 = 0; t0 < nt; t0 += 3) {
        const int T = std::min(3, nt - t0);
        const float * y = (const float *) packed + t0 * yf;
        for (int r0 = 0; r0 < nr; r0 += 2) {
            const uint8_t * xr = (const uint8_t *) x + r0 * x_stride;
            float * o = s + t0 * s_stride + r0;
            const bool two = r0 + 1 < nr;
            switch (T) {
                case 1: two ? f16_tile<2, 1>(n, xr, x_stride, y, yf, o, s_stride) : f16_tile<1, 1>(n, xr, x_stride, y, yf, o, s_stride); break;
                case 2: two ? f16_tile<2, 2>(n, xr, x_stride, y, yf, o, s_stride) : f16_tile<1, 2>(n, xr, x_stride, y, yf, o, s_stride); break;
                default: two ? f16_tile<2, 3>(n, xr, x_stride, y, yf, o, s_stride) : f16_tile<1, 3>(n, xr, x_stride, y, yf, o, s_stride); break;
            }
        }
    }
}
} // namespace

extern const gemm_pack_kernel gemm_packed_f16_avx512 = {f16_packed_bytes, f16_pack, f16_gemm_packed};

// bf16 dots reproduce ggml_vec_dot_bf16 with AVX512_BF16 (what llama.cpp's CPU backend runs for bf16
// weights): two accumulators of 16 f32 lanes over 64-element steps (elements [0,32) into c1, [32,64)
// into c2), lane j adding x[2j+1]·y[2j+1] then x[2j]·y[2j] (vdpbf16ps order; each product is exact in
// f32, so a fused multiply-add rounds the same way), each reduced by _mm512_reduce_add_ps's tree and
// summed in double with the n % 64 tail. Every fast path computes this same expression.
TC_AVX512 inline __m512 dpbf16_emul(__m512 c, __m512i xv, __m512i yv) {
    c = _mm512_fmadd_ps(bf16_odd_f32x16(xv), bf16_odd_f32x16(yv), c);
    return _mm512_fmadd_ps(bf16_even_f32x16(xv), bf16_even_f32x16(yv), c);
}

TC_AVX512 void vec_dot_bf16_avx512(int64_t n, float * s, const void * vx, const void * vy) {
    const bf16_t * x = (const bf16_t *) vx;
    const bf16_t * y = (const bf16_t *) vy;
    __m512 c1 = _mm512_setzero_ps(), c2 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        c1 = dpbf16_emul(c1, _mm512_loadu_si512(x + i), _mm512_loadu_si512(y + i));
        c2 = dpbf16_emul(c2, _mm512_loadu_si512(x + i + 32), _mm512_loadu_si512(y + i + 32));
    }
    double sum = hsum_f32x16(c1);
    sum += hsum_f32x16(c2);
    for (; i < n; i++) sum += (double) (bf16_to_f32(x[i]) * bf16_to_f32(y[i]));
    *s = (float) sum;
}

TC_AVX512_BF16 void vec_dot_bf16_avx512bf16(int64_t n, float * s, const void * vx, const void * vy) {
    const bf16_t * x = (const bf16_t *) vx;
    const bf16_t * y = (const bf16_t *) vy;
    __m512 c1 = _mm512_setzero_ps(), c2 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        c1 = _mm512_dpbf16_ps(c1, load_bf16x32(x + i), load_bf16x32(y + i));
        c2 = _mm512_dpbf16_ps(c2, load_bf16x32(x + i + 32), load_bf16x32(y + i + 32));
    }
    double sum = hsum_f32x16(c1);
    sum += hsum_f32x16(c2);
    for (; i < n; i++) sum += (double) (bf16_to_f32(x[i]) * bf16_to_f32(y[i]));
    *s = (float) sum;
}

// bf16 prefill: R weight rows x T tokens per call (GEMM_MR x 3, 24 accumulators), each (row, token) the
// vdpbf16ps expression of vec_dot_bf16_avx512bf16 above, bit for bit; a weight vector is loaded once per T tokens.
template <int R, int T>
TC_AVX512_BF16 void bf16_tile(int64_t n, const uint8_t * x, size_t x_stride, const uint8_t * y, size_t y_stride, float * s, size_t s_stride) {
    __m512 acc[R][T][2];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) acc[r][t][0] = acc[r][t][1] = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 64 <= n; i += 64)
        for (int k = 0; k < 2; k++) {
            __m512bh w[R];
            for (int r = 0; r < R; r++) w[r] = load_bf16x32((const bf16_t *) (x + r * x_stride) + i + 32 * k);
            for (int t = 0; t < T; t++) {
                const __m512bh v = load_bf16x32((const bf16_t *) (y + t * y_stride) + i + 32 * k);
                for (int r = 0; r < R; r++) acc[r][t][k] = _mm512_dpbf16_ps(acc[r][t][k], w[r], v);
            }
        }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) {
            const bf16_t * xr = (const bf16_t *) (x + r * x_stride);
            const bf16_t * yt = (const bf16_t *) (y + t * y_stride);
            double sum = hsum_f32x16(acc[r][t][0]);
            sum += hsum_f32x16(acc[r][t][1]);
            for (int64_t j = i; j < n; j++) sum += (double) (bf16_to_f32(xr[j]) * bf16_to_f32(yt[j]));
            s[t * s_stride + r] = (float) sum;
        }
}

template <int T>
TC_AVX512_BF16 void bf16_rows(int64_t n, const uint8_t * x, size_t x_stride, int nr, const uint8_t * y, size_t y_stride, float * s, size_t s_stride) {
    switch (nr) {
        case 1: bf16_tile<1, T>(n, x, x_stride, y, y_stride, s, s_stride); break;
        case 2: bf16_tile<2, T>(n, x, x_stride, y, y_stride, s, s_stride); break;
        case 3: bf16_tile<3, T>(n, x, x_stride, y, y_stride, s, s_stride); break;
        default: bf16_tile<4, T>(n, x, x_stride, y, y_stride, s, s_stride); break;
    }
}

TC_AVX512_BF16 void gemm_bf16_avx512bf16(int64_t n, const void * x, size_t x_stride, int nr, const void * y, size_t y_stride, int nt, float * s,
                                         size_t s_stride) {
    for (int t0 = 0; t0 < nt; t0 += 3) {
        const uint8_t * yt = (const uint8_t *) y + t0 * y_stride;
        float * o = s + t0 * s_stride;
        switch (std::min(3, nt - t0)) {
            case 1: bf16_rows<1>(n, (const uint8_t *) x, x_stride, nr, yt, y_stride, o, s_stride); break;
            case 2: bf16_rows<2>(n, (const uint8_t *) x, x_stride, nr, yt, y_stride, o, s_stride); break;
            default: bf16_rows<3>(n, (const uint8_t *) x, x_stride, nr, yt, y_stride, o, s_stride); break;
        }
    }
}

TC_AVX512 void convert_row_f32_to_f16_avx512(const float * x, void * vy, int64_t n) {
    f16_t * y = (f16_t *) vy;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *) (y + i), _mm512_cvtps_ph(_mm512_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    if (i < n) {
        const __mmask16 m = (__mmask16) ((1u << (n - i)) - 1);
        _mm256_mask_storeu_epi16(y + i, m, _mm512_cvtps_ph(_mm512_maskz_loadu_ps(m, x + i), _MM_FROUND_TO_NEAREST_INT));
    }
}

TC_AVX512 void convert_row_f32_to_bf16_avx512(const float * x, void * vy, int64_t n) {
    bf16_t * y = (bf16_t *) vy;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *) (y + i), _mm512_cvtepi32_epi16(f32_bits_to_bf16x16(_mm512_castps_si512(_mm512_loadu_ps(x + i)))));
    if (i < n) {
        const __mmask16 m = (__mmask16) ((1u << (n - i)) - 1);
        _mm512_mask_cvtepi32_storeu_epi16(y + i, m, f32_bits_to_bf16x16(_mm512_castps_si512(_mm512_maskz_loadu_ps(m, x + i))));
    }
}

TC_AVX512 void quantize_row_q8_0_avx512(const float * x, void * vy, int64_t n) {
    block_q8_0 * y = (block_q8_0 *) vy;
    for (int64_t ib = 0; ib < n / QK8_0; ib++) {
        const __m512 v0 = _mm512_loadu_ps(x + ib * QK8_0);
        const __m512 v1 = _mm512_loadu_ps(x + ib * QK8_0 + 16);
        // as quantize_row_q8_0_act_ref (llama.cpp's runtime quantizer): id = 127/amax, round half to even
        const float amax = hmax_f32x16(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        const float d = amax / 127.0f;
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        y[ib].d = f32_to_f16(d);
        const __m512 vid = _mm512_set1_ps(id);
        const __m512i i0 = _mm512_cvt_roundps_epi32(_mm512_mul_ps(v0, vid), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        const __m512i i1 = _mm512_cvt_roundps_epi32(_mm512_mul_ps(v1, vid), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm_storeu_si128((__m128i *) y[ib].qs, _mm512_cvtepi32_epi8(i0));
        _mm_storeu_si128((__m128i *) (y[ib].qs + 16), _mm512_cvtepi32_epi8(i1));
    }
}

// block-format dots and micro-kernels (x86-quant-dots.inc), with vpdpbusd and 32 vector registers
#define TC_QD TC_AVX512_VNNI
#define QD_NAME(f) f##_avx512vnni
#define QD_VNNI 1
#include "x86-quant-dots.inc"

} // namespace core

#endif // __x86_64__
