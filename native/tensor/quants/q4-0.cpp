// Q4_0 reference codec (layout in q4-0.h; ported from ggml-quants.c, MIT).
#include "q4-0.h"

#include <algorithm>
#include <cassert>
#include <cmath>

#include "q8-0.h"

namespace core {

void quantize_row_q4_0_ref(const float * x, void * vy, int64_t n) {
    assert(n % QK4_0 == 0);
    block_q4_0 * y = (block_q4_0 *) vy;
    for (int64_t i = 0; i < n / QK4_0; i++) {
        const float * xb = x + i * QK4_0;
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < QK4_0; j++) {
            if (amax < std::fabs(xb[j])) { amax = std::fabs(xb[j]); max = xb[j]; }
        }
        const float d = max / -8;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = f32_to_f16(d);
        for (int j = 0; j < QK4_0 / 2; ++j) {
            const float x0 = xb[j] * id;
            const float x1 = xb[QK4_0 / 2 + j] * id;
            const uint8_t xi0 = (uint8_t) std::min(15, (int) (int8_t) (x0 + 8.5f));
            const uint8_t xi1 = (uint8_t) std::min(15, (int) (int8_t) (x1 + 8.5f));
            y[i].qs[j] = (uint8_t) (xi0 | (xi1 << 4));
        }
    }
}

void dequantize_row_q4_0(const void * vx, float * y, int64_t n) {
    assert(n % QK4_0 == 0);
    const block_q4_0 * x = (const block_q4_0 *) vx;
    for (int64_t i = 0; i < n / QK4_0; i++) {
        const float d = f16_to_f32(x[i].d);
        for (int j = 0; j < QK4_0 / 2; ++j) {
            y[i * QK4_0 + j] = (float) ((x[i].qs[j] & 0x0F) - 8) * d;
            y[i * QK4_0 + j + QK4_0 / 2] = (float) ((x[i].qs[j] >> 4) - 8) * d;
        }
    }
}

void vec_dot_q4_0_q8_0_ref(int64_t n, float * s, const void * vx, const void * vy) {
    assert(n % QK4_0 == 0);
    const block_q4_0 * x = (const block_q4_0 *) vx;
    const block_q8_0 * y = (const block_q8_0 *) vy;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / QK4_0; i++) {
        int sumi = 0;
        for (int j = 0; j < QK4_0 / 2; ++j) {
            sumi += ((x[i].qs[j] & 0x0F) - 8) * y[i].qs[j];
            sumi += ((x[i].qs[j] >> 4) - 8) * y[i].qs[j + QK4_0 / 2];
        }
        sum += (float) sumi * (f16_to_f32(x[i].d) * f16_to_f32(y[i].d));
    }
    *s = sum;
}

} // namespace core
