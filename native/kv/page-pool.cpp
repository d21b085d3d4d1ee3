#include "page-pool.h"

#include <algorithm>
#include <sys/mman.h>
#include <unistd.h>

namespace core {

page_pool::page_pool(size_t page_bytes, size_t max_free_resident) : max_free_resident_(max_free_resident) {
    const size_t os_page = (size_t) sysconf(_SC_PAGESIZE);
    page_bytes_ = (page_bytes + os_page - 1) / os_page * os_page;
    // slabs of ~2 MiB (at least one page): few mmaps, and a slab's tail is never wasted for long
    pages_per_slab_ = std::max<size_t>(1, (2u << 20) / page_bytes_);
}

page_pool::~page_pool() {
    for (void * s : slabs_) munmap(s, pages_per_slab_ * page_bytes_);
}

void * page_pool::alloc() {
    std::lock_guard<std::mutex> lock(mu_);
    void * p = nullptr;
    if (!free_resident_.empty()) {
        p = free_resident_.back();
        free_resident_.pop_back();
    } else if (!free_released_.empty()) {
        p = free_released_.back();  // faults back in (zero-filled) on first write
        free_released_.pop_back();
    } else {
        void * slab = mmap(nullptr, pages_per_slab_ * page_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (slab == MAP_FAILED) return nullptr;
        slabs_.push_back(slab);
        // untouched pages are not resident yet: they count as released until used
        for (size_t i = pages_per_slab_; i-- > 1;) free_released_.push_back((char *) slab + i * page_bytes_);
        p = slab;
    }
    in_use_++;
    return p;
}

void page_pool::free(void * page) {
    std::lock_guard<std::mutex> lock(mu_);
    in_use_--;
    free_resident_.push_back(page);
    release_excess_locked();
}

void page_pool::release_excess_locked() {
    while (free_resident_.size() > max_free_resident_) {
        void * p = free_resident_.front();
        free_resident_.erase(free_resident_.begin());
        madvise(p, page_bytes_, MADV_DONTNEED);
        free_released_.push_back(p);
    }
}

page_pool_stats page_pool::stats() const {
    std::lock_guard<std::mutex> lock(mu_);
    page_pool_stats s;
    s.page_bytes = page_bytes_;
    s.pages_in_use = in_use_;
    s.pages_free_resident = free_resident_.size();
    s.pages_free_released = free_released_.size();
    s.slabs = slabs_.size();
    return s;
}

} // namespace core
