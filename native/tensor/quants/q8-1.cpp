// Q8_1 reference codec (layout in q8-1.h; ported from ggml-quants.c, MIT).
#include "q8-1.h"

#include <algorithm>
#include <cassert>
#include <cmath>

namespace core {

void quantize_row_q8_1_ref(const float * x, void * vy, int64_t n) {
    assert(n % QK8_1 == 0);
    block_q8_1 * y = (block_q8_1 *) vy;
    for (int64_t i = 0; i < n / QK8_1; i++) {
        const float * xb = x + i * QK8_1;
        float amax = 0.0f;
        for (int j = 0; j < QK8_1; j++) amax = std::max(amax, std::fabs(xb[j]));
        const float d = amax / ((1 << 7) - 1);
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = f32_to_f16(d);
        int sum = 0;
        for (int j = 0; j < QK8_1; ++j) {
            y[i].qs[j] = (int8_t) std::roundf(xb[j] * id);
            sum += y[i].qs[j];
        }
        y[i].s = f32_to_f16((float) sum * d);
    }
}

void dequantize_row_q8_1(const void * vx, float * y, int64_t n) {
    assert(n % QK8_1 == 0);
    const block_q8_1 * x = (const block_q8_1 *) vx;
    for (int64_t i = 0; i < n / QK8_1; i++) {
        const float d = f16_to_f32(x[i].d);
        for (int j = 0; j < QK8_1; j++) y[i * QK8_1 + j] = d * (float) x[i].qs[j];
    }
}

void quantize_row_q8_1_act_ref(const float * x, void * vy, int64_t n) {
    assert(n % QK8_1 == 0);
    block_q8_1 * y = (block_q8_1 *) vy;
    for (int64_t i = 0; i < n / QK8_1; i++) {
        const float * xb = x + i * QK8_1;
        float amax = 0.0f;
        for (int j = 0; j < QK8_1; j++) amax = std::max(amax, std::fabs(xb[j]));
        const float d = amax / 127.0f;
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        y[i].d = f32_to_f16(d);
        int sum = 0;
        for (int j = 0; j < QK8_1; j++) {
            y[i].qs[j] = (int8_t) std::nearbyint(xb[j] * id); // default rounding mode: to even
            sum += y[i].qs[j];
        }
        y[i].s = f32_to_f16(d * (float) sum);
    }
}

} // namespace core
