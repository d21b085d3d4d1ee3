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
//   CODED   a FULL head with a storage codec: fixed = positions < protect + sinks; the ring is the staging
//           window; a flush quantizes the oldest unprotected tokens (kv_cache::flush: same count, same
//           order) and moves lo past them; sinks below the new lo are copied to fixed slots first
//   EVICT   a head under an eviction policy (any: lazy, h2o, tova, streaming, snapkv, rkv): its f16 tokens stay compact in
//           slots [0, rc), lo = 0, and its quantized tokens compact in coded order. Tokens do move here: an
//           eviction gathers the survivors of both parts down, and a flush of a coded EVICT head quantizes
//           the oldest unprotected f16 tokens (by position) then gathers the rest down (the slots hold at
//           most protect + sinks + the f16 window + a flush block + a chunk; an f16 EVICT head holds up to
//           n_ctx, since a prompt stays whole until the first eviction, unless its policy holds its budget).
//           Per-token policy statistics live on the device beside the tokens and move with them (every op
//           below). An eviction is decided on the host from the downloaded statistics (select(), evict()) or
//           from scores computed on the device from keys and recent queries (snapkv, rkv: select_scores()),
//           in retain() from positions alone (streaming), or, when a decode step drops exactly one token of
//           a head (h2o, tova: kv_policy::holds_budget), on the device, which also moves the head's last
//           token into the hole (f16 slot rc − 1, or the last quantized one); evict_one() then keeps the
//           books. So a head's slots stay compact but not in position order once it evicted that way; the
//           policies go by position (kv_select_keep), and attention by each slot's position.
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

class state_writer;
class state_reader;

constexpr int32_t KV_RING_EMPTY = INT32_MAX;

enum kv_ring_kind : uint8_t {
    KV_RING_DENSE = 0,
    KV_RING_STREAM = 1,
    KV_RING_CODED = 2,
    KV_RING_EVICT = 3,
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
    // EVICT heads
    kv_policy_params policy;
    bool evict_coded = false;  // EVICT heads quantize too (the storage codec applies to them, kv_storage_check)
    int evict_staging = 64;    // their f16 window (kv_cache::staging_of: at least the policy's recent window)
};

// The ring layout of a kv_cache_config: FULL heads DENSE (f16) or CODED (a storage codec), STREAM heads
// STREAM, EVICT heads EVICT. Keys and values may use different codecs (each rot2/3/4, q8/q4, kivi2/4, or f16
// beside a coded other side). ERR_INVALID_ARG naming what the device cache does not hold: KIVI key blocks that do
// not divide the flush or exceed 6144 elements, grouped key rotation, heads other than 32/64/128 channels.
status kv_ring_config_from(const kv_cache_config & c, int max_chunk, kv_ring_config * out);

// The device's policy statistics, two int32 per token: lazy (last hit step, maximum recurrence interval),
// h2o (cumulative attention as float bits, 0), tova (the current step's attention as float bits, 0).
void kv_ring_stats_decode(kv_policy_kind kind, const int32_t * raw, int32_t n, kv_token_stats & out);

// The device's single-token eviction (k_ring_evict_one), on the host: over tokens (pos, score) of one head,
// the candidates are kv_select_keep's (not protected, not a sink, not among the `recent` newest); the
// selection drops cand − max(0, budget − kept) of them. Returns the index of the one token to drop (lowest
// score, then oldest position: kv_select_keep's order), -1 when none goes, or -2 when the device leaves it to
// the host: more than one goes, or the `recent` newest positions are not consecutive (the device finds them
// as those above max − recent, which needs them to be).
int32_t kv_ring_evict_one_ref(const int32_t * pos, const float * score, int32_t n, int32_t budget, int32_t recent, int32_t protect,
                              const int32_t * sinks, int32_t n_sinks);

// The scores of a head under a policy that scores from keys (snapkv, rkv), from the device's partial results,
// as the policy's score_qk finishes them (max-pool, and R-KV's redundancy): imp[n] the recorded queries' mean
// attention per token (snapkv: softmax over all keys per query row; rkv: over the keys outside the window of the
// group's max logit); for rkv also per token i: rowsum[i] = Σ_{j≠i} cos(k_i, k_j), and the one similarity of row
// i the reference zeroes (excl_idx[i], excl_val[i]). Writes scores[n].
void kv_ring_qk_scores(kv_policy_kind kind, const kv_policy_params & pp, int32_t n, const float * imp, const double * rowsum, const int32_t * excl_idx,
                       const float * excl_val, float * scores);

// One head's retain, evict or truncate step, applied on the device in this order: gather the kept quantized
// tokens, quantize, move f16 tokens, copy, clear. Payload, position and policy statistics travel together.
struct kv_ring_ops {
    bool cgather = false;                      // EVICT: quantized tokens ckeep[i] (ascending) move to index i
    std::vector<int32_t> ckeep;
    int32_t enc_base = -1;                     // coded index of enc_slot[0] (-1: the head's count before the step)
    std::vector<int32_t> enc_slot, enc_pos;    // f16 slots to quantize, appended to the coded list in order
    std::vector<int32_t> move_src, move_dst;   // EVICT: f16 tokens gathered down (all read before any is written)
    std::vector<int32_t> copy_src, copy_dst;   // tokens (payload and position) copied to fixed slots
    std::vector<int32_t> clear_slot;           // slots that become empty
    bool empty() const { return !cgather && enc_slot.empty() && move_src.empty() && copy_src.empty() && clear_slot.empty(); }
};

class kv_ring_layer {
public:
    kv_ring_layer(const kv_ring_config & c, int il);

    int n_head_kv() const { return (int) heads_.size(); }
    uint8_t kind(int h) const { return heads_[(size_t) h].kind; }
    bool coded(int h) const { return coded_head(heads_[(size_t) h]); }  // holds quantized tokens (CODED, coded EVICT)
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
    // slot s of head h holds a token attention reads (the others are empty, or ring slots below lo no step reads again)
    bool in_view(int h, int32_t s) const { return in_view(heads_[(size_t) h], s); }
    bool dropped(int h) const { return heads_[(size_t) h].dropped; }
    const std::vector<int32_t> & sinks() const { return sinks_; }
    bool wants_sinks() const { return (any_coded_ && protect_sinks_) || (any_evict_ && policy_.protect_sinks); }
    bool has_evict() const { return any_evict_; }
    // The policy scores from positions only (kv_policy::position_only, streaming): retain() evicts its due heads
    // itself, and the device keeps no statistics for it.
    bool stats_free() const { return pol_ && pol_->position_only; }
    // Evictions retain() ran itself (stats-free policies): tokens dropped and head compactions.
    int64_t evicted() const { return evicted_; }
    int64_t compactions() const { return compactions_; }
    const kv_policy_params & policy() const { return policy_; }

    // Records tokens c0 .. c0 + T − 1 (ERR_INTERNAL if a slot still in view would be overwritten: a
    // capacity bug, never expected).
    status append(int32_t c0, int32_t T);
    // A prefill chunk's sink candidates (kv_cache::add_sinks).
    void add_sinks(const std::vector<int32_t> & positions, const std::vector<float> & magnitudes);
    // After the layer's attention over n tokens: STREAM heads move lo, coded heads flush. ops: [n_head_kv].
    // t, P: the decode step (0 in a prompt chunk) and the prompt length, kv_cache's step_ and prompt_; an
    // EVICT head whose eviction is due (due()) is left alone: the caller downloads its statistics and calls
    // evict(), which flushes after selecting, as kv_cache::retain does.
    void retain(int32_t n, std::vector<kv_ring_ops> & ops, int32_t t = 0, int32_t P = 0);
    // The policy's schedule for EVICT head h at decode step t.
    bool due(int h, int32_t t, int32_t P) const;
    // EVICT head h's tokens as its policy lists them, [quantized (coded order) | f16 (slots 0..rc)]: their
    // positions; the device's statistics come in the same order (coded index, then slot).
    void evict_tokens(int h, std::vector<int32_t> & pos) const;
    // Keeps the tokens `keep` (ascending indices into evict_tokens' list), then flushes; appends to op.
    // Returns the tokens dropped.
    int32_t evict(int h, const std::vector<int32_t> & keep, kv_ring_ops & op);
    // The policy's choice for a due head from its statistics (in evict_tokens' order): kv_cache::retain's
    // scores and kv_select_keep with this layer's sinks. `pos` is evict_tokens' list; `stats` the device's two
    // int32 per token (kv_ring_stats_decode).
    void select(const std::vector<int32_t> & pos, const std::vector<int32_t> & stats, int32_t t, int32_t P, std::vector<int32_t> & keep) const;
    // The same with scores given (the policies that score from keys: kv_ring_qk_scores).
    void select_scores(const std::vector<int32_t> & pos, const float * scores, int32_t t, int32_t P, std::vector<int32_t> & keep) const;
    // The policy scores from keys and recent queries (snapkv, rkv): no statistics, a scoring pass at its due steps.
    bool scores_from_keys() const { return pol_ && pol_->score_qk; }
    // A due head whose eviction at this step drops one token at most (holds_budget policies, n = budget + 1):
    // the device selects and removes it (kv_ring_evict_one_ref's rule) instead of the host.
    bool evicts_one(int h, int32_t t, int32_t P) const;
    // The books of the device's single eviction of head h: token j of evict_tokens' list removed and the
    // head's last token (same part) moved into its place, or j < 0: nothing dropped (the selection kept all);
    // then the flush kv_cache runs after an eviction (appended to op). Returns the tokens dropped (0 or 1).
    int32_t evict_one(int h, int32_t j, kv_ring_ops & op);
    // The policy averages the probabilities over the whole layer (tova, kv_step_probs::p_layer): every head of
    // this layer evicts, so they hold the same tokens in the same slots and the device sums across heads.
    bool layer_mean() const { return layer_mean_; }
    // A device-side eviction was launched in the chunk in flight (payloads moved: rollback() is not exact).
    void note_device_eviction() { if (journal_on_) moved_ = true; }
    // kv_cache::remove_from's exactness rules over this layer's heads (the caller runs every layer's
    // limit_stream, then every layer's limit_coded, as kv_cache loops over all heads twice).
    int32_t limit_stream(int32_t keep) const;
    int32_t limit_coded(int32_t keep) const;
    // Drops every token at position >= keep (an exact keep from the limits above). ops: [n_head_kv] (clears).
    void truncate(int32_t keep, std::vector<kv_ring_ops> & ops);

    // Takes heads `which` (a mask, [n_head_kv]) of `src` — a layer of the same configuration — as src holds them
    // (slot positions, counters, quantized tokens' positions), and src's layer-wide state (sinks and their
    // candidates, eviction counters); the other heads stay. Ends a journal. (The device data: kv_ring_device::copy_from.)
    void copy_from(const kv_ring_layer & src, const std::vector<char> & which);

    // State files of the device cache (forward_session::save_state): the books — per head its kind, the ring
    // counters, the slots that hold a token as (slot, position) pairs and the quantized tokens' positions; the
    // sinks and their candidates, the eviction counters. read_books, on a layer fresh from the same
    // configuration, takes them from a file of a sequence of n tokens and checks them against this layer's
    // geometry and the rules its own steps keep — every position below n and held once; a fixed slot p holds
    // position p, a ring slot the latest position the ring puts there, an EVICT head's tokens the first rc slots;
    // DENSE, STREAM and CODED ring counters that follow from n; quantized tokens only in coded heads, a CODED
    // head's below its lower bound — so the device only ever reads tables its steps could have made. A failure
    // is the reader's (r.error()); the layer is then to be dropped.
    void save_books(state_writer & w) const;
    bool read_books(state_reader & r, int32_t n);

    // A failed chunk's undo (forward_session::eval): begin() before the chunk's append, then commit() or
    // rollback(), which restores this object exactly and lists the (head, slot, position) entries the
    // device's position table must be given back (one per slot). The slot payloads need no undo within ONE
    // chunk: its append only writes slots out of view at begin(), and its retain never copies into a slot it
    // empties. (Across chunks this does not hold: a later chunk may overwrite a slot an earlier one put out
    // of view, so a journal must not span chunks.)
    void begin();
    void commit() { journal_on_ = false; }
    struct slot_entry { int32_t head, slot, pos; };
    // false when the chunk moved tokens of an EVICT head (a gather overwrote payloads in view): the caller
    // cannot restore the device and must clear the cache.
    bool rollback(std::vector<slot_entry> & restored);

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
    bool coded_head(const head & x) const { return x.kind == KV_RING_CODED || (x.kind == KV_RING_EVICT && evict_coded_); }
    int32_t staging_of(const head & x) const { return x.kind == KV_RING_EVICT ? evict_staging_ : staging_; }
    static int32_t coded_below(const head & x, int32_t keep, bool * prefix = nullptr);
    void set_slot(size_t h, int32_t s, int32_t p);
    // EVICT head: quantizes the oldest unprotected of the f16 slots `live` (ascending) beyond the window, then
    // gathers the rest down to slots 0..; slots past them become empty
    void compact_f16(size_t h, const std::vector<int32_t> & live, kv_ring_ops & op);
    std::vector<head> heads_;
    int32_t coded_cap_ = 0;
    int stream_sinks_ = 0, stream_recent_ = 0, protect_ = 0, staging_ = 0, flush_ = 16, evict_staging_ = 64;
    bool protect_sinks_ = true, any_coded_ = false, any_evict_ = false, evict_coded_ = false, layer_mean_ = false;
    int64_t evicted_ = 0, compactions_ = 0;
    kv_policy_params policy_;
    const kv_policy * pol_ = nullptr;
    std::vector<int32_t> sinks_;                        // ascending
    std::vector<std::pair<float, int32_t>> sink_cand_;  // kv_sinks_merge's state
    // journal of the call in flight
    bool journal_on_ = false, moved_ = false;
    std::vector<slot_entry> journal_;  // old values, in write order
    struct head_mark { int32_t rc, lo, n_coded; bool dropped; };
    std::vector<head_mark> mark_;
    int64_t mark_evicted_ = 0, mark_compactions_ = 0;
    std::vector<int32_t> mark_sinks_;
    std::vector<std::pair<float, int32_t>> mark_cand_;
};

} // namespace core
