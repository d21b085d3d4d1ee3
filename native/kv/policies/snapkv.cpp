// SnapKV re-run during decoding (Li et al., arXiv 2404.14469; the decode adaptation of the R-KV repo,
// ALGORITHMS.md §4.4): every `interval` decode steps, if more than C tokens are held, score each token
// outside the window by the attention the last w queries give it (softmax over all held keys, averaged
// over the w queries and the group's query heads — kvpress's per-KV-head form), max-pooled along tokens
// (kernel 7), and keep the top C − w plus the w newest.
#include "qk-common.h"

namespace core {

namespace {

void sk_append(kv_token_stats &, int32_t, int32_t) {}
void sk_observe(kv_token_stats &, int32_t, const kv_step_probs &, int32_t, const kv_policy_params &) {}
bool sk_due(int32_t t, int32_t n, int32_t, const kv_policy_params & pp) { return t > 0 && t % pp.interval == 0 && n > pp.capacity; }
int32_t sk_budget(int32_t, int32_t, const kv_policy_params & pp) { return pp.capacity; }
int32_t sk_recent(const kv_policy_params & pp) { return pp.window; }
void sk_score(const kv_token_stats &, int32_t n, int32_t, const kv_policy_params &, float * scores) { std::fill(scores, scores + n, 0.0f); }
int32_t sk_queries(const kv_policy_params & pp) { return pp.window; }

void sk_score_qk(const kv_qk_inputs & in, const kv_policy_params & pp, float * scores) {
    const int n = in.head->n, D = in.head_dim;
    const std::vector<float> k = qk_keys_f32(*in.head, D);
    std::vector<float> a((size_t) n, 0.0f), logit((size_t) n);
    const int rows = in.n_queries * in.group;
    for (int r = 0; r < rows; r++) {
        const float * q = in.queries + (size_t) r * D;
        float mx = -INFINITY;
        for (int j = 0; j < n; j++) {
            float s = 0;
            for (int d = 0; d < D; d++) s += q[d] * k[(size_t) j * D + d];
            logit[(size_t) j] = s * in.scale;
            mx = std::max(mx, logit[(size_t) j]);
        }
        double z = 0;
        for (int j = 0; j < n; j++) z += std::exp(logit[(size_t) j] - mx);
        for (int j = 0; j < n; j++) a[(size_t) j] += (float) (std::exp(logit[(size_t) j] - mx) / z) / (float) rows;
    }
    qk_max_pool(a, pp.pool);
    std::copy(a.begin(), a.end(), scores);
}

} // namespace

extern const kv_policy KV_POLICY_SNAPKV_ROW = {
    KV_POLICY_SNAPKV, "snapkv", "SnapKV, arXiv 2404.14469 (re-run every interval steps during decoding, as the R-KV repo)",
    sk_append, sk_observe, sk_due, sk_budget, sk_recent, sk_score, sk_queries, sk_score_qk,
};

} // namespace core
