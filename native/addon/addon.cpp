// The only N-API export table (mirrored by lib/addon-types.ts).
#include <napi.h>

#include "../common/thread-pool.h"
#include "../kernels/cpu/quant-traits-cpu.h"
#include "../model/arch.h"
#include "../kv/kv-policy.h"
#include "../kv/codecs/kv-codec.h"
#include "../tensor/quant-traits.h"
#ifdef THINKCACHE_WITH_CUDA
#include "../cuda/backend-cuda.h"
#endif
#include "addon-gguf.h"
#include "addon-objects.h"
#include "errors.h"

namespace addon {

static Napi::Value list_error_codes(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    Napi::Array a = Napi::Array::New(env);
    for (int i = 0; i < core::STATUS_COUNT; i++) a.Set((uint32_t) i, core::status_code_name((core::status_code) i));
    return a;
}

static Napi::Value list_quant_types(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    size_t n = 0;
    const core::quant_traits * all = core::quant_traits_all(&n);
    Napi::Array a = Napi::Array::New(env);
    uint32_t j = 0;
    for (size_t i = 0; i < n; i++) {
        Napi::Object o = Napi::Object::New(env);
        o.Set("name", all[i].name);
        o.Set("type", (double) all[i].type);
        o.Set("blockSize", (double) all[i].block_size);
        o.Set("typeSize", (double) all[i].type_size);
        o.Set("cpu", core::quant_traits_cpu_get(all[i].type) != nullptr);
        a.Set(j++, o);
    }
    return a;
}

static Napi::Value list_kv_policies(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    int n = 0;
    const core::kv_policy * all = core::kv_policy_all(&n);
    Napi::Array a = Napi::Array::New(env);
    for (int i = 0; i < n; i++) {
        Napi::Object o = Napi::Object::New(env);
        o.Set("name", all[i].name);
        o.Set("source", all[i].source);
        a.Set((uint32_t) i, o);
    }
    return a;
}

// kvCodecBlock(codec, dim, group, key): { blockTokens, blockBytes } of one codec as the cache stores it
// (what a byte budget estimates with; the memory report measures).
static Napi::Value kv_codec_block(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    if (info.Length() < 4 || !info[0].IsString() || !info[1].IsNumber() || !info[2].IsNumber() || !info[3].IsBoolean())
        addon::throw_status(env, core::ERR_INVALID_ARG, "kvCodecBlock(codec: string, dim: number, group: number, key: boolean)");
    const std::string name = info[0].As<Napi::String>().Utf8Value();
    const core::kv_codec_type t = core::kv_codec_find(name.c_str());
    const int dim = (int) addon::int_arg(env, info[1], "kvCodecBlock: dim", 1, 4096), group = (int) addon::int_arg(env, info[2], "kvCodecBlock: group", 1, 65536);
    if (t == core::KV_CODEC_COUNT) addon::throw_status(env, core::ERR_INVALID_ARG, "kvCodecBlock: unknown codec \"" + name + "\"");
    if (dim <= 0 || dim > 4096 || group <= 0) addon::throw_status(env, core::ERR_INVALID_ARG, "kvCodecBlock: dim and group must be positive");
    const core::kv_codec_traits & c = core::kv_codec_get(t);
    const core::kv_codec_params p{dim, group, 1.0f, info[3].As<Napi::Boolean>().Value()};
    Napi::Object o = Napi::Object::New(env);
    o.Set("blockTokens", c.block_tokens(p));
    o.Set("blockBytes", (double) c.block_bytes(p));
    return o;
}

static Napi::Value system_info(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    Napi::Object o = Napi::Object::New(env);
    o.Set("cpuDispatch", core::cpu_dispatch_level());
    o.Set("physicalCores", core::cpu_physical_cores());
    o.Set("architectures", core::arch_supported_list());
#ifdef THINKCACHE_WITH_CUDA
    o.Set("cuda", true);
#else
    o.Set("cuda", false);
#endif
    return o;
}

// The CUDA probe behind loadModel({ backend }) (lib/backend.ts): built, usable devices or the reason.
static Napi::Value cuda_info(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    Napi::Object o = Napi::Object::New(env);
#ifdef THINKCACHE_WITH_CUDA
    o.Set("built", true);
    core::cuda::device_info d;
    const core::status st = core::cuda::probe(0, &d);
    o.Set("deviceCount", st.ok() ? core::cuda::device_count(nullptr) : 0);
    o.Set("reason", st.ok() ? std::string() : st.message);
    if (st.ok()) {
        Napi::Object dev = Napi::Object::New(env);
        dev.Set("name", d.name);
        dev.Set("computeCapability", std::to_string(d.cc_major) + "." + std::to_string(d.cc_minor));
        dev.Set("totalBytes", (double) d.total_bytes);
        dev.Set("freeBytes", (double) d.free_bytes);
        o.Set("device", dev);
    }
#else
    o.Set("built", false);
    o.Set("deviceCount", 0);
    o.Set("reason", "built without THINKCACHE_CUDA");
#endif
#ifdef THINKCACHE_WITH_CUDA
    o.Set("forward", true);  // loadModel({ backend: 'cuda' }) runs the forward pass on the device
#ifdef THINKCACHE_CUDA_EMU
    o.Set("emulated", true);  // the CPU emulation of the kernels (tests): 'auto' never picks it
#endif
#else
    o.Set("forward", false);
#endif
    return o;
}

static Napi::Object init(Napi::Env env, Napi::Object exports) {
    auto * data = new addon_data();
    env.SetInstanceData(data);
    exports.Set("readGgufMetadata", Napi::Function::New(env, read_gguf_metadata, "readGgufMetadata"));
    exports.Set("quantizeGguf", Napi::Function::New(env, quantize_gguf, "quantizeGguf"));
    exports.Set("listErrorCodes", Napi::Function::New(env, list_error_codes, "listErrorCodes"));
    exports.Set("listQuantTypes", Napi::Function::New(env, list_quant_types, "listQuantTypes"));
    exports.Set("systemInfo", Napi::Function::New(env, system_info, "systemInfo"));
    exports.Set("cudaInfo", Napi::Function::New(env, cuda_info, "cudaInfo"));
    exports.Set("listKvPolicies", Napi::Function::New(env, list_kv_policies, "listKvPolicies"));
    exports.Set("kvCodecBlock", Napi::Function::New(env, kv_codec_block, "kvCodecBlock"));
    AddonModel::init(env, exports, *data);
    AddonContext::init(env, exports, *data);
    AddonSequence::init(env, exports, *data);
    return exports;
}

} // namespace addon

static Napi::Object thinkcache_init(Napi::Env env, Napi::Object exports) { return addon::init(env, exports); }

NODE_API_MODULE(thinkcache, thinkcache_init)
