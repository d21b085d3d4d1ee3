#include "addon-gguf.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string_view>

#include "../gguf/gguf-quantize.h"
#include "workers.h"

namespace addon {

namespace {

template <class TA, class T> Napi::Value typed_copy(Napi::Env env, const core::gguf_value & v) {
    TA arr = TA::New(env, (size_t) v.count);
    if (v.count) std::memcpy(arr.Data(), v.raw, (size_t) v.count * sizeof(T));
    return arr;
}

Napi::Value int64_to_js(Napi::Env env, int64_t x) {
    if (x > 9007199254740991LL || x < -9007199254740991LL) return Napi::BigInt::New(env, x);
    return Napi::Number::New(env, (double) x);
}

// Writes valid UTF-8 as UTF-16 at `out` (room for s.size() units: never more are needed) and returns the
// number of units, or -1 when it is not valid UTF-8: overlong forms, surrogates and code points past
// U+10FFFF are invalid, as for V8's decoder.
int64_t utf8_to_utf16(std::string_view s, char16_t * out) {
    const auto * p = (const unsigned char *) s.data();
    const size_t n = s.size();
    char16_t * o = out;
    for (size_t i = 0; i < n;) {
        const unsigned c = p[i];
        if (c < 0x80) { *o++ = (char16_t) c; i++; continue; }
        size_t k;
        unsigned cp;
        if (c >= 0xC2 && c <= 0xDF) { k = 1; cp = c & 0x1F; }
        else if (c >= 0xE0 && c <= 0xEF) { k = 2; cp = c & 0x0F; }
        else if (c >= 0xF0 && c <= 0xF4) { k = 3; cp = c & 0x07; }
        else return -1;
        if (i + k >= n) return -1;  // (truncated)
        for (size_t j = 1; j <= k; j++) {
            if ((p[i + j] & 0xC0) != 0x80) return -1;  // (not a continuation byte)
            cp = (cp << 6) | (p[i + j] & 0x3F);
        }
        if ((k == 2 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) || (k == 3 && (cp < 0x10000 || cp > 0x10FFFF))) return -1;
        if (cp >= 0x10000) {
            *o++ = (char16_t) (0xD800 + ((cp - 0x10000) >> 10));
            *o++ = (char16_t) (0xDC00 + ((cp - 0x10000) & 0x3FF));
        } else {
            *o++ = (char16_t) cp;
        }
        i += k + 1;
    }
    return o - out;
}

// A string array as one string and the UTF-16 end offset of each element: { packedStrings, ends }, which
// lib/gguf.ts splits with String#slice: a few N-API calls instead of one per string (300k of them for a 150k
// vocabulary; gguf-load.test.ts checks the result equals the one-by-one form). Undefined when an element is not
// valid UTF-8 (decoded on its own, its replacement characters could differ from those of the concatenation).
Napi::Value pack_strings(Napi::Env env, const std::vector<std::string_view> & strs) {
    size_t bytes = 0;
    for (const auto & x : strs) bytes += x.size();
    if (bytes > UINT32_MAX) return env.Undefined();
    std::u16string all(bytes, u'\0');
    Napi::Uint32Array ends = Napi::Uint32Array::New(env, strs.size());
    size_t end = 0;
    for (size_t i = 0; i < strs.size(); i++) {
        const int64_t len = utf8_to_utf16(strs[i], all.data() + end);
        if (len < 0) return env.Undefined();
        end += (size_t) len;
        ends[i] = (uint32_t) end;
    }
    all.resize(end);
    Napi::Object o = Napi::Object::New(env);
    // (as a Napi::Value: Set() given a Napi::String converts it to std::string and back, node-addon-api's
    // Value::From treats anything convertible to std::string as text)
    o.Set("packedStrings", Napi::Value(Napi::String::New(env, all.data(), all.size())));
    o.Set("ends", ends);
    return o;
}

} // namespace

Napi::Value gguf_value_to_js(Napi::Env env, const core::gguf_value & v, bool packed) {
    using namespace core;
    switch (v.type) {
        case GGUF_TYPE_BOOL: return Napi::Boolean::New(env, v.num.i64 != 0);
        case GGUF_TYPE_FLOAT32: case GGUF_TYPE_FLOAT64: return Napi::Number::New(env, v.num.f64);
        case GGUF_TYPE_UINT64:
            if (v.num.u64 > 9007199254740991ULL) return Napi::BigInt::New(env, v.num.u64);
            return Napi::Number::New(env, (double) v.num.u64);
        case GGUF_TYPE_STRING: return Napi::String::New(env, v.str.data(), v.str.size());
        case GGUF_TYPE_ARRAY: break;
        default: return int64_to_js(env, v.num.i64);
    }
    switch (v.elem_type) {
        case GGUF_TYPE_UINT8: return typed_copy<Napi::Uint8Array, uint8_t>(env, v);
        case GGUF_TYPE_INT8: return typed_copy<Napi::Int8Array, int8_t>(env, v);
        case GGUF_TYPE_UINT16: return typed_copy<Napi::Uint16Array, uint16_t>(env, v);
        case GGUF_TYPE_INT16: return typed_copy<Napi::Int16Array, int16_t>(env, v);
        case GGUF_TYPE_UINT32: return typed_copy<Napi::Uint32Array, uint32_t>(env, v);
        case GGUF_TYPE_INT32: return typed_copy<Napi::Int32Array, int32_t>(env, v);
        case GGUF_TYPE_FLOAT32: return typed_copy<Napi::Float32Array, float>(env, v);
        case GGUF_TYPE_FLOAT64: return typed_copy<Napi::Float64Array, double>(env, v);
        case GGUF_TYPE_UINT64: return typed_copy<Napi::BigUint64Array, uint64_t>(env, v);
        case GGUF_TYPE_INT64: return typed_copy<Napi::BigInt64Array, int64_t>(env, v);
        case GGUF_TYPE_BOOL: {
            Napi::Array a = Napi::Array::New(env, (size_t) v.count);
            for (uint64_t i = 0; i < v.count; i++) a.Set((uint32_t) i, Napi::Boolean::New(env, v.raw[i] != 0));
            return a;
        }
        case GGUF_TYPE_STRING: {
            if (packed) {
                Napi::Value p = pack_strings(env, v.strs);
                if (!p.IsUndefined()) return p;
            }
            Napi::Array a = Napi::Array::New(env, v.strs.size());
            for (size_t i = 0; i < v.strs.size(); i++) a.Set((uint32_t) i, Napi::Value(Napi::String::New(env, v.strs[i].data(), v.strs[i].size())));
            return a;
        }
        default: {
            Napi::Array a = Napi::Array::New(env, v.items.size());
            for (size_t i = 0; i < v.items.size(); i++) a.Set((uint32_t) i, gguf_value_to_js(env, v.items[i]));
            return a;
        }
    }
}

Napi::Object gguf_file_to_js(Napi::Env env, const core::gguf_file & f, bool with_metadata, bool packed) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("version", f.version);
    o.Set("alignment", (double) f.alignment);
    o.Set("dataOffset", (double) f.data_offset);
    o.Set("fileSize", (double) f.file_size);
    if (with_metadata) {
        Napi::Object md = Napi::Object::New(env);
        // defined, not assigned: a key such as "__proto__" becomes an own property instead of replacing the
        // object's prototype (which would also break every reader of `metadata`)
        for (const auto & kv : f.kv) {
            const napi_property_descriptor d{kv.key.c_str(), nullptr, nullptr, nullptr, nullptr, gguf_value_to_js(env, kv.value, packed),
                                             (napi_property_attributes) (napi_writable | napi_enumerable | napi_configurable), nullptr};
            if (napi_define_properties(env, md, 1, &d) != napi_ok) throw_status(env, core::ERR_INTERNAL, "gguf metadata: cannot define key " + kv.key);
        }
        o.Set("metadata", md);
    }
    Napi::Array ts = Napi::Array::New(env, f.tensors.size());
    for (size_t i = 0; i < f.tensors.size(); i++) {
        const auto & t = f.tensors[i];
        Napi::Object to = Napi::Object::New(env);
        to.Set("name", t.name);
        to.Set("type", (double) t.type);
        to.Set("typeName", core::ggml_type_name(t.type));
        Napi::Array shape = Napi::Array::New(env, t.n_dims);
        for (uint32_t d = 0; d < t.n_dims; d++) shape.Set(d, (double) t.ne[d]);
        to.Set("shape", shape);
        to.Set("offset", (double) t.offset);
        to.Set("bytes", (double) t.n_bytes);
        ts.Set((uint32_t) i, to);
    }
    o.Set("tensors", ts);
    return o;
}

namespace {

class read_gguf_worker : public promise_worker {
public:
    read_gguf_worker(Napi::Env env, std::string path, bool with_md, bool packed)
        : promise_worker(env, "thinkcache:readGguf"), path_(std::move(path)), with_md_(with_md), packed_(packed) {}

protected:
    core::status run() override { return core::gguf_open(path_, file_); }
    Napi::Value result(Napi::Env env) override { return gguf_file_to_js(env, *file_, with_md_, packed_); }

private:
    std::string path_;
    bool with_md_, packed_;
    std::unique_ptr<core::gguf_file> file_;
};

} // namespace

Napi::Value read_gguf_metadata(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsString()) throw_status(env, core::ERR_INVALID_ARG, "readGgufMetadata: path must be a string");
    const bool with_md = info.Length() < 2 || !info[1].IsBoolean() || info[1].As<Napi::Boolean>().Value();
    const bool packed = info.Length() >= 3 && info[2].ToBoolean();
    auto * w = new read_gguf_worker(env, info[0].As<Napi::String>().Utf8Value(), with_md, packed);
    Napi::Promise p = w->promise();
    w->Queue();
    return p;
}

namespace {

class quantize_gguf_worker : public promise_worker {
public:
    quantize_gguf_worker(Napi::Env env, std::string in, std::string out, core::gguf_quantize_params p)
        : promise_worker(env, "thinkcache:quantizeGguf"), in_(std::move(in)), out_(std::move(out)), params_(std::move(p)) {}

protected:
    core::status run() override { return core::gguf_quantize(in_, out_, params_, &result_); }
    Napi::Value result(Napi::Env env) override {
        Napi::Object o = Napi::Object::New(env);
        o.Set("fileType", result_.file_type);
        o.Set("bytesIn", (double) result_.bytes_in);
        o.Set("bytesOut", (double) result_.bytes_out);
        Napi::Array ts = Napi::Array::New(env, result_.tensors.size());
        for (size_t i = 0; i < result_.tensors.size(); i++) {
            Napi::Object t = Napi::Object::New(env);
            t.Set("name", result_.tensors[i].name);
            t.Set("from", core::ggml_type_name(result_.tensors[i].from));
            t.Set("to", core::ggml_type_name(result_.tensors[i].to));
            ts.Set((uint32_t) i, t);
        }
        o.Set("tensors", ts);
        return o;
    }

private:
    std::string in_, out_;
    core::gguf_quantize_params params_;
    core::gguf_quantize_result result_;
};

} // namespace

Napi::Value quantize_gguf(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    if (info.Length() < 3 || !info[0].IsString() || !info[1].IsString() || !info[2].IsObject())
        throw_status(env, core::ERR_INVALID_ARG, "quantizeGguf: expected (inPath: string, outPath: string, { type, threads })");
    Napi::Object o = info[2].As<Napi::Object>();
    core::gguf_quantize_params p;
    if (!o.Get("type").IsString()) throw_status(env, core::ERR_INVALID_ARG, "quantizeGguf: options.type must be a string");
    p.type = o.Get("type").As<Napi::String>().Utf8Value();
    if (o.Get("threads").IsNumber()) p.n_threads = (int) int_arg(env, o.Get("threads"), "quantizeGguf: threads", 1, core::GGUF_QUANTIZE_MAX_THREADS);
    auto * w = new quantize_gguf_worker(env, info[0].As<Napi::String>().Utf8Value(), info[1].As<Napi::String>().Utf8Value(), std::move(p));
    Napi::Promise pr = w->promise();
    w->Queue();
    return pr;
}

} // namespace addon
