// The KV cache (DESIGN.md §3). Every (layer il, KV head ih) owns a head cache: its own token set,
// with an explicit position per token, stored in fixed-size pages drawn from a shared page_pool.
// Heads may hold different numbers of tokens; attention reads a head through `kv_head_view` (a list of
// page segments) and masks by position, never by slot index.
//
// Retention per head (ALGORITHMS.md §1):
//   FULL          keeps every token;
//   STREAM(S, R)  keeps the first S tokens forever and the R most recent (RLKV/DuoAttention streaming
//                 heads). A chunk is attended in full, then the head is trimmed (`retain`), so a decode
//                 step attends over S + R + 1 tokens and leaves S + R.
//   EVICT         an eviction policy (kv-policy.h) decides which tokens stay; it sees each decode step's
//                 attention probabilities (computed by attention() into the head's probability buffers),
//                 and the cache selects, compacts and frees pages when the policy's schedule says so.
// Storage is f16 (llama.cpp's default cache type, so a FULL-only cache gives its greedy tokens).
// Invariant: within a head, positions ascend across segments (trimming compacts in order).
#pragma once
#include <algorithm>
#include <cstddef>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "../common/status.h"
#include "../model/arch.h"
#include "../tensor/ggml-type.h"
#include "codecs/kv-codec.h"
#include "kv-policy.h"
#include "page-pool.h"

namespace core {

// Keys are stored in tiles of KV_TILE tokens, transposed inside the tile ([tile][head_dim][KV_TILE]),
// so the q·k kernel loads KV_TILE keys' d-th components with one vector load and needs no horizontal
// reduction. Values stay token-major ([n][head_dim_v]) for the p·V accumulation.
constexpr int KV_TILE = 16;
// Tokens per page. A page holds [KV_PAGE_TOKENS / KV_TILE][head_dim][KV_TILE] keys, then
// [KV_PAGE_TOKENS][head_dim_v] values (f16).
constexpr int KV_PAGE_TOKENS = 64;

// A run of tokens stored contiguously (one page).
struct kv_segment {
    int32_t n = 0;                  // tokens in this segment
    const int32_t * pos = nullptr;  // [n] positions
    const f16_t * k = nullptr;      // [ceil(n/KV_TILE)][head_dim][KV_TILE]
    const f16_t * v = nullptr;      // [n][head_dim_v]

    // note: call only with j < n, d < head_dim.
    f16_t key(int32_t j, int d, int head_dim) const { return k[((size_t) (j / KV_TILE) * head_dim + d) * KV_TILE + (j % KV_TILE)]; }
};

// Massive-activation sinks kept per layer (ALGORITHMS.md §3.5: the tokens of the 20 largest |values|).
constexpr int KV_MAX_SINKS = 20;

struct kv_storage_config;
class state_writer;
class state_reader;

// A run of coded tokens with consecutive positions: coded indices [first, first + n) hold positions
// [pos, pos + n). A FULL head's coded tokens form a few runs (only protected tokens and sinks, which stay
// f16, break them), so positions cost 12 B per run, not 4 B per token (§3.7 counts positions only with
// eviction).
struct kv_pos_run {
    int32_t first = 0, pos = 0, n = 0;
};

// Coded tokens the runs cover.
inline int32_t kv_runs_count(const std::vector<kv_pos_run> & r) { return r.empty() ? 0 : r.back().first + r.back().n; }

// Appends coded position `pos` to the runs (a new run unless it continues the last one).
inline void kv_runs_push(std::vector<kv_pos_run> & r, int32_t pos) {
    if (!r.empty() && r.back().pos + r.back().n == pos) { r.back().n++; return; }
    r.push_back({r.empty() ? 0 : r.back().first + r.back().n, pos, 1});
}

// The longest prefix of coded tokens (of runs[0..n_runs)) whose positions are below p; *prefix: whether they are all
// the coded tokens below p. Coded positions ascend but for sinks a later prompt chunk displaced (coded after newer
// tokens), so a rewind to p keeps exactly the tokens below p only when *prefix.
inline int32_t kv_runs_prefix_below(const kv_pos_run * runs, int32_t n_runs, int32_t p, bool * prefix) {
    int32_t c = 0, r = 0;
    for (; r < n_runs && (int64_t) runs[r].pos + runs[r].n <= p; r++) c = runs[r].first + runs[r].n;
    if (r < n_runs && runs[r].pos < p) c = runs[r].first + (p - runs[r].pos);
    *prefix = true;
    for (r++; r < n_runs; r++) *prefix &= runs[r].pos >= p;
    return c;
}

// The leading coded tokens (of runs[0..n_runs)) whose position is below p, counted over runs in order while their
// first position is below p (kv_runs_prefix_below's count where its *prefix holds; attention's count_le).
inline int32_t kv_runs_count_below(const kv_pos_run * runs, int32_t n_runs, int32_t p) {
    int32_t c = 0;
    for (int32_t r = 0; r < n_runs && runs[r].pos < p; r++) c = runs[r].first + std::min(runs[r].n, p - runs[r].pos);
    return c;
}

// The quantized tokens of a coded head (storage codec other than f16; FULL and EVICT heads): blocks of
// codes in pages of their own, keys and values apart (they may use different codecs). Positions ascend (but for a
// sink displaced by a later prompt chunk, coded when it left the protection), and lie between the head's protected
// f16 tokens and its f16 staging window.
struct kv_coded_view {
    int32_t n = 0;                         // quantized tokens
    const kv_pos_run * runs = nullptr;     // [n_runs], covering coded indices 0..n-1 in order
    int32_t n_runs = 0;
    const kv_codec_traits * kc = nullptr, * vc = nullptr;
    kv_codec_params kp, vp;
    int k_block_tokens = 1, v_block_tokens = 1;
    int32_t k_page_tokens = 0, v_page_tokens = 0;  // tokens per page (whole blocks)
    size_t k_block_bytes = 0, v_block_bytes = 0;
    void * const * kpages = nullptr;
    void * const * vpages = nullptr;
    const int32_t * perm = nullptr;        // [head_dim] key channel permutation of this head (nullptr: identity)
    const kv_storage_config * st = nullptr;
    // Grouped-head key rotation (ALGORITHMS.md §3.2, §6.2 C1 b): the pre-RoPE keys of rot_g consecutive FULL
    // heads were rotated together by FWHT_{rot_g·D}, this head being slot rot_slot; each slot then holds D of
    // the rotated channels, permuted and quantized like a per-head key. sib[s] is slot s's view (all slots hold
    // the same tokens), so head h's key is (1/√rot_g)·Σ_s (−1)^popcount(h&s)·H_D·P_s⁻¹·x̂_s. rot_g == 1: per head.
    int rot_g = 1, rot_slot = 0;
    const kv_coded_view * const * sib = nullptr;

    // note: call only with j < n. Position of coded token j (binary search over the runs).
    int32_t pos_at(int32_t j) const {
        int32_t lo = 0, hi = n_runs - 1;
        while (lo < hi) {
            const int32_t mid = (lo + hi + 1) / 2;
            if (runs[mid].first <= j) lo = mid; else hi = mid - 1;
        }
        return runs[lo].pos + (j - runs[lo].first);
    }
    // Coded tokens with position <= p: a prefix, for a query newer than every coded token (attention's case).
    int32_t count_le(int32_t p) const { return kv_runs_count_below(runs, n_runs, p + 1); }
    // note: call only with j < n. Returns the block holding token j and j's index inside it.
    const uint8_t * key_block(int32_t j, int & jj) const {
        jj = j % k_block_tokens;
        const int32_t b = j / k_block_tokens, bpp = k_page_tokens / k_block_tokens;
        return (const uint8_t *) kpages[b / bpp] + (size_t) (b % bpp) * k_block_bytes;
    }
    const uint8_t * value_block(int32_t j, int & jj) const {
        jj = j % v_block_tokens;
        const int32_t b = j / v_block_tokens, bpp = v_page_tokens / v_block_tokens;
        return (const uint8_t *) vpages[b / bpp] + (size_t) (b % bpp) * v_block_bytes;
    }
};

struct kv_head_view {
    int32_t n = 0;                  // tokens held by this head in f16 (all of them unless coded)
    int32_t n_seg = 0;
    const kv_segment * seg = nullptr;  // [n_seg], positions ascending across segments
    const kv_coded_view * coded = nullptr;  // quantized tokens of a coded head, else nullptr
};

enum kv_retention : uint8_t {
    KV_RETAIN_FULL = 0,
    KV_RETAIN_STREAM = 1,
    KV_RETAIN_EVICT = 2,
};

// Storage codecs (ALGORITHMS.md §3, §4.1, §6.1; kv-codec.h). A coded head keeps its first `protect`
// positions and its `staging` newest tokens in f16 (the usual tiled pages) and moves older tokens, in
// blocks of `flush` tokens, to codec pages. Keys of rot codecs are rotated by a normalized FWHT per
// head (G = 1, §6.2 C1 a), or across a group of FULL heads (rot_group, §6.2 C1 b), and permuted; by default before RoPE (the f16 key is un-RoPE'd at its
// position when it leaves staging; attention dequantizes, inverts the rotation and applies RoPE at
// the stored position), or after RoPE (`post_rope`, §6.2 C6: the query is rotated instead).
// Values of rot codecs are rotated per head; attention un-rotates the accumulated output once.
struct kv_storage_config {
    kv_codec_type key = KV_CODEC_F16, value = KV_CODEC_F16;
    int staging = 64;          // newest tokens per head kept in f16
    int protect = 16;          // positions < protect are never quantized (sinks)
    int group = 32;            // channels per group (KIVI keys: tokens per group)
    float clip = -1.0f;        // rot clip ratio; < 0: 0.8 for rot2, 1.0 otherwise (§3.4)
    bool post_rope = false;
    bool protect_sinks = true; // massive-activation sinks detected at prefill (§3.5) are never quantized
    // the model's RoPE (pre-RoPE rot keys)
    int n_rot = 0;
    rope_style rope = ROPE_STYLE_NORM;
    float freq_base = 10000.0f, freq_scale = 1.0f;
    const float * freq_factors = nullptr;  // [n_rot/2] or nullptr (owned by the model)
    std::vector<int32_t> perm;  // [n_layer][n_head_kv][head_dim] key channel permutation; empty = identity
    // KV heads per key rotation group (a power of two dividing n_head_kv; pre-RoPE rot keys only). A group
    // is rotated together only where all its heads are FULL (they then hold the same tokens); the other
    // groups' heads rotate per head (§6.2 C1: a head's key must not depend on tokens another head evicted).
    int rot_group = 1;
    bool coded() const { return key != KV_CODEC_F16 || value != KV_CODEC_F16; }
    // The clip ratio a codec quantizes with (§3.4): `clip` when set, else 0.8 for rot2 and 1.0 otherwise.
    float clip_of(kv_codec_type t) const { return clip >= 0 ? clip : t == KV_CODEC_ROT2 ? 0.8f : 1.0f; }
};

struct kv_cache_config {
    int n_layer = 0, n_head_kv = 0, head_dim = 0, head_dim_v = 0, n_ctx = 0;
    int n_head = 0;                  // query heads (0: same as n_head_kv); needed by query-scoring policies
    std::vector<uint8_t> retention;  // [n_layer][n_head_kv] kv_retention; empty = all FULL
    int stream_sinks = 16;           // S
    int stream_recent = 64;          // R
    kv_policy_params policy;         // for EVICT heads
    kv_storage_config storage;       // codecs of FULL and EVICT heads (STREAM heads stay f16)
};

// Whether `storage` can apply to the EVICT heads of `cfg` (per-token codecs, a policy that scores from
// attention probabilities); ERR_INVALID_ARG with the reason otherwise. The cache keeps EVICT heads f16
// when it fails, so callers check it first and report the error.
status kv_storage_check(const kv_cache_config & cfg);

struct kv_head_memory {
    int32_t resident = 0;            // tokens held
    int32_t budget = -1;             // max tokens held after a step (-1: unlimited)
    uint64_t bytes_allocated = 0;    // pages + position storage
    uint64_t bytes_used = 0;         // payload + positions of the held tokens + metadata (the layer's recorded
                                     // queries shared out over its evicting heads)
};

struct kv_memory_report {
    int64_t logical_tokens = 0;      // tokens the sequence has seen
    int64_t resident_tokens = 0;     // sum over heads of tokens held
    uint64_t key_bytes = 0;          // key payload of held tokens
    uint64_t value_bytes = 0;        // value payload of held tokens
    uint64_t position_bytes = 0;     // int32 position per f16 token + one kv_pos_run (12 B) per run of coded tokens
    uint64_t metadata_bytes = 0;     // per-head bookkeeping (segment tables) and eviction policy state (per-token
                                     // statistics, this step's probabilities, recorded queries)
    // of key + value bytes, for coded heads: codes, scales + zero-points, and f16 tokens (staging and
    // protected); key_bytes + value_bytes = code + scale + staging + the f16 payload of uncoded heads
    uint64_t code_bytes = 0;
    uint64_t scale_bytes = 0;
    uint64_t staging_bytes = 0;
    int64_t quantized_tokens = 0;    // sum over heads of tokens held in codec pages
    uint64_t bytes_used = 0;         // key + value + positions + metadata
    uint64_t bytes_allocated = 0;    // pages held by this sequence + position/segment capacity
    uint64_t pool_slack_bytes = 0;   // free but resident pages of the shared pool (context-wide)
    uint64_t checkpoint_bytes = 0;   // the prefix checkpoint's pages and tables (kv_cache::save_checkpoint; in bytes_allocated)
    int64_t evicted_tokens = 0;      // tokens dropped by eviction policies and stream trimming (all heads)
    int64_t compactions = 0;         // head compactions done by eviction policies
    double compaction_seconds = 0;   // time spent scoring and compacting
    std::vector<kv_head_memory> heads;  // [n_layer][n_head_kv], filled on request
};

class kv_cache {
public:
    kv_cache(const kv_cache_config & cfg, std::shared_ptr<page_pool> pool);
    ~kv_cache();
    kv_cache(const kv_cache &) = delete;
    kv_cache & operator=(const kv_cache &) = delete;

    // Makes room for n_tokens more tokens in every head; ERR_CONTEXT_FULL past n_ctx, ERR_OOM_HOST. Starts a
    // chunk: until the next reserve, revert_chunk() can take the chunk back out while chunk_revertible().
    status reserve(int n_tokens);
    // True while the chunk in flight has only appended (tokens, their statistics, queries, sink candidates):
    // no head has dropped, quantized or re-scored anything yet, so dropping the chunk restores the cache
    // exactly as it was before reserve(). False once a layer's retain() changed older tokens.
    bool chunk_revertible() const { return chunk_exact_ || chunk_pos0_ == 0; }
    // note: call only while chunk_revertible(). Removes what the chunk in flight appended to every layer it
    // reached (a failed or aborted forward pass stops between layers) and restores the step counters, sinks
    // and recorded queries: the cache is as it was before reserve().
    void revert_chunk();
    // Appends n_tokens tokens to every head of layer il.
    //   k: [n_tokens][n_head_kv][head_dim] f32 (post-RoPE), v: [n_tokens][n_head_kv][head_dim_v], pos: [n_tokens]
    // note: call only after `reserve(n_tokens)` succeeded for this batch.
    void append(int il, int n_tokens, const float * k, const float * v, const int32_t * pos);
    // Applies retention to the heads of layer il (after its attention): STREAM heads keep S + R.
    void retain(int il);
    kv_head_view head(int il, int ih) const;
    // Drops every token with position >= pos. Returns the number of leading positions that are still
    // exactly as a fresh evaluation would leave them (less than pos when a STREAM head had already
    // dropped tokens at or after `pos - R`... then the caller must re-evaluate from there).
    int32_t remove_from(int32_t pos);
    void clear();
    // Prefix checkpoint (multi-turn reuse of a lossy cache). A cache that dropped or quantized tokens cannot
    // rewind into them, so a follow-up turn whose prompt extends this turn's would fall back to the sinks and
    // re-evaluate everything. save_checkpoint() keeps, at n_logical(), a copy of every head a rewind may not
    // restore exactly (STREAM and EVICT heads whole; of coded FULL heads only the f16 pages — protected tokens
    // and staging — since their codes only grow; a plain f16 FULL head always rewinds exactly) and of the
    // cache-wide state (sinks, recorded queries, step counters). remove_from(p) with p at or past that point,
    // where the cache alone would fall back further, returns to the checkpoint instead (the f16 FULL heads are
    // cut there, the others restored) and returns its token count. A rewind below it, clear() and copy_from()
    // drop it. A cache with no such head saves nothing. ERR_OOM_HOST: no checkpoint.
    // bounded_only: save nothing when an EVICT head holds more than the policy's capacity (a prompt longer than
    // the capacity, not yet evicted: its copy would keep the whole prompt's cache alive while decoding).
    status save_checkpoint(bool bounded_only = false);
    void drop_checkpoint();
    int32_t checkpoint_tokens() const { return ckpt_.n; }  // -1: none
    // Makes this cache an exact copy of `src` (a cache of the same context: same configuration and page pool):
    // its tokens, coded runs, policy statistics, sinks, recorded queries and step counters, its pages copied
    // into pages of its own. ERR_INVALID_ARG for a cache of another context; ERR_OOM_HOST when the pool runs
    // dry (this cache is then empty).
    status copy_from(const kv_cache & src);
    // State files (kv-state.h). save_state() writes the cache's section; read_state() reads one into a state apart
    // from this cache — nothing changes here; ERR_STATE_FORMAT names what is wrong, ERR_CONTEXT_FULL when it holds
    // more tokens than n_ctx, ERR_OOM_HOST — and adopt_state() makes that state this cache's (its checkpoint too; one
    // at the cache's end is not written but taken again here).
    // layout_desc(): everything the section's layout depends on, as `key=value` words (a file loads only into a
    // cache with an equal description; the engine compares them).
    struct loaded_state;
    struct loaded_state_deleter { void operator()(loaded_state * s) const; };
    using loaded_ptr = std::unique_ptr<loaded_state, loaded_state_deleter>;
    std::string layout_desc() const;
    void save_state(state_writer & w) const;
    status read_state(state_reader & r, loaded_ptr & out, int32_t * n_tokens = nullptr) const;  // n_tokens: what it holds
    void adopt_state(loaded_ptr s);
    kv_memory_report memory(bool per_head) const;
    // Positions head (il, ih) holds, coded and f16, ascending (keep-set comparisons, §6.2 C2).
    std::vector<int32_t> held_positions(int il, int ih) const;
    int32_t n_logical() const { return n_logical_; }
    kv_retention retention(int il, int ih) const { return (kv_retention) heads_[(size_t) il * cfg_.n_head_kv + ih].mode; }
    // Heads whose keys head (il, ih) was rotated with (kv_storage_config::rot_group where its group is all
    // FULL and coded with pre-RoPE rot keys, else 1).
    int rot_group_of(int il, int ih) const { return heads_[(size_t) il * cfg_.n_head_kv + ih].rot_g; }
    // Eviction policies need this step's attention probabilities of the chunk's last query row.
    bool wants_probs(int il) const { return layer_has_evict_[(size_t) il]; }
    // Buffers attention() fills for EVICT heads: max and sum over the group's query heads, one entry per held
    // token laid out [coded tokens (kv_coded_view order) | f16 tokens (segment order)].
    float * probs_max(int il, int ih) { return heads_[(size_t) il * cfg_.n_head_kv + ih].p_max.data(); }
    float * probs_sum(int il, int ih) { return heads_[(size_t) il * cfg_.n_head_kv + ih].p_sum.data(); }
    int32_t decode_step() const { return step_; }
    // Policies that score from recent queries (snapkv, rkv) need each decode step's post-RoPE queries.
    bool wants_queries(int il) const { return q_window_ > 0 && layer_has_evict_[(size_t) il]; }
    // note: call only when wants_queries(il); q: [n_head][head_dim] of the newest token, at position pos.
    // Queries of positions a rewind or a reverted chunk removes leave the window with their tokens.
    void record_query(int il, const float * q, int32_t pos);
    // Massive-activation sinks (ALGORITHMS.md §3.5): the policy asks for detection at prefill; the
    // forward pass reports the positions of the tokens holding the largest residual-stream values.
    bool wants_sinks() const { return (cfg_.policy.protect_sinks && layer_has_evict_any_) || (cfg_.storage.coded() && cfg_.storage.protect_sinks); }
    // Each prefill chunk reports its candidates (position and |value| of its largest layer-input elements);
    // a layer keeps the tokens of the KV_MAX_SINKS largest over the whole prompt (not per chunk), and token 0.
    void add_sinks(int il, const std::vector<int32_t> & positions, const std::vector<float> & magnitudes);
    // Test helper: these positions become sinks (infinite magnitude, so up to KV_MAX_SINKS of them).
    void add_sinks(int il, const std::vector<int32_t> & positions) { add_sinks(il, positions, std::vector<float>(positions.size(), INFINITY)); }
    const std::vector<int32_t> & sinks(int il) const { return sinks_[(size_t) il]; }

    const kv_cache_config & config() const { return cfg_; }

private:
    struct head_store {
        uint8_t mode = KV_RETAIN_FULL;
        int32_t n = 0;
        bool dropped = false;             // some tokens were trimmed (not a plain prefix any more)
        std::vector<void *> pages;        // each KV_PAGE_TOKENS tokens
        std::vector<int32_t> pos;         // [n]
        std::vector<kv_segment> segs;     // rebuilt after every change
        // EVICT: per-token policy statistics and this step's probabilities, laid out [coded | f16 tokens]
        kv_token_stats stats;
        std::vector<float> p_max, p_sum;
        // coded heads: the f16 pages hold the protected tokens then staging; older tokens live here
        bool coded = false;
        std::vector<void *> qk_pages, qv_pages;
        std::vector<kv_pos_run> qruns;    // positions of the coded tokens, as runs
        kv_coded_view cv;
        int rot_g = 1, rot_slot = 0;      // key rotation group (kv_coded_view::rot_g)
    };
    // Moves tokens past the staging window of heads ih0 .. ih0 + n_heads − 1 (one rotation group, holding
    // the same tokens; n_heads = 1 for a head rotated alone) to codec pages.
    void flush(int il, int ih0, int n_heads);
    int32_t staging_of(const head_store & h) const;
    void gather_stats(head_store & h, const std::vector<int32_t> & src);
    void compact_coded(head_store & h, const std::vector<int32_t> & keep, const std::vector<int32_t> & pos);
    void positions_all(const head_store & h, std::vector<int32_t> & out) const;
    int flush_tokens() const;
    void rebuild_segments(head_store & h) const;
    void compact(head_store & h, const std::vector<int32_t> & keep);
    size_t key_offset_bytes() const { return 0; }
    size_t value_offset_bytes() const { return (size_t) KV_PAGE_TOKENS * cfg_.head_dim * sizeof(f16_t); }

    kv_cache_config cfg_;
    std::shared_ptr<page_pool> pool_;
    std::vector<head_store> heads_;   // [n_layer][n_head_kv]
    std::vector<char> layer_has_evict_;
    bool layer_has_evict_any_ = false;
    std::vector<std::vector<int32_t>> sinks_;  // [n_layer] sorted sink positions
    std::vector<std::vector<std::pair<float, int32_t>>> sink_cand_;  // [n_layer] (|value|, position), largest first
    std::vector<int32_t> keep_;               // retain() scratch (no allocation per step once grown)
    std::vector<float> scores_, layer_mean_;
    std::vector<std::vector<int32_t>> pos_all_;  // retain() scratch
    const kv_policy * policy_ = nullptr;
    kv_coded_view cv0_;               // codec parameters shared by the coded heads
    std::vector<const kv_coded_view *> sib_;  // [n_layer][n_head_kv] &heads_[i].cv (rotation groups' slots)
    int32_t n_logical_ = 0;
    int32_t step_ = 0;                // decode steps since the last prompt chunk
    int32_t prompt_ = 0;              // tokens of the prompt (before the first decode step)
    int32_t q_window_ = 0;                    // queries kept per layer (policy's query_window)
    std::vector<std::vector<float>> qring_;  // [n_layer][q_window][n_head][head_dim], ring
    std::vector<int32_t> qcount_;             // [n_layer] queries recorded (ring position = count % q_window)
    std::vector<std::vector<int32_t>> qpos_;  // [n_layer][q_window] the position of each recorded query
    std::vector<int32_t> qheld_;              // [n_layer] valid queries ending at the newest (<= q_window)
    // the chunk in flight (reserve .. next reserve): what revert_chunk() restores
    bool chunk_exact_ = true;
    int32_t chunk_pos0_ = 0, chunk_step0_ = 0, chunk_prompt0_ = 0;
    std::vector<char> chunk_sinks_saved_;     // [n_layer] sink state saved before this chunk's first add_sinks
    std::vector<std::vector<int32_t>> chunk_sinks_;
    std::vector<std::vector<std::pair<float, int32_t>>> chunk_sink_cand_;
    void drop_queries_from(int32_t pos);
    void cut(int32_t keep_pos, bool reset_dropped);
    // A copy of `s` into `d` with pages of its own (d's page lists are overwritten, not freed); all or nothing:
    // false (d without pages) when the pool runs dry.
    bool copy_head(const head_store & s, head_store & d);
    void free_head_pages(head_store & h) { free_pages(*pool_, h); }
    static void free_pages(page_pool & pool, head_store & h);  // (a loaded state's heads too)
    bool restore_checkpoint();
    // The cache-wide state beside the heads: what a checkpoint keeps and a copy takes along.
    struct wide_state {
        std::vector<std::vector<int32_t>> sinks;
        std::vector<std::vector<std::pair<float, int32_t>>> sink_cand;
        int32_t step = 0, prompt = 0;
        std::vector<std::vector<float>> qring;
        std::vector<int32_t> qcount, qheld;
        std::vector<std::vector<int32_t>> qpos;
        int64_t evicted = 0, compactions = 0;
        double compaction_s = 0;
    };
    wide_state wide() const { return {sinks_, sink_cand_, step_, prompt_, qring_, qcount_, qheld_, qpos_, evicted_, compactions_, compaction_s_}; }
    void set_wide(wide_state w);  // (by value: a copy allocates before anything here changes, a move not at all)
    struct checkpoint_state {
        int32_t n = -1;                                     // tokens (-1: none)
        std::vector<char> saved;                            // [heads] this head was copied
        std::vector<char> codes_live;                       // [heads] a coded FULL head: only its f16 pages were copied; its
                                                            // codes are a prefix of the live head's (FULL heads only append codes)
        std::vector<head_store> heads;                      // [heads] the copies (pages owned here)
        wide_state wide;
    };
    checkpoint_state ckpt_;
    bool ckpt_current_ = false;  // nothing changed since the checkpoint was taken or restored (it equals the cache)
    void write_wide(state_writer & w, const wide_state & s) const;
    bool read_wide(state_reader & r, wide_state & s, int32_t n_logical) const;
    void write_head(state_writer & w, const head_store & h, bool codes) const;
    bool read_head(state_reader & r, head_store & h, bool codes, int32_t n_logical, bool * oom) const;
    int64_t evicted_ = 0, compactions_ = 0;
    double compaction_s_ = 0;
};

// The sink set of one layer (ALGORITHMS.md §3.5 over a chunked prompt): `cand` holds the KV_MAX_SINKS largest
// (|value|, position) elements seen so far; the chunk's candidates join it and `sinks` becomes their distinct
// positions plus token 0, ascending. Shared by kv_cache and the device cache's bookkeeping (kv-ring.h).
void kv_sinks_merge(std::vector<std::pair<float, int32_t>> & cand, const std::vector<int32_t> & positions, const std::vector<float> & magnitudes,
                    std::vector<int32_t> & sinks);

// Bytes of one page for the given head sizes (before rounding to the OS page size).
size_t kv_page_bytes(int head_dim, int head_dim_v);

} // namespace core
