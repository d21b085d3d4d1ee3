// cpu_matmul against cpu_matmul_ref for every type with CPU kernels, the thread pool under stress, and
// (--mode perf) matvec bandwidth and pool dispatch latency.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "common/thread-pool.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/quant-traits-cpu.h"
#include "tensor/quant-traits.h"
#include "test-harness.h"

using namespace core;

namespace {

std::vector<float> random_floats(size_t n, uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> g(0.0f, 1.0f);
    std::vector<float> v(n);
    for (auto & x : v) x = g(rng);
    return v;
}

struct test_weight {
    std::vector<uint8_t> data;
    weight_view view;
};

test_weight make_weight(const quant_traits & t, int64_t n_in, int64_t n_out, uint32_t seed) {
    test_weight w;
    const size_t row_bytes = quant_row_bytes(&t, n_in);
    w.data.resize(row_bytes * n_out);
    const std::vector<float> src = random_floats((size_t) (n_in * n_out), seed);
    for (int64_t r = 0; r < n_out; r++) t.from_float_ref(src.data() + r * n_in, w.data.data() + r * row_bytes, n_in);
    w.view.data = w.data.data();
    w.view.type = t.type;
    w.view.n_in = n_in;
    w.view.n_out = n_out;
    w.view.row_bytes = row_bytes;
    return w;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

} // namespace

TC_TEST("matmul/vs-ref") {
    size_t n = 0;
    const quant_traits * all = quant_traits_all(&n);
    std::unique_ptr<thread_pool> pools[3] = {std::make_unique<thread_pool>(1), std::make_unique<thread_pool>(2),
                                             std::make_unique<thread_pool>(3)};
    matmul_scratch scratch; // shared by every case: grows, never shrinks
    for (size_t i = 0; i < n; i++) {
        const quant_traits & t = all[i];
        if (!quant_traits_cpu_get(t.type)) {
            std::printf("    matmul %s: not supported by the CPU backend\n", t.name);
            continue;
        }
        const int64_t n_ins[] = {t.block_size == 1 ? 37 : t.block_size * 3, t.block_size == 1 ? 256 : t.block_size * 10};
        for (int64_t n_in : n_ins)
            for (int64_t n_out : {1, 5, 67}) {
                const test_weight w = make_weight(t, n_in, n_out, (uint32_t) (n_in * 131 + n_out));
                for (int64_t n_tokens : {1, 3, 17, 64}) {
                    const std::vector<float> x = random_floats((size_t) (n_in * n_tokens), (uint32_t) n_tokens);
                    std::vector<float> ref((size_t) (n_out * n_tokens));
                    cpu_matmul_ref(w.view, x.data(), ref.data(), n_tokens);
                    for (auto & pool : pools) {
                        // a guard after y catches writes past n_tokens * n_out
                        std::vector<float> y((size_t) (n_out * n_tokens) + 8, -12345.0f);
                        cpu_matmul(*pool, w.view, x.data(), y.data(), n_tokens, scratch);
                        const double e = tc::nmse(y.data(), ref.data(), ref.size());
                        TC_CHECK(e <= 1e-10) << "MUL_MAT(type=" << t.name << ",n_in=" << n_in << ",n_out=" << n_out
                                             << ",n_tokens=" << n_tokens << ",threads=" << pool->size()
                                             << "): NMSE " << e << " > 1e-10";
                        bool guard_ok = true;
                        for (size_t g = ref.size(); g < y.size(); g++) guard_ok &= y[g] == -12345.0f;
                        TC_CHECK(guard_ok) << "MUL_MAT(type=" << t.name << "): wrote past the output";
                    }
                }
            }
    }
}

TC_TEST("matmul/weight-row-to-float") {
    size_t n = 0;
    const quant_traits * all = quant_traits_all(&n);
    for (size_t i = 0; i < n; i++) {
        const quant_traits & t = all[i];
        const int64_t n_in = t.block_size * 4, n_out = 7;
        const test_weight w = make_weight(t, n_in, n_out, 5);
        std::vector<float> got(n_in), want(n_in);
        for (int64_t r = 0; r < n_out; r++) {
            weight_row_to_float(w.view, r, got.data());
            t.to_float(w.data.data() + r * w.view.row_bytes, want.data(), n_in);
            TC_CHECK(std::memcmp(got.data(), want.data(), n_in * sizeof(float)) == 0) << t.name << " row " << r;
        }
    }
}

TC_TEST("thread-pool/stress") {
    for (int n_threads : {1, 2, 3, 4}) {
        thread_pool pool(n_threads);
        TC_CHECK(pool.size() == n_threads);
        struct alignas(64) slot { int64_t sum = 0; int last = -1; int nth = 0; };
        std::vector<slot> slots(n_threads);
        const int n_runs = 10000;
        int stale = 0;
        const auto t0 = std::chrono::steady_clock::now();
        for (int r = 0; r < n_runs; r++) {
            pool.run([&slots, r](int ith, int nth) {
                slots[ith].sum += r + 1;
                slots[ith].last = r;
                slots[ith].nth = nth;
            });
            // every thread's write must be visible once run() returns
            for (int i = 0; i < n_threads; i++) stale += slots[i].last != r;
        }
        std::printf("    threads=%d: %d runs in %.1f ms\n", n_threads, n_runs, seconds_since(t0) * 1e3);
        TC_CHECK(stale == 0) << "threads=" << n_threads << ": " << stale << " stale slots after run()";
        for (int i = 0; i < n_threads; i++) {
            TC_CHECK(slots[i].sum == (int64_t) n_runs * (n_runs + 1) / 2) << "threads=" << n_threads << " ith=" << i;
            TC_CHECK(slots[i].nth == n_threads);
        }
        // long gaps: workers fall asleep on the condition variable and must wake for the next job
        std::atomic<int> count{0};
        for (int r = 0; r < 20; r++) {
            std::this_thread::sleep_for(std::chrono::microseconds(r % 2 ? 300 : 2000));
            pool.run([&count](int, int) { count.fetch_add(1); });
        }
        TC_CHECK(count.load() == 20 * n_threads) << "threads=" << n_threads;
    }
    // create / destroy, with and without a job, with workers spinning or asleep
    for (int i = 0; i < 50; i++) {
        thread_pool pool(1 + i % 4);
        if (i % 3 == 0) pool.run([](int, int) {});
        if (i % 5 == 0) std::this_thread::sleep_for(std::chrono::microseconds(500));
    }
}

TC_TEST("thread-pool/physical-cores") {
    const int n = cpu_physical_cores();
    const unsigned hc = std::thread::hardware_concurrency();
    std::printf("    physical cores: %d (logical %u)\n", n, hc);
    TC_CHECK(n >= 1);
    if (hc > 0) TC_CHECK(n <= (int) hc);
}

// ---- perf mode ----

TC_TEST("perf/matvec") {
    if (tc::g_mode != "perf") return;
    std::printf("    cpu level %s; cold = weights rotated over >= 192 MiB (DRAM), hot = one copy (cache-resident "
                "when it fits L2+L3); best of 8 windows\n", cpu_dispatch_level());
    const ggml_type types[] = {GGML_TYPE_Q8_0, GGML_TYPE_Q4_K, GGML_TYPE_Q6_K, GGML_TYPE_F16, GGML_TYPE_BF16, GGML_TYPE_F32};
    // {n_in, n_out}: the Qwen2-0.5B FFN, and the Qwen2-1.5B FFN for the K-quants (256-element super-blocks)
    const int64_t shapes_05b[][2] = {{896, 4864}, {4864, 896}};
    const int64_t shapes_15b[][2] = {{1536, 8960}, {8960, 1536}};
    const char * only = std::getenv("PERF_TYPES"); // e.g. PERF_TYPES=q4_K,q6_K
    matmul_scratch scratch;
    for (ggml_type type : types) {
        const quant_traits * t = quant_traits_get(type);
        if (only && !std::strstr(only, t->name)) continue;
        const bool k_quant = t->block_size == 256;
        for (auto & sh : k_quant ? shapes_15b : shapes_05b) {
            const int64_t n_in = sh[0], n_out = sh[1];
            const test_weight w0 = make_weight(*t, n_in, n_out, 3);
            const size_t bytes = w0.data.size();
            const size_t n_copies = std::max<size_t>(2, (192u << 20) / bytes + 1);
            std::vector<uint8_t> pool_mem(bytes * n_copies);
            for (size_t c = 0; c < n_copies; c++) std::memcpy(pool_mem.data() + c * bytes, w0.data.data(), bytes);
            const std::vector<float> x = random_floats(n_in, 9);
            std::vector<float> y(n_out);
            for (int n_threads : {1, 2}) {
                thread_pool pool(n_threads);
                weight_view v = w0.view;
                // best of 8 windows of >= 40 ms: the machine may be shared, and the best window is
                // the one least disturbed by other processes
                auto bench = [&](bool cold) {
                    size_t copy = 0;
                    for (size_t c = 0; c < std::min<size_t>(n_copies, 4); c++) {
                        v.data = pool_mem.data() + (cold ? copy++ % n_copies : 0) * bytes;
                        cpu_matmul(pool, v, x.data(), y.data(), 1, scratch);
                    }
                    double best = 1e30;
                    for (int window = 0; window < 8; window++) {
                        int64_t iters = 0;
                        const auto t0 = std::chrono::steady_clock::now();
                        double s = 0;
                        do {
                            for (int k = 0; k < 8; k++, iters++) {
                                v.data = pool_mem.data() + (cold ? copy++ % n_copies : 0) * bytes;
                                cpu_matmul(pool, v, x.data(), y.data(), 1, scratch);
                            }
                            s = seconds_since(t0);
                        } while (s < 0.04);
                        best = std::min(best, s / (double) iters);
                    }
                    return best;
                };
                const double t_cold = bench(true), t_hot = bench(false);
                std::printf("    matvec %-5s n_in=%-5lld n_out=%-5lld %5.2f MB threads=%d: cold %6.2f GB/s (%7.1f us)  "
                            "hot %6.2f GB/s (%7.1f us)\n",
                            t->name, (long long) n_in, (long long) n_out, bytes / 1e6, n_threads, bytes / t_cold / 1e9,
                            t_cold * 1e6, bytes / t_hot / 1e9, t_hot * 1e6);
            }
        }
    }
}

TC_TEST("perf/matmul-prefill") {
    if (tc::g_mode != "perf") return;
    const ggml_type types[] = {GGML_TYPE_Q8_0, GGML_TYPE_Q4_K, GGML_TYPE_Q6_K, GGML_TYPE_F16, GGML_TYPE_F32};
    const char * only = std::getenv("PERF_TYPES"); // e.g. PERF_TYPES=q4_K
    matmul_scratch scratch;
    for (ggml_type type : types) {
        const quant_traits * t = quant_traits_get(type);
        if (only && !std::strstr(only, t->name)) continue;
        // the Qwen2-0.5B FFN up projection; K-quants (256-element super-blocks) on the Qwen2-1.5B FFN
        const bool k_quant = t->block_size == 256;
        for (int shape = 0; shape < (k_quant ? 2 : 1); shape++) {
        const int64_t n_in = k_quant ? (shape ? 8960 : 1536) : 896, n_out = k_quant ? (shape ? 1536 : 8960) : 4864, n_tokens = 64;
        const test_weight w = make_weight(*t, n_in, n_out, 3);
        const std::vector<float> x = random_floats(n_in * n_tokens, 9);
        std::vector<float> y(n_out * n_tokens);
        for (int n_threads : {1, 2}) {
            thread_pool pool(n_threads);
            cpu_matmul(pool, w.view, x.data(), y.data(), n_tokens, scratch);
            double per = 1e30; // best of 15
            for (int i = 0; i < 15; i++) {
                const auto t0 = std::chrono::steady_clock::now();
                cpu_matmul(pool, w.view, x.data(), y.data(), n_tokens, scratch);
                per = std::min(per, seconds_since(t0));
            }
            std::printf("    matmul %-5s n_in=%lld n_out=%lld n_tokens=%lld threads=%d: %7.2f ms  %6.1f GFLOP/s\n",
                        t->name, (long long) n_in, (long long) n_out, (long long) n_tokens, n_threads, per * 1e3,
                        2.0 * n_in * n_out * n_tokens / per / 1e9);
        }
        }
    }
}

TC_TEST("perf/thread-pool-dispatch") {
    if (tc::g_mode != "perf") return;
    for (int n_threads : {2, 3}) {
        thread_pool pool(n_threads);
        std::atomic<int> sink{0};
        const auto job = [&sink](int ith, int) { if (ith < 0) sink++; };
        for (int i = 0; i < 1000; i++) pool.run(job);
        const int n = 200000;
        const auto t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < n; i++) pool.run(job);
        const double back_to_back = seconds_since(t0) / n;
        // after a pause long enough for the workers to fall asleep on the condition variable
        const int n_sleep = 200;
        double wake = 0;
        for (int i = 0; i < n_sleep; i++) {
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
            const auto t1 = std::chrono::steady_clock::now();
            pool.run(job);
            wake += seconds_since(t1);
        }
        std::printf("    thread pool threads=%d: %.2f us per empty job back to back, %.1f us after workers slept\n",
                    n_threads, back_to_back * 1e6, wake / n_sleep * 1e6);
    }
}
