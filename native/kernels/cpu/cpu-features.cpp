// CPU feature detection (cpuid + xgetbv, so OS support for the wider register state is checked too)
// and the dispatch level, capped by env THINKCACHE_CPU=scalar|avx2|avx512 (read once, on first use).
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "quant-traits-cpu.h"

#if defined(__x86_64__)
#include <cpuid.h>
#endif

namespace core {

namespace {

cpu_features_t detect_cpu_features() {
    cpu_features_t f;
#if defined(__x86_64__)
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
    const bool osxsave = c & (1u << 27), avx = c & (1u << 28);
    const bool fma = c & (1u << 12), f16c = c & (1u << 29);
    if (!osxsave || !avx) return f;
    unsigned xcr0_lo, xcr0_hi;
    __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
    const bool os_avx = (xcr0_lo & 0x6u) == 0x6u;         // XMM + YMM state
    const bool os_avx512 = (xcr0_lo & 0xe6u) == 0xe6u;    // + opmask, ZMM_Hi256, Hi16_ZMM
    if (!os_avx) return f;
    unsigned max_leaf = __get_cpuid_max(0, nullptr);
    if (max_leaf < 7) return f;
    __cpuid_count(7, 0, a, b, c, d);
    const unsigned leaf7_max_sub = a;
    f.avx2 = b & (1u << 5);
    f.fma = fma;
    f.f16c = f16c;
    if (os_avx512) {
        f.avx512f = b & (1u << 16);
        f.avx512bw = b & (1u << 30);
        f.avx512vl = b & (1u << 31);
        f.avx512_vnni = c & (1u << 11);
        if (leaf7_max_sub >= 1) {
            __cpuid_count(7, 1, a, b, c, d);
            f.avx512_bf16 = a & (1u << 5);
        }
    }
#endif
    return f;
}

cpu_level level_from_features(const cpu_features_t & f) {
    if (!(f.avx2 && f.fma && f.f16c)) return CPU_LEVEL_SCALAR;
    if (!(f.avx512f && f.avx512bw && f.avx512vl)) return CPU_LEVEL_AVX2;
    return CPU_LEVEL_AVX512;
}

} // namespace

const cpu_features_t & cpu_features() {
    static const cpu_features_t f = detect_cpu_features();
    return f;
}

const char * cpu_level_name(cpu_level level) {
    switch (level) {
        case CPU_LEVEL_SCALAR: return "scalar";
        case CPU_LEVEL_AVX2: return "avx2";
        case CPU_LEVEL_AVX512: return "avx512";
        default: return "unknown";
    }
}

cpu_level cpu_level_supported() {
    static const cpu_level l = level_from_features(cpu_features());
    return l;
}

cpu_level cpu_level_active() {
    static const cpu_level l = [] {
        cpu_level level = cpu_level_supported();
        if (const char * env = std::getenv("THINKCACHE_CPU")) {
            int cap = -1;
            for (int i = 0; i < CPU_LEVEL_COUNT; i++)
                if (!std::strcmp(env, cpu_level_name((cpu_level) i))) cap = i;
            if (cap < 0) std::fprintf(stderr, "thinkcache: ignoring THINKCACHE_CPU=%s (expected scalar|avx2|avx512)\n", env);
            else if (cap < level) level = (cpu_level) cap;
        }
        return level;
    }();
    return l;
}

const char * cpu_dispatch_level() { return cpu_level_name(cpu_level_active()); }

} // namespace core
