// GGUF reader (versions 2 and 3), memory-mapped and bounds-checked.
//
// File layout (all integers little-endian):
//   magic        "GGUF" (4 bytes)
//   version      uint32 (2 or 3; 1 is no longer supported)
//   n_tensors    uint64
//   n_kv         uint64
//   kv[n_kv]     key: string, value_type: uint32, value
//   tensor_info[n_tensors]
//                name: string, n_dims: uint32 (1..4), ne[n_dims]: uint64, type: uint32, offset: uint64
//   padding      to `general.alignment` (uint32 metadata value, default 32, a power of two)
//   data         tensor data; each tensor starts at data_offset + offset, offset a multiple of alignment
// string = uint64 length + bytes (not NUL-terminated). value types: 0 u8, 1 i8, 2 u16, 3 i16, 4 u32,
// 5 i32, 6 f32, 7 bool (1 byte), 8 string, 9 array (elem_type: uint32, count: uint64, elems), 10 u64,
// 11 i64, 12 f64. Arrays may nest (arrays of arrays).
//
// Invariants: every count, length and offset is checked against the bytes that remain before it is
// used; any violation is ERR_GGUF_FORMAT with a message naming the field and the values. Metadata
// strings and tensor data are views into the mapping and live as long as the gguf_file.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "../common/status.h"
#include "../tensor/ggml-type.h"

namespace core {

enum gguf_value_type : uint32_t {
    GGUF_TYPE_UINT8 = 0,
    GGUF_TYPE_INT8 = 1,
    GGUF_TYPE_UINT16 = 2,
    GGUF_TYPE_INT16 = 3,
    GGUF_TYPE_UINT32 = 4,
    GGUF_TYPE_INT32 = 5,
    GGUF_TYPE_FLOAT32 = 6,
    GGUF_TYPE_BOOL = 7,
    GGUF_TYPE_STRING = 8,
    GGUF_TYPE_ARRAY = 9,
    GGUF_TYPE_UINT64 = 10,
    GGUF_TYPE_INT64 = 11,
    GGUF_TYPE_FLOAT64 = 12,
    GGUF_TYPE_COUNT,
};

const char * gguf_type_name(gguf_value_type t);
size_t gguf_type_scalar_size(gguf_value_type t); // 0 for string/array

struct gguf_value {
    gguf_value_type type = GGUF_TYPE_UINT8;
    // scalar payload (valid for numeric and bool types)
    union { uint64_t u64; int64_t i64; double f64; } num{};
    std::string_view str;                // GGUF_TYPE_STRING
    // GGUF_TYPE_ARRAY
    gguf_value_type elem_type = GGUF_TYPE_UINT8;
    uint64_t count = 0;
    const uint8_t * raw = nullptr;       // numeric elements, packed little-endian (may be unaligned)
    std::vector<std::string_view> strs;  // string elements
    std::vector<gguf_value> items;       // nested array elements

    bool is_integer() const;
    bool is_float() const { return type == GGUF_TYPE_FLOAT32 || type == GGUF_TYPE_FLOAT64; }
    double as_double() const;            // numeric scalars
    int64_t as_int() const;              // integer and bool scalars
    // numeric array element i as double (elem_type numeric)
    double array_number(uint64_t i) const;
};

struct gguf_kv {
    std::string key;
    gguf_value value;
};

struct gguf_tensor_info {
    std::string name;
    uint32_t n_dims = 0;
    int64_t ne[4] = {1, 1, 1, 1};        // ne[0] is the contiguous (row) dimension
    ggml_type type = GGML_TYPE_F32;
    uint64_t offset = 0;                 // relative to data section
    const uint8_t * data = nullptr;
    size_t n_bytes = 0;
    int64_t n_elements() const { return ne[0] * ne[1] * ne[2] * ne[3]; }
};

class gguf_file {
public:
    ~gguf_file();
    uint32_t version = 0;
    size_t alignment = 32;
    size_t data_offset = 0;
    size_t file_size = 0;
    std::string path;
    std::vector<gguf_kv> kv;
    std::vector<gguf_tensor_info> tensors;

    const gguf_value * find(std::string_view key) const;
    const gguf_tensor_info * find_tensor(std::string_view name) const;

    // Typed getters: return false (and leave *out untouched) when missing; a present key with the wrong
    // type is ERR_GGUF_FORMAT.
    status get_u32(std::string_view key, uint32_t * out, bool * found) const;
    status get_f32(std::string_view key, float * out, bool * found) const;
    status get_str(std::string_view key, std::string * out, bool * found) const;
    status get_bool(std::string_view key, bool * out, bool * found) const;

    const uint8_t * base() const { return base_; }

    // internal
    const uint8_t * base_ = nullptr;
    void * map_ = nullptr;       // mmap region (nullptr when reading from caller-owned memory)
    size_t map_size_ = 0;
};

// Opens and validates a GGUF file (mmap, read-only).
status gguf_open(const std::string & path, std::unique_ptr<gguf_file> & out);
// Parses a GGUF image held in memory (caller keeps `data` alive). Used by the fuzz tests.
status gguf_parse_memory(const uint8_t * data, size_t size, std::unique_ptr<gguf_file> & out);

} // namespace core
