#include "addon-objects.h"

#include <cmath>
#include <cstring>

#include "../kernels/cpu/quant-traits-cpu.h"
#ifdef THINKCACHE_WITH_CUDA
#include "../cuda/backend-cuda.h"
#include "../cuda/forward-cuda.h"
#endif
#include "addon-gguf.h"
#include "workers.h"

namespace addon {

using core::status;

namespace {

int32_t opt_int(const Napi::Object & o, const char * key, int32_t def) {
    Napi::Value v = o.Get(key);
    return v.IsNumber() ? (int32_t) int_arg(o.Env(), v, key, INT32_MIN, INT32_MAX) : def;
}
double opt_num(const Napi::Object & o, const char * key, double def) {
    Napi::Value v = o.Get(key);
    return v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : def;
}

// ---------------------------------------------------------------------------------------------- model

class load_model_worker : public promise_worker {
public:
    load_model_worker(Napi::Env env, std::string path, bool cuda, addon_data & data)
        : promise_worker(env, "thinkcache:loadModel"), path_(std::move(path)), cuda_(cuda), data_(data) {}

protected:
    status run() override {
        std::unique_ptr<core::model> m;
        status s = core::model_load(path_, m);
        if (!s.ok()) return s;
        model_ = std::shared_ptr<const core::model>(std::move(m));
        if (!cuda_) return s;
#ifdef THINKCACHE_WITH_CUDA
        // the weights go to the device once, here; every context of this model shares them
        std::unique_ptr<core::cuda::backend> be;
        if (!(s = core::cuda::backend::create(0, &be)).ok()) return s;
        return core::cuda::device_model::create(model_, *be, &cuda_model_);
#else
        return status(core::ERR_CUDA, "loadModel: this build has no CUDA backend (built without THINKCACHE_CUDA)");
#endif
    }
    Napi::Value result(Napi::Env env) override {
        Napi::Object obj = data_.model_ctor.New({});
        AddonModel::Unwrap(obj)->model = model_;
        AddonModel::Unwrap(obj)->cuda_model = cuda_model_;
        return obj;
    }

private:
    std::string path_;
    bool cuda_;
    addon_data & data_;
    std::shared_ptr<const core::model> model_;
    std::shared_ptr<const core::cuda::device_model> cuda_model_;
};

} // namespace

void AddonModel::init(Napi::Env env, Napi::Object exports, addon_data & data) {
    Napi::Function f = DefineClass(env, "AddonModel", {
        StaticMethod<&AddonModel::load>("load"),
        InstanceMethod<&AddonModel::info>("info"),
        InstanceMethod<&AddonModel::metadata>("metadata"),
        InstanceMethod<&AddonModel::dispose>("dispose"),
    });
    data.model_ctor = Napi::Persistent(f);
    exports.Set("AddonModel", f);
}

AddonModel::AddonModel(const Napi::CallbackInfo & info) : Napi::ObjectWrap<AddonModel>(info) {}

std::shared_ptr<const core::model> AddonModel::require_model(Napi::Env env) const {
    if (!model) throw_status(env, core::ERR_DISPOSED, "the model has been disposed");
    return model;
}

Napi::Value AddonModel::load(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsString()) throw_status(env, core::ERR_INVALID_ARG, "AddonModel.load: path must be a string");
    bool cuda = false;
    if (info.Length() > 1 && info[1].IsObject()) {
        Napi::Value b = info[1].As<Napi::Object>().Get("backend");
        const std::string name = b.IsString() ? b.As<Napi::String>().Utf8Value() : "cpu";
        if (name != "cpu" && name != "cuda") throw_status(env, core::ERR_INVALID_ARG, core::strfmt("AddonModel.load: backend must be 'cpu' or 'cuda' (got '%s')", name.c_str()));
        cuda = name == "cuda";
    }
    auto * w = new load_model_worker(env, info[0].As<Napi::String>().Utf8Value(), cuda, *env.GetInstanceData<addon_data>());
    Napi::Promise p = w->promise();
    w->Queue();
    return p;
}

Napi::Value AddonModel::info(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    auto m = require_model(env);
    const core::hparams & hp = m->hp;
    Napi::Object o = Napi::Object::New(env);
    o.Set("architecture", m->arch->name);
    o.Set("nVocab", hp.n_vocab);
    o.Set("nCtxTrain", hp.n_ctx_train);
    o.Set("nEmbd", hp.n_embd);
    o.Set("nLayer", hp.n_layer);
    o.Set("nHead", hp.n_head);
    o.Set("nHeadKv", hp.n_head_kv);
    o.Set("headDim", hp.head_dim);
    o.Set("headDimV", hp.head_dim_v);
    o.Set("nFf", hp.n_ff);
    o.Set("nRot", hp.n_rot);
    o.Set("rmsEps", hp.rms_eps);
    o.Set("ropeFreqBase", hp.rope_freq_base);
    o.Set("tiedOutput", m->tied_output);
    o.Set("weightBytes", (double) m->weight_bytes);
    o.Set("fileSize", (double) m->file->file_size);
    o.Set("backend", cuda_model ? "cuda" : "cpu");
#ifdef THINKCACHE_WITH_CUDA
    if (cuda_model) o.Set("deviceWeightBytes", (double) cuda_model->weight_bytes());
#endif
    o.Set("cpuDispatch", core::cpu_dispatch_level());
    return o;
}

Napi::Value AddonModel::metadata(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    auto m = require_model(env);
    return gguf_file_to_js(env, *m->file, true, info.Length() > 0 && info[0].ToBoolean());
}

Napi::Value AddonModel::dispose(const Napi::CallbackInfo & info) {
    model.reset();
    cuda_model.reset();  // device memory goes when the last context using it is gone
    return info.Env().Undefined();
}

// -------------------------------------------------------------------------------------------- context

void AddonContext::init(Napi::Env env, Napi::Object exports, addon_data & data) {
    Napi::Function f = DefineClass(env, "AddonContext", {
        InstanceMethod<&AddonContext::info>("info"),
        InstanceMethod<&AddonContext::dispose>("dispose"),
    });
    data.context_ctor = Napi::Persistent(f);
    exports.Set("AddonContext", f);
}

AddonContext::AddonContext(const Napi::CallbackInfo & info) : Napi::ObjectWrap<AddonContext>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsObject() || !info[1].IsObject()) {
        throw_status(env, core::ERR_INVALID_ARG, "new AddonContext(model, options): expected a model and an options object");
    }
    Napi::Object mo = info[0].As<Napi::Object>();
    if (!mo.InstanceOf(env.GetInstanceData<addon_data>()->model_ctor.Value())) throw_status(env, core::ERR_INVALID_ARG, "new AddonContext: first argument is not a model");
    auto m = AddonModel::Unwrap(mo)->require_model(env);
    Napi::Object o = info[1].As<Napi::Object>();
    core::context_params p;
    // a model on CUDA computes there unless this context asks for the CPU (its weights stay mapped on the host)
    if (!o.Get("cpu").ToBoolean()) p.cuda_model = AddonModel::Unwrap(mo)->cuda_model;
    p.n_ctx = opt_int(o, "contextSize", (int32_t) std::min<uint32_t>(m->hp.n_ctx_train, 4096));
    p.n_threads = opt_int(o, "threads", 0);
    p.n_batch = opt_int(o, "batchSize", 512);
    // head retention: { retention: Uint8Array [n_layer * n_head_kv] (0 full, 1 stream), streamSinks, streamRecent }
    p.per_query_head = o.Get("perQueryHead").ToBoolean();
    Napi::Value ret = o.Get("retention");
    if (ret.IsTypedArray() && ret.As<Napi::TypedArray>().TypedArrayType() == napi_uint8_array) {
        Napi::Uint8Array a = ret.As<Napi::Uint8Array>();
        const uint32_t heads = p.per_query_head ? m->hp.n_head : m->hp.n_head_kv;
        if (a.ElementLength() != (size_t) m->hp.n_layer * heads) {
            throw_status(env, core::ERR_INVALID_ARG, core::strfmt("new AddonContext: retention has %zu entries, the cache has %u layers x %u heads",
                                                                  a.ElementLength(), m->hp.n_layer, heads));
        }
        p.retention.assign(a.Data(), a.Data() + a.ElementLength());
        for (uint8_t r : p.retention) if (r > core::KV_RETAIN_EVICT) throw_status(env, core::ERR_INVALID_ARG, "new AddonContext: retention values must be 0 (full), 1 (stream) or 2 (evict)");
    }
    // eviction policy for EVICT heads: { policy: 'lazy'|'h2o'|'tova'|'streaming', capacity, window, alpha, protect, ratio }
    Napi::Value ev = o.Get("eviction");
    if (ev.IsObject()) {
        Napi::Object e = ev.As<Napi::Object>();
        const std::string name = e.Get("policy").IsString() ? e.Get("policy").As<Napi::String>().Utf8Value() : "";
        const core::kv_policy * pol = core::kv_policy_find(name.c_str());
        if (!pol) throw_status(env, core::ERR_INVALID_ARG, core::strfmt("new AddonContext: unknown eviction policy '%s'", name.c_str()));
        p.policy.kind = pol->kind;
        p.policy.capacity = opt_int(e, "capacity", p.policy.capacity);
        p.policy.window = opt_int(e, "window", p.policy.window);
        p.policy.alpha = (float) opt_num(e, "alpha", p.policy.alpha);
        p.policy.protect = opt_int(e, "protect", 0);
        p.policy.ratio = (float) opt_num(e, "ratio", 0);
        p.policy.interval = opt_int(e, "interval", p.policy.interval);
        p.policy.lambda = (float) opt_num(e, "lambda", p.policy.lambda);
        p.policy.pool = opt_int(e, "pool", p.policy.pool);
        p.policy.protect_sinks = e.Get("protectSinks").ToBoolean();
        if (p.policy.capacity < 1 || p.policy.window < 1 || p.policy.protect < 0 || p.policy.interval < 1 || p.policy.pool < 1) throw_status(env, core::ERR_INVALID_ARG, "new AddonContext: eviction capacity and window must be >= 1");
    }
    // storage codecs: { key, value, stagingTokens, protectFirst, groupSize, clip (< 0: codec default), postRope,
    // protectSinks, rotationGroup, perm }
    Napi::Value sv = o.Get("storage");
    if (sv.IsObject()) {
        Napi::Object so = sv.As<Napi::Object>();
        auto codec = [&](const char * k) {
            const std::string name = so.Get(k).IsString() ? so.Get(k).As<Napi::String>().Utf8Value() : "f16";
            const core::kv_codec_type t = core::kv_codec_find(name.c_str());
            if (t == core::KV_CODEC_COUNT) throw_status(env, core::ERR_INVALID_ARG, core::strfmt("new AddonContext: unknown storage codec '%s'", name.c_str()));
            return t;
        };
        p.storage.key = codec("key");
        p.storage.value = codec("value");
        p.storage.staging = opt_int(so, "stagingTokens", 64);
        p.storage.protect = opt_int(so, "protectFirst", 16);
        p.storage.group = opt_int(so, "groupSize", 32);
        p.storage.clip = (float) opt_num(so, "clip", -1);
        p.storage.post_rope = so.Get("postRope").ToBoolean();
        p.storage.protect_sinks = !so.Has("protectSinks") || so.Get("protectSinks").ToBoolean();
        p.storage.rot_group = opt_int(so, "rotationGroup", 1);
        const int D = (int) m->hp.head_dim, DV = (int) m->hp.head_dim_v;
        const bool rot = core::kv_codec_get(p.storage.key).rotated || core::kv_codec_get(p.storage.value).rotated;
        if (rot && ((D & (D - 1)) || (DV & (DV - 1)))) {
            throw_status(env, core::ERR_INVALID_ARG, core::strfmt("new AddonContext: rot codecs need power-of-two head sizes (FWHT), the model has %d/%d", D, DV));
        }
        if (D % 8 || DV % 8 || p.storage.staging < 0 || p.storage.protect < 0 || p.storage.group < 1) {
            throw_status(env, core::ERR_INVALID_ARG, "new AddonContext: storage needs head sizes that are multiples of 8, stagingTokens/protectFirst >= 0, groupSize >= 1");
        }
        // key channel permutation of rot codecs (calibrated, §3.3): Int32Array [n_layer][n_head_kv][head_dim], each
        // head's slice a permutation of 0..head_dim-1; per-query-head caches get their KV head's slice per copy
        Napi::Value pv = so.Get("perm");
        if (pv.IsTypedArray()) {
            if (pv.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array) throw_status(env, core::ERR_INVALID_ARG, "new AddonContext: storage.perm must be an Int32Array");
            Napi::Int32Array pa = pv.As<Napi::Int32Array>();
            const size_t L = m->hp.n_layer, H = m->hp.n_head_kv;
            if (pa.ElementLength() != L * H * (size_t) D) {
                throw_status(env, core::ERR_INVALID_ARG, core::strfmt("new AddonContext: storage.perm has %zu entries, expected n_layer·n_head_kv·head_dim = %zu", pa.ElementLength(), L * H * (size_t) D));
            }
            std::vector<uint8_t> seen((size_t) D);
            for (size_t lh = 0; lh < L * H; lh++) {
                std::fill(seen.begin(), seen.end(), 0);
                for (int d = 0; d < D; d++) {
                    const int32_t v = pa[lh * D + d];
                    if (v < 0 || v >= D || seen[(size_t) v]) throw_status(env, core::ERR_INVALID_ARG, core::strfmt("new AddonContext: storage.perm of layer %zu head %zu is not a permutation of 0..%d", lh / H, lh % H, D - 1));
                    seen[(size_t) v] = 1;
                }
            }
            const size_t HC = p.per_query_head ? m->hp.n_head : H, g = HC / H;
            p.storage.perm.resize(L * HC * D);
            for (size_t l = 0; l < L; l++)
                for (size_t h = 0; h < HC; h++)
                    std::memcpy(p.storage.perm.data() + (l * HC + h) * D, pa.Data() + (l * H + h / g) * D, sizeof(int32_t) * D);
        }
    }
    {  // codecs on evicting heads: per-token codecs and attention-scored policies only (kv_storage_check)
        core::kv_cache_config kc;
        kc.head_dim = (int) m->hp.head_dim;
        kc.head_dim_v = (int) m->hp.head_dim_v;
        kc.retention = p.retention;
        kc.policy = p.policy;
        kc.storage.key = p.storage.key;
        kc.storage.value = p.storage.value;
        kc.storage.group = p.storage.group;
        kc.storage.rot_group = p.storage.rot_group;
        kc.storage.post_rope = p.storage.post_rope;
        kc.n_head_kv = (int) (p.per_query_head ? m->hp.n_head : m->hp.n_head_kv);
        const core::status s = core::kv_storage_check(kc);
        if (!s.ok()) throw_status(env, s.code, "new AddonContext: " + s.message);
    }
    p.stream_sinks = opt_int(o, "streamSinks", 16);
    p.stream_recent = opt_int(o, "streamRecent", 64);
    if (p.stream_sinks < 0 || p.stream_recent < 1 || p.stream_sinks > (1 << 20) || p.stream_recent > (1 << 24))
        throw_status(env, core::ERR_INVALID_ARG, "new AddonContext: streamSinks must be in [0, 2^20] and streamRecent in [1, 2^24]");
    if (p.n_ctx < 1 || p.n_threads < 0 || p.n_threads > 1024 || p.n_batch < 1) {
        throw_status(env, core::ERR_INVALID_ARG, core::strfmt("new AddonContext: invalid options (contextSize %d, threads %d, batchSize %d)", p.n_ctx, p.n_threads, p.n_batch));
    }
    const status st = core::engine_context::create(m, p, &ctx);
    if (!st.ok()) throw_status(env, st.code, "new AddonContext: " + st.message);
}

std::shared_ptr<core::engine_context> AddonContext::require_ctx(Napi::Env env) const {
    if (!ctx) throw_status(env, core::ERR_DISPOSED, "the context has been disposed");
    return ctx;
}

Napi::Value AddonContext::info(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    auto c = require_ctx(env);
    Napi::Object o = Napi::Object::New(env);
    o.Set("contextSize", c->params().n_ctx);
    o.Set("threads", c->params().n_threads);
    o.Set("batchSize", c->params().n_batch);
    o.Set("backend", c->on_cuda() ? "cuda" : "cpu");
    return o;
}

Napi::Value AddonContext::dispose(const Napi::CallbackInfo & info) {
    ctx.reset();
    return info.Env().Undefined();
}

// ------------------------------------------------------------------------------------------- sequence

namespace {

// A worker on one sequence, or two (a copy): it marks them busy when made, keeps their JS objects (and so the
// AddonSequence objects) alive while in flight and frees them on the main thread when it settles. start() queues
// it and returns its promise.
class sequence_worker : public promise_worker {
public:
    sequence_worker(Napi::Env env, const char * name, AddonSequence * seq, AddonSequence * other = nullptr)
        : promise_worker(env, name), seq_(seq->seq), owner_ref_(Napi::Persistent(seq->Value())), owner_(seq), other_(other) {
        if (other) other_ref_ = Napi::Persistent(other->Value());
        owner_->busy.store(true);
        if (other_) other_->busy.store(true);
    }
    Napi::Promise start() {
        Napi::Promise p = promise();
        Queue();
        return p;
    }

protected:
    void done() override {
        owner_->busy.store(false);
        if (other_) other_->busy.store(false);
    }
    std::shared_ptr<core::engine_sequence> seq_;

private:
    Napi::ObjectReference owner_ref_, other_ref_;
    AddonSequence * owner_, * other_;
};

class eval_worker : public sequence_worker {
public:
    eval_worker(Napi::Env env, AddonSequence * owner, std::vector<int32_t> tokens, bool logits, bool sample)
        : sequence_worker(env, "thinkcache:eval", owner), tokens_(std::move(tokens)), logits_(logits || sample), sample_(sample) {}

protected:
    status run() override {
        status s = seq_->eval(tokens_.data(), (int) tokens_.size(), logits_);
        if (!s.ok() || !sample_) return s;
        return seq_->sample(&token_);
    }
    Napi::Value result(Napi::Env env) override { return sample_ ? Napi::Number::New(env, token_) : env.Undefined(); }

private:
    std::vector<int32_t> tokens_;
    bool logits_, sample_;
    int32_t token_ = -1;
};

class remove_worker : public sequence_worker {
public:
    remove_worker(Napi::Env env, AddonSequence * owner, int32_t pos) : sequence_worker(env, "thinkcache:removeFrom", owner), pos_(pos) {}

protected:
    status run() override {
        kept_ = seq_->remove_from(pos_);
        return {};
    }
    Napi::Value result(Napi::Env env) override { return Napi::Number::New(env, kept_); }

private:
    int32_t pos_, kept_ = 0;
};

// saveCheckpointAsync(): engine_sequence::save_checkpoint off the event loop (it copies the lossy heads)
class checkpoint_worker : public sequence_worker {
public:
    checkpoint_worker(Napi::Env env, AddonSequence * owner, bool bounded_only)
        : sequence_worker(env, "thinkcache:checkpoint", owner), bounded_only_(bounded_only) {}

protected:
    status run() override { return seq_->save_checkpoint(bounded_only_); }

private:
    bool bounded_only_;
};

// copyFromAsync(src): this sequence becomes a copy of src (engine_sequence::copy_from); both are busy meanwhile.
class copy_worker : public sequence_worker {
public:
    copy_worker(Napi::Env env, AddonSequence * dst, AddonSequence * src)
        : sequence_worker(env, "thinkcache:copySequence", dst, src), src_(src->seq) {}

protected:
    status run() override {
        status st = seq_->copy_from(*src_);
        n_ = seq_->n_tokens();
        return st;
    }
    Napi::Value result(Napi::Env env) override { return Napi::Number::New(env, n_); }

private:
    std::shared_ptr<core::engine_sequence> src_;
    int32_t n_ = 0;
};

// saveStateAsync(path) / loadStateAsync(path): engine_sequence::save_state / load_state (file I/O and the cache's
// pages off the event loop). Save resolves the file's size in bytes, load the token history the sequence now holds.
class state_worker : public sequence_worker {
public:
    state_worker(Napi::Env env, AddonSequence * owner, std::string path, bool load)
        : sequence_worker(env, load ? "thinkcache:loadState" : "thinkcache:saveState", owner), path_(std::move(path)), load_(load) {}

protected:
    status run() override {
        if (!load_) return seq_->save_state(path_, &bytes_);
        const status st = seq_->load_state(path_);
        if (st.ok()) tokens_ = seq_->history();
        return st;
    }
    Napi::Value result(Napi::Env env) override {
        if (!load_) return Napi::Number::New(env, (double) bytes_);
        Napi::Int32Array a = Napi::Int32Array::New(env, tokens_.size());
        if (!tokens_.empty()) std::memcpy(a.Data(), tokens_.data(), tokens_.size() * sizeof(int32_t));
        return a;
    }

private:
    std::string path_;
    bool load_;
    uint64_t bytes_ = 0;
    std::vector<int32_t> tokens_;
};

} // namespace

void AddonSequence::init(Napi::Env env, Napi::Object exports, addon_data & data) {
    Napi::Function f = DefineClass(env, "AddonSequence", {
        InstanceMethod<&AddonSequence::eval>("eval"),
        InstanceMethod<&AddonSequence::set_sampler>("setSampler"),
        InstanceMethod<&AddonSequence::sample>("sample"),
        InstanceMethod<&AddonSequence::get_logits>("getLogits"),
        InstanceMethod<&AddonSequence::abort>("abort"),
        InstanceMethod<&AddonSequence::remove_from>("removeFrom"),
        InstanceMethod<&AddonSequence::remove_from_async>("removeFromAsync"),
        InstanceMethod<&AddonSequence::copy_from_async>("copyFromAsync"),
        InstanceMethod<&AddonSequence::save_checkpoint_async>("saveCheckpointAsync"),
        InstanceMethod<&AddonSequence::save_state_async>("saveStateAsync"),
        InstanceMethod<&AddonSequence::load_state_async>("loadStateAsync"),
        InstanceMethod<&AddonSequence::n_tokens>("nTokens"),
        InstanceMethod<&AddonSequence::memory>("memory"),
        InstanceMethod<&AddonSequence::held_positions>("heldPositions"),
        InstanceMethod<&AddonSequence::set_calibration>("setCalibration"),
        InstanceMethod<&AddonSequence::get_calibration>("getCalibration"),
        InstanceMethod<&AddonSequence::dispose>("dispose"),
    });
    data.sequence_ctor = Napi::Persistent(f);
    exports.Set("AddonSequence", f);
}

AddonSequence::AddonSequence(const Napi::CallbackInfo & info) : Napi::ObjectWrap<AddonSequence>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsObject() || !info[0].As<Napi::Object>().InstanceOf(env.GetInstanceData<addon_data>()->context_ctor.Value())) {
        throw_status(env, core::ERR_INVALID_ARG, "new AddonSequence(context): expected a context");
    }
    auto c = AddonContext::Unwrap(info[0].As<Napi::Object>())->require_ctx(env);
    const status st = core::engine_sequence::create(c, &seq);  // on CUDA: reserves the device cache
    if (!st.ok()) throw_status(env, st.code, "new AddonSequence: " + st.message);
}

AddonSequence::~AddonSequence() {
    if (seq) seq->abort.store(true);
}

core::engine_sequence & AddonSequence::require_idle(Napi::Env env, const char * what) {
    if (!seq) throw_status(env, core::ERR_DISPOSED, core::strfmt("%s: the sequence has been disposed", what));
    if (busy.load()) throw_status(env, core::ERR_BUSY, core::strfmt("%s: the sequence is busy with another operation", what));
    return *seq;
}

Napi::Value AddonSequence::eval(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    core::engine_sequence & s = require_idle(env, "eval");
    if (info.Length() < 1 || !info[0].IsTypedArray()) throw_status(env, core::ERR_INVALID_ARG, "eval: tokens must be an Int32Array or Uint32Array");
    Napi::TypedArray ta = info[0].As<Napi::TypedArray>();
    if (ta.TypedArrayType() != napi_int32_array && ta.TypedArrayType() != napi_uint32_array) {
        throw_status(env, core::ERR_INVALID_ARG, "eval: tokens must be an Int32Array or Uint32Array");
    }
    // (napi's own data pointer: also for a view of a SharedArrayBuffer, where ArrayBuffer() throws an untyped error)
    void * data = nullptr;
    size_t length = 0;
    if (napi_get_typedarray_info(env, ta, nullptr, &length, &data, nullptr, nullptr) != napi_ok || (!data && length > 0))
        throw_status(env, core::ERR_INVALID_ARG, "eval: cannot read the tokens' typed array");
    const int32_t * src = (const int32_t *) data;
    std::vector<int32_t> tokens(src, src + length);
    const bool is_unsigned = ta.TypedArrayType() == napi_uint32_array;
    bool logits = false, sample = false;
    if (info.Length() > 1 && info[1].IsObject()) {
        Napi::Object o = info[1].As<Napi::Object>();
        logits = o.Get("logits").ToBoolean();
        sample = o.Get("sample").ToBoolean();
    }
    const int32_t n_vocab = (int32_t) s.ctx().mdl().hp.n_vocab;
    for (size_t i = 0; i < tokens.size(); i++) {
        if (tokens[i] < 0 || tokens[i] >= n_vocab) {
            throw_status(env, core::ERR_INVALID_ARG, is_unsigned ? core::strfmt("eval: token id %u at index %zu is out of range [0, %d)", (uint32_t) tokens[i], i, n_vocab)
                                                              : core::strfmt("eval: token id %d at index %zu is out of range [0, %d)", tokens[i], i, n_vocab));
        }
    }
    s.abort.store(false);
    return (new eval_worker(env, this, std::move(tokens), logits, sample))->start();
}

Napi::Value AddonSequence::set_sampler(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    core::engine_sequence & s = require_idle(env, "setSampler");
    core::sampler_params p;
    if (info.Length() > 0 && info[0].IsObject()) {
        Napi::Object o = info[0].As<Napi::Object>();
        p.temperature = (float) opt_num(o, "temperature", p.temperature);
        p.top_k = opt_int(o, "topK", p.top_k);
        p.top_p = (float) opt_num(o, "topP", p.top_p);
        p.min_p = (float) opt_num(o, "minP", p.min_p);
        p.repeat_penalty = (float) opt_num(o, "repeatPenalty", p.repeat_penalty);
        p.presence_penalty = (float) opt_num(o, "presencePenalty", p.presence_penalty);
        p.frequency_penalty = (float) opt_num(o, "frequencyPenalty", p.frequency_penalty);
        p.penalty_last_n = opt_int(o, "penaltyLastN", p.penalty_last_n);
        p.seed = (uint64_t) opt_num(o, "seed", 0);
    }
    s.set_sampler(p);
    return env.Undefined();
}

Napi::Value AddonSequence::sample(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    core::engine_sequence & s = require_idle(env, "sample");
    int32_t tok = -1;
    status st = s.sample(&tok);
    if (!st.ok()) throw status_to_error(env, st);
    return Napi::Number::New(env, tok);
}

Napi::Value AddonSequence::get_logits(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    core::engine_sequence & s = require_idle(env, "getLogits");
    if (!s.has_logits()) throw_status(env, core::ERR_INVALID_ARG, "getLogits: no logits; evaluate with { logits: true } first");
    Napi::Float32Array a = Napi::Float32Array::New(env, s.logits().size());
    std::memcpy(a.Data(), s.logits().data(), s.logits().size() * sizeof(float));
    return a;
}

Napi::Value AddonSequence::abort(const Napi::CallbackInfo & info) {
    if (seq) seq->abort.store(true);
    return info.Env().Undefined();
}

Napi::Value AddonSequence::remove_from_async(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    require_idle(env, "removeFromAsync");
    if (info.Length() < 1 || !info[0].IsNumber()) throw_status(env, core::ERR_INVALID_ARG, "removeFromAsync: position must be a number");
    const int32_t pos = (int32_t) int_arg(env, info[0], "removeFromAsync: position", 0, INT32_MAX);  // (before busy: it may throw)
    return (new remove_worker(env, this, pos))->start();
}

Napi::Value AddonSequence::save_checkpoint_async(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    require_idle(env, "saveCheckpointAsync");
    const bool bounded_only = info.Length() > 0 && info[0].ToBoolean();
    return (new checkpoint_worker(env, this, bounded_only))->start();
}

Napi::Value AddonSequence::copy_from_async(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsObject() || !info[0].As<Napi::Object>().InstanceOf(env.GetInstanceData<addon_data>()->sequence_ctor.Value())) {
        throw_status(env, core::ERR_INVALID_ARG, "copyFromAsync(source): expected a sequence");
    }
    AddonSequence * src = AddonSequence::Unwrap(info[0].As<Napi::Object>());
    if (src == this) throw_status(env, core::ERR_INVALID_ARG, "copyFromAsync: a sequence cannot copy itself");
    require_idle(env, "copyFromAsync");
    src->require_idle(env, "copyFromAsync (source)");
    return (new copy_worker(env, this, src))->start();
}

Napi::Value AddonSequence::save_state_async(const Napi::CallbackInfo & info) { return state_async(info, false); }
Napi::Value AddonSequence::load_state_async(const Napi::CallbackInfo & info) { return state_async(info, true); }

Napi::Value AddonSequence::state_async(const Napi::CallbackInfo & info, bool load) {
    Napi::Env env = info.Env();
    const char * what = load ? "loadStateAsync" : "saveStateAsync";
    require_idle(env, what);
    if (info.Length() < 1 || !info[0].IsString()) throw_status(env, core::ERR_INVALID_ARG, core::strfmt("%s: path must be a string", what));
    std::string path = info[0].As<Napi::String>().Utf8Value();
    if (path.empty() || path.find('\0') != std::string::npos) throw_status(env, core::ERR_INVALID_ARG, core::strfmt("%s: path must be a non-empty string without NUL characters", what));
    return (new state_worker(env, this, std::move(path), load))->start();
}

Napi::Value AddonSequence::remove_from(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    core::engine_sequence & s = require_idle(env, "removeFrom");
    if (info.Length() < 1 || !info[0].IsNumber()) throw_status(env, core::ERR_INVALID_ARG, "removeFrom: position must be a number");
    return Napi::Number::New(env, s.remove_from((int32_t) int_arg(env, info[0], "removeFrom: position", 0, INT32_MAX)));
}

Napi::Value AddonSequence::n_tokens(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    return Napi::Number::New(env, require_idle(env, "nTokens").n_tokens());  // (a worker may be changing it)
}

// heldPositions(layer, head): the positions one cache head holds (coded and f16), ascending.
Napi::Value AddonSequence::held_positions(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    if (!seq) throw_status(env, core::ERR_DISPOSED, "heldPositions: the sequence has been disposed");
    if (busy.load()) throw_status(env, core::ERR_BUSY, "heldPositions: the sequence is busy with another operation");
    const core::kv_cache_config & c = seq->kv().config();
    if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsNumber()) throw_status(env, core::ERR_INVALID_ARG, "heldPositions(layer, head): expected two integers");
    const int64_t il = int_arg(env, info[0], "heldPositions: layer", 0, INT32_MAX), ih = int_arg(env, info[1], "heldPositions: head", 0, INT32_MAX);
    if (il < 0 || il >= c.n_layer || ih < 0 || ih >= c.n_head_kv) {
        throw_status(env, core::ERR_INVALID_ARG, core::strfmt("heldPositions: layer %lld head %lld outside the cache's %d layers x %d heads", (long long) il, (long long) ih, c.n_layer, c.n_head_kv));
    }
    const std::vector<int32_t> p = seq->held_positions((int) il, (int) ih);
    Napi::Int32Array a = Napi::Int32Array::New(env, p.size());
    if (!p.empty()) std::memcpy(a.Data(), p.data(), p.size() * sizeof(int32_t));
    return a;
}

Napi::Value AddonSequence::memory(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    if (!seq) throw_status(env, core::ERR_DISPOSED, "memory: the sequence has been disposed");
    if (busy.load()) throw_status(env, core::ERR_BUSY, "memory: the sequence is busy with another operation");
    const bool per_head = info.Length() > 0 && info[0].ToBoolean();
    const core::kv_memory_report m = seq->memory(per_head);
    Napi::Object o = Napi::Object::New(env);
    o.Set("logicalTokens", (double) m.logical_tokens);
    o.Set("residentTokens", (double) m.resident_tokens);
    o.Set("bytesUsed", (double) m.bytes_used);
    o.Set("bytesAllocated", (double) m.bytes_allocated);
    Napi::Object b = Napi::Object::New(env);
    b.Set("keys", (double) m.key_bytes);
    b.Set("values", (double) m.value_bytes);
    b.Set("positions", (double) m.position_bytes);
    b.Set("metadata", (double) m.metadata_bytes);
    b.Set("poolSlack", (double) m.pool_slack_bytes);
    b.Set("checkpoint", (double) m.checkpoint_bytes);
    b.Set("codes", (double) m.code_bytes);
    b.Set("scales", (double) m.scale_bytes);
    b.Set("staging", (double) m.staging_bytes);
    o.Set("quantizedTokens", (double) m.quantized_tokens);
    o.Set("breakdown", b);
    o.Set("evictedTokens", (double) m.evicted_tokens);
    o.Set("compactions", (double) m.compactions);
    o.Set("compactionMs", m.compaction_seconds * 1000.0);
    if (per_head) {
        const size_t n = m.heads.size();
        Napi::Int32Array resident = Napi::Int32Array::New(env, n), budget = Napi::Int32Array::New(env, n);
        Napi::Float64Array alloc = Napi::Float64Array::New(env, n), used = Napi::Float64Array::New(env, n);
        for (size_t i = 0; i < n; i++) {
            resident[i] = m.heads[i].resident;
            budget[i] = m.heads[i].budget;
            alloc[i] = (double) m.heads[i].bytes_allocated;
            used[i] = (double) m.heads[i].bytes_used;
        }
        Napi::Object h = Napi::Object::New(env);
        h.Set("residentTokens", resident);
        h.Set("budget", budget);
        h.Set("bytesAllocated", alloc);
        h.Set("bytesUsed", used);
        o.Set("heads", h);
    }
    return o;
}

Napi::Value AddonSequence::set_calibration(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    core::engine_sequence & s = require_idle(env, "setCalibration");
    if (s.on_cuda()) throw_status(env, core::ERR_INVALID_ARG, "setCalibration: head calibration runs on the CPU backend (load the model with backend 'cpu')");
    if (info.Length() < 1 || info[0].IsNull() || info[0].IsUndefined()) {
        s.set_calibration(-1, 0);
        return env.Undefined();
    }
    if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsNumber()) throw_status(env, core::ERR_INVALID_ARG, "setCalibration(sinks, recent[, keysOnly]): numbers expected");
    // keysOnly: only the pre-RoPE query/key sums (mean-qk profiles, rotation permutations), no window-error pass
    const bool keys_only = info.Length() > 2 && info[2].ToBoolean();
    const int sinks = (int) int_arg(env, info[0], "setCalibration: sinks", -1, 1 << 20), recent = (int) int_arg(env, info[1], "setCalibration: recent", 1, 1 << 24);
    if (sinks < 0 || recent < 1) throw_status(env, core::ERR_INVALID_ARG, "setCalibration: sinks must be >= 0 and recent >= 1");
    const core::kv_cache & kv = s.kv();
    for (int il = 0; il < kv.config().n_layer; il++)
        for (int ih = 0; ih < kv.config().n_head_kv; ih++)
            if (kv.retention(il, ih) != core::KV_RETAIN_FULL) throw_status(env, core::ERR_INVALID_ARG, "setCalibration: needs a context whose heads are all full (no kv.heads sparsity)");
    s.set_calibration(sinks, recent, !keys_only);
    return env.Undefined();
}

Napi::Value AddonSequence::get_calibration(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    core::engine_sequence & s = require_idle(env, "getCalibration");
    const core::wse_accumulator * a = s.calibration();
    if (!a) return env.Null();
    auto arr = [&](const std::vector<double> & v) {
        Napi::Float64Array out = Napi::Float64Array::New(env, v.size());
        for (size_t i = 0; i < v.size(); i++) out[i] = v[i];
        return out;
    };
    Napi::Object o = Napi::Object::New(env);
    o.Set("errSum", arr(a->err_sum));
    o.Set("outMassSum", arr(a->out_mass_sum));
    o.Set("count", arr(a->count));
    o.Set("qSum", arr(a->q_sum));
    o.Set("kSum", arr(a->k_sum));
    o.Set("tokens", a->tokens);
    return o;
}

Napi::Value AddonSequence::dispose(const Napi::CallbackInfo & info) {
    if (seq) {
        seq->abort.store(true);  // an eval in flight stops at the next layer; its worker keeps the memory alive
        seq.reset();
    }
    return info.Env().Undefined();
}

} // namespace addon
