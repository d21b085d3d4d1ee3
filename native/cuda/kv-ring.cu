// The compressed KV cache of one layer on the device (see kv-ring.cuh). CPU oracles: kv_cache::flush and
// rot.cpp's encode (quantize-on-write), kv_cache::add_sinks' candidates (forward_chunk's top |x|); the
// test cuda/ring-engine (test-forward-cuda.cpp) runs a whole model both ways.
#include "kv-ring.cuh"
#include "../kv/kv-state.h"

#include <algorithm>
#include <climits>
#include <cmath>

#include "common.cuh"

namespace core {
namespace cuda {
namespace {

constexpr int STEP_META = 4;  // pages, lo, n_coded, rc_before per head
constexpr int32_t kRingCodedMin = 256;  // quantized tokens per coded head the arrays hold at least
constexpr int32_t kRingSlotsMin = 256;  // f16 slots per head the position and statistics arrays hold at least

__device__ __forceinline__ uint16_t * slot_page(const kv_layer_view & kv, int h, int slot) {
    return (uint16_t *) kv.seg_page[(size_t) h * kv.max_seg + slot / KV_PAGE_TOKENS];
}

__global__ void k_ring_append(kv_layer_view kv, const int32_t * geo, const int32_t * rc, int32_t * pos, const float * k, const float * v, int32_t c0,
                              int2 * st_f, int32_t last0) {
    const int t = blockIdx.x, h = blockIdx.y, H = gridDim.y;
    const int D = kv.head_dim, DV = kv.head_dim_v;
    const int32_t slot = kv_ring_slot(c0, t, geo[h], rc[h], geo[H + h], geo[2 * H + h]);
    kv_page_put(slot_page(kv, h, slot), slot % KV_PAGE_TOKENS, k + ((size_t) t * H + h) * D, v + ((size_t) t * H + h) * DV, D, DV);
    if (threadIdx.x == 0) {
        pos[(size_t) h * kv.max_tokens + slot] = c0 + t;
        if (st_f && kv.evict[h]) st_f[(size_t) h * kv.max_tokens + slot] = make_int2(last0, 0);  // lazy_append
    }
}

// Little-endian bit stream of D codes (kv_code_put's layout), by the threads of the block, into out[D·bits/8].
template <int D> __device__ void pack_codes(const int * code, int bits, uint8_t * out) {
    for (int ib = threadIdx.x; ib < D * bits / 8; ib += blockDim.x) {
        uint32_t w = 0;
        for (int e = (8 * ib) / bits; e <= (8 * ib + 7) / bits && e < D; e++) {
            const int sft = e * bits - 8 * ib;
            w |= sft >= 0 ? (uint32_t) code[e] << sft : (uint32_t) code[e] >> -sft;
        }
        out[ib] = (uint8_t) (w & 0xffu);
    }
}

// rot.cpp's encode of x[0..D) (shared memory) into blk, one thread per channel d.
template <int D>
__device__ void rot_encode(const float * x, int bits, int G, float clip, uint8_t * blk, int * code) {
    const int d = threadIdx.x, ng = D / G, qmax = (1 << bits) - 1;
    const int g = d / G;
    float mn = x[g * G], mx = x[g * G];
    for (int i = 1; i < G; i++) { mn = fminf(mn, x[g * G + i]); mx = fmaxf(mx, x[g * G + i]); }
    const float xmax = __fmul_rn(clip, mx), xmin = __fmul_rn(clip, mn);  // never fused into the subtraction (rot.cpp has no FMA)
    uint16_t sh = f32_to_f16_bits((xmax - xmin) / (float) qmax);
    if (f16_bits_to_f32(sh) <= 0.0f) sh = 1;  // zero-range group: smallest positive f16
    const float s = f16_bits_to_f32(sh);
    const int z = min(max((int) rintf(-xmin / s), 0), 255);
    code[d] = min(max((int) rintf(x[d] / s) + z, 0), qmax);
    __syncthreads();
    const int cb = D * bits / 8;
    pack_codes<D>(code, bits, blk);
    if (d % G == 0) {
        blk[cb + 2 * g] = (uint8_t) (sh & 0xffu);
        blk[cb + 2 * g + 1] = (uint8_t) (sh >> 8);
        blk[cb + 2 * ng + g] = (uint8_t) z;
    }
    __syncthreads();
}

// q8.cpp / q4.cpp's encode of x[0..D) (shared memory) into blk, one thread per channel d: per 32 channels an
// f16 scale (q8: max|x| / 127; q4: the largest-magnitude element / −8), then the codes; bits 16: the f16 row.
template <int D>
__device__ void plain_encode(const float * x, int bits, uint8_t * blk, int * code) {
    const int d = threadIdx.x, b0 = d / 32 * 32, i = d % 32;
    if (bits == 16) {
        const uint16_t h = f32_to_f16_bits(x[d]);
        blk[2 * d] = (uint8_t) (h & 0xffu);
        blk[2 * d + 1] = (uint8_t) (h >> 8);
        __syncthreads();
        return;
    }
    uint8_t * p = blk + (size_t) (d / 32) * (2 + 32 * bits / 8);
    float amax = 0.0f, m = 0.0f;
    for (int k = 0; k < 32; k++)
        if (fabsf(x[b0 + k]) > amax) { amax = fabsf(x[b0 + k]); m = x[b0 + k]; }
    const float s = bits == 8 ? amax / 127.0f : m / -8.0f, id = s != 0.0f ? 1.0f / s : 0.0f;
    const uint16_t sh = f32_to_f16_bits(s);
    // (products never fused into the sums: the CPU encoders have no FMA)
    if (bits == 8) code[d] = (int) lroundf(__fmul_rn(x[d], id));
    else code[d] = min(15, (int) __fadd_rn(__fmul_rn(x[d], id), 8.5f));
    __syncthreads();
    if (i == 0) { p[0] = (uint8_t) (sh & 0xffu); p[1] = (uint8_t) (sh >> 8); }
    if (bits == 8) p[2 + i] = (uint8_t) (int8_t) code[d];
    else if (i % 2 == 0) p[2 + i / 2] = (uint8_t) (code[d] | (code[d + 1] << 4));
    __syncthreads();
}

// kivi.cpp's quant of n values x[i·stride] (shared memory) with the group's min and range: f16 scale and min,
// then codes clamp(rint((x − m)/s), 0, qmax) (0 where the range is 0); returns this thread's code for x[i].
__device__ __forceinline__ void kivi_scale_min(const float * x, int n, int stride, int bits, uint16_t & sh, uint16_t & mh) {
    float mn = x[0], mx = x[0];
    for (int i = 1; i < n; i++) { mn = fminf(mn, x[(size_t) i * stride]); mx = fmaxf(mx, x[(size_t) i * stride]); }
    sh = f32_to_f16_bits((mx - mn) / (float) ((1 << bits) - 1));
    mh = f32_to_f16_bits(mn);
}
__device__ __forceinline__ int kivi_code(float x, uint16_t sh, uint16_t mh, int bits) {
    const float s = f16_bits_to_f32(sh), m = f16_bits_to_f32(mh);
    return s > 0.0f ? min(max((int) rintf((x - m) / s), 0), (1 << bits) - 1) : 0;
}
// KIVI's value block of one token (x: shared memory, one thread per channel): codes [D·b/8] | scales f16 [ng] |
// mins f16 [ng], per group of grp channels.
template <int D>
__device__ void kivi_value_encode(const float * x, int bits, int grp, uint8_t * blk, int * code) {
    const int d = threadIdx.x, g = d / grp, ng = D / grp;
    uint16_t sh, mh;
    kivi_scale_min(x + g * grp, grp, 1, bits, sh, mh);
    code[d] = kivi_code(x[d], sh, mh, bits);
    __syncthreads();
    pack_codes<D>(code, bits, blk);
    if (d % grp == 0) {
        uint8_t * sm = blk + D * bits / 8;
        sm[2 * g] = (uint8_t) (sh & 0xffu);
        sm[2 * g + 1] = (uint8_t) (sh >> 8);
        sm[2 * ng + 2 * g] = (uint8_t) (mh & 0xffu);
        sm[2 * ng + 2 * g + 1] = (uint8_t) (mh >> 8);
    }
    __syncthreads();
}

// KIVI's keys, one block of kt tokens per CUDA block (D threads; entries e0 .. e0 + kt − 1 of one head, their
// quantized indices a whole block): per channel the min and range over the block's tokens (meta: scales f16 [D]
// | mins f16 [D]), then each token's code row. Dynamic shared memory: kt·D floats + kt·D ints.
template <int D>
__global__ void k_ring_encode_kivi_keys(kv_layer_view kv, const int32_t * ent, int kt, uint8_t * kblk, uint8_t * kmeta) {
    extern __shared__ float xs[];
    int * code = (int *) (xs + (size_t) kt * D);
    const int e0 = blockIdx.x * kt, d = threadIdx.x;
    const int h = ent[4 * e0];
    for (int t = 0; t < kt; t++) {
        const int slot = ent[4 * (e0 + t) + 1];
        xs[t * D + d] = f16_bits_to_f32(slot_page(kv, h, slot)[key_at(slot % KV_PAGE_TOKENS, d, D)]);
    }
    __syncthreads();
    uint16_t sh, mh;
    kivi_scale_min(xs + d, kt, D, kv.kbits, sh, mh);
    for (int t = 0; t < kt; t++) code[t * D + d] = kivi_code(xs[t * D + d], sh, mh, kv.kbits);
    const size_t c = (size_t) kv.c_first[h] + ent[4 * e0 + 3];  // a multiple of kt
    uint8_t * meta = kmeta + c / kt * 4 * D;
    meta[2 * d] = (uint8_t) (sh & 0xffu);
    meta[2 * d + 1] = (uint8_t) (sh >> 8);
    meta[2 * D + 2 * d] = (uint8_t) (mh & 0xffu);
    meta[2 * D + 2 * d + 1] = (uint8_t) (mh >> 8);
    __syncthreads();
    for (int t = 0; t < kt; t++) pack_codes<D>(code + t * D, kv.kbits, kblk + (c + t) * kv.k_block_bytes);
}

// Quantize-on-write, one token per block (D threads): kv_cache::flush's steps for a head rotated alone, or
// for q8 / q4 the post-RoPE key and the value encoded as they are.
template <int D>
__global__ void k_ring_encode(kv_layer_view kv, const int32_t * ent, uint8_t * kblk, uint8_t * vblk, int32_t * c_pos, float kclip, float vclip,
                              const int2 * st_f, int2 * st_c) {
    const int e = blockIdx.x, d = threadIdx.x;
    const int h = ent[4 * e], slot = ent[4 * e + 1], pos = ent[4 * e + 2], ci = ent[4 * e + 3];
    __shared__ float xk[D], xv[D], cs[D / 2], sn[D / 2], qk[D], qv[D];
    __shared__ float xg[RING_MAX_ROT_GROUP * D];  // grouped key rotation: the group's keys, head after head
    __shared__ int code[D];
    const uint16_t * page = slot_page(kv, h, slot);
    const int j = slot % KV_PAGE_TOKENS;
    xk[d] = f16_bits_to_f32(page[key_at(j, d, D)]);
    xv[d] = f16_bits_to_f32(page[value_at(j, d, D, D)]);
    const size_t c = (size_t) kv.c_first[h] + ci;
    const bool krot = !kv.kplain, vrot = !kv.vplain;  // (uniform over the block: every branch below may synchronize)
    // grouped key rotation (pre-RoPE rot keys, kv_cache::flush): the rg heads of this head's group hold the token
    // in the same slot; their keys are un-RoPE'd and FWHT'd each, mixed by H_rg across the heads, and this head
    // keeps its slice (slot sl0 of the group). rg == 1: this head's key alone.
    const int rg = kv.rot_g && krot ? kv.rot_g[h] : 1, sl0 = h % rg;
    float * xs = rg > 1 ? xg : xk;
    if (rg > 1)
        for (int s2 = 0; s2 < rg; s2++) xg[s2 * D + d] = f16_bits_to_f32(slot_page(kv, h - sl0 + s2, slot)[key_at(j, d, D)]);
    if (kv.pre_rope && d < D / 2) {  // rope_cache_ref(cs, −pos): θ advanced by repeated multiplication
        float theta = (float) (-pos);
        for (int i = 0; i < d; i++) theta *= kv.theta_scale;
        const float ff = kv.freq_factors ? kv.freq_factors[d] : 1.0f;
        const float tt = kv.freq_scale * (theta / ff);
        cs[d] = cosf(tt);
        sn[d] = sinf(tt);
    }
    __syncthreads();
    if (kv.pre_rope && d < D / 2) {  // rope_apply_ref at −pos undoes the key's RoPE
        const int i0 = kv.rope_neox ? d : 2 * d, i1 = kv.rope_neox ? d + D / 2 : 2 * d + 1;
        for (int s2 = 0; s2 < rg; s2++) {
            float * x = xs + s2 * D;
            const float x0 = x[i0], x1 = x[i1], c = cs[d], s = sn[d];
            x[i0] = fmaf(x0, c, -(x1 * s));
            x[i1] = fmaf(x0, s, x1 * c);
        }
    }
    __syncthreads();
    for (int hh = 1; hh < D && (krot || vrot); hh <<= 1) {  // fwht_ref's butterflies (rotated keys and values)
        if (d < D / 2) {
            const int i = (d / hh) * 2 * hh + d % hh;
            for (int s2 = 0; s2 < rg && krot; s2++) {
                float * x = xs + s2 * D;
                const float a = x[i], b = x[i + hh];
                x[i] = a + b;
                x[i + hh] = a - b;
            }
            if (vrot) {
                const float av = xv[i], bv = xv[i + hh];
                xv[i] = av + bv;
                xv[i + hh] = av - bv;
            }
        }
        __syncthreads();
    }
    const float sc = 1.0f / sqrtf((float) D);
    const int32_t * perm = kv.perm ? kv.perm + (size_t) h * D : nullptr;
    if (rg > 1) {  // fwht_ref's scale per head, then H_rg across the heads channel by channel (each thread its own)
        for (int s2 = 0; s2 < rg; s2++) xg[s2 * D + d] *= sc;
        for (int len = 1; len < rg; len <<= 1)
            for (int i = 0; i < rg; i += 2 * len)
                for (int s2 = i; s2 < i + len; s2++) {
                    const float u = xg[s2 * D + d], w = xg[(s2 + len) * D + d];
                    xg[s2 * D + d] = u + w;
                    xg[(s2 + len) * D + d] = u - w;
                }
        __syncthreads();
        qk[d] = xg[sl0 * D + (perm ? perm[d] : d)] * (1.0f / sqrtf((float) rg));  // this head's slice, permuted
    } else {
        qk[d] = krot ? xk[perm ? perm[d] : d] * sc : xk[d];  // fwht_ref scales, then the cache permutes
    }
    qv[d] = vrot ? xv[d] * sc : xv[d];
    __syncthreads();
    // keys: rot, q8 / q4, or KIVI's (k_ring_encode_kivi_keys, per block of tokens); values: rot, q8 / q4 or KIVI's
    if (krot) rot_encode<D>(qk, kv.kbits, kv.kgroup, kclip, kblk + c * kv.k_block_bytes, code);
    else if (!kv.kivi) plain_encode<D>(qk, kv.kbits, kblk + c * kv.k_block_bytes, code);
    if (vrot) rot_encode<D>(qv, kv.vbits, kv.vgroup, vclip, vblk + c * kv.v_block_bytes, code);
    else if (kv.vkivi) kivi_value_encode<D>(qv, kv.vbits, kv.vgroup, vblk + c * kv.v_block_bytes, code);
    else plain_encode<D>(qv, kv.vbits, vblk + c * kv.v_block_bytes, code);
    if (d == 0) {
        c_pos[c] = pos;
        if (st_c && kv.evict[h]) st_c[c] = st_f[(size_t) h * kv.max_tokens + slot];  // the statistics follow the token
    }
}

// An evicting head's gathers, in two launches so that no entry reads what another writes: phase 0 copies
// each source token (payload, position, statistics) to scratch row e, phase 1 writes row e to its
// destination. f16 slots (k_ring_move) and quantized tokens (k_ring_cgather); entries (head, src, dst).
struct gather_tmp {
    uint8_t * row;    // [n][row_bytes]
    int2 * st;        // [n]
    int32_t * pos;    // [n]
};
__host__ __device__ inline size_t gather_row_bytes(size_t payload) { return (payload + 15) / 16 * 16; }

__global__ void k_ring_move(kv_layer_view kv, const int32_t * ent, int32_t * pos, int2 * st_f, gather_tmp tmp, int phase) {
    const int e = blockIdx.x, D = kv.head_dim, DV = kv.head_dim_v;
    const int h = ent[3 * e], slot = ent[3 * e + 1 + phase];
    uint16_t * page = slot_page(kv, h, slot);
    const int j = slot % KV_PAGE_TOKENS;
    uint16_t * row = (uint16_t *) (tmp.row + (size_t) e * gather_row_bytes((size_t) (D + DV) * 2));
    const size_t ps = (size_t) h * kv.max_tokens + slot;
    if (phase == 0) {
        for (int d = threadIdx.x; d < D; d += blockDim.x) row[d] = page[key_at(j, d, D)];
        for (int d = threadIdx.x; d < DV; d += blockDim.x) row[D + d] = page[value_at(j, d, D, DV)];
        if (threadIdx.x == 0) { tmp.pos[e] = pos[ps]; tmp.st[e] = st_f[ps]; }
    } else {
        for (int d = threadIdx.x; d < D; d += blockDim.x) page[key_at(j, d, D)] = row[d];
        for (int d = threadIdx.x; d < DV; d += blockDim.x) page[value_at(j, d, D, DV)] = row[D + d];
        if (threadIdx.x == 0) { pos[ps] = tmp.pos[e]; st_f[ps] = tmp.st[e]; }
    }
}

__global__ void k_ring_cgather(kv_layer_view kv, const int32_t * ent, uint8_t * kblk, uint8_t * vblk, int32_t * c_pos, int2 * st_c, gather_tmp tmp,
                               int phase) {
    const int e = blockIdx.x, kb = kv.k_block_bytes, vb = kv.v_block_bytes;
    const int h = ent[3 * e];
    const size_t c = (size_t) kv.c_first[h] + ent[3 * e + 1 + phase];
    uint8_t * row = tmp.row + (size_t) e * gather_row_bytes((size_t) (kb + vb));
    uint8_t * kp = kblk + c * kb, * vp = vblk + c * vb;
    if (phase == 0) {
        for (int i = threadIdx.x; i < kb; i += blockDim.x) row[i] = kp[i];
        for (int i = threadIdx.x; i < vb; i += blockDim.x) row[kb + i] = vp[i];
        if (threadIdx.x == 0) { tmp.pos[e] = c_pos[c]; tmp.st[e] = st_c[c]; }
    } else {
        for (int i = threadIdx.x; i < kb; i += blockDim.x) kp[i] = row[i];
        for (int i = threadIdx.x; i < vb; i += blockDim.x) vp[i] = row[kb + i];
        if (threadIdx.x == 0) { c_pos[c] = tmp.pos[e]; st_c[c] = tmp.st[e]; }
    }
}

// The policies' observation after attention (kv_cache::retain's observe): per token of an evicting head, the
// probability of each of the group's query rows is exp(s − M)/L with the last row's merged M and L (0 where L
// is 0 or the token was masked). lazy (decode steps only): p_max = max over the group; a hit (p_max >= alpha)
// sets mri = max(mri, t − last) and last = t. h2o: the cumulative score += the group's sum. tova: the score =
// the group's sum, or with layer_mean the mean over all query heads of the layer (every head evicts and holds
// the same tokens in the same slots, kv_ring_layer::layer_mean), summed head by head as kv_cache does.
__device__ __forceinline__ void lazy_hit(int2 & x, int32_t t) {
    x.y = max(x.y, t - x.x);
    x.x = t;
}

// Probability of query row g of KV head h for token i (f16 slot i < n_slots, else quantized index i − n_slots).
__device__ __forceinline__ float ring_row_prob(const kv_layer_view & kv, int h, int G, int g, int i, int n_slots) {
    const float sc = i < n_slots ? kv.sc[((size_t) h * G + g) * kv.max_tokens + i] : kv.sc_c[((size_t) kv.c_first[h] + (i - n_slots)) * G + g];
    const float M = kv.ml[2 * (h * G + g)], L = kv.ml[2 * (h * G + g) + 1];
    return L > 0.0f ? expf(sc - M) / L : 0.0f;
}

__global__ void k_ring_observe(kv_layer_view kv, int G, int kind, int32_t t, float alpha, int layer_mean, float inv_heads, int2 * st_f, int2 * st_c) {
    const int h = blockIdx.y, H = gridDim.y;
    if (!kv.evict[h]) return;
    const int n_slots = kv.n_seg[h] * KV_PAGE_TOKENS;
    const int nc = kv.is_coded && kv.is_coded[h] ? kv.n_coded[h] : 0;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n_slots + nc; i += gridDim.x * blockDim.x) {
        const bool f16 = i < n_slots;
        if (f16 && kv.pos[(size_t) h * kv.max_tokens + i] == KV_RING_EMPTY) continue;
        int2 & x = f16 ? st_f[(size_t) h * kv.max_tokens + i] : st_c[(size_t) kv.c_first[h] + (i - n_slots)];
        if (kind == KV_POLICY_LAZY) {
            float pm = 0.0f;
            for (int g = 0; g < G; g++) pm = fmaxf(pm, ring_row_prob(kv, h, G, g, i, n_slots));
            if (pm >= alpha) lazy_hit(x, t);
            continue;
        }
        float p = 0.0f;
        if (layer_mean) {
            for (int hh = 0; hh < H; hh++) {
                float ps = 0.0f;
                for (int g = 0; g < G; g++) ps += ring_row_prob(kv, hh, G, g, i, n_slots);
                p += ps * inv_heads;
            }
        } else {
            for (int g = 0; g < G; g++) p += ring_row_prob(kv, h, G, g, i, n_slots);
        }
        x.x = __float_as_int(kind == KV_POLICY_H2O ? __int_as_float(x.x) + p : p);
    }
}

// kv_ring_evict_one_ref on the device, one block per due head: the token to drop (lowest score, then oldest),
// removed at once by moving the head's last token of the same part (f16 slot rc − 1, or the last quantized
// one) into its place, statistics and position with it. out: (1, index, position) when one went, (0) when the
// selection kept all, (2) when the host must select (more than one goes, or the newest are not consecutive).
template <typename T, typename F>
__device__ T block_reduce(T v, F op, T * sh) {
    for (int o = WARP / 2; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    const int w = threadIdx.x / WARP, nw = (blockDim.x + WARP - 1) / WARP;
    __syncthreads();
    if (threadIdx.x % WARP == 0) sh[w] = v;
    __syncthreads();
    T r = sh[0];
    for (int i = 1; i < nw; i++) r = op(r, sh[i]);
    return r;
}

__global__ void k_ring_evict_one(kv_layer_view kv, ring_evict_one_args a, int32_t * pos, int2 * st_f, uint8_t * kblk, uint8_t * vblk, int32_t * c_pos,
                                 int2 * st_c, int32_t * out) {
    __shared__ int32_t sinks[RING_EVICT_MAX_SINKS];
    __shared__ unsigned long long red_ll[32];
    __shared__ int red_i[32];
    __shared__ int decision, drop;
    const int b = blockIdx.x, h = a.head[b], rc = a.rc[b], nq = a.nq[b], n = nq + rc;
    for (int i = threadIdx.x; i < a.n_sinks; i += blockDim.x) sinks[i] = a.sinks[i];
    __syncthreads();
    const size_t cf = kv.c_first ? (size_t) kv.c_first[h] : 0, fb = (size_t) h * kv.max_tokens;
    auto pos_of = [&](int j) { return j < nq ? c_pos[cf + j] : pos[fb + (j - nq)]; };
    auto score_of = [&](int j) { return __int_as_float(j < nq ? st_c[cf + j].x : st_f[fb + (j - nq)].x); };
    int pm = INT_MIN;
    for (int j = threadIdx.x; j < n; j += blockDim.x) pm = max(pm, pos_of(j));
    pm = block_reduce<int>(pm, [](int x, int y) { return max(x, y); }, red_i);
    const int k = min(max(a.recent, 0), n);
    const long long above = (long long) pm - k;
    int n_recent = 0, kept = 0;
    // the best candidate as one key: the score's order-preserving bits, then the position (lower wins)
    unsigned long long best = ULLONG_MAX;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        const int p = pos_of(j);
        const bool rec = p > above;
        bool sink = false;
        for (int i = 0; i < a.n_sinks && !sink; i++) sink = sinks[i] == p;
        n_recent += rec;
        if (p < a.protect || rec || sink) { kept++; continue; }
        const uint32_t u = (uint32_t) __float_as_int(score_of(j));
        const uint32_t ord = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
        const unsigned long long key = ((unsigned long long) ord << 32) | (uint32_t) p;
        best = min(best, key);
    }
    n_recent = block_reduce<int>(n_recent, [](int x, int y) { return x + y; }, red_i);
    kept = block_reduce<int>(kept, [](int x, int y) { return x + y; }, red_i);
    best = block_reduce<unsigned long long>(best, [](unsigned long long x, unsigned long long y) { return x < y ? x : y; }, red_ll);
    const int p_best = (int) (uint32_t) (best & 0xffffffffu);
    if (threadIdx.x == 0) {
        const int cand = n - kept, room = max(0, a.budget - kept);
        decision = n_recent != k ? 2 : cand <= room ? 0 : cand - room == 1 ? 1 : 2;
        drop = -1;
    }
    __syncthreads();
    if (decision == 1)  // positions are unique within a head: one thread finds the token
        for (int j = threadIdx.x; j < n; j += blockDim.x)
            if (pos_of(j) == p_best) drop = j;
    __syncthreads();
    if (threadIdx.x == 0) {
        int32_t * o = out + (size_t) 4 * a.out[b];
        o[0] = decision;
        o[1] = drop;
        o[2] = decision == 1 ? p_best : -1;
        o[3] = 0;
    }
    if (decision != 1 || drop < 0) return;
    if (drop < nq) {
        const int last = nq - 1;
        if (drop == last) return;
        const int kb = kv.k_block_bytes, vb = kv.v_block_bytes;
        for (int i = threadIdx.x; i < kb; i += blockDim.x) kblk[(cf + drop) * kb + i] = kblk[(cf + last) * kb + i];
        for (int i = threadIdx.x; i < vb; i += blockDim.x) vblk[(cf + drop) * vb + i] = vblk[(cf + last) * vb + i];
        if (threadIdx.x == 0) { c_pos[cf + drop] = c_pos[cf + last]; st_c[cf + drop] = st_c[cf + last]; }
        return;
    }
    const int s = drop - nq, last = rc - 1, D = kv.head_dim, DV = kv.head_dim_v;
    if (s != last) {
        uint16_t * pd = slot_page(kv, h, s);
        const uint16_t * ps = slot_page(kv, h, last);
        const int jd = s % KV_PAGE_TOKENS, js = last % KV_PAGE_TOKENS;
        for (int d = threadIdx.x; d < D; d += blockDim.x) pd[key_at(jd, d, D)] = ps[key_at(js, d, D)];
        for (int d = threadIdx.x; d < DV; d += blockDim.x) pd[value_at(jd, d, D, DV)] = ps[value_at(js, d, D, DV)];
        if (threadIdx.x == 0) { pos[fb + s] = pos[fb + last]; st_f[fb + s] = st_f[fb + last]; }
    }
    if (threadIdx.x == 0) pos[fb + last] = KV_RING_EMPTY;
}

__global__ void k_ring_copy(kv_layer_view kv, const int32_t * ent, int32_t * pos) {
    const int e = blockIdx.x;
    const int h = ent[3 * e], src = ent[3 * e + 1], dst = ent[3 * e + 2];
    const int D = kv.head_dim, DV = kv.head_dim_v;
    const uint16_t * ps = slot_page(kv, h, src);
    uint16_t * pd = slot_page(kv, h, dst);
    const int js = src % KV_PAGE_TOKENS, jd = dst % KV_PAGE_TOKENS;
    for (int d = threadIdx.x; d < D; d += blockDim.x) pd[key_at(jd, d, D)] = ps[key_at(js, d, D)];
    for (int d = threadIdx.x; d < DV; d += blockDim.x) pd[value_at(jd, d, D, DV)] = ps[value_at(js, d, D, DV)];
    if (threadIdx.x == 0) pos[(size_t) h * kv.max_tokens + dst] = pos[(size_t) h * kv.max_tokens + src];
}

// Page table entries (index, pointer low 32 bits, high 32 bits) from the staged step.
__global__ void k_ring_map_pages(const int32_t * ent, int n, const uint16_t ** tab) {
    const int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= n) return;
    tab[ent[3 * e]] = (const uint16_t *) (uintptr_t) ((uint64_t) (uint32_t) ent[3 * e + 1] | (uint64_t) (uint32_t) ent[3 * e + 2] << 32);
}

__global__ void k_ring_set_pos(const int32_t * ent, int n, int max_tokens, int32_t * pos) {
    for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < n; e += gridDim.x * blockDim.x)
        if (ent[3 * e + 1] < max_tokens)  // (a slot past the arrays' capacity is out of every view)
            pos[(size_t) ent[3 * e] * max_tokens + ent[3 * e + 1]] = ent[3 * e + 2];
}

// Whole pages from one layer's cache into another's: pair e = (source page, destination page), `words` uint4 each.
__global__ void k_ring_copy_pages(const uint4 * const * pairs, size_t words) {
    const uint4 * src = pairs[2 * (size_t) blockIdx.x];
    uint4 * dst = (uint4 *) pairs[2 * (size_t) blockIdx.x + 1];
    for (size_t i = threadIdx.x; i < words; i += blockDim.x) dst[i] = src[i];
}

__global__ void k_ring_fill(int32_t * p, size_t n, int32_t value) {
    for (size_t i = (size_t) blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t) gridDim.x * blockDim.x) p[i] = value;
}

// Per token t, the k largest |x[t][·]| and their indices (ties: the lower index), k rounds of a block argmax.
__global__ void k_top_abs(const float * x, int n_embd, int k, float * vals, int32_t * idx) {
    extern __shared__ float a[];
    __shared__ float bv[32];
    __shared__ int bi[32];
    const int t = blockIdx.x, tid = threadIdx.x, nw = (blockDim.x + WARP - 1) / WARP;
    for (int i = tid; i < n_embd; i += blockDim.x) a[i] = fabsf(x[(size_t) t * n_embd + i]);
    __syncthreads();
    for (int r = 0; r < k; r++) {
        float best = -1.0f;
        int bidx = INT_MAX;
        for (int i = tid; i < n_embd; i += blockDim.x)
            if (a[i] > best) { best = a[i]; bidx = i; }
        for (int o = WARP / 2; o > 0; o >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffffu, best, o);
            const int oi = __shfl_xor_sync(0xffffffffu, bidx, o);
            if (ov > best || (ov == best && oi < bidx)) { best = ov; bidx = oi; }
        }
        if (tid % WARP == 0) { bv[tid / WARP] = best; bi[tid / WARP] = bidx; }
        __syncthreads();
        if (tid == 0) {
            for (int w = 1; w < nw; w++)
                if (bv[w] > bv[0] || (bv[w] == bv[0] && bi[w] < bi[0])) { bv[0] = bv[w]; bi[0] = bi[w]; }
            vals[(size_t) t * k + r] = bv[0];
            idx[(size_t) t * k + r] = bi[0];
            if (bi[0] >= 0 && bi[0] < n_embd) a[bi[0]] = -1.0f;
        }
        __syncthreads();
    }
}

// The policies that score from keys (snapkv, rkv; ALGORITHMS.md §4.4, §4.6), their GPU part: the recorded
// queries' attention over head h's f16 tokens (slots 0..n in position order: such heads are f16 and compacted
// in order), row r of P [rows][n]: snapkv: rows = nq·G, logit = q_(qi,g)·k·scale over all n keys; rkv: rows =
// nq, logit = max over the group of q_(qi,g)·k·scale over the m keys outside the window. P = softmax / div
// (snapkv.cpp / rkv.cpp's float steps: float exponentials, the normalizer summed in double). Queries: ring slot
// (first + qi) % w, [n_head][D] each.
__global__ void k_qk_attn(kv_layer_view kv, int h, const float * qring, int first, int w, int n_head, int G, int rkv, int m, int n, float scale, float div,
                          float * P) {
    extern __shared__ float qs[];
    __shared__ float red_f[32];
    __shared__ double red_d[32];
    const int r = blockIdx.x, D = kv.head_dim;
    const int qi = rkv ? r : r / G, g0 = rkv ? 0 : r % G, ng = rkv ? G : 1;
    const float * qrow = qring + ((size_t) ((first + qi) % w) * n_head + (size_t) h * G + g0) * D;
    for (int i = threadIdx.x; i < ng * D; i += blockDim.x) qs[i] = qrow[i];
    __syncthreads();
    float * row = P + (size_t) r * n;
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < m; j += blockDim.x) {
        const uint16_t * page = slot_page(kv, h, j);
        const int jj = j % KV_PAGE_TOKENS;
        float best = -INFINITY;
        for (int g = 0; g < ng; g++) {
            float sdot = 0.0f;
            for (int d = 0; d < D; d++) sdot += qs[g * D + d] * f16_bits_to_f32(page[key_at(jj, d, D)]);
            best = fmaxf(best, sdot * scale);
        }
        row[j] = best;
        mx = fmaxf(mx, best);
    }
    mx = block_reduce<float>(mx, [](float x, float y) { return fmaxf(x, y); }, red_f);
    double z = 0.0;
    for (int j = threadIdx.x; j < m; j += blockDim.x) z += (double) expf(row[j] - mx);
    z = block_reduce<double>(z, [](double x, double y) { return x + y; }, red_d);
    for (int j = threadIdx.x; j < n; j += blockDim.x) row[j] = j < m ? (float) ((double) expf(row[j] - mx) / z) / div : 0.0f;
}

// imp[j] = Σ_r P[r][j], rows in order (the CPU's accumulation order).
__global__ void k_qk_sum(const float * P, int rows, int n, float * imp) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    float a = 0.0f;
    for (int r = 0; r < rows; r++) a += P[(size_t) r * n + j];
    imp[j] = a;
}

// R-KV's unit keys: kn[j] = k_j / |k_j| (0 for a zero key), one thread per token, the norm summed in double.
__global__ void k_qk_key_norm(kv_layer_view kv, int h, int n, float * kn) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x, D = kv.head_dim;
    if (j >= n) return;
    const uint16_t * page = slot_page(kv, h, j);
    const int jj = j % KV_PAGE_TOKENS;
    double ss = 0.0;
    for (int d = 0; d < D; d++) {
        const double x = f16_bits_to_f32(page[key_at(jj, d, D)]);
        ss += x * x;
    }
    const float inv = ss > 0 ? (float) (1.0 / sqrt(ss)) : 0.0f;
    for (int d = 0; d < D; d++) kn[(size_t) j * D + d] = f16_bits_to_f32(page[key_at(jj, d, D)]) * inv;
}

__device__ __forceinline__ float qk_cos(const float * a, const float * b, int D) {
    float sdot = 0.0f;
    for (int d = 0; d < D; d++) sdot += a[d] * b[d];
    return sdot;
}

// R-KV's redundancy, row i (one block): rowsum[i] = Σ_{j≠i} cos(k_i, k_j) (double); the entry the reference
// zeroes: the last j with cos > 0.5, else column 0 (excl_idx, excl_val; 0 where that is i itself).
__global__ void k_qk_redundancy(const float * kn, int n, int D, double * rowsum, int32_t * excl_idx, float * excl_val) {
    extern __shared__ float ki[];
    __shared__ double red_d[32];
    __shared__ int red_i[32];
    const int i = blockIdx.x;
    for (int d = threadIdx.x; d < D; d += blockDim.x) ki[d] = kn[(size_t) i * D + d];
    __syncthreads();
    double acc = 0.0;
    int last = -1;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        if (j == i) continue;
        const float c = qk_cos(ki, kn + (size_t) j * D, D);
        acc += c;
        if (c > 0.5f) last = max(last, j);
    }
    acc = block_reduce<double>(acc, [](double x, double y) { return x + y; }, red_d);
    last = block_reduce<int>(last, [](int x, int y) { return max(x, y); }, red_i);
    if (threadIdx.x == 0) {
        const int idx = last >= 0 ? last : 0;
        rowsum[i] = acc;
        excl_idx[i] = idx;
        excl_val[i] = idx == i ? 0.0f : qk_cos(ki, kn + (size_t) idx * D, D);
    }
}

// Head h's f16 keys of slots 0..n as rows [n][D] (tests).
__global__ void k_ring_keys_out(kv_layer_view kv, int h, int n, uint16_t * out) {
    const int j = blockIdx.x, D = kv.head_dim;
    if (j >= n) return;
    const uint16_t * page = slot_page(kv, h, j);
    for (int d = threadIdx.x; d < D; d += blockDim.x) out[(size_t) j * D + d] = page[key_at(j % KV_PAGE_TOKENS, d, D)];
}

} // namespace

kv_ring_device::~kv_ring_device() {
    if (pinned_) cudaFreeHost(pinned_);
    if (pool_)
        for (void * pg : page_h_) pool_->free(pg);  // (nullptr: ignored)
}

kv_ring_device::kv_ring_device(kv_ring_device && o) noexcept
    : v_(o.v_), n_head_kv_(o.n_head_kv_), n_enc_(o.n_enc_), n_copy_(o.n_copy_), n_clear_(o.n_clear_), coded_cap_(o.coded_cap_), kclip_(o.kclip_),
      vclip_(o.vclip_), pool_(std::move(o.pool_)), page_h_(std::move(o.page_h_)), mapped_(std::move(o.mapped_)),
      map_ent_(std::move(o.map_ent_)), n_map_(o.n_map_), coded_heads_(std::move(o.coded_heads_)), min_coded_cap_(o.min_coded_cap_),
      max_coded_cap_(o.max_coded_cap_), slot_cap_(o.slot_cap_), min_slot_cap_(o.min_slot_cap_), full_tokens_(o.full_tokens_), sc_g_(o.sc_g_), page_ptrs_(std::move(o.page_ptrs_)), seg_n_(std::move(o.seg_n_)), seg_first_(std::move(o.seg_first_)),
      pos_(std::move(o.pos_)), geo_(std::move(o.geo_)), step_dev_(std::move(o.step_dev_)), is_coded_(std::move(o.is_coded_)), kblk_(std::move(o.kblk_)),
      vblk_(std::move(o.vblk_)), c_first_(std::move(o.c_first_)), c_pos_(std::move(o.c_pos_)), perm_(std::move(o.perm_)), ff_(std::move(o.ff_)),
      tops_(std::move(o.tops_)), kmeta_(std::move(o.kmeta_)), is_evict_(std::move(o.is_evict_)), st_f_(std::move(o.st_f_)), st_c_(std::move(o.st_c_)),
      rot_g_(std::move(o.rot_g_)), rot_g_h_(std::move(o.rot_g_h_)), pinned_(o.pinned_),
      pinned_cap_(o.pinned_cap_) {
    n_cgather_ = o.n_cgather_;
    n_move_ = o.n_move_;
    n_coded_heads_ = o.n_coded_heads_;
    append_last_ = o.append_last_;
    c_first_h_ = std::move(o.c_first_h_);
    qring_ = std::move(o.qring_);
    qcount_ = o.qcount_;
    qw_ = o.qw_;
    qrow_ = o.qrow_;
    qheld_ = o.qheld_;
    qpos_ = std::move(o.qpos_);
    o.pinned_ = nullptr;
    o.pinned_cap_ = 0;
}

status kv_ring_device::create(const kv_ring_layer & L, int D, int DV, const ring_codec & codec, const int32_t * perm,
                              std::shared_ptr<device_page_pool> pool, stream_t s, const std::vector<char> * codes_of) {
    const int H = L.n_head_kv();
    const size_t page_bytes = (size_t) KV_PAGE_TOKENS * (D + DV) * sizeof(uint16_t);
    if (!pool || pool->page_bytes() < page_bytes)
        return status(ERR_INTERNAL, strfmt("cuda kv ring: a page pool with pages of at least %zu bytes is needed (%zu)", page_bytes, pool ? pool->page_bytes() : 0));
    if (pool_)
        for (void * pg : page_h_) pool_->free(pg);
    pool_ = std::move(pool);
    n_head_kv_ = H;
    v_ = kv_layer_view{};
    v_.n_head_kv = H;
    v_.head_dim = D;
    v_.head_dim_v = DV;
    int max_seg = 1;
    std::vector<int32_t> geo((size_t) 3 * H), is_coded((size_t) H, 0), c_first((size_t) H, 0), is_evict((size_t) H, 0);
    int n_coded_heads = 0;
    // quantized tokens per coded head: at most n_ctx (KIVI: whole key blocks, so that every head's first index
    // starts one); the arrays start small and grow with the heads (resize_coded)
    const int32_t kt = std::max(1, codec.kivi_tokens);
    max_coded_cap_ = (L.coded_cap() + kt - 1) / kt * kt;
    min_coded_cap_ = std::min(max_coded_cap_, (kRingCodedMin + kt - 1) / kt * kt);
    coded_cap_ = min_coded_cap_;
    for (int h = 0; h < H; h++) {
        max_seg = std::max(max_seg, L.slots(h) / KV_PAGE_TOKENS);
        geo[(size_t) h] = L.fix_below(h);
        geo[(size_t) H + h] = L.fix_cap(h);
        geo[(size_t) 2 * H + h] = L.ring_cap(h);
        if (L.coded(h) && (!codes_of || (*codes_of)[(size_t) h])) {
            is_coded[(size_t) h] = 1;
            c_first[(size_t) h] = n_coded_heads++ * coded_cap_;
        }
        is_evict[(size_t) h] = L.kind(h) == KV_RING_EVICT;
    }
    n_coded_heads_ = n_coded_heads;
    if (n_coded_heads == 0) coded_cap_ = min_coded_cap_ = max_coded_cap_ = 0;
    c_first_h_ = c_first;
    // the slots' positions and statistics: arrays of slot_cap_ slots per head, grown and shrunk with the pages
    // mapped (resize_slots), at most max_seg pages' worth
    full_tokens_ = max_seg * KV_PAGE_TOKENS;
    min_slot_cap_ = std::min(full_tokens_, kRingSlotsMin);
    slot_cap_ = min_slot_cap_;
    const int max_tokens = slot_cap_;
    // the page table starts empty: map_pages() fills it as the heads' slots grow
    page_h_.assign((size_t) H * max_seg, nullptr);
    mapped_.assign((size_t) H, 0);
    map_ent_.clear();
    std::vector<const uint16_t *> ptrs((size_t) H * max_seg, nullptr);
    std::vector<int32_t> seg_n((size_t) H * max_seg, KV_PAGE_TOKENS), seg_first((size_t) H * max_seg, 0);
    status st;
    for (int h = 0; h < H; h++)
        for (int i = 0; i < max_seg; i++) seg_first[(size_t) h * max_seg + i] = i * KV_PAGE_TOKENS;
    const std::vector<int32_t> pos((size_t) H * max_tokens, KV_RING_EMPTY);
    auto put = [&](device_buffer & b, const void * src, size_t bytes) { return (st = b.assign(src, bytes)).ok(); };
    if (!put(page_ptrs_, ptrs.data(), ptrs.size() * sizeof(void *)) || !put(seg_n_, seg_n.data(), seg_n.size() * 4) ||
        !put(seg_first_, seg_first.data(), seg_first.size() * 4) || !put(pos_, pos.data(), pos.size() * 4) || !put(geo_, geo.data(), geo.size() * 4))
        return st;
    v_.max_seg = max_seg;
    v_.max_tokens = max_tokens;
    v_.seg_page = page_ptrs_.as<const uint16_t *>();
    v_.seg_n = seg_n_.as<int32_t>();
    v_.seg_first = seg_first_.as<int32_t>();
    v_.pos = pos_.as<int32_t>();
    v_.ring_base = geo_.as<int32_t>() + H;
    // the step tables are staged per chunk; until then a view with nothing in it
    const std::vector<int32_t> zero((size_t) STEP_META * H, 0);
    if (!put(step_dev_, zero.data(), zero.size() * 4)) return st;
    v_.n_seg = step_dev_.as<int32_t>();
    v_.lo = step_dev_.as<int32_t>() + H;
    if (L.has_evict()) {  // statistics of every slot and quantized token (zeroed: whatever a slot held before is overwritten on append)
        if (!put(is_evict_, is_evict.data(), is_evict.size() * 4)) return st;
        if (!(st = st_f_.alloc((size_t) H * max_tokens * sizeof(int2))).ok() || !(st = st_f_.zero()).ok()) return st;
        v_.evict = is_evict_.as<int32_t>();
        if (n_coded_heads > 0 &&
            (!(st = st_c_.alloc((size_t) n_coded_heads * coded_cap_ * sizeof(int2))).ok() || !(st = st_c_.zero()).ok()))
            return st;
    }
    if (n_coded_heads == 0) return status::success();
    const bool kivi = codec.kivi_tokens > 0;
    // each side's family: rot (bits 2..4), q8 / q4 or f16 rows (plain, bits 8, 4 or 16; f16 beside a coded other
    // side), KIVI (plain, bits 2 or 4)
    auto bits_ok = [](bool plain, bool kv, int b) { return kv ? plain && (b == 2 || b == 4) : plain ? b == 8 || b == 4 || b == 16 : b >= 2 && b <= 4; };
    if (!bits_ok(codec.kplain, kivi, codec.kbits) || !bits_ok(codec.vplain, codec.vkivi, codec.vbits) || (kivi && (size_t) codec.kivi_tokens * D * 8 > 48 * 1024) ||
        D != DV || (D != 32 && D != 64 && D != 128))
        return status(ERR_UNSUPPORTED_QUANT, strfmt("cuda kv ring: coded heads need rot2/3/4, q8/q4 or kivi2/4 keys and values (bits %d/%d) and head_dim == "
                                                    "head_dim_v in {32, 64, 128} (%d/%d)", codec.kbits, codec.vbits, D, DV));
    // channels per group: the configured group for rot and KIVI, 32 for q8 / q4 blocks
    const int G = kv_codec_group(KV_CODEC_ROT2, D, codec.group);
    const int KG = codec.kplain && !kivi ? 32 : G, VG = codec.vplain && !codec.vkivi ? 32 : G;
    v_.kbits = codec.kbits;
    v_.vbits = codec.vbits;
    v_.kgroup = KG;
    v_.vgroup = VG;
    v_.kplain = codec.kplain ? 1 : 0;
    v_.vplain = codec.vplain ? 1 : 0;
    v_.vkivi = codec.vkivi ? 1 : 0;
    // rot: codes | f16 scale and u8 zero-point per group; q8 / q4: per 32 channels an f16 scale and the codes; KIVI:
    // the keys' code rows (their scales and mins per block of tokens in kmeta), values codes | f16 scales | f16 mins
    auto plain_bytes = [&](int bits) { return bits == 16 ? 2 * D : D / 32 * (2 + 32 * bits / 8); };
    v_.k_block_bytes = kivi ? D * codec.kbits / 8 : codec.kplain ? plain_bytes(codec.kbits) : D * codec.kbits / 8 + D / KG * 3;
    v_.v_block_bytes = codec.vkivi ? D * codec.vbits / 8 + D / VG * 4 : codec.vplain ? plain_bytes(codec.vbits) : D * codec.vbits / 8 + D / VG * 3;
    v_.kivi = kivi ? codec.kivi_tokens : 0;
    v_.pre_rope = codec.pre_rope && !codec.kplain ? 1 : 0;
    v_.rope_neox = codec.rope_neox ? 1 : 0;
    v_.n_rot = codec.n_rot;
    v_.freq_base = codec.freq_base;
    v_.freq_scale = codec.freq_scale;
    v_.theta_scale = std::pow(codec.freq_base, -2.0f / (float) codec.n_rot);  // rope_cache_ref's host expression
    kclip_ = codec.kclip;
    vclip_ = codec.vclip;
    const size_t nc = (size_t) n_coded_heads * coded_cap_;
    if (!(st = kblk_.alloc(nc * v_.k_block_bytes)).ok() || !(st = vblk_.alloc(nc * v_.v_block_bytes)).ok() || !(st = c_pos_.alloc(nc * 4)).ok()) return st;
    if (kivi) {
        if (!(st = kmeta_.alloc(nc / codec.kivi_tokens * 4 * D)).ok()) return st;
        v_.kmeta = kmeta_.as<uint8_t>();
    }
    if (!put(is_coded_, is_coded.data(), is_coded.size() * 4) || !put(c_first_, c_first.data(), c_first.size() * 4)) return st;
    coded_heads_.clear();
    for (int h = 0; h < H; h++)
        if (is_coded[(size_t) h]) coded_heads_.push_back(h);
    // grouped key rotation: aligned groups of rot_group heads that are all FULL and coded (kv_cache's rule)
    rot_g_h_.assign((size_t) H, 1);
    const int RG = codec.rot_group;
    bool grouped = false;
    if (RG > 1 && !codec.kplain && v_.pre_rope) {
        if (RG > RING_MAX_ROT_GROUP || (RG & (RG - 1)) || H % RG)
            return status(ERR_UNSUPPORTED_QUANT, strfmt("cuda kv ring: a key rotation group of %d heads (a power of two up to %d dividing the %d heads)", RG,
                                                        RING_MAX_ROT_GROUP, H));
        for (int g0 = 0; g0 < H; g0 += RG) {
            bool all = true;
            for (int s2 = 0; s2 < RG; s2++) all &= L.kind(g0 + s2) == KV_RING_CODED;
            if (!all) continue;
            for (int s2 = 0; s2 < RG; s2++) rot_g_h_[(size_t) (g0 + s2)] = RG;
            grouped = true;
        }
    }
    if (grouped) {
        if (!put(rot_g_, rot_g_h_.data(), rot_g_h_.size() * 4)) return st;
        v_.rot_g = rot_g_.as<int32_t>();
    }
    if (perm && !put(perm_, perm, (size_t) H * D * 4)) return st;
    if (codec.freq_factors && !put(ff_, codec.freq_factors, (size_t) codec.n_rot / 2 * 4)) return st;
    v_.is_coded = is_coded_.as<int32_t>();
    v_.kblk = kblk_.as<uint8_t>();
    v_.vblk = vblk_.as<uint8_t>();
    v_.c_first = c_first_.as<int32_t>();
    v_.c_pos = c_pos_.as<int32_t>();
    v_.n_coded = step_dev_.as<int32_t>() + 2 * H;
    v_.perm = perm ? perm_.as<int32_t>() : nullptr;
    v_.freq_factors = codec.freq_factors ? ff_.as<float>() : nullptr;
    (void) s;
    return status::success();
}

status kv_ring_device::stage(const ring_step & st_in, stream_t s) {
    const int H = n_head_kv_;
    n_enc_ = n_copy_ = n_clear_ = n_cgather_ = n_move_ = 0;
    for (const kv_ring_ops & o : st_in.ops) {
        if (o.cgather)
            for (size_t i = 0; i < o.ckeep.size(); i++) n_cgather_ += o.ckeep[i] != (int32_t) i;
        n_enc_ += (int) o.enc_slot.size();
        n_move_ += (int) o.move_src.size();
        n_copy_ += (int) o.copy_src.size();
        n_clear_ += (int) o.clear_slot.size();
    }
    if ((n_cgather_ > 0 && !st_c_.data()) || (n_move_ > 0 && !st_f_.data()))
        return status(ERR_INTERNAL, "cuda kv ring: gather ops for a layer without evicting heads");
    status st;
    if (v_.rot_g && n_enc_ > 0)  // grouped key rotation reads the group's keys from the slot it encodes: the heads flush alike
        for (int h = 0; h < H; h++) {
            const int rg = rot_g_h_[(size_t) h], h0 = h - h % rg;
            const kv_ring_ops & o = st_in.ops[(size_t) h], & o0 = st_in.ops[(size_t) h0];
            if (rg > 1 && h != h0 && (o.enc_slot != o0.enc_slot || o.enc_pos != o0.enc_pos || st_in.n_coded[(size_t) h] != st_in.n_coded[(size_t) h0]))
                return status(ERR_INTERNAL, strfmt("cuda kv ring: heads %d and %d rotate their keys together but quantize other tokens", h0, h));
        }
    if (n_enc_ > 0) {  // room for what the step quantizes: the coded arrays grow (to twice their size, at least)
        int32_t need = 0;
        for (int h = 0; h < H; h++) {
            const kv_ring_ops & o = st_in.ops[(size_t) h];
            const int32_t base = o.enc_base >= 0 ? o.enc_base : st_in.n_coded[(size_t) h];
            need = std::max(need, std::max(st_in.n_coded[(size_t) h], base + (int32_t) o.enc_slot.size()));
        }
        if (need > coded_cap_) {
            if (need > max_coded_cap_)
                return status(ERR_INTERNAL, strfmt("cuda kv ring: %d quantized tokens in a head of at most %d", need, max_coded_cap_));
            const int32_t kt = std::max(1, v_.kivi);
            const int32_t cap = std::min(max_coded_cap_, (std::max(need, 2 * coded_cap_) + kt - 1) / kt * kt);
            if (!(st = resize_coded(cap, s)).ok()) return st;
        }
    }
    n_map_ = (int) (map_ent_.size() / 3);
    const size_t need = (size_t) STEP_META * H + 3 * (size_t) n_cgather_ + 4 * (size_t) n_enc_ + 3 * (size_t) n_move_ + 3 * (size_t) n_copy_ +
                        3 * (size_t) n_clear_ + map_ent_.size();
    if (need > pinned_cap_) {  // the previous chunk's upload is done (the caller synchronized)
        if (pinned_) cudaFreeHost(pinned_);
        pinned_ = nullptr;
        pinned_cap_ = 0;
        const size_t cap = std::max<size_t>(need, 1024);
        CUDA_CHECK(cudaMallocHost((void **) &pinned_, cap * 4));
        pinned_cap_ = cap;
    }
    if (need * 4 > step_dev_.bytes()) {
        if (!(st = step_dev_.alloc(std::max<size_t>(need, 1024) * 4)).ok()) return st;
        v_.n_seg = step_dev_.as<int32_t>();
        v_.lo = step_dev_.as<int32_t>() + H;
        if (v_.kblk) v_.n_coded = step_dev_.as<int32_t>() + 2 * H;
    }
    int32_t * p = pinned_;
    v_.max_n_seg = 0;
    v_.max_n_coded = 0;
    for (int h = 0; h < H; h++) {
        p[h] = st_in.pages[(size_t) h];
        p[H + h] = st_in.lo[(size_t) h];
        p[2 * H + h] = st_in.n_coded[(size_t) h];
        p[3 * H + h] = st_in.rc_before[(size_t) h];
        v_.max_n_seg = std::max(v_.max_n_seg, p[h]);
        v_.max_n_coded = std::max(v_.max_n_coded, p[2 * H + h]);
    }
    int32_t * q = p + (size_t) STEP_META * H;
    for (int h = 0; h < H; h++) {  // the order of apply(): gather quantized, quantize, move f16, copy, clear
        const kv_ring_ops & o = st_in.ops[(size_t) h];
        if (!o.cgather) continue;
        for (size_t i = 0; i < o.ckeep.size(); i++) {
            if (o.ckeep[i] == (int32_t) i) continue;
            *q++ = h;
            *q++ = o.ckeep[i];
            *q++ = (int32_t) i;
        }
    }
    for (int h = 0; h < H; h++) {
        const kv_ring_ops & o = st_in.ops[(size_t) h];
        const int32_t base = o.enc_base >= 0 ? o.enc_base : st_in.n_coded[(size_t) h];
        for (size_t i = 0; i < o.enc_slot.size(); i++) {
            *q++ = h;
            *q++ = o.enc_slot[i];
            *q++ = o.enc_pos[i];
            *q++ = base + (int32_t) i;
        }
    }
    for (int h = 0; h < H; h++) {
        const kv_ring_ops & o = st_in.ops[(size_t) h];
        for (size_t i = 0; i < o.move_src.size(); i++) {
            *q++ = h;
            *q++ = o.move_src[i];
            *q++ = o.move_dst[i];
        }
    }
    for (int h = 0; h < H; h++) {
        const kv_ring_ops & o = st_in.ops[(size_t) h];
        for (size_t i = 0; i < o.copy_src.size(); i++) {
            *q++ = h;
            *q++ = o.copy_src[i];
            *q++ = o.copy_dst[i];
        }
    }
    for (int h = 0; h < H; h++)
        for (int32_t sl : st_in.ops[(size_t) h].clear_slot) {
            *q++ = h;
            *q++ = sl;
            *q++ = KV_RING_EMPTY;
        }
    if (n_enc_ > 0 && !v_.kblk) return status(ERR_INTERNAL, "cuda kv ring: quantize ops for a layer without coded heads");
    if (v_.kivi)  // KIVI keys are encoded per block of tokens: every head's entries start a block and fill whole ones
        for (int h = 0; h < H; h++) {
            const kv_ring_ops & o = st_in.ops[(size_t) h];
            const int32_t base = o.enc_base >= 0 ? o.enc_base : st_in.n_coded[(size_t) h];
            if (!o.enc_slot.empty() && (o.enc_slot.size() % (size_t) v_.kivi || base % v_.kivi))
                return status(ERR_INTERNAL, strfmt("cuda kv ring: %zu KIVI tokens to quantize from index %d are not whole blocks of %d", o.enc_slot.size(), base, v_.kivi));
        }
    const size_t map_at = (size_t) (q - pinned_);  // the page table's new entries (last: apply() walks the ops before them)
    std::copy(map_ent_.begin(), map_ent_.end(), q);
    map_ent_.clear();
    CUDA_CHECK(cudaMemcpyAsync(step_dev_.data(), pinned_, need * 4, cudaMemcpyHostToDevice, s));
    if (n_map_ > 0) {
        k_ring_map_pages<<<ceil_div(n_map_, 128), 128, 0, s>>>(step_dev_.as<int32_t>() + map_at, n_map_, page_ptrs_.as<const uint16_t *>());
        CUDA_CHECK_LAUNCH("kv ring page table");
    }
    return status::success();
}

status kv_ring_device::map_pages(const kv_ring_layer & L, stream_t s) {
    const int H = n_head_kv_, max_seg = v_.max_seg;
    int32_t need = 0;
    for (int h = 0; h < H; h++) need = std::max(need, std::min<int32_t>(L.pages_in_use(h), max_seg) * KV_PAGE_TOKENS);
    if (need > slot_cap_) {  // the slot arrays first: twice their size at least
        const status st = resize_slots(std::min(full_tokens_, std::max(need, 2 * slot_cap_)), s);
        if (!st.ok()) return st;
    }
    for (int h = 0; h < H; h++) {
        const int32_t want = std::min<int32_t>(L.pages_in_use(h), max_seg);
        for (int32_t & m = mapped_[(size_t) h]; m < want; m++) {
            void * pg = nullptr;
            const status st = pool_->alloc(&pg);
            if (!st.ok()) return st;
            const size_t i = (size_t) h * max_seg + (size_t) m;
            page_h_[i] = pg;
            map_ent_.push_back((int32_t) i);
            map_ent_.push_back((int32_t) (uint32_t) (uintptr_t) pg);
            map_ent_.push_back((int32_t) (uint32_t) ((uint64_t) (uintptr_t) pg >> 32));
        }
    }
    return status::success();
}

status kv_ring_device::resize_slots(int32_t cap, stream_t s) {
    if (cap == slot_cap_) return status::success();
    const size_t H = (size_t) n_head_kv_, oc = (size_t) slot_cap_, nc = (size_t) cap, keep = std::min(oc, nc);
    device_buffer p2, s2;
    status st;
    const std::vector<int32_t> empty(H * nc, KV_RING_EMPTY);
    if (!(st = p2.assign(empty.data(), empty.size() * 4)).ok()) return st;
    if (st_f_.data() && (!(st = s2.alloc(H * nc * sizeof(int2))).ok() || !(st = s2.zero()).ok())) return st;
    for (size_t h = 0; h < H; h++) {  // each head's first `keep` slots
        CUDA_CHECK(cudaMemcpyAsync(p2.as<int32_t>() + h * nc, pos_.as<int32_t>() + h * oc, keep * 4, cudaMemcpyDeviceToDevice, s));
        if (s2.data()) CUDA_CHECK(cudaMemcpyAsync(s2.as<int2>() + h * nc, st_f_.as<int2>() + h * oc, keep * sizeof(int2), cudaMemcpyDeviceToDevice, s));
    }
    CUDA_CHECK(cudaStreamSynchronize(s));  // the copies are done before the old arrays go
    pos_ = std::move(p2);
    if (s2.data()) st_f_ = std::move(s2);
    slot_cap_ = cap;
    v_.max_tokens = cap;
    v_.pos = pos_.as<int32_t>();
    if (v_.sc) v_.sc_c = v_.sc + (size_t) n_head_kv_ * sc_g_ * cap;  // (the scores scratch's layout follows the stride)
    return status::success();
}

status kv_ring_device::resize_coded(int32_t cap, stream_t s) {
    if (cap == coded_cap_ || n_coded_heads_ == 0) return status::success();
    const size_t nh = (size_t) n_coded_heads_, kb = (size_t) v_.k_block_bytes, vb = (size_t) v_.v_block_bytes, D = (size_t) v_.head_dim;
    const size_t kt = (size_t) std::max(1, v_.kivi), keep = (size_t) std::min(cap, coded_cap_), oc = (size_t) coded_cap_, nc = (size_t) cap;
    device_buffer k2, v2, p2, s2, m2;
    status st;
    if (!(st = k2.alloc(nh * nc * kb)).ok() || !(st = v2.alloc(nh * nc * vb)).ok() || !(st = p2.alloc(nh * nc * 4)).ok()) return st;
    if (st_c_.data() && !(st = s2.alloc(nh * nc * sizeof(int2))).ok()) return st;
    if (v_.kivi && !(st = m2.alloc(nh * nc / kt * 4 * D)).ok()) return st;
    // each head's first `keep` entries (of `per` bytes; KIVI's key metadata: per block of kt tokens)
    auto copy = [&](device_buffer & to, const device_buffer & from, size_t per, size_t div) {
        for (size_t i = 0; i < nh && keep > 0; i++)
            if (cudaMemcpyAsync(to.as<uint8_t>() + i * (nc / div) * per, from.as<uint8_t>() + i * (oc / div) * per, keep / div * per, cudaMemcpyDeviceToDevice, s) !=
                cudaSuccess)
                return false;
        return true;
    };
    if (!copy(k2, kblk_, kb, 1) || !copy(v2, vblk_, vb, 1) || !copy(p2, c_pos_, 4, 1) || (s2.data() && !copy(s2, st_c_, sizeof(int2), 1)) ||
        (m2.data() && !copy(m2, kmeta_, 4 * D, kt)))
        CUDA_CHECK(cudaGetLastError());
    std::vector<int32_t> c_first((size_t) n_head_kv_, 0);
    for (size_t i = 0; i < nh; i++) c_first[(size_t) coded_heads_[i]] = (int32_t) (i * nc);
    CUDA_CHECK(cudaMemcpyAsync(c_first_.data(), c_first.data(), c_first.size() * 4, cudaMemcpyHostToDevice, s));
    CUDA_CHECK(cudaStreamSynchronize(s));  // the copies are done before the old arrays go (and `c_first` out of scope)
    kblk_ = std::move(k2);
    vblk_ = std::move(v2);
    c_pos_ = std::move(p2);
    if (s2.data()) st_c_ = std::move(s2);
    if (m2.data()) kmeta_ = std::move(m2);
    c_first_h_ = c_first;
    coded_cap_ = cap;
    v_.kblk = kblk_.as<uint8_t>();
    v_.vblk = vblk_.as<uint8_t>();
    v_.c_pos = c_pos_.as<int32_t>();
    if (v_.kivi) v_.kmeta = kmeta_.as<uint8_t>();
    return status::success();
}

status kv_ring_device::shrink(const kv_ring_layer & L, stream_t s) {
    int32_t mapped = 0;  // the slot arrays: half, once every head's pages fill a quarter or less
    for (int32_t m : mapped_) mapped = std::max(mapped, m * KV_PAGE_TOKENS);
    if (slot_cap_ > min_slot_cap_ && (int64_t) mapped * 4 <= slot_cap_) {
        const status st = resize_slots(std::max(min_slot_cap_, 2 * mapped), s);
        if (!st.ok() && st.code != ERR_OOM_DEVICE) return st;  // (no room for the smaller copy: the larger arrays stay)
    }
    if (n_coded_heads_ == 0 || coded_cap_ <= min_coded_cap_) return status::success();
    int32_t held = 0;
    for (int h : coded_heads_) held = std::max(held, L.n_coded(h));
    if ((int64_t) held * 4 > coded_cap_) return status::success();
    const int32_t kt = std::max(1, v_.kivi);
    const int32_t cap = std::max(min_coded_cap_, (2 * held + kt - 1) / kt * kt);
    const status st = resize_coded(cap, s);
    return st.code == ERR_OOM_DEVICE ? status::success() : st;  // (no room for the smaller copy: the larger arrays stay)
}

void kv_ring_device::release_pages(const kv_ring_layer & L) {
    const int H = n_head_kv_, max_seg = v_.max_seg;
    bool dropped = false;
    for (int h = 0; h < H; h++)
        for (int32_t & m = mapped_[(size_t) h]; m > L.pages_in_use(h); m--) {
            void *& pg = page_h_[(size_t) h * max_seg + (size_t) (m - 1)];
            pool_->free(pg);  // (the device's table keeps the stale pointer: nothing reads a segment past the head's pages)
            pg = nullptr;
            dropped = true;
        }
    if (!dropped || map_ent_.empty()) return;
    std::vector<int32_t> kept;  // entries not uploaded yet whose page went back: dropped with it
    for (size_t e = 0; e < map_ent_.size(); e += 3)
        if (page_h_[(size_t) map_ent_[e]] != nullptr) kept.insert(kept.end(), map_ent_.begin() + (ptrdiff_t) e, map_ent_.begin() + (ptrdiff_t) e + 3);
    map_ent_.swap(kept);
}

status kv_ring_device::append(const float * k, const float * v, int32_t c0, int T, stream_t s) {
    if (T <= 0) return status::success();
    k_ring_append<<<dim3(T, n_head_kv_), 128, 0, s>>>(v_, geo_.as<int32_t>(), step_dev_.as<int32_t>() + 3 * n_head_kv_, pos_.as<int32_t>(), k, v, c0,
                                                      st_f_.as<int2>(), append_last_);
    CUDA_CHECK_LAUNCH("kv ring append");
    return status::success();
}

// Scratch of a gather of n entries with rows of row_bytes (rows, then statistics, then positions).
static status gather_scratch(device_buffer & tmp, int n, size_t row_bytes, gather_tmp * out) {
    const size_t rows = (size_t) n * gather_row_bytes(row_bytes), need = rows + (size_t) n * (sizeof(int2) + 4);
    if (tmp.bytes() < need) {
        const status st = tmp.alloc(need);  // (cudaFree waits for the kernels still using the old one)
        if (!st.ok()) return st;
    }
    out->row = tmp.as<uint8_t>();
    out->st = (int2 *) (out->row + rows);
    out->pos = (int32_t *) (out->st + n);
    return status::success();
}

status kv_ring_device::apply(stream_t s, device_buffer & tmp) {
    const int32_t * ent = step_dev_.as<int32_t>() + (size_t) STEP_META * n_head_kv_;
    status st;
    if (n_cgather_ > 0) {
        gather_tmp gt;
        if (!(st = gather_scratch(tmp, n_cgather_, (size_t) (v_.k_block_bytes + v_.v_block_bytes), &gt)).ok()) return st;
        for (int phase = 0; phase < 2; phase++) {
            k_ring_cgather<<<n_cgather_, 128, 0, s>>>(v_, ent, kblk_.as<uint8_t>(), vblk_.as<uint8_t>(), c_pos_.as<int32_t>(), st_c_.as<int2>(), gt, phase);
            CUDA_CHECK_LAUNCH("kv ring gather (quantized)");
        }
    }
    ent += 3 * (size_t) n_cgather_;
    if (n_enc_ > 0) {
        uint8_t * kb = kblk_.as<uint8_t>(), * vb = vblk_.as<uint8_t>();
        int32_t * cp = c_pos_.as<int32_t>();
        const int2 * sf = st_f_.as<int2>();
        int2 * sc = st_c_.as<int2>();
        if (v_.kivi) {  // keys per block of kt tokens (stage() checked the entries come in whole blocks)
            const int kt = v_.kivi, nb = n_enc_ / kt;
            const size_t smem = (size_t) kt * v_.head_dim * 8;
            uint8_t * km = kmeta_.as<uint8_t>();
            switch (v_.head_dim) {
            case 32: k_ring_encode_kivi_keys<32><<<nb, 32, smem, s>>>(v_, ent, kt, kb, km); break;
            case 64: k_ring_encode_kivi_keys<64><<<nb, 64, smem, s>>>(v_, ent, kt, kb, km); break;
            default: k_ring_encode_kivi_keys<128><<<nb, 128, smem, s>>>(v_, ent, kt, kb, km); break;
            }
            CUDA_CHECK_LAUNCH("kv ring encode (KIVI keys)");
        }
        switch (v_.head_dim) {
        case 32: k_ring_encode<32><<<n_enc_, 32, 0, s>>>(v_, ent, kb, vb, cp, kclip_, vclip_, sf, sc); break;
        case 64: k_ring_encode<64><<<n_enc_, 64, 0, s>>>(v_, ent, kb, vb, cp, kclip_, vclip_, sf, sc); break;
        default: k_ring_encode<128><<<n_enc_, 128, 0, s>>>(v_, ent, kb, vb, cp, kclip_, vclip_, sf, sc); break;
        }
        CUDA_CHECK_LAUNCH("kv ring encode");
    }
    ent += 4 * (size_t) n_enc_;
    if (n_move_ > 0) {
        gather_tmp gt;
        if (!(st = gather_scratch(tmp, n_move_, (size_t) (v_.head_dim + v_.head_dim_v) * 2, &gt)).ok()) return st;
        for (int phase = 0; phase < 2; phase++) {
            k_ring_move<<<n_move_, 128, 0, s>>>(v_, ent, pos_.as<int32_t>(), st_f_.as<int2>(), gt, phase);
            CUDA_CHECK_LAUNCH("kv ring gather (f16)");
        }
    }
    ent += 3 * (size_t) n_move_;
    if (n_copy_ > 0) {
        k_ring_copy<<<n_copy_, 128, 0, s>>>(v_, ent, pos_.as<int32_t>());
        CUDA_CHECK_LAUNCH("kv ring copy");
    }
    ent += 3 * (size_t) n_copy_;
    if (n_clear_ > 0) {
        k_ring_set_pos<<<ceil_div(n_clear_, 128), 128, 0, s>>>(ent, n_clear_, v_.max_tokens, pos_.as<int32_t>());
        CUDA_CHECK_LAUNCH("kv ring clear");
    }
    return status::success();
}

status kv_ring_device::set_positions(const std::vector<kv_ring_layer::slot_entry> & e, stream_t s) {
    if (e.empty()) return status::success();
    std::vector<int32_t> flat;
    flat.reserve(e.size() * 3);
    for (const auto & x : e) {
        flat.push_back(x.head);
        flat.push_back(x.slot);
        flat.push_back(x.pos);
    }
    device_buffer buf;
    status st;
    if (!(st = buf.alloc(flat.size() * 4)).ok()) return st;
    CUDA_CHECK(cudaMemcpyAsync(buf.data(), flat.data(), flat.size() * 4, cudaMemcpyHostToDevice, s));
    k_ring_set_pos<<<ceil_div((int64_t) e.size(), 128), 128, 0, s>>>(buf.as<int32_t>(), (int) e.size(), v_.max_tokens, pos_.as<int32_t>());
    CUDA_CHECK_LAUNCH("kv ring set positions");
    CUDA_CHECK(cudaStreamSynchronize(s));  // `buf` and `flat` go out of scope
    return status::success();
}

status kv_ring_device::top_abs(const float * x, int T, int n_embd, int k, std::vector<float> & vals, std::vector<int32_t> & idx, stream_t s) {
    const size_t n = (size_t) T * k;
    status st;
    if (tops_.bytes() < n * 8 && !(st = tops_.alloc(n * 8)).ok()) return st;
    const size_t smem = (size_t) n_embd * 4;
    if (smem + 1024 > 48 * 1024) CUDA_CHECK(cudaFuncSetAttribute(k_top_abs, cudaFuncAttributeMaxDynamicSharedMemorySize, (int) smem));
    float * dv = tops_.as<float>();
    int32_t * di = (int32_t *) (dv + n);
    k_top_abs<<<T, 256, smem, s>>>(x, n_embd, k, dv, di);
    CUDA_CHECK_LAUNCH("top |x|");
    vals.resize(n);
    idx.resize(n);
    CUDA_CHECK(cudaMemcpyAsync(vals.data(), dv, n * 4, cudaMemcpyDeviceToHost, s));
    CUDA_CHECK(cudaMemcpyAsync(idx.data(), di, n * 4, cudaMemcpyDeviceToHost, s));
    CUDA_CHECK(cudaStreamSynchronize(s));
    return status::success();
}

void kv_ring_device::set_scores(float * sc, float * ml, int G) {
    if (!sc || !has_evict()) {
        v_.sc = v_.sc_c = v_.ml = nullptr;
        return;
    }
    v_.sc = sc;
    v_.sc_c = sc + (size_t) n_head_kv_ * G * v_.max_tokens;
    sc_g_ = G;
    v_.ml = ml;
}

size_t kv_ring_device::scores_floats(int G) const {
    if (!has_evict()) return 0;
    return (size_t) G * ((size_t) n_head_kv_ * full_tokens_ + (size_t) n_coded_heads_ * max_coded_cap_);
}

status kv_ring_device::observe(kv_policy_kind kind, int32_t t, float alpha, int G, bool layer_mean, int n_head, stream_t s) {
    if (!has_evict() || !v_.sc) return status(ERR_INTERNAL, "cuda kv ring: observe without evicting heads or scores");
    const int per_head = v_.max_tokens + coded_cap_;
    const dim3 grid(std::min<unsigned>(ceil_div(per_head, 256), 64u), (unsigned) n_head_kv_);
    k_ring_observe<<<grid, 256, 0, s>>>(v_, G, (int) kind, t, alpha, layer_mean ? 1 : 0, 1.0f / (float) n_head, st_f_.as<int2>(), st_c_.as<int2>());
    CUDA_CHECK_LAUNCH("kv ring observe");
    return status::success();
}

status kv_ring_device::evict_one(const ring_evict_one_args & a, int32_t * out, stream_t s) {
    if (!has_evict()) return status(ERR_INTERNAL, "cuda kv ring: a single eviction in a layer without evicting heads");
    if (a.n <= 0) return status::success();
    if (a.n > RING_EVICT_MAX_HEADS || a.n_sinks > RING_EVICT_MAX_SINKS) return status(ERR_INTERNAL, "cuda kv ring: too many heads or sinks for one single-eviction launch");
    k_ring_evict_one<<<a.n, 256, 0, s>>>(v_, a, pos_.as<int32_t>(), st_f_.as<int2>(), kblk_.as<uint8_t>(), vblk_.as<uint8_t>(), c_pos_.as<int32_t>(),
                                         st_c_.as<int2>(), out);
    CUDA_CHECK_LAUNCH("kv ring single eviction");
    return status::success();
}

status kv_ring_device::record_query(const float * q, int row, int w, int32_t pos, stream_t s) {
    if (w <= 0 || row <= 0) return status::success();
    if (!qring_.data() || qw_ != w || qrow_ != row) {
        status st = qring_.alloc((size_t) w * row * 4);
        if (!st.ok() || !(st = qring_.zero()).ok()) return st;
        qw_ = w;
        qrow_ = row;
        qcount_ = 0;
        qheld_ = 0;
        qpos_.assign((size_t) w, 0);
    }
    CUDA_CHECK(cudaMemcpyAsync(qring_.as<float>() + (size_t) (qcount_ % w) * row, q, (size_t) row * 4, cudaMemcpyDeviceToDevice, s));
    qpos_[(size_t) (qcount_ % w)] = pos;
    qcount_++;
    qheld_ = std::min(qheld_ + 1, qw_);
    return status::success();
}

void kv_ring_device::drop_queries_from(int32_t pos) {
    while (qheld_ > 0 && qpos_[(size_t) ((qcount_ - 1) % qw_)] >= pos) {
        qcount_--;
        qheld_--;
    }
}

status kv_ring_device::score_qk(int h, int n, bool rkv, int G, float scale, device_buffer & tmp, qk_partials & out, stream_t s) {
    const int D = v_.head_dim, nq = qheld_;
    out.imp.assign((size_t) n, 0.0f);
    out.rowsum.assign(rkv ? (size_t) n : 0, 0.0);
    out.excl_idx.assign(rkv ? (size_t) n : 0, 0);
    out.excl_val.assign(rkv ? (size_t) n : 0, 0.0f);
    if (n <= 0) return status::success();
    const int rows = nq > 0 ? (rkv ? nq : nq * G) : 0;
    const int m = rkv ? std::max(0, n - std::min(nq, n)) : n;
    // scratch: P [rows][n], imp [n]; rkv: kn [n][D], rowsum [n] (double), excl [n] + [n]
    const size_t need = (size_t) rows * n * 4 + (size_t) n * 4 + (rkv ? (size_t) n * D * 4 + (size_t) n * 16 : 0) + 64;
    if (tmp.bytes() < need) {
        const status st = tmp.alloc(need);
        if (!st.ok()) return st;
    }
    uint8_t * base = tmp.as<uint8_t>();
    float * P = (float *) base;
    float * imp = P + (size_t) rows * n;
    double * rowsum = (double *) (((uintptr_t) (imp + n) + 7) & ~(uintptr_t) 7);
    int32_t * eidx = (int32_t *) (rowsum + n);
    float * eval = (float *) (eidx + n);
    float * kn = eval + n;
    if (rows > 0) {
        const int first = (int) ((qcount_ - nq) % qw_);
        k_qk_attn<<<rows, 256, (size_t) (rkv ? G : 1) * D * 4, s>>>(v_, h, qring_.as<float>(), first, qw_, qrow_ / D, G, rkv ? 1 : 0, m, n, scale,
                                                                   (float) (rkv ? nq : rows), P);
        CUDA_CHECK_LAUNCH("qk attention");
        k_qk_sum<<<ceil_div(n, 256), 256, 0, s>>>(P, rows, n, imp);
        CUDA_CHECK_LAUNCH("qk sum");
        CUDA_CHECK(cudaMemcpyAsync(out.imp.data(), imp, (size_t) n * 4, cudaMemcpyDeviceToHost, s));
    }
    if (!rkv) return status::success();
    k_qk_key_norm<<<ceil_div(n, 128), 128, 0, s>>>(v_, h, n, kn);
    CUDA_CHECK_LAUNCH("qk key norms");
    k_qk_redundancy<<<n, 256, (size_t) D * 4, s>>>(kn, n, D, rowsum, eidx, eval);
    CUDA_CHECK_LAUNCH("qk redundancy");
    CUDA_CHECK(cudaMemcpyAsync(out.rowsum.data(), rowsum, (size_t) n * 8, cudaMemcpyDeviceToHost, s));
    CUDA_CHECK(cudaMemcpyAsync(out.excl_idx.data(), eidx, (size_t) n * 4, cudaMemcpyDeviceToHost, s));
    CUDA_CHECK(cudaMemcpyAsync(out.excl_val.data(), eval, (size_t) n * 4, cudaMemcpyDeviceToHost, s));
    return status::success();
}

status kv_ring_device::download_keys(int h, int n, std::vector<uint16_t> & keys, stream_t s) {
    keys.assign((size_t) n * v_.head_dim, 0);
    if (n <= 0) return status::success();
    device_buffer buf;
    status st = buf.alloc(keys.size() * 2);
    if (!st.ok()) return st;
    k_ring_keys_out<<<n, 128, 0, s>>>(v_, h, n, buf.as<uint16_t>());
    CUDA_CHECK_LAUNCH("kv ring keys out");
    CUDA_CHECK(cudaMemcpyAsync(keys.data(), buf.data(), keys.size() * 2, cudaMemcpyDeviceToHost, s));
    CUDA_CHECK(cudaStreamSynchronize(s));  // `buf` goes out of scope
    return status::success();
}

status kv_ring_device::download_coded(int h, int32_t n, std::vector<uint8_t> & k, std::vector<uint8_t> & v, stream_t s) {
    if (!kblk_.data() || n < 0 || n > coded_cap_) return status(ERR_INVALID_ARG, strfmt("cuda kv ring: %d quantized tokens of head %d (capacity %d)", n, h, coded_cap_));
    const size_t kb = (size_t) v_.k_block_bytes, vb = (size_t) v_.v_block_bytes, c0 = (size_t) c_first_h_[(size_t) h];
    k.resize((size_t) n * kb);
    v.resize((size_t) n * vb);
    if (n > 0) {
        CUDA_CHECK(cudaMemcpyAsync(k.data(), kblk_.as<uint8_t>() + c0 * kb, k.size(), cudaMemcpyDeviceToHost, s));
        CUDA_CHECK(cudaMemcpyAsync(v.data(), vblk_.as<uint8_t>() + c0 * vb, v.size(), cudaMemcpyDeviceToHost, s));
    }
    CUDA_CHECK(cudaStreamSynchronize(s));
    return status::success();
}

status kv_ring_device::download_positions(int h, int32_t n_coded, int32_t n_slots, int32_t * c_pos, int32_t * pos, stream_t s) {
    if (n_coded > 0 && c_pos_.data())
        CUDA_CHECK(cudaMemcpyAsync(c_pos, c_pos_.as<int32_t>() + c_first_h_[(size_t) h], (size_t) n_coded * 4, cudaMemcpyDeviceToHost, s));
    if (n_slots > 0) CUDA_CHECK(cudaMemcpyAsync(pos, pos_.as<int32_t>() + (size_t) h * v_.max_tokens, (size_t) n_slots * 4, cudaMemcpyDeviceToHost, s));
    return status::success();
}

status kv_ring_device::download_stats(int h, int32_t n_coded, int32_t n_f16, int32_t * stats_c, int32_t * stats_f, stream_t s) {
    if (!has_evict()) return status(ERR_INTERNAL, "cuda kv ring: statistics of a layer without evicting heads");
    if (n_coded > 0)
        CUDA_CHECK(cudaMemcpyAsync(stats_c, st_c_.as<int2>() + c_first_h_[(size_t) h], (size_t) n_coded * sizeof(int2), cudaMemcpyDeviceToHost, s));
    if (n_f16 > 0)
        CUDA_CHECK(cudaMemcpyAsync(stats_f, st_f_.as<int2>() + (size_t) h * v_.max_tokens, (size_t) n_f16 * sizeof(int2), cudaMemcpyDeviceToHost, s));
    return status::success();
}

status kv_ring_device::copy_from(const kv_ring_device & src, const kv_ring_layer & L, const std::vector<char> & heads, const std::vector<char> & codes,
                                 bool wide, stream_t s) {
    const int H = n_head_kv_, max_seg = v_.max_seg;
    if (&src == this) return status::success();
    if (src.n_head_kv_ != H || src.v_.max_seg != max_seg || src.page_bytes() != page_bytes() || src.has_evict() != has_evict() || (int) heads.size() != H ||
        (int) codes.size() != H)
        return status(ERR_INTERNAL, "cuda kv ring: a copy between layers of another geometry");
    for (int h = 0; h < H; h++)
        if (heads[(size_t) h] && codes[(size_t) h] && L.coded(h) && (!holds_codes(h) || !src.holds_codes(h)))
            return status(ERR_INTERNAL, strfmt("cuda kv ring: a copy of head %d's quantized tokens into or from a layer without arrays for them", h));
    status st;
    // 1. everything that allocates, before anything held changes: the arrays grow to hold the copied heads
    // (a resize keeps what they hold), the pages the copied heads lack come from the pool, the query ring
    int32_t need_slots = 0, need_coded = 0;
    for (int h = 0; h < H; h++) {
        if (!heads[(size_t) h]) continue;
        need_slots = std::max(need_slots, src.mapped_[(size_t) h] * KV_PAGE_TOKENS);
        if (codes[(size_t) h] && L.coded(h)) need_coded = std::max(need_coded, L.n_coded(h));
    }
    if (need_slots > slot_cap_ && !(st = resize_slots(std::min(full_tokens_, std::max(need_slots, 2 * slot_cap_)), s)).ok()) return st;
    if (need_coded > coded_cap_) {
        const int32_t kt = std::max(1, v_.kivi);
        if (!(st = resize_coded(std::min(max_coded_cap_, (std::max(need_coded, 2 * coded_cap_) + kt - 1) / kt * kt), s)).ok()) return st;
    }
    std::vector<void *> fresh;
    auto give_back = [&]() { for (void * pg : fresh) pool_->free(pg); };
    for (int h = 0; h < H; h++)
        for (int32_t m = mapped_[(size_t) h]; heads[(size_t) h] && m < src.mapped_[(size_t) h]; m++) {
            void * pg = nullptr;
            if (!(st = pool_->alloc(&pg)).ok()) { give_back(); return st; }
            fresh.push_back(pg);
        }
    device_buffer q2, pairs;
    if (wide && src.qring_.bytes() > qring_.bytes() && !(st = q2.alloc(src.qring_.bytes())).ok()) { give_back(); return st; }
    size_t n_pages = 0;  // the page pairs' table (source, destination per page)
    for (int h = 0; h < H; h++) n_pages += heads[(size_t) h] ? (size_t) src.mapped_[(size_t) h] : 0;
    if (n_pages > 0 && !(st = pairs.alloc(n_pages * 2 * sizeof(void *))).ok()) { give_back(); return st; }
    // 2. the copy: pages (a launch over every page of the copied heads), then positions, statistics, codes
    std::vector<const void *> pp;
    size_t next = 0;
    for (int h = 0; h < H; h++) {
        if (!heads[(size_t) h]) continue;
        int32_t & m = mapped_[(size_t) h];
        const int32_t want = src.mapped_[(size_t) h];
        for (; m > want; m--) {
            void *& pg = page_h_[(size_t) h * max_seg + (size_t) (m - 1)];
            pool_->free(pg);
            pg = nullptr;
        }
        for (; m < want; m++) page_h_[(size_t) h * max_seg + (size_t) m] = fresh[next++];
        for (int32_t i = 0; i < want; i++) {
            pp.push_back(src.page_h_[(size_t) h * max_seg + (size_t) i]);
            pp.push_back(page_h_[(size_t) h * max_seg + (size_t) i]);
        }
    }
    map_ent_.clear();  // the whole table goes up below
    CUDA_CHECK(cudaMemcpyAsync(page_ptrs_.data(), page_h_.data(), page_h_.size() * sizeof(void *), cudaMemcpyHostToDevice, s));
    if (!pp.empty()) {
        if (!(st = pairs.upload(pp.data(), pp.size() * sizeof(void *))).ok()) return st;  // (a CUDA error: the device is lost anyway)
        k_ring_copy_pages<<<(unsigned) (pp.size() / 2), 256, 0, s>>>(pairs.as<const uint4 *>(), page_bytes() / sizeof(uint4));
        CUDA_CHECK_LAUNCH("kv ring page copy");
    }
    const size_t rows = (size_t) std::min(slot_cap_, src.slot_cap_);
    for (int h = 0; h < H; h++) {
        if (!heads[(size_t) h]) continue;
        CUDA_CHECK(cudaMemcpyAsync(pos_.as<int32_t>() + (size_t) h * slot_cap_, src.pos_.as<int32_t>() + (size_t) h * src.slot_cap_, rows * 4,
                                   cudaMemcpyDeviceToDevice, s));
        if (rows < (size_t) slot_cap_) {  // (slots past the source's arrays hold nothing there)
            k_ring_fill<<<1, 256, 0, s>>>(pos_.as<int32_t>() + (size_t) h * slot_cap_ + rows, (size_t) slot_cap_ - rows, KV_RING_EMPTY);
            CUDA_CHECK_LAUNCH("kv ring positions");
        }
        if (has_evict())
            CUDA_CHECK(cudaMemcpyAsync(st_f_.as<int2>() + (size_t) h * slot_cap_, src.st_f_.as<int2>() + (size_t) h * src.slot_cap_, rows * sizeof(int2),
                                       cudaMemcpyDeviceToDevice, s));
        if (!codes[(size_t) h] || !L.coded(h) || L.n_coded(h) == 0) continue;
        const size_t n = (size_t) L.n_coded(h), d = (size_t) c_first_h_[(size_t) h], o = (size_t) src.c_first_h_[(size_t) h];
        const size_t kb = (size_t) v_.k_block_bytes, vb = (size_t) v_.v_block_bytes;
        CUDA_CHECK(cudaMemcpyAsync(kblk_.as<uint8_t>() + d * kb, src.kblk_.as<uint8_t>() + o * kb, n * kb, cudaMemcpyDeviceToDevice, s));
        CUDA_CHECK(cudaMemcpyAsync(vblk_.as<uint8_t>() + d * vb, src.vblk_.as<uint8_t>() + o * vb, n * vb, cudaMemcpyDeviceToDevice, s));
        CUDA_CHECK(cudaMemcpyAsync(c_pos_.as<int32_t>() + d, src.c_pos_.as<int32_t>() + o, n * 4, cudaMemcpyDeviceToDevice, s));
        if (st_c_.data()) CUDA_CHECK(cudaMemcpyAsync(st_c_.as<int2>() + d, src.st_c_.as<int2>() + o, n * sizeof(int2), cudaMemcpyDeviceToDevice, s));
        if (v_.kivi) {  // the key blocks' scales and mins (every head's first index starts a block)
            const size_t kt = (size_t) v_.kivi, mb = (size_t) 4 * v_.head_dim;
            CUDA_CHECK(cudaMemcpyAsync(kmeta_.as<uint8_t>() + d / kt * mb, src.kmeta_.as<uint8_t>() + o / kt * mb, (n + kt - 1) / kt * mb,
                                       cudaMemcpyDeviceToDevice, s));
        }
    }
    if (wide) {
        if (q2.data()) qring_ = std::move(q2);  // (the old ring, if any, is not in use: the stream is between steps)
        if (src.qring_.bytes() > 0) CUDA_CHECK(cudaMemcpyAsync(qring_.data(), src.qring_.data(), src.qring_.bytes(), cudaMemcpyDeviceToDevice, s));
        qcount_ = src.qcount_;
        qw_ = src.qw_;
        qrow_ = src.qrow_;
        qheld_ = src.qheld_;
        qpos_ = src.qpos_;
        append_last_ = src.append_last_;
    }
    CUDA_CHECK(cudaStreamSynchronize(s));  // the page pairs and the host table are read before they go
    return status::success();
}

// A state section's layer geometry: what the data's sizes follow from besides the books (the quantized tokens'
// sizes only where it holds some: a layer without coded heads has none set).
kv_ring_device::ring_geometry kv_ring_device::state_geometry(const std::vector<int32_t> & coded) const {
    const bool c = !coded.empty();
    return ring_geometry{(uint64_t) page_bytes(), c ? v_.k_block_bytes : 0, c ? v_.v_block_bytes : 0, c ? v_.kivi : 0, v_.head_dim};
}

std::vector<int32_t> kv_ring_device::state_coded_heads(const std::vector<char> * codes) const {
    std::vector<int32_t> out;
    for (int h : coded_heads_)
        if (!codes || (*codes)[(size_t) h]) out.push_back(h);
    return out;
}

status kv_ring_device::save_data(const kv_ring_layer & L, state_writer & w, stream_t s, const std::vector<char> * heads, const std::vector<char> * codes) const {
    const int H = n_head_kv_, max_seg = v_.max_seg;
    const size_t pb = page_bytes(), kb = (size_t) v_.k_block_bytes, vb = (size_t) v_.v_block_bytes, kt = (size_t) std::max(1, v_.kivi),
                 mb = (size_t) 4 * v_.head_dim;
    const std::vector<int32_t> ch = state_coded_heads(codes);
    w.pod(state_geometry(ch));
    w.vec(ch);
    blob b;
    for (int h = 0; h < H; h++) {
        if (heads && !(*heads)[(size_t) h]) continue;
        const int32_t np = std::min(L.pages_in_use(h), max_seg);
        if (np > mapped_[(size_t) h]) return status(ERR_INTERNAL, strfmt("cuda kv ring: head %d uses %d pages and has %d", h, np, mapped_[(size_t) h]));
        const size_t p0 = b.pages.size();
        b.pages.resize(p0 + (size_t) np * pb);
        for (int32_t i = 0; i < np; i++)
            CUDA_CHECK(cudaMemcpyAsync(b.pages.data() + p0 + (size_t) i * pb, page_h_[(size_t) h * max_seg + (size_t) i], pb, cudaMemcpyDeviceToHost, s));
        const bool evict = has_evict() && L.kind(h) == KV_RING_EVICT;
        if (evict && L.rc(h) > 0) {
            const size_t f0 = b.stats_f.size();
            b.stats_f.resize(f0 + 2 * (size_t) L.rc(h));
            CUDA_CHECK(cudaMemcpyAsync(b.stats_f.data() + f0, st_f_.as<int2>() + (size_t) h * slot_cap_, (size_t) L.rc(h) * sizeof(int2), cudaMemcpyDeviceToHost, s));
        }
        const bool coded = std::find(ch.begin(), ch.end(), h) != ch.end();
        const size_t n = coded ? (size_t) L.n_coded(h) : 0, c = n ? (size_t) c_first_h_[(size_t) h] : 0;
        if (n == 0) continue;
        const size_t k0 = b.kblk.size(), v0 = b.vblk.size();
        b.kblk.resize(k0 + n * kb);
        b.vblk.resize(v0 + n * vb);
        CUDA_CHECK(cudaMemcpyAsync(b.kblk.data() + k0, kblk_.as<uint8_t>() + c * kb, n * kb, cudaMemcpyDeviceToHost, s));
        CUDA_CHECK(cudaMemcpyAsync(b.vblk.data() + v0, vblk_.as<uint8_t>() + c * vb, n * vb, cudaMemcpyDeviceToHost, s));
        if (evict && st_c_.data()) {
            const size_t c0 = b.stats_c.size();
            b.stats_c.resize(c0 + 2 * n);
            CUDA_CHECK(cudaMemcpyAsync(b.stats_c.data() + c0, st_c_.as<int2>() + c, n * sizeof(int2), cudaMemcpyDeviceToHost, s));
        }
        if (v_.kivi) {
            const size_t m0 = b.kmeta.size(), nm = (n + kt - 1) / kt * mb;
            b.kmeta.resize(m0 + nm);
            CUDA_CHECK(cudaMemcpyAsync(b.kmeta.data() + m0, kmeta_.as<uint8_t>() + c / kt * mb, nm, cudaMemcpyDeviceToHost, s));
        }
    }
    b.qring.resize((size_t) qw_ * qrow_);
    if (!b.qring.empty()) CUDA_CHECK(cudaMemcpyAsync(b.qring.data(), qring_.data(), b.qring.size() * 4, cudaMemcpyDeviceToHost, s));
    CUDA_CHECK(cudaStreamSynchronize(s));
    // of the pages, the slots attention may still read: per head and slot (ascending) its key, then its value
    const size_t D = (size_t) v_.head_dim, DV = (size_t) v_.head_dim_v;
    std::vector<uint16_t> row(D + DV);
    size_t at = 0;  // the head's first page in b.pages
    for (int h = 0; h < H; h++) {
        if (heads && !(*heads)[(size_t) h]) continue;
        const int32_t np = std::min(L.pages_in_use(h), max_seg);
        for (int32_t sl = 0; sl < np * KV_PAGE_TOKENS; sl++) {
            if (!L.in_view(h, sl)) continue;
            const uint16_t * pg = (const uint16_t *) (b.pages.data() + at + (size_t) (sl / KV_PAGE_TOKENS) * pb);
            const size_t j = (size_t) (sl % KV_PAGE_TOKENS);
            for (size_t d = 0; d < D; d++) row[d] = pg[key_at((int) j, (int) d, (int) D)];
            std::memcpy(row.data() + D, pg + value_at((int) j, 0, (int) D, (int) DV), DV * 2);
            w.bytes(row.data(), row.size() * 2);
        }
        at += (size_t) np * pb;
    }
    w.bytes(b.stats_f.data(), b.stats_f.size() * 4);
    w.bytes(b.kblk.data(), b.kblk.size());
    w.bytes(b.vblk.data(), b.vblk.size());
    w.bytes(b.stats_c.data(), b.stats_c.size() * 4);
    w.bytes(b.kmeta.data(), b.kmeta.size());
    w.pod(qcount_);
    w.pod((int32_t) qw_);
    w.pod((int32_t) qrow_);
    w.pod((int32_t) qheld_);
    w.vec(qpos_);
    w.bytes(b.qring.data(), b.qring.size() * 4);
    return status::success();
}

bool kv_ring_device::read_data(state_reader & r, const kv_ring_layer & L, int32_t n, int qrow, int qw, blob & out, const std::vector<char> * heads,
                               const std::vector<char> * codes) const {
    const int H = n_head_kv_, max_seg = v_.max_seg;
    ring_geometry g{};
    std::vector<int32_t> ch;
    const std::vector<int32_t> want_ch = state_coded_heads(codes);
    if (!r.pod(g) || !r.vec(ch, (size_t) H, "coded heads")) return false;
    const ring_geometry e = state_geometry(want_ch);
    if (g.page_bytes != e.page_bytes || g.k_block_bytes != e.k_block_bytes || g.v_block_bytes != e.v_block_bytes || g.kivi != e.kivi || g.head_dim != e.head_dim ||
        ch != want_ch)
        return r.fail("kv ring: a layer of another geometry (page, block or head sizes)");
    const size_t pb = page_bytes(), kb = (size_t) v_.k_block_bytes, vb = (size_t) v_.v_block_bytes, kt = (size_t) std::max(1, v_.kivi),
                 mb = (size_t) 4 * v_.head_dim;
    size_t rows = 0, sf = 0, nk = 0, sc = 0, nm = 0;  // what the books say the file holds
    for (int h = 0; h < H; h++) {
        if (heads && !(*heads)[(size_t) h]) continue;
        for (int32_t sl = 0; sl < std::min(L.pages_in_use(h), max_seg) * KV_PAGE_TOKENS; sl++) rows += L.in_view(h, sl);
        const bool evict = has_evict() && L.kind(h) == KV_RING_EVICT;
        if (evict) sf += 2 * (size_t) L.rc(h);
        const bool coded = std::find(ch.begin(), ch.end(), h) != ch.end();
        const size_t c = coded ? (size_t) L.n_coded(h) : 0;
        if (!coded && !codes && L.coded(h) && L.n_coded(h) > 0) return r.fail("kv ring: quantized tokens of a head without arrays for them");
        nk += c;
        if (evict && st_c_.data()) sc += 2 * c;
        if (v_.kivi) nm += (c + kt - 1) / kt * mb;
    }
    const size_t rb = (size_t) (v_.head_dim + v_.head_dim_v) * 2;
    const uint64_t want = (uint64_t) rows * rb + sf * 4 + nk * (kb + vb) + sc * 4 + nm;
    if (want > r.remaining()) return r.fail("kv ring: a layer's data past the end of the file (truncated?)");
    auto take = [&](auto & v, size_t count) {
        v.resize(count);
        return r.bytes(v.data(), count * sizeof(v[0]));
    };
    if (!take(out.pages, rows * rb) || !take(out.stats_f, sf) || !take(out.kblk, nk * kb) || !take(out.vblk, nk * vb) || !take(out.stats_c, sc) ||
        !take(out.kmeta, nm))
        return false;
    if (!r.pod(out.qcount) || !r.pod(out.qw) || !r.pod(out.qrow) || !r.pod(out.qheld) || !r.vec(out.qpos, (size_t) std::max(qw, 0), "recorded query positions"))
        return false;
    const bool none = out.qw == 0 && out.qrow == 0 && out.qheld == 0 && out.qcount == 0 && out.qpos.empty();
    const bool some = qw > 0 && qrow > 0 && out.qw == qw && out.qrow == qrow && (int) out.qpos.size() == qw && out.qheld >= 0 && out.qheld <= qw &&
                      out.qcount >= out.qheld && out.qcount <= INT32_MAX / 2;
    if (!none && !some) return r.fail("kv ring: recorded queries that do not fit the policy's window");
    for (int i = 0; some && i < out.qheld; i++)  // the held ones: the newest qheld entries of the ring
        if (out.qpos[(size_t) ((out.qcount - 1 - i) % qw)] < 0 || out.qpos[(size_t) ((out.qcount - 1 - i) % qw)] >= n)
            return r.fail("kv ring: a recorded query past the tokens");
    const size_t qn = (size_t) out.qw * (size_t) out.qrow;
    if (qn * 4 > r.remaining()) return r.fail("kv ring: recorded queries past the end of the file (truncated?)");
    return take(out.qring, qn);
}

status kv_ring_device::load_data(const kv_ring_layer & L, const blob & b, stream_t s, const std::vector<char> * heads) {
    const int H = n_head_kv_, max_seg = v_.max_seg;
    const size_t pb = page_bytes(), kb = (size_t) v_.k_block_bytes, vb = (size_t) v_.v_block_bytes, kt = (size_t) std::max(1, v_.kivi),
                 mb = (size_t) 4 * v_.head_dim;
    auto in = [&](int h) { return !heads || (*heads)[(size_t) h]; };
    status st;
    int32_t need_coded = 0, need_slots = 0;
    for (int h : coded_heads_) need_coded = std::max(need_coded, L.n_coded(h));
    for (int h = 0; h < H; h++)
        if (in(h)) need_slots = std::max(need_slots, std::min(L.pages_in_use(h), max_seg) * KV_PAGE_TOKENS);
    if (need_coded > coded_cap_ && !(st = resize_coded(std::min(max_coded_cap_, (int32_t) ((need_coded + kt - 1) / kt * kt)), s)).ok()) return st;
    if (need_slots > slot_cap_ && !(st = resize_slots(std::min(full_tokens_, need_slots), s)).ok()) return st;
    for (int h = 0; h < H; h++)  // the pages (the layer holds none yet)
        for (int32_t & m = mapped_[(size_t) h]; in(h) && m < std::min(L.pages_in_use(h), max_seg); m++)
            if (!(st = pool_->alloc(&page_h_[(size_t) h * max_seg + (size_t) m])).ok()) return st;
    map_ent_.clear();  // the whole table goes up here
    CUDA_CHECK(cudaMemcpyAsync(page_ptrs_.data(), page_h_.data(), page_h_.size() * sizeof(void *), cudaMemcpyHostToDevice, s));
    std::vector<int32_t> pos((size_t) H * slot_cap_, KV_RING_EMPTY), stf(st_f_.data() ? (size_t) H * slot_cap_ * 2 : 0, 0);
    size_t op = 0, of = 0, ok = 0, ov = 0, oc = 0, om = 0;
    const size_t D = (size_t) v_.head_dim, DV = (size_t) v_.head_dim_v;
    std::vector<uint16_t> host(pb / 2 * (size_t) max_seg);  // a head's pages: the rows read back into their slots, zeros elsewhere
    for (int h = 0; h < H; h++) {
        if (!in(h)) continue;
        const int32_t np = std::min(L.pages_in_use(h), max_seg);
        std::fill(host.begin(), host.begin() + (ptrdiff_t) (np * pb / 2), (uint16_t) 0);
        for (int32_t sl = 0; sl < np * KV_PAGE_TOKENS; sl++) {
            if (!L.in_view(h, sl)) continue;
            uint16_t * pg = host.data() + (size_t) (sl / KV_PAGE_TOKENS) * (pb / 2);
            const uint16_t * row = (const uint16_t *) (b.pages.data() + op);
            const size_t j = (size_t) (sl % KV_PAGE_TOKENS);
            for (size_t d = 0; d < D; d++) pg[key_at((int) j, (int) d, (int) D)] = row[d];
            std::memcpy(pg + value_at((int) j, 0, (int) D, (int) DV), row + D, DV * 2);
            op += (D + DV) * 2;
        }
        for (int32_t i = 0; i < np; i++)
            CUDA_CHECK(cudaMemcpyAsync(page_h_[(size_t) h * max_seg + (size_t) i], host.data() + (size_t) i * (pb / 2), pb, cudaMemcpyHostToDevice, s));
        CUDA_CHECK(cudaStreamSynchronize(s));  // (the next head reuses the host pages)
        const std::vector<int32_t> & sp = L.slot_pos(h);
        for (size_t sl = 0; sl < sp.size(); sl++) {
            if (sp[sl] == KV_RING_EMPTY) continue;
            if (sl >= (size_t) slot_cap_) return status(ERR_INTERNAL, strfmt("cuda kv ring: head %d holds slot %zu past its %d", h, sl, slot_cap_));
            pos[(size_t) h * slot_cap_ + sl] = sp[sl];
        }
        const bool evict = has_evict() && L.kind(h) == KV_RING_EVICT;
        if (evict) {
            std::copy(b.stats_f.begin() + (ptrdiff_t) of, b.stats_f.begin() + (ptrdiff_t) (of + 2 * (size_t) L.rc(h)), stf.begin() + (ptrdiff_t) h * slot_cap_ * 2);
            of += 2 * (size_t) L.rc(h);
        }
        const size_t n = holds_codes(h) ? (size_t) L.n_coded(h) : 0, c = n ? (size_t) c_first_h_[(size_t) h] : 0;
        if (n == 0) continue;
        CUDA_CHECK(cudaMemcpyAsync(kblk_.as<uint8_t>() + c * kb, b.kblk.data() + ok, n * kb, cudaMemcpyHostToDevice, s));
        CUDA_CHECK(cudaMemcpyAsync(vblk_.as<uint8_t>() + c * vb, b.vblk.data() + ov, n * vb, cudaMemcpyHostToDevice, s));
        CUDA_CHECK(cudaMemcpyAsync(c_pos_.as<int32_t>() + c, L.coded_pos(h).data(), n * 4, cudaMemcpyHostToDevice, s));
        ok += n * kb;
        ov += n * vb;
        if (evict && st_c_.data()) {
            CUDA_CHECK(cudaMemcpyAsync(st_c_.as<int2>() + c, b.stats_c.data() + oc, n * sizeof(int2), cudaMemcpyHostToDevice, s));
            oc += 2 * n;
        }
        if (v_.kivi) {
            const size_t nm = (n + kt - 1) / kt * mb;
            CUDA_CHECK(cudaMemcpyAsync(kmeta_.as<uint8_t>() + c / kt * mb, b.kmeta.data() + om, nm, cudaMemcpyHostToDevice, s));
            om += nm;
        }
    }
    CUDA_CHECK(cudaMemcpyAsync(pos_.data(), pos.data(), pos.size() * 4, cudaMemcpyHostToDevice, s));
    if (!stf.empty()) CUDA_CHECK(cudaMemcpyAsync(st_f_.data(), stf.data(), stf.size() * 4, cudaMemcpyHostToDevice, s));
    if (b.qw > 0) {
        if (!(st = qring_.alloc(b.qring.size() * 4)).ok()) return st;
        CUDA_CHECK(cudaMemcpyAsync(qring_.data(), b.qring.data(), b.qring.size() * 4, cudaMemcpyHostToDevice, s));
    }
    qw_ = b.qw;
    qrow_ = b.qrow;
    qheld_ = b.qheld;
    qcount_ = b.qcount;
    qpos_ = b.qpos;
    CUDA_CHECK(cudaStreamSynchronize(s));  // (the host arrays above are read before they go)
    return status::success();
}

size_t kv_ring_device::reserved_bytes() const {
    size_t pages = 0;
    for (int32_t m : mapped_) pages += (size_t) m;
    return pages * page_bytes() + page_ptrs_.bytes() + kblk_.bytes() + vblk_.bytes() + kmeta_.bytes() + c_pos_.bytes() + pos_.bytes() + st_f_.bytes() + st_c_.bytes() +
           qring_.bytes();
}

} // namespace cuda
} // namespace core
