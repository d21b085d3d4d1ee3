// Q8_0 reference codec (layout in q8-0.h).
#include "q8-0.h"

#include <algorithm>
#include <cassert>
#include <cmath>

namespace core {

void quantize_row_q8_0_ref(const float * x, void * vy, int64_t n) {
    assert(n % QK8_0 == 0);
    block_q8_0 * y = (block_q8_0 *) vy;
    for (int64_t ib = 0; ib < n / QK8_0; ib++) {
        const float * xb = x + ib * QK8_0;
        float amax = 0.0f;
        for (int j = 0; j < QK8_0; j++) amax = std::fmax(amax, std::fabs(xb[j]));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[ib].d = f32_to_f16(d);
        for (int j = 0; j < QK8_0; j++) y[ib].qs[j] = (int8_t) std::roundf(xb[j] * id);
    }
}

void dequantize_row_q8_0(const void * vx, float * y, int64_t n) {
    assert(n % QK8_0 == 0);
    const block_q8_0 * x = (const block_q8_0 *) vx;
    for (int64_t ib = 0; ib < n / QK8_0; ib++) {
        const float d = f16_to_f32(x[ib].d);
        for (int j = 0; j < QK8_0; j++) y[ib * QK8_0 + j] = d * (float) x[ib].qs[j];
    }
}

void vec_dot_q8_0_q8_0_ref(int64_t n, float * s, const void * vx, const void * vy) {
    assert(n % QK8_0 == 0);
    const block_q8_0 * x = (const block_q8_0 *) vx;
    const block_q8_0 * y = (const block_q8_0 *) vy;
    float sum = 0.0f;
    for (int64_t ib = 0; ib < n / QK8_0; ib++) {
        int32_t sumi = 0;
        for (int j = 0; j < QK8_0; j++) sumi += (int32_t) x[ib].qs[j] * (int32_t) y[ib].qs[j];
        sum += (float) sumi * (f16_to_f32(x[ib].d) * f16_to_f32(y[ib].d));
    }
    *s = sum;
}

void quantize_row_q8_0_act_ref(const float * x, void * vy, int64_t n) {
    block_q8_0 * y = (block_q8_0 *) vy;
    for (int64_t ib = 0; ib < n / QK8_0; ib++) {
        const float * xb = x + ib * QK8_0;
        float amax = 0.0f;
        for (int j = 0; j < QK8_0; j++) amax = std::max(amax, std::fabs(xb[j]));
        const float d = amax / 127.0f;
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        y[ib].d = f32_to_f16(d);
        for (int j = 0; j < QK8_0; j++) y[ib].qs[j] = (int8_t) std::nearbyint(xb[j] * id);  // default rounding mode: to even
    }
}

} // namespace core
