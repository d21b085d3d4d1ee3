#include "engine.h"

#include "../kv/kv-ring.h"

#include <algorithm>

#ifdef THINKCACHE_WITH_CUDA
#include "../cuda/backend-cuda.h"
#include "../cuda/forward-cuda.h"
#include "../cuda/page-pool-cuda.h"
#endif

namespace core {

static int resolve_threads(int n) { return n > 0 ? n : std::max(1, cpu_physical_cores()); }

engine_context::engine_context(std::shared_ptr<const model> m, const context_params & p)
    : model_(std::move(m)), params_(p), pool_(resolve_threads(p.n_threads)),
      kv_pool_(std::make_shared<page_pool>(kv_page_bytes((int) model_->hp.head_dim, (int) model_->hp.head_dim_v))) {
    params_.n_threads = pool_.size();
}

kv_cache_config make_kv_config(const model & m, const context_params & p) {
    const hparams & hp = m.hp;
    kv_cache_config kc;
    kc.n_layer = (int) hp.n_layer;
    kc.n_head_kv = p.per_query_head ? (int) hp.n_head : (int) hp.n_head_kv;
    kc.n_head = (int) hp.n_head;
    kc.head_dim = (int) hp.head_dim;
    kc.head_dim_v = (int) hp.head_dim_v;
    kc.n_ctx = p.n_ctx;
    kc.retention = p.retention;
    kc.stream_sinks = p.stream_sinks;
    kc.stream_recent = p.stream_recent;
    kc.policy = p.policy;
    kc.storage = p.storage;
    kc.storage.n_rot = (int) hp.n_rot;
    kc.storage.rope = m.arch->rope;
    kc.storage.freq_base = hp.rope_freq_base;
    kc.storage.freq_scale = hp.rope_freq_scale;
    kc.storage.freq_factors = m.rope_freqs;
    return kc;
}

status context_params_check_cuda(const context_params & p, const model & m) {
#ifdef THINKCACHE_WITH_CUDA
    kv_ring_config rc;
    return kv_ring_config_from(make_kv_config(m, p), std::max(1, std::min(p.n_batch, 512)), &rc);
#else
    (void) m;
    return {};
#endif
}

status engine_context::create(std::shared_ptr<const model> m, const context_params & p, std::shared_ptr<engine_context> * out) {
    if (!p.cuda_model) {
        *out = std::make_shared<engine_context>(std::move(m), p);
        return {};
    }
#ifdef THINKCACHE_WITH_CUDA
    status st = context_params_check_cuda(p, *m);
    if (!st.ok()) return st;
    std::unique_ptr<cuda::backend> be;
    if (!(st = cuda::backend::create(0, &be)).ok()) return st;
    context_params pc = p;
    pc.n_threads = 1;  // the device computes; the pool only runs sampling-side work
    auto c = std::make_shared<engine_context>(std::move(m), pc);
    c->cuda_be_ = std::shared_ptr<cuda::backend>(std::move(be));
    c->cuda_pool_ = std::make_shared<cuda::device_page_pool>(kv_page_bytes((int) c->mdl().hp.head_dim, (int) c->mdl().hp.head_dim_v));
    *out = std::move(c);
    return {};
#else
    return status(ERR_CUDA, "this build has no CUDA backend (built without THINKCACHE_CUDA)");
#endif
}

status engine_sequence::create(std::shared_ptr<engine_context> ctx, std::shared_ptr<engine_sequence> * out) {
    std::shared_ptr<engine_sequence> seq;
    try {  // (the caches' bookkeeping is allocated here: a failure is an error, not std::terminate on the event loop)
        seq = std::make_shared<engine_sequence>(ctx);
    } catch (const std::bad_alloc &) {
        return status(ERR_OOM_HOST, "new sequence: out of host memory for its KV cache's bookkeeping");
    } catch (const std::length_error &) {
        return status(ERR_OOM_HOST, "new sequence: the KV cache's bookkeeping would exceed the address space");
    }
    if (ctx->on_cuda()) {
#ifdef THINKCACHE_WITH_CUDA
        std::unique_ptr<cuda::forward_session> fs;
        const context_params & cp = ctx->params();
        const status st = cuda::forward_session::create(cp.cuda_model, make_kv_config(ctx->mdl(), cp), cp.n_batch, *ctx->cuda_backend(), &fs, ctx->cuda_kv_pool());
        if (!st.ok()) return st;
        seq->cuda_ = std::shared_ptr<cuda::forward_session>(std::move(fs));
#endif
    }
    *out = std::move(seq);
    return {};
}

int32_t engine_sequence::n_tokens() const {
#ifdef THINKCACHE_WITH_CUDA
    if (cuda_) return cuda_->n_past();
#endif
    return kv_->n_logical();
}

kv_memory_report engine_sequence::memory(bool per_head) const {
#ifdef THINKCACHE_WITH_CUDA
    if (cuda_) return cuda_->memory(per_head);
#endif
    return kv_->memory(per_head);
}

engine_sequence::engine_sequence(std::shared_ptr<engine_context> ctx) : ctx_(std::move(ctx)), sampler_(sampler_params{}) {
    kv_ = std::make_unique<kv_cache>(make_kv_config(ctx_->mdl(), ctx_->params()), ctx_->kv_pool());
}

std::vector<int32_t> engine_sequence::held_positions(int il, int ih) const {
#ifdef THINKCACHE_WITH_CUDA
    if (cuda_) return cuda_->held_positions(il, ih);
#endif
    return kv_->held_positions(il, ih);
}

status engine_sequence::eval(const int32_t * tokens, int n_tokens, bool want_logits) {
    const model & m = ctx_->mdl();
    if (n_tokens <= 0) return status(ERR_INVALID_ARG, "eval: no tokens given");
    if ((int64_t) this->n_tokens() + n_tokens > ctx_->params().n_ctx) {
        return status(ERR_CONTEXT_FULL, strfmt("eval: %d tokens at position %d exceed the context size %d", n_tokens, this->n_tokens(), ctx_->params().n_ctx));
    }
    if (want_logits && logits_.size() != m.hp.n_vocab) logits_.resize(m.hp.n_vocab);
    has_logits_ = false;
    const int n_batch = std::max(1, ctx_->params().n_batch);
    std::lock_guard<std::mutex> lock(ctx_->compute_mutex());
#ifdef THINKCACHE_WITH_CUDA
    if (cuda_) {  // the whole call on the device (chunked there); only the last logits come back
        const int32_t before = cuda_->n_past();
        const status s = cuda_->eval(tokens, n_tokens, want_logits ? logits_.data() : nullptr, &abort);
        for (int t = 0; t < cuda_->n_past() - before; t++) {  // the chunks that went in (all of them unless s failed)
            history_.push_back(tokens[t]);
            sampler_.accept(tokens[t]);
        }
        trim_history(cuda_->n_past());  // (a failed chunk that had moved evicting heads' tokens clears the cache)
        if (!s.ok()) return s;
        has_logits_ = want_logits;
        return {};
    }
#endif
    for (int i = 0; i < n_tokens; i += n_batch) {
        if (abort.load()) return status(ERR_ABORTED, "eval: aborted");
        const int n = std::min(n_batch, n_tokens - i);
        const bool last = i + n == n_tokens;
        status s = forward_chunk(m, *kv_, tokens + i, n, last && want_logits ? LOGITS_LAST : LOGITS_NONE, logits_.data(), scratch_,
                                 ctx_->pool(), &abort);
        if (!s.ok()) return s;
        for (int t = 0; t < n; t++) {
            history_.push_back(tokens[i + t]);
            sampler_.accept(tokens[i + t]);
        }
    }
    has_logits_ = want_logits;
    return {};
}

// The penalties look at the tokens the sequence holds: removed tokens leave the sampler's history too.
void engine_sequence::trim_history(int32_t n) {
    if (n < 0 || (size_t) n >= history_.size()) return;
    history_.resize((size_t) n);
    sampler_.clear_history();
    for (int32_t t : history_) sampler_.accept(t);
}

status engine_sequence::sample(int32_t * out) {
    if (!has_logits_) return status(ERR_INVALID_ARG, "sample: no logits; evaluate at least one token with logits first");
    *out = sampler_.sample(logits_.data(), (int32_t) logits_.size());
    return {};
}

status engine_sequence::save_checkpoint(bool bounded_only) {
#ifdef THINKCACHE_WITH_CUDA
    if (cuda_) {
        std::lock_guard<std::mutex> lock(ctx_->compute_mutex());  // (the context's stream)
        return cuda_->save_checkpoint(bounded_only);
    }
#endif
    return kv_->save_checkpoint(bounded_only);
}

status engine_sequence::copy_from(const engine_sequence & src) {
    if (&src == this) return {};
    if (src.ctx_ != ctx_) return status(ERR_INVALID_ARG, "copy: the source sequence belongs to another context");
    status st;
#ifdef THINKCACHE_WITH_CUDA
    if (cuda_ && src.cuda_) {
        std::lock_guard<std::mutex> lock(ctx_->compute_mutex());
        st = cuda_->copy_from(*src.cuda_);
    } else
#endif
    {
        st = kv_->copy_from(*src.kv_);
    }
    if (!st.ok()) {
        history_.clear();
        sampler_.clear_history();
        has_logits_ = false;
        return st;
    }
    history_ = src.history_;
    sampler_ = src.sampler_;
    logits_ = src.logits_;
    has_logits_ = src.has_logits_;
    return {};
}

int32_t engine_sequence::remove_from(int32_t pos) {
#ifdef THINKCACHE_WITH_CUDA
    if (cuda_) {
        std::lock_guard<std::mutex> lock(ctx_->compute_mutex());
        const int32_t want = std::max<int32_t>(0, std::min<int32_t>(pos, cuda_->n_past()));
        int kept = cuda_->n_past();
        cuda_->truncate(want, &kept);  // kept: what the device cache holds afterwards, whatever the status
        trim_history(kept);
        has_logits_ = false;
        return kept;
    }
#endif
    const int32_t kept = kv_->remove_from(pos);
    trim_history(kept);
    has_logits_ = false;
    return kept;
}

void engine_sequence::set_calibration(int sinks, int recent, bool window_error) {
    if (sinks < 0) {
        wse_.reset();
    } else {
        const hparams & hp = ctx_->mdl().hp;
        const size_t n = (size_t) hp.n_layer * hp.n_head_kv;
        wse_ = std::make_unique<wse_accumulator>();
        wse_->sinks = sinks;
        wse_->recent = recent;
        wse_->window_error = window_error;
        wse_->err_sum.assign(n, 0.0);
        wse_->out_mass_sum.assign(n, 0.0);
        wse_->count.assign(n, 0.0);
        wse_->q_sum.assign((size_t) hp.n_layer * hp.n_head * hp.head_dim, 0.0);
        wse_->k_sum.assign((size_t) hp.n_layer * hp.n_head_kv * hp.head_dim, 0.0);
    }
    scratch_.wse = wse_.get();
}

} // namespace core
