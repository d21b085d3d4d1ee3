// SwiGLU gate on the device: g[i] = silu(g[i]) * u[i]. CPU oracle: silu_mul_ref (libm expf); the device
// expf is within 2 ulp, so NMSE stays far below the f32 bound.
#pragma once
#include "backend-cuda.h"

namespace core {
namespace cuda {
status silu_mul(float * g, const float * u, int64_t n, stream_t s);  // device pointers, in place on g
} // namespace cuda
} // namespace core
