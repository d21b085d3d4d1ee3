// The engine objects the addon (and the C++ tools) drive: a context owns the thread pool and the
// sequences of one model; a sequence owns its KV cache, activation scratch, sampler and logits.
// Lifetimes are shared_ptr so an operation in flight keeps what it uses alive after a JS dispose().
// Compute on one context is serialized (the thread pool is not reentrant).
#pragma once
#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "../model/forward.h"
#include "../sampling/sampler.h"

namespace core {

namespace cuda {  // native/cuda/ (built with THINKCACHE_CUDA only; in CPU builds these pointers stay null)
class backend;
class device_model;
class device_page_pool;
class forward_session;
} // namespace cuda

struct context_params {
    int n_ctx = 4096;
    int n_threads = 0;      // 0: physical cores
    int n_batch = 512;      // prefill chunk
    std::vector<uint8_t> retention;  // [n_layer][n_head_kv] kv_retention; empty = all FULL
    int stream_sinks = 16;
    int stream_recent = 64;
    kv_policy_params policy;         // for EVICT heads
    kv_storage_config storage;       // KV storage codecs (FULL heads); RoPE fields are filled per model
    bool per_query_head = false;     // one token set per query head (KV copied per head; LazyEviction's reference layout)
    // CUDA backend (issue 8): the model's weights on the device. Set: every sequence of the context runs on
    // that device, its cache there too (dense f16, or compressed: STREAM heads, every storage codec, grouped key
    // rotation, every eviction policy, per-query-head caches: kv_ring_config_from says what it refuses), with
    // copies and prefix checkpoints; state files are CPU-only so far. Null: the CPU runs the model.
    std::shared_ptr<const cuda::device_model> cuda_model;
};

// The KV cache configuration of a sequence of model `m` under `p` (the model's RoPE filled in): what the CPU
// cache and the CUDA session both follow.
kv_cache_config make_kv_config(const model & m, const context_params & p);

// Whether `p` asks for anything the CUDA cache does not hold; ERR_INVALID_ARG naming it.
status context_params_check_cuda(const context_params & p, const model & m);

class engine_context {
public:
    engine_context(std::shared_ptr<const model> m, const context_params & p);  // CPU only (p.cuda_model ignored)
    // Any backend: with p.cuda_model also checks the options (context_params_check_cuda) and makes the
    // context's CUDA stream (ERR_CUDA when it cannot).
    static status create(std::shared_ptr<const model> m, const context_params & p, std::shared_ptr<engine_context> * out);
    bool on_cuda() const { return (bool) cuda_be_; }
    cuda::backend * cuda_backend() const { return cuda_be_.get(); }
    const std::shared_ptr<cuda::device_page_pool> & cuda_kv_pool() const { return cuda_pool_; }
    const model & mdl() const { return *model_; }
    const context_params & params() const { return params_; }
    thread_pool & pool() { return pool_; }
    const std::shared_ptr<page_pool> & kv_pool() const { return kv_pool_; }
    std::mutex & compute_mutex() { return mu_; }

private:
    std::shared_ptr<const model> model_;
    context_params params_;
    thread_pool pool_;
    std::shared_ptr<page_pool> kv_pool_;  // KV pages shared by the sequences of this context
    std::mutex mu_;
    std::shared_ptr<cuda::backend> cuda_be_;  // the device stream of a CUDA context
    std::shared_ptr<cuda::device_page_pool> cuda_pool_;  // device KV pages shared by its sequences' compressed caches
};

class engine_sequence {
public:
    explicit engine_sequence(std::shared_ptr<engine_context> ctx);  // CPU contexts (a CUDA context needs create())
    // Any backend: on a CUDA context also reserves the device cache of n_ctx tokens (ERR_OOM_DEVICE with the size).
    static status create(std::shared_ptr<engine_context> ctx, std::shared_ptr<engine_sequence> * out);
    bool on_cuda() const { return (bool) cuda_; }

    // Feeds tokens (prompt chunks or one decoded token). With want_logits the last token's logits are
    // kept for sample()/logits(). Checks the abort flag before each chunk, and between layers on the CPU while
    // the chunk in flight can be taken back out exactly (kv_cache::chunk_revertible): a failed or aborted
    // call leaves the chunks before the failing one in the cache (n_tokens() says how many).
    status eval(const int32_t * tokens, int n_tokens, bool want_logits);
    // Draws the next token from the last logits with the sequence's sampler.
    status sample(int32_t * out);
    void set_sampler(const sampler_params & p) { sampler_.reset(p); for (int32_t t : history_) sampler_.accept(t); }
    void accept(int32_t token) { sampler_.accept(token); }

    const std::vector<float> & logits() const { return logits_; }
    bool has_logits() const { return has_logits_; }
    int32_t n_tokens() const;
    // Drops tokens at positions >= pos; returns how many leading tokens remain valid (see kv_cache).
    int32_t remove_from(int32_t pos);
    // Keeps a prefix checkpoint of the cache at its current length (kv_cache::save_checkpoint: a later rewind
    // past it that the lossy cache cannot do exactly returns there). On CUDA: forward_session::save_checkpoint.
    status save_checkpoint(bool bounded_only = false);
    // Becomes a copy of `src` (a sequence of the same context): its KV cache, token history, sampler state and
    // logits, so both continue alike. ERR_OOM_HOST (ERR_OOM_DEVICE on CUDA) leaves it empty.
    status copy_from(const engine_sequence & src);
    // State files (kv/kv-state.h): save_state() writes the sequence — its KV cache as it is (compressed, evicted,
    // quantized, with its checkpoint), its token history and last logits — to `path`, through a temporary file
    // renamed into place after fsync (*bytes: the file's size). load_state() reads one written from the same model with the same
    // KV configuration; unless the whole file reads back and checks out, the sequence keeps what it held.
    // ERR_IO; ERR_STATE_FORMAT (not a state file, another format version, corrupt, truncated); ERR_INVALID_ARG
    // (another model, or another KV configuration: the message names what differs); ERR_CONTEXT_FULL; ERR_OOM_HOST.
    // CPU only so far (ERR_INVALID_ARG on CUDA).
    status save_state(const std::string & path, uint64_t * bytes);
    status load_state(const std::string & path);
    const std::vector<int32_t> & history() const { return history_; }  // the tokens the cache holds, in order
    // KV memory (on CUDA: the device cache's report, forward_session::memory).
    kv_memory_report memory(bool per_head) const;
    // Positions head (il, ih) holds, ascending (either backend).
    std::vector<int32_t> held_positions(int il, int ih) const;
    kv_cache & kv() { return *kv_; }
    // Head calibration (window-substitution error) on the following evals; sinks < 0 turns it off.
    void set_calibration(int sinks, int recent, bool window_error = true);
    const wse_accumulator * calibration() const { return wse_.get(); }
    engine_context & ctx() { return *ctx_; }

    std::atomic<bool> abort{false};

private:
    std::shared_ptr<engine_context> ctx_;
    std::unique_ptr<kv_cache> kv_;
    forward_scratch scratch_;
    sampler sampler_;
    std::vector<int32_t> history_;  // every token the cache holds, for penalties after a sampler reset
    void trim_history(int32_t n);
    std::vector<float> logits_;     // [n_vocab]
    std::unique_ptr<wse_accumulator> wse_;
    bool has_logits_ = false;
    std::shared_ptr<cuda::forward_session> cuda_;  // the device cache and activations of a CUDA sequence
};

} // namespace core
