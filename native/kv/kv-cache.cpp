// Paged per-head KV cache (see kv-cache.h).
#include "kv-cache.h"

#include <algorithm>
#include <cassert>
#include <chrono>
#include <cmath>
#include <cstring>

#include "../kernels/cpu/ops.h"

namespace core {

namespace {

void runs_push(std::vector<kv_pos_run> & r, int32_t pos) { kv_runs_push(r, pos); }

int32_t runs_count_below(const std::vector<kv_pos_run> & r, int32_t p) { return kv_runs_count_below(r.data(), (int32_t) r.size(), p); }

// new[k] = old[src[k]] for every per-token array of an EVICT head (policy statistics and probabilities),
// which are laid out [coded tokens | f16 tokens]
template <class T> void gather(std::vector<T> & a, const std::vector<int32_t> & src) {
    if (a.empty()) return;
    std::vector<T> out(src.size());
    for (size_t k = 0; k < src.size(); k++) out[k] = a[(size_t) src[k]];
    a.swap(out);
}

void runs_truncate(std::vector<kv_pos_run> & r, int32_t k) {
    while (!r.empty() && r.back().first >= k) r.pop_back();
    if (!r.empty()) r.back().n = std::min(r.back().n, k - r.back().first);
}

} // namespace

size_t kv_page_bytes(int head_dim, int head_dim_v) { return (size_t) KV_PAGE_TOKENS * (head_dim + head_dim_v) * sizeof(f16_t); }

kv_cache::kv_cache(const kv_cache_config & cfg, std::shared_ptr<page_pool> pool) : cfg_(cfg), pool_(std::move(pool)) {
    heads_.resize((size_t) cfg_.n_layer * cfg_.n_head_kv);
    layer_has_evict_.assign((size_t) cfg_.n_layer, 0);
    for (size_t i = 0; i < heads_.size(); i++) {
        heads_[i].mode = cfg_.retention.empty() ? (uint8_t) KV_RETAIN_FULL : cfg_.retention[i];
        if (heads_[i].mode == KV_RETAIN_EVICT) layer_has_evict_[i / cfg_.n_head_kv] = 1;
    }
    policy_ = kv_policy_get(cfg_.policy.kind);
    for (char e : layer_has_evict_) layer_has_evict_any_ |= e != 0;
    sinks_.assign((size_t) cfg_.n_layer, {});
    sink_cand_.assign((size_t) cfg_.n_layer, {});
    if (cfg_.n_head <= 0) cfg_.n_head = cfg_.n_head_kv;
    if (policy_ && policy_->score_qk) {
        q_window_ = policy_->query_window(cfg_.policy);
        // only layers with evicting heads record queries (wants_queries)
        qring_.resize((size_t) cfg_.n_layer);
        qcount_.assign((size_t) cfg_.n_layer, 0);
        qpos_.resize((size_t) cfg_.n_layer);
        qheld_.assign((size_t) cfg_.n_layer, 0);
        for (size_t il = 0; il < (size_t) cfg_.n_layer; il++) {
            if (!layer_has_evict_[il]) continue;
            qring_[il].assign((size_t) q_window_ * cfg_.n_head * cfg_.head_dim, 0.0f);
            qpos_[il].assign((size_t) q_window_, 0);
        }
    }
    chunk_sinks_saved_.assign((size_t) cfg_.n_layer, 0);
    chunk_sinks_.assign((size_t) cfg_.n_layer, {});
    chunk_sink_cand_.assign((size_t) cfg_.n_layer, {});
    const kv_storage_config & st = cfg_.storage;
    if (st.coded()) {
        kv_coded_view & c = cv0_;
        c.kc = &kv_codec_get(st.key);
        c.vc = &kv_codec_get(st.value);
        const float clip_k = st.clip_of(st.key), clip_v = st.clip_of(st.value);
        c.kp = {cfg_.head_dim, st.group, clip_k, true};
        c.vp = {cfg_.head_dim_v, st.group, clip_v, false};
        c.k_block_tokens = c.kc->block_tokens(c.kp);
        c.v_block_tokens = c.vc->block_tokens(c.vp);
        c.k_block_bytes = c.kc->block_bytes(c.kp);
        c.v_block_bytes = c.vc->block_bytes(c.vp);
        c.k_page_tokens = (int32_t) (pool_->page_bytes() / c.k_block_bytes) * c.k_block_tokens;
        c.v_page_tokens = (int32_t) (pool_->page_bytes() / c.v_block_bytes) * c.v_block_tokens;
        c.st = &cfg_.storage;
        // EVICT heads too when the codecs and the policy allow it (kv_storage_check); STREAM heads stay f16
        const bool evict_ok = kv_storage_check(cfg_).ok();
        for (auto & h : heads_) h.coded = h.mode == KV_RETAIN_FULL || (h.mode == KV_RETAIN_EVICT && evict_ok);
        // grouped key rotation where a whole group is FULL (kv_storage_check validated rot_group)
        const int RG = st.rot_group;
        sib_.resize(heads_.size());
        for (size_t i = 0; i < heads_.size(); i++) sib_[i] = &heads_[i].cv;
        if (RG > 1 && c.kc->rotated && !st.post_rope && cfg_.n_head_kv % RG == 0) {
            for (size_t g0 = 0; g0 < heads_.size(); g0 += (size_t) RG) {
                bool all_full = true;
                for (int s = 0; s < RG; s++) all_full &= heads_[g0 + (size_t) s].mode == KV_RETAIN_FULL && heads_[g0 + (size_t) s].coded;
                if (!all_full) continue;
                for (int s = 0; s < RG; s++) { heads_[g0 + (size_t) s].rot_g = RG; heads_[g0 + (size_t) s].rot_slot = s; }
            }
        }
    }
}

status kv_storage_check(const kv_cache_config & cfg) {
    const kv_storage_config & st = cfg.storage;
    if (st.rot_group != 1) {
        const int rg = st.rot_group;
        if (rg < 1 || (rg & (rg - 1)) || cfg.n_head_kv % rg) {
            return status(ERR_INVALID_ARG, strfmt("kv storage: a key rotation group of %d heads must be a power of two dividing the %d KV heads", rg, cfg.n_head_kv));
        }
        if (!kv_codec_get(st.key).rotated || st.post_rope) {
            return status(ERR_INVALID_ARG, "kv storage: grouped key rotation needs rot keys rotated before RoPE (RotateKV's pre-RoPE variant)");
        }
    }
    bool evict = false;
    for (uint8_t r : cfg.retention) evict |= r == KV_RETAIN_EVICT;
    if (!st.coded() || !evict) return {};
    // §6.2 C7: evicting single tokens needs per-token blocks (KIVI's keys group 32 tokens per channel)
    const kv_codec_traits & kc = kv_codec_get(st.key), & vc = kv_codec_get(st.value);
    const kv_codec_params kp{cfg.head_dim, st.group, 1.0f, true}, vp{cfg.head_dim_v, st.group, 1.0f, false};
    if (kc.block_tokens(kp) != 1 || vc.block_tokens(vp) != 1) {
        return status(ERR_INVALID_ARG, strfmt("kv storage: codecs %s/%s group tokens into blocks, which per-token eviction cannot split "
                                              "(ALGORITHMS.md §6.2 C7); on evicting heads use a per-token codec (rot2/3/4, q8, q4)", kc.name, vc.name));
    }
    const kv_policy * pol = kv_policy_get(cfg.policy.kind);
    if (pol && pol->score_qk) {
        return status(ERR_INVALID_ARG, strfmt("kv storage: the %s policy scores from f16 keys; combine codecs with a policy that scores "
                                              "from attention (lazy, h2o, tova, streaming)", pol->name));
    }
    return {};
}

kv_cache::~kv_cache() {
    for (auto & h : heads_) free_head_pages(h);
    drop_checkpoint();
}

void kv_cache::free_pages(page_pool & pool, head_store & h) {
    for (void * p : h.pages) pool.free(p);
    for (void * p : h.qk_pages) pool.free(p);
    for (void * p : h.qv_pages) pool.free(p);
    h.pages.clear();
    h.qk_pages.clear();
    h.qv_pages.clear();
}

bool kv_cache::copy_head(const head_store & s, head_store & d) {
    d = s;
    d.pages.clear();
    d.qk_pages.clear();
    d.qv_pages.clear();
    const size_t page_bytes = pool_->page_bytes();
    auto copy_pages = [&](const std::vector<void *> & from, std::vector<void *> & to) {
        for (void * p : from) {
            void * q = pool_->alloc();
            if (!q) return false;
            std::memcpy(q, p, page_bytes);
            to.push_back(q);
        }
        return true;
    };
    if (copy_pages(s.pages, d.pages) && copy_pages(s.qk_pages, d.qk_pages) && copy_pages(s.qv_pages, d.qv_pages)) return true;
    free_head_pages(d);
    return false;
}

status kv_cache::save_checkpoint(bool bounded_only) {
    drop_checkpoint();
    if (bounded_only) {
        for (const auto & h : heads_) {
            if (h.mode == KV_RETAIN_EVICT && h.n + kv_runs_count(h.qruns) > cfg_.policy.capacity) return {};
        }
    }
    std::vector<char> saved(heads_.size(), 0);
    bool any = false;
    for (size_t i = 0; i < heads_.size(); i++) any |= (saved[i] = heads_[i].mode != KV_RETAIN_FULL || heads_[i].coded) != 0;
    if (!any) return {};  // (plain f16 FULL heads rewind exactly)
    checkpoint_state & c = ckpt_;
    c.heads.assign(heads_.size(), head_store{});
    c.codes_live.assign(heads_.size(), 0);
    for (size_t i = 0; i < heads_.size(); i++) {
        if (!saved[i]) continue;
        const head_store & h = heads_[i];
        // a coded FULL head: its f16 pages only (its codes stay in the live head, which only appends to them)
        c.codes_live[i] = h.mode == KV_RETAIN_FULL && h.coded;
        head_store f16_only;
        if (c.codes_live[i]) {
            f16_only = h;
            f16_only.qk_pages.clear();
            f16_only.qv_pages.clear();
        }
        if (!copy_head(c.codes_live[i] ? f16_only : h, c.heads[i])) {
            c.n = 0;  // (drop_checkpoint frees what was copied)
            drop_checkpoint();
            return status(ERR_OOM_HOST, "kv cache checkpoint: out of memory copying the cache's lossy heads");
        }
    }
    c.saved = std::move(saved);
    c.wide = wide();
    c.n = n_logical_;
    ckpt_current_ = true;
    return {};
}

void kv_cache::set_wide(wide_state w) {
    sinks_ = std::move(w.sinks);
    sink_cand_ = std::move(w.sink_cand);
    step_ = w.step;
    prompt_ = w.prompt;
    qring_ = std::move(w.qring);
    qcount_ = std::move(w.qcount);
    qheld_ = std::move(w.qheld);
    qpos_ = std::move(w.qpos);
    evicted_ = w.evicted;
    compactions_ = w.compactions;
    compaction_s_ = w.compaction_s;
}

void kv_cache::drop_checkpoint() {
    ckpt_current_ = false;
    for (auto & h : ckpt_.heads) free_head_pages(h);
    ckpt_ = checkpoint_state{};
}

// Back to the checkpoint (see save_checkpoint); false, with the cache untouched, when the pool runs dry.
bool kv_cache::restore_checkpoint() {
    checkpoint_state & c = ckpt_;
    std::vector<head_store> fresh(heads_.size());
    for (size_t i = 0; i < heads_.size(); i++) {
        if (c.saved[i] && !copy_head(c.heads[i], fresh[i])) {
            for (auto & h : fresh) free_head_pages(h);
            return false;
        }
    }
    for (size_t i = 0; i < heads_.size(); i++) {
        head_store & h = heads_[i];
        if (c.saved[i] && c.codes_live[i]) {
            // the live head's codes, cut to the checkpoint's count (the same tokens, quantized alike), under the
            // checkpoint's f16 pages and runs
            const int32_t nq = kv_runs_count(fresh[i].qruns);
            std::vector<void *> qk = std::move(h.qk_pages), qv = std::move(h.qv_pages);
            auto shrink = [&](std::vector<void *> & pages, int32_t per_page) {
                const size_t need = (size_t) ((nq + per_page - 1) / per_page);
                while (pages.size() > need) { pool_->free(pages.back()); pages.pop_back(); }
            };
            shrink(qk, cv0_.k_page_tokens);
            shrink(qv, cv0_.v_page_tokens);
            h.qk_pages.clear();
            h.qv_pages.clear();
            free_head_pages(h);
            h = std::move(fresh[i]);
            h.qk_pages = std::move(qk);
            h.qv_pages = std::move(qv);
            rebuild_segments(h);
        } else if (c.saved[i]) {
            free_head_pages(h);
            h = std::move(fresh[i]);
            rebuild_segments(h);
        } else {  // a plain f16 FULL head: its first c.n tokens are the checkpoint's
            int32_t keep = 0;
            while (keep < h.n && h.pos[(size_t) keep] < c.n) keep++;
            std::vector<int32_t> idx((size_t) keep);
            for (int32_t j = 0; j < keep; j++) idx[(size_t) j] = j;
            compact(h, idx);
        }
    }
    set_wide(c.wide);
    n_logical_ = c.n;
    ckpt_current_ = true;
    chunk_exact_ = true;
    chunk_pos0_ = c.n;
    chunk_step0_ = step_;
    chunk_prompt0_ = prompt_;
    std::fill(chunk_sinks_saved_.begin(), chunk_sinks_saved_.end(), 0);
    return true;
}

// Tokens leave staging in blocks of this many (a multiple of both codecs' block sizes).
int kv_cache::flush_tokens() const { return std::max({KV_TILE, cv0_.k_block_tokens, cv0_.v_block_tokens}); }

// f16 staging window of a coded head: an EVICT head keeps at least its policy's protected recent window in
// f16 (§6.2 C5: w_fp = W), so its young tokens' statistics come from exact keys and tokens are quantized
// once they may be evicted, not before.
int32_t kv_cache::staging_of(const head_store & h) const {
    if (h.mode != KV_RETAIN_EVICT || !policy_) return cfg_.storage.staging;
    // (streaming's "recent" is its whole budget: it still quantizes past the window W)
    const int32_t w = std::min<int32_t>(policy_->recent(cfg_.policy), cfg_.policy.window);
    return std::max<int32_t>(cfg_.storage.staging, w);
}

void kv_cache::gather_stats(head_store & h, const std::vector<int32_t> & src) {
    gather(h.stats.last, src);
    gather(h.stats.mri, src);
    gather(h.stats.acc, src);
    gather(h.stats.cur, src);
    gather(h.p_max, src);
    gather(h.p_sum, src);
}

void kv_cache::positions_all(const head_store & h, std::vector<int32_t> & out) const {
    out.clear();
    for (const kv_pos_run & r : h.qruns) for (int32_t i = 0; i < r.n; i++) out.push_back(r.pos + i);
    out.insert(out.end(), h.pos.begin(), h.pos.end());
}

// Keeps the coded tokens listed in `keep` (ascending coded indices): per-token blocks move down in order,
// the position runs are rebuilt from the kept positions (pos: the head's positions_all, coded ones first),
// and pages no longer needed go back to the pool.
void kv_cache::compact_coded(head_store & h, const std::vector<int32_t> & keep, const std::vector<int32_t> & pos) {
    const kv_coded_view & c = cv0_;
    auto move = [&](std::vector<void *> & pages, int32_t per_page, size_t bb) {
        for (size_t i = 0; i < keep.size(); i++) {
            const int32_t src = keep[i], dst = (int32_t) i;
            if (src == dst) continue;
            std::memcpy((uint8_t *) pages[(size_t) (dst / per_page)] + (size_t) (dst % per_page) * bb,
                        (const uint8_t *) pages[(size_t) (src / per_page)] + (size_t) (src % per_page) * bb, bb);
        }
        const size_t need = (keep.size() + (size_t) per_page - 1) / (size_t) per_page;
        while (pages.size() > need) { pool_->free(pages.back()); pages.pop_back(); }
    };
    move(h.qk_pages, c.k_page_tokens, c.k_block_bytes);
    move(h.qv_pages, c.v_page_tokens, c.v_block_bytes);
    std::vector<kv_pos_run> runs;
    for (int32_t j : keep) runs_push(runs, pos[(size_t) j]);
    h.qruns.swap(runs);
}

// Moves the oldest unprotected f16 tokens beyond the staging window to codec pages, in whole blocks, for
// heads ih0 .. ih0 + nh − 1: one head, or a key rotation group of FULL heads (they hold the same tokens:
// the same protected prefix, sinks and staging). The staged key is post-RoPE f16: rot keys (pre-RoPE
// variant) are un-RoPE'd at their position first (RoPE is orthogonal: rotating by −pos inverts it), then
// FWHT'd — per head, and for a group also across its heads (H_{nh·D} = H_nh ⊗ H_D: the per-head transforms,
// then butterflies over the heads, scaled 1/√nh) — and permuted per head; rot values are FWHT'd per head.
void kv_cache::flush(int il, int ih0, int nh) {
    const kv_storage_config & st = cfg_.storage;
    const kv_coded_view & c = cv0_;
    const int D = cfg_.head_dim, DV = cfg_.head_dim_v, F = flush_tokens(), H = cfg_.n_head_kv;
    head_store & h = heads_[(size_t) il * H + ih0];
    // protected: the first `protect` positions and this layer's sinks; they stay in f16 wherever they are
    const std::vector<int32_t> & sk = sinks_[(size_t) il];
    auto prot = [&](int32_t pos) { return pos < st.protect || (st.protect_sinks && std::binary_search(sk.begin(), sk.end(), pos)); };
    std::vector<int32_t> cand;  // f16 indices of unprotected tokens, oldest first
    for (int32_t j = 0; j < h.n; j++) if (!prot(h.pos[(size_t) j])) cand.push_back(j);
    const int32_t m = ((int32_t) cand.size() - staging_of(h)) / F * F;
    if (m <= 0) return;
    chunk_exact_ = false;  // (tokens older than this chunk may move to codec pages)
    const int32_t nq = kv_runs_count(h.qruns);
    // (past the early return: this runs at every decode step for every coded head)
    std::vector<head_store *> hs((size_t) nh);
    for (int s = 0; s < nh; s++) hs[(size_t) s] = &heads_[(size_t) il * H + ih0 + s];
    for (int s = 1; s < nh; s++) assert(hs[(size_t) s]->pos == h.pos && kv_runs_count(hs[(size_t) s]->qruns) == nq);
    // pages for the new blocks; on OOM the tokens simply stay in f16
    auto grow = [&](std::vector<void *> & pages, int32_t per_page) {
        while ((int64_t) pages.size() * per_page < (int64_t) nq + m) {
            void * pg = pool_->alloc();
            if (!pg) return false;
            pages.push_back(pg);
        }
        return true;
    };
    for (head_store * x : hs) if (!grow(x->qk_pages, c.k_page_tokens) || !grow(x->qv_pages, c.v_page_tokens)) return;
    const bool pre = c.kc->rotated && !st.post_rope;
    // [nh][F][D] keys and [nh][F][DV] values of one block of tokens, ready to encode
    std::vector<float> kb((size_t) nh * F * D), vb((size_t) nh * F * DV), tmp((size_t) nh * std::max(D, DV)), cs((size_t) std::max(st.n_rot, 2));
    const float gs = 1.0f / std::sqrt((float) nh);
    for (int32_t b0 = 0; b0 < m; b0 += F) {
        for (int t = 0; t < F; t++) {
            const int32_t j = cand[(size_t) (b0 + t)];
            const int32_t jj = j % KV_PAGE_TOKENS;
            if (pre) rope_cache_ref(cs.data(), -h.pos[(size_t) j], st.n_rot, st.freq_base, st.freq_scale, st.freq_factors);
            for (int s = 0; s < nh; s++) {
                const kv_segment & sg = hs[(size_t) s]->segs[(size_t) (j / KV_PAGE_TOKENS)];
                float * x = tmp.data() + (size_t) s * D;
                for (int d = 0; d < D; d++) x[d] = f16_to_f32(sg.key(jj, d, D));
                if (pre) rope_apply_ref(x, 1, D, st.n_rot, st.rope, cs.data());
                if (c.kc->rotated) fwht_ref(x, D);
                float * vr = vb.data() + ((size_t) s * F + t) * DV;
                for (int d = 0; d < DV; d++) vr[d] = f16_to_f32(sg.v[(size_t) jj * DV + d]);
                if (c.vc->rotated) fwht_ref(vr, DV);
            }
            for (int len = 1; len < nh; len <<= 1) {  // H_nh across the heads' rotated keys
                for (int i = 0; i < nh; i += 2 * len) {
                    for (int s = i; s < i + len; s++) {
                        float * a = tmp.data() + (size_t) s * D, * b = tmp.data() + (size_t) (s + len) * D;
                        for (int d = 0; d < D; d++) { const float u = a[d], w = b[d]; a[d] = u + w; b[d] = u - w; }
                    }
                }
            }
            for (int s = 0; s < nh; s++) {
                const int32_t * perm = st.perm.empty() || !c.kc->rotated ? nullptr : st.perm.data() + ((size_t) il * H + ih0 + s) * D;
                const float * x = tmp.data() + (size_t) s * D;
                float * kr = kb.data() + ((size_t) s * F + t) * D;
                for (int d = 0; d < D; d++) kr[d] = x[(size_t) (perm ? perm[d] : d)] * (nh > 1 ? gs : 1.0f);
                runs_push(hs[(size_t) s]->qruns, h.pos[(size_t) j]);
            }
        }
        for (int s = 0; s < nh; s++) {
            head_store & x = *hs[(size_t) s];
            for (int t = 0; t < F; t += c.k_block_tokens) {
                const int32_t q = nq + b0 + t, b = q / c.k_block_tokens, bpp = c.k_page_tokens / c.k_block_tokens;
                c.kc->encode(c.kp, kb.data() + ((size_t) s * F + t) * D, (uint8_t *) x.qk_pages[(size_t) (b / bpp)] + (size_t) (b % bpp) * c.k_block_bytes);
            }
            for (int t = 0; t < F; t += c.v_block_tokens) {
                const int32_t q = nq + b0 + t, b = q / c.v_block_tokens, bpp = c.v_page_tokens / c.v_block_tokens;
                c.vc->encode(c.vp, vb.data() + ((size_t) s * F + t) * DV, (uint8_t *) x.qv_pages[(size_t) (b / bpp)] + (size_t) (b % bpp) * c.v_block_bytes);
            }
        }
    }
    std::vector<int32_t> keep, src;
    keep.reserve((size_t) (h.n - m));
    for (int32_t j = 0, c = 0; j < h.n; j++) {
        if (c < m && cand[(size_t) c] == j) { c++; continue; }
        keep.push_back(j);
    }
    if (h.mode == KV_RETAIN_EVICT) {  // (a head alone) statistics follow their tokens: [coded | moved | f16 kept]
        for (int32_t j = 0; j < nq; j++) src.push_back(j);
        for (int32_t i = 0; i < m; i++) src.push_back(nq + cand[(size_t) i]);
        for (int32_t j : keep) src.push_back(nq + j);
        gather_stats(h, src);
    }
    for (head_store * x : hs) compact(*x, keep);  // also rebuilds the coded views
}

// ALGORITHMS.md §3.5 over a chunked prompt: the sink set is the tokens of the 20 largest |values| of the
// layer input over the *whole* prompt (a token holding several of them counts once), plus token 0; a
// union of per-chunk top-20s would grow by up to 20 tokens every chunk. A token displaced by a later chunk
// is quantized at its next flush like any other (nothing already quantized is ever requantized).
void kv_sinks_merge(std::vector<std::pair<float, int32_t>> & cand, const std::vector<int32_t> & positions, const std::vector<float> & magnitudes,
                    std::vector<int32_t> & sinks) {
    for (size_t i = 0; i < positions.size(); i++) cand.emplace_back(magnitudes[i], positions[i]);
    std::stable_sort(cand.begin(), cand.end(), [](const auto & a, const auto & b) { return a.first > b.first; });
    if (cand.size() > (size_t) KV_MAX_SINKS) cand.resize((size_t) KV_MAX_SINKS);
    sinks.clear();
    for (const auto & c : cand) sinks.push_back(c.second);
    sinks.push_back(0);  // token 0 is always a sink (sequences start at position 0)
    std::sort(sinks.begin(), sinks.end());
    sinks.erase(std::unique(sinks.begin(), sinks.end()), sinks.end());
}

void kv_cache::add_sinks(int il, const std::vector<int32_t> & positions, const std::vector<float> & magnitudes) {
    if (!chunk_sinks_saved_[(size_t) il]) {  // (at most KV_MAX_SINKS entries: revert_chunk restores them)
        chunk_sinks_[(size_t) il] = sinks_[(size_t) il];
        chunk_sink_cand_[(size_t) il] = sink_cand_[(size_t) il];
        chunk_sinks_saved_[(size_t) il] = 1;
    }
    kv_sinks_merge(sink_cand_[(size_t) il], positions, magnitudes, sinks_[(size_t) il]);  // elements, not tokens
}

void kv_cache::record_query(int il, const float * q, int32_t pos) {
    const size_t row = (size_t) cfg_.n_head * cfg_.head_dim;
    const int32_t slot = qcount_[(size_t) il] % q_window_;
    std::memcpy(qring_[(size_t) il].data() + (size_t) slot * row, q, row * sizeof(float));
    qpos_[(size_t) il][(size_t) slot] = pos;
    qcount_[(size_t) il]++;
    qheld_[(size_t) il] = std::min(qheld_[(size_t) il] + 1, q_window_);
}

// The window holds queries of tokens the sequence holds: a rewind (or a reverted chunk) takes the queries
// of the tokens it removes with them, newest first. The slots they free are not refilled with the older
// queries they had overwritten, so the window is shorter until new steps fill it.
void kv_cache::drop_queries_from(int32_t pos) {
    for (size_t il = 0; il < qheld_.size(); il++) {
        while (qheld_[il] > 0 && qpos_[il][(size_t) ((qcount_[il] - 1) % q_window_)] >= pos) {
            qcount_[il]--;
            qheld_[il]--;
        }
    }
}

status kv_cache::reserve(int n_tokens) {
    if ((int64_t) n_logical_ + n_tokens > cfg_.n_ctx) {
        return status(ERR_CONTEXT_FULL, strfmt("kv_cache: %d new tokens at position %d exceed the context size %d", n_tokens, n_logical_, cfg_.n_ctx));
    }
    // room first: a failure leaves the counters and the chunk state as they were (pages already taken stay
    // with their heads, for the next try)
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
    chunk_exact_ = true;
    chunk_pos0_ = n_logical_;
    chunk_step0_ = step_;
    chunk_prompt0_ = prompt_;
    std::fill(chunk_sinks_saved_.begin(), chunk_sinks_saved_.end(), 0);
    ckpt_current_ = false;
    // a single token after a prompt is a decode step; anything else is (more) prompt
    if (n_tokens == 1 && n_logical_ > 0) {
        step_++;
    } else {
        step_ = 0;
        prompt_ = n_logical_ + n_tokens;
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
            const size_t n_all = (size_t) h.n + (size_t) kv_runs_count(h.qruns);
            h.p_max.assign(n_all, 0.0f);
            h.p_sum.assign(n_all, 0.0f);
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
    if (h.coded) {
        const size_t i = (size_t) (&h - heads_.data());
        h.cv = cv0_;
        h.cv.n = kv_runs_count(h.qruns);
        h.cv.runs = h.qruns.data();
        h.cv.n_runs = (int32_t) h.qruns.size();
        h.cv.kpages = h.qk_pages.data();
        h.cv.vpages = h.qv_pages.data();
        h.cv.perm = cfg_.storage.perm.empty() ? nullptr : cfg_.storage.perm.data() + i * cfg_.head_dim;
        h.cv.rot_g = h.rot_g;
        h.cv.rot_slot = h.rot_slot;
        h.cv.sib = h.rot_g > 1 ? sib_.data() + (i - (size_t) h.rot_slot) : nullptr;
    }
}

// Moves the f16 tokens listed in `keep` (ascending source indices) to the front, in order, and frees the
// pages no longer needed. Destinations never pass their sources, so copying in order is safe in place.
// Per-token policy arrays are the caller's (gather_stats).
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
        }
        dst++;
    }
    h.n = dst;
    h.pos.resize((size_t) dst);
    const size_t pages_needed = (size_t) (dst + KV_PAGE_TOKENS - 1) / KV_PAGE_TOKENS;
    while (h.pages.size() > pages_needed) {
        pool_->free(h.pages.back());
        h.pages.pop_back();
    }
    rebuild_segments(h);
}

void kv_cache::retain(int il) {
    const int S = cfg_.stream_sinks, R = cfg_.stream_recent, H = cfg_.n_head_kv;
    std::vector<int32_t> & keep = keep_;
    for (int ih = 0; ih < H; ih++) {
        head_store & h = heads_[(size_t) il * H + ih];
        // EVICT heads: after their eviction step; a rotation group flushes together, from its first slot
        if (h.coded && h.mode != KV_RETAIN_EVICT && h.rot_slot == 0) flush(il, ih, h.rot_g);
    }
    for (int ih = 0; ih < H; ih++) {
        head_store & h = heads_[(size_t) il * H + ih];
        if (h.mode != KV_RETAIN_STREAM || h.n <= S + R) continue;
        keep.clear();
        for (int32_t j = 0; j < S; j++) keep.push_back(j);
        for (int32_t j = h.n - R; j < h.n; j++) keep.push_back(j);
        evicted_ += h.n - (int64_t) keep.size();
        compact(h, keep);
        h.dropped = true;
        chunk_exact_ = false;
    }
    if (!layer_has_evict_[(size_t) il]) return;
    // An EVICT head's tokens, as its policy sees them: [coded | f16] (a plain head: f16 only). Positions
    // are not sorted across the two parts (protected f16 tokens are old); kv_select_keep goes by position.
    // They are listed only when needed: for TOVA's layer mean, and for a head whose eviction is due.
    std::vector<std::vector<int32_t>> & pos_all = pos_all_;
    pos_all.resize((size_t) H);
    // layer mean of the probabilities (TOVA), defined when every head of the layer holds the same token set
    std::vector<float> & layer_mean = layer_mean_;
    bool same = policy_->needs_layer_mean;
    for (int ih = 0; ih < H && same; ih++) {
        const head_store & h = heads_[(size_t) il * H + ih];
        positions_all(h, pos_all[(size_t) ih]);
        same = h.mode == KV_RETAIN_EVICT && pos_all[(size_t) ih] == pos_all[0];
    }
    if (same) {
        layer_mean.assign(pos_all[0].size(), 0.0f);
        const float inv = 1.0f / (float) cfg_.n_head;  // p_sum already sums the group's query heads
        for (int ih = 0; ih < H; ih++) {
            const head_store & h = heads_[(size_t) il * H + ih];
            for (size_t j = 0; j < layer_mean.size(); j++) layer_mean[j] += h.p_sum[j] * inv;
        }
    }
    std::vector<float> & scores = scores_;
    for (int ih = 0; ih < H; ih++) {
        head_store & h = heads_[(size_t) il * H + ih];
        if (h.mode != KV_RETAIN_EVICT) continue;
        const int32_t nq = kv_runs_count(h.qruns), n_all = h.n + nq;
        kv_step_probs p{h.p_max.data(), h.p_sum.data(), same ? layer_mean.data() : nullptr};
        // the held tokens' statistics take this step's observation (snapkv and rkv keep none)
        if (!h.stats.last.empty() || !h.stats.mri.empty() || !h.stats.acc.empty() || !h.stats.cur.empty()) chunk_exact_ = false;
        policy_->observe(h.stats, n_all, p, step_, cfg_.policy);
        if (policy_->due(step_, n_all, prompt_, cfg_.policy)) {
            const auto t0 = std::chrono::steady_clock::now();
            std::vector<int32_t> & pa = pos_all[(size_t) ih];
            if (!same) positions_all(h, pa);
            scores.resize((size_t) n_all);
            if (policy_->score_qk) {  // (never with coded heads: kv_storage_check)
                // the group's rows of the recorded queries, oldest first
                const int G = cfg_.n_head / H, D = cfg_.head_dim;
                const int nqr = std::min<int32_t>(qcount_[(size_t) il], q_window_);
                std::vector<float> qs((size_t) nqr * G * D);
                for (int i = 0; i < nqr; i++) {
                    const int32_t slot = (qcount_[(size_t) il] - nqr + i) % q_window_;
                    const float * src = qring_[(size_t) il].data() + ((size_t) slot * cfg_.n_head + (size_t) ih * G) * D;
                    std::memcpy(qs.data() + (size_t) i * G * D, src, sizeof(float) * G * D);
                }
                const kv_head_view hv = head(il, ih);
                kv_qk_inputs in;
                in.head = &hv;
                in.head_dim = D;
                in.group = G;
                in.queries = qs.data();
                in.n_queries = nqr;
                in.scale = 1.0f / std::sqrt((float) D);
                policy_->score_qk(in, cfg_.policy, scores.data());
            } else {
                policy_->score(h.stats, n_all, step_, cfg_.policy, scores.data());
            }
            keep = kv_select_keep(scores.data(), pa.data(), n_all, policy_->budget(step_, prompt_, cfg_.policy), policy_->recent(cfg_.policy), cfg_.policy.protect, sinks_[(size_t) il]);
            evicted_ += n_all - (int64_t) keep.size();
            std::vector<int32_t> keep_c, keep_f;
            for (int32_t j : keep) (j < nq ? keep_c : keep_f).push_back(j < nq ? j : j - nq);
            gather_stats(h, keep);
            if (h.coded) compact_coded(h, keep_c, pa);
            compact(h, keep_f);
            h.dropped = true;
            chunk_exact_ = false;
            compactions_++;
            compaction_s_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        }
        if (h.coded) flush(il, ih, 1);  // the survivors past the f16 window (§6.1 step 9)
    }
}

std::vector<int32_t> kv_cache::held_positions(int il, int ih) const {
    std::vector<int32_t> out;
    positions_all(heads_[(size_t) il * cfg_.n_head_kv + ih], out);
    std::sort(out.begin(), out.end());
    return out;
}

kv_head_view kv_cache::head(int il, int ih) const {
    const head_store & h = heads_[(size_t) il * cfg_.n_head_kv + ih];
    return {h.n, (int32_t) h.segs.size(), h.segs.data(), h.coded ? &h.cv : nullptr};
}

int32_t kv_cache::remove_from(int32_t p) {
    p = std::max<int32_t>(p, 0);
    if (ckpt_.n >= 0 && p < ckpt_.n) drop_checkpoint();
    if (p >= n_logical_) return n_logical_;
    // A head that dropped tokens cannot be rewound exactly: a STREAM head only down to its sinks (which a
    // fresh evaluation keeps too), an EVICT head not at all (its policy state depends on every step).
    int32_t keep_pos = p;
    for (const auto & h : heads_) {
        if (!h.dropped) continue;
        keep_pos = std::min(keep_pos, h.mode == KV_RETAIN_STREAM ? (int32_t) cfg_.stream_sinks : 0);
    }
    // A coded head is exact at keep_pos when a fresh evaluation to keep_pos would have quantized exactly
    // the tokens it keeps quantized (flushing depends on the token count only); otherwise only the
    // protected prefix, which is never quantized, is exact.
    const int F = cfg_.storage.coded() ? flush_tokens() : 1;
    for (const auto & h : heads_) {
        if (!h.coded) continue;
        bool prefix = true;
        const int32_t kept_q = kv_runs_prefix_below(h.qruns.data(), (int32_t) h.qruns.size(), keep_pos, &prefix);
        const int32_t P = std::min<int32_t>(keep_pos, cfg_.storage.protect);
        int32_t n_sink = 0;  // sinks that are not already inside the protected prefix
        if (cfg_.storage.protect_sinks) {
            const auto & sk = sinks_[(size_t) (&h - heads_.data()) / cfg_.n_head_kv];
            for (int32_t sp : sk) n_sink += sp >= cfg_.storage.protect && sp < keep_pos;
        }
        const int32_t fresh_q = std::max<int32_t>(0, keep_pos - P - n_sink - staging_of(h)) / F * F;
        // the coded tokens below keep_pos must also be a prefix of the coded order: a sink that a later prompt chunk
        // displaced was coded after newer tokens, and cutting the prefix would drop it
        if (kept_q != fresh_q || !prefix) keep_pos = std::min<int32_t>(keep_pos, std::max(0, cfg_.storage.protect));
    }
    // (here p >= the checkpoint's tokens, when there is one)
    if (ckpt_.n >= 0 && keep_pos < ckpt_.n && restore_checkpoint()) return ckpt_.n;
    cut(keep_pos, true);
    return keep_pos;
}

void kv_cache::clear() {
    drop_checkpoint();
    remove_from(0);
}

status kv_cache::copy_from(const kv_cache & src) {
    if (&src == this) return {};
    if (src.pool_ != pool_ || src.heads_.size() != heads_.size() || src.q_window_ != q_window_ || src.cfg_.head_dim != cfg_.head_dim) {
        return status(ERR_INVALID_ARG, "kv cache copy: the source cache belongs to another context");
    }
    clear();
    const std::vector<head_store> empty = heads_;  // (no pages: what a failed copy goes back to)
    bool ok = true;
    for (size_t i = 0; i < heads_.size() && ok; i++) ok = copy_head(src.heads_[i], heads_[i]);  // (same configuration: same modes)
    // the source's prefix checkpoint too, so that the copy also rewinds as the source would
    if (ok && src.ckpt_.n >= 0) {
        checkpoint_state c = src.ckpt_;  // (then pages of its own)
        for (size_t i = 0; i < c.heads.size(); i++) {
            if (!ok || !c.saved[i]) { c.heads[i] = head_store{}; continue; }
            ok = copy_head(src.ckpt_.heads[i], c.heads[i]);
        }
        if (ok) ckpt_ = std::move(c);
        else for (auto & h : c.heads) free_head_pages(h);
    }
    if (!ok) {
        for (auto & h : heads_) free_head_pages(h);
        heads_ = empty;
        for (auto & h : heads_) rebuild_segments(h);
        return status(ERR_OOM_HOST, strfmt("kv cache copy: out of memory copying %lld tokens", (long long) src.n_logical_));
    }
    for (auto & h : heads_) rebuild_segments(h);  // (segment and coded views point into this cache's pages)
    set_wide(src.wide());
    n_logical_ = src.n_logical_;
    chunk_exact_ = src.chunk_exact_;
    chunk_pos0_ = src.chunk_pos0_;
    chunk_step0_ = src.chunk_step0_;
    chunk_prompt0_ = src.chunk_prompt0_;
    chunk_sinks_saved_ = src.chunk_sinks_saved_;
    ckpt_current_ = src.ckpt_current_;
    chunk_sinks_ = src.chunk_sinks_;
    chunk_sink_cand_ = src.chunk_sink_cand_;
    return {};
}

// Keeps the tokens before keep_pos in every head (the caller has checked that this is exact), with their
// statistics, coded runs, sinks and recorded queries.
void kv_cache::cut(int32_t keep_pos, bool reset_dropped) {
    ckpt_current_ = false;  // (a cut to the checkpoint's length keeps the statistics decoding changed)
    for (auto & h : heads_) {
        int32_t keep = 0;
        while (keep < h.n && h.pos[(size_t) keep] < keep_pos) keep++;
        std::vector<int32_t> idx((size_t) keep);
        for (int32_t j = 0; j < keep; j++) idx[(size_t) j] = j;
        if (h.mode == KV_RETAIN_EVICT) {  // [coded | f16] statistics: the kept prefix of each part
            const int32_t nq = kv_runs_count(h.qruns), kept_q = runs_count_below(h.qruns, keep_pos);
            std::vector<int32_t> src;
            for (int32_t j = 0; j < kept_q; j++) src.push_back(j);
            for (int32_t j = 0; j < keep; j++) src.push_back(nq + j);
            gather_stats(h, src);
        }
        if (h.coded) {
            const int32_t kept_q = runs_count_below(h.qruns, keep_pos);
            runs_truncate(h.qruns, kept_q);
            auto shrink = [&](std::vector<void *> & pages, int32_t per_page) {
                const size_t need = (size_t) ((kept_q + per_page - 1) / per_page);
                while (pages.size() > need) { pool_->free(pages.back()); pages.pop_back(); }
            };
            shrink(h.qk_pages, cv0_.k_page_tokens);
            shrink(h.qv_pages, cv0_.v_page_tokens);
        }
        compact(h, idx);
        if (reset_dropped) h.dropped = false;
    }
    for (size_t il = 0; il < sinks_.size(); il++) {
        auto & sk = sinks_[il];
        sk.erase(std::lower_bound(sk.begin(), sk.end(), keep_pos), sk.end());
        auto & cand = sink_cand_[il];
        cand.erase(std::remove_if(cand.begin(), cand.end(), [&](const std::pair<float, int32_t> & c) { return c.second >= keep_pos; }), cand.end());
    }
    drop_queries_from(keep_pos);
    n_logical_ = keep_pos;
    // the step counters of a fresh evaluation of what is kept: a prompt, then decode steps
    prompt_ = std::min(prompt_, keep_pos);
    step_ = keep_pos - prompt_;
}

void kv_cache::revert_chunk() {
    assert(chunk_revertible());
    // (a chunk from position 0 reverts to an empty cache whatever it changed)
    cut(chunk_pos0_, chunk_pos0_ == 0);
    for (size_t il = 0; il < chunk_sinks_saved_.size(); il++) {
        if (!chunk_sinks_saved_[il]) continue;
        sinks_[il].swap(chunk_sinks_[il]);
        sink_cand_[il].swap(chunk_sink_cand_[il]);
        chunk_sinks_saved_[il] = 0;
    }
    step_ = chunk_step0_;
    prompt_ = chunk_prompt0_;
    chunk_exact_ = true;  // (nothing of the chunk is left)
}

kv_memory_report kv_cache::memory(bool per_head) const {
    kv_memory_report r;
    r.logical_tokens = n_logical_;
    const uint64_t page_bytes = pool_->page_bytes();
    if (per_head) r.heads.resize(heads_.size());
    for (size_t i = 0; i < heads_.size(); i++) {
        const head_store & h = heads_[i];
        uint64_t kb = (uint64_t) h.n * cfg_.head_dim * sizeof(f16_t);
        uint64_t vb = (uint64_t) h.n * cfg_.head_dim_v * sizeof(f16_t);
        const int64_t nq = kv_runs_count(h.qruns);
        uint64_t pb = (uint64_t) h.n * sizeof(int32_t) + h.qruns.size() * sizeof(kv_pos_run);
        uint64_t mb = h.segs.capacity() * sizeof(kv_segment) + h.pages.capacity() * sizeof(void *);
        uint64_t alloc = h.pages.size() * page_bytes + h.pos.capacity() * sizeof(int32_t) + mb;
        if (h.mode == KV_RETAIN_EVICT) {  // the policy's per-token statistics and this step's probabilities (4 B each)
            const kv_token_stats & st = h.stats;
            mb += 4 * (uint64_t) (st.last.size() + st.mri.size() + st.acc.size() + st.cur.size() + h.p_max.size() + h.p_sum.size());
            alloc += 4 * (uint64_t) (st.last.capacity() + st.mri.capacity() + st.acc.capacity() + st.cur.capacity() + h.p_max.capacity() + h.p_sum.capacity());
        }
        if (q_window_ > 0 && h.mode == KV_RETAIN_EVICT) {  // the layer's recorded queries, shared out over its evicting heads
            const size_t il = i / (size_t) cfg_.n_head_kv, H = (size_t) cfg_.n_head_kv;
            size_t n_ev = 0, rank = 0;
            for (size_t j = il * H; j < (il + 1) * H; j++) {
                if (heads_[j].mode != KV_RETAIN_EVICT) continue;
                if (j < i) rank++;
                n_ev++;
            }
            const uint64_t row = (uint64_t) cfg_.n_head * cfg_.head_dim * sizeof(float) + sizeof(int32_t);
            auto share = [&](uint64_t total) { return total / n_ev + (rank == 0 ? total % n_ev : 0); };
            mb += share((uint64_t) qheld_[il] * row);
            alloc += share(qring_[il].empty() ? 0 : (uint64_t) q_window_ * row);
        }
        if (h.coded) {
            const kv_coded_view & c = cv0_;
            const uint64_t kc = (uint64_t) std::llround(nq * c.kc->code_bytes(c.kp)), ks = (uint64_t) std::llround(nq * c.kc->meta_bytes(c.kp));
            const uint64_t vc = (uint64_t) std::llround(nq * c.vc->code_bytes(c.vp)), vs = (uint64_t) std::llround(nq * c.vc->meta_bytes(c.vp));
            r.staging_bytes += kb + vb;
            r.code_bytes += kc + vc;
            r.scale_bytes += ks + vs;
            r.quantized_tokens += nq;
            kb += kc + ks;
            vb += vc + vs;
            alloc += (h.qk_pages.size() + h.qv_pages.size()) * page_bytes + h.qruns.capacity() * sizeof(kv_pos_run);
        }
        r.resident_tokens += h.n + nq;
        r.key_bytes += kb;
        r.value_bytes += vb;
        r.position_bytes += pb;
        r.metadata_bytes += mb;
        r.bytes_allocated += alloc;
        if (per_head) {
            kv_head_memory & m = r.heads[i];
            m.resident = h.n + (int32_t) nq;
            m.budget = h.mode == KV_RETAIN_STREAM ? cfg_.stream_sinks + cfg_.stream_recent
                     : h.mode == KV_RETAIN_EVICT ? policy_->budget(step_, prompt_, cfg_.policy) : -1;
            m.bytes_allocated = alloc;
            m.bytes_used = kb + vb + pb + mb;
        }
    }
    r.bytes_used = r.key_bytes + r.value_bytes + r.position_bytes + r.metadata_bytes;
    const page_pool_stats ps = pool_->stats();
    r.pool_slack_bytes = (uint64_t) ps.pages_free_resident * ps.page_bytes;
    for (const auto & h : ckpt_.heads) {
        r.checkpoint_bytes += (h.pages.size() + h.qk_pages.size() + h.qv_pages.size()) * page_bytes + h.pos.capacity() * sizeof(int32_t) +
                              h.qruns.capacity() * sizeof(kv_pos_run) +
                              4 * (uint64_t) (h.stats.last.capacity() + h.stats.mri.capacity() + h.stats.acc.capacity() + h.stats.cur.capacity() + h.p_max.capacity() + h.p_sum.capacity());
    }
    for (const auto & q : ckpt_.wide.qring) r.checkpoint_bytes += q.capacity() * sizeof(float);
    r.bytes_allocated += r.checkpoint_bytes;
    r.evicted_tokens = evicted_;
    r.compactions = compactions_;
    r.compaction_seconds = compaction_s_;
    return r;
}

} // namespace core
