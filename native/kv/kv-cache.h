// The KV cache interface (DESIGN.md §3). Storage is per (layer il, KV head ih): each head cache holds
// its own token set, with an explicit position per token, so that later retention policies can keep
// different tokens (and different numbers of tokens) per head. Attention reads a head through
// `kv_head_view` and masks by position, never by slot index.
//
// This file has the interface plus the plain full-precision implementation (f16 storage, as llama.cpp's
// default cache type, so greedy tokens match it). Compressed caches implement the same interface.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "../common/status.h"
#include "../tensor/ggml-type.h"

namespace core {

// Keys are stored in tiles of KV_TILE tokens, transposed inside the tile ([tile][head_dim][KV_TILE]),
// so the q·k kernel loads KV_TILE keys' d-th components with one vector load and needs no horizontal
// reduction. Values stay token-major ([n][head_dim_v]) for the p·V accumulation.
constexpr int KV_TILE = 16;

struct kv_head_view {
    int32_t n = 0;                  // tokens held by this head
    const int32_t * pos = nullptr;  // [n] position of each held token (ascending)
    const f16_t * k = nullptr;      // [ceil(n/KV_TILE)][head_dim][KV_TILE] post-RoPE keys
    const f16_t * v = nullptr;      // [n][head_dim_v] values

    // note: call only with j < n, d < head_dim.
    f16_t key(int32_t j, int d, int head_dim) const {
        return k[((size_t) (j / KV_TILE) * head_dim + d) * KV_TILE + (j % KV_TILE)];
    }
};

struct kv_memory_summary {
    int64_t logical_tokens = 0;     // tokens the sequence has seen
    int64_t resident_tokens = 0;    // sum over (layer, head) of held tokens / (n_layer * n_head_kv)
    size_t bytes_used = 0;          // key + value payload + positions actually holding tokens
    size_t bytes_allocated = 0;     // bytes reserved by the cache
};

class kv_cache {
public:
    kv_cache(int n_layer, int n_head_kv, int head_dim, int head_dim_v, int n_ctx)
        : n_layer(n_layer), n_head_kv(n_head_kv), head_dim(head_dim), head_dim_v(head_dim_v), n_ctx(n_ctx) {}
    virtual ~kv_cache() = default;

    // Appends n_tokens tokens to every head of layer il.
    //   k: [n_tokens][n_head_kv][head_dim] f32 (post-RoPE), v: [n_tokens][n_head_kv][head_dim_v], pos: [n_tokens]
    // note: call only after `reserve(n_tokens)` succeeded for this batch.
    virtual void append(int il, int n_tokens, const float * k, const float * v, const int32_t * pos) = 0;
    // Makes room for n_tokens more tokens in every head; ERR_CONTEXT_FULL past n_ctx, ERR_OOM_HOST.
    virtual status reserve(int n_tokens) = 0;
    virtual kv_head_view head(int il, int ih) const = 0;
    // Drops every token with position >= pos (rewind after a rejected draft, or a shortened prompt).
    virtual void remove_from(int32_t pos) = 0;
    virtual void clear() = 0;
    virtual kv_memory_summary memory() const = 0;
    // Tokens seen by the sequence (the next position is n_logical()).
    virtual int32_t n_logical() const = 0;

    const int n_layer, n_head_kv, head_dim, head_dim_v, n_ctx;
};

// Full cache: every head keeps every token, stored as f16.
std::unique_ptr<kv_cache> kv_cache_make_full_f16(int n_layer, int n_head_kv, int head_dim, int head_dim_v, int n_ctx);

} // namespace core
