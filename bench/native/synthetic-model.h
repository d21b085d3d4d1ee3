// Synthetic Qwen2-shaped models for the C++ benchmarks (decode-bench, decode-bench-cuda --forward): an
// in-memory GGUF image with seeded random weights (values do not change speed), loadable with
// gguf_parse_memory + model_load_from_gguf. The image must outlive the model.
#pragma once
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "tensor/ggml-type.h"
#include "tensor/quant-traits.h"

namespace core {
namespace bench {

struct shape { const char * name; uint32_t n_embd, n_layer, n_head, n_head_kv, head_dim, n_ff, n_vocab; };
inline const shape SHAPES[] = {
    {"qwen2-0.5b", 896, 24, 14, 2, 64, 4864, 151936},
    {"qwen2-1.5b", 1536, 28, 12, 2, 128, 8960, 151936},
    {"tiny", 256, 4, 8, 2, 32, 768, 4096},
};

struct image {
    std::vector<uint8_t> b;
    template <class T> void put(T v) { const uint8_t * p = (const uint8_t *) &v; b.insert(b.end(), p, p + sizeof(T)); }
    void str(const std::string & s) { put<uint64_t>(s.size()); b.insert(b.end(), s.begin(), s.end()); }
};

struct tensor_spec { std::string name; int64_t ne0, ne1; ggml_type type; };

inline std::vector<uint8_t> make_model_image(const shape & s, ggml_type wtype) {
    std::vector<tensor_spec> ts;
    const int64_t nq = (int64_t) s.n_head * s.head_dim, nk = (int64_t) s.n_head_kv * s.head_dim;
    ts.push_back({"token_embd.weight", s.n_embd, s.n_vocab, wtype});
    ts.push_back({"output_norm.weight", s.n_embd, 1, GGML_TYPE_F32});
    for (uint32_t il = 0; il < s.n_layer; il++) {
        const std::string p = "blk." + std::to_string(il) + ".";
        ts.push_back({p + "attn_norm.weight", s.n_embd, 1, GGML_TYPE_F32});
        ts.push_back({p + "attn_q.weight", s.n_embd, nq, wtype});
        ts.push_back({p + "attn_k.weight", s.n_embd, nk, wtype});
        ts.push_back({p + "attn_v.weight", s.n_embd, nk, wtype});
        ts.push_back({p + "attn_q.bias", nq, 1, GGML_TYPE_F32});
        ts.push_back({p + "attn_k.bias", nk, 1, GGML_TYPE_F32});
        ts.push_back({p + "attn_v.bias", nk, 1, GGML_TYPE_F32});
        ts.push_back({p + "attn_output.weight", nq, s.n_embd, wtype});
        ts.push_back({p + "ffn_norm.weight", s.n_embd, 1, GGML_TYPE_F32});
        ts.push_back({p + "ffn_gate.weight", s.n_embd, s.n_ff, wtype});
        ts.push_back({p + "ffn_up.weight", s.n_embd, s.n_ff, wtype});
        ts.push_back({p + "ffn_down.weight", s.n_ff, s.n_embd, wtype});
    }
    image im;
    im.b.insert(im.b.end(), {'G', 'G', 'U', 'F'});
    im.put<uint32_t>(3);
    im.put<uint64_t>(ts.size());
    const std::pair<const char *, uint32_t> u32s[] = {
        {"qwen2.embedding_length", s.n_embd}, {"qwen2.block_count", s.n_layer}, {"qwen2.attention.head_count", s.n_head},
        {"qwen2.attention.head_count_kv", s.n_head_kv}, {"qwen2.feed_forward_length", s.n_ff}, {"qwen2.context_length", 32768},
        {"qwen2.attention.key_length", s.head_dim}, {"qwen2.attention.value_length", s.head_dim},
    };
    im.put<uint64_t>(1 + sizeof(u32s) / sizeof(u32s[0]) + 1);
    im.str("general.architecture"); im.put<uint32_t>(8); im.str("qwen2");
    for (const auto & kv : u32s) { im.str(kv.first); im.put<uint32_t>(4); im.put<uint32_t>(kv.second); }
    im.str("qwen2.attention.layer_norm_rms_epsilon"); im.put<uint32_t>(6); im.put<float>(1e-6f);
    uint64_t off = 0;
    std::vector<uint64_t> offs;
    for (const auto & t : ts) {
        im.str(t.name);
        im.put<uint32_t>(t.ne1 == 1 ? 1 : 2);
        im.put<uint64_t>(t.ne0);
        if (t.ne1 != 1) im.put<uint64_t>(t.ne1);
        im.put<uint32_t>(t.type);
        im.put<uint64_t>(off);
        offs.push_back(off);
        const quant_traits * qt = quant_traits_get(t.type);
        off += quant_row_bytes(qt, t.ne0) * t.ne1;
        off = (off + 31) / 32 * 32;
    }
    while (im.b.size() % 32) im.b.push_back(0);
    const size_t data0 = im.b.size();
    im.b.resize(data0 + off);
    std::mt19937 rng(7);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float> row;
    for (size_t i = 0; i < ts.size(); i++) {
        const auto & t = ts[i];
        const quant_traits * qt = quant_traits_get(t.type);
        row.resize(t.ne0);
        const float sd = t.ne1 == 1 ? 0.0f : 1.0f / std::sqrt((float) t.ne0);
        uint8_t * dst = im.b.data() + data0 + offs[i];
        const size_t rb = quant_row_bytes(qt, t.ne0);
        for (int64_t r = 0; r < t.ne1; r++) {
            for (auto & x : row) x = t.ne1 == 1 ? 1.0f : nd(rng) * sd;
            qt->from_float_ref(row.data(), dst + r * rb, t.ne0);
        }
    }
    return im.b;
}

} // namespace bench
} // namespace core
