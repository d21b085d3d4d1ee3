#include "ops.h"

#include <cmath>

namespace core {

void rms_norm_ref(const float * x, const float * w, float * y, int64_t n, float eps) {
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) sum += (double) (x[i] * x[i]);
    const float mean = (float) (sum / (double) n);
    const float scale = 1.0f / std::sqrt(mean + eps);
    if (w) {
        for (int64_t i = 0; i < n; i++) y[i] = (x[i] * scale) * w[i];
    } else {
        for (int64_t i = 0; i < n; i++) y[i] = x[i] * scale;
    }
}

void rope_cache_ref(float * cs, int32_t pos, int n_rot, float freq_base, float freq_scale, const float * freq_factors) {
    const float theta_scale = std::pow(freq_base, -2.0f / (float) n_rot);
    float theta = (float) pos;
    for (int i = 0; i < n_rot / 2; i++) {
        const float ff = freq_factors ? freq_factors[i] : 1.0f;
        const float t = freq_scale * (theta / ff);
        cs[2 * i] = std::cos(t);
        cs[2 * i + 1] = std::sin(t);
        theta *= theta_scale;
    }
}

void rope_apply_ref(float * x, int n_head, int head_dim, int n_rot, rope_style style, const float * cs) {
    for (int h = 0; h < n_head; h++) {
        float * xh = x + (size_t) h * head_dim;
        if (style == ROPE_STYLE_NORM) {
            for (int i = 0; i < n_rot / 2; i++) {
                const float c = cs[2 * i], s = cs[2 * i + 1];
                const float x0 = xh[2 * i], x1 = xh[2 * i + 1];
                xh[2 * i] = x0 * c - x1 * s;
                xh[2 * i + 1] = x0 * s + x1 * c;
            }
        } else {
            const int half = n_rot / 2;
            for (int i = 0; i < half; i++) {
                const float c = cs[2 * i], s = cs[2 * i + 1];
                const float x0 = xh[i], x1 = xh[i + half];
                xh[i] = x0 * c - x1 * s;
                xh[i + half] = x0 * s + x1 * c;
            }
        }
    }
}

void silu_mul_ref(float * g, const float * u, int64_t n) {
    for (int64_t i = 0; i < n; i++) g[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

void add_ref(float * y, const float * x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += x[i];
}

} // namespace core
