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

constexpr int ATTN_MAX_GROUP = 256; // query heads per KV head (checked at model load)

// ---- scalar reference for one (token, KV head) work item ------------------------------------------
// scores: [G][n] scratch; q16: [G][head_dim] queries rounded through f16.
void attend_group_ref(const attn_params & p, const float * q_rows /*[G][head_dim]*/, int G, int32_t qpos, const kv_head_view & h,
                      float * out_rows /*[G][head_dim_v]*/, float * scores) {
    const int D = p.head_dim, DV = p.head_dim_v;
    int32_t n = 0;
    while (n < h.n && h.pos[n] <= qpos) n++;  // positions ascend: the visible prefix
    for (int g = 0; g < G; g++) {
        float * s = scores + (size_t) g * n;
        float mx = -INFINITY;
        for (int32_t j = 0; j < n; j++) {
            const f16_t * kr = h.k + (size_t) j * D;
            float acc = 0;
            for (int d = 0; d < D; d++) acc += f16_to_f32(f32_to_f16(q_rows[(size_t) g * D + d])) * f16_to_f32(kr[d]);
            s[j] = acc * p.scale;
            mx = std::max(mx, s[j]);
        }
        double sum = 0;
        for (int32_t j = 0; j < n; j++) { s[j] = std::exp(s[j] - mx); sum += s[j]; }
        const float inv = n ? (float) (1.0 / sum) : 0.0f;
        float * o = out_rows + (size_t) g * DV;
        for (int d = 0; d < DV; d++) o[d] = 0;
        for (int32_t j = 0; j < n; j++) {
            const f16_t * vr = h.v + (size_t) j * DV;
            const float w = s[j] * inv;
            for (int d = 0; d < DV; d++) o[d] += w * f16_to_f32(vr[d]);
        }
    }
}

#if defined(__x86_64__)
__attribute__((target("avx512f,avx512bw,avx512vl,f16c,fma")))
void attend_group_avx512(const attn_params & p, const float * q_rows, int G, int32_t qpos, const kv_head_view & h, float * out_rows,
                         float * scores, float * q16) {
    const int D = p.head_dim, DV = p.head_dim_v;
    int32_t n = 0;
    while (n < h.n && h.pos[n] <= qpos) n++;
    for (int i = 0; i < G * D; i++) q16[i] = f16_to_f32(f32_to_f16(q_rows[i]));
    const bool d16 = (D % 16) == 0;
    float mx[ATTN_MAX_GROUP];
    for (int g = 0; g < G; g++) mx[g] = -INFINITY;
    for (int32_t j = 0; j < n; j++) {
        const f16_t * kr = h.k + (size_t) j * D;
        for (int g = 0; g < G; g++) {
            const float * qg = q16 + (size_t) g * D;
            float acc;
            if (d16) {
                __m512 a = _mm512_setzero_ps();
                for (int d = 0; d < D; d += 16) {
                    const __m512 kv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *) (kr + d)));
                    a = _mm512_fmadd_ps(_mm512_loadu_ps(qg + d), kv, a);
                }
                acc = _mm512_reduce_add_ps(a);
            } else {
                acc = 0;
                for (int d = 0; d < D; d++) acc += qg[d] * f16_to_f32(kr[d]);
            }
            const float sv = acc * p.scale;
            scores[(size_t) g * n + j] = sv;
            mx[g] = std::max(mx[g], sv);
        }
    }
    for (int g = 0; g < G; g++) {
        float * s = scores + (size_t) g * n;
        double sum = 0;
        for (int32_t j = 0; j < n; j++) { s[j] = std::exp(s[j] - mx[g]); sum += s[j]; }
        const float inv = n ? (float) (1.0 / sum) : 0.0f;
        for (int32_t j = 0; j < n; j++) s[j] *= inv;
        std::memset(out_rows + (size_t) g * DV, 0, sizeof(float) * DV);
    }
    const bool dv16 = (DV % 16) == 0;
    for (int32_t j = 0; j < n; j++) {
        const f16_t * vr = h.v + (size_t) j * DV;
        if (dv16) {
            for (int d = 0; d < DV; d += 16) {
                const __m512 vv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *) (vr + d)));
                for (int g = 0; g < G; g++) {
                    float * o = out_rows + (size_t) g * DV + d;
                    _mm512_storeu_ps(o, _mm512_fmadd_ps(_mm512_set1_ps(scores[(size_t) g * n + j]), vv, _mm512_loadu_ps(o)));
                }
            }
        } else {
            for (int g = 0; g < G; g++) {
                const float w = scores[(size_t) g * n + j];
                float * o = out_rows + (size_t) g * DV;
                for (int d = 0; d < DV; d++) o[d] += w * f16_to_f32(vr[d]);
            }
        }
    }
}

__attribute__((target("avx2,f16c,fma")))
void attend_group_avx2(const attn_params & p, const float * q_rows, int G, int32_t qpos, const kv_head_view & h, float * out_rows,
                       float * scores, float * q16) {
    const int D = p.head_dim, DV = p.head_dim_v;
    int32_t n = 0;
    while (n < h.n && h.pos[n] <= qpos) n++;
    for (int i = 0; i < G * D; i++) q16[i] = f16_to_f32(f32_to_f16(q_rows[i]));
    const bool d8 = (D % 8) == 0;
    float mx[ATTN_MAX_GROUP];
    for (int g = 0; g < G; g++) mx[g] = -INFINITY;
    for (int32_t j = 0; j < n; j++) {
        const f16_t * kr = h.k + (size_t) j * D;
        for (int g = 0; g < G; g++) {
            const float * qg = q16 + (size_t) g * D;
            float acc = 0;
            if (d8) {
                __m256 a = _mm256_setzero_ps();
                for (int d = 0; d < D; d += 8) {
                    const __m256 kv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (kr + d)));
                    a = _mm256_fmadd_ps(_mm256_loadu_ps(qg + d), kv, a);
                }
                __m128 lo = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
                lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
                lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
                acc = _mm_cvtss_f32(lo);
            } else {
                for (int d = 0; d < D; d++) acc += qg[d] * f16_to_f32(kr[d]);
            }
            const float sv = acc * p.scale;
            scores[(size_t) g * n + j] = sv;
            mx[g] = std::max(mx[g], sv);
        }
    }
    for (int g = 0; g < G; g++) {
        float * s = scores + (size_t) g * n;
        double sum = 0;
        for (int32_t j = 0; j < n; j++) { s[j] = std::exp(s[j] - mx[g]); sum += s[j]; }
        const float inv = n ? (float) (1.0 / sum) : 0.0f;
        for (int32_t j = 0; j < n; j++) s[j] *= inv;
        std::memset(out_rows + (size_t) g * DV, 0, sizeof(float) * DV);
    }
    const bool dv8 = (DV % 8) == 0;
    for (int32_t j = 0; j < n; j++) {
        const f16_t * vr = h.v + (size_t) j * DV;
        for (int g = 0; g < G; g++) {
            const float w = scores[(size_t) g * n + j];
            float * o = out_rows + (size_t) g * DV;
            if (dv8) {
                const __m256 wv = _mm256_set1_ps(w);
                for (int d = 0; d < DV; d += 8) {
                    const __m256 vv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (vr + d)));
                    _mm256_storeu_ps(o + d, _mm256_fmadd_ps(wv, vv, _mm256_loadu_ps(o + d)));
                }
            } else {
                for (int d = 0; d < DV; d++) o[d] += w * f16_to_f32(vr[d]);
            }
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
            const kv_head_view h = kv.head(il, ih);
            scores.resize((size_t) G * std::max(h.n, 1));
            attend_group_ref(p, q + ((size_t) t * p.n_head + (size_t) ih * G) * p.head_dim, G, q_pos[t], h,
                             out + ((size_t) t * p.n_head + (size_t) ih * G) * p.head_dim_v, scores.data());
        }
    }
}

void attention(thread_pool & pool, const attn_params & p, const float * q, const int32_t * q_pos, const kv_cache & kv, int il,
               float * out, attn_scratch & scratch) {
    const int G = p.n_head / p.n_head_kv;
    const int nth = pool.size();
    if ((int) scratch.per_thread.size() < nth) scratch.per_thread.resize(nth);
    int32_t max_n = 1;
    for (int ih = 0; ih < p.n_head_kv; ih++) max_n = std::max(max_n, kv.head(il, ih).n);
    const size_t need = (size_t) G * max_n + (size_t) G * p.head_dim;
    for (auto & s : scratch.per_thread) if (s.size() < need) s.resize(need + need / 2);
    const int64_t n_items = (int64_t) p.n_tokens * p.n_head_kv;
    const int level = dispatch_level();
    pool.run([&](int ith, int nth_) {
        float * sc = scratch.per_thread[ith].data();
        float * q16 = sc + (size_t) G * max_n;
        for (int64_t it = ith; it < n_items; it += nth_) {
            const int t = (int) (it / p.n_head_kv), ih = (int) (it % p.n_head_kv);
            const kv_head_view h = kv.head(il, ih);
            const float * qr = q + ((size_t) t * p.n_head + (size_t) ih * G) * p.head_dim;
            float * orow = out + ((size_t) t * p.n_head + (size_t) ih * G) * p.head_dim_v;
#if defined(__x86_64__)
            if (level == 2) { attend_group_avx512(p, qr, G, q_pos[t], h, orow, sc, q16); continue; }
            if (level == 1) { attend_group_avx2(p, qr, G, q_pos[t], h, orow, sc, q16); continue; }
#endif
            attend_group_ref(p, qr, G, q_pos[t], h, orow, sc);
        }
    });
}

} // namespace core
