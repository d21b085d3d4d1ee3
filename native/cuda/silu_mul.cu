// CPU reference: core::silu_mul_ref   g = g / (1 + expf(-g)) * u
#include <algorithm>

#include "common.cuh"
#include "silu_mul.cuh"

namespace core {
namespace cuda {
namespace {
__global__ void k_silu_mul(float * g, const float * u, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t) blockDim.x + threadIdx.x; i < n; i += (int64_t) gridDim.x * blockDim.x) {
        const float x = g[i];
        g[i] = __fmul_rn(__fdiv_rn(x, __fadd_rn(1.0f, expf(-x))), u[i]);
    }
}
} // namespace

status silu_mul(float * g, const float * u, int64_t n, stream_t s) {
    if (n <= 0) return status::success();
    const unsigned grid = (unsigned) std::min<int64_t>(ceil_div(n, 256), 4096);
    k_silu_mul<<<grid, 256, 0, s>>>(g, u, n);
    CUDA_CHECK_LAUNCH("silu_mul");
    return status::success();
}

} // namespace cuda
} // namespace core
