// Q4_K reference codec (layout in q4-k.h; ported from ggml-quants.c, MIT).
#include "q4-k.h"

#include <algorithm>
#include <cassert>
#include <cmath>

#include "q8-k.h"

namespace core {

void quantize_row_q4_K_ref(const float * x, void * vy, int64_t n) {
    assert(n % QK_K == 0);
    block_q4_K * y = (block_q4_K *) vy;
    uint8_t L[QK_K];
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        quantize_k4_superblock(x, 15, -1.f, 20, L, y[i].scales, &y[i].d, &y[i].dmin);
        uint8_t * q = y[i].qs;
        for (int j = 0; j < QK_K; j += 64) {
            for (int l = 0; l < 32; ++l) q[l] = (uint8_t) (L[j + l] | (L[j + l + 32] << 4));
            q += 32;
        }
    }
}

void dequantize_row_q4_K(const void * vx, float * y, int64_t n) {
    assert(n % QK_K == 0);
    const block_q4_K * x = (const block_q4_K *) vx;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const uint8_t * q = x[i].qs;
        const float d = f16_to_f32(x[i].d);
        const float min = f16_to_f32(x[i].dmin);
        int is = 0;
        uint8_t sc, m;
        for (int j = 0; j < QK_K; j += 64) {
            get_scale_min_k4(is + 0, x[i].scales, &sc, &m);
            const float d1 = d * sc, m1 = min * m;
            get_scale_min_k4(is + 1, x[i].scales, &sc, &m);
            const float d2 = d * sc, m2 = min * m;
            for (int l = 0; l < 32; ++l) *y++ = d1 * (q[l] & 0xF) - m1;
            for (int l = 0; l < 32; ++l) *y++ = d2 * (q[l] >> 4) - m2;
            q += 32;
            is += 2;
        }
    }
}

void vec_dot_q4_K_q8_K_ref(int64_t n, float * s, const void * vx, const void * vy) {
    assert(n % QK_K == 0);
    const block_q4_K * x = (const block_q4_K *) vx;
    const block_q8_K * y = (const block_q8_K *) vy;
    float sumf = 0;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const uint8_t * q4 = x[i].qs;
        const int8_t * q8 = y[i].qs;
        int isum = 0, summ = 0;
        for (int j = 0; j < QK_K / 64; ++j) {
            uint8_t sc0, m0, sc1, m1;
            get_scale_min_k4(2 * j, x[i].scales, &sc0, &m0);
            get_scale_min_k4(2 * j + 1, x[i].scales, &sc1, &m1);
            int s0 = 0, s1 = 0;
            for (int l = 0; l < 32; ++l) {
                s0 += (q4[l] & 0xF) * q8[l];
                s1 += (q4[l] >> 4) * q8[l + 32];
            }
            isum += sc0 * s0 + sc1 * s1;
            summ += m0 * (y[i].bsums[4 * j] + y[i].bsums[4 * j + 1]) + m1 * (y[i].bsums[4 * j + 2] + y[i].bsums[4 * j + 3]);
            q4 += 32;
            q8 += 64;
        }
        sumf += (y[i].d * f16_to_f32(x[i].d)) * (float) isum - (y[i].d * f16_to_f32(x[i].dmin)) * (float) summ;
    }
    *s = sumf;
}

} // namespace core
