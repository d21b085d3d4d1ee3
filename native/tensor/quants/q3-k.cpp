// Q3_K reference codec (layout in q3-k.h; ported from ggml-quants.c, MIT).
#include "q3-k.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstring>

#include "q8-k.h"

namespace core {

void q3_K_unpack_scales(const uint8_t * packed, int8_t * scales) {
    const uint32_t kmask1 = 0x03030303, kmask2 = 0x0f0f0f0f;
    uint32_t aux[4];
    std::memcpy(aux, packed, 12);
    const uint32_t tmp = aux[2];
    aux[2] = ((aux[0] >> 4) & kmask2) | (((tmp >> 4) & kmask1) << 4);
    aux[3] = ((aux[1] >> 4) & kmask2) | (((tmp >> 6) & kmask1) << 4);
    aux[0] = (aux[0] & kmask2) | (((tmp >> 0) & kmask1) << 4);
    aux[1] = (aux[1] & kmask2) | (((tmp >> 2) & kmask1) << 4);
    std::memcpy(scales, aux, 16);
    for (int j = 0; j < 16; j++) scales[j] = (int8_t) (scales[j] - 32);
}

void quantize_row_q3_K_ref(const float * x, void * vy, int64_t n) {
    assert(n % QK_K == 0);
    block_q3_K * y = (block_q3_K *) vy;
    int8_t L[QK_K];
    float scales[QK_K / 16];
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        float max_scale = 0, amax = 0;
        for (int j = 0; j < QK_K / 16; ++j) {
            scales[j] = make_q3_quants(16, 4, x + 16 * j, L + 16 * j, true);
            const float scale = std::fabs(scales[j]);
            if (scale > amax) { amax = scale; max_scale = scales[j]; }
        }
        std::memset(y[i].scales, 0, 12);
        if (max_scale) {
            const float iscale = -32.f / max_scale;
            for (int j = 0; j < QK_K / 16; ++j) {
                int8_t l = (int8_t) nearest_int(iscale * scales[j]);
                l = (int8_t) (std::max(-32, std::min(31, (int) l)) + 32);
                if (j < 8) y[i].scales[j] = l & 0xF;
                else y[i].scales[j - 8] |= (uint8_t) ((l & 0xF) << 4);
                l >>= 4;
                y[i].scales[j % 4 + 8] |= (uint8_t) (l << (2 * (j / 4)));
            }
            y[i].d = f32_to_f16(1 / iscale);
        } else {
            y[i].d = f32_to_f16(0.f);
        }
        for (int j = 0; j < QK_K / 16; ++j) {
            int8_t sc = (int8_t) (j < 8 ? y[i].scales[j] & 0xF : y[i].scales[j - 8] >> 4);
            sc = (int8_t) ((sc | (((y[i].scales[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32);
            const float d = f16_to_f32(y[i].d) * sc;
            if (!d) continue;
            for (int ii = 0; ii < 16; ++ii) {
                const int l = nearest_int(x[16 * j + ii] / d);
                L[16 * j + ii] = (int8_t) (std::max(-4, std::min(3, l)) + 4);
            }
        }
        std::memset(y[i].hmask, 0, QK_K / 8);
        int m = 0;
        uint8_t hm = 1;
        for (int j = 0; j < QK_K; ++j) {
            if (L[j] > 3) {
                y[i].hmask[m] |= hm;
                L[j] -= 4;
            }
            if (++m == QK_K / 8) { m = 0; hm <<= 1; }
        }
        for (int j = 0; j < QK_K; j += 128)
            for (int l = 0; l < 32; ++l)
                y[i].qs[j / 4 + l] = (uint8_t) (L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
    }
}

void dequantize_row_q3_K(const void * vx, float * y, int64_t n) {
    assert(n % QK_K == 0);
    const block_q3_K * x = (const block_q3_K *) vx;
    int8_t scales[16];
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d_all = f16_to_f32(x[i].d);
        const uint8_t * q = x[i].qs;
        const uint8_t * hm = x[i].hmask;
        uint8_t m = 1;
        q3_K_unpack_scales(x[i].scales, scales);
        int is = 0;
        for (int nn = 0; nn < QK_K; nn += 128) {
            int shift = 0;
            for (int j = 0; j < 4; ++j) {
                float dl = d_all * scales[is++];
                for (int l = 0; l < 16; ++l) *y++ = dl * ((int8_t) ((q[l + 0] >> shift) & 3) - ((hm[l + 0] & m) ? 0 : 4));
                dl = d_all * scales[is++];
                for (int l = 0; l < 16; ++l) *y++ = dl * ((int8_t) ((q[l + 16] >> shift) & 3) - ((hm[l + 16] & m) ? 0 : 4));
                shift += 2;
                m <<= 1;
            }
            q += 32;
        }
    }
}

void vec_dot_q3_K_q8_K_ref(int64_t n, float * s, const void * vx, const void * vy) {
    assert(n % QK_K == 0);
    const block_q3_K * x = (const block_q3_K *) vx;
    const block_q8_K * y = (const block_q8_K *) vy;
    int8_t scales[16];
    float sumf = 0;
    for (int64_t i = 0; i < n / QK_K; i++) {
        q3_K_unpack_scales(x[i].scales, scales);
        const uint8_t * q = x[i].qs;
        const uint8_t * hm = x[i].hmask;
        const int8_t * q8 = y[i].qs;
        int isum = 0, is = 0;
        uint8_t m = 1;
        for (int nn = 0; nn < QK_K; nn += 128) {
            int shift = 0;
            for (int j = 0; j < 4; ++j) {
                for (int h = 0; h < 2; h++) {
                    int sub = 0;
                    for (int l = 16 * h; l < 16 * h + 16; ++l) sub += q8[l] * (((q[l] >> shift) & 3) - ((hm[l] & m) ? 0 : 4));
                    isum += scales[is++] * sub;
                }
                q8 += 32;
                shift += 2;
                m <<= 1;
            }
            q += 32;
        }
        sumf += (y[i].d * f16_to_f32(x[i].d)) * (float) isum;
    }
    *s = sumf;
}

} // namespace core
