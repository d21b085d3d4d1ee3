// Matrix products against weight tensors of any supported type, on the thread pool.
//   decode  (n_tokens == 1): matvec, rows split across threads, each weight byte streamed once.
//   prefill (n_tokens  > 1): blocked matmul, a tile of weight rows reused for a block of tokens while it
//                            is in cache.
// Shapes use GGUF/ggml order: a weight W of ne = [n_in, n_out] is n_out rows of n_in elements.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "../../common/thread-pool.h"
#include "../../tensor/ggml-type.h"

namespace core {

struct weight_view {
    const void * data = nullptr; // row-major, n_out rows of row_bytes
    ggml_type type = GGML_TYPE_F32;
    int64_t n_in = 0;            // elements per row (ne[0])
    int64_t n_out = 0;           // rows (ne[1])
    size_t row_bytes = 0;
};

// Scratch reused across calls (activations converted to vec_dot_type). Owned by the caller (one per
// context) so the hot path never allocates.
struct matmul_scratch {
    std::vector<uint8_t> act;
    std::vector<uint8_t> packed;  // prefill activations in a packed kernel's layout (gemm_pack_kernel), 64-byte aligned inside
};

// y[t][o] = sum_i W[o][i] * x[t][i]   x: [n_tokens][n_in] f32, y: [n_tokens][n_out] f32 (row stride n_out)
void cpu_matmul(thread_pool & pool, const weight_view & w, const float * x, float * y, int64_t n_tokens,
                matmul_scratch & scratch);

// Same result computed with the scalar `_ref` kernels, single-threaded (test oracle).
void cpu_matmul_ref(const weight_view & w, const float * x, float * y, int64_t n_tokens);

// Row `row` of W dequantized to f32 (embedding lookup). dst has n_in elements.
void weight_row_to_float(const weight_view & w, int64_t row, float * dst);

} // namespace core
