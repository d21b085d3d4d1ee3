// Decode attention over the per-head paged KV cache, on the device (flash-decoding: each (KV head,
// split, query token) block streams its pages once for the whole GQA group, keeps an online softmax,
// and a second kernel merges the splits). The device pages keep the host layout of kv-cache.h: a page
// holds [KV_PAGE_TOKENS/KV_TILE][head_dim][KV_TILE] f16 keys (transposed tiles), then
// [KV_PAGE_TOKENS][head_dim_v] f16 values; every head has its own segments, token count and explicit
// int32 positions, and a query at position p attends the tokens of its KV head with position <= p.
// CPU oracle: attention_ref (kernels/cpu/attention.h); queries are rounded to f16 before q·k as there.
// Supported: f16 heads (coded heads: not yet), group size <= 8, head_dim and head_dim_v <= 256 and
// multiples of 8.
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
};

class kv_layer_device {
public:
    // Copies layer il of a host cache (f16 heads only: ERR_UNSUPPORTED_QUANT for a coded head).
    status upload(const kv_cache & kv, int il);
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
    device_buffer pages_, page_ptrs_, seg_n_, seg_first_, pos_, n_seg_;
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
