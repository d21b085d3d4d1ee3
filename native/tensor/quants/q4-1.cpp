// Q4_1 reference codec (layout in q4-1.h; ported from ggml-quants.c, MIT).
#include "q4-1.h"

#include <algorithm>
#include <cassert>
#include <cfloat>

#include "q8-1.h"

namespace core {

void quantize_row_q4_1_ref(const float * x, void * vy, int64_t n) {
    assert(n % QK4_1 == 0);
    block_q4_1 * y = (block_q4_1 *) vy;
    for (int64_t i = 0; i < n / QK4_1; i++) {
        const float * xb = x + i * QK4_1;
        float min = FLT_MAX, max = -FLT_MAX;
        for (int j = 0; j < QK4_1; j++) {
            if (xb[j] < min) min = xb[j];
            if (xb[j] > max) max = xb[j];
        }
        const float d = (max - min) / ((1 << 4) - 1);
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = f32_to_f16(d);
        y[i].m = f32_to_f16(min);
        for (int j = 0; j < QK4_1 / 2; ++j) {
            const float x0 = (xb[j] - min) * id;
            const float x1 = (xb[QK4_1 / 2 + j] - min) * id;
            const uint8_t xi0 = (uint8_t) std::min(15, (int) (int8_t) (x0 + 0.5f));
            const uint8_t xi1 = (uint8_t) std::min(15, (int) (int8_t) (x1 + 0.5f));
            y[i].qs[j] = (uint8_t) (xi0 | (xi1 << 4));
        }
    }
}

void dequantize_row_q4_1(const void * vx, float * y, int64_t n) {
    assert(n % QK4_1 == 0);
    const block_q4_1 * x = (const block_q4_1 *) vx;
    for (int64_t i = 0; i < n / QK4_1; i++) {
        const float d = f16_to_f32(x[i].d);
        const float m = f16_to_f32(x[i].m);
        for (int j = 0; j < QK4_1 / 2; ++j) {
            y[i * QK4_1 + j] = (float) (x[i].qs[j] & 0x0F) * d + m;
            y[i * QK4_1 + j + QK4_1 / 2] = (float) (x[i].qs[j] >> 4) * d + m;
        }
    }
}

void vec_dot_q4_1_q8_1_ref(int64_t n, float * s, const void * vx, const void * vy) {
    assert(n % QK4_1 == 0);
    const block_q4_1 * x = (const block_q4_1 *) vx;
    const block_q8_1 * y = (const block_q8_1 *) vy;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / QK4_1; i++) {
        int sumi = 0;
        for (int j = 0; j < QK4_1 / 2; ++j) {
            sumi += (x[i].qs[j] & 0x0F) * y[i].qs[j];
            sumi += (x[i].qs[j] >> 4) * y[i].qs[j + QK4_1 / 2];
        }
        sum += (f16_to_f32(x[i].d) * f16_to_f32(y[i].d)) * (float) sumi + f16_to_f32(x[i].m) * f16_to_f32(y[i].s);
    }
    *s = sum;
}

} // namespace core
