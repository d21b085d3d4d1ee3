// CPU reference: core::attention_ref (native/kernels/cpu/attention.cpp)
//   for each query head h (KV head h / G), token j of that head with pos[j] <= q_pos:
//     s_j = scale * Σ_d f16(q[d]) * k_j[d];  out = Σ_j softmax(s)_j v_j
// Kernel 1 (grid n_head_kv x n_split x query tiles, 128 threads): a split is a run of segments (pages) of
// its head; each page's keys and values are copied to shared memory once and used by every row of the
// block: the G query heads of the group for one query token (decode) or for MAXR / G of them (prefill);
// online softmax state (m, l) and position mask per row, acc in registers (thread = output dim).
// Kernel 2 merges the splits: out = Σ_s e^(m_s - M) acc_s / Σ_s e^(m_s - M) l_s.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "attention.cuh"
#include "common.cuh"

#include "../kv/kv-cache.h"

namespace core {
namespace cuda {
namespace {

// q8 / q4: the codecs the coded kernel reads as plain blocks (kv_layer_view::kplain / vplain)
bool kv_codec_plain(const kv_codec_traits * t) { return t == &kv_codec_get(KV_CODEC_Q8) || t == &kv_codec_get(KV_CODEC_Q4); }
bool kv_codec_kivi(const kv_codec_traits * t) { return t == &kv_codec_get(KV_CODEC_KIVI2) || t == &kv_codec_get(KV_CODEC_KIVI4); }

static_assert(KV_PAGE_TOKENS == 64 && KV_TILE == 16, "common.cuh's key_at / value_at / kv_page_put assume the page layout of kv-cache.h");
constexpr int THREADS = 128;
constexpr int MAXG = 8;
constexpr int MAXD = 256;
constexpr int DPT = MAXD / THREADS;  // output dims per thread

// Rows of a block: the G query heads of a KV head for qt consecutive query tokens (prefill: qt = MAXR / G, so
// each page is loaded once for all of them; decode: qt = 1). Each row keeps its own position mask and online
// softmax, exactly as with one token per block.
constexpr int MAXR = 16;

size_t attn_smem_bytes(int rows, int hd, int hdv) {
    return (size_t) rows * hd * 4 + (size_t) KV_PAGE_TOKENS * hd * 2 + (size_t) KV_PAGE_TOKENS * hdv * 2 + (size_t) rows * KV_PAGE_TOKENS * 4 +
           4 * (size_t) rows * 4;
}

template <int MR>
__global__ void __launch_bounds__(THREADS) k_attn_split(kv_layer_view kv, const float * q, const int32_t * q_pos, int n_head, int n_tokens, int qt,
                                                        float scale, int n_split, int n_total, float * partial) {
    extern __shared__ float4 smem4[];
    const int hkv = blockIdx.x, split = blockIdx.y, t0 = blockIdx.z * qt, tid = threadIdx.x;
    const int G = n_head / kv.n_head_kv, hd = kv.head_dim, hdv = kv.head_dim_v;
    const int R = min(qt, n_tokens - t0) * G;  // rows: query token t0 + r / G, head hkv * G + r % G
    float * q_s = (float *) smem4;                                        // [R][hd]
    uint16_t * k_s = (uint16_t *) (q_s + R * hd);                          // [4][hd][16]
    uint16_t * v_s = k_s + KV_PAGE_TOKENS * hd;                            // [64][hdv]
    float * p_s = (float *) (v_s + KV_PAGE_TOKENS * hdv);                  // [R][64]
    float * m_s = p_s + R * KV_PAGE_TOKENS, * l_s = m_s + R, * a_s = l_s + R;
    int32_t * qp_s = (int32_t *) (a_s + R);                                // [R] query positions

    const bool round_q = !(kv.is_coded && kv.is_coded[hkv]);  // coded heads dot f32 queries (attend_group_coded_ref)
    for (int i = tid; i < R * hd; i += THREADS) {
        const int r = i / hd, d = i % hd;
        const float x = q[((size_t) (t0 + r / G) * n_head + hkv * G + r % G) * hd + d];
        q_s[i] = round_q ? __half2float(__float2half_rn(x)) : x;
    }
    for (int r = tid; r < R; r += THREADS) { m_s[r] = -INFINITY; l_s[r] = 0.0f; qp_s[r] = q_pos[t0 + r / G]; }
    float acc[MR][DPT];
#pragma unroll
    for (int r = 0; r < MR; r++)
#pragma unroll
        for (int k = 0; k < DPT; k++) acc[r][k] = 0.0f;
    // eviction policies: the scores of the chunk's last query row (kv.sc: f16 slots)
    const int r_last = kv.sc && kv.evict[hkv] && t0 + R / G == n_tokens ? R - G : R;

    const int ns = kv.n_seg[hkv];
    const int s0 = (int) ((int64_t) split * ns / n_split), s1 = (int) ((int64_t) (split + 1) * ns / n_split);
    for (int sg = s0; sg < s1; sg++) {
        const size_t si = (size_t) hkv * kv.max_seg + sg;
        const int n = kv.seg_n[si];
        const int first = kv.seg_first[si];
        const uint16_t * page = kv.seg_page[si];
        const int32_t * pos = kv.pos + (size_t) hkv * kv.max_tokens + first;
        __syncthreads();  // previous page fully consumed (and q_s, m_s written on the first pass)
        const int nk4 = (n + KV_TILE - 1) / KV_TILE * hd * KV_TILE / 8, nv4 = n * hdv / 8;
        const uint4 * kp = (const uint4 *) page, * vp = (const uint4 *) (page + (size_t) KV_PAGE_TOKENS * hd);
        for (int i = tid; i < nk4; i += THREADS) ((uint4 *) k_s)[i] = kp[i];
        for (int i = tid; i < nv4; i += THREADS) ((uint4 *) v_s)[i] = vp[i];
        __syncthreads();
        for (int i = tid; i < R * KV_PAGE_TOKENS; i += THREADS) {
            const int r = i / KV_PAGE_TOKENS, j = i % KV_PAGE_TOKENS;
            float sc = -INFINITY;
            if (j < n && pos[j] <= qp_s[r] && (!kv.lo || first + j < kv.ring_base[hkv] || pos[j] >= kv.lo[hkv])) {
                const uint16_t * kt = k_s + (size_t) (j / KV_TILE) * hd * KV_TILE + (j % KV_TILE);
                const float * qg = q_s + r * hd;
                float dot = 0.0f;
                for (int d = 0; d < hd; d++) dot = fmaf(qg[d], f16_bits_to_f32(kt[d * KV_TILE]), dot);
                sc = dot * scale;
            }
            p_s[r * KV_PAGE_TOKENS + j] = sc;
            if (r >= r_last && j < n) kv.sc[((size_t) hkv * G + (r - r_last)) * kv.max_tokens + first + j] = sc;
        }
        __syncthreads();
        const int warp = tid / WARP, lane = tid % WARP;
        for (int r = warp; r < R; r += THREADS / WARP) {
            float * pg = p_s + r * KV_PAGE_TOKENS;
            const float a = pg[lane], b = pg[lane + WARP];
            const float mx = warp_max(fmaxf(a, b));
            const float m_old = m_s[r], m_new = fmaxf(m_old, mx);
            float pa = 0.0f, pb = 0.0f, alpha = 1.0f;
            if (m_new != -INFINITY) {
                pa = expf(a - m_new);
                pb = expf(b - m_new);
                alpha = expf(m_old - m_new);
            }
            pg[lane] = pa;
            pg[lane + WARP] = pb;
            const float sum = warp_sum(pa + pb);
            __syncwarp();  // every lane has read m_s[r] (racecheck does not count the shuffles as a barrier)
            if (lane == 0) { l_s[r] = l_s[r] * alpha + sum; m_s[r] = m_new; a_s[r] = alpha; }
        }
        __syncthreads();
#pragma unroll
        for (int r = 0; r < MR; r++) {
            if (r >= R) break;
            const float alpha = a_s[r];
            const float * pg = p_s + r * KV_PAGE_TOKENS;
#pragma unroll
            for (int k = 0; k < DPT; k++) {
                const int d = tid + k * THREADS;
                if (d >= hdv) break;
                float a = acc[r][k] * alpha;
                for (int j = 0; j < n; j++)  // masked slots (p = 0) never enter: a stale inf would make 0·inf = NaN
                    if (pg[j] != 0.0f) a = fmaf(pg[j], f16_bits_to_f32(v_s[j * hdv + d]), a);
                acc[r][k] = a;
            }
        }
    }
    __syncthreads();
    const int stride = 2 + hdv;
#pragma unroll
    for (int r = 0; r < MR; r++) {
        if (r >= R) break;
        float * part = partial + (((size_t) (t0 + r / G) * n_head + hkv * G + r % G) * n_total + split) * stride;
        if (tid == 0) { part[0] = m_s[r]; part[1] = l_s[r]; }
#pragma unroll
        for (int k = 0; k < DPT; k++) {
            const int d = tid + k * THREADS;
            if (d < hdv) part[2 + d] = acc[r][k];
        }
    }
}

// ---- kernel 1b: the coded tokens of a head (rot codecs), CT tokens per tile
constexpr int CT = 32;

__device__ __forceinline__ uint32_t code_get(const uint8_t * c, int i, int b) {  // kv_code_get
    const int o = i * b, byte = o >> 3, sh = o & 7;
    uint32_t w = c[byte];
    if (sh + b > 8) w |= (uint32_t) c[byte + 1] << 8;
    return (w >> sh) & ((1u << b) - 1);
}
// x̂[d] = scale_g · (code − zp_g) of a rot block (codes [D·b/8] | scales f16 [D/grp] | zero-points u8 [D/grp])
__device__ __forceinline__ float rot_decode(const uint8_t * blk, int d, int D, int b, int grp) {
    const int g = d / grp, ng = D / grp;
    const uint8_t * sc = blk + D * b / 8;
    const float s = f16_bits_to_f32((uint16_t) (sc[2 * g] | (sc[2 * g + 1] << 8)));
    return s * ((float) code_get(blk, d, b) - (float) sc[2 * ng + g]);
}
// KIVI (kivi.cpp's decode: x̂ = code·scale + min): a key channel's scale and min are its 32-token block's
// (meta: scales f16 [D] | mins f16 [D]); a value's those of its channel group (codes | scales | mins).
__device__ __forceinline__ float kivi_key_decode(const uint8_t * codes, const uint8_t * meta, int d, int D, int b) {
    const float s = f16_bits_to_f32((uint16_t) (meta[2 * d] | (meta[2 * d + 1] << 8)));
    const float m = f16_bits_to_f32((uint16_t) (meta[2 * D + 2 * d] | (meta[2 * D + 2 * d + 1] << 8)));
    return __fadd_rn(__fmul_rn((float) code_get(codes, d, b), s), m);  // (kivi.cpp: product, then sum; no FMA)
}
__device__ __forceinline__ float kivi_value_decode(const uint8_t * blk, int d, int D, int b, int grp) {
    const int g = d / grp, ng = D / grp;
    const uint8_t * sm = blk + D * b / 8;
    const float s = f16_bits_to_f32((uint16_t) (sm[2 * g] | (sm[2 * g + 1] << 8)));
    const float m = f16_bits_to_f32((uint16_t) (sm[2 * ng + 2 * g] | (sm[2 * ng + 2 * g + 1] << 8)));
    return __fadd_rn(__fmul_rn((float) code_get(blk, d, b), s), m);
}
// normalized FWHT of `rows` rows of length D in shared memory (row stride ld), by the whole block
template <int D> __device__ void fwht_rows(float * x, int ld, int rows) {
    for (int h = 1; h < D; h <<= 1) {
        for (int i = threadIdx.x; i < rows * (D / 2); i += THREADS) {
            const int r = i / (D / 2), k = i % (D / 2), j = (k / h) * 2 * h + (k % h);
            float * xr = x + (size_t) r * ld;
            const float a = xr[j], b = xr[j + h];
            xr[j] = a + b;
            xr[j + h] = a - b;
        }
        __syncthreads();
    }
}

template <int D, int MR>
__global__ void __launch_bounds__(THREADS) k_attn_coded(kv_layer_view kv, const float * q, const int32_t * q_pos, int n_head, int n_tokens, int qt,
                                                        float scale, int n_split_c, int split0, int n_total, float * partial) {
    static_assert(MR <= CT, "the accumulators go through k_t for the final FWHT");
    const int hkv = blockIdx.x, split = blockIdx.y, t0 = blockIdx.z * qt, tid = threadIdx.x;
    const int G = n_head / kv.n_head_kv;
    const int R = min(qt, n_tokens - t0) * G;  // rows: query token t0 + r / G, head hkv * G + r % G (as k_attn_split)
    __shared__ float q_s[MR][D];
    __shared__ float k_t[CT][D + 1];
    __shared__ float cs_s[CT][D / 2], sn_s[CT][D / 2];
    __shared__ float p_s[MR][CT];
    __shared__ float m_s[MR], l_s[MR], a_s[MR];
    __shared__ float qsum[MR][D / 8];
    __shared__ int32_t qp_s[MR];
    __shared__ int nvis_s;
    const float inv_sqrt_d = 1.0f / sqrtf((float) D);

    const int32_t qp = q_pos[t0 + R / G - 1];  // the block's last (largest) query position
    const int nc = kv.is_coded && kv.is_coded[hkv] ? kv.n_coded[hkv] : 0;
    const int c0 = nc ? kv.c_first[hkv] : 0;
    const int32_t * cpos = kv.c_pos + c0;
    const int32_t * perm = kv.perm ? kv.perm + (size_t) hkv * D : nullptr;
    if (tid == 0) {  // coded tokens with position <= qp: a prefix (positions ascend)
        int lo = 0, hi = nc;
        while (lo < hi) { const int mid = (lo + hi) / 2; if (cpos[mid] <= qp) lo = mid + 1; else hi = mid; }
        nvis_s = lo;
    }
    for (int i = tid; i < R * D; i += THREADS) q_s[i / D][i % D] = q[((size_t) (t0 + i / D / G) * n_head + hkv * G + (i / D) % G) * D + i % D];
    for (int r = tid; r < R; r += THREADS) { m_s[r] = -INFINITY; l_s[r] = 0.0f; qp_s[r] = q_pos[t0 + r / G]; }
    __syncthreads();
    if (!kv.pre_rope && !kv.kplain && nc > 0) {
        // post-RoPE keys are P·H·k: dot them with P·H·q (q̃[d] = (H·q)[perm[d]]), Σ q̃ per quantization group
        fwht_rows<D>(&q_s[0][0], D, R);
        for (int i = tid; i < R * D; i += THREADS) k_t[i / D][i % D] = q_s[i / D][perm ? perm[i % D] : i % D] * inv_sqrt_d;
        __syncthreads();
        for (int i = tid; i < R * D; i += THREADS) q_s[i / D][i % D] = k_t[i / D][i % D];
        __syncthreads();
        const int ng = D / kv.kgroup;
        for (int i = tid; i < R * ng; i += THREADS) {
            const int g = i / ng, gr = i % ng;
            float a = 0.0f;
            for (int k = 0; k < kv.kgroup; k++) a += q_s[g][gr * kv.kgroup + k];
            qsum[g][gr] = a;
        }
        __syncthreads();
    }
    const int nvis = nvis_s;
    const int s0 = (int) ((int64_t) split * nvis / n_split_c), s1 = (int) ((int64_t) (split + 1) * nvis / n_split_c);
    float acc[MR];
#pragma unroll
    for (int r = 0; r < MR; r++) acc[r] = 0.0f;
    const int r_last = kv.sc_c && kv.evict[hkv] && t0 + R / G == n_tokens ? R - G : R;  // eviction: the chunk's last row
    const float theta_scale = kv.theta_scale;
    for (int j0 = s0; j0 < s1; j0 += CT) {
        const int nt = min(CT, s1 - j0);
        __syncthreads();  // the previous tile is consumed
        if (kv.kplain || kv.pre_rope) {
            // the tile's keys decoded into k_t: q8 / q4 post-RoPE keys as stored; pre-RoPE rot keys decoded, the
            // permutation undone (kr[perm[d]] = x̂[d]), FWHT, RoPE at the token's position
            const int rg = kv.rot_g && kv.pre_rope ? kv.rot_g[hkv] : 1;
            if (rg == 1) {
                for (int i = tid; i < nt * D; i += THREADS) {
                    const int tok = i / D, d = i % D;
                    const uint8_t * blk = kv.kblk + (size_t) (c0 + j0 + tok) * kv.k_block_bytes;
                    if (kv.kivi) k_t[tok][d] = kivi_key_decode(blk, kv.kmeta + (size_t) ((c0 + j0 + tok) / kv.kivi) * 4 * D, d, D, kv.kbits);
                    else if (kv.kplain) k_t[tok][d] = plain_decode(blk, d, kv.kbits);
                    else k_t[tok][perm ? perm[d] : d] = rot_decode(blk, d, D, kv.kbits, kv.kgroup);
                }
            } else {
                // grouped rotation: this head's share of FWHT_{G·D}, Σ over the group's heads (one at a time: each
                // head's permutation is a bijection, so no two threads add to the same element), attention_ref's order
                const int sl0 = hkv % rg, h0 = hkv - sl0;
                const float gs = 1.0f / sqrtf((float) rg);
                for (int i = tid; i < nt * D; i += THREADS) k_t[i / D][i % D] = 0.0f;
                for (int sl = 0; sl < rg; sl++) {
                    __syncthreads();
                    const int hs = h0 + sl;
                    const float w = __popc((unsigned) (sl0 & sl)) & 1 ? -gs : gs;
                    const int32_t * ps = kv.perm ? kv.perm + (size_t) hs * D : nullptr;
                    const int cs0 = kv.c_first[hs];
                    for (int i = tid; i < nt * D; i += THREADS) {
                        const int tok = i / D, d = i % D;
                        const uint8_t * blk = kv.kblk + (size_t) (cs0 + j0 + tok) * kv.k_block_bytes;
                        k_t[tok][ps ? ps[d] : d] += w * rot_decode(blk, d, D, kv.kbits, kv.kgroup);
                    }
                }
            }
            if (kv.pre_rope) {
                // rope_cache_ref: theta advanced by repeated multiplication. Each token's D/2 angles are split into
                // RQ runs, one per thread (all 128 threads busy instead of nt); a run starts by repeating the chain
                // of multiplications up to its first index, so every theta is the CPU's, bit for bit.
                constexpr int RQ = 4, RL = D / 2 / RQ;
                for (int it = tid; it < nt * RQ; it += THREADS) {
                    const int tok = it / RQ, k0 = it % RQ * RL;
                    float theta = (float) cpos[j0 + tok];
                    for (int i = 0; i < k0; i++) theta *= theta_scale;
                    for (int i = k0; i < k0 + RL; i++) {
                        const float ff = kv.freq_factors ? kv.freq_factors[i] : 1.0f;
                        const float tt = kv.freq_scale * (theta / ff);
                        cs_s[tok][i] = cosf(tt);
                        sn_s[tok][i] = sinf(tt);
                        theta *= theta_scale;
                    }
                }
                __syncthreads();
                fwht_rows<D>(&k_t[0][0], D + 1, nt);
                for (int i = tid; i < nt * (D / 2); i += THREADS) {
                    const int tok = i / (D / 2), k = i % (D / 2);
                    const int i0 = kv.rope_neox ? k : 2 * k, i1 = kv.rope_neox ? k + D / 2 : 2 * k + 1;
                    const float x0 = k_t[tok][i0] * inv_sqrt_d, x1 = k_t[tok][i1] * inv_sqrt_d, c = cs_s[tok][k], sn = sn_s[tok][k];
                    k_t[tok][i0] = fmaf(x0, c, -(x1 * sn));
                    k_t[tok][i1] = fmaf(x0, sn, x1 * c);
                }
            }
            __syncthreads();
            for (int i = tid; i < R * CT; i += THREADS) {
                const int r = i / CT, tok = i % CT;
                float sc = -INFINITY;
                if (tok < nt && cpos[j0 + tok] <= qp_s[r]) {
                    float dot = 0.0f;
                    for (int d = 0; d < D; d++) dot = fmaf(q_s[r][d], k_t[tok][d], dot);
                    sc = dot * scale;
                }
                p_s[r][tok] = sc;
                if (r >= r_last && tok < nt) kv.sc_c[(size_t) (c0 + j0 + tok) * G + (r - r_last)] = sc;
            }
        } else {
            for (int i = tid; i < R * CT; i += THREADS) {
                const int g = i / CT, tok = i % CT;  // (g: the row)
                float sc = -INFINITY;
                if (tok < nt && cpos[j0 + tok] <= qp_s[g]) {
                    const uint8_t * blk = kv.kblk + (size_t) (c0 + j0 + tok) * kv.k_block_bytes;
                    const uint8_t * sb = blk + D * kv.kbits / 8;
                    const int ng = D / kv.kgroup;
                    float r = 0.0f;
                    for (int gr = 0; gr < ng; gr++) {
                        float a = 0.0f;
                        for (int k = 0; k < kv.kgroup; k++) a = fmaf(q_s[g][gr * kv.kgroup + k], (float) code_get(blk, gr * kv.kgroup + k, kv.kbits), a);
                        const float s16 = f16_bits_to_f32((uint16_t) (sb[2 * gr] | (sb[2 * gr + 1] << 8)));
                        r += s16 * (a - (float) sb[2 * ng + gr] * qsum[g][gr]);
                    }
                    sc = r * scale;
                }
                p_s[g][tok] = sc;
                if (g >= r_last && tok < nt) kv.sc_c[(size_t) (c0 + j0 + tok) * G + (g - r_last)] = sc;
            }
        }
        __syncthreads();
        const int warp = tid / WARP, lane = tid % WARP;
        for (int g = warp; g < R; g += THREADS / WARP) {  // (g: the row)
            const float a = p_s[g][lane];
            const float mx = warp_max(a);
            const float m_old = m_s[g], m_new = fmaxf(m_old, mx);
            float pa = 0.0f, alpha = 1.0f;
            if (m_new != -INFINITY) { pa = expf(a - m_new); alpha = expf(m_old - m_new); }
            p_s[g][lane] = pa;
            const float sum = warp_sum(pa);
            __syncwarp();  // every lane has read m_s[g] (racecheck does not count the shuffles as a barrier)
            if (lane == 0) { l_s[g] = l_s[g] * alpha + sum; m_s[g] = m_new; a_s[g] = alpha; }
        }
        __syncthreads();
        if (tid < D) {
#pragma unroll
            for (int r = 0; r < MR; r++)
                if (r < R) acc[r] *= a_s[r];
            for (int tok = 0; tok < nt; tok++) {
                const uint8_t * vb = kv.vblk + (size_t) (c0 + j0 + tok) * kv.v_block_bytes;
                const float v = kv.vkivi ? kivi_value_decode(vb, tid, D, kv.vbits, kv.vgroup)
                              : kv.vplain ? plain_decode(vb, tid, kv.vbits) : rot_decode(vb, tid, D, kv.vbits, kv.vgroup);
#pragma unroll
                for (int r = 0; r < MR; r++)
                    if (r < R) acc[r] = fmaf(p_s[r][tok], v, acc[r]);
            }
        }
    }
    __syncthreads();
    // Σ p·H·v = H·Σ p·v: one FWHT per query head brings the split's accumulator back (rot values)
    if (tid < D)
#pragma unroll
        for (int r = 0; r < MR; r++)
            if (r < R) k_t[r][tid] = acc[r];
    __syncthreads();
    if (!kv.vplain) fwht_rows<D>(&k_t[0][0], D + 1, R);  // (plain values accumulate in the stored basis)
    const int stride = 2 + D;
    const float out_scale = kv.vplain ? 1.0f : inv_sqrt_d;
    for (int r = 0; r < R; r++) {
        float * part = partial + (((size_t) (t0 + r / G) * n_head + hkv * G + r % G) * n_total + split0 + split) * stride;
        if (tid == 0) { part[0] = m_s[r]; part[1] = l_s[r]; }
        if (tid < D) part[2 + tid] = k_t[r][tid] * out_scale;
    }
}

__global__ void k_attn_merge(const float * partial, int n_split, int hdv, float * out, float * ml) {
    const int h = blockIdx.x, t = blockIdx.y, n_head = gridDim.x;
    const int stride = 2 + hdv;
    const float * base = partial + ((size_t) t * n_head + h) * n_split * stride;
    float M = -INFINITY;
    for (int s = 0; s < n_split; s++) M = fmaxf(M, base[s * stride]);
    float L = 0.0f;
    for (int s = 0; s < n_split; s++) {
        const float m = base[s * stride];
        if (m != -INFINITY) L += expf(m - M) * base[s * stride + 1];
    }
    if (ml && t == (int) gridDim.y - 1 && threadIdx.x == 0) { ml[2 * h] = M; ml[2 * h + 1] = L; }
    for (int d = threadIdx.x; d < hdv; d += blockDim.x) {
        float a = 0.0f;
        for (int s = 0; s < n_split; s++) {
            const float m = base[s * stride];
            if (m != -INFINITY) a += expf(m - M) * base[s * stride + 2 + d];
        }
        out[((size_t) t * n_head + h) * hdv + d] = L > 0.0f ? a / L : 0.0f;
    }
}

} // namespace

status attention_decode(const attn_decode_params & p, const float * q, const int32_t * q_pos, const kv_layer_view & kv,
                        float * out, attn_workspace & ws, stream_t s) {
    if (p.n_tokens <= 0) return status::success();
    if (kv.n_head_kv <= 0 || p.n_head % kv.n_head_kv) return status(ERR_INVALID_ARG, strfmt("cuda attention: n_head %d not a multiple of n_head_kv %d", p.n_head, kv.n_head_kv));
    const int G = p.n_head / kv.n_head_kv;
    if (G > MAXG || kv.head_dim > MAXD || kv.head_dim_v > MAXD || kv.head_dim % 8 || kv.head_dim_v % 8)
        return status(ERR_UNSUPPORTED_ARCH, strfmt("cuda attention: not supported (group %d > %d or head_dim %d/%d > %d or not a multiple of 8)",
                                                   G, MAXG, kv.head_dim, kv.head_dim_v, MAXD));
    // query tokens per block: decode one; prefill as many as fill MAXR rows (each page or coded tile is then read
    // and decoded once for all of them instead of once per query)
    const int qt = p.n_tokens == 1 ? 1 : std::max(1, MAXR / G);
    const int nz = (p.n_tokens + qt - 1) / qt;
    int n_split = p.n_split;
    if (n_split <= 0) {
        int dev = 0, sms = 0;
        CUDA_CHECK(cudaGetDevice(&dev));
        CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
        n_split = std::max(1, (2 * sms + kv.n_head_kv * nz - 1) / (kv.n_head_kv * nz));
    }
    n_split = std::max(1, std::min(n_split, std::max(1, kv.max_n_seg)));
    // coded tokens: splits of at least 128 tokens, as many as fill the device
    int n_split_c = 0;
    if (kv.kblk && kv.max_n_coded > 0) {
        int dev = 0, sms = 0;
        CUDA_CHECK(cudaGetDevice(&dev));
        CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
        const int fill = std::max(1, (2 * sms + kv.n_head_kv * nz - 1) / (kv.n_head_kv * nz));
        n_split_c = std::max(1, std::min(fill, (kv.max_n_coded + 127) / 128));
        if (kv.head_dim != kv.head_dim_v || (kv.head_dim != 32 && kv.head_dim != 64 && kv.head_dim != 128))
            return status(ERR_UNSUPPORTED_QUANT, strfmt("cuda attention: coded heads need head_dim == head_dim_v in {32, 64, 128} (got %d/%d)", kv.head_dim, kv.head_dim_v));
    }
    const int n_total = n_split + n_split_c;
    const size_t need = (size_t) p.n_tokens * p.n_head * n_total * (2 + kv.head_dim_v) * sizeof(float);
    if (ws.partial.bytes() < need) {
        status st = ws.partial.alloc(need);
        if (!st.ok()) return st;
    }
    float * part = ws.partial.as<float>();
    const size_t smem = attn_smem_bytes(qt * G, kv.head_dim, kv.head_dim_v);
    const dim3 grid(kv.n_head_kv, n_split, nz), grid_c(kv.n_head_kv, n_split_c, nz);
    // per device and cheap: the shared-memory opt-in is set on every such launch rather than cached process-wide
    if (qt == 1) {
        if (smem > 48 * 1024) CUDA_CHECK(cudaFuncSetAttribute(k_attn_split<MAXG>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int) smem));
        k_attn_split<MAXG><<<grid, THREADS, smem, s>>>(kv, q, q_pos, p.n_head, p.n_tokens, qt, p.scale, n_split, n_total, part);
    } else {
        if (smem > 48 * 1024) CUDA_CHECK(cudaFuncSetAttribute(k_attn_split<MAXR>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int) smem));
        k_attn_split<MAXR><<<grid, THREADS, smem, s>>>(kv, q, q_pos, p.n_head, p.n_tokens, qt, p.scale, n_split, n_total, part);
    }
    CUDA_CHECK_LAUNCH("attention split");
    if (n_split_c > 0) {
#define TC_ATTN_CODED(D_, MR_) k_attn_coded<D_, MR_><<<grid_c, THREADS, 0, s>>>(kv, q, q_pos, p.n_head, p.n_tokens, qt, p.scale, n_split_c, n_split, n_total, part)
        if (qt == 1) {
            switch (kv.head_dim) {
            case 32: TC_ATTN_CODED(32, MAXG); break;
            case 64: TC_ATTN_CODED(64, MAXG); break;
            default: TC_ATTN_CODED(128, MAXG); break;
            }
        } else {
            switch (kv.head_dim) {
            case 32: TC_ATTN_CODED(32, MAXR); break;
            case 64: TC_ATTN_CODED(64, MAXR); break;
            default: TC_ATTN_CODED(128, MAXR); break;
            }
        }
#undef TC_ATTN_CODED
        CUDA_CHECK_LAUNCH("attention coded split");
    }
    k_attn_merge<<<dim3(p.n_head, p.n_tokens), 128, 0, s>>>(ws.partial.as<float>(), n_total, kv.head_dim_v, out, kv.sc ? kv.ml : nullptr);
    CUDA_CHECK_LAUNCH("attention merge");
    return status::success();
}

// ---- device copies of the cache ----

status kv_layer_device::build_tables(int n_head_kv, const std::vector<std::vector<int32_t>> & seg_n,
                                     const std::vector<std::vector<int32_t>> & pos) {
    int max_seg = 1, max_tok = 1;
    for (int h = 0; h < n_head_kv; h++) {
        max_seg = std::max<int>(max_seg, (int) seg_n[h].size());
        max_tok = std::max<int>(max_tok, (int) pos[h].size());
    }
    std::vector<int32_t> hn((size_t) n_head_kv * max_seg, 0), hf((size_t) n_head_kv * max_seg, 0), hp((size_t) n_head_kv * max_tok, 0),
        hns(n_head_kv);
    std::vector<const uint16_t *> hptr((size_t) n_head_kv * max_seg, nullptr);
    size_t page = 0;
    v_.max_n_seg = 0;
    for (int h = 0; h < n_head_kv; h++) {
        int first = 0;
        for (size_t i = 0; i < seg_n[h].size(); i++) {
            hn[(size_t) h * max_seg + i] = seg_n[h][i];
            hf[(size_t) h * max_seg + i] = first;
            hptr[(size_t) h * max_seg + i] = (const uint16_t *) (pages_.as<uint8_t>() + page++ * page_bytes_);
            first += seg_n[h][i];
        }
        std::copy(pos[h].begin(), pos[h].end(), hp.begin() + (size_t) h * max_tok);
        hns[h] = (int32_t) seg_n[h].size();
        v_.max_n_seg = std::max(v_.max_n_seg, hns[h]);
    }
    status st;
    if (!(st = page_ptrs_.alloc(hptr.size() * sizeof(void *))).ok() || !(st = page_ptrs_.upload(hptr.data(), page_ptrs_.bytes())).ok()) return st;
    if (!(st = seg_n_.alloc(hn.size() * 4)).ok() || !(st = seg_n_.upload(hn.data(), seg_n_.bytes())).ok()) return st;
    if (!(st = seg_first_.alloc(hf.size() * 4)).ok() || !(st = seg_first_.upload(hf.data(), seg_first_.bytes())).ok()) return st;
    if (!(st = pos_.alloc(hp.size() * 4)).ok() || !(st = pos_.upload(hp.data(), pos_.bytes())).ok()) return st;
    if (!(st = n_seg_.alloc(hns.size() * 4)).ok() || !(st = n_seg_.upload(hns.data(), n_seg_.bytes())).ok()) return st;
    v_.n_head_kv = n_head_kv;
    v_.max_seg = max_seg;
    v_.max_tokens = max_tok;
    v_.seg_page = page_ptrs_.as<const uint16_t *>();
    v_.seg_n = seg_n_.as<int32_t>();
    v_.seg_first = seg_first_.as<int32_t>();
    v_.pos = pos_.as<int32_t>();
    v_.n_seg = n_seg_.as<int32_t>();
    return status::success();
}

void kv_layer_device::reset() {
    v_ = kv_layer_view{};
    for (device_buffer * b : {&is_coded_, &kblk_, &vblk_, &c_first_, &n_coded_, &c_pos_, &perm_, &ff_, &kmeta_, &rot_g_}) b->reset();
    n_held_ = n_ctx_ = 0;
    payload_bytes_ = 0;
}

status kv_layer_device::upload(const kv_cache & kv, int il) {
    reset();  // nothing of a previous layout (coded tables above all) may leak into this one
    const kv_cache_config & cfg = kv.config();
    const int nh = cfg.n_head_kv, hd = cfg.head_dim, hdv = cfg.head_dim_v;
    page_bytes_ = (size_t) KV_PAGE_TOKENS * (hd + hdv) * sizeof(f16_t);
    std::vector<std::vector<int32_t>> seg_n(nh), pos(nh);
    size_t n_pages = 0;
    // coded heads: codes, positions and permutation gathered per head
    std::vector<int32_t> is_coded(nh, 0), n_coded(nh, 0), c_pos, perm, rot_g;
    std::vector<uint8_t> kb, vb, kmeta;
    const kv_coded_view * first = nullptr;
    for (int h = 0; h < nh; h++) {
        const kv_head_view hv = kv.head(il, h);
        n_pages += (size_t) hv.n_seg;
        if (!hv.coded) continue;
        const kv_coded_view & c = *hv.coded;
        const kv_storage_config & st = *c.st;
        const int kg = kv_codec_group(KV_CODEC_ROT2, hd, c.kp.group), vg = kv_codec_group(KV_CODEC_ROT2, hdv, c.vp.group);
        const char * why = nullptr;
        auto known = [](const kv_codec_traits * t) { return t->rotated || kv_codec_plain(t) || kv_codec_kivi(t) || t == &kv_codec_get(KV_CODEC_F16); };
        const bool kivi = kv_codec_kivi(c.kc);
        if (!known(c.kc) || !known(c.vc) || (!kivi && c.kc->block_tokens(c.kp) != 1) || c.vc->block_tokens(c.vp) != 1 ||
            (kivi && (c.kc->block_tokens(c.kp) < 1 || c.n % c.kc->block_tokens(c.kp) != 0)))
            why = "keys and values must each use rot2/rot3/rot4, q8/q4, kivi2/kivi4 or f16 (KIVI keys in whole blocks)";
        else if (c.rot_g > 1 && (c.rot_g > 8 || h % c.rot_g != c.rot_slot || !c.kc->rotated || st.post_rope))
            why = "grouped key rotation needs pre-RoPE rot keys in aligned groups of at most 8 heads";
        else if (hd != hdv || (hd != 32 && hd != 64 && hd != 128)) why = "head_dim == head_dim_v in {32, 64, 128} is required";
        else if (kg < 8 || vg < 8) why = "quantization groups of at least 8 channels are required";
        else if (!st.post_rope && (st.n_rot != hd || (st.rope != ROPE_STYLE_NORM && st.rope != ROPE_STYLE_NEOX))) why = "pre-RoPE keys need full NORM/NEOX RoPE";
        else if (first && (c.kc != first->kc || c.vc != first->vc || c.kp.group != first->kp.group || c.vp.group != first->vp.group || c.st != first->st))
            why = "every coded head of a layer must use the same codecs";
        if (why) return status(ERR_UNSUPPORTED_QUANT, strfmt("cuda attention: layer %d head %d (%s/%s): %s", il, h, c.kc->name, c.vc->name, why));
        if (!first) first = &c;
        is_coded[h] = 1;
        if (c.rot_g > 1) {
            rot_g.resize((size_t) nh, 1);
            rot_g[(size_t) h] = c.rot_g;
        }
        n_coded[h] = c.n;
        for (int32_t j = 0; j < c.n; j++) {
            int jj = 0;
            const uint8_t * k = c.key_block(j, jj);
            if (kivi) {  // the 32-token block's metadata once, then this token's code row
                const size_t cb = (size_t) hd * c.kc->bits / 8;
                if (jj == 0) kmeta.insert(kmeta.end(), k, k + (size_t) 4 * hd);
                kb.insert(kb.end(), k + (size_t) 4 * hd + (size_t) jj * cb, k + (size_t) 4 * hd + (size_t) (jj + 1) * cb);
            } else {
                kb.insert(kb.end(), k, k + c.k_block_bytes);
            }
            const uint8_t * v = c.value_block(j, jj);
            vb.insert(vb.end(), v, v + c.v_block_bytes);
            c_pos.push_back(c.pos_at(j));
        }
        if (c.perm) perm.insert(perm.end(), c.perm, c.perm + hd);
        else for (int d = 0; d < hd; d++) perm.push_back(d);
    }
    status st = pages_.alloc(std::max<size_t>(1, n_pages) * page_bytes_);
    if (!st.ok()) return st;
    size_t page = 0;
    payload_bytes_ = 0;
    for (int h = 0; h < nh; h++) {
        const kv_head_view hv = kv.head(il, h);
        for (int i = 0; i < hv.n_seg; i++, page++) {
            const kv_segment & sg = hv.seg[i];
            if (sg.n < 0 || sg.n > KV_PAGE_TOKENS)
                return status(ERR_INTERNAL, strfmt("cuda attention: layer %d head %d segment %d holds %d tokens (a page holds %d)", il, h, i, sg.n, KV_PAGE_TOKENS));
            seg_n[h].push_back(sg.n);
            pos[h].insert(pos[h].end(), sg.pos, sg.pos + sg.n);
            const size_t kbytes = (size_t) (sg.n + KV_TILE - 1) / KV_TILE * hd * KV_TILE * sizeof(f16_t);
            const size_t vbytes = (size_t) sg.n * hdv * sizeof(f16_t);
            if (!(st = pages_.upload(sg.k, kbytes, page * page_bytes_)).ok()) return st;
            if (!(st = pages_.upload(sg.v, vbytes, page * page_bytes_ + (size_t) KV_PAGE_TOKENS * hd * sizeof(f16_t))).ok()) return st;
            payload_bytes_ += (size_t) sg.n * (hd + hdv) * sizeof(f16_t);
        }
    }
    v_.head_dim = hd;
    v_.head_dim_v = hdv;
    if (!(st = build_tables(nh, seg_n, pos)).ok()) return st;
    if (!first) return status::success();
    const kv_coded_view & c = *first;
    const kv_storage_config & sc = *c.st;
    v_.kbits = c.kc->bits;
    v_.vbits = c.vc->bits;
    v_.kgroup = kv_codec_group(KV_CODEC_ROT2, hd, c.kp.group);
    v_.vgroup = kv_codec_group(KV_CODEC_ROT2, hdv, c.vp.group);
    v_.kivi = kv_codec_kivi(c.kc) ? c.kc->block_tokens(c.kp) : 0;
    v_.vkivi = kv_codec_kivi(c.vc) ? 1 : 0;
    v_.k_block_bytes = v_.kivi ? hd * c.kc->bits / 8 : (int) c.k_block_bytes;  // (KIVI: one token's code row)
    v_.v_block_bytes = (int) c.v_block_bytes;
    v_.kplain = c.kc->rotated ? 0 : 1;
    v_.vplain = c.vc->rotated ? 0 : 1;
    v_.pre_rope = sc.post_rope || v_.kplain ? 0 : 1;  // (kv_cache un-RoPEs rotated keys only)
    if (!rot_g.empty()) {
        status st2 = rot_g_.assign(rot_g.data(), rot_g.size() * 4);
        if (!st2.ok()) return st2;
        v_.rot_g = rot_g_.as<int32_t>();
    }
    v_.rope_neox = sc.rope == ROPE_STYLE_NEOX;
    v_.n_rot = sc.n_rot;
    v_.freq_base = sc.freq_base;
    v_.freq_scale = sc.freq_scale;
    v_.theta_scale = std::pow(sc.freq_base, -2.0f / (float) sc.n_rot);  // rope_cache_ref's host expression
    if (sc.freq_factors) {
        if (!(st = ff_.alloc((size_t) sc.n_rot / 2 * 4)).ok() || !(st = ff_.upload(sc.freq_factors, (size_t) sc.n_rot / 2 * 4)).ok()) return st;
        v_.freq_factors = ff_.as<float>();
    }
    payload_bytes_ += kb.size() + vb.size() + kmeta.size();
    return build_coded(is_coded, kb, vb, n_coded, c_pos, perm, kmeta);
}

status kv_layer_device::build_coded(const std::vector<int32_t> & is_coded, const std::vector<uint8_t> & kb, const std::vector<uint8_t> & vb,
                                    const std::vector<int32_t> & n_coded, const std::vector<int32_t> & c_pos, const std::vector<int32_t> & perm,
                                    const std::vector<uint8_t> & kmeta) {
    const int nh = (int) is_coded.size();
    std::vector<int32_t> c_first(nh, 0), perm_full;
    int total = 0, pi = 0;
    v_.max_n_coded = 0;
    for (int h = 0; h < nh; h++) {
        c_first[h] = total;
        total += n_coded[h];
        v_.max_n_coded = std::max(v_.max_n_coded, n_coded[h]);
    }
    // perm is given for the coded heads only (in head order): spread to [n_head_kv][head_dim], identity elsewhere
    if (!perm.empty()) {
        for (int h = 0; h < nh; h++) {
            for (int d = 0; d < v_.head_dim; d++) perm_full.push_back(is_coded[h] ? perm[(size_t) pi * v_.head_dim + d] : d);
            if (is_coded[h]) pi++;
        }
    }
    status st;
    auto put = [&](device_buffer & b, const void * src, size_t bytes) { return (st = b.assign(src, bytes)).ok(); };
    if (!put(is_coded_, is_coded.data(), is_coded.size() * 4) || !put(kblk_, kb.data(), kb.size()) || !put(vblk_, vb.data(), vb.size()) ||
        !put(c_first_, c_first.data(), c_first.size() * 4) || !put(n_coded_, n_coded.data(), n_coded.size() * 4) ||
        !put(c_pos_, c_pos.data(), c_pos.size() * 4))
        return st;
    if (!perm_full.empty() && !put(perm_, perm_full.data(), perm_full.size() * 4)) return st;
    if (!kmeta.empty() && !put(kmeta_, kmeta.data(), kmeta.size())) return st;
    v_.kmeta = kmeta.empty() ? nullptr : kmeta_.as<uint8_t>();
    v_.is_coded = is_coded_.as<int32_t>();
    v_.kblk = kblk_.as<uint8_t>();
    v_.vblk = vblk_.as<uint8_t>();
    v_.c_first = c_first_.as<int32_t>();
    v_.n_coded = n_coded_.as<int32_t>();
    v_.c_pos = c_pos_.as<int32_t>();
    v_.perm = perm_full.empty() ? nullptr : perm_.as<int32_t>();
    return status::success();
}

status kv_layer_device::synthetic(int n_head_kv, int head_dim, int head_dim_v, const std::vector<int32_t> & n_tokens, uint32_t seed, stream_t s) {
    reset();  // nothing of a previous layout (coded tables above all) may leak into this one
    if ((int) n_tokens.size() != n_head_kv)
        return status(ERR_INVALID_ARG, strfmt("cuda kv: synthetic layer: %zu token counts for %d heads", n_tokens.size(), n_head_kv));
    page_bytes_ = (size_t) KV_PAGE_TOKENS * (head_dim + head_dim_v) * sizeof(f16_t);
    std::vector<std::vector<int32_t>> seg_n(n_head_kv), pos(n_head_kv);
    size_t n_pages = 0;
    payload_bytes_ = 0;
    for (int h = 0; h < n_head_kv; h++) {
        const int32_t n = n_tokens[h];
        for (int32_t j = 0; j < n; j += KV_PAGE_TOKENS) seg_n[h].push_back(std::min<int32_t>(KV_PAGE_TOKENS, n - j));
        for (int32_t j = 0; j < n; j++) pos[h].push_back(j);
        n_pages += seg_n[h].size();
        payload_bytes_ += (size_t) n * (head_dim + head_dim_v) * sizeof(f16_t);
    }
    status st = pages_.alloc(std::max<size_t>(1, n_pages) * page_bytes_);
    if (!st.ok()) return st;
    if (!(st = fill_random(pages_.data(), GGML_TYPE_F16, (int64_t) (pages_.bytes() / 2), seed, 1.0f, s)).ok()) return st;
    v_.head_dim = head_dim;
    v_.head_dim_v = head_dim_v;
    return build_tables(n_head_kv, seg_n, pos);
}

namespace {
// token i = n0 + t of head h: page h * max_seg + i / 64; keys in transposed tiles [i%64 / 16][d][i % 16],
// values [i % 64][d] after the keys (the host layout of kv-cache.h)
__global__ void k_kv_append(uint8_t * pages, size_t page_bytes, int max_seg, int hd, int hdv, const float * k, const float * v, int n0) {
    const int t = blockIdx.x, h = blockIdx.y, nh = gridDim.y;
    const int i = n0 + t;
    uint16_t * page = (uint16_t *) (pages + ((size_t) h * max_seg + i / KV_PAGE_TOKENS) * page_bytes);
    kv_page_put(page, i % KV_PAGE_TOKENS, k + ((size_t) t * nh + h) * hd, v + ((size_t) t * nh + h) * hdv, hd, hdv);
}
__global__ void k_fill_i32(int32_t * p, int n, int32_t value) {
    for (int i = threadIdx.x; i < n; i += blockDim.x) p[i] = value;
}
} // namespace

status kv_layer_device::dense(int n_head_kv, int head_dim, int head_dim_v, int n_ctx, stream_t s) {
    reset();  // nothing of a previous layout (coded tables above all) may leak into this one
    if (n_head_kv <= 0 || head_dim <= 0 || head_dim_v <= 0 || n_ctx <= 0)
        return status(ERR_INVALID_ARG, strfmt("cuda kv: dense layer needs positive sizes (heads %d, head_dim %d/%d, n_ctx %d)", n_head_kv, head_dim, head_dim_v, n_ctx));
    page_bytes_ = (size_t) KV_PAGE_TOKENS * (head_dim + head_dim_v) * sizeof(f16_t);
    const int segs = (n_ctx + KV_PAGE_TOKENS - 1) / KV_PAGE_TOKENS;
    status st = pages_.alloc((size_t) n_head_kv * segs * page_bytes_);
    if (!st.ok()) return st;
    if (!(st = pages_.zero()).ok()) return st;
    std::vector<std::vector<int32_t>> seg_n(n_head_kv, std::vector<int32_t>(segs, KV_PAGE_TOKENS)), pos(n_head_kv);
    for (int h = 0; h < n_head_kv; h++) {
        pos[h].resize((size_t) segs * KV_PAGE_TOKENS);
        for (size_t j = 0; j < pos[h].size(); j++) pos[h][j] = (int32_t) j;
    }
    v_.head_dim = head_dim;
    v_.head_dim_v = head_dim_v;
    if (!(st = build_tables(n_head_kv, seg_n, pos)).ok()) return st;
    n_ctx_ = n_ctx;
    payload_bytes_ = 0;
    n_held_ = 0;
    return truncate(0, s);
}

status kv_layer_device::truncate(int n, stream_t s) {
    if (n_ctx_ <= 0) return status(ERR_INVALID_ARG, "cuda kv: truncate needs a dense layer");
    if (n < 0 || n > n_held_) return status(ERR_INVALID_ARG, strfmt("cuda kv: cannot keep %d of %d tokens", n, n_held_));
    n_held_ = n;
    const int ns = (n + KV_PAGE_TOKENS - 1) / KV_PAGE_TOKENS;
    v_.max_n_seg = ns;
    payload_bytes_ = (size_t) n * v_.n_head_kv * (v_.head_dim + v_.head_dim_v) * sizeof(f16_t);
    k_fill_i32<<<1, 128, 0, s>>>(n_seg_.as<int32_t>(), v_.n_head_kv, ns);
    CUDA_CHECK_LAUNCH("kv n_seg");
    return status::success();
}

status kv_layer_device::copy_from(const kv_layer_device & src, stream_t s) {
    if (&src == this) return status::success();
    if (n_ctx_ <= 0 || src.n_ctx_ != n_ctx_ || src.v_.n_head_kv != v_.n_head_kv || src.page_bytes_ != page_bytes_ || src.v_.max_seg != v_.max_seg)
        return status(ERR_INTERNAL, "cuda kv: a copy between dense layers of another geometry");
    const size_t span = (size_t) (src.n_held_ + KV_PAGE_TOKENS - 1) / KV_PAGE_TOKENS * page_bytes_, head = (size_t) v_.max_seg * page_bytes_;
    for (int h = 0; h < v_.n_head_kv && span > 0; h++)
        CUDA_CHECK(cudaMemcpyAsync(pages_.as<uint8_t>() + h * head, src.pages_.as<uint8_t>() + h * head, span, cudaMemcpyDeviceToDevice, s));
    n_held_ = src.n_held_;
    return truncate(n_held_, s);
}

size_t kv_layer_device::held_bytes(int n) const {
    return (size_t) v_.n_head_kv * (((size_t) n + KV_PAGE_TOKENS - 1) / KV_PAGE_TOKENS) * page_bytes_;
}

status kv_layer_device::download_held(std::vector<uint8_t> & out, stream_t s) const {
    if (n_ctx_ <= 0) return status(ERR_INVALID_ARG, "cuda kv: download_held needs a dense layer");
    const size_t span = held_bytes(n_held_) / (size_t) v_.n_head_kv, head = (size_t) v_.max_seg * page_bytes_;
    out.resize(held_bytes(n_held_));
    for (int h = 0; h < v_.n_head_kv && span > 0; h++)
        CUDA_CHECK(cudaMemcpyAsync(out.data() + h * span, pages_.as<uint8_t>() + h * head, span, cudaMemcpyDeviceToHost, s));
    CUDA_CHECK(cudaStreamSynchronize(s));
    return status::success();
}

status kv_layer_device::upload_held(const uint8_t * in, int n, stream_t s) {
    if (n_ctx_ <= 0 || n < 0 || n > n_ctx_) return status(ERR_INVALID_ARG, strfmt("cuda kv: cannot upload %d tokens into a dense layer of %d", n, n_ctx_));
    const size_t span = held_bytes(n) / (size_t) v_.n_head_kv, head = (size_t) v_.max_seg * page_bytes_;
    for (int h = 0; h < v_.n_head_kv && span > 0; h++)
        CUDA_CHECK(cudaMemcpyAsync(pages_.as<uint8_t>() + h * head, in + h * span, span, cudaMemcpyHostToDevice, s));
    n_held_ = n;
    const status st = truncate(n, s);
    CUDA_CHECK(cudaStreamSynchronize(s));
    return st;
}

status kv_layer_device::append(const float * k, const float * v, int n_tokens, stream_t s) {
    if (n_ctx_ <= 0) return status(ERR_INVALID_ARG, "cuda kv: append needs a dense layer");
    if (n_tokens <= 0) return status::success();
    if ((int64_t) n_held_ + n_tokens > n_ctx_)
        return status(ERR_CONTEXT_FULL, strfmt("cuda kv: %d new tokens at position %d exceed the context size %d", n_tokens, n_held_, n_ctx_));
    k_kv_append<<<dim3(n_tokens, v_.n_head_kv), 128, 0, s>>>(pages_.as<uint8_t>(), page_bytes_, v_.max_seg, v_.head_dim, v_.head_dim_v, k, v, n_held_);
    CUDA_CHECK_LAUNCH("kv append");
    n_held_ += n_tokens;
    return truncate(n_held_, s);
}

status kv_layer_device::synthetic_coded(int n_head_kv, int head_dim, const std::vector<int32_t> & n_f16, const std::vector<int32_t> & n_coded_h,
                                        int kbits, int vbits, int group, bool pre_rope, uint32_t seed, stream_t s) {
    reset();  // nothing of a previous layout (coded tables above all) may leak into this one
    const int D = head_dim;
    if ((int) n_f16.size() != n_head_kv || (int) n_coded_h.size() != n_head_kv)
        return status(ERR_INVALID_ARG, strfmt("cuda kv: synthetic coded layer: %zu/%zu token counts for %d heads", n_f16.size(), n_coded_h.size(), n_head_kv));
    if ((D != 32 && D != 64 && D != 128) || group < 8 || D % group || kbits < 2 || kbits > 4 || vbits < 2 || vbits > 4)
        return status(ERR_INVALID_ARG, strfmt("cuda kv: synthetic coded layer: head_dim %d, group %d, bits %d/%d not covered", D, group, kbits, vbits));
    page_bytes_ = (size_t) KV_PAGE_TOKENS * 2 * D * sizeof(f16_t);
    std::vector<std::vector<int32_t>> seg_n(n_head_kv), pos(n_head_kv);
    std::vector<int32_t> is_coded(n_head_kv, 0), c_pos, perm;
    size_t n_pages = 0;
    payload_bytes_ = 0;
    for (int h = 0; h < n_head_kv; h++) {
        const int32_t nc = n_coded_h[h], nf = n_f16[h];
        // f16 tokens: 16 protected (positions 0..15), then the staging window after the coded tokens
        for (int32_t j = 0; j < nf; j++) pos[h].push_back(nc > 0 && j >= 16 ? nc + j : j);
        for (int32_t j = 0; j < nf; j += KV_PAGE_TOKENS) seg_n[h].push_back(std::min<int32_t>(KV_PAGE_TOKENS, nf - j));
        n_pages += seg_n[h].size();
        payload_bytes_ += (size_t) nf * 2 * D * sizeof(f16_t);
        is_coded[h] = nc > 0;
        for (int32_t j = 0; j < nc; j++) c_pos.push_back(16 + j);
    }
    status st = pages_.alloc(std::max<size_t>(1, n_pages) * page_bytes_);
    if (!st.ok()) return st;
    if (!(st = fill_random(pages_.data(), GGML_TYPE_F16, (int64_t) (pages_.bytes() / 2), seed, 1.0f, s)).ok()) return st;
    v_.head_dim = D;
    v_.head_dim_v = D;
    if (!(st = build_tables(n_head_kv, seg_n, pos)).ok()) return st;
    // codes: random bits, scales 2/(2^b - 1) (values in [-1, 1]), zero-points at mid range
    const int kbb = D * kbits / 8 + D / group * 3, vbb = D * vbits / 8 + D / group * 3;
    std::vector<uint8_t> kb((size_t) c_pos.size() * kbb), vb((size_t) c_pos.size() * vbb);
    uint32_t x = seed * 2654435761u + 1;
    auto rnd = [&]() { x ^= x << 13; x ^= x >> 17; x ^= x << 5; return x; };
    auto fill = [&](std::vector<uint8_t> & b, int bb, int bits) {
        const int ng = D / group, cb = D * bits / 8;
        const f16_t sc = f32_to_f16(2.0f / (float) ((1 << bits) - 1));
        for (size_t t = 0; t < b.size() / bb; t++) {
            uint8_t * blk = b.data() + t * bb;
            for (int i = 0; i < cb; i++) blk[i] = (uint8_t) rnd();
            for (int g = 0; g < ng; g++) {
                std::memcpy(blk + cb + 2 * g, &sc, 2);
                blk[cb + 2 * ng + g] = (uint8_t) ((1 << bits) / 2);
            }
        }
    };
    fill(kb, kbb, kbits);
    fill(vb, vbb, vbits);
    for (int h = 0; h < n_head_kv; h++) {  // a random permutation per coded head
        if (!is_coded[h]) continue;
        std::vector<int32_t> p(D);
        for (int d = 0; d < D; d++) p[d] = d;
        for (int d = D - 1; d > 0; d--) std::swap(p[d], p[rnd() % (uint32_t) (d + 1)]);
        perm.insert(perm.end(), p.begin(), p.end());
    }
    v_.kbits = kbits;
    v_.vbits = vbits;
    v_.kgroup = v_.vgroup = group;
    v_.k_block_bytes = kbb;
    v_.v_block_bytes = vbb;
    v_.pre_rope = pre_rope ? 1 : 0;
    v_.rope_neox = 1;
    v_.n_rot = D;
    v_.freq_base = 1000000.0f;
    v_.freq_scale = 1.0f;
    v_.theta_scale = std::pow(v_.freq_base, -2.0f / (float) D);
    payload_bytes_ += kb.size() + vb.size();
    return build_coded(is_coded, kb, vb, n_coded_h, c_pos, perm);
}

} // namespace cuda
} // namespace core
