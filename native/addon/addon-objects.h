// JS-visible native objects: AddonModel, AddonContext, AddonSequence (mirrored by lib/addon-types.ts).
// Each holds a shared_ptr to its core object; workers copy the shared_ptr, so dispose() while a call is
// in flight only drops the handle — the memory goes when the last user is done.
#pragma once
#include <atomic>
#include <memory>
#include <napi.h>

#include "../engine/engine.h"

namespace addon {

struct addon_data {
    Napi::FunctionReference model_ctor;
    Napi::FunctionReference context_ctor;
    Napi::FunctionReference sequence_ctor;
};

class AddonModel : public Napi::ObjectWrap<AddonModel> {
public:
    static void init(Napi::Env env, Napi::Object exports, addon_data & data);
    explicit AddonModel(const Napi::CallbackInfo & info);
    static Napi::Value load(const Napi::CallbackInfo & info);   // AddonModel.load(path, { backend?: 'cpu' | 'cuda' }): Promise<AddonModel>

    std::shared_ptr<const core::model> model;
    std::shared_ptr<const core::cuda::device_model> cuda_model;  // the weights on the device (backend 'cuda')
    std::shared_ptr<const core::model> require_model(Napi::Env env) const;

private:
    Napi::Value info(const Napi::CallbackInfo & info);
    Napi::Value metadata(const Napi::CallbackInfo & info);  // metadata(packed = false): see gguf_file_to_js
    Napi::Value dispose(const Napi::CallbackInfo & info);
};

class AddonContext : public Napi::ObjectWrap<AddonContext> {
public:
    static void init(Napi::Env env, Napi::Object exports, addon_data & data);
    explicit AddonContext(const Napi::CallbackInfo & info);  // new AddonContext(model, { contextSize, threads, batchSize })
    std::shared_ptr<core::engine_context> ctx;
    std::shared_ptr<core::engine_context> require_ctx(Napi::Env env) const;

private:
    Napi::Value info(const Napi::CallbackInfo & info);
    Napi::Value dispose(const Napi::CallbackInfo & info);
};

class AddonSequence : public Napi::ObjectWrap<AddonSequence> {
public:
    static void init(Napi::Env env, Napi::Object exports, addon_data & data);
    explicit AddonSequence(const Napi::CallbackInfo & info);  // new AddonSequence(context)
    ~AddonSequence() override;

    std::shared_ptr<core::engine_sequence> seq;
    std::atomic<bool> busy{false};

    core::engine_sequence & require_idle(Napi::Env env, const char * what);

private:
    Napi::Value eval(const Napi::CallbackInfo & info);          // eval(tokens: Int32Array, { logits?: boolean, sample?: boolean }): Promise<number | undefined>
    Napi::Value set_sampler(const Napi::CallbackInfo & info);   // setSampler({ temperature, topK, topP, minP, repeatPenalty, presencePenalty, frequencyPenalty, penaltyLastN, seed })
    Napi::Value sample(const Napi::CallbackInfo & info);        // sample(): number (sync; logits must be present)
    Napi::Value get_logits(const Napi::CallbackInfo & info);    // getLogits(): Float32Array copy
    Napi::Value abort(const Napi::CallbackInfo & info);
    Napi::Value remove_from(const Napi::CallbackInfo & info);
    Napi::Value remove_from_async(const Napi::CallbackInfo & info);  // removeFromAsync(pos): Promise<number> (off the event loop: a CUDA
                                                                     // rewind waits for the context's device, which another sequence may hold)
    Napi::Value save_checkpoint_async(const Napi::CallbackInfo & info);  // saveCheckpointAsync(boundedOnly): Promise<void>
    Napi::Value copy_from_async(const Napi::CallbackInfo & info);  // copyFromAsync(source): Promise<number> (tokens held after the copy)
    Napi::Value save_state_async(const Napi::CallbackInfo & info);  // saveStateAsync(path): Promise<number> (the file's bytes)
    Napi::Value load_state_async(const Napi::CallbackInfo & info);  // loadStateAsync(path): Promise<Int32Array> (the tokens now held)
    Napi::Value state_async(const Napi::CallbackInfo & info, bool load);
    Napi::Value n_tokens(const Napi::CallbackInfo & info);
    Napi::Value memory(const Napi::CallbackInfo & info);
    Napi::Value held_positions(const Napi::CallbackInfo & info);
    Napi::Value set_calibration(const Napi::CallbackInfo & info);  // setCalibration(sinks, recent) | setCalibration(null)
    Napi::Value get_calibration(const Napi::CallbackInfo & info);  // { errSum, outMassSum, count }: Float64Array [n_layer * n_head_kv]
    Napi::Value dispose(const Napi::CallbackInfo & info);
};

} // namespace addon
