#include "errors.h"

namespace addon {

Napi::Error status_to_error(Napi::Env env, const core::status & s) {
    Napi::Error e = Napi::Error::New(env, s.message.empty() ? core::status_code_name(s.code) : s.message);
    e.Set("code", Napi::String::New(env, core::status_code_name(s.code)));
    return e;
}

void throw_status(Napi::Env env, core::status_code code, const std::string & msg) {
    throw status_to_error(env, core::status(code, msg));
}

} // namespace addon
