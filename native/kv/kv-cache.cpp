// Paged per-head KV cache (see kv-cache.h).
#include "kv-cache.h"

#include <algorithm>
#include <chrono>
#include <cstring>

namespace core {

size_t kv_page_bytes(int head_dim, int head_dim_v) { return (size_t) KV_PAGE_TOKENS * (head_dim + head_dim_v) * sizeof(f16_t); }

kv_cache::kv_cache(const kv_cache_config & cfg, std::shared_ptr<page_pool> pool) : cfg_(cfg), pool_(std::move(pool)) {
    heads_.resize((size_t) cfg_.n_layer * cfg_.n_head_kv);
    layer_has_evict_.assign((size_t) cfg_.n_layer, 0);
    for (size_t i = 0; i < heads_.size(); i++) {
        heads_[i].mode = cfg_.retention.empty() ? KV_RETAIN_FULL : cfg_.retention[i];
        if (heads_[i].mode == KV_RETAIN_EVICT) layer_has_evict_[i / cfg_.n_head_kv] = 1;
    }
    policy_ = kv_policy_get(cfg_.policy.kind);
}

kv_cache::~kv_cache() {
    for (auto & h : heads_) for (void * p : h.pages) pool_->free(p);
}

status kv_cache::reserve(int n_tokens) {
    if ((int64_t) n_logical_ + n_tokens > cfg_.n_ctx) {
        return status(ERR_CONTEXT_FULL, strfmt("kv_cache: %d new tokens at position %d exceed the context size %d", n_tokens, n_logical_, cfg_.n_ctx));
    }
    // a single token after a prompt is a decode step; anything else is (more) prompt
    if (n_tokens == 1 && n_logical_ > 0) {
        step_++;
    } else {
        step_ = 0;
        prompt_ = n_logical_ + n_tokens;
    }
    try {
        for (auto & h : heads_) {
            const int64_t need = (int64_t) h.n + n_tokens;
            while ((int64_t) h.pages.size() * KV_PAGE_TOKENS < need) {
                void * p = pool_->alloc();
                if (!p) return status(ERR_OOM_HOST, strfmt("kv_cache: out of memory allocating a %zu-byte page", pool_->page_bytes()));
                h.pages.push_back(p);
            }
            h.pos.reserve((size_t) need);
        }
    } catch (const std::bad_alloc &) {
        return status(ERR_OOM_HOST, "kv_cache: out of memory growing the position arrays");
    }
    return {};
}

void kv_cache::append(int il, int n_tokens, const float * k, const float * v, const int32_t * pos) {
    const int D = cfg_.head_dim, DV = cfg_.head_dim_v, H = cfg_.n_head_kv;
    for (int ih = 0; ih < H; ih++) {
        head_store & h = heads_[(size_t) il * H + ih];
        for (int t = 0; t < n_tokens; t++) {
            const int32_t j = h.n;
            uint8_t * page = (uint8_t *) h.pages[(size_t) (j / KV_PAGE_TOKENS)];
            const int slot = j % KV_PAGE_TOKENS;
            f16_t * kd = (f16_t *) page + ((size_t) (slot / KV_TILE) * D) * KV_TILE + (slot % KV_TILE);
            f16_t * vd = (f16_t *) (page + value_offset_bytes()) + (size_t) slot * DV;
            const float * ks = k + ((size_t) t * H + ih) * D;
            const float * vs = v + ((size_t) t * H + ih) * DV;
            for (int d = 0; d < D; d++) kd[(size_t) d * KV_TILE] = f32_to_f16(ks[d]);
            for (int d = 0; d < DV; d++) vd[d] = f32_to_f16(vs[d]);
            h.pos.push_back(pos[t]);
            h.n++;
        }
        if (h.mode == KV_RETAIN_EVICT) {
            policy_->append(h.stats, n_tokens, step_);
            h.p_max.assign((size_t) h.n, 0.0f);
            h.p_sum.assign((size_t) h.n, 0.0f);
        }
        rebuild_segments(h);
    }
    if (il == cfg_.n_layer - 1) n_logical_ = std::max(n_logical_, pos[n_tokens - 1] + 1);
}

void kv_cache::rebuild_segments(head_store & h) const {
    const int32_t n_seg = (h.n + KV_PAGE_TOKENS - 1) / KV_PAGE_TOKENS;
    h.segs.resize((size_t) n_seg);
    for (int32_t s = 0; s < n_seg; s++) {
        kv_segment & g = h.segs[(size_t) s];
        const uint8_t * page = (const uint8_t *) h.pages[(size_t) s];
        g.n = std::min<int32_t>(KV_PAGE_TOKENS, h.n - s * KV_PAGE_TOKENS);
        g.pos = h.pos.data() + (size_t) s * KV_PAGE_TOKENS;
        g.k = (const f16_t *) page;
        g.v = (const f16_t *) (page + value_offset_bytes());
    }
}

// Moves the tokens listed in `keep` (ascending source indices) to the front, in order, and frees the
// pages no longer needed. Destinations never pass their sources, so copying in order is safe in place.
void kv_cache::compact(head_store & h, const std::vector<int32_t> & keep) {
    const int D = cfg_.head_dim, DV = cfg_.head_dim_v;
    auto kptr = [&](int32_t j, int d) {
        f16_t * page = (f16_t *) h.pages[(size_t) (j / KV_PAGE_TOKENS)];
        const int slot = j % KV_PAGE_TOKENS;
        return page + ((size_t) (slot / KV_TILE) * D + d) * KV_TILE + (slot % KV_TILE);
    };
    auto vptr = [&](int32_t j) {
        uint8_t * page = (uint8_t *) h.pages[(size_t) (j / KV_PAGE_TOKENS)];
        return (f16_t *) (page + value_offset_bytes()) + (size_t) (j % KV_PAGE_TOKENS) * DV;
    };
    int32_t dst = 0;
    for (int32_t src : keep) {
        if (src != dst) {
            for (int d = 0; d < D; d++) *kptr(dst, d) = *kptr(src, d);
            std::memcpy(vptr(dst), vptr(src), sizeof(f16_t) * DV);
            h.pos[(size_t) dst] = h.pos[(size_t) src];
            for (auto * a : {&h.stats.last, &h.stats.mri}) if (!a->empty()) (*a)[(size_t) dst] = (*a)[(size_t) src];
            for (auto * a : {&h.stats.acc, &h.stats.cur, &h.p_max, &h.p_sum}) if (!a->empty()) (*a)[(size_t) dst] = (*a)[(size_t) src];
        }
        dst++;
    }
    h.n = dst;
    h.pos.resize((size_t) dst);
    for (auto * a : {&h.stats.last, &h.stats.mri}) if (!a->empty()) a->resize((size_t) dst);
    for (auto * a : {&h.stats.acc, &h.stats.cur, &h.p_max, &h.p_sum}) if (!a->empty()) a->resize((size_t) dst);
    const size_t pages_needed = (size_t) (dst + KV_PAGE_TOKENS - 1) / KV_PAGE_TOKENS;
    while (h.pages.size() > pages_needed) {
        pool_->free(h.pages.back());
        h.pages.pop_back();
    }
    rebuild_segments(h);
}

void kv_cache::retain(int il) {
    const int S = cfg_.stream_sinks, R = cfg_.stream_recent, H = cfg_.n_head_kv;
    std::vector<int32_t> keep;
    for (int ih = 0; ih < H; ih++) {
        head_store & h = heads_[(size_t) il * H + ih];
        if (h.mode != KV_RETAIN_STREAM || h.n <= S + R) continue;
        keep.clear();
        for (int32_t j = 0; j < S; j++) keep.push_back(j);
        for (int32_t j = h.n - R; j < h.n; j++) keep.push_back(j);
        evicted_ += h.n - (int64_t) keep.size();
        compact(h, keep);
        h.dropped = true;
    }
    if (!layer_has_evict_[(size_t) il]) return;
    // layer mean of the probabilities, defined when every head of the layer holds the same token set
    std::vector<float> layer_mean;
    bool same = true;
    const head_store & h0 = heads_[(size_t) il * H];
    for (int ih = 0; ih < H && same; ih++) {
        const head_store & h = heads_[(size_t) il * H + ih];
        same = h.mode == KV_RETAIN_EVICT && h.n == h0.n && std::equal(h.pos.begin(), h.pos.end(), h0.pos.begin());
    }
    if (same) {
        layer_mean.assign((size_t) h0.n, 0.0f);
        const float inv = 1.0f / (float) (cfg_.n_layer > 0 ? H : 1);
        for (int ih = 0; ih < H; ih++) {
            const head_store & h = heads_[(size_t) il * H + ih];
            for (int32_t j = 0; j < h.n; j++) layer_mean[(size_t) j] += h.p_sum[(size_t) j] * inv;
        }
    }
    std::vector<float> scores;
    for (int ih = 0; ih < H; ih++) {
        head_store & h = heads_[(size_t) il * H + ih];
        if (h.mode != KV_RETAIN_EVICT) continue;
        kv_step_probs p{h.p_max.data(), h.p_sum.data(), same ? layer_mean.data() : nullptr};
        policy_->observe(h.stats, h.n, p, step_, cfg_.policy);
        if (!policy_->due(step_, h.n, prompt_, cfg_.policy)) continue;
        const auto t0 = std::chrono::steady_clock::now();
        scores.resize((size_t) h.n);
        policy_->score(h.stats, h.n, step_, cfg_.policy, scores.data());
        keep = kv_select_keep(scores.data(), h.pos.data(), h.n, policy_->budget(step_, prompt_, cfg_.policy), policy_->recent(cfg_.policy), cfg_.policy.protect);
        evicted_ += h.n - (int64_t) keep.size();
        compact(h, keep);
        h.dropped = true;
        compactions_++;
        compaction_s_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
}

kv_head_view kv_cache::head(int il, int ih) const {
    const head_store & h = heads_[(size_t) il * cfg_.n_head_kv + ih];
    return {h.n, (int32_t) h.segs.size(), h.segs.data()};
}

int32_t kv_cache::remove_from(int32_t p) {
    p = std::max<int32_t>(p, 0);
    if (p >= n_logical_) return n_logical_;
    // A head that dropped tokens cannot be rewound exactly: a STREAM head only down to its sinks (which a
    // fresh evaluation keeps too), an EVICT head not at all (its policy state depends on every step).
    int32_t keep_pos = p;
    for (const auto & h : heads_) {
        if (!h.dropped) continue;
        keep_pos = std::min(keep_pos, h.mode == KV_RETAIN_STREAM ? (int32_t) cfg_.stream_sinks : 0);
    }
    for (auto & h : heads_) {
        int32_t keep = 0;
        while (keep < h.n && h.pos[(size_t) keep] < keep_pos) keep++;
        std::vector<int32_t> idx((size_t) keep);
        for (int32_t j = 0; j < keep; j++) idx[(size_t) j] = j;
        compact(h, idx);
        h.dropped = false;
    }
    n_logical_ = keep_pos;
    return keep_pos;
}

void kv_cache::clear() { remove_from(0); }

kv_memory_report kv_cache::memory(bool per_head) const {
    kv_memory_report r;
    r.logical_tokens = n_logical_;
    const uint64_t page_bytes = pool_->page_bytes();
    if (per_head) r.heads.resize(heads_.size());
    for (size_t i = 0; i < heads_.size(); i++) {
        const head_store & h = heads_[i];
        const uint64_t kb = (uint64_t) h.n * cfg_.head_dim * sizeof(f16_t);
        const uint64_t vb = (uint64_t) h.n * cfg_.head_dim_v * sizeof(f16_t);
        const uint64_t pb = (uint64_t) h.n * sizeof(int32_t);
        const uint64_t mb = h.segs.capacity() * sizeof(kv_segment) + h.pages.capacity() * sizeof(void *);
        const uint64_t alloc = h.pages.size() * page_bytes + h.pos.capacity() * sizeof(int32_t) + mb;
        r.resident_tokens += h.n;
        r.key_bytes += kb;
        r.value_bytes += vb;
        r.position_bytes += pb;
        r.metadata_bytes += mb;
        r.bytes_allocated += alloc;
        if (per_head) {
            kv_head_memory & m = r.heads[i];
            m.resident = h.n;
            m.budget = h.mode == KV_RETAIN_STREAM ? cfg_.stream_sinks + cfg_.stream_recent
                     : h.mode == KV_RETAIN_EVICT ? policy_->budget(step_, prompt_, cfg_.policy) : -1;
            m.bytes_allocated = alloc;
            m.bytes_used = kb + vb + pb;
        }
    }
    r.bytes_used = r.key_bytes + r.value_bytes + r.position_bytes + r.metadata_bytes;
    const page_pool_stats ps = pool_->stats();
    r.pool_slack_bytes = (uint64_t) ps.pages_free_resident * ps.page_bytes;
    r.evicted_tokens = evicted_;
    r.compactions = compactions_;
    r.compaction_seconds = compaction_s_;
    return r;
}

} // namespace core
