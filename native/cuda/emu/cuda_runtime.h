// CUDA emulation on the CPU (THINKCACHE_CUDA_EMU builds only; never in a real CUDA build). Runs the
// backend's kernels unchanged — after scripts/cuda-emu.py has rewritten `k<<<cfg>>>(args)` into
// tc_emu::launch(...) and `__shared__` into block-shared statics — so the CUDA tests run where no GPU is:
//   * every block runs alone, its threads as fibers on one OS thread; __syncthreads() and the warp
//     primitives (__shfl_xor_sync, __syncwarp) are barriers of the scheduler, which reports a barrier that
//     not every thread of the block (warp) reaches instead of hanging;
//   * device memory is host memory, streams run their work at once, events read the host clock;
//   * float math is the host's IEEE single precision (no FMA contraction; the __f*_rn intrinsics are exact
//     IEEE operations), cosf/sinf/expf are the host libm's.
// What it cannot show: speed, races between blocks or warps (they never overlap), memory-model and
// occupancy issues, and results that differ only in the last bits of transcendental functions.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __CUDA_EMU__ 1

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
    dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct uint3 { unsigned x, y, z; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(8) float2 { float x, y; };
struct alignas(8) int2 { int x, y; };
inline int2 make_int2(int x, int y) { return int2{x, y}; }

enum cudaError_t {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInsufficientDriver = 35,
    cudaErrorNoDevice = 100,
    cudaErrorNotSupported = 801,
    cudaErrorLaunchFailure = 719,
};
using cudaError = cudaError_t;
typedef struct CUstream_st * cudaStream_t;
typedef struct CUevent_st * cudaEvent_t;
typedef struct CUgraph_st * cudaGraph_t;
typedef struct CUgraphExec_st * cudaGraphExec_t;
enum cudaMemcpyKind { cudaMemcpyHostToHost = 0, cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2, cudaMemcpyDeviceToDevice = 3, cudaMemcpyDefault = 4 };
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16, cudaDevAttrMemoryClockRate = 36, cudaDevAttrGlobalMemoryBusWidth = 37, cudaDevAttrL2CacheSize = 38 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
enum cudaStreamCaptureMode { cudaStreamCaptureModeGlobal = 0, cudaStreamCaptureModeThreadLocal = 1, cudaStreamCaptureModeRelaxed = 2 };
constexpr unsigned cudaStreamNonBlocking = 1;

struct cudaDeviceProp {
    char name[256];
    int major, minor, multiProcessorCount, l2CacheSize;
    size_t totalGlobalMem;
};

const char * cudaGetErrorName(cudaError_t e);
const char * cudaGetErrorString(cudaError_t e);
cudaError_t cudaGetLastError();
cudaError_t cudaGetDeviceCount(int * n);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp * p, int device);
cudaError_t cudaDeviceGetAttribute(int * v, cudaDeviceAttr a, int device);
cudaError_t cudaDriverGetVersion(int * v);
cudaError_t cudaRuntimeGetVersion(int * v);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDevice(int * device);
cudaError_t cudaMemGetInfo(size_t * free_bytes, size_t * total_bytes);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaMalloc(void ** p, size_t bytes);
cudaError_t cudaFree(void * p);
cudaError_t cudaMallocHost(void ** p, size_t bytes);
cudaError_t cudaFreeHost(void * p);
cudaError_t cudaMemcpy(void * dst, const void * src, size_t bytes, cudaMemcpyKind k);
cudaError_t cudaMemcpyAsync(void * dst, const void * src, size_t bytes, cudaMemcpyKind k, cudaStream_t s = nullptr);
cudaError_t cudaMemset(void * p, int v, size_t bytes);
cudaError_t cudaMemsetAsync(void * p, int v, size_t bytes, cudaStream_t s = nullptr);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t * s, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaEventCreate(cudaEvent_t * e);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s = nullptr);
cudaError_t cudaEventSynchronize(cudaEvent_t e);
cudaError_t cudaEventElapsedTime(float * ms, cudaEvent_t a, cudaEvent_t b);
cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode m);
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t * g);
cudaError_t cudaGraphInstantiate(cudaGraphExec_t * e, cudaGraph_t g, unsigned long long flags = 0);
cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t s);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t e);
cudaError_t cudaGraphDestroy(cudaGraph_t g);
template <class F> cudaError_t cudaFuncSetAttribute(F, cudaFuncAttribute, int) { return cudaSuccess; }

namespace tc_emu {

struct thread_ctx {
    dim3 thread_idx, block_idx, block_dim, grid_dim;
    int tid = 0;  // linear thread index in the block
};
thread_ctx & cur();
void * dyn_smem();
void syncthreads();
void syncwarp();
uint32_t shfl_xor_bits(uint32_t v, int lane_mask);
// The all-reduce v = op(v, shfl_xor(v, o)) for o = 16, 8, 4, 2, 1 over a full warp, in that order (every
// lane ends with the same bits), from one exchange of the lanes' values.
float warp_butterfly(float v, bool max);

struct cfg {
    dim3 grid, block;
    size_t smem = 0;
    cfg(dim3 g, dim3 b, size_t sm = 0, cudaStream_t = nullptr) : grid(g), block(b), smem(sm) {}
};
// Runs body once per thread of every block of c (blocks one after the other).
void launch(const cfg & c, const std::function<void()> & body);

} // namespace tc_emu

#define threadIdx (::tc_emu::cur().thread_idx)
#define blockIdx (::tc_emu::cur().block_idx)
#define blockDim (::tc_emu::cur().block_dim)
#define gridDim (::tc_emu::cur().grid_dim)
#define warpSize 32

inline void __syncthreads() { ::tc_emu::syncthreads(); }
inline void __syncwarp(unsigned = 0xffffffffu) { ::tc_emu::syncwarp(); }
inline float __shfl_xor_sync(unsigned, float v, int m) {
    uint32_t b;
    std::memcpy(&b, &v, 4);
    b = ::tc_emu::shfl_xor_bits(b, m);
    float r;
    std::memcpy(&r, &b, 4);
    return r;
}
inline double __shfl_xor_sync(unsigned, double v, int m) {
    uint64_t b;
    std::memcpy(&b, &v, 8);
    const uint64_t lo = ::tc_emu::shfl_xor_bits((uint32_t) b, m), hi = ::tc_emu::shfl_xor_bits((uint32_t) (b >> 32), m);
    b = lo | (hi << 32);
    double r;
    std::memcpy(&r, &b, 8);
    return r;
}
inline int __shfl_xor_sync(unsigned, int v, int m) { return (int) ::tc_emu::shfl_xor_bits((uint32_t) v, m); }
inline unsigned __shfl_xor_sync(unsigned, unsigned v, int m) { return ::tc_emu::shfl_xor_bits(v, m); }
inline unsigned long long __shfl_xor_sync(unsigned, unsigned long long v, int m) {
    const uint64_t lo = ::tc_emu::shfl_xor_bits((uint32_t) v, m), hi = ::tc_emu::shfl_xor_bits((uint32_t) (v >> 32), m);
    return lo | (hi << 32);
}

// exact IEEE single-precision operations (the emulation is compiled with -ffp-contract=off)
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __uint_as_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint32_t __float_as_uint(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
using std::fmaf;
using std::fminf;
using std::fmaxf;
using std::rintf;
using std::max;
using std::min;
