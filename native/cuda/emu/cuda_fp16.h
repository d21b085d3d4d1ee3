// CUDA emulation (see cuda_runtime.h): IEEE half precision, round to nearest even.
#pragma once
#include <cstdint>
#include <cstring>

struct __half {
    uint16_t x;
};

inline float __half2float(__half h) {
    const uint32_t s = (uint32_t) (h.x & 0x8000u) << 16, e = (h.x >> 10) & 0x1fu, m = h.x & 0x3ffu;
    uint32_t b;
    if (e == 0x1f) b = s | 0x7f800000u | (m << 13);  // inf, nan
    else if (e != 0) b = s | ((e + 112) << 23) | (m << 13);
    else if (m == 0) b = s;
    else {  // subnormal: normalize
        int k = 0;
        uint32_t mm = m;
        while (!(mm & 0x400u)) { mm <<= 1; k++; }
        b = s | ((uint32_t) (113 - k) << 23) | ((mm & 0x3ffu) << 13);
    }
    float f;
    std::memcpy(&f, &b, 4);
    return f;
}

inline __half __float2half_rn(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    const uint16_t sign = (uint16_t) ((x >> 16) & 0x8000u);
    const uint32_t ax = x & 0x7fffffffu;
    __half h;
    if (ax > 0x7f800000u) { h.x = (uint16_t) (sign | 0x7e00u); return h; }  // nan
    if (ax >= 0x477ff000u) { h.x = (uint16_t) (sign | 0x7c00u); return h; }  // overflow (after rounding) or inf
    if (ax < 0x38800000u) {  // half subnormal or zero: round ax / 2^-24 to an integer, ties to even
        if (ax < 0x33000000u) { h.x = sign; return h; }
        const uint32_t e = ax >> 23, m = (ax & 0x7fffffu) | 0x800000u, shift = 126 - e;
        uint32_t r = m >> shift;
        const uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1u))) r++;
        h.x = (uint16_t) (sign | r);
        return h;
    }
    uint32_t r = ((ax >> 13) - (112u << 10));
    const uint32_t rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) r++;
    h.x = (uint16_t) (sign | r);
    return h;
}

inline __half __ushort_as_half(unsigned short u) { __half h; h.x = u; return h; }
inline unsigned short __half_as_ushort(__half h) { return h.x; }
