// Helpers shared by the fused coded-attention kernels (attention-codec-avx512.cpp, attention-codec-avx2.cpp):
// RoPE tables for pre-RoPE rot keys and a cursor over a coded head's per-token blocks. Plain C++ (no SIMD),
// included by each kernel's translation unit.
#pragma once
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "../../kv/kv-cache.h"
#include "attention-codec.h"

namespace core {
namespace coded_attn {

// cos/sin of pos·θ_i for the coded keys' positions, θ_i = freq_scale · base^(−2i/n_rot) / ff_i, as the
// pre-RoPE encoder uses (rope_cache_ref), from two tables computed in double: lo[p & 255] and hi[p >> 8].
// Layout per position: W = n_rot entries for NORM (pairs adjacent: c duplicated, s as (−s, +s)) or
// n_rot/2 for NEOX (halves); both combine as C = Ca·Cb − Sa·Sb, S = Sa·Cb + Ca·Sb.
struct rope_tables {
    int n_rot = 0, W = 0;
    rope_style style = ROPE_STYLE_NORM;
    float base = 0, scale = 0;
    const float * ff = nullptr;
    std::vector<float> lo_c, lo_s, hi_c, hi_s;
    int n_hi = 0;
    // step tables for 16 consecutive positions, by frequency: t16_c[i·16 + t] = cos(t·θ_i), t16_s likewise
    // (a block of keys at p0..p0+15 gets its angles as one complex product with the p0 row)
    std::vector<float> t16_c, t16_s;

    void fill(float * c, float * s, double p) const {
        for (int i = 0; i < n_rot / 2; i++) {
            const double th = (double) scale * std::pow((double) base, -2.0 * i / n_rot) / (ff ? (double) ff[i] : 1.0);
            const double cc = std::cos(p * th), ss = std::sin(p * th);
            if (style == ROPE_STYLE_NORM) {
                c[2 * i] = c[2 * i + 1] = (float) cc;
                s[2 * i] = (float) -ss;
                s[2 * i + 1] = (float) ss;
            } else {
                c[i] = (float) cc;
                s[i] = (float) ss;
            }
        }
    }
    void ensure(const kv_storage_config & st, int32_t max_pos) {
        if (st.n_rot != n_rot || st.rope != style || st.freq_base != base || st.freq_scale != scale || st.freq_factors != ff) {
            n_rot = st.n_rot;
            style = st.rope;
            base = st.freq_base;
            scale = st.freq_scale;
            ff = st.freq_factors;
            W = style == ROPE_STYLE_NORM ? n_rot : n_rot / 2;
            lo_c.assign((size_t) 256 * W, 0.0f);
            lo_s.assign((size_t) 256 * W, 0.0f);
            for (int p = 0; p < 256; p++) fill(lo_c.data() + (size_t) p * W, lo_s.data() + (size_t) p * W, p);
            n_hi = 0;
            hi_c.clear();
            hi_s.clear();
            const int nf = n_rot / 2;
            t16_c.assign((size_t) nf * 16, 0.0f);
            t16_s.assign((size_t) nf * 16, 0.0f);
            for (int t = 0; t < 16; t++)
                for (int i = 0; i < nf; i++) {
                    const int e = style == ROPE_STYLE_NORM ? 2 * i + 1 : i;  // NORM rows: c duplicated, s as (−s, +s)
                    t16_c[(size_t) i * 16 + t] = lo_c[(size_t) t * W + e];
                    t16_s[(size_t) i * 16 + t] = lo_s[(size_t) t * W + e];
                }
        }
        const int need = (max_pos >> 8) + 1;
        if (need > n_hi) {
            hi_c.resize((size_t) need * W);
            hi_s.resize((size_t) need * W);
            for (int h = n_hi; h < need; h++) fill(hi_c.data() + (size_t) h * W, hi_s.data() + (size_t) h * W, 256.0 * h);
            n_hi = need;
        }
    }
};

// Largest key rotation group the fused kernels cover (kv_coded_view::rot_g); larger groups take the _ref.
constexpr int kMaxRotGroup = 8;

// Hadamard sign of slot s in the share of slot h: H_G[h][s] = (−1)^popcount(h & s) (Sylvester order).
inline bool rot_sign_negative(int h, int s) { return __builtin_popcount((unsigned) (h & s)) & 1; }

// Walks the blocks of a coded head's pages in token order (one token per block for rot codecs) without
// a division per token.
struct block_cursor {
    void * const * pages;
    int32_t per_page;
    size_t bytes;
    int32_t page = 0, in = 0;
    block_cursor(void * const * p = nullptr, int32_t pp = 0, size_t b = 0) : pages(p), per_page(pp), bytes(b) {}
    const uint8_t * next() {
        const uint8_t * r = (const uint8_t *) pages[page] + (size_t) in * bytes;
        if (++in == per_page) { in = 0; page++; }
        return r;
    }
};

// Whether a fused kernel with `lanes`-wide registers covers this head: rot keys and values of one token per
// block, D == DV, groups a multiple of the lane count, and full NORM/NEOX RoPE for pre-RoPE keys.
inline bool fused_path_applies(int D, int DV, int lanes, const kv_head_view & hv) {
    const kv_coded_view & c = *hv.coded;
    const kv_storage_config & st = *c.st;
    if (!c.kc->rotated || !c.vc->rotated || D != DV || c.kc->block_tokens(c.kp) != 1 || c.vc->block_tokens(c.vp) != 1) return false;
    if (c.rot_g > kMaxRotGroup) return false;
    if (kv_codec_group(KV_CODEC_ROT2, D, c.kp.group) % lanes || kv_codec_group(KV_CODEC_ROT2, DV, c.vp.group) % lanes) return false;
    return st.post_rope || (st.n_rot == D && (st.rope == ROPE_STYLE_NORM || st.rope == ROPE_STYLE_NEOX));
}

// Instantiates Kernel::run<R, KB, VB> for R = D / lanes registers per row and the key/value bit widths
// (2..4 each); false for a head size other than 32/64/128.
template <class Kernel, int LANES>
bool dispatch_fused(int D, int G, float scale, const float * q, int32_t qpos, const kv_head_view & hv, float * out, const kv_group_probs * pr) {
    const int kb = hv.coded->kc->bits, vb = hv.coded->vc->bits;
    auto by_vb = [&](auto r, auto k) {
        constexpr int R = decltype(r)::value, KB = decltype(k)::value;
        switch (vb) {
            case 2: Kernel::template run<R, KB, 2>(G, scale, q, qpos, hv, out, pr); return true;
            case 3: Kernel::template run<R, KB, 3>(G, scale, q, qpos, hv, out, pr); return true;
            case 4: Kernel::template run<R, KB, 4>(G, scale, q, qpos, hv, out, pr); return true;
            default: return false;
        }
    };
    auto by_kb = [&](auto r) {
        switch (kb) {
            case 2: return by_vb(r, std::integral_constant<int, 2>{});
            case 3: return by_vb(r, std::integral_constant<int, 3>{});
            case 4: return by_vb(r, std::integral_constant<int, 4>{});
            default: return false;
        }
    };
    switch (D) {
        case 32: return by_kb(std::integral_constant<int, 32 / LANES>{});
        case 64: return by_kb(std::integral_constant<int, 64 / LANES>{});
        case 128: return by_kb(std::integral_constant<int, 128 / LANES>{});
        default: return false;
    }
}

} // namespace coded_attn
} // namespace core
