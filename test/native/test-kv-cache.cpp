// Per-head paged KV cache: retention semantics (a STREAM head holds exactly its S sinks + R recent),
// memory report = ALGORITHMS.md §1.8 formula, rewind exactness, page pool reuse, and resident memory
// falling by what the report says when pages are freed.
#include <cstdio>
#include <fstream>
#include <random>
#include <string>
#include <unistd.h>

#include "kv/kv-cache.h"
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
