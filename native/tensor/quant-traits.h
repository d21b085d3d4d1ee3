// Registry of weight/activation element types (backend-neutral facts), after ggml's `type_traits`.
// One row per supported type in quant-traits.cpp; a type without a row is unsupported and loading a
// tensor of that type is ERR_UNSUPPORTED_QUANT. Tests iterate this table, so a new type is covered by
// adding its row.
#pragma once
#include <cstddef>
#include <cstdint>

#include "ggml-type.h"

namespace core {

struct quant_traits {
    ggml_type type;
    const char * name;       // "f32", "q8_0", ... (lowercase, as ggml)
    int64_t block_size;      // elements per block (1 for float types)
    size_t type_size;        // bytes per block
    bool is_quantized;
    // dequantize n elements (n % block_size == 0)
    void (*to_float)(const void * src, float * dst, int64_t n);
    // scalar reference quantizer, the oracle for fast paths (n % block_size == 0)
    void (*from_float_ref)(const float * src, void * dst, int64_t n);
};

// nullptr when the type has no row (unsupported).
const quant_traits * quant_traits_get(uint32_t type);
// All rows, for tests and `listQuantTypes()`.
const quant_traits * quant_traits_all(size_t * count);

// Bytes of a row of n elements; n must be a multiple of the block size.
inline size_t quant_row_bytes(const quant_traits * t, int64_t n) { return (size_t) (n / t->block_size) * t->type_size; }

} // namespace core
