// Causal attention of a batch of queries over one layer of the KV cache (CPU).
// A query at position p attends every cached token of its KV head whose position is <= p; heads may hold
// different token sets (the cache is per (layer, KV head)), so each head is read through its own view.
// The GQA group of query heads that shares a KV head is processed together so each key and value row
// is read once per group. Numerics mirror llama.cpp with an f16 cache: queries are rounded to f16 before
// the q·k dot, softmax in f32.
#pragma once
#include <cstdint>
#include <vector>

#include "../../common/thread-pool.h"
#include "../../kv/kv-cache.h"

namespace core {

struct attn_params {
    int n_tokens = 0;
    int n_head = 0;
    int n_head_kv = 0;
    int head_dim = 0;
    int head_dim_v = 0;
    float scale = 1.0f;        // usually 1/sqrt(head_dim)
};

struct attn_scratch {
    std::vector<std::vector<float>> per_thread; // block scores, V block, q16 rows (grown on demand)
    std::vector<float> units;                   // online-softmax state (m, l, acc) per work unit
};

// q: [n_tokens][n_head][head_dim] f32, q_pos: [n_tokens], out: [n_tokens][n_head][head_dim_v]
void attention_ref(const attn_params & p, const float * q, const int32_t * q_pos, const kv_cache & kv, int il, float * out);
// For EVICT heads of a layer that asks for them (kv.wants_probs(il)), the exact softmax probabilities of
// the chunk's last query row are also written into the head's buffers (max and sum over the group), with
// a second pass over the keys once the normalizer is known; other layers pay nothing.
void attention(thread_pool & pool, const attn_params & p, const float * q, const int32_t * q_pos, kv_cache & kv, int il,
               float * out, attn_scratch & scratch);

} // namespace core
