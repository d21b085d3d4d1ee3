// Eviction policies (ALGORITHMS.md §2, §4): a policy is a scorer plus a schedule (kvpress's shape). It
// never allocates cache memory and never decides bytes: the cache (kv-cache.cpp) feeds it each step's
// attention probabilities, asks whether an eviction is due, asks for scores (higher = keep), and then
// selects, compacts and frees pages itself. One file per policy under policies/, one registry row each
// (kv-policy-registry.cpp); tests iterate the registry.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace core {

enum kv_policy_kind : int {
    KV_POLICY_LAZY = 0,       // LazyEviction: recurrence intervals, evict every W steps
    KV_POLICY_H2O = 1,        // heavy hitters (cumulative attention) + recent window, every step
    KV_POLICY_TOVA = 2,       // current query's attention, averaged over the layer, every step
    KV_POLICY_STREAMING = 3,  // StreamingLLM: first `protect` sinks + the most recent tokens
    KV_POLICY_SNAPKV = 4,     // SnapKV re-run during decoding (last w queries, pooled attention)
    KV_POLICY_RKV = 5,        // R-KV: attention importance minus key redundancy
    KV_POLICY_COUNT
};

struct kv_policy_params {
    kv_policy_kind kind = KV_POLICY_LAZY;
    int32_t capacity = 2048;  // C: tokens a head keeps after an eviction (includes protected and recent)
    int32_t window = 128;     // W: lazy period and protected recent window; recent window for h2o/streaming
    float alpha = 1e-4f;      // lazy: attention threshold for a "hit"
    int32_t protect = 0;      // the first `protect` positions are never evicted (sinks)
    float ratio = 0.0f;       // lazy ratio mode (> 0): C = P + max(W, floor(ratio * t)) at each check
    int32_t interval = 128;   // snapkv / rkv: compress every `interval` decode steps
    float lambda = 0.1f;      // rkv: weight of attention importance vs redundancy
    int32_t pool = 7;         // snapkv / rkv: 1-D max-pool kernel over token scores
    bool protect_sinks = false;  // also never evict massive-activation sinks detected at prefill (§3.5)
};

struct kv_head_view;
// Inputs of the policies that score from keys and recent queries (snapkv, rkv).
struct kv_qk_inputs {
    const kv_head_view * head = nullptr;
    int head_dim = 0;
    int group = 0;                  // query heads per KV head
    const float * queries = nullptr;  // [n_queries][group][head_dim] post-RoPE, oldest first
    int n_queries = 0;
    float scale = 1.0f;
};

// Per-token statistics a head keeps for its policy (parallel to its token arrays; gathered on compaction).
struct kv_token_stats {
    std::vector<int32_t> last;   // lazy: decode step of the last hit
    std::vector<int32_t> mri;    // lazy: maximum recurrence interval
    std::vector<float> acc;      // h2o: cumulative attention (group sum)
    std::vector<float> cur;      // tova: current step's attention (layer mean)
};

// What the cache hands a policy at a decode step t (t = 1 for the first decode forward after prefill).
struct kv_step_probs {
    const float * p_max = nullptr;    // [n] max over the group's query heads of p_{q,j}
    const float * p_sum = nullptr;    // [n] sum over the group's query heads
    const float * p_layer = nullptr;  // [n] mean over all query heads of the layer (only if every head
                                      //     of the layer holds the same token set, else nullptr)
};

struct kv_policy {
    kv_policy_kind kind;
    const char * name;
    const char * source;  // paper / code the policy follows
    // Appends stats for `count` new tokens (t: current decode step, 0 during prefill).
    void (*append)(kv_token_stats & s, int32_t count, int32_t t);
    // Updates stats with this step's probabilities (n tokens held, newest last).
    void (*observe)(kv_token_stats & s, int32_t n, const kv_step_probs & p, int32_t t, const kv_policy_params & pp);
    // True when an eviction is due at decode step t with n tokens held (P = prompt length).
    bool (*due)(int32_t t, int32_t n, int32_t P, const kv_policy_params & pp);
    // Number of tokens to keep after an eviction at step t.
    int32_t (*budget)(int32_t t, int32_t P, const kv_policy_params & pp);
    // The newest tokens that are never candidates.
    int32_t (*recent)(const kv_policy_params & pp);
    // scores[j] for j < n (higher = keep).
    void (*score)(const kv_token_stats & s, int32_t n, int32_t t, const kv_policy_params & pp, float * scores);
    // Policies that score from keys and the last `query_window` queries set these instead of `score`.
    int32_t (*query_window)(const kv_policy_params & pp) = nullptr;
    void (*score_qk)(const kv_qk_inputs & in, const kv_policy_params & pp, float * scores) = nullptr;
    // The policy reads kv_step_probs::p_layer (the mean over every query head of the layer).
    bool needs_layer_mean = false;
    // `score` reads only the tokens' order, no statistics (streaming): the device cache decides such a policy on
    // the host from positions alone, without downloading anything (kv-ring.h).
    bool position_only = false;
    // `due` is "more than the budget is held" (streaming, h2o, tova): a head holds at most its budget (or what the
    // selection always keeps) between steps, and a decode step drops at most one token. The device cache sizes
    // such a head by its budget and evicts that one token on the device (kv-ring.h).
    bool holds_budget = false;
};

const kv_policy * kv_policy_get(kv_policy_kind kind);
const kv_policy * kv_policy_find(const char * name);
const kv_policy * kv_policy_all(int * count);

// Deterministic selection shared by every policy: keeps the `protect` first positions, the positions in
// `sinks` (sorted; may be empty), the `recent` newest tokens, and the best-scoring others up to `budget`
// tokens in all (ties: the newer token wins). "Newest" and "newer" go by position, so the result does not
// depend on the order tokens are listed in (a coded head lists them [coded | f16]). Returns the kept
// indices in ascending order.
std::vector<int32_t> kv_select_keep(const float * scores, const int32_t * pos, int32_t n, int32_t budget, int32_t recent, int32_t protect,
                                    const std::vector<int32_t> & sinks = {});

} // namespace core
