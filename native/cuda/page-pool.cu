// The device page pool (page-pool-cuda.h). Host-side bookkeeping only; the one device call per slab is
// cudaMalloc + cudaMemset at creation and cudaFree at release.
#include "page-pool-cuda.h"

#include <algorithm>

#include "common.cuh"

namespace core {
namespace cuda {

device_page_pool::device_page_pool(size_t page_bytes, size_t slab_bytes, size_t slack_pages)
    : page_bytes_((std::max<size_t>(page_bytes, 1) + 255) / 256 * 256), per_slab_(std::max<size_t>(1, slab_bytes / page_bytes_)),
      slack_(slack_pages == SIZE_MAX ? per_slab_ : slack_pages) {}

device_page_pool::~device_page_pool() {
    for (void * s : slabs_)
        if (s) cudaFree(s);
}

status device_page_pool::alloc(void ** page) {
    std::lock_guard<std::mutex> lock(mu_);
    *page = nullptr;
    if (free_.empty()) {
        void * base = nullptr;
        const size_t bytes = per_slab_ * page_bytes_;
        const cudaError_t err = cudaMalloc(&base, bytes);
        if (err != cudaSuccess) {
            cudaGetLastError();
            if (err == cudaErrorMemoryAllocation)
                return status(ERR_OOM_DEVICE, strfmt("cuda kv page pool: device out of memory for another slab of %zu bytes (%zu slabs, %zu pages in use)",
                                                     bytes, std::count_if(slabs_.begin(), slabs_.end(), [](void * s) { return s != nullptr; }), in_use_));
            return status_from_cuda(err, "cudaMalloc", __FILE__, __LINE__);
        }
        // zeros: attention reads whole pages and masks the empty slots, so a page's never-written slots must
        // hold finite numbers (a reused page holds what its last user wrote: f16 keys and values)
        const cudaError_t zerr = cudaMemset(base, 0, bytes);
        if (zerr != cudaSuccess) {
            cudaFree(base);
            return status_from_cuda(zerr, "cudaMemset", __FILE__, __LINE__);
        }
        size_t si = std::find(slabs_.begin(), slabs_.end(), nullptr) - slabs_.begin();
        if (si == slabs_.size()) {
            slabs_.push_back(nullptr);
            slab_free_.push_back(0);
        }
        slabs_[si] = base;
        slab_free_[si] = per_slab_;
        by_base_[(uintptr_t) base] = si;
        for (size_t i = 0; i < per_slab_; i++) free_.insert({si, i});
    }
    const auto it = free_.begin();
    const size_t si = it->first, pi = it->second;
    free_.erase(it);
    slab_free_[si]--;
    in_use_++;
    *page = (uint8_t *) slabs_[si] + pi * page_bytes_;
    return status::success();
}

void device_page_pool::free(void * page) {
    if (!page) return;
    std::lock_guard<std::mutex> lock(mu_);
    auto it = by_base_.upper_bound((uintptr_t) page);
    if (it == by_base_.begin()) return;  // (not ours: a caller bug; ignored rather than corrupting the lists)
    --it;
    const size_t si = it->second, off = (uintptr_t) page - it->first;
    if (off >= per_slab_ * page_bytes_ || off % page_bytes_ || !free_.insert({si, off / page_bytes_}).second) return;
    slab_free_[si]++;
    in_use_--;
    release_empty_locked();
}

// Releases slabs with every page free, newest index first, while the pool keeps at least slack_ free pages
// without them.
void device_page_pool::release_empty_locked() {
    size_t n_free = free_.size();
    for (size_t si = slabs_.size(); si-- > 0;) {
        if (!slabs_[si] || slab_free_[si] != per_slab_ || n_free - per_slab_ < slack_) continue;
        free_.erase(free_.lower_bound({si, 0}), free_.lower_bound({si + 1, 0}));
        by_base_.erase((uintptr_t) slabs_[si]);
        cudaFree(slabs_[si]);  // (waits for the device: a kernel still reading the slab is done first)
        slabs_[si] = nullptr;
        slab_free_[si] = 0;
        n_free -= per_slab_;
    }
}

device_pool_stats device_page_pool::stats() const {
    std::lock_guard<std::mutex> lock(mu_);
    device_pool_stats s;
    s.page_bytes = page_bytes_;
    s.pages_per_slab = per_slab_;
    for (void * p : slabs_) s.slabs += p != nullptr;
    s.pages_in_use = in_use_;
    s.pages_free = free_.size();
    return s;
}

} // namespace cuda
} // namespace core
