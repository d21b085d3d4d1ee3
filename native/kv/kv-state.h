// Sequence state files (seq.saveStateToFile / loadStateFromFile): a KV cache written to disk as it is —
// compressed, evicted, quantized — and read back into a cache of the same model and KV configuration.
// The file holds what the cache holds: the f16 tokens' used tiles and rows, the coded tokens' blocks, their
// positions, the policies' statistics, the cache-wide state (sinks, recorded queries, counters) and the
// prefix checkpoint, so its size is the cache's bytes, not the context's.
//
// Layout (little-endian, no padding): the engine's header (sequence-state.cpp: magic, version, model fingerprint, the
// cache's layout description, token history, logits), the cache's section (kv_cache::save_state), then an
// 8-byte checksum of everything before it. Readers check every count and offset against the configuration
// before using it and build the new state apart, so a truncated, corrupt or foreign file is an error and the
// sequence keeps what it held.
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "../common/status.h"

namespace core {

// Checksum of a state file: blocks of STATE_BLOCK bytes hashed word by word, chained (not cryptographic: it
// catches truncation and corruption, not forgery; the reader's bounds checks are what keeps a crafted file safe).
constexpr size_t STATE_BLOCK = (size_t) 1 << 20;
uint64_t state_block_hash(uint64_t h, const uint8_t * p, size_t n);

// Buffered writer with a running checksum. Errors stick: check status() (or finish()) once at the end.
class state_writer {
public:
    explicit state_writer(std::FILE * f) : f_(f) { buf_.reserve(STATE_BLOCK); }
    void bytes(const void * p, size_t n);
    template <class T> void pod(const T & v) { bytes(&v, sizeof(T)); }
    // u32 count, then the elements
    template <class T> void vec(const std::vector<T> & v) {
        pod((uint32_t) v.size());
        bytes(v.data(), v.size() * sizeof(T));
    }
    // Flushes, appends the checksum and flushes the stream.
    status finish();
    uint64_t written() const { return written_; }

private:
    void flush_block();
    std::FILE * f_;
    std::vector<uint8_t> buf_;
    uint64_t h_ = 0, written_ = 0;
    bool failed_ = false;
};

// Buffered reader of a file of known size; the last 8 bytes are the checksum, verified by finish(). A read past
// the payload or a count above its bound fails the reader (ok() false, error() says where).
class state_reader {
public:
    state_reader(std::FILE * f, uint64_t file_size);
    bool bytes(void * p, size_t n);
    template <class T> bool pod(T & v) { return bytes(&v, sizeof(T)); }
    // u32 count (at most max_count, else a failure naming `what`), then the elements
    template <class T> bool vec(std::vector<T> & v, size_t max_count, const char * what) {
        uint32_t n = 0;
        if (!pod(n)) return false;
        if (n > max_count) return fail(strfmt("%s: %u entries, at most %zu expected", what, n, max_count));
        if ((uint64_t) n * sizeof(T) > remaining()) return fail(strfmt("%s: %u entries, past the end of the file (truncated?)", what, n));
        v.resize(n);
        return bytes(v.data(), (size_t) n * sizeof(T));
    }
    bool fail(const std::string & why);
    bool ok() const { return err_.empty(); }
    const std::string & error() const { return err_; }
    uint64_t remaining() const { return payload_ - pos_; }
    // Every payload byte read and the checksum matches.
    status finish();

private:
    bool fill();
    std::FILE * f_;
    uint64_t payload_ = 0, pos_ = 0;   // payload bytes (file size − 8), bytes consumed
    std::vector<uint8_t> buf_;
    size_t at_ = 0;                    // next unread byte of buf_
    uint64_t h_ = 0;
    std::string err_;
};

} // namespace core
