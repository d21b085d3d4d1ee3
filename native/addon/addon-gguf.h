// GGUF metadata → JS values. Scalars become numbers/booleans/strings (64-bit integers beyond 2^53
// become BigInt), numeric arrays become typed arrays (copied), string and nested arrays plain arrays.
#pragma once
#include <napi.h>

#include "../gguf/gguf-reader.h"

namespace addon {

// With `packed`, a string array of valid UTF-8 becomes { packedStrings: string, ends: Uint32Array } (one
// string and each element's UTF-16 end offset; lib/gguf.ts unpacks it with turns for the event loop).
Napi::Value gguf_value_to_js(Napi::Env env, const core::gguf_value & v, bool packed = false);
// { version, alignment, dataOffset, fileSize, metadata: {key: value}, tensors: [{name, type, typeName, shape, offset, bytes}] }
Napi::Object gguf_file_to_js(Napi::Env env, const core::gguf_file & f, bool with_metadata, bool packed = false);
// readGgufMetadata(path, withMetadata = true, packed = false): Promise<GgufInfo>
Napi::Value read_gguf_metadata(const Napi::CallbackInfo & info);
// quantizeGguf(inPath, outPath, { type, threads }): Promise<{ fileType, bytesIn, bytesOut, tensors: [{name, from, to}] }>
Napi::Value quantize_gguf(const Napi::CallbackInfo & info);

} // namespace addon
