// Shared pieces of the policies that score tokens from keys and the last w queries (SnapKV, R-KV).
#pragma once
#include <algorithm>
#include <cmath>
#include <vector>

#include "../kv-cache.h"
#include "../kv-policy.h"

namespace core {

// Gathers the head's keys as f32 rows [n][D] (keys are stored f16 in transposed tiles).
inline std::vector<float> qk_keys_f32(const kv_head_view & h, int D) {
    std::vector<float> k((size_t) h.n * D);
    int32_t base = 0;
    for (int32_t s = 0; s < h.n_seg; s++) {
        const kv_segment & g = h.seg[s];
        for (int32_t j = 0; j < g.n; j++)
            for (int d = 0; d < D; d++) k[(size_t) (base + j) * D + d] = f16_to_f32(g.key(j, d, D));
        base += g.n;
    }
    return k;
}

// 1-D max pooling with an odd kernel, same length (edges use the available window).
inline void qk_max_pool(std::vector<float> & a, int kernel) {
    if (kernel <= 1) return;
    const int r = kernel / 2, n = (int) a.size();
    std::vector<float> out((size_t) n);
    for (int j = 0; j < n; j++) {
        float m = a[(size_t) j];
        for (int i = std::max(0, j - r); i <= std::min(n - 1, j + r); i++) m = std::max(m, a[(size_t) i]);
        out[(size_t) j] = m;
    }
    a.swap(out);
}

// R-KV's last step (rkv.cpp): redundancy r = softmax over the tokens of their mean similarity to the others
// (colmean), score = λ·a − (1 − λ)·r with a the pooled importance. Shared with the device cache, which
// computes a and colmean on the GPU (kv-ring.cpp kv_ring_qk_scores).
void rkv_combine(const float * a, const double * colmean, int n, const kv_policy_params & pp, float * scores);

} // namespace core
