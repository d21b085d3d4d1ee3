// TOVA (Oren et al., arXiv 2401.06104; ALGORITHMS.md §4.5): keeps the tokens the current query attends
// to most, with the attention averaged over every query head of the layer, so all heads of the layer
// keep the same token set; evicts every step once more than C tokens are held (the newest is pinned).
#include "../kv-policy.h"

namespace core {

namespace {

void tova_append(kv_token_stats & s, int32_t count, int32_t) { for (int32_t i = 0; i < count; i++) s.cur.push_back(0.0f); }
void tova_observe(kv_token_stats & s, int32_t n, const kv_step_probs & p, int32_t, const kv_policy_params &) {
    for (int32_t j = 0; j < n; j++) s.cur[(size_t) j] = p.p_layer ? p.p_layer[j] : p.p_sum[j];
}
bool tova_due(int32_t, int32_t n, int32_t, const kv_policy_params & pp) { return n > pp.capacity; }
int32_t tova_budget(int32_t, int32_t, const kv_policy_params & pp) { return pp.capacity; }
int32_t tova_recent(const kv_policy_params &) { return 1; }
void tova_score(const kv_token_stats & s, int32_t n, int32_t, const kv_policy_params &, float * scores) {
    for (int32_t j = 0; j < n; j++) scores[j] = s.cur[(size_t) j];
}

} // namespace

extern const kv_policy KV_POLICY_TOVA_ROW = {
    KV_POLICY_TOVA, "tova", "TOVA, arXiv 2401.06104 (layer-mean attention of the current query)",
    tova_append, tova_observe, tova_due, tova_budget, tova_recent, tova_score, nullptr, nullptr, /*needs_layer_mean=*/true, /*position_only=*/false, /*holds_budget=*/true,
};

} // namespace core
