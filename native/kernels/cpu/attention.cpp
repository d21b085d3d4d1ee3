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

#include "quant-traits-cpu.h"
#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace core {

namespace {

constexpr int ATTN_MAX_GROUP = 256;  // query heads per KV head (checked at model load)
constexpr int ATTN_BLOCK = 64;       // keys per online-softmax block (multiple of KV_TILE)
static_assert(ATTN_BLOCK % KV_TILE == 0, "block must hold whole key tiles");

int32_t visible_keys(const kv_head_view & h, int32_t qpos) {
    // positions ascend: binary search for the first key after qpos
    return (int32_t) (std::upper_bound(h.pos, h.pos + h.n, qpos) - h.pos);
}

// ---- scalar reference: exact two-pass softmax for one (token, KV head) -----------------------------
void attend_group_ref(const attn_params & p, const float * q_rows /*[G][D]*/, int G, int32_t qpos, const kv_head_view & h,
                      float * out_rows /*[G][DV]*/, std::vector<float> & scores) {
    const int D = p.head_dim, DV = p.head_dim_v;
    const int32_t n = visible_keys(h, qpos);
    scores.resize((size_t) std::max(n, 1));
    for (int g = 0; g < G; g++) {
        float mx = -INFINITY;
        for (int32_t j = 0; j < n; j++) {
            float acc = 0;
            for (int d = 0; d < D; d++) acc += f16_to_f32(f32_to_f16(q_rows[(size_t) g * D + d])) * f16_to_f32(h.key(j, d, D));
            scores[j] = acc * p.scale;
            mx = std::max(mx, scores[j]);
        }
        double sum = 0;
        for (int32_t j = 0; j < n; j++) { scores[j] = std::exp(scores[j] - mx); sum += scores[j]; }
        const float inv = n ? (float) (1.0 / sum) : 0.0f;
        float * o = out_rows + (size_t) g * DV;
        for (int d = 0; d < DV; d++) o[d] = 0;
        for (int32_t j = 0; j < n; j++) {
            const f16_t * vr = h.v + (size_t) j * DV;
            const float w = scores[j] * inv;
            for (int d = 0; d < DV; d++) o[d] += w * f16_to_f32(vr[d]);
        }
    }
}

// ---- online-softmax state of one work unit ------------------------------------------------------------
struct unit_state {
    float * m;    // [G] running max
    float * l;    // [G] running sum of exp
    float * acc;  // [G][DV] unnormalized output
};

// Generic (portable) block kernel, also used for head sizes the SIMD paths do not cover.
void attend_block_generic(const attn_params & p, const float * q16, int G, const kv_head_view & h, int32_t j0, int32_t j1, unit_state st,
                          float * s /*[G][ATTN_BLOCK]*/) {
    const int D = p.head_dim, DV = p.head_dim_v;
    const int nb = j1 - j0;
    for (int g = 0; g < G; g++) {
        float bmax = -INFINITY;
        for (int j = 0; j < nb; j++) {
            float a = 0;
            for (int d = 0; d < D; d++) a += q16[(size_t) g * D + d] * f16_to_f32(h.key(j0 + j, d, D));
            s[(size_t) g * ATTN_BLOCK + j] = a * p.scale;
            bmax = std::max(bmax, s[(size_t) g * ATTN_BLOCK + j]);
        }
        const float m_new = std::max(st.m[g], bmax);
        const float corr = std::exp(st.m[g] - m_new);
        float * acc = st.acc + (size_t) g * DV;
        for (int d = 0; d < DV; d++) acc[d] *= corr;
        float lsum = 0;
        for (int j = 0; j < nb; j++) {
            const float e = std::exp(s[(size_t) g * ATTN_BLOCK + j] - m_new);
            lsum += e;
            const f16_t * vr = h.v + (size_t) (j0 + j) * DV;
            for (int d = 0; d < DV; d++) acc[d] += e * f16_to_f32(vr[d]);
        }
        st.l[g] = st.l[g] * corr + lsum;
        st.m[g] = m_new;
    }
}

#if defined(__x86_64__)
// exp(x) for float32 lanes: range reduction x = n ln2 + r, |r| <= ln2/2, degree-6 polynomial, scale 2^n.
// Max relative error about 2e-7 (within 2 ulp of expf).
__attribute__((target("avx512f"))) inline __m512 exp_avx512(__m512 x) {
    x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.37f)), _mm512_set1_ps(-103.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 y = _mm512_set1_ps(1.0f / 720);
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.0f / 120));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.0f / 24));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.0f / 6));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(0.5f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.0f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(y, n);
}

// scores of NG query heads against one key tile (KV_TILE = 16 keys = one zmm)
template <int NG>
__attribute__((target("avx512f,f16c,fma"))) inline void score_tile_avx512(const float * q16, int D, const f16_t * tile, float scale, float * s,
                                                                           size_t s_stride) {
    __m512 a[NG];
    for (int g = 0; g < NG; g++) a[g] = _mm512_setzero_ps();
    for (int d = 0; d < D; d++) {
        const __m512 k = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *) (tile + (size_t) d * KV_TILE)));
        for (int g = 0; g < NG; g++) a[g] = _mm512_fmadd_ps(_mm512_set1_ps(q16[(size_t) g * D + d]), k, a[g]);
    }
    const __m512 sc = _mm512_set1_ps(scale);
    for (int g = 0; g < NG; g++) _mm512_storeu_ps(s + g * s_stride, _mm512_mul_ps(a[g], sc));
}

__attribute__((target("avx512f,f16c,fma"))) void score_tile_group_avx512(const float * q16, int G, int D, const f16_t * tile, float scale,
                                                                          float * s) {
    for (int g0 = 0; g0 < G; g0 += 8) {
        const float * q = q16 + (size_t) g0 * D;
        float * so = s + (size_t) g0 * ATTN_BLOCK;
        switch (std::min(8, G - g0)) {
            case 1: score_tile_avx512<1>(q, D, tile, scale, so, ATTN_BLOCK); break;
            case 2: score_tile_avx512<2>(q, D, tile, scale, so, ATTN_BLOCK); break;
            case 3: score_tile_avx512<3>(q, D, tile, scale, so, ATTN_BLOCK); break;
            case 4: score_tile_avx512<4>(q, D, tile, scale, so, ATTN_BLOCK); break;
            case 5: score_tile_avx512<5>(q, D, tile, scale, so, ATTN_BLOCK); break;
            case 6: score_tile_avx512<6>(q, D, tile, scale, so, ATTN_BLOCK); break;
            case 7: score_tile_avx512<7>(q, D, tile, scale, so, ATTN_BLOCK); break;
            default: score_tile_avx512<8>(q, D, tile, scale, so, ATTN_BLOCK); break;
        }
    }
}

// One block [j0, j1) (j0 a multiple of KV_TILE). vbuf: [ATTN_BLOCK][DV] f32 scratch.
__attribute__((target("avx512f,f16c,fma"))) void attend_block_avx512(const attn_params & p, const float * q16, int G, const kv_head_view & h,
                                                                       int32_t j0, int32_t j1, unit_state st, float * s, float * vbuf) {
    const int D = p.head_dim, DV = p.head_dim_v;
    const int nb = j1 - j0;
    for (int t = 0; t < nb; t += KV_TILE) {
        const f16_t * tile = h.k + (size_t) ((j0 + t) / KV_TILE) * D * KV_TILE;
        score_tile_group_avx512(q16, G, D, tile, p.scale, s + t);
    }
    // V rows of the block to f32 once, shared by the G query heads
    for (int j = 0; j < nb; j++) {
        const f16_t * vr = h.v + (size_t) (j0 + j) * DV;
        float * vb = vbuf + (size_t) j * DV;
        for (int d = 0; d < DV; d += 16) _mm512_storeu_ps(vb + d, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *) (vr + d))));
    }
    const __mmask16 tail = (__mmask16) ((nb % 16) ? ((1u << (nb % 16)) - 1) : 0xffff);
    for (int g = 0; g < G; g++) {
        float * sg = s + (size_t) g * ATTN_BLOCK;
        __m512 vmax = _mm512_set1_ps(-INFINITY);
        for (int j = 0; j < nb; j += 16) {
            const __mmask16 mk = (j + 16 <= nb) ? (__mmask16) 0xffff : tail;
            vmax = _mm512_mask_max_ps(vmax, mk, vmax, _mm512_loadu_ps(sg + j));
        }
        const float m_new = std::max(st.m[g], _mm512_reduce_max_ps(vmax));
        const float corr = std::exp(st.m[g] - m_new);
        __m512 vsum = _mm512_setzero_ps();
        const __m512 mn = _mm512_set1_ps(m_new);
        for (int j = 0; j < nb; j += 16) {
            const __mmask16 mk = (j + 16 <= nb) ? (__mmask16) 0xffff : tail;
            const __m512 e = _mm512_maskz_mov_ps(mk, exp_avx512(_mm512_sub_ps(_mm512_loadu_ps(sg + j), mn)));
            _mm512_storeu_ps(sg + j, e);
            vsum = _mm512_add_ps(vsum, e);
        }
        st.l[g] = st.l[g] * corr + _mm512_reduce_add_ps(vsum);
        st.m[g] = m_new;
        float * acc = st.acc + (size_t) g * DV;
        const __m512 vc = _mm512_set1_ps(corr);
        for (int d = 0; d < DV; d += 16) {
            __m512 a = _mm512_mul_ps(_mm512_loadu_ps(acc + d), vc);
            for (int j = 0; j < nb; j++) a = _mm512_fmadd_ps(_mm512_set1_ps(sg[j]), _mm512_loadu_ps(vbuf + (size_t) j * DV + d), a);
            _mm512_storeu_ps(acc + d, a);
        }
    }
}

// ---- AVX2: 8 lanes, a key tile is two halves ------------------------------------------------------------
__attribute__((target("avx2,fma"))) inline __m256 exp_avx2(__m256 x) {
    x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.37f)), _mm256_set1_ps(-87.0f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 y = _mm256_set1_ps(1.0f / 720);
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.0f / 120));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.0f / 24));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.0f / 6));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(0.5f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.0f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.0f));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

template <int NG>
__attribute__((target("avx2,f16c,fma"))) inline void score_tile_avx2(const float * q16, int D, const f16_t * tile, float scale, float * s,
                                                                      size_t s_stride) {
    __m256 lo[NG], hi[NG];
    for (int g = 0; g < NG; g++) lo[g] = hi[g] = _mm256_setzero_ps();
    for (int d = 0; d < D; d++) {
        const __m256 k0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (tile + (size_t) d * KV_TILE)));
        const __m256 k1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (tile + (size_t) d * KV_TILE + 8)));
        for (int g = 0; g < NG; g++) {
            const __m256 q = _mm256_set1_ps(q16[(size_t) g * D + d]);
            lo[g] = _mm256_fmadd_ps(q, k0, lo[g]);
            hi[g] = _mm256_fmadd_ps(q, k1, hi[g]);
        }
    }
    const __m256 sc = _mm256_set1_ps(scale);
    for (int g = 0; g < NG; g++) {
        _mm256_storeu_ps(s + g * s_stride, _mm256_mul_ps(lo[g], sc));
        _mm256_storeu_ps(s + g * s_stride + 8, _mm256_mul_ps(hi[g], sc));
    }
}

__attribute__((target("avx2,f16c,fma"))) void attend_block_avx2(const attn_params & p, const float * q16, int G, const kv_head_view & h,
                                                                  int32_t j0, int32_t j1, unit_state st, float * s, float * vbuf) {
    const int D = p.head_dim, DV = p.head_dim_v;
    const int nb = j1 - j0;
    for (int t = 0; t < nb; t += KV_TILE) {
        const f16_t * tile = h.k + (size_t) ((j0 + t) / KV_TILE) * D * KV_TILE;
        for (int g0 = 0; g0 < G; g0 += 4) {
            const float * q = q16 + (size_t) g0 * D;
            float * so = s + (size_t) g0 * ATTN_BLOCK + t;
            switch (std::min(4, G - g0)) {
                case 1: score_tile_avx2<1>(q, D, tile, p.scale, so, ATTN_BLOCK); break;
                case 2: score_tile_avx2<2>(q, D, tile, p.scale, so, ATTN_BLOCK); break;
                case 3: score_tile_avx2<3>(q, D, tile, p.scale, so, ATTN_BLOCK); break;
                default: score_tile_avx2<4>(q, D, tile, p.scale, so, ATTN_BLOCK); break;
            }
        }
    }
    for (int j = 0; j < nb; j++) {
        const f16_t * vr = h.v + (size_t) (j0 + j) * DV;
        float * vb = vbuf + (size_t) j * DV;
        for (int d = 0; d < DV; d += 8) _mm256_storeu_ps(vb + d, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (vr + d))));
    }
    for (int g = 0; g < G; g++) {
        float * sg = s + (size_t) g * ATTN_BLOCK;
        float bmax = -INFINITY;
        for (int j = 0; j < nb; j++) bmax = std::max(bmax, sg[j]);
        const float m_new = std::max(st.m[g], bmax);
        const float corr = std::exp(st.m[g] - m_new);
        float lsum = 0;
        const __m256 mn = _mm256_set1_ps(m_new);
        int j = 0;
        for (; j + 8 <= nb; j += 8) {
            const __m256 e = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(sg + j), mn));
            _mm256_storeu_ps(sg + j, e);
        }
        for (; j < nb; j++) sg[j] = std::exp(sg[j] - m_new);
        for (j = 0; j < nb; j++) lsum += sg[j];
        st.l[g] = st.l[g] * corr + lsum;
        st.m[g] = m_new;
        float * acc = st.acc + (size_t) g * DV;
        const __m256 vc = _mm256_set1_ps(corr);
        for (int d = 0; d < DV; d += 8) {
            __m256 a = _mm256_mul_ps(_mm256_loadu_ps(acc + d), vc);
            for (int jj = 0; jj < nb; jj++) a = _mm256_fmadd_ps(_mm256_set1_ps(sg[jj]), _mm256_loadu_ps(vbuf + (size_t) jj * DV + d), a);
            _mm256_storeu_ps(acc + d, a);
        }
    }
}
#endif

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
    std::vector<float> scores;
    for (int t = 0; t < p.n_tokens; t++) {
        for (int ih = 0; ih < p.n_head_kv; ih++) {
            attend_group_ref(p, q + ((size_t) t * p.n_head + (size_t) ih * G) * p.head_dim, G, q_pos[t], kv.head(il, ih),
                             out + ((size_t) t * p.n_head + (size_t) ih * G) * p.head_dim_v, scores);
        }
    }
}

void attention(thread_pool & pool, const attn_params & p, const float * q, const int32_t * q_pos, const kv_cache & kv, int il,
               float * out, attn_scratch & scratch) {
    const int G = p.n_head / p.n_head_kv;
    const int D = p.head_dim, DV = p.head_dim_v;
    const int nth = pool.size();
    const int64_t n_items = (int64_t) p.n_tokens * p.n_head_kv;
    // split each item's keys into `n_split` ranges when there are fewer items than threads (decode)
    int32_t max_n = 1;
    for (int ih = 0; ih < p.n_head_kv; ih++) max_n = std::max(max_n, kv.head(il, ih).n);
    int n_split = 1;
    if (n_items < nth && max_n >= 4 * ATTN_BLOCK) n_split = (int) std::min<int64_t>((nth + n_items - 1) / n_items, max_n / (2 * ATTN_BLOCK));
    const int64_t n_units = n_items * n_split;
    const size_t unit_floats = (size_t) G * (2 + DV);

    int level = dispatch_level();
    if ((level == 2 && DV % 16) || (level == 1 && DV % 8)) level = 0;

    const size_t per_thread = (size_t) G * ATTN_BLOCK + (size_t) ATTN_BLOCK * DV + (size_t) G * D;
    if ((int) scratch.per_thread.size() < nth) scratch.per_thread.resize(nth);
    for (auto & s : scratch.per_thread) if (s.size() < per_thread) s.resize(per_thread);
    std::vector<float> & units = scratch.units;
    if (units.size() < (size_t) n_units * unit_floats) units.resize((size_t) n_units * unit_floats);

    pool.run([&](int ith, int nth_) {
        float * s = scratch.per_thread[ith].data();
        float * vbuf = s + (size_t) G * ATTN_BLOCK;
        float * q16 = vbuf + (size_t) ATTN_BLOCK * DV;
        for (int64_t u = ith; u < n_units; u += nth_) {
            const int64_t it = u / n_split;
            const int part = (int) (u % n_split);
            const int t = (int) (it / p.n_head_kv), ih = (int) (it % p.n_head_kv);
            const kv_head_view h = kv.head(il, ih);
            const int32_t n = visible_keys(h, q_pos[t]);
            // key range of this part, in whole blocks
            const int32_t n_blocks = (n + ATTN_BLOCK - 1) / ATTN_BLOCK;
            const int32_t b0 = (int32_t) ((int64_t) n_blocks * part / n_split), b1 = (int32_t) ((int64_t) n_blocks * (part + 1) / n_split);
            const float * qr = q + ((size_t) t * p.n_head + (size_t) ih * G) * D;
            for (int i = 0; i < G * D; i++) q16[i] = f16_to_f32(f32_to_f16(qr[i]));  // as llama.cpp: q·k in f16 inputs
            float * ub = units.data() + (size_t) u * unit_floats;
            unit_state st{ub, ub + G, ub + 2 * G};
            for (int g = 0; g < G; g++) { st.m[g] = -INFINITY; st.l[g] = 0; }
            std::memset(st.acc, 0, sizeof(float) * G * DV);
            for (int32_t b = b0; b < b1; b++) {
                const int32_t j0 = b * ATTN_BLOCK, j1 = std::min(n, j0 + ATTN_BLOCK);
#if defined(__x86_64__)
                if (level == 2) { attend_block_avx512(p, q16, G, h, j0, j1, st, s, vbuf); continue; }
                if (level == 1) { attend_block_avx2(p, q16, G, h, j0, j1, st, s, vbuf); continue; }
#endif
                attend_block_generic(p, q16, G, h, j0, j1, st, s);
            }
        }
    });

    // merge the parts of each item: out = Σ_r acc_r e^{m_r - M} / Σ_r l_r e^{m_r - M}
    for (int64_t it = 0; it < n_items; it++) {
        const int t = (int) (it / p.n_head_kv), ih = (int) (it % p.n_head_kv);
        float * orow = out + ((size_t) t * p.n_head + (size_t) ih * G) * DV;
        for (int g = 0; g < G; g++) {
            float M = -INFINITY;
            for (int r = 0; r < n_split; r++) M = std::max(M, units[(size_t) (it * n_split + r) * unit_floats + g]);
            float L = 0;
            float * o = orow + (size_t) g * DV;
            std::memset(o, 0, sizeof(float) * DV);
            for (int r = 0; r < n_split; r++) {
                const float * ub = units.data() + (size_t) (it * n_split + r) * unit_floats;
                if (ub[g] == -INFINITY) continue;  // empty range
                const float w = std::exp(ub[g] - M);
                L += ub[G + g] * w;
                const float * acc = ub + 2 * G + (size_t) g * DV;
                for (int d = 0; d < DV; d++) o[d] += acc[d] * w;
            }
            const float inv = L > 0 ? 1.0f / L : 0.0f;
            for (int d = 0; d < DV; d++) o[d] *= inv;
        }
    }
}

} // namespace core
