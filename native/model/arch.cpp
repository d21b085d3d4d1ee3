#include "arch.h"

namespace core {

static const arch_info ARCHS[] = {
    {LLM_ARCH_LLAMA, "llama", ROPE_STYLE_NORM, false, false},
    {LLM_ARCH_QWEN2, "qwen2", ROPE_STYLE_NEOX, true, false},
    {LLM_ARCH_QWEN3, "qwen3", ROPE_STYLE_NEOX, false, true},
};

const arch_info * arch_find(const std::string & name) {
    for (const auto & a : ARCHS) if (name == a.name) return &a;
    return nullptr;
}

std::string arch_supported_list() {
    std::string s;
    for (const auto & a : ARCHS) {
        if (!s.empty()) s += ", ";
        s += a.name;
    }
    return s;
}

} // namespace core
