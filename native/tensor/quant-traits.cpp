// The registry of supported element types (see quant-traits.h). Adding a type: one file pair under
// quants/ with its block struct and reference codec, then one row here (and one per backend table).
// Q8_1 and Q8_K are activation formats (vec_dot_type of q4_1/q5_1 and of the K-quants); they have rows
// so activations can be converted and tested like any type, but no CPU weight kernels.
#include "quant-traits.h"

#include "quants/float-types.h"
#include "quants/q2-k.h"
#include "quants/q3-k.h"
#include "quants/q4-0.h"
#include "quants/q4-1.h"
#include "quants/q4-k.h"
#include "quants/q5-0.h"
#include "quants/q5-1.h"
#include "quants/q5-k.h"
#include "quants/q6-k.h"
#include "quants/q8-0.h"
#include "quants/q8-1.h"
#include "quants/q8-k.h"

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
    {
        /*.type           =*/ GGML_TYPE_Q4_0,
        /*.name           =*/ "q4_0",
        /*.block_size     =*/ QK4_0,
        /*.type_size      =*/ sizeof(block_q4_0),
        /*.is_quantized   =*/ true,
        /*.to_float       =*/ dequantize_row_q4_0,
        /*.from_float_ref =*/ quantize_row_q4_0_ref,
    },
    {
        /*.type           =*/ GGML_TYPE_Q4_1,
        /*.name           =*/ "q4_1",
        /*.block_size     =*/ QK4_1,
        /*.type_size      =*/ sizeof(block_q4_1),
        /*.is_quantized   =*/ true,
        /*.to_float       =*/ dequantize_row_q4_1,
        /*.from_float_ref =*/ quantize_row_q4_1_ref,
    },
    {
        /*.type           =*/ GGML_TYPE_Q5_0,
        /*.name           =*/ "q5_0",
        /*.block_size     =*/ QK5_0,
        /*.type_size      =*/ sizeof(block_q5_0),
        /*.is_quantized   =*/ true,
        /*.to_float       =*/ dequantize_row_q5_0,
        /*.from_float_ref =*/ quantize_row_q5_0_ref,
    },
    {
        /*.type           =*/ GGML_TYPE_Q5_1,
        /*.name           =*/ "q5_1",
        /*.block_size     =*/ QK5_1,
        /*.type_size      =*/ sizeof(block_q5_1),
        /*.is_quantized   =*/ true,
        /*.to_float       =*/ dequantize_row_q5_1,
        /*.from_float_ref =*/ quantize_row_q5_1_ref,
    },
    {
        /*.type           =*/ GGML_TYPE_Q8_1,
        /*.name           =*/ "q8_1",
        /*.block_size     =*/ QK8_1,
        /*.type_size      =*/ sizeof(block_q8_1),
        /*.is_quantized   =*/ true,
        /*.to_float       =*/ dequantize_row_q8_1,
        /*.from_float_ref =*/ quantize_row_q8_1_ref,
    },
    {
        /*.type           =*/ GGML_TYPE_Q2_K,
        /*.name           =*/ "q2_K",
        /*.block_size     =*/ QK_K,
        /*.type_size      =*/ sizeof(block_q2_K),
        /*.is_quantized   =*/ true,
        /*.to_float       =*/ dequantize_row_q2_K,
        /*.from_float_ref =*/ quantize_row_q2_K_ref,
    },
    {
        /*.type           =*/ GGML_TYPE_Q3_K,
        /*.name           =*/ "q3_K",
        /*.block_size     =*/ QK_K,
        /*.type_size      =*/ sizeof(block_q3_K),
        /*.is_quantized   =*/ true,
        /*.to_float       =*/ dequantize_row_q3_K,
        /*.from_float_ref =*/ quantize_row_q3_K_ref,
    },
    {
        /*.type           =*/ GGML_TYPE_Q4_K,
        /*.name           =*/ "q4_K",
        /*.block_size     =*/ QK_K,
        /*.type_size      =*/ sizeof(block_q4_K),
        /*.is_quantized   =*/ true,
        /*.to_float       =*/ dequantize_row_q4_K,
        /*.from_float_ref =*/ quantize_row_q4_K_ref,
    },
    {
        /*.type           =*/ GGML_TYPE_Q5_K,
        /*.name           =*/ "q5_K",
        /*.block_size     =*/ QK_K,
        /*.type_size      =*/ sizeof(block_q5_K),
        /*.is_quantized   =*/ true,
        /*.to_float       =*/ dequantize_row_q5_K,
        /*.from_float_ref =*/ quantize_row_q5_K_ref,
    },
    {
        /*.type           =*/ GGML_TYPE_Q6_K,
        /*.name           =*/ "q6_K",
        /*.block_size     =*/ QK_K,
        /*.type_size      =*/ sizeof(block_q6_K),
        /*.is_quantized   =*/ true,
        /*.to_float       =*/ dequantize_row_q6_K,
        /*.from_float_ref =*/ quantize_row_q6_K_ref,
    },
    {
        /*.type           =*/ GGML_TYPE_Q8_K,
        /*.name           =*/ "q8_K",
        /*.block_size     =*/ QK_K,
        /*.type_size      =*/ sizeof(block_q8_K),
        /*.is_quantized   =*/ true,
        /*.to_float       =*/ dequantize_row_q8_K,
        /*.from_float_ref =*/ quantize_row_q8_K_ref,
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
