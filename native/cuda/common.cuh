// Shared by the CUDA kernels (device side; include only from .cu files). Errors never abort: every CUDA
// call goes through CUDA_CHECK, which records the failing statement, file, line and CUDA's message into
// a core::status (ERR_CUDA, or ERR_OOM_DEVICE for cudaErrorMemoryAllocation) and returns it, so the
// boundary (native/addon/errors.cpp) turns it into a typed JS CudaError / OutOfMemoryError.
#pragma once
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "../common/status.h"

namespace core {
namespace cuda {

// The status of a failed CUDA call: "<stmt> failed at <file>:<line>: <cudaError name>: <message>".
inline status status_from_cuda(cudaError_t err, const char * stmt, const char * file, int line) {
    if (err == cudaSuccess) return status::success();
    const status_code c = err == cudaErrorMemoryAllocation ? ERR_OOM_DEVICE : ERR_CUDA;
    return status(c, strfmt("%s failed at %s:%d: %s: %s", stmt, file, line, cudaGetErrorName(err), cudaGetErrorString(err)));
}

} // namespace cuda
} // namespace core

// Returns a failed status from the enclosing function (which must return core::status).
#define CUDA_CHECK(stmt)                                                                            \
    do {                                                                                            \
        const cudaError_t tc_cuda_err_ = (stmt);                                                    \
        if (tc_cuda_err_ != cudaSuccess) return ::core::cuda::status_from_cuda(tc_cuda_err_, #stmt, __FILE__, __LINE__); \
    } while (0)

// After a kernel launch: launch-configuration errors (the kernel itself runs asynchronously; its faults
// surface at the next synchronizing call, which is CUDA_CHECKed too).
#define CUDA_CHECK_LAUNCH(what) CUDA_CHECK(cudaGetLastError())

namespace core {
namespace cuda {

constexpr int WARP = 32;

// (The CPU emulation, native/cuda/emu, computes the same butterfly from one exchange: same sums, same order,
// two barriers instead of ten.)
__device__ __forceinline__ float warp_sum(float v) {
#ifdef __CUDA_EMU__
    return ::tc_emu::warp_butterfly(v, false);
#else
#pragma unroll
    for (int o = WARP / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
#endif
}
__device__ __forceinline__ float warp_max(float v) {
#ifdef __CUDA_EMU__
    return ::tc_emu::warp_butterfly(v, true);
#else
#pragma unroll
    for (int o = WARP / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
#endif
}
__device__ __forceinline__ float f16_bits_to_f32(uint16_t h) { return __half2float(__ushort_as_half(h)); }
__device__ __forceinline__ float bf16_bits_to_f32(uint16_t h) { return __uint_as_float((uint32_t) h << 16); }
__device__ __forceinline__ uint16_t f32_to_f16_bits(float f) { return __half_as_ushort(__float2half_rn(f)); }

inline unsigned ceil_div(int64_t a, int64_t b) { return (unsigned) ((a + b - 1) / b); }

// Element d of a token's q8 / q4 block (codecs/q8.cpp, q4.cpp: per 32 elements an f16 scale, then 32 int8
// codes or 16 bytes of 4-bit codes offset by 8, element 2i in the low nibble), or of its f16 row (bits 16: the
// f16 side of a pair such as f16 keys with rot2 values, registry's f16 codec).
__device__ __forceinline__ float plain_decode(const uint8_t * blk, int d, int bits) {
    if (bits == 16) return f16_bits_to_f32((uint16_t) (blk[2 * d] | (blk[2 * d + 1] << 8)));
    const int b = d / 32, i = d % 32;
    const uint8_t * p = blk + (size_t) b * (2 + 32 * bits / 8);
    const float s = f16_bits_to_f32((uint16_t) (p[0] | (p[1] << 8)));
    if (bits == 8) return s * (float) (int8_t) p[2 + i];
    return s * (float) (((p[2 + i / 2] >> (4 * (i & 1))) & 15) - 8);
}

// The KV page layout of kv-cache.h (64 tokens per page): keys in transposed tiles [64/16][D][16], then values
// [64][Dv]. Element d of token j (j < 64) of a page, and a token written from f32 (rounded to f16 as the host
// cache rounds) by the block's threads (key_at / value_at also index a page copied to the host: state files).
__host__ __device__ __forceinline__ size_t key_at(int j, int d, int D) { return ((size_t) (j / 16) * D + d) * 16 + (j % 16); }
__host__ __device__ __forceinline__ size_t value_at(int j, int d, int D, int DV) { return (size_t) 64 * D + (size_t) j * DV + d; }
__device__ __forceinline__ void kv_page_put(uint16_t * page, int j, const float * k, const float * v, int D, int DV) {
    for (int d = threadIdx.x; d < D; d += blockDim.x) page[key_at(j, d, D)] = f32_to_f16_bits(k[d]);
    for (int d = threadIdx.x; d < DV; d += blockDim.x) page[value_at(j, d, D, DV)] = f32_to_f16_bits(v[d]);
}

} // namespace cuda
} // namespace core
