// The forward pass of the supported decoder architectures (llama, qwen2, qwen3) on the CPU.
// One call processes a chunk of consecutive tokens of one sequence: they are appended to its KV cache
// and, on request, the logits of the last token (or of every token) are written out.
#pragma once
#include <atomic>
#include <vector>

#include "../kernels/cpu/attention.h"
#include "../kernels/cpu/attention-wse.h"
#include "../kernels/cpu/matmul.h"
#include "../kv/kv-cache.h"
#include "model.h"

namespace core {

// Activation buffers reused across calls (grown on demand, never shrunk), one per sequence.
struct forward_scratch {
    std::vector<float> x;       // [n_tokens][n_embd] residual stream
    std::vector<float> xn;      // [n_tokens][n_embd] normed input
    std::vector<float> q;       // [n_tokens][n_head*head_dim]
    std::vector<float> k;       // [n_tokens][n_head_kv*head_dim]
    std::vector<float> v;       // [n_tokens][n_head_kv*head_dim_v]
    std::vector<int32_t> sink_idx;  // massive-activation detection scratch [n_tokens * n_embd]
    std::vector<float> kx, vx;  // [n_tokens][n_head][head_dim(_v)] keys/values copied per query head (per-query-head caches)
    std::vector<float> attn;    // [n_tokens][n_head*head_dim_v]
    std::vector<float> o;       // [n_tokens][n_embd]
    std::vector<float> gate;    // [n_tokens][n_ff]
    std::vector<float> up;      // [n_tokens][n_ff]
    std::vector<float> cs;      // [n_tokens][n_rot] rope cos/sin
    std::vector<int32_t> pos;   // [n_tokens]
    matmul_scratch mm;
    attn_scratch at;
    wse_accumulator * wse = nullptr;  // when set, head calibration statistics are accumulated (FULL cache only)
};

enum logits_mode { LOGITS_NONE, LOGITS_LAST, LOGITS_ALL };

// Runs tokens[0..n_tokens) at positions kv.n_logical() ... . logits: [n_vocab] (LAST) or
// [n_tokens][n_vocab] (ALL). `abort` (nullable) is checked between layers while the cache can take the
// chunk back out exactly (kv_cache::chunk_revertible): ERR_ABORTED leaves the cache as it was before the
// chunk. Past that point the chunk runs to its end and returns normally (the caller checks `abort` again).
status forward_chunk(const model & m, kv_cache & kv, const int32_t * tokens, int n_tokens, logits_mode mode, float * logits,
                     forward_scratch & s, thread_pool & pool, const std::atomic<bool> * abort);

} // namespace core
