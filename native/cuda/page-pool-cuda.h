// A pool of fixed-size KV pages in device memory, shared by the sequences of a CUDA context (the device
// side of native/kv/page-pool.h). Pages come from slabs of one cudaMalloc each (about 2 MiB, zeroed when
// made); a head of the compressed device cache maps a page when its slots grow into it and gives it back
// when an eviction, a truncation or a rolled-back chunk leaves it empty. A slab whose pages are all free
// goes back to the driver (cudaFree) once the pool would still keep `slack_pages` free pages without it,
// so the device memory the context holds falls when the memory report says it does, within that slack;
// the slack keeps a head that crosses a page boundary back and forth from paying a cudaMalloc each time.
// Pages are handed out lowest slab first, so the newest slabs are the ones that empty out.
// Plain C++ header (no CUDA header). Thread-safe.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <set>
#include <utility>
#include <vector>

#include "../common/status.h"

namespace core {
namespace cuda {

struct device_pool_stats {
    size_t page_bytes = 0;
    size_t pages_per_slab = 0;
    size_t slabs = 0;        // slabs held (each pages_per_slab pages)
    size_t pages_in_use = 0; // handed out
    size_t pages_free = 0;   // in held slabs, not handed out (the pool's slack)
    size_t bytes_reserved() const { return slabs * pages_per_slab * page_bytes; }
};

class device_page_pool {
public:
    // page_bytes > 0; slab_bytes: the size of one cudaMalloc (rounded to whole pages, at least one);
    // slack_pages: free pages the pool keeps (default: one slab's).
    explicit device_page_pool(size_t page_bytes, size_t slab_bytes = (size_t) 2 << 20, size_t slack_pages = SIZE_MAX);
    ~device_page_pool();  // frees every slab (every page must be back: the caches hold the pool)
    device_page_pool(const device_page_pool &) = delete;
    device_page_pool & operator=(const device_page_pool &) = delete;

    size_t page_bytes() const { return page_bytes_; }
    // A page (page_bytes, 256-byte aligned): zeros if never used, else what its last user left. ERR_OOM_DEVICE
    // with the pool's size when the device has no room for another slab.
    status alloc(void ** page);
    // note: only pages alloc() returned; the caller's kernels that still read it are ahead in the stream of
    // every later user of the page (one stream per context), and cudaFree waits for the device.
    void free(void * page);
    device_pool_stats stats() const;

private:
    void release_empty_locked();

    size_t page_bytes_, per_slab_, slack_;
    mutable std::mutex mu_;
    std::vector<void *> slabs_;          // by index; nullptr: released (the index is reused)
    std::vector<size_t> slab_free_;      // free pages per slab
    std::map<uintptr_t, size_t> by_base_;  // slab base -> index
    std::set<std::pair<size_t, size_t>> free_;  // (slab index, page index) free pages, lowest first
    size_t in_use_ = 0;
};

} // namespace cuda
} // namespace core
