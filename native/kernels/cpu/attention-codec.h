// Attention of one GQA group over a coded head (storage codec other than f16; kv-cache.h, kv-codec.h).
// Three token classes, by position: f16 protected tokens and f16 staging (post-RoPE keys, plain values)
// and quantized tokens read straight from their codes:
//   keys, rot pre-RoPE (RotateKV, ALGORITHMS.md §3.6): per key, dequantize → inverse permutation →
//         FWHT (self-inverse) → RoPE at the stored position, once per key for the whole group, then q·k;
//         With grouped key rotation (kv_coded_view::rot_g > 1) the key of head h is rebuilt from every slot of
//         its rotation group: (1/√G)·Σ_s ±P_s⁻¹·x̂_s, then one FWHT_D and RoPE (H_{G·D} = H_G ⊗ H_D);
//   keys, rot post-RoPE (§6.2 C6): the query is rotated once, q'' = P·H·q, and q''·k̂' read from codes;
//   keys, q8/q4/kivi: q·k̂ read from codes;
//   values: acc += p·v̂ from codes; rotated values accumulate apart and get one FWHT at the end.
// Softmax in f32 (two passes over the scores). No dequantized copy of the cache is ever made.
#pragma once
#include <cstdint>

#include "../../kv/kv-cache.h"

namespace core {

// q·x̂_j and acc += w·x̂_j read from codes: AVX2 for rot codecs (groups of a multiple of 8 channels) when
// the CPU has it, else the codec's scalar `_ref` (the traits' dot/axpy), which is their oracle.
float kv_codec_dot(const kv_codec_traits & t, const kv_codec_params & p, const uint8_t * blk, int j, const float * q);
void kv_codec_axpy(const kv_codec_traits & t, const kv_codec_params & p, const uint8_t * blk, int j, float w, float * acc);

// Where an EVICT head's policy gets this query row's attention: per held token, the max and the sum over
// the group's query heads of the probability, laid out [coded tokens | f16 tokens] (kv_cache::probs_max);
// tokens the query cannot see get 0.
struct kv_group_probs {
    float * p_max = nullptr;
    float * p_sum = nullptr;
};

// q_rows: [G][head_dim] post-RoPE queries, out_rows: [G][head_dim_v]. note: call only when hv.coded.
void attend_group_coded_ref(int head_dim, int head_dim_v, float scale, const float * q_rows, int G, int32_t qpos,
                            const kv_head_view & hv, float * out_rows, const kv_group_probs * probs = nullptr);

// AVX-512 path for rot keys and rot values (attention-codec-avx512.cpp): same math, vectorized; returns
// false (and does nothing) for configurations it does not cover (head sizes other than 32/64/128, groups
// not a multiple of 16, partial RoPE, non-rot codecs) or on CPUs without AVX-512.
bool attend_group_coded_avx512(int head_dim, int head_dim_v, float scale, const float * q_rows, int G, int32_t qpos,
                               const kv_head_view & hv, float * out_rows, const kv_group_probs * probs = nullptr);

// AVX2 + FMA + F16C path (attention-codec-avx2.cpp), same coverage as the AVX-512 one (groups a multiple
// of 8); returns false when it does not apply.
bool attend_group_coded_avx2(int head_dim, int head_dim_v, float scale, const float * q_rows, int G, int32_t qpos,
                             const kv_head_view & hv, float * out_rows, const kv_group_probs * probs = nullptr);

// The fastest path the CPU and the configuration allow (THINKCACHE_CPU caps it), else the _ref.
void attend_group_coded(int head_dim, int head_dim_v, float scale, const float * q_rows, int G, int32_t qpos,
                        const kv_head_view & hv, float * out_rows, const kv_group_probs * probs = nullptr);

// Fills `probs` from unnormalized softmax weights w[g][i] (row stride n_all) over the visible tokens,
// f16 ones first (n_vis16 of n_f16) then coded ones (n_visq of n_coded), and 1/sum per query head.
void kv_group_probs_fill(const kv_group_probs & probs, const float * w, size_t n_all, int G, const float * inv_sum, int32_t n_f16,
                         int32_t n_vis16, int32_t n_coded, int32_t n_visq);

} // namespace core
