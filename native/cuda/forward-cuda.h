// The forward pass on one CUDA device (llama, qwen2, qwen3): the same steps as forward_chunk
// (model/forward.cpp) with every weight and the KV cache resident on the device; per call only the token
// ids go up and, on request, the last token's logits come back (and, in prefill chunks of a cache that
// protects sinks, each layer's 20 largest |x| per token). The cache is either dense f16 (every head keeps
// every token) or compressed (kv-ring.cuh: STREAM heads, quantize-on-write with any storage codec on keys
// and values (rot2/3/4, q8/q4, kivi2/4, f16 beside a coded side) with protected tokens, sinks and the f16
// staging window — kv_cache's semantics, its bookkeeping checked against kv_cache on the CPU — and heads
// under every eviction policy: statistics observed on the device from the attention scores, or scores from
// keys and recorded queries; the host selects as kv_cache does, the device gathers, and a decode step that
// drops one token of a head drops it on the device). Its f16 pages come from a device page pool and go
// back as heads shrink.
// CPU oracle: forward_chunk itself (test-ops-cuda.cpp "cuda/forward": logits per step and greedy tokens).
// Numerics: matmuls dot f32 activations with the exactly decoded weights (the CPU quantizes activations to
// q8 / f16 first), attention rounds queries and cached keys/values to f16 as the CPU does.
#pragma once
#include <atomic>
#include <memory>
#include <vector>

#include "../kv/kv-cache.h"
#include "../kv/kv-state.h"
#include "../model/model.h"
#include "backend-cuda.h"
#include "page-pool-cuda.h"

namespace core {
namespace cuda {

// The weights of one model on the device, uploaded once and shared by every session that runs the model
// (the contexts and sequences of one loaded model). Keeps the host model alive.
class device_model {
public:
    // Uploads every tensor the forward pass reads. Errors: ERR_OOM_DEVICE (with the size),
    // ERR_UNSUPPORTED_QUANT (a weight type without a CUDA kernel), ERR_UNSUPPORTED_ARCH (a head layout the
    // CUDA attention does not cover: group > 8, head sizes > 256 or not multiples of 8).
    static status create(std::shared_ptr<const model> m, backend & be, std::shared_ptr<const device_model> * out);
    ~device_model();
    const model & host() const;
    size_t weight_bytes() const;  // bytes of the weights on the device

    struct impl;
    const impl & get() const { return *p_; }
private:
    explicit device_model(std::unique_ptr<impl> p);
    std::unique_ptr<impl> p_;
};

class forward_session {
public:
    // A session over shared device weights: reserves an f16 cache of n_ctx tokens per layer on `be`'s device.
    static status create(std::shared_ptr<const device_model> dm, int n_ctx, backend & be, std::unique_ptr<forward_session> * out);
    // A session whose cache follows `kv` (kv_cache_config as the CPU engine builds it: n_ctx, retention,
    // STREAM sizes, storage codecs with the model's RoPE and the key permutation): dense f16 when every head is
    // FULL and uncoded, else the compressed device cache. chunk: tokens per forward step (the CPU's n_batch,
    // at most 512). ERR_INVALID_ARG naming what the device cache does not hold (kv_ring_config_from).
    // pool: where the compressed cache's f16 pages come from (a context passes its own, shared by its
    // sequences; nullptr: a pool of the session's own). The dense f16 cache reserves its n_ctx tokens up front.
    static status create(std::shared_ptr<const device_model> dm, const kv_cache_config & kv, int chunk, backend & be, std::unique_ptr<forward_session> * out,
                         std::shared_ptr<device_page_pool> pool = nullptr);
    // Uploads the weights of `m` for this session alone (tests and benchmarks; `m` must outlive the session).
    static status create(const model & m, int n_ctx, backend & be, std::unique_ptr<forward_session> * out);
    static status create(const model & m, const kv_cache_config & kv, int chunk, backend & be, std::unique_ptr<forward_session> * out,
                         std::shared_ptr<device_page_pool> pool = nullptr);
    ~forward_session();

    // Runs tokens[0..n) at positions n_past().. (appended to the cache, in chunks of up to 512 tokens); with
    // `logits` non-null the last token's logits [n_vocab] are copied to it (the call then waits for the
    // device). ERR_CONTEXT_FULL past n_ctx, ERR_INVALID_ARG for a token id out of range (both before anything
    // runs), ERR_ABORTED when *abort turns true (checked between chunks); on an error in a chunk the chunks
    // before it stay and the failing one leaves nothing (as the CPU engine): n_past() says how many tokens.
    // Except where the failing chunk had already gathered an evicting head's tokens (a device error after a
    // flush or an eviction, never an abort): that cannot be undone, so the cache is cleared and the error says so.
    status eval(const int32_t * tokens, int n_tokens, float * logits, const std::atomic<bool> * abort = nullptr);
    int n_past() const;
    int n_ctx() const;
    status clear();            // forgets every token (the compressed cache's pages go back to the pool)
    // Keeps the first n tokens (n >= n_past(): nothing to do). A compressed cache keeps fewer when its
    // state at n would differ from a fresh evaluation's (kv_cache::remove_from's rules): *kept says how many.
    status truncate(int n, int * kept = nullptr);
    bool compressed() const;
    // Prefix checkpoint, kv_cache::save_checkpoint's semantics on the device: a copy, at n_past(), of every head a
    // rewind may not restore exactly (STREAM and EVICT heads whole; of CODED heads the f16 pages and positions, their
    // quantized tokens staying in the live head, which only appends to them) and of the books and counters.
    // truncate(n) with n at or past that point, where the cache alone would fall back further, returns there (the
    // dense heads cut, the others restored). A truncation below it, clear() and copy_from() drop it; a dense f16
    // session keeps none. bounded_only: none when an EVICT head holds more than the policy's capacity.
    // ERR_OOM_DEVICE: no checkpoint (the cache unchanged). A checkpoint saved over another reuses its device arrays
    // and pages (a chat saves one per turn). Its memory: memory().checkpoint_bytes. Unlike the CPU
    // cache, which copies every head before it changes one, a return to the checkpoint goes layer by layer: if the
    // device runs out of memory part-way, the cache is cleared (truncate reports 0 tokens kept and the error).
    status save_checkpoint(bool bounded_only = false);
    void drop_checkpoint();
    int checkpoint_tokens() const;  // -1: none
    // Becomes a copy of `src` — a session of the same device model and cache configuration (a sequence of the same
    // context; the pages come from this session's pool) — its tokens, the cache's data, books, recorded queries,
    // counters and checkpoint (kv_cache::copy_from). ERR_OOM_DEVICE leaves this session empty.
    status copy_from(const forward_session & src);
    // State files (engine_sequence::save_state; the device's own section after the engine's header): save_state
    // writes the tokens' count, the step counters and per layer the books and the device data (kv_ring_layer::
    // save_books, kv_ring_device::save_data; a dense cache its pages in use), then the prefix checkpoint the same
    // way (the heads it saves); waits for the device. read_state reads such a section into host memory apart from
    // this session, checking every book and size against its configuration (ERR_STATE_FORMAT with what differs;
    // the session is untouched); adopt_state makes it this session's cache, checkpoint included: a compressed
    // cache's layers are made and filled apart first, so ERR_OOM_DEVICE leaves the session as it was.
    struct loaded_state;
    struct loaded_state_deleter { void operator()(loaded_state * s) const; };
    using loaded_ptr = std::unique_ptr<loaded_state, loaded_state_deleter>;
    status save_state(state_writer & w) const;
    status read_state(state_reader & r, loaded_ptr & out, int32_t * n_tokens) const;
    status adopt_state(loaded_ptr st);
    // kv_cache::memory's report of the device cache (positions: 4 B per f16 and per quantized token).
    // bytes_allocated: the device memory the session holds for its cache (the compressed cache: the pages
    // mapped, the coded tokens' arrays and every slot's position and statistics); pool_slack_bytes: the
    // pool's free pages (shared with the context's other sequences).
    kv_memory_report memory(bool per_head) const;
    std::vector<int32_t> held_positions(int il, int ih) const;  // ascending
    size_t weight_bytes() const;   // bytes of the weights on the device
    size_t kv_bytes() const;       // f16 key + value bytes of the tokens held
    size_t kv_reserved_bytes() const;  // memory().bytes_allocated

    struct impl;
private:
    explicit forward_session(std::unique_ptr<impl> p);
    std::unique_ptr<impl> p_;
};

} // namespace cuda
} // namespace core
