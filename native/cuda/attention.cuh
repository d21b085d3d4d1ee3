// Decode attention over the per-head paged KV cache, on the device (flash-decoding: each (KV head,
// split, query tile) block streams its pages once for the whole GQA group and, in prefill, for a tile of
// query tokens (16 rows: query heads x tokens), keeps an online softmax per row, and a second kernel merges
// the splits). The device pages keep the host layout of kv-cache.h: a page
// holds [KV_PAGE_TOKENS/KV_TILE][head_dim][KV_TILE] f16 keys (transposed tiles), then
// [KV_PAGE_TOKENS][head_dim_v] f16 values; every head has its own segments, token count and explicit
// int32 positions, and a query at position p attends the tokens of its KV head with position <= p.
// CPU oracle: attention_ref (kernels/cpu/attention.h); queries are rounded to f16 before q·k as there.
// Coded heads (RotateKV rot2/rot3/rot4 keys and values, ALGORITHMS.md §3): their quantized tokens are
// read as codes, scales and zero-points straight from device memory by a second split kernel (kernel 1b)
// whose partial softmax states merge with the f16 splits': pre-RoPE keys are decoded, un-permuted, rotated
// back (FWHT) and RoPE'd per token; post-RoPE keys are dotted with P·H·q; values accumulate in the rotated
// basis and one FWHT per split brings them back. As attend_group_coded_ref: coded heads use f32 queries,
// f16 heads f16-rounded ones.
// Supported: f16 heads; coded heads with rot codecs (one token per block), per-head key rotation
// (rotationGroup 1), head_dim == head_dim_v in {32, 64, 128}, full NORM/NEOX RoPE for pre-RoPE keys;
// group size <= 8, head_dim and head_dim_v <= 256 and multiples of 8.
#pragma once
#include <vector>

#include "backend-cuda.h"

namespace core {
class kv_cache;
namespace cuda {

// One layer of the cache on the device (tables and pages owned by kv_layer_device).
struct kv_layer_view {
    int n_head_kv = 0, head_dim = 0, head_dim_v = 0;
    int max_seg = 0;                    // segment slots per head
    int max_tokens = 0;                 // position slots per head
    const uint16_t * const * seg_page = nullptr;  // [n_head_kv][max_seg] page base
    const int32_t * seg_n = nullptr;     // [n_head_kv][max_seg] tokens in the segment
    const int32_t * seg_first = nullptr; // [n_head_kv][max_seg] index of its first token in pos
    const int32_t * pos = nullptr;       // [n_head_kv][max_tokens]
    const int32_t * n_seg = nullptr;     // [n_head_kv]
    int max_n_seg = 0;                   // max over heads of n_seg (host copy, sizes the split)
    // ring layers (kv-ring.cuh; nullptr elsewhere): slot i = seg_first + j of head h is in view when
    // i < ring_base[h] (a fixed slot) or its position >= lo[h]
    const int32_t * lo = nullptr;        // [n_head_kv]
    const int32_t * ring_base = nullptr; // [n_head_kv]

    // coded tokens (all null / 0 when no head of the layer has a storage codec)
    const int32_t * is_coded = nullptr;  // [n_head_kv] 1: the head has a codec (attention uses f32 queries)
    const uint8_t * kblk = nullptr;      // [total coded][k_block_bytes] key blocks, head after head
    const uint8_t * vblk = nullptr;      // [total coded][v_block_bytes]
    const int32_t * c_first = nullptr;   // [n_head_kv] index of the head's first coded token
    const int32_t * n_coded = nullptr;   // [n_head_kv]
    const int32_t * c_pos = nullptr;     // [total coded] positions (ascending per head)
    const int32_t * perm = nullptr;      // [n_head_kv][head_dim] key channel permutation (nullptr: identity)
    // grouped key rotation (pre-RoPE rot keys; kv_coded_view::rot_g): [n_head_kv] the group of heads whose keys were
    // rotated together (1: alone; G: heads h − h%G .. + G − 1, which hold the same tokens in the same coded order),
    // head h's key = (1/√G)·Σ_s (−1)^popcount(h%G & s)·H_D·P_s⁻¹·x̂_s; nullptr: every head alone
    const int32_t * rot_g = nullptr;
    const float * freq_factors = nullptr;
    int kbits = 0, vbits = 0, kgroup = 0, vgroup = 0, k_block_bytes = 0, v_block_bytes = 0;
    int pre_rope = 0, rope_neox = 0, n_rot = 0;
    // Keys and values each have their codec family. Plain (kplain / vplain = 1): q8 / q4 (llama.cpp's q8_0 / q4_0
    // block per 32 channels, bits 8 or 4; post-RoPE keys, no rotation, no permutation), f16 rows (bits 16) or
    // KIVI's, instead of RotateKV's (0: rotated; pre_rope applies to rotated keys only).
    int kplain = 0, vplain = 0;
    // KIVI (kivi.cpp; plain, post-RoPE keys, no rotation). Keys: kivi = their block of tokens (its group; 0: not
    // KIVI keys): kblk holds each token's key codes [D·b/8] (k_block_bytes), kmeta per `kivi` coded tokens
    // (c_first is a multiple of it) the keys' per-channel scales f16 [D] | mins f16 [D]. Values (vkivi = 1): vblk
    // per token codes [D·b/8] | scales f16 [D/vgroup] | mins f16 [D/vgroup]. x̂ = code·s + m.
    int kivi = 0, vkivi = 0;
    const uint8_t * kmeta = nullptr;
    float freq_base = 10000.0f, freq_scale = 1.0f;
    float theta_scale = 1.0f;            // base^(-2/n_rot), computed on the host as rope_cache_ref does
    int max_n_coded = 0;                 // host copy (sizes the coded split)

    // eviction policies (kv-ring.cuh; nullptr elsewhere and on steps that observe nothing): the scores s = scale·q·k
    // of the LAST query row of every head with evict[h] != 0, masked ones −inf, for the policy's probabilities
    const int32_t * evict = nullptr;     // [n_head_kv]
    float * sc = nullptr;                // [n_head_kv][G][max_tokens] f16 slots
    float * sc_c = nullptr;              // [total coded][G] quantized tokens (c_first + index)
    float * ml = nullptr;                // [n_head][2] the last row's softmax max M and normalizer L (after the merge)
};

class kv_layer_device {
public:
    // Copies layer il of a host cache: f16 segments, and the codes, scales, zero-points, positions and
    // key permutation of coded heads (ERR_UNSUPPORTED_QUANT for a codec or layout the kernels do not cover).
    status upload(const kv_cache & kv, int il);
    // Synthetic coded layer (bench): head h holds n_coded[h] rot-coded tokens at positions 16.. between 16
    // protected f16 tokens and n_f16[h] - 16 staging f16 tokens (n_coded[h] == 0: an f16 head of n_f16[h]
    // tokens, a STREAM head), random codes with unit-range scales.
    status synthetic_coded(int n_head_kv, int head_dim, const std::vector<int32_t> & n_f16, const std::vector<int32_t> & n_coded, int kbits,
                           int vbits, int group, bool pre_rope, uint32_t seed, stream_t s);
    // Synthetic layer: head h holds n_tokens[h] tokens at positions 0..n-1 (every head: pos_stride 1),
    // random f16 keys/values in [-1, 1) (bench; no host copy of the pages).
    status synthetic(int n_head_kv, int head_dim, int head_dim_v, const std::vector<int32_t> & n_tokens, uint32_t seed, stream_t s);
    // Dense layer for the CUDA forward pass (forward-cuda.h): every head holds tokens 0..n-1 at positions
    // 0..n-1, in pages reserved for n_ctx tokens. The pages start zeroed, so the unwritten tail of the last
    // page holds finite values, which attention masks by position (a query at p sees positions <= p).
    status dense(int n_head_kv, int head_dim, int head_dim_v, int n_ctx, stream_t s);
    // Appends n_tokens keys and values (device, [n_tokens][n_head_kv][head_dim(_v)] f32, rounded to f16 as the
    // host cache rounds them) at positions n_held()..; ERR_CONTEXT_FULL past n_ctx. Dense layers only.
    status append(const float * k, const float * v, int n_tokens, stream_t s);
    // Keeps the first n tokens of a dense layer (0: forgets them all; the pages stay reserved).
    status truncate(int n, stream_t s);
    // Dense layers: holds what `src` holds (a dense layer of the same geometry), its pages copied on the stream.
    status copy_from(const kv_layer_device & src, stream_t s);
    // State files, dense layers: the pages that hold tokens 0..n-1, head after head (held_bytes(n) bytes),
    // downloaded (waits for the stream), or uploaded as the layer's n tokens (n <= n_ctx; waits too).
    size_t held_bytes(int n) const;
    status download_held(std::vector<uint8_t> & out, stream_t s) const;
    status upload_held(const uint8_t * in, int n, stream_t s);
    int n_held() const { return n_held_; }
    int n_ctx() const { return n_ctx_; }
    const kv_layer_view & view() const { return v_; }
    size_t page_bytes() const { return page_bytes_; }
    size_t payload_bytes() const { return payload_bytes_; }  // K + V bytes of the held tokens

private:
    status build_tables(int n_head_kv, const std::vector<std::vector<int32_t>> & seg_n, const std::vector<std::vector<int32_t>> & pos);
    kv_layer_view v_;
    size_t page_bytes_ = 0, payload_bytes_ = 0;
    int n_held_ = 0, n_ctx_ = 0;  // dense layers
    void reset();
    status build_coded(const std::vector<int32_t> & is_coded, const std::vector<uint8_t> & kb, const std::vector<uint8_t> & vb,
                       const std::vector<int32_t> & n_coded, const std::vector<int32_t> & c_pos, const std::vector<int32_t> & perm,
                       const std::vector<uint8_t> & kmeta = {});
    device_buffer pages_, page_ptrs_, seg_n_, seg_first_, pos_, n_seg_;
    device_buffer is_coded_, kblk_, vblk_, c_first_, n_coded_, c_pos_, perm_, ff_, kmeta_, rot_g_;
};

struct attn_decode_params {
    int n_tokens = 1;   // queries (decode: 1)
    int n_head = 0;
    float scale = 1.0f;
    int n_split = 0;    // 0: chosen from the SM count
};

// Partial results of the splits (grown on demand).
struct attn_workspace {
    device_buffer partial;
};

// q: [n_tokens][n_head][head_dim] f32, q_pos: [n_tokens] int32, out: [n_tokens][n_head][head_dim_v] f32 (device)
status attention_decode(const attn_decode_params & p, const float * q, const int32_t * q_pos, const kv_layer_view & kv,
                        float * out, attn_workspace & ws, stream_t s);

} // namespace cuda
} // namespace core
