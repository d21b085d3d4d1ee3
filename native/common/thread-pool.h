// A small fork-join thread pool for the compute kernels. `run(fn)` calls fn(ith, nth) once on each of
// the nth threads (the calling thread is ith = 0) and returns when all are done. Workers spin briefly
// after a job (decode issues hundreds of jobs per token, so waking through the kernel each time costs
// more than the work) and then sleep on a condition variable, so an idle pool costs no CPU and a
// shared machine sees no spin storms.
#pragma once
#include <functional>

namespace core {

class thread_pool {
public:
    explicit thread_pool(int n_threads);
    ~thread_pool();
    thread_pool(const thread_pool &) = delete;
    thread_pool & operator=(const thread_pool &) = delete;

    int size() const { return n_threads_; }
    // note: not reentrant; call only from the thread that owns the pool.
    void run(const std::function<void(int ith, int nth)> & fn);

    struct impl;
private:
    int n_threads_;
    impl * impl_;
};

// Number of physical cores (falls back to logical CPUs / 1).
int cpu_physical_cores();

} // namespace core
