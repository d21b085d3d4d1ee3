// Element-wise additions (add.cuh). One thread per element, grid-stride.
#include <algorithm>

#include "add.cuh"
#include "common.cuh"

namespace core {
namespace cuda {
namespace {

__global__ void k_add(float * y, const float * x, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t) blockDim.x + threadIdx.x; i < n; i += (int64_t) gridDim.x * blockDim.x) y[i] = __fadd_rn(y[i], x[i]);
}
__global__ void k_add_rows(float * y, const float * b, int64_t total, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t) blockDim.x + threadIdx.x; i < total; i += (int64_t) gridDim.x * blockDim.x)
        y[i] = __fadd_rn(y[i], b[i % n]);
}

} // namespace

status add(float * y, const float * x, int64_t n, stream_t s) {
    if (n <= 0) return status::success();
    k_add<<<std::min<unsigned>(ceil_div(n, 256), 4096), 256, 0, s>>>(y, x, n);
    CUDA_CHECK_LAUNCH("add");
    return status::success();
}

status add_rows(float * y, const float * b, int64_t rows, int64_t n, stream_t s) {
    if (rows <= 0 || n <= 0) return status::success();
    k_add_rows<<<std::min<unsigned>(ceil_div(rows * n, 256), 4096), 256, 0, s>>>(y, b, rows * n, n);
    CUDA_CHECK_LAUNCH("add_rows");
    return status::success();
}

} // namespace cuda
} // namespace core
