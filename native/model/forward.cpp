// Forward pass, written to read like the architecture (llama2.c's `forward`):
//   x = embed(tokens)
//   per layer: h = rmsnorm(x)·w_attn_norm; q,k,v = h·Wq,Wk,Wv (+bias: qwen2); qwen3: per-head rmsnorm(q,k);
//              RoPE(q,k); cache ← k,v; a = softmax(q·kᵀ/√d)·v over the cache; x += a·Wo
//              h = rmsnorm(x)·w_ffn_norm; x += (silu(h·Wgate) ⊙ h·Wup)·Wdown
//   logits = rmsnorm(x_last)·w_out_norm · Woutᵀ
#include "forward.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "../kernels/cpu/ops.h"

namespace core {

namespace {

template <class T> void grow(std::vector<T> & v, size_t n) {
    if (v.size() < n) v.resize(n);
}

} // namespace

status forward_chunk(const model & m, kv_cache & kv, const int32_t * tokens, int n_tokens, logits_mode mode, float * logits,
                     forward_scratch & s, thread_pool & pool, const std::atomic<bool> * abort) {
    const hparams & hp = m.hp;
    if (n_tokens <= 0) return status(ERR_INVALID_ARG, "forward_chunk: n_tokens must be positive");
    for (int t = 0; t < n_tokens; t++) {
        if (tokens[t] < 0 || (uint32_t) tokens[t] >= hp.n_vocab) {
            return status(ERR_INVALID_ARG, strfmt("forward_chunk: token id %d at index %d is out of range [0, %u)", tokens[t], t, hp.n_vocab));
        }
    }
    status st = kv.reserve(n_tokens);
    if (!st.ok()) return st;

    const int n_embd = (int) hp.n_embd, n_ff = (int) hp.n_ff;
    const int n_q = (int) (hp.n_head * hp.head_dim), n_k = (int) (hp.n_head_kv * hp.head_dim), n_v = (int) (hp.n_head_kv * hp.head_dim_v);
    const int n_attn = (int) (hp.n_head * hp.head_dim_v);
    const size_t T = (size_t) n_tokens;
    try {
        grow(s.x, T * n_embd); grow(s.xn, T * n_embd); grow(s.o, T * n_embd);
        grow(s.q, T * n_q); grow(s.k, T * n_k); grow(s.v, T * n_v); grow(s.attn, T * n_attn);
        grow(s.gate, T * n_ff); grow(s.up, T * n_ff); grow(s.cs, T * hp.n_rot); grow(s.pos, T);
    } catch (const std::bad_alloc &) {
        kv.revert_chunk();
        return status(ERR_OOM_HOST, strfmt("forward_chunk: out of memory for activations of %d tokens", n_tokens));
    }

    const int32_t pos0 = kv.n_logical();
    for (int t = 0; t < n_tokens; t++) {
        s.pos[t] = pos0 + t;
        rope_cache_ref(s.cs.data() + (size_t) t * hp.n_rot, s.pos[t], (int) hp.n_rot, hp.rope_freq_base, hp.rope_freq_scale, m.rope_freqs);
        weight_row_to_float(m.tok_embd, tokens[t], s.x.data() + (size_t) t * n_embd);
    }

    attn_params ap;
    ap.n_tokens = n_tokens;
    ap.n_head = (int) hp.n_head;
    // A cache may hold one token set per query head (LazyEviction's per-query-head reference mode): it then
    // has n_head "KV heads", each a copy of its group's KV head, and attention maps query head h to cache head h.
    const int cache_heads = kv.config().n_head_kv;
    const bool expand = cache_heads != (int) hp.n_head_kv;
    ap.n_head_kv = cache_heads;
    ap.head_dim = (int) hp.head_dim;
    ap.head_dim_v = (int) hp.head_dim_v;
    ap.scale = 1.0f / std::sqrt((float) hp.head_dim);

    for (uint32_t il = 0; il < hp.n_layer; il++) {
        // An abort stops between layers while the chunk can be taken back out exactly; once a layer has
        // dropped, quantized or re-scored older tokens the chunk runs to its end (the caller stops before the
        // next one), so an abort never costs the tokens the cache held before it.
        if (abort && abort->load(std::memory_order_relaxed) && kv.chunk_revertible()) {
            kv.revert_chunk();
            return status(ERR_ABORTED, "forward_chunk: aborted");
        }
        const layer_weights & L = m.layers[il];
        if (n_tokens > 1 && kv.wants_sinks()) {
            // massive activations (§3.5): the tokens holding the 20 largest |values| of the layer input
            const size_t total = T * (size_t) n_embd, k_top = std::min<size_t>(20, total);
            s.sink_idx.resize(total);
            for (size_t i = 0; i < total; i++) s.sink_idx[i] = (int32_t) i;
            std::partial_sort(s.sink_idx.begin(), s.sink_idx.begin() + (ptrdiff_t) k_top, s.sink_idx.end(),
                              [&](int32_t a, int32_t b) {  // ties: the lower index (the CUDA path's order too)
                                  const float fa = std::fabs(s.x[(size_t) a]), fb = std::fabs(s.x[(size_t) b]);
                                  return fa > fb || (fa == fb && a < b);
                              });
            std::vector<int32_t> found;
            std::vector<float> mag;
            for (size_t i = 0; i < k_top; i++) {
                found.push_back(s.pos[(size_t) s.sink_idx[i] / n_embd]);
                mag.push_back(std::fabs(s.x[(size_t) s.sink_idx[i]]));
            }
            kv.add_sinks((int) il, found, mag);  // the layer keeps the 20 largest over the whole prompt, and token 0
        }
        // ---- attention block
        for (size_t t = 0; t < T; t++) rms_norm_ref(s.x.data() + t * n_embd, L.attn_norm, s.xn.data() + t * n_embd, n_embd, hp.rms_eps);
        cpu_matmul(pool, L.wq, s.xn.data(), s.q.data(), n_tokens, s.mm);
        cpu_matmul(pool, L.wk, s.xn.data(), s.k.data(), n_tokens, s.mm);
        cpu_matmul(pool, L.wv, s.xn.data(), s.v.data(), n_tokens, s.mm);
        for (size_t t = 0; t < T; t++) {
            float * q = s.q.data() + t * n_q;
            float * k = s.k.data() + t * n_k;
            if (L.bq) add_ref(q, L.bq, n_q);
            if (L.bk) add_ref(k, L.bk, n_k);
            if (L.bv) add_ref(s.v.data() + t * n_v, L.bv, n_v);
            if (L.q_norm) {
                for (uint32_t h = 0; h < hp.n_head; h++) rms_norm_ref(q + h * hp.head_dim, L.q_norm, q + h * hp.head_dim, hp.head_dim, hp.rms_eps);
                for (uint32_t h = 0; h < hp.n_head_kv; h++) rms_norm_ref(k + h * hp.head_dim, L.k_norm, k + h * hp.head_dim, hp.head_dim, hp.rms_eps);
            }
            const float * cs = s.cs.data() + t * hp.n_rot;
            if (s.wse && !s.wse->q_sum.empty()) {
                double * qs = s.wse->q_sum.data() + (size_t) il * n_q;
                double * ks = s.wse->k_sum.data() + (size_t) il * n_k;
                for (int i = 0; i < n_q; i++) qs[i] += q[i];
                for (int i = 0; i < n_k; i++) ks[i] += k[i];
                if (il == 0) s.wse->tokens += 1;
            }
            rope_apply_ref(q, (int) hp.n_head, (int) hp.head_dim, (int) hp.n_rot, m.arch->rope, cs);
            rope_apply_ref(k, (int) hp.n_head_kv, (int) hp.head_dim, (int) hp.n_rot, m.arch->rope, cs);
        }
        if (expand) {
            const int G = cache_heads / (int) hp.n_head_kv;
            grow(s.kx, T * cache_heads * hp.head_dim);
            grow(s.vx, T * cache_heads * hp.head_dim_v);
            for (size_t t = 0; t < T; t++) {
                for (int h = 0; h < cache_heads; h++) {
                    std::memcpy(s.kx.data() + (t * cache_heads + h) * hp.head_dim, s.k.data() + t * n_k + (size_t) (h / G) * hp.head_dim, sizeof(float) * hp.head_dim);
                    std::memcpy(s.vx.data() + (t * cache_heads + h) * hp.head_dim_v, s.v.data() + t * n_v + (size_t) (h / G) * hp.head_dim_v, sizeof(float) * hp.head_dim_v);
                }
            }
            kv.append((int) il, n_tokens, s.kx.data(), s.vx.data(), s.pos.data());
        } else {
            kv.append((int) il, n_tokens, s.k.data(), s.v.data(), s.pos.data());
        }
        if (kv.wants_queries((int) il)) kv.record_query((int) il, s.q.data() + (T - 1) * n_q, s.pos[T - 1]);
        attention(pool, ap, s.q.data(), s.pos.data(), kv, (int) il, s.attn.data(), s.at);
        if (s.wse && s.wse->window_error) attention_window_error(pool, ap, s.q.data(), s.pos.data(), kv, (int) il, *s.wse);
        kv.retain((int) il);  // STREAM heads keep their sinks + recent window
        cpu_matmul(pool, L.wo, s.attn.data(), s.o.data(), n_tokens, s.mm);
        add_ref(s.x.data(), s.o.data(), (int64_t) T * n_embd);

        // ---- feed-forward block (SwiGLU)
        for (size_t t = 0; t < T; t++) rms_norm_ref(s.x.data() + t * n_embd, L.ffn_norm, s.xn.data() + t * n_embd, n_embd, hp.rms_eps);
        cpu_matmul(pool, L.w_gate, s.xn.data(), s.gate.data(), n_tokens, s.mm);
        cpu_matmul(pool, L.w_up, s.xn.data(), s.up.data(), n_tokens, s.mm);
        silu_mul(s.gate.data(), s.up.data(), (int64_t) T * n_ff);
        cpu_matmul(pool, L.w_down, s.gate.data(), s.o.data(), n_tokens, s.mm);
        add_ref(s.x.data(), s.o.data(), (int64_t) T * n_embd);
    }

    if (mode == LOGITS_NONE) return {};
    const size_t first = mode == LOGITS_LAST ? T - 1 : 0;
    const int n_out = (int) (T - first);
    for (size_t t = first; t < T; t++) rms_norm_ref(s.x.data() + t * n_embd, m.output_norm, s.xn.data() + (t - first) * n_embd, n_embd, hp.rms_eps);
    cpu_matmul(pool, m.output, s.xn.data(), logits, n_out, s.mm);
    return {};
}

} // namespace core
