// The CUDA backend object (plain C++ header: includes no CUDA header, so the tests, the bench and the
// addon compile with the host compiler). It answers "is there a usable device and why not", reports
// memory, owns device buffers and a stream, and says which ops/types it supports.
// Only defined when the build has THINKCACHE_WITH_CUDA; `cuda_probe()` in a CPU-only build is not
// linked at all (callers check the macro), so CPU builds carry no CUDA symbol.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "../common/status.h"
#include "../tensor/ggml-type.h"

struct CUstream_st;  // cudaStream_t is `CUstream_st *`

namespace core {
namespace cuda {

using stream_t = CUstream_st *;

struct device_info {
    int id = -1;
    std::string name;
    int cc_major = 0, cc_minor = 0;
    int sm_count = 0;
    size_t total_bytes = 0, free_bytes = 0;
    size_t l2_bytes = 0;
    double hbm_peak_gbs = 0;  // from memory clock x bus width when the runtime reports them, else 0
    int driver_version = 0, runtime_version = 0;
};

// Why the CUDA backend can or cannot run here. OK with the device's info, or ERR_CUDA with a message
// that says which: "no CUDA device", "CUDA driver error (...)", "driver older than the runtime", ...
status probe(int device, device_info * out);
// Number of devices (0 with the reason in *why when none is usable).
int device_count(std::string * why);

enum class op : int { RMS_NORM, ROPE, SILU_MUL, MATMUL, DEQUANT, ATTN_DECODE };
// Which (op, weight type) pairs have CUDA kernels. MATMUL/DEQUANT: every weight format (not the activation formats q8_1, q8_K).
bool supports_op(op o, ggml_type t = GGML_TYPE_F32);

// Owned device memory (cudaMalloc); moves, never copies.
class device_buffer {
public:
    device_buffer() = default;
    ~device_buffer();
    device_buffer(device_buffer && o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) { o.ptr_ = nullptr; o.bytes_ = 0; }
    device_buffer & operator=(device_buffer && o) noexcept;
    device_buffer(const device_buffer &) = delete;
    device_buffer & operator=(const device_buffer &) = delete;

    status alloc(size_t bytes);  // ERR_OOM_DEVICE with the size when the device is full
    void reset();
    void * data() const { return ptr_; }
    template <class T> T * as() const { return (T *) ptr_; }
    size_t bytes() const { return bytes_; }
    status upload(const void * src, size_t bytes, size_t offset = 0);
    // alloc(max(bytes, 4)) then upload `bytes` from src (a table that may be empty still gets a valid pointer)
    status assign(const void * src, size_t bytes);
    status download(void * dst, size_t bytes, size_t offset = 0) const;
    status zero();

private:
    void * ptr_ = nullptr;
    size_t bytes_ = 0;
};

// One device, one stream. create() selects the device and makes the stream.
class backend {
public:
    static status create(int device, std::unique_ptr<backend> * out);
    ~backend();
    const device_info & info() const { return info_; }
    stream_t stream() const { return stream_; }
    status synchronize() const;
    status memory(size_t * free_bytes, size_t * total_bytes) const;

private:
    backend() = default;
    device_info info_;
    stream_t stream_ = nullptr;
};

// Event-pair timer on a stream (ms between start() and stop(), after synchronizing on stop).
class event_timer {
public:
    event_timer();
    ~event_timer();
    status start(stream_t s);
    status stop(stream_t s, float * ms);
private:
    void * a_ = nullptr, * b_ = nullptr;
};

// A captured stream sequence replayed as one CUDA graph (decode steps: one launch instead of hundreds).
// Capture is relaxed, so nothing in the captured code may allocate.
class graph {
public:
    graph() = default;
    ~graph();
    graph(const graph &) = delete;
    graph & operator=(const graph &) = delete;
    status begin(stream_t s);
    status end(stream_t s);  // ends the capture and instantiates
    status launch(stream_t s) const;
private:
    void * g_ = nullptr, * e_ = nullptr;
};

// Copies bytes of device memory to the host and waits (tests: memory not held by a device_buffer).
status download_raw(void * dst, const void * src, size_t bytes);

// Overwrites a buffer of >= 2x L2 so the next kernel starts with a cold L2 (llm.c benchmark_kernel).
status flush_l2(stream_t s);

// Fills n elements of type t with deterministic pseudo-random values in [-scale, scale) (f32, f16, bf16)
// or random bytes with a finite f16 scale for block formats (bench weights; no host round trip).
status fill_random(void * dst, ggml_type t, int64_t n, uint32_t seed, float scale, stream_t s);

} // namespace cuda
} // namespace core
