// Window-substitution error (ALGORITHMS.md §1.12 (b)): for every query position i >= S + R of a
// teacher-forced pass over a FULL cache, how much a head's attention output would change if the head
// only saw its S sinks and R most recent tokens (the STREAM window, current token included):
//   o_full = Σ_j p_j v_j,  m_in = Σ_{j∈Win(i)} p_j,  o_win = Σ_{j∈Win(i)} p_j v_j / m_in
//   err(i) = ‖o_full − o_win‖² / (‖o_full‖² + 1e-6)
// accumulated per (layer, KV head) over positions and the query heads of the group, with 1 − m_in
// (long-range attention mass) as a diagnostic. Calibration only: exact f32/f64 math, not tuned.
#pragma once
#include <cstdint>
#include <vector>

#include "../../common/thread-pool.h"
#include "../../kv/kv-cache.h"
#include "attention.h"

namespace core {

struct wse_accumulator {
    int sinks = 16;
    int recent = 64;
    std::vector<double> err_sum;       // [n_layer][n_head_kv]
    std::vector<double> out_mass_sum;  // [n_layer][n_head_kv] Σ (1 − m_in)
    std::vector<double> count;         // [n_layer][n_head_kv] query (position, head) pairs
    // §1.12 (a) (kvpress "on the fly"): sums of the pre-RoPE queries and keys (after q/k norms and
    // biases) over every token seen, for the mean-query / mean-key attention-curve score.
    std::vector<double> q_sum;         // [n_layer][n_head][head_dim]
    std::vector<double> k_sum;         // [n_layer][n_head_kv][head_dim]
    double tokens = 0;                 // tokens summed (per layer)
    bool window_error = true;          // false: only the q/k sums (no window-substitution pass)
};

// note: call only on a cache whose heads are all FULL (the windows are cut from the full history).
void attention_window_error(thread_pool & pool, const attn_params & p, const float * q, const int32_t * q_pos, const kv_cache & kv, int il,
                            wse_accumulator & acc);

} // namespace core
