// The only place that turns core statuses into JS errors: an Error whose `code` is the status name
// (ERR_GGUF_FORMAT, ...). lib/errors.ts maps codes to typed classes and restores the caller's stack.
#pragma once
#include <napi.h>

#include "../common/status.h"

namespace addon {

Napi::Error status_to_error(Napi::Env env, const core::status & s);
[[noreturn]] void throw_status(Napi::Env env, core::status_code code, const std::string & msg);

} // namespace addon
