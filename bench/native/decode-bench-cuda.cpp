// CUDA decode benchmark, OP-LEVEL: the per-layer op sequence of one Qwen2 decode step on the GPU
// (RMSNorm, q/k/v/o matvecs, RoPE, attention over an f16 paged cache of n_ctx tokens per KV head,
// RMSNorm, gate/up matvecs, SiLU·mul, down matvec; then the final norm and the lm_head matvec), with
// synthetic device-resident weights. It is NOT the full forward pass yet (no embedding lookup, biases,
// residual adds, KV append or sampling; those move no significant bytes); numbers are labelled
// "op-level". Reports tok/s, bytes read per token (weights + KV), achieved GB/s and the fraction of the
// HBM roofline (peak from the device's memory clock x bus width, or --hbm-gbs).
// KV configurations (--kv), each head's tokens at context n:
//   f16           every head holds n f16 tokens
//   rot2          RotateKV, faithful pre-RoPE keys: n - 80 rot2 keys and values per head + 80 f16 tokens
//                 (16 protected sinks, 64 staging), random codes and channel permutation
//   rot2-post     the same with post-RoPE keys (§6.2 C6)
//   rot2-hs-lazy  head-selective + lazy: even KV heads stream (80 f16 tokens: 16 sinks + 64 recent), odd
//                 heads keep half of the tokens (LazyEviction ratio 0.5), stored as pre-RoPE rot2 + 80 f16
//   decode-bench-cuda [--shape qwen2-1.5b|qwen2-0.5b] [--type f16,q8_0,q4_K] [--contexts 1024,8192,32768]
//                     [--kv f16,rot2,rot2-post,rot2-hs-lazy] [--steps 20] [--hbm-gbs N]
//   decode-bench-cuda --forward [--shape ...] [--type q8_0] [--contexts ...] [--kv f16,rot2,rot2-hs,rot2-hs-lazy] [--steps 20]
//     the REAL forward pass (forward_session: embedding, biases, residuals, KV append and quantize-on-write,
//     logits back to the host every token) on a synthetic GGUF of the shape (bench/native/synthetic-model.h,
//     random weights made on the CPU first: ~1 min for 1.5B), per cache (f16, rot2, rot2-post, rot2-hs, rot2-hs-lazy: see
//     forward_kv): prefill tok/s of the context, then decode tok/s after it, KV bytes, GB/s and HBM fraction.
// One JSON line per (type, context) on stdout; a readable table on stderr.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#ifdef THINKCACHE_WITH_CUDA
#include "cuda/attention.cuh"
#include "cuda/backend-cuda.h"
#include "cuda/matmul.cuh"
#include "cuda/rms_norm.cuh"
#include "cuda/rope.cuh"
#include "cuda/silu_mul.cuh"
#include "cuda/forward-cuda.h"
#include "engine/engine.h"
#include "gguf/gguf-reader.h"
#include "model/model.h"
#include "synthetic-model.h"
#include "tensor/quant-traits.h"

using namespace core;
namespace cu = core::cuda;

namespace {

struct shape { const char * name; int n_embd, n_layer, n_head, n_head_kv, head_dim, n_ff, n_vocab; };
const shape SHAPES[] = {
    {"qwen2-0.5b", 896, 24, 14, 2, 64, 4864, 151936},
    {"qwen2-1.5b", 1536, 28, 12, 2, 128, 8960, 151936},
    {"tiny", 256, 4, 8, 2, 32, 768, 4096},  // smoke runs (the CPU emulation of the kernels), not a measurement
};

std::vector<std::string> split(const std::string & s) {
    std::vector<std::string> r;
    size_t a = 0;
    while (a <= s.size()) {
        size_t b = s.find(',', a);
        if (b == std::string::npos) b = s.size();
        if (b > a) r.push_back(s.substr(a, b - a));
        a = b + 1;
    }
    return r;
}

#define BENCH_OK(expr)                                                                                         \
    do {                                                                                                       \
        const status st_ = (expr);                                                                             \
        if (!st_.ok()) {                                                                                       \
            std::fprintf(stderr, "decode-bench-cuda: %s: %s: %s\n", #expr, status_code_name(st_.code), st_.message.c_str()); \
            return st_;                                                                                        \
        }                                                                                                      \
    } while (0)

struct weight { cu::device_buffer buf; cu::weight_dev w; };

status make_weight(weight & w, ggml_type t, int64_t n_in, int64_t n_out, uint32_t seed, cu::stream_t s) {
    const quant_traits * qt = quant_traits_get(t);
    if (!qt) return status(ERR_UNSUPPORTED_QUANT, "unknown type");
    const size_t rb = quant_row_bytes(qt, n_in);
    BENCH_OK(w.buf.alloc(rb * n_out));
    BENCH_OK(cu::fill_random(w.buf.data(), t, n_in * n_out, seed, 0.05f, s));
    w.w.data = w.buf.data(); w.w.type = t; w.w.n_in = n_in; w.w.n_out = n_out; w.w.row_bytes = rb;
    return status::success();
}

struct layer { weight q, k, v, o, gate, up, down; cu::device_buffer attn_norm, ffn_norm; cu::kv_layer_device kv; };

status run(const shape & sh, ggml_type wt, const std::vector<int> & contexts, const std::vector<std::string> & kvs, int steps, double hbm_gbs,
           cu::backend & be) {
    cu::stream_t s = be.stream();
    const int E = sh.n_embd, H = sh.n_head, HKV = sh.n_head_kv, D = sh.head_dim, F = sh.n_ff;
    std::vector<layer> L(sh.n_layer);
    size_t weight_bytes = 0;
    for (int il = 0; il < sh.n_layer; il++) {
        layer & l = L[il];
        const uint32_t sd = 1000u * il;
        BENCH_OK(make_weight(l.q, wt, E, H * D, sd + 1, s));
        BENCH_OK(make_weight(l.k, wt, E, HKV * D, sd + 2, s));
        BENCH_OK(make_weight(l.v, wt, E, HKV * D, sd + 3, s));
        BENCH_OK(make_weight(l.o, wt, H * D, E, sd + 4, s));
        BENCH_OK(make_weight(l.gate, wt, E, F, sd + 5, s));
        BENCH_OK(make_weight(l.up, wt, E, F, sd + 6, s));
        BENCH_OK(make_weight(l.down, wt, F, E, sd + 7, s));
        BENCH_OK(l.attn_norm.alloc(E * 4));
        BENCH_OK(l.ffn_norm.alloc(E * 4));
        BENCH_OK(cu::fill_random(l.attn_norm.data(), GGML_TYPE_F32, E, sd + 8, 1.0f, s));
        BENCH_OK(cu::fill_random(l.ffn_norm.data(), GGML_TYPE_F32, E, sd + 9, 1.0f, s));
        for (weight * w : {&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down}) weight_bytes += w->buf.bytes();
    }
    weight lm;
    BENCH_OK(make_weight(lm, wt, E, sh.n_vocab, 77, s));
    weight_bytes += lm.buf.bytes();
    cu::device_buffer x, xn, q, k, v, att, g, u, logits, pos, out_norm;
    BENCH_OK(x.alloc(E * 4)); BENCH_OK(xn.alloc(E * 4)); BENCH_OK(q.alloc(H * D * 4)); BENCH_OK(k.alloc(HKV * D * 4));
    BENCH_OK(v.alloc(HKV * D * 4)); BENCH_OK(att.alloc(H * D * 4)); BENCH_OK(g.alloc(F * 4)); BENCH_OK(u.alloc(F * 4));
    BENCH_OK(logits.alloc((size_t) sh.n_vocab * 4)); BENCH_OK(pos.alloc(4)); BENCH_OK(out_norm.alloc(E * 4));
    BENCH_OK(cu::fill_random(x.data(), GGML_TYPE_F32, E, 5, 1.0f, s));
    BENCH_OK(cu::fill_random(out_norm.data(), GGML_TYPE_F32, E, 6, 1.0f, s));
    cu::attn_workspace ws;
    const char * tname = ggml_type_name(wt);

    for (int n_ctx : contexts)
    for (const std::string & kvc : kvs) {
        size_t kv_bytes = 0;
        for (int il = 0; il < sh.n_layer; il++) {
            if (kvc == "f16") {
                BENCH_OK(L[il].kv.synthetic(HKV, D, D, std::vector<int32_t>(HKV, n_ctx), 100u + il, s));
            } else {
                const int keep = 80;  // 16 protected + 64 staging f16 tokens
                std::vector<int32_t> nf(HKV, std::min(keep, n_ctx)), nc(HKV, std::max(0, n_ctx - keep));
                if (kvc == "rot2-hs-lazy")
                    for (int h = 0; h < HKV; h++) nc[h] = h % 2 == 0 ? 0 : std::max(0, n_ctx / 2 - keep);
                BENCH_OK(L[il].kv.synthetic_coded(HKV, D, nf, nc, 2, 2, 32, kvc != "rot2-post", 100u + il, s));
            }
            kv_bytes += L[il].kv.payload_bytes();
        }
        BENCH_OK(pos.upload(&n_ctx, 4));
        cu::attn_decode_params ap;
        ap.n_tokens = 1; ap.n_head = H; ap.scale = 1.0f / std::sqrt((float) D);
        auto step = [&](bool do_mat, bool do_attn) -> status {
            for (int il = 0; il < sh.n_layer; il++) {
                layer & l = L[il];
                BENCH_OK(cu::rms_norm(x.as<float>(), l.attn_norm.as<float>(), xn.as<float>(), E, 1, 1e-6f, s));
                if (do_mat) {
                    BENCH_OK(cu::matmul(l.q.w, xn.as<float>(), q.as<float>(), 1, s));
                    BENCH_OK(cu::matmul(l.k.w, xn.as<float>(), k.as<float>(), 1, s));
                    BENCH_OK(cu::matmul(l.v.w, xn.as<float>(), v.as<float>(), 1, s));
                }
                BENCH_OK(cu::rope(q.as<float>(), pos.as<int32_t>(), 1, H, D, D, ROPE_STYLE_NEOX, 1e6f, 1.0f, nullptr, s));
                BENCH_OK(cu::rope(k.as<float>(), pos.as<int32_t>(), 1, HKV, D, D, ROPE_STYLE_NEOX, 1e6f, 1.0f, nullptr, s));
                if (do_attn) BENCH_OK(cu::attention_decode(ap, q.as<float>(), pos.as<int32_t>(), l.kv.view(), att.as<float>(), ws, s));
                if (do_mat) BENCH_OK(cu::matmul(l.o.w, att.as<float>(), xn.as<float>(), 1, s));
                BENCH_OK(cu::rms_norm(xn.as<float>(), l.ffn_norm.as<float>(), xn.as<float>(), E, 1, 1e-6f, s));
                if (do_mat) {
                    BENCH_OK(cu::matmul(l.gate.w, xn.as<float>(), g.as<float>(), 1, s));
                    BENCH_OK(cu::matmul(l.up.w, xn.as<float>(), u.as<float>(), 1, s));
                }
                BENCH_OK(cu::silu_mul(g.as<float>(), u.as<float>(), F, s));
                if (do_mat) BENCH_OK(cu::matmul(l.down.w, g.as<float>(), xn.as<float>(), 1, s));
            }
            BENCH_OK(cu::rms_norm(xn.as<float>(), out_norm.as<float>(), xn.as<float>(), E, 1, 1e-6f, s));
            if (do_mat) BENCH_OK(cu::matmul(lm.w, xn.as<float>(), logits.as<float>(), 1, s));
            return status::success();
        };
        auto time_steps = [&](bool m, bool a, double * ms_per) -> status {
            BENCH_OK(step(m, a));  // warm-up
            BENCH_OK(be.synchronize());
            cu::event_timer tm;
            float ms = 0;
            BENCH_OK(tm.start(s));
            for (int i = 0; i < steps; i++) BENCH_OK(step(m, a));
            BENCH_OK(tm.stop(s, &ms));
            *ms_per = ms / steps;
            return status::success();
        };
        // the whole step as one CUDA graph (no per-kernel launch overhead); eager launches as a fallback
        auto time_graph = [&](double * ms_per) -> status {
            cu::graph gr;
            BENCH_OK(gr.begin(s));
            const status cap = step(true, true);
            BENCH_OK(gr.end(s));
            BENCH_OK(cap);
            BENCH_OK(gr.launch(s));
            BENCH_OK(be.synchronize());
            cu::event_timer tm;
            float ms = 0;
            BENCH_OK(tm.start(s));
            for (int i = 0; i < steps; i++) BENCH_OK(gr.launch(s));
            BENCH_OK(tm.stop(s, &ms));
            *ms_per = ms / steps;
            return status::success();
        };
        double t_all = 0, t_mat = 0, t_attn = 0, t_eager = 0;
        BENCH_OK(time_steps(true, true, &t_eager));
        if (!time_graph(&t_all).ok()) {
            std::fprintf(stderr, "  (CUDA graph capture failed: timing eager launches)\n");
            t_all = t_eager;
        }
        BENCH_OK(time_steps(true, false, &t_mat));
        BENCH_OK(time_steps(false, true, &t_attn));
        const double bytes = (double) weight_bytes + (double) kv_bytes;
        const double gbs = bytes / (t_all * 1e-3) / 1e9;
        const double frac = hbm_gbs > 0 ? gbs / hbm_gbs : 0;
        std::fprintf(stderr, "%-11s %-5s ctx %6d kv %-12s: %8.1f tok/s op-level (%.3f ms/tok as a graph, %.3f eager; eager matvec+norms %.3f, attention+norms %.3f) | %.1f MB weights + %.1f MB KV | %.0f GB/s = %.0f%% of %.0f GB/s\n",
                     sh.name, tname, n_ctx, kvc.c_str(), 1e3 / t_all, t_all, t_eager, t_mat, t_attn, weight_bytes / 1e6, kv_bytes / 1e6, gbs, frac * 100, hbm_gbs);
        const cu::device_info & di = be.info();
        std::printf("{\"bench\":\"decode-op-level\",\"device\":\"%s\",\"shape\":\"%s\",\"weights\":\"%s\",\"kv\":\"%s\",\"n_ctx\":%d,\"steps\":%d,"
                    "\"ms_per_token\":%.4f,\"tok_s\":%.2f,\"ms_per_token_eager\":%.4f,\"ms_matvec_norms\":%.4f,\"ms_attention_norms\":%.4f,\"weight_bytes\":%zu,\"kv_bytes\":%zu,"
                    "\"gb_s\":%.1f,\"hbm_peak_gb_s\":%.1f,\"roofline_fraction\":%.4f}\n",
                    di.name.c_str(), sh.name, tname, kvc.c_str(), n_ctx, steps, t_all, 1e3 / t_all, t_eager, t_mat, t_attn, weight_bytes, kv_bytes, gbs, hbm_gbs, frac);
        std::fflush(stdout);
    }
    return status::success();
}

double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// The cache of a --forward row (kv_cache_config as the engine builds it, engine/engine.h make_kv_config):
//   f16       dense f16
//   rot2      RotateKV rot2 keys and values on every head, pre-RoPE keys, protected sinks (the defaults)
//   rot2-post the same with post-RoPE keys
//   rot2-hs   head-selective + rot2: KV head 0 of every layer a STREAM head (16 sinks + 64 recent, f16), the
//             others rot2 (a 50 % streaming split; RLKV's profiles stream 50-80 % of heads)
//   rot2-hs-lazy  rot2-hs whose other heads evict with LazyEviction (window W = 128, capacity half the row's
//             context: the prefill stands for the chain of thought so far); the row decodes W steps first, so the
//             timed steps run over the evicted cache, and reports what the evictions cost
//   rot2-hs-h2o, rot2-hs-tova  the same split with the per-step baselines on the other heads (capacity half the
//             row's context, H2O's recent window 128): the prompt is evicted down to the capacity on the host, then
//             every decode step drops one token per head on the device (kv_ring_device::evict_one)
//   q8, q4    llama.cpp-style q8_0 / q4_0 blocks on every head (the baselines)
constexpr int kLazyWindow = 128;
// The eviction policy of a --forward row (rot2-hs-<policy>), or -1.
int forward_policy(const std::string & kv) {
    return kv == "rot2-hs-lazy" ? KV_POLICY_LAZY : kv == "rot2-hs-h2o" ? KV_POLICY_H2O : kv == "rot2-hs-tova" ? KV_POLICY_TOVA : -1;
}
status forward_kv(const std::string & kv, const model & m, int n_ctx, int row_ctx, kv_cache_config * out) {
    context_params p;
    p.n_ctx = n_ctx;
    const int pol = forward_policy(kv);
    const bool hs = kv == "rot2-hs" || pol >= 0;
    if (kv == "rot2" || kv == "rot2-post" || hs) p.storage.key = p.storage.value = KV_CODEC_ROT2;
    if (kv == "q8" || kv == "q4") p.storage.key = p.storage.value = kv == "q8" ? KV_CODEC_Q8 : KV_CODEC_Q4;  // llama.cpp-style baselines
    p.storage.post_rope = kv == "rot2-post";
    if (hs) {
        p.retention.assign((size_t) m.hp.n_layer * m.hp.n_head_kv, kv == "rot2-hs" ? KV_RETAIN_FULL : KV_RETAIN_EVICT);
        for (uint32_t il = 0; il < m.hp.n_layer; il++) p.retention[(size_t) il * m.hp.n_head_kv] = KV_RETAIN_STREAM;
        p.policy.kind = pol >= 0 ? (kv_policy_kind) pol : KV_POLICY_LAZY;
        p.policy.window = kLazyWindow;
        // (h2o's recent window is W: twice that leaves as many tokens to its scores)
        p.policy.capacity = std::max(pol == KV_POLICY_LAZY || pol < 0 ? kLazyWindow : 2 * kLazyWindow, row_ctx / 2);
    } else if (kv != "f16" && kv != "rot2" && kv != "rot2-post" && kv != "q8" && kv != "q4") {
        return status(ERR_INVALID_ARG, strfmt("--forward --kv: unknown cache %s (f16, rot2, rot2-post, rot2-hs, rot2-hs-lazy, rot2-hs-h2o, rot2-hs-tova, q8, q4)", kv.c_str()));
    }
    *out = make_kv_config(m, p);
    return status::success();
}

// --forward: the whole forward pass of a synthetic model of the shape, per cache and context: prefill, then
// decode; the decode row's bytes per token are the weights plus the KV bytes the step reads (the cache's
// K + V payload), against the HBM peak.
status run_forward(const shape & sh, ggml_type wt, const std::vector<int> & contexts, const std::vector<std::string> & kvs, int steps, double hbm,
                   cu::backend & be) {
    const bench::shape * bs = nullptr;
    for (const bench::shape & c : bench::SHAPES) if (std::strcmp(c.name, sh.name) == 0) bs = &c;
    if (!bs) return status(ERR_INVALID_ARG, "no synthetic model for this shape");
    const double t0 = now_s();
    const std::vector<uint8_t> img = bench::make_model_image(*bs, wt);
    std::unique_ptr<gguf_file> gf;
    BENCH_OK(gguf_parse_memory(img.data(), img.size(), gf));
    std::unique_ptr<model> mp;
    BENCH_OK(model_load_from_gguf(std::move(gf), mp));
    const std::shared_ptr<const model> m(std::move(mp));
    std::fprintf(stderr, "synthesized %s %s (%.0f MB) in %.1f s\n", sh.name, ggml_type_name(wt), img.size() / 1e6, now_s() - t0);
    std::shared_ptr<const cu::device_model> dm;
    BENCH_OK(cu::device_model::create(m, be, &dm));
    int max_ctx = 1;
    for (int c : contexts) max_ctx = std::max(max_ctx, c);
    std::vector<float> logits(m->hp.n_vocab);
    std::vector<int32_t> prompt((size_t) max_ctx);
    for (size_t i = 0; i < prompt.size(); i++) prompt[i] = (int32_t) ((i * 2654435761u) % m->hp.n_vocab);
    // every cache's session first, then context by context (a timeout keeps whole contexts of every cache); the
    // lazy row's capacity follows its context, so its session is made per context (at the largest one first)
    std::vector<std::unique_ptr<cu::forward_session>> sessions;
    for (const std::string & kv : kvs) {
        kv_cache_config kc;
        BENCH_OK(forward_kv(kv, *m, max_ctx + kLazyWindow + steps + 8, max_ctx, &kc));
        sessions.emplace_back();
        BENCH_OK(cu::forward_session::create(dm, kc, 512, be, &sessions.back()));
    }
    for (int c : contexts) {
        for (size_t k = 0; k < kvs.size(); k++) {
            const std::string & kv = kvs[k];
            const bool lazy = kv == "rot2-hs-lazy", evicting = forward_policy(kv) >= 0;
            if (evicting) {
                kv_cache_config kc;
                sessions[k].reset();
                BENCH_OK(forward_kv(kv, *m, max_ctx + kLazyWindow + steps + 8, c, &kc));  // (reserved like the other rows)
                BENCH_OK(cu::forward_session::create(dm, kc, 512, be, &sessions[k]));
            }
            cu::forward_session * fs = sessions[k].get();
            BENCH_OK(fs->clear());
            double t = now_s();
            BENCH_OK(fs->eval(prompt.data(), c, logits.data()));
            const double t_pre = now_s() - t;
            int32_t tok = 13;
            const int warm = lazy ? kLazyWindow : evicting ? 8 : 1;  // the lazy row: past its first eviction (decode step W)
            t = now_s();
            for (int i = 0; i < warm; i++) {
                BENCH_OK(fs->eval(&tok, 1, logits.data()));
                tok = (int32_t) (std::max_element(logits.begin(), logits.end()) - logits.begin());
            }
            const double t_warm = (now_s() - t) / warm;
            t = now_s();
            for (int i = 0; i < steps; i++) {
                tok = (int32_t) (std::max_element(logits.begin(), logits.end()) - logits.begin());
                BENCH_OK(fs->eval(&tok, 1, logits.data()));
            }
            const double t_dec = (now_s() - t) / steps;
            const kv_memory_report r = fs->memory(false);
            const double kv_bytes = (double) (r.key_bytes + r.value_bytes), bytes = (double) fs->weight_bytes() + kv_bytes;
            const double gbs = bytes / t_dec / 1e9;
            const double ev_ms = r.compactions ? 1e3 * r.compaction_seconds : 0.0;  // host side of the eviction steps (download, select, enqueue)
            std::fprintf(stderr, "%-11s %-5s %-12s ctx %6d forward: prefill %8.1f tok/s, decode %8.1f tok/s (%.3f ms/token incl. logits to the host) | "
                                 "%.1f MB weights + %.2f MB KV (%.2f MB held on the device; %lld quantized, %lld evicted tokens) | %.0f GB/s = %.0f%% of HBM%s\n",
                         sh.name, ggml_type_name(wt), kv.c_str(), c, c / t_pre, 1.0 / t_dec, t_dec * 1e3, fs->weight_bytes() / 1e6, kv_bytes / 1e6, fs->kv_reserved_bytes() / 1e6,
                         (long long) r.quantized_tokens, (long long) r.evicted_tokens, gbs, hbm > 0 ? 100.0 * gbs / hbm : 0.0,
                         evicting ? strfmt(" | %d warm-up steps %.3f ms/token incl. %lld head evictions (%.1f ms host)", warm, t_warm * 1e3, (long long) r.compactions, ev_ms).c_str() : "");
            std::printf("{\"bench\":\"decode-forward\",\"device\":\"%s\",\"shape\":\"%s\",\"weights\":\"%s\",\"kv\":\"%s\",\"n_ctx\":%d,\"steps\":%d,"
                        "\"prefill_tok_s\":%.2f,\"tok_s\":%.2f,\"weight_bytes\":%zu,\"kv_bytes\":%.0f,\"kv_reserved_bytes\":%zu,\"quantized_tokens\":%lld,"
                        "\"evicted_tokens\":%lld,\"warmup_steps\":%d,\"warmup_ms_per_token\":%.4f,\"compactions\":%lld,\"compaction_host_ms\":%.2f,"
                        "\"gb_s\":%.1f,\"hbm_frac\":%.3f}\n",
                        be.info().name.c_str(), sh.name, ggml_type_name(wt), kv.c_str(), c, steps, c / t_pre, 1.0 / t_dec, fs->weight_bytes(), kv_bytes,
                        fs->kv_reserved_bytes(), (long long) r.quantized_tokens, (long long) r.evicted_tokens, warm, t_warm * 1e3, (long long) r.compactions, ev_ms,
                        gbs, hbm > 0 ? gbs / hbm : 0.0);
            std::fflush(stdout);
        }
    }
    return status::success();
}

} // namespace

int main(int argc, char ** argv) {
    std::string shape_name = "qwen2-1.5b", types = "f16,q8_0,q4_K", ctxs = "1024,8192,32768", kvs;
    int steps = 20;
    double hbm = 0;
    bool forward = false;
    for (int i = 1; i < argc; i++) {
        const std::string a = argv[i];
        auto next = [&]() -> std::string { if (i + 1 >= argc) { std::fprintf(stderr, "%s needs a value\n", a.c_str()); std::exit(2); } return argv[++i]; };
        if (a == "--shape") shape_name = next();
        else if (a == "--type") types = next();
        else if (a == "--contexts") ctxs = next();
        else if (a == "--kv") kvs = next();
        else if (a == "--forward") forward = true;
        else if (a == "--steps") steps = std::max(1, std::atoi(next().c_str()));
        else if (a == "--hbm-gbs") hbm = std::atof(next().c_str());
        else { std::fprintf(stderr, "usage: decode-bench-cuda [--forward] [--shape qwen2-1.5b|qwen2-0.5b|tiny] [--type f16,q8_0,q4_K] [--contexts 1024,8192,32768] [--kv f16,rot2,rot2-post,rot2-hs-lazy | with --forward also rot2-hs, rot2-hs-h2o, rot2-hs-tova, q8, q4] [--steps N] [--hbm-gbs N]\n"); return 2; }
    }
    const shape * sh = nullptr;
    for (const shape & s : SHAPES) if (shape_name == s.name) sh = &s;
    if (!sh) { std::fprintf(stderr, "unknown shape %s\n", shape_name.c_str()); return 2; }
    if (kvs.empty()) kvs = forward ? "f16,rot2,rot2-hs,rot2-hs-lazy" : "f16,rot2,rot2-post,rot2-hs-lazy";
    const std::vector<std::string> kv_list = split(kvs);
    for (const std::string & k : kv_list) {
        const bool ok = (forward && (k == "rot2-hs" || k == "q8" || k == "q4" || k == "rot2-hs-h2o" || k == "rot2-hs-tova")) || k == "f16" || k == "rot2" ||
                        k == "rot2-post" || k == "rot2-hs-lazy";
        if (!ok) {
            std::fprintf(stderr, "unknown --kv %s%s\n", k.c_str(), forward ? " (with --forward: f16, rot2, rot2-post, rot2-hs, rot2-hs-lazy, rot2-hs-h2o, rot2-hs-tova, q8, q4)" : "");
            return 2;
        }
    }
    std::unique_ptr<cu::backend> be;
    const status st = cu::backend::create(0, &be);
    if (!st.ok()) { std::printf("skipped: no CUDA device (%s)\n", st.message.c_str()); return 0; }
    const cu::device_info & d = be->info();
    if (hbm <= 0) hbm = d.hbm_peak_gbs;
    std::fprintf(stderr, "device: %s (sm_%d%d, %d SMs, %.1f GiB), HBM peak %.0f GB/s%s\n", d.name.c_str(), d.cc_major, d.cc_minor, d.sm_count,
                 d.total_bytes / 1073741824.0, hbm, d.hbm_peak_gbs > 0 ? " (from the device)" : " (--hbm-gbs)");
    std::vector<int> contexts;
    for (auto & c : split(ctxs)) contexts.push_back(std::atoi(c.c_str()));
    int rc = 0;
    for (auto & tn : split(types)) {
        ggml_type t = GGML_TYPE_COUNT_KNOWN;
        size_t n = 0;
        const quant_traits * all = quant_traits_all(&n);
        for (size_t i = 0; i < n; i++) if (tn == all[i].name) t = all[i].type;
        if (t == GGML_TYPE_COUNT_KNOWN || !cu::supports_op(cu::op::MATMUL, t)) { std::fprintf(stderr, "type %s: not supported\n", tn.c_str()); continue; }
        if (forward ? !run_forward(*sh, t, contexts, kv_list, steps, hbm, *be).ok() : !run(*sh, t, contexts, kv_list, steps, hbm, *be).ok()) rc = 1;
    }
    return rc;
}
#else
int main() {
    std::printf("skipped: built without THINKCACHE_CUDA\n");
    return 0;
}
#endif
