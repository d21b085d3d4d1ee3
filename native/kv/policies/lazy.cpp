// LazyEviction (Zhang et al., arXiv 2506.15969; code form of the score, ALGORITHMS.md §2.3), per KV head
// with group-max aggregation (§2.7): a token is "hit" when max over the group's query heads of
// p ≥ alpha; last/mri are int32 (§2.8). Every W decode steps, if more than C tokens are held, keep the
// newest W and the top C − W by  2σ(−(1 + (t − last)/(mri + 1e-5))) + (mri ? 2σ(1 − mri) : 0).
#include <algorithm>
#include <cmath>

#include "../kv-policy.h"

namespace core {

namespace {

float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

void lazy_append(kv_token_stats & s, int32_t count, int32_t t) {
    for (int32_t i = 0; i < count; i++) {
        s.last.push_back(t > 0 ? t - 1 : 0);
        s.mri.push_back(0);
    }
}

void lazy_observe(kv_token_stats & s, int32_t n, const kv_step_probs & p, int32_t t, const kv_policy_params & pp) {
    if (t <= 0) return;  // prefill: no metadata (official pass-through)
    for (int32_t j = 0; j < n; j++) {
        if (p.p_max[j] >= pp.alpha) {
            s.mri[(size_t) j] = std::max(s.mri[(size_t) j], t - s.last[(size_t) j]);
            s.last[(size_t) j] = t;
        }
    }
}

int32_t lazy_budget(int32_t t, int32_t P, const kv_policy_params & pp) {
    if (pp.ratio > 0) return P + std::max(pp.window, (int32_t) std::floor(pp.ratio * (float) t));
    return pp.capacity;
}

bool lazy_due(int32_t t, int32_t n, int32_t P, const kv_policy_params & pp) {
    return t > 0 && t % pp.window == 0 && n > lazy_budget(t, P, pp);
}

int32_t lazy_recent(const kv_policy_params & pp) { return pp.window; }

void lazy_score(const kv_token_stats & s, int32_t n, int32_t t, const kv_policy_params & pp, float * scores) {
    for (int32_t j = 0; j < n; j++) {
        const float mri = (float) s.mri[(size_t) j];
        const float h1 = 2.0f * sigmoid(-(1.0f + (float) (t - s.last[(size_t) j]) / (mri + 1e-5f)));
        const float h2 = s.mri[(size_t) j] == 0 ? 0.0f : 2.0f * sigmoid(1.0f - mri);
        scores[j] = h1 + h2;
    }
}

} // namespace

extern const kv_policy KV_POLICY_LAZY_ROW = {
    KV_POLICY_LAZY, "lazy", "LazyEviction, arXiv 2506.15969 (code form of the score)",
    lazy_append, lazy_observe, lazy_due, lazy_budget, lazy_recent, lazy_score,
};

} // namespace core
