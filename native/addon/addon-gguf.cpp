#include "addon-gguf.h"

#include <algorithm>
#include <cmath>
#include <cstring>

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

} // namespace

Napi::Value gguf_value_to_js(Napi::Env env, const core::gguf_value & v) {
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
            Napi::Array a = Napi::Array::New(env, v.strs.size());
            for (size_t i = 0; i < v.strs.size(); i++) a.Set((uint32_t) i, Napi::String::New(env, v.strs[i].data(), v.strs[i].size()));
            return a;
        }
        default: {
            Napi::Array a = Napi::Array::New(env, v.items.size());
            for (size_t i = 0; i < v.items.size(); i++) a.Set((uint32_t) i, gguf_value_to_js(env, v.items[i]));
            return a;
        }
    }
}

Napi::Object gguf_file_to_js(Napi::Env env, const core::gguf_file & f, bool with_metadata) {
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
            const napi_property_descriptor d{kv.key.c_str(), nullptr, nullptr, nullptr, nullptr, gguf_value_to_js(env, kv.value),
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
    read_gguf_worker(Napi::Env env, std::string path, bool with_md)
        : promise_worker(env, "thinkcache:readGguf"), path_(std::move(path)), with_md_(with_md) {}

protected:
    core::status run() override { return core::gguf_open(path_, file_); }
    Napi::Value result(Napi::Env env) override { return gguf_file_to_js(env, *file_, with_md_); }

private:
    std::string path_;
    bool with_md_;
    std::unique_ptr<core::gguf_file> file_;
};

} // namespace

Napi::Value read_gguf_metadata(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsString()) throw_status(env, core::ERR_INVALID_ARG, "readGgufMetadata: path must be a string");
    const bool with_md = info.Length() < 2 || !info[1].IsBoolean() || info[1].As<Napi::Boolean>().Value();
    auto * w = new read_gguf_worker(env, info[0].As<Napi::String>().Utf8Value(), with_md);
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
