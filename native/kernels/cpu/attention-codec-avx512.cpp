// AVX-512 attention over rot-coded heads: the same math as attend_group_coded_ref (its oracle), organized
// for speed. Per block of 16 quantized tokens:
//   keys   codes → x̂ (16 channels per register, one group scale/zero-point per register), pre-RoPE:
//          inverse channel permutation in registers (permutex2var), unnormalized FWHT in registers (its
//          1/√D folded into the queries), RoPE at the stored position (cos/sin from a two-level table:
//          angle = (256·hi + lo)·θ, combined with one complex product), then q·k for every query head
//          of the group with a 16-way transposing reduction (no horizontal sum per key);
//          post-RoPE: the queries were rotated and permuted once, keys are read as stored;
//   values codes → v̂ (still rotated), acc[g] += p·v̂ over the block with the probabilities broadcast; one
//          FWHT per query head at the end undoes the rotation.
// Pre-RoPE keys of a full block of 16 consecutive positions with 2- or 4-bit codes take keys_block_lanes
// instead: the same math token-transposed (one lane per token), which needs no in-register shuffles for the
// FWHT and no reduction for q·k.
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

// GCC 12 reports its own _mm512_undefined_* placeholders inside the AVX-512 intrinsics as "may be used
// uninitialized" (a known false positive); keep the build log readable.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace core {

namespace {

using coded_attn::block_cursor;
using coded_attn::rope_tables;

#define TC_AVX512 __attribute__((target("avx512f,fma,f16c")))

TC_AVX512 inline __m512 fwht16(__m512 x) {
    __m512 sw = _mm512_permute_ps(x, 0xB1);
    x = _mm512_mask_blend_ps(0xAAAA, _mm512_add_ps(x, sw), _mm512_sub_ps(sw, x));
    sw = _mm512_permute_ps(x, 0x4E);
    x = _mm512_mask_blend_ps(0xCCCC, _mm512_add_ps(x, sw), _mm512_sub_ps(sw, x));
    sw = _mm512_shuffle_f32x4(x, x, 0xB1);
    x = _mm512_mask_blend_ps(0xF0F0, _mm512_add_ps(x, sw), _mm512_sub_ps(sw, x));
    sw = _mm512_shuffle_f32x4(x, x, 0x4E);
    return _mm512_mask_blend_ps(0xFF00, _mm512_add_ps(x, sw), _mm512_sub_ps(sw, x));
}

template <int K, int LEN = 1> TC_AVX512 inline void butterflies(__m512 * x) {  // stages LEN, 2·LEN, .. < K of K registers
    if constexpr (LEN < K) {
        for (int i = 0; i < K; i += 2 * LEN)
            for (int j = i; j < i + LEN; j++) {
                const __m512 a = x[j], b = x[j + LEN];
                x[j] = _mm512_add_ps(a, b);
                x[j + LEN] = _mm512_sub_ps(a, b);
            }
        butterflies<K, 2 * LEN>(x);
    }
}
// Unnormalized Walsh–Hadamard transform of R registers (16·R channels): H_16R = H_R ⊗ H_16.
template <int R> TC_AVX512 inline void fwht_regs(__m512 * x) {
    for (int r = 0; r < R; r++) x[r] = fwht16(x[r]);
    butterflies<R>(x);
}

// 16 codes of B bits starting at element e (a multiple of 16) as float lanes.
template <int B> TC_AVX512 inline __m512 codes16(const uint8_t * c, int e) {
    if constexpr (B == 2) {  // one 32-bit word holds the 16 codes
        uint32_t w;
        std::memcpy(&w, c + (size_t) e / 4, 4);
        const __m512i sh = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        return _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srlv_epi32(_mm512_set1_epi32((int) w), sh), _mm512_set1_epi32(3)));
    }
    if constexpr (B == 4) {  // two words: lanes 0-7 from the first, 8-15 from the second
        uint64_t w;
        std::memcpy(&w, c + (size_t) e / 2, 8);
        const __m512i v = _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1), _mm512_castsi128_si512(_mm_cvtsi64_si128((long long) w)));
        const __m512i sh = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28);
        return _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srlv_epi32(v, sh), _mm512_set1_epi32(15)));
    }
    uint32_t w0 = 0, w1 = 0;
    std::memcpy(&w0, c + (size_t) e * B / 8, B);
    std::memcpy(&w1, c + (size_t) (e + 8) * B / 8, B);
    const __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi32((int) w0)), _mm256_set1_epi32((int) w1), 1);
    const __m512i sh = _mm512_setr_epi32(0, B, 2 * B, 3 * B, 4 * B, 5 * B, 6 * B, 7 * B, 0, B, 2 * B, 3 * B, 4 * B, 5 * B, 6 * B, 7 * B);
    return _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srlv_epi32(v, sh), _mm512_set1_epi32((1 << B) - 1)));
}

// x̂ of one rot token (codes | f16 scales | u8 zero-points), 16 channels per register.
template <int R, int B> TC_AVX512 inline void decode_rot(const uint8_t * blk, int group, __m512 * x) {
    constexpr int D = 16 * R;
    const int ng = D / group;
    const uint8_t * sc = blk + (size_t) D * B / 8, * zp = sc + 2 * ng;
    for (int r = 0; r < R; r++) {
        const int g = 16 * r / group;
        uint16_t h;
        std::memcpy(&h, sc + 2 * g, 2);
        const float s = _cvtsh_ss(h);
        x[r] = _mm512_fmsub_ps(codes16<B>(blk, 16 * r), _mm512_set1_ps(s), _mm512_set1_ps(s * (float) zp[g]));
    }
}

// The transposing reduction tree: 16 vectors in, one out, lane l = Σ lanes of a[order⁻¹(l)].
TC_AVX512 inline __m512 reduce16_tree(const __m512 * a) {
    __m512 b[8], c[4], d[2];
    for (int i = 0; i < 8; i++)
        b[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0x44), _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0xEE));
    for (int i = 0; i < 4; i++)
        c[i] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0x88), _mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0xDD));
    for (int i = 0; i < 2; i++)
        d[i] = _mm512_add_ps(_mm512_shuffle_ps(c[2 * i], c[2 * i + 1], 0x88), _mm512_shuffle_ps(c[2 * i], c[2 * i + 1], 0xDD));
    return _mm512_add_ps(_mm512_shuffle_ps(d[0], d[1], 0x88), _mm512_shuffle_ps(d[0], d[1], 0xDD));
}

// The lane order of the tree, found by feeding it a[j] = (j, 0, ..., 0).
TC_AVX512 __m512i reduce16_order() {
    __m512 v[16];
    for (int j = 0; j < 16; j++) v[j] = _mm512_mask_mov_ps(_mm512_setzero_ps(), 1, _mm512_set1_ps((float) j));
    alignas(64) float out[16];
    _mm512_store_ps(out, reduce16_tree(v));
    alignas(64) int32_t idx[16];
    for (int l = 0; l < 16; l++) idx[(int) out[l]] = l;  // tree lane l holds Σ a[out[l]]
    return _mm512_load_si512(idx);
}

// Lane j of the result = Σ lanes of a[j].
TC_AVX512 inline __m512 reduce16(const __m512 * a) {
    static const __m512i order = reduce16_order();
    return _mm512_permutexvar_ps(order, reduce16_tree(a));
}

// A stored → reconstructed channel permutation in registers: output register o gathers its lanes from
// register pairs (2p, 2p+1) with permutex2var (index & 31) under a mask per pair. Identity when unset.
template <int R> struct perm_tables {
    bool on = false;
    __m512i pi[R];
    __mmask16 pm[R][R / 2 > 0 ? R / 2 : 1];
    // perm: stored channel c holds rotated channel perm[c]; reconstructed channel e comes from inv[e]
    TC_AVX512 void build(const int32_t * perm, std::vector<int32_t> & inv) {
        constexpr int D = 16 * R;
        inv.resize((size_t) D);
        for (int d = 0; d < D; d++) inv[(size_t) perm[d]] = d;
        for (int o = 0; o < R; o++) {
            alignas(64) int32_t ii[16];
            for (int l = 0; l < 16; l++) ii[l] = inv[(size_t) (16 * o + l)];
            pi[o] = _mm512_and_si512(_mm512_load_si512(ii), _mm512_set1_epi32(31));
            for (int p = 0; p < (R + 1) / 2; p++) {
                __mmask16 m = 0;
                for (int l = 0; l < 16; l++) if (ii[l] >> 5 == p) m |= (__mmask16) (1u << l);
                pm[o][p] = m;
            }
        }
        on = true;
    }
    TC_AVX512 inline void apply(__m512 * x) const {
        if (!on) return;
        __m512 y[R];
        for (int o = 0; o < R; o++) {
            __m512 r = _mm512_setzero_ps();
            for (int p = 0; p < (R + 1) / 2; p++) {
                const __m512 hi = 2 * p + 1 < R ? x[2 * p + 1] : x[2 * p];
                r = _mm512_mask_mov_ps(r, pm[o][p], _mm512_permutex2var_ps(x[2 * p], pi[o], hi));
            }
            y[o] = r;
        }
        for (int o = 0; o < R; o++) x[o] = y[o];
    }
};

// ---- pre-RoPE keys, 16 consecutive positions at a time, token-transposed: Y[e] holds channel e of the 16 keys
// (one lane per token), so the permutation is a choice of destination, the FWHT is butterflies between
// registers (no in-register shuffles), RoPE takes its angles for the whole block from one p0 row and a
// step table, and q·k needs no reduction. Used for full blocks of one run of positions with 2- or 4-bit
// codes (a channel's code never straddles a 32-bit word); other blocks take the per-token path.

// Unnormalized Walsh–Hadamard transform across D lane-vectors, three stages per pass (radix 8).
template <int S, int K> TC_AVX512 inline void fwht_lanes_pass(__m512 * Y) {  // strides S, 2S, .. (K/2)·S
#pragma GCC unroll 16
    for (int off = 0; off < S; off++) {
        __m512 x[K];
        for (int e = 0; e < K; e++) x[e] = Y[off + e * S];
        butterflies<K>(x);
        for (int e = 0; e < K; e++) Y[off + e * S] = x[e];
    }
}
template <int D, int S = 1> TC_AVX512 inline void fwht_lanes(__m512 * Y) {
    if constexpr (S < D) {
        constexpr int K = D / S >= 8 ? 8 : D / S;
        for (int base = 0; base < D; base += S * K) fwht_lanes_pass<S, K>(Y + base);
        fwht_lanes<D, S * K>(Y);
    }
}

// out[h·n_all + t] = q_h·Y(t) for NH query heads (rows of q, D apart), the 16 tokens' scores at once.
template <int NH, int D> TC_AVX512 inline void dots_lanes(const __m512 * Y, const float * q, float * out, size_t n_all) {
    __m512 acc[NH];
    for (int h = 0; h < NH; h++) acc[h] = _mm512_setzero_ps();
#pragma GCC unroll 8
    for (int e = 0; e < D; e++) {
        const __m512 y = Y[e];
        for (int h = 0; h < NH; h++) acc[h] = _mm512_fmadd_ps(_mm512_set1_ps(q[(size_t) h * D + e]), y, acc[h]);
    }
    for (int h = 0; h < NH; h++) _mm512_storeu_ps(out + (size_t) h * n_all, acc[h]);
}

// Scores S[g·n_all + col + t] = QS[g]·RoPE_{p0+t}(H·Σ_s ±P_s⁻¹·x̂_s(t)) for t = 0..15. blk[sl][t]: token t's
// block in slot sl (one slot unless grouped); perm[sl]: stored channel c holds rotated channel perm[c].
template <int R, int KB>
TC_AVX512 void keys_block_lanes(const uint8_t * (*blk)[16], int RG, const int32_t * const * perm, int rot_slot, int kgroup,
                                int32_t p0, const rope_tables & rt, const float * QS, int G, float * S, size_t n_all, size_t col) {
    constexpr int D = 16 * R, NW = D * KB / 32, NF = D / 2;
    static_assert(32 % KB == 0, "codes must not straddle 32-bit words");
    alignas(64) __m512 Y[D];
    const int ng = D / kgroup;
    const __m512i tok_words = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32(NW));
    const __m512i mask = _mm512_set1_epi32((1 << KB) - 1);
    for (int sl = 0; sl < RG; sl++) {
        alignas(64) uint32_t T[16 * NW];
        alignas(32) uint16_t sh[D / 16][16];
        alignas(16) uint8_t zz[D / 16][16];
        for (int t = 0; t < 16; t++) {
            const uint8_t * b = blk[sl][t];
            std::memcpy(T + t * NW, b, (size_t) NW * 4);
            const uint8_t * sc = b + (size_t) D * KB / 8, * zp = sc + 2 * ng;
            for (int g = 0; g < ng; g++) {
                std::memcpy(&sh[g][t], sc + 2 * g, 2);
                zz[g][t] = zp[g];
            }
        }
        __m512i V[NW];
        for (int w = 0; w < NW; w++) V[w] = _mm512_i32gather_epi32(_mm512_add_epi32(tok_words, _mm512_set1_epi32(w)), T, 4);
        const bool neg = sl > 0 && coded_attn::rot_sign_negative(rot_slot, sl);
        const int32_t * pm = perm[sl];
        __m512 sv[D / 16], szv[D / 16];
        for (int g = 0; g < ng; g++) {
            sv[g] = _mm512_cvtph_ps(_mm256_load_si256((const __m256i *) sh[g]));
            szv[g] = _mm512_mul_ps(sv[g], _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_load_si128((const __m128i *) zz[g]))));
        }
        alignas(64) __m512 X[D];  // stored channel order
#pragma GCC unroll 16
        for (int w = 0; w < NW; w++) {
#pragma GCC unroll 16
            for (int k = 0; k < 32 / KB; k++) {
                const int c = w * (32 / KB) + k, g = c / kgroup;
                const __m512i code = _mm512_and_si512(_mm512_srli_epi32(V[w], KB * k), mask);
                X[c] = _mm512_fmsub_ps(_mm512_cvtepi32_ps(code), sv[g], szv[g]);
            }
        }
        if (sl == 0) {
            if (pm) for (int c = 0; c < D; c++) Y[pm[c]] = X[c];
            else std::memcpy((void *) Y, (const void *) X, sizeof(X));
        } else {
            for (int c = 0; c < D; c++) {
                const int e = pm ? pm[c] : c;
                Y[e] = neg ? _mm512_sub_ps(Y[e], X[c]) : _mm512_add_ps(Y[e], X[c]);
            }
        }
    }
    fwht_lanes<D>(Y);
    // angles of p0 (two-level table), then per frequency the 16 steps: cos/sin((p0 + t)·θ_i)
    alignas(64) float C0[NF], S0[NF];
    {
        const int W = rt.W, e_step = rt.style == ROPE_STYLE_NORM ? 2 : 1, e_off = rt.style == ROPE_STYLE_NORM ? 1 : 0;
        const float * lc = rt.lo_c.data() + (size_t) (p0 & 255) * W, * ls = rt.lo_s.data() + (size_t) (p0 & 255) * W;
        const float * hc = rt.hi_c.data() + (size_t) (p0 >> 8) * W, * hs = rt.hi_s.data() + (size_t) (p0 >> 8) * W;
        for (int i = 0; i < NF; i++) {
            const int e = e_step * i + e_off;
            C0[i] = hc[e] * lc[e] - hs[e] * ls[e];
            S0[i] = hs[e] * lc[e] + hc[e] * ls[e];
        }
    }
    const float * tc = rt.t16_c.data(), * ts = rt.t16_s.data();
    const bool norm = rt.style == ROPE_STYLE_NORM;
#pragma GCC unroll 8
    for (int i = 0; i < NF; i++) {
        const __m512 ct = _mm512_loadu_ps(tc + 16 * i), st = _mm512_loadu_ps(ts + 16 * i);
        const __m512 c0 = _mm512_set1_ps(C0[i]), s0 = _mm512_set1_ps(S0[i]);
        const __m512 C = _mm512_fnmadd_ps(s0, st, _mm512_mul_ps(c0, ct)), Sn = _mm512_fmadd_ps(c0, st, _mm512_mul_ps(s0, ct));
        const int a = norm ? 2 * i : i, b = norm ? 2 * i + 1 : i + NF;
        const __m512 x0 = Y[a], x1 = Y[b];
        Y[a] = _mm512_fmsub_ps(x0, C, _mm512_mul_ps(x1, Sn));
        Y[b] = _mm512_fmadd_ps(x0, Sn, _mm512_mul_ps(x1, C));
    }
    for (int g0 = 0; g0 < G; g0 += 8) {
        float * out = S + (size_t) g0 * n_all + col;
        const float * q = QS + (size_t) g0 * D;
        switch (std::min(8, G - g0)) {
            case 1: dots_lanes<1, D>(Y, q, out, n_all); break;
            case 2: dots_lanes<2, D>(Y, q, out, n_all); break;
            case 3: dots_lanes<3, D>(Y, q, out, n_all); break;
            case 4: dots_lanes<4, D>(Y, q, out, n_all); break;
            case 5: dots_lanes<5, D>(Y, q, out, n_all); break;
            case 6: dots_lanes<6, D>(Y, q, out, n_all); break;
            case 7: dots_lanes<7, D>(Y, q, out, n_all); break;
            default: dots_lanes<8, D>(Y, q, out, n_all); break;
        }
    }
}

struct coded_scratch {
    std::vector<float> s;       // [G][n_all] scores, then probabilities
    std::vector<float> kbuf;    // [16][D] reconstructed keys of one block
    std::vector<float> vbuf;    // [16][DV] decoded values of one block
    std::vector<float> qs;      // [G][D] queries for the quantized keys (scaled; rotated for post-RoPE)
    std::vector<float> acc;     // [G][DV] rotated-value accumulators, then f16-token accumulators
    std::vector<float> acc16;
    std::vector<int32_t> pidx;  // [R][16] inverse permutation indices
    std::vector<const f16_t *> v16;
    std::vector<float> inv_sum;
};

template <int R, int KB, int VB>
TC_AVX512 void coded_avx512(int G, float scale, const float * q_rows, int32_t qpos, const kv_head_view & hv, float * out_rows,
                            const kv_group_probs * probs) {
    constexpr int D = 16 * R;
    const kv_coded_view & c = *hv.coded;
    const kv_storage_config & st = *c.st;
    const bool pre = !st.post_rope;
    const int kgroup = kv_codec_group(KV_CODEC_ROT2, D, c.kp.group), vgroup = kv_codec_group(KV_CODEC_ROT2, D, c.vp.group);
    thread_local coded_scratch sc;
    thread_local rope_tables rt;

    int32_t n16 = 0;
    for (int32_t sg = 0; sg < hv.n_seg; sg++) n16 += hv.seg[sg].n;
    const int32_t nq = c.count_le(qpos);
    const size_t n_all = (size_t) n16 + (size_t) nq + 16;
    sc.s.resize((size_t) G * n_all);
    sc.kbuf.assign((size_t) 16 * D, 0.0f);
    sc.vbuf.resize((size_t) 16 * D);
    sc.qs.resize((size_t) G * D);
    sc.acc.assign((size_t) G * D, 0.0f);
    sc.acc16.assign((size_t) G * D, 0.0f);
    sc.v16.clear();
    // plain pointers: thread_local members re-read in the loops would cost a TLS lookup each time
    float * const S = sc.s.data(), * const KBUF = sc.kbuf.data(), * const VBUF = sc.vbuf.data(), * const QS = sc.qs.data();
    float * const ACC = sc.acc.data(), * const ACC16 = sc.acc16.data();

    // ---- queries for the quantized keys: pre-RoPE keys come back as √D·k (unnormalized FWHT), post-RoPE
    // keys are P·H·k, so use P·H·q
    // (a grouped key rotation adds its 1/√G here: a head's key is (1/√G)·Σ_s ±H_D·P_s⁻¹·x̂_s)
    const int RG = pre ? c.rot_g : 1;
    const float qscale = pre ? scale / std::sqrt((float) D * (float) RG) : scale;
    for (int g = 0; g < G; g++) {
        const float * q = q_rows + (size_t) g * D;
        float * o = QS + (size_t) g * D;
        if (pre) {
            for (int d = 0; d < D; d++) o[d] = q[d] * qscale;
        } else {
            alignas(64) float t[D];
            __m512 x[R];
            for (int r = 0; r < R; r++) x[r] = _mm512_loadu_ps(q + 16 * r);
            fwht_regs<R>(x);
            for (int r = 0; r < R; r++) _mm512_store_ps(t + 16 * r, x[r]);
            const float s2 = qscale / std::sqrt((float) D);
            for (int d = 0; d < D; d++) o[d] = t[(size_t) (c.perm ? c.perm[d] : d)] * s2;
        }
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
                __m512 a = _mm512_setzero_ps();
                for (int d = 0; d < D; d++)
                    a = _mm512_fmadd_ps(_mm512_set1_ps(q[d]), _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *) (kt + (size_t) d * KV_TILE))), a);
                _mm512_mask_storeu_ps(S + (size_t) g * n_all + idx, (__mmask16) ((1u << m) - 1), _mm512_mul_ps(a, _mm512_set1_ps(scale)));
            }
            for (int t = 0; t < m; t++) sc.v16.push_back(h.v + (size_t) (t0 + t) * D);
            idx += (size_t) m;
        }
    }
    const size_t nv16 = idx;

    // ---- scores of the quantized keys, 16 at a time
    if (pre && nq > 0) rt.ensure(st, c.pos_at(nq - 1));
    const int W = rt.W;
    // per slot of the rotation group (one slot unless grouped): its blocks and its inverse permutation as
    // permutex2var tables
    perm_tables<R> pt[coded_attn::kMaxRotGroup];
    block_cursor kcur[coded_attn::kMaxRotGroup];
    for (int sl = 0; sl < RG; sl++) {
        const kv_coded_view & o = RG > 1 ? *c.sib[sl] : c;
        kcur[sl] = block_cursor(o.kpages, o.k_page_tokens, o.k_block_bytes);
        if (pre && o.perm) pt[sl].build(o.perm, sc.pidx);
    }
    int32_t run = 0;  // position cursor over the runs
    const int32_t * perms[coded_attn::kMaxRotGroup];
    for (int sl = 0; sl < RG; sl++) perms[sl] = (RG > 1 ? *c.sib[sl] : c).perm;
    for (int32_t j0 = 0; j0 < nq; j0 += 16) {
        const int m = std::min<int32_t>(16, nq - j0);
        if constexpr (KB == 2 || KB == 4) {
            if (pre && m == 16) {
                while (j0 >= c.runs[run].first + c.runs[run].n) run++;
                if (j0 + 15 < c.runs[run].first + c.runs[run].n) {  // 16 consecutive positions
                    const uint8_t * blk[coded_attn::kMaxRotGroup][16];
                    for (int sl = 0; sl < RG; sl++)
                        for (int t = 0; t < 16; t++) blk[sl][t] = kcur[sl].next();
                    keys_block_lanes<R, KB>(blk, RG, perms, c.rot_slot, kgroup, c.runs[run].pos + (j0 - c.runs[run].first), rt, QS, G, S, n_all,
                                            nv16 + (size_t) j0);
                    continue;
                }
            }
        }
        for (int t = 0; t < m; t++) {
            __m512 x[R];
            decode_rot<R, KB>(kcur[0].next(), kgroup, x);
            if (pre) {
                pt[0].apply(x);
                for (int sl = 1; sl < RG; sl++) {  // grouped: Σ_s ±P_s⁻¹·x̂_s (slot 0's sign is +), then one FWHT
                    __m512 u[R];
                    decode_rot<R, KB>(kcur[sl].next(), kgroup, u);
                    pt[sl].apply(u);
                    const bool neg = coded_attn::rot_sign_negative(c.rot_slot, sl);
                    for (int r = 0; r < R; r++) x[r] = neg ? _mm512_sub_ps(x[r], u[r]) : _mm512_add_ps(x[r], u[r]);
                }
                fwht_regs<R>(x);
                const int32_t j = j0 + t;
                while (j >= c.runs[run].first + c.runs[run].n) run++;
                const int32_t p = c.runs[run].pos + (j - c.runs[run].first);
                const float * lc = rt.lo_c.data() + (size_t) (p & 255) * W, * ls = rt.lo_s.data() + (size_t) (p & 255) * W;
                const float * hc = rt.hi_c.data() + (size_t) (p >> 8) * W, * hs = rt.hi_s.data() + (size_t) (p >> 8) * W;
                if (st.rope == ROPE_STYLE_NORM) {
                    for (int r = 0; r < R; r++) {
                        const __m512 ca = _mm512_loadu_ps(hc + 16 * r), sa = _mm512_loadu_ps(hs + 16 * r);
                        const __m512 cb = _mm512_loadu_ps(lc + 16 * r), sb = _mm512_loadu_ps(ls + 16 * r);
                        const __m512 C = _mm512_fnmadd_ps(sa, sb, _mm512_mul_ps(ca, cb)), S = _mm512_fmadd_ps(ca, sb, _mm512_mul_ps(sa, cb));
                        x[r] = _mm512_fmadd_ps(x[r], C, _mm512_mul_ps(_mm512_permute_ps(x[r], 0xB1), S));
                    }
                } else {
                    for (int r = 0; r < R / 2; r++) {
                        const __m512 ca = _mm512_loadu_ps(hc + 16 * r), sa = _mm512_loadu_ps(hs + 16 * r);
                        const __m512 cb = _mm512_loadu_ps(lc + 16 * r), sb = _mm512_loadu_ps(ls + 16 * r);
                        const __m512 C = _mm512_fnmadd_ps(sa, sb, _mm512_mul_ps(ca, cb)), S = _mm512_fmadd_ps(ca, sb, _mm512_mul_ps(sa, cb));
                        const __m512 x0 = x[r], x1 = x[r + R / 2];
                        x[r] = _mm512_fmsub_ps(x0, C, _mm512_mul_ps(x1, S));
                        x[r + R / 2] = _mm512_fmadd_ps(x0, S, _mm512_mul_ps(x1, C));
                    }
                }
            }
            for (int r = 0; r < R; r++) _mm512_storeu_ps(KBUF + (size_t) t * D + 16 * r, x[r]);
        }
        for (int g = 0; g < G; g++) {
            const float * q = QS + (size_t) g * D;
            __m512 qv[R];
            for (int r = 0; r < R; r++) qv[r] = _mm512_loadu_ps(q + 16 * r);
            __m512 a[16];
            // rows past m hold the previous block's keys (or zeros): finite, and masked out below
            for (int t = 0; t < 16; t++) {
                __m512 s = _mm512_mul_ps(qv[0], _mm512_loadu_ps(KBUF + (size_t) t * D));
                for (int r = 1; r < R; r++) s = _mm512_fmadd_ps(qv[r], _mm512_loadu_ps(KBUF + (size_t) t * D + 16 * r), s);
                a[t] = s;
            }
            _mm512_mask_storeu_ps(S + (size_t) g * n_all + nv16 + (size_t) j0, (__mmask16) ((1u << m) - 1), reduce16(a));
        }
    }
    const size_t n_vis = nv16 + (size_t) nq;

    // ---- softmax and p·V
    std::vector<float> & inv_sum = sc.inv_sum;
    inv_sum.resize((size_t) G);
    for (int g = 0; g < G; g++) {
        float * sg = S + (size_t) g * n_all;
        __m512 vmx = _mm512_set1_ps(-INFINITY);
        size_t i = 0;
        for (; i + 16 <= n_vis; i += 16) vmx = _mm512_max_ps(vmx, _mm512_loadu_ps(sg + i));
        float mx = _mm512_reduce_max_ps(vmx);
        for (; i < n_vis; i++) mx = std::max(mx, sg[i]);
        const float sum = exp_sub_sum(sg, (int64_t) n_vis, mx);
        inv_sum[(size_t) g] = sum > 0 ? 1.0f / sum : 0.0f;
    }
    if (probs) kv_group_probs_fill(*probs, S, n_all, G, inv_sum.data(), n16, (int32_t) nv16, c.n, nq);
    for (size_t i = 0; i < nv16; i++) {
        __m512 v[R];
        for (int r = 0; r < R; r++) v[r] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *) (sc.v16[i] + 16 * r)));
        for (int g = 0; g < G; g++) {
            const __m512 p = _mm512_set1_ps(S[(size_t) g * n_all + i]);
            float * a = ACC16 + (size_t) g * D;
            for (int r = 0; r < R; r++) _mm512_storeu_ps(a + 16 * r, _mm512_fmadd_ps(p, v[r], _mm512_loadu_ps(a + 16 * r)));
        }
    }
    block_cursor vcur(c.vpages, c.v_page_tokens, c.v_block_bytes);
    for (int32_t j0 = 0; j0 < nq; j0 += 16) {
        const int m = std::min<int32_t>(16, nq - j0);
        for (int t = 0; t < m; t++) {
            __m512 x[R];
            decode_rot<R, VB>(vcur.next(), vgroup, x);
            for (int r = 0; r < R; r++) _mm512_storeu_ps(VBUF + (size_t) t * D + 16 * r, x[r]);
        }
        for (int g = 0; g < G; g++) {
            const float * p = S + (size_t) g * n_all + nv16 + (size_t) j0;
            float * a = ACC + (size_t) g * D;
            __m512 ac[R];
            for (int r = 0; r < R; r++) ac[r] = _mm512_loadu_ps(a + 16 * r);
            for (int t = 0; t < m; t++) {
                const __m512 pv = _mm512_set1_ps(p[t]);
                for (int r = 0; r < R; r++) ac[r] = _mm512_fmadd_ps(pv, _mm512_loadu_ps(VBUF + (size_t) t * D + 16 * r), ac[r]);
            }
            for (int r = 0; r < R; r++) _mm512_storeu_ps(a + 16 * r, ac[r]);
        }
    }
    const __m512 vn = _mm512_set1_ps(1.0f / std::sqrt((float) D));
    for (int g = 0; g < G; g++) {
        __m512 x[R];
        for (int r = 0; r < R; r++) x[r] = _mm512_loadu_ps(ACC + (size_t) g * D + 16 * r);
        fwht_regs<R>(x);  // Σ p·H·v = H·Σ p·v; H self-inverse (normalized below)
        const __m512 is = _mm512_set1_ps(inv_sum[(size_t) g]);
        for (int r = 0; r < R; r++) {
            const __m512 o = _mm512_fmadd_ps(x[r], vn, _mm512_loadu_ps(ACC16 + (size_t) g * D + 16 * r));
            _mm512_storeu_ps(out_rows + (size_t) g * D + 16 * r, _mm512_mul_ps(o, is));
        }
    }
}

struct fused_avx512 {
    template <int R, int KB, int VB>
    static void run(int G, float scale, const float * q, int32_t qpos, const kv_head_view & hv, float * out, const kv_group_probs * pr) {
        coded_avx512<R, KB, VB>(G, scale, q, qpos, hv, out, pr);
    }
};

} // namespace

bool attend_group_coded_avx512(int D, int DV, float scale, const float * q_rows, int G, int32_t qpos, const kv_head_view & hv, float * out_rows,
                               const kv_group_probs * probs) {
    if (!coded_attn::fused_path_applies(D, DV, 16, hv)) return false;
    return coded_attn::dispatch_fused<fused_avx512, 16>(D, G, scale, q_rows, qpos, hv, out_rows, probs);
}

} // namespace core

#else

namespace core {
bool attend_group_coded_avx512(int, int, float, const float *, int, int32_t, const kv_head_view &, float *, const kv_group_probs *) { return false; }
} // namespace core

#endif
