// Helpers shared by the fused coded-attention kernels (attention-codec-avx512.cpp, attention-codec-avx2.cpp):
// RoPE tables for pre-RoPE rot keys and a cursor over a coded head's per-token blocks. Plain C++ (no SIMD),
// included by each kernel's translation unit.
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

#include "../../kv/kv-cache.h"

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

// Walks the blocks of a coded head's pages in token order (one token per block for rot codecs) without
// a division per token.
struct block_cursor {
    void * const * pages;
    int32_t per_page;
    size_t bytes;
    int32_t page = 0, in = 0;
    block_cursor(void * const * p, int32_t pp, size_t b) : pages(p), per_page(pp), bytes(b) {}
    const uint8_t * next() {
        const uint8_t * r = (const uint8_t *) pages[page] + (size_t) in * bytes;
        if (++in == per_page) { in = 0; page++; }
        return r;
    }
};

} // namespace coded_attn
} // namespace core
