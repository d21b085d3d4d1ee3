// The registry of supported element types (see quant-traits.h). Adding a type: one file pair under
// quants/ with its block struct and reference codec, then one row here (and one per backend table).
#include "quant-traits.h"

#include "quants/float-types.h"
#include "quants/q8-0.h"

namespace core {

namespace {

const quant_traits QUANT_TRAITS[] = {
    {
        /*.type           =*/ GGML_TYPE_F32,
        /*.name           =*/ "f32",
        /*.block_size     =*/ 1,
        /*.type_size      =*/ sizeof(float),
        /*.is_quantized   =*/ false,
        /*.to_float       =*/ copy_row_f32,
        /*.from_float_ref =*/ copy_row_f32_from,
    },
    {
        /*.type           =*/ GGML_TYPE_F16,
        /*.name           =*/ "f16",
        /*.block_size     =*/ 1,
        /*.type_size      =*/ sizeof(f16_t),
        /*.is_quantized   =*/ false,
        /*.to_float       =*/ convert_row_f16_to_f32,
        /*.from_float_ref =*/ convert_row_f32_to_f16_ref,
    },
    {
        /*.type           =*/ GGML_TYPE_BF16,
        /*.name           =*/ "bf16",
        /*.block_size     =*/ 1,
        /*.type_size      =*/ sizeof(bf16_t),
        /*.is_quantized   =*/ false,
        /*.to_float       =*/ convert_row_bf16_to_f32,
        /*.from_float_ref =*/ convert_row_f32_to_bf16_ref,
    },
    {
        /*.type           =*/ GGML_TYPE_Q8_0,
        /*.name           =*/ "q8_0",
        /*.block_size     =*/ QK8_0,
        /*.type_size      =*/ sizeof(block_q8_0),
        /*.is_quantized   =*/ true,
        /*.to_float       =*/ dequantize_row_q8_0,
        /*.from_float_ref =*/ quantize_row_q8_0_ref,
    },
};

constexpr size_t N_QUANT_TRAITS = sizeof(QUANT_TRAITS) / sizeof(QUANT_TRAITS[0]);

} // namespace

const quant_traits * quant_traits_get(uint32_t type) {
    for (const quant_traits & t : QUANT_TRAITS)
        if ((uint32_t) t.type == type) return &t;
    return nullptr;
}

const quant_traits * quant_traits_all(size_t * count) {
    *count = N_QUANT_TRAITS;
    return QUANT_TRAITS;
}

} // namespace core
