// Q5_0 reference codec (layout in q5-0.h; ported from ggml-quants.c, MIT).
#include "q5-0.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstring>

#include "q8-0.h"

namespace core {

void quantize_row_q5_0_ref(const float * x, void * vy, int64_t n) {
    assert(n % QK5_0 == 0);
    block_q5_0 * y = (block_q5_0 *) vy;
    for (int64_t i = 0; i < n / QK5_0; i++) {
        const float * xb = x + i * QK5_0;
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < QK5_0; j++) {
            if (amax < std::fabs(xb[j])) { amax = std::fabs(xb[j]); max = xb[j]; }
        }
        const float d = max / -16;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = f32_to_f16(d);
        uint32_t qh = 0;
        for (int j = 0; j < QK5_0 / 2; ++j) {
            const float x0 = xb[j] * id;
            const float x1 = xb[QK5_0 / 2 + j] * id;
            const uint8_t xi0 = (uint8_t) std::min(31, (int) (int8_t) (x0 + 16.5f));
            const uint8_t xi1 = (uint8_t) std::min(31, (int) (int8_t) (x1 + 16.5f));
            y[i].qs[j] = (uint8_t) ((xi0 & 0x0F) | ((xi1 & 0x0F) << 4));
            qh |= ((xi0 & 0x10u) >> 4) << (j + 0);
            qh |= ((xi1 & 0x10u) >> 4) << (j + QK5_0 / 2);
        }
        std::memcpy(y[i].qh, &qh, sizeof(qh));
    }
}

void dequantize_row_q5_0(const void * vx, float * y, int64_t n) {
    assert(n % QK5_0 == 0);
    const block_q5_0 * x = (const block_q5_0 *) vx;
    for (int64_t i = 0; i < n / QK5_0; i++) {
        const float d = f16_to_f32(x[i].d);
        uint32_t qh;
        std::memcpy(&qh, x[i].qh, sizeof(qh));
        for (int j = 0; j < QK5_0 / 2; ++j) {
            const uint8_t xh0 = ((qh >> (j + 0)) << 4) & 0x10;
            const uint8_t xh1 = ((qh >> (j + 12))) & 0x10;
            const int32_t x0 = ((x[i].qs[j] & 0x0F) | xh0) - 16;
            const int32_t x1 = ((x[i].qs[j] >> 4) | xh1) - 16;
            y[i * QK5_0 + j] = (float) x0 * d;
            y[i * QK5_0 + j + QK5_0 / 2] = (float) x1 * d;
        }
    }
}

void vec_dot_q5_0_q8_0_ref(int64_t n, float * s, const void * vx, const void * vy) {
    assert(n % QK5_0 == 0);
    const block_q5_0 * x = (const block_q5_0 *) vx;
    const block_q8_0 * y = (const block_q8_0 *) vy;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / QK5_0; i++) {
        uint32_t qh;
        std::memcpy(&qh, x[i].qh, sizeof(qh));
        int sumi = 0;
        for (int j = 0; j < QK5_0 / 2; ++j) {
            const int x0 = ((x[i].qs[j] & 0x0F) | (((qh >> j) & 1) << 4)) - 16;
            const int x1 = ((x[i].qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - 16;
            sumi += x0 * y[i].qs[j] + x1 * y[i].qs[j + QK5_0 / 2];
        }
        sum += (float) sumi * (f16_to_f32(x[i].d) * f16_to_f32(y[i].d));
    }
    *s = sum;
}

} // namespace core
