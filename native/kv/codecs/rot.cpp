// RotateKV codecs rot2/rot3/rot4 (ALGORITHMS.md §3.4): per-token asymmetric quantization in groups of
// `group` consecutive channels of the already rotated (and, for keys, permuted) vector, with clip ratio c:
//   xmax = c·max, xmin = c·min, scale = (xmax − xmin)/(2^b − 1) (rounded to f16, used as stored),
//   zp = round(−xmin/scale) (u8), code = clamp(round(x/scale) + zp, 0, 2^b − 1), x̂ = scale·(code − zp).
// 2^b − 1 levels for every b (the reference code's 3-bit `bit**2 − 1` bug is not reproduced).
// Layout per token: codes [dim·b/8] | scales f16 [dim/group] | zero-points u8 [dim/group].
#include <algorithm>
#include <cmath>
#include <cstring>

#include "../../tensor/ggml-type.h"
#include "kv-codec.h"

namespace core {

namespace {
template <int B> struct rot {
    static int grp(const kv_codec_params & p) { return kv_codec_group(KV_CODEC_ROT2, p.dim, p.group); }
    static int block_tokens(const kv_codec_params &) { return 1; }
    static size_t cbytes(const kv_codec_params & p) { return (size_t) p.dim * B / 8; }
    static size_t block_bytes(const kv_codec_params & p) { return cbytes(p) + (size_t) (p.dim / grp(p)) * 3; }
    static double code_bytes(const kv_codec_params & p) { return (double) cbytes(p); }
    static double meta_bytes(const kv_codec_params & p) { return 3.0 * (p.dim / grp(p)); }

    static void encode(const kv_codec_params & p, const float * x, uint8_t * out) {
        const int G = grp(p), ng = p.dim / G, qmax = (1 << B) - 1;
        std::memset(out, 0, block_bytes(p));
        uint8_t * sc = out + cbytes(p);
        uint8_t * zp = out + cbytes(p) + 2 * ng;
        for (int g = 0; g < ng; g++) {
            const float * xg = x + g * G;
            float mn = xg[0], mx = xg[0];
            for (int i = 1; i < G; i++) { mn = std::min(mn, xg[i]); mx = std::max(mx, xg[i]); }
            const float xmax = p.clip * mx, xmin = p.clip * mn;
            f16_t sh = f32_to_f16((xmax - xmin) / (float) qmax);
            if (f16_to_f32(sh) <= 0.0f) sh = 1;  // zero-range group: smallest positive f16
            const float s = f16_to_f32(sh);
            const int z = std::clamp((int) std::nearbyint(-xmin / s), 0, 255);
            std::memcpy(sc + 2 * g, &sh, 2);
            zp[g] = (uint8_t) z;
            for (int i = 0; i < G; i++) {
                const int c = std::clamp((int) std::nearbyint(xg[i] / s) + z, 0, qmax);
                kv_code_put(out, g * G + i, B, (uint32_t) c);
            }
        }
    }
    static float scale(const kv_codec_params & p, const uint8_t * blk, int g) {
        f16_t sh;
        std::memcpy(&sh, blk + cbytes(p) + 2 * g, 2);
        return f16_to_f32(sh);
    }
    static void decode(const kv_codec_params & p, const uint8_t * blk, int, float * y) {
        const int G = grp(p), ng = p.dim / G;
        const uint8_t * zp = blk + cbytes(p) + 2 * ng;
        for (int g = 0; g < ng; g++) {
            const float s = scale(p, blk, g), z = (float) zp[g];
            for (int i = 0; i < G; i++) y[g * G + i] = s * ((float) kv_code_get(blk, g * G + i, B) - z);
        }
    }
    static float dot(const kv_codec_params & p, const uint8_t * blk, int, const float * q) {
        const int G = grp(p), ng = p.dim / G;
        const uint8_t * zp = blk + cbytes(p) + 2 * ng;
        float r = 0;
        for (int g = 0; g < ng; g++) {
            float sc = 0, sq = 0;
            for (int i = 0; i < G; i++) {
                sc += q[g * G + i] * (float) kv_code_get(blk, g * G + i, B);
                sq += q[g * G + i];
            }
            r += scale(p, blk, g) * (sc - (float) zp[g] * sq);
        }
        return r;
    }
    static void axpy(const kv_codec_params & p, const uint8_t * blk, int, float w, float * acc) {
        const int G = grp(p), ng = p.dim / G;
        const uint8_t * zp = blk + cbytes(p) + 2 * ng;
        for (int g = 0; g < ng; g++) {
            const float ws = w * scale(p, blk, g), b = -ws * (float) zp[g];
            for (int i = 0; i < G; i++) acc[g * G + i] += ws * (float) kv_code_get(blk, g * G + i, B) + b;
        }
    }
    static constexpr kv_codec_traits traits(const char * name) {
        return {name, B, true, block_tokens, block_bytes, code_bytes, meta_bytes, encode, decode, dot, axpy};
    }
};
} // namespace

const kv_codec_traits KV_CODEC_TRAITS_ROT2 = rot<2>::traits("rot2");
const kv_codec_traits KV_CODEC_TRAITS_ROT3 = rot<3>::traits("rot3");
const kv_codec_traits KV_CODEC_TRAITS_ROT4 = rot<4>::traits("rot4");

} // namespace core
