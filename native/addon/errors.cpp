#include "errors.h"

#include <cmath>


namespace addon {

Napi::Error status_to_error(Napi::Env env, const core::status & s) {
    Napi::Error e = Napi::Error::New(env, s.message.empty() ? core::status_code_name(s.code) : s.message);
    e.Set("code", core::status_code_name(s.code));
    return e;
}

void throw_status(Napi::Env env, core::status_code code, const std::string & msg) {
    throw status_to_error(env, core::status(code, msg));
}

int64_t int_arg(Napi::Env env, const Napi::Value & v, const char * what, int64_t lo, int64_t hi) {
    if (!v.IsNumber()) throw_status(env, core::ERR_INVALID_ARG, core::strfmt("%s: expected an integer", what));
    const double d = v.As<Napi::Number>().DoubleValue();
    if (!std::isfinite(d) || d != std::floor(d) || d < (double) lo || d > (double) hi) {
        throw_status(env, core::ERR_INVALID_ARG, core::strfmt("%s: expected an integer in [%lld, %lld], got %.17g", what, (long long) lo, (long long) hi, d));
    }
    return (int64_t) d;
}

} // namespace addon
