// The policy registry (one row per policy) and the shared selection rule.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kv-policy.h"

namespace core {

extern const kv_policy KV_POLICY_LAZY_ROW;
extern const kv_policy KV_POLICY_H2O_ROW;
extern const kv_policy KV_POLICY_TOVA_ROW;
extern const kv_policy KV_POLICY_STREAMING_ROW;
extern const kv_policy KV_POLICY_SNAPKV_ROW;
extern const kv_policy KV_POLICY_RKV_ROW;

static const kv_policy * const REGISTRY[] = {&KV_POLICY_LAZY_ROW, &KV_POLICY_H2O_ROW, &KV_POLICY_TOVA_ROW, &KV_POLICY_STREAMING_ROW,
                                             &KV_POLICY_SNAPKV_ROW, &KV_POLICY_RKV_ROW};

const kv_policy * kv_policy_get(kv_policy_kind kind) {
    for (const kv_policy * p : REGISTRY) if (p->kind == kind) return p;
    return nullptr;
}

const kv_policy * kv_policy_find(const char * name) {
    for (const kv_policy * p : REGISTRY) if (!std::strcmp(p->name, name)) return p;
    return nullptr;
}

const kv_policy * kv_policy_all(int * count) {
    static kv_policy rows[sizeof(REGISTRY) / sizeof(REGISTRY[0])];
    static bool init = [] {
        for (size_t i = 0; i < sizeof(REGISTRY) / sizeof(REGISTRY[0]); i++) rows[i] = *REGISTRY[i];
        return true;
    }();
    (void) init;
    *count = (int) (sizeof(REGISTRY) / sizeof(REGISTRY[0]));
    return rows;
}

std::vector<int32_t> kv_select_keep(const float * scores, const int32_t * pos, int32_t n, int32_t budget, int32_t recent, int32_t protect,
                                    const std::vector<int32_t> & sinks) {
    // "recent" and "newer" go by position, not index: a coded head lists its tokens [coded | f16], where
    // protected f16 tokens follow newer coded ones (kv-cache.h)
    std::vector<int32_t> keep, cand;
    std::vector<char> kept((size_t) n, 0);
    int32_t first_recent = INT32_MAX;  // the smallest position among the `recent` newest
    if (recent > 0 && n > 0) {
        std::vector<int32_t> p(pos, pos + n);
        const int32_t k = std::min(recent, n);
        std::nth_element(p.begin(), p.begin() + (n - k), p.end());
        first_recent = p[(size_t) (n - k)];
    }
    for (int32_t j = 0; j < n; j++) {
        if (pos[j] < protect || pos[j] >= first_recent || std::binary_search(sinks.begin(), sinks.end(), pos[j])) kept[(size_t) j] = 1;
        else cand.push_back(j);
    }
    int32_t n_kept = 0;
    for (char k : kept) n_kept += k;
    const int32_t room = std::max(0, budget - n_kept);
    if ((int32_t) cand.size() > room) {
        std::stable_sort(cand.begin(), cand.end(), [&](int32_t a, int32_t b) { return scores[a] > scores[b] || (scores[a] == scores[b] && pos[a] > pos[b]); });
        cand.resize((size_t) room);
    }
    for (int32_t j : cand) kept[(size_t) j] = 1;
    for (int32_t j = 0; j < n; j++) if (kept[(size_t) j]) keep.push_back(j);
    return keep;
}

} // namespace core
