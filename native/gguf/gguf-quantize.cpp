// GGUF quantizer (see gguf-quantize.h). Reads through the mmapped reader, converts one tensor at a time
// (source -> f32 -> target, rows split across threads) and streams the new file.
#include "gguf-quantize.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <memory>
#include <sys/stat.h>
#include <system_error>
#include <thread>

#include "../tensor/quant-traits.h"
#include "gguf-reader.h"

namespace core {

namespace {

// llama.cpp's enum llama_ftype values and the default tensor type of each
struct ftype_row { const char * name; uint32_t ftype; ggml_type type; };
const ftype_row FTYPES[] = {
    {"f32", 0, GGML_TYPE_F32},      {"f16", 1, GGML_TYPE_F16},      {"bf16", 32, GGML_TYPE_BF16},
    {"q4_0", 2, GGML_TYPE_Q4_0},    {"q4_1", 3, GGML_TYPE_Q4_1},    {"q8_0", 7, GGML_TYPE_Q8_0},
    {"q5_0", 8, GGML_TYPE_Q5_0},    {"q5_1", 9, GGML_TYPE_Q5_1},    {"q2_k", 10, GGML_TYPE_Q2_K},
    {"q3_k_s", 11, GGML_TYPE_Q3_K}, {"q3_k_m", 12, GGML_TYPE_Q3_K}, {"q3_k_l", 13, GGML_TYPE_Q3_K},
    {"q4_k_s", 14, GGML_TYPE_Q4_K}, {"q4_k_m", 15, GGML_TYPE_Q4_K}, {"q5_k_s", 16, GGML_TYPE_Q5_K},
    {"q5_k_m", 17, GGML_TYPE_Q5_K}, {"q6_k", 18, GGML_TYPE_Q6_K},
    // aliases, as llama-quantize's
    {"q3_k", 12, GGML_TYPE_Q3_K},   {"q4_k", 15, GGML_TYPE_Q4_K},   {"q5_k", 17, GGML_TYPE_Q5_K},
};
enum : uint32_t { FT_Q2_K = 10, FT_Q3_K_S = 11, FT_Q3_K_M = 12, FT_Q3_K_L = 13, FT_Q4_K_S = 14, FT_Q4_K_M = 15, FT_Q5_K_S = 16, FT_Q5_K_M = 17 };

bool ends_with(const std::string & s, const char * suf) {
    const size_t n = std::strlen(suf);
    return s.size() >= n && s.compare(s.size() - n, n, suf) == 0;
}

bool allows_quantization(const gguf_tensor_info & t) {
    if (t.n_dims < 2) return false;
    if (!ends_with(t.name, "weight")) return false;
    if (t.name.find("_norm.weight") != std::string::npos) return false;
    if (t.name.find("ffn_gate_inp.weight") != std::string::npos) return false;
    if (t.name == "position_embd.weight" || t.name == "token_types.weight") return false;
    return true;
}

bool use_more_bits(int i_layer, int n_layers) {
    return i_layer < n_layers / 8 || i_layer >= 7 * n_layers / 8 || (i_layer - n_layers / 8) % 3 == 2;
}

struct select_state {
    bool tied = false;
    int n_attention_wv = 0, i_attention_wv = 0, n_ffn_down = 0, i_ffn_down = 0;
    uint32_t n_gqa = 1;
};

ggml_type fallback(ggml_type t, int64_t ncols) {
    int64_t bs = 0;
    size_t ts = 0;
    ggml_type_layout(t, &bs, &ts);
    if (ncols % bs == 0) return t;
    ggml_type r;
    switch (t) {
        case GGML_TYPE_Q2_K: case GGML_TYPE_Q3_K: r = GGML_TYPE_Q4_0; break;
        case GGML_TYPE_Q4_K: r = GGML_TYPE_Q5_0; break;
        case GGML_TYPE_Q5_K: r = GGML_TYPE_Q5_1; break;
        case GGML_TYPE_Q6_K: r = GGML_TYPE_Q8_0; break;
        default: r = t; break;
    }
    ggml_type_layout(r, &bs, &ts);
    return ncols % bs == 0 ? r : GGML_TYPE_F16;
}

// llama_tensor_get_type_impl for the file types we write (no MoE, no Falcon, no imatrix)
ggml_type select_type(select_state & qs, const gguf_tensor_info & t, const ftype_row & ft) {
    ggml_type new_type = ft.type;
    const std::string & name = t.name;
    const uint32_t ftype = ft.ftype;
    const bool is_output = name == "output.weight" || (qs.tied && name == "token_embd.weight");
    if (is_output) {
        int64_t bs = 0;
        size_t ts = 0;
        ggml_type_layout(new_type, &bs, &ts);
        if (t.ne[0] % bs != 0) new_type = GGML_TYPE_Q8_0;
        else if (new_type != GGML_TYPE_Q8_0) new_type = GGML_TYPE_Q6_K;
    } else if (name.find("attn_v.weight") != std::string::npos) {
        if (ftype == FT_Q2_K) new_type = qs.n_gqa >= 4 ? GGML_TYPE_Q4_K : GGML_TYPE_Q3_K;
        else if (ftype == FT_Q3_K_M) new_type = qs.i_attention_wv < 2 ? GGML_TYPE_Q5_K : GGML_TYPE_Q4_K;
        else if (ftype == FT_Q3_K_L) new_type = GGML_TYPE_Q5_K;
        else if ((ftype == FT_Q4_K_M || ftype == FT_Q5_K_M) && use_more_bits(qs.i_attention_wv, qs.n_attention_wv)) new_type = GGML_TYPE_Q6_K;
        else if (ftype == FT_Q4_K_S && qs.i_attention_wv < 4) new_type = GGML_TYPE_Q5_K;
        ++qs.i_attention_wv;
    } else if (name.find("ffn_down") != std::string::npos) {
        const int i_layer = qs.i_ffn_down, n_layer = qs.n_ffn_down;
        if (ftype == FT_Q2_K) new_type = GGML_TYPE_Q3_K;
        else if (ftype == FT_Q3_K_M) new_type = i_layer < n_layer / 16 ? GGML_TYPE_Q5_K : GGML_TYPE_Q4_K;
        else if (ftype == FT_Q3_K_L) new_type = GGML_TYPE_Q5_K;
        else if (ftype == FT_Q4_K_M) { if (use_more_bits(i_layer, n_layer)) new_type = GGML_TYPE_Q6_K; }
        else if (ftype == FT_Q5_K_M && use_more_bits(i_layer, n_layer)) new_type = GGML_TYPE_Q6_K;
        else if (ftype == FT_Q4_K_S && i_layer < n_layer / 8) new_type = GGML_TYPE_Q5_K;
        ++qs.i_ffn_down;
    } else if (name.find("attn_output.weight") != std::string::npos) {
        if (ftype == FT_Q2_K) new_type = GGML_TYPE_Q3_K;
        else if (ftype == FT_Q3_K_M) new_type = GGML_TYPE_Q4_K;
        else if (ftype == FT_Q3_K_L) new_type = GGML_TYPE_Q5_K;
    } else if (name.find("attn_qkv.weight") != std::string::npos) {
        if (ftype == FT_Q3_K_M || ftype == FT_Q3_K_L) new_type = GGML_TYPE_Q4_K;
        else if (ftype == FT_Q4_K_M) new_type = GGML_TYPE_Q5_K;
        else if (ftype == FT_Q5_K_M) new_type = GGML_TYPE_Q6_K;
    }
    return fallback(new_type, t.ne[0]);
}

// ---- GGUF writing ----

struct writer {
    FILE * f = nullptr;
    uint64_t pos = 0;
    std::string path;
    void bytes(const void * p, size_t n) {
        if (n && std::fwrite(p, 1, n, f) != n) fail(ERR_IO, strfmt("gguf_quantize: write to '%s' failed at offset %llu", path.c_str(), (unsigned long long) pos));
        pos += n;
    }
    template <class T> void put(T v) { bytes(&v, sizeof(T)); }
    void str(std::string_view s) { put<uint64_t>(s.size()); bytes(s.data(), s.size()); }
    void pad(size_t align) {
        static const uint8_t zeros[64] = {0};
        while (pos % align) bytes(zeros, std::min<size_t>(sizeof(zeros), align - pos % align));
    }
};

void write_array_body(writer & w, const gguf_value & v) {
    w.put<uint32_t>(v.elem_type);
    w.put<uint64_t>(v.count);
    const size_t es = gguf_type_scalar_size(v.elem_type);
    if (es) w.bytes(v.raw, (size_t) v.count * es);
    else if (v.elem_type == GGUF_TYPE_STRING) for (const auto & s : v.strs) w.str(s);
    else for (const auto & item : v.items) write_array_body(w, item);
}

void write_value(writer & w, const gguf_value & v) {
    w.put<uint32_t>(v.type);
    switch (v.type) {
        case GGUF_TYPE_UINT8: w.put<uint8_t>((uint8_t) v.num.u64); break;
        case GGUF_TYPE_INT8: w.put<int8_t>((int8_t) v.num.i64); break;
        case GGUF_TYPE_UINT16: w.put<uint16_t>((uint16_t) v.num.u64); break;
        case GGUF_TYPE_INT16: w.put<int16_t>((int16_t) v.num.i64); break;
        case GGUF_TYPE_UINT32: w.put<uint32_t>((uint32_t) v.num.u64); break;
        case GGUF_TYPE_INT32: w.put<int32_t>((int32_t) v.num.i64); break;
        case GGUF_TYPE_FLOAT32: w.put<float>((float) v.num.f64); break;
        case GGUF_TYPE_BOOL: w.put<uint8_t>(v.num.i64 != 0); break;
        case GGUF_TYPE_STRING: w.str(v.str); break;
        case GGUF_TYPE_ARRAY: write_array_body(w, v); break;
        case GGUF_TYPE_UINT64: w.put<uint64_t>(v.num.u64); break;
        case GGUF_TYPE_INT64: w.put<int64_t>(v.num.i64); break;
        case GGUF_TYPE_FLOAT64: w.put<double>(v.num.f64); break;
        default: fail(ERR_INTERNAL, strfmt("gguf_quantize: metadata value type %u", (unsigned) v.type));
    }
}

// src (n_rows rows of any supported type) -> dst rows of `to`, rows split over n_threads
void convert_rows(const gguf_tensor_info & t, ggml_type to, uint8_t * dst, int n_threads) {
    const quant_traits * src_t = quant_traits_get(t.type);
    const quant_traits * dst_t = quant_traits_get(to);
    const int64_t n_per_row = t.ne[0];
    const int64_t n_rows = t.n_elements() / n_per_row;
    const size_t src_row = quant_row_bytes(src_t, n_per_row), dst_row = quant_row_bytes(dst_t, n_per_row);
    auto work = [&](int64_t r0, int64_t r1) {
        std::vector<float> f(n_per_row);
        for (int64_t r = r0; r < r1; r++) {
            src_t->to_float(t.data + r * src_row, f.data(), n_per_row);
            dst_t->from_float_ref(f.data(), dst + r * dst_row, n_per_row);
        }
    };
    const int nth = (int) std::max<int64_t>(1, std::min<int64_t>({(int64_t) n_threads, n_rows / 16, (int64_t) GGUF_QUANTIZE_MAX_THREADS}));
    if (nth <= 1) { work(0, n_rows); return; }
    std::vector<std::thread> ths;
    const int64_t per = (n_rows + nth - 1) / nth;
    int64_t done_to = 0;  // rows handed to threads that started; a thread that cannot start leaves its rows here
    for (int i = 0; i < nth; i++) {
        const int64_t r0 = std::min(n_rows, per * i), r1 = std::min(n_rows, r0 + per);
        try {
            ths.emplace_back(work, r0, r1);
            done_to = r1;
        } catch (const std::system_error &) {
            break;
        }
    }
    work(done_to, n_rows);  // (this thread does what no thread took)
    for (auto & th : ths) th.join();
}

// Whether two paths name the same file (device and inode); a path that does not exist names no file.
bool same_file(const std::string & a, const std::string & b) {
    struct stat sa, sb;
    if (::stat(a.c_str(), &sa) != 0 || ::stat(b.c_str(), &sb) != 0) return false;
    return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

status quantize_impl(const std::string & in_path, const std::string & out_path, const gguf_quantize_params & params,
                     gguf_quantize_result * result) {
    std::string want = params.type;
    for (char & c : want) c = (char) std::tolower((unsigned char) c);
    const ftype_row * ft = nullptr;
    for (const ftype_row & r : FTYPES) if (want == r.name) ft = &r;
    if (!ft) {
        std::string list;
        for (const std::string & n : gguf_quantize_type_names()) list += (list.empty() ? "" : ", ") + n;
        return status(ERR_INVALID_ARG, strfmt("gguf_quantize: type '%s' is not supported (supported: %s)", params.type.c_str(), list.c_str()));
    }
    // the output and the temporary file it is written through must not be the input (writing them would
    // truncate the file being read, which is mapped: the process would die on a bus error)
    const std::string tmp_path = out_path + ".tmp";
    if (in_path == out_path || same_file(in_path, out_path) || in_path == tmp_path || same_file(in_path, tmp_path))
        return status(ERR_INVALID_ARG, strfmt("gguf_quantize: the output '%s' (written through '%s') must be another file than the input '%s'", out_path.c_str(),
                                              tmp_path.c_str(), in_path.c_str()));

    std::unique_ptr<gguf_file> in;
    status st = gguf_open(in_path, in);
    if (!st.ok()) return st;
    const gguf_file & f = *in;

    // plan: target type per tensor
    select_state qs;
    qs.tied = f.find_tensor("output.weight") == nullptr;
    std::string arch;
    bool found = false;
    if (!f.get_str("general.architecture", &arch, &found).ok()) arch.clear();
    uint32_t n_head = 1, n_head_kv = 1;
    f.get_u32(arch + ".attention.head_count", &n_head, &found);
    n_head_kv = n_head;
    f.get_u32(arch + ".attention.head_count_kv", &n_head_kv, &found);
    qs.n_gqa = n_head_kv ? n_head / n_head_kv : 1;
    for (const auto & t : f.tensors) {
        if (t.name.find("attn_v.weight") != std::string::npos) qs.n_attention_wv++;
        if (t.name.find("ffn_down") != std::string::npos && allows_quantization(t)) qs.n_ffn_down++;
    }
    const bool quantized_ftype = quant_traits_get(ft->type)->is_quantized;
    std::vector<ggml_type> to(f.tensors.size());
    for (size_t i = 0; i < f.tensors.size(); i++) {
        const gguf_tensor_info & t = f.tensors[i];
        to[i] = t.type;
        if (!allows_quantization(t)) continue;
        to[i] = quantized_ftype ? select_type(qs, t, *ft) : ft->type;
        if (to[i] != t.type && !quant_traits_get(t.type)) {
            return status(ERR_UNSUPPORTED_QUANT, strfmt("gguf_quantize: tensor '%s' has type %s, which cannot be converted (supported: f32, f16, bf16 and every type we quantize to)",
                                                        t.name.c_str(), ggml_type_name(t.type)));
        }
    }

    writer w;
    w.path = tmp_path;
    w.f = std::fopen(tmp_path.c_str(), "wb");
    if (!w.f) return status(ERR_IO, strfmt("gguf_quantize: cannot create '%s'", tmp_path.c_str()));
    struct closer { FILE *& f; ~closer() { if (f) std::fclose(f); } } close_guard{w.f};
    try {
        // header and metadata
        w.bytes("GGUF", 4);
        w.put<uint32_t>(3);
        w.put<uint64_t>(f.tensors.size());
        bool have_ftype = false, have_qv = false;
        for (const auto & kv : f.kv) {
            have_ftype |= kv.key == "general.file_type";
            have_qv |= kv.key == "general.quantization_version";
        }
        w.put<uint64_t>(f.kv.size() + !have_ftype + !have_qv);
        gguf_value ftype_v, qv_v;
        ftype_v.type = qv_v.type = GGUF_TYPE_UINT32;
        ftype_v.num.u64 = ft->ftype;
        qv_v.num.u64 = 2; // GGML_QNT_VERSION
        for (const auto & kv : f.kv) {
            w.str(kv.key);
            if (kv.key == "general.file_type") write_value(w, ftype_v);
            else if (kv.key == "general.quantization_version") write_value(w, qv_v);
            else write_value(w, kv.value);
        }
        if (!have_qv) { w.str("general.quantization_version"); write_value(w, qv_v); }
        if (!have_ftype) { w.str("general.file_type"); write_value(w, ftype_v); }
        // tensor infos with new offsets
        const size_t align = f.alignment;
        std::vector<size_t> sizes(f.tensors.size());
        uint64_t offset = 0;
        for (size_t i = 0; i < f.tensors.size(); i++) {
            const gguf_tensor_info & t = f.tensors[i];
            const quant_traits * tt = quant_traits_get(to[i]);
            sizes[i] = to[i] == t.type ? t.n_bytes : quant_row_bytes(tt, t.ne[0]) * (size_t) (t.n_elements() / t.ne[0]);
            w.str(t.name);
            w.put<uint32_t>(t.n_dims);
            for (uint32_t d = 0; d < t.n_dims; d++) w.put<uint64_t>((uint64_t) t.ne[d]);
            w.put<uint32_t>(to[i]);
            w.put<uint64_t>(offset);
            offset += (sizes[i] + align - 1) / align * align;
        }
        w.pad(align);
        // data
        std::vector<uint8_t> buf;
        for (size_t i = 0; i < f.tensors.size(); i++) {
            const gguf_tensor_info & t = f.tensors[i];
            if (to[i] == t.type) {
                w.bytes(t.data, t.n_bytes);
            } else {
                buf.resize(sizes[i]);
                convert_rows(t, to[i], buf.data(), std::max(1, params.n_threads));
                w.bytes(buf.data(), buf.size());
            }
            w.pad(align);
            if (result) {
                result->tensors.push_back({t.name, t.type, to[i]});
                result->bytes_in += t.n_bytes;
                result->bytes_out += sizes[i];
            }
        }
        if (std::fflush(w.f) != 0) fail(ERR_IO, strfmt("gguf_quantize: flushing '%s' failed", tmp_path.c_str()));
    } catch (const status_error & e) {
        std::remove(tmp_path.c_str());
        return e.st;
    }
    std::fclose(w.f);
    w.f = nullptr;
    if (std::rename(tmp_path.c_str(), out_path.c_str()) != 0) {
        std::remove(tmp_path.c_str());
        return status(ERR_IO, strfmt("gguf_quantize: cannot rename '%s' to '%s'", tmp_path.c_str(), out_path.c_str()));
    }
    if (result) result->file_type = ft->ftype;
    return status::success();
}

} // namespace

const std::vector<std::string> & gguf_quantize_type_names() {
    static const std::vector<std::string> names = [] {
        std::vector<std::string> v;
        for (const ftype_row & r : FTYPES) v.push_back(r.name);
        return v;
    }();
    return names;
}

status gguf_quantize(const std::string & in_path, const std::string & out_path, const gguf_quantize_params & params,
                     gguf_quantize_result * result) {
    try {
        return quantize_impl(in_path, out_path, params, result);
    } catch (const status_error & e) {
        return e.st;
    } catch (const std::bad_alloc &) {
        return status(ERR_OOM_HOST, "gguf_quantize: out of host memory");
    }
}

} // namespace core
