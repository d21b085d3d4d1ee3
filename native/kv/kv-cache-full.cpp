// Full-precision (f16) KV cache: one growable token set per (layer, KV head). Capacity grows
// geometrically up to n_ctx, so a short conversation does not pay for the whole context.
#include <algorithm>

#include "kv-cache.h"

namespace core {

namespace {

struct head_store {
    std::vector<int32_t> pos;  // [n]
    std::vector<f16_t> k;      // [cap/KV_TILE][head_dim][KV_TILE]
    std::vector<f16_t> v;      // [cap][head_dim_v]
    int32_t n = 0;
};

class kv_cache_full final : public kv_cache {
public:
    kv_cache_full(int n_layer, int n_head_kv, int head_dim, int head_dim_v, int n_ctx)
        : kv_cache(n_layer, n_head_kv, head_dim, head_dim_v, n_ctx), heads_((size_t) n_layer * n_head_kv) {}

    status reserve(int n_tokens) override {
        const int64_t need = (int64_t) n_logical_ + n_tokens;
        if (need > n_ctx) {
            return status(ERR_CONTEXT_FULL, strfmt("kv_cache: %d new tokens at position %d exceed the context size %d", n_tokens, n_logical_, n_ctx));
        }
        if (need <= cap_) return {};
        int64_t cap = std::max<int64_t>(cap_ ? cap_ * 2 : 256, need);
        cap = std::min<int64_t>(cap, n_ctx);
        cap = (cap + KV_TILE - 1) / KV_TILE * KV_TILE;
        try {
            for (auto & h : heads_) {
                h.pos.reserve((size_t) cap);
                h.k.resize((size_t) cap * head_dim);
                h.v.resize((size_t) cap * head_dim_v);
            }
        } catch (const std::bad_alloc &) {
            return status(ERR_OOM_HOST, strfmt("kv_cache: out of memory growing the cache to %lld tokens", (long long) cap));
        }
        cap_ = (int32_t) cap;
        return {};
    }

    void append(int il, int n_tokens, const float * k, const float * v, const int32_t * pos) override {
        for (int ih = 0; ih < n_head_kv; ih++) {
            head_store & h = heads_[(size_t) il * n_head_kv + ih];
            for (int t = 0; t < n_tokens; t++) {
                const float * ks = k + ((size_t) t * n_head_kv + ih) * head_dim;
                const float * vs = v + ((size_t) t * n_head_kv + ih) * head_dim_v;
                f16_t * kd = h.k.data() + (size_t) (h.n / KV_TILE) * head_dim * KV_TILE + (h.n % KV_TILE);
                f16_t * vd = h.v.data() + (size_t) h.n * head_dim_v;
                for (int d = 0; d < head_dim; d++) kd[(size_t) d * KV_TILE] = f32_to_f16(ks[d]);
                for (int d = 0; d < head_dim_v; d++) vd[d] = f32_to_f16(vs[d]);
                h.pos.push_back(pos[t]);
                h.n++;
            }
        }
        if (il == n_layer - 1) n_logical_ = std::max(n_logical_, pos[n_tokens - 1] + 1);
    }

    kv_head_view head(int il, int ih) const override {
        const head_store & h = heads_[(size_t) il * n_head_kv + ih];
        return {h.n, h.pos.data(), h.k.data(), h.v.data()};
    }

    void remove_from(int32_t p) override {
        for (auto & h : heads_) {
            int32_t keep = 0;
            while (keep < h.n && h.pos[keep] < p) keep++;
            h.n = keep;
            h.pos.resize((size_t) keep);
        }
        n_logical_ = std::min(n_logical_, std::max(p, 0));
    }

    void clear() override { remove_from(0); }

    kv_memory_summary memory() const override {
        kv_memory_summary s;
        s.logical_tokens = n_logical_;
        int64_t held = 0;
        for (const auto & h : heads_) {
            held += h.n;
            s.bytes_used += (size_t) h.n * ((head_dim + head_dim_v) * sizeof(f16_t) + sizeof(int32_t));
            s.bytes_allocated += h.k.capacity() * sizeof(f16_t) + h.v.capacity() * sizeof(f16_t) + h.pos.capacity() * sizeof(int32_t);
        }
        s.resident_tokens = heads_.empty() ? 0 : held / (int64_t) heads_.size();
        return s;
    }

    int32_t n_logical() const override { return n_logical_; }

private:
    std::vector<head_store> heads_;  // [n_layer][n_head_kv]
    int32_t cap_ = 0;
    int32_t n_logical_ = 0;
};

} // namespace

std::unique_ptr<kv_cache> kv_cache_make_full_f16(int n_layer, int n_head_kv, int head_dim, int head_dim_v, int n_ctx) {
    return std::make_unique<kv_cache_full>(n_layer, n_head_kv, head_dim, head_dim_v, n_ctx);
}

} // namespace core
