#include "engine.h"

#include <algorithm>

namespace core {

static int resolve_threads(int n) { return n > 0 ? n : std::max(1, cpu_physical_cores()); }

engine_context::engine_context(std::shared_ptr<const model> m, const context_params & p)
    : model_(std::move(m)), params_(p), pool_(resolve_threads(p.n_threads)),
      kv_pool_(std::make_shared<page_pool>(kv_page_bytes((int) model_->hp.head_dim, (int) model_->hp.head_dim_v))) {
    params_.n_threads = pool_.size();
}

engine_sequence::engine_sequence(std::shared_ptr<engine_context> ctx) : ctx_(std::move(ctx)), sampler_(sampler_params{}) {
    const hparams & hp = ctx_->mdl().hp;
    kv_cache_config kc;
    kc.n_layer = (int) hp.n_layer;
    kc.n_head_kv = ctx_->params().per_query_head ? (int) hp.n_head : (int) hp.n_head_kv;
    kc.n_head = (int) hp.n_head;
    kc.head_dim = (int) hp.head_dim;
    kc.head_dim_v = (int) hp.head_dim_v;
    kc.n_ctx = ctx_->params().n_ctx;
    kc.retention = ctx_->params().retention;
    kc.stream_sinks = ctx_->params().stream_sinks;
    kc.stream_recent = ctx_->params().stream_recent;
    kc.policy = ctx_->params().policy;
    kc.storage = ctx_->params().storage;
    kc.storage.n_rot = (int) hp.n_rot;
    kc.storage.rope = ctx_->mdl().arch->rope;
    kc.storage.freq_base = hp.rope_freq_base;
    kc.storage.freq_scale = hp.rope_freq_scale;
    kc.storage.freq_factors = ctx_->mdl().rope_freqs;
    kv_ = std::make_unique<kv_cache>(kc, ctx_->kv_pool());
}

status engine_sequence::eval(const int32_t * tokens, int n_tokens, bool want_logits) {
    const model & m = ctx_->mdl();
    if (n_tokens <= 0) return status(ERR_INVALID_ARG, "eval: no tokens given");
    if ((int64_t) kv_->n_logical() + n_tokens > ctx_->params().n_ctx) {
        return status(ERR_CONTEXT_FULL, strfmt("eval: %d tokens at position %d exceed the context size %d", n_tokens, kv_->n_logical(), ctx_->params().n_ctx));
    }
    if (want_logits && logits_.size() != m.hp.n_vocab) logits_.resize(m.hp.n_vocab);
    has_logits_ = false;
    const int n_batch = std::max(1, ctx_->params().n_batch);
    std::lock_guard<std::mutex> lock(ctx_->compute_mutex());
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

status engine_sequence::sample(int32_t * out) {
    if (!has_logits_) return status(ERR_INVALID_ARG, "sample: no logits; evaluate at least one token with logits first");
    *out = sampler_.sample(logits_.data(), (int32_t) logits_.size());
    return {};
}

int32_t engine_sequence::remove_from(int32_t pos) {
    const int32_t kept = kv_->remove_from(pos);
    if ((size_t) kept < history_.size()) history_.resize((size_t) kept);
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
