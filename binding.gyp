# node-gyp build of the CPU addon (the default `npm install` path, through node-gyp-build).
# Lists every non-CUDA native source; test/build/sources.test.ts checks that none is missing.
# SIMD kernels select their ISA per function and dispatch at run time, so no -march flags here.
{
  "targets": [
    {
      "target_name": "thinkcache",
      "sources": [
        "native/addon/addon-gguf.cpp",
        "native/addon/addon-objects.cpp",
        "native/addon/addon.cpp",
        "native/addon/errors.cpp",
        "native/common/status.cpp",
        "native/common/thread-pool.cpp",
        "native/engine/engine.cpp",
        "native/engine/sequence-state.cpp",
        "native/gguf/gguf-quantize.cpp",
        "native/gguf/gguf-reader.cpp",
        "native/kernels/cpu/arch/x86-avx2.cpp",
        "native/kernels/cpu/arch/x86-avx512.cpp",
        "native/kernels/cpu/attention-codec-avx2.cpp",
        "native/kernels/cpu/attention-codec-avx512.cpp",
        "native/kernels/cpu/attention-codec.cpp",
        "native/kernels/cpu/attention-wse.cpp",
        "native/kernels/cpu/attention.cpp",
        "native/kernels/cpu/cpu-features.cpp",
        "native/kernels/cpu/matmul.cpp",
        "native/kernels/cpu/ops.cpp",
        "native/kernels/cpu/quant-traits-cpu.cpp",
        "native/kv/codecs/kivi.cpp",
        "native/kv/codecs/kv-codec-registry.cpp",
        "native/kv/codecs/q4.cpp",
        "native/kv/codecs/q8.cpp",
        "native/kv/codecs/rot.cpp",
        "native/kv/kv-cache.cpp",
        "native/kv/kv-state.cpp",
        "native/kv/kv-policy-registry.cpp",
        "native/kv/kv-ring.cpp",
        "native/kv/page-pool.cpp",
        "native/kv/policies/h2o.cpp",
        "native/kv/policies/lazy.cpp",
        "native/kv/policies/rkv.cpp",
        "native/kv/policies/snapkv.cpp",
        "native/kv/policies/streaming.cpp",
        "native/kv/policies/tova.cpp",
        "native/model/arch.cpp",
        "native/model/forward.cpp",
        "native/model/model.cpp",
        "native/sampling/sampler.cpp",
        "native/tensor/ggml-type-layout.cpp",
        "native/tensor/ggml-type.cpp",
        "native/tensor/quant-traits.cpp",
        "native/tensor/quants/float-types.cpp",
        "native/tensor/quants/k-quants-common.cpp",
        "native/tensor/quants/q2-k.cpp",
        "native/tensor/quants/q3-k.cpp",
        "native/tensor/quants/q4-0.cpp",
        "native/tensor/quants/q4-1.cpp",
        "native/tensor/quants/q4-k.cpp",
        "native/tensor/quants/q5-0.cpp",
        "native/tensor/quants/q5-1.cpp",
        "native/tensor/quants/q5-k.cpp",
        "native/tensor/quants/q6-k.cpp",
        "native/tensor/quants/q8-0.cpp",
        "native/tensor/quants/q8-1.cpp",
        "native/tensor/quants/q8-k.cpp"
      ],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")",
        "native"
      ],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti"],
      "cflags_cc": ["-std=c++17", "-O3", "-fexceptions", "-fno-math-errno", "-Wno-unused-parameter"],
      "cflags": ["-O3"],
      "xcode_settings": {
        "GCC_ENABLE_CPP_EXCEPTIONS": "YES",
        "CLANG_CXX_LANGUAGE_STANDARD": "c++17",
        "OTHER_CPLUSPLUSFLAGS": ["-O3", "-fexceptions"]
      }
    }
  ]
}
