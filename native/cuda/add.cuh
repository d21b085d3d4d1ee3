// Element-wise additions of the forward pass on the device: the residual (y += x) and the q/k/v biases of
// qwen2 (y[r][i] += b[i]). CPU oracle: add_ref (ops.h), the same single f32 addition per element (exact).
#pragma once
#include "backend-cuda.h"

namespace core {
namespace cuda {
status add(float * y, const float * x, int64_t n, stream_t s);                        // device pointers
status add_rows(float * y, const float * b, int64_t rows, int64_t n, stream_t s);     // y: [rows][n], b: [n]
} // namespace cuda
} // namespace core
