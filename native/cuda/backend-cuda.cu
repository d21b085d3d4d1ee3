// CUDA backend object: device probe, buffers, stream, timers (backend-cuda.h).
#include "backend-cuda.h"
#include "common.cuh"

#include "../tensor/quants/q4-k.h"
#include "../tensor/quants/q6-k.h"
#include "../tensor/quants/q8-0.h"
#include "../tensor/quants/q2-k.h"
#include "../tensor/quants/q3-k.h"
#include "../tensor/quants/q4-0.h"
#include "../tensor/quants/q4-1.h"
#include "../tensor/quants/q5-0.h"
#include "../tensor/quants/q5-1.h"
#include "../tensor/quants/q5-k.h"

namespace core {
namespace cuda {

int device_count(std::string * why) {
    int n = 0;
    const cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) {
        if (why) {
            if (err == cudaErrorNoDevice) *why = "no CUDA device";
            else if (err == cudaErrorInsufficientDriver) *why = strfmt("CUDA driver missing or older than the runtime (%s)", cudaGetErrorString(err));
            else *why = strfmt("CUDA driver error (%s: %s)", cudaGetErrorName(err), cudaGetErrorString(err));
        }
        cudaGetLastError();  // clear the sticky-free error so later calls start clean
        return 0;
    }
    if (n == 0 && why) *why = "no CUDA device";
    return n;
}

status probe(int device, device_info * out) {
    std::string why;
    const int n = device_count(&why);
    if (n == 0) return status(ERR_CUDA, why);
    if (device < 0 || device >= n) return status(ERR_INVALID_ARG, strfmt("CUDA device %d does not exist (%d device(s))", device, n));
    device_info d;
    d.id = device;
    cudaDeviceProp p;
    CUDA_CHECK(cudaGetDeviceProperties(&p, device));
    d.name = p.name;
    d.cc_major = p.major;
    d.cc_minor = p.minor;
    d.sm_count = p.multiProcessorCount;
    d.l2_bytes = (size_t) p.l2CacheSize;
    int clk_khz = 0, bus_bits = 0;
    if (cudaDeviceGetAttribute(&clk_khz, cudaDevAttrMemoryClockRate, device) == cudaSuccess &&
        cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, device) == cudaSuccess && clk_khz > 0)
        d.hbm_peak_gbs = 2.0 * clk_khz * 1e3 * (bus_bits / 8.0) / 1e9;  // DDR: two transfers per clock
    cudaGetLastError();
    CUDA_CHECK(cudaDriverGetVersion(&d.driver_version));
    CUDA_CHECK(cudaRuntimeGetVersion(&d.runtime_version));
    CUDA_CHECK(cudaSetDevice(device));
    CUDA_CHECK(cudaMemGetInfo(&d.free_bytes, &d.total_bytes));
    if (out) *out = d;
    return status::success();
}

bool supports_op(op o, ggml_type t) {
    switch (o) {
    case op::RMS_NORM: case op::ROPE: case op::SILU_MUL: case op::ATTN_DECODE: return t == GGML_TYPE_F32 || t == GGML_TYPE_F16;
    case op::MATMUL: case op::DEQUANT:
        return t == GGML_TYPE_F32 || t == GGML_TYPE_F16 || t == GGML_TYPE_BF16 || t == GGML_TYPE_Q8_0 ||
               t == GGML_TYPE_Q4_K || t == GGML_TYPE_Q6_K || t == GGML_TYPE_Q4_0 || t == GGML_TYPE_Q4_1 || t == GGML_TYPE_Q5_0 ||
               t == GGML_TYPE_Q5_1 || t == GGML_TYPE_Q2_K || t == GGML_TYPE_Q3_K || t == GGML_TYPE_Q5_K;
    }
    return false;
}

device_buffer::~device_buffer() { reset(); }
device_buffer & device_buffer::operator=(device_buffer && o) noexcept {
    if (this != &o) { reset(); ptr_ = o.ptr_; bytes_ = o.bytes_; o.ptr_ = nullptr; o.bytes_ = 0; }
    return *this;
}
void device_buffer::reset() {
    if (ptr_) cudaFree(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
}
status device_buffer::alloc(size_t bytes) {
    reset();
    if (bytes == 0) return status::success();
    const cudaError_t err = cudaMalloc(&ptr_, bytes);
    if (err != cudaSuccess) {
        ptr_ = nullptr;
        cudaGetLastError();
        if (err == cudaErrorMemoryAllocation) return status(ERR_OOM_DEVICE, strfmt("cudaMalloc(%zu bytes): device out of memory", bytes));
        return status_from_cuda(err, "cudaMalloc", __FILE__, __LINE__);
    }
    bytes_ = bytes;
    return status::success();
}
status download_raw(void * dst, const void * src, size_t bytes) {
    CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
    return status::success();
}

status device_buffer::assign(const void * src, size_t bytes) {
    const status st = alloc(bytes < 4 ? 4 : bytes);
    if (!st.ok() || bytes == 0) return st;
    return upload(src, bytes);
}
status device_buffer::upload(const void * src, size_t bytes, size_t offset) {
    if (offset + bytes > bytes_) return status(ERR_INVALID_ARG, strfmt("upload of %zu bytes at %zu past a %zu-byte buffer", bytes, offset, bytes_));
    CUDA_CHECK(cudaMemcpy((char *) ptr_ + offset, src, bytes, cudaMemcpyHostToDevice));
    // a copy from pageable memory may return before its DMA has landed, and the backend's work stream does
    // not wait for the legacy stream: finish here, so kernels launched next see the data (setup paths only)
    CUDA_CHECK(cudaDeviceSynchronize());
    return status::success();
}
status device_buffer::download(void * dst, size_t bytes, size_t offset) const {
    if (offset + bytes > bytes_) return status(ERR_INVALID_ARG, strfmt("download of %zu bytes at %zu past a %zu-byte buffer", bytes, offset, bytes_));
    CUDA_CHECK(cudaMemcpy(dst, (const char *) ptr_ + offset, bytes, cudaMemcpyDeviceToHost));
    return status::success();
}
status device_buffer::zero() {
    if (ptr_) {
        CUDA_CHECK(cudaMemset(ptr_, 0, bytes_));
        CUDA_CHECK(cudaDeviceSynchronize());  // as upload: ordered before the work stream's next kernels
    }
    return status::success();
}

status backend::create(int device, std::unique_ptr<backend> * out) {
    std::unique_ptr<backend> b(new backend());
    status st = probe(device, &b->info_);
    if (!st.ok()) return st;
    cudaStream_t s = nullptr;
    CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    b->stream_ = s;
    *out = std::move(b);
    return status::success();
}
backend::~backend() {
    if (stream_) cudaStreamDestroy(stream_);
}
status backend::synchronize() const {
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    return status::success();
}
status backend::memory(size_t * free_bytes, size_t * total_bytes) const {
    CUDA_CHECK(cudaSetDevice(info_.id));
    CUDA_CHECK(cudaMemGetInfo(free_bytes, total_bytes));
    return status::success();
}

event_timer::event_timer() {
    cudaEvent_t a = nullptr, b = nullptr;
    if (cudaEventCreate(&a) == cudaSuccess) a_ = a;
    if (cudaEventCreate(&b) == cudaSuccess) b_ = b;
    cudaGetLastError();
}
event_timer::~event_timer() {
    if (a_) cudaEventDestroy((cudaEvent_t) a_);
    if (b_) cudaEventDestroy((cudaEvent_t) b_);
}
status event_timer::start(stream_t s) {
    if (!a_ || !b_) return status(ERR_CUDA, "event_timer: cudaEventCreate failed");
    CUDA_CHECK(cudaEventRecord((cudaEvent_t) a_, s));
    return status::success();
}
status event_timer::stop(stream_t s, float * ms) {
    CUDA_CHECK(cudaEventRecord((cudaEvent_t) b_, s));
    CUDA_CHECK(cudaEventSynchronize((cudaEvent_t) b_));
    CUDA_CHECK(cudaEventElapsedTime(ms, (cudaEvent_t) a_, (cudaEvent_t) b_));
    return status::success();
}

graph::~graph() {
    if (e_) cudaGraphExecDestroy((cudaGraphExec_t) e_);
    if (g_) cudaGraphDestroy((cudaGraph_t) g_);
}
status graph::begin(stream_t s) {
    CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed));
    return status::success();
}
status graph::end(stream_t s) {
    cudaGraph_t g = nullptr;
    CUDA_CHECK(cudaStreamEndCapture(s, &g));
    g_ = g;
    cudaGraphExec_t e = nullptr;
    CUDA_CHECK(cudaGraphInstantiate(&e, g, 0));
    e_ = e;
    return status::success();
}
status graph::launch(stream_t s) const {
    if (!e_) return status(ERR_INTERNAL, "graph::launch before graph::end");
    CUDA_CHECK(cudaGraphLaunch((cudaGraphExec_t) e_, s));
    return status::success();
}

status flush_l2(stream_t s) {
    static void * buf = nullptr;
    static size_t bytes = 0;
    if (!buf) {
        int dev = 0, l2 = 0;
        CUDA_CHECK(cudaGetDevice(&dev));
        CUDA_CHECK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev));
        bytes = (size_t) (l2 > 0 ? l2 : (64 << 20)) * 2;
        CUDA_CHECK(cudaMalloc(&buf, bytes));
    }
    CUDA_CHECK(cudaMemsetAsync(buf, (int) (bytes & 0xff), bytes, s));
    return status::success();
}

namespace {

__device__ __forceinline__ uint32_t hash32(uint32_t x) {
    x ^= x >> 16; x *= 0x7feb352dU; x ^= x >> 15; x *= 0x846ca68bU; x ^= x >> 16;
    return x;
}
__device__ __forceinline__ float unit(uint32_t seed, int64_t i) {  // [-1, 1)
    return (float) (hash32(seed ^ hash32((uint32_t) i ^ (uint32_t) (i >> 32) * 0x9e3779b9U)) >> 8) * (2.0f / 16777216.0f) - 1.0f;
}

__global__ void k_fill_float(void * dst, int kind, int64_t n, uint32_t seed, float scale) {
    for (int64_t i = blockIdx.x * (int64_t) blockDim.x + threadIdx.x; i < n; i += (int64_t) gridDim.x * blockDim.x) {
        const float v = unit(seed, i) * scale;
        if (kind == 0) ((float *) dst)[i] = v;
        else if (kind == 1) ((uint16_t *) dst)[i] = f32_to_f16_bits(v);
        else ((uint16_t *) dst)[i] = (uint16_t) (__float_as_uint(v) >> 16);
    }
}
// random bytes, then the f16 scale fields of each block set to `scale` (offsets given by the format)
__global__ void k_fill_blocks(uint8_t * dst, int64_t n_blocks, int block_bytes, int off0, int off1, uint32_t seed, uint16_t scale_bits) {
    const int64_t n = n_blocks * block_bytes;
    for (int64_t i = blockIdx.x * (int64_t) blockDim.x + threadIdx.x; i < n; i += (int64_t) gridDim.x * blockDim.x) {
        const int64_t b = i / block_bytes;
        const int o = (int) (i - b * block_bytes);
        uint8_t v = (uint8_t) hash32(seed ^ hash32((uint32_t) i));
        if (o == off0 || (off1 >= 0 && o == off1)) v = (uint8_t) (scale_bits & 0xff);
        else if (o == off0 + 1 || (off1 >= 0 && o == off1 + 1)) v = (uint8_t) (scale_bits >> 8);
        dst[i] = v;
    }
}

} // namespace

status fill_random(void * dst, ggml_type t, int64_t n, uint32_t seed, float scale, stream_t s) {
    const unsigned grid = 1024, block = 256;
    switch (t) {
    case GGML_TYPE_F32: k_fill_float<<<grid, block, 0, s>>>(dst, 0, n, seed, scale); break;
    case GGML_TYPE_F16: k_fill_float<<<grid, block, 0, s>>>(dst, 1, n, seed, scale); break;
    case GGML_TYPE_BF16: k_fill_float<<<grid, block, 0, s>>>(dst, 2, n, seed, scale); break;
    case GGML_TYPE_Q8_0:
        k_fill_blocks<<<grid, block, 0, s>>>((uint8_t *) dst, n / QK8_0, (int) sizeof(block_q8_0), 0, -1, seed, f32_to_f16(scale / 127.0f));
        break;
    case GGML_TYPE_Q4_K:
        k_fill_blocks<<<grid, block, 0, s>>>((uint8_t *) dst, n / QK_K, (int) sizeof(block_q4_K), 0, 2, seed, f32_to_f16(scale / 512.0f));
        break;
    case GGML_TYPE_Q6_K:
        k_fill_blocks<<<grid, block, 0, s>>>((uint8_t *) dst, n / QK_K, (int) sizeof(block_q6_K), (int) offsetof(block_q6_K, d), -1, seed,
                                             f32_to_f16(scale / 4096.0f));
        break;
    case GGML_TYPE_Q4_0: k_fill_blocks<<<grid, block, 0, s>>>((uint8_t *) dst, n / QK4_0, (int) sizeof(block_q4_0), 0, -1, seed, f32_to_f16(scale / 8.0f)); break;
    case GGML_TYPE_Q4_1: k_fill_blocks<<<grid, block, 0, s>>>((uint8_t *) dst, n / QK4_1, (int) sizeof(block_q4_1), 0, 2, seed, f32_to_f16(scale / 16.0f)); break;
    case GGML_TYPE_Q5_0: k_fill_blocks<<<grid, block, 0, s>>>((uint8_t *) dst, n / QK5_0, (int) sizeof(block_q5_0), 0, -1, seed, f32_to_f16(scale / 16.0f)); break;
    case GGML_TYPE_Q5_1: k_fill_blocks<<<grid, block, 0, s>>>((uint8_t *) dst, n / QK5_1, (int) sizeof(block_q5_1), 0, 2, seed, f32_to_f16(scale / 32.0f)); break;
    case GGML_TYPE_Q2_K:
        k_fill_blocks<<<grid, block, 0, s>>>((uint8_t *) dst, n / QK_K, (int) sizeof(block_q2_K), (int) offsetof(block_q2_K, d),
                                             (int) offsetof(block_q2_K, dmin), seed, f32_to_f16(scale / 64.0f));
        break;
    case GGML_TYPE_Q3_K:
        k_fill_blocks<<<grid, block, 0, s>>>((uint8_t *) dst, n / QK_K, (int) sizeof(block_q3_K), (int) offsetof(block_q3_K, d), -1, seed,
                                             f32_to_f16(scale / 128.0f));
        break;
    case GGML_TYPE_Q5_K:
        k_fill_blocks<<<grid, block, 0, s>>>((uint8_t *) dst, n / QK_K, (int) sizeof(block_q5_K), 0, 2, seed, f32_to_f16(scale / 2048.0f));
        break;
    default: return status(ERR_UNSUPPORTED_QUANT, strfmt("fill_random: type %s not supported", ggml_type_name(t)));
    }
    CUDA_CHECK_LAUNCH("fill_random");
    return status::success();
}

} // namespace cuda
} // namespace core
