// Forward-pass pieces: SIMD attention vs the scalar reference over a per-head cache whose heads hold
// different token sets, and the golden greedy decode of stories260K (when ../shared/data is present).
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>

#include "engine/engine.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/quant-traits-cpu.h"
#include "test-harness.h"

using namespace core;

static std::unique_ptr<kv_cache> make_cache(int n_layer, int n_head_kv, int D, int DV, int n_ctx, std::vector<uint8_t> retention = {},
                                            int sinks = 16, int recent = 64) {
    kv_cache_config c;
    c.n_layer = n_layer;
    c.n_head_kv = n_head_kv;
    c.head_dim = D;
    c.head_dim_v = DV;
    c.n_ctx = n_ctx;
    c.retention = std::move(retention);
    c.stream_sinks = sinks;
    c.stream_recent = recent;
    return std::make_unique<kv_cache>(c, std::make_shared<page_pool>(kv_page_bytes(D, DV)));
}

TC_TEST("attention: SIMD == scalar ref (GQA, prefill and decode, head sizes 8/64/80/128)") {
    std::mt19937 rng(7);
    std::normal_distribution<float> nd(0, 1);
    for (int D : {8, 32, 64, 80, 128, 192}) {
        for (int n_tokens : {1, 5}) {
            const int n_head = 8, n_head_kv = 2, n_layer = 1, n_ctx = 300;
            auto kv = make_cache(n_layer, n_head_kv, D, D, n_ctx, {KV_RETAIN_FULL, KV_RETAIN_STREAM}, 8, 40);
            const int n_prev = 200;
            std::vector<float> k((size_t) n_prev * n_head_kv * D), v(k.size());
            for (auto & x : k) x = nd(rng);
            for (auto & x : v) x = nd(rng);
            std::vector<int32_t> pos(n_prev);
            for (int i = 0; i < n_prev; i++) pos[i] = i;
            TC_CHECK(kv->reserve(n_prev).ok());
            kv->append(0, n_prev, k.data(), v.data(), pos.data());
            kv->retain(0);  // head 1 streams: 8 sinks + 40 recent, head 0 keeps all 200 (different token sets, 4 pages vs 1)
            TC_CHECK(kv->head(0, 0).n == n_prev && kv->head(0, 1).n == 48);
            std::vector<float> q((size_t) n_tokens * n_head * D);
            for (auto & x : q) x = nd(rng);
            std::vector<int32_t> qpos(n_tokens);
            for (int t = 0; t < n_tokens; t++) qpos[t] = n_prev - n_tokens + t;  // causal inside the cache
            attn_params p{n_tokens, n_head, n_head_kv, D, D, 1.0f / std::sqrt((float) D)};
            std::vector<float> out_ref((size_t) n_tokens * n_head * D), out((size_t) n_tokens * n_head * D);
            attention_ref(p, q.data(), qpos.data(), *kv, 0, out_ref.data());
            for (int nth : {1, 2, 3}) {
                thread_pool pool(nth);
                attn_scratch sc;
                attention(pool, p, q.data(), qpos.data(), *kv, 0, out.data(), sc);
                const double e = tc::nmse(out.data(), out_ref.data(), out.size());
                // the fast paths reproduce the reference expression (llama.cpp's rounding) bit for bit
                TC_CHECK(e == 0.0) << "ATTENTION(D=" << D << ",n_tokens=" << n_tokens << ",threads=" << nth << "): NMSE " << e;
            }
        }
    }
}

TC_TEST("rope: NORM and NEOX rotate pairs by the position angle") {
    std::vector<float> cs(8);
    rope_cache_ref(cs.data(), 3, 8, 10000.0f, 1.0f, nullptr);
    TC_CHECK(std::fabs(cs[0] - std::cos(3.0f)) < 1e-6f && std::fabs(cs[1] - std::sin(3.0f)) < 1e-6f);
    float x[8] = {1, 0, 1, 0, 1, 0, 1, 0};
    rope_apply_ref(x, 1, 8, 8, ROPE_STYLE_NORM, cs.data());
    TC_CHECK(std::fabs(x[0] - std::cos(3.0f)) < 1e-6f && std::fabs(x[1] - std::sin(3.0f)) < 1e-6f);
    float y[8] = {1, 1, 1, 1, 0, 0, 0, 0};
    rope_apply_ref(y, 1, 8, 8, ROPE_STYLE_NEOX, cs.data());
    TC_CHECK(std::fabs(y[0] - std::cos(3.0f)) < 1e-6f && std::fabs(y[4] - std::sin(3.0f)) < 1e-6f);
}

TC_TEST("e2e: stories260K greedy == llama.cpp reference (64 tokens)") {
    const char * path = "../shared/data/models/stories260K.gguf";
    std::ifstream probe(path);
    if (!probe) {
        std::printf("    skipped: %s not found (run from the repository root with ../shared/data present)\n", path);
        return;
    }
    std::unique_ptr<model> m;
    status s = model_load(path, m);
    TC_CHECK(s.ok()) << s.message;
    if (!s.ok()) return;
    std::shared_ptr<const model> sm(std::move(m));
    context_params cp;
    cp.n_ctx = 512;
    cp.n_threads = 2;
    auto ctx = std::make_shared<engine_context>(sm, cp);
    engine_sequence seq(ctx);
    // expected tokens from stories260K.greedy-reference.json (node-llama-cpp 3.21.1)
    const int32_t prompt[] = {1, 403, 407, 261, 378};
    const int32_t expected[64] = {432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338, 401, 396, 267, 337, 410, 408, 419, 292, 411, 322,
                                  265, 282, 295, 433, 426, 385, 328, 432, 358, 394, 261, 370, 432, 352, 266, 268, 388, 426, 338, 391, 266, 267,
                                  337, 335, 312, 432, 398, 312, 286, 267, 414, 270, 333, 415, 426, 13, 438, 310, 439, 419, 357, 336};
    TC_CHECK(seq.eval(prompt, 5, true).ok());
    for (int i = 0; i < 64; i++) {
        int32_t tok = -1;
        TC_CHECK(seq.sample(&tok).ok());
        TC_CHECK(tok == expected[i]) << "token " << i << ": got " << tok << ", expected " << expected[i];
        if (tok != expected[i]) return;
        TC_CHECK(seq.eval(&tok, 1, true).ok());
    }
}

TC_TEST("perf/attention-decode") {
    if (tc::g_mode != "perf") return;
    std::mt19937 rng(7);
    std::normal_distribution<float> nd(0, 1);
    for (int n_ctx_fill : {1024, 4096}) {
        const int D = 64, n_head = 14, n_head_kv = 2;
        auto kv = make_cache(1, n_head_kv, D, D, n_ctx_fill + 1);
        std::vector<float> k((size_t) n_ctx_fill * n_head_kv * D), v(k.size());
        for (auto & x : k) x = nd(rng);
        for (auto & x : v) x = nd(rng);
        std::vector<int32_t> pos(n_ctx_fill);
        for (int i = 0; i < n_ctx_fill; i++) pos[i] = i;
        kv->reserve(n_ctx_fill);
        kv->append(0, n_ctx_fill, k.data(), v.data(), pos.data());
        std::vector<float> q((size_t) n_head * D), out(q.size());
        for (auto & x : q) x = nd(rng);
        int32_t qpos = n_ctx_fill;
        attn_params p{1, n_head, n_head_kv, D, D, 0.125f};
        for (int nth : {1, 2}) {
            thread_pool pool(nth);
            attn_scratch sc;
            attention(pool, p, q.data(), &qpos, *kv, 0, out.data(), sc);
            const int reps = 200;
            auto t0 = std::chrono::steady_clock::now();
            for (int r = 0; r < reps; r++) attention(pool, p, q.data(), &qpos, *kv, 0, out.data(), sc);
            const double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / reps;
            std::printf("    attention decode n=%d D=%d heads %d/%d threads %d: %.1f us/layer (%.2f ns per key·head)\n", n_ctx_fill, D, n_head, n_head_kv, nth, us,
                        us * 1000 / (n_ctx_fill * (double) n_head));
        }
    }
}

TC_TEST("silu_mul: vectorized exp (llama.cpp's) stays within 4 ulp of libm's silu") {
    std::vector<float> x, u;
    for (float v = -30.0f; v <= 30.0f; v += 0.0137f) { x.push_back(v); u.push_back(1.0f); }
    std::vector<float> fast = x, ref = x;
    silu_mul(fast.data(), u.data(), (int64_t) fast.size());
    silu_mul_ref(ref.data(), u.data(), (int64_t) ref.size());
    int worst = 0;
    for (size_t i = 0; i < x.size(); i++) {
        const int d = std::abs((int) (f32_bits(fast[i]) - f32_bits(ref[i])));
        worst = std::max(worst, d);
    }
    TC_CHECK(worst <= 4) << "SILU_MUL: max " << worst << " ulp from libm";
}

TC_TEST("expf_libm: the vectorized exp equals libm's expf bit for bit over [-104, 88.7] and at the edges") {
    // every float of [−104, 0] (and of [0, 88.72]) with THINKCACHE_EXHAUSTIVE=1, else every 61st bit pattern plus
    // the edges: ±0, subnormals, the underflow thresholds, −inf, NaN; blocks of odd length (the masked tail)
    const bool all = std::getenv("THINKCACHE_EXHAUSTIVE") != nullptr;
    const uint32_t stride = all ? 1 : 61;
    std::vector<float> x;
    auto add_range = [&](uint32_t b0, uint32_t b1) { for (uint64_t b = b0; b <= b1; b += stride) x.push_back(bits_f32((uint32_t) b)); };
    const std::vector<float> edges = {0.0f, -0.0f, 1e-45f, -1e-45f, -0x1.9d1d9ep6f, std::nextafter(-0x1.9d1d9ep6f, -200.0f), -0x1.9fe368p6f,
                                      std::nextafter(-0x1.9fe368p6f, 0.0f), -87.3365f, -88.0f, 88.0f, 88.72f, 89.0f, -INFINITY, INFINITY, NAN, -1.0f, -0.5f};
    size_t checked = 0, mismatches = 0;
    std::vector<float> fast, ref;
    auto check = [&](const std::vector<float> & in) {
        for (size_t i0 = 0; i0 < in.size(); i0 += 4093) {  // (4093: an odd block length leaves a masked tail)
            const int n = (int) std::min<size_t>(4093, in.size() - i0);
            fast.resize((size_t) n);
            ref.resize((size_t) n);
            expf_libm(in.data() + i0, fast.data(), n);
            expf_libm_ref(in.data() + i0, ref.data(), n);
            for (int i = 0; i < n; i++) {
                const bool same = f32_bits(fast[(size_t) i]) == f32_bits(ref[(size_t) i]) || (std::isnan(fast[(size_t) i]) && std::isnan(ref[(size_t) i]));
                if (!same && mismatches++ < 5) std::printf("    expf(%a): %a, libm %a\n", (double) in[i0 + (size_t) i], (double) fast[(size_t) i], (double) ref[(size_t) i]);
            }
            checked += (size_t) n;
        }
    };
    for (uint32_t b0 = 0x80000000u; b0 < 0xc2d00000u; b0 += 0x01000000u) {  // [−0, −104) in slices (bounded memory)
        x.clear();
        add_range(b0, std::min(b0 + 0x00ffffffu, 0xc2cfffffu));
        check(x);
    }
    x.clear();
    add_range(0x00000000u, 0x42b17217u);  // [0, 88.72]
    check(x);
    check(edges);
    std::printf("    %zu values (%s), %zu mismatches; dispatch %s\n", checked, all ? "every float" : "every 61st", mismatches, cpu_dispatch_level());
    TC_CHECK(mismatches == 0);
}

TC_TEST("vec_dot f16/bf16: AVX2 and AVX-512 compute the same expression bit for bit") {
    if (!(cpu_level_supported() >= CPU_LEVEL_AVX512)) {
        std::printf("    skipped: this CPU has no AVX-512\n");
        return;
    }
    std::mt19937 rng(11);
    std::normal_distribution<float> nd(0, 1);
    for (ggml_type t : {GGML_TYPE_F16, GGML_TYPE_BF16}) {
        for (int n : {64, 128, 96, 896, 200}) {
            std::vector<uint16_t> a(n), b(n);
            for (int i = 0; i < n; i++) {
                a[i] = t == GGML_TYPE_F16 ? f32_to_f16(nd(rng)) : f32_to_bf16(nd(rng));
                b[i] = t == GGML_TYPE_F16 ? f32_to_f16(nd(rng)) : f32_to_bf16(nd(rng));
            }
            float s2 = 0, s5 = 0;
            quant_traits_cpu_get_level(t, CPU_LEVEL_AVX2)->vec_dot(n, &s2, a.data(), b.data());
            quant_traits_cpu_get_level(t, CPU_LEVEL_AVX512)->vec_dot(n, &s5, a.data(), b.data());
            TC_CHECK(f32_bits(s2) == f32_bits(s5)) << "VEC_DOT(type=" << ggml_type_name(t) << ",n=" << n << "): avx2 " << s2 << " avx512 " << s5;
        }
    }
}
