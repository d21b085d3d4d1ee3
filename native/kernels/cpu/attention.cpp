// Attention over the per-head KV cache (see attention.h).
//
// Fast paths process the visible keys of a head in blocks of ATTN_BLOCK tokens with an online softmax
// (running max m, running sum l, unnormalized accumulator acc per query head), so a work unit can cover
// any key range; when there are fewer (token, KV head) items than threads (decode with few KV heads),
// the key range is split across threads and the partial (m, l, acc) merged afterwards.
// Keys come in tiles of KV_TILE tokens transposed ([d][KV_TILE]): one vector load gives KV_TILE keys'
// d-th component, so q·k needs no horizontal reduction; values are converted per block to f32 once and
// shared by the query heads of the group.
#include "attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "attention-codec.h"
#include "ops.h"
#include "quant-traits-cpu.h"
#if defined(__x86_64__)
#include <immintrin.h>
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12's AVX-512 headers raise false "may be used uninitialized" warnings (fixed in GCC 13)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#endif

namespace core {

namespace {

constexpr int ATTN_MAX_GROUP = 256;  // query heads per KV head (checked at model load)
constexpr int ATTN_BLOCK = 64;       // keys per online-softmax block (multiple of KV_TILE)
static_assert(ATTN_BLOCK % KV_TILE == 0, "block must hold whole key tiles");

int32_t visible_keys(const kv_segment & h, int32_t qpos) {
    // positions ascend: binary search for the first key after qpos
    return (int32_t) (std::upper_bound(h.pos, h.pos + h.n, qpos) - h.pos);
}

// ---- llama.cpp-faithful softmax·V accumulation -----------------------------------------------------
// llama.cpp's CPU flash attention (its default on CPU) walks the keys in order with an online softmax
// and accumulates V in an f16 vector, rounding after every key:
//   s > M:  M = s, ms = exp(M_old - M), acc = f16(acc * ms), vs = 1      else: vs = exp(s - M)
//   acc = f16(fma(v, vs, acc))      S = fma(S, ms, vs)      out = f32(acc) * (1 / S)
// (llama.cpp's build contracts the scalar tail `acc + v*vs` and `S*ms + vs` into FMAs, as any -mfma
// build does by default, so every step is fused.)
// We reproduce that rounding exactly (it decides near-tie greedy tokens); only the q·k dot may differ
// in the last bit (f32 FMA order), which the f16 accumulator absorbs.
struct f16_acc_state {
    float M;
    float S;
    f16_t * acc;  // [DV]
};

inline void acc_scale_f16(f16_t * acc, int DV, float ms) {
    for (int d = 0; d < DV; d++) acc[d] = f32_to_f16(f16_to_f32(acc[d]) * ms);
}

inline void acc_mad_f16_ref(f16_t * acc, const f16_t * v, int DV, float vs) {
    for (int d = 0; d < DV; d++) acc[d] = f32_to_f16(std::fma(f16_to_f32(v[d]), vs, f16_to_f32(acc[d])));
}

// One key: update (M, S, acc) with score s and value row v (scale: acc_scale_f16 or a SIMD twin of it).
template <class Mad, class Scale = void (*)(f16_t *, int, float)>
inline void softmax_step(f16_acc_state & st, float s, const f16_t * v, int DV, Mad mad, Scale scale = acc_scale_f16) {
    float ms = 1.0f, vs = 1.0f;
    if (s > st.M) {
        const float m_old = st.M;
        st.M = s;
        ms = std::exp(m_old - st.M);
        scale(st.acc, DV, ms);
    } else {
        vs = std::exp(s - st.M);
    }
    mad(st.acc, v, DV, vs);
    st.S = std::fma(st.S, ms, vs);
}

// The exps of a block for query heads st[0..gn) (scores s[g·ATTN_BLOCK + j], n keys): each head's running
// maximum is known before any exp is taken, so is each key's argument — M_old − s where s raises the maximum
// (up), s − M otherwise — and expf_libm takes them 16 at a time with libm's bits. Advances each head's M.
inline void softmax_block_exps(f16_acc_state * st, int gn, const float * s, int n, bool (*up)[ATTN_BLOCK], float (*e)[ATTN_BLOCK]) {
    float arg[ATTN_BLOCK];
    for (int g = 0; g < gn; g++) {
        const float * sg = s + (size_t) g * ATTN_BLOCK;
        float M = st[g].M;
        for (int j = 0; j < n; j++) {
            up[g][j] = sg[j] > M;
            arg[j] = up[g][j] ? M - sg[j] : sg[j] - M;
            if (up[g][j]) M = sg[j];
        }
        st[g].M = M;
        expf_libm(arg, e[g], n);
    }
}

// softmax_step over the keys of a block (n keys, values v[n][DV]) for query heads st[0..ng) with scores
// s[g·ATTN_BLOCK + j], giving softmax_step's bits. Two changes of order only: the exps of a block are taken
// together (softmax_block_exps), and the key loop is outside the head loop, so up to 8 heads' accumulator chains
// (each key's f16 rounding depends on the previous key's) are in flight together instead of one.
template <class Mad, class Scale>
__attribute__((always_inline)) inline void softmax_block(f16_acc_state * st, int ng, const float * s, int n, const f16_t * v, int DV, Mad mad, Scale scale) {
    constexpr int GB = 8;
    float e[GB][ATTN_BLOCK];
    bool up[GB][ATTN_BLOCK];
    for (int g0 = 0; g0 < ng; g0 += GB) {
        const int gn = std::min(GB, ng - g0);
        softmax_block_exps(st + g0, gn, s + (size_t) g0 * ATTN_BLOCK, n, up, e);
        for (int j = 0; j < n; j++) {
            const f16_t * vr = v + (size_t) j * DV;
            for (int g = 0; g < gn; g++) {
                f16_acc_state & a = st[g0 + g];
                const float x = e[g][j];
                if (up[g][j]) {
                    scale(a.acc, DV, x);
                    mad(a.acc, vr, DV, 1.0f);
                    a.S = std::fma(a.S, x, 1.0f);
                } else {
                    mad(a.acc, vr, DV, x);
                    a.S = std::fma(a.S, 1.0f, x);
                }
            }
        }
    }
}

inline void finish_f16(const f16_acc_state & st, int DV, float * out) {
    const float inv = st.S == 0.0f ? 0.0f : 1.0f / st.S;
    for (int d = 0; d < DV; d++) out[d] = f16_to_f32(st.acc[d]) * inv;
}

// q·k exactly as ggml_vec_dot_f16 computes it on AVX-512 (the kq dot of llama.cpp's flash attention):
// the first np = D & ~63 dims in four 16-lane f32 accumulators (FMA over 64-wide chunks), combined as
// (a0 + a2) + (a1 + a3) and reduced by _mm512_reduce_add_ps's tree; the remaining dims added in double.
// Products of two f16 values are exact in f32, so this is a fixed expression: the SIMD versions below
// reproduce it bit for bit with keys in lanes instead of dims.
float kq_dot_ref(const float * q16, const kv_segment & h, int32_t j, int D) {
    const int np = D & ~63;
    float r = 0.0f;
    if (np) {
        float t[16];
        for (int L = 0; L < 16; L++) {
            float a[4];
            for (int c = 0; c < np / 64; c++) {
                for (int jj = 0; jj < 4; jj++) {
                    const int d = 64 * c + 16 * jj + L;
                    const float prod_q = q16[d], prod_k = f16_to_f32(h.key(j, d, D));
                    a[jj] = c == 0 ? prod_q * prod_k : std::fma(prod_k, prod_q, a[jj]);
                }
            }
            t[L] = (a[0] + a[2]) + (a[1] + a[3]);
        }
        float u[8], v[4];
        for (int L = 0; L < 8; L++) u[L] = t[L] + t[L + 8];
        for (int L = 0; L < 4; L++) v[L] = u[L] + u[L + 4];
        r = (v[0] + v[2]) + (v[1] + v[3]);
    }
    double sum = r;
    for (int d = np; d < D; d++) sum += (double) (q16[d] * f16_to_f32(h.key(j, d, D)));
    return (float) sum;
}

// ---- scalar reference for one (token, KV head): the oracle of the fast paths ----------------------
void attend_group_ref(const attn_params & p, const float * q_rows /*[G][D]*/, int G, int32_t qpos, const kv_head_view & hv,
                      float * out_rows /*[G][DV]*/, std::vector<f16_t> & acc) {
    const int D = p.head_dim, DV = p.head_dim_v;
    acc.resize((size_t) DV);
    std::vector<float> q16((size_t) G * D);
    for (size_t i = 0; i < q16.size(); i++) q16[i] = f16_to_f32(f32_to_f16(q_rows[i]));
    for (int g = 0; g < G; g++) {
        f16_acc_state st{-INFINITY, 0.0f, acc.data()};
        std::fill(acc.begin(), acc.end(), (f16_t) 0);
        for (int32_t sg = 0; sg < hv.n_seg; sg++) {
            const kv_segment & h = hv.seg[sg];
            const int32_t n = visible_keys(h, qpos);
            for (int32_t j = 0; j < n; j++) {
                const float s = kq_dot_ref(q16.data() + (size_t) g * D, h, j, D) * p.scale;
                softmax_step(st, s, h.v + (size_t) j * DV, DV, acc_mad_f16_ref);
            }
            if (n < h.n) break;  // positions ascend: nothing later is visible
        }
        finish_f16(st, DV, out_rows + (size_t) g * DV);
    }
}

// ---- q·k scores of a block of keys (tiles), portable -------------------------------------------------
void score_block_generic(const attn_params & p, const float * q16, int G, const kv_segment & h, int32_t j0, int32_t j1, float * s) {
    const int D = p.head_dim;
    for (int g = 0; g < G; g++) {
        for (int32_t j = j0; j < j1; j++) s[(size_t) g * ATTN_BLOCK + (j - j0)] = kq_dot_ref(q16 + (size_t) g * D, h, j, D) * p.scale;
    }
}

#if defined(__x86_64__)
// kq_dot_ref for the 16 keys of a tile at once (keys in lanes). kf: the tile as f32 [D][16].
__attribute__((target("avx512f,fma"))) inline __m512 kq_dot_tile_avx512(const float * q, const float * kf, int D) {
    const int np = D & ~63;
    __m512 r = _mm512_setzero_ps();
    if (np) {
        __m512 t[16];
        for (int L = 0; L < 16; L++) {
            __m512 a[4];
            for (int jj = 0; jj < 4; jj++) a[jj] = _mm512_mul_ps(_mm512_set1_ps(q[16 * jj + L]), _mm512_loadu_ps(kf + (size_t) (16 * jj + L) * 16));
            for (int c = 1; c < np / 64; c++) {
                for (int jj = 0; jj < 4; jj++) {
                    const int d = 64 * c + 16 * jj + L;
                    a[jj] = _mm512_fmadd_ps(_mm512_loadu_ps(kf + (size_t) d * 16), _mm512_set1_ps(q[d]), a[jj]);
                }
            }
            t[L] = _mm512_add_ps(_mm512_add_ps(a[0], a[2]), _mm512_add_ps(a[1], a[3]));
        }
        for (int L = 0; L < 8; L++) t[L] = _mm512_add_ps(t[L], t[L + 8]);
        for (int L = 0; L < 4; L++) t[L] = _mm512_add_ps(t[L], t[L + 4]);
        r = _mm512_add_ps(_mm512_add_ps(t[0], t[2]), _mm512_add_ps(t[1], t[3]));
    }
    if (np == D) return r;
    __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(r));
    __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(r), 1)));
    for (int d = np; d < D; d++) {
        const __m512 prod = _mm512_mul_ps(_mm512_set1_ps(q[d]), _mm512_loadu_ps(kf + (size_t) d * 16));
        lo = _mm512_add_pd(lo, _mm512_cvtps_pd(_mm512_castps512_ps256(prod)));
        hi = _mm512_add_pd(hi, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(prod), 1))));
    }
    return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castps_pd(_mm512_castps256_ps512(_mm512_cvtpd_ps(lo))), _mm256_castps_pd(_mm512_cvtpd_ps(hi)), 1));
}

__attribute__((target("avx512f,f16c,fma"))) void score_block_avx512(const attn_params & p, const float * q16, int G, const kv_segment & h,
                                                                                int32_t j0, int32_t j1, float * s, float * kf) {
    const int D = p.head_dim;
    const __m512 sc = _mm512_set1_ps(p.scale);
    for (int32_t t = j0; t < j1; t += KV_TILE) {
        const f16_t * tile = h.k + (size_t) (t / KV_TILE) * D * KV_TILE;
        for (int d = 0; d < D; d++) _mm512_storeu_ps(kf + (size_t) d * 16, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *) (tile + (size_t) d * KV_TILE))));
        for (int g = 0; g < G; g++) _mm512_storeu_ps(s + (size_t) g * ATTN_BLOCK + (t - j0), _mm512_mul_ps(kq_dot_tile_avx512(q16 + (size_t) g * D, kf, D), sc));
    }
}

__attribute__((target("avx512f,f16c,fma"))) void acc_mad_f16_avx512(f16_t * acc, const f16_t * v, int DV, float vs) {
    const __m512 w = _mm512_set1_ps(vs);
    int d = 0;
    for (; d + 16 <= DV; d += 16) {
        const __m512 a = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *) (acc + d)));
        const __m512 x = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *) (v + d)));
        _mm256_storeu_si256((__m256i *) (acc + d), _mm512_cvtps_ph(_mm512_fmadd_ps(x, w, a), _MM_FROUND_TO_NEAREST_INT));
    }
    for (; d < DV; d++) acc[d] = f32_to_f16(std::fma(f16_to_f32(v[d]), vs, f16_to_f32(acc[d])));
}

// acc_scale_f16 with F16C conversions (the same roundings: f16 → f32 exact, one f32 product, RNE back to f16).
// It runs whenever a key raises the running maximum, which in prefill is often: scalar, it was ~4 % of a 0.5B
// prefill.
__attribute__((target("avx512f,f16c,fma"))) void acc_scale_f16_avx512(f16_t * acc, int DV, float ms) {
    const __m512 w = _mm512_set1_ps(ms);
    int d = 0;
    for (; d + 16 <= DV; d += 16) {
        const __m512 a = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *) (acc + d)));
        _mm256_storeu_si256((__m256i *) (acc + d), _mm512_cvtps_ph(_mm512_mul_ps(a, w), _MM_FROUND_TO_NEAREST_INT));
    }
    acc_scale_f16(acc + d, DV - d, ms);
}

// kq_dot_ref for 8 keys (one half of a tile). kf: the half tile as f32 [D][8].
__attribute__((target("avx2,fma"))) inline __m256 kq_dot_half_avx2(const float * q, const float * kf, int D) {
    const int np = D & ~63;
    __m256 r = _mm256_setzero_ps();
    if (np) {
        __m256 t[16];
        for (int L = 0; L < 16; L++) {
            __m256 a[4];
            for (int jj = 0; jj < 4; jj++) a[jj] = _mm256_mul_ps(_mm256_set1_ps(q[16 * jj + L]), _mm256_loadu_ps(kf + (size_t) (16 * jj + L) * 8));
            for (int c = 1; c < np / 64; c++) {
                for (int jj = 0; jj < 4; jj++) {
                    const int d = 64 * c + 16 * jj + L;
                    a[jj] = _mm256_fmadd_ps(_mm256_loadu_ps(kf + (size_t) d * 8), _mm256_set1_ps(q[d]), a[jj]);
                }
            }
            t[L] = _mm256_add_ps(_mm256_add_ps(a[0], a[2]), _mm256_add_ps(a[1], a[3]));
        }
        for (int L = 0; L < 8; L++) t[L] = _mm256_add_ps(t[L], t[L + 8]);
        for (int L = 0; L < 4; L++) t[L] = _mm256_add_ps(t[L], t[L + 4]);
        r = _mm256_add_ps(_mm256_add_ps(t[0], t[2]), _mm256_add_ps(t[1], t[3]));
    }
    if (np == D) return r;
    __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(r)), hi = _mm256_cvtps_pd(_mm256_extractf128_ps(r, 1));
    for (int d = np; d < D; d++) {
        const __m256 prod = _mm256_mul_ps(_mm256_set1_ps(q[d]), _mm256_loadu_ps(kf + (size_t) d * 8));
        lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(prod)));
        hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps(prod, 1)));
    }
    return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm256_cvtpd_ps(lo)), _mm256_cvtpd_ps(hi), 1);
}

__attribute__((target("avx2,f16c,fma"))) void score_block_avx2(const attn_params & p, const float * q16, int G, const kv_segment & h,
                                                                 int32_t j0, int32_t j1, float * s, float * kf) {
    const int D = p.head_dim;
    const __m256 sc = _mm256_set1_ps(p.scale);
    for (int32_t t = j0; t < j1; t += KV_TILE) {
        const f16_t * tile = h.k + (size_t) (t / KV_TILE) * D * KV_TILE;
        for (int half = 0; half < 2; half++) {
            for (int d = 0; d < D; d++) {
                _mm256_storeu_ps(kf + (size_t) d * 8, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (tile + (size_t) d * KV_TILE + 8 * half))));
            }
            for (int g = 0; g < G; g++) {
                _mm256_storeu_ps(s + (size_t) g * ATTN_BLOCK + (t - j0) + 8 * half, _mm256_mul_ps(kq_dot_half_avx2(q16 + (size_t) g * D, kf, D), sc));
            }
        }
    }
}

__attribute__((target("avx2,f16c,fma"))) void acc_mad_f16_avx2(f16_t * acc, const f16_t * v, int DV, float vs) {
    const __m256 w = _mm256_set1_ps(vs);
    int d = 0;
    for (; d + 8 <= DV; d += 8) {
        const __m256 a = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (acc + d)));
        const __m256 x = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (v + d)));
        _mm_storeu_si128((__m128i *) (acc + d), _mm256_cvtps_ph(_mm256_fmadd_ps(x, w, a), _MM_FROUND_TO_NEAREST_INT));
    }
    for (; d < DV; d++) acc[d] = f32_to_f16(std::fma(f16_to_f32(v[d]), vs, f16_to_f32(acc[d])));
}
__attribute__((target("avx2,f16c,fma"))) void acc_scale_f16_avx2(f16_t * acc, int DV, float ms) {
    const __m256 w = _mm256_set1_ps(ms);
    int d = 0;
    for (; d + 8 <= DV; d += 8) {
        const __m256 a = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (acc + d)));
        _mm_storeu_si128((__m128i *) (acc + d), _mm256_cvtps_ph(_mm256_mul_ps(a, w), _MM_FROUND_TO_NEAREST_INT));
    }
    acc_scale_f16(acc + d, DV - d, ms);
}
#endif

#if defined(__x86_64__)
__attribute__((target("avx512f,f16c"))) void round_f16_avx512(const float * x, float * y, int n) {
    int i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, _mm512_cvtph_ps(_mm512_cvtps_ph(_mm512_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT)));
    for (; i < n; i++) y[i] = f16_to_f32(f32_to_f16(x[i]));
}
__attribute__((target("avx2,f16c"))) void round_f16_avx2(const float * x, float * y, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT)));
    for (; i < n; i++) y[i] = f16_to_f32(f32_to_f16(x[i]));
}
#endif

// y = f16(x) as f32 (round to nearest even), with F16C where the level has it: the same bits as the scalar path.
void round_f16(int level, const float * x, float * y, int n) {
#if defined(__x86_64__)
    if (level == 2) { round_f16_avx512(x, y, n); return; }
    if (level == 1) { round_f16_avx2(x, y, n); return; }
#endif
    for (int i = 0; i < n; i++) y[i] = f16_to_f32(f32_to_f16(x[i]));
}

// q·k scores of keys [j0, j1) of a segment for the level's kernel (all give the same bits).
void score_block(int level, const attn_params & p, const float * q16, int G, const kv_segment & h, int32_t j0, int32_t j1, float * s, float * kf) {
#if defined(__x86_64__)
    if (level == 2) return score_block_avx512(p, q16, G, h, j0, j1, s, kf);
    if (level == 1) return score_block_avx2(p, q16, G, h, j0, j1, s, kf);
#endif
    score_block_generic(p, q16, G, h, j0, j1, s);
}

int dispatch_level() {
    static const int level = [] {
        const char * l = cpu_dispatch_level();
        if (!std::strcmp(l, "avx512")) return 2;
        if (!std::strcmp(l, "avx2")) return 1;
        return 0;
    }();
    return level;
}

} // namespace

void attention_ref(const attn_params & p, const float * q, const int32_t * q_pos, const kv_cache & kv, int il, float * out) {
    const int G = p.n_head / p.n_head_kv;
    std::vector<f16_t> acc;
    for (int t = 0; t < p.n_tokens; t++) {
        for (int ih = 0; ih < p.n_head_kv; ih++) {
            const kv_head_view hv = kv.head(il, ih);
            if (hv.coded) {  // storage codecs: their own path (attention-codec.h)
                attend_group_coded_ref(p.head_dim, p.head_dim_v, p.scale, q + ((size_t) t * p.n_head + (size_t) ih * G) * p.head_dim, G, q_pos[t], hv,
                                       out + ((size_t) t * p.n_head + (size_t) ih * G) * p.head_dim_v);
                continue;
            }
            attend_group_ref(p, q + ((size_t) t * p.n_head + (size_t) ih * G) * p.head_dim, G, q_pos[t], kv.head(il, ih),
                             out + ((size_t) t * p.n_head + (size_t) ih * G) * p.head_dim_v, acc);
        }
    }
}

// softmax_block for AVX-512 with the accumulators in registers: NV = DV/16 vectors per head, HB heads at a time
// (HB·NV ≤ 16 registers), each key's value row converted once for the HB heads. Every step rounds to f16 as
// acc_mad_f16_avx512 / acc_scale_f16_avx512 do (cvtps_ph then cvtph_ps in registers: the same bits, no trip
// through memory), so the result equals softmax_step's.
__attribute__((target("avx512f,f16c"))) inline __m512 round_f16_avx512(__m512 x) { return _mm512_cvtph_ps(_mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT)); }

template <int NV>
__attribute__((target("avx512f,f16c,fma"))) void softmax_block_regs_avx512(f16_acc_state * st, int ng, const float * s, int n, const f16_t * v, int DV) {
    constexpr int HB = NV >= 16 ? 1 : 16 / NV > 4 ? 4 : 16 / NV;
    float e[HB][ATTN_BLOCK];
    bool up[HB][ATTN_BLOCK];
    for (int g0 = 0; g0 < ng; g0 += HB) {
        const int gn = std::min(HB, ng - g0);
        softmax_block_exps(st + g0, gn, s + (size_t) g0 * ATTN_BLOCK, n, up, e);
        __m512 acc[HB][NV];
        float S[HB];
        for (int g = 0; g < HB; g++) {
            S[g] = g < gn ? st[g0 + g].S : 0.0f;
            for (int k = 0; k < NV; k++) acc[g][k] = g < gn ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *) (st[g0 + g].acc + 16 * k))) : _mm512_setzero_ps();
        }
        for (int j = 0; j < n; j++) {
            __m512 vr[NV];
            for (int k = 0; k < NV; k++) vr[k] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *) (v + (size_t) j * DV + 16 * k)));
            for (int g = 0; g < HB; g++) {
                if (g >= gn) break;
                const float x = e[g][j];
                if (up[g][j]) {
                    const __m512 ms = _mm512_set1_ps(x);
                    for (int k = 0; k < NV; k++) acc[g][k] = round_f16_avx512(_mm512_add_ps(vr[k], round_f16_avx512(_mm512_mul_ps(acc[g][k], ms))));  // (fma(v, 1, a) = v + a)
                    S[g] = std::fma(S[g], x, 1.0f);
                } else {
                    const __m512 w = _mm512_set1_ps(x);
                    for (int k = 0; k < NV; k++) acc[g][k] = round_f16_avx512(_mm512_fmadd_ps(vr[k], w, acc[g][k]));
                    S[g] = std::fma(S[g], 1.0f, x);
                }
            }
        }
        for (int g = 0; g < gn; g++) {
            st[g0 + g].S = S[g];
            for (int k = 0; k < NV; k++) _mm256_storeu_si256((__m256i *) (st[g0 + g].acc + 16 * k), _mm512_cvtps_ph(acc[g][k], _MM_FROUND_TO_NEAREST_INT));
        }
    }
}

// softmax_block for AVX2: the accumulators stay in memory (16 ymm registers hold too few); instantiated inside an
// AVX2 function, so the f16 steps inline and 8 query heads' chains run interleaved. The same bits.
__attribute__((target("avx2,f16c,fma"))) void softmax_block_avx2(f16_acc_state * st, int ng, const float * s, int n, const f16_t * v, int DV) {
    softmax_block(st, ng, s, n, v, DV, acc_mad_f16_avx2, acc_scale_f16_avx2);
}

// The register kernel for DV = 16·NV up to 256, else softmax_block with the memory accumulators.
__attribute__((target("avx512f,f16c,fma"))) void softmax_block_avx512(f16_acc_state * st, int ng, const float * s, int n, const f16_t * v, int DV) {
    switch (DV) {
        case 64: return softmax_block_regs_avx512<4>(st, ng, s, n, v, DV);
        case 128: return softmax_block_regs_avx512<8>(st, ng, s, n, v, DV);
        case 32: return softmax_block_regs_avx512<2>(st, ng, s, n, v, DV);
        case 80: return softmax_block_regs_avx512<5>(st, ng, s, n, v, DV);
        case 96: return softmax_block_regs_avx512<6>(st, ng, s, n, v, DV);
        case 256: return softmax_block_regs_avx512<16>(st, ng, s, n, v, DV);
        default: return softmax_block(st, ng, s, n, v, DV, acc_mad_f16_avx512, acc_scale_f16_avx512);
    }
}

void attention(thread_pool & pool, const attn_params & p, const float * q, const int32_t * q_pos, kv_cache & kv, int il,
               float * out, attn_scratch & scratch) {
    const int G = p.n_head / p.n_head_kv;
    const int D = p.head_dim, DV = p.head_dim_v;
    const int nth = pool.size();
    const int64_t n_items = (int64_t) p.n_tokens * p.n_head_kv;
    // When there are fewer (token, KV head) items than threads (decode with few KV heads), split the
    // query heads of each group across threads; each unit still reads its keys and values once.
    const bool want_probs = kv.wants_probs(il);
    // (probabilities are aggregated over the whole group, so a unit then covers the group)
    const int g_split = want_probs ? 1 : (int) std::min<int64_t>(G, std::max<int64_t>(1, (nth + n_items - 1) / n_items));
    const int64_t n_units = n_items * g_split;

    int level = dispatch_level();
    const size_t per_thread_f32 = (size_t) G * ATTN_BLOCK + (size_t) G * D + (size_t) D * KV_TILE;
    if ((int) scratch.per_thread.size() < nth) scratch.per_thread.resize(nth);
    for (auto & s : scratch.per_thread) if (s.size() < per_thread_f32 + (size_t) G * DV / 2 + 1) s.resize(per_thread_f32 + (size_t) G * DV / 2 + 1);

    pool.run([&](int ith, int nth_) {
        float * s = scratch.per_thread[ith].data();
        float * q16 = s + (size_t) G * ATTN_BLOCK;
        float * kf = q16 + (size_t) G * D;                 // [D][KV_TILE] key tile as f32
        f16_t * acc = (f16_t *) (kf + (size_t) D * KV_TILE);  // [G][DV] f16 accumulators
        for (int64_t u = ith; u < n_units; u += nth_) {
            const int64_t it = u / g_split;
            const int part = (int) (u % g_split);
            const int ga = G * part / g_split, gb = G * (part + 1) / g_split, ng = gb - ga;
            if (ng == 0) continue;
            const int t = (int) (it / p.n_head_kv), ih = (int) (it % p.n_head_kv);
            const kv_head_view hv = kv.head(il, ih);
            const float * qr = q + ((size_t) t * p.n_head + (size_t) ih * G + ga) * D;
            if (hv.coded) {  // storage codecs: their own path (attention-codec.h)
                kv_group_probs pr;
                const bool probs = want_probs && t == p.n_tokens - 1 && kv.retention(il, ih) == KV_RETAIN_EVICT;
                if (probs) pr = {kv.probs_max(il, ih), kv.probs_sum(il, ih)};
                attend_group_coded(D, DV, p.scale, qr, ng, q_pos[t], hv, out + ((size_t) t * p.n_head + (size_t) ih * G + ga) * DV, probs ? &pr : nullptr);
                continue;
            }
            round_f16(level, qr, q16, ng * D);  // q·k on f16 inputs, as llama.cpp
            f16_acc_state st[ATTN_MAX_GROUP];
            for (int g = 0; g < ng; g++) {
                st[g] = {-INFINITY, 0.0f, acc + (size_t) g * DV};
                std::memset(st[g].acc, 0, sizeof(f16_t) * DV);
            }
            for (int32_t sgi = 0; sgi < hv.n_seg; sgi++) {
                const kv_segment & h = hv.seg[sgi];
                const int32_t n = visible_keys(h, q_pos[t]);
                for (int32_t j0 = 0; j0 < n; j0 += ATTN_BLOCK) {
                    const int32_t j1 = std::min(n, j0 + ATTN_BLOCK);
                    score_block(level, p, q16, ng, h, j0, j1, s, kf);
#if defined(__x86_64__)
                    if (level == 2) {
                        softmax_block_avx512(st, ng, s, j1 - j0, h.v + (size_t) j0 * DV, DV);
                        continue;
                    }
                    if (level == 1) {
                        softmax_block_avx2(st, ng, s, j1 - j0, h.v + (size_t) j0 * DV, DV);
                        continue;
                    }
#endif
                    for (int g = 0; g < ng; g++) {
                        const float * sg = s + (size_t) g * ATTN_BLOCK;
                        for (int32_t j = j0; j < j1; j++) {
                            const f16_t * vr = h.v + (size_t) j * DV;
#if defined(__x86_64__)
#endif
                            softmax_step(st[g], sg[j - j0], vr, DV, acc_mad_f16_ref);
                        }
                    }
                }
                if (n < h.n) break;  // positions ascend: nothing later is visible
            }
            float * orow = out + ((size_t) t * p.n_head + (size_t) ih * G + ga) * DV;
            for (int g = 0; g < ng; g++) finish_f16(st[g], DV, orow + (size_t) g * DV);
            if (want_probs && t == p.n_tokens - 1 && kv.retention(il, ih) == KV_RETAIN_EVICT) {
                // second pass: p_j = exp(s_j − M) / S with the final M and S of each query head
                float * pmax = kv.probs_max(il, ih);
                float * psum = kv.probs_sum(il, ih);
                int32_t base = 0;
                for (int32_t sgi = 0; sgi < hv.n_seg; sgi++) {
                    const kv_segment & h = hv.seg[sgi];
                    const int32_t n = visible_keys(h, q_pos[t]);
                    for (int32_t j0 = 0; j0 < n; j0 += ATTN_BLOCK) {
                        const int32_t j1 = std::min(n, j0 + ATTN_BLOCK);
                        score_block(level, p, q16, ng, h, j0, j1, s, kf);
                        for (int32_t j = j0; j < j1; j++) {
                            float mx = 0, sum = 0;
                            for (int g = 0; g < ng; g++) {
                                const float pj = st[g].S > 0 ? std::exp(s[(size_t) g * ATTN_BLOCK + (j - j0)] - st[g].M) / st[g].S : 0.0f;
                                mx = std::max(mx, pj);
                                sum += pj;
                            }
                            pmax[base + j] = mx;
                            psum[base + j] = sum;
                        }
                    }
                    for (int32_t j = n; j < h.n; j++) pmax[base + j] = psum[base + j] = 0.0f;
                    base += h.n;
                }
            }
        }
    });
}

} // namespace core
