// C++ decode/prefill benchmark on synthetic model shapes (no Node needed: runs on the GPU machine too).
//   decode-bench [--shape qwen2-0.5b|qwen2-1.5b|tiny] [--type q8_0|f16|bf16|f32] [--model PATH]
//                [--threads N] [--contexts 64,1024,4096] [--decode 32] [--prefill 512]
// The synthetic model is an in-memory GGUF image with seeded random weights (values do not change
// speed). Prints prefill tok/s, decode tok/s per context, and the effective read bandwidth
// (weight bytes + KV bytes per token ÷ time per token).
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "synthetic-model.h"
#include "tensor/quant-traits.h"

using namespace core;
using core::bench::SHAPES;
using core::bench::shape;
using core::bench::make_model_image;

namespace {

double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

} // namespace

int main(int argc, char ** argv) {
    std::string shape_name = "qwen2-0.5b", type_name = "q8_0", model_path;
    int threads = 0, n_decode = 32, n_prefill = 512;
    std::vector<int> contexts = {64, 1024, 4096};
    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        auto next = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
        if (a == "--shape") shape_name = next();
        else if (a == "--type") type_name = next();
        else if (a == "--model") model_path = next();
        else if (a == "--threads") threads = std::atoi(next().c_str());
        else if (a == "--decode") n_decode = std::atoi(next().c_str());
        else if (a == "--prefill") n_prefill = std::atoi(next().c_str());
        else if (a == "--contexts") {
            contexts.clear();
            std::string l = next();
            for (size_t p = 0; p < l.size();) { size_t q = l.find(',', p); contexts.push_back(std::atoi(l.substr(p, q - p).c_str())); p = q == std::string::npos ? l.size() : q + 1; }
        } else { std::fprintf(stderr, "unknown argument %s\n", a.c_str()); return 2; }
    }
    std::vector<uint8_t> img;
    std::unique_ptr<model> m;
    status st;
    if (!model_path.empty()) {
        st = model_load(model_path, m);
    } else {
        const shape * s = nullptr;
        for (const auto & c : SHAPES) if (shape_name == c.name) s = &c;
        ggml_type t = type_name == "f32" ? GGML_TYPE_F32 : type_name == "f16" ? GGML_TYPE_F16 : type_name == "bf16" ? GGML_TYPE_BF16 : GGML_TYPE_Q8_0;
        if (!s) { std::fprintf(stderr, "unknown shape %s\n", shape_name.c_str()); return 2; }
        const double t0 = now_s();
        img = make_model_image(*s, t);
        std::unique_ptr<gguf_file> f;
        st = gguf_parse_memory(img.data(), img.size(), f);
        if (st.ok()) st = model_load_from_gguf(std::move(f), m);
        std::fprintf(stderr, "synthesized %s %s (%.0f MB) in %.1f s\n", shape_name.c_str(), type_name.c_str(), img.size() / 1e6, now_s() - t0);
    }
    if (!st.ok()) { std::fprintf(stderr, "load failed: %s\n", st.message.c_str()); return 1; }
    std::shared_ptr<const model> sm(std::move(m));
    const hparams & hp = sm->hp;
    int max_ctx = n_prefill;
    for (int c : contexts) max_ctx = std::max(max_ctx, c);
    context_params cp;
    cp.n_ctx = max_ctx + n_decode + 8;
    cp.n_threads = threads;
    auto ctx = std::make_shared<engine_context>(sm, cp);
    std::printf("model %s, threads %d, weights %.1f MB, dispatch %s\n", model_path.empty() ? shape_name.c_str() : model_path.c_str(),
                ctx->params().n_threads, sm->weight_bytes / 1e6, "cpu");
    std::mt19937 rng(3);
    auto prompt = [&](int n) { std::vector<int32_t> v(n); for (auto & x : v) x = (int32_t) (rng() % hp.n_vocab); return v; };
    {
        engine_sequence seq(ctx);  // warm-up: page in the weights
        auto p = prompt(8);
        seq.eval(p.data(), 8, true);
    }
    {
        engine_sequence seq(ctx);
        auto p = prompt(n_prefill);
        const double t0 = now_s();
        st = seq.eval(p.data(), n_prefill, true);
        const double dt = now_s() - t0;
        std::printf("prefill %5d tokens: %8.1f tok/s\n", n_prefill, n_prefill / dt);
    }
    const double kv_per_token = (double) hp.n_layer * hp.n_head_kv * (hp.head_dim + hp.head_dim_v) * 2;
    for (int c : contexts) {
        engine_sequence seq(ctx);
        auto p = prompt(c);
        st = seq.eval(p.data(), c, true);
        if (!st.ok()) { std::fprintf(stderr, "%s\n", st.message.c_str()); return 1; }
        int32_t tok = 0;
        const double t0 = now_s();
        for (int i = 0; i < n_decode; i++) {
            seq.sample(&tok);
            seq.eval(&tok, 1, true);
        }
        const double dt = (now_s() - t0) / n_decode;
        const double bytes = (double) sm->weight_bytes + kv_per_token * (c + n_decode / 2);
        std::printf("decode @ %5d: %8.1f tok/s   %.1f GB/s effective (weights + KV read per token)\n", c, 1.0 / dt, bytes / dt / 1e9);
    }
    return 0;
}
