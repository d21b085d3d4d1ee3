// The compressed KV cache of one layer on the device (issue 8): the data side of kv_ring_layer
// (native/kv/kv-ring.h, which decides every slot, flush and copy on the host and is checked against
// kv_cache on the CPU). Per head: f16 pages (fixed slots, then the ring) in the layout attention reads
// (kv_layer_view, pages of transposed key tiles then values), mapped from the context's device_page_pool as the
// head's slots grow and given back when they shrink; for coded heads, arrays of quantized tokens with their
// positions (up to n_ctx per head; grown and shrunk by halves): RotateKV blocks (codes | f16 scales | u8
// zero-points, rot.cpp's layout), q8/q4 blocks, or KIVI's (per-token key code rows with per-channel scales and
// mins per block of tokens, per-token values). Every slot's position and statistics (12 B) live in arrays that
// grow and shrink with the pages mapped.
// Per chunk and layer the host stages one small int32 array (chunk tables + the retain's ops), uploaded
// from pinned memory on the work stream; then:
//   append   the chunk's keys and values rounded to f16 into their slots (kv_ring_slot), positions too
//   (attention over the view: ring slots below lo are out of view)
//   apply    quantize-on-write: each listed token's key is read back from its f16 slot, un-RoPE'd at its
//            position (pre-RoPE keys), FWHT'd and permuted, values FWHT'd, both quantized per group of
//            channels (kv_cache::flush + rot.cpp's encode, the same float steps); sinks leaving the ring
//            are copied to fixed slots; emptied slots get KV_RING_EMPTY.
// Evicting heads (kv-ring.h's EVICT): per token (f16 slot or quantized index) the policy's statistics (two
// int32: lazy's last hit step and maximum recurrence interval, h2o's cumulative or tova's current score as
// float bits) live beside the payload. Attention also writes the chunk's last query row's scores of these
// heads, and `observe` turns them into probabilities and updates the statistics as the policy does. Every op
// moves statistics with their token: encode (slot -> quantized index), the evict gathers (quantized and f16,
// through a scratch buffer so no gather reads what another writes). The host downloads a due head's
// statistics (download_stats) and selects (kv_ring_layer::select), as kv_cache does at its eviction steps;
// a decode step that drops one token of a head (h2o, tova) selects and removes it here (evict_one).
#pragma once
#include <algorithm>
#include <memory>
#include <vector>

#include "../kv/kv-ring.h"
#include "attention.cuh"
#include "page-pool-cuda.h"

namespace core {
namespace cuda {

// The coded heads' codecs and the model's RoPE (kv_storage_config resolved for one model).
struct ring_codec {
    int kbits = 0, vbits = 0;            // 0: no coded head
    // each side's family: RotateKV's (rot2/3/4: bits 2..4), plain q8 / q4 blocks (bits 8 or 4) or f16 rows (bits
    // 16: the f16 side beside a coded one), or KIVI's (plain too; bits 2 or 4): keys per channel over a block of
    // kivi_tokens tokens, values per token (vkivi)
    bool kplain = false, vplain = false;
    int kivi_tokens = 0;                 // KIVI keys: their block of tokens, else 0
    bool vkivi = false;
    int group = 32;                      // channels per quantization group (clamped to head_dim)
    float kclip = 1.0f, vclip = 1.0f;
    bool pre_rope = true;
    // grouped key rotation (kv_storage_config::rot_group; pre-RoPE rot keys): aligned groups of this many FULL
    // coded heads rotate their keys together (kv_cache's rule: a group with any other head rotates per head)
    int rot_group = 1;
    bool rope_neox = false;
    int n_rot = 0;
    float freq_base = 10000.0f, freq_scale = 1.0f;
    const float * freq_factors = nullptr;  // host [n_rot/2] or nullptr
};

// One chunk of one layer, as the host's bookkeeping decided it (forward-cuda.cu builds it around
// kv_ring_layer::append and ::retain).
struct ring_step {
    std::vector<int32_t> rc_before;   // [H] ring counters before the append (the append kernel's slots)
    std::vector<int32_t> pages;       // [H] pages attention scans (after the append)
    std::vector<int32_t> lo;          // [H] ring lower bounds as attention sees them (before the retain)
    std::vector<int32_t> n_coded;     // [H] quantized tokens as attention sees them (before the retain)
    std::vector<kv_ring_ops> ops;     // [H] the retain

    // rc_before from layer L's books (call before L.append)
    void set_rc(const kv_ring_layer & L) {
        rc_before.resize((size_t) L.n_head_kv());
        for (int h = 0; h < L.n_head_kv(); h++) rc_before[(size_t) h] = L.rc(h);
    }
    // pages, lo and n_coded from layer L's books as attention sees them (after L.append, before L.retain)
    void set_view(const kv_ring_layer & L) {
        const size_t H = (size_t) L.n_head_kv();
        pages.resize(H);
        lo.resize(H);
        n_coded.resize(H);
        for (int h = 0; h < (int) H; h++) {
            pages[(size_t) h] = L.pages_in_use(h);
            lo[(size_t) h] = L.lo(h);
            n_coded[(size_t) h] = L.n_coded(h);
        }
    }
};

// One launch of single-token evictions (kv_ring_layer::evicts_one heads of one layer): per head its index, f16
// token count and quantized count, and where its outcome goes; the policy's selection parameters and the
// layer's sinks (kv_select_keep's).
constexpr int RING_EVICT_MAX_HEADS = 16, RING_EVICT_MAX_SINKS = 32;
constexpr int RING_MAX_ROT_GROUP = 8;  // heads of a grouped key rotation at most
struct ring_evict_one_args {
    int n = 0;
    int head[RING_EVICT_MAX_HEADS], rc[RING_EVICT_MAX_HEADS], nq[RING_EVICT_MAX_HEADS], out[RING_EVICT_MAX_HEADS];
    int budget = 0, recent = 0, protect = 0, n_sinks = 0;
    int sinks[RING_EVICT_MAX_SINKS];
};

class kv_ring_device {
public:
    kv_ring_device() = default;
    ~kv_ring_device();
    kv_ring_device(kv_ring_device && o) noexcept;  // (a moved-from device holds no page)
    kv_ring_device(const kv_ring_device &) = delete;
    kv_ring_device & operator=(const kv_ring_device &) = delete;

    // Device memory for the geometry of `L` (every position empty; no page mapped yet). perm: [n_head_kv][head_dim]
    // key channel permutation of this layer, or nullptr (identity). pool: where the f16 pages come from (pages of
    // at least KV_PAGE_TOKENS·(head_dim + head_dim_v) f16). ERR_OOM_DEVICE with the size. codes_of: the coded
    // heads that get arrays for quantized tokens here ([n_head_kv] mask; nullptr: every coded head) — a
    // checkpoint's layer, which runs no kernel and keeps the codes of its evicting heads only.
    status create(const kv_ring_layer & L, int head_dim, int head_dim_v, const ring_codec & codec, const int32_t * perm,
                  std::shared_ptr<device_page_pool> pool, stream_t s, const std::vector<char> * codes_of = nullptr);
    bool created() const { return pool_ != nullptr; }
    // whether head h has arrays for quantized tokens here
    bool holds_codes(int h) const { return std::find(coded_heads_.begin(), coded_heads_.end(), h) != coded_heads_.end(); }
    // Pages follow the bookkeeping: map_pages() maps from the pool every page head h needs for
    // L.pages_in_use(h) slots (call after L.append, before stage(), which uploads the new table entries);
    // release_pages() gives back those above it (after the step's ops are enqueued: a gather still reads them,
    // and every later user of a page comes after it in the stream). ERR_OOM_DEVICE from the pool (the pages
    // mapped so far stay; release_pages after the rollback gives them back).
    status map_pages(const kv_ring_layer & L, stream_t s);
    void release_pages(const kv_ring_layer & L);
    int32_t pages_mapped(int h) const { return mapped_[(size_t) h]; }
    size_t page_bytes() const { return pool_ ? pool_->page_bytes() : 0; }
    // Every slot's position and statistics live in arrays of slot_cap() slots per head (view().max_tokens, the
    // stride), and the coded heads' quantized tokens in arrays of coded_cap() tokens per head (head after head:
    // coded_first). Both start at 256 (at most the head's capacity) and grow to twice their size (at least) when
    // map_pages() maps past the end or a step quantizes past it (stage()); shrink() halves them again once every
    // head fills a quarter or less (after an eviction or a rewind: call it after the step's ops are enqueued). A
    // resize copies what is held and waits for the device.
    status shrink(const kv_ring_layer & L, stream_t s);
    int32_t slot_cap() const { return slot_cap_; }
    int32_t coded_cap() const { return coded_cap_; }
    int32_t coded_first(int h) const { return c_first_h_[(size_t) h]; }
    // Stages a chunk's tables and ops (after the previous chunk's work is done: forward_session::run
    // synchronizes first) and enqueues their upload; view() then describes the cache as attention sees it.
    status stage(const ring_step & st, stream_t s);
    // k, v: [T][n_head_kv][head_dim(_v)] f32 on the device, tokens at positions c0 .. c0 + T − 1.
    status append(const float * k, const float * v, int32_t c0, int T, stream_t s);
    // The staged retain ops, in order: gather quantized tokens, quantize, move f16 tokens, copy, clear. tmp:
    // scratch for the gathers (grown here; shared by the layers of a session, used in stream order).
    status apply(stream_t s, device_buffer & tmp);
    // Evicting heads: the appended tokens' statistics start at (last, 0) (lazy_append).
    void set_append_last(int32_t last) { append_last_ = last; }
    // Scores scratch for attention (nullptrs: this step observes nothing). sc: scores_floats(G) floats.
    void set_scores(float * sc, float * ml, int G);
    size_t scores_floats(int G) const;
    // The policy's observation over the evicting heads after attention at step t (lazy: alpha is the hit
    // threshold; tova: layer_mean averages over the layer's n_head query heads).
    status observe(kv_policy_kind kind, int32_t t, float alpha, int G, bool layer_mean, int n_head, stream_t s);
    // Single-token evictions (k_ring_evict_one): out[4 a.out[i] ..] = (status, index, position, 0) per head, the
    // removal done on the device; the host keeps the books with kv_ring_layer::evict_one.
    status evict_one(const ring_evict_one_args & a, int32_t * out, stream_t s);
    // A head's statistics in evict_tokens' order (quantized 0..n_coded, then slots 0..n_f16): enqueues the
    // copies into last/mri ([n_coded + n_f16]); valid after the stream is synchronized.
    status download_stats(int h, int32_t n_coded, int32_t n_f16, int32_t * stats_c, int32_t * stats_f, stream_t s);
    // The policies that score from keys (snapkv, rkv): the newest token's post-RoPE query of a chunk, q [row]
    // on the device at position pos, into a ring of the last w (kv_cache::record_query).
    status record_query(const float * q, int row, int w, int32_t pos, stream_t s);
    // A rewind or a rolled-back chunk takes the queries of the positions it removes (>= pos) out of the
    // window with their tokens (kv_cache::drop_queries_from): host bookkeeping only.
    void drop_queries_from(int32_t pos);
    int queries_held() const { return qheld_; }
    size_t query_bytes() const { return qring_.bytes(); }  // the recorded queries' ring (0 until the first query)
    size_t query_row_bytes() const { return (size_t) qrow_ * 4; }
    // Head h's partial scores over its f16 tokens (slots 0..n), kv_ring_qk_scores' inputs, enqueued with their
    // download into `out` (valid after the stream is synchronized). tmp: scratch (grown here).
    struct qk_partials {
        std::vector<float> imp, excl_val;
        std::vector<double> rowsum;
        std::vector<int32_t> excl_idx;
    };
    status score_qk(int h, int n, bool rkv, int G, float scale, device_buffer & tmp, qk_partials & out, stream_t s);
    // A head's f16 keys of slots 0..n as rows [n][head_dim] of f16 bits (tests); waits for the stream.
    status download_keys(int h, int n, std::vector<uint16_t> & keys, stream_t s);
    // A coded head's first n quantized tokens' key and value blocks (tests; waits for the stream).
    status download_coded(int h, int32_t n, std::vector<uint8_t> & k, std::vector<uint8_t> & v, stream_t s);
    // A head's positions (tests): quantized 0..n_coded into c_pos, slots 0..n_slots into pos; valid after the stream
    // is synchronized.
    status download_positions(int h, int32_t n_coded, int32_t n_slots, int32_t * c_pos, int32_t * pos, stream_t s);
    bool has_evict() const { return st_f_.data() != nullptr; }
    // Sets position entries (rollback and truncate): triplets (head, slot, position).
    status set_positions(const std::vector<kv_ring_layer::slot_entry> & e, stream_t s);
    // Massive-activation candidates of a chunk's layer input x [T][n_embd] (device): per token the k largest
    // |x| and their element index, downloaded into vals/idx ([T][k]); waits for the stream.
    status top_abs(const float * x, int T, int n_embd, int k, std::vector<float> & vals, std::vector<int32_t> & idx, stream_t s);

    // Makes heads `heads` (a mask, [n_head_kv]) of this layer copies of src's — a layer of the same geometry and
    // page pool (a sequence of the same context, or a checkpoint) whose books are `L`: their f16 pages (copied
    // into pages of this layer's own), every slot's position and statistics, and where codes[h] their quantized
    // tokens (L.n_coded(h) of them; both layers hold arrays for them); the other heads stay as they are. wide: src's
    // recorded queries too. The books
    // follow with kv_ring_layer::copy_from. Allocates first: ERR_OOM_DEVICE leaves what this layer holds as it was.
    // Waits for the stream.
    status copy_from(const kv_ring_device & src, const kv_ring_layer & L, const std::vector<char> & heads, const std::vector<char> & codes, bool wide,
                     stream_t s);
    // State files (forward_session::save_state). save_data writes what this layer holds for books L, after its
    // geometry: each head's f16 tokens that attention may still read (a key and a value row per slot in view; the
    // pages are rebuilt around them on loading, zeros elsewhere), the statistics of an evicting head's slots, the quantized tokens of the
    // heads that have arrays for them (blocks, an evicting head's statistics, KIVI key metadata) and the recorded
    // queries; waits for the stream. read_data reads that back into host memory for books L (read and checked
    // already: every size follows from them and from this layer's geometry, which the file must match; qrow, qw:
    // the recorded queries' row and window of this layer's session), false with r.error() otherwise. load_data
    // puts it into this layer, made by create() for books L and holding nothing yet: maps the pages, uploads
    // (ERR_OOM_DEVICE: drop the layer); waits for the stream.
    struct blob {
        std::vector<uint8_t> pages, kblk, vblk, kmeta;  // pages: the f16 rows of the slots attention may still read (key, value)
        std::vector<int32_t> stats_f, stats_c;  // (two int32 per token, evicting heads only, head after head)
        int64_t qcount = 0;
        int32_t qw = 0, qrow = 0, qheld = 0;
        std::vector<int32_t> qpos;
        std::vector<float> qring;
    };
    // A checkpoint's layer: heads, the heads it holds (nullptr: all); codes, those of them whose quantized tokens it
    // holds (nullptr: every head with arrays for them; read_data is called on the live layer, whose arrays cover more).
    status save_data(const kv_ring_layer & L, state_writer & w, stream_t s, const std::vector<char> * heads = nullptr,
                     const std::vector<char> * codes = nullptr) const;
    bool read_data(state_reader & r, const kv_ring_layer & L, int32_t n, int qrow, int qw, blob & out, const std::vector<char> * heads = nullptr,
                   const std::vector<char> * codes = nullptr) const;
    status load_data(const kv_ring_layer & L, const blob & b, stream_t s, const std::vector<char> * heads = nullptr);
    const kv_layer_view & view() const { return v_; }
    // device bytes this layer holds: its mapped pages, the coded tokens' arrays, positions and statistics
    size_t reserved_bytes() const;
    // bytes per quantized token (KIVI keys: the code row and its share of the block's scales and mins)
    size_t k_block_bytes() const { return (size_t) v_.k_block_bytes + (v_.kivi ? ((size_t) 4 * v_.head_dim + v_.kivi - 1) / v_.kivi : 0); }
    size_t v_block_bytes() const { return (size_t) v_.v_block_bytes; }

private:
    std::vector<int32_t> state_coded_heads(const std::vector<char> * codes) const;  // coded_heads_ (those in codes)
    struct ring_geometry {
        uint64_t page_bytes;
        int32_t k_block_bytes, v_block_bytes, kivi, head_dim;
    };
    ring_geometry state_geometry(const std::vector<int32_t> & coded) const;
    status resize_coded(int32_t cap, stream_t s);
    status resize_slots(int32_t cap, stream_t s);

    kv_layer_view v_;
    int n_head_kv_ = 0, n_enc_ = 0, n_copy_ = 0, n_clear_ = 0, n_cgather_ = 0, n_move_ = 0;
    int32_t coded_cap_ = 0, n_coded_heads_ = 0, append_last_ = 0;
    float kclip_ = 1.0f, vclip_ = 1.0f;
    std::shared_ptr<device_page_pool> pool_;
    std::vector<void *> page_h_;      // [n_head_kv][max_seg] the mapped pages (host copy of page_ptrs_), nullptr: none
    std::vector<int32_t> mapped_;     // [n_head_kv] pages mapped: always a prefix of the head's segments
    std::vector<int32_t> map_ent_;    // table entries not uploaded yet: (head · max_seg + segment, pointer low, high)
    int n_map_ = 0;                   // entries in the staged step
    std::vector<int> coded_heads_;    // the coded heads, in the order of their arrays
    int32_t min_coded_cap_ = 0, max_coded_cap_ = 0;
    int32_t slot_cap_ = 0, min_slot_cap_ = 0, full_tokens_ = 0;  // slot arrays: per head now, at least, at most
    int sc_g_ = 1;                                                 // the scores scratch's rows per KV head (set_scores)
    device_buffer page_ptrs_, seg_n_, seg_first_, pos_, geo_, step_dev_;
    device_buffer is_coded_, kblk_, vblk_, c_first_, c_pos_, perm_, ff_, tops_, kmeta_;
    device_buffer is_evict_, st_f_, st_c_;
    device_buffer rot_g_;  // [n_head_kv] each head's key rotation group (kv_layer_view::rot_g), when any is grouped
    std::vector<int32_t> rot_g_h_;  // evicting heads: flag, statistics of slots and of quantized tokens (int2)
    std::vector<int32_t> c_first_h_;  // host copy of c_first
    device_buffer qring_;  // recorded queries [w][n_head·D] (snapkv, rkv)
    int64_t qcount_ = 0;
    int qw_ = 0, qrow_ = 0, qheld_ = 0;   // qheld_: valid queries ending at the newest (<= qw_)
    std::vector<int32_t> qpos_;         // [qw_] the position of each recorded query
    int32_t * pinned_ = nullptr;  // host staging of the step (cudaMallocHost)
    size_t pinned_cap_ = 0;       // int32 entries
};

} // namespace cuda
} // namespace core
