// A loaded model: the GGUF mapping, hyperparameters and views of every weight tensor (no copies; norm
// vectors that are not f32 in the file are converted once into owned buffers).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "../gguf/gguf-reader.h"
#include "../kernels/cpu/matmul.h"
#include "arch.h"

namespace core {

struct hparams {
    uint32_t n_vocab = 0;
    uint32_t n_ctx_train = 0;
    uint32_t n_embd = 0;
    uint32_t n_layer = 0;
    uint32_t n_head = 0;
    uint32_t n_head_kv = 0;
    uint32_t head_dim = 0;      // key/query head size (attention.key_length, default n_embd / n_head)
    uint32_t head_dim_v = 0;    // value head size (attention.value_length, default head_dim)
    uint32_t n_ff = 0;
    uint32_t n_rot = 0;         // rope.dimension_count (default head_dim)
    float rms_eps = 1e-5f;
    float rope_freq_base = 10000.0f;
    float rope_freq_scale = 1.0f; // 1 / rope.scaling.factor for linear scaling
};

struct layer_weights {
    const float * attn_norm = nullptr;   // [n_embd]
    weight_view wq, wk, wv, wo;          // [n_head*head_dim][n_embd], [n_head_kv*head_dim][n_embd], ..., [n_embd][n_head*head_dim_v]
    const float * bq = nullptr;          // [n_head*head_dim]     (qwen2)
    const float * bk = nullptr;          // [n_head_kv*head_dim]  (qwen2)
    const float * bv = nullptr;          // [n_head_kv*head_dim_v](qwen2)
    const float * q_norm = nullptr;      // [head_dim]            (qwen3)
    const float * k_norm = nullptr;      // [head_dim]            (qwen3)
    const float * ffn_norm = nullptr;    // [n_embd]
    weight_view w_gate, w_up, w_down;    // [n_ff][n_embd], [n_ff][n_embd], [n_embd][n_ff]
};

struct model {
    std::unique_ptr<gguf_file> file;
    const arch_info * arch = nullptr;
    hparams hp;
    weight_view tok_embd;                // [n_vocab][n_embd]
    const float * output_norm = nullptr; // [n_embd]
    weight_view output;                  // [n_vocab][n_embd] (tok_embd when tied)
    bool tied_output = false;
    const float * rope_freqs = nullptr;  // [n_rot/2] optional frequency factors (llama 3.1 style)
    std::vector<layer_weights> layers;
    std::vector<std::vector<float>> owned; // converted norm vectors
    size_t weight_bytes = 0;             // bytes of all tensors used by the forward pass
};

// Loads and validates a model. Errors: ERR_IO, ERR_GGUF_FORMAT, ERR_UNSUPPORTED_ARCH (names the
// supported ones), ERR_UNSUPPORTED_QUANT (names the tensor and type).
status model_load(const std::string & path, std::unique_ptr<model> & out);
// Same from an already parsed file (takes ownership).
status model_load_from_gguf(std::unique_ptr<gguf_file> file, std::unique_ptr<model> & out);

} // namespace core
