// CPU matrix products (see matmul.h). Two phases per call:
//   1. activations -> vec_dot_type into scratch.act (skipped for f32 weights: x is used in place);
//      parallel over tokens when there are enough of them to pay for a second dispatch.
//   2. output rows split across threads in contiguous, equal chunks, so during decode each thread
//      streams its own slice of W exactly once (GEMM_MR rows per micro-kernel call where the type has one:
//      more weight streams in flight, each prefetched ahead; the same per-row expression as vec_dot). With n_tokens > 1 a thread walks its rows in tiles of
//      kRowTile rows and runs every token against a tile while the tile sits in L2 (a 16-row tile of a
//      4864-wide q8_0 matrix is 83 KB), with one activation row hot in L1 across the tile. On Zen 4,
//      tiles of 4..16 rows measured equal and 64 rows 30% slower (896x4864 q8_0, 64 tokens). Types with a
//      `gemm` micro-kernel (q8_0, q4_0, q5_0, q4_K, q6_K, bf16 with AVX512_BF16) run GEMM_MR rows x GEMM_NT tokens
//      per call inside the tile; those with a packed kernel (gemm_pack_kernel: q8_0, q4_0, q5_0 with AVX-512 VNNI,
//      f16 with AVX-512) first pack the activations, GEMM_NT tokens per group, and run it instead; the others loop
//      over the one-row vec_dot.
#include "matmul.h"

#include <algorithm>
#include <atomic>
#include <cassert>

#include "../../tensor/quant-traits.h"
#include "quant-traits-cpu.h"

namespace core {

namespace {

constexpr int64_t kRowTile = 16;
// Converting one activation row costs ~1 us for n_in = 4864, about what a dispatch costs.
constexpr int64_t kMinTokensParallelConvert = 8;

inline void split_range(int64_t n, int ith, int nth, int64_t * begin, int64_t * end) {
    const int64_t per = (n + nth - 1) / nth;
    *begin = std::min(n, per * ith);
    *end = std::min(n, *begin + per);
}

// y rows [r0, r1) for all tokens. act: n_tokens rows of act_row_bytes; packed (n_tokens > 1 only, else
// nullptr): the same tokens in groups of GEMM_NT for pk->gemm, group_bytes apart.
void matmul_rows(const weight_view & w, vec_dot_fn vec_dot, gemm_fn gemm, const uint8_t * act, size_t act_row_bytes,
                 float * y, int64_t n_tokens, int64_t r0, int64_t r1, const gemm_pack_kernel * pk = nullptr,
                 const uint8_t * packed = nullptr, size_t group_bytes = 0) {
    const uint8_t * wd = (const uint8_t *) w.data;
    if (n_tokens == 1) {
        if (gemm) {  // GEMM_MR rows at once: as many weight streams in flight (decode is a read of W)
            for (int64_t r = r0; r < r1; r += GEMM_MR) {
                const int nr = (int) std::min<int64_t>(GEMM_MR, r1 - r);
                gemm(w.n_in, wd + r * w.row_bytes, w.row_bytes, nr, act, act_row_bytes, 1, y + r, (size_t) w.n_out);
            }
            return;
        }
        for (int64_t r = r0; r < r1; r++) vec_dot(w.n_in, y + r, wd + r * w.row_bytes, act);
        return;
    }
    for (int64_t rt = r0; rt < r1; rt += kRowTile) {
        const int64_t rt_end = std::min(r1, rt + kRowTile);
        if (packed) {
            for (int64_t t = 0; t < n_tokens; t += GEMM_NT) {
                const int nt = (int) std::min<int64_t>(GEMM_NT, n_tokens - t);
                const uint8_t * g = packed + t / GEMM_NT * group_bytes;
                for (int64_t r = rt; r < rt_end; r += GEMM_MR) {
                    const int nr = (int) std::min<int64_t>(GEMM_MR, rt_end - r);
                    pk->gemm(w.n_in, wd + r * w.row_bytes, w.row_bytes, nr, g, nt, y + t * w.n_out + r, (size_t) w.n_out);
                }
            }
            continue;
        }
        if (gemm) {
            // GEMM_NT tokens at a time against GEMM_MR rows: each weight block is unpacked once per
            // GEMM_NT tokens, the GEMM_NT activation rows stay in L1, the row tile in L2
            for (int64_t t = 0; t < n_tokens; t += GEMM_NT) {
                const int nt = (int) std::min<int64_t>(GEMM_NT, n_tokens - t);
                for (int64_t r = rt; r < rt_end; r += GEMM_MR) {
                    const int nr = (int) std::min<int64_t>(GEMM_MR, rt_end - r);
                    gemm(w.n_in, wd + r * w.row_bytes, w.row_bytes, nr, act + t * act_row_bytes, act_row_bytes, nt,
                         y + t * w.n_out + r, (size_t) w.n_out);
                }
            }
            continue;
        }
        for (int64_t t = 0; t < n_tokens; t++) {
            const uint8_t * a = act + t * act_row_bytes;
            float * yt = y + t * w.n_out;
            for (int64_t r = rt; r < rt_end; r++) vec_dot(w.n_in, yt + r, wd + r * w.row_bytes, a);
        }
    }
}

} // namespace

void cpu_matmul(thread_pool & pool, const weight_view & w, const float * x, float * y, int64_t n_tokens,
                matmul_scratch & scratch) {
    const quant_traits_cpu * tc = quant_traits_cpu_get(w.type);
    const quant_traits * tw = quant_traits_get(w.type);
    assert(tc && tw && "note: call only for types with CPU kernels (quant_traits_cpu_get != nullptr)");
    assert(w.n_in % tw->block_size == 0 && w.row_bytes >= quant_row_bytes(tw, w.n_in));
    (void) tw;
    if (n_tokens <= 0 || w.n_out <= 0) return;

    const quant_traits * ta = quant_traits_get(tc->vec_dot_type);
    const size_t act_row_bytes = quant_row_bytes(ta, w.n_in);
    const uint8_t * act;
    if (tc->vec_dot_type == GGML_TYPE_F32) {
        act = (const uint8_t *) x;
    } else {
        const size_t need = act_row_bytes * (size_t) n_tokens;
        if (scratch.act.size() < need) scratch.act.resize(need);
        uint8_t * dst = scratch.act.data();
        const from_float_fn from_float = tc->from_float;
        const int64_t n_in = w.n_in;
        if (n_tokens >= kMinTokensParallelConvert && pool.size() > 1) {
            // capture one pointer so std::function stores the lambda inline (no allocation per call)
            struct { const float * x; uint8_t * dst; size_t act_row_bytes; int64_t n_in, n_tokens; from_float_fn f; } job =
                {x, dst, act_row_bytes, n_in, n_tokens, from_float};
            auto * j = &job;
            pool.run([j](int ith, int nth) {
                int64_t t0, t1;
                split_range(j->n_tokens, ith, nth, &t0, &t1);
                for (int64_t t = t0; t < t1; t++) j->f(j->x + t * j->n_in, j->dst + t * j->act_row_bytes, j->n_in);
            });
        } else {
            for (int64_t t = 0; t < n_tokens; t++) from_float(x + t * n_in, dst + t * act_row_bytes, n_in);
        }
        act = dst;
    }

    const vec_dot_fn vec_dot = tc->vec_dot;
    const gemm_fn gemm = tc->gemm;
    // prefill with a packed kernel: the activations into its layout, a group of GEMM_NT tokens at a time
    const gemm_pack_kernel * pk = n_tokens > 1 ? tc->packed : nullptr;
    const uint8_t * packed = nullptr;
    size_t group_bytes = 0;
    if (pk) {
        group_bytes = (pk->bytes(w.n_in) + 63) / 64 * 64;
        const int64_t n_groups = (n_tokens + GEMM_NT - 1) / GEMM_NT;
        const size_t need = group_bytes * (size_t) n_groups + 64;
        if (scratch.packed.size() < need) scratch.packed.resize(need);
        uint8_t * base = scratch.packed.data() + (64 - (uintptr_t) scratch.packed.data() % 64) % 64;
        struct { const gemm_pack_kernel * pk; const uint8_t * act; size_t act_row_bytes, group_bytes; uint8_t * dst; int64_t n_in, n_tokens, n_groups; } job =
            {pk, act, act_row_bytes, group_bytes, base, w.n_in, n_tokens, n_groups};
        auto * j = &job;
        auto pack = [j](int ith, int nth) {
            int64_t g0, g1;
            split_range(j->n_groups, ith, nth, &g0, &g1);
            for (int64_t g = g0; g < g1; g++)
                j->pk->pack(j->n_in, j->act + g * GEMM_NT * j->act_row_bytes, j->act_row_bytes, (int) std::min<int64_t>(GEMM_NT, j->n_tokens - g * GEMM_NT),
                            j->dst + g * j->group_bytes);
        };
        if (n_groups > 1 && pool.size() > 1) pool.run(pack);
        else pack(0, 1);
        packed = base;
    }
    if (pool.size() == 1) {
        matmul_rows(w, vec_dot, gemm, act, act_row_bytes, y, n_tokens, 0, w.n_out, pk, packed, group_bytes);
        return;
    }
    // Rows are handed out in chunks from a shared counter (about 8 per thread, whole 16-row groups), not as one
    // fixed share each: on a shared machine a thread that gets descheduled no longer holds the others at the
    // barrier. Every row is computed the same way whatever its chunk (tile shapes are bit-exact, see gemm), so the
    // results do not depend on the split.
    const int nth_all = pool.size();
    const int64_t chunk = std::max<int64_t>(16, (w.n_out + 8 * nth_all - 1) / (8 * nth_all) + 15) / 16 * 16;
    std::atomic<int64_t> next{0};
    struct { const weight_view * w; vec_dot_fn vec_dot; gemm_fn gemm; const uint8_t * act; size_t act_row_bytes; float * y; int64_t n_tokens;
             int64_t chunk; std::atomic<int64_t> * next; const gemm_pack_kernel * pk; const uint8_t * packed; size_t group_bytes; } job =
        {&w, vec_dot, gemm, act, act_row_bytes, y, n_tokens, chunk, &next, pk, packed, group_bytes};
    auto * j = &job;
    pool.run([j](int, int) {
        for (;;) {
            const int64_t r0 = j->next->fetch_add(j->chunk, std::memory_order_relaxed);
            if (r0 >= j->w->n_out) break;
            const int64_t r1 = std::min(j->w->n_out, r0 + j->chunk);
            matmul_rows(*j->w, j->vec_dot, j->gemm, j->act, j->act_row_bytes, j->y, j->n_tokens, r0, r1, j->pk, j->packed, j->group_bytes);
        }
    });
}

void cpu_matmul_ref(const weight_view & w, const float * x, float * y, int64_t n_tokens) {
    const quant_traits_cpu * tc = quant_traits_cpu_get(w.type);
    assert(tc && "note: call only for types with CPU kernels");
    const quant_traits * ta = quant_traits_get(tc->vec_dot_type);
    const size_t act_row_bytes = quant_row_bytes(ta, w.n_in);
    std::vector<uint8_t> act(act_row_bytes);
    const uint8_t * wd = (const uint8_t *) w.data;
    for (int64_t t = 0; t < n_tokens; t++) {
        quant_act_from_float_ref(tc->vec_dot_type)(x + t * w.n_in, act.data(), w.n_in);
        for (int64_t r = 0; r < w.n_out; r++) tc->vec_dot_ref(w.n_in, y + t * w.n_out + r, wd + r * w.row_bytes, act.data());
    }
}

void weight_row_to_float(const weight_view & w, int64_t row, float * dst) {
    const quant_traits * tw = quant_traits_get(w.type);
    assert(tw && row >= 0 && row < w.n_out);
    tw->to_float((const uint8_t *) w.data + row * w.row_bytes, dst, w.n_in);
}

} // namespace core
