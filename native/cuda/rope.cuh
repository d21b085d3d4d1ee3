// RoPE on the device, NORM (adjacent pairs) and NEOX (halves) styles, one position per token.
// CPU oracle: rope_cache_ref + rope_apply_ref (ops.h). Angles follow the CPU exactly: theta_scale =
// powf(base, -2/n_rot) computed on the host, theta advanced by repeated multiplication, the same FMA
// placement; so the difference to the CPU is only cosf/sinf ulps.
#pragma once
#include "../model/arch.h"
#include "backend-cuda.h"

namespace core {
namespace cuda {
// x: [n_tokens][n_head][head_dim] f32 (device, in place), pos: [n_tokens] int32 (device),
// freq_factors: [n_rot/2] f32 (device) or nullptr.
status rope(float * x, const int32_t * pos, int n_tokens, int n_head, int head_dim, int n_rot, rope_style style,
            float freq_base, float freq_scale, const float * freq_factors, stream_t s);
} // namespace cuda
} // namespace core
