// The KV codec registry: one row per storage codec (see kv-codec.h), and the normalized FWHT.
#include "kv-codec.h"

#include "../../tensor/ggml-type.h"

#include <cmath>
#include <cstring>

namespace core {

namespace {
int f16_block_tokens(const kv_codec_params &) { return 1; }
size_t f16_block_bytes(const kv_codec_params & p) { return (size_t) p.dim * 2; }
double f16_code_bytes(const kv_codec_params & p) { return p.dim * 2.0; }
double f16_meta_bytes(const kv_codec_params &) { return 0; }
void f16_encode(const kv_codec_params & p, const float * x, uint8_t * blk) {
    for (int i = 0; i < p.dim; i++) { const f16_t h = f32_to_f16(x[i]); std::memcpy(blk + 2 * i, &h, 2); }
}
void f16_decode(const kv_codec_params & p, const uint8_t * blk, int, float * y) {
    for (int i = 0; i < p.dim; i++) { f16_t h; std::memcpy(&h, blk + 2 * i, 2); y[i] = f16_to_f32(h); }
}
float f16_dot(const kv_codec_params & p, const uint8_t * blk, int, const float * q) {
    float r = 0;
    for (int i = 0; i < p.dim; i++) { f16_t h; std::memcpy(&h, blk + 2 * i, 2); r += q[i] * f16_to_f32(h); }
    return r;
}
void f16_axpy(const kv_codec_params & p, const uint8_t * blk, int, float w, float * acc) {
    for (int i = 0; i < p.dim; i++) { f16_t h; std::memcpy(&h, blk + 2 * i, 2); acc[i] += w * f16_to_f32(h); }
}
// An f16 head uses the cache's own tiled pages; these rows serve the other side of a mixed pair
// (e.g. f16 keys with rot2 values), whose tokens leave staging together.
const kv_codec_traits KV_CODEC_TRAITS_F16 = {"f16", 16, false, f16_block_tokens, f16_block_bytes, f16_code_bytes, f16_meta_bytes,
                                             f16_encode, f16_decode, f16_dot, f16_axpy};

const kv_codec_traits * const KV_CODECS[KV_CODEC_COUNT] = {
    &KV_CODEC_TRAITS_F16, &KV_CODEC_TRAITS_Q8, &KV_CODEC_TRAITS_Q4, &KV_CODEC_TRAITS_KIVI2,
    &KV_CODEC_TRAITS_KIVI4, &KV_CODEC_TRAITS_ROT2, &KV_CODEC_TRAITS_ROT3, &KV_CODEC_TRAITS_ROT4,
};
} // namespace

const kv_codec_traits & kv_codec_get(kv_codec_type t) { return *KV_CODECS[t]; }

kv_codec_type kv_codec_find(const char * name) {
    if (!name) return KV_CODEC_COUNT;
    for (int t = 0; t < KV_CODEC_COUNT; t++) if (!std::strcmp(KV_CODECS[t]->name, name)) return (kv_codec_type) t;
    return KV_CODEC_COUNT;
}

int kv_codec_group(kv_codec_type t, int dim, int group) {
    if (t == KV_CODEC_Q8 || t == KV_CODEC_Q4) group = 32;
    if (group <= 0 || group > dim || dim % group) group = dim;
    return group;
}

void fwht_ref(float * x, int n) {
    for (int h = 1; h < n; h <<= 1) {
        for (int i = 0; i < n; i += 2 * h) {
            for (int j = i; j < i + h; j++) {
                const float a = x[j], b = x[j + h];
                x[j] = a + b;
                x[j + h] = a - b;
            }
        }
    }
    const float s = 1.0f / std::sqrt((float) n);
    for (int i = 0; i < n; i++) x[i] *= s;
}

} // namespace core
