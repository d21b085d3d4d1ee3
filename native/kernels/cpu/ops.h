// Element-wise and row ops of the forward pass (CPU). Numerics follow llama.cpp's CPU backend where it
// changes results: RMSNorm accumulates in double, RoPE angles advance by repeated multiplication with
// theta_scale = base^(-2/n_rot), SiLU is x / (1 + exp(-x)).
#pragma once
#include <cstdint>

#include "../../model/arch.h"

namespace core {

// y[i] = x[i] / sqrt(mean(x^2) + eps) * w[i]   (w may be nullptr: no weight). In place allowed.
void rms_norm_ref(const float * x, const float * w, float * y, int64_t n, float eps);

// Rotation angles for one position: cs[2*i] = cos(theta_i), cs[2*i+1] = sin(theta_i), i < n_rot/2.
// freq_factors (nullable) divides theta_i.
void rope_cache_ref(float * cs, int32_t pos, int n_rot, float freq_base, float freq_scale, const float * freq_factors);

// Rotates the first n_rot dims of each of n_head heads of size head_dim (in place) using `cs` of one position.
void rope_apply_ref(float * x, int n_head, int head_dim, int n_rot, rope_style style, const float * cs);

// g[i] = silu(g[i]) * u[i], silu(x) = x / (1 + exp(-x)) with libm's expf.
void silu_mul_ref(float * g, const float * u, int64_t n);
// Same with the vectorized exp llama.cpp's CPU backend uses for SwiGLU (ggml's ggml_v_expf: a
// range-reduced polynomial, within 2 ulp of expf but with different bits), so hidden states keep the
// exact values llama.cpp computes; AVX-512 and AVX2 each follow the variant llama.cpp runs on that CPU.
void silu_mul(float * g, const float * u, int64_t n);

// Softmax numerator: x[i] = exp(x[i] − mx) for i < n, returns Σ x[i]. The _ref uses libm's expf; the
// dispatched version ggml's vectorized exp (within 2 ulp).
float exp_sub_sum_ref(float * x, int64_t n, float mx);
float exp_sub_sum(float * x, int64_t n, float mx);

// y[i] = expf(x[i]) for i < n, bit for bit as glibc's expf computes it on x86-64 with FMA (its __expf_fma:
// x·32/ln2 split as k + r, 2^(k/32) from a table, a cubic in r, all in double, then one rounding to float).
// llama.cpp's CPU flash attention calls expf once per key, and its results decide near-tie greedy tokens, so
// attention needs these exact bits, not a ≤2-ulp approximation. The _ref calls std::exp; the dispatched version
// computes 16 lanes at a time with AVX-512 or 8 with AVX2 (std::exp for lanes outside [−103.28, 88], where glibc
// takes its special paths, and for NaN), after a one-time check that this C library's expf gives those bits
// (else it is the _ref). Checked against std::exp over every float in [−104, 88.7] (test-forward "expf_libm": a
// stride of them by default, all with THINKCACHE_EXHAUSTIVE=1).
void expf_libm_ref(const float * x, float * y, int n);
void expf_libm(const float * x, float * y, int n);

// y[i] += x[i]
void add_ref(float * y, const float * x, int64_t n);

} // namespace core
