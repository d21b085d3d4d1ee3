// CUDA emulation on the CPU (see cuda_runtime.h): the runtime calls and the block scheduler.
// A block's threads are fibers with their own stacks, switched by a few instructions (x86-64 System V;
// elsewhere ucontext); the scheduler runs each runnable fiber until it finishes or waits at a barrier,
// then releases a warp whose live lanes all wait at a warp barrier, or the block when all its live
// threads wait at __syncthreads. Anything else is a barrier some threads never reach: the launch fails
// (cudaErrorLaunchFailure, with the kernel's grid position on stderr) instead of hanging.
#include "cuda_runtime.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <vector>

#if !(defined(__x86_64__) && defined(__linux__)) || defined(TC_EMU_FORCE_UCONTEXT)
#include <ucontext.h>
#define TC_EMU_UCONTEXT 1  // (also for sanitizer builds: AddressSanitizer follows swapcontext)
#endif

struct CUstream_st { int unused; };
struct CUevent_st { double t; };
struct CUgraph_st { int unused; };
struct CUgraphExec_st { int unused; };

namespace {

enum fstate : uint8_t { RUNNABLE, AT_BLOCK, AT_WARP, DONE };
constexpr size_t STACK_BYTES = 128 * 1024;

struct fiber {
    void * sp = nullptr;
#ifdef TC_EMU_UCONTEXT
    ucontext_t uc;
#endif
    char * stack = nullptr;
    fstate st = DONE;
    tc_emu::thread_ctx ctx;
};

std::mutex g_mu;                       // one launch at a time (all emulated work runs on the launching thread)
std::vector<fiber> g_fibers;
int g_cur = -1;
void * g_sched_sp = nullptr;
#ifdef TC_EMU_UCONTEXT
ucontext_t g_sched_uc;
#endif
const std::function<void()> * g_body = nullptr;
std::vector<char> g_smem;
uint32_t g_shfl[32][32];
cudaError_t g_last = cudaSuccess;
bool g_direct = false;                 // threads run as plain calls (a kernel whose thread 0 met no barrier)
bool g_direct_barrier = false;         // ... and one of them met a barrier after all
std::map<void *, size_t> g_allocs;
size_t g_alloc_bytes = 0;

size_t mem_budget() {
    static const size_t b = [] {
        const char * e = std::getenv("TC_CUDA_EMU_MEM_MB");
        return (size_t) (e ? std::atoll(e) : 4096) << 20;
    }();
    return b;
}

} // namespace

#ifndef TC_EMU_UCONTEXT
extern "C" void tc_emu_swap(void ** save_sp, void * new_sp);
extern "C" void tc_emu_trampoline();
// callee-saved registers, then the stack pointer (MXCSR and the x87 control word are never changed by
// the emulated code, so they are not switched: ldmxcsr/fldcw are slow)
asm(R"(
    .text
    .globl tc_emu_swap
    .type tc_emu_swap,@function
tc_emu_swap:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size tc_emu_swap,.-tc_emu_swap
    .globl tc_emu_trampoline
    .type tc_emu_trampoline,@function
tc_emu_trampoline:
    call tc_emu_fiber_entry
    ud2
    .size tc_emu_trampoline,.-tc_emu_trampoline
)");
#endif

extern "C" void tc_emu_fiber_entry() {
    fiber & f = g_fibers[(size_t) g_cur];
    (*g_body)();
    f.st = DONE;
#ifdef TC_EMU_UCONTEXT
    swapcontext(&f.uc, &g_sched_uc);
#else
    tc_emu_swap(&f.sp, g_sched_sp);
#endif
    std::abort();  // never resumed
}

namespace {

void to_scheduler() {
    fiber & f = g_fibers[(size_t) g_cur];
#ifdef TC_EMU_UCONTEXT
    swapcontext(&f.uc, &g_sched_uc);
#else
    tc_emu_swap(&f.sp, g_sched_sp);
#endif
}

void start_fiber(fiber & f, int index) {
#ifdef TC_EMU_UCONTEXT
    getcontext(&f.uc);
    f.uc.uc_stack.ss_sp = f.stack;
    f.uc.uc_stack.ss_size = STACK_BYTES;
    f.uc.uc_link = nullptr;
    (void) index;
    makecontext(&f.uc, (void (*)()) tc_emu_fiber_entry, 0);
#else
    // [sp] r15 r14 r13 r12 rbx rbp, then the return address (the trampoline), so that after tc_emu_swap's
    // ret the stack is 16-byte aligned for the trampoline's call
    // (stack tops staggered by a few cache lines: at a power-of-two stride they would all fall into the same
    // cache sets, and every switch would miss)
    uintptr_t top = ((uintptr_t) (f.stack + STACK_BYTES - (size_t) (index % 61) * 272)) & ~(uintptr_t) 15;
    uint64_t * p = (uint64_t *) (top - 56);
    for (int i = 0; i < 6; i++) p[i] = 0;
    p[6] = (uint64_t) (uintptr_t) &tc_emu_trampoline;
    f.sp = p;
#endif
}

void resume(int i) {
    g_cur = i;
    fiber & f = g_fibers[(size_t) i];
#ifdef TC_EMU_UCONTEXT
    swapcontext(&g_sched_uc, &f.uc);
#else
    tc_emu_swap(&g_sched_sp, f.sp);
#endif
    g_cur = -1;
}

// Runs one block to the end; false on a barrier some threads never reach. A run queue, and per warp the
// count of live lanes and of lanes at a warp barrier: a warp is released the moment its last live lane
// arrives, the block when nothing can run and every live thread waits at __syncthreads.
int g_barriers = 0;  // barriers met in fiber mode (run_block)

bool run_block(int n) {
    static std::vector<int> queue;
    static std::vector<int> warp_alive, warp_wait;
    const int nw = (n + 31) / 32;
    queue.clear();
    warp_alive.assign((size_t) nw, 0);
    warp_wait.assign((size_t) nw, 0);
    for (int i = 0; i < n; i++) {
        g_fibers[(size_t) i].st = RUNNABLE;
        start_fiber(g_fibers[(size_t) i], i);
        queue.push_back(i);
        warp_alive[(size_t) (i / 32)]++;
    }
    int live = n, block_wait = 0;
    size_t head = 0;
    auto release_warp = [&](int w) {
        for (int i = w * 32; i < std::min(n, w * 32 + 32); i++)
            if (g_fibers[(size_t) i].st == AT_WARP) {
                g_fibers[(size_t) i].st = RUNNABLE;
                queue.push_back(i);
            }
        warp_wait[(size_t) w] = 0;
    };
    while (live > 0) {
        if (head == queue.size()) {
            if (block_wait != live) return false;  // some wait at __syncthreads, others at a warp barrier
            queue.clear();
            head = 0;
            for (int i = 0; i < n; i++)
                if (g_fibers[(size_t) i].st == AT_BLOCK) {
                    g_fibers[(size_t) i].st = RUNNABLE;
                    queue.push_back(i);
                }
            block_wait = 0;
            continue;
        }
        const int i = queue[head++];
        resume(i);
        const int w = i / 32;
        switch (g_fibers[(size_t) i].st) {
        case DONE:
            live--;
            warp_alive[(size_t) w]--;
            if (warp_wait[(size_t) w] > 0 && warp_wait[(size_t) w] == warp_alive[(size_t) w]) release_warp(w);
            break;
        case AT_WARP:
            g_barriers++;
            if (++warp_wait[(size_t) w] == warp_alive[(size_t) w]) release_warp(w);
            break;
        case AT_BLOCK:
            g_barriers++;
            block_wait++;
            break;
        case RUNNABLE:
            break;
        }
    }
    return true;
}

} // namespace

namespace tc_emu {

thread_ctx & cur() {
    if (g_cur < 0) {
        std::fprintf(stderr, "cuda emu: threadIdx/blockIdx read outside a kernel\n");
        std::abort();
    }
    return g_fibers[(size_t) g_cur].ctx;
}
void * dyn_smem() { return g_smem.data(); }
void syncthreads() {
    if (g_direct) { g_direct_barrier = true; return; }
    g_fibers[(size_t) g_cur].st = AT_BLOCK;
    to_scheduler();
}
void syncwarp() {
    if (g_direct) { g_direct_barrier = true; return; }
    g_fibers[(size_t) g_cur].st = AT_WARP;
    to_scheduler();
}
uint32_t shfl_xor_bits(uint32_t v, int lane_mask) {
    const int tid = g_fibers[(size_t) g_cur].ctx.tid, w = tid / 32, lane = tid % 32;
    g_shfl[w][lane] = v;
    syncwarp();
    const int src = lane ^ (lane_mask & 31);
    const int n = (int) g_fibers.size();  // lanes past the block's last thread: the lane's own value
    const uint32_t r = w * 32 + src < n ? g_shfl[w][src] : v;
    syncwarp();
    return r;
}

float warp_butterfly(float v, bool max) {
    const int tid = g_fibers[(size_t) g_cur].ctx.tid, w = tid / 32, lane = tid % 32;
    const int n = (int) g_fibers.size();
    if (w * 32 + 32 > n) {  // a partial warp: the shuffles' own semantics
        for (int o = 16; o > 0; o >>= 1) {
            uint32_t b;
            std::memcpy(&b, &v, 4);
            b = shfl_xor_bits(b, o);
            float u;
            std::memcpy(&u, &b, 4);
            v = max ? std::fmax(v, u) : v + u;
        }
        return v;
    }
    static float result[32];  // per warp; lane 0 computes it between the two barriers
    std::memcpy(&g_shfl[w][lane], &v, 4);
    syncwarp();
    if (lane == 0) {
        float x[32];
        std::memcpy(x, g_shfl[w], sizeof(x));
        for (int o = 16; o > 0; o >>= 1) {
            float y[32];
            for (int l = 0; l < 32; l++) y[l] = max ? std::fmax(x[l], x[l ^ o]) : x[l] + x[l ^ o];
            std::memcpy(x, y, sizeof(x));
        }
        result[w] = x[0];  // (every lane's x[l] holds the same bits: the butterfly is an all-reduce)
    }
    syncwarp();
    return result[w];
}

void launch(const cfg & c, const std::function<void()> & body) {
    std::lock_guard<std::mutex> lock(g_mu);
    const unsigned nt = c.block.x * c.block.y * c.block.z;
    if (nt == 0 || nt > 1024 || c.block.z > 64 || c.grid.y > 65535 || c.grid.z > 65535 || c.grid.x == 0 || c.grid.y == 0 || c.grid.z == 0 ||
        c.smem > 227 * 1024) {
        std::fprintf(stderr, "cuda emu: invalid launch (grid %u x %u x %u, block %u x %u x %u, %zu B dynamic shared memory)\n", c.grid.x, c.grid.y,
                     c.grid.z, c.block.x, c.block.y, c.block.z, c.smem);
        g_last = cudaErrorInvalidValue;
        return;
    }
    if (g_fibers.size() != nt) {
        for (fiber & f : g_fibers) std::free(f.stack);
        g_fibers.assign(nt, fiber{});
        for (fiber & f : g_fibers) f.stack = (char *) std::malloc(STACK_BYTES);
    }
    g_body = &body;
    // uninitialized shared memory reads as NaN (0xff bytes), never as a convenient zero
    g_smem.assign(c.smem + 16, (char) 0xff);
    for (unsigned bz = 0; bz < c.grid.z; bz++)
        for (unsigned by = 0; by < c.grid.y; by++)
            for (unsigned bx = 0; bx < c.grid.x; bx++) {
                for (unsigned i = 0; i < nt; i++) {
                    thread_ctx & t = g_fibers[i].ctx;
                    t.tid = (int) i;
                    t.thread_idx = dim3(i % c.block.x, (i / c.block.x) % c.block.y, i / (c.block.x * c.block.y));
                    t.block_idx = dim3(bx, by, bz);
                    t.block_dim = c.block;
                    t.grid_dim = c.grid;
                }
                if (g_direct) {  // plain calls, thread after thread: no barrier was met in the first block
                    for (unsigned i = 0; i < nt; i++) {
                        g_cur = (int) i;
                        body();
                    }
                    g_cur = -1;
                    if (g_direct_barrier) {
                        std::fprintf(stderr, "cuda emu: block (%u, %u, %u): a barrier met by some threads only (the first block met none)\n", bx, by, bz);
                        g_last = cudaErrorLaunchFailure;
                        g_body = nullptr;
                        g_direct = g_direct_barrier = false;
                        return;
                    }
                    continue;
                }
                g_barriers = 0;
                if (!run_block((int) nt)) {
                    std::fprintf(stderr, "cuda emu: block (%u, %u, %u) of a %u x %u x %u grid: a barrier that not every thread reaches\n", bx, by, bz,
                                 c.grid.x, c.grid.y, c.grid.z);
                    g_last = cudaErrorLaunchFailure;
                    g_body = nullptr;
                    g_fibers.clear();  // the stuck fibers' stacks are abandoned with them
                    return;
                }
                // a block that met no barrier at all: the kernel's other blocks run as plain calls (a barrier there
                // is still caught, as a launch failure)
                if (g_barriers == 0) g_direct = true;
            }
    g_direct = g_direct_barrier = false;
    g_body = nullptr;
}

} // namespace tc_emu

// ---- runtime API ----

const char * cudaGetErrorName(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInsufficientDriver: return "cudaErrorInsufficientDriver";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorNotSupported: return "cudaErrorNotSupported";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    }
    return "cudaErrorUnknown";
}
const char * cudaGetErrorString(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorMemoryAllocation: return "out of memory (emulated device budget, TC_CUDA_EMU_MEM_MB)";
    case cudaErrorNotSupported: return "operation not supported by the CUDA emulation";
    case cudaErrorLaunchFailure: return "unspecified launch failure (emulation: see stderr)";
    default: return cudaGetErrorName(e);
    }
}
cudaError_t cudaGetLastError() {
    const cudaError_t e = g_last;
    g_last = cudaSuccess;
    return e;
}
cudaError_t cudaGetDeviceCount(int * n) { *n = 1; return cudaSuccess; }
cudaError_t cudaGetDeviceProperties(cudaDeviceProp * p, int device) {
    if (device != 0) return cudaErrorInvalidValue;
    std::memset(p, 0, sizeof(*p));
    std::snprintf(p->name, sizeof(p->name), "CUDA emulation on the CPU");
    p->major = 9;
    p->minor = 0;
    p->multiProcessorCount = 4;
    p->l2CacheSize = 4 << 20;
    p->totalGlobalMem = mem_budget();
    return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int * v, cudaDeviceAttr a, int) {
    switch (a) {
    case cudaDevAttrMultiProcessorCount: *v = 4; return cudaSuccess;
    case cudaDevAttrL2CacheSize: *v = 4 << 20; return cudaSuccess;
    default: *v = 0; return cudaErrorInvalidValue;  // no memory clock: the benchmarks take --hbm-gbs
    }
}
cudaError_t cudaDriverGetVersion(int * v) { *v = 0; return cudaSuccess; }
cudaError_t cudaRuntimeGetVersion(int * v) { *v = 0; return cudaSuccess; }
cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : cudaErrorInvalidValue; }
cudaError_t cudaGetDevice(int * device) { *device = 0; return cudaSuccess; }
cudaError_t cudaMemGetInfo(size_t * free_bytes, size_t * total_bytes) {
    std::lock_guard<std::mutex> lock(g_mu);
    *total_bytes = mem_budget();
    *free_bytes = mem_budget() - std::min(mem_budget(), g_alloc_bytes);
    return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
cudaError_t cudaMalloc(void ** p, size_t bytes) {
    std::lock_guard<std::mutex> lock(g_mu);
    if (g_alloc_bytes + bytes > mem_budget()) { *p = nullptr; return g_last = cudaErrorMemoryAllocation; }
    *p = std::aligned_alloc(256, (bytes + 255) / 256 * 256);
    if (!*p) return g_last = cudaErrorMemoryAllocation;
    std::memset(*p, 0xa5, bytes);  // cudaMalloc's memory is uninitialized: never a convenient zero
    g_allocs[*p] = bytes;
    g_alloc_bytes += bytes;
    return cudaSuccess;
}
cudaError_t cudaFree(void * p) {
    if (!p) return cudaSuccess;
    std::lock_guard<std::mutex> lock(g_mu);
    auto it = g_allocs.find(p);
    if (it == g_allocs.end()) return cudaErrorInvalidValue;
    g_alloc_bytes -= it->second;
    g_allocs.erase(it);
    std::free(p);
    return cudaSuccess;
}
cudaError_t cudaMallocHost(void ** p, size_t bytes) {
    *p = std::malloc(bytes ? bytes : 1);
    return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
cudaError_t cudaFreeHost(void * p) { std::free(p); return cudaSuccess; }
cudaError_t cudaMemcpy(void * dst, const void * src, size_t bytes, cudaMemcpyKind) {
    if (bytes) std::memmove(dst, src, bytes);
    return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void * dst, const void * src, size_t bytes, cudaMemcpyKind k, cudaStream_t) { return cudaMemcpy(dst, src, bytes, k); }
cudaError_t cudaMemset(void * p, int v, size_t bytes) {
    if (bytes) std::memset(p, v, bytes);
    return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void * p, int v, size_t bytes, cudaStream_t) { return cudaMemset(p, v, bytes); }
cudaError_t cudaStreamCreateWithFlags(cudaStream_t * s, unsigned) { *s = new CUstream_st{}; return cudaSuccess; }
cudaError_t cudaStreamDestroy(cudaStream_t s) { delete s; return cudaSuccess; }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }  // work ran at launch
cudaError_t cudaEventCreate(cudaEvent_t * e) { *e = new CUevent_st{0}; return cudaSuccess; }
cudaError_t cudaEventDestroy(cudaEvent_t e) { delete e; return cudaSuccess; }
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t) {
    e->t = std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
    return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventElapsedTime(float * ms, cudaEvent_t a, cudaEvent_t b) { *ms = (float) ((b->t - a->t) * 1e3); return cudaSuccess; }
// work runs at launch, so there is nothing to capture: graphs are refused (only the benchmark uses them)
cudaError_t cudaStreamBeginCapture(cudaStream_t, cudaStreamCaptureMode) { return g_last = cudaErrorNotSupported; }
cudaError_t cudaStreamEndCapture(cudaStream_t, cudaGraph_t *) { return g_last = cudaErrorNotSupported; }
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *, cudaGraph_t, unsigned long long) { return g_last = cudaErrorNotSupported; }
cudaError_t cudaGraphLaunch(cudaGraphExec_t, cudaStream_t) { return g_last = cudaErrorNotSupported; }
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t) { return cudaSuccess; }
cudaError_t cudaGraphDestroy(cudaGraph_t) { return cudaSuccess; }
