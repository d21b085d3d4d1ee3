// Bookkeeping of the compressed KV cache that lives on the CUDA device (issue 8; the data side is
// native/cuda/kv-compressed.cu). Plain C++, so the CPU tests check it against kv_cache step by step
// (test-kv-cache.cpp "kv ring: ..."): after every chunk each head must hold the positions kv_cache holds,
// the same ones quantized, in the same order.
//
// Layout of one head on the device: f16 slots [0, fix_cap) are fixed (slot p holds position p < fix_below;
// for coded heads the slots above hold the sinks moved out of the ring), slots [fix_cap, fix_cap +
// ring_cap) are a ring filled in arrival order. A token is never moved by retention: a STREAM head's old
// tokens and a coded head's quantized ones fall out of view when the head's lower bound `lo` passes their
// position (attention reads a ring slot only when its position >= lo), and their slot is reused later.
// So nothing is copied per decode step: a coded head quantizes `flush` tokens every `flush` steps, and the
// only copies are sinks leaving the ring (at most KV_MAX_SINKS per layer, at prefill).
//   DENSE   a FULL f16 head: every slot is ring, lo = 0, ring_cap = n_ctx (never wraps)
//   STREAM  fixed = positions < S; ring holds the rest; after a chunk lo = n - R (kv_cache::retain)
//   CODED   a FULL head with a rot codec: fixed = positions < protect + sinks; the ring is the staging
//           window; a flush quantizes the oldest unprotected tokens (kv_cache::flush: same count, same
//           order) and moves lo past them; sinks below the new lo are copied to fixed slots first
// An empty slot holds KV_RING_EMPTY as its position (attention masks it as a future token).
#pragma once
#include <climits>
#include <cstdint>
#include <utility>
#include <vector>

#include "../common/status.h"
#include "kv-cache.h"

#if defined(__CUDACC__)
#define KV_RING_HD __host__ __device__
#else
#define KV_RING_HD
#endif

namespace core {

constexpr int32_t KV_RING_EMPTY = INT32_MAX;

enum kv_ring_kind : uint8_t {
    KV_RING_DENSE = 0,
    KV_RING_STREAM = 1,
    KV_RING_CODED = 2,
};

// Slot of token t of a chunk (positions c0 + t, consecutive) in a head: position p < fix_below goes to
// fixed slot p, the others to the ring in arrival order (the chunk's fixed tokens come first). The device
// append kernel calls this same function.
KV_RING_HD inline int32_t kv_ring_slot(int32_t c0, int32_t t, int32_t fix_below, int32_t rc, int32_t fix_cap, int32_t ring_cap) {
    const int32_t p = c0 + t;
    if (p < fix_below) return p;
    const int32_t n_fixed = fix_below > c0 ? fix_below - c0 : 0;  // the chunk's tokens below fix_below
    return fix_cap + (rc + t - n_fixed) % ring_cap;
}

struct kv_ring_config {
    int n_layer = 0, n_head_kv = 0, n_ctx = 0;
    int max_chunk = 512;              // tokens appended at most before retain (the forward pass's chunk)
    std::vector<uint8_t> kind;        // [n_layer][n_head_kv] kv_ring_kind
    int stream_sinks = 16, stream_recent = 64;
    int protect = 16, staging = 64, flush = 16;  // coded heads (kv_storage_config; flush: kv_cache::flush_tokens)
    bool protect_sinks = true;
};

// The ring layout of a kv_cache_config: FULL heads DENSE (f16) or CODED (rot codecs), STREAM heads STREAM.
// ERR_INVALID_ARG naming what the device cache does not hold: EVICT heads (eviction policies), codecs other
// than rot2/3/4 for both keys and values, grouped key rotation, heads wider than 256.
status kv_ring_config_from(const kv_cache_config & c, int max_chunk, kv_ring_config * out);

// One head's retain (or truncate) step, applied on the device in this order: quantize, copy, clear.
struct kv_ring_ops {
    std::vector<int32_t> enc_slot, enc_pos;    // f16 slots to quantize, appended to the coded list in order
    std::vector<int32_t> copy_src, copy_dst;   // tokens (payload and position) copied to fixed slots
    std::vector<int32_t> clear_slot;           // slots that become empty
    bool empty() const { return enc_slot.empty() && copy_src.empty() && clear_slot.empty(); }
};

class kv_ring_layer {
public:
    kv_ring_layer(const kv_ring_config & c, int il);

    int n_head_kv() const { return (int) heads_.size(); }
    uint8_t kind(int h) const { return heads_[(size_t) h].kind; }
    int32_t fix_below(int h) const { return heads_[(size_t) h].fix_below; }
    int32_t fix_cap(int h) const { return heads_[(size_t) h].fix_cap; }
    int32_t ring_cap(int h) const { return heads_[(size_t) h].ring_cap; }
    int32_t slots(int h) const { return fix_cap(h) + ring_cap(h); }
    int32_t coded_cap() const { return coded_cap_; }    // quantized tokens a coded head may hold (n_ctx)
    int32_t rc(int h) const { return heads_[(size_t) h].rc; }  // tokens the ring has taken (monotone between truncations)
    int32_t lo(int h) const { return heads_[(size_t) h].lo; }
    int32_t n_coded(int h) const { return (int32_t) heads_[(size_t) h].coded.size(); }
    const std::vector<int32_t> & coded_pos(int h) const { return heads_[(size_t) h].coded; }
    const std::vector<int32_t> & slot_pos(int h) const { return heads_[(size_t) h].slot_pos; }
    // pages (KV_PAGE_TOKENS slots) attention scans: the fixed pages and the ring pages written so far
    int32_t pages_in_use(int h) const;
    int32_t n_f16(int h) const;                          // f16 tokens in view
    std::vector<int32_t> held_positions(int h) const;    // in view and quantized, ascending
    bool dropped(int h) const { return heads_[(size_t) h].dropped; }
    const std::vector<int32_t> & sinks() const { return sinks_; }
    bool wants_sinks() const { return any_coded_ && protect_sinks_; }

    // Records tokens c0 .. c0 + T − 1 (ERR_INTERNAL if a slot still in view would be overwritten: a
    // capacity bug, never expected).
    status append(int32_t c0, int32_t T);
    // A prefill chunk's sink candidates (kv_cache::add_sinks).
    void add_sinks(const std::vector<int32_t> & positions, const std::vector<float> & magnitudes);
    // After the layer's attention over n tokens: STREAM heads move lo, coded heads flush. ops: [n_head_kv].
    void retain(int32_t n, std::vector<kv_ring_ops> & ops);
    // kv_cache::remove_from's exactness rules over this layer's heads (the caller runs every layer's
    // limit_stream, then every layer's limit_coded, as kv_cache loops over all heads twice).
    int32_t limit_stream(int32_t keep) const;
    int32_t limit_coded(int32_t keep) const;
    // Drops every token at position >= keep (an exact keep from the limits above). ops: [n_head_kv] (clears).
    void truncate(int32_t keep, std::vector<kv_ring_ops> & ops);

    // A failed chunk's undo (forward_session::eval): begin() before the chunk's append, then commit() or
    // rollback(), which restores this object exactly and lists the (head, slot, position) entries the
    // device's position table must be given back (one per slot). The slot payloads need no undo within ONE
    // chunk: its append only writes slots out of view at begin(), and its retain never copies into a slot it
    // empties. (Across chunks this does not hold: a later chunk may overwrite a slot an earlier one put out
    // of view, so a journal must not span chunks.)
    void begin();
    void commit() { journal_on_ = false; }
    struct slot_entry { int32_t head, slot, pos; };
    void rollback(std::vector<slot_entry> & restored);

private:
    struct head {
        uint8_t kind = KV_RING_DENSE;
        int32_t fix_below = 0, fix_cap = 0, ring_cap = 0;
        int32_t rc = 0, lo = 0;
        bool dropped = false;
        std::vector<int32_t> slot_pos;  // [fix_cap + ring_cap]
        std::vector<int32_t> coded;     // positions of the quantized tokens, in coded order
    };
    bool in_view(const head & h, int32_t slot) const;
    bool is_protected(int32_t p) const;
    static int32_t coded_below(const head & x, int32_t keep);
    void set_slot(size_t h, int32_t s, int32_t p);
    std::vector<head> heads_;
    int32_t coded_cap_ = 0;
    int stream_sinks_ = 0, stream_recent_ = 0, protect_ = 0, staging_ = 0, flush_ = 16;
    bool protect_sinks_ = true, any_coded_ = false;
    std::vector<int32_t> sinks_;                        // ascending
    std::vector<std::pair<float, int32_t>> sink_cand_;  // kv_sinks_merge's state
    // journal of the call in flight
    bool journal_on_ = false;
    std::vector<slot_entry> journal_;  // old values, in write order
    struct head_mark { int32_t rc, lo, n_coded; bool dropped; };
    std::vector<head_mark> mark_;
    std::vector<int32_t> mark_sinks_;
    std::vector<std::pair<float, int32_t>> mark_cand_;
};

} // namespace core
