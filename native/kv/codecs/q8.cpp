// q8 KV codec: llama.cpp's q8_0 block per token — blocks of 32 (or dim) elements, f16 scale
// d = max|x| / 127 followed by int8 codes, x̂ = d·c (8.5 bits per element at 32).
#include <cmath>
#include <cstring>

#include "../../tensor/ggml-type.h"
#include "kv-codec.h"

namespace core {

namespace {
int blk_len(const kv_codec_params & p) { return kv_codec_group(KV_CODEC_Q8, p.dim, 0); }
int block_tokens(const kv_codec_params &) { return 1; }
size_t block_bytes(const kv_codec_params & p) { return (size_t) (p.dim / blk_len(p)) * (2 + blk_len(p)); }
double code_bytes(const kv_codec_params & p) { return p.dim; }
double meta_bytes(const kv_codec_params & p) { return 2.0 * (p.dim / blk_len(p)); }

void encode(const kv_codec_params & p, const float * x, uint8_t * out) {
    const int B = blk_len(p);
    for (int b0 = 0; b0 < p.dim; b0 += B, out += 2 + B) {
        float amax = 0;
        for (int i = 0; i < B; i++) amax = std::max(amax, std::fabs(x[b0 + i]));
        const float d = amax / 127.0f, id = d ? 1.0f / d : 0.0f;
        const f16_t dh = f32_to_f16(d);
        std::memcpy(out, &dh, 2);
        for (int i = 0; i < B; i++) out[2 + i] = (uint8_t) (int8_t) std::lround(x[b0 + i] * id);
    }
}
void decode(const kv_codec_params & p, const uint8_t * blk, int, float * y) {
    const int B = blk_len(p);
    for (int b0 = 0; b0 < p.dim; b0 += B, blk += 2 + B) {
        f16_t dh;
        std::memcpy(&dh, blk, 2);
        const float d = f16_to_f32(dh);
        for (int i = 0; i < B; i++) y[b0 + i] = d * (float) (int8_t) blk[2 + i];
    }
}
float dot(const kv_codec_params & p, const uint8_t * blk, int, const float * q) {
    const int B = blk_len(p);
    float r = 0;
    for (int b0 = 0; b0 < p.dim; b0 += B, blk += 2 + B) {
        f16_t dh;
        std::memcpy(&dh, blk, 2);
        float s = 0;
        for (int i = 0; i < B; i++) s += q[b0 + i] * (float) (int8_t) blk[2 + i];
        r += f16_to_f32(dh) * s;
    }
    return r;
}
void axpy(const kv_codec_params & p, const uint8_t * blk, int, float w, float * acc) {
    const int B = blk_len(p);
    for (int b0 = 0; b0 < p.dim; b0 += B, blk += 2 + B) {
        f16_t dh;
        std::memcpy(&dh, blk, 2);
        const float wd = w * f16_to_f32(dh);
        for (int i = 0; i < B; i++) acc[b0 + i] += wd * (float) (int8_t) blk[2 + i];
    }
}
} // namespace

const kv_codec_traits KV_CODEC_TRAITS_Q8 = {"q8", 8, false, block_tokens, block_bytes, code_bytes, meta_bytes, encode, decode, dot, axpy};

} // namespace core
