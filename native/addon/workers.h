// Base for every heavy native call: runs `run()` on a libuv worker thread (touching no Napi values),
// then resolves or rejects a Promise on the main thread. Inputs are copied into the subclass before
// queueing; outputs are converted in `result()` (sharp's baton pattern).
#pragma once
#include <exception>
#include <napi.h>

#include "errors.h"

namespace addon {

class promise_worker : public Napi::AsyncWorker {
public:
    explicit promise_worker(Napi::Env env, const char * name) : Napi::AsyncWorker(env, name), deferred_(Napi::Promise::Deferred::New(env)) {}
    Napi::Promise promise() { return deferred_.Promise(); }

protected:
    virtual core::status run() = 0;
    virtual Napi::Value result(Napi::Env env) { return env.Undefined(); }
    virtual void done() {}  // main thread, before resolve/reject (release busy flags)

    void Execute() override {
        try {
            st_ = run();
        } catch (const core::status_error & e) {
            st_ = e.st;
        } catch (const std::bad_alloc &) {
            st_ = core::status(core::ERR_OOM_HOST, "out of host memory");
        } catch (const std::exception & e) {
            st_ = core::status(core::ERR_INTERNAL, std::string("internal error: ") + e.what());
        } catch (...) {
            st_ = core::status(core::ERR_INTERNAL, "internal error: unknown exception");
        }
    }
    void OnOK() override {
        Napi::Env env = Env();
        Napi::HandleScope scope(env);
        done();
        if (!st_.ok()) {
            deferred_.Reject(status_to_error(env, st_).Value());
            return;
        }
        try {
            deferred_.Resolve(result(env));
        } catch (const Napi::Error & e) {
            deferred_.Reject(e.Value());
        }
    }
    void OnError(const Napi::Error & e) override {
        done();
        deferred_.Reject(e.Value());
    }

    core::status st_;

private:
    Napi::Promise::Deferred deferred_;
};

} // namespace addon
