// Per-head paged KV cache: retention semantics (a STREAM head holds exactly its S sinks + R recent),
// memory report = ALGORITHMS.md §1.8 formula, rewind exactness, page pool reuse, and resident memory
// falling by what the report says when pages are freed.
#include <cmath>
#include <cstdio>
#include <functional>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <unistd.h>

#include "kv/kv-cache.h"
#include "kv/kv-ring.h"
#include "kv/kv-state.h"
#include "test-harness.h"

using namespace core;

namespace {

struct fixture {
    int n_layer = 3, n_head_kv = 4, D = 64, DV = 64;
    std::shared_ptr<page_pool> pool = std::make_shared<page_pool>(kv_page_bytes(64, 64));
    std::unique_ptr<kv_cache> make(std::vector<uint8_t> ret, int S, int R, int n_ctx = 4096) {
        kv_cache_config c;
        c.n_layer = n_layer;
        c.n_head_kv = n_head_kv;
        c.head_dim = D;
        c.head_dim_v = DV;
        c.n_ctx = n_ctx;
        c.retention = std::move(ret);
        c.stream_sinks = S;
        c.stream_recent = R;
        return std::make_unique<kv_cache>(c, pool);
    }
    // feeds n tokens (one decode step each, or one chunk) through every layer with retain(), like forward_chunk
    void feed(kv_cache & kv, int n, int chunk) {
        std::vector<float> k((size_t) chunk * n_head_kv * D, 0.5f), v((size_t) chunk * n_head_kv * DV, -0.5f);
        std::vector<int32_t> pos((size_t) chunk);
        for (int done = 0; done < n; done += chunk) {
            const int m = std::min(chunk, n - done);
            for (int t = 0; t < m; t++) pos[t] = kv.n_logical() + t;
            status s = kv.reserve(m);
            TC_CHECK(s.ok()) << s.message;
            for (int il = 0; il < n_layer; il++) {
                kv.append(il, m, k.data(), v.data(), pos.data());
                kv.retain(il);
            }
        }
    }
};

size_t rss_bytes() {
    std::ifstream f("/proc/self/statm");
    size_t total = 0, resident = 0;
    f >> total >> resident;
    return resident * (size_t) sysconf(_SC_PAGESIZE);
}

} // namespace

TC_TEST("kv: a STREAM head holds exactly its S sinks + R recent tokens after every step") {
    fixture fx;
    const int S = 4, R = 12;
    std::vector<uint8_t> ret(fx.n_layer * fx.n_head_kv, KV_RETAIN_FULL);
    ret[1] = ret[6] = KV_RETAIN_STREAM;
    auto kv = fx.make(ret, S, R);
    for (int step = 1; step <= 100; step++) {
        fx.feed(*kv, 1, 1);
        const kv_head_view h = kv->head(0, 1);
        TC_CHECK(h.n == std::min(step, S + R)) << "step " << step << ": holds " << h.n;
        TC_CHECK(kv->head(0, 0).n == step);
        if (step > S + R) {
            std::vector<int32_t> pos;
            for (int s = 0; s < h.n_seg; s++) for (int j = 0; j < h.seg[s].n; j++) pos.push_back(h.seg[s].pos[j]);
            bool ok = true;
            for (int j = 0; j < S; j++) ok &= pos[j] == j;
            for (int j = 0; j < R; j++) ok &= pos[S + j] == step - R + j;
            TC_CHECK(ok) << "step " << step << ": wrong retained positions";
        }
    }
    // a long prefill chunk is attended in full, then trimmed to the window
    auto kv2 = fx.make(ret, S, R);
    fx.feed(*kv2, 300, 300);
    TC_CHECK(kv2->head(1, 2).n == S + R && kv2->head(0, 0).n == 300);
}

TC_TEST("kv: reported bytes equal the §1.8 formula 4D·[N_full·n + N_stream·min(n, S+R)]") {
    fixture fx;
    const int S = 16, R = 64;
    for (int n_stream : {0, 3, 6, 12}) {
        std::vector<uint8_t> ret(fx.n_layer * fx.n_head_kv, KV_RETAIN_FULL);
        for (int i = 0; i < n_stream; i++) ret[(size_t) (i * 5) % ret.size()] = KV_RETAIN_STREAM;
        int n_s = 0;
        for (uint8_t r : ret) n_s += r == KV_RETAIN_STREAM;
        const int n_full = (int) ret.size() - n_s;
        auto kv = fx.make(ret, S, R);
        int n = 0;
        for (int target : {10, 80, 81, 200, 1000}) {
            fx.feed(*kv, target - n, 64);
            n = target;
            const kv_memory_report m = kv->memory(true);
            const uint64_t formula = (uint64_t) 4 * fx.D * ((uint64_t) n_full * n + (uint64_t) n_s * std::min(n, S + R));
            TC_CHECK(m.key_bytes + m.value_bytes == formula) << "n_stream " << n_s << " n " << n << ": " << m.key_bytes + m.value_bytes << " vs " << formula;
            TC_CHECK(m.position_bytes == 4 * (uint64_t) m.resident_tokens);
            TC_CHECK(m.bytes_allocated >= m.bytes_used - m.metadata_bytes);
            uint64_t sum = 0;
            for (const auto & h : m.heads) sum += h.resident;
            TC_CHECK((int64_t) sum == m.resident_tokens && m.logical_tokens == n);
        }
    }
}

TC_TEST("kv: rewinding a cache whose stream heads dropped tokens keeps only what a fresh run would") {
    fixture fx;
    const int S = 4, R = 8;
    std::vector<uint8_t> ret(fx.n_layer * fx.n_head_kv, KV_RETAIN_FULL);
    auto full = fx.make(ret, S, R);
    fx.feed(*full, 50, 7);
    TC_CHECK(full->remove_from(30) == 30 && full->head(2, 3).n == 30);
    ret[0] = KV_RETAIN_STREAM;
    auto mixed = fx.make(ret, S, R);
    fx.feed(*mixed, 50, 7);
    TC_CHECK(mixed->remove_from(60) == 50);             // nothing to drop
    TC_CHECK(mixed->remove_from(30) == S);              // tokens 30-R..30 are gone from the stream head
    TC_CHECK(mixed->n_logical() == S && mixed->head(0, 1).n == S && mixed->head(0, 0).n == S);
}

TC_TEST("kv: pages go back to the pool and are reused; RSS falls by what the report says") {
    fixture fx;
    fx.D = fx.DV = 128;
    fx.pool = std::make_shared<page_pool>(kv_page_bytes(128, 128), /*max_free_resident=*/4);
    std::vector<uint8_t> ret(fx.n_layer * fx.n_head_kv, KV_RETAIN_STREAM);
    ret[0] = KV_RETAIN_FULL;
    const int S = 16, R = 64;
    const size_t rss0 = rss_bytes();
    {
        auto kv = fx.make(std::vector<uint8_t>(ret.size(), KV_RETAIN_FULL), S, R, 8192);
        fx.feed(*kv, 4096, 512);
        const kv_memory_report full = kv->memory(false);
        const size_t rss_full = rss_bytes();
        TC_CHECK(rss_full - rss0 >= full.key_bytes + full.value_bytes - (2u << 20)) << "pages not resident? " << (rss_full - rss0);
        kv->clear();
        const size_t rss_cleared = rss_bytes();
        const kv_memory_report after = kv->memory(false);
        // everything but the pool slack (4 pages) returned to the OS
        const double freed = (double) rss_full - (double) rss_cleared;
        const double expect = (double) full.bytes_allocated - (double) after.bytes_allocated - (double) after.pool_slack_bytes;
        std::printf("    RSS freed %.1f MiB, report says %.1f MiB (pool slack %.2f MiB)\n", freed / 1048576, expect / 1048576, after.pool_slack_bytes / 1048576.0);
        TC_CHECK(freed > 0.95 * expect) << "freed " << freed << " expected " << expect;
    }
    const page_pool_stats st = fx.pool->stats();
    TC_CHECK(st.pages_in_use == 0);
    const size_t slabs = st.slabs;
    auto again = fx.make(ret, S, R, 8192);
    fx.feed(*again, 4096, 512);
    TC_CHECK(fx.pool->stats().slabs == slabs) << "pages were not reused";
    // with one FULL head and the rest streaming, the sequence holds far less
    const kv_memory_report m = again->memory(true);
    TC_CHECK(m.heads[0].resident == 4096 && m.heads[1].resident == S + R && m.heads[1].budget == S + R && m.heads[0].budget == -1);
}

// ---- the device cache's bookkeeping (kv-ring.h) against kv_cache --------------------------------------
// The same tokens, chunks, sinks and rewinds go through a kv_cache and a kv_ring_layer per layer. After
// every chunk each head must hold the same positions, quantize the same ones in the same order, and a
// simulated device (slot payloads written by append and moved only by the ops) must hold in every slot in
// view the token the bookkeeping says — so no ring wrap ever overwrote a token still needed.
namespace {
struct ring_sim {
    std::vector<kv_ring_layer> layers;
    std::vector<std::vector<std::vector<int32_t>>> data;  // [layer][head][slot] the position whose payload the slot holds
    std::vector<std::vector<std::vector<int32_t>>> coded;  // [layer][head] positions of the payloads quantized, in order
    // EVICT heads: the device's lazy statistics (last, mri) per slot and per quantized token, moved by the ops only
    using stat = std::pair<int32_t, int32_t>;
    std::vector<std::vector<std::vector<stat>>> st_f, st_c;
    void apply(int il, const std::vector<kv_ring_ops> & ops) {
        for (size_t h = 0; h < ops.size(); h++) {
            auto & d = data[(size_t) il][h];
            auto & cd = coded[(size_t) il][h];
            auto & sf = st_f[(size_t) il][h];
            auto & sc = st_c[(size_t) il][h];
            const kv_ring_ops & op = ops[h];
            if (op.cgather) {
                std::vector<int32_t> c2;
                std::vector<stat> s2;
                for (int32_t i : op.ckeep) { c2.push_back(cd[(size_t) i]); s2.push_back(sc[(size_t) i]); }
                cd.swap(c2);
                sc.swap(s2);
                sc.resize((size_t) layers[(size_t) il].coded_cap());
            }
            const size_t base = op.enc_base >= 0 ? (size_t) op.enc_base : cd.size();
            for (size_t i = 0; i < op.enc_slot.size(); i++) {
                TC_CHECK(d[(size_t) op.enc_slot[i]] == op.enc_pos[i]) << "layer " << il << " head " << h << ": quantizing slot " << op.enc_slot[i]
                                                                     << " expects position " << op.enc_pos[i] << ", holds " << d[(size_t) op.enc_slot[i]];
                const size_t ci = base + i;
                TC_CHECK(ci == cd.size()) << "layer " << il << " head " << h << ": quantized token " << ci << " is not appended";
                cd.push_back(d[(size_t) op.enc_slot[i]]);
                if (ci < sc.size()) sc[ci] = sf[(size_t) op.enc_slot[i]];
            }
            std::vector<int32_t> md;
            std::vector<stat> ms;
            for (int32_t s : op.move_src) { md.push_back(d[(size_t) s]); ms.push_back(sf[(size_t) s]); }  // all read first
            for (size_t i = 0; i < op.move_dst.size(); i++) { d[(size_t) op.move_dst[i]] = md[i]; sf[(size_t) op.move_dst[i]] = ms[i]; }
            for (size_t i = 0; i < op.copy_src.size(); i++) d[(size_t) op.copy_dst[i]] = d[(size_t) op.copy_src[i]];
            (void) op.clear_slot;  // a clear empties the position table only: the payload stays (a rollback relies on it)
        }
    }
};

float ring_prob(int32_t pos, int32_t step);
float ring_psum(int32_t pos, int32_t step, int il, int h);

// A layer's books as a state file would hold them (kv_ring_layer::save_books, then the checksum), in memory.
std::vector<uint8_t> ring_books_bytes(const kv_ring_layer & L) {
    char * buf = nullptr;
    size_t sz = 0;
    std::FILE * f = open_memstream(&buf, &sz);
    state_writer w(f);
    L.save_books(w);
    const status st = w.finish();
    std::fclose(f);
    std::vector<uint8_t> out(buf, buf + sz);
    std::free(buf);
    TC_CHECK(st.ok()) << st.message;
    return out;
}

// Reads books into L (a layer of the same configuration) from such bytes: the reader's verdict and error.
bool ring_books_read(const std::vector<uint8_t> & b, kv_ring_layer & L, int32_t n, std::string * err) {
    std::vector<uint8_t> copy(b);
    std::FILE * f = fmemopen(copy.data(), copy.size(), "rb");
    state_reader r(f, copy.size());
    const bool ok = L.read_books(r, n) && r.finish().ok();
    if (err) *err = r.error();
    std::fclose(f);
    return ok;
}

void ring_vs_cache(const char * label, kv_cache_config c, const std::vector<std::pair<int, int>> & script /* (chunk, 0) or (-1, rewind to) */,
                   uint32_t seed, int64_t min_evictions = 0) {
    auto pool = std::make_shared<page_pool>(kv_page_bytes(c.head_dim, c.head_dim_v));
    kv_cache kv(c, pool);
    kv_ring_config rc;
    status st = kv_ring_config_from(c, 512, &rc);
    TC_CHECK(st.ok()) << label << ": " << st.message;
    if (!st.ok()) return;
    ring_sim sim;
    for (int il = 0; il < c.n_layer; il++) {
        sim.layers.emplace_back(rc, il);
        sim.data.emplace_back();
        sim.coded.emplace_back((size_t) c.n_head_kv);
        for (int h = 0; h < c.n_head_kv; h++) sim.data.back().emplace_back((size_t) sim.layers.back().slots(h), KV_RING_EMPTY);
        sim.st_f.emplace_back();
        sim.st_c.emplace_back();
        for (int h = 0; h < c.n_head_kv; h++) {
            sim.st_f.back().emplace_back((size_t) sim.layers.back().slots(h), ring_sim::stat{0, 0});
            sim.st_c.back().emplace_back((size_t) sim.layers.back().coded_cap(), ring_sim::stat{0, 0});
        }
    }
    int32_t step = 0, prompt = 0;  // kv_cache's step_ and prompt_
    const kv_policy * policy = kv_policy_get(c.policy.kind);
    const bool reorders = policy && policy->holds_budget && !policy->position_only;
    int64_t n_evictions = 0, n_one = 0;  // due heads; single-token evictions run by the (simulated) device
    std::mt19937 rng(seed);
    std::normal_distribution<float> nd;
    std::vector<kv_ring_ops> ops;
    int n_checks = 0;
    int n_books = 0;
    auto check_layer = [&](int il, int32_t n_tok) {
        const int H = c.n_head_kv;
        kv_ring_layer & L = sim.layers[(size_t) il];
        if (n_checks % 3 == 0) {  // every state the steps reach passes the state reader's checks and reads back as it was
            const std::vector<uint8_t> b = ring_books_bytes(L);
            kv_ring_layer back(rc, il);
            std::string err;
            TC_CHECK(ring_books_read(b, back, n_tok, &err) && ring_books_bytes(back) == b) << label << ": layer " << il << " after " << n_tok
                                                                                          << " tokens: the books do not read back (" << err << ")";
            for (int h = 0; h < H; h++) TC_CHECK(back.held_positions(h) == L.held_positions(h) && back.pages_in_use(h) == L.pages_in_use(h));
            n_books++;
        }
        for (int h = 0; h < H; h++) {
            const std::vector<int32_t> want = kv.held_positions(il, h), got = L.held_positions(h);
            TC_CHECK(got == want) << label << ": layer " << il << " head " << h << " after " << n_tok << " tokens: holds " << got.size()
                                  << " positions, kv_cache " << want.size();
            const kv_head_view hv = kv.head(il, h);
            std::vector<int32_t> cpos;
            if (hv.coded) for (int32_t j = 0; j < hv.coded->n; j++) cpos.push_back(hv.coded->pos_at(j));
            // a device-side single eviction moves the head's last quantized token into the hole: the same tokens,
            // quantized in the same order until then (kv_cache keeps its coded order)
            std::vector<int32_t> ring_c = L.coded_pos(h);
            if (reorders) {
                std::sort(cpos.begin(), cpos.end());
                std::sort(ring_c.begin(), ring_c.end());
            }
            TC_CHECK(cpos == ring_c && L.coded_pos(h) == sim.coded[(size_t) il][(size_t) h])
                << label << ": layer " << il << " head " << h << ": quantized " << L.coded_pos(h).size() << " (device " << sim.coded[(size_t) il][(size_t) h].size()
                << ") vs kv_cache " << cpos.size();
            TC_CHECK(L.n_f16(h) == hv.n) << label << ": f16 count " << L.n_f16(h) << " vs " << hv.n;
            const auto & sp = L.slot_pos(h);
            bool same = true;
            for (size_t s = 0; s < sp.size(); s++) {
                const bool view = sp[s] != KV_RING_EMPTY && ((int32_t) s < L.fix_cap(h) || sp[s] >= L.lo(h));
                if (view) same &= sim.data[(size_t) il][(size_t) h][s] == sp[s];
            }
            TC_CHECK(same) << label << ": layer " << il << " head " << h << ": a slot in view holds another token's payload";
            TC_CHECK(L.pages_in_use(h) * KV_PAGE_TOKENS <= L.slots(h));
            n_checks++;
        }
    };
    for (const auto & [chunk, target] : script) {
        if (chunk == 1 && target == -2) {  // a decode step that fails, undone, before the real one
            for (auto & L : sim.layers) L.begin();
            const int32_t c0 = kv.n_logical();
            for (auto & L : sim.layers) {
                TC_CHECK(L.append(c0, 1).ok());
                L.retain(c0 + 1, ops);
            }
            std::vector<kv_ring_layer::slot_entry> restored;
            for (int il = 0; il < c.n_layer; il++) {
                sim.layers[(size_t) il].rollback(restored);
                check_layer(il, c0);
            }
        }
        if (chunk == -2) {  // a call that fails after `target` tokens went through every layer: rolled back
            const int32_t c0 = kv.n_logical();
            for (auto & L : sim.layers) L.begin();
            for (int il = 0; il < c.n_layer; il++) {
                kv_ring_layer & L = sim.layers[(size_t) il];
                if (target > 1 && L.wants_sinks()) L.add_sinks({c0 + target - 1}, {1e6f});
                std::vector<int32_t> rcb;
                for (int h = 0; h < c.n_head_kv; h++) rcb.push_back(L.rc(h));
                TC_CHECK(L.append(c0, target).ok());
                for (int h = 0; h < c.n_head_kv; h++)
                    for (int t = 0; t < target; t++)
                        sim.data[(size_t) il][(size_t) h][(size_t) kv_ring_slot(c0, t, L.fix_below(h), rcb[(size_t) h], L.fix_cap(h), L.ring_cap(h))] = c0 + t;
                L.retain(c0 + target, ops);
                sim.apply(il, ops);
            }
            std::vector<kv_ring_layer::slot_entry> restored;
            for (int il = 0; il < c.n_layer; il++) {
                sim.layers[(size_t) il].rollback(restored);
                for (int h = 0; h < c.n_head_kv; h++) sim.coded[(size_t) il][(size_t) h].resize((size_t) sim.layers[(size_t) il].n_coded(h));
                TC_CHECK(sim.layers[(size_t) il].sinks() == kv.sinks(il)) << label << ": rollback: sinks differ";
                check_layer(il, c0);
            }
            continue;
        }
        if (chunk < 0) {  // rewind
            const int32_t n_before = kv.n_logical();
            const int32_t kept = kv.remove_from(target);
            if (target >= n_before) { TC_CHECK(kept == n_before); continue; }  // nothing to drop (forward_session's early return)
            int32_t keep = target;
            for (auto & L : sim.layers) keep = L.limit_stream(keep);
            for (auto & L : sim.layers) keep = L.limit_coded(keep);
            TC_CHECK(keep == kept) << label << ": rewind to " << target << ": kv_cache keeps " << kept << ", the ring " << keep;
            prompt = std::min(prompt, kept);  // (forward_session::truncate: the counters of a fresh evaluation)
            step = kept - prompt;
            for (int il = 0; il < c.n_layer; il++) {
                sim.layers[(size_t) il].truncate(kept, ops);
                sim.apply(il, ops);
                for (int h = 0; h < c.n_head_kv; h++) sim.coded[(size_t) il][(size_t) h].resize((size_t) sim.layers[(size_t) il].n_coded(h));
            }
        } else {
            const int32_t c0 = kv.n_logical();
            const int D = c.head_dim, DV = c.head_dim_v, H = c.n_head_kv;
            if (chunk == 1 && c0 > 0) step++;
            else { step = 0; prompt = c0 + chunk; }
            std::vector<float> k((size_t) chunk * H * D), v((size_t) chunk * H * DV);
            std::vector<int32_t> pos((size_t) chunk);
            for (int t = 0; t < chunk; t++) pos[(size_t) t] = c0 + t;
            TC_CHECK(kv.reserve(chunk).ok());
            for (int il = 0; il < c.n_layer; il++) {
                if (chunk > 1 && kv.wants_sinks()) {  // a few random sink candidates per chunk, as forward_chunk reports them
                    std::vector<int32_t> sp;
                    std::vector<float> mag;
                    for (int i = 0; i < 20; i++) { sp.push_back(c0 + (int32_t) (rng() % (uint32_t) chunk)); mag.push_back(std::fabs(nd(rng)) * 10.0f); }
                    kv.add_sinks(il, sp, mag);
                    sim.layers[(size_t) il].add_sinks(sp, mag);
                    TC_CHECK(kv.sinks(il) == sim.layers[(size_t) il].sinks()) << label << ": sink sets differ";
                }
                for (float & x : k) x = nd(rng);
                for (float & x : v) x = nd(rng);
                kv.append(il, chunk, k.data(), v.data(), pos.data());
                kv_ring_layer & L = sim.layers[(size_t) il];
                L.begin();  // a journal per chunk, as forward_session::eval keeps it
                std::vector<int32_t> rc_before((size_t) H);
                for (int h = 0; h < H; h++) rc_before[(size_t) h] = L.rc(h);
                st = L.append(c0, chunk);
                TC_CHECK(st.ok()) << label << ": " << st.message;
                for (int h = 0; h < H; h++)  // the device append: the same slot function; new statistics (lazy_append)
                    for (int t = 0; t < chunk; t++) {
                        const size_t sl = (size_t) kv_ring_slot(c0, t, L.fix_below(h), rc_before[(size_t) h], L.fix_cap(h), L.ring_cap(h));
                        sim.data[(size_t) il][(size_t) h][sl] = c0 + t;
                        sim.st_f[(size_t) il][(size_t) h][sl] = {step > 0 ? step - 1 : 0, 0};
                    }
                // what attention sees this chunk (before retain) must be what kv_cache attends
                for (int h = 0; h < H; h++) {
                    TC_CHECK(L.held_positions(h) == kv.held_positions(il, h)) << label << ": layer " << il << " head " << h << " at " << c0 << "+" << chunk
                                                                              << ": attention sets differ";
                }
                const kv_policy_kind kind = c.policy.kind;
                if (L.has_evict() && !L.stats_free() && (step > 0 || kind != KV_POLICY_LAZY)) {
                    // this step's attention probabilities (the chunk's last query), a function of (position, step,
                    // layer, head): kv_cache gets them in its [coded | f16] buffers, the simulated device observes them
                    // over its slots as the device's observe does (lazy_observe, h2o's sum, tova's value or layer mean)
                    const float inv = 1.0f / (float) c.n_head;
                    auto layer_mean = [&](int32_t p) {  // kv_cache::retain's expression, head by head
                        float m = 0.0f;
                        for (int hh = 0; hh < H; hh++) m += ring_psum(p, step, il, hh) * inv;
                        return m;
                    };
                    for (int h = 0; h < H; h++) {
                        if (kv.retention(il, h) != KV_RETAIN_EVICT) continue;
                        const kv_head_view hv = kv.head(il, h);
                        float * pm = kv.probs_max(il, h), * ps = kv.probs_sum(il, h);
                        std::vector<int32_t> cpu_pos;
                        if (hv.coded) for (int32_t q = 0; q < hv.coded->n; q++) cpu_pos.push_back(hv.coded->pos_at(q));
                        for (int32_t sg = 0; sg < hv.n_seg; sg++)
                            for (int32_t i = 0; i < hv.seg[sg].n; i++) cpu_pos.push_back(hv.seg[sg].pos[i]);
                        for (size_t j = 0; j < cpu_pos.size(); j++) {
                            pm[j] = ring_prob(cpu_pos[j], step);
                            ps[j] = ring_psum(cpu_pos[j], step, il, h);
                        }
                        auto observe = [&](ring_sim::stat & x, int32_t p) {
                            float f;
                            std::memcpy(&f, &x.first, 4);
                            if (kind == KV_POLICY_LAZY) {
                                if (ring_prob(p, step) >= c.policy.alpha) { x.second = std::max(x.second, step - x.first); x.first = step; }
                                return;
                            }
                            if (kind == KV_POLICY_H2O) f += ring_psum(p, step, il, h);
                            else f = L.layer_mean() ? layer_mean(p) : ring_psum(p, step, il, h);
                            std::memcpy(&x.first, &f, 4);
                        };
                        for (int32_t q = 0; q < L.n_coded(h); q++) observe(sim.st_c[(size_t) il][(size_t) h][(size_t) q], L.coded_pos(h)[(size_t) q]);
                        for (int32_t sl = 0; sl < L.rc(h); sl++) observe(sim.st_f[(size_t) il][(size_t) h][(size_t) sl], L.slot_pos(h)[(size_t) sl]);
                    }
                }
                kv.retain(il);
                L.retain(c0 + chunk, ops, step, prompt);
                sim.apply(il, ops);
                // due EVICT heads: one token to drop is chosen and removed on the device (kv_ring_evict_one_ref, the
                // head's last token moved into the hole); otherwise the statistics come down, the host selects, the
                // device compacts (and flushes)
                std::vector<kv_ring_ops> evops((size_t) H);
                bool any = false;
                const kv_policy * pol = kv_policy_get(kind);
                for (int h = 0; h < H; h++) {
                    if (L.stats_free() || !L.due(h, step, prompt)) continue;  // (streaming: retain evicted)
                    std::vector<int32_t> pa, raw, keep;
                    L.evict_tokens(h, pa);
                    auto & scs = sim.st_c[(size_t) il][(size_t) h];
                    auto & sfs = sim.st_f[(size_t) il][(size_t) h];
                    const int32_t nq = L.n_coded(h), rc_h = L.rc(h);
                    for (int32_t q = 0; q < nq; q++) { raw.push_back(scs[(size_t) q].first); raw.push_back(scs[(size_t) q].second); }
                    for (int32_t sl = 0; sl < rc_h; sl++) { raw.push_back(sfs[(size_t) sl].first); raw.push_back(sfs[(size_t) sl].second); }
                    n_evictions++;
                    any = true;
                    if (L.evicts_one(h, step, prompt)) {
                        std::vector<float> score(pa.size());
                        for (size_t j = 0; j < pa.size(); j++) std::memcpy(&score[j], &raw[2 * j], 4);
                        const int32_t j = kv_ring_evict_one_ref(pa.data(), score.data(), (int32_t) pa.size(), pol->budget(step, prompt, c.policy),
                                                                pol->recent(c.policy), c.policy.protect, L.sinks().data(), (int32_t) L.sinks().size());
                        if (j != -2) {
                            n_one += j >= 0;
                            auto & cd = sim.coded[(size_t) il][(size_t) h];
                            auto & d = sim.data[(size_t) il][(size_t) h];
                            if (j >= 0 && j < nq) {  // the device: the last quantized token into the hole
                                cd[(size_t) j] = cd.back();
                                cd.pop_back();
                                scs[(size_t) j] = scs[(size_t) nq - 1];
                            } else if (j >= nq) {  // the last f16 slot's token into the hole, its position emptied
                                d[(size_t) (j - nq)] = d[(size_t) rc_h - 1];
                                sfs[(size_t) (j - nq)] = sfs[(size_t) rc_h - 1];
                                d[(size_t) rc_h - 1] = KV_RING_EMPTY;
                            }
                            L.evict_one(h, j, evops[(size_t) h]);
                            continue;
                        }
                    }
                    L.select(pa, raw, step, prompt, keep);
                    L.evict(h, keep, evops[(size_t) h]);
                }
                if (any) sim.apply(il, evops);
                L.commit();
                check_layer(il, c0 + chunk);
            }
        }
    }
    TC_CHECK(n_checks > 0 && n_books > 0);
    int64_t own = 0;  // evictions the bookkeeping ran in retain (stats-free policies)
    for (const auto & L : sim.layers) own += L.compactions();
    if (min_evictions > 0) TC_CHECK(n_evictions + own >= min_evictions) << label << ": " << n_evictions + own << " evictions ran";
    const kv_policy * pol = kv_policy_get(c.policy.kind);
    if (min_evictions > 0 && pol->holds_budget && !pol->position_only)
        TC_CHECK(n_one >= min_evictions / 2) << label << ": the device's single-token eviction ran " << n_one << " times of " << n_evictions;
    TC_CHECK(kv.memory(false).compactions == n_evictions + own) << label << ": kv_cache ran " << kv.memory(false).compactions << " evictions, the ring "
                                                                 << n_evictions + own;
    if (std::find(c.retention.begin(), c.retention.end(), (uint8_t) KV_RETAIN_EVICT) == c.retention.end()) {  // stream heads' trims, counted alike
        int64_t trimmed = 0;
        for (const auto & L : sim.layers) trimmed += L.evicted();
        TC_CHECK(trimmed == kv.memory(false).evicted_tokens) << label << ": the ring counts " << trimmed << " trimmed tokens, kv_cache "
                                                                             << kv.memory(false).evicted_tokens;
    }
}

// A deterministic stand-in for a step's attention probabilities: positions ≡ 0 mod 7 are never attended,
// the others now and then (about alpha = 1e-4 apart), so recurrence intervals differ from token to token.
float ring_prob(int32_t pos, int32_t step) {
    const uint32_t u = ((uint32_t) pos * 2654435761u ^ (uint32_t) step * 40503u) >> 7;
    return u % 1000 < (uint32_t) (pos % 7) * 120 ? 2e-4f : 5e-5f;
}

// The group-summed probability of a token (h2o, tova): multiples of 1/64, so that scores tie now and then
// (kv_select_keep's order decides), varying with the layer and head.
float ring_psum(int32_t pos, int32_t step, int il, int h) {
    const uint32_t u = ((uint32_t) pos * 2246822519u ^ (uint32_t) step * 3266489917u ^ (uint32_t) (il * 8 + h) * 668265263u) >> 9;
    return (float) (u % 40) / 64.0f;
}

kv_cache_config ring_cfg(kv_codec_type codec, bool sinks, bool post_rope) {
    kv_cache_config c;
    c.n_layer = 2;
    c.n_head_kv = 4;
    c.n_head = 8;
    c.head_dim = c.head_dim_v = 32;
    c.n_ctx = 4096;
    c.retention.assign(8, KV_RETAIN_FULL);
    c.retention[1] = c.retention[6] = KV_RETAIN_STREAM;
    c.stream_sinks = 4;
    c.stream_recent = 24;
    c.storage.key = c.storage.value = codec;
    c.storage.protect_sinks = sinks;
    c.storage.post_rope = post_rope;
    c.storage.n_rot = 32;
    c.storage.rope = ROPE_STYLE_NEOX;
    return c;
}
} // namespace

TC_TEST("kv ring: the device cache's bookkeeping holds what kv_cache holds (f16, STREAM, rot2 ± sinks, KIVI, rewinds)") {
    // prefill in chunks (a long one that flushes hundreds at once), decode steps past several flushes and the
    // ring's wrap, rewinds that are exact and ones that fall back to the protected prefix, then more decoding
    std::vector<std::pair<int, int>> script = {{512, 0}, {512, 0}, {300, 0}};
    for (int i = 0; i < 700; i++) script.push_back({1, i % 97 == 0 ? -2 : 0});
    script.push_back({-2, 400});  // a failed prefill call, undone
    script.push_back({-1, 1400});  // inexact for coded heads: back to the protected prefix
    script.push_back({200, 0});
    for (int i = 0; i < 90; i++) script.push_back({1, 0});
    script.push_back({-1, 100000});  // nothing to drop
    script.push_back({-1, 250});
    for (int i = 0; i < 40; i++) script.push_back({1, 0});
    ring_vs_cache("f16 + stream", ring_cfg(KV_CODEC_F16, false, false), script, 1);
    ring_vs_cache("rot2 pre-RoPE + sinks", ring_cfg(KV_CODEC_ROT2, true, false), script, 2);
    ring_vs_cache("rot2 post-RoPE", ring_cfg(KV_CODEC_ROT2, false, true), script, 3);
    kv_cache_config all_full = ring_cfg(KV_CODEC_ROT4, true, false);
    all_full.retention.clear();
    ring_vs_cache("rot4 all FULL + sinks", all_full, script, 4);
    kv_cache_config grouped = ring_cfg(KV_CODEC_ROT2, true, false);  // keys rotated in pairs of heads where both are FULL
    grouped.storage.rot_group = 2;
    ring_vs_cache("rot2 pre-RoPE + sinks, rotation groups of 2", grouped, script, 7);
    ring_vs_cache("kivi2 + stream (32-token flushes)", ring_cfg(KV_CODEC_KIVI2, false, false), script, 5);
    // what the device cache refuses, with the reason
    kv_cache_config ev = ring_cfg(KV_CODEC_F16, false, false);
    ev.retention[0] = KV_RETAIN_EVICT;
    ev.policy.kind = KV_POLICY_SNAPKV;  // every policy runs on the device; one that scores from keys keeps its heads f16
    ev.storage.key = ev.storage.value = KV_CODEC_ROT2;
    kv_ring_config rc;
    status st = kv_ring_config_from(ev, 512, &rc);
    TC_CHECK(st.ok() && !rc.evict_coded) << st.message;
    kv_cache_config kivi = ring_cfg(KV_CODEC_KIVI2, false, false);  // KIVI: flushes whole key blocks (its group of tokens)
    TC_CHECK(kv_ring_config_from(kivi, 512, &rc).ok() && rc.flush == 32) << rc.flush;
    kivi.storage.group = 12;  // a key block that does not divide the flush
    st = kv_ring_config_from(kivi, 512, &rc);
    TC_CHECK(!st.ok() && st.message.find("KIVI") != std::string::npos) << st.message;
    kv_cache_config mixed = ring_cfg(KV_CODEC_ROT2, false, false);  // keys and values of different families: held
    mixed.storage.value = KV_CODEC_Q8;
    TC_CHECK(kv_ring_config_from(mixed, 512, &rc).ok());
    mixed.storage.value = KV_CODEC_F16;  // an f16 side beside a coded one
    TC_CHECK(kv_ring_config_from(mixed, 512, &rc).ok());
    mixed.storage.rot_group = 2;  // grouped key rotation
    TC_CHECK(kv_ring_config_from(mixed, 512, &rc).ok());
    TC_CHECK(kv_ring_config_from(ring_cfg(KV_CODEC_Q4, false, false), 512, &rc).ok());
}

namespace {
kv_cache_config ring_evict_cfg(kv_codec_type codec, bool sinks, float ratio) {
    kv_cache_config c = ring_cfg(codec, sinks, false);
    c.retention[0] = c.retention[3] = c.retention[5] = KV_RETAIN_EVICT;  // beside FULL and STREAM heads
    c.policy.kind = KV_POLICY_LAZY;
    c.policy.capacity = 96;
    c.policy.window = 32;
    c.policy.protect = 4;
    c.policy.ratio = ratio;
    c.policy.protect_sinks = sinks;
    c.storage.staging = 16;  // below the window: an evicting head keeps W in f16 (kv_cache::staging_of)
    return c;
}
} // namespace

TC_TEST("kv ring: evicting heads (lazy, streaming, h2o, tova) hold what kv_cache holds: statistics beside the tokens, selection, compaction, rewinds") {
    // a chunked prompt, decode steps exact to rewind (no eviction yet), then hundreds of steps with an eviction
    // every W = 32 and a flush every 16, rewinds after evictions (back to 0, as kv_cache), a new prompt
    std::vector<std::pair<int, int>> script = {{300, 0}, {212, 0}};
    for (int i = 0; i < 20; i++) script.push_back({1, 0});
    script.push_back({-1, 505});
    for (int i = 0; i < 600; i++) script.push_back({1, 0});
    script.push_back({-1, 700});
    script.push_back({150, 0});
    for (int i = 0; i < 200; i++) script.push_back({1, 0});
    ring_vs_cache("lazy f16 + stream", ring_evict_cfg(KV_CODEC_F16, false, 0.0f), script, 11, 40);
    ring_vs_cache("lazy rot2 + sinks + stream", ring_evict_cfg(KV_CODEC_ROT2, true, 0.0f), script, 12, 40);
    ring_vs_cache("lazy ratio 0.3 rot4", ring_evict_cfg(KV_CODEC_ROT4, false, 0.3f), script, 13, 10);
    kv_cache_config sf = ring_evict_cfg(KV_CODEC_F16, false, 0.0f), sr = ring_evict_cfg(KV_CODEC_ROT2, true, 0.0f);
    sf.policy.kind = sr.policy.kind = KV_POLICY_STREAMING;  // every step, prefill included, decided from positions
    ring_vs_cache("streaming f16 + stream", sf, script, 14, 500);
    ring_vs_cache("streaming rot2 + sinks", sr, script, 15, 500);
    // h2o and tova: every step once over budget; a decode step drops one token, chosen and removed on the device
    kv_cache_config hf = ring_evict_cfg(KV_CODEC_F16, false, 0.0f), hr = ring_evict_cfg(KV_CODEC_ROT2, true, 0.0f);
    hf.policy.kind = hr.policy.kind = KV_POLICY_H2O;
    ring_vs_cache("h2o f16 + stream", hf, script, 16, 500);
    ring_vs_cache("h2o rot2 + sinks + stream", hr, script, 17, 500);
    kv_cache_config tr = ring_evict_cfg(KV_CODEC_ROT2, false, 0.0f), tf = ring_evict_cfg(KV_CODEC_F16, false, 0.0f), ta = ring_evict_cfg(KV_CODEC_ROT4, true, 0.0f);
    tr.policy.kind = tf.policy.kind = ta.policy.kind = KV_POLICY_TOVA;
    tf.retention.assign(tf.retention.size(), KV_RETAIN_EVICT);  // every head evicts: the layer mean, one token set per layer
    ta.retention.assign(ta.retention.size(), KV_RETAIN_EVICT);
    ring_vs_cache("tova rot2 + stream (group sums)", tr, script, 18, 500);
    ring_vs_cache("tova f16, all heads (layer mean)", tf, script, 19, 500);
    ring_vs_cache("tova rot4 + sinks, all heads (layer mean)", ta, script, 20, 500);
    // a chunk that moved an evicting head's tokens cannot be undone on the device: rollback says so
    kv_ring_config rc;
    TC_CHECK(kv_ring_config_from(ring_evict_cfg(KV_CODEC_ROT2, false, 0.0f), 512, &rc).ok());
    kv_ring_layer L(rc, 0);
    std::vector<kv_ring_ops> ops;
    std::vector<kv_ring_layer::slot_entry> restored;
    L.begin();
    TC_CHECK(L.append(0, 40).ok());
    L.retain(40, ops);
    TC_CHECK(L.rollback(restored)) << "nothing moved: exact";
    L.begin();
    TC_CHECK(L.append(0, 300).ok());
    L.retain(300, ops);
    TC_CHECK(!ops[0].move_src.empty() && !ops[0].enc_slot.empty());
    TC_CHECK(!L.rollback(restored)) << "a flush gathered f16 tokens: not exact";
}

namespace {

// One forward pass over the cache as forward_chunk drives it (reserve; per layer: sinks at prefill, append,
// the newest query, this step's probabilities for evicting heads, retain), with keys, values, queries and
// probabilities drawn from `seed` and the token's position, so two caches fed the same calls stay equal.
// abort_at >= 0: the pass stops before that layer when the chunk can be reverted (forward_chunk's abort);
// returns true when it did.
bool drive_chunk(kv_cache & kv, int T, uint32_t seed, int abort_at) {
    const kv_cache_config & c = kv.config();
    const int H = c.n_head_kv, D = c.head_dim, NQ = c.n_head;
    const int32_t pos0 = kv.n_logical();
    std::vector<int32_t> pos((size_t) T);
    for (int t = 0; t < T; t++) pos[(size_t) t] = pos0 + t;
    auto draw = [&](uint32_t s, size_t n) {
        std::mt19937 g(s);
        std::normal_distribution<float> nd(0.0f, 1.0f);
        std::vector<float> x(n);
        for (float & e : x) e = nd(g);
        return x;
    };
    TC_CHECK(kv.reserve(T).ok());
    for (int il = 0; il < c.n_layer; il++) {
        if (il == abort_at && kv.chunk_revertible()) {
            kv.revert_chunk();
            return true;
        }
        const uint32_t ls = seed * 7919u + (uint32_t) pos0 * 131u + (uint32_t) il * 17u;
        if (T > 1 && kv.wants_sinks()) {
            std::vector<int32_t> sp;
            std::vector<float> mag;
            std::mt19937 g(ls);
            for (int i = 0; i < 12; i++) { sp.push_back(pos0 + (int32_t) (g() % (uint32_t) T)); mag.push_back(10.0f + (float) (g() % 1000)); }
            kv.add_sinks(il, sp, mag);
        }
        const std::vector<float> k = draw(ls + 1, (size_t) T * H * D), v = draw(ls + 2, (size_t) T * H * c.head_dim_v);
        kv.append(il, T, k.data(), v.data(), pos.data());
        if (kv.wants_queries(il)) kv.record_query(il, draw(ls + 3, (size_t) NQ * D).data(), pos[(size_t) T - 1]);
        if (kv.wants_probs(il)) {
            for (int ih = 0; ih < H; ih++) {
                if (kv.retention(il, ih) != KV_RETAIN_EVICT) continue;
                const size_t n_all = kv.held_positions(il, ih).size();
                std::mt19937 g(ls + 4 + (uint32_t) ih);
                float * pm = kv.probs_max(il, ih), * ps = kv.probs_sum(il, ih);
                for (size_t j = 0; j < n_all; j++) {
                    const float p = (float) (g() % 1000) / 1000.0f / (float) n_all * (j % 7 == 0 ? 20.0f : 1.0f);
                    pm[j] = p;
                    ps[j] = 1.5f * p;
                }
            }
        }
        kv.retain(il);
    }
    return false;
}

// What must be equal between two caches that went through the same tokens.
// (counters: the cumulative eviction counters too, for two caches that went through the same calls)
void expect_same_cache(const kv_cache & a, const kv_cache & b, const char * what, int call, bool counters = true) {
    const kv_cache_config & c = a.config();
    TC_CHECK(a.n_logical() == b.n_logical()) << what << " call " << call << ": logical " << a.n_logical() << " vs " << b.n_logical();
    for (int il = 0; il < c.n_layer; il++)
        for (int ih = 0; ih < c.n_head_kv; ih++)
            TC_CHECK(a.held_positions(il, ih) == b.held_positions(il, ih)) << what << " call " << call << ": head (" << il << ", " << ih << ") holds other positions";
    const kv_memory_report ra = a.memory(false), rb = b.memory(false);
    TC_CHECK(ra.resident_tokens == rb.resident_tokens && ra.key_bytes == rb.key_bytes && ra.value_bytes == rb.value_bytes &&
             ra.quantized_tokens == rb.quantized_tokens && (!counters || (ra.evicted_tokens == rb.evicted_tokens && ra.compactions == rb.compactions)))
        << what << " call " << call << ": memory report differs (resident " << ra.resident_tokens << " vs " << rb.resident_tokens << ", key bytes "
        << ra.key_bytes << " vs " << rb.key_bytes << ", evicted " << ra.evicted_tokens << " vs " << rb.evicted_tokens << ")";
    TC_CHECK(a.decode_step() == b.decode_step()) << what << " call " << call << ": decode step " << a.decode_step() << " vs " << b.decode_step();
}

kv_cache_config abort_cfg(kv_policy_kind kind, kv_codec_type codec) {
    kv_cache_config c = ring_cfg(codec, codec != KV_CODEC_F16, false);
    c.n_layer = 3;  // layer 0 all FULL; layer 1 evicting + FULL; layer 2 evicting + STREAM + FULL
    c.retention.assign((size_t) c.n_layer * c.n_head_kv, KV_RETAIN_FULL);
    c.retention[4] = c.retention[6] = c.retention[8] = c.retention[10] = KV_RETAIN_EVICT;
    c.retention[11] = KV_RETAIN_STREAM;
    c.policy.kind = kind;
    c.policy.capacity = 64;
    c.policy.window = kind == KV_POLICY_SNAPKV || kind == KV_POLICY_RKV ? 8 : 16;
    c.policy.interval = 3;  // (snapkv, rkv) shorter than their query window
    c.policy.protect = 4;
    c.policy.protect_sinks = true;  // (sinks detected at prefill: a reverted chunk's candidates leave with it)
    c.storage.staging = 8;
    return c;
}

} // namespace

TC_TEST("kv: an aborted chunk is taken back out exactly while nothing older moved; the cache goes on as if it had never run (every policy, f16 and rot2)") {
    // the same calls into two caches; in the second, every third call is first attempted and aborted before a
    // layer (forward_chunk's abort), then run again. Held positions, the memory report and the decode step must
    // stay equal after every call, and eviction decisions for hundreds of steps after.
    fixture fx;
    std::vector<int> calls = {100, 60};
    for (int i = 0; i < 150; i++) calls.push_back(1);
    calls.push_back(40);
    for (int i = 0; i < 60; i++) calls.push_back(1);
    for (int kind = 0; kind < KV_POLICY_COUNT; kind++) {
        for (kv_codec_type codec : {KV_CODEC_F16, KV_CODEC_ROT2}) {
            kv_cache_config c = abort_cfg((kv_policy_kind) kind, codec);
            const std::string what = std::string(kv_policy_get((kv_policy_kind) kind)->name) + (codec == KV_CODEC_F16 ? " f16" : " rot2");
            auto pool = std::make_shared<page_pool>(kv_page_bytes(c.head_dim, c.head_dim_v));
            kv_cache a(c, pool), b(c, pool);
            int reverted = 0, ran_through = 0;
            for (size_t i = 0; i < calls.size(); i++) {
                const uint32_t seed = 1000u + (uint32_t) i;
                drive_chunk(a, calls[i], seed, -1);
                if (i % 3 == 1) {
                    const int at = 1 + (int) (i / 3) % (c.n_layer - 1);
                    const std::vector<int32_t> before = b.held_positions(0, 0);
                    if (drive_chunk(b, calls[i], seed, at)) {
                        reverted++;
                        TC_CHECK(b.held_positions(0, 0) == before) << what << " call " << i << ": the reverted chunk left tokens in layer 0";
                        drive_chunk(b, calls[i], seed, -1);
                    } else {
                        ran_through++;  // older tokens had moved in a layer before `at`: the chunk ran to its end (forward_chunk)
                    }
                } else {
                    drive_chunk(b, calls[i], seed, -1);
                }
                expect_same_cache(a, b, what.c_str(), (int) i);
            }
            TC_CHECK(reverted > 0) << what << ": no chunk was reverted";
            if (codec == KV_CODEC_F16) {
                // a prompt chunk aborted in its first layer after reporting 20 sinks larger than any before: the
                // layer's top 20 must be the earlier prompt's again, not what is left of it after the chunk's
                kv_cache x(c, pool), y(c, pool);
                drive_chunk(x, 100, 1, -1);
                drive_chunk(y, 100, 1, -1);
                TC_CHECK(y.reserve(60).ok());
                std::vector<int32_t> big;
                for (int32_t p = 100; p < 120; p++) big.push_back(p);
                y.add_sinks(0, big, std::vector<float>(big.size(), 1e9f));
                TC_CHECK(y.chunk_revertible());
                y.revert_chunk();
                TC_CHECK(x.sinks(0) == y.sinks(0) && x.sinks(0).size() > 1) << what << ": layer 0 sinks differ after a reverted chunk";
                drive_chunk(x, 60, 2, -1);
                drive_chunk(y, 60, 2, -1);
                for (int il = 0; il < c.n_layer; il++) TC_CHECK(x.sinks(il) == y.sinks(il)) << what << ": layer " << il << " sinks differ after a reverted chunk";
                expect_same_cache(x, y, what.c_str(), -1);
            }
            std::printf("    %-14s %3d chunks reverted, %3d ran to their end (older tokens moved), %lld tokens evicted\n", what.c_str(), reverted, ran_through,
                        (long long) a.memory(false).evicted_tokens);
        }
    }
}

TC_TEST("kv: the query window of snapkv/rkv holds only the sequence's own queries (clear, rewind, reverted chunk)") {
    // interval 3 < window 8: an eviction reads queries recorded before it. After clear() the cache must decide
    // as a new one does; after a rewind (before any eviction) as one that never saw the removed tokens.
    for (kv_policy_kind kind : {KV_POLICY_SNAPKV, KV_POLICY_RKV}) {
        const kv_cache_config c = abort_cfg(kind, KV_CODEC_F16);
        auto pool = std::make_shared<page_pool>(kv_page_bytes(c.head_dim, c.head_dim_v));
        kv_cache used(c, pool), fresh(c, pool);
        drive_chunk(used, 90, 1, -1);
        for (int i = 0; i < 40; i++) drive_chunk(used, 1, 2 + (uint32_t) i, -1);
        TC_CHECK(used.memory(false).evicted_tokens > 0);
        used.clear();
        drive_chunk(used, 50, 500, -1);
        drive_chunk(fresh, 50, 500, -1);
        for (int i = 0; i < 60; i++) {
            drive_chunk(used, 1, 600 + (uint32_t) i, -1);
            drive_chunk(fresh, 1, 600 + (uint32_t) i, -1);
            expect_same_cache(used, fresh, "after clear()", i, false);
        }
        TC_CHECK(fresh.memory(false).evicted_tokens > 0);
        // a rewind before any eviction (no STREAM head, capacity 52): a 50-token prompt, two steps with other
        // tokens, back to 50, then the steps the other cache took; the first eviction (decode step 3) reads the
        // queries of positions 49..52 and must not see the removed ones
        kv_cache_config cr = c;
        cr.retention[11] = KV_RETAIN_FULL;
        cr.policy.capacity = 52;
        kv_cache r(cr, pool), s(cr, pool);
        drive_chunk(r, 50, 700, -1);
        drive_chunk(s, 50, 700, -1);
        for (int i = 0; i < 2; i++) drive_chunk(r, 1, 990 + (uint32_t) i, -1);
        TC_CHECK(r.memory(false).evicted_tokens == 0);
        TC_CHECK(r.remove_from(50) == 50);
        TC_CHECK(r.decode_step() == 0) << "after a rewind to the prompt's end the next token is decode step 1, as in a fresh cache";
        for (int i = 0; i < 40; i++) {
            drive_chunk(r, 1, 720 + (uint32_t) i, -1);
            drive_chunk(s, 1, 720 + (uint32_t) i, -1);
            expect_same_cache(r, s, "after a rewind", i);
        }
        TC_CHECK(s.memory(false).evicted_tokens > 0);
    }
}

namespace {

// Every value a head holds, f16 and decoded codes, in the head's order: what attention reads.
std::vector<float> head_contents(const kv_cache & kv, int il, int ih) {
    const kv_cache_config & c = kv.config();
    const kv_head_view v = kv.head(il, ih);
    std::vector<float> out;
    if (v.coded) {
        const kv_coded_view & cv = *v.coded;
        std::vector<float> y((size_t) std::max(c.head_dim, c.head_dim_v));
        for (int32_t j = 0; j < cv.n; j++) {
            int jj = 0;
            const uint8_t * kb = cv.key_block(j, jj);
            cv.kc->decode(cv.kp, kb, jj, y.data());
            out.insert(out.end(), y.begin(), y.begin() + c.head_dim);
            const uint8_t * vb = cv.value_block(j, jj);
            cv.vc->decode(cv.vp, vb, jj, y.data());
            out.insert(out.end(), y.begin(), y.begin() + c.head_dim_v);
        }
    }
    for (int32_t s = 0; s < v.n_seg; s++) {
        const kv_segment & g = v.seg[s];
        for (int32_t j = 0; j < g.n; j++) {
            for (int d = 0; d < c.head_dim; d++) out.push_back(f16_to_f32(g.key(j, d, c.head_dim)));
            for (int d = 0; d < c.head_dim_v; d++) out.push_back(f16_to_f32(g.v[(size_t) j * c.head_dim_v + d]));
        }
    }
    return out;
}

} // namespace

TC_TEST("kv: copy_from gives an exact copy that goes on as the original does (every policy, f16 and rot2)") {
    // a cache driven through a prompt and decode steps is copied mid-run (after evictions, trims and flushes);
    // the copy and the original then take the same calls: held positions, the memory report, the decode step
    // and every value a head holds stay equal, and the copy owns its pages (clearing the original leaves it).
    std::vector<int> calls = {100, 60};
    for (int i = 0; i < 120; i++) calls.push_back(1);
    for (int kind = 0; kind < KV_POLICY_COUNT; kind++) {
        for (kv_codec_type codec : {KV_CODEC_F16, KV_CODEC_ROT2}) {
            kv_cache_config c = abort_cfg((kv_policy_kind) kind, codec);
            const std::string what = std::string(kv_policy_get((kv_policy_kind) kind)->name) + (codec == KV_CODEC_F16 ? " f16" : " rot2") + " copy";
            auto pool = std::make_shared<page_pool>(kv_page_bytes(c.head_dim, c.head_dim_v));
            kv_cache a(c, pool), b(c, pool);
            drive_chunk(b, 30, 5, -1);  // (b held other tokens before: the copy replaces them)
            for (size_t i = 0; i < calls.size(); i++) {
                drive_chunk(a, calls[i], 2000u + (uint32_t) i, -1);
                if (i == 60) {
                    TC_CHECK(b.copy_from(a).ok());
                    TC_CHECK(a.memory(false).evicted_tokens > 0) << what << ": nothing evicted before the copy";
                }
                if (i > 60) drive_chunk(b, calls[i], 2000u + (uint32_t) i, -1);
                if (i >= 60) {
                    expect_same_cache(a, b, what.c_str(), (int) i);
                    for (int il = 0; il < c.n_layer; il++)
                        for (int ih = 0; ih < c.n_head_kv; ih++)
                            TC_CHECK(head_contents(a, il, ih) == head_contents(b, il, ih)) << what << " call " << i << ": head (" << il << ", " << ih << ") holds other values";
                    for (int il = 0; il < c.n_layer; il++) TC_CHECK(a.sinks(il) == b.sinks(il)) << what << ": sinks differ";
                }
            }
            const std::vector<float> kept = head_contents(b, 2, 0);
            const uint64_t bytes = b.memory(false).bytes_allocated;
            a.clear();
            TC_CHECK(head_contents(b, 2, 0) == kept && b.memory(false).bytes_allocated == bytes) << what << ": the copy shares pages with the original";
            TC_CHECK(b.memory(false).quantized_tokens > 0 || codec == KV_CODEC_F16) << what << ": nothing was quantized";
        }
    }
    // a cache of another configuration (another context) is refused
    kv_cache_config c1 = abort_cfg(KV_POLICY_LAZY, KV_CODEC_F16), c2 = c1;
    c2.head_dim = c1.head_dim * 2;
    auto p1 = std::make_shared<page_pool>(kv_page_bytes(c1.head_dim, c1.head_dim_v)), p2 = std::make_shared<page_pool>(kv_page_bytes(c2.head_dim, c2.head_dim_v));
    kv_cache x(c1, p1), y(c2, p2);
    TC_CHECK(x.copy_from(y).code == ERR_INVALID_ARG);
}

TC_TEST("kv: a prefix checkpoint brings a lossy cache back to the end of its prompt (every policy, f16 and rot2)") {
    // a prompt, a checkpoint, 50 decode steps (evictions, trims, flushes), then a rewind to the prompt's end: the
    // cache equals one that only took the prompt — positions, values, sinks, counters — and goes on as it does
    for (int kind = 0; kind < KV_POLICY_COUNT; kind++) {
        for (kv_codec_type codec : {KV_CODEC_F16, KV_CODEC_ROT2}) {
            const kv_cache_config c = abort_cfg((kv_policy_kind) kind, codec);
            const std::string what = std::string(kv_policy_get((kv_policy_kind) kind)->name) + (codec == KV_CODEC_F16 ? " f16" : " rot2") + " checkpoint";
            auto pool = std::make_shared<page_pool>(kv_page_bytes(c.head_dim, c.head_dim_v));
            kv_cache a(c, pool), ref(c, pool);
            for (kv_cache * k : {&a, &ref}) { drive_chunk(*k, 100, 1, -1); drive_chunk(*k, 60, 2, -1); }
            TC_CHECK(a.save_checkpoint().ok());
            TC_CHECK(a.checkpoint_tokens() == 160);
            TC_CHECK(a.memory(false).checkpoint_bytes > 0);
            for (int i = 0; i < 50; i++) drive_chunk(a, 1, 100u + (uint32_t) i, -1);
            TC_CHECK(a.memory(false).evicted_tokens > ref.memory(false).evicted_tokens || codec != KV_CODEC_F16) << what << ": nothing dropped while decoding";
            kv_cache b(c, pool);  // a copy takes the checkpoint along
            TC_CHECK(b.copy_from(a).ok() && b.checkpoint_tokens() == 160);
            TC_CHECK(a.remove_from(170) == 160) << what << ": a rewind past the checkpoint returns to it";
            expect_same_cache(a, ref, what.c_str(), 0);
            TC_CHECK(b.remove_from(170) == 160) << what << ": the copy's rewind does not return to the checkpoint";
            expect_same_cache(b, ref, (what + " (copy)").c_str(), 0);
            for (int il = 0; il < c.n_layer; il++) {
                TC_CHECK(a.sinks(il) == ref.sinks(il)) << what << ": sinks differ";
                for (int ih = 0; ih < c.n_head_kv; ih++) TC_CHECK(head_contents(a, il, ih) == head_contents(ref, il, ih)) << what << ": head (" << il << ", " << ih << ") holds other values";
            }
            for (int i = 0; i < 40; i++) {
                drive_chunk(a, i == 0 ? 12 : 1, 500u + (uint32_t) i, -1);
                drive_chunk(ref, i == 0 ? 12 : 1, 500u + (uint32_t) i, -1);
                expect_same_cache(a, ref, what.c_str(), 1 + i);
            }
            TC_CHECK(a.checkpoint_tokens() == 160);  // (kept for the next rewind)
            a.remove_from(100);
            TC_CHECK(a.checkpoint_tokens() == -1 && a.memory(false).checkpoint_bytes == 0) << what << ": a rewind below the checkpoint keeps it";
        }
    }
    // a plain f16 cache (all FULL heads) saves nothing: it rewinds exactly
    kv_cache_config c = abort_cfg(KV_POLICY_LAZY, KV_CODEC_F16);
    c.retention.assign(c.retention.size(), KV_RETAIN_FULL);
    auto pool = std::make_shared<page_pool>(kv_page_bytes(c.head_dim, c.head_dim_v));
    kv_cache plain(c, pool);
    drive_chunk(plain, 100, 1, -1);
    TC_CHECK(plain.save_checkpoint().ok() && plain.checkpoint_tokens() == -1 && plain.memory(false).checkpoint_bytes == 0);
}

namespace {

// kv_cache::save_state into bytes (a temporary file; the section and its checksum) and back.
std::vector<uint8_t> state_bytes(const kv_cache & kv) {
    std::FILE * f = std::tmpfile();
    state_writer w(f);
    kv.save_state(w);
    TC_CHECK(w.finish().ok());
    std::vector<uint8_t> b((size_t) w.written());
    std::rewind(f);
    TC_CHECK(std::fread(b.data(), 1, b.size(), f) == b.size());
    std::fclose(f);
    return b;
}

status state_load(kv_cache & kv, const std::vector<uint8_t> & b) {
    std::FILE * f = std::tmpfile();
    if (!b.empty()) std::fwrite(b.data(), 1, b.size(), f);
    std::rewind(f);
    state_reader r(f, b.size());
    kv_cache::loaded_ptr s;
    status st = kv.read_state(r, s);
    if (st.ok()) st = r.finish();
    if (st.ok()) kv.adopt_state(std::move(s));
    std::fclose(f);
    return st;
}

// The checksum of a patched image, recomputed as the writer does (blocks of STATE_BLOCK payload bytes).
void state_rehash(std::vector<uint8_t> & b) {
    const size_t payload = b.size() - 8;
    uint64_t h = 0;
    for (size_t at = 0; at < payload; at += STATE_BLOCK) h = state_block_hash(h, b.data() + at, std::min(STATE_BLOCK, payload - at));
    std::memcpy(b.data() + payload, &h, 8);
}

} // namespace

TC_TEST("kv: a state file brings back the cache as it was and it goes on alike (every policy, f16 and rot2)") {
    // a cache driven through a prompt, a checkpoint and decode steps (evictions, trims, flushes) is saved mid-run
    // and loaded into a cache that held other tokens; both then take the same calls: positions, values, sinks,
    // counters stay equal, and the loaded one rewinds to the checkpoint as the original does. The file holds the
    // cache's bytes, not its pages'.
    std::vector<int> calls = {100, 60};
    for (int i = 0; i < 100; i++) calls.push_back(1);
    for (int kind = 0; kind < KV_POLICY_COUNT; kind++) {
        for (kv_codec_type codec : {KV_CODEC_F16, KV_CODEC_ROT2}) {
            const kv_cache_config c = abort_cfg((kv_policy_kind) kind, codec);
            const std::string what = std::string(kv_policy_get((kv_policy_kind) kind)->name) + (codec == KV_CODEC_F16 ? " f16" : " rot2") + " state";
            auto pool = std::make_shared<page_pool>(kv_page_bytes(c.head_dim, c.head_dim_v));
            kv_cache a(c, pool), b(c, pool), ref(c, pool), early(c, pool);
            drive_chunk(b, 30, 5, -1);
            for (size_t i = 0; i < calls.size(); i++) {
                drive_chunk(a, calls[i], 3000u + (uint32_t) i, -1);
                if (i < 2) drive_chunk(ref, calls[i], 3000u + (uint32_t) i, -1);
                if (i == 1) {
                    TC_CHECK(a.save_checkpoint().ok());
                    // saved at the checkpoint (after a prompt): the file does not repeat it, the load takes it again
                    TC_CHECK(state_load(early, state_bytes(a)).ok() && early.checkpoint_tokens() == 160) << what << ": no checkpoint after the load";
                    TC_CHECK(early.memory(false).checkpoint_bytes == a.memory(false).checkpoint_bytes) << what;
                }
                if (i > 1) drive_chunk(early, calls[i], 3000u + (uint32_t) i, -1);
                if (i == 50) {
                    const std::vector<uint8_t> img = state_bytes(a);
                    const kv_memory_report m = a.memory(false);
                    const status ls = state_load(b, img);
                    TC_CHECK(ls.ok()) << what << ": " << ls.message;
                    TC_CHECK(m.evicted_tokens > 0) << what << ": nothing evicted before the save";
                    // payload and positions of the held tokens, the checkpoint's copies, statistics: at most the
                    // allocated bytes (whole pages) and at least the payload
                    TC_CHECK(img.size() >= m.key_bytes + m.value_bytes && img.size() <= m.bytes_allocated) << what << ": " << img.size() << " bytes for "
                        << m.key_bytes + m.value_bytes << " B of payload, " << m.bytes_allocated << " B allocated";
                    if (kind == 0) std::printf("    %-14s file %zu B, payload %llu B, allocated %llu B\n", what.c_str(), img.size(),
                                               (unsigned long long) (m.key_bytes + m.value_bytes), (unsigned long long) m.bytes_allocated);
                }
                if (i > 50) drive_chunk(b, calls[i], 3000u + (uint32_t) i, -1);
                if (i >= 50) {
                    expect_same_cache(a, b, what.c_str(), (int) i);
                    for (int il = 0; il < c.n_layer; il++) {
                        TC_CHECK(a.sinks(il) == b.sinks(il)) << what << ": sinks differ";
                        for (int ih = 0; ih < c.n_head_kv; ih++)
                            TC_CHECK(head_contents(a, il, ih) == head_contents(b, il, ih)) << what << " call " << i << ": head (" << il << ", " << ih << ") holds other values";
                    }
                }
            }
            TC_CHECK(b.checkpoint_tokens() == 160) << what << ": the checkpoint did not come along";
            TC_CHECK(b.remove_from(170) == 160) << what << ": the loaded cache does not rewind to the checkpoint";
            expect_same_cache(b, ref, (what + " rewound").c_str(), 0);
            TC_CHECK(early.remove_from(170) == 160) << what << ": the cache loaded at the checkpoint does not rewind to it";
            expect_same_cache(early, ref, (what + " loaded at the checkpoint, rewound").c_str(), 0);
            // the image of the loaded cache is the original's, byte for byte
            TC_CHECK(a.remove_from(170) == 160 && state_bytes(a) == state_bytes(b)) << what << ": the images differ";
        }
    }
}

TC_TEST("kv: a corrupt, truncated or foreign state file is an error and the cache keeps what it held") {
    const kv_cache_config c = abort_cfg(KV_POLICY_LAZY, KV_CODEC_ROT2);
    auto pool = std::make_shared<page_pool>(kv_page_bytes(c.head_dim, c.head_dim_v));
    kv_cache a(c, pool), b(c, pool);
    drive_chunk(a, 100, 1, -1);
    TC_CHECK(a.save_checkpoint().ok());
    for (int i = 0; i < 40; i++) drive_chunk(a, 1, 10u + (uint32_t) i, -1);
    drive_chunk(b, 70, 9, -1);
    const std::vector<uint8_t> img = state_bytes(a), before = state_bytes(b);
    const size_t pages_before = pool->stats().pages_in_use;
    auto unchanged = [&](const char * what) {
        TC_CHECK(state_bytes(b) == before) << what << ": the cache changed";
        TC_CHECK(pool->stats().pages_in_use == pages_before) << what << ": pages leaked (" << pool->stats().pages_in_use << " vs " << pages_before << ")";
    };
    // truncated anywhere (the checksum cannot be found or does not match)
    for (size_t n : {(size_t) 0, (size_t) 3, (size_t) 8, img.size() / 3, img.size() - 9, img.size() - 1}) {
        std::vector<uint8_t> t(img.begin(), img.begin() + (long) n);
        TC_CHECK(state_load(b, t).code == ERR_STATE_FORMAT) << "truncated to " << n;
        unchanged("truncated");
    }
    // one flipped bit anywhere: the checksum
    std::mt19937 g(7);
    for (int i = 0; i < 40; i++) {
        std::vector<uint8_t> t = img;
        t[g() % t.size()] ^= (uint8_t) (1u << (g() % 8));
        TC_CHECK(state_load(b, t).code == ERR_STATE_FORMAT) << "bit flip " << i;
        unchanged("bit flip");
    }
    // a crafted file (checksum recomputed): any byte of the first 4 KiB (counts, positions, runs, flags) or
    // any 4 bytes set to extreme values: either an error that names the problem, or a cache that then works
    int loaded = 0, refused = 0;
    for (int i = 0; i < 600; i++) {
        std::vector<uint8_t> t = img;
        const size_t at = i < 400 ? (size_t) i * 7919 % std::min<size_t>(4096, t.size() - 8) : g() % (t.size() - 12);
        if (i % 2) t[at] = (uint8_t) g();
        else {
            const int32_t vals[] = {-1, 0x7fffffff, (int32_t) 0x80000000, 1 << 20, 255};
            std::memcpy(t.data() + at, &vals[g() % 5], 4);
        }
        state_rehash(t);
        kv_cache d(c, pool);
        drive_chunk(d, 20, 3, -1);
        const status st = state_load(d, t);
        if (st.ok()) {
            loaded++;
            for (int s = 0; s < 20; s++) drive_chunk(d, 1, 900u + (uint32_t) s, -1);  // (must not crash; ASan checks the rest)
            d.remove_from(d.n_logical() / 2);
        } else {
            refused++;
            TC_CHECK(st.code == ERR_STATE_FORMAT || st.code == ERR_CONTEXT_FULL) << "crafted " << i << ": " << status_code_name(st.code) << " " << st.message;
            TC_CHECK(!st.message.empty());
        }
    }
    std::printf("    crafted files: %d loaded, %d refused\n", loaded, refused);
    TC_CHECK(refused > 0 && loaded > 0);
    // the token count (the section's first word) out of range
    for (int32_t v : {-5, 1 << 20}) {
        std::vector<uint8_t> t = img;
        std::memcpy(t.data(), &v, 4);
        state_rehash(t);
        TC_CHECK(state_load(b, t).code == (v < 0 ? ERR_STATE_FORMAT : ERR_CONTEXT_FULL)) << "token count " << v;
        unchanged("token count");
    }
    // another configuration: a head that is FULL here was evicting there
    kv_cache_config c2 = c;
    c2.retention[4] = KV_RETAIN_FULL;
    kv_cache e(c2, pool);
    const status st = state_load(e, img);
    TC_CHECK(st.code == ERR_STATE_FORMAT && st.message.find("configuration") != std::string::npos) << st.message;
    TC_CHECK(a.layout_desc() != e.layout_desc());
    // more tokens than the context holds
    kv_cache_config c3 = c;
    c3.n_ctx = 100;
    kv_cache s3(c3, pool);
    TC_CHECK(state_load(s3, img).code == ERR_CONTEXT_FULL);
    TC_CHECK(pool->stats().pages_in_use == pages_before);
}

TC_TEST("kv: a rewind keeps every position below what it reports, also past a sink a later chunk displaced (coded out of order)") {
    // prompt chunks whose sink candidates displace earlier sinks: a displaced sink leaves the f16 protection and is
    // coded after newer tokens, so coded positions no longer ascend. remove_from(p) must then still keep, in every
    // FULL head, each position below the count it returns. (It counted the coded prefix below p and compared it with
    // what a fresh evaluation codes; a displaced sink missing from that prefix could pass when the counts happened
    // to agree, and the cut dropped it. This fixture does not reach that coincidence: it checks the invariant.)
    kv_cache_config c = abort_cfg(KV_POLICY_LAZY, KV_CODEC_ROT2);
    c.retention.assign(c.retention.size(), KV_RETAIN_FULL);  // (no eviction: rewinds can be exact)
    c.storage.staging = 1;  // (more of the rewinds are exact: fresh_q lands on the live cache's coded count more often)
    auto pool = std::make_shared<page_pool>(kv_page_bytes(c.head_dim, c.head_dim_v));
    kv_cache a(c, pool);
    drive_chunk(a, 100, 1, -1);
    drive_chunk(a, 60, 2, -1);
    // the displaced sinks: coded positions below an earlier coded one
    int out_of_order = 0;
    {
        const std::vector<int32_t> held = a.held_positions(0, 0);
        const kv_head_view v = a.head(0, 0);
        TC_CHECK(v.coded != nullptr);
        for (int32_t j = 1; v.coded && j < v.coded->n; j++) out_of_order += v.coded->pos_at(j) < v.coded->pos_at(j - 1);
    }
    TC_CHECK(out_of_order > 0) << "the fixture no longer displaces a sink: the test checks nothing";
    int exact = 0;
    for (int32_t p = c.storage.protect; p < a.n_logical(); p++) {
        kv_cache b(c, pool);
        TC_CHECK(b.copy_from(a).ok());
        const int32_t k = b.remove_from(p);
        exact += k == p;
        for (int il = 0; il < c.n_layer; il++) {
            for (int ih = 0; ih < c.n_head_kv; ih++) {
                if (b.retention(il, ih) != KV_RETAIN_FULL) continue;
                const std::vector<int32_t> held = b.held_positions(il, ih);
                std::vector<int32_t> want((size_t) k);
                for (int32_t q = 0; q < k; q++) want[(size_t) q] = q;
                TC_CHECK(held == want) << "remove_from(" << p << ") returned " << k << " but head (" << il << ", " << ih << ") holds " << held.size() << " positions";
            }
        }
    }
    std::printf("    %d coded tokens out of order; %d of the rewinds exact at the position asked\n", out_of_order, exact);
    TC_CHECK(exact > 0);
}

TC_TEST("kv: a state file keeps a checkpoint the cache has moved away from (decoding, then a cut back to its length)") {
    // no eviction and no streaming head: a rewind to the checkpoint's length is exact by itself and cuts instead of
    // restoring, but the evicting heads' statistics keep what decoding observed — the cache no longer equals the
    // checkpoint, so the file must carry the checkpoint's copy, not ask the reader to take it again
    kv_cache_config c = abort_cfg(KV_POLICY_LAZY, KV_CODEC_F16);
    c.retention[11] = KV_RETAIN_FULL;
    c.policy.capacity = 110;  // (no eviction in the first 6 steps; later ones evict)
    auto pool = std::make_shared<page_pool>(kv_page_bytes(c.head_dim, c.head_dim_v));
    kv_cache a(c, pool), b(c, pool), fresh(c, pool);
    drive_chunk(a, 100, 1, -1);
    drive_chunk(fresh, 100, 1, -1);
    TC_CHECK(a.save_checkpoint().ok());
    for (int i = 0; i < 6; i++) drive_chunk(a, 1, 50u + (uint32_t) i, -1);
    TC_CHECK(a.remove_from(100) == 100 && a.checkpoint_tokens() == 100);
    TC_CHECK(fresh.save_checkpoint().ok());
    TC_CHECK(state_bytes(a) != state_bytes(fresh)) << "the fixture no longer changes the statistics: the test checks nothing";
    const std::vector<uint8_t> img = state_bytes(a);
    TC_CHECK(state_load(b, img).ok());
    TC_CHECK(state_bytes(b) == img);
    // both decode until they evict, then rewind: each returns to its checkpoint, which must be the same one
    for (int i = 0; i < 40; i++) for (kv_cache * k : {&a, &b}) drive_chunk(*k, 1, 90u + (uint32_t) i, -1);
    TC_CHECK(a.memory(false).evicted_tokens > 0);
    TC_CHECK(a.remove_from(100) == 100 && b.remove_from(100) == 100);
    TC_CHECK(state_bytes(a) == state_bytes(b)) << "the loaded cache's checkpoint differs from the saved one";
}

namespace {
// The books of a state file, parsed back (the layout of kv_ring_layer::save_books), for tests that alter them.
struct ring_books {
    struct head_b { uint8_t kind; int32_t rc, lo; uint8_t dropped; std::vector<int32_t> sp, coded; };
    std::vector<head_b> heads;
    std::vector<int32_t> sinks;
    std::vector<std::pair<float, int32_t>> cand;
    int64_t evicted = 0, compactions = 0;
};
ring_books ring_books_parse(const std::vector<uint8_t> & b) {
    ring_books out;
    size_t at = 0;
    auto get = [&](void * p, size_t n) { std::memcpy(p, b.data() + at, n); at += n; };
    auto vec = [&](auto & v) {
        uint32_t n = 0;
        get(&n, 4);
        v.resize(n);
        get(v.data(), n * sizeof(v[0]));
    };
    uint32_t H = 0;
    get(&H, 4);
    out.heads.resize(H);
    for (auto & h : out.heads) {
        get(&h.kind, 1);
        get(&h.rc, 4);
        get(&h.lo, 4);
        get(&h.dropped, 1);
        vec(h.sp);
        vec(h.coded);
    }
    vec(out.sinks);
    vec(out.cand);
    get(&out.evicted, 8);
    get(&out.compactions, 8);
    return out;
}
std::vector<uint8_t> ring_books_write(const ring_books & rb) {
    char * buf = nullptr;
    size_t sz = 0;
    std::FILE * f = open_memstream(&buf, &sz);
    state_writer w(f);
    w.pod((uint32_t) rb.heads.size());
    for (const auto & h : rb.heads) {
        w.pod(h.kind);
        w.pod(h.rc);
        w.pod(h.lo);
        w.pod(h.dropped);
        w.vec(h.sp);
        w.vec(h.coded);
    }
    w.vec(rb.sinks);
    w.vec(rb.cand);
    w.pod(rb.evicted);
    w.pod(rb.compactions);
    (void) w.finish();
    std::fclose(f);
    std::vector<uint8_t> out(buf, buf + sz);
    std::free(buf);
    return out;
}
} // namespace

// State files of the device cache: the reader of the books (kv_ring_layer::read_books) takes what the steps make
// (the ring tests above read back every third state) and refuses what they cannot make, each with a reason, and
// altered bytes never get past it into an inconsistent layer.
TC_TEST("kv ring: state books read back as saved; altered books are refused with a reason, and corrupt bytes never crash the reader") {
    kv_cache_config c = ring_evict_cfg(KV_CODEC_ROT2, true, 0.0f);  // CODED (FULL + rot2), STREAM and coded EVICT heads
    kv_ring_config rc;
    TC_CHECK(kv_ring_config_from(c, 512, &rc).ok());
    kv_ring_layer L(rc, 0);
    std::vector<kv_ring_ops> ops;
    int32_t n = 0;
    for (int32_t T : {256, 44}) {  // a prompt in two chunks (flushes, the stream window moves on), sinks found in it
        TC_CHECK(L.append(n, T).ok());
        L.add_sinks({n + 5, n + 17}, {50.0f, 40.0f});
        n += T;
        L.retain(n, ops, 0, 0);
    }
    for (int t = 1; t <= 20; t++) {  // decode steps below the first eviction (W = 32)
        TC_CHECK(L.append(n, 1).ok());
        n++;
        L.retain(n, ops, t, 300);
    }
    const std::vector<uint8_t> good = ring_books_bytes(L);
    const ring_books rb = ring_books_parse(good);
    TC_CHECK(ring_books_write(rb) == good) << "the test's parser does not follow save_books";
    kv_ring_layer back(rc, 0);
    std::string err;
    TC_CHECK(ring_books_read(good, back, n, &err)) << err;
    int h_coded = -1, h_stream = -1, h_evict = -1;
    for (int h = 0; h < L.n_head_kv(); h++) {
        TC_CHECK(back.held_positions(h) == L.held_positions(h));
        if (L.kind(h) == KV_RING_CODED && L.n_coded(h) > 0) h_coded = h;
        if (L.kind(h) == KV_RING_STREAM) h_stream = h;
        if (L.kind(h) == KV_RING_EVICT && L.rc(h) > 2) h_evict = h;
    }
    TC_CHECK(h_coded >= 0 && h_stream >= 0 && h_evict >= 0) << "the layer lacks a kind of head for the test";
    if (h_coded < 0 || h_stream < 0 || h_evict < 0) return;
    TC_CHECK(!ring_books_read(good, back, n - 1, &err) && err.find("kv ring") != std::string::npos) << "a file of fewer tokens: " << err;
    // one alteration at a time: each refused, the error naming what is wrong
    struct alt { const char * name; std::function<void(ring_books &)> f; const char * says; };
    auto first_ring = [&](const ring_books::head_b & h, int32_t fix_cap) {
        for (size_t i = 0; i < h.sp.size(); i += 2)
            if (h.sp[i] >= fix_cap) return i;
        return h.sp.size();
    };
    const std::vector<alt> alts = {
        {"a CODED head's ring count", [&](ring_books & b) { b.heads[(size_t) h_coded].rc++; }, "counters"},
        {"a STREAM head's lower bound past the tokens", [&](ring_books & b) { b.heads[(size_t) h_stream].lo = n + 1; }, "counters"},
        {"an EVICT head's lower bound", [&](ring_books & b) { b.heads[(size_t) h_evict].lo = 1; }, "counters"},
        {"another kind", [&](ring_books & b) { b.heads[(size_t) h_stream].kind = KV_RING_DENSE; }, "kind"},
        {"a fixed slot's position", [&](ring_books & b) { b.heads[(size_t) h_coded].sp[1] += 1; }, "fixed slot"},
        {"a ring slot's position", [&](ring_books & b) { auto & h = b.heads[(size_t) h_stream]; h.sp[first_ring(h, L.fix_cap(h_stream)) + 1] -= 1; }, "ring slot"},
        {"a position past the tokens", [&](ring_books & b) { b.heads[(size_t) h_evict].sp[1] = n; }, "past the tokens"},
        {"a slot past the head's slots", [&](ring_books & b) { auto & h = b.heads[(size_t) h_stream]; h.sp[h.sp.size() - 2] = L.slots(h_stream); }, "out of order or range"},
        {"slots out of order", [&](ring_books & b) { auto & h = b.heads[(size_t) h_evict]; std::swap(h.sp[0], h.sp[2]); std::swap(h.sp[1], h.sp[3]); }, "out of order"},
        {"a hole in an EVICT head's slots", [&](ring_books & b) { auto & h = b.heads[(size_t) h_evict]; h.sp.erase(h.sp.begin(), h.sp.begin() + 2); }, "hole"},
        {"an EVICT head's token past its count", [&](ring_books & b) { b.heads[(size_t) h_evict].rc--; }, "compact slots"},
        {"a quantized token in view", [&](ring_books & b) { auto & h = b.heads[(size_t) h_coded]; h.coded.back() = h.lo; }, "quantized token"},
        {"a position held twice", [&](ring_books & b) { auto & h = b.heads[(size_t) h_coded]; h.coded.back() = h.coded.front(); }, "twice"},
        {"quantized tokens in a STREAM head", [&](ring_books & b) { b.heads[(size_t) h_stream].coded.push_back(30); }, "keeps none"},
        {"sinks out of order", [&](ring_books & b) { b.sinks.push_back(0); }, "sink"},
        {"a sink candidate's magnitude", [&](ring_books & b) { b.cand.push_back({std::nanf(""), 3}); }, "sink candidate"},
        {"a negative eviction count", [&](ring_books & b) { b.evicted = -1; }, "eviction counters"},
        {"a head too many", [&](ring_books & b) { b.heads.push_back(b.heads.back()); }, "heads"},
    };
    for (const alt & a : alts) {
        ring_books b = rb;
        a.f(b);
        kv_ring_layer x(rc, 0);
        const bool ok = ring_books_read(ring_books_write(b), x, n, &err);
        TC_CHECK(!ok && err.find(a.says) != std::string::npos) << a.name << ": " << (ok ? "accepted" : err);
    }
    // bytes altered at random: refused (at the latest by the checksum) or read into books that hold together
    std::mt19937 rng(91);
    int refused_early = 0;
    for (int i = 0; i < 3000; i++) {
        std::vector<uint8_t> b = good;
        const int k = 1 + (int) (rng() % 3);
        for (int j = 0; j < k; j++) b[rng() % (b.size() - 8)] ^= (uint8_t) (1u << (rng() % 8));
        kv_ring_layer x(rc, 0);
        std::vector<uint8_t> copy(b);
        std::FILE * f = fmemopen(copy.data(), copy.size(), "rb");
        state_reader r(f, copy.size());
        const bool read = x.read_books(r, n);
        std::fclose(f);
        if (!read) {
            refused_early++;
            continue;
        }
        kv_ring_layer y(rc, 0);
        TC_CHECK(ring_books_read(ring_books_bytes(x), y, n, &err)) << "books the reader took do not hold together: " << err;
    }
    std::printf("    3000 altered files: %d refused by the books' checks, the rest by the checksum\n", refused_early);
    TC_CHECK(refused_early > 1500);
}
