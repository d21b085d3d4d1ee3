// Q5_1 reference codec (layout in q5-1.h; ported from ggml-quants.c, MIT).
#include "q5-1.h"

#include <cassert>
#include <cfloat>
#include <cstring>

#include "q8-1.h"

namespace core {

void quantize_row_q5_1_ref(const float * x, void * vy, int64_t n) {
    assert(n % QK5_1 == 0);
    block_q5_1 * y = (block_q5_1 *) vy;
    for (int64_t i = 0; i < n / QK5_1; i++) {
        const float * xb = x + i * QK5_1;
        float min = FLT_MAX, max = -FLT_MAX;
        for (int j = 0; j < QK5_1; j++) {
            if (xb[j] < min) min = xb[j];
            if (xb[j] > max) max = xb[j];
        }
        const float d = (max - min) / ((1 << 5) - 1);
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = f32_to_f16(d);
        y[i].m = f32_to_f16(min);
        uint32_t qh = 0;
        for (int j = 0; j < QK5_1 / 2; ++j) {
            const float x0 = (xb[j] - min) * id;
            const float x1 = (xb[QK5_1 / 2 + j] - min) * id;
            const uint8_t xi0 = (uint8_t) (x0 + 0.5f);
            const uint8_t xi1 = (uint8_t) (x1 + 0.5f);
            y[i].qs[j] = (uint8_t) ((xi0 & 0x0F) | ((xi1 & 0x0F) << 4));
            qh |= ((xi0 & 0x10u) >> 4) << (j + 0);
            qh |= ((xi1 & 0x10u) >> 4) << (j + QK5_1 / 2);
        }
        std::memcpy(y[i].qh, &qh, sizeof(qh));
    }
}

void dequantize_row_q5_1(const void * vx, float * y, int64_t n) {
    assert(n % QK5_1 == 0);
    const block_q5_1 * x = (const block_q5_1 *) vx;
    for (int64_t i = 0; i < n / QK5_1; i++) {
        const float d = f16_to_f32(x[i].d);
        const float m = f16_to_f32(x[i].m);
        uint32_t qh;
        std::memcpy(&qh, x[i].qh, sizeof(qh));
        for (int j = 0; j < QK5_1 / 2; ++j) {
            const uint8_t xh0 = ((qh >> (j + 0)) << 4) & 0x10;
            const uint8_t xh1 = ((qh >> (j + 12))) & 0x10;
            const int x0 = (x[i].qs[j] & 0x0F) | xh0;
            const int x1 = (x[i].qs[j] >> 4) | xh1;
            y[i * QK5_1 + j] = (float) x0 * d + m;
            y[i * QK5_1 + j + QK5_1 / 2] = (float) x1 * d + m;
        }
    }
}

void vec_dot_q5_1_q8_1_ref(int64_t n, float * s, const void * vx, const void * vy) {
    assert(n % QK5_1 == 0);
    const block_q5_1 * x = (const block_q5_1 *) vx;
    const block_q8_1 * y = (const block_q8_1 *) vy;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / QK5_1; i++) {
        uint32_t qh;
        std::memcpy(&qh, x[i].qh, sizeof(qh));
        int sumi = 0;
        for (int j = 0; j < QK5_1 / 2; ++j) {
            const int x0 = (x[i].qs[j] & 0x0F) | (((qh >> j) & 1) << 4);
            const int x1 = (x[i].qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
            sumi += x0 * y[i].qs[j] + x1 * y[i].qs[j + QK5_1 / 2];
        }
        sum += (f16_to_f32(x[i].d) * f16_to_f32(y[i].d)) * (float) sumi + f16_to_f32(x[i].m) * f16_to_f32(y[i].s);
    }
    *s = sum;
}

} // namespace core
