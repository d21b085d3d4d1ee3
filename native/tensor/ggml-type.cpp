// Names of the GGUF tensor type numbers, spelled as ggml spells them (they appear in GGUF metadata dumps
// and in our error messages). Numbers that ggml removed, or that are newer than this table, are named
// "unknown(N)", so the result can always go straight into a message; that string lives in a per-thread
// buffer, valid until the next such call on the same thread.
#include "ggml-type.h"

#include <cstdio>

namespace core {

const char * ggml_type_name(uint32_t t) {
    // Indexed by type number; nullptr marks a removed or unknown number.
    static const char * const names[] = {
        "f32", "f16", "q4_0", "q4_1",
        nullptr, nullptr,                                 // 4, 5: q4_2, q4_3 (removed)
        "q5_0", "q5_1", "q8_0", "q8_1",
        "q2_K", "q3_K", "q4_K", "q5_K", "q6_K", "q8_K",
        "iq2_xxs", "iq2_xs", "iq3_xxs", "iq1_s", "iq4_nl", "iq3_s", "iq2_s", "iq4_xs",
        "i8", "i16", "i32", "i64", "f64", "iq1_m", "bf16",
        nullptr, nullptr, nullptr,                        // 31..33: interleaved q4_0 layouts (removed)
        "tq1_0", "tq2_0",                                 // 34, 35
        nullptr, nullptr, nullptr,                        // 36..38: interleaved iq4_nl layouts (removed)
        "mxfp4",                                          // 39
    };
    static_assert(sizeof(names) / sizeof(names[0]) == GGML_TYPE_COUNT_KNOWN, "one name slot per type number");
    if (t < GGML_TYPE_COUNT_KNOWN && names[t]) return names[t];
    thread_local char unknown[24];
    std::snprintf(unknown, sizeof(unknown), "unknown(%u)", t);
    return unknown;
}

} // namespace core
