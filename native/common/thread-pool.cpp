// Fork-join thread pool (see thread-pool.h). Protocol:
//   - `run` publishes the job (fn pointer), then bumps `generation`. Workers wait for the generation to
//     change: first spinning with a pause instruction for up to kSpinNs, then sleeping on `cv`.
//   - Lost wake-ups are avoided Dekker-style: a worker increments `n_sleeping` under `mutex` and then
//     re-checks `generation` (both seq_cst) before waiting; `run` stores `generation` and then reads
//     `n_sleeping` (both seq_cst), so at least one side sees the other. If `run` sees a sleeper it takes
//     the mutex before notifying, which cannot interleave with a worker between its check and its wait.
//   - Completion is a counter the caller spins on (release by workers, acquire by the caller), so all
//     writes made by the job are visible when `run` returns.
// Cost of one `run` with spinning workers is a few cache-line transfers (~0.2 us on an idle 2-core Zen 4;
// see perf/thread-pool-dispatch). Jobs must not throw: `run` would unwind while workers still use fn.
#include "thread-pool.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <dirent.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace core {

namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    _mm_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

inline int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

// How long an idle worker spins before sleeping. Decode issues a job every few microseconds, so this
// only needs to cover the gap between two jobs of one token, not the gap between tokens.
constexpr int64_t kSpinNs = 200 * 1000;
// After this long a spinning worker also yields its core at each time check, which costs one syscall
// when the core is otherwise idle but rescues an oversubscribed machine (e.g. other processes busy,
// or more pool threads than cores), where a pure spin would hold the core a preempted peer needs.
constexpr int64_t kYieldAfterNs = 5 * 1000;
// How long the caller spins waiting for stragglers before it starts yielding its core (matters when
// the machine is oversubscribed and a worker was preempted).
constexpr int64_t kJoinSpinNs = 5 * 1000;

} // namespace

struct thread_pool::impl {
    // Each hot field on its own cache line: `generation`/`fn` are written by the caller and read by all
    // workers; `n_done` is written by all workers and read by the caller.
    alignas(64) std::atomic<uint64_t> generation{0};
    const std::function<void(int, int)> * fn = nullptr;
    bool stop = false;
    alignas(64) std::atomic<int> n_done{0};
    alignas(64) std::atomic<int> n_sleeping{0};
    std::mutex mutex;
    std::condition_variable cv;
    std::vector<std::thread> workers;

    void worker_main(int ith, int nth) {
        uint64_t seen = 0;
        for (;;) {
            // wait for the next generation: spin, then sleep
            uint64_t g = generation.load(std::memory_order_acquire);
            if (g == seen) {
                const int64_t t0 = now_ns();
                for (int i = 1;; i++) {
                    cpu_relax();
                    g = generation.load(std::memory_order_acquire);
                    if (g != seen) break;
                    if ((i & 63) == 0) {
                        const int64_t dt = now_ns() - t0;
                        if (dt > kSpinNs) break;
                        // more threads than free cores: let a preempted thread of this pool run
                        if (dt > kYieldAfterNs) std::this_thread::yield();
                    }
                }
            }
            if (g == seen) {
                std::unique_lock<std::mutex> lock(mutex);
                n_sleeping.fetch_add(1, std::memory_order_seq_cst);
                while ((g = generation.load(std::memory_order_seq_cst)) == seen) cv.wait(lock);
                n_sleeping.fetch_sub(1, std::memory_order_relaxed);
            }
            seen = g;
            if (stop) return; // written before the generation bump that woke us
            (*fn)(ith, nth);
            n_done.fetch_add(1, std::memory_order_release);
        }
    }

    void wake_all() {
        if (n_sleeping.load(std::memory_order_seq_cst) > 0) {
            { std::lock_guard<std::mutex> lock(mutex); }
            cv.notify_all();
        }
    }
};

thread_pool::thread_pool(int n_threads) : n_threads_(n_threads < 1 ? 1 : n_threads), impl_(new impl) {
    impl_->workers.reserve(n_threads_ - 1);
    for (int i = 1; i < n_threads_; i++) impl_->workers.emplace_back([this, i] { impl_->worker_main(i, n_threads_); });
}

thread_pool::~thread_pool() {
    impl_->stop = true;
    impl_->generation.fetch_add(1, std::memory_order_seq_cst);
    {
        std::lock_guard<std::mutex> lock(impl_->mutex);
    }
    impl_->cv.notify_all();
    for (auto & t : impl_->workers) t.join();
    delete impl_;
}

void thread_pool::run(const std::function<void(int ith, int nth)> & fn) {
    if (n_threads_ == 1) {
        fn(0, 1);
        return;
    }
    impl & p = *impl_;
    p.fn = &fn;
    p.n_done.store(0, std::memory_order_relaxed);
    p.generation.fetch_add(1, std::memory_order_seq_cst); // publishes fn and n_done
    p.wake_all();

    fn(0, n_threads_);

    const int n_workers = n_threads_ - 1;
    if (p.n_done.load(std::memory_order_acquire) == n_workers) return;
    const int64_t t0 = now_ns();
    for (int i = 1; p.n_done.load(std::memory_order_acquire) != n_workers; i++) {
        if ((i & 63) == 0 && now_ns() - t0 > kJoinSpinNs) std::this_thread::yield();
        else cpu_relax();
    }
}

int cpu_physical_cores() {
    // Unique (physical_package_id, core_id) pairs over the online CPUs listed in sysfs; SMT siblings
    // share a pair. Compute kernels are bound by the FMA units and memory, so SMT threads add little.
    static const int cached = [] {
        std::set<std::pair<int, int>> cores;
        if (DIR * dir = opendir("/sys/devices/system/cpu")) {
            while (dirent * e = readdir(dir)) {
                const char * n = e->d_name;
                if (n[0] != 'c' || n[1] != 'p' || n[2] != 'u' || n[3] < '0' || n[3] > '9') continue;
                const std::string base = std::string("/sys/devices/system/cpu/") + n + "/topology/";
                int core_id = -1, package_id = -1;
                if (FILE * f = std::fopen((base + "core_id").c_str(), "r")) {
                    if (std::fscanf(f, "%d", &core_id) != 1) core_id = -1;
                    std::fclose(f);
                }
                if (FILE * f = std::fopen((base + "physical_package_id").c_str(), "r")) {
                    if (std::fscanf(f, "%d", &package_id) != 1) package_id = -1;
                    std::fclose(f);
                }
                if (core_id >= 0) cores.insert({package_id, core_id}); // offline CPUs have no topology
            }
            closedir(dir);
        }
        if (!cores.empty()) return (int) cores.size();
        const unsigned hc = std::thread::hardware_concurrency();
        return hc > 0 ? (int) hc : 1;
    }();
    return cached;
}

} // namespace core
