// CPU reference: core::rms_norm_ref (native/kernels/cpu/ops.cpp)
//   sum = Σ (double)(x*x);  scale = 1 / sqrtf((float)(sum / n) + eps);  y = (x*scale) * w
// One block per row; products are rounded to f32 before the double sum (__fmul_rn), as on the CPU.
#include "common.cuh"
#include "rms_norm.cuh"

namespace core {
namespace cuda {
namespace {

__global__ void k_rms_norm(const float * x, const float * w, float * y, int64_t n, float eps) {
    const float * xr = x + blockIdx.x * n;
    float * yr = y + blockIdx.x * n;
    double sum = 0.0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) sum += (double) __fmul_rn(xr[i], xr[i]);
    __shared__ double part[32];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = sum;
    __syncthreads();
    if (threadIdx.x < 32) {
        double v = threadIdx.x < (blockDim.x >> 5) ? part[threadIdx.x] : 0.0;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        if (threadIdx.x == 0) part[0] = v;
    }
    __syncthreads();
    const float mean = (float) (part[0] / (double) n);
    const float scale = 1.0f / sqrtf(__fadd_rn(mean, eps));
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        const float v = __fmul_rn(xr[i], scale);
        yr[i] = w ? __fmul_rn(v, w[i]) : v;
    }
}

} // namespace

status rms_norm(const float * x, const float * w, float * y, int64_t n, int64_t rows, float eps, stream_t s) {
    if (rows <= 0 || n <= 0) return status::success();
    k_rms_norm<<<(unsigned) rows, 256, 0, s>>>(x, w, y, n, eps);
    CUDA_CHECK_LAUNCH("rms_norm");
    return status::success();
}

} // namespace cuda
} // namespace core
