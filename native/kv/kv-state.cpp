// State files of a KV cache (kv-state.h): the checksummed streams, and kv_cache's section — written as the
// cache holds it, read back apart and checked against this cache's configuration before it replaces anything.
#include "kv-state.h"

#include <algorithm>
#include <cstring>

#include "kv-cache.h"

namespace core {

namespace {

inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
constexpr uint64_t K1 = 0x9E3779B97F4A7C15ull, K2 = 0xC2B2AE3D27D4EB4Full;

} // namespace

uint64_t state_block_hash(uint64_t h, const uint8_t * p, size_t n) {
    h ^= (uint64_t) n * K2;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        std::memcpy(&w, p + i, 8);
        h = rotl(h ^ (w * K1), 31) * K2;
    }
    for (; i < n; i++) h = rotl(h ^ ((uint64_t) p[i] * K1), 23) * K2;
    return h ^ (h >> 29);
}

// ------------------------------------------------------------------------------------------------ streams

void state_writer::bytes(const void * p, size_t n) {
    const uint8_t * s = (const uint8_t *) p;
    while (n > 0 && !failed_) {
        const size_t take = std::min(n, STATE_BLOCK - buf_.size());
        buf_.insert(buf_.end(), s, s + take);
        s += take;
        n -= take;
        written_ += take;
        if (buf_.size() == STATE_BLOCK) flush_block();
    }
}

void state_writer::flush_block() {
    if (buf_.empty() || failed_) return;
    h_ = state_block_hash(h_, buf_.data(), buf_.size());
    failed_ = std::fwrite(buf_.data(), 1, buf_.size(), f_) != buf_.size();
    buf_.clear();
}

status state_writer::finish() {
    flush_block();
    if (!failed_) failed_ = std::fwrite(&h_, 1, 8, f_) != 8 || std::fflush(f_) != 0;
    if (failed_) return status(ERR_IO, "state file: write failed (disk full or the file was closed)");
    written_ += 8;
    return {};
}

state_reader::state_reader(std::FILE * f, uint64_t file_size) : f_(f) {
    if (file_size < 8) {
        fail("the file is too short to be a state file");
        return;
    }
    payload_ = file_size - 8;
}

bool state_reader::fail(const std::string & why) {
    if (err_.empty()) err_ = why.empty() ? std::string("invalid state file") : why;
    return false;
}

bool state_reader::fill() {
    // the same blocks the writer hashed: STATE_BLOCK bytes of payload each, the last one shorter
    const uint64_t read_so_far = pos_;  // (fill is called only with the buffer consumed)
    const size_t n = (size_t) std::min<uint64_t>(STATE_BLOCK, payload_ - read_so_far);
    buf_.resize(n);
    at_ = 0;
    if (n == 0) return fail("the file ends early (truncated?)");
    if (std::fread(buf_.data(), 1, n, f_) != n) return fail("the file ends early or cannot be read");
    h_ = state_block_hash(h_, buf_.data(), n);
    return true;
}

bool state_reader::bytes(void * p, size_t n) {
    if (!ok()) return false;
    if (n > payload_ - pos_) return fail(strfmt("the file ends early: %zu bytes wanted at offset %llu of %llu", n, (unsigned long long) pos_, (unsigned long long) payload_));
    uint8_t * d = (uint8_t *) p;
    while (n > 0) {
        if (at_ == buf_.size() && !fill()) return false;
        const size_t take = std::min(n, buf_.size() - at_);
        std::memcpy(d, buf_.data() + at_, take);
        d += take;
        at_ += take;
        pos_ += take;
        n -= take;
    }
    return true;
}

status state_reader::finish() {
    if (ok() && pos_ != payload_) fail(strfmt("%llu unread bytes before the checksum", (unsigned long long) (payload_ - pos_)));
    uint64_t stored = 0;
    if (ok() && std::fread(&stored, 1, 8, f_) != 8) fail("the checksum cannot be read");
    if (ok() && stored != h_) fail("checksum mismatch: the file is corrupt or was cut short and padded");
    if (!ok()) return status(ERR_STATE_FORMAT, err_);
    return {};
}

// ------------------------------------------------------------------------------------ the cache's section

struct kv_cache::loaded_state {
    std::shared_ptr<page_pool> pool;
    int32_t n_logical = 0;
    wide_state wide;
    std::vector<head_store> heads;
    checkpoint_state ckpt;
    bool retake_ckpt = false;  // a checkpoint at the end: adopt_state takes it again
    ~loaded_state() {
        for (auto & h : heads) free_pages(*pool, h);
        for (auto & h : ckpt.heads) free_pages(*pool, h);
    }
};

void kv_cache::loaded_state_deleter::operator()(loaded_state * s) const { delete s; }

std::string kv_cache::layout_desc() const {
    const kv_cache_config & c = cfg_;
    std::string d = strfmt("layers=%d kv_heads=%d query_heads=%d head_dim=%d head_dim_v=%d page_bytes=%zu", c.n_layer, c.n_head_kv, c.n_head,
                           c.head_dim, c.head_dim_v, pool_->page_bytes());
    bool stream = false, evict = false;
    d += " retention=";
    for (const auto & h : heads_) {
        d += h.mode == KV_RETAIN_FULL ? 'F' : h.mode == KV_RETAIN_STREAM ? 'S' : 'E';
        stream |= h.mode == KV_RETAIN_STREAM;
        evict |= h.mode == KV_RETAIN_EVICT;
    }
    if (stream) d += strfmt(" stream=%d+%d", c.stream_sinks, c.stream_recent);
    if (evict) {
        const kv_policy_params & p = c.policy;
        d += strfmt(" policy=%s capacity=%d window=%d alpha=%.9g protect=%d ratio=%.9g interval=%d lambda=%.9g pool=%d protect_sinks=%d",
                    policy_ ? policy_->name : "?", p.capacity, p.window, (double) p.alpha, p.protect, (double) p.ratio, p.interval, (double) p.lambda,
                    p.pool, (int) p.protect_sinks);
    }
    const kv_storage_config & st = c.storage;
    d += strfmt(" keys=%s values=%s", kv_codec_get(st.key).name, kv_codec_get(st.value).name);
    if (st.coded()) {
        uint64_t ph = 0;
        if (!st.perm.empty()) ph = state_block_hash(0, (const uint8_t *) st.perm.data(), st.perm.size() * sizeof(int32_t));
        d += strfmt(" staging=%d protect=%d group=%d clip=%.9g/%.9g rope=%s sinks=%d rot_group=%d perm=%s", st.staging, st.protect, st.group,
                    (double) st.clip_of(st.key), (double) st.clip_of(st.value), st.post_rope ? "post" : "pre", (int) st.protect_sinks, st.rot_group,
                    st.perm.empty() ? "identity" : strfmt("%016llx", (unsigned long long) ph).c_str());
    }
    return d;
}

void kv_cache::write_wide(state_writer & w, const wide_state & s) const {
    w.pod(s.step);
    w.pod(s.prompt);
    w.pod(s.evicted);
    w.pod(s.compactions);
    w.pod(s.compaction_s);
    for (int il = 0; il < cfg_.n_layer; il++) {
        w.vec(s.sinks[(size_t) il]);
        w.vec(s.sink_cand[(size_t) il]);
    }
    w.pod((uint32_t) s.qring.size());
    for (size_t il = 0; il < s.qring.size(); il++) {
        w.pod(s.qcount[il]);
        w.pod(s.qheld[il]);
        w.vec(s.qpos[il]);
        w.vec(s.qring[il]);
    }
}

bool kv_cache::read_wide(state_reader & r, wide_state & s, int32_t n_logical) const {
    if (!r.pod(s.step) || !r.pod(s.prompt) || !r.pod(s.evicted) || !r.pod(s.compactions) || !r.pod(s.compaction_s)) return false;
    if (s.step < 0 || s.step > INT32_MAX / 2 || s.prompt < 0 || s.prompt > n_logical || s.evicted < 0 || s.compactions < 0) {
        return r.fail(strfmt("cache counters out of range (step %d, prompt %d of %d tokens)", s.step, s.prompt, n_logical));
    }
    s.sinks.assign((size_t) cfg_.n_layer, {});
    s.sink_cand.assign((size_t) cfg_.n_layer, {});
    for (int il = 0; il < cfg_.n_layer; il++) {
        auto & sk = s.sinks[(size_t) il];
        if (!r.vec(sk, KV_MAX_SINKS + 1, "sinks") || !r.vec(s.sink_cand[(size_t) il], KV_MAX_SINKS, "sink candidates")) return false;
        for (size_t i = 0; i < sk.size(); i++) {
            if (sk[i] < 0 || sk[i] >= std::max<int32_t>(n_logical, 1) || (i > 0 && sk[i] <= sk[i - 1])) return r.fail(strfmt("layer %d: sink positions out of order or range", il));
        }
        for (const auto & c : s.sink_cand[(size_t) il]) {
            if (c.second < 0 || c.second >= std::max<int32_t>(n_logical, 1)) return r.fail(strfmt("layer %d: a sink candidate out of range", il));
        }
    }
    uint32_t nq = 0;
    if (!r.pod(nq)) return false;
    if (nq != qring_.size()) return r.fail(strfmt("recorded queries for %u layers, the configuration has %zu", nq, qring_.size()));
    s.qcount.assign(nq, 0);
    s.qheld.assign(nq, 0);
    s.qpos.assign(nq, {});
    s.qring.assign(nq, {});
    for (size_t il = 0; il < nq; il++) {
        if (!r.pod(s.qcount[il]) || !r.pod(s.qheld[il])) return false;
        if (!r.vec(s.qpos[il], qpos_[il].size(), "recorded query positions") || !r.vec(s.qring[il], qring_[il].size(), "recorded queries")) return false;
        // (a layer without evicting heads records none; counts stay far from overflowing while decoding goes on)
        const bool records = !qpos_[il].empty();
        if (s.qpos[il].size() != qpos_[il].size() || s.qring[il].size() != qring_[il].size() || s.qcount[il] < 0 || s.qcount[il] > INT32_MAX / 2 ||
            s.qheld[il] < 0 || s.qheld[il] > q_window_ || s.qheld[il] > s.qcount[il] || (!records && s.qcount[il] != 0)) {
            return r.fail(strfmt("layer %zu: recorded queries do not fit the policy's window", il));
        }
    }
    return true;
}

void kv_cache::write_head(state_writer & w, const head_store & h, bool codes) const {
    w.pod(h.mode);
    w.pod((uint8_t) h.coded);
    w.pod((uint8_t) h.dropped);
    w.pod((uint8_t) codes);
    w.pod(h.n);
    w.bytes(h.pos.data(), (size_t) h.n * sizeof(int32_t));
    w.vec(h.qruns);
    // the f16 pages: per page its used key tiles, then its used value rows
    const int D = cfg_.head_dim, DV = cfg_.head_dim_v;
    for (int32_t s = 0; s * KV_PAGE_TOKENS < h.n; s++) {
        const int32_t m = std::min<int32_t>(KV_PAGE_TOKENS, h.n - s * KV_PAGE_TOKENS);
        const uint8_t * page = (const uint8_t *) h.pages[(size_t) s];
        w.bytes(page, (size_t) ((m + KV_TILE - 1) / KV_TILE) * D * KV_TILE * sizeof(f16_t));
        w.bytes(page + value_offset_bytes(), (size_t) m * DV * sizeof(f16_t));
    }
    w.vec(h.stats.last);
    w.vec(h.stats.mri);
    w.vec(h.stats.acc);
    w.vec(h.stats.cur);
    if (!codes) return;
    const int32_t nq = kv_runs_count(h.qruns);
    auto blocks = [&](const std::vector<void *> & pages, int bt, int32_t per_page, size_t bb) {
        const int32_t nb = (nq + bt - 1) / bt, bpp = per_page / bt;
        for (int32_t p = 0; p * bpp < nb; p++) w.bytes(pages[(size_t) p], (size_t) std::min(bpp, nb - p * bpp) * bb);
    };
    blocks(h.qk_pages, cv0_.k_block_tokens, cv0_.k_page_tokens, cv0_.k_block_bytes);
    blocks(h.qv_pages, cv0_.v_block_tokens, cv0_.v_page_tokens, cv0_.v_block_bytes);
}

// Reads a head into `h` (a copy of this cache's head: mode, coded flag and rotation group set, no pages).
// codes: whether the record carries the coded tokens' blocks (false: a checkpoint's coded FULL head, whose codes
// are the live head's). OOM sets *oom.
bool kv_cache::read_head(state_reader & r, head_store & h, bool codes, int32_t n_logical, bool * oom) const {
    uint8_t mode = 0, coded = 0, dropped = 0, has_codes = 0;
    if (!r.pod(mode) || !r.pod(coded) || !r.pod(dropped) || !r.pod(has_codes)) return false;
    if (mode != h.mode || (coded != 0) != h.coded || (has_codes != 0) != codes || dropped > 1) {
        return r.fail(strfmt("a head stored as %s%s, the configuration has it %s%s", mode == KV_RETAIN_FULL ? "full" : mode == KV_RETAIN_STREAM ? "streaming" : "evicting",
                             coded ? " (coded)" : "", h.mode == KV_RETAIN_FULL ? "full" : h.mode == KV_RETAIN_STREAM ? "streaming" : "evicting", h.coded ? " (coded)" : ""));
    }
    h.dropped = dropped != 0;
    if (!r.pod(h.n)) return false;
    if (h.n < 0 || h.n > cfg_.n_ctx || h.n > n_logical) return r.fail(strfmt("a head holds %d tokens of %d", h.n, n_logical));
    h.pos.resize((size_t) h.n);
    if (!r.bytes(h.pos.data(), (size_t) h.n * sizeof(int32_t))) return false;
    for (int32_t j = 0; j < h.n; j++) {
        if (h.pos[(size_t) j] < 0 || h.pos[(size_t) j] >= n_logical || (j > 0 && h.pos[(size_t) j] <= h.pos[(size_t) j - 1])) {
            return r.fail("a head's positions are out of order or range");
        }
    }
    if (!r.vec(h.qruns, (size_t) cfg_.n_ctx, "coded position runs")) return false;
    if (!h.coded && !h.qruns.empty()) return r.fail("an f16 head with coded tokens");
    for (size_t i = 0; i < h.qruns.size(); i++) {
        const kv_pos_run & q = h.qruns[i];
        const kv_pos_run * p = i ? &h.qruns[i - 1] : nullptr;
        // (positions need not ascend across runs: a sink displaced by a later prompt chunk is coded after newer tokens)
        if (q.n < 1 || q.pos < 0 || (int64_t) q.pos + q.n > n_logical || q.first != (p ? p->first + p->n : 0) || (int64_t) q.first + q.n > cfg_.n_ctx) {
            return r.fail("a head's coded position runs are out of range");
        }
    }
    const int32_t nq = kv_runs_count(h.qruns);
    if ((int64_t) nq + h.n > cfg_.n_ctx) return r.fail(strfmt("a head holds %d tokens, more than the context's %d", nq + h.n, cfg_.n_ctx));
    const size_t page_bytes = pool_->page_bytes();
    auto new_page = [&](std::vector<void *> & list) -> uint8_t * {
        void * p = pool_->alloc();
        if (!p) {
            *oom = true;
            r.fail("out of memory");
            return nullptr;
        }
        std::memset(p, 0, page_bytes);
        list.push_back(p);
        return (uint8_t *) p;
    };
    const int D = cfg_.head_dim, DV = cfg_.head_dim_v;
    for (int32_t s = 0; s * KV_PAGE_TOKENS < h.n; s++) {
        const int32_t m = std::min<int32_t>(KV_PAGE_TOKENS, h.n - s * KV_PAGE_TOKENS);
        uint8_t * page = new_page(h.pages);
        if (!page || !r.bytes(page, (size_t) ((m + KV_TILE - 1) / KV_TILE) * D * KV_TILE * sizeof(f16_t)) ||
            !r.bytes(page + value_offset_bytes(), (size_t) m * DV * sizeof(f16_t))) {
            return false;
        }
    }
    const size_t n_all = (size_t) h.n + (size_t) nq;
    if (!r.vec(h.stats.last, n_all, "statistics") || !r.vec(h.stats.mri, n_all, "statistics") || !r.vec(h.stats.acc, n_all, "statistics") ||
        !r.vec(h.stats.cur, n_all, "statistics")) {
        return false;
    }
    // the statistics the policy keeps, one per held token (the arrays its append fills), and none elsewhere
    kv_token_stats want;
    if (h.mode == KV_RETAIN_EVICT && policy_) policy_->append(want, 1, 0);
    auto fits = [&](size_t got, size_t pattern) { return got == (pattern ? n_all : 0); };
    if (!fits(h.stats.last.size(), want.last.size()) || !fits(h.stats.mri.size(), want.mri.size()) || !fits(h.stats.acc.size(), want.acc.size()) ||
        !fits(h.stats.cur.size(), want.cur.size())) {
        return r.fail("a head's policy statistics do not match its tokens or the policy");
    }
    if (h.mode == KV_RETAIN_EVICT) {
        h.p_max.assign(n_all, 0.0f);
        h.p_sum.assign(n_all, 0.0f);
    }
    h.segs.resize((size_t) ((h.n + KV_PAGE_TOKENS - 1) / KV_PAGE_TOKENS));  // (so that adopt_state's rebuild allocates nothing)
    if (!codes) return true;
    auto blocks = [&](std::vector<void *> & pages, int bt, int32_t per_page, size_t bb) {
        const int32_t nb = (nq + bt - 1) / bt, bpp = per_page / bt;
        for (int32_t p = 0; p * bpp < nb; p++) {
            uint8_t * page = new_page(pages);
            if (!page || !r.bytes(page, (size_t) std::min(bpp, nb - p * bpp) * bb)) return false;
        }
        return true;
    };
    return blocks(h.qk_pages, cv0_.k_block_tokens, cv0_.k_page_tokens, cv0_.k_block_bytes) &&
           blocks(h.qv_pages, cv0_.v_block_tokens, cv0_.v_page_tokens, cv0_.v_block_bytes);
}

void kv_cache::save_state(state_writer & w) const {
    w.pod(n_logical_);
    write_wide(w, wide());
    for (const auto & h : heads_) write_head(w, h, true);
    const checkpoint_state & c = ckpt_;
    // 0: none; 2: the cache has not changed since it was taken (saved after a prompt, before decoding): it equals
    // the cache, so the reader takes it again instead of the file holding a second copy; 1: its heads follow
    const bool retake = c.n >= 0 && ckpt_current_ && c.n == n_logical_;
    w.pod((uint8_t) (c.n < 0 ? 0 : retake ? 2 : 1));
    if (c.n < 0 || retake) return;
    w.pod(c.n);
    for (size_t i = 0; i < heads_.size(); i++) {
        w.pod((uint8_t) c.saved[i]);
        w.pod((uint8_t) c.codes_live[i]);
        if (c.saved[i]) write_head(w, c.heads[i], !c.codes_live[i]);
    }
    write_wide(w, c.wide);
}

status kv_cache::read_state(state_reader & r, loaded_ptr & out, int32_t * n_tokens) const {
    loaded_ptr s(new loaded_state);
    s->pool = pool_;
    auto blank = [&]() {  // this cache's heads without tokens: modes, coded flags, rotation groups
        std::vector<head_store> b(heads_.size());
        for (size_t i = 0; i < heads_.size(); i++) {
            b[i].mode = heads_[i].mode;
            b[i].coded = heads_[i].coded;
            b[i].rot_g = heads_[i].rot_g;
            b[i].rot_slot = heads_[i].rot_slot;
        }
        return b;
    };
    bool oom = false;
    auto failed = [&]() {
        return oom ? status(ERR_OOM_HOST, "out of memory for the cache's pages")
                   : status(ERR_STATE_FORMAT, r.ok() ? std::string("invalid cache section") : r.error());
    };
    if (!r.pod(s->n_logical)) return failed();
    if (s->n_logical < 0) { r.fail("negative token count"); return failed(); }
    if (s->n_logical > cfg_.n_ctx) {
        return status(ERR_CONTEXT_FULL, strfmt("it holds %d tokens, more than this context's %d (contextSize)", s->n_logical, cfg_.n_ctx));
    }
    const int32_t n = s->n_logical;
    if (!read_wide(r, s->wide, n)) return failed();
    s->heads = blank();
    for (auto & h : s->heads) {
        if (!read_head(r, h, true, n, &oom)) return failed();
    }
    // heads rotated together hold the same tokens (flush quantizes them as one, attention reads them together)
    auto groups_agree = [&](const std::vector<head_store> & hs) {
        for (size_t i = 0; i < hs.size(); i++) {
            const head_store & h = hs[i], & g = hs[i - (size_t) h.rot_slot];
            if (h.rot_slot > 0 && (h.pos != g.pos || h.qruns.size() != g.qruns.size() || kv_runs_count(h.qruns) != kv_runs_count(g.qruns))) return r.fail("heads of one key rotation group hold different tokens");
        }
        return true;
    };
    if (!groups_agree(s->heads)) return failed();
    uint8_t has_ckpt = 0;
    if (!r.pod(has_ckpt)) return failed();
    if (has_ckpt > 2) { r.fail("invalid checkpoint flag"); return failed(); }
    s->retake_ckpt = has_ckpt == 2;
    if (has_ckpt == 1) {
        checkpoint_state & c = s->ckpt;
        if (!r.pod(c.n)) return failed();
        if (c.n < 0 || c.n > n) { r.fail(strfmt("a checkpoint at %d tokens of %d", c.n, n)); return failed(); }
        c.heads = blank();
        c.saved.assign(heads_.size(), 0);
        c.codes_live.assign(heads_.size(), 0);
        for (size_t i = 0; i < heads_.size(); i++) {
            uint8_t saved = 0, live = 0;
            if (!r.pod(saved) || !r.pod(live)) return failed();
            // save_checkpoint's rule: every head but the plain f16 FULL ones; of coded FULL heads only the f16 pages
            const head_store & h = heads_[i];
            const bool want_saved = h.mode != KV_RETAIN_FULL || h.coded, want_live = h.mode == KV_RETAIN_FULL && h.coded;
            if ((saved != 0) != want_saved || (live != 0) != (want_saved && want_live)) { r.fail("checkpoint heads do not match the configuration"); return failed(); }
            c.saved[i] = (char) saved;
            c.codes_live[i] = (char) live;
            if (!saved) continue;
            if (!read_head(r, c.heads[i], !live, c.n, &oom)) return failed();
            if (live) {
                // its codes are the first ones of the live head (a FULL head only appends codes)
                const std::vector<kv_pos_run> & a = c.heads[i].qruns, & b = s->heads[i].qruns;
                const int32_t k = kv_runs_count(a);
                bool prefix = k <= kv_runs_count(b);
                for (size_t j = 0; prefix && j < a.size(); j++) {
                    prefix = j < b.size() && a[j].first == b[j].first && a[j].pos == b[j].pos && (a[j].n == b[j].n || (j + 1 == a.size() && a[j].n < b[j].n));
                }
                if (!prefix) { r.fail("a checkpoint's coded tokens are not the cache's first ones"); return failed(); }
            }
        }
        if (!groups_agree(c.heads) || !read_wide(r, c.wide, c.n)) return failed();
    }
    if (n_tokens) *n_tokens = s->n_logical;
    out = std::move(s);
    return {};
}

void kv_cache::adopt_state(loaded_ptr s) {
    drop_checkpoint();
    for (auto & h : heads_) free_head_pages(h);
    for (size_t i = 0; i < heads_.size(); i++) heads_[i] = std::move(s->heads[i]);  // (element-wise: sib_ points into heads_)
    s->heads.clear();
    for (auto & h : heads_) rebuild_segments(h);
    set_wide(std::move(s->wide));
    n_logical_ = s->n_logical;
    if (s->ckpt.n >= 0) {
        ckpt_ = std::move(s->ckpt);
        s->ckpt = checkpoint_state{};
    }
    chunk_exact_ = true;
    chunk_pos0_ = n_logical_;
    chunk_step0_ = step_;
    chunk_prompt0_ = prompt_;
    std::fill(chunk_sinks_saved_.begin(), chunk_sinks_saved_.end(), 0);
    if (s->retake_ckpt) save_checkpoint();  // (out of memory: no checkpoint, and a later rewind falls back)
}

} // namespace core
