// Every CUDA op against its CPU `_ref` oracle (STYLE §2.7), compiled only with THINKCACHE_WITH_CUDA.
// Each case prints a reproducible line, `OP(vars): NMSE e <= bound OK` or `... > bound FAIL`;
// `--mode perf` times the same cases with CUDA events (L2 flushed between repeats).
// Without a device or driver every test prints "skipped: no CUDA device (<reason>)" and passes.
// Bounds: fp32 ops NMSE <= 1e-7 against the CPU ref; matmul and attention follow the 2x rule: the CUDA
// error against an fp64 oracle may be at most 2x the CPU implementation's error (floor 1e-7);
// dequantization is bit-exact.
#ifdef THINKCACHE_WITH_CUDA
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cuda/attention.cuh"
#include "cuda/backend-cuda.h"
#include "cuda/matmul.cuh"
#include "cuda/rms_norm.cuh"
#include "cuda/rope.cuh"
#include "cuda/silu_mul.cuh"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/ops.h"
#include "kv/kv-cache.h"
#include "kv/page-pool.h"
#include "tensor/quant-traits.h"
#include "test-harness.h"

using namespace core;
namespace cu = core::cuda;

namespace {

// One backend for the whole binary; nullptr (with the reason) without a usable device.
cu::backend * cuda_backend(std::string * why) {
    static std::unique_ptr<cu::backend> be;
    static std::string reason;
    static bool tried = false;
    if (!tried) {
        tried = true;
        status st = cu::backend::create(0, &be);
        if (!st.ok()) reason = st.message;
    }
    if (why) *why = reason;
    return be.get();
}

#define TC_NEED_CUDA(be)                                                          \
    std::string why_;                                                             \
    cu::backend * be = cuda_backend(&why_);                                       \
    if (!be) {                                                                    \
        std::printf("    skipped: no CUDA device (%s)\n", why_.c_str());          \
        tc::g_skipped = why_;                                                     \
        return;                                                                   \
    }

#define TC_OK(expr)                                                                                  \
    do {                                                                                             \
        const status st_ = (expr);                                                                   \
        TC_CHECK(st_.ok()) << #expr << ": " << status_code_name(st_.code) << ": " << st_.message;    \
        if (!st_.ok()) return;                                                                       \
    } while (0)

std::vector<float> randn(size_t n, uint32_t seed, float sd = 1.0f) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> g(0.0f, sd);
    std::vector<float> v(n);
    for (auto & x : v) x = g(rng);
    return v;
}

// Device copy of a host vector.
template <class T> cu::device_buffer to_device(const std::vector<T> & h) {
    cu::device_buffer b;
    if (b.alloc(h.size() * sizeof(T)).ok()) b.upload(h.data(), h.size() * sizeof(T));
    return b;
}
template <class T> std::vector<T> to_host(const cu::device_buffer & b, size_t n) {
    std::vector<T> h(n);
    b.download(h.data(), n * sizeof(T));
    return h;
}

double nmse_d(const float * a, const double * ref, size_t n) {
    double err = 0, sig = 0;
    for (size_t i = 0; i < n; i++) { const double d = a[i] - ref[i]; err += d * d; sig += ref[i] * ref[i]; }
    return sig > 0 ? err / sig : err;
}

// Prints the case line and records a failure when err > bound (NaN fails too).
void report(const std::string & op_vars, double err, double bound, const std::string & extra = "") {
    const bool ok = err <= bound;
    std::printf("    %s: NMSE %.3g %s %.3g %s%s\n", op_vars.c_str(), err, ok ? "<=" : ">", bound, ok ? "OK" : "FAIL", extra.c_str());
    TC_CHECK(ok) << op_vars;
}

// --mode perf: median of `reps` event-timed runs of fn, each after an L2 flush.
template <class F> void perf(cu::backend * be, const std::string & op_vars, double bytes, F fn) {
    if (tc::g_mode != "perf") return;
    std::vector<float> t;
    for (int r = 0; r < 7; r++) {
        if (!cu::flush_l2(be->stream()).ok()) return;
        cu::event_timer tm;
        float ms = 0;
        if (!tm.start(be->stream()).ok()) return;
        fn();
        if (!tm.stop(be->stream(), &ms).ok()) return;
        t.push_back(ms);
    }
    std::sort(t.begin(), t.end());
    const double us = t[t.size() / 2] * 1e3;
    std::printf("    PERF %s: %.2f us, %.1f GB/s\n", op_vars.c_str(), us, bytes / (us * 1e-6) / 1e9);
}

} // namespace

TC_TEST("cuda/device") {
    TC_NEED_CUDA(be);
    const cu::device_info & d = be->info();
    std::printf("    device %d: %s, sm_%d%d, %d SMs, %.1f GiB (%.1f free), L2 %.0f MiB, HBM peak %.0f GB/s, driver %d, runtime %d\n", d.id,
                d.name.c_str(), d.cc_major, d.cc_minor, d.sm_count, d.total_bytes / 1073741824.0, d.free_bytes / 1073741824.0,
                d.l2_bytes / 1048576.0, d.hbm_peak_gbs, d.driver_version, d.runtime_version);
    size_t fr = 0, tot = 0;
    TC_OK(be->memory(&fr, &tot));
    TC_CHECK(tot > 0 && fr <= tot);
    // every weight format of the CPU backend has a CUDA matmul; q8_1 / q8_K are activation formats only
    size_t nt = 0;
    const quant_traits * all = quant_traits_all(&nt);
    for (size_t i = 0; i < nt; i++) {
        const bool activation_only = all[i].type == GGML_TYPE_Q8_1 || all[i].type == GGML_TYPE_Q8_K;
        TC_CHECK(cu::supports_op(cu::op::MATMUL, all[i].type) != activation_only) << all[i].name;
    }
    cu::device_buffer huge;
    const status st = huge.alloc((size_t) 1 << 50);
    TC_CHECK(st.code == ERR_OOM_DEVICE) << "1 PiB cudaMalloc gave " << status_code_name(st.code) << ": " << st.message;
}

TC_TEST("cuda/rms_norm") {
    TC_NEED_CUDA(be);
    for (int64_t n : {896, 1536, 4097})
        for (int64_t rows : {1, 3}) {
            const std::vector<float> x = randn((size_t) (n * rows), (uint32_t) (n + rows)), w = randn((size_t) n, 7);
            std::vector<float> ref(x.size());
            for (int64_t r = 0; r < rows; r++) rms_norm_ref(x.data() + r * n, w.data(), ref.data() + r * n, n, 1e-6f);
            cu::device_buffer dx = to_device(x), dw = to_device(w), dy;
            TC_OK(dy.alloc(x.size() * 4));
            TC_OK(cu::rms_norm(dx.as<float>(), dw.as<float>(), dy.as<float>(), n, rows, 1e-6f, be->stream()));
            TC_OK(be->synchronize());
            const std::vector<float> y = to_host<float>(dy, x.size());
            const std::string vars = "RMS_NORM(n=" + std::to_string(n) + ",rows=" + std::to_string(rows) + ")";
            report(vars, tc::nmse(y.data(), ref.data(), y.size()), 1e-7);
            perf(be, vars, 3.0 * x.size() * 4, [&] { cu::rms_norm(dx.as<float>(), dw.as<float>(), dy.as<float>(), n, rows, 1e-6f, be->stream()); });
        }
}

TC_TEST("cuda/rope") {
    TC_NEED_CUDA(be);
    struct rc { rope_style style; int n_head, head_dim, n_rot; float base; bool ff; };
    const rc cases[] = {{ROPE_STYLE_NEOX, 14, 64, 64, 1e6f, false}, {ROPE_STYLE_NEOX, 12, 128, 128, 1e6f, false},
                        {ROPE_STYLE_NORM, 32, 128, 128, 1e4f, false}, {ROPE_STYLE_NORM, 8, 64, 32, 1e4f, false},
                        {ROPE_STYLE_NEOX, 2, 128, 128, 5e5f, true}};
    const std::vector<int32_t> positions = {0, 1, 17, 4095, 32767};
    for (const rc & c : cases)
        for (int32_t p : positions) {
            const int n_tok = 3;
            std::vector<int32_t> pos = {p, p + 1, p / 2};
            const std::vector<float> x = randn((size_t) n_tok * c.n_head * c.head_dim, (uint32_t) (p + c.head_dim));
            std::vector<float> ff;
            if (c.ff) { ff.resize(c.n_rot / 2); for (int i = 0; i < c.n_rot / 2; i++) ff[i] = 1.0f + 0.25f * (i % 5); }
            std::vector<float> ref = x, cs(c.n_rot);
            for (int t = 0; t < n_tok; t++) {
                rope_cache_ref(cs.data(), pos[t], c.n_rot, c.base, 1.0f, c.ff ? ff.data() : nullptr);
                rope_apply_ref(ref.data() + (size_t) t * c.n_head * c.head_dim, c.n_head, c.head_dim, c.n_rot, c.style, cs.data());
            }
            cu::device_buffer dx = to_device(x), dp = to_device(pos), dff = to_device(ff);
            TC_OK(cu::rope(dx.as<float>(), dp.as<int32_t>(), n_tok, c.n_head, c.head_dim, c.n_rot, c.style, c.base, 1.0f,
                           c.ff ? dff.as<float>() : nullptr, be->stream()));
            TC_OK(be->synchronize());
            const std::vector<float> y = to_host<float>(dx, x.size());
            char vars[160];
            std::snprintf(vars, sizeof vars, "ROPE(style=%s,n_head=%d,head_dim=%d,n_rot=%d,base=%g,ff=%d,pos=%d)", c.style == ROPE_STYLE_NEOX ? "neox" : "norm",
                          c.n_head, c.head_dim, c.n_rot, c.base, (int) c.ff, p);
            report(vars, tc::nmse(y.data(), ref.data(), y.size()), 1e-7);
            if (p == 4095)
                perf(be, vars, 2.0 * x.size() * 4, [&] {
                    cu::rope(dx.as<float>(), dp.as<int32_t>(), n_tok, c.n_head, c.head_dim, c.n_rot, c.style, c.base, 1.0f, c.ff ? dff.as<float>() : nullptr, be->stream());
                });
        }
}

TC_TEST("cuda/silu_mul") {
    TC_NEED_CUDA(be);
    for (int64_t n : {1, 8960, 100003}) {
        const std::vector<float> g = randn((size_t) n, 3, 4.0f), u = randn((size_t) n, 4);
        std::vector<float> ref = g;
        silu_mul_ref(ref.data(), u.data(), n);
        cu::device_buffer dg = to_device(g), du = to_device(u);
        TC_OK(cu::silu_mul(dg.as<float>(), du.as<float>(), n, be->stream()));
        TC_OK(be->synchronize());
        const std::vector<float> y = to_host<float>(dg, (size_t) n);
        const std::string vars = "SILU_MUL(n=" + std::to_string(n) + ")";
        report(vars, tc::nmse(y.data(), ref.data(), y.size()), 1e-7);
        perf(be, vars, 3.0 * n * 4, [&] { cu::silu_mul(dg.as<float>(), du.as<float>(), n, be->stream()); });
    }
}

TC_TEST("cuda/dequant") {
    TC_NEED_CUDA(be);
    size_t nt = 0;
    const quant_traits * all = quant_traits_all(&nt);
    for (size_t i = 0; i < nt; i++) {
        const quant_traits & t = all[i];
        if (!cu::supports_op(cu::op::DEQUANT, t.type)) {
            std::printf("    DEQUANT(type=%s): not supported\n", t.name);
            continue;
        }
        const int64_t n = t.block_size == 1 ? 1000 : t.block_size * 37;
        const std::vector<float> src = randn((size_t) n, 11);
        std::vector<uint8_t> q(quant_row_bytes(&t, n));
        t.from_float_ref(src.data(), q.data(), n);
        std::vector<float> ref((size_t) n);
        t.to_float(q.data(), ref.data(), n);
        cu::device_buffer dq = to_device(q), dy;
        TC_OK(dy.alloc((size_t) n * 4));
        TC_OK(cu::dequantize(dq.data(), t.type, dy.as<float>(), n, be->stream()));
        TC_OK(be->synchronize());
        const std::vector<float> y = to_host<float>(dy, (size_t) n);
        int64_t bad = 0, first = -1;
        for (int64_t j = 0; j < n; j++)
            if (std::memcmp(&y[j], &ref[j], 4)) { bad++; if (first < 0) first = j; }
        std::printf("    DEQUANT(type=%s,n=%lld): %lld mismatches %s\n", t.name, (long long) n, (long long) bad, bad ? "FAIL" : "OK");
        TC_CHECK(bad == 0) << t.name << ": first mismatch at " << first << ": cuda " << (first >= 0 ? y[first] : 0) << " cpu " << (first >= 0 ? ref[first] : 0);
    }
}

TC_TEST("cuda/matmul") {
    TC_NEED_CUDA(be);
    size_t nt = 0;
    const quant_traits * all = quant_traits_all(&nt);
    for (size_t i = 0; i < nt; i++) {
        const quant_traits & t = all[i];
        if (!cu::supports_op(cu::op::MATMUL, t.type)) {
            std::printf("    MATMUL(type=%s): not supported\n", t.name);
            continue;
        }
        const int64_t n_ins[] = {t.block_size == 1 ? 37 : t.block_size * 3, t.block_size == 1 ? 1536 : t.block_size * 6};
        for (int64_t n_in : n_ins)
            for (int64_t n_out : {1, 67, 256})
                for (int64_t n_tok : {1, 3, 9}) {
                    const size_t rb = quant_row_bytes(&t, n_in);
                    std::vector<uint8_t> wq(rb * n_out);
                    const std::vector<float> wsrc = randn((size_t) (n_in * n_out), (uint32_t) (n_in * 7 + n_out));
                    for (int64_t r = 0; r < n_out; r++) t.from_float_ref(wsrc.data() + r * n_in, wq.data() + r * rb, n_in);
                    const std::vector<float> x = randn((size_t) (n_in * n_tok), (uint32_t) n_tok);
                    // fp64 oracle on the dequantized weights
                    std::vector<float> wf((size_t) (n_in * n_out));
                    for (int64_t r = 0; r < n_out; r++) t.to_float(wq.data() + r * rb, wf.data() + r * n_in, n_in);
                    std::vector<double> o64((size_t) (n_out * n_tok));
                    for (int64_t tk = 0; tk < n_tok; tk++)
                        for (int64_t r = 0; r < n_out; r++) {
                            double s = 0;
                            for (int64_t k = 0; k < n_in; k++) s += (double) wf[r * n_in + k] * x[tk * n_in + k];
                            o64[tk * n_out + r] = s;
                        }
                    weight_view wv;
                    wv.data = wq.data(); wv.type = t.type; wv.n_in = n_in; wv.n_out = n_out; wv.row_bytes = rb;
                    std::vector<float> cpu((size_t) (n_out * n_tok));
                    cpu_matmul_ref(wv, x.data(), cpu.data(), n_tok);
                    cu::device_buffer dw = to_device(wq), dx = to_device(x), dy;
                    TC_OK(dy.alloc(cpu.size() * 4));
                    cu::weight_dev wd;
                    wd.data = dw.data(); wd.type = t.type; wd.n_in = n_in; wd.n_out = n_out; wd.row_bytes = rb;
                    TC_OK(cu::matmul(wd, dx.as<float>(), dy.as<float>(), n_tok, be->stream()));
                    TC_OK(be->synchronize());
                    const std::vector<float> y = to_host<float>(dy, cpu.size());
                    const double e_cpu = nmse_d(cpu.data(), o64.data(), cpu.size()), e_gpu = nmse_d(y.data(), o64.data(), y.size());
                    char vars[128], extra[96];
                    std::snprintf(vars, sizeof vars, "MATMUL(type=%s,n_in=%lld,n_out=%lld,n_tokens=%lld)", t.name, (long long) n_in, (long long) n_out,
                                  (long long) n_tok);
                    std::snprintf(extra, sizeof extra, " (cpu_ref vs fp64 %.3g, cuda vs cpu_ref %.3g)", e_cpu, tc::nmse(y.data(), cpu.data(), y.size()));
                    report(vars, e_gpu, std::max(2.0 * e_cpu, 1e-7), extra);
                }
        // perf: a Qwen2-1.5B FFN matvec (8960 x 1536) of this type
        if (tc::g_mode == "perf" && t.block_size <= 256) {
            const int64_t n_in = 1536, n_out = 8960;
            const size_t rb = quant_row_bytes(&t, n_in);
            cu::device_buffer dw, dx, dy;
            TC_OK(dw.alloc(rb * n_out));
            TC_OK(dx.alloc(n_in * 4));
            TC_OK(dy.alloc(n_out * 4));
            TC_OK(cu::fill_random(dw.data(), t.type, n_in * n_out, 1, 1.0f, be->stream()));
            TC_OK(cu::fill_random(dx.data(), GGML_TYPE_F32, n_in, 2, 1.0f, be->stream()));
            cu::weight_dev wd;
            wd.data = dw.data(); wd.type = t.type; wd.n_in = n_in; wd.n_out = n_out; wd.row_bytes = rb;
            perf(be, std::string("MATVEC(type=") + t.name + ",n_in=1536,n_out=8960)", (double) rb * n_out,
                 [&] { cu::matmul(wd, dx.as<float>(), dy.as<float>(), 1, be->stream()); });
        }
    }
}

TC_TEST("cuda/attention") {
    TC_NEED_CUDA(be);
    struct ac { int n_head, n_head_kv, head_dim, n_tok_kv, n_q; bool stream_head; };
    const ac cases[] = {{2, 2, 64, 1, 1, false},    {12, 2, 128, 63, 1, false},  {12, 2, 128, 65, 1, false}, {14, 2, 64, 1000, 1, false},
                        {12, 2, 128, 1000, 4, false}, {28, 4, 128, 700, 1, true}, {8, 1, 128, 300, 2, true}};
    for (const ac & c : cases) {
        const int hd = c.head_dim, nh = c.n_head, nkv = c.n_head_kv;
        auto pool = std::make_shared<page_pool>(kv_page_bytes(hd, hd));
        kv_cache_config cfg;
        cfg.n_layer = 1; cfg.n_head_kv = nkv; cfg.head_dim = hd; cfg.head_dim_v = hd; cfg.n_ctx = 2 * c.n_tok_kv + 64;  // tokens sit at even positions
        if (c.stream_head) { cfg.retention.assign((size_t) nkv, KV_RETAIN_FULL); cfg.retention[0] = KV_RETAIN_STREAM; cfg.stream_sinks = 16; cfg.stream_recent = 64; }
        kv_cache kv(cfg, pool);
        // tokens at even positions, appended in chunks of 50 (STREAM heads trimmed after each chunk)
        for (int j0 = 0; j0 < c.n_tok_kv; j0 += 50) {
            const int m = std::min(50, c.n_tok_kv - j0);
            TC_OK(kv.reserve(m));
            const std::vector<float> k = randn((size_t) m * nkv * hd, (uint32_t) j0 + 1), v = randn((size_t) m * nkv * hd, (uint32_t) j0 + 2);
            std::vector<int32_t> pos(m);
            for (int j = 0; j < m; j++) pos[j] = 2 * (j0 + j);
            kv.append(0, m, k.data(), v.data(), pos.data());
            kv.retain(0);
        }
        const int last = 2 * (c.n_tok_kv - 1);
        std::vector<int32_t> q_pos(c.n_q);
        for (int t = 0; t < c.n_q; t++) q_pos[t] = c.n_q == 1 ? last + 1 : last * (t + 1) / c.n_q - 1 + (t == c.n_q - 1 ? 2 : 0);
        const std::vector<float> q = randn((size_t) c.n_q * nh * hd, 99);
        attn_params ap;
        ap.n_tokens = c.n_q; ap.n_head = nh; ap.n_head_kv = nkv; ap.head_dim = hd; ap.head_dim_v = hd; ap.scale = 1.0f / std::sqrt((float) hd);
        std::vector<float> cpu((size_t) c.n_q * nh * hd);
        attention_ref(ap, q.data(), q_pos.data(), kv, 0, cpu.data());
        // fp64 oracle with the same f16 query rounding
        std::vector<double> o64(cpu.size(), 0.0);
        const int G = nh / nkv;
        for (int t = 0; t < c.n_q; t++)
            for (int h = 0; h < nh; h++) {
                const kv_head_view hv = kv.head(0, h / G);
                std::vector<double> s;
                std::vector<std::pair<int, int>> idx;
                double mx = -INFINITY;
                for (int sg = 0; sg < hv.n_seg; sg++)
                    for (int j = 0; j < hv.seg[sg].n; j++) {
                        if (hv.seg[sg].pos[j] > q_pos[t]) continue;
                        double d = 0;
                        for (int e = 0; e < hd; e++)
                            d += (double) f16_to_f32(f32_to_f16(q[((size_t) t * nh + h) * hd + e])) * f16_to_f32(hv.seg[sg].key(j, e, hd));
                        s.push_back(d * ap.scale);
                        idx.push_back({sg, j});
                        mx = std::max(mx, s.back());
                    }
                double l = 0;
                for (auto & v : s) { v = std::exp(v - mx); l += v; }
                for (size_t k = 0; k < s.size(); k++)
                    for (int e = 0; e < hd; e++)
                        o64[((size_t) t * nh + h) * hd + e] += s[k] / l * f16_to_f32(hv.seg[idx[k].first].v[(size_t) idx[k].second * hd + e]);
            }
        cu::kv_layer_device dkv;
        TC_OK(dkv.upload(kv, 0));
        cu::device_buffer dq = to_device(q), dp = to_device(q_pos), dout;
        TC_OK(dout.alloc(cpu.size() * 4));
        cu::attn_workspace ws;
        cu::attn_decode_params dp_;
        dp_.n_tokens = c.n_q; dp_.n_head = nh; dp_.scale = ap.scale;
        TC_OK(cu::attention_decode(dp_, dq.as<float>(), dp.as<int32_t>(), dkv.view(), dout.as<float>(), ws, be->stream()));
        TC_OK(be->synchronize());
        const std::vector<float> y = to_host<float>(dout, cpu.size());
        const double e_cpu = nmse_d(cpu.data(), o64.data(), cpu.size()), e_gpu = nmse_d(y.data(), o64.data(), y.size());
        char vars[160], extra[96];
        std::snprintf(vars, sizeof vars, "ATTN_DECODE(type=f16,n_head=%d,n_head_kv=%d,head_dim=%d,n_kv=%d,n_q=%d,stream_head=%d)", nh, nkv, hd, c.n_tok_kv, c.n_q,
                      (int) c.stream_head);
        std::snprintf(extra, sizeof extra, " (cpu_ref vs fp64 %.3g, cuda vs cpu_ref %.3g)", e_cpu, tc::nmse(y.data(), cpu.data(), y.size()));
        report(vars, e_gpu, std::max(2.0 * e_cpu, 1e-7), extra);
        perf(be, vars, (double) dkv.payload_bytes(), [&] {
            cu::attention_decode(dp_, dq.as<float>(), dp.as<int32_t>(), dkv.view(), dout.as<float>(), ws, be->stream());
        });
    }
}

#endif // THINKCACHE_WITH_CUDA
