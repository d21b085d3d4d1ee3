// Offline quantization of a GGUF model file (our `llama-quantize`): every 2-D weight is converted to the
// type llama.cpp's quantizer would choose for the requested file type, with our reference quantizers
// (bit-identical to ggml's without an importance matrix), so llama.cpp and thinkcache load the result
// the same way. Metadata is carried over unchanged except general.file_type and
// general.quantization_version (= 2).
// Tensor selection follows llama.cpp's llama_tensor_get_type for the supported file types:
//   - 1-D tensors, norms and anything not named *weight stay as they are (F32);
//   - output.weight (and token_embd.weight when the output is tied to it) -> Q6_K for every quantized type
//     except Q8_0 (Q8_0 when ne[0] is not a multiple of the block size);
//   - Q4_K_M / Q5_K_M: attn_v and ffn_down -> Q6_K on the "more bits" layers (the first and last eighth
//     and every third layer between them); Q2_K, Q3_K_*, Q4_K_S: their attn_v / ffn_down / attn_output rules;
//   - a K-quant on a row length that is not a multiple of 256 falls back to Q4_0 / Q5_0 / Q5_1 / Q8_0.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "../common/status.h"
#include "../tensor/ggml-type.h"

namespace core {

constexpr int GGUF_QUANTIZE_MAX_THREADS = 256;

struct gguf_quantize_params {
    std::string type;   // file type: "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k_s|m|l", "q4_k_s|m",
                        // "q5_k_s|m", "q6_k", "f16", "bf16", "f32" ("q3_k", "q4_k", "q5_k" mean the _m mixes)
    int n_threads = 1;  // worker threads for the row quantization (at most GGUF_QUANTIZE_MAX_THREADS)
};

struct gguf_quantize_tensor {
    std::string name;
    ggml_type from = GGML_TYPE_F32, to = GGML_TYPE_F32;
};

struct gguf_quantize_result {
    uint32_t file_type = 0;                      // llama_ftype written to general.file_type
    uint64_t bytes_in = 0, bytes_out = 0;        // tensor data bytes
    std::vector<gguf_quantize_tensor> tensors;   // in file order
};

// Names accepted in gguf_quantize_params::type, for messages and the CLI's help.
const std::vector<std::string> & gguf_quantize_type_names();

// Reads `in_path`, writes `out_path` (through a temporary file renamed at the end).
status gguf_quantize(const std::string & in_path, const std::string & out_path, const gguf_quantize_params & params,
                     gguf_quantize_result * result);

} // namespace core
