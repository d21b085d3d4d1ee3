// Q5_K reference codec (layout in q5-k.h; ported from ggml-quants.c, MIT).
#include "q5-k.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstring>

#include "q8-k.h"

namespace core {

void quantize_row_q5_K_ref(const float * x, void * vy, int64_t n) {
    assert(n % QK_K == 0);
    block_q5_K * y = (block_q5_K *) vy;
    uint8_t L[QK_K];
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        quantize_k4_superblock(x, 31, -0.5f, 15, L, y[i].scales, &y[i].d, &y[i].dmin);
        uint8_t * qh = y[i].qh;
        uint8_t * ql = y[i].qs;
        std::memset(qh, 0, QK_K / 8);
        uint8_t m1 = 1, m2 = 2;
        for (int nn = 0; nn < QK_K; nn += 64) {
            for (int j = 0; j < 32; ++j) {
                int l1 = L[nn + j];
                if (l1 > 15) { l1 -= 16; qh[j] |= m1; }
                int l2 = L[nn + j + 32];
                if (l2 > 15) { l2 -= 16; qh[j] |= m2; }
                ql[j] = (uint8_t) (l1 | (l2 << 4));
            }
            m1 <<= 2;
            m2 <<= 2;
            ql += 32;
        }
    }
}

void dequantize_row_q5_K(const void * vx, float * y, int64_t n) {
    assert(n % QK_K == 0);
    const block_q5_K * x = (const block_q5_K *) vx;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const uint8_t * ql = x[i].qs;
        const uint8_t * qh = x[i].qh;
        const float d = f16_to_f32(x[i].d);
        const float min = f16_to_f32(x[i].dmin);
        int is = 0;
        uint8_t sc, m, u1 = 1, u2 = 2;
        for (int j = 0; j < QK_K; j += 64) {
            get_scale_min_k4(is + 0, x[i].scales, &sc, &m);
            const float d1 = d * sc, m1 = min * m;
            get_scale_min_k4(is + 1, x[i].scales, &sc, &m);
            const float d2 = d * sc, m2 = min * m;
            for (int l = 0; l < 32; ++l) *y++ = d1 * ((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - m1;
            for (int l = 0; l < 32; ++l) *y++ = d2 * ((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
            ql += 32;
            is += 2;
            u1 <<= 2;
            u2 <<= 2;
        }
    }
}

void vec_dot_q5_K_q8_K_ref(int64_t n, float * s, const void * vx, const void * vy) {
    assert(n % QK_K == 0);
    const block_q5_K * x = (const block_q5_K *) vx;
    const block_q8_K * y = (const block_q8_K *) vy;
    float sumf = 0;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const uint8_t * ql = x[i].qs;
        const uint8_t * qh = x[i].qh;
        const int8_t * q8 = y[i].qs;
        int isum = 0, summ = 0;
        uint8_t u1 = 1, u2 = 2;
        for (int j = 0; j < QK_K / 64; ++j) {
            uint8_t sc0, m0, sc1, m1;
            get_scale_min_k4(2 * j, x[i].scales, &sc0, &m0);
            get_scale_min_k4(2 * j + 1, x[i].scales, &sc1, &m1);
            int s0 = 0, s1 = 0;
            for (int l = 0; l < 32; ++l) {
                s0 += ((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) * q8[l];
                s1 += ((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) * q8[l + 32];
            }
            isum += sc0 * s0 + sc1 * s1;
            summ += m0 * (y[i].bsums[4 * j] + y[i].bsums[4 * j + 1]) + m1 * (y[i].bsums[4 * j + 2] + y[i].bsums[4 * j + 3]);
            ql += 32;
            q8 += 64;
            u1 <<= 2;
            u2 <<= 2;
        }
        sumf += (y[i].d * f16_to_f32(x[i].d)) * (float) isum - (y[i].d * f16_to_f32(x[i].dmin)) * (float) summ;
    }
    *s = sumf;
}

} // namespace core
