// KV storage codecs (ALGORITHMS.md §3.4, §4.1, §6.1): how one head's keys or values are stored once they
// leave the f16 staging window. A codec turns a block of tokens (1 token for per-token codecs, `group`
// tokens for KIVI keys) of `dim` floats into bytes, and reads them back *directly from the codes* for
// attention: `dot` (q·x̂) and `axpy` (acc += w·x̂) never materialize a dequantized copy of the cache.
//
//   f16     the cache's native layout (kv-cache.h); no codec store, listed for the registry only
//   q8, q4  llama.cpp-like symmetric per-token blocks of 32 (q8_0: f16 scale + 32 int8; q4_0: f16
//           scale + 32 nibbles, x = d·(c − 8)) — 8.5 / 4.5 bits per element
//   kivi2/4 KIVI (§4.1): keys per channel over groups of `group` tokens (f16 scale + f16 min per channel
//           and group), values per token in groups of `group` channels; x = c·scale + min
//   rot2/3/4 RotateKV (§3.4): x is rotated (normalized FWHT per head, G = 1, §6.2 C1 option a) and
//           channel-permuted by the cache before encoding; per-token asymmetric groups of `group`
//           channels, clip ratio c: scale = c·(max − min)/(2^b − 1) (f16), zp = round(−c·min/scale)
//           (u8), x̂ = scale·(code − zp). Bytes per token = dim·b/8 + (dim/group)·3 (§3.7, s 2 B, z 1 B).
// Codes are a little-endian bit stream, element i at bits [i·b, (i+1)·b).
#pragma once
#include <cstddef>
#include <cstdint>

namespace core {

enum kv_codec_type : uint8_t {
    KV_CODEC_F16 = 0,
    KV_CODEC_Q8 = 1,
    KV_CODEC_Q4 = 2,
    KV_CODEC_KIVI2 = 3,
    KV_CODEC_KIVI4 = 4,
    KV_CODEC_ROT2 = 5,
    KV_CODEC_ROT3 = 6,
    KV_CODEC_ROT4 = 7,
    KV_CODEC_COUNT,
};

struct kv_codec_params {
    int dim = 0;        // head_dim (keys) or head_dim_v (values)
    int group = 32;     // channels per quantization group (KIVI keys: tokens per group); clamped to dim
    float clip = 1.0f;  // rot: clip ratio c
    bool key = true;    // KIVI quantizes keys per channel, values per token
};

struct kv_codec_traits {
    const char * name;
    int bits;                 // bits per code (16 for f16)
    bool rotated;             // the cache stores H·x (FWHT, then permutation for keys)
    // tokens per block and bytes per block (a block never straddles a page)
    int (*block_tokens)(const kv_codec_params &);
    size_t (*block_bytes)(const kv_codec_params &);
    // bytes per token that are codes vs scales/zero-points (the §3.7 split; per-channel metadata is
    // counted per token as its share of the block)
    double (*code_bytes)(const kv_codec_params &);
    double (*meta_bytes)(const kv_codec_params &);
    void (*encode)(const kv_codec_params &, const float * x /*[block_tokens][dim]*/, uint8_t * blk);
    void (*decode)(const kv_codec_params &, const uint8_t * blk, int j, float * y /*[dim]*/);
    float (*dot)(const kv_codec_params &, const uint8_t * blk, int j, const float * q /*[dim]*/);
    void (*axpy)(const kv_codec_params &, const uint8_t * blk, int j, float w, float * acc /*[dim]*/);
};

// note: call only with t < KV_CODEC_COUNT.
const kv_codec_traits & kv_codec_get(kv_codec_type t);
// nullptr-safe lookup by name ("rot2", ...); returns KV_CODEC_COUNT when unknown.
kv_codec_type kv_codec_find(const char * name);
// Effective group for a codec and dim (groups never exceed dim; q8/q4 use blocks of 32).
int kv_codec_group(kv_codec_type t, int dim, int group);

// Normalized fast Walsh–Hadamard transform in place (H = Sylvester ±1 / sqrt(n), H·H = I).
// note: call only with n a power of two.
void fwht_ref(float * x, int n);

// ---- codec implementations (one file each), referenced by the registry ------------------------------
extern const kv_codec_traits KV_CODEC_TRAITS_Q8, KV_CODEC_TRAITS_Q4, KV_CODEC_TRAITS_KIVI2, KV_CODEC_TRAITS_KIVI4,
    KV_CODEC_TRAITS_ROT2, KV_CODEC_TRAITS_ROT3, KV_CODEC_TRAITS_ROT4;

// bit-stream helpers shared by the codecs
inline uint32_t kv_code_get(const uint8_t * c, int i, int b) {
    const int o = i * b, byte = o >> 3, sh = o & 7;
    uint32_t w = c[byte];
    if (sh + b > 8) w |= (uint32_t) c[byte + 1] << 8;
    return (w >> sh) & ((1u << b) - 1);
}
inline void kv_code_put(uint8_t * c, int i, int b, uint32_t v) {
    const int o = i * b, byte = o >> 3, sh = o & 7;
    c[byte] = (uint8_t) ((c[byte] & ~(((1u << b) - 1) << sh)) | (v << sh));
    if (sh + b > 8) c[byte + 1] = (uint8_t) ((c[byte + 1] & ~(((1u << b) - 1) >> (8 - sh))) | (v >> (8 - sh)));
}

} // namespace core
