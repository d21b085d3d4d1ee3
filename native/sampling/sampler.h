// Token sampling from logits, in llama.cpp's default chain order:
//   penalties (repetition, presence, frequency over the last `penalty_last_n` tokens)
//   → top-k → top-p → min-p → temperature → draw (seeded; greedy when temperature <= 0).
// The RNG is our own (splitmix64 + xoshiro256**), so a seed gives the same tokens on every platform.
#pragma once
#include <cstdint>
#include <vector>

#include "../common/status.h"

namespace core {

struct sampler_params {
    float temperature = 0.0f;     // <= 0: greedy (argmax, lowest id on ties)
    int32_t top_k = 40;           // <= 0: off
    float top_p = 0.95f;          // >= 1: off
    float min_p = 0.05f;          // <= 0: off
    float repeat_penalty = 1.0f;  // 1: off
    float presence_penalty = 0.0f;
    float frequency_penalty = 0.0f;
    int32_t penalty_last_n = 64;
    uint64_t seed = 0;
};

class sampler {
public:
    explicit sampler(const sampler_params & p);
    void reset(const sampler_params & p);
    // Records a token as part of the history used by the penalties (prompt and generated tokens).
    void accept(int32_t token);
    void clear_history() { history_.clear(); }
    // Picks a token from logits[n_vocab] (logits are not modified).
    int32_t sample(const float * logits, int32_t n_vocab);

private:
    uint64_t next_u64();
    double next_double(); // uniform [0, 1)

    sampler_params p_;
    uint64_t s_[4];
    std::vector<int32_t> history_;
    struct cand { float logit; int32_t id; };
    std::vector<cand> cands_;
    std::vector<float> work_;
    std::vector<double> prob_;
};

} // namespace core
