// q4 KV codec: llama.cpp's q4_0 block per token — blocks of 32 (or dim) elements, f16 scale
// d = m / −8 where m is the element of largest magnitude (sign kept), codes c = clamp(x/d + 8.5, 0, 15)
// two per byte (element 2i in the low nibble), x̂ = d·(c − 8) (4.5 bits per element at 32).
#include <cmath>
#include <cstring>

#include "../../tensor/ggml-type.h"
#include "kv-codec.h"

namespace core {

namespace {
int blk_len(const kv_codec_params & p) { return kv_codec_group(KV_CODEC_Q4, p.dim, 0); }
int block_tokens(const kv_codec_params &) { return 1; }
size_t block_bytes(const kv_codec_params & p) { return (size_t) (p.dim / blk_len(p)) * (2 + blk_len(p) / 2); }
double code_bytes(const kv_codec_params & p) { return p.dim / 2.0; }
double meta_bytes(const kv_codec_params & p) { return 2.0 * (p.dim / blk_len(p)); }

void encode(const kv_codec_params & p, const float * x, uint8_t * out) {
    const int B = blk_len(p);
    for (int b0 = 0; b0 < p.dim; b0 += B, out += 2 + B / 2) {
        float amax = 0, m = 0;
        for (int i = 0; i < B; i++) if (std::fabs(x[b0 + i]) > amax) { amax = std::fabs(x[b0 + i]); m = x[b0 + i]; }
        const float d = m / -8.0f, id = d ? 1.0f / d : 0.0f;
        const f16_t dh = f32_to_f16(d);
        std::memcpy(out, &dh, 2);
        for (int i = 0; i < B; i += 2) {
            const int c0 = std::min(15, (int) (x[b0 + i] * id + 8.5f)), c1 = std::min(15, (int) (x[b0 + i + 1] * id + 8.5f));
            out[2 + i / 2] = (uint8_t) (c0 | (c1 << 4));
        }
    }
}
void decode(const kv_codec_params & p, const uint8_t * blk, int, float * y) {
    const int B = blk_len(p);
    for (int b0 = 0; b0 < p.dim; b0 += B, blk += 2 + B / 2) {
        f16_t dh;
        std::memcpy(&dh, blk, 2);
        const float d = f16_to_f32(dh);
        for (int i = 0; i < B; i += 2) {
            y[b0 + i] = d * (float) ((blk[2 + i / 2] & 15) - 8);
            y[b0 + i + 1] = d * (float) ((blk[2 + i / 2] >> 4) - 8);
        }
    }
}
float dot(const kv_codec_params & p, const uint8_t * blk, int, const float * q) {
    const int B = blk_len(p);
    float r = 0;
    for (int b0 = 0; b0 < p.dim; b0 += B, blk += 2 + B / 2) {
        f16_t dh;
        std::memcpy(&dh, blk, 2);
        float s = 0;
        for (int i = 0; i < B; i += 2) s += q[b0 + i] * (float) ((blk[2 + i / 2] & 15) - 8) + q[b0 + i + 1] * (float) ((blk[2 + i / 2] >> 4) - 8);
        r += f16_to_f32(dh) * s;
    }
    return r;
}
void axpy(const kv_codec_params & p, const uint8_t * blk, int, float w, float * acc) {
    const int B = blk_len(p);
    for (int b0 = 0; b0 < p.dim; b0 += B, blk += 2 + B / 2) {
        f16_t dh;
        std::memcpy(&dh, blk, 2);
        const float wd = w * f16_to_f32(dh);
        for (int i = 0; i < B; i += 2) {
            acc[b0 + i] += wd * (float) ((blk[2 + i / 2] & 15) - 8);
            acc[b0 + i + 1] += wd * (float) ((blk[2 + i / 2] >> 4) - 8);
        }
    }
}
} // namespace

const kv_codec_traits KV_CODEC_TRAITS_Q4 = {"q4", 4, false, block_tokens, block_bytes, code_bytes, meta_bytes, encode, decode, dot, axpy};

} // namespace core
