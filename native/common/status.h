// Status codes of the core. The core never throws across modules: functions return `status` (or fill
// one in), and the boundary (native/addon/errors.cpp) turns a status into a typed JS error. The list is
// an X-macro so the enum and the string table cannot drift apart; values are append-only because
// lib/errors.ts maps the names.
#pragma once
#include <string>
#include <utility>

#define CORE_STATUS_LIST(X)        \
    X(OK)                          \
    X(ERR_GGUF_FORMAT)             \
    X(ERR_IO)                      \
    X(ERR_UNSUPPORTED_ARCH)        \
    X(ERR_UNSUPPORTED_QUANT)       \
    X(ERR_OOM_HOST)                \
    X(ERR_OOM_DEVICE)              \
    X(ERR_CUDA)                    \
    X(ERR_INVALID_ARG)             \
    X(ERR_ABORTED)                 \
    X(ERR_BUSY)                    \
    X(ERR_DISPOSED)                \
    X(ERR_CONTEXT_FULL)            \
    X(ERR_INTERNAL)                \
    X(ERR_STATE_FORMAT)

namespace core {

enum status_code : int {
#define X(name) name,
    CORE_STATUS_LIST(X)
#undef X
    STATUS_COUNT
};

inline const char * status_code_name(status_code c) {
    static const char * names[] = {
#define X(name) #name,
        CORE_STATUS_LIST(X)
#undef X
    };
    return (c >= 0 && c < STATUS_COUNT) ? names[c] : "ERR_INTERNAL";
}

// A status with a message. `ok()` is the common case and carries no allocation.
struct status {
    status_code code = OK;
    std::string message;

    status() = default;
    status(status_code c, std::string m) : code(c), message(std::move(m)) {}
    bool ok() const { return code == OK; }
    static status success() { return {}; }
};

// Formats like printf into a std::string (used to build messages that name the function and values).
std::string strfmt(const char * fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;

// Exception used *inside* a module (e.g. deep in the GGUF parser) and caught at the module's entry point,
// which converts it to a `status`. Never crosses into the addon uncaught.
struct status_error {
    status st;
};

[[noreturn]] inline void fail(status_code c, std::string msg) { throw status_error{status(c, std::move(msg))}; }

} // namespace core
