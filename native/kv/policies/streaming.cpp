// StreamingLLM (Xiao et al., arXiv 2309.17453; ALGORITHMS.md §4.2), post-RoPE variant with original
// positions: the first `protect` tokens (attention sinks) and the most recent ones, up to C in all,
// every step. As an eviction policy it is the byte-matched baseline of the STREAM retention mode.
#include "../kv-policy.h"

namespace core {

namespace {

void st_append(kv_token_stats &, int32_t, int32_t) {}
void st_observe(kv_token_stats &, int32_t, const kv_step_probs &, int32_t, const kv_policy_params &) {}
bool st_due(int32_t, int32_t n, int32_t, const kv_policy_params & pp) { return n > pp.capacity; }
int32_t st_budget(int32_t, int32_t, const kv_policy_params & pp) { return pp.capacity; }
int32_t st_recent(const kv_policy_params & pp) { return pp.capacity > pp.protect ? pp.capacity - pp.protect : 0; }  // all but the sinks
void st_score(const kv_token_stats &, int32_t n, int32_t, const kv_policy_params &, float * scores) {
    for (int32_t j = 0; j < n; j++) scores[j] = (float) j;
}

} // namespace

extern const kv_policy KV_POLICY_STREAMING_ROW = {
    KV_POLICY_STREAMING, "streaming", "StreamingLLM, arXiv 2309.17453 (sinks + recent, original positions)",
    st_append, st_observe, st_due, st_budget, st_recent, st_score, nullptr, nullptr, /*needs_layer_mean=*/false, /*position_only=*/true, /*holds_budget=*/true,
};

} // namespace core
