// CPU reference: core::attention_ref (native/kernels/cpu/attention.cpp)
//   for each query head h (KV head h / G), token j of that head with pos[j] <= q_pos:
//     s_j = scale * Σ_d f16(q[d]) * k_j[d];  out = Σ_j softmax(s)_j v_j
// Kernel 1 (grid n_head_kv x n_split x n_tokens, 128 threads): a split is a run of segments (pages) of
// its head; each page's keys and values are copied to shared memory once and used by all G query heads
// of the group; online softmax state (m, l) per query head, acc in registers (thread = output dim).
// Kernel 2 merges the splits: out = Σ_s e^(m_s - M) acc_s / Σ_s e^(m_s - M) l_s.
#include <algorithm>
#include <cmath>

#include "attention.cuh"
#include "common.cuh"

#include "../kv/kv-cache.h"

namespace core {
namespace cuda {
namespace {

constexpr int THREADS = 128;
constexpr int MAXG = 8;
constexpr int MAXD = 256;
constexpr int DPT = MAXD / THREADS;  // output dims per thread

size_t attn_smem_bytes(int G, int hd, int hdv) {
    return (size_t) G * hd * 4 + (size_t) KV_PAGE_TOKENS * hd * 2 + (size_t) KV_PAGE_TOKENS * hdv * 2 + (size_t) MAXG * KV_PAGE_TOKENS * 4 +
           3 * MAXG * 4;
}

__global__ void __launch_bounds__(THREADS) k_attn_split(kv_layer_view kv, const float * q, const int32_t * q_pos, int n_head,
                                                        float scale, int n_split, float * partial) {
    extern __shared__ float4 smem4[];
    const int hkv = blockIdx.x, split = blockIdx.y, t = blockIdx.z, tid = threadIdx.x;
    const int G = n_head / kv.n_head_kv, hd = kv.head_dim, hdv = kv.head_dim_v;
    float * q_s = (float *) smem4;                                        // [G][hd]
    uint16_t * k_s = (uint16_t *) (q_s + G * hd);                          // [4][hd][16]
    uint16_t * v_s = k_s + KV_PAGE_TOKENS * hd;                            // [64][hdv]
    float * p_s = (float *) (v_s + KV_PAGE_TOKENS * hdv);                  // [MAXG][64]
    float * m_s = p_s + MAXG * KV_PAGE_TOKENS, * l_s = m_s + MAXG, * a_s = l_s + MAXG;

    const int32_t qp = q_pos[t];
    for (int i = tid; i < G * hd; i += THREADS) {
        const int g = i / hd, d = i % hd;
        q_s[i] = __half2float(__float2half_rn(q[((size_t) t * n_head + hkv * G + g) * hd + d]));
    }
    if (tid < MAXG) { m_s[tid] = -INFINITY; l_s[tid] = 0.0f; }
    float acc[MAXG][DPT];
#pragma unroll
    for (int g = 0; g < MAXG; g++)
#pragma unroll
        for (int k = 0; k < DPT; k++) acc[g][k] = 0.0f;

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
        for (int i = tid; i < G * KV_PAGE_TOKENS; i += THREADS) {
            const int g = i / KV_PAGE_TOKENS, j = i % KV_PAGE_TOKENS;
            float sc = -INFINITY;
            if (j < n && pos[j] <= qp) {
                const uint16_t * kt = k_s + (size_t) (j / KV_TILE) * hd * KV_TILE + (j % KV_TILE);
                const float * qg = q_s + g * hd;
                float dot = 0.0f;
                for (int d = 0; d < hd; d++) dot = fmaf(qg[d], f16_bits_to_f32(kt[d * KV_TILE]), dot);
                sc = dot * scale;
            }
            p_s[g * KV_PAGE_TOKENS + j] = sc;
        }
        __syncthreads();
        const int warp = tid / WARP, lane = tid % WARP;
        for (int g = warp; g < G; g += THREADS / WARP) {
            float * pg = p_s + g * KV_PAGE_TOKENS;
            const float a = pg[lane], b = pg[lane + WARP];
            const float mx = warp_max(fmaxf(a, b));
            const float m_old = m_s[g], m_new = fmaxf(m_old, mx);
            float pa = 0.0f, pb = 0.0f, alpha = 1.0f;
            if (m_new != -INFINITY) {
                pa = expf(a - m_new);
                pb = expf(b - m_new);
                alpha = expf(m_old - m_new);
            }
            pg[lane] = pa;
            pg[lane + WARP] = pb;
            const float sum = warp_sum(pa + pb);
            if (lane == 0) { l_s[g] = l_s[g] * alpha + sum; m_s[g] = m_new; a_s[g] = alpha; }
        }
        __syncthreads();
#pragma unroll
        for (int g = 0; g < MAXG; g++) {
            if (g >= G) break;
            const float alpha = a_s[g];
            const float * pg = p_s + g * KV_PAGE_TOKENS;
#pragma unroll
            for (int k = 0; k < DPT; k++) {
                const int d = tid + k * THREADS;
                if (d >= hdv) break;
                float a = acc[g][k] * alpha;
                for (int j = 0; j < n; j++) a = fmaf(pg[j], f16_bits_to_f32(v_s[j * hdv + d]), a);
                acc[g][k] = a;
            }
        }
    }
    __syncthreads();
    const int stride = 2 + hdv;
#pragma unroll
    for (int g = 0; g < MAXG; g++) {
        if (g >= G) break;
        float * part = partial + (((size_t) t * n_head + hkv * G + g) * n_split + split) * stride;
        if (tid == 0) { part[0] = m_s[g]; part[1] = l_s[g]; }
#pragma unroll
        for (int k = 0; k < DPT; k++) {
            const int d = tid + k * THREADS;
            if (d < hdv) part[2 + d] = acc[g][k];
        }
    }
}

__global__ void k_attn_merge(const float * partial, int n_split, int hdv, float * out) {
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
    int n_split = p.n_split;
    if (n_split <= 0) {
        int dev = 0, sms = 0;
        CUDA_CHECK(cudaGetDevice(&dev));
        CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
        n_split = std::max(1, (2 * sms + kv.n_head_kv * p.n_tokens - 1) / (kv.n_head_kv * p.n_tokens));
    }
    n_split = std::max(1, std::min(n_split, std::max(1, kv.max_n_seg)));
    const size_t need = (size_t) p.n_tokens * p.n_head * n_split * (2 + kv.head_dim_v) * sizeof(float);
    if (ws.partial.bytes() < need) {
        status st = ws.partial.alloc(need);
        if (!st.ok()) return st;
    }
    const size_t smem = attn_smem_bytes(G, kv.head_dim, kv.head_dim_v);
    static size_t smem_set = 48 * 1024;
    if (smem > smem_set) {
        CUDA_CHECK(cudaFuncSetAttribute(k_attn_split, cudaFuncAttributeMaxDynamicSharedMemorySize, (int) smem));
        smem_set = smem;
    }
    k_attn_split<<<dim3(kv.n_head_kv, n_split, p.n_tokens), THREADS, smem, s>>>(kv, q, q_pos, p.n_head, p.scale, n_split,
                                                                                  ws.partial.as<float>());
    CUDA_CHECK_LAUNCH("attention split");
    k_attn_merge<<<dim3(p.n_head, p.n_tokens), 128, 0, s>>>(ws.partial.as<float>(), n_split, kv.head_dim_v, out);
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

status kv_layer_device::upload(const kv_cache & kv, int il) {
    const kv_cache_config & cfg = kv.config();
    const int nh = cfg.n_head_kv, hd = cfg.head_dim, hdv = cfg.head_dim_v;
    page_bytes_ = (size_t) KV_PAGE_TOKENS * (hd + hdv) * sizeof(f16_t);
    std::vector<std::vector<int32_t>> seg_n(nh), pos(nh);
    size_t n_pages = 0;
    for (int h = 0; h < nh; h++) {
        const kv_head_view hv = kv.head(il, h);
        if (hv.coded) return status(ERR_UNSUPPORTED_QUANT, strfmt("cuda attention: layer %d head %d uses a storage codec (not supported on CUDA yet)", il, h));
        n_pages += (size_t) hv.n_seg;
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
    return build_tables(nh, seg_n, pos);
}

status kv_layer_device::synthetic(int n_head_kv, int head_dim, int head_dim_v, const std::vector<int32_t> & n_tokens, uint32_t seed, stream_t s) {
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
    const int i = n0 + t, j = i % KV_PAGE_TOKENS;
    uint16_t * page = (uint16_t *) (pages + ((size_t) h * max_seg + i / KV_PAGE_TOKENS) * page_bytes);
    uint16_t * kt = page + (size_t) (j / KV_TILE) * hd * KV_TILE + (j % KV_TILE);
    uint16_t * vt = page + (size_t) KV_PAGE_TOKENS * hd + (size_t) j * hdv;
    const float * ks = k + ((size_t) t * nh + h) * hd;
    const float * vs = v + ((size_t) t * nh + h) * hdv;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) kt[(size_t) d * KV_TILE] = f32_to_f16_bits(ks[d]);
    for (int d = threadIdx.x; d < hdv; d += blockDim.x) vt[d] = f32_to_f16_bits(vs[d]);
}
__global__ void k_fill_i32(int32_t * p, int n, int32_t value) {
    for (int i = threadIdx.x; i < n; i += blockDim.x) p[i] = value;
}
} // namespace

status kv_layer_device::dense(int n_head_kv, int head_dim, int head_dim_v, int n_ctx, stream_t s) {
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

status kv_layer_device::append(const float * k, const float * v, int n_tokens, stream_t s) {
    if (n_ctx_ <= 0) return status(ERR_INVALID_ARG, "cuda kv: append needs a dense layer");
    if (n_tokens <= 0) return status::success();
    if (n_held_ + n_tokens > n_ctx_)
        return status(ERR_CONTEXT_FULL, strfmt("cuda kv: %d new tokens at position %d exceed the context size %d", n_tokens, n_held_, n_ctx_));
    k_kv_append<<<dim3(n_tokens, v_.n_head_kv), 128, 0, s>>>(pages_.as<uint8_t>(), page_bytes_, v_.max_seg, v_.head_dim, v_.head_dim_v, k, v, n_held_);
    CUDA_CHECK_LAUNCH("kv append");
    n_held_ += n_tokens;
    return truncate(n_held_, s);
}

} // namespace cuda
} // namespace core
