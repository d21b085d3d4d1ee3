// GGUF metadata → JS values. Scalars become numbers/booleans/strings (64-bit integers beyond 2^53
// become BigInt), numeric arrays become typed arrays (copied), string and nested arrays plain arrays.
#pragma once
#include <napi.h>

#include "../gguf/gguf-reader.h"

namespace addon {

Napi::Value gguf_value_to_js(Napi::Env env, const core::gguf_value & v);
// { version, alignment, dataOffset, fileSize, metadata: {key: value}, tensors: [{name, type, typeName, shape, offset, bytes}] }
Napi::Object gguf_file_to_js(Napi::Env env, const core::gguf_file & f, bool with_metadata);
// readGgufMetadata(path): Promise<GgufInfo>
Napi::Value read_gguf_metadata(const Napi::CallbackInfo & info);
// quantizeGguf(inPath, outPath, { type, threads }): Promise<{ fileType, bytesIn, bytesOut, tensors: [{name, from, to}] }>
Napi::Value quantize_gguf(const Napi::CallbackInfo & info);

} // namespace addon
