// KIVI codecs kivi2/kivi4 (ALGORITHMS.md §4.1), a standalone baseline for FULL heads (§6.2 C7).
// Asymmetric min/max without clipping, zero = the float minimum: x̂ = code·scale + min (f16 each).
//   keys:   per channel over a block of `group` tokens: scales f16 [dim] | mins f16 [dim] |
//           codes [group][dim·b/8]  (4·dim/group bytes of metadata per token)
//   values: per token, groups of `group` channels: codes [dim·b/8] | scales f16 [ng] | mins f16 [ng]
#include <algorithm>
#include <cmath>
#include <cstring>

#include "../../tensor/ggml-type.h"
#include "kv-codec.h"

namespace core {

namespace {
inline float ld16(const uint8_t * p) { f16_t h; std::memcpy(&h, p, 2); return f16_to_f32(h); }
inline void st16(uint8_t * p, float x) { const f16_t h = f32_to_f16(x); std::memcpy(p, &h, 2); }

template <int B> struct kivi {
    static int cgrp(const kv_codec_params & p) { return kv_codec_group(KV_CODEC_KIVI2, p.dim, p.group); }
    static size_t cbytes(const kv_codec_params & p) { return (size_t) p.dim * B / 8; }
    static int block_tokens(const kv_codec_params & p) { return p.key ? p.group : 1; }
    static size_t block_bytes(const kv_codec_params & p) {
        return p.key ? (size_t) p.dim * 4 + (size_t) p.group * cbytes(p) : cbytes(p) + (size_t) (p.dim / cgrp(p)) * 4;
    }
    static double code_bytes(const kv_codec_params & p) { return (double) cbytes(p); }
    static double meta_bytes(const kv_codec_params & p) { return p.key ? 4.0 * p.dim / p.group : 4.0 * (p.dim / cgrp(p)); }

    // quantizes n values x[i·stride] with the group's min and range into codes at element e0 + i·estride
    static void quant(const float * x, int n, int stride, uint8_t * codes_base, size_t row_bytes, int e0, bool rows, uint8_t * sm) {
        const int qmax = (1 << B) - 1;
        float mn = x[0], mx = x[0];
        for (int i = 1; i < n; i++) { mn = std::min(mn, x[(size_t) i * stride]); mx = std::max(mx, x[(size_t) i * stride]); }
        st16(sm, (mx - mn) / (float) qmax);
        st16(sm + 2, mn);
        const float s = ld16(sm), m = ld16(sm + 2);
        for (int i = 0; i < n; i++) {
            const int c = s > 0 ? std::clamp((int) std::nearbyint((x[(size_t) i * stride] - m) / s), 0, qmax) : 0;
            if (rows) kv_code_put(codes_base + (size_t) i * row_bytes, e0, B, (uint32_t) c);
            else kv_code_put(codes_base, e0 + i, B, (uint32_t) c);
        }
    }
    static void encode(const kv_codec_params & p, const float * x, uint8_t * out) {
        std::memset(out, 0, block_bytes(p));
        if (p.key) {
            uint8_t * codes = out + (size_t) p.dim * 4;
            uint8_t sm[4];
            for (int c = 0; c < p.dim; c++) {
                quant(x + c, p.group, p.dim, codes, cbytes(p), c, true, sm);
                std::memcpy(out + 2 * c, sm, 2);
                std::memcpy(out + 2 * p.dim + 2 * c, sm + 2, 2);
            }
        } else {
            const int G = cgrp(p), ng = p.dim / G;
            for (int g = 0; g < ng; g++) {
                uint8_t sm[4];
                quant(x + g * G, G, 1, out, 0, g * G, false, sm);
                std::memcpy(out + cbytes(p) + 2 * g, sm, 2);
                std::memcpy(out + cbytes(p) + 2 * ng + 2 * g, sm + 2, 2);
            }
        }
    }
    // (scale, min) of element c of token j and its code row
    static void at(const kv_codec_params & p, const uint8_t * blk, int j, int c, const uint8_t *& row, float & s, float & m) {
        if (p.key) {
            row = blk + (size_t) p.dim * 4 + (size_t) j * cbytes(p);
            s = ld16(blk + 2 * c);
            m = ld16(blk + 2 * p.dim + 2 * c);
        } else {
            const int G = cgrp(p), ng = p.dim / G;
            row = blk;
            s = ld16(blk + cbytes(p) + 2 * (c / G));
            m = ld16(blk + cbytes(p) + 2 * ng + 2 * (c / G));
        }
    }
    static void decode(const kv_codec_params & p, const uint8_t * blk, int j, float * y) {
        for (int c = 0; c < p.dim; c++) {
            const uint8_t * row; float s, m;
            at(p, blk, j, c, row, s, m);
            y[c] = (float) kv_code_get(row, c, B) * s + m;
        }
    }
    static float dot(const kv_codec_params & p, const uint8_t * blk, int j, const float * q) {
        float r = 0;
        for (int c = 0; c < p.dim; c++) {
            const uint8_t * row; float s, m;
            at(p, blk, j, c, row, s, m);
            r += q[c] * ((float) kv_code_get(row, c, B) * s + m);
        }
        return r;
    }
    static void axpy(const kv_codec_params & p, const uint8_t * blk, int j, float w, float * acc) {
        for (int c = 0; c < p.dim; c++) {
            const uint8_t * row; float s, m;
            at(p, blk, j, c, row, s, m);
            acc[c] += w * ((float) kv_code_get(row, c, B) * s + m);
        }
    }
    static constexpr kv_codec_traits traits(const char * name) {
        return {name, B, false, block_tokens, block_bytes, code_bytes, meta_bytes, encode, decode, dot, axpy};
    }
};
} // namespace

const kv_codec_traits KV_CODEC_TRAITS_KIVI2 = kivi<2>::traits("kivi2");
const kv_codec_traits KV_CODEC_TRAITS_KIVI4 = kivi<4>::traits("kivi4");

} // namespace core
