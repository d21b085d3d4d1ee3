// A pool of fixed-size pages for KV storage, shared by the sequences of a context. Pages come from
// anonymous mmap slabs; a freed page goes back to the pool, and once more than `slack` free pages are
// resident its memory is returned to the OS (madvise DONTNEED), so the process's resident memory falls
// by what the memory report says, within the pool slack. Thread-safe.
#pragma once
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <vector>

namespace core {

struct page_pool_stats {
    size_t page_bytes = 0;
    size_t pages_in_use = 0;       // handed out
    size_t pages_free_resident = 0;// free, still backed by memory (the pool slack)
    size_t pages_free_released = 0;// free, memory returned to the OS
    size_t slabs = 0;
};

class page_pool {
public:
    // page_bytes is rounded up to a multiple of the OS page size.
    explicit page_pool(size_t page_bytes, size_t max_free_resident = 8);
    ~page_pool();
    page_pool(const page_pool &) = delete;
    page_pool & operator=(const page_pool &) = delete;

    size_t page_bytes() const { return page_bytes_; }
    // nullptr when the OS refuses memory. Pages are zero-filled on first touch only.
    void * alloc();
    // note: call only with a pointer returned by alloc() of this pool.
    void free(void * page);
    page_pool_stats stats() const;

private:
    void release_excess_locked();

    size_t page_bytes_;
    size_t pages_per_slab_;
    size_t max_free_resident_;
    mutable std::mutex mu_;
    std::vector<void *> slabs_;
    std::vector<void *> free_resident_;  // LIFO: the most recently freed page is reused first
    std::vector<void *> free_released_;
    size_t in_use_ = 0;
};

} // namespace core
