// The only place that turns core statuses into JS errors: an Error whose `code` is the status name
// (ERR_GGUF_FORMAT, ...). lib/errors.ts maps codes to typed classes and restores the caller's stack.
#pragma once
#include <napi.h>

#include "../common/status.h"

namespace addon {

Napi::Error status_to_error(Napi::Env env, const core::status & s);
[[noreturn]] void throw_status(Napi::Env env, core::status_code code, const std::string & msg);
// A JS number that must be an integer in [lo, hi]; NaN, ±Infinity, fractions and values out of range are
// ERR_INVALID_ARG naming `what` (never Int32Value's silent wrap: removeFrom(2 ** 32) must not mean 0).
int64_t int_arg(Napi::Env env, const Napi::Value & v, const char * what, int64_t lo, int64_t hi);

} // namespace addon
