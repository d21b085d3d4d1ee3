// Shared pieces of the K-quant codecs (q2_K .. q6_K, q8_K): the super-block size, ggml's rounding helper
// and the scale searches its reference quantizers run (ported from ggml-quants.c, MIT, bit for bit: the
// quantized bytes of our reference quantizers equal llama-quantize's without an importance matrix).
// A K-quant super-block holds QK_K = 256 weights in sub-blocks of 16 or 32 with 4..8-bit sub-scales.
#pragma once
#include <cstdint>
#include <cstring>

#include "../ggml-type.h"

namespace core {

#define QK_K 256
#define K_SCALE_SIZE 12

// Round to nearest, ties to even, through the float adder (as ggml's nearest_int; |x| <= 2^22).
inline int nearest_int(float fval) {
    const float val = fval + 12582912.f;
    int i;
    std::memcpy(&i, &val, sizeof(int));
    return (i & 0x007fffff) - 0x00400000;
}

// q4_K/q5_K packing of eight 6-bit scales and eight 6-bit mins into 12 bytes: sub-block j's scale and min.
inline void get_scale_min_k4(int j, const uint8_t * q, uint8_t * d, uint8_t * m) {
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4);
    }
}

// The q4_K/q5_K super-block search (ggml's quantize_row_q4_K_ref / q5_K_ref share it): per 32-element
// sub-block an asymmetric weighted search with levels [0, nmax], the eight scales and mins packed to 6 bits
// in `scales` (12 bytes) under the super-block's d and dmin, then L re-quantized against the packed values.
// x: [QK_K]; L: [QK_K] levels out; d, dmin: the block's f16 scale and min scale out.
void quantize_k4_superblock(const float * x, int nmax, float rmin, int nstep, uint8_t * L, uint8_t * scales, f16_t * d, f16_t * dmin);

// ggml's scale searches (see ggml-quants.c for the derivations).
// Symmetric: L[i] in [0, 2*nmax), returns the scale. rmse_type 1 weights errors by x^2.
float make_qx_quants(int n, int nmax, const float * x, int8_t * L, int rmse_type, const float * qw);
// Symmetric 3-bit search with iterative refinement; L[i] in [0, 2*nmax).
float make_q3_quants(int n, int nmax, const float * x, int8_t * L, bool do_rmse);
// Asymmetric (scale + min) weighted search; L[i] in [0, nmax], *the_min = -min >= 0.
float make_qkx2_quants(int n, int nmax, const float * x, const float * weights, uint8_t * L, float * the_min,
                       uint8_t * Laux, float rmin, float rdelta, int nstep, bool use_mad);

} // namespace core
