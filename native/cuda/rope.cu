// CPU reference: core::rope_cache_ref / rope_apply_ref (native/kernels/cpu/ops.cpp)
//   theta_0 = pos; theta_{i+1} = theta_i * theta_scale;  t_i = freq_scale * (theta_i / ff_i)
//   NORM: (x[2i], x[2i+1]) <- (fma(x0, c, -(x1*s)), fma(x0, s, x1*c));  NEOX: pairs (x[i], x[i + n_rot/2])
// One block per token; thread i owns pair i for every head.
#include <cmath>

#include "common.cuh"
#include "rope.cuh"

namespace core {
namespace cuda {
namespace {

__global__ void k_rope(float * x, const int32_t * pos, int n_head, int head_dim, int n_rot, int neox, float theta_scale,
                       float freq_scale, const float * ff) {
    const int t = blockIdx.x;
    const int half = n_rot / 2;
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        float theta = (float) pos[t];
        for (int k = 0; k < i; k++) theta = __fmul_rn(theta, theta_scale);
        const float a = __fmul_rn(freq_scale, ff ? __fdiv_rn(theta, ff[i]) : theta);
        const float c = cosf(a), s = sinf(a);
        for (int h = 0; h < n_head; h++) {
            float * xh = x + ((size_t) t * n_head + h) * head_dim;
            const int i0 = neox ? i : 2 * i, i1 = neox ? i + half : 2 * i + 1;
            const float x0 = xh[i0], x1 = xh[i1];
            xh[i0] = __fmaf_rn(x0, c, -__fmul_rn(x1, s));
            xh[i1] = __fmaf_rn(x0, s, __fmul_rn(x1, c));
        }
    }
}

} // namespace

status rope(float * x, const int32_t * pos, int n_tokens, int n_head, int head_dim, int n_rot, rope_style style,
            float freq_base, float freq_scale, const float * freq_factors, stream_t s) {
    if (n_rot > head_dim || n_rot % 2) return status(ERR_INVALID_ARG, strfmt("rope: n_rot %d invalid for head_dim %d", n_rot, head_dim));
    if (n_tokens <= 0) return status::success();
    const float theta_scale = std::pow(freq_base, -2.0f / (float) n_rot);  // same host expression as the CPU
    k_rope<<<(unsigned) n_tokens, 64, 0, s>>>(x, pos, n_head, head_dim, n_rot, style == ROPE_STYLE_NEOX, theta_scale, freq_scale,
                                               freq_factors);
    CUDA_CHECK_LAUNCH("rope");
    return status::success();
}

} // namespace cuda
} // namespace core
