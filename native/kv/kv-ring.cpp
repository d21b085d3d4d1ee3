// Bookkeeping of the device-resident compressed KV cache (see kv-ring.h).
#include "kv-ring.h"
#include "kv-state.h"
#include "policies/qk-common.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace core {

namespace {
int32_t round_up(int32_t x, int32_t m) { return (x + m - 1) / m * m; }
} // namespace

status kv_ring_config_from(const kv_cache_config & c, int max_chunk, kv_ring_config * out) {
    const kv_storage_config & st = c.storage;
    if (c.n_layer <= 0 || c.n_head_kv <= 0 || c.n_ctx <= 0 || max_chunk <= 0)
        return status(ERR_INVALID_ARG, "kv ring: the cache needs layers, KV heads, a context size and a chunk size");
    bool evict = false;
    for (uint8_t r : c.retention) evict |= r == KV_RETAIN_EVICT;
    const kv_policy * pol = kv_policy_get(c.policy.kind);
    // the device observes the statistics of the policies that score from attention (kv-ring.cu: lazy, h2o, tova),
    // scores from keys for snapkv and rkv; a position-only policy needs neither
    const bool on_device = pol && (pol->position_only || pol->score_qk || c.policy.kind == KV_POLICY_LAZY || c.policy.kind == KV_POLICY_H2O ||
                                   c.policy.kind == KV_POLICY_TOVA);
    if (evict && !on_device)
        return status(ERR_INVALID_ARG, strfmt("the CUDA cache does not run the eviction policy %s: use backend 'cpu'", pol ? pol->name : "?"));
    if (evict && (c.policy.window <= 0 || c.policy.capacity < 0))
        return status(ERR_INVALID_ARG, "kv ring: the eviction policy needs a positive window and a capacity >= 0");
    if (st.coded()) {
        const kv_codec_traits & kc = kv_codec_get(st.key);
        // keys and values each with any codec (rot2/3/4, q8/q4, kivi2/4, or f16 rows beside a coded other side)
        auto kivi = [](kv_codec_type t) { return t == KV_CODEC_KIVI2 || t == KV_CODEC_KIVI4; };
        if (kivi(st.key)) {  // KIVI keys: per channel over a block of `group` tokens, encoded a block at a time
            const int kt = kc.block_tokens(kv_codec_params{c.head_dim, st.group, 1.0f, true});
            if (kt < 1 || std::max(KV_TILE, kt) % kt || (int64_t) kt * c.head_dim > 6144)
                return status(ERR_INVALID_ARG, strfmt("the CUDA cache's KIVI keys need a block of tokens (group) dividing %d with at most 6144 elements "
                                                      "(asked: %d tokens of %d channels)", std::max(KV_TILE, kt), kt, c.head_dim));
        }
        if (kc.rotated && !st.post_rope && st.rot_group > 8)
            return status(ERR_INVALID_ARG, strfmt("the CUDA cache rotates keys in groups of at most 8 heads (asked: rotationGroup %d): use backend 'cpu'", st.rot_group));
        if (c.head_dim != c.head_dim_v || (c.head_dim != 32 && c.head_dim != 64 && c.head_dim != 128))
            return status(ERR_INVALID_ARG, strfmt("the CUDA cache quantizes heads of 32, 64 or 128 channels with equal key and value sizes (this model: %d/%d)", c.head_dim, c.head_dim_v));
        if (kv_codec_group(st.key, c.head_dim, st.group) < 8) return status(ERR_INVALID_ARG, "the CUDA cache needs quantization groups of at least 8 channels");
        if (kc.rotated && !st.post_rope && (st.n_rot != c.head_dim || (st.rope != ROPE_STYLE_NORM && st.rope != ROPE_STYLE_NEOX)))
            return status(ERR_INVALID_ARG, "the CUDA cache's pre-RoPE keys need full NORM/NEOX RoPE (use the post-RoPE variant)");
        if (st.staging < 0 || st.protect < 0) return status(ERR_INVALID_ARG, "kv ring: staging and protect must be >= 0");
    }
    kv_ring_config r;
    r.n_layer = c.n_layer;
    r.n_head_kv = c.n_head_kv;
    r.n_ctx = c.n_ctx;
    r.max_chunk = max_chunk;
    r.stream_sinks = c.stream_sinks;
    r.stream_recent = c.stream_recent;
    r.protect = st.protect;
    r.staging = st.staging;
    // kv_cache::flush_tokens: a multiple of both codecs' blocks of tokens (KIVI's keys: its group)
    r.flush = KV_TILE;
    if (st.coded())
        r.flush = std::max({KV_TILE, kv_codec_get(st.key).block_tokens(kv_codec_params{c.head_dim, st.group, 1.0f, true}),
                            kv_codec_get(st.value).block_tokens(kv_codec_params{c.head_dim_v, st.group, 1.0f, false})});
    r.protect_sinks = st.protect_sinks;
    r.policy = c.policy;
    // kv_cache: EVICT heads are coded when kv_storage_check passes (it does for rot codecs and lazy), and keep
    // at least the policy's recent window in f16 (staging_of)
    r.evict_coded = evict && st.coded() && kv_storage_check(c).ok();
    if (evict) r.evict_staging = std::max<int>(st.staging, std::min<int32_t>(pol->recent(c.policy), c.policy.window));
    r.kind.resize((size_t) c.n_layer * c.n_head_kv);
    for (size_t i = 0; i < r.kind.size(); i++) {
        const uint8_t mode = c.retention.empty() ? (uint8_t) KV_RETAIN_FULL : c.retention[i];
        r.kind[i] = mode == KV_RETAIN_STREAM ? KV_RING_STREAM : mode == KV_RETAIN_EVICT ? KV_RING_EVICT : st.coded() ? KV_RING_CODED : KV_RING_DENSE;
    }
    *out = std::move(r);
    return {};
}

kv_ring_layer::kv_ring_layer(const kv_ring_config & c, int il)
    : coded_cap_(c.n_ctx), stream_sinks_(c.stream_sinks), stream_recent_(c.stream_recent), protect_(c.protect), staging_(c.staging),
      flush_(std::max(1, c.flush)), evict_staging_(c.evict_staging), protect_sinks_(c.protect_sinks), evict_coded_(c.evict_coded),
      policy_(c.policy), pol_(kv_policy_get(c.policy.kind)) {
    const int32_t ctx_cap = round_up(c.n_ctx, KV_PAGE_TOKENS);
    heads_.resize((size_t) c.n_head_kv);
    for (int h = 0; h < c.n_head_kv; h++) {
        head & x = heads_[(size_t) h];
        x.kind = c.kind[(size_t) il * c.n_head_kv + h];
        if (x.kind == KV_RING_STREAM) {
            x.fix_below = c.stream_sinks;
            x.fix_cap = round_up(c.stream_sinks, KV_PAGE_TOKENS);
            // in view at once: R recent + a chunk
            x.ring_cap = std::min(ctx_cap, round_up(c.stream_recent + c.max_chunk, KV_PAGE_TOKENS));
        } else if (x.kind == KV_RING_CODED) {
            any_coded_ = true;
            x.fix_below = c.protect;
            // the sinks (KV_MAX_SINKS and token 0), and room for as many again: a retain copies new sinks in
            // before it empties the slots of displaced ones (kv_ring_layer::begin)
            x.fix_cap = round_up(c.protect + (c.protect_sinks ? 2 * (KV_MAX_SINKS + 1) : 0), KV_PAGE_TOKENS);
            // in view at once: staging + less than one flush block + sinks not yet moved out + a chunk
            x.ring_cap = std::min(ctx_cap, round_up(c.staging + flush_ + (c.protect_sinks ? KV_MAX_SINKS + 1 : 0) + c.max_chunk, KV_PAGE_TOKENS));
        } else if (x.kind == KV_RING_EVICT) {
            any_evict_ = true;
            any_coded_ |= evict_coded_;
            // compact f16 slots: a coded head holds its protected tokens (positions < protect, sinks), less than a
            // window + a flush block of others, and a chunk; an f16 head may hold a whole prompt, unless its policy
            // holds its budget (streaming, h2o, tova: the budget or what the selection always keeps, the sinks, and
            // a chunk)
            const int32_t held = pol_ ? std::max<int32_t>(c.policy.capacity, c.policy.protect + pol_->recent(c.policy)) : 0;
            x.ring_cap = evict_coded_ ? std::min(ctx_cap, round_up(c.protect + KV_MAX_SINKS + 1 + c.evict_staging + flush_ + c.max_chunk, KV_PAGE_TOKENS))
                       : pol_ && pol_->holds_budget ? std::min(ctx_cap, round_up(held + KV_MAX_SINKS + 1 + c.max_chunk, KV_PAGE_TOKENS))
                                                    : ctx_cap;
        } else {
            x.ring_cap = ctx_cap;
        }
        x.slot_pos.assign((size_t) (x.fix_cap + x.ring_cap), KV_RING_EMPTY);
    }
    layer_mean_ = any_evict_ && pol_ && pol_->needs_layer_mean;
    for (const head & x : heads_) layer_mean_ &= x.kind == KV_RING_EVICT;
}

bool kv_ring_layer::in_view(const head & h, int32_t slot) const {
    const int32_t p = h.slot_pos[(size_t) slot];
    return p != KV_RING_EMPTY && (slot < h.fix_cap || p >= h.lo);
}

bool kv_ring_layer::is_protected(int32_t p) const {
    return p < protect_ || (protect_sinks_ && std::binary_search(sinks_.begin(), sinks_.end(), p));
}

int32_t kv_ring_layer::pages_in_use(int h) const {
    const head & x = heads_[(size_t) h];
    const int32_t ring = std::min(x.rc, x.ring_cap);
    return x.fix_cap / KV_PAGE_TOKENS + (ring + KV_PAGE_TOKENS - 1) / KV_PAGE_TOKENS;
}

int32_t kv_ring_layer::n_f16(int h) const {
    const head & x = heads_[(size_t) h];
    int32_t n = 0;
    for (int32_t s = 0; s < (int32_t) x.slot_pos.size(); s++) n += in_view(x, s);
    return n;
}

std::vector<int32_t> kv_ring_layer::held_positions(int h) const {
    const head & x = heads_[(size_t) h];
    std::vector<int32_t> out(x.coded);
    for (int32_t s = 0; s < (int32_t) x.slot_pos.size(); s++)
        if (in_view(x, s)) out.push_back(x.slot_pos[(size_t) s]);
    std::sort(out.begin(), out.end());
    return out;
}

status kv_ring_layer::append(int32_t c0, int32_t T) {
    for (size_t h = 0; h < heads_.size(); h++) {
        head & x = heads_[h];
        int32_t ring = 0;
        for (int32_t t = 0; t < T; t++) {
            const int32_t s = kv_ring_slot(c0, t, x.fix_below, x.rc, x.fix_cap, x.ring_cap);
            // a slot in view holding an older token would be lost (stale slots of a truncation hold later positions)
            if (in_view(x, s) && x.slot_pos[(size_t) s] < c0)
                return status(ERR_INTERNAL, strfmt("kv ring: head %zu: token %d would overwrite position %d still in view (slot %d of %d)", h, c0 + t,
                                                   x.slot_pos[(size_t) s], s, (int) x.slot_pos.size()));
            set_slot(h, s, c0 + t);
            ring += s >= x.fix_cap;
        }
        x.rc += ring;
    }
    return {};
}

void kv_ring_layer::add_sinks(const std::vector<int32_t> & positions, const std::vector<float> & magnitudes) {
    kv_sinks_merge(sink_cand_, positions, magnitudes, sinks_);
}

void kv_ring_layer::retain(int32_t n, std::vector<kv_ring_ops> & ops, int32_t t, int32_t P) {
    ops.assign(heads_.size(), kv_ring_ops{});
    std::vector<std::pair<int32_t, int32_t>> f16;  // (position, slot) in view, ascending
    std::vector<int32_t> live;
    for (size_t h = 0; h < heads_.size(); h++) {
        head & x = heads_[h];
        kv_ring_ops & op = ops[h];
        if (x.kind == KV_RING_DENSE) continue;
        if (x.kind == KV_RING_EVICT) {
            // kv_cache::retain: a due head is evicted first (evict(), which flushes); the others flush now, when
            // their f16 tokens may exceed the window by a block (15 of 16 decode steps they cannot). A policy that
            // scores without statistics (streaming) is decided here; the others by the caller (select(), evict()).
            if (due((int) h, t, P)) {
                if (stats_free()) {
                    evict_tokens((int) h, live);
                    std::vector<int32_t> keep;
                    select(live, {}, t, P, keep);
                    evicted_ += evict((int) h, keep, op);
                    compactions_++;
                }
                continue;
            }
            if (!evict_coded_ || x.rc - evict_staging_ < flush_) continue;
            live.resize((size_t) x.rc);
            for (int32_t s = 0; s < x.rc; s++) live[(size_t) s] = s;
            compact_f16(h, live, op);
            continue;
        }
        // Cheap bounds first (this runs per layer and head at every decode step). Ring tokens hold consecutive
        // positions from fix_below up to n − 1, those >= lo in view; the fixed slots hold the rest in view.
        const int32_t ring_view = n - std::max(x.lo, x.fix_below);
        int32_t fixed_above = 0;  // fixed slots holding a position >= fix_below (coded heads' sinks)
        if (x.kind == KV_RING_CODED)
            for (int32_t s = x.fix_below; s < x.fix_cap; s++) fixed_above += x.slot_pos[(size_t) s] != KV_RING_EMPTY;
        if (x.kind == KV_RING_STREAM && std::min(n, x.fix_below) + std::max(0, ring_view) <= stream_sinks_ + stream_recent_) continue;
        // a flush needs >= staging + flush unprotected tokens in view, of which there are at most these
        if (x.kind == KV_RING_CODED && std::max(0, ring_view) + fixed_above - staging_ < flush_) continue;
        f16.clear();
        for (int32_t s = 0; s < (int32_t) x.slot_pos.size(); s++)
            if (in_view(x, s)) f16.emplace_back(x.slot_pos[(size_t) s], s);
        std::sort(f16.begin(), f16.end());
        if (x.kind == KV_RING_STREAM) {
            // kv_cache::retain: more than S + R held keeps the first S and the last R
            if ((int32_t) f16.size() <= stream_sinks_ + stream_recent_) continue;
            x.lo = stream_recent_ > 0 ? f16[f16.size() - (size_t) stream_recent_].first : f16.back().first + 1;
            x.dropped = true;
            evicted_ += (int64_t) f16.size() - (stream_sinks_ + stream_recent_);  // (kv_cache counts a trim as evicted, as here)
            continue;
        }
        // kv_cache::flush: the oldest unprotected tokens beyond the staging window, in whole blocks
        std::vector<std::pair<int32_t, int32_t>> cand;
        for (const auto & e : f16)
            if (!is_protected(e.first)) cand.push_back(e);
        const int32_t m = ((int32_t) cand.size() - staging_) / flush_ * flush_;
        if (m <= 0) continue;
        std::vector<int32_t> freed;  // fixed slots emptied by quantizing a displaced sink
        for (int32_t i = 0; i < m; i++) {
            op.enc_slot.push_back(cand[(size_t) i].second);
            op.enc_pos.push_back(cand[(size_t) i].first);
            x.coded.push_back(cand[(size_t) i].first);
            if (cand[(size_t) i].second < x.fix_cap) freed.push_back(cand[(size_t) i].second);
        }
        const int32_t new_lo = std::max(x.lo, cand[(size_t) m - 1].first + 1);
        for (const auto & e : f16) {  // protected ring tokens falling below lo move to fixed slots
            if (e.second < x.fix_cap || e.first >= new_lo || !is_protected(e.first)) continue;
            int32_t dst = -1;  // an empty fixed slot (the ones emptied by this retain are still occupied)
            for (int32_t s = x.fix_below; s < x.fix_cap && dst < 0; s++)
                if (x.slot_pos[(size_t) s] == KV_RING_EMPTY) dst = s;
            if (dst < 0) continue;  // never: fix_cap leaves room for every sink twice
            op.copy_src.push_back(e.second);
            op.copy_dst.push_back(dst);
            set_slot(h, dst, e.first);
        }
        for (int32_t s : freed) set_slot(h, s, KV_RING_EMPTY);
        op.clear_slot = freed;
        x.lo = new_lo;
    }
}

bool kv_ring_layer::due(int h, int32_t t, int32_t P) const {
    const head & x = heads_[(size_t) h];
    return x.kind == KV_RING_EVICT && pol_ && pol_->due(t, (int32_t) x.coded.size() + x.rc, P, policy_);
}

void kv_ring_layer::evict_tokens(int h, std::vector<int32_t> & pos) const {
    const head & x = heads_[(size_t) h];
    pos.assign(x.coded.begin(), x.coded.end());
    pos.insert(pos.end(), x.slot_pos.begin(), x.slot_pos.begin() + x.rc);
}

int32_t kv_ring_layer::evict(int h, const std::vector<int32_t> & keep, kv_ring_ops & op) {
    head & x = heads_[(size_t) h];
    const int32_t nq = (int32_t) x.coded.size(), n_all = nq + x.rc;
    std::vector<int32_t> keep_f, coded;
    op.cgather = true;
    op.ckeep.clear();
    for (int32_t j : keep) {
        if (j < 0 || j >= n_all) continue;  // (indices from kv_select_keep: always in range)
        if (j < nq) {
            op.ckeep.push_back(j);
            coded.push_back(x.coded[(size_t) j]);
        } else {
            keep_f.push_back(j - nq);
        }
    }
    x.coded.swap(coded);
    x.dropped = true;  // kv_cache marks a head dropped at every eviction it runs
    if (journal_on_) moved_ = true;
    compact_f16((size_t) h, keep_f, op);
    return n_all - (int32_t) (op.ckeep.size() + keep_f.size());
}

void kv_ring_stats_decode(kv_policy_kind kind, const int32_t * raw, int32_t n, kv_token_stats & out) {
    out = kv_token_stats{};
    for (int32_t j = 0; j < n; j++) {
        float f;
        std::memcpy(&f, raw + 2 * j, 4);
        if (kind == KV_POLICY_LAZY) {
            out.last.push_back(raw[2 * j]);
            out.mri.push_back(raw[2 * j + 1]);
        } else if (kind == KV_POLICY_H2O) {
            out.acc.push_back(f);
        } else if (kind == KV_POLICY_TOVA) {
            out.cur.push_back(f);
        }
    }
}

int32_t kv_ring_evict_one_ref(const int32_t * pos, const float * score, int32_t n, int32_t budget, int32_t recent, int32_t protect,
                              const int32_t * sinks, int32_t n_sinks) {
    if (n <= 0) return -1;
    int32_t pmax = INT32_MIN;
    for (int32_t j = 0; j < n; j++) pmax = std::max(pmax, pos[j]);
    const int32_t k = std::min(std::max(recent, 0), n);
    const int64_t above = (int64_t) pmax - k;  // the k newest are the positions above this, if consecutive
    int32_t n_recent = 0, kept = 0, best = -1;
    for (int32_t j = 0; j < n; j++) {
        const bool rec = pos[j] > above;
        n_recent += rec;
        if (pos[j] < protect || rec || std::binary_search(sinks, sinks + n_sinks, pos[j])) {
            kept++;
            continue;
        }
        if (best < 0 || score[j] < score[best] || (score[j] == score[best] && pos[j] < pos[best])) best = j;
    }
    if (n_recent != k) return -2;
    const int32_t cand = n - kept, room = std::max(0, budget - kept);
    if (cand <= room) return -1;
    return cand - room == 1 ? best : -2;
}

void kv_ring_layer::select(const std::vector<int32_t> & pos, const std::vector<int32_t> & stats, int32_t t, int32_t P, std::vector<int32_t> & keep) const {
    const int32_t n = (int32_t) pos.size();
    kv_token_stats st;
    kv_ring_stats_decode(policy_.kind, stats.data(), std::min<int32_t>(n, (int32_t) stats.size() / 2), st);
    std::vector<float> scores((size_t) n);
    pol_->score(st, n, t, policy_, scores.data());
    keep = kv_select_keep(scores.data(), pos.data(), n, pol_->budget(t, P, policy_), pol_->recent(policy_), policy_.protect, sinks_);
}

void kv_ring_layer::select_scores(const std::vector<int32_t> & pos, const float * scores, int32_t t, int32_t P, std::vector<int32_t> & keep) const {
    keep = kv_select_keep(scores, pos.data(), (int32_t) pos.size(), pol_->budget(t, P, policy_), pol_->recent(policy_), policy_.protect, sinks_);
}

void kv_ring_qk_scores(kv_policy_kind kind, const kv_policy_params & pp, int32_t n, const float * imp, const double * rowsum, const int32_t * excl_idx,
                       const float * excl_val, float * scores) {
    std::vector<float> a(imp, imp + n);
    qk_max_pool(a, pp.pool);
    if (kind != KV_POLICY_RKV) {
        std::copy(a.begin(), a.end(), scores);
        return;
    }
    // rkv.cpp: colmean[j] = Σ_i row_i[j] / n, row_i[j] = cos(k_i, k_j) (0 for j = i) with one entry per row zeroed;
    // the similarity is symmetric, so Σ_i cos(k_i, k_j) is row j's sum
    std::vector<double> colmean((size_t) n);
    for (int32_t j = 0; j < n; j++) colmean[(size_t) j] = rowsum[j];
    for (int32_t i = 0; i < n; i++)
        if (excl_idx[i] >= 0 && excl_idx[i] < n) colmean[(size_t) excl_idx[i]] -= excl_val[i];
    for (double & c : colmean) c /= n;
    rkv_combine(a.data(), colmean.data(), n, pp, scores);
}

bool kv_ring_layer::evicts_one(int h, int32_t t, int32_t P) const {
    const head & x = heads_[(size_t) h];
    return pol_ && pol_->holds_budget && !pol_->position_only && due(h, t, P) && (int32_t) x.coded.size() + x.rc == pol_->budget(t, P, policy_) + 1;
}

int32_t kv_ring_layer::evict_one(int h, int32_t j, kv_ring_ops & op) {
    head & x = heads_[(size_t) h];
    const int32_t nq = (int32_t) x.coded.size();
    int32_t dropped = 0;
    if (j >= 0 && j < nq) {  // the last quantized token takes its index
        x.coded[(size_t) j] = x.coded.back();
        x.coded.pop_back();
        dropped = 1;
    } else if (j >= nq && j - nq < x.rc) {  // the last f16 slot's token takes its slot
        const int32_t s = j - nq, last = x.rc - 1;
        if (s != last) set_slot((size_t) h, s, x.slot_pos[(size_t) last]);
        set_slot((size_t) h, last, KV_RING_EMPTY);
        x.rc--;
        dropped = 1;
    }
    x.dropped = true;  // kv_cache marks a head dropped at every eviction it runs, even one that keeps all
    if (evict_coded_ && x.rc - evict_staging_ >= flush_) {  // kv_cache::retain flushes after the eviction
        std::vector<int32_t> live((size_t) x.rc);
        for (int32_t s = 0; s < x.rc; s++) live[(size_t) s] = s;
        compact_f16((size_t) h, live, op);
    }
    return dropped;
}

void kv_ring_layer::compact_f16(size_t h, const std::vector<int32_t> & live, kv_ring_ops & op) {
    head & x = heads_[h];
    // kv_cache::flush: the oldest unprotected tokens beyond the window, in whole blocks, oldest first (slots are in
    // position order unless a device-side eviction moved a head's last token into a hole)
    std::vector<int32_t> cand;  // indices into live
    for (size_t i = 0; i < live.size(); i++)
        if (!is_protected(x.slot_pos[(size_t) live[i]])) cand.push_back((int32_t) i);
    std::stable_sort(cand.begin(), cand.end(), [&](int32_t a, int32_t b) { return x.slot_pos[(size_t) live[(size_t) a]] < x.slot_pos[(size_t) live[(size_t) b]]; });
    const int32_t m = evict_coded_ && (int32_t) cand.size() > evict_staging_ ? ((int32_t) cand.size() - evict_staging_) / flush_ * flush_ : 0;
    op.enc_base = (int32_t) x.coded.size();
    std::vector<char> gone(live.size(), 0);
    for (int32_t i = 0; i < m; i++) {
        const int32_t s = live[(size_t) cand[(size_t) i]];
        op.enc_slot.push_back(s);
        op.enc_pos.push_back(x.slot_pos[(size_t) s]);
        x.coded.push_back(x.slot_pos[(size_t) s]);
        gone[(size_t) cand[(size_t) i]] = 1;
    }
    std::vector<int32_t> keep_pos;
    for (size_t i = 0; i < live.size(); i++) {
        if (gone[i]) continue;
        const int32_t s = live[i], k = (int32_t) keep_pos.size();
        keep_pos.push_back(x.slot_pos[(size_t) s]);
        if (s != k) {
            op.move_src.push_back(s);
            op.move_dst.push_back(k);
        }
    }
    const int32_t k = (int32_t) keep_pos.size();
    for (int32_t s = 0; s < k; s++)
        if (x.slot_pos[(size_t) s] != keep_pos[(size_t) s]) set_slot(h, s, keep_pos[(size_t) s]);
    for (int32_t s = k; s < x.rc; s++) {
        if (x.slot_pos[(size_t) s] == KV_RING_EMPTY) continue;
        op.clear_slot.push_back(s);
        set_slot(h, s, KV_RING_EMPTY);
    }
    if (journal_on_ && !op.move_src.empty()) moved_ = true;
    x.rc = k;
}

// Quantized tokens kept by a rewind to `keep`: kv_cache counts them over its position runs (the prefix of the
// coded order below keep; positions ascend but for displaced sinks: *prefix says whether that prefix holds every
// coded token below keep), so this does too.
int32_t kv_ring_layer::coded_below(const head & x, int32_t keep, bool * prefix) {
    std::vector<kv_pos_run> runs;
    for (int32_t p : x.coded) kv_runs_push(runs, p);
    bool all = true;
    const int32_t c = kv_runs_prefix_below(runs.data(), (int32_t) runs.size(), keep, &all);
    if (prefix) *prefix = all;
    return c;
}

int32_t kv_ring_layer::limit_stream(int32_t keep) const {
    // kv_cache::remove_from: a STREAM head that dropped tokens is exact down to its sinks, an EVICT head nowhere
    for (const head & x : heads_)
        if (x.dropped) keep = std::min(keep, x.kind == KV_RING_STREAM ? (int32_t) stream_sinks_ : 0);
    return keep;
}

int32_t kv_ring_layer::limit_coded(int32_t keep) const {
    for (const head & x : heads_) {
        if (!coded_head(x)) continue;
        bool prefix = true;
        const int32_t kept_q = coded_below(x, keep, &prefix);
        const int32_t P = std::min<int32_t>(keep, protect_);
        int32_t n_sink = 0;
        if (protect_sinks_)
            for (int32_t sp : sinks_) n_sink += sp >= protect_ && sp < keep;
        const int32_t fresh_q = std::max<int32_t>(0, keep - P - n_sink - staging_of(x)) / flush_ * flush_;
        // (kv_cache::remove_from: the coded tokens below keep must be a prefix of the coded order)
        if (kept_q != fresh_q || !prefix) keep = std::min<int32_t>(keep, std::max(0, protect_));
    }
    return keep;
}

void kv_ring_layer::truncate(int32_t keep, std::vector<kv_ring_ops> & ops) {
    ops.assign(heads_.size(), kv_ring_ops{});
    sinks_.erase(std::lower_bound(sinks_.begin(), sinks_.end(), keep), sinks_.end());
    sink_cand_.erase(std::remove_if(sink_cand_.begin(), sink_cand_.end(), [&](const std::pair<float, int32_t> & c) { return c.second >= keep; }),
                     sink_cand_.end());
    for (size_t h = 0; h < heads_.size(); h++) {
        head & x = heads_[h];
        x.dropped = false;
        if (x.kind == KV_RING_DENSE) {
            // the device's slots past keep keep their later positions, masked (a query at p sees positions <= p,
            // all written again before it runs) and overwritten in order: only the bookkeeping forgets them
            for (int32_t s = keep; s < std::min(x.rc, x.ring_cap); s++) set_slot(h, s, KV_RING_EMPTY);
            x.rc = keep;
            continue;
        }
        x.coded.resize((size_t) coded_below(x, keep));
        if (x.kind == KV_RING_EVICT) {  // compact, positions ascending: the slots past keep are a suffix
            int32_t k = 0;
            while (k < x.rc && x.slot_pos[(size_t) k] < keep) k++;
            for (int32_t s = k; s < x.rc; s++) {
                ops[h].clear_slot.push_back(s);
                set_slot(h, s, KV_RING_EMPTY);
            }
            x.rc = k;
            continue;
        }
        const int32_t old_lo = x.lo;
        x.lo = 0;
        for (int32_t p : x.coded) x.lo = std::max(x.lo, p + 1);
        for (int32_t s = 0; s < (int32_t) x.slot_pos.size(); s++) {
            const int32_t p = x.slot_pos[(size_t) s];
            if (p == KV_RING_EMPTY) continue;
            // past keep; or a ring copy that was quantized or moved to a fixed slot (below the old lo), which a
            // lower lo would bring back into view
            if (p >= keep || (s >= x.fix_cap && p < old_lo && p >= x.lo)) {
                ops[h].clear_slot.push_back(s);
                set_slot(h, s, KV_RING_EMPTY);
            }
        }
        x.rc = std::max<int32_t>(0, keep - x.fix_below);
    }
}

void kv_ring_layer::set_slot(size_t h, int32_t s, int32_t p) {
    int32_t & v = heads_[h].slot_pos[(size_t) s];
    if (journal_on_) journal_.push_back({(int32_t) h, s, v});
    v = p;
}

void kv_ring_layer::copy_from(const kv_ring_layer & src, const std::vector<char> & which) {
    for (size_t h = 0; h < heads_.size() && h < src.heads_.size(); h++)
        if (which[h]) heads_[h] = src.heads_[h];
    sinks_ = src.sinks_;
    sink_cand_ = src.sink_cand_;
    evicted_ = src.evicted_;
    compactions_ = src.compactions_;
    journal_on_ = moved_ = false;
    journal_.clear();
}

void kv_ring_layer::save_books(state_writer & w) const {
    w.pod((uint32_t) heads_.size());
    std::vector<int32_t> sp;
    for (const head & x : heads_) {
        w.pod(x.kind);
        w.pod(x.rc);
        w.pod(x.lo);
        w.pod((uint8_t) x.dropped);
        sp.clear();  // (slot, position) of every slot that holds a token, ascending by slot
        for (int32_t s = 0; s < (int32_t) x.slot_pos.size(); s++)
            if (x.slot_pos[(size_t) s] != KV_RING_EMPTY) {
                sp.push_back(s);
                sp.push_back(x.slot_pos[(size_t) s]);
            }
        w.vec(sp);
        w.vec(x.coded);
    }
    w.vec(sinks_);
    w.vec(sink_cand_);
    w.pod(evicted_);
    w.pod(compactions_);
}

bool kv_ring_layer::read_books(state_reader & r, int32_t n) {
    uint32_t H = 0;
    if (!r.pod(H)) return false;
    if (H != heads_.size()) return r.fail(strfmt("kv ring: %u heads in a layer, the configuration has %zu", H, heads_.size()));
    std::vector<int32_t> sp, coded;
    for (size_t h = 0; h < heads_.size(); h++) {
        head & x = heads_[h];
        uint8_t kind = 0, dropped = 0;
        int32_t rc = 0, lo = 0;
        if (!r.pod(kind) || !r.pod(rc) || !r.pod(lo) || !r.pod(dropped)) return false;
        auto bad = [&](const char * what) { return r.fail(strfmt("kv ring head %zu: %s", h, what)); };
        if (kind != x.kind) return bad("another kind of head than this configuration's");
        if (dropped > 1) return bad("an invalid flag");
        const int32_t slots = (int32_t) x.slot_pos.size();
        if (!r.vec(sp, 2 * (size_t) slots, "kv ring slots") || !r.vec(coded, (size_t) coded_cap_, "kv ring quantized tokens")) return false;
        if (sp.size() % 2) return bad("slot entries not in pairs");
        if (x.kind == KV_RING_EVICT ? rc < 0 || rc > x.ring_cap || lo != 0
                                    : rc != std::max<int32_t>(0, n - x.fix_below) || lo < 0 || lo > n || (x.kind == KV_RING_DENSE && lo != 0))
            return bad("ring counters that do not follow from the tokens");
        std::fill(x.slot_pos.begin(), x.slot_pos.end(), KV_RING_EMPTY);
        int32_t prev = -1;
        for (size_t i = 0; i < sp.size(); i += 2) {
            const int32_t sl = sp[i], p = sp[i + 1];
            if (sl <= prev || sl >= slots || p < 0 || p >= n) return bad("a slot out of order or range, or a position past the tokens");
            prev = sl;
            if (x.kind == KV_RING_EVICT) {
                if (sl >= rc) return bad("a token past the compact slots");
            } else if (sl < x.fix_below) {
                if (p != sl) return bad("a fixed slot holding another position");
            } else if (sl < x.fix_cap) {
                if (x.kind != KV_RING_CODED || p < x.fix_below) return bad("a sink slot in a head that has none, or holding a fixed position");
            } else if (p < x.fix_below || (p - x.fix_below) % x.ring_cap != sl - x.fix_cap || p < n - x.ring_cap) {
                return bad("a ring slot holding a position the ring does not put there");
            }
            x.slot_pos[(size_t) sl] = p;
        }
        if (x.kind == KV_RING_EVICT && (int32_t) (sp.size() / 2) != rc) return bad("compact slots with a hole");
        if (!coded_head(x) && !coded.empty()) return bad("quantized tokens in a head that keeps none");
        for (int32_t p : coded)
            if (p < 0 || p >= n || (x.kind == KV_RING_CODED && p >= lo)) return bad("a quantized token out of range");
        x.rc = rc;
        x.lo = lo;
        x.dropped = dropped != 0;
        x.coded.swap(coded);
        const std::vector<int32_t> held = held_positions((int) h);
        if (std::adjacent_find(held.begin(), held.end()) != held.end()) return bad("a position held twice");
    }
    if (!r.vec(sinks_, KV_MAX_SINKS + 1, "sinks") || !r.vec(sink_cand_, KV_MAX_SINKS, "sink candidates") || !r.pod(evicted_) || !r.pod(compactions_)) return false;
    for (size_t i = 0; i < sinks_.size(); i++)
        if (sinks_[i] < 0 || sinks_[i] >= std::max<int32_t>(n, 1) || (i > 0 && sinks_[i] <= sinks_[i - 1])) return r.fail("kv ring: sink positions out of order or range");
    for (const auto & c : sink_cand_)
        if (c.second < 0 || c.second >= std::max<int32_t>(n, 1) || !std::isfinite(c.first)) return r.fail("kv ring: a sink candidate out of range");
    if (evicted_ < 0 || compactions_ < 0) return r.fail("kv ring: eviction counters out of range");
    journal_on_ = moved_ = false;
    journal_.clear();
    return true;
}

void kv_ring_layer::begin() {
    journal_on_ = true;
    moved_ = false;
    journal_.clear();
    mark_.clear();
    for (const head & x : heads_) mark_.push_back({x.rc, x.lo, (int32_t) x.coded.size(), x.dropped});
    mark_sinks_ = sinks_;
    mark_cand_ = sink_cand_;
    mark_evicted_ = evicted_;
    mark_compactions_ = compactions_;
}

bool kv_ring_layer::rollback(std::vector<slot_entry> & restored) {
    restored.clear();
    if (!journal_on_) return true;
    const bool exact = !moved_;
    for (size_t i = journal_.size(); i-- > 0;) {
        const slot_entry & e = journal_[i];
        heads_[(size_t) e.head].slot_pos[(size_t) e.slot] = e.pos;
    }
    // one entry per slot, with the value it had at begin() (the device applies them in parallel)
    for (const slot_entry & e : journal_) {
        bool seen = false;
        for (const slot_entry & r : restored) seen |= r.head == e.head && r.slot == e.slot;
        if (!seen) restored.push_back(e);
    }
    for (size_t h = 0; h < heads_.size(); h++) {
        head & x = heads_[h];
        x.rc = mark_[h].rc;
        x.lo = mark_[h].lo;
        x.dropped = mark_[h].dropped;
        x.coded.resize((size_t) mark_[h].n_coded);
    }
    sinks_ = mark_sinks_;
    sink_cand_ = mark_cand_;
    evicted_ = mark_evicted_;
    compactions_ = mark_compactions_;
    journal_on_ = false;
    moved_ = false;
    journal_.clear();
    return exact;
}

} // namespace core
