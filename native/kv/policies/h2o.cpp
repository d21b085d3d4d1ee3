// H2O (Zhang et al., arXiv 2306.14048; ALGORITHMS.md §4.3): cumulative attention ("heavy hitters"),
// summed over the query heads of the KV head's group, plus a recent window; evicts every step once more
// than C tokens are held (half of C recent by default: window).
#include "../kv-policy.h"

namespace core {

namespace {

void h2o_append(kv_token_stats & s, int32_t count, int32_t) { for (int32_t i = 0; i < count; i++) s.acc.push_back(0.0f); }
void h2o_observe(kv_token_stats & s, int32_t n, const kv_step_probs & p, int32_t, const kv_policy_params &) {
    for (int32_t j = 0; j < n; j++) s.acc[(size_t) j] += p.p_sum[j];
}
bool h2o_due(int32_t, int32_t n, int32_t, const kv_policy_params & pp) { return n > pp.capacity; }
int32_t h2o_budget(int32_t, int32_t, const kv_policy_params & pp) { return pp.capacity; }
int32_t h2o_recent(const kv_policy_params & pp) { return pp.window; }
void h2o_score(const kv_token_stats & s, int32_t n, int32_t, const kv_policy_params &, float * scores) {
    for (int32_t j = 0; j < n; j++) scores[j] = s.acc[(size_t) j];
}

} // namespace

extern const kv_policy KV_POLICY_H2O_ROW = {
    KV_POLICY_H2O, "h2o", "H2O, arXiv 2306.14048 (group-summed cumulative attention)",
    h2o_append, h2o_observe, h2o_due, h2o_budget, h2o_recent, h2o_score, nullptr, nullptr, /*needs_layer_mean=*/false,
    /*position_only=*/false, /*holds_budget=*/true,
};

} // namespace core
