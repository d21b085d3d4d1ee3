// Element-type registry tests (after ggml's test-quantize-fns): everything iterates quant_traits_all()
// and the CPU kernel table, so a new type or SIMD variant is covered by adding its rows.
//   - round trip from_float_ref -> to_float within a per-type NMSE budget
//   - every SIMD activation conversion is bit-exact with from_float_ref (ties and subnormals included)
//   - every SIMD dot product, and the dispatched dot at every level this CPU has, matches vec_dot_ref
//     (NMSE <= 1e-10) over odd sizes
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/quant-traits-cpu.h"
#include "tensor/ggml-type.h"
#include "tensor/quant-traits.h"
#include "tensor/quants/q8-0.h"
#include "test-harness.h"

using namespace core;

namespace {

// Gaussian values, optionally with 1 in 64 scaled up 8x (outliers, as real activations have);
// deterministic per seed.
std::vector<float> random_floats(size_t n, uint32_t seed, bool outliers = true) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> g(0.0f, 1.0f);
    std::vector<float> v(n);
    for (size_t i = 0; i < n; i++) v[i] = g(rng) * (outliers && (rng() % 64) == 0 ? 8.0f : 1.0f);
    return v;
}

// Inputs that probe rounding: blocks with amax = 127 (so the q8_0 inverse scale is exactly 1 and k + 0.5
// values are ties), an all-zero block, f16-subnormal magnitudes, bf16 ties, and huge values.
std::vector<float> tricky_floats(size_t n, uint32_t seed) {
    std::vector<float> v = random_floats(n, seed);
    for (size_t b = 0; b * 32 < n; b++) {
        float * x = v.data() + b * 32;
        const size_t len = std::min<size_t>(32, n - b * 32);
        switch (b % 6) {
            case 0: for (size_t j = 0; j < len; j++) x[j] = j == 0 ? 127.0f : (float) ((int) j - 16) * 0.5f; break;
            case 1: for (size_t j = 0; j < len; j++) x[j] = 0.0f; break;
            case 2: for (size_t j = 0; j < len; j++) x[j] *= 1e-6f; break;  // f16 subnormals
            case 3: for (size_t j = 0; j < len; j++) x[j] = bits_f32(0x3f808000u + ((uint32_t) j << 16)); break; // bf16 ties
            case 4: for (size_t j = 0; j < len; j++) x[j] *= 3e4f; break;   // near f16 max
            default: break;
        }
    }
    return v;
}

// Round-trip NMSE budget on Gaussian data (no outliers). Unknown quantized types get a generic budget from their bit
// rate (uniform quantization error falls 4x per bit), so a new type is tested before it is tuned.
double round_trip_budget(const quant_traits & t) {
    switch (t.type) {
        case GGML_TYPE_F32: return 0.0;
        case GGML_TYPE_F16: return 1e-7;   // relative error <= 2^-11
        case GGML_TYPE_BF16: return 4e-6;  // relative error <= 2^-8
        case GGML_TYPE_Q8_0: return 4e-5;  // measured ~2.6e-5 (max|x| of 32 Gaussians / 127 steps)
        case GGML_TYPE_Q8_1: return 4e-5;  // measured 2.8e-5
        case GGML_TYPE_Q8_K: return 8e-5;  // measured 5.1e-5 (one scale per 256 values)
        // Budgets per bit width (as ggml's MAX_QUANTIZATION_TOTAL_ERROR_*BITS), about 1.5x the measured NMSE
        // of our reference quantizers, which reproduce llama-quantize's (no importance matrix) bit for bit.
        case GGML_TYPE_Q6_K: return 5e-4;  // measured 3.1e-4
        case GGML_TYPE_Q5_0: return 2.6e-3; // measured 1.75e-3
        case GGML_TYPE_Q5_1: return 2.1e-3; // measured 1.42e-3
        case GGML_TYPE_Q5_K: return 2e-3;  // measured 1.3e-3
        case GGML_TYPE_Q4_0: return 1.1e-2; // measured 7.3e-3
        case GGML_TYPE_Q4_1: return 9e-3;  // measured 6.1e-3
        case GGML_TYPE_Q4_K: return 8e-3;  // measured 5.3e-3
        case GGML_TYPE_Q3_K: return 3.4e-2; // measured 2.3e-2
        case GGML_TYPE_Q2_K: return 0.135; // measured 0.090
        default: {
            const double bpw = 8.0 * (double) t.type_size / (double) t.block_size;
            return 0.25 * std::pow(4.0, -(bpw - 2.5));
        }
    }
}

std::vector<int64_t> test_sizes(int64_t block_size) {
    if (block_size == 1) return {1, 3, 7, 15, 16, 17, 31, 33, 63, 64, 65, 127, 129, 1000, 4097};
    std::vector<int64_t> v;
    for (int64_t nb : {1, 2, 3, 5, 17, 63, 152}) v.push_back(nb * block_size);
    return v;
}

} // namespace

TC_TEST("quants/registry") {
    size_t n = 0;
    const quant_traits * all = quant_traits_all(&n);
    TC_CHECK(n >= 4);
    for (size_t i = 0; i < n; i++) {
        const quant_traits & t = all[i];
        TC_CHECK(quant_traits_get(t.type) == &t) << t.name;
        TC_CHECK(ggml_type_name(t.type) && !std::strcmp(ggml_type_name(t.type), t.name)) << t.name;
        TC_CHECK(t.block_size > 0 && t.type_size > 0) << t.name;
        TC_CHECK(t.to_float && t.from_float_ref) << t.name;
        TC_CHECK(t.is_quantized == (t.block_size > 1)) << t.name;
        TC_CHECK(quant_row_bytes(&t, 4 * t.block_size) == 4 * t.type_size) << t.name;
    }
    TC_CHECK(quant_traits_get(4) == nullptr);   // q4_2, removed from ggml
    TC_CHECK(quant_traits_get(1000) == nullptr);
    TC_CHECK(!std::strcmp(ggml_type_name(4), "unknown(4)"));
    TC_CHECK(!std::strcmp(ggml_type_name(GGML_TYPE_COUNT_KNOWN), "unknown(40)"));
    TC_CHECK(!std::strcmp(ggml_type_name(GGML_TYPE_Q4_K), "q4_K"));
    TC_CHECK(!std::strcmp(ggml_type_name(GGML_TYPE_BF16), "bf16"));
    TC_CHECK(!std::strcmp(ggml_type_name(GGML_TYPE_Q8_0), "q8_0"));
}

TC_TEST("quants/round-trip") {
    size_t n = 0;
    const quant_traits * all = quant_traits_all(&n);
    for (size_t i = 0; i < n; i++) {
        const quant_traits & t = all[i];
        const int64_t ne = 256 * 13;
        const std::vector<float> x = random_floats(ne, 1234 + (uint32_t) i, /*outliers=*/false);
        std::vector<uint8_t> q(quant_row_bytes(&t, ne));
        std::vector<float> y(ne);
        t.from_float_ref(x.data(), q.data(), ne);
        t.to_float(q.data(), y.data(), ne);
        const double e = tc::nmse(y.data(), x.data(), ne);
        const double budget = round_trip_budget(t);
        std::printf("    round trip %-5s NMSE %.3g (budget %.3g)\n", t.name, e, budget);
        TC_CHECK(e <= budget) << "ROUND_TRIP(type=" << t.name << ",n=" << ne << "): NMSE " << e << " > " << budget;
    }
}

TC_TEST("quants/q8_0-reference") {
    // amax = 127 gives d = 1 and an inverse scale of exactly 1, so these are exact ties: roundf rounds
    // half away from zero (2.5 -> 3), where round-half-even would give 2.
    float x[QK8_0] = {127.0f, 2.5f, -2.5f, 0.5f, -0.5f, 1.4999999f, -126.5f};
    block_q8_0 b;
    quantize_row_q8_0_ref(x, &b, QK8_0);
    TC_CHECK(b.d == 0x3c00) << "d=" << b.d;
    const int8_t expect[7] = {127, 3, -3, 1, -1, 1, -127};
    for (int j = 0; j < 7; j++) TC_CHECK(b.qs[j] == expect[j]) << "j=" << j << " q=" << (int) b.qs[j];
    for (int j = 7; j < QK8_0; j++) TC_CHECK(b.qs[j] == 0);

    // scale from the f32 d, stored rounded to f16: amax = 1 -> d = 1/127
    float y[QK8_0];
    for (int j = 0; j < QK8_0; j++) y[j] = (float) (j - 16) / 16.0f;
    quantize_row_q8_0_ref(y, &b, QK8_0);
    TC_CHECK(b.d == f32_to_f16(1.0f / 127.0f));
    TC_CHECK(b.qs[0] == -127 && b.qs[31] == (int8_t) std::roundf(15.0f / 16.0f * (1.0f / (1.0f / 127.0f))));

    float z[QK8_0] = {0};
    quantize_row_q8_0_ref(z, &b, QK8_0);
    TC_CHECK(b.d == 0);
    for (int j = 0; j < QK8_0; j++) TC_CHECK(b.qs[j] == 0);
}

TC_TEST("quants/cpu-dispatch") {
    const cpu_features_t & f = cpu_features();
    std::printf("    cpu: level %s (supported %s) avx2=%d fma=%d f16c=%d avx512f=%d bw=%d vl=%d vnni=%d bf16=%d\n",
                cpu_dispatch_level(), cpu_level_name(cpu_level_supported()), f.avx2, f.fma, f.f16c, f.avx512f,
                f.avx512bw, f.avx512vl, f.avx512_vnni, f.avx512_bf16);
    TC_CHECK(!std::strcmp(cpu_dispatch_level(), cpu_level_name(cpu_level_active())));
    TC_CHECK(cpu_level_active() <= cpu_level_supported());
    // vec_dot_type as llama.cpp's CPU backend, so activation rounding (and greedy tokens) match
    const struct { ggml_type w, act; } expect[] = {
        {GGML_TYPE_F32, GGML_TYPE_F32}, {GGML_TYPE_F16, GGML_TYPE_F16},
        {GGML_TYPE_BF16, GGML_TYPE_BF16}, {GGML_TYPE_Q8_0, GGML_TYPE_Q8_0},
    };
    for (auto e : expect) {
        const quant_traits_cpu * t = quant_traits_cpu_get(e.w);
        TC_CHECK(t && t->vec_dot_type == e.act) << ggml_type_name(e.w);
    }
    size_t n = 0;
    const quant_traits * all = quant_traits_all(&n);
    for (size_t i = 0; i < n; i++) {
        const quant_traits_cpu * t = quant_traits_cpu_get(all[i].type);
        if (!t) continue;
        TC_CHECK(quant_traits_get(t->vec_dot_type) != nullptr) << all[i].name;
        TC_CHECK(t->from_float && t->vec_dot && t->vec_dot_ref) << all[i].name;
        TC_CHECK(t == quant_traits_cpu_get_level(all[i].type, cpu_level_active())) << all[i].name;
        const quant_traits_cpu * s = quant_traits_cpu_get_level(all[i].type, CPU_LEVEL_SCALAR);
        TC_CHECK(s->vec_dot == s->vec_dot_ref) << all[i].name;
    }
}

TC_TEST("quants/cpu-from-float-bit-exact") {
    size_t nk = 0;
    const quant_cpu_kernel * ks = quant_cpu_kernels_all(&nk);
    int tested = 0;
    for (size_t k = 0; k < nk; k++) {
        const quant_cpu_kernel & kr = ks[k];
        if (!kr.from_float) continue;
        if (!quant_cpu_kernel_usable(kr)) {
            std::printf("    from_float %s/%s: not supported on this CPU\n", ggml_type_name(kr.type), kr.name);
            continue;
        }
        const quant_traits * t = quant_traits_get(kr.type);
        for (int64_t ne : test_sizes(t->block_size)) {
            const std::vector<float> x = tricky_floats(ne, 77 + (uint32_t) ne);
            const size_t bytes = quant_row_bytes(t, ne);
            std::vector<uint8_t> fast(bytes + 16, 0xAB), ref(bytes + 16, 0xAB);
            kr.from_float(x.data(), fast.data(), ne);
            quant_act_from_float_ref(kr.type)(x.data(), ref.data(), ne);
            size_t bad = 0, first = 0;
            for (size_t i = 0; i < bytes + 16; i++)
                if (fast[i] != ref[i] && bad++ == 0) first = i;
            TC_CHECK(bad == 0) << "FROM_FLOAT(type=" << t->name << ",kernel=" << kr.name << ",n=" << ne << "): " << bad
                               << " bytes differ, first at " << first;
        }
        tested++;
    }
    TC_CHECK(tested > 0 || cpu_level_supported() == CPU_LEVEL_SCALAR);
}

TC_TEST("quants/cpu-vec-dot") {
    size_t n = 0;
    const quant_traits * all = quant_traits_all(&n);
    size_t nk = 0;
    const quant_cpu_kernel * ks = quant_cpu_kernels_all(&nk);
    for (size_t i = 0; i < n; i++) {
        const quant_traits & tw = all[i];
        const quant_traits_cpu * tc = quant_traits_cpu_get(tw.type);
        if (!tc) {
            std::printf("    vec_dot %s: not supported by the CPU backend\n", tw.name);
            continue;
        }
        const quant_traits * ta = quant_traits_get(tc->vec_dot_type);
        // candidates: every usable SIMD row, then the dispatched choice at each level
        struct cand { std::string name; vec_dot_fn fn; };
        std::vector<cand> cands;
        for (size_t k = 0; k < nk; k++)
            if (ks[k].type == tw.type && ks[k].vec_dot) {
                if (quant_cpu_kernel_usable(ks[k])) cands.push_back({ks[k].name, ks[k].vec_dot});
                else std::printf("    vec_dot %s/%s: not supported on this CPU\n", tw.name, ks[k].name);
            }
        for (int l = 0; l <= cpu_level_supported(); l++)
            cands.push_back({std::string("level=") + cpu_level_name((cpu_level) l),
                             quant_traits_cpu_get_level(tw.type, (cpu_level) l)->vec_dot});

        for (int64_t ne : test_sizes(tw.block_size)) {
            const int n_rows = 16;
            const std::vector<float> xw = random_floats(ne * n_rows, 11 + (uint32_t) ne);
            const std::vector<float> xa = random_floats(ne, 99 + (uint32_t) ne);
            const size_t wrow = quant_row_bytes(&tw, ne);
            std::vector<uint8_t> w(wrow * n_rows), a(quant_row_bytes(ta, ne));
            for (int r = 0; r < n_rows; r++) tw.from_float_ref(xw.data() + r * ne, w.data() + r * wrow, ne);
            ta->from_float_ref(xa.data(), a.data(), ne);
            std::vector<float> ref(n_rows), got(n_rows);
            for (int r = 0; r < n_rows; r++) tc->vec_dot_ref(ne, &ref[r], w.data() + r * wrow, a.data());
            for (const cand & c : cands) {
                for (int r = 0; r < n_rows; r++) c.fn(ne, &got[r], w.data() + r * wrow, a.data());
                const double e = tc::nmse(got.data(), ref.data(), n_rows);
                TC_CHECK(e <= 1e-10) << "VEC_DOT(type=" << tw.name << ",kernel=" << c.name << ",n=" << ne
                                     << "): NMSE " << e << " > 1e-10 (got " << got[0] << " ref " << ref[0] << ")";
            }
        }
    }
}

// The AVX-512/VNNI block-format dots (x86-quant-dots.inc, compiled twice) sum the same exact int32 values as the
// AVX2 ones and update the float accumulator the same way: identical bits, which keeps our greedy tokens on
// llama.cpp's (its AVX2 expression) whatever the CPU.
TC_TEST("quants/cpu-vec-dot avx2 == avx512 bit for bit (block formats)") {
    if (cpu_level_supported() < CPU_LEVEL_AVX512) {
        tc::g_skipped = "this CPU has no AVX-512";
        return;
    }
    int compared = 0;
    for (const ggml_type t : {GGML_TYPE_Q4_0, GGML_TYPE_Q4_1, GGML_TYPE_Q5_0, GGML_TYPE_Q5_1, GGML_TYPE_Q8_0, GGML_TYPE_Q2_K, GGML_TYPE_Q3_K,
                              GGML_TYPE_Q4_K, GGML_TYPE_Q5_K, GGML_TYPE_Q6_K}) {
        const quant_traits & tw = *quant_traits_get(t);
        const quant_traits_cpu * c2 = quant_traits_cpu_get_level(t, CPU_LEVEL_AVX2), * c5 = quant_traits_cpu_get_level(t, CPU_LEVEL_AVX512);
        if (!c2 || !c5 || c2->vec_dot == c5->vec_dot) continue;
        const quant_traits * ta = quant_traits_get(c2->vec_dot_type);
        for (int64_t ne : {tw.block_size * 1, tw.block_size * 6, tw.block_size * 35}) {
            const std::vector<float> xw = random_floats(ne * 8, 21 + (uint32_t) ne), xa = random_floats(ne, 22 + (uint32_t) ne);
            const size_t wrow = quant_row_bytes(&tw, ne);
            std::vector<uint8_t> w(wrow * 8), a(quant_row_bytes(ta, ne));
            for (int r = 0; r < 8; r++) tw.from_float_ref(xw.data() + r * ne, w.data() + r * wrow, ne);
            ta->from_float_ref(xa.data(), a.data(), ne);
            for (int r = 0; r < 8; r++) {
                float s2 = 0, s5 = 0;
                c2->vec_dot(ne, &s2, w.data() + r * wrow, a.data());
                c5->vec_dot(ne, &s5, w.data() + r * wrow, a.data());
                TC_CHECK(f32_bits(s2) == f32_bits(s5)) << "VEC_DOT(type=" << tw.name << ",n=" << ne << ",row=" << r << "): avx2 " << s2 << " avx512 " << s5;
                compared++;
            }
        }
    }
    TC_CHECK(compared > 0);
}

// Every gemm micro-kernel computes, for each (row, token) pair, the same expression as the vec_dot of its
// row (so prefill and decode round alike): bit-exact, for every tile shape up to GEMM_MR x GEMM_NT.
TC_TEST("quants/cpu-gemm-bit-exact") {
    size_t nk = 0;
    const quant_cpu_kernel * ks = quant_cpu_kernels_all(&nk);
    int tested = 0, packed_cases = 0;
    for (size_t k = 0; k < nk; k++) {
        const quant_cpu_kernel & kr = ks[k];
        if (!kr.gemm && !kr.packed) continue;
        if (!quant_cpu_kernel_usable(kr)) {
            std::printf("    gemm %s/%s: not supported on this CPU\n", ggml_type_name(kr.type), kr.name);
            continue;
        }
        TC_CHECK(kr.vec_dot != nullptr) << "gemm row without a vec_dot: " << kr.name;
        const quant_traits * tw = quant_traits_get(kr.type);
        const quant_traits * ta = quant_traits_get(quant_traits_cpu_get(kr.type)->vec_dot_type);
        // (128, 129: either side of the K-quant prefill kernels' bound, kQ4KMaxNb; for f16 blocks of one element:
        // rows with and without a tail past the last 64-element step)
        for (int64_t nb : {1, 3, 7, 128, 129}) {
            const int64_t ne = nb * tw->block_size * (tw->block_size == 1 ? 5 : 1);
            const size_t wrow = quant_row_bytes(tw, ne), arow = quant_row_bytes(ta, ne);
            std::vector<uint8_t> w(wrow * GEMM_MR), a(arow * GEMM_NT);
            const std::vector<float> xw = random_floats(ne * GEMM_MR, 5 + (uint32_t) ne);
            const std::vector<float> xa = random_floats(ne * GEMM_NT, 6 + (uint32_t) ne);
            for (int r = 0; r < GEMM_MR; r++) tw->from_float_ref(xw.data() + r * ne, w.data() + r * wrow, ne);
            for (int t = 0; t < GEMM_NT; t++) quant_act_from_float_ref(ta->type)(xa.data() + t * ne, a.data() + t * arow, ne);
            for (int nr = 1; nr <= GEMM_MR; nr++)
                for (int nt = 1; nt <= GEMM_NT; nt++) {
                    std::vector<float> want(GEMM_NT * 8, -1.0f);
                    for (int t = 0; t < nt; t++)
                        for (int r = 0; r < nr; r++) kr.vec_dot(ne, &want[t * 8 + r], w.data() + r * wrow, a.data() + t * arow);
                    auto differ = [&](const std::vector<float> & got) {
                        int bad = 0;
                        for (size_t i = 0; i < got.size(); i++) bad += std::memcmp(&want[i], &got[i], sizeof(float)) != 0;
                        return bad;
                    };
                    if (kr.gemm) {
                        std::vector<float> got(GEMM_NT * 8, -1.0f);
                        kr.gemm(ne, w.data(), wrow, nr, a.data(), arow, nt, got.data(), 8);
                        const int bad = differ(got);
                        TC_CHECK(bad == 0) << "GEMM(type=" << tw->name << ",kernel=" << kr.name << ",n=" << ne << ",nr=" << nr
                                           << ",nt=" << nt << "): " << bad << " outputs differ from vec_dot";
                    }
                    if (kr.packed) {  // the packed prefill kernel: the same bits from the tokens packed as a group
                        std::vector<uint8_t> pk(kr.packed->bytes(ne) + 64);
                        uint8_t * pa = pk.data() + (64 - (uintptr_t) pk.data() % 64) % 64;
                        kr.packed->pack(ne, a.data(), arow, nt, pa);
                        std::vector<float> got(GEMM_NT * 8, -1.0f);
                        kr.packed->gemm(ne, w.data(), wrow, nr, pa, nt, got.data(), 8);
                        const int bad = differ(got);
                        TC_CHECK(bad == 0) << "packed GEMM(type=" << tw->name << ",kernel=" << kr.name << ",n=" << ne << ",nr=" << nr << ",nt=" << nt
                                           << "): " << bad << " outputs differ from vec_dot";
                        packed_cases++;
                    }
                }
        }
        tested++;
    }
    TC_CHECK(tested > 0 || cpu_level_supported() == CPU_LEVEL_SCALAR);
    std::printf("    %d packed-activation cases\n", packed_cases);
}
