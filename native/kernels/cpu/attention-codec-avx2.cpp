// AVX2 attention over rot-coded heads: the AVX-512 kernel's organization (attention-codec-avx512.cpp) on
// 8-wide vectors, for CPUs without AVX-512 (most client x86 chips). Same math as attend_group_coded_ref,
// its oracle. Per block of 8 quantized tokens:
//   keys   codes → x̂ (8 channels per register), pre-RoPE: inverse channel permutation (one gather per
//          register from the decoded row), unnormalized FWHT in registers (1/√D folded into the queries),
//          RoPE at the stored position from the same two-level cos/sin tables, then q·k for every query
//          head of the group with an 8-way transposing reduction (hadd tree);
//          post-RoPE: the queries were rotated and permuted once, keys are read as stored;
//   values codes → v̂ (still rotated), acc[g] += p·v̂; one FWHT per query head at the end.
// f16 tokens (protected + staging) use F16C conversions. No dequantized copy of the cache is kept.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "attention-codec-common.h"
#include "attention-codec.h"
#include "ops.h"
#include "quant-traits-cpu.h"

#if defined(__x86_64__)
#include <immintrin.h>

namespace core {

namespace {

using coded_attn::block_cursor;
using coded_attn::rope_tables;

#define TC_AVX2 __attribute__((target("avx2,fma,f16c")))

TC_AVX2 inline __m256 fwht8(__m256 x) {
    __m256 sw = _mm256_permute_ps(x, 0xB1);
    x = _mm256_blend_ps(_mm256_add_ps(x, sw), _mm256_sub_ps(sw, x), 0xAA);
    sw = _mm256_permute_ps(x, 0x4E);
    x = _mm256_blend_ps(_mm256_add_ps(x, sw), _mm256_sub_ps(sw, x), 0xCC);
    sw = _mm256_permute2f128_ps(x, x, 0x01);
    return _mm256_blend_ps(_mm256_add_ps(x, sw), _mm256_sub_ps(sw, x), 0xF0);
}

// Unnormalized Walsh–Hadamard transform of R registers (8·R channels): H_8R = H_R ⊗ H_8.
template <int R> TC_AVX2 inline void fwht_regs(__m256 * x) {
    for (int r = 0; r < R; r++) x[r] = fwht8(x[r]);
    for (int len = 1; len < R; len <<= 1)
        for (int i = 0; i < R; i += 2 * len)
            for (int j = i; j < i + len; j++) {
                const __m256 a = x[j], b = x[j + len];
                x[j] = _mm256_add_ps(a, b);
                x[j + len] = _mm256_sub_ps(a, b);
            }
}

// 8 codes of B bits starting at element e (a multiple of 8) as float lanes.
template <int B> TC_AVX2 inline __m256 codes8(const uint8_t * c, int e) {
    uint32_t w = 0;
    std::memcpy(&w, c + (size_t) e * B / 8, B);
    const __m256i sh = _mm256_setr_epi32(0, B, 2 * B, 3 * B, 4 * B, 5 * B, 6 * B, 7 * B);
    return _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int) w), sh), _mm256_set1_epi32((1 << B) - 1)));
}

// x̂ of one rot token (codes | f16 scales | u8 zero-points), 8 channels per register.
template <int R, int B> TC_AVX2 inline void decode_rot(const uint8_t * blk, int group, __m256 * x) {
    constexpr int D = 8 * R;
    const int ng = D / group;
    const uint8_t * sc = blk + (size_t) D * B / 8, * zp = sc + 2 * ng;
    for (int r = 0; r < R; r++) {
        const int g = 8 * r / group;
        uint16_t h;
        std::memcpy(&h, sc + 2 * g, 2);
        const float s = _cvtsh_ss(h);
        x[r] = _mm256_fmsub_ps(codes8<B>(blk, 8 * r), _mm256_set1_ps(s), _mm256_set1_ps(s * (float) zp[g]));
    }
}

// Lane j of the result = Σ lanes of a[j] (8 vectors).
TC_AVX2 inline __m256 reduce8(const __m256 * a) {
    const __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
    const __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
    const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
    // u0 = [a0 a1 a2 a3 | a0 a1 a2 a3] (low/high halves' partial sums), u1 likewise for a4..a7
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

struct coded_scratch2 {
    std::vector<float> s, kbuf, vbuf, qs, acc, acc16, inv_sum, row;
    std::vector<int32_t> pidx;
    std::vector<const f16_t *> v16;
};

TC_AVX2 inline __m256 mask8(int m) {
    alignas(32) static const int32_t ones[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
    return _mm256_castsi256_ps(_mm256_loadu_si256((const __m256i *) (ones + 8 - m)));
}

template <int R, int KB, int VB>
TC_AVX2 void coded_avx2(int G, float scale, const float * q_rows, int32_t qpos, const kv_head_view & hv, float * out_rows,
                        const kv_group_probs * probs) {
    constexpr int D = 8 * R;
    const kv_coded_view & c = *hv.coded;
    const kv_storage_config & st = *c.st;
    const bool pre = !st.post_rope;
    const int kgroup = kv_codec_group(KV_CODEC_ROT2, D, c.kp.group), vgroup = kv_codec_group(KV_CODEC_ROT2, D, c.vp.group);
    thread_local coded_scratch2 sc;
    thread_local rope_tables rt;

    int32_t n16 = 0;
    for (int32_t sg = 0; sg < hv.n_seg; sg++) n16 += hv.seg[sg].n;
    const int32_t nq = c.count_le(qpos);
    const size_t n_all = (size_t) n16 + (size_t) nq + 16;
    sc.s.resize((size_t) G * n_all);
    sc.kbuf.assign((size_t) 8 * D, 0.0f);
    sc.vbuf.resize((size_t) 8 * D);
    sc.qs.resize((size_t) G * D);
    sc.acc.assign((size_t) G * D, 0.0f);
    sc.acc16.assign((size_t) G * D, 0.0f);
    sc.row.resize((size_t) D);
    sc.v16.clear();
    float * const S = sc.s.data(), * const KBUF = sc.kbuf.data(), * const VBUF = sc.vbuf.data(), * const QS = sc.qs.data();
    float * const ACC = sc.acc.data(), * const ACC16 = sc.acc16.data(), * const ROW = sc.row.data();

    // ---- queries for the quantized keys (as in the AVX-512 kernel)
    const int RG = pre ? c.rot_g : 1;  // grouped key rotation: 1/√G folded in here (as in the AVX-512 kernel)
    const float qscale = pre ? scale / std::sqrt((float) D * (float) RG) : scale;
    for (int g = 0; g < G; g++) {
        const float * q = q_rows + (size_t) g * D;
        float * o = QS + (size_t) g * D;
        if (pre) {
            for (int d = 0; d < D; d++) o[d] = q[d] * qscale;
        } else {
            __m256 x[R];
            for (int r = 0; r < R; r++) x[r] = _mm256_loadu_ps(q + 8 * r);
            fwht_regs<R>(x);
            for (int r = 0; r < R; r++) _mm256_storeu_ps(ROW + 8 * r, x[r]);
            const float s2 = qscale / std::sqrt((float) D);
            for (int d = 0; d < D; d++) o[d] = ROW[(size_t) (c.perm ? c.perm[d] : d)] * s2;
        }
    }
    // per slot of the rotation group (one slot unless grouped): its blocks and its inverse permutation as
    // gather indices (reconstructed channel e comes from stored channel inv[e])
    bool permute[coded_attn::kMaxRotGroup] = {};
    __m256i pidx[coded_attn::kMaxRotGroup][R];
    block_cursor kcur[coded_attn::kMaxRotGroup];
    for (int sl = 0; sl < RG; sl++) {
        const kv_coded_view & o = RG > 1 ? *c.sib[sl] : c;
        kcur[sl] = block_cursor(o.kpages, o.k_page_tokens, o.k_block_bytes);
        permute[sl] = pre && o.perm != nullptr;
        if (!permute[sl]) continue;
        sc.pidx.resize((size_t) D);
        for (int d = 0; d < D; d++) sc.pidx[(size_t) o.perm[d]] = d;
        for (int r = 0; r < R; r++) pidx[sl][r] = _mm256_loadu_si256((const __m256i *) (sc.pidx.data() + 8 * r));
    }

    // ---- scores of the f16 tokens (protected first, staging last; positions ascend)
    size_t idx = 0;
    for (int32_t sg = 0; sg < hv.n_seg; sg++) {
        const kv_segment & h = hv.seg[sg];
        int32_t nv = 0;
        while (nv < h.n && h.pos[nv] <= qpos) nv++;
        for (int32_t t0 = 0; t0 < nv; t0 += KV_TILE) {
            const int m = std::min<int32_t>(KV_TILE, nv - t0);
            const f16_t * kt = h.k + (size_t) (t0 / KV_TILE) * D * KV_TILE;
            for (int g = 0; g < G; g++) {
                const float * q = q_rows + (size_t) g * D;
                __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
                for (int d = 0; d < D; d++) {
                    const __m256 qd = _mm256_set1_ps(q[d]);
                    a0 = _mm256_fmadd_ps(qd, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (kt + (size_t) d * KV_TILE))), a0);
                    a1 = _mm256_fmadd_ps(qd, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (kt + (size_t) d * KV_TILE + 8))), a1);
                }
                float * dst = S + (size_t) g * n_all + idx;
                alignas(32) float tmp[16];
                _mm256_store_ps(tmp, _mm256_mul_ps(a0, _mm256_set1_ps(scale)));
                _mm256_store_ps(tmp + 8, _mm256_mul_ps(a1, _mm256_set1_ps(scale)));
                std::memcpy(dst, tmp, sizeof(float) * (size_t) m);
            }
            for (int t = 0; t < m; t++) sc.v16.push_back(h.v + (size_t) (t0 + t) * D);
            idx += (size_t) m;
        }
    }
    const size_t nv16 = idx;

    // ---- scores of the quantized keys, 8 at a time
    if (pre && nq > 0) rt.ensure(st, c.pos_at(nq - 1));
    const int W = rt.W;
    int32_t run = 0;
    for (int32_t j0 = 0; j0 < nq; j0 += 8) {
        const int m = std::min<int32_t>(8, nq - j0);
        for (int t = 0; t < m; t++) {
            __m256 x[R];
            decode_rot<R, KB>(kcur[0].next(), kgroup, x);
            if (pre) {
                if (permute[0]) {
                    for (int r = 0; r < R; r++) _mm256_storeu_ps(ROW + 8 * r, x[r]);
                    for (int r = 0; r < R; r++) x[r] = _mm256_i32gather_ps(ROW, pidx[0][r], 4);
                }
                for (int sl = 1; sl < RG; sl++) {  // grouped: Σ_s ±P_s⁻¹·x̂_s (slot 0's sign is +), then one FWHT
                    __m256 u[R];
                    decode_rot<R, KB>(kcur[sl].next(), kgroup, u);
                    if (permute[sl]) {
                        for (int r = 0; r < R; r++) _mm256_storeu_ps(ROW + 8 * r, u[r]);
                        for (int r = 0; r < R; r++) u[r] = _mm256_i32gather_ps(ROW, pidx[sl][r], 4);
                    }
                    const bool neg = coded_attn::rot_sign_negative(c.rot_slot, sl);
                    for (int r = 0; r < R; r++) x[r] = neg ? _mm256_sub_ps(x[r], u[r]) : _mm256_add_ps(x[r], u[r]);
                }
                fwht_regs<R>(x);
                const int32_t j = j0 + t;
                while (j >= c.runs[run].first + c.runs[run].n) run++;
                const int32_t p = c.runs[run].pos + (j - c.runs[run].first);
                const float * lc = rt.lo_c.data() + (size_t) (p & 255) * W, * ls = rt.lo_s.data() + (size_t) (p & 255) * W;
                const float * hc = rt.hi_c.data() + (size_t) (p >> 8) * W, * hs = rt.hi_s.data() + (size_t) (p >> 8) * W;
                if (st.rope == ROPE_STYLE_NORM) {
                    for (int r = 0; r < R; r++) {
                        const __m256 ca = _mm256_loadu_ps(hc + 8 * r), sa = _mm256_loadu_ps(hs + 8 * r);
                        const __m256 cb = _mm256_loadu_ps(lc + 8 * r), sb = _mm256_loadu_ps(ls + 8 * r);
                        const __m256 C = _mm256_fnmadd_ps(sa, sb, _mm256_mul_ps(ca, cb)), Sn = _mm256_fmadd_ps(ca, sb, _mm256_mul_ps(sa, cb));
                        x[r] = _mm256_fmadd_ps(x[r], C, _mm256_mul_ps(_mm256_permute_ps(x[r], 0xB1), Sn));
                    }
                } else {
                    for (int r = 0; r < R / 2; r++) {
                        const __m256 ca = _mm256_loadu_ps(hc + 8 * r), sa = _mm256_loadu_ps(hs + 8 * r);
                        const __m256 cb = _mm256_loadu_ps(lc + 8 * r), sb = _mm256_loadu_ps(ls + 8 * r);
                        const __m256 C = _mm256_fnmadd_ps(sa, sb, _mm256_mul_ps(ca, cb)), Sn = _mm256_fmadd_ps(ca, sb, _mm256_mul_ps(sa, cb));
                        const __m256 x0 = x[r], x1 = x[r + R / 2];
                        x[r] = _mm256_fmsub_ps(x0, C, _mm256_mul_ps(x1, Sn));
                        x[r + R / 2] = _mm256_fmadd_ps(x0, Sn, _mm256_mul_ps(x1, C));
                    }
                }
            }
            for (int r = 0; r < R; r++) _mm256_storeu_ps(KBUF + (size_t) t * D + 8 * r, x[r]);
        }
        for (int g = 0; g < G; g++) {
            const float * q = QS + (size_t) g * D;
            __m256 a[8];
            // rows past m hold the previous block's keys (or zeros): finite, and masked out below
            for (int t = 0; t < 8; t++) {
                __m256 s = _mm256_mul_ps(_mm256_loadu_ps(q), _mm256_loadu_ps(KBUF + (size_t) t * D));
                for (int r = 1; r < R; r++) s = _mm256_fmadd_ps(_mm256_loadu_ps(q + 8 * r), _mm256_loadu_ps(KBUF + (size_t) t * D + 8 * r), s);
                a[t] = s;
            }
            _mm256_maskstore_ps(S + (size_t) g * n_all + nv16 + (size_t) j0, _mm256_castps_si256(mask8(m)), reduce8(a));
        }
    }
    const size_t n_vis = nv16 + (size_t) nq;

    // ---- softmax and p·V
    std::vector<float> & inv_sum = sc.inv_sum;
    inv_sum.resize((size_t) G);
    for (int g = 0; g < G; g++) {
        float * sg = S + (size_t) g * n_all;
        float mx = -INFINITY;
        for (size_t i = 0; i < n_vis; i++) mx = std::max(mx, sg[i]);
        const float sum = exp_sub_sum(sg, (int64_t) n_vis, mx);
        inv_sum[(size_t) g] = sum > 0 ? 1.0f / sum : 0.0f;
    }
    if (probs) kv_group_probs_fill(*probs, S, n_all, G, inv_sum.data(), n16, (int32_t) nv16, c.n, nq);
    for (size_t i = 0; i < nv16; i++) {
        __m256 v[R];
        for (int r = 0; r < R; r++) v[r] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (sc.v16[i] + 8 * r)));
        for (int g = 0; g < G; g++) {
            const __m256 p = _mm256_set1_ps(S[(size_t) g * n_all + i]);
            float * a = ACC16 + (size_t) g * D;
            for (int r = 0; r < R; r++) _mm256_storeu_ps(a + 8 * r, _mm256_fmadd_ps(p, v[r], _mm256_loadu_ps(a + 8 * r)));
        }
    }
    block_cursor vcur(c.vpages, c.v_page_tokens, c.v_block_bytes);
    for (int32_t j0 = 0; j0 < nq; j0 += 8) {
        const int m = std::min<int32_t>(8, nq - j0);
        for (int t = 0; t < m; t++) {
            __m256 x[R];
            decode_rot<R, VB>(vcur.next(), vgroup, x);
            for (int r = 0; r < R; r++) _mm256_storeu_ps(VBUF + (size_t) t * D + 8 * r, x[r]);
        }
        for (int g = 0; g < G; g++) {
            const float * p = S + (size_t) g * n_all + nv16 + (size_t) j0;
            float * a = ACC + (size_t) g * D;
            for (int r = 0; r < R; r++) {
                __m256 ac = _mm256_loadu_ps(a + 8 * r);
                for (int t = 0; t < m; t++) ac = _mm256_fmadd_ps(_mm256_set1_ps(p[t]), _mm256_loadu_ps(VBUF + (size_t) t * D + 8 * r), ac);
                _mm256_storeu_ps(a + 8 * r, ac);
            }
        }
    }
    const __m256 vn = _mm256_set1_ps(1.0f / std::sqrt((float) D));
    for (int g = 0; g < G; g++) {
        __m256 x[R];
        for (int r = 0; r < R; r++) x[r] = _mm256_loadu_ps(ACC + (size_t) g * D + 8 * r);
        fwht_regs<R>(x);  // Σ p·H·v = H·Σ p·v; H self-inverse (normalized below)
        const __m256 is = _mm256_set1_ps(inv_sum[(size_t) g]);
        for (int r = 0; r < R; r++) {
            const __m256 o = _mm256_fmadd_ps(x[r], vn, _mm256_loadu_ps(ACC16 + (size_t) g * D + 8 * r));
            _mm256_storeu_ps(out_rows + (size_t) g * D + 8 * r, _mm256_mul_ps(o, is));
        }
    }
}

struct fused_avx2 {
    template <int R, int KB, int VB>
    static void run(int G, float scale, const float * q, int32_t qpos, const kv_head_view & hv, float * out, const kv_group_probs * pr) {
        coded_avx2<R, KB, VB>(G, scale, q, qpos, hv, out, pr);
    }
};

} // namespace

bool attend_group_coded_avx2(int D, int DV, float scale, const float * q_rows, int G, int32_t qpos, const kv_head_view & hv, float * out_rows,
                             const kv_group_probs * probs) {
    const cpu_features_t & f = cpu_features();
    if (!f.avx2 || !f.fma || !f.f16c) return false;
    if (!coded_attn::fused_path_applies(D, DV, 8, hv)) return false;
    return coded_attn::dispatch_fused<fused_avx2, 8>(D, G, scale, q_rows, qpos, hv, out_rows, probs);
}

} // namespace core

#else

namespace core {
bool attend_group_coded_avx2(int, int, float, const float *, int, int32_t, const kv_head_view &, float *, const kv_group_probs *) { return false; }
} // namespace core

#endif
