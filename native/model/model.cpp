// Model loading: hyperparameters from `<arch>.*` metadata (defaults as llama.cpp), tensor views with
// shape and type checks. Every mismatch is a status naming the tensor, the expected and the found shape.
#include "model.h"

#include "../kernels/cpu/quant-traits-cpu.h"
#include "../tensor/quant-traits.h"

namespace core {

namespace {

struct loader {
    model & m;
    const gguf_file & f;
    std::string arch_name;

    std::string key(const char * suffix) const { return arch_name + "." + suffix; }

    uint32_t u32(const char * suffix, bool required, uint32_t def) {
        uint32_t v = def;
        bool found = false;
        status s = f.get_u32(key(suffix), &v, &found);
        if (!s.ok()) throw status_error{s};
        if (!found && required) fail(ERR_GGUF_FORMAT, strfmt("model: required metadata '%s' is missing", key(suffix).c_str()));
        return v;
    }
    float f32(const char * suffix, float def) {
        float v = def;
        bool found = false;
        status s = f.get_f32(key(suffix), &v, &found);
        if (!s.ok()) throw status_error{s};
        return v;
    }

    const gguf_tensor_info * tensor(const std::string & name, bool required) {
        const gguf_tensor_info * t = f.find_tensor(name);
        if (!t && required) fail(ERR_GGUF_FORMAT, strfmt("model: tensor '%s' is missing", name.c_str()));
        return t;
    }

    void check_shape(const gguf_tensor_info * t, int64_t ne0, int64_t ne1) {
        const bool ok = t->ne[0] == ne0 && t->ne[1] == ne1 && t->ne[2] == 1 && t->ne[3] == 1;
        if (!ok) {
            fail(ERR_GGUF_FORMAT, strfmt("model: tensor '%s' has shape [%lld, %lld, %lld, %lld] but must be [%lld, %lld]", t->name.c_str(),
                                         (long long) t->ne[0], (long long) t->ne[1], (long long) t->ne[2], (long long) t->ne[3],
                                         (long long) ne0, (long long) ne1));
        }
    }

    weight_view matrix(const std::string & name, int64_t n_in, int64_t n_out, bool required = true) {
        const gguf_tensor_info * t = tensor(name, required);
        if (!t) return {};
        check_shape(t, n_in, n_out);
        const quant_traits * qt = quant_traits_get(t->type);
        if (!qt || !quant_traits_cpu_get(t->type)) {
            fail(ERR_UNSUPPORTED_QUANT, strfmt("model: tensor '%s' has type %s, which the CPU backend does not support yet (supported: %s)",
                                               name.c_str(), ggml_type_name(t->type), supported_types().c_str()));
        }
        weight_view w;
        w.data = t->data;
        w.type = t->type;
        w.n_in = n_in;
        w.n_out = n_out;
        w.row_bytes = quant_row_bytes(qt, n_in);
        m.weight_bytes += t->n_bytes;
        return w;
    }

    const float * vec(const std::string & name, int64_t n, bool required = true) {
        const gguf_tensor_info * t = tensor(name, required);
        if (!t) return nullptr;
        check_shape(t, n, 1);
        m.weight_bytes += t->n_bytes;
        if (t->type == GGML_TYPE_F32 && ((uintptr_t) t->data % alignof(float)) == 0) return (const float *) t->data;
        const quant_traits * qt = quant_traits_get(t->type);
        if (!qt) {
            fail(ERR_UNSUPPORTED_QUANT, strfmt("model: tensor '%s' has type %s, which is not supported for vectors", name.c_str(), ggml_type_name(t->type)));
        }
        m.owned.emplace_back((size_t) n);
        qt->to_float(t->data, m.owned.back().data(), n);
        return m.owned.back().data();
    }

    static std::string supported_types() {
        size_t n = 0;
        const quant_traits * all = quant_traits_all(&n);
        std::string s;
        for (size_t i = 0; i < n; i++) {
            if (!quant_traits_cpu_get(all[i].type)) continue;
            if (!s.empty()) s += ", ";
            s += all[i].name;
        }
        return s;
    }

    void load() {
        bool found = false;
        status s = f.get_str("general.architecture", &arch_name, &found);
        if (!s.ok()) throw status_error{s};
        if (!found) fail(ERR_GGUF_FORMAT, "model: metadata 'general.architecture' is missing");
        m.arch = arch_find(arch_name);
        if (!m.arch) {
            fail(ERR_UNSUPPORTED_ARCH, strfmt("model: architecture '%s' is not supported (supported: %s)", arch_name.c_str(), arch_supported_list().c_str()));
        }
        hparams & hp = m.hp;
        hp.n_embd = u32("embedding_length", true, 0);
        hp.n_layer = u32("block_count", true, 0);
        hp.n_head = u32("attention.head_count", true, 0);
        hp.n_head_kv = u32("attention.head_count_kv", false, hp.n_head);
        hp.n_ff = u32("feed_forward_length", true, 0);
        hp.n_ctx_train = u32("context_length", false, 2048);
        if (hp.n_embd == 0 || hp.n_layer == 0 || hp.n_head == 0 || hp.n_head_kv == 0 || hp.n_ff == 0) {
            fail(ERR_GGUF_FORMAT, strfmt("model: hyperparameters must be positive (n_embd %u, n_layer %u, n_head %u, n_head_kv %u, n_ff %u)",
                                         hp.n_embd, hp.n_layer, hp.n_head, hp.n_head_kv, hp.n_ff));
        }
        if (hp.n_layer > 4096 || hp.n_head > 4096 || hp.n_embd > (1u << 20) || hp.n_ff > (1u << 22)) {
            fail(ERR_GGUF_FORMAT, strfmt("model: hyperparameters out of range (n_embd %u, n_layer %u, n_head %u, n_ff %u)", hp.n_embd, hp.n_layer, hp.n_head, hp.n_ff));
        }
        if (hp.n_head % hp.n_head_kv != 0) {
            fail(ERR_GGUF_FORMAT, strfmt("model: attention.head_count %u is not a multiple of head_count_kv %u", hp.n_head, hp.n_head_kv));
        }
        if (hp.n_head / hp.n_head_kv > 256) {
            fail(ERR_GGUF_FORMAT, strfmt("model: %u query heads per KV head is more than the supported 256", hp.n_head / hp.n_head_kv));
        }
        const uint32_t def_hd = hp.n_embd / hp.n_head;
        hp.head_dim = u32("attention.key_length", false, def_hd);
        hp.head_dim_v = u32("attention.value_length", false, hp.head_dim);
        if (hp.head_dim == 0 || hp.head_dim > 1024 || hp.head_dim % 2 || hp.head_dim_v == 0 || hp.head_dim_v > 1024) {
            fail(ERR_GGUF_FORMAT, strfmt("model: head sizes out of range (key_length %u, value_length %u)", hp.head_dim, hp.head_dim_v));
        }
        hp.n_rot = u32("rope.dimension_count", false, hp.head_dim);
        if (hp.n_rot > hp.head_dim || hp.n_rot % 2) {
            fail(ERR_GGUF_FORMAT, strfmt("model: rope.dimension_count %u must be even and at most the head size %u", hp.n_rot, hp.head_dim));
        }
        hp.rms_eps = f32("attention.layer_norm_rms_epsilon", 1e-5f);
        hp.rope_freq_base = f32("rope.freq_base", 10000.0f);
        std::string scaling;
        bool has_scaling = false;
        s = f.get_str(key("rope.scaling.type"), &scaling, &has_scaling);
        if (!s.ok()) throw status_error{s};
        if (has_scaling && scaling != "none" && scaling != "linear") {
            fail(ERR_UNSUPPORTED_ARCH, strfmt("model: rope scaling type '%s' is not supported yet (supported: none, linear)", scaling.c_str()));
        }
        if (has_scaling && scaling == "linear") {
            const float factor = f32("rope.scaling.factor", 1.0f);
            if (factor > 0) hp.rope_freq_scale = 1.0f / factor;
        }

        const gguf_tensor_info * te = tensor("token_embd.weight", true);
        hp.n_vocab = (uint32_t) te->ne[1];
        if (te->ne[1] <= 0 || te->ne[1] > (1 << 24)) fail(ERR_GGUF_FORMAT, strfmt("model: token_embd.weight has %lld rows", (long long) te->ne[1]));
        m.tok_embd = matrix("token_embd.weight", hp.n_embd, hp.n_vocab);
        m.output_norm = vec("output_norm.weight", hp.n_embd);
        if (f.find_tensor("output.weight")) {
            m.output = matrix("output.weight", hp.n_embd, hp.n_vocab);
        } else {
            m.output = m.tok_embd;
            m.tied_output = true;
        }
        if (f.find_tensor("rope_freqs.weight")) m.rope_freqs = vec("rope_freqs.weight", hp.n_rot / 2);

        const int64_t n_q = (int64_t) hp.n_head * hp.head_dim;
        const int64_t n_k = (int64_t) hp.n_head_kv * hp.head_dim;
        const int64_t n_v = (int64_t) hp.n_head_kv * hp.head_dim_v;
        m.layers.resize(hp.n_layer);
        for (uint32_t il = 0; il < hp.n_layer; il++) {
            const std::string p = "blk." + std::to_string(il) + ".";
            layer_weights & L = m.layers[il];
            L.attn_norm = vec(p + "attn_norm.weight", hp.n_embd);
            L.wq = matrix(p + "attn_q.weight", hp.n_embd, n_q);
            L.wk = matrix(p + "attn_k.weight", hp.n_embd, n_k);
            L.wv = matrix(p + "attn_v.weight", hp.n_embd, n_v);
            L.wo = matrix(p + "attn_output.weight", (int64_t) hp.n_head * hp.head_dim_v, hp.n_embd);
            // biases are optional for every architecture, required for none (qwen2 files always have them)
            L.bq = vec(p + "attn_q.bias", n_q, false);
            L.bk = vec(p + "attn_k.bias", n_k, false);
            L.bv = vec(p + "attn_v.bias", n_v, false);
            if (m.arch->qkv_bias && (!L.bq || !L.bk || !L.bv)) {
                fail(ERR_GGUF_FORMAT, strfmt("model: %s needs attn_q/k/v.bias tensors, missing in layer %u", m.arch->name, il));
            }
            if (m.arch->qk_norm) {
                L.q_norm = vec(p + "attn_q_norm.weight", hp.head_dim);
                L.k_norm = vec(p + "attn_k_norm.weight", hp.head_dim);
            }
            L.ffn_norm = vec(p + "ffn_norm.weight", hp.n_embd);
            L.w_gate = matrix(p + "ffn_gate.weight", hp.n_embd, hp.n_ff);
            L.w_up = matrix(p + "ffn_up.weight", hp.n_embd, hp.n_ff);
            L.w_down = matrix(p + "ffn_down.weight", hp.n_ff, hp.n_embd);
        }
    }
};

} // namespace

status model_load_from_gguf(std::unique_ptr<gguf_file> file, std::unique_ptr<model> & out) {
    auto m = std::make_unique<model>();
    m->file = std::move(file);
    try {
        loader l{*m, *m->file, {}};
        l.load();
    } catch (const status_error & e) {
        status s = e.st;
        if (!m->file->path.empty()) s.message = m->file->path + ": " + s.message;
        return s;
    } catch (const std::bad_alloc &) {
        return status(ERR_OOM_HOST, "model: out of memory while loading");
    }
    out = std::move(m);
    return {};
}

status model_load(const std::string & path, std::unique_ptr<model> & out) {
    std::unique_ptr<gguf_file> f;
    status s = gguf_open(path, f);
    if (!s.ok()) return s;
    return model_load_from_gguf(std::move(f), out);
}

} // namespace core
