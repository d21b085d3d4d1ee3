// Q8_K reference codec (layout in q8-k.h; ported from ggml-quants.c, MIT).
#include "q8-k.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstring>

namespace core {

void quantize_row_q8_K_ref(const float * x, void * vy, int64_t n) {
    assert(n % QK_K == 0);
    block_q8_K * y = (block_q8_K *) vy;
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        float max = 0, amax = 0;
        for (int j = 0; j < QK_K; ++j) {
            const float ax = std::fabs(x[j]);
            if (ax > amax) { amax = ax; max = x[j]; }
        }
        if (!amax) {
            y[i].d = 0;
            std::memset(y[i].qs, 0, QK_K);
            std::memset(y[i].bsums, 0, sizeof(y[i].bsums));
            continue;
        }
        const float iscale = -127.f / max;
        for (int j = 0; j < QK_K; ++j) y[i].qs[j] = (int8_t) std::min(127, nearest_int(iscale * x[j]));
        for (int j = 0; j < QK_K / 16; ++j) {
            int sum = 0;
            for (int ii = 0; ii < 16; ++ii) sum += y[i].qs[j * 16 + ii];
            y[i].bsums[j] = (int16_t) sum;
        }
        y[i].d = 1 / iscale;
    }
}

void dequantize_row_q8_K(const void * vx, float * y, int64_t n) {
    assert(n % QK_K == 0);
    const block_q8_K * x = (const block_q8_K *) vx;
    for (int64_t i = 0; i < n / QK_K; i++)
        for (int j = 0; j < QK_K; ++j) *y++ = x[i].d * x[i].qs[j];
}

} // namespace core
