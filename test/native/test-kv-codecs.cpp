// KV storage codecs (kv-codec.h) and coded heads (kv-cache.h, attention-codec.h): FWHT self-inverse,
// per-codec round-trip error within a per-bit-width budget, dot/axpy from codes == decode, rotation +
// permutation + RoPE at full precision reproducing plain attention, sinks and staging never quantized,
// memory report == ALGORITHMS.md §3.7 formulas, fewer pages, rewind, and the cache path vs the f16 cache.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cmath>
#include <numeric>
#include <random>

#include "kernels/cpu/attention-codec.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/ops.h"
#include "kv/kv-cache.h"
#include "test-harness.h"

using namespace core;

namespace {

std::vector<float> randn(std::mt19937 & rng, size_t n, float sd = 1.0f) {
    std::normal_distribution<float> nd(0.0f, sd);
    std::vector<float> v(n);
    for (auto & x : v) x = nd(rng);
    return v;
}

double nmse(const float * a, const float * b, size_t n) {
    double e = 0, s = 0;
    for (size_t i = 0; i < n; i++) { e += (a[i] - b[i]) * (double) (a[i] - b[i]); s += (double) b[i] * b[i]; }
    return s > 0 ? e / s : e;
}

} // namespace

TC_TEST("kv codecs: FWHT is orthonormal and self-inverse") {
    std::mt19937 rng(1);
    for (int n : {8, 16, 64, 128}) {
        auto x = randn(rng, (size_t) n), y = x;
        fwht_ref(y.data(), n);
        double nx = 0, ny = 0;
        for (int i = 0; i < n; i++) { nx += x[i] * (double) x[i]; ny += y[i] * (double) y[i]; }
        TC_CHECK(std::fabs(nx - ny) < 1e-4 * nx) << "n=" << n;
        fwht_ref(y.data(), n);
        TC_CHECK(nmse(y.data(), x.data(), (size_t) n) < 1e-12) << "n=" << n;
    }
}

TC_TEST("kv codecs: round-trip error within the per-bit-width budget; dot and axpy read codes like decode") {
    struct budget { kv_codec_type t; double max_nmse; };
    const budget B[] = {{KV_CODEC_F16, 1e-6}, {KV_CODEC_Q8, 1e-4}, {KV_CODEC_Q4, 0.02}, {KV_CODEC_KIVI2, 0.2}, {KV_CODEC_KIVI4, 0.01},
                        {KV_CODEC_ROT2, 0.2}, {KV_CODEC_ROT3, 0.05}, {KV_CODEC_ROT4, 0.01}};
    std::mt19937 rng(2);
    for (const auto & b : B) {
        for (int D : {8, 64, 128}) {
            for (bool key : {true, false}) {
                const kv_codec_traits & t = kv_codec_get(b.t);
                kv_codec_params p{D, 32, b.t == KV_CODEC_ROT2 ? 0.8f : 1.0f, key};
                const int T = t.block_tokens(p), n_blocks = 64 / T;
                std::vector<float> x, y((size_t) 64 * D);
                x = randn(rng, (size_t) 64 * D);
                std::vector<uint8_t> blk(t.block_bytes(p));
                double worst_dot = 0;
                for (int bi = 0; bi < n_blocks; bi++) {
                    t.encode(p, x.data() + (size_t) bi * T * D, blk.data());
                    for (int j = 0; j < T; j++) {
                        float * yj = y.data() + ((size_t) bi * T + j) * D;
                        t.decode(p, blk.data(), j, yj);
                        auto q = randn(rng, (size_t) D);
                        double ref = 0;
                        for (int d = 0; d < D; d++) ref += q[d] * (double) yj[d];
                        const double got = t.dot(p, blk.data(), j, q.data());
                        worst_dot = std::max(worst_dot, std::fabs(got - ref) / (1.0 + std::fabs(ref)));
                        std::vector<float> acc((size_t) D, 0.5f);
                        t.axpy(p, blk.data(), j, 0.25f, acc.data());
                        for (int d = 0; d < D; d++) TC_CHECK(std::fabs(acc[d] - (0.5f + 0.25f * yj[d])) < 1e-4f * (1 + std::fabs(yj[d]))) << t.name;
                    }
                }
                const double e = nmse(y.data(), x.data(), (size_t) n_blocks * T * D);
                TC_CHECK(e <= b.max_nmse) << t.name << " D=" << D << " key=" << key << ": NMSE " << e << " > " << b.max_nmse;
                TC_CHECK(worst_dot < 1e-4) << t.name << " D=" << D << ": dot from codes differs from decode by " << worst_dot;
            }
        }
    }
}

TC_TEST("kv codecs: 3-bit codes pack densely and use all 8 levels") {
    const kv_codec_traits & t = kv_codec_get(KV_CODEC_ROT3);
    kv_codec_params p{8, 8, 1.0f, true};
    TC_CHECK(t.block_bytes(p) == 3 + 3);
    float x[8] = {-3, -2, -1, 0, 1, 2, 3, 4}, y[8];  // range 7: scale 1, zp 3, codes 0..7
    std::vector<uint8_t> blk(t.block_bytes(p));
    t.encode(p, x, blk.data());
    t.decode(p, blk.data(), 0, y);
    for (int i = 0; i < 8; i++) TC_CHECK(std::fabs(y[i] - x[i]) < 0.01f) << i << ": " << y[i] << " vs " << x[i];
}

TC_TEST("kv codecs: the SIMD dot/axpy over codes == the scalar ref (rot2/3/4, groups 8..64)") {
    std::mt19937 rng(8);
    for (kv_codec_type t : {KV_CODEC_ROT2, KV_CODEC_ROT3, KV_CODEC_ROT4, KV_CODEC_Q8, KV_CODEC_KIVI2}) {
        for (int D : {8, 64, 128}) {
            for (int group : {8, 32, 64}) {
                const kv_codec_traits & tr = kv_codec_get(t);
                kv_codec_params p{D, group, 0.8f, false};
                std::vector<uint8_t> blk(tr.block_bytes(p));
                auto x = randn(rng, (size_t) D), q = randn(rng, (size_t) D);
                tr.encode(p, x.data(), blk.data());
                const float ref = tr.dot(p, blk.data(), 0, q.data()), got = kv_codec_dot(tr, p, blk.data(), 0, q.data());
                TC_CHECK(std::fabs(ref - got) <= 1e-5f * (1 + std::fabs(ref))) << tr.name << " D=" << D << " group=" << group << ": " << got << " vs " << ref;
                std::vector<float> a = q, b = q;
                tr.axpy(p, blk.data(), 0, 0.3f, a.data());
                kv_codec_axpy(tr, p, blk.data(), 0, 0.3f, b.data());
                TC_CHECK(nmse(b.data(), a.data(), (size_t) D) < 1e-12) << tr.name << " D=" << D << " group=" << group;
            }
        }
    }
}

namespace {

// the f16 codec with the rotated flag: rotation + permutation + RoPE at (f16) full precision
kv_codec_traits rotated_f16() {
    kv_codec_traits t = kv_codec_get(KV_CODEC_F16);
    t.rotated = true;
    return t;
}

} // namespace

TC_TEST("kv codecs: rotation + permutation + RoPE at full precision reproduces plain attention (pre- and post-RoPE)") {
    std::mt19937 rng(3);
    const int D = 64, n = 40, G = 3, n_rot = 64;
    const kv_codec_traits tr = rotated_f16();
    for (rope_style style : {ROPE_STYLE_NORM, ROPE_STYLE_NEOX}) {
        for (bool post : {false, true}) {
            kv_storage_config st;
            st.n_rot = n_rot;
            st.rope = style;
            st.post_rope = post;
            std::vector<int32_t> perm((size_t) D);
            std::iota(perm.begin(), perm.end(), 0);
            std::shuffle(perm.begin(), perm.end(), rng);
            auto k = randn(rng, (size_t) n * D), v = randn(rng, (size_t) n * D), q = randn(rng, (size_t) G * D);
            std::vector<int32_t> pos((size_t) n);
            for (int j = 0; j < n; j++) pos[j] = 3 * j + 1;  // non-contiguous: positions are really used
            const int32_t qpos = pos[n - 1] + 2;
            std::vector<float> cs((size_t) n_rot);
            // plain attention in double with post-RoPE keys
            std::vector<float> kpost = k;
            for (int j = 0; j < n; j++) {
                rope_cache_ref(cs.data(), pos[j], n_rot, 10000.0f, 1.0f, nullptr);
                rope_apply_ref(kpost.data() + (size_t) j * D, 1, D, n_rot, style, cs.data());
            }
            rope_cache_ref(cs.data(), qpos, n_rot, 10000.0f, 1.0f, nullptr);
            rope_apply_ref(q.data(), G, D, n_rot, style, cs.data());
            // stored: P·H·k (pre-RoPE k, or post-RoPE k) and H·v, as f16 rows
            std::vector<uint8_t> kbuf((size_t) n * D * 2), vbuf((size_t) n * D * 2);
            kv_codec_params kp{D, 32, 1.0f, true}, vp{D, 32, 1.0f, false};
            for (int j = 0; j < n; j++) {
                std::vector<float> r(post ? kpost.begin() + (size_t) j * D : k.begin() + (size_t) j * D, (post ? kpost.begin() : k.begin()) + (size_t) (j + 1) * D), pr((size_t) D);
                fwht_ref(r.data(), D);
                for (int d = 0; d < D; d++) pr[d] = r[(size_t) perm[d]];
                tr.encode(kp, pr.data(), kbuf.data() + (size_t) j * D * 2);
                std::vector<float> w(v.begin() + (size_t) j * D, v.begin() + (size_t) (j + 1) * D);
                fwht_ref(w.data(), D);
                tr.encode(vp, w.data(), vbuf.data() + (size_t) j * D * 2);
            }
            void * kpage = kbuf.data(), * vpage = vbuf.data();
            kv_coded_view cv;
            std::vector<kv_pos_run> runs;  // one run per token: the positions are 3j + 1
            for (int j = 0; j < n; j++) runs.push_back({j, pos[j], 1});
            cv.n = n; cv.runs = runs.data(); cv.n_runs = n; cv.kc = &tr; cv.vc = &tr; cv.kp = kp; cv.vp = vp;
            cv.k_page_tokens = cv.v_page_tokens = n; cv.k_block_bytes = cv.v_block_bytes = (size_t) D * 2;
            cv.kpages = &kpage; cv.vpages = &vpage; cv.perm = perm.data(); cv.st = &st;
            kv_head_view hv;
            hv.coded = &cv;
            std::vector<float> out((size_t) G * D);
            const float scale = 1.0f / std::sqrt((float) D);
            attend_group_coded_ref(D, D, scale, q.data(), G, qpos, hv, out.data());
            double worst = 0;
            for (int g = 0; g < G; g++) {
                std::vector<double> s((size_t) n);
                double mx = -1e300, sum = 0;
                for (int j = 0; j < n; j++) {
                    double a = 0;
                    for (int d = 0; d < D; d++) a += (double) q[(size_t) g * D + d] * kpost[(size_t) j * D + d];
                    s[j] = a * scale;
                    mx = std::max(mx, s[j]);
                }
                for (int j = 0; j < n; j++) { s[j] = std::exp(s[j] - mx); sum += s[j]; }
                for (int d = 0; d < D; d++) {
                    double o = 0;
                    for (int j = 0; j < n; j++) o += s[j] * v[(size_t) j * D + d];
                    worst = std::max(worst, std::fabs(o / sum - out[(size_t) g * D + d]));
                }
            }
            TC_CHECK(worst < 2e-3) << "style=" << style << " post=" << post << ": max |diff| " << worst;
        }
    }
}

namespace {

struct coded_fixture {
    int n_layer = 2, n_head_kv = 2, D = 64, DV = 64;
    rope_style style = ROPE_STYLE_NEOX;
    std::shared_ptr<page_pool> pool = std::make_shared<page_pool>(kv_page_bytes(64, 64));
    std::unique_ptr<kv_cache> make(kv_storage_config st, int n_ctx = 2048) {
        kv_cache_config c;
        c.n_layer = n_layer; c.n_head_kv = n_head_kv; c.head_dim = D; c.head_dim_v = DV; c.n_ctx = n_ctx;
        st.n_rot = D;
        st.rope = style;
        c.storage = st;
        return std::make_unique<kv_cache>(c, pool);
    }
    // feeds n tokens in chunks with post-RoPE keys (as forward_chunk does); returns nothing
    void feed(kv_cache & kv, int n, int chunk, std::mt19937 & rng) {
        std::vector<float> cs((size_t) D);
        for (int done = 0; done < n; done += chunk) {
            const int m = std::min(chunk, n - done);
            auto k = randn(rng, (size_t) m * n_head_kv * D), v = randn(rng, (size_t) m * n_head_kv * DV);
            std::vector<int32_t> pos((size_t) m);
            for (int t = 0; t < m; t++) {
                pos[t] = kv.n_logical() + t;
                rope_cache_ref(cs.data(), pos[t], D, 10000.0f, 1.0f, nullptr);
                rope_apply_ref(k.data() + (size_t) t * n_head_kv * D, n_head_kv, D, D, style, cs.data());
            }
            status s = kv.reserve(m);
            TC_CHECK(s.ok()) << s.message;
            for (int il = 0; il < n_layer; il++) { kv.append(il, m, k.data(), v.data(), pos.data()); kv.retain(il); }
        }
    }
};

} // namespace

TC_TEST("kv codecs: protected tokens and the staging window stay f16; memory report == §3.7; fewer pages") {
    const kv_codec_type types[] = {KV_CODEC_Q8, KV_CODEC_Q4, KV_CODEC_KIVI2, KV_CODEC_KIVI4, KV_CODEC_ROT2, KV_CODEC_ROT3, KV_CODEC_ROT4};
    for (kv_codec_type t : types) {
        for (int chunk : {1, 37}) {
            coded_fixture fx;
            std::mt19937 rng(4);
            kv_storage_config st;
            st.key = st.value = t;
            st.staging = 20;
            st.protect = 5;
            st.group = 32;
            auto kv = fx.make(st);
            const int n = 300;
            fx.feed(*kv, n, chunk, rng);
            const int F = std::max(KV_TILE, t == KV_CODEC_KIVI2 || t == KV_CODEC_KIVI4 ? 32 : 1);
            const int nq = (n - st.protect - st.staging) / F * F, nf = n - nq;
            for (int il = 0; il < fx.n_layer; il++) {
                for (int ih = 0; ih < fx.n_head_kv; ih++) {
                    const kv_head_view hv = kv->head(il, ih);
                    TC_CHECK(hv.coded && hv.coded->n == nq && hv.n == nf) << kv_codec_get(t).name << ": nq " << (hv.coded ? hv.coded->n : -1) << " vs " << nq;
                    if (!hv.coded) continue;
                    for (int32_t j = 0; j < hv.coded->n; j++) TC_CHECK(hv.coded->pos_at(j) == st.protect + j);
                    TC_CHECK(hv.coded->n_runs == (hv.coded->n > 0 ? 1 : 0)) << "contiguous coded positions are one run";
                    std::vector<int32_t> fpos;
                    for (int s = 0; s < hv.n_seg; s++) for (int j = 0; j < hv.seg[s].n; j++) fpos.push_back(hv.seg[s].pos[j]);
                    for (int j = 0; j < st.protect; j++) TC_CHECK(fpos[(size_t) j] == j) << "sink " << j << " quantized";
                    TC_CHECK((int) fpos.size() - st.protect >= st.staging);
                    TC_CHECK(fpos.back() == n - 1);
                }
            }
            const kv_codec_traits & tr = kv_codec_get(t);
            const int b = tr.bits, D = fx.D, Gq = kv_codec_group(t, D, 32);
            const uint64_t heads = (uint64_t) fx.n_layer * fx.n_head_kv;
            const kv_memory_report r = kv->memory(false);
            // §3.7: bytes/token/head = 2·[D·b/8 + (D/Gq)·(s_bytes + z_bytes)]
            const double meta = t == KV_CODEC_Q8 || t == KV_CODEC_Q4 ? 2.0 * (D / Gq)
                              : t == KV_CODEC_KIVI2 || t == KV_CODEC_KIVI4 ? 4.0 * D / 32 /* keys: per channel per 32 tokens */ : 3.0 * (D / Gq);
            const double meta_v = t == KV_CODEC_KIVI2 || t == KV_CODEC_KIVI4 ? 4.0 * (D / Gq) : meta;
            TC_CHECK(r.code_bytes == heads * nq * 2 * (uint64_t) (D * b / 8)) << tr.name << ": code bytes " << r.code_bytes;
            TC_CHECK(r.scale_bytes == (uint64_t) std::llround(heads * nq * (meta + meta_v))) << tr.name << ": scale bytes " << r.scale_bytes;
            TC_CHECK(r.staging_bytes == heads * nf * (uint64_t) (D + fx.DV) * 2) << tr.name;
            TC_CHECK(r.position_bytes == heads * ((uint64_t) nf * 4 + (nq > 0 ? sizeof(kv_pos_run) : 0))) << "f16 tokens 4 B each, the coded ones one run";
            TC_CHECK(r.key_bytes + r.value_bytes == r.code_bytes + r.scale_bytes + r.staging_bytes);
            TC_CHECK(r.quantized_tokens == (int64_t) heads * nq && r.resident_tokens == (int64_t) heads * n);
            if (t == KV_CODEC_ROT2) {  // §3.7 with D = 64, Gq = 32, b = 2: 2·(16 + 2·3) = 44 B per token per head
                TC_CHECK(r.code_bytes + r.scale_bytes == heads * nq * 44);
            }
            // fewer pages than the f16 cache holding the same tokens
            coded_fixture f16fx;
            auto kv16 = f16fx.make(kv_storage_config{});
            std::mt19937 rng2(4);
            f16fx.feed(*kv16, n, chunk, rng2);
            // (q8 is 8.5/16 of f16: at 300 tokens its separate key and value pages round up to about the f16 count)
            if (t != KV_CODEC_Q8) TC_CHECK(r.bytes_allocated < kv16->memory(false).bytes_allocated) << tr.name;
        }
    }
}

TC_TEST("kv codecs: massive-activation sinks found at prefill are never quantized, wherever they sit") {
    coded_fixture fx;
    std::mt19937 rng(9);
    kv_storage_config st;
    st.key = st.value = KV_CODEC_ROT2;
    st.staging = 16;
    st.protect = 2;
    auto kv = fx.make(st);
    TC_CHECK(kv->wants_sinks());
    for (int il = 0; il < fx.n_layer; il++) kv->add_sinks(il, {0, 37, 90 + il});
    fx.feed(*kv, 250, 50, rng);
    for (int il = 0; il < fx.n_layer; il++) {
        for (int ih = 0; ih < fx.n_head_kv; ih++) {
            const kv_head_view hv = kv->head(il, ih);
            std::vector<int32_t> fpos;
            for (int s = 0; s < hv.n_seg; s++) for (int j = 0; j < hv.seg[s].n; j++) fpos.push_back(hv.seg[s].pos[j]);
            for (int32_t p : {0, 1, 37, 90 + il}) TC_CHECK(std::count(fpos.begin(), fpos.end(), p) == 1) << "sink " << p << " not in f16";
            for (int32_t j = 0; j < hv.coded->n; j++) TC_CHECK(hv.coded->pos_at(j) != 37 && hv.coded->pos_at(j) != 90 + il && hv.coded->pos_at(j) >= 2);
            // the sinks split the coded positions into runs; positions and counts read back through them
            TC_CHECK(hv.coded->n_runs >= 2) << hv.coded->n_runs;
            for (int32_t j = 0; j < hv.coded->n; j++) {
                if (j > 0) TC_CHECK(hv.coded->pos_at(j) > hv.coded->pos_at(j - 1));
                TC_CHECK(hv.coded->count_le(hv.coded->pos_at(j)) == j + 1);
            }
            TC_CHECK(hv.coded->count_le(-1) == 0 && hv.coded->count_le(1 << 30) == hv.coded->n);
            // 250 − 2 protected − 2 sinks − 16 staging = 230 → 224 quantized
            TC_CHECK(hv.coded->n == 224 && hv.n + hv.coded->n == 250) << hv.coded->n;
        }
    }
}

TC_TEST("kv codecs: rewinding a coded cache keeps exactly what a fresh evaluation would have") {
    coded_fixture fx;
    std::mt19937 rng(5);
    kv_storage_config st;
    st.key = st.value = KV_CODEC_ROT2;
    st.staging = 20;
    st.protect = 5;
    auto kv = fx.make(st);
    fx.feed(*kv, 200, 7, rng);
    // 200 - 5 - 20 = 175 → 160 quantized (pos 5..164). At 190: fresh would hold (190-25)/16*16 = 160: exact.
    TC_CHECK(kv->remove_from(190) == 190);
    TC_CHECK(kv->head(0, 0).coded->n == 160);
    // at 100, fresh would hold 64 quantized but we keep 95: only the protected prefix is exact
    const int32_t keep = kv->remove_from(100);
    TC_CHECK(keep == 5) << keep;
    TC_CHECK(kv->head(0, 0).coded->n == 0 && kv->head(0, 0).n == 5);
}

TC_TEST("kv codecs: attention over a coded cache tracks the f16 cache (error shrinks with bits)") {
    const int H = 2, Hq = 6, D = 64, n = 260;
    double prev = 1e9;
    for (kv_codec_type t : {KV_CODEC_ROT2, KV_CODEC_ROT3, KV_CODEC_ROT4, KV_CODEC_Q8}) {
        for (bool post : {false, true}) {
            coded_fixture fx;
            fx.n_layer = 1;
            std::mt19937 rng(6), rng2(6);
            kv_storage_config st;
            st.key = st.value = t;
            st.staging = 16;
            st.protect = 4;
            st.post_rope = post;
            auto kv = fx.make(st), kv16 = fx.make(kv_storage_config{});
            fx.feed(*kv, n, 50, rng);
            fx.feed(*kv16, n, 50, rng2);
            attn_params p;
            p.n_tokens = 1; p.n_head = Hq; p.n_head_kv = H; p.head_dim = D; p.head_dim_v = D; p.scale = 1.0f / std::sqrt((float) D);
            std::mt19937 rq(7);
            auto q = randn(rq, (size_t) Hq * D, 2.0f);
            const int32_t qpos = n - 1;
            std::vector<float> o((size_t) Hq * D), o16((size_t) Hq * D), oref((size_t) Hq * D);
            thread_pool pool(2);
            attn_scratch sc;
            attention(pool, p, q.data(), &qpos, *kv, 0, o.data(), sc);
            attention_ref(p, q.data(), &qpos, *kv, 0, oref.data());
            attention(pool, p, q.data(), &qpos, *kv16, 0, o16.data(), sc);
            TC_CHECK(nmse(o.data(), oref.data(), o.size()) < 1e-10) << "threaded coded path == ref";
            const double e = nmse(o.data(), o16.data(), o.size());
            const double budget = t == KV_CODEC_ROT2 ? 0.7 : t == KV_CODEC_ROT3 ? 0.2 : t == KV_CODEC_ROT4 ? 0.1 : 1e-3;
            TC_CHECK(e < budget) << kv_codec_get(t).name << " post=" << post << ": NMSE vs f16 " << e;
            if (!post) { TC_CHECK(e < prev * 1.5) << kv_codec_get(t).name; prev = e; }
        }
    }
}

TC_TEST("kv codecs: the AVX2 and AVX-512 coded attention == the scalar ref (rot2/3/4, pre/post-RoPE, permuted, NORM/NEOX, D 32/64/128)") {
    int checked = 0;
    bool no_avx512 = false;
    for (int D : {32, 64, 128}) {
        for (kv_codec_type t : {KV_CODEC_ROT2, KV_CODEC_ROT3, KV_CODEC_ROT4}) {
            for (bool post : {false, true}) {
                for (rope_style style : {ROPE_STYLE_NORM, ROPE_STYLE_NEOX}) {
                    coded_fixture fx;
                    fx.n_layer = 1;
                    fx.D = fx.DV = D;
                    fx.style = style;
                    fx.pool = std::make_shared<page_pool>(kv_page_bytes(D, D));
                    std::mt19937 rng(11 + D + (int) t);
                    kv_storage_config st;
                    st.key = st.value = t;
                    st.staging = 24;
                    st.protect = 5;
                    st.group = D == 32 ? 16 : 32;
                    st.post_rope = post;
                    st.perm.resize((size_t) fx.n_head_kv * D);
                    for (int h = 0; h < fx.n_head_kv; h++) {
                        std::iota(st.perm.begin() + (size_t) h * D, st.perm.begin() + (size_t) (h + 1) * D, 0);
                        if (h == 1) std::shuffle(st.perm.begin() + (size_t) h * D, st.perm.begin() + (size_t) (h + 1) * D, rng);
                    }
                    auto kv = fx.make(st, 4096);
                    fx.feed(*kv, 537, 97, rng);  // 537 − 24 staging − 5 protected: 508 quantized, not a multiple of 16
                    for (int G : {1, 7}) {
                        std::mt19937 rq(5 + G);
                        auto q = randn(rq, (size_t) G * D, 2.0f);
                        for (int h = 0; h < fx.n_head_kv; h++) {
                            const kv_head_view hv = kv->head(0, h);
                            TC_CHECK(hv.coded && hv.coded->n > 400);
                            for (int32_t qpos : {536, 300}) {  // the whole cache, and a query that sees a prefix of it
                                std::vector<float> o((size_t) G * D, 0.0f), o2((size_t) G * D, 0.0f), oref((size_t) G * D);
                                attend_group_coded_ref(D, D, 0.125f, q.data(), G, qpos, hv, oref.data());
                                if (!attend_group_coded_avx2(D, D, 0.125f, q.data(), G, qpos, hv, o2.data())) {
                                    tc::g_skipped = "fused coded attention: this CPU has no AVX2 (the scalar ref is used)";
                                    return;
                                }
                                // pre-RoPE: the ref takes RoPE angles from rope_cache_ref (θ_i by repeated f32 products, so
                                // i ulp off), the fast paths from double tables: the keys differ by ~1e-5 relative
                                const double e2 = nmse(o2.data(), oref.data(), o2.size());
                                TC_CHECK(e2 < (post ? 1e-9 : 2e-8)) << "AVX2 " << kv_codec_get(t).name << " D=" << D << " post=" << post << " style=" << style
                                                    << " G=" << G << " head=" << h << " qpos=" << qpos << ": NMSE " << e2;
                                checked++;
                                if (!attend_group_coded_avx512(D, D, 0.125f, q.data(), G, qpos, hv, o.data())) {
                                    no_avx512 = true;
                                    continue;
                                }
                                const double e = nmse(o.data(), oref.data(), o.size());
                                TC_CHECK(e < (post ? 1e-9 : 2e-8)) << "AVX-512 " << kv_codec_get(t).name << " D=" << D << " post=" << post << " style=" << style << " G=" << G
                                                   << " head=" << h << " qpos=" << qpos << ": NMSE " << e;
                                checked++;
                            }
                        }
                    }
                }
            }
        }
    }
    if (no_avx512) {
        TC_CHECK(checked == 3 * 3 * 2 * 2 * 2 * 2 * 2);
        tc::g_skipped = "AVX-512 coded attention: this CPU has no AVX-512 (AVX2 checked)";
    } else {
        TC_CHECK(checked == 2 * 3 * 3 * 2 * 2 * 2 * 2 * 2);
    }
}

TC_TEST("kv codecs: coded attention timing at 16K tokens (perf mode)") {
    if (tc::g_mode != "perf") { tc::g_skipped = "timing only with --mode perf"; return; }
    const int D = 64, n = 16384, G = 7;
    for (int variant = 0; variant < 3; variant++) {  // pre-RoPE, post-RoPE, pre-RoPE with grouped rotation (G = 2)
        const bool post = variant == 1;
        const int RG = variant == 2 ? 2 : 1;
        coded_fixture fx;
        fx.n_layer = 1;
        fx.n_head_kv = RG;
        std::mt19937 rng(1);
        kv_storage_config st;
        st.key = st.value = KV_CODEC_ROT2;
        st.group = 64;
        st.post_rope = post;
        st.rot_group = RG;
        st.perm.resize((size_t) RG * D);
        for (int h = 0; h < RG; h++) {
            std::iota(st.perm.begin() + h * D, st.perm.begin() + (h + 1) * D, 0);
            std::shuffle(st.perm.begin() + h * D, st.perm.begin() + (h + 1) * D, rng);
        }
        auto kv = fx.make(st, n + 16);
        fx.feed(*kv, n, 512, rng);
        auto q = randn(rng, (size_t) G * D);
        std::vector<float> o((size_t) G * D);
        const kv_head_view hv = kv->head(0, 0);
        for (int path = 0; path < 4; path++) {
            // best of 5 batches (this machine is shared: a mean picks up other tenants' bursts)
            const int reps = path == 0 ? 3 : 20;
            double best_us = 1e30;
            for (int batch = 0; batch < (path == 0 ? 1 : 5); batch++) {
            auto t0 = std::chrono::steady_clock::now();
            for (int r = -1; r < reps; r++) {  // r = -1: untimed warm-up (builds the f16 cache of path 2)
                if (r == 0) t0 = std::chrono::steady_clock::now();
                if (path == 0) attend_group_coded_ref(D, D, 0.125f, q.data(), G, n, hv, o.data());
                else if (path == 1) attend_group_coded_avx512(D, D, 0.125f, q.data(), G, n, hv, o.data());
                else if (path == 3) attend_group_coded_avx2(D, D, 0.125f, q.data(), G, n, hv, o.data());
                else {
                    // the f16 cache of the same length, for scale
                    static std::unique_ptr<kv_cache> kv16;
                    if (!kv16) { coded_fixture f2; f2.n_layer = 1; f2.n_head_kv = 1; kv16 = f2.make(kv_storage_config{}, n + 16); std::mt19937 r2(1); f2.feed(*kv16, n, 512, r2); }
                    attn_params p;
                    p.n_tokens = 1; p.n_head = G; p.n_head_kv = 1; p.head_dim = D; p.head_dim_v = D; p.scale = 0.125f;
                    static thread_pool pool(1);
                    static attn_scratch sc;
                    const int32_t qp = n;
                    attention(pool, p, q.data(), &qp, *kv16, 0, o.data(), sc);
                }
            }
            best_us = std::min(best_us, std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / reps);
            }
            const double us = best_us;
            std::printf("    %s %-10s %8.1f us per head-step (%.1f ns per key)\n", post ? "post-RoPE " : RG > 1 ? "grouped G2" : "pre-RoPE  ", path == 0 ? "ref" : path == 1 ? "avx512" : path == 3 ? "avx2" : "f16 cache", us, us * 1000 / n);
        }
    }
}

TC_TEST("kv cache: f16 attention timing vs context, Qwen2-1.5B head shape (perf mode)") {
    if (tc::g_mode != "perf") { tc::g_skipped = "timing only with --mode perf"; return; }
    const int D = 128, G = 6;  // one KV head of Qwen2-1.5B: 6 query heads, head_dim 128
    for (int threads : {1, 2}) {
        for (int n : {1024, 2048, 4096, 6144, 8192}) {
            coded_fixture fx;
            fx.n_layer = 1;
            fx.n_head_kv = 2;
            fx.D = fx.DV = D;
            fx.pool = std::make_shared<page_pool>(kv_page_bytes(D, D));
            std::mt19937 rng(1);
            auto kv = fx.make(kv_storage_config{}, n + 16);
            fx.feed(*kv, n, 512, rng);
            auto q = randn(rng, (size_t) 2 * G * D);
            std::vector<float> o((size_t) 2 * G * D);
            attn_params p;
            p.n_tokens = 1; p.n_head = 2 * G; p.n_head_kv = 2; p.head_dim = D; p.head_dim_v = D; p.scale = 0.088f;
            thread_pool pool(threads);
            attn_scratch sc;
            const int32_t qp = n;
            attention(pool, p, q.data(), &qp, *kv, 0, o.data(), sc);
            const int reps = 20;
            const auto t0 = std::chrono::steady_clock::now();
            for (int r = 0; r < reps; r++) attention(pool, p, q.data(), &qp, *kv, 0, o.data(), sc);
            const double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / reps;
            std::printf("    threads %d  n %5d: %8.1f us per layer-step (2 KV heads), %.2f ns per key and KV head\n", threads, n, us, us * 1000 / n / 2 * threads);
        }
    }
}

TC_TEST("kv codecs: sinks over a chunked prompt are the 20 largest of the whole prompt, not a union of per-chunk top-20s") {
    coded_fixture fx;
    fx.n_layer = 1;
    kv_storage_config st;
    st.key = st.value = KV_CODEC_ROT2;
    auto kv = fx.make(st);
    // three chunks report 20 candidates each; magnitudes grow chunk by chunk, so the last chunk's win
    for (int c = 0; c < 3; c++) {
        std::vector<int32_t> pos;
        std::vector<float> mag;
        for (int i = 0; i < 20; i++) { pos.push_back(100 * c + i + 1); mag.push_back(10.0f * (c + 1) + (float) i / 100); }
        kv->add_sinks(0, pos, mag);
    }
    const auto & s = kv->sinks(0);
    TC_CHECK(s.size() == 21) << s.size();
    TC_CHECK(s.front() == 0);
    for (size_t i = 1; i < s.size(); i++) TC_CHECK(s[i] >= 201 && s[i] <= 220) << s[i];
    // several of the largest elements in one token: it counts once, and fewer tokens are sinks
    auto kv2 = fx.make(st);
    kv2->add_sinks(0, std::vector<int32_t>(20, 5), std::vector<float>(20, 50.0f));
    kv2->add_sinks(0, {7, 8}, {1.0f, 2.0f});  // smaller than the 20 elements already held
    TC_CHECK(kv2->sinks(0) == std::vector<int32_t>({0, 5}));
}

// ---- codecs on evicting heads (ALGORITHMS.md §6.2 C1 a, C5, C7; §6.1 step 9) ----

namespace {

// The positions a head holds, in the order of the cache's probability buffers: [coded | f16].
std::vector<int32_t> layout_positions(const kv_cache & kv, int il, int ih) {
    std::vector<int32_t> out;
    const kv_head_view hv = kv.head(il, ih);
    if (hv.coded) for (int32_t j = 0; j < hv.coded->n; j++) out.push_back(hv.coded->pos_at(j));
    for (int s = 0; s < hv.n_seg; s++) for (int j = 0; j < hv.seg[s].n; j++) out.push_back(hv.seg[s].pos[j]);
    return out;
}

} // namespace

TC_TEST("kv codecs on evicting heads: every policy keeps the positions it keeps on an f16 cache; evicted codes free their pages") {
    int compared = 0;
    for (const char * pol : {"lazy", "h2o", "tova", "streaming"}) {
        for (kv_codec_type t : {KV_CODEC_ROT2, KV_CODEC_Q4}) {
            // a budget of many pages, so page granularity does not hide the saving
            const int L = 1, H = 2, Dm = 64, P = 1100, steps = 300;
            auto pool = std::make_shared<page_pool>(kv_page_bytes(Dm, Dm));
            kv_cache_config c;
            c.n_layer = L; c.n_head_kv = H; c.n_head = 2 * H; c.head_dim = c.head_dim_v = Dm; c.n_ctx = 4096;
            c.retention.assign((size_t) L * H, KV_RETAIN_EVICT);
            c.policy.kind = kv_policy_find(pol)->kind;
            c.policy.capacity = 900;
            c.policy.window = 32;
            c.policy.protect = 4;
            c.storage.n_rot = Dm;
            c.storage.rope = ROPE_STYLE_NEOX;
            kv_cache f16(c, pool);
            kv_cache_config cc = c;
            cc.storage.key = cc.storage.value = t;
            cc.storage.staging = 16;  // below W: the EVICT heads stage W = 32 (§6.2 C5)
            cc.storage.protect = 4;
            TC_CHECK(kv_storage_check(cc).ok());
            kv_cache coded(cc, pool);
            std::mt19937 rng(21);
            std::vector<float> cs((size_t) Dm);
            int64_t max_q = 0;
            bool evicted_coded = false;
            for (int t_step = 0; t_step <= steps; t_step++) {
                const int m = t_step == 0 ? P : 1;
                const int32_t p0 = f16.n_logical();
                auto k = randn(rng, (size_t) m * H * Dm), v = randn(rng, (size_t) m * H * Dm);
                std::vector<int32_t> pos((size_t) m);
                for (int i = 0; i < m; i++) {
                    pos[(size_t) i] = p0 + i;
                    rope_cache_ref(cs.data(), pos[(size_t) i], Dm, 10000.0f, 1.0f, nullptr);
                    rope_apply_ref(k.data() + (size_t) i * H * Dm, H, Dm, Dm, ROPE_STYLE_NEOX, cs.data());
                }
                for (kv_cache * kv : {&f16, &coded}) {
                    TC_CHECK(kv->reserve(m).ok());
                    kv->append(0, m, k.data(), v.data(), pos.data());
                    // the same probability per position in both caches, written in each cache's own layout
                    const int32_t cur = pos.back();
                    for (int ih = 0; ih < H; ih++) {
                        const std::vector<int32_t> lp = layout_positions(*kv, 0, ih);
                        double z = 0;
                        std::vector<double> w(lp.size());
                        for (size_t j = 0; j < lp.size(); j++) {
                            const int32_t ps = lp[j];
                            double x = 1e-7 * (1 + (ps * 2654435761u + cur * 40503u + ih) % 97);
                            if ((ps * 7 + cur) % 61 == 0) x += 0.02;  // scattered recurring hits
                            if (cur - ps < 8) x += 0.05;
                            z += (w[j] = x);
                        }
                        for (size_t j = 0; j < lp.size(); j++) {
                            kv->probs_max(0, ih)[j] = (float) (w[j] / z);
                            kv->probs_sum(0, ih)[j] = (float) (2 * w[j] / z);
                        }
                    }
                    kv->retain(0);
                }
                for (int ih = 0; ih < H; ih++) {
                    const std::vector<int32_t> a = f16.held_positions(0, ih), b = coded.held_positions(0, ih);
                    TC_CHECK(a == b) << pol << "/" << kv_codec_get(t).name << " step " << t_step << " head " << ih << ": " << a.size() << " vs "
                                     << b.size() << " positions";
                    if (a != b) return;
                    const kv_head_view hv = coded.head(0, ih);
                    TC_CHECK(hv.coded != nullptr);
                    if (!hv.coded) return;
                    // the f16 part holds the protected tokens and at most the staging window plus one flush block
                    TC_CHECK(hv.n <= 4 + 32 + 16 + 16) << "f16 tokens " << hv.n;
                    max_q = std::max<int64_t>(max_q, hv.coded->n);
                    for (int32_t j = 1; j < hv.coded->n; j++) TC_CHECK(hv.coded->pos_at(j) > hv.coded->pos_at(j - 1));
                }
                const kv_memory_report r = coded.memory(false);
                if (r.evicted_tokens > 0 && r.quantized_tokens > 0 && r.quantized_tokens < max_q * H) evicted_coded = true;
                compared++;
            }
            TC_CHECK(max_q > 0) << pol << ": no token was ever quantized";
            // pages follow the held tokens: after all that eviction, allocation is what the held tokens need
            const kv_memory_report r = coded.memory(true), r16 = f16.memory(false);
            TC_CHECK(r.resident_tokens == r16.resident_tokens);
            TC_CHECK(r.bytes_allocated * 2 < r16.bytes_allocated) << pol << ": coded " << r.bytes_allocated << " B vs f16 " << r16.bytes_allocated;
            // the payload shrinks more than 3×; the policy's per-token state (statistics, probabilities) does not
            TC_CHECK((r.key_bytes + r.value_bytes) * 3 < r16.key_bytes + r16.value_bytes) << pol << ": coded " << r.key_bytes + r.value_bytes << " B of keys and values vs f16 "
                                                                                          << r16.key_bytes + r16.value_bytes;
            TC_CHECK(r.bytes_used * 2 < r16.bytes_used) << pol << ": coded " << r.bytes_used << " B used vs f16 " << r16.bytes_used;
            // every head evicts: 4 B per held token for each statistic the policy keeps, plus its two probabilities
            const std::string ps(pol);
            const int64_t per_token = 4 * ((ps == "lazy" ? 2 : ps == "streaming" ? 0 : 1) + 2);
            TC_CHECK(r.metadata_bytes >= (uint64_t) (per_token * r.resident_tokens) && r.metadata_bytes < (uint64_t) (per_token * r.resident_tokens) + 4096)
                << pol << ": metadata " << r.metadata_bytes << " B for " << r.resident_tokens << " tokens";
            if (std::string(pol) != "streaming") TC_CHECK(evicted_coded) << pol << "/" << kv_codec_get(t).name << ": never evicted a coded token";
        }
    }
    TC_CHECK(compared == 4 * 2 * 301);
}

TC_TEST("kv codecs on evicting heads: attention writes each held token's probability in the [coded | f16] layout (ref == AVX2 == AVX-512)") {
    coded_fixture fx;
    fx.n_layer = 1;
    std::mt19937 rng(31);
    kv_storage_config st;
    st.key = st.value = KV_CODEC_ROT2;
    st.staging = 24;
    st.protect = 5;
    auto kv = fx.make(st, 4096);
    fx.feed(*kv, 300, 300, rng);
    const kv_head_view hv = kv->head(0, 1);
    TC_CHECK(hv.coded && hv.coded->n > 200);
    if (!hv.coded) return;
    const int G = 7, D = fx.D;
    const int32_t n_all = hv.n + hv.coded->n;
    auto q = randn(rng, (size_t) G * D, 2.0f);
    const std::vector<int32_t> lp = layout_positions(*kv, 0, 1);
    for (int32_t qpos : {299, 150}) {
        std::vector<float> o((size_t) G * D), pm((size_t) n_all, -1.0f), ps((size_t) n_all, -1.0f);
        kv_group_probs pr{pm.data(), ps.data()};
        attend_group_coded_ref(D, D, 0.125f, q.data(), G, qpos, hv, o.data(), &pr);
        double total = 0;
        for (int32_t j = 0; j < n_all; j++) {
            total += ps[(size_t) j];
            TC_CHECK(pm[(size_t) j] >= 0 && pm[(size_t) j] <= ps[(size_t) j] + 1e-7f);
            if (lp[(size_t) j] > qpos) TC_CHECK(ps[(size_t) j] == 0.0f) << "invisible token " << lp[(size_t) j] << " got probability";
        }
        TC_CHECK(std::fabs(total - G) < 1e-4) << "probabilities of the group sum to " << total << ", not " << G;
        std::vector<float> o2((size_t) G * D), pm2((size_t) n_all, -1.0f), ps2((size_t) n_all, -1.0f);
        kv_group_probs pr2{pm2.data(), ps2.data()};
        if (!attend_group_coded_avx512(D, D, 0.125f, q.data(), G, qpos, hv, o2.data(), &pr2)) {
            tc::g_skipped = "AVX-512 coded attention: this CPU has no AVX-512 (the scalar ref is used)";
            return;
        }
        double e = 0, s = 0;
        for (int32_t j = 0; j < n_all; j++) { e += (ps2[(size_t) j] - ps[(size_t) j]) * (double) (ps2[(size_t) j] - ps[(size_t) j]); s += (double) ps[(size_t) j] * ps[(size_t) j]; }
        TC_CHECK(e / s < 1e-8) << "AVX-512 probabilities vs ref: NMSE " << e / s;
        std::vector<float> pm3((size_t) n_all, -1.0f), ps3((size_t) n_all, -1.0f);
        kv_group_probs pr3{pm3.data(), ps3.data()};
        TC_CHECK(attend_group_coded_avx2(D, D, 0.125f, q.data(), G, qpos, hv, o2.data(), &pr3));
        e = 0;
        for (int32_t j = 0; j < n_all; j++) e += (ps3[(size_t) j] - ps[(size_t) j]) * (double) (ps3[(size_t) j] - ps[(size_t) j]);
        TC_CHECK(e / s < 1e-8) << "AVX2 probabilities vs ref: NMSE " << e / s;
    }
}

TC_TEST("kv codecs on evicting heads: block codecs (KIVI) and key-scoring policies are refused with the reason") {
    kv_cache_config c;
    c.n_layer = 1; c.n_head_kv = 2; c.head_dim = c.head_dim_v = 64;
    c.retention.assign(2, KV_RETAIN_EVICT);
    c.storage.key = c.storage.value = KV_CODEC_KIVI2;
    status s = kv_storage_check(c);
    TC_CHECK(!s.ok() && s.code == ERR_INVALID_ARG && s.message.find("C7") != std::string::npos) << s.message;
    c.storage.key = c.storage.value = KV_CODEC_ROT2;
    c.policy.kind = KV_POLICY_SNAPKV;
    s = kv_storage_check(c);
    TC_CHECK(!s.ok() && s.message.find("snapkv") != std::string::npos) << s.message;
    c.policy.kind = KV_POLICY_LAZY;
    TC_CHECK(kv_storage_check(c).ok());
    c.retention.assign(2, KV_RETAIN_FULL);
    c.storage.key = c.storage.value = KV_CODEC_KIVI2;
    TC_CHECK(kv_storage_check(c).ok()) << "KIVI on FULL heads stays allowed";
}

TC_TEST("kv codecs: grouped key rotation (G = 1, 2, 4): slots inverted by FWHT_{G·D} give the keys; attention matches f16; fused == ref; only all-FULL groups") {
    int fused_checked = 0;
    for (int RG : {1, 2, 4}) {
        coded_fixture fx;
        fx.n_head_kv = 4;
        std::mt19937 rng(31), prng(7);
        kv_storage_config st;
        st.key = st.value = KV_CODEC_ROT4;
        st.staging = 16;
        st.protect = 3;
        st.rot_group = RG;
        st.perm.resize((size_t) fx.n_layer * fx.n_head_kv * fx.D);
        for (size_t i = 0; i < st.perm.size(); i += (size_t) fx.D) {
            std::iota(st.perm.begin() + (ptrdiff_t) i, st.perm.begin() + (ptrdiff_t) i + fx.D, 0);
            std::shuffle(st.perm.begin() + (ptrdiff_t) i, st.perm.begin() + (ptrdiff_t) i + fx.D, prng);
        }
        auto kv = fx.make(st);
        auto kv16 = fx.make(kv_storage_config{});
        std::mt19937 rng2 = rng;
        const int n = 200;
        fx.feed(*kv, n, 23, rng);
        fx.feed(*kv16, n, 23, rng2);
        const int D = fx.D, H = fx.n_head_kv;
        std::vector<float> cs((size_t) D), y((size_t) RG * D), x((size_t) D);
        double worst = 0;
        for (int il = 0; il < fx.n_layer; il++) {
            for (int ih = 0; ih < H; ih++) TC_CHECK(kv->rot_group_of(il, ih) == RG) << "RG " << RG;
            for (int g0 = 0; g0 < H; g0 += RG) {
                const kv_head_view h0 = kv->head(il, g0);
                TC_CHECK(h0.coded && h0.coded->n > 100) << (h0.coded ? h0.coded->n : -1);
                for (int32_t j = 0; j < h0.coded->n; j++) {
                    // the spec's inverse (§3.6): concatenate the slots' dequantized channels, undo each slot's
                    // permutation, FWHT of size G·D, RoPE each head's share at the stored position
                    for (int s = 0; s < RG; s++) {
                        const kv_coded_view & c = *kv->head(il, g0 + s).coded;
                        TC_CHECK(c.n == h0.coded->n && c.pos_at(j) == h0.coded->pos_at(j));
                        int jj;
                        const uint8_t * blk = c.key_block(j, jj);
                        c.kc->decode(c.kp, blk, jj, x.data());
                        const int32_t * perm = st.perm.data() + ((size_t) il * H + g0 + s) * D;
                        for (int d = 0; d < D; d++) y[(size_t) s * D + perm[d]] = x[d];
                    }
                    fwht_ref(y.data(), RG * D);
                    const int32_t p = h0.coded->pos_at(j);
                    rope_cache_ref(cs.data(), p, D, 10000.0f, 1.0f, nullptr);
                    rope_apply_ref(y.data(), RG, D, D, fx.style, cs.data());
                    for (int s = 0; s < RG; s++) {
                        // the f16 twin holds every token in f16, at index = position
                        const kv_head_view t = kv16->head(il, g0 + s);
                        const kv_segment & sg = t.seg[p / KV_PAGE_TOKENS];
                        for (int d = 0; d < D; d++) x[d] = f16_to_f32(sg.key(p % KV_PAGE_TOKENS, d, D));
                        worst = std::max(worst, nmse(y.data() + (size_t) s * D, x.data(), (size_t) D));
                    }
                }
            }
            // the layer's attention (the threaded entry; grouped heads take the fused kernels) vs the f16 cache's
            const int G = 3;
            attn_params p;
            p.n_tokens = 1; p.n_head = H * G; p.n_head_kv = H; p.head_dim = D; p.head_dim_v = D; p.scale = 0.125f;
            auto q = randn(rng, (size_t) H * G * D);
            const int32_t qpos = n;
            std::vector<float> a((size_t) H * G * D), b((size_t) H * G * D);
            thread_pool pool(2);
            attn_scratch sc;
            attention(pool, p, q.data(), &qpos, *kv, il, a.data(), sc);
            attention(pool, p, q.data(), &qpos, *kv16, il, b.data(), sc);
            const double e = nmse(a.data(), b.data(), a.size());
            TC_CHECK(e < 2e-2) << "RG " << RG << " layer " << il << ": attention NMSE vs f16 " << e;
            for (int ih = 0; ih < H; ih++) {
                // the fused kernels (where this CPU has them) against the _ref, grouped slots included
                const float * qh = q.data() + (size_t) ih * G * D;
                std::vector<float> r((size_t) G * D), f((size_t) G * D);
                attend_group_coded_ref(D, D, 0.125f, qh, G, qpos, kv->head(il, ih), r.data());
                for (int path = 0; path < 2; path++) {
                    const bool ran = path == 0 ? attend_group_coded_avx2(D, D, 0.125f, qh, G, qpos, kv->head(il, ih), f.data())
                                               : attend_group_coded_avx512(D, D, 0.125f, qh, G, qpos, kv->head(il, ih), f.data());
                    if (!ran) continue;
                    fused_checked++;
                    double md = 0;
                    for (size_t i = 0; i < f.size(); i++) md = std::max(md, (double) std::fabs(f[i] - r[i]));
                    TC_CHECK(md < 1e-5) << (path ? "AVX-512" : "AVX2") << " vs ref, RG " << RG << ": max |diff| " << md;
                }
            }
        }
        TC_CHECK(worst < 2e-2) << "RG " << RG << ": worst key NMSE " << worst;  // rot4 of N(0,1) keys: ~5e-3
    }
    if (!fused_checked) std::printf("  (grouped rotation: no AVX2/AVX-512 on this CPU, fused kernels not compared)\n");
    // only groups whose heads are all FULL rotate together
    coded_fixture fx;
    fx.n_head_kv = 4;
    kv_cache_config c;
    c.n_layer = 2; c.n_head_kv = 4; c.head_dim = c.head_dim_v = 64; c.n_ctx = 512;
    c.retention.assign(8, KV_RETAIN_FULL);
    c.retention[1] = KV_RETAIN_STREAM;  // layer 0, group {0, 1} is not all FULL
    c.storage.key = c.storage.value = KV_CODEC_ROT2;
    c.storage.rot_group = 2;
    c.storage.n_rot = 64;
    TC_CHECK(kv_storage_check(c).ok());
    kv_cache mixed(c, fx.pool);
    TC_CHECK(mixed.rot_group_of(0, 0) == 1 && mixed.rot_group_of(0, 1) == 1 && mixed.rot_group_of(0, 2) == 2 && mixed.rot_group_of(1, 0) == 2);
    // refused: not a power of two / not dividing the KV heads, post-RoPE, non-rot keys
    for (int bad = 0; bad < 4; bad++) {
        kv_cache_config b = c;
        if (bad == 0) b.storage.rot_group = 3;
        if (bad == 1) b.storage.rot_group = 8;
        if (bad == 2) b.storage.post_rope = true;
        if (bad == 3) b.storage.key = KV_CODEC_Q8;
        const status s = kv_storage_check(b);
        TC_CHECK(!s.ok() && s.code == ERR_INVALID_ARG) << "case " << bad;
    }
}
