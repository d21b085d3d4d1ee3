// Supported architectures and their per-architecture choices, as one table (after llama.cpp's
// LLM_ARCH_NAMES). Adding an architecture = one row here plus, if its graph differs, a build-<arch> file.
#pragma once
#include <string>

namespace core {

enum llm_arch : int {
    LLM_ARCH_LLAMA = 0,
    LLM_ARCH_QWEN2 = 1,
    LLM_ARCH_QWEN3 = 2,
};

enum rope_style : int {
    ROPE_STYLE_NORM = 0,  // rotate adjacent pairs (x[2i], x[2i+1]) — llama (the converter permutes q/k)
    ROPE_STYLE_NEOX = 2,  // rotate halves (x[i], x[i + n_rot/2]) — qwen2, qwen3
};

struct arch_info {
    llm_arch arch;
    const char * name;     // general.architecture
    rope_style rope;
    bool qkv_bias;         // attn_{q,k,v}.bias tensors (qwen2)
    bool qk_norm;          // per-head RMSNorm of q and k before RoPE (qwen3)
};

// nullptr when the name is not supported.
const arch_info * arch_find(const std::string & name);
// "llama, qwen2, qwen3"
std::string arch_supported_list();

} // namespace core
