// Attention over coded heads (see attention-codec.h).
#include "attention-codec.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "ops.h"
#include "quant-traits-cpu.h"
#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace core {

namespace {

#if defined(__x86_64__)
// 8 codes of b bits starting at element e (e a multiple of 8, so the run starts on a byte) as f32 lanes
__attribute__((target("avx2,fma"))) inline __m256 codes8_avx2(const uint8_t * codes, int e, int b) {
    uint32_t w = 0;
    std::memcpy(&w, codes + (size_t) e * b / 8, (size_t) b);
    const __m256i sh = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(b));
    const __m256i c = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int) w), sh), _mm256_set1_epi32((1 << b) - 1));
    return _mm256_cvtepi32_ps(c);
}

__attribute__((target("avx2,fma"))) inline float hsum_avx2(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// rot layout (rot.cpp): codes [dim·b/8] | scales f16 [ng] | zero-points u8 [ng]
__attribute__((target("avx2,fma"))) float rot_dot_avx2(const kv_codec_params & p, int b, const uint8_t * blk, const float * q) {
    const int G = kv_codec_group(KV_CODEC_ROT2, p.dim, p.group), ng = p.dim / G;
    const uint8_t * sc = blk + (size_t) p.dim * b / 8, * zp = sc + 2 * ng;
    float r = 0;
    for (int g = 0; g < ng; g++) {
        __m256 ac = _mm256_setzero_ps(), aq = _mm256_setzero_ps();
        for (int i = 0; i < G; i += 8) {
            const __m256 qv = _mm256_loadu_ps(q + g * G + i);
            ac = _mm256_fmadd_ps(qv, codes8_avx2(blk, g * G + i, b), ac);
            aq = _mm256_add_ps(aq, qv);
        }
        f16_t sh;
        std::memcpy(&sh, sc + 2 * g, 2);
        r += f16_to_f32(sh) * (hsum_avx2(ac) - (float) zp[g] * hsum_avx2(aq));
    }
    return r;
}

__attribute__((target("avx2,fma"))) void rot_axpy_avx2(const kv_codec_params & p, int b, const uint8_t * blk, float w, float * acc) {
    const int G = kv_codec_group(KV_CODEC_ROT2, p.dim, p.group), ng = p.dim / G;
    const uint8_t * sc = blk + (size_t) p.dim * b / 8, * zp = sc + 2 * ng;
    for (int g = 0; g < ng; g++) {
        f16_t sh;
        std::memcpy(&sh, sc + 2 * g, 2);
        const float ws = w * f16_to_f32(sh);
        const __m256 vws = _mm256_set1_ps(ws), vb = _mm256_set1_ps(-ws * (float) zp[g]);
        for (int i = 0; i < G; i += 8) {
            float * a = acc + g * G + i;
            _mm256_storeu_ps(a, _mm256_add_ps(_mm256_fmadd_ps(codes8_avx2(blk, g * G + i, b), vws, _mm256_loadu_ps(a)), vb));
        }
    }
}
#endif

bool use_avx2(const kv_codec_traits & t, const kv_codec_params & p) {
#if defined(__x86_64__)
    static const bool avx2 = !std::strcmp(cpu_dispatch_level(), "avx2") || !std::strcmp(cpu_dispatch_level(), "avx512");
    return avx2 && t.rotated && t.bits <= 4 && kv_codec_group(KV_CODEC_ROT2, p.dim, p.group) % 8 == 0;
#else
    (void) t; (void) p;
    return false;
#endif
}

} // namespace

float kv_codec_dot(const kv_codec_traits & t, const kv_codec_params & p, const uint8_t * blk, int j, const float * q) {
#if defined(__x86_64__)
    if (use_avx2(t, p)) return rot_dot_avx2(p, t.bits, blk, q);
#endif
    return t.dot(p, blk, j, q);
}

void kv_codec_axpy(const kv_codec_traits & t, const kv_codec_params & p, const uint8_t * blk, int j, float w, float * acc) {
#if defined(__x86_64__)
    if (use_avx2(t, p)) { rot_axpy_avx2(p, t.bits, blk, w, acc); return; }
#endif
    t.axpy(p, blk, j, w, acc);
}

void attend_group_coded(int D, int DV, float scale, const float * q_rows, int G, int32_t qpos, const kv_head_view & hv, float * out_rows,
                        const kv_group_probs * probs) {
#if defined(__x86_64__)
    static const bool avx512 = !std::strcmp(cpu_dispatch_level(), "avx512") && cpu_features().avx512f;
    static const bool avx2 = avx512 || !std::strcmp(cpu_dispatch_level(), "avx2");
    if (avx512 && attend_group_coded_avx512(D, DV, scale, q_rows, G, qpos, hv, out_rows, probs)) return;
    if (avx2 && attend_group_coded_avx2(D, DV, scale, q_rows, G, qpos, hv, out_rows, probs)) return;
#endif
    attend_group_coded_ref(D, DV, scale, q_rows, G, qpos, hv, out_rows, probs);
}

void kv_group_probs_fill(const kv_group_probs & probs, const float * w, size_t n_all, int G, const float * inv_sum, int32_t n_f16,
                         int32_t n_vis16, int32_t n_coded, int32_t n_visq) {
    float * pmax = probs.p_max, * psum = probs.p_sum;
    std::fill(pmax, pmax + n_coded + n_f16, 0.0f);
    std::fill(psum, psum + n_coded + n_f16, 0.0f);
    for (int g = 0; g < G; g++) {
        const float * wg = w + (size_t) g * n_all;
        const float inv = inv_sum[g];
        for (int32_t i = 0; i < n_vis16; i++) {
            const float p = wg[i] * inv;
            pmax[n_coded + i] = std::max(pmax[n_coded + i], p);
            psum[n_coded + i] += p;
        }
        for (int32_t j = 0; j < n_visq; j++) {
            const float p = wg[n_vis16 + j] * inv;
            pmax[j] = std::max(pmax[j], p);
            psum[j] += p;
        }
    }
}

void attend_group_coded_ref(int D, int DV, float scale, const float * q_rows, int G, int32_t qpos, const kv_head_view & hv, float * out_rows,
                            const kv_group_probs * probs) {
    const kv_coded_view & c = *hv.coded;
    const kv_storage_config & st = *c.st;
    const bool k_rot = c.kc->rotated, pre = k_rot && !st.post_rope;
    thread_local std::vector<float> s, qr, kt, kr, cs, acc_p, acc_r, inv_sum;
    inv_sum.resize((size_t) G);
    int32_t n_f16 = 0;
    for (int32_t sg = 0; sg < hv.n_seg; sg++) n_f16 += hv.seg[sg].n;
    const size_t n_all = (size_t) n_f16 + c.n;
    s.resize((size_t) G * n_all);
    qr.resize((size_t) G * D);
    kt.resize((size_t) D);
    kr.resize((size_t) D);
    cs.resize((size_t) std::max(st.n_rot, 2));
    acc_p.resize((size_t) DV);
    acc_r.resize((size_t) DV);
    // queries against codes: post-RoPE rot keys are P·H·k, so use P·H·q (an orthogonal map keeps q·k)
    for (int g = 0; g < G; g++) {
        const float * q = q_rows + (size_t) g * D;
        float * o = qr.data() + (size_t) g * D;
        if (k_rot && !pre) {
            std::copy(q, q + D, kt.begin());
            fwht_ref(kt.data(), D);
            for (int d = 0; d < D; d++) o[d] = kt[(size_t) (c.perm ? c.perm[d] : d)];
        } else {
            std::copy(q, q + D, o);
        }
    }
    // ---- scores: the f16 tokens (protected and staging) first, then the quantized ones (a two-pass
    // softmax does not care about order)
    size_t idx = 0;
    thread_local std::vector<const f16_t *> vr16;
    vr16.clear();
    for (int32_t sg = 0; sg < hv.n_seg; sg++) {
        const kv_segment & h = hv.seg[sg];
        for (int32_t j = 0; j < h.n && h.pos[j] <= qpos; j++) {
            for (int g = 0; g < G; g++) {
                const float * q = q_rows + (size_t) g * D;
                float a = 0;
                for (int d = 0; d < D; d++) a += q[d] * f16_to_f32(h.key(j, d, D));
                s[(size_t) g * n_all + idx] = a * scale;
            }
            vr16.push_back(h.v + (size_t) j * DV);
            idx++;
        }
    }
    const size_t n_vis16 = idx;
    const int32_t nq = c.count_le(qpos);
    for (int32_t j = 0; j < nq; j++, idx++) {
        int jj;
        const uint8_t * blk = c.key_block(j, jj);
        if (pre) {
            if (c.rot_g == 1) {
                c.kc->decode(c.kp, blk, jj, kt.data());
                for (int d = 0; d < D; d++) kr[(size_t) (c.perm ? c.perm[d] : d)] = kt[d];
            } else {  // grouped rotation: this head's share of FWHT_{G·D} = (1/√G)·Σ_s ±H_D·P_s⁻¹·x̂_s
                std::fill(kr.begin(), kr.end(), 0.0f);
                const float gs = 1.0f / std::sqrt((float) c.rot_g);
                for (int sl = 0; sl < c.rot_g; sl++) {
                    const kv_coded_view & o = *c.sib[sl];
                    int oj;
                    const uint8_t * ob = o.key_block(j, oj);
                    o.kc->decode(o.kp, ob, oj, kt.data());
                    const float w = __builtin_popcount((unsigned) (c.rot_slot & sl)) & 1 ? -gs : gs;
                    for (int d = 0; d < D; d++) kr[(size_t) (o.perm ? o.perm[d] : d)] += w * kt[d];
                }
            }
            fwht_ref(kr.data(), D);
            rope_cache_ref(cs.data(), c.pos_at(j), st.n_rot, st.freq_base, st.freq_scale, st.freq_factors);
            rope_apply_ref(kr.data(), 1, D, st.n_rot, st.rope, cs.data());
            for (int g = 0; g < G; g++) {
                const float * q = q_rows + (size_t) g * D;
                float a = 0;
                for (int d = 0; d < D; d++) a += q[d] * kr[d];
                s[(size_t) g * n_all + idx] = a * scale;
            }
        } else {
            for (int g = 0; g < G; g++) s[(size_t) g * n_all + idx] = kv_codec_dot(*c.kc, c.kp, blk, jj, qr.data() + (size_t) g * D) * scale;
        }
    }
    const size_t n_vis = idx;
    // ---- softmax and p·V
    for (int g = 0; g < G; g++) {
        float * sg = s.data() + (size_t) g * n_all;
        float mx = -INFINITY;
        for (size_t i = 0; i < n_vis; i++) mx = std::max(mx, sg[i]);
        float sum = 0;
        for (size_t i = 0; i < n_vis; i++) { sg[i] = std::exp(sg[i] - mx); sum += sg[i]; }
        std::fill(acc_p.begin(), acc_p.end(), 0.0f);
        std::fill(acc_r.begin(), acc_r.end(), 0.0f);
        for (size_t i = 0; i < n_vis16; i++) {
            const f16_t * v = vr16[i];
            for (int d = 0; d < DV; d++) acc_p[d] += sg[i] * f16_to_f32(v[d]);
        }
        float * accq = c.vc->rotated ? acc_r.data() : acc_p.data();
        for (int32_t j = 0; j < nq; j++) {
            int jj;
            const uint8_t * blk = c.value_block(j, jj);
            kv_codec_axpy(*c.vc, c.vp, blk, jj, sg[n_vis16 + j], accq);
        }
        if (c.vc->rotated) fwht_ref(acc_r.data(), DV);  // Σ p·H·v = H·Σ p·v, H self-inverse
        const float inv = sum > 0 ? 1.0f / sum : 0.0f;
        inv_sum[(size_t) g] = inv;
        float * o = out_rows + (size_t) g * DV;
        for (int d = 0; d < DV; d++) o[d] = (acc_p[d] + (c.vc->rotated ? acc_r[d] : 0.0f)) * inv;
    }
    if (probs) kv_group_probs_fill(*probs, s.data(), n_all, G, inv_sum.data(), n_f16, (int32_t) n_vis16, c.n, nq);
}

} // namespace core
