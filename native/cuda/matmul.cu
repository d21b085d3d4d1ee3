// CPU reference: core::cpu_matmul_ref (native/kernels/cpu/matmul.cpp) and each type's to_float
// (native/tensor/quants/*.cpp). Decode order of the block formats, reproduced with explicit roundings
// (__fmul_rn/__fsub_rn: no FMA contraction) so `dequantize` is bit-exact with the CPU:
//   q8_0 : y = d * qs[j]
//   q4_K : per 64 elements j: d1 = d*sc(is), m1 = dmin*m(is); y = d1*(q & 0xF) - m1, then (q >> 4) with is+1
//   q6_K : y = (d * sc[is]) * q,  q = (ql nibble | qh 2 bits << 4) - 32
//   q4_0 : y = (q - 8) * d            q4_1 : y = q * d + m          (q: nibble j of 16, then the high nibbles)
//   q5_0 : y = (q | h << 4) - 16) * d q5_1 : y = (q | h << 4) * d + m   (h: bit j of qh)
//   q2_K : per 16 elements: dl = d*(sc & 0xF), ml = dmin*(sc >> 4); y = dl*q - ml   (q: 2 bits)
//   q3_K : per 16 elements: dl = d*scale6; y = dl*(q - (hmask bit ? 0 : 4))          (q: 2 bits)
//   q5_K : as q4_K with a fifth bit from qh: y = d1*(q | h << 4) - m1
// Kernel: one warp per output row, lane l handles chunks of 8 consecutive elements (c = l, l+32, ...);
// up to 8 tokens are accumulated per weight load.
#include "common.cuh"
#include "matmul.cuh"

#include "../tensor/quants/k-quants-common.h"
#include "../tensor/quants/q2-k.h"
#include "../tensor/quants/q3-k.h"
#include "../tensor/quants/q4-0.h"
#include "../tensor/quants/q4-1.h"
#include "../tensor/quants/q4-k.h"
#include "../tensor/quants/q5-0.h"
#include "../tensor/quants/q5-1.h"
#include "../tensor/quants/q5-k.h"
#include "../tensor/quants/q6-k.h"
#include "../tensor/quants/q8-0.h"

namespace core {
namespace cuda {
namespace {

constexpr int CHUNK = 8;
constexpr int MAX_TOK = 8;
constexpr int ROWS_PER_BLOCK = 4;

// Elements [c*8, c*8+8) of a row, as f32. VEC: n_in % 8 == 0 and rows 16-byte aligned (float types).
template <ggml_type T, bool VEC> struct chunk_loader;

template <bool VEC> struct chunk_loader<GGML_TYPE_F32, VEC> {
    __device__ static void load(const uint8_t * row, int64_t c, int64_t n_in, float v[CHUNK]) {
        const float * r = (const float *) row + c * CHUNK;
        if (VEC) {
            const float4 a = ((const float4 *) r)[0], b = ((const float4 *) r)[1];
            v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w; v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
        } else {
#pragma unroll
            for (int k = 0; k < CHUNK; k++) v[k] = c * CHUNK + k < n_in ? r[k] : 0.0f;
        }
    }
};
template <bool VEC> struct chunk_loader<GGML_TYPE_F16, VEC> {
    __device__ static void load(const uint8_t * row, int64_t c, int64_t n_in, float v[CHUNK]) {
        const uint16_t * r = (const uint16_t *) row + c * CHUNK;
        if (VEC) {
            const uint4 u = *(const uint4 *) r;
            const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
            for (int k = 0; k < 4; k++) { v[2 * k] = f16_bits_to_f32(w[k] & 0xffff); v[2 * k + 1] = f16_bits_to_f32(w[k] >> 16); }
        } else {
#pragma unroll
            for (int k = 0; k < CHUNK; k++) v[k] = c * CHUNK + k < n_in ? f16_bits_to_f32(r[k]) : 0.0f;
        }
    }
};
template <bool VEC> struct chunk_loader<GGML_TYPE_BF16, VEC> {
    __device__ static void load(const uint8_t * row, int64_t c, int64_t n_in, float v[CHUNK]) {
        const uint16_t * r = (const uint16_t *) row + c * CHUNK;
        if (VEC) {
            const uint4 u = *(const uint4 *) r;
            const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
            for (int k = 0; k < 4; k++) { v[2 * k] = bf16_bits_to_f32(w[k] & 0xffff); v[2 * k + 1] = bf16_bits_to_f32(w[k] >> 16); }
        } else {
#pragma unroll
            for (int k = 0; k < CHUNK; k++) v[k] = c * CHUNK + k < n_in ? bf16_bits_to_f32(r[k]) : 0.0f;
        }
    }
};
template <bool VEC> struct chunk_loader<GGML_TYPE_Q8_0, VEC> {
    __device__ static void load(const uint8_t * row, int64_t c, int64_t, float v[CHUNK]) {
        const block_q8_0 * b = (const block_q8_0 *) row + c / (QK8_0 / CHUNK);
        const int j0 = (int) (c % (QK8_0 / CHUNK)) * CHUNK;
        const float d = f16_bits_to_f32(b->d);
#pragma unroll
        for (int k = 0; k < CHUNK; k++) v[k] = __fmul_rn(d, (float) b->qs[j0 + k]);
    }
};
__device__ __forceinline__ void scale_min_k4(int j, const uint8_t * q, int & d, int & m) {
    if (j < 4) { d = q[j] & 63; m = q[j + 4] & 63; }
    else { d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4); m = (q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4); }
}
template <bool VEC> struct chunk_loader<GGML_TYPE_Q4_K, VEC> {
    __device__ static void load(const uint8_t * row, int64_t c, int64_t, float v[CHUNK]) {
        const block_q4_K * b = (const block_q4_K *) row + c / (QK_K / CHUNK);
        const int e0 = (int) (c % (QK_K / CHUNK)) * CHUNK;
        const int j = e0 / 64, l0 = e0 % 64, hi = l0 / 32;
        int sc, m;
        scale_min_k4(2 * j + hi, b->scales, sc, m);
        const float d1 = __fmul_rn(f16_bits_to_f32(b->d), (float) sc), m1 = __fmul_rn(f16_bits_to_f32(b->dmin), (float) m);
        const uint8_t * q = b->qs + j * 32 + (l0 % 32);
#pragma unroll
        for (int k = 0; k < CHUNK; k++) v[k] = __fsub_rn(__fmul_rn(d1, (float) (hi ? q[k] >> 4 : q[k] & 0xF)), m1);
    }
};
template <bool VEC> struct chunk_loader<GGML_TYPE_Q6_K, VEC> {
    __device__ static void load(const uint8_t * row, int64_t c, int64_t, float v[CHUNK]) {
        const block_q6_K * b = (const block_q6_K *) row + c / (QK_K / CHUNK);
        const int e0 = (int) (c % (QK_K / CHUNK)) * CHUNK;
        const int n = e0 / 128, r = e0 % 128, k4 = r / 32, l0 = r % 32;
        const uint8_t * ql = b->ql + n * 64 + l0 + (k4 & 1) * 32;
        const uint8_t * qh = b->qh + n * 32 + l0;
        const int is = l0 / 16 + 2 * k4;
        const float dsc = __fmul_rn(f16_bits_to_f32(b->d), (float) b->scales[n * 8 + is]);
        const int shl = k4 >= 2 ? 4 : 0;
#pragma unroll
        for (int k = 0; k < CHUNK; k++) {
            const int q = (((ql[k] >> shl) & 0xF) | (((qh[k] >> (2 * k4)) & 3) << 4)) - 32;
            v[k] = __fmul_rn(dsc, (float) q);
        }
    }
};

// 32-element formats: chunk c is elements [e0, e0+8) of block c/4; elements 0..15 are the low nibbles of
// qs[0..15], elements 16..31 their high nibbles. Blocks are 18..24 bytes: byte loads only.
__device__ __forceinline__ uint32_t load_u32_bytes(const uint8_t * p) {
    return (uint32_t) p[0] | ((uint32_t) p[1] << 8) | ((uint32_t) p[2] << 16) | ((uint32_t) p[3] << 24);
}
template <bool VEC> struct chunk_loader<GGML_TYPE_Q4_0, VEC> {
    __device__ static void load(const uint8_t * row, int64_t c, int64_t, float v[CHUNK]) {
        const block_q4_0 * b = (const block_q4_0 *) row + c / (QK4_0 / CHUNK);
        const int e0 = (int) (c % (QK4_0 / CHUNK)) * CHUNK, hi = e0 / 16;
        const float d = f16_bits_to_f32(b->d);
        const uint8_t * q = b->qs + (e0 % 16);
#pragma unroll
        for (int k = 0; k < CHUNK; k++) v[k] = __fmul_rn((float) ((hi ? q[k] >> 4 : q[k] & 0xF) - 8), d);
    }
};
template <bool VEC> struct chunk_loader<GGML_TYPE_Q4_1, VEC> {
    __device__ static void load(const uint8_t * row, int64_t c, int64_t, float v[CHUNK]) {
        const block_q4_1 * b = (const block_q4_1 *) row + c / (QK4_1 / CHUNK);
        const int e0 = (int) (c % (QK4_1 / CHUNK)) * CHUNK, hi = e0 / 16;
        const float d = f16_bits_to_f32(b->d), m = f16_bits_to_f32(b->m);
        const uint8_t * q = b->qs + (e0 % 16);
#pragma unroll
        for (int k = 0; k < CHUNK; k++) v[k] = __fadd_rn(__fmul_rn((float) (hi ? q[k] >> 4 : q[k] & 0xF), d), m);
    }
};
template <bool VEC> struct chunk_loader<GGML_TYPE_Q5_0, VEC> {
    __device__ static void load(const uint8_t * row, int64_t c, int64_t, float v[CHUNK]) {
        const block_q5_0 * b = (const block_q5_0 *) row + c / (QK5_0 / CHUNK);
        const int e0 = (int) (c % (QK5_0 / CHUNK)) * CHUNK, hi = e0 / 16, j0 = e0 % 16;
        const float d = f16_bits_to_f32(b->d);
        const uint32_t qh = load_u32_bytes(b->qh);
        const uint8_t * q = b->qs + j0;
#pragma unroll
        for (int k = 0; k < CHUNK; k++) {
            const int x = (int) ((hi ? q[k] >> 4 : q[k] & 0xF) | (((qh >> (e0 + k)) & 1) << 4)) - 16;
            v[k] = __fmul_rn((float) x, d);
        }
    }
};
template <bool VEC> struct chunk_loader<GGML_TYPE_Q5_1, VEC> {
    __device__ static void load(const uint8_t * row, int64_t c, int64_t, float v[CHUNK]) {
        const block_q5_1 * b = (const block_q5_1 *) row + c / (QK5_1 / CHUNK);
        const int e0 = (int) (c % (QK5_1 / CHUNK)) * CHUNK, hi = e0 / 16, j0 = e0 % 16;
        const float d = f16_bits_to_f32(b->d), m = f16_bits_to_f32(b->m);
        const uint32_t qh = load_u32_bytes(b->qh);
        const uint8_t * q = b->qs + j0;
#pragma unroll
        for (int k = 0; k < CHUNK; k++) {
            const int x = (int) ((hi ? q[k] >> 4 : q[k] & 0xF) | (((qh >> (e0 + k)) & 1) << 4));
            v[k] = __fadd_rn(__fmul_rn((float) x, d), m);
        }
    }
};
// q2_K / q3_K: element e of a super-block: half n = e/128, shift pair j = (e%128)/32, sub-block s = (e%32)/16,
// l = e%16; the 2-bit code is (qs[n*32 + s*16 + l] >> 2j) & 3, the scale index n*8 + 2j + s.
template <bool VEC> struct chunk_loader<GGML_TYPE_Q2_K, VEC> {
    __device__ static void load(const uint8_t * row, int64_t c, int64_t, float v[CHUNK]) {
        const block_q2_K * b = (const block_q2_K *) row + c / (QK_K / CHUNK);
        const int e0 = (int) (c % (QK_K / CHUNK)) * CHUNK;
        const int n = e0 / 128, j = (e0 % 128) / 32, sb = (e0 % 32) / 16, l0 = e0 % 16;
        const uint8_t sc = b->scales[n * 8 + 2 * j + sb];
        const float dl = __fmul_rn(f16_bits_to_f32(b->d), (float) (sc & 0xF)), ml = __fmul_rn(f16_bits_to_f32(b->dmin), (float) (sc >> 4));
        const uint8_t * q = b->qs + n * 32 + sb * 16 + l0;
#pragma unroll
        for (int k = 0; k < CHUNK; k++) v[k] = __fsub_rn(__fmul_rn(dl, (float) ((q[k] >> (2 * j)) & 3)), ml);
    }
};
// the 16 six-bit scales of q3_K (q3_K_unpack_scales), one at a time
__device__ __forceinline__ int q3_k_scale(const uint8_t * p, int k) {
    int lo, hi;
    if (k < 4) { lo = p[k] & 0xF; hi = p[8 + k] & 3; }
    else if (k < 8) { lo = p[k] & 0xF; hi = (p[8 + k - 4] >> 2) & 3; }
    else if (k < 12) { lo = p[k - 8] >> 4; hi = (p[8 + k - 8] >> 4) & 3; }
    else { lo = p[k - 8] >> 4; hi = (p[8 + k - 12] >> 6) & 3; }
    return (lo | (hi << 4)) - 32;
}
template <bool VEC> struct chunk_loader<GGML_TYPE_Q3_K, VEC> {
    __device__ static void load(const uint8_t * row, int64_t c, int64_t, float v[CHUNK]) {
        const block_q3_K * b = (const block_q3_K *) row + c / (QK_K / CHUNK);
        const int e0 = (int) (c % (QK_K / CHUNK)) * CHUNK;
        const int n = e0 / 128, j = (e0 % 128) / 32, sb = (e0 % 32) / 16, l0 = e0 % 16;
        const float dl = __fmul_rn(f16_bits_to_f32(b->d), (float) q3_k_scale(b->scales, n * 8 + 2 * j + sb));
        const uint8_t * q = b->qs + n * 32 + sb * 16 + l0;
        const uint8_t * hm = b->hmask + sb * 16 + l0;
        const int mbit = n * 4 + j;
#pragma unroll
        for (int k = 0; k < CHUNK; k++) {
            const int x = ((q[k] >> (2 * j)) & 3) - (((hm[k] >> mbit) & 1) ? 0 : 4);
            v[k] = __fmul_rn(dl, (float) x);
        }
    }
};
// q5_K: 64-element groups as q4_K (low nibbles, then high nibbles of qs[j*32 ..]), fifth bit 2j (+1) of qh[l]
template <bool VEC> struct chunk_loader<GGML_TYPE_Q5_K, VEC> {
    __device__ static void load(const uint8_t * row, int64_t c, int64_t, float v[CHUNK]) {
        const block_q5_K * b = (const block_q5_K *) row + c / (QK_K / CHUNK);
        const int e0 = (int) (c % (QK_K / CHUNK)) * CHUNK;
        const int j = e0 / 64, l0 = e0 % 64, hi = l0 / 32;
        int sc, m;
        scale_min_k4(2 * j + hi, b->scales, sc, m);
        const float d1 = __fmul_rn(f16_bits_to_f32(b->d), (float) sc), m1 = __fmul_rn(f16_bits_to_f32(b->dmin), (float) m);
        const uint8_t * q = b->qs + j * 32 + (l0 % 32);
        const uint8_t * qh = b->qh + (l0 % 32);
        const int hbit = 2 * j + hi;
#pragma unroll
        for (int k = 0; k < CHUNK; k++) {
            const int x = (hi ? q[k] >> 4 : q[k] & 0xF) + (((qh[k] >> hbit) & 1) ? 16 : 0);
            v[k] = __fsub_rn(__fmul_rn(d1, (float) x), m1);
        }
    }
};

template <ggml_type T, bool VEC>
__global__ void k_matmul(const uint8_t * w, size_t row_bytes, int64_t n_in, int64_t n_out, const float * x, float * y, int n_tok) {
    const int64_t row = (int64_t) blockIdx.x * ROWS_PER_BLOCK + threadIdx.y;
    if (row >= n_out) return;
    const int lane = threadIdx.x;
    const uint8_t * wr = w + row * row_bytes;
    const int64_t n_chunks = (n_in + CHUNK - 1) / CHUNK;
    float acc[MAX_TOK];
#pragma unroll
    for (int t = 0; t < MAX_TOK; t++) acc[t] = 0.0f;
    for (int64_t c = lane; c < n_chunks; c += WARP) {
        float v[CHUNK];
        chunk_loader<T, VEC>::load(wr, c, n_in, v);
#pragma unroll
        for (int t = 0; t < MAX_TOK; t++) {
            if (t >= n_tok) break;
            const float * xt = x + t * n_in + c * CHUNK;
            float xv[CHUNK];
            if (VEC || T != GGML_TYPE_F32 && T != GGML_TYPE_F16 && T != GGML_TYPE_BF16) {
                const float4 a = ((const float4 *) xt)[0], b = ((const float4 *) xt)[1];
                xv[0] = a.x; xv[1] = a.y; xv[2] = a.z; xv[3] = a.w; xv[4] = b.x; xv[5] = b.y; xv[6] = b.z; xv[7] = b.w;
            } else {
#pragma unroll
                for (int k = 0; k < CHUNK; k++) xv[k] = c * CHUNK + k < n_in ? xt[k] : 0.0f;
            }
#pragma unroll
            for (int k = 0; k < CHUNK; k++) acc[t] = fmaf(v[k], xv[k], acc[t]);
        }
    }
#pragma unroll
    for (int t = 0; t < MAX_TOK; t++) {
        if (t >= n_tok) break;
        const float s = warp_sum(acc[t]);
        if (lane == 0) y[t * n_out + row] = s;
    }
}

template <ggml_type T, bool VEC>
__global__ void k_dequant(const uint8_t * src, float * dst, int64_t n) {
    const int64_t c = blockIdx.x * (int64_t) blockDim.x + threadIdx.x;
    if (c * CHUNK >= n) return;
    float v[CHUNK];
    chunk_loader<T, VEC>::load(src, c, n, v);
#pragma unroll
    for (int k = 0; k < CHUNK; k++)
        if (c * CHUNK + k < n) dst[c * CHUNK + k] = v[k];
}

// dst[r][:] = to_float(W row rows[r]); grid (n_rows, chunks / 256)
template <ggml_type T>
__global__ void k_get_rows(const uint8_t * w, size_t row_bytes, int64_t n_in, const int32_t * rows, float * dst) {
    const int r = blockIdx.x;
    const int64_t c = blockIdx.y * (int64_t) blockDim.x + threadIdx.x;
    if (c * CHUNK >= n_in) return;
    float v[CHUNK];
    chunk_loader<T, false>::load(w + (size_t) rows[r] * row_bytes, c, n_in, v);
    float * d = dst + (size_t) r * n_in + c * CHUNK;
#pragma unroll
    for (int k = 0; k < CHUNK; k++)
        if (c * CHUNK + k < n_in) d[k] = v[k];
}

template <ggml_type T>
status launch_get_rows(const weight_dev & w, const int32_t * rows, int n_rows, float * dst, stream_t s) {
    const int64_t n_chunks = (w.n_in + CHUNK - 1) / CHUNK;
    k_get_rows<T><<<dim3(n_rows, ceil_div(n_chunks, 256)), 256, 0, s>>>((const uint8_t *) w.data, w.row_bytes, w.n_in, rows, dst);
    CUDA_CHECK_LAUNCH("get_rows");
    return status::success();
}

template <ggml_type T>
status launch_matmul(const weight_dev & w, const float * x, float * y, int64_t n_tokens, stream_t s) {
    const bool vec = (w.n_in % CHUNK) == 0 && (w.row_bytes % 16) == 0 && ((uintptr_t) w.data % 16) == 0 && ((uintptr_t) x % 16) == 0;
    const dim3 block(WARP, ROWS_PER_BLOCK), grid(ceil_div(w.n_out, ROWS_PER_BLOCK));
    for (int64_t t0 = 0; t0 < n_tokens; t0 += MAX_TOK) {
        const int nt = (int) std::min<int64_t>(MAX_TOK, n_tokens - t0);
        if (vec) k_matmul<T, true><<<grid, block, 0, s>>>((const uint8_t *) w.data, w.row_bytes, w.n_in, w.n_out, x + t0 * w.n_in, y + t0 * w.n_out, nt);
        else k_matmul<T, false><<<grid, block, 0, s>>>((const uint8_t *) w.data, w.row_bytes, w.n_in, w.n_out, x + t0 * w.n_in, y + t0 * w.n_out, nt);
        CUDA_CHECK_LAUNCH("matmul");
    }
    return status::success();
}

template <ggml_type T>
status launch_dequant(const void * src, float * dst, int64_t n, stream_t s) {
    const int64_t n_chunks = (n + CHUNK - 1) / CHUNK;
    k_dequant<T, false><<<ceil_div(n_chunks, 256), 256, 0, s>>>((const uint8_t *) src, dst, n);
    CUDA_CHECK_LAUNCH("dequantize");
    return status::success();
}

} // namespace

status matmul(const weight_dev & w, const float * x, float * y, int64_t n_tokens, stream_t s) {
    if (n_tokens <= 0 || w.n_out <= 0) return status::success();
    switch (w.type) {
    case GGML_TYPE_F32: return launch_matmul<GGML_TYPE_F32>(w, x, y, n_tokens, s);
    case GGML_TYPE_F16: return launch_matmul<GGML_TYPE_F16>(w, x, y, n_tokens, s);
    case GGML_TYPE_BF16: return launch_matmul<GGML_TYPE_BF16>(w, x, y, n_tokens, s);
    case GGML_TYPE_Q8_0: return launch_matmul<GGML_TYPE_Q8_0>(w, x, y, n_tokens, s);
    case GGML_TYPE_Q4_K: return launch_matmul<GGML_TYPE_Q4_K>(w, x, y, n_tokens, s);
    case GGML_TYPE_Q6_K: return launch_matmul<GGML_TYPE_Q6_K>(w, x, y, n_tokens, s);
    case GGML_TYPE_Q4_0: return launch_matmul<GGML_TYPE_Q4_0>(w, x, y, n_tokens, s);
    case GGML_TYPE_Q4_1: return launch_matmul<GGML_TYPE_Q4_1>(w, x, y, n_tokens, s);
    case GGML_TYPE_Q5_0: return launch_matmul<GGML_TYPE_Q5_0>(w, x, y, n_tokens, s);
    case GGML_TYPE_Q5_1: return launch_matmul<GGML_TYPE_Q5_1>(w, x, y, n_tokens, s);
    case GGML_TYPE_Q2_K: return launch_matmul<GGML_TYPE_Q2_K>(w, x, y, n_tokens, s);
    case GGML_TYPE_Q3_K: return launch_matmul<GGML_TYPE_Q3_K>(w, x, y, n_tokens, s);
    case GGML_TYPE_Q5_K: return launch_matmul<GGML_TYPE_Q5_K>(w, x, y, n_tokens, s);
    default: return status(ERR_UNSUPPORTED_QUANT, strfmt("cuda matmul: weight type %s not supported", ggml_type_name(w.type)));
    }
}

status dequantize(const void * src, ggml_type t, float * dst, int64_t n, stream_t s) {
    if (n <= 0) return status::success();
    switch (t) {
    case GGML_TYPE_F32: return launch_dequant<GGML_TYPE_F32>(src, dst, n, s);
    case GGML_TYPE_F16: return launch_dequant<GGML_TYPE_F16>(src, dst, n, s);
    case GGML_TYPE_BF16: return launch_dequant<GGML_TYPE_BF16>(src, dst, n, s);
    case GGML_TYPE_Q8_0: return launch_dequant<GGML_TYPE_Q8_0>(src, dst, n, s);
    case GGML_TYPE_Q4_K: return launch_dequant<GGML_TYPE_Q4_K>(src, dst, n, s);
    case GGML_TYPE_Q6_K: return launch_dequant<GGML_TYPE_Q6_K>(src, dst, n, s);
    case GGML_TYPE_Q4_0: return launch_dequant<GGML_TYPE_Q4_0>(src, dst, n, s);
    case GGML_TYPE_Q4_1: return launch_dequant<GGML_TYPE_Q4_1>(src, dst, n, s);
    case GGML_TYPE_Q5_0: return launch_dequant<GGML_TYPE_Q5_0>(src, dst, n, s);
    case GGML_TYPE_Q5_1: return launch_dequant<GGML_TYPE_Q5_1>(src, dst, n, s);
    case GGML_TYPE_Q2_K: return launch_dequant<GGML_TYPE_Q2_K>(src, dst, n, s);
    case GGML_TYPE_Q3_K: return launch_dequant<GGML_TYPE_Q3_K>(src, dst, n, s);
    case GGML_TYPE_Q5_K: return launch_dequant<GGML_TYPE_Q5_K>(src, dst, n, s);
    default: return status(ERR_UNSUPPORTED_QUANT, strfmt("cuda dequantize: type %s not supported", ggml_type_name(t)));
    }
}

status get_rows(const weight_dev & w, const int32_t * rows, int n_rows, float * dst, stream_t s) {
    if (n_rows <= 0) return status::success();
    switch (w.type) {
    case GGML_TYPE_F32: return launch_get_rows<GGML_TYPE_F32>(w, rows, n_rows, dst, s);
    case GGML_TYPE_F16: return launch_get_rows<GGML_TYPE_F16>(w, rows, n_rows, dst, s);
    case GGML_TYPE_BF16: return launch_get_rows<GGML_TYPE_BF16>(w, rows, n_rows, dst, s);
    case GGML_TYPE_Q8_0: return launch_get_rows<GGML_TYPE_Q8_0>(w, rows, n_rows, dst, s);
    case GGML_TYPE_Q4_0: return launch_get_rows<GGML_TYPE_Q4_0>(w, rows, n_rows, dst, s);
    case GGML_TYPE_Q4_1: return launch_get_rows<GGML_TYPE_Q4_1>(w, rows, n_rows, dst, s);
    case GGML_TYPE_Q5_0: return launch_get_rows<GGML_TYPE_Q5_0>(w, rows, n_rows, dst, s);
    case GGML_TYPE_Q5_1: return launch_get_rows<GGML_TYPE_Q5_1>(w, rows, n_rows, dst, s);
    case GGML_TYPE_Q2_K: return launch_get_rows<GGML_TYPE_Q2_K>(w, rows, n_rows, dst, s);
    case GGML_TYPE_Q3_K: return launch_get_rows<GGML_TYPE_Q3_K>(w, rows, n_rows, dst, s);
    case GGML_TYPE_Q4_K: return launch_get_rows<GGML_TYPE_Q4_K>(w, rows, n_rows, dst, s);
    case GGML_TYPE_Q5_K: return launch_get_rows<GGML_TYPE_Q5_K>(w, rows, n_rows, dst, s);
    case GGML_TYPE_Q6_K: return launch_get_rows<GGML_TYPE_Q6_K>(w, rows, n_rows, dst, s);
    default: return status(ERR_UNSUPPORTED_QUANT, strfmt("cuda get_rows: type %s not supported", ggml_type_name(w.type)));
    }
}

} // namespace cuda
} // namespace core
