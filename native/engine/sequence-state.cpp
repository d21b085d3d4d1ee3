// Sequence state files (engine_sequence::save_state / load_state; the format is in kv/kv-state.h): the engine's
// header — magic, format version, the model's fingerprint, the cache's layout description, token history and
// last logits — then the cache's section and the checksum.
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <sys/stat.h>
#include <unistd.h>

#include "../kv/kv-state.h"
#include "engine.h"

#ifdef THINKCACHE_WITH_CUDA
#include "../cuda/forward-cuda.h"
#endif

namespace core {

namespace {

constexpr char STATE_MAGIC[8] = {'T', 'C', 'K', 'V', 'S', 'T', 'A', 'T'};
constexpr uint32_t STATE_VERSION = 1;
constexpr uint32_t STATE_MAX_DESC = 1u << 20;

// What tells two models apart without reading their weights: the architecture's name, the hyperparameters, and
// per tensor its name, type, shape, size and first and last 64 bytes (a fine-tune of the same shape differs there).
uint64_t model_fingerprint(const model & m) {
    std::vector<uint8_t> b;
    auto put = [&](const void * p, size_t n) { b.insert(b.end(), (const uint8_t *) p, (const uint8_t *) p + n); };
    put(m.arch->name, std::strlen(m.arch->name));
    put(&m.hp, sizeof(m.hp));
    for (const gguf_tensor_info & t : m.file->tensors) {
        put(t.name.data(), t.name.size());
        put(&t.type, sizeof(t.type));
        put(t.ne, sizeof(t.ne));
        put(&t.n_bytes, sizeof(t.n_bytes));
        if (!t.data) continue;
        const size_t k = std::min<size_t>(64, t.n_bytes);
        put(t.data, k);
        put(t.data + t.n_bytes - k, k);
    }
    return state_block_hash(0, b.data(), b.size());
}

// The words of two layout descriptions that differ ("keys=rot2 (this context: keys=f16)"), for the error message.
std::string desc_diff(const std::string & saved, const std::string & here) {
    auto words = [](const std::string & s) {
        std::vector<std::string> w;
        size_t i = 0;
        while (i < s.size()) {
            size_t j = s.find(' ', i);
            if (j == std::string::npos) j = s.size();
            if (j > i) w.push_back(s.substr(i, j - i));
            i = j + 1;
        }
        return w;
    };
    auto key = [](const std::string & w) { return w.substr(0, w.find('=')); };
    const std::vector<std::string> a = words(saved), b = words(here);
    std::string out;
    for (const std::string & x : a) {
        std::string other = "absent";
        for (const std::string & y : b) if (key(y) == key(x)) other = y;
        if (other == x) continue;
        std::string shown = x.size() > 40 ? x.substr(0, 37) + "..." : x, theirs = other.size() > 40 ? other.substr(0, 37) + "..." : other;
        out += (out.empty() ? "" : ", ") + shown + " (this context: " + theirs + ")";
    }
    for (const std::string & y : b) {
        bool found = false;
        for (const std::string & x : a) found |= key(x) == key(y);
        if (!found) out += (out.empty() ? "" : ", ") + std::string("no ") + key(y) + " (this context: " + y + ")";
    }
    return out.empty() ? "the descriptions differ" : out;
}

struct file_closer {
    void operator()(std::FILE * f) const { if (f) std::fclose(f); }
};
using file_ptr = std::unique_ptr<std::FILE, file_closer>;

} // namespace

// The layout description names the backend of a device cache: its section is the device's own (forward_session::
// save_state), so a file moves between sequences of the same backend only.
constexpr const char * kCudaDesc = " backend=cuda";

status engine_sequence::save_state(const std::string & path, uint64_t * bytes) {
    const model & m = ctx_->mdl();
    // a temporary name of this save's own (two saves to one path do not write into each other), renamed into place
    static std::atomic<uint32_t> serial{0};
    const std::string tmp = strfmt("%s.tmp.%d.%u", path.c_str(), (int) getpid(), serial.fetch_add(1));
    file_ptr f(std::fopen(tmp.c_str(), "wb"));
    if (!f) return status(ERR_IO, strfmt("saveState: cannot create %s: %s", tmp.c_str(), std::strerror(errno)));
    state_writer w(f.get());
    w.bytes(STATE_MAGIC, sizeof(STATE_MAGIC));
    w.pod(STATE_VERSION);
    w.pod(model_fingerprint(m));
    const std::string desc = kv_->layout_desc() + (cuda_ ? kCudaDesc : "");
    w.pod((uint32_t) desc.size());
    w.bytes(desc.data(), desc.size());
    w.vec(history_);
    w.pod((uint8_t) has_logits_);
    if (has_logits_) w.vec(logits_);
    status st;
#ifdef THINKCACHE_WITH_CUDA
    if (cuda_) {
        std::lock_guard<std::mutex> lock(ctx_->compute_mutex());  // (the context's stream)
        st = cuda_->save_state(w);
        if (!st.ok()) st.message = "saveState: " + st.message;
    } else
#endif
    {
        kv_->save_state(w);
    }
    if (st.ok()) st = w.finish();
    if (st.ok() && fsync(fileno(f.get())) != 0) st = status(ERR_IO, strfmt("saveState: cannot flush %s to disk: %s", tmp.c_str(), std::strerror(errno)));
    const bool closed = std::fclose(f.release()) == 0;
    if (st.ok() && !closed) st = status(ERR_IO, "saveState: closing the file failed (disk full?)");
    if (st.ok() && std::rename(tmp.c_str(), path.c_str()) != 0) {
        st = status(ERR_IO, strfmt("saveState: cannot move %s to %s: %s", tmp.c_str(), path.c_str(), std::strerror(errno)));
    }
    if (!st.ok()) {
        std::remove(tmp.c_str());
        if (st.code == ERR_IO && st.message.rfind("saveState", 0) != 0) st.message = "saveState: " + st.message + " (" + path + ")";
        return st;
    }
    if (bytes) *bytes = w.written();
    return {};
}

status engine_sequence::load_state(const std::string & path) {
    const model & m = ctx_->mdl();
    file_ptr f(std::fopen(path.c_str(), "rb"));
    if (!f) return status(ERR_IO, strfmt("loadState: cannot open %s: %s", path.c_str(), std::strerror(errno)));
    struct stat sb;
    if (fstat(fileno(f.get()), &sb) != 0 || !S_ISREG(sb.st_mode)) return status(ERR_IO, strfmt("loadState: %s is not a regular file", path.c_str()));
    state_reader r(f.get(), (uint64_t) sb.st_size);
    auto bad = [&](const char * what) {
        if (r.ok()) r.fail(what);
        return status(ERR_STATE_FORMAT, strfmt("loadState: %s: %s", path.c_str(), r.error().c_str()));
    };
    char magic[8] = {};
    uint32_t version = 0;
    if (!r.bytes(magic, 8) || std::memcmp(magic, STATE_MAGIC, 8) != 0) return bad("not a thinkcache state file (bad magic)");
    if (!r.pod(version)) return bad("truncated header");
    if (version != STATE_VERSION) {
        return status(ERR_STATE_FORMAT, strfmt("loadState: %s: format version %u; this thinkcache reads version %u", path.c_str(), version, STATE_VERSION));
    }
    uint64_t fp = 0;
    if (!r.pod(fp)) return bad("truncated header");
    if (fp != model_fingerprint(m)) {
        return status(ERR_INVALID_ARG, strfmt("loadState: %s was saved from another model (its tensors differ from this one's)", path.c_str()));
    }
    uint32_t desc_n = 0;
    if (!r.pod(desc_n)) return bad("truncated header");
    if (desc_n > STATE_MAX_DESC) return bad("header description too long");
    std::string desc(desc_n, '\0');
    if (!r.bytes(&desc[0], desc_n)) return bad("truncated header");
    const std::string here = kv_->layout_desc() + (cuda_ ? kCudaDesc : "");
    auto on_cuda = [](const std::string & d) { return d.size() >= std::strlen(kCudaDesc) && d.compare(d.size() - std::strlen(kCudaDesc), std::string::npos, kCudaDesc) == 0; };
    if (on_cuda(desc) != on_cuda(here)) {
        return status(ERR_INVALID_ARG, strfmt("loadState: %s was saved from a sequence on the %s backend; this one runs on %s (a state file loads on the backend "
                                              "that saved it)", path.c_str(), on_cuda(desc) ? "CUDA" : "CPU", on_cuda(here) ? "CUDA" : "the CPU"));
    }
    if (desc != here) {
        return status(ERR_INVALID_ARG, strfmt("loadState: %s was saved with another KV cache configuration: %s", path.c_str(), desc_diff(desc, here).c_str()));
    }
    std::vector<int32_t> history;
    std::vector<float> logits;
    uint8_t has_logits = 0;
    if (!r.vec(history, (size_t) INT32_MAX, "token history") || !r.pod(has_logits)) return bad("truncated header");
    if (history.size() > (size_t) ctx_->params().n_ctx) {
        return status(ERR_CONTEXT_FULL, strfmt("loadState: %s holds %zu tokens, more than this context's %d (contextSize)", path.c_str(), history.size(), ctx_->params().n_ctx));
    }
    if (has_logits > 1) return bad("invalid logits flag");
    if (has_logits && !r.vec(logits, m.hp.n_vocab, "logits")) return bad("truncated logits");
    if (has_logits && logits.size() != m.hp.n_vocab) return bad("the logits do not cover the vocabulary");
    for (int32_t t : history) {
        if (t < 0 || (uint32_t) t >= m.hp.n_vocab) return bad("a token id outside the vocabulary");
    }
    kv_cache::loaded_ptr loaded;
    int32_t n_cached = 0;
    status st;
#ifdef THINKCACHE_WITH_CUDA
    cuda::forward_session::loaded_ptr loaded_dev;
    if (cuda_) st = cuda_->read_state(r, loaded_dev, &n_cached);
    else
#endif
        st = kv_->read_state(r, loaded, &n_cached);
    if (st.ok() && (st = r.finish()).ok() && history.size() != (size_t) n_cached) {
        st = status(ERR_STATE_FORMAT, strfmt("%zu tokens of history for a cache of %d", history.size(), n_cached));
    }
    if (!st.ok()) return status(st.code, strfmt("loadState: %s: %s", path.c_str(), st.message.c_str()));
#ifdef THINKCACHE_WITH_CUDA
    if (cuda_) {
        std::lock_guard<std::mutex> lock(ctx_->compute_mutex());
        const int32_t before = cuda_->n_past();
        st = cuda_->adopt_state(std::move(loaded_dev));
        if (!st.ok()) {  // (out of device memory: the cache as it was; a device error in a dense cache: emptied)
            if (cuda_->n_past() != before) {
                trim_history(cuda_->n_past());
                has_logits_ = false;
            }
            return status(st.code, strfmt("loadState: %s: %s", path.c_str(), st.message.c_str()));
        }
    } else
#endif
    {
        kv_->adopt_state(std::move(loaded));
    }
    history_ = std::move(history);
    sampler_.clear_history();
    for (int32_t t : history_) sampler_.accept(t);
    logits_ = std::move(logits);
    has_logits_ = has_logits != 0;
    return {};
}

} // namespace core
