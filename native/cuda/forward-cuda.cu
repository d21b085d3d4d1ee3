// The forward pass on the device (forward-cuda.h), step for step as forward_chunk (model/forward.cpp):
//   x = embed(tokens)
//   per layer: h = rmsnorm(x)·w_attn_norm; q,k,v = h·Wq,Wk,Wv (+bias: qwen2); qwen3: per-head rmsnorm(q,k);
//              RoPE(q,k); cache ← k,v; a = softmax(q·kᵀ/√d)·v over the cache; x += a·Wo
//              h = rmsnorm(x)·w_ffn_norm; x += (silu(h·Wgate) ⊙ h·Wup)·Wdown
//   logits = rmsnorm(x_last)·w_out_norm · Woutᵀ
#include "forward-cuda.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "add.cuh"
#include "attention.cuh"
#include "common.cuh"
#include "kv-ring.cuh"
#include "matmul.cuh"
#include "rms_norm.cuh"
#include "rope.cuh"
#include "silu_mul.cuh"

namespace core {
namespace cuda {

namespace {

// Per-query-head caches (lazy's reference layout): each query head's copy of its group's key or value,
// x [T][n_kv][D] -> out [T][n_kv·G][D] (forward.cpp's kx/vx).
__global__ void k_expand_heads(const float * x, int n_kv, int G, int D, float * out) {
    const int t = blockIdx.x, h = blockIdx.y;
    for (int d = threadIdx.x; d < D; d += blockDim.x) out[((size_t) t * n_kv * G + h) * D + d] = x[((size_t) t * n_kv + h / G) * D + d];
}

__global__ void k_positions(int32_t * pos, int n, int32_t pos0) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) pos[i] = pos0 + i;
}

struct dev_weight {
    device_buffer buf;
    weight_dev w;
    status upload(const weight_view & v, const char * what, size_t * total) {
        if (!supports_op(op::MATMUL, v.type))
            return status(ERR_UNSUPPORTED_QUANT, strfmt("cuda forward: %s has type %s, which has no CUDA kernel", what, ggml_type_name(v.type)));
        const size_t bytes = v.row_bytes * (size_t) v.n_out;
        status st = buf.alloc(bytes);
        if (!st.ok()) return status(st.code, strfmt("cuda forward: %s (%zu bytes): %s", what, bytes, st.message.c_str()));
        if (!(st = buf.upload(v.data, bytes)).ok()) return st;
        w.data = buf.data();
        w.type = v.type;
        w.n_in = v.n_in;
        w.n_out = v.n_out;
        w.row_bytes = v.row_bytes;
        *total += bytes;
        return status::success();
    }
};

struct dev_vec {
    device_buffer buf;
    const float * p = nullptr;  // nullptr: absent (optional tensor)
    status upload(const float * host, size_t n, size_t * total) {
        if (!host) return status::success();
        status st = buf.alloc(n * sizeof(float));
        if (!st.ok() || !(st = buf.upload(host, n * sizeof(float))).ok()) return st;
        p = buf.as<float>();
        *total += n * sizeof(float);
        return status::success();
    }
};

struct layer_dev {
    dev_vec attn_norm, bq, bk, bv, q_norm, k_norm, ffn_norm;
    dev_weight wq, wk, wv, wo, gate, up, down;
};

} // namespace

constexpr int kChunk = 512;

struct device_model::impl {
    std::shared_ptr<const model> m;
    dev_weight tok_embd, output;
    weight_dev out_w;  // output, or tok_embd when tied
    dev_vec output_norm, rope_freqs;
    std::vector<layer_dev> layers;
    size_t weight_bytes = 0;
};

struct forward_session::impl {
    std::shared_ptr<const device_model> dm;
    const device_model::impl * W = nullptr;
    const model * m = nullptr;
    backend * be = nullptr;
    int n_ctx = 0, n_past = 0, cap = 0;
    int chunk = kChunk;
    std::vector<kv_layer_device> kv;  // [n_layer] (dense cache)
    // compressed cache: host bookkeeping and device data per layer
    bool ring = false;
    int stream_budget = 0;             // S + R (memory report)
    std::vector<kv_ring_layer> rl;
    std::vector<kv_ring_device> rd;
    std::shared_ptr<device_page_pool> pool;  // the f16 pages (the context's, shared by its sequences)
    ring_codec codec;                  // what the layers were made with (a checkpoint makes its layers alike)
    std::vector<int32_t> perm;         // [n_layer][n_head_kv][head_dim] key channel permutation, or empty
    ring_step step;
    // kv_cache's step counters and what the evictions did (a checkpoint and a copy take them along)
    struct counters {
        int32_t dstep = 0, prompt = 0;
        int64_t evicted = 0, compactions = 0;
        double compaction_s = 0;
    };
    counters counts() const { return {dstep, prompt, evicted, compactions, compaction_s}; }
    void set_counts(const counters & c) {
        dstep = c.dstep;
        prompt = c.prompt;
        evicted = c.evicted;
        compactions = c.compactions;
        compaction_s = c.compaction_s;
    }
    // The prefix checkpoint (forward_session::save_checkpoint): the books of every layer, and the device data of
    // the heads a rewind may not restore exactly (checkpoint_heads)
    struct checkpoint {
        int n = -1;  // tokens (-1: none)
        std::vector<kv_ring_layer> rl;
        std::vector<kv_ring_device> rd;
        counters at;
    } ckpt;
    // The heads of layer L a checkpoint copies (saved: STREAM, CODED and EVICT heads; a plain f16 head cuts exactly)
    // and those whose quantized tokens it copies too (codes: EVICT heads; a CODED head's only grow, so the live head
    // keeps them). Returns whether any head is saved.
    static bool checkpoint_heads(const kv_ring_layer & L, std::vector<char> & saved, std::vector<char> & codes) {
        saved.assign((size_t) L.n_head_kv(), 0);
        codes.assign((size_t) L.n_head_kv(), 0);
        bool any = false;
        for (int h = 0; h < L.n_head_kv(); h++) {
            any |= (saved[(size_t) h] = L.kind(h) != KV_RING_DENSE) != 0;
            codes[(size_t) h] = L.kind(h) == KV_RING_EVICT;
        }
        return any;
    }
    // evicting heads (lazy): kv_cache's decode step and prompt length, the scores scratch attention fills at a
    // decode step, the gathers' scratch, and what the evictions did
    bool evict = false;
    int32_t dstep = 0, prompt = 0;
    device_buffer scores, ml, gtmp;
    // single-token evictions run on the device in this pass (layer, head), their outcomes [n_layer][n_head_kv]
    // (4 int32 each, kv_ring_device::evict_one) and a pinned host copy
    std::vector<std::pair<int, int>> ones;
    device_buffer one_out;
    int32_t * one_host = nullptr;
    int64_t evicted = 0, compactions = 0;
    double compaction_s = 0;
    std::vector<float> top_v;
    std::vector<int32_t> top_i;
    device_buffer tok, pos, x, xn, q, k, v, attn, o, gate, up, logits;
    device_buffer kx, vx;  // per-query-head caches: keys and values copied per query head
    attn_workspace ws;

    ~impl() {
        if (one_host) cudaFreeHost(one_host);
    }

    status reserve(int T) {
        if (T <= cap) return status::success();
        cap = 0;  // alloc frees first: after a failure part-way no buffer may be assumed to hold T tokens
        const hparams & hp = m->hp;
        const size_t n_q = (size_t) hp.n_head * hp.head_dim, n_k = (size_t) hp.n_head_kv * hp.head_dim, n_v = (size_t) hp.n_head_kv * hp.head_dim_v;
        const size_t n_attn = (size_t) hp.n_head * hp.head_dim_v;
        const size_t Tz = (size_t) T;
        status st;
        if (!(st = tok.alloc(Tz * 4)).ok() || !(st = pos.alloc(Tz * 4)).ok() || !(st = x.alloc(Tz * hp.n_embd * 4)).ok() ||
            !(st = xn.alloc(Tz * hp.n_embd * 4)).ok() || !(st = q.alloc(Tz * n_q * 4)).ok() || !(st = k.alloc(Tz * n_k * 4)).ok() ||
            !(st = v.alloc(Tz * n_v * 4)).ok() || !(st = attn.alloc(Tz * n_attn * 4)).ok() || !(st = o.alloc(Tz * hp.n_embd * 4)).ok() ||
            !(st = gate.alloc(Tz * hp.n_ff * 4)).ok() || !(st = up.alloc(Tz * hp.n_ff * 4)).ok())
            return st;
        cap = T;
        return status::success();
    }

    // forward_chunk's sink candidates: the 20 largest |x| of the layer input over the chunk (per token on
    // the device, the top 20 of those here), merged into the layer's sink set as kv_cache::add_sinks does
    status ring_sinks(int il, int T, stream_t s) {
        const int n_embd = (int) m->hp.n_embd, K = 20;
        status st = rd[(size_t) il].top_abs(x.as<float>(), T, n_embd, K, top_v, top_i, s);
        if (!st.ok()) return st;
        std::vector<int32_t> order(top_v.size());
        for (size_t i = 0; i < order.size(); i++) order[i] = (int32_t) i;
        const size_t k = std::min<size_t>((size_t) K, order.size());
        std::partial_sort(order.begin(), order.begin() + (ptrdiff_t) k, order.end(), [&](int32_t a, int32_t b) {
            return top_v[(size_t) a] > top_v[(size_t) b] || (top_v[(size_t) a] == top_v[(size_t) b] && a < b);
        });
        std::vector<int32_t> found;
        std::vector<float> mag;
        for (size_t i = 0; i < k; i++) {
            found.push_back(n_past + order[i] / K);
            mag.push_back(top_v[(size_t) order[i]]);
        }
        rl[(size_t) il].add_sinks(found, mag);
        return status::success();
    }

    // One layer's cache step on the compressed cache: the host decides (append, then retain), the device
    // appends, attends over what is in view, then quantizes / copies / clears as decided.
    status ring_attention(int il, const attn_decode_params & ap, int T, stream_t s) {
        kv_ring_layer & L = rl[(size_t) il];
        kv_ring_device & D = rd[(size_t) il];
        const int H = L.n_head_kv();
        step.set_rc(L);
        status st = L.append(n_past, T);
        if (!st.ok()) return st;
        if (!(st = D.map_pages(L, s)).ok()) return st;  // (a failure: eval rolls the layer back and gives the pages back)
        step.set_view(L);
        L.retain(n_past + T, step.ops, dstep, prompt);
        // an evicting layer: attention keeps the chunk's last row's scores, observe updates the statistics (lazy: at
        // decode steps only, as lazy_observe)
        const kv_policy_kind kind = L.policy().kind;
        const bool observing = L.has_evict() && !L.stats_free() && !L.scores_from_keys() && (dstep > 0 || kind != KV_POLICY_LAZY);
        const int G = (int) m->hp.n_head / H;  // (per-query-head caches: 1)
        D.set_append_last(kind == KV_POLICY_LAZY && dstep > 0 ? dstep - 1 : 0);  // lazy_append's last; h2o/tova: 0.0f
        D.set_scores(observing ? scores.as<float>() : nullptr, ml.as<float>(), G);
        if (!(st = D.stage(step, s)).ok()) return st;
        const float * kk = k.as<float>(), * vv = v.as<float>();
        if (H != (int) m->hp.n_head_kv) {  // per-query-head caches
            const int Gm = (int) (m->hp.n_head / m->hp.n_head_kv);
            if (kx.bytes() < (size_t) T * H * m->hp.head_dim * 4 && !(st = kx.alloc((size_t) T * H * m->hp.head_dim * 4)).ok()) return st;
            if (vx.bytes() < (size_t) T * H * m->hp.head_dim_v * 4 && !(st = vx.alloc((size_t) T * H * m->hp.head_dim_v * 4)).ok()) return st;
            k_expand_heads<<<dim3(T, H), 128, 0, s>>>(kk, (int) m->hp.n_head_kv, Gm, (int) m->hp.head_dim, kx.as<float>());
            k_expand_heads<<<dim3(T, H), 128, 0, s>>>(vv, (int) m->hp.n_head_kv, Gm, (int) m->hp.head_dim_v, vx.as<float>());
            CUDA_CHECK_LAUNCH("per-query-head keys and values");
            kk = kx.as<float>();
            vv = vx.as<float>();
        }
        if (!(st = D.append(kk, vv, n_past, T, s)).ok()) return st;
        if (!(st = attention_decode(ap, q.as<float>(), pos.as<int32_t>(), D.view(), attn.as<float>(), ws, s)).ok()) return st;
        if (observing && !(st = D.observe(kind, dstep, L.policy().alpha, G, L.layer_mean(), (int) m->hp.n_head, s)).ok()) return st;
        if (observing && !(st = ring_evict_one(il, s)).ok()) return st;
        if (!(st = D.apply(s, gtmp)).ok()) return st;
        return trim((int) il);
    }

    // The device layer il of this session's geometry for books L (the pages from the session's pool); codes_of:
    // which coded heads get arrays for quantized tokens (kv_ring_device::create).
    status make_layer(int il, const kv_ring_layer & L, kv_ring_device & D, const std::vector<char> * codes_of = nullptr) const {
        const hparams & hp = m->hp;
        const size_t per_layer = (size_t) L.n_head_kv() * hp.head_dim;
        const int32_t * pm = perm.empty() ? nullptr : perm.data() + (size_t) il * per_layer;
        return D.create(L, (int) hp.head_dim, (int) hp.head_dim_v, codec, pm, pool, be->stream(), codes_of);
    }

    // Layer il of a checkpoint: D takes the heads a checkpoint saves from src (books L). D is made here (with
    // arrays for the quantized tokens of the evicting heads only: the codes it copies) unless it is a layer of an
    // earlier checkpoint, whose arrays and pages the copy reuses — a chat saves one each turn — and then halves its
    // arrays where they are four times what they hold.
    status checkpoint_layer(int il, const kv_ring_layer & L, const kv_ring_device & src, kv_ring_device & D) const {
        std::vector<char> saved, codes;
        checkpoint_heads(L, saved, codes);
        const bool reuse = D.created();
        status st = reuse ? status::success() : make_layer(il, L, D, &codes);
        if (st.ok()) st = D.copy_from(src, L, saved, codes, true, be->stream());
        if (st.ok() && reuse) st = D.shrink(L, be->stream());
        return st;
    }

    void drop_checkpoint() {
        ckpt.rd.clear();  // (its pages go back to the pool)
        ckpt = checkpoint{};
    }

    // Back to the checkpoint: every layer's books and its saved heads' data from the checkpoint, the other heads
    // (f16 FULL: exact) cut to its length. A failure part-way leaves each layer whole but the layers apart: the
    // caller clears the cache.
    status restore_checkpoint() {
        std::vector<kv_ring_ops> ops;
        std::vector<char> saved, codes;
        for (size_t il = 0; il < rl.size(); il++) {
            // (the saved heads' clears are moot: their slots come from the checkpoint whole)
            kv_ring_layer cut = rl[il];
            cut.truncate(ckpt.n, ops);
            checkpoint_heads(rl[il], saved, codes);
            status st = rd[il].copy_from(ckpt.rd[il], ckpt.rl[il], saved, codes, true, be->stream());
            if (!st.ok()) return st;
            rl[il] = std::move(cut);
            rl[il].copy_from(ckpt.rl[il], saved);
            if (!(st = trim((int) il)).ok()) return st;
        }
        n_past = ckpt.n;
        set_counts(ckpt.at);
        return status::success();
    }

    // Gives back what layer il's heads no longer hold, after the step's ops are enqueued (their gathers are ahead
    // of any later user of a page in the stream): the f16 pages past each head's slots, and half of the slot and
    // coded arrays once every head fills a quarter of them or less.
    status trim(int il) {
        rd[(size_t) il].release_pages(rl[(size_t) il]);
        return rd[(size_t) il].shrink(rl[(size_t) il], be->stream());
    }

    // The heads of layer il that drop exactly one token at this step (kv_ring_layer::evicts_one): the device
    // selects and removes it right after the observation; ring_evict keeps the books once the outcome is down.
    status ring_evict_one(int il, stream_t s) {
        kv_ring_layer & L = rl[(size_t) il];
        const kv_policy * pol = kv_policy_get(L.policy().kind);
        if (!pol || !pol->holds_budget || (int) L.sinks().size() > RING_EVICT_MAX_SINKS) return status::success();
        const int H = L.n_head_kv();
        ring_evict_one_args a;
        a.budget = pol->budget(dstep, prompt, L.policy());
        a.recent = pol->recent(L.policy());
        a.protect = L.policy().protect;
        a.n_sinks = (int) L.sinks().size();
        for (int i = 0; i < a.n_sinks; i++) a.sinks[i] = L.sinks()[(size_t) i];
        for (int h = 0; h < H; h++) {
            if (!L.evicts_one(h, dstep, prompt)) continue;
            if (a.n == RING_EVICT_MAX_HEADS) {
                status st = rd[(size_t) il].evict_one(a, one_out.as<int32_t>(), s);
                if (!st.ok()) return st;
                a.n = 0;
            }
            a.head[a.n] = h;
            a.rc[a.n] = L.rc(h);
            a.nq[a.n] = L.n_coded(h);
            a.out[a.n] = il * H + h;
            a.n++;
            ones.push_back({il, h});
        }
        if (a.n == 0) return status::success();
        L.note_device_eviction();
        return rd[(size_t) il].evict_one(a, one_out.as<int32_t>(), s);
    }

    // kv_cache::retain's eviction step for the heads whose policy is due at this step (the layers' other work is
    // done: nothing reads their caches again in this forward pass). The outcomes of the single-token evictions
    // the device already ran come down (ring_evict_one), with the statistics (lazy, h2o, tova) or the partial
    // key-based scores (snapkv, rkv) of the other due heads, in one synchronization; the host keeps the books or
    // selects as kv_cache does, and the device gathers and flushes. A single eviction the device left to the
    // host (more than one token goes) takes a second round.
    status ring_evict(stream_t s) {
        if (!evict) return status::success();
        // one: the device's single eviction (-3: none); raw: downloaded statistics, or qk: partial scores (snapkv, rkv)
        struct due_head { int il, h; std::vector<int32_t> raw; int32_t one = -3; kv_ring_device::qk_partials qk; };
        std::vector<due_head> due;
        std::vector<char> launched(rl.empty() ? 0 : rl.size() * (size_t) rl[0].n_head_kv(), 0);
        for (const auto & o : ones) launched[(size_t) o.first * rl[0].n_head_kv() + o.second] = 1;
        for (size_t il = 0; il < rl.size(); il++)
            for (int h = 0; h < rl[il].n_head_kv(); h++)  // (streaming: retain did it)
                if (!launched[il * rl[0].n_head_kv() + h] && !rl[il].stats_free() && rl[il].due(h, dstep, prompt)) due.push_back({(int) il, h, {}});
        if (due.empty() && ones.empty()) return status::success();
        const auto t0 = std::chrono::steady_clock::now();
        status st;
        // the statistics of the heads the host selects for, and the outcomes of the device's single evictions
        auto download = [&](size_t from) {
            for (size_t i = from; i < due.size(); i++) {
                due_head & d = due[i];
                if (d.one != -3) continue;
                const kv_ring_layer & L = rl[(size_t) d.il];
                if (L.scores_from_keys()) {  // (f16 heads: kv_storage_check keeps such heads unquantized)
                    status e = rd[(size_t) d.il].score_qk(d.h, L.rc(d.h), L.policy().kind == KV_POLICY_RKV, (int) m->hp.n_head / L.n_head_kv(),
                                                          1.0f / std::sqrt((float) m->hp.head_dim), gtmp, d.qk, s);
                    if (!e.ok()) return e;
                    continue;
                }
                d.raw.resize((size_t) 2 * (L.n_coded(d.h) + L.rc(d.h)));
                status e = rd[(size_t) d.il].download_stats(d.h, L.n_coded(d.h), L.rc(d.h), d.raw.data(), d.raw.data() + 2 * L.n_coded(d.h), s);
                if (!e.ok()) return e;
            }
            return status::success();
        };
        if (!(st = download(0)).ok()) return st;
        if (!ones.empty()) CUDA_CHECK(cudaMemcpyAsync(one_host, one_out.data(), one_out.bytes(), cudaMemcpyDeviceToHost, s));
        if (!(st = be->synchronize()).ok()) return st;
        const size_t n_host = due.size();
        for (const auto & o : ones) {  // the device left these to the host (more than one token goes): a second round
            const int32_t * r = one_host + (size_t) 4 * (o.first * rl[0].n_head_kv() + o.second);
            due.push_back({o.first, o.second, {}, r[0] == 2 ? -3 : r[0] == 1 ? r[1] : -1});
        }
        ones.clear();
        bool again = false;
        for (size_t i = n_host; i < due.size(); i++) again |= due[i].one == -3;
        if (again && (!(st = download(n_host)).ok() || !(st = be->synchronize()).ok())) return st;
        std::stable_sort(due.begin(), due.end(), [](const due_head & x, const due_head & y) { return x.il < y.il; });
        std::vector<int32_t> pa, keep;
        std::vector<float> qk_scores;
        for (size_t i = 0; i < due.size();) {
            const int il = due[i].il;
            kv_ring_layer & L = rl[(size_t) il];
            const int H = L.n_head_kv();
            ring_step ev;
            ev.ops.assign((size_t) H, kv_ring_ops{});
            for (; i < due.size() && due[i].il == il; i++) {
                const due_head & d = due[i];
                compactions++;
                if (d.one != -3) {
                    evicted += L.evict_one(d.h, d.one, ev.ops[(size_t) d.h]);
                    continue;
                }
                L.evict_tokens(d.h, pa);
                if (L.scores_from_keys()) {
                    const int32_t n = (int32_t) pa.size();
                    qk_scores.resize((size_t) n);
                    kv_ring_qk_scores(L.policy().kind, L.policy(), n, d.qk.imp.data(), d.qk.rowsum.data(), d.qk.excl_idx.data(), d.qk.excl_val.data(),
                                      qk_scores.data());
                    L.select_scores(pa, qk_scores.data(), dstep, prompt, keep);
                } else {
                    L.select(pa, d.raw, dstep, prompt, keep);
                }
                evicted += L.evict(d.h, keep, ev.ops[(size_t) d.h]);
            }
            bool any_op = false;  // (a single eviction already done on the device, no flush due: nothing to upload)
            for (const kv_ring_ops & o : ev.ops) any_op |= !o.empty();
            kv_ring_device & D = rd[(size_t) il];
            if (!any_op) {
                if (!(st = trim(il)).ok()) return st;
                continue;
            }
            ev.set_rc(L);  // the step tables as they now stand (the next chunk stages its own)
            ev.set_view(L);
            if (!(st = D.stage(ev, s)).ok() || !(st = D.apply(s, gtmp)).ok() || !(st = trim(il)).ok()) return st;
        }
        compaction_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        return status::success();
    }

    status run(const int32_t * tokens, int T, float * logits_host) {
        const hparams & hp = m->hp;
        const stream_t s = be->stream();
        const int n_embd = (int) hp.n_embd, n_q = (int) (hp.n_head * hp.head_dim), n_k = (int) (hp.n_head_kv * hp.head_dim);
        const int n_v = (int) (hp.n_head_kv * hp.head_dim_v);
        status st;
        if (!(st = reserve(T)).ok()) return st;
        ones.clear();
        if (!(st = be->synchronize()).ok()) return st;  // the previous call's kernels may still read `tok`
        // on the work stream itself (a plain cudaMemcpy runs on the legacy stream, which this one does not wait for)
        CUDA_CHECK(cudaMemcpyAsync(tok.data(), tokens, (size_t) T * 4, cudaMemcpyHostToDevice, s));
        k_positions<<<ceil_div(T, 256), 256, 0, s>>>(pos.as<int32_t>(), T, n_past);
        CUDA_CHECK_LAUNCH("positions");
        if (!(st = get_rows(W->tok_embd.w, tok.as<int32_t>(), T, x.as<float>(), s)).ok()) return st;
        attn_decode_params ap;
        ap.n_tokens = T;
        ap.n_head = (int) hp.n_head;
        ap.scale = 1.0f / std::sqrt((float) hp.head_dim);
        const rope_style rs = m->arch->rope;
        for (size_t il = 0; il < W->layers.size(); il++) {
            const layer_dev & L = W->layers[il];
            kv_layer_device & KV = kv[ring ? 0 : il];
            if (ring && T > 1 && rl[il].wants_sinks() && !(st = ring_sinks((int) il, T, s)).ok()) return st;
            // ---- attention block
            if (!(st = rms_norm(x.as<float>(), L.attn_norm.p, xn.as<float>(), n_embd, T, hp.rms_eps, s)).ok()) return st;
            if (!(st = matmul(L.wq.w, xn.as<float>(), q.as<float>(), T, s)).ok()) return st;
            if (!(st = matmul(L.wk.w, xn.as<float>(), k.as<float>(), T, s)).ok()) return st;
            if (!(st = matmul(L.wv.w, xn.as<float>(), v.as<float>(), T, s)).ok()) return st;
            if (L.bq.p && !(st = add_rows(q.as<float>(), L.bq.p, T, n_q, s)).ok()) return st;
            if (L.bk.p && !(st = add_rows(k.as<float>(), L.bk.p, T, n_k, s)).ok()) return st;
            if (L.bv.p && !(st = add_rows(v.as<float>(), L.bv.p, T, n_v, s)).ok()) return st;
            if (L.q_norm.p) {
                if (!(st = rms_norm(q.as<float>(), L.q_norm.p, q.as<float>(), hp.head_dim, (int64_t) T * hp.n_head, hp.rms_eps, s)).ok()) return st;
                if (!(st = rms_norm(k.as<float>(), L.k_norm.p, k.as<float>(), hp.head_dim, (int64_t) T * hp.n_head_kv, hp.rms_eps, s)).ok()) return st;
            }
            if (!(st = rope(q.as<float>(), pos.as<int32_t>(), T, (int) hp.n_head, (int) hp.head_dim, (int) hp.n_rot, rs, hp.rope_freq_base,
                            hp.rope_freq_scale, W->rope_freqs.p, s)).ok())
                return st;
            if (!(st = rope(k.as<float>(), pos.as<int32_t>(), T, (int) hp.n_head_kv, (int) hp.head_dim, (int) hp.n_rot, rs, hp.rope_freq_base,
                            hp.rope_freq_scale, W->rope_freqs.p, s)).ok())
                return st;
            if (ring && rl[il].has_evict() && rl[il].scores_from_keys()) {  // snapkv, rkv: the newest query (kv_cache::record_query)
                const kv_policy * pol = kv_policy_get(rl[il].policy().kind);
                if (!(st = rd[il].record_query(q.as<float>() + (size_t) (T - 1) * n_q, n_q, pol->query_window(rl[il].policy()), n_past + T - 1, s)).ok()) return st;
            }
            if (ring) {
                if (!(st = ring_attention((int) il, ap, T, s)).ok()) return st;
            } else {
                if (!(st = KV.append(k.as<float>(), v.as<float>(), T, s)).ok()) return st;
                if (!(st = attention_decode(ap, q.as<float>(), pos.as<int32_t>(), KV.view(), attn.as<float>(), ws, s)).ok()) return st;
            }
            if (!(st = matmul(L.wo.w, attn.as<float>(), o.as<float>(), T, s)).ok()) return st;
            if (!(st = add(x.as<float>(), o.as<float>(), (int64_t) T * n_embd, s)).ok()) return st;
            // ---- feed-forward block (SwiGLU)
            if (!(st = rms_norm(x.as<float>(), L.ffn_norm.p, xn.as<float>(), n_embd, T, hp.rms_eps, s)).ok()) return st;
            if (!(st = matmul(L.gate.w, xn.as<float>(), gate.as<float>(), T, s)).ok()) return st;
            if (!(st = matmul(L.up.w, xn.as<float>(), up.as<float>(), T, s)).ok()) return st;
            if (!(st = silu_mul(gate.as<float>(), up.as<float>(), (int64_t) T * hp.n_ff, s)).ok()) return st;
            if (!(st = matmul(L.down.w, gate.as<float>(), o.as<float>(), T, s)).ok()) return st;
            if (!(st = add(x.as<float>(), o.as<float>(), (int64_t) T * n_embd, s)).ok()) return st;
        }
        if (logits_host) {
            if (!(st = rms_norm(x.as<float>() + (size_t) (T - 1) * n_embd, W->output_norm.p, xn.as<float>(), n_embd, 1, hp.rms_eps, s)).ok()) return st;
            if (!(st = matmul(W->out_w, xn.as<float>(), logits.as<float>(), 1, s)).ok()) return st;
        }
        // after the logits are queued, so that the eviction's synchronization waits for them too
        if (ring && !(st = ring_evict(s)).ok()) return st;
        if (!logits_host) return status::success();
        if (!(st = be->synchronize()).ok()) return st;
        return logits.download(logits_host, (size_t) hp.n_vocab * 4);
    }
};

device_model::device_model(std::unique_ptr<impl> p) : p_(std::move(p)) {}
device_model::~device_model() = default;
const model & device_model::host() const { return *p_->m; }
size_t device_model::weight_bytes() const { return p_->weight_bytes; }

status device_model::create(std::shared_ptr<const model> mp, backend & be, std::shared_ptr<const device_model> * out) {
    if (!mp) return status(ERR_INVALID_ARG, "cuda forward: no model");
    const model & m = *mp;
    const hparams & hp = m.hp;
    if (!supports_op(op::ATTN_DECODE) || hp.n_head / hp.n_head_kv > 8 || hp.head_dim > 256 || hp.head_dim_v > 256 || hp.head_dim % 8 || hp.head_dim_v % 8)
        return status(ERR_UNSUPPORTED_ARCH, strfmt("cuda forward: attention with %u query heads per KV head and head sizes %u/%u is not covered "
                                                   "(group <= 8, head sizes <= 256 and multiples of 8)", hp.n_head / hp.n_head_kv, hp.head_dim, hp.head_dim_v));
    auto p = std::make_unique<impl>();
    p->m = mp;
    size_t * wb = &p->weight_bytes;
    status st;
    if (!(st = p->tok_embd.upload(m.tok_embd, "token_embd.weight", wb)).ok()) return st;
    if (m.tied_output) p->out_w = p->tok_embd.w;
    else {
        if (!(st = p->output.upload(m.output, "output.weight", wb)).ok()) return st;
        p->out_w = p->output.w;
    }
    if (!(st = p->output_norm.upload(m.output_norm, hp.n_embd, wb)).ok()) return st;
    if (!(st = p->rope_freqs.upload(m.rope_freqs, hp.n_rot / 2, wb)).ok()) return st;
    const size_t n_q = (size_t) hp.n_head * hp.head_dim, n_k = (size_t) hp.n_head_kv * hp.head_dim, n_v = (size_t) hp.n_head_kv * hp.head_dim_v;
    p->layers.resize(hp.n_layer);
    for (uint32_t il = 0; il < hp.n_layer; il++) {
        const layer_weights & W = m.layers[il];
        layer_dev & L = p->layers[il];
        const std::string pre = "blk." + std::to_string(il) + ".";
        if (!(st = L.attn_norm.upload(W.attn_norm, hp.n_embd, wb)).ok() || !(st = L.ffn_norm.upload(W.ffn_norm, hp.n_embd, wb)).ok() ||
            !(st = L.bq.upload(W.bq, n_q, wb)).ok() || !(st = L.bk.upload(W.bk, n_k, wb)).ok() || !(st = L.bv.upload(W.bv, n_v, wb)).ok() ||
            !(st = L.q_norm.upload(W.q_norm, hp.head_dim, wb)).ok() || !(st = L.k_norm.upload(W.k_norm, hp.head_dim, wb)).ok())
            return st;
        if (!(st = L.wq.upload(W.wq, (pre + "attn_q.weight").c_str(), wb)).ok() || !(st = L.wk.upload(W.wk, (pre + "attn_k.weight").c_str(), wb)).ok() ||
            !(st = L.wv.upload(W.wv, (pre + "attn_v.weight").c_str(), wb)).ok() || !(st = L.wo.upload(W.wo, (pre + "attn_output.weight").c_str(), wb)).ok() ||
            !(st = L.gate.upload(W.w_gate, (pre + "ffn_gate.weight").c_str(), wb)).ok() || !(st = L.up.upload(W.w_up, (pre + "ffn_up.weight").c_str(), wb)).ok() ||
            !(st = L.down.upload(W.w_down, (pre + "ffn_down.weight").c_str(), wb)).ok())
            return st;
    }
    if (!(st = be.synchronize()).ok()) return st;
    out->reset(new device_model(std::move(p)));
    return status::success();
}

forward_session::forward_session(std::unique_ptr<impl> p) : p_(std::move(p)) {}
forward_session::~forward_session() = default;

status forward_session::create(std::shared_ptr<const device_model> dm, int n_ctx, backend & be, std::unique_ptr<forward_session> * out) {
    if (!dm) return status(ERR_INVALID_ARG, "cuda forward: no device model");
    if (n_ctx <= 0) return status(ERR_INVALID_ARG, strfmt("cuda forward: n_ctx must be positive (got %d)", n_ctx));
    const hparams & hp = dm->host().hp;
    auto p = std::make_unique<impl>();
    p->W = &dm->get();
    p->m = &dm->host();
    p->dm = std::move(dm);
    p->be = &be;
    p->n_ctx = n_ctx;
    status st;
    p->kv.resize(hp.n_layer);
    for (kv_layer_device & L : p->kv)
        if (!(st = L.dense((int) hp.n_head_kv, (int) hp.head_dim, (int) hp.head_dim_v, n_ctx, be.stream())).ok()) return st;
    if (!(st = p->logits.alloc((size_t) hp.n_vocab * 4)).ok()) return st;
    if (!(st = be.synchronize()).ok()) return st;
    out->reset(new forward_session(std::move(p)));
    return status::success();
}

status forward_session::create(std::shared_ptr<const device_model> dm, const kv_cache_config & kc, int chunk, backend & be,
                               std::unique_ptr<forward_session> * out, std::shared_ptr<device_page_pool> pool) {
    if (!dm) return status(ERR_INVALID_ARG, "cuda forward: no device model");
    bool dense = kc.storage.key == KV_CODEC_F16 && kc.storage.value == KV_CODEC_F16;
    for (uint8_t r : kc.retention) dense &= r == KV_RETAIN_FULL;
    const hparams & hp = dm->host().hp;
    const bool per_query_head = kc.n_head_kv == (int) hp.n_head && hp.n_head != hp.n_head_kv;  // lazy's reference layout (make_kv_config)
    if (kc.n_layer != (int) hp.n_layer || (kc.n_head_kv != (int) hp.n_head_kv && !per_query_head) || kc.head_dim != (int) hp.head_dim ||
        kc.head_dim_v != (int) hp.head_dim_v)
        return status(ERR_INVALID_ARG, "cuda forward: the cache configuration does not match the model");
    dense &= !per_query_head;
    if (chunk <= 0) chunk = kChunk;
    chunk = std::min(chunk, kChunk);
    if (dense) {
        status st = create(std::move(dm), kc.n_ctx, be, out);
        if (st.ok()) (*out)->p_->chunk = chunk;
        return st;
    }
    kv_ring_config rc;
    status st = kv_ring_config_from(kc, chunk, &rc);
    if (!st.ok()) return st;
    if (!(st = create(std::move(dm), 1, be, out)).ok()) return st;  // weights and activations; its 1-token dense layers go unused
    impl & p = *(*out)->p_;
    p.kv.resize(1);
    p.n_ctx = kc.n_ctx;
    p.chunk = chunk;
    p.ring = true;
    p.stream_budget = kc.stream_sinks + kc.stream_recent;
    const size_t page_bytes = (size_t) KV_PAGE_TOKENS * (kc.head_dim + kc.head_dim_v) * sizeof(uint16_t);
    if (pool && pool->page_bytes() < page_bytes)
        return status(ERR_INVALID_ARG, strfmt("cuda forward: the page pool's pages (%zu bytes) are smaller than this cache's (%zu)", pool->page_bytes(), page_bytes));
    p.pool = pool ? std::move(pool) : std::make_shared<device_page_pool>(page_bytes);
    ring_codec codec;
    const kv_storage_config & sc = kc.storage;
    if (sc.coded()) {
        codec.kbits = kv_codec_get(sc.key).bits;
        codec.vbits = kv_codec_get(sc.value).bits;
        codec.kplain = !kv_codec_get(sc.key).rotated;  // q8 / q4 / KIVI
        codec.vplain = !kv_codec_get(sc.value).rotated;
        codec.vkivi = sc.value == KV_CODEC_KIVI2 || sc.value == KV_CODEC_KIVI4;
        if (sc.key == KV_CODEC_KIVI2 || sc.key == KV_CODEC_KIVI4)  // KIVI's keys: per channel over a block of tokens
            codec.kivi_tokens = kv_codec_get(sc.key).block_tokens(kv_codec_params{(int) hp.head_dim, sc.group, 1.0f, true});
        codec.group = sc.group;
        codec.kclip = sc.clip_of(sc.key);
        codec.vclip = sc.clip_of(sc.value);
        codec.pre_rope = !sc.post_rope;
        codec.rot_group = sc.rot_group;
        codec.rope_neox = sc.rope == ROPE_STYLE_NEOX;
        codec.n_rot = sc.n_rot;
        codec.freq_base = sc.freq_base;
        codec.freq_scale = sc.freq_scale;
        codec.freq_factors = sc.freq_factors;
    }
    p.rl.clear();
    p.rd.clear();
    p.rl.reserve((size_t) kc.n_layer);
    p.rd.reserve((size_t) kc.n_layer);
    p.codec = codec;
    if (sc.coded()) p.perm = sc.perm;
    for (int il = 0; il < kc.n_layer; il++) {
        p.rl.emplace_back(rc, il);
        p.rd.emplace_back();
        if (!(st = p.make_layer(il, p.rl.back(), p.rd.back())).ok()) return st;
    }
    size_t n_sc = 0;  // one scores scratch for the layers (each fills and reads it in stream order)
    const int G = (int) hp.n_head / kc.n_head_kv;  // (per-query-head caches: 1)
    for (const kv_ring_device & D : p.rd) n_sc = std::max(n_sc, D.scores_floats(G));
    if (n_sc > 0) {
        p.evict = true;
        if (!(st = p.scores.alloc(n_sc * sizeof(float))).ok() || !(st = p.ml.alloc((size_t) 2 * hp.n_head * sizeof(float))).ok()) return st;
        const size_t n_out = (size_t) kc.n_layer * kc.n_head_kv;
        if (!(st = p.one_out.alloc(n_out * 16)).ok()) return st;
        CUDA_CHECK(cudaMallocHost((void **) &p.one_host, n_out * 16));
    }
    return be.synchronize();
}

status forward_session::create(const model & m, const kv_cache_config & kc, int chunk, backend & be, std::unique_ptr<forward_session> * out,
                               std::shared_ptr<device_page_pool> pool) {
    std::shared_ptr<const device_model> dm;
    const status st = device_model::create(std::shared_ptr<const model>(std::shared_ptr<const model>(), &m), be, &dm);
    if (!st.ok()) return st;
    return create(std::move(dm), kc, chunk, be, out, std::move(pool));
}

status forward_session::create(const model & m, int n_ctx, backend & be, std::unique_ptr<forward_session> * out) {
    if (n_ctx <= 0) return status(ERR_INVALID_ARG, strfmt("cuda forward: n_ctx must be positive (got %d)", n_ctx));
    std::shared_ptr<const device_model> dm;
    // non-owning: the caller keeps `m` alive for the session's lifetime
    const status st = device_model::create(std::shared_ptr<const model>(std::shared_ptr<const model>(), &m), be, &dm);
    if (!st.ok()) return st;
    return create(std::move(dm), n_ctx, be, out);
}

status forward_session::eval(const int32_t * tokens, int n_tokens, float * logits, const std::atomic<bool> * abort) {
    impl & p = *p_;
    const hparams & hp = p.m->hp;
    if (n_tokens <= 0) return status(ERR_INVALID_ARG, "cuda forward: n_tokens must be positive");
    for (int t = 0; t < n_tokens; t++)
        if (tokens[t] < 0 || (uint32_t) tokens[t] >= hp.n_vocab)
            return status(ERR_INVALID_ARG, strfmt("cuda forward: token id %d at index %d is out of range [0, %u)", tokens[t], t, hp.n_vocab));
    if ((int64_t) p.n_past + n_tokens > p.n_ctx)
        return status(ERR_CONTEXT_FULL, strfmt("cuda forward: %d new tokens at position %d exceed the context size %d", n_tokens, p.n_past, p.n_ctx));
    // chunks of at most kChunk tokens (as the CPU's n_batch): bounded activations and attention partials, and
    // grid dimensions far below their 65535 limit; the logits of the last chunk only
    for (int i = 0; i < n_tokens; i += p.chunk) {
        const int n = std::min(p.chunk, n_tokens - i);
        if (p.ring)  // one chunk per journal (kv_ring_layer::begin)
            for (kv_ring_layer & L : p.rl) L.begin();
        // kv_cache::reserve: a single token after a prompt is a decode step, anything else (more) prompt
        const int32_t step0 = p.dstep, prompt0 = p.prompt;
        if (n == 1 && p.n_past > 0) p.dstep++;
        else { p.dstep = 0; p.prompt = p.n_past + n; }
        status st = abort && abort->load() ? status(ERR_ABORTED, "eval: aborted") : p.run(tokens + i, n, i + n == n_tokens ? logits : nullptr);
        if (!st.ok()) {  // the cache without the failing chunk's tokens (the chunks before it stay, as on the CPU)
            p.dstep = step0;
            p.prompt = prompt0;
            if (p.ring) {
                std::vector<kv_ring_layer::slot_entry> restored;
                bool exact = true;
                for (size_t il = 0; il < p.rl.size(); il++) {
                    exact &= p.rl[il].rollback(restored);
                    p.rd[il].drop_queries_from(p.n_past);
                    status sr = p.rd[il].set_positions(restored, p.be->stream());
                    if (sr.ok()) sr = p.trim((int) il);  // the pages the chunk mapped
                    if (!sr.ok()) return status(st.code, st.message + "; and restoring the device cache failed: " + sr.message);
                }
                if (!exact) {  // an evicting head's tokens moved in this chunk: the cache before it is gone
                    const status sc = truncate(0);
                    return status(st.code, st.message + (sc.ok() ? "; the chunk had moved evicting heads' tokens, so the cache was cleared"
                                                                 : "; and clearing the device cache failed: " + sc.message));
                }
            } else {
                for (kv_layer_device & L : p.kv)
                    if (L.n_held() > p.n_past) L.truncate(p.n_past, p.be->stream());
            }
            return st;
        }
        if (p.ring)
            for (kv_ring_layer & L : p.rl) L.commit();
        p.n_past += n;
    }
    return status::success();
}

int forward_session::n_past() const { return p_->n_past; }
int forward_session::n_ctx() const { return p_->n_ctx; }

status forward_session::truncate(int n, int * kept) {
    impl & p = *p_;
    if (kept) *kept = p.n_past;
    if (n < 0) return status(ERR_INVALID_ARG, strfmt("cuda forward: cannot keep %d tokens", n));
    if (p.ckpt.n >= 0 && n < p.ckpt.n) p.drop_checkpoint();
    if (n >= p.n_past) return status::success();
    if (p.ring) {
        int32_t keep = n;  // kv_cache::remove_from: stream heads first, then coded heads, over every layer
        for (const kv_ring_layer & L : p.rl) keep = L.limit_stream(keep);
        for (const kv_ring_layer & L : p.rl) keep = L.limit_coded(keep);
        if (p.ckpt.n >= 0 && keep < p.ckpt.n) {  // (here n >= the checkpoint's tokens) back to the checkpoint instead
            const status st = p.restore_checkpoint();
            if (st.ok()) {
                if (kept) *kept = p.n_past;
                return st;
            }
            // a layer could not be restored: nothing of the cache can be trusted to match a fresh evaluation
            p.drop_checkpoint();
            p.n_past = std::max(p.n_past, 1);
            const status sc = truncate(0, kept);
            return status(st.code, st.message + (sc.ok() ? "; returning to the checkpoint failed, so the cache was cleared"
                                                         : "; and clearing the device cache failed: " + sc.message));
        }
        std::vector<kv_ring_ops> ops;
        std::vector<std::vector<kv_ring_layer::slot_entry>> clears(p.rl.size());
        for (size_t il = 0; il < p.rl.size(); il++) {  // the bookkeeping first, whole; then the device
            p.rl[il].truncate(keep, ops);
            for (size_t h = 0; h < ops.size(); h++)
                for (int32_t sl : ops[h].clear_slot) clears[il].push_back({(int32_t) h, sl, KV_RING_EMPTY});
        }
        p.n_past = keep;
        p.prompt = std::min(p.prompt, keep);  // the step counters of a fresh evaluation of what is kept (kv_cache::cut)
        p.dstep = keep - p.prompt;
        if (kept) *kept = keep;
        for (size_t il = 0; il < p.rl.size(); il++) {
            p.rd[il].drop_queries_from(keep);
            status st = p.rd[il].set_positions(clears[il], p.be->stream());
            if (!st.ok() || !(st = p.trim((int) il)).ok()) return st;  // (a CUDA failure: the device is unusable from here on anyway)
        }
    } else {
        for (kv_layer_device & L : p.kv) {
            const status st = L.truncate(n, p.be->stream());
            if (!st.ok()) return st;
        }
        p.n_past = n;
        p.prompt = std::min(p.prompt, n);
        p.dstep = n - p.prompt;
    }
    if (kept) *kept = p.n_past;
    return status::success();
}

status forward_session::clear() {
    p_->drop_checkpoint();  // (truncate(0) keeps one taken at 0 tokens)
    return truncate(0);
}

status forward_session::save_checkpoint(bool bounded_only) {
    impl & p = *p_;
    std::vector<kv_ring_device> old_rd = std::move(p.ckpt.rd);
    p.drop_checkpoint();
    if (!p.ring) return status::success();  // (a dense f16 cache rewinds exactly)
    const size_t L = p.rl.size();
    std::vector<char> saved, codes;
    bool any = false;
    for (const kv_ring_layer & R : p.rl) {
        any |= impl::checkpoint_heads(R, saved, codes);
        for (int h = 0; h < R.n_head_kv() && bounded_only; h++)
            if (R.kind(h) == KV_RING_EVICT && R.n_f16(h) + R.n_coded(h) > R.policy().capacity) return status::success();
    }
    if (!any) return status::success();
    impl::checkpoint c;
    c.rl = p.rl;
    c.rd = std::move(old_rd);  // (the last checkpoint's layers, reused)
    c.rd.resize(L);
    for (size_t il = 0; il < L; il++) {
        const status st = p.checkpoint_layer((int) il, p.rl[il], p.rd[il], c.rd[il]);
        if (!st.ok()) return status(st.code, "kv cache checkpoint: " + st.message);  // (c's pages go back with it)
    }
    c.n = p.n_past;
    c.at = p.counts();
    p.ckpt = std::move(c);
    return status::success();
}

void forward_session::drop_checkpoint() { p_->drop_checkpoint(); }
int forward_session::checkpoint_tokens() const { return p_->ckpt.n; }

status forward_session::copy_from(const forward_session & src) {
    impl & p = *p_;
    const impl & q = *src.p_;
    if (&src == this) return status::success();
    if (p.W != q.W || p.ring != q.ring || p.n_ctx != q.n_ctx || p.rl.size() != q.rl.size() || p.kv.size() != q.kv.size())
        return status(ERR_INVALID_ARG, "cuda forward: copy from a session of another model or cache configuration");
    std::vector<kv_ring_device> old_rd = std::move(p.ckpt.rd);  // (reused for the source's checkpoint)
    p.drop_checkpoint();
    const stream_t s = p.be->stream();
    status st;
    if (!p.ring) {
        for (size_t il = 0; il < p.kv.size() && st.ok(); il++) st = p.kv[il].copy_from(q.kv[il], s);
    } else {
        for (size_t il = 0; il < p.rl.size() && st.ok(); il++) {
            const std::vector<char> all((size_t) p.rl[il].n_head_kv(), 1);
            if (!(st = p.rd[il].copy_from(q.rd[il], q.rl[il], all, all, true, s)).ok()) break;
            p.rl[il].copy_from(q.rl[il], all);
            st = p.trim((int) il);
        }
    }
    impl::checkpoint c;  // the source's checkpoint too, so that the copy also rewinds as the source would
    if (st.ok() && q.ckpt.n >= 0) {
        c = impl::checkpoint{q.ckpt.n, q.ckpt.rl, std::move(old_rd), q.ckpt.at};
        c.rd.resize(q.ckpt.rd.size());
        for (size_t il = 0; il < c.rd.size() && st.ok(); il++) st = p.checkpoint_layer((int) il, q.ckpt.rl[il], q.ckpt.rd[il], c.rd[il]);
    }
    if (!st.ok()) {  // layers of both sessions: this one holds nothing that can be trusted
        p.n_past = std::max({p.n_past, q.n_past, 1});
        const status sc = truncate(0);
        return status(st.code, st.message + (sc.ok() ? "; the sequence is empty" : "; and clearing the device cache failed: " + sc.message));
    }
    p.n_past = q.n_past;
    p.set_counts(q.counts());
    p.ckpt = std::move(c);
    return p.be->synchronize();
}
// ---- state files ----

namespace {
constexpr uint32_t kDeviceStateMagic = 0x56444354u;  // "TCDV": the device cache's section
} // namespace

struct forward_session::loaded_state {
    int32_t n = 0;
    impl::counters at;
    std::vector<kv_ring_layer> rl;
    std::vector<kv_ring_device::blob> blobs;
    std::vector<std::vector<uint8_t>> dense;  // [n_layer] a dense cache's pages in use
    int32_t ckpt_n = -1;                      // the checkpoint (-1: none)
    impl::counters ckpt_at;
    std::vector<kv_ring_layer> ckpt_rl;
    std::vector<kv_ring_device::blob> ckpt_blobs;
};
void forward_session::loaded_state_deleter::operator()(loaded_state * s) const { delete s; }

status forward_session::save_state(state_writer & w) const {
    const impl & p = *p_;
    const stream_t s = p.be->stream();
    w.pod(kDeviceStateMagic);
    w.pod((uint8_t) p.ring);
    w.pod((int32_t) p.n_past);
    w.pod(p.counts());
    if (!p.ring) {
        std::vector<uint8_t> buf;
        for (const kv_layer_device & L : p.kv) {
            const status st = L.download_held(buf, s);
            if (!st.ok()) return st;
            w.bytes(buf.data(), buf.size());
        }
        return status::success();
    }
    for (size_t il = 0; il < p.rl.size(); il++) {
        p.rl[il].save_books(w);
        const status st = p.rd[il].save_data(p.rl[il], w, s);
        if (!st.ok()) return st;
    }
    // the prefix checkpoint: its books and the heads it saved (impl::checkpoint_heads)
    w.pod((uint8_t) (p.ckpt.n >= 0));
    if (p.ckpt.n < 0) return status::success();
    w.pod((int32_t) p.ckpt.n);
    w.pod(p.ckpt.at);
    std::vector<char> saved, codes;
    for (size_t il = 0; il < p.rl.size(); il++) {
        impl::checkpoint_heads(p.ckpt.rl[il], saved, codes);
        p.ckpt.rl[il].save_books(w);
        const status st = p.ckpt.rd[il].save_data(p.ckpt.rl[il], w, s, &saved, &codes);
        if (!st.ok()) return st;
    }
    return status::success();
}

status forward_session::read_state(state_reader & r, loaded_ptr & out, int32_t * n_tokens) const {
    const impl & p = *p_;
    auto bad = [&]() { return status(ERR_STATE_FORMAT, r.error()); };
    uint32_t magic = 0;
    uint8_t ring = 0;
    loaded_ptr st(new loaded_state());
    if (!r.pod(magic) || !r.pod(ring) || !r.pod(st->n) || !r.pod(st->at)) return bad();
    if (magic != kDeviceStateMagic) return status(ERR_STATE_FORMAT, "not a device cache's section (saved on the CPU backend?)");
    if (ring != (uint8_t) p.ring) return status(ERR_STATE_FORMAT, "a dense cache where this session compresses, or the other way round");
    if (st->n < 0 || st->n > p.n_ctx) return status(ERR_CONTEXT_FULL, strfmt("the cache holds %d tokens, more than this context's %d", st->n, p.n_ctx));
    const impl::counters & c = st->at;
    if (c.dstep < 0 || c.dstep > INT32_MAX / 2 || c.prompt < 0 || c.prompt > st->n || c.evicted < 0 || c.compactions < 0 || !(c.compaction_s >= 0))
        return status(ERR_STATE_FORMAT, "cache counters out of range");
    if (!p.ring) {
        st->dense.resize(p.kv.size());
        for (size_t il = 0; il < p.kv.size(); il++) {
            const size_t want = p.kv[il].held_bytes(st->n);
            if (want > r.remaining()) return status(ERR_STATE_FORMAT, "a layer's pages past the end of the file (truncated?)");
            st->dense[il].resize(want);
            if (!r.bytes(st->dense[il].data(), want)) return bad();
        }
    } else {
        const hparams & hp = p.m->hp;
        st->rl.reserve(p.rl.size());
        st->blobs.resize(p.rl.size());
        // the layers, then the checkpoint's (its books, the data of the heads it saves)
        auto layers = [&](int32_t n, std::vector<kv_ring_layer> & rl, std::vector<kv_ring_device::blob> & blobs, bool ckpt) {
            rl.reserve(p.rl.size());
            blobs.resize(p.rl.size());
            std::vector<char> saved, codes;
            for (size_t il = 0; il < p.rl.size(); il++) {
                rl.push_back(p.rl[il]);  // (the layer's geometry; read_books replaces every book)
                kv_ring_layer & L = rl.back();
                if (!L.read_books(r, n)) return false;
                const kv_policy * pol = kv_policy_get(L.policy().kind);
                const bool records = L.has_evict() && L.scores_from_keys() && pol && pol->query_window;
                const int qrow = records ? (int) (hp.n_head * hp.head_dim) : 0, qw = records ? pol->query_window(L.policy()) : 0;
                impl::checkpoint_heads(L, saved, codes);
                if (!p.rd[il].read_data(r, L, n, qrow, qw, blobs[il], ckpt ? &saved : nullptr, ckpt ? &codes : nullptr)) return false;
            }
            return true;
        };
        if (!layers(st->n, st->rl, st->blobs, false)) return bad();
        uint8_t has = 0;
        if (!r.pod(has)) return bad();
        if (has > 1) return status(ERR_STATE_FORMAT, "an invalid checkpoint flag");
        if (has) {
            if (!r.pod(st->ckpt_n) || !r.pod(st->ckpt_at)) return bad();
            const impl::counters & k = st->ckpt_at;
            if (st->ckpt_n < 0 || st->ckpt_n > st->n || k.dstep < 0 || k.dstep > INT32_MAX / 2 || k.prompt < 0 || k.prompt > st->ckpt_n || k.evicted < 0 || k.compactions < 0 ||
                !(k.compaction_s >= 0))
                return status(ERR_STATE_FORMAT, "a checkpoint past the tokens, or its counters out of range");
            if (!layers(st->ckpt_n, st->ckpt_rl, st->ckpt_blobs, true)) return bad();
        }
    }
    if (n_tokens) *n_tokens = st->n;
    out = std::move(st);
    return status::success();
}

status forward_session::adopt_state(loaded_ptr st) {
    impl & p = *p_;
    const stream_t s = p.be->stream();
    if (!p.ring) {  // (the pages are reserved for n_ctx tokens: nothing to allocate, only a device error can fail)
        p.drop_checkpoint();
        for (size_t il = 0; il < p.kv.size(); il++) {
            const status e = p.kv[il].upload_held(st->dense[il].data(), st->n, s);
            if (!e.ok()) {
                p.n_past = std::max(p.n_past, 1);
                const status sc = truncate(0);
                return status(e.code, e.message + (sc.ok() ? "; the sequence is empty" : "; and clearing the device cache failed: " + sc.message));
            }
        }
    } else {
        std::vector<kv_ring_device> rd(p.rl.size());
        impl::checkpoint c;
        if (st->ckpt_n >= 0) c.rd.resize(p.rl.size());
        std::vector<char> saved, codes;
        for (size_t il = 0; il < p.rl.size(); il++) {  // (a failure: the new layers' pages go back with them)
            status e = p.make_layer((int) il, st->rl[il], rd[il]);
            if (e.ok()) e = rd[il].load_data(st->rl[il], st->blobs[il], s);
            if (e.ok() && st->ckpt_n >= 0) {
                impl::checkpoint_heads(st->ckpt_rl[il], saved, codes);
                if ((e = p.make_layer((int) il, st->ckpt_rl[il], c.rd[il], &codes)).ok()) e = c.rd[il].load_data(st->ckpt_rl[il], st->ckpt_blobs[il], s, &saved);
            }
            if (!e.ok()) return status(e.code, "loading the device cache: " + e.message);
        }
        p.drop_checkpoint();
        p.rl = std::move(st->rl);
        p.rd = std::move(rd);
        if (st->ckpt_n >= 0) {
            c.n = st->ckpt_n;
            c.rl = std::move(st->ckpt_rl);
            c.at = st->ckpt_at;
            p.ckpt = std::move(c);
        }
    }
    p.n_past = st->n;
    p.set_counts(st->at);
    return p.be->synchronize();
}

bool forward_session::compressed() const { return p_->ring; }

kv_memory_report forward_session::memory(bool per_head) const {
    const impl & p = *p_;
    const hparams & hp = p.m->hp;
    kv_memory_report r;
    r.logical_tokens = p.n_past;
    const uint64_t D = hp.head_dim, DV = hp.head_dim_v;
    if (!p.ring) {
        r.resident_tokens = (int64_t) p.n_past * hp.n_layer * hp.n_head_kv;
        r.key_bytes = (uint64_t) r.resident_tokens * D * 2;
        r.value_bytes = (uint64_t) r.resident_tokens * DV * 2;
        r.bytes_used = r.key_bytes + r.value_bytes;
        r.bytes_allocated = kv_reserved_bytes();
        if (per_head) r.heads.assign((size_t) hp.n_layer * hp.n_head_kv, kv_head_memory{p.n_past, -1, 0, (r.key_bytes + r.value_bytes) / std::max<uint64_t>(1, (uint64_t) hp.n_layer * hp.n_head_kv)});
        return r;
    }
    if (per_head) r.heads.resize((size_t) hp.n_layer * p.rl[0].n_head_kv());  // (per-query-head caches: n_head per layer)
    for (size_t il = 0; il < p.rl.size(); il++) {
        const kv_ring_layer & L = p.rl[il];
        const kv_ring_device & Dv = p.rd[il];
        const kv_layer_view & v = Dv.view();
        int n_ev = 0;  // the layer's recorded queries (snapkv, rkv) are shared out over its evicting heads
        for (int h = 0; h < L.n_head_kv(); h++) n_ev += L.kind(h) == KV_RING_EVICT;
        for (int h = 0, rank = 0; h < L.n_head_kv(); h++) {
            const uint64_t nf = (uint64_t) L.n_f16(h), nq = (uint64_t) L.n_coded(h);
            const uint64_t kc = nq * (uint64_t) (v.kbits ? D * v.kbits / 8 : 0), vc = nq * (uint64_t) (v.vbits ? DV * v.vbits / 8 : 0);
            const uint64_t ks = nq * Dv.k_block_bytes() - kc, vs = nq * Dv.v_block_bytes() - vc;
            const uint64_t kb = nf * D * 2 + kc + ks, vb = nf * DV * 2 + vc + vs, pb = 4 * (nf + nq);
            // an evicting head's policy state: (last, mri) per held token, and its share of the recorded queries
            uint64_t mb = 0, q_alloc = 0;
            if (L.kind(h) == KV_RING_EVICT) {
                auto share = [&](uint64_t total) { return total / (uint64_t) n_ev + (rank == 0 ? total % (uint64_t) n_ev : 0); };
                mb = 8 * (nf + nq) + share((uint64_t) Dv.queries_held() * Dv.query_row_bytes());
                q_alloc = share(Dv.query_bytes());
                rank++;
            }
            r.metadata_bytes += mb;
            if (L.coded(h)) r.staging_bytes += nf * (D + DV) * 2;
            r.code_bytes += kc + vc;
            r.scale_bytes += ks + vs;
            r.quantized_tokens += (int64_t) nq;
            r.resident_tokens += (int64_t) (nf + nq);
            r.key_bytes += kb;
            r.value_bytes += vb;
            r.position_bytes += pb;
            if (per_head) {
                kv_head_memory & m = r.heads[il * (size_t) L.n_head_kv() + (size_t) h];
                m.resident = (int32_t) (nf + nq);
                const kv_policy * pol = kv_policy_get(L.policy().kind);
                m.budget = L.kind(h) == KV_RING_STREAM ? p.stream_budget
                         : L.kind(h) == KV_RING_EVICT && pol ? pol->budget(p.dstep, p.prompt, L.policy()) : -1;
                m.bytes_used = kb + vb + pb + mb;
                const uint64_t stats = Dv.has_evict() ? 8 : 0;  // (last, mri) per slot and per quantized token
                m.bytes_allocated = (uint64_t) Dv.pages_mapped(h) * Dv.page_bytes() + (uint64_t) Dv.slot_cap() * (4 + stats) +
                                    (L.coded(h) ? (uint64_t) Dv.coded_cap() * (Dv.k_block_bytes() + Dv.v_block_bytes() + 4 + stats) : 0) + q_alloc;
            }
        }
        r.bytes_allocated += Dv.reserved_bytes();
    }
    r.evicted_tokens += p.evicted;
    r.compactions = p.compactions;
    for (const kv_ring_layer & L : p.rl) {  // evictions the bookkeeping ran itself (streaming; stream heads' trims)
        r.evicted_tokens += L.evicted();
        r.compactions += L.compactions();
    }
    r.compaction_seconds = p.compaction_s;
    for (const kv_ring_device & D : p.ckpt.rd) r.checkpoint_bytes += D.reserved_bytes();
    r.bytes_allocated += r.checkpoint_bytes;
    r.bytes_used = r.key_bytes + r.value_bytes + r.position_bytes + r.metadata_bytes;
    const device_pool_stats ps = p.pool->stats();
    r.pool_slack_bytes = (uint64_t) ps.pages_free * ps.page_bytes;
    return r;
}

std::vector<int32_t> forward_session::held_positions(int il, int ih) const {
    const impl & p = *p_;
    if (p.ring) return p.rl[(size_t) il].held_positions(ih);
    std::vector<int32_t> out((size_t) p.n_past);
    for (int i = 0; i < p.n_past; i++) out[(size_t) i] = i;
    return out;
}

size_t forward_session::weight_bytes() const { return p_->W->weight_bytes; }
size_t forward_session::kv_bytes() const {
    if (p_->ring) {
        const kv_memory_report r = memory(false);
        return r.key_bytes + r.value_bytes;
    }
    size_t b = 0;
    for (const kv_layer_device & L : p_->kv) b += L.payload_bytes();
    return b;
}
size_t forward_session::kv_reserved_bytes() const {
    size_t b = 0;
    if (p_->ring) {
        for (const kv_ring_device & D : p_->rd) b += D.reserved_bytes();
        return b;
    }
    for (const kv_layer_device & L : p_->kv) b += L.view().n_head_kv * (size_t) L.view().max_seg * L.page_bytes();
    return b;
}

} // namespace cuda
} // namespace core
