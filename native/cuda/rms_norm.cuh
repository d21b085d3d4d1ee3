// RMSNorm on the device (host-callable declaration; no CUDA header). CPU oracle: rms_norm_ref (ops.h):
// the sum of squares accumulates in double, y = (x * scale) * w, so results match the CPU to ~1 ulp.
#pragma once
#include "backend-cuda.h"

namespace core {
namespace cuda {
// x, y: [rows][n] f32 (device, y may equal x), w: [n] f32 or nullptr.
status rms_norm(const float * x, const float * w, float * y, int64_t n, int64_t rows, float eps, stream_t s);
} // namespace cuda
} // namespace core
