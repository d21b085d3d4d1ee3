// R-KV (Cai et al., redundancy-aware KV compression for reasoning models; ALGORITHMS.md §4.6): every
// `interval` decode steps, if at least C tokens are held, score = λ·a − (1 − λ)·r where
//   a[j]: attention of the last w queries (logits max-pooled over the group's query heads, softmax over
//         the keys outside the window, mean over the w queries, 1-D max-pool kernel 7);
//   r[j]: softmax over j of the mean cosine similarity of key j to the other keys, after zeroing each
//         row's most recent near-duplicate (similarity > 0.5; if none, column 0, as the reference code).
// Keeps the top C − w plus the w newest. O(n²·D) per head per compression, as the method itself.
#include "qk-common.h"

namespace core {

namespace {

void rk_append(kv_token_stats &, int32_t, int32_t) {}
void rk_observe(kv_token_stats &, int32_t, const kv_step_probs &, int32_t, const kv_policy_params &) {}
bool rk_due(int32_t t, int32_t n, int32_t, const kv_policy_params & pp) { return t > 0 && t % pp.interval == 0 && n >= pp.capacity; }
int32_t rk_budget(int32_t, int32_t, const kv_policy_params & pp) { return pp.capacity; }
int32_t rk_recent(const kv_policy_params & pp) { return pp.window; }
void rk_score(const kv_token_stats &, int32_t n, int32_t, const kv_policy_params &, float * scores) { std::fill(scores, scores + n, 0.0f); }
int32_t rk_queries(const kv_policy_params & pp) { return pp.window; }

void rk_score_qk(const kv_qk_inputs & in, const kv_policy_params & pp, float * scores) {
    const int n = in.head->n, D = in.head_dim, w = std::min(in.n_queries, n);
    const int m = std::max(0, n - w);  // keys outside the window
    const std::vector<float> k = qk_keys_f32(*in.head, D);
    // importance
    std::vector<float> a((size_t) n, 0.0f), logit((size_t) m);
    for (int qi = 0; qi < in.n_queries; qi++) {
        float mx = -INFINITY;
        for (int j = 0; j < m; j++) {
            float best = -INFINITY;
            for (int g = 0; g < in.group; g++) {
                const float * q = in.queries + ((size_t) qi * in.group + g) * D;
                float s = 0;
                for (int d = 0; d < D; d++) s += q[d] * k[(size_t) j * D + d];
                best = std::max(best, s * in.scale);
            }
            logit[(size_t) j] = best;
            mx = std::max(mx, best);
        }
        double z = 0;
        for (int j = 0; j < m; j++) z += std::exp(logit[(size_t) j] - mx);
        for (int j = 0; j < m; j++) a[(size_t) j] += (float) (std::exp(logit[(size_t) j] - mx) / z) / (float) std::max(1, in.n_queries);
    }
    qk_max_pool(a, pp.pool);
    // redundancy
    std::vector<float> kn((size_t) n * D);
    for (int j = 0; j < n; j++) {
        double s = 0;
        for (int d = 0; d < D; d++) s += (double) k[(size_t) j * D + d] * k[(size_t) j * D + d];
        const float inv = s > 0 ? (float) (1.0 / std::sqrt(s)) : 0.0f;
        for (int d = 0; d < D; d++) kn[(size_t) j * D + d] = k[(size_t) j * D + d] * inv;
    }
    std::vector<double> colmean((size_t) n, 0.0);
    std::vector<float> row((size_t) n);
    for (int i = 0; i < n; i++) {
        int last = -1;
        for (int j = 0; j < n; j++) {
            float s = 0;
            if (j != i) for (int d = 0; d < D; d++) s += kn[(size_t) i * D + d] * kn[(size_t) j * D + d];
            row[(size_t) j] = s;
            if (s > 0.5f) last = j;
        }
        row[(size_t) (last >= 0 ? last : 0)] = 0.0f;
        for (int j = 0; j < n; j++) colmean[(size_t) j] += row[(size_t) j] / n;
    }
    rkv_combine(a.data(), colmean.data(), n, pp, scores);
}

} // namespace

void rkv_combine(const float * a, const double * colmean, int n, const kv_policy_params & pp, float * scores) {
    double mx = -INFINITY, z = 0;
    for (int j = 0; j < n; j++) mx = std::max(mx, colmean[j]);
    for (int j = 0; j < n; j++) z += std::exp(colmean[j] - mx);
    for (int j = 0; j < n; j++) {
        const float r = (float) (std::exp(colmean[j] - mx) / z);
        scores[j] = pp.lambda * a[j] - (1.0f - pp.lambda) * r;
    }
}

extern const kv_policy KV_POLICY_RKV_ROW = {
    KV_POLICY_RKV, "rkv", "R-KV (Cai et al. 2025, github Zefan-Cai/R-KV): attention importance minus key redundancy",
    rk_append, rk_observe, rk_due, rk_budget, rk_recent, rk_score, rk_queries, rk_score_qk,
};

} // namespace core
