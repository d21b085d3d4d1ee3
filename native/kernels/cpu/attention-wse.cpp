#include "attention-wse.h"

#include <algorithm>
#include <cmath>

namespace core {

void attention_window_error(thread_pool & pool, const attn_params & p, const float * q, const int32_t * q_pos, const kv_cache & kv, int il,
                            wse_accumulator & acc) {
    const int G = p.n_head / p.n_head_kv, D = p.head_dim, DV = p.head_dim_v;
    const int S = acc.sinks, R = acc.recent;
    pool.run([&](int ith, int nth) {
        std::vector<double> sc, of((size_t) DV), ow((size_t) DV);
        std::vector<float> kbuf((size_t) D);
        for (int ih = ith; ih < p.n_head_kv; ih += nth) {
            const kv_head_view hv = kv.head(il, ih);
            double err = 0, mass = 0, cnt = 0;
            for (int t = 0; t < p.n_tokens; t++) {
                const int32_t qp = q_pos[t];
                if (qp < S + R) continue;
                for (int g = 0; g < G; g++) {
                    const float * qr = q + ((size_t) t * p.n_head + (size_t) ih * G + g) * D;
                    // scores over the visible keys
                    sc.clear();
                    double mx = -INFINITY;
                    for (int32_t s = 0; s < hv.n_seg; s++) {
                        const kv_segment & seg = hv.seg[s];
                        for (int32_t j = 0; j < seg.n && seg.pos[j] <= qp; j++) {
                            double dot = 0;
                            for (int d = 0; d < D; d++) dot += (double) qr[d] * f16_to_f32(seg.key(j, d, D));
                            sc.push_back(dot * p.scale);
                            mx = std::max(mx, sc.back());
                        }
                    }
                    double z = 0;
                    for (double & x : sc) { x = std::exp(x - mx); z += x; }
                    std::fill(of.begin(), of.end(), 0.0);
                    std::fill(ow.begin(), ow.end(), 0.0);
                    double m_in = 0;
                    size_t idx = 0;
                    for (int32_t s = 0; s < hv.n_seg; s++) {
                        const kv_segment & seg = hv.seg[s];
                        for (int32_t j = 0; j < seg.n && seg.pos[j] <= qp; j++, idx++) {
                            const double pj = sc[idx] / z;
                            const bool in_win = seg.pos[j] < S || seg.pos[j] > qp - R;
                            const f16_t * vr = seg.v + (size_t) j * DV;
                            for (int d = 0; d < DV; d++) {
                                const double vv = f16_to_f32(vr[d]);
                                of[d] += pj * vv;
                                if (in_win) ow[d] += pj * vv;
                            }
                            if (in_win) m_in += pj;
                        }
                    }
                    double num = 0, den = 0;
                    for (int d = 0; d < DV; d++) {
                        const double w = m_in > 0 ? ow[d] / m_in : 0.0;
                        num += (of[d] - w) * (of[d] - w);
                        den += of[d] * of[d];
                    }
                    err += num / (den + 1e-6);
                    mass += 1.0 - m_in;
                    cnt += 1;
                }
            }
            const size_t slot = (size_t) il * p.n_head_kv + ih;
            acc.err_sum[slot] += err;
            acc.out_mass_sum[slot] += mass;
            acc.count[slot] += cnt;
        }
    });
}

} // namespace core
