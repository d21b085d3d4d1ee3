// GGUF reader: see gguf-reader.h for the format. Parsing uses a cursor that checks every read against
// the end of the image and throws status_error (caught in gguf_parse_image) with the field name and
// the offending values.
#include "gguf-reader.h"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <unordered_set>

namespace core {

static const char * const GGUF_TYPE_NAMES[GGUF_TYPE_COUNT] = {
    "uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "bool", "string", "array", "uint64", "int64", "float64",
};

const char * gguf_type_name(gguf_value_type t) { return t < GGUF_TYPE_COUNT ? GGUF_TYPE_NAMES[t] : "invalid"; }

size_t gguf_type_scalar_size(gguf_value_type t) {
    switch (t) {
        case GGUF_TYPE_UINT8: case GGUF_TYPE_INT8: case GGUF_TYPE_BOOL: return 1;
        case GGUF_TYPE_UINT16: case GGUF_TYPE_INT16: return 2;
        case GGUF_TYPE_UINT32: case GGUF_TYPE_INT32: case GGUF_TYPE_FLOAT32: return 4;
        case GGUF_TYPE_UINT64: case GGUF_TYPE_INT64: case GGUF_TYPE_FLOAT64: return 8;
        default: return 0;
    }
}

static double read_number(gguf_value_type t, const uint8_t * p) {
    switch (t) {
        case GGUF_TYPE_UINT8: return (double) *p;
        case GGUF_TYPE_INT8: return (double) (int8_t) *p;
        case GGUF_TYPE_BOOL: return *p ? 1.0 : 0.0;
        case GGUF_TYPE_UINT16: { uint16_t v; std::memcpy(&v, p, 2); return v; }
        case GGUF_TYPE_INT16: { int16_t v; std::memcpy(&v, p, 2); return v; }
        case GGUF_TYPE_UINT32: { uint32_t v; std::memcpy(&v, p, 4); return v; }
        case GGUF_TYPE_INT32: { int32_t v; std::memcpy(&v, p, 4); return v; }
        case GGUF_TYPE_FLOAT32: { float v; std::memcpy(&v, p, 4); return v; }
        case GGUF_TYPE_UINT64: { uint64_t v; std::memcpy(&v, p, 8); return (double) v; }
        case GGUF_TYPE_INT64: { int64_t v; std::memcpy(&v, p, 8); return (double) v; }
        case GGUF_TYPE_FLOAT64: { double v; std::memcpy(&v, p, 8); return v; }
        default: return 0;
    }
}

bool gguf_value::is_integer() const {
    switch (type) {
        case GGUF_TYPE_UINT8: case GGUF_TYPE_INT8: case GGUF_TYPE_UINT16: case GGUF_TYPE_INT16:
        case GGUF_TYPE_UINT32: case GGUF_TYPE_INT32: case GGUF_TYPE_UINT64: case GGUF_TYPE_INT64: return true;
        default: return false;
    }
}

double gguf_value::as_double() const {
    switch (type) {
        case GGUF_TYPE_FLOAT32: case GGUF_TYPE_FLOAT64: return num.f64;
        case GGUF_TYPE_UINT64: return (double) num.u64;
        default: return (double) num.i64;
    }
}

int64_t gguf_value::as_int() const {
    if (type == GGUF_TYPE_FLOAT32 || type == GGUF_TYPE_FLOAT64) return (int64_t) num.f64;
    return num.i64;
}

double gguf_value::array_number(uint64_t i) const {
    const size_t es = gguf_type_scalar_size(elem_type);
    if (type != GGUF_TYPE_ARRAY || es == 0 || i >= count || !raw) return 0;
    return read_number(elem_type, raw + i * es);
}

namespace {

constexpr uint32_t MAX_ARRAY_DEPTH = 8;
// Values inside nested arrays, over the whole file: each costs far more in memory (and as a JS value) than
// its 12 bytes on disk, and no model file has more than a handful.
constexpr uint64_t MAX_NESTED_VALUES = 1ull << 20;
constexpr uint64_t MAX_STRING_BYTES = 1ull << 30;

struct cursor {
    const uint8_t * base;
    size_t size;
    uint64_t nested = 0;  // values created inside nested arrays so far (MAX_NESTED_VALUES)
    size_t pos = 0;

    size_t remaining() const { return size - pos; }

    void need(size_t n, const char * what) {
        if (n > remaining()) {
            fail(ERR_GGUF_FORMAT, strfmt("gguf: truncated file while reading %s at offset %zu: need %zu bytes, %zu remain (file size %zu)",
                                         what, pos, n, remaining(), size));
        }
    }
    template <class T> T read(const char * what) {
        need(sizeof(T), what);
        T v;
        std::memcpy(&v, base + pos, sizeof(T));
        pos += sizeof(T);
        return v;
    }
    std::string_view read_string(const char * what) {
        const uint64_t len = read<uint64_t>(what);
        if (len > remaining() || len > MAX_STRING_BYTES) {
            fail(ERR_GGUF_FORMAT, strfmt("gguf: %s has length %llu but only %zu bytes remain at offset %zu (file size %zu)",
                                         what, (unsigned long long) len, remaining(), pos, size));
        }
        std::string_view s((const char *) base + pos, (size_t) len);
        pos += (size_t) len;
        return s;
    }
};

void read_value(cursor & c, gguf_value & v, gguf_value_type type, const std::string & key, uint32_t depth) {
    v.type = type;
    const size_t es = gguf_type_scalar_size(type);
    if (es) {
        c.need(es, "metadata value");
        const uint8_t * p = c.base + c.pos;
        switch (type) {
            case GGUF_TYPE_FLOAT32: case GGUF_TYPE_FLOAT64: v.num.f64 = read_number(type, p); break;
            case GGUF_TYPE_UINT64: std::memcpy(&v.num.u64, p, 8); break;
            default: v.num.i64 = (int64_t) read_number(type, p); break;
        }
        if (type == GGUF_TYPE_BOOL && *p > 1) {
            fail(ERR_GGUF_FORMAT, strfmt("gguf: metadata '%s' is a bool with byte value %u (must be 0 or 1)", key.c_str(), *p));
        }
        c.pos += es;
        return;
    }
    if (type == GGUF_TYPE_STRING) {
        v.str = c.read_string(("value of metadata '" + key + "'").c_str());
        return;
    }
    if (type != GGUF_TYPE_ARRAY) {
        fail(ERR_GGUF_FORMAT, strfmt("gguf: metadata '%s' has value type %u, must be in [0, %d]", key.c_str(), (unsigned) type, GGUF_TYPE_COUNT - 1));
    }
    if (depth >= MAX_ARRAY_DEPTH) {
        fail(ERR_GGUF_FORMAT, strfmt("gguf: metadata '%s' nests arrays deeper than %u levels", key.c_str(), MAX_ARRAY_DEPTH));
    }
    const uint32_t et = c.read<uint32_t>("array element type");
    if (et >= GGUF_TYPE_COUNT) {
        fail(ERR_GGUF_FORMAT, strfmt("gguf: metadata '%s' is an array with element type %u, must be in [0, %d]", key.c_str(), et, GGUF_TYPE_COUNT - 1));
    }
    v.elem_type = (gguf_value_type) et;
    v.count = c.read<uint64_t>("array length");
    const size_t ees = gguf_type_scalar_size(v.elem_type);
    // Minimum bytes per element: its scalar size, 8 for a string length, 12 for a nested array header.
    const uint64_t min_elem = ees ? ees : (v.elem_type == GGUF_TYPE_STRING ? 8 : 12);
    if (v.count > c.remaining() / min_elem) {
        fail(ERR_GGUF_FORMAT, strfmt("gguf: metadata '%s' is an array of %llu %s elements, but only %zu bytes remain at offset %zu",
                                     key.c_str(), (unsigned long long) v.count, gguf_type_name(v.elem_type), c.remaining(), c.pos));
    }
    if (ees) {
        v.raw = c.base + c.pos;
        c.pos += (size_t) v.count * ees;
        if (v.elem_type == GGUF_TYPE_BOOL) {
            for (uint64_t i = 0; i < v.count; i++) {
                if (v.raw[i] > 1) fail(ERR_GGUF_FORMAT, strfmt("gguf: metadata '%s'[%llu] is a bool with byte value %u", key.c_str(), (unsigned long long) i, v.raw[i]));
            }
        }
    } else if (v.elem_type == GGUF_TYPE_STRING) {
        v.strs.reserve((size_t) v.count);
        for (uint64_t i = 0; i < v.count; i++) v.strs.push_back(c.read_string(("element of metadata '" + key + "'").c_str()));
    } else {
        if ((c.nested += v.count) > MAX_NESTED_VALUES) {
            fail(ERR_GGUF_FORMAT, strfmt("gguf: metadata '%s' brings the values inside nested arrays past %llu", key.c_str(), (unsigned long long) MAX_NESTED_VALUES));
        }
        v.items.resize((size_t) v.count);
        for (uint64_t i = 0; i < v.count; i++) read_value(c, v.items[i], GGUF_TYPE_ARRAY, key, depth + 1);
    }
}

void parse_image(const uint8_t * data, size_t size, gguf_file & f) {
    cursor c{data, size};
    c.need(4, "magic");
    if (std::memcmp(data, "GGUF", 4) != 0) {
        fail(ERR_GGUF_FORMAT, strfmt("gguf: invalid magic bytes %02x %02x %02x %02x (expected \"GGUF\")",
                                     data[0], data[1], data[2], data[3]));
    }
    c.pos = 4;
    f.version = c.read<uint32_t>("version");
    if (f.version == 1) fail(ERR_GGUF_FORMAT, "gguf: GGUF version 1 is no longer supported (re-convert the model)");
    if (f.version != 2 && f.version != 3) fail(ERR_GGUF_FORMAT, strfmt("gguf: version is %u but must be 2 or 3", f.version));

    const uint64_t n_tensors = c.read<uint64_t>("n_tensors");
    const uint64_t n_kv = c.read<uint64_t>("n_kv");
    // A key-value pair takes at least 8 (key length) + 4 (type) + 1 bytes; a tensor info at least
    // 8 + 4 + 8 + 4 + 8 bytes. This bounds the counts before anything is allocated.
    if (n_kv > c.remaining() / 13) {
        fail(ERR_GGUF_FORMAT, strfmt("gguf: n_kv is %llu but must be in [0, %zu] for a file of %zu bytes",
                                     (unsigned long long) n_kv, c.remaining() / 13, size));
    }
    if (n_tensors > c.remaining() / 32) {
        fail(ERR_GGUF_FORMAT, strfmt("gguf: n_tensors is %llu but must be in [0, %zu] for a file of %zu bytes",
                                     (unsigned long long) n_tensors, c.remaining() / 32, size));
    }

    // entries as they are parsed (the counts only bound them: a header can claim millions), each key checked
    // for duplicates at once (a file of zeros is a run of empty keys: it fails at its second entry)
    std::unordered_set<std::string> seen;
    f.kv.reserve((size_t) std::min<uint64_t>(n_kv, 4096));
    for (uint64_t i = 0; i < n_kv; i++) {
        gguf_kv kv;
        kv.key = std::string(c.read_string("metadata key"));
        if (!seen.insert(kv.key).second) fail(ERR_GGUF_FORMAT, strfmt("gguf: duplicate metadata key '%s'", kv.key.c_str()));
        const uint32_t t = c.read<uint32_t>("metadata value type");
        if (t >= GGUF_TYPE_COUNT) {
            fail(ERR_GGUF_FORMAT, strfmt("gguf: metadata '%s' has value type %u, must be in [0, %d]", kv.key.c_str(), t, GGUF_TYPE_COUNT - 1));
        }
        read_value(c, kv.value, (gguf_value_type) t, kv.key, 0);
        f.kv.push_back(std::move(kv));
    }

    f.alignment = 32;
    if (const gguf_value * a = f.find("general.alignment")) {
        if (a->type != GGUF_TYPE_UINT32) {
            fail(ERR_GGUF_FORMAT, strfmt("gguf: general.alignment has type %s but must be uint32", gguf_type_name(a->type)));
        }
        const uint64_t al = (uint64_t) a->num.i64;
        if (al == 0 || (al & (al - 1)) != 0 || al > (1u << 20)) {
            fail(ERR_GGUF_FORMAT, strfmt("gguf: general.alignment is %llu but must be a power of two in [1, 1048576]", (unsigned long long) al));
        }
        f.alignment = (size_t) al;
    }

    f.tensors.reserve((size_t) std::min<uint64_t>(n_tensors, 4096));
    std::unordered_set<std::string> names;
    for (uint64_t i = 0; i < n_tensors; i++) {
        gguf_tensor_info & t = f.tensors.emplace_back();
        t.name = std::string(c.read_string("tensor name"));
        t.n_dims = c.read<uint32_t>("tensor n_dims");
        if (t.n_dims < 1 || t.n_dims > 4) {
            fail(ERR_GGUF_FORMAT, strfmt("gguf: tensor '%s' has n_dims %u but must be in [1, 4]", t.name.c_str(), t.n_dims));
        }
        for (uint32_t d = 0; d < t.n_dims; d++) {
            const uint64_t ne = c.read<uint64_t>("tensor dimension");
            if (ne > (uint64_t) INT64_MAX / 2) {
                fail(ERR_GGUF_FORMAT, strfmt("gguf: tensor '%s' has ne[%u] = %llu, which is out of range", t.name.c_str(), d, (unsigned long long) ne));
            }
            t.ne[d] = (int64_t) ne;
        }
        const uint32_t type = c.read<uint32_t>("tensor type");
        int64_t blck = 0;
        size_t tsize = 0;
        if (!ggml_type_layout(type, &blck, &tsize)) {
            fail(ERR_GGUF_FORMAT, strfmt("gguf: tensor '%s' has type %u, which is not a known ggml type", t.name.c_str(), type));
        }
        t.type = (ggml_type) type;
        t.offset = c.read<uint64_t>("tensor offset");
        if (t.ne[0] % blck != 0) {
            fail(ERR_GGUF_FORMAT, strfmt("gguf: tensor '%s' has ne[0] = %lld, not a multiple of the %s block size %lld",
                                         t.name.c_str(), (long long) t.ne[0], ggml_type_name(type), (long long) blck));
        }
        // n_bytes = ne[0]/blck * tsize * ne[1] * ne[2] * ne[3], each step checked for overflow
        unsigned __int128 nb = (unsigned __int128) (t.ne[0] / blck) * tsize;
        for (int d = 1; d < 4; d++) {
            nb *= (unsigned __int128) t.ne[d];
            if (nb > (unsigned __int128) size) {
                fail(ERR_GGUF_FORMAT, strfmt("gguf: tensor '%s' [%lld, %lld, %lld, %lld] needs more bytes than the file has (%zu)",
                                             t.name.c_str(), (long long) t.ne[0], (long long) t.ne[1], (long long) t.ne[2], (long long) t.ne[3], size));
            }
        }
        if (nb > (unsigned __int128) size) {
            fail(ERR_GGUF_FORMAT, strfmt("gguf: tensor '%s' needs more bytes than the file has (%zu)", t.name.c_str(), size));
        }
        t.n_bytes = (size_t) nb;
        if (t.offset % f.alignment != 0) {
            fail(ERR_GGUF_FORMAT, strfmt("gguf: tensor '%s' has offset %llu, not a multiple of the alignment %zu",
                                         t.name.c_str(), (unsigned long long) t.offset, f.alignment));
        }
        if (!names.insert(t.name).second) fail(ERR_GGUF_FORMAT, strfmt("gguf: duplicate tensor name '%s'", t.name.c_str()));
    }

    // data section starts at the next multiple of the alignment
    size_t data_offset = c.pos;
    if (data_offset % f.alignment) data_offset += f.alignment - data_offset % f.alignment;
    if (n_tensors > 0 && data_offset > size) {
        fail(ERR_GGUF_FORMAT, strfmt("gguf: data section starts at %zu, past the end of the file (%zu bytes)", data_offset, size));
    }
    f.data_offset = data_offset;
    const size_t data_size = size >= data_offset ? size - data_offset : 0;
    for (auto & t : f.tensors) {
        if (t.offset > data_size || t.n_bytes > data_size - t.offset) {
            fail(ERR_GGUF_FORMAT, strfmt("gguf: tensor '%s' spans [%llu, %llu) of the data section, but it holds %zu bytes (file truncated?)",
                                         t.name.c_str(), (unsigned long long) t.offset, (unsigned long long) (t.offset + t.n_bytes), data_size));
        }
        t.data = data + data_offset + t.offset;
    }
}

} // namespace

gguf_file::~gguf_file() {
    if (map_) munmap(map_, map_size_);
}

const gguf_value * gguf_file::find(std::string_view key) const {
    for (const auto & e : kv) if (e.key == key) return &e.value;
    return nullptr;
}

const gguf_tensor_info * gguf_file::find_tensor(std::string_view name) const {
    for (const auto & t : tensors) if (t.name == name) return &t;
    return nullptr;
}

static status wrong_type(std::string_view key, const gguf_value & v, const char * expected) {
    return status(ERR_GGUF_FORMAT, strfmt("gguf: metadata '%.*s' has type %s but must be %s", (int) key.size(), key.data(),
                                          gguf_type_name(v.type), expected));
}

status gguf_file::get_u32(std::string_view key, uint32_t * out, bool * found) const {
    const gguf_value * v = find(key);
    if (found) *found = v != nullptr;
    if (!v) return {};
    if (!v->is_integer()) return wrong_type(key, *v, "an integer");
    const bool neg = v->type != GGUF_TYPE_UINT64 && v->num.i64 < 0;
    if (neg || (v->type == GGUF_TYPE_UINT64 ? v->num.u64 : (uint64_t) v->num.i64) > 0xffffffffull) {
        return status(ERR_GGUF_FORMAT, strfmt("gguf: metadata '%.*s' is %lld, out of range for uint32", (int) key.size(), key.data(), (long long) v->num.i64));
    }
    *out = (uint32_t) v->num.i64;
    return {};
}

status gguf_file::get_f32(std::string_view key, float * out, bool * found) const {
    const gguf_value * v = find(key);
    if (found) *found = v != nullptr;
    if (!v) return {};
    if (!v->is_float() && !v->is_integer()) return wrong_type(key, *v, "a number");
    *out = (float) v->as_double();
    return {};
}

status gguf_file::get_str(std::string_view key, std::string * out, bool * found) const {
    const gguf_value * v = find(key);
    if (found) *found = v != nullptr;
    if (!v) return {};
    if (v->type != GGUF_TYPE_STRING) return wrong_type(key, *v, "a string");
    *out = std::string(v->str);
    return {};
}

status gguf_file::get_bool(std::string_view key, bool * out, bool * found) const {
    const gguf_value * v = find(key);
    if (found) *found = v != nullptr;
    if (!v) return {};
    if (v->type != GGUF_TYPE_BOOL) return wrong_type(key, *v, "a bool");
    *out = v->num.i64 != 0;
    return {};
}

status gguf_parse_memory(const uint8_t * data, size_t size, std::unique_ptr<gguf_file> & out) {
    auto f = std::make_unique<gguf_file>();
    f->file_size = size;
    f->base_ = data;
    try {
        parse_image(data, size, *f);
    } catch (const status_error & e) {
        return e.st;
    } catch (const std::bad_alloc &) {
        return status(ERR_OOM_HOST, "gguf: out of memory while parsing metadata");
    }
    out = std::move(f);
    return {};
}

status gguf_open(const std::string & path, std::unique_ptr<gguf_file> & out) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return status(ERR_IO, strfmt("gguf_open: cannot open '%s': %s", path.c_str(), std::strerror(errno)));
    struct stat st {};
    if (fstat(fd, &st) != 0) {
        const int e = errno;
        ::close(fd);
        return status(ERR_IO, strfmt("gguf_open: cannot stat '%s': %s", path.c_str(), std::strerror(e)));
    }
    if (!S_ISREG(st.st_mode)) {
        ::close(fd);
        return status(ERR_IO, strfmt("gguf_open: '%s' is not a regular file", path.c_str()));
    }
    const size_t size = (size_t) st.st_size;
    if (size < 24) {
        ::close(fd);
        return status(ERR_GGUF_FORMAT, strfmt("gguf_open: '%s' is %zu bytes, too small to be a GGUF file (header is 24 bytes)", path.c_str(), size));
    }
    void * map = mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
    const int e = errno;
    ::close(fd);
    if (map == MAP_FAILED) return status(ERR_IO, strfmt("gguf_open: mmap of '%s' (%zu bytes) failed: %s", path.c_str(), size, std::strerror(e)));
    std::unique_ptr<gguf_file> f;
    status s = gguf_parse_memory((const uint8_t *) map, size, f);
    if (!s.ok()) {
        munmap(map, size);
        s.message = path + ": " + s.message;
        return s;
    }
    f->map_ = map;
    f->map_size_ = size;
    f->path = path;
    out = std::move(f);
    return {};
}

} // namespace core
