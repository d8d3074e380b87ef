#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <fcntl.h>
#include <limits>
#include <type_traits>
#include <sys/stat.h>
#include <unistd.h>

namespace sllm {

// ---- tensor and value types ----

const TensorTypeInfo* tensor_type_info(uint32_t type_id) {
  // Block sizes and bytes per block of ggml's formats (ggml-common.h block structs).
  static const struct {
    uint32_t id;
    TensorTypeInfo info;
  } kTypes[] = {
      {0, {"F32", 1, 4}},       {1, {"F16", 1, 2}},       {2, {"Q4_0", 32, 18}},
      {3, {"Q4_1", 32, 20}},    {6, {"Q5_0", 32, 22}},    {7, {"Q5_1", 32, 24}},
      {8, {"Q8_0", 32, 34}},    {9, {"Q8_1", 32, 36}},    {10, {"Q2_K", 256, 84}},
      {11, {"Q3_K", 256, 110}}, {12, {"Q4_K", 256, 144}}, {13, {"Q5_K", 256, 176}},
      {14, {"Q6_K", 256, 210}}, {15, {"Q8_K", 256, 292}}, {24, {"I8", 1, 1}},
      {30, {"BF16", 1, 2}},
  };
  for (const auto& t : kTypes) {
    if (t.id == type_id) return &t.info;
  }
  return nullptr;
}

const char* tensor_type_name(TensorType type) {
  const TensorTypeInfo* info = tensor_type_info(uint32_t(type));
  return info != nullptr ? info->name : "unknown";
}

uint64_t tensor_row_bytes(TensorType type, uint64_t n) {
  const TensorTypeInfo* info = tensor_type_info(uint32_t(type));
  if (info == nullptr) detail::fail("unknown tensor type id " + std::to_string(uint32_t(type)));
  if (n % info->block_elems != 0) {
    detail::fail("a row of " + std::to_string(n) + " elements is not a whole number of " +
                 info->name + " blocks (" + std::to_string(info->block_elems) + " elements each)");
  }
  return detail::checked_mul(n / info->block_elems, info->block_bytes, "tensor row bytes");
}

const char* gguf_type_name(GgufType type) {
  static const char* const kNames[] = {"UINT8",  "INT8",    "UINT16", "INT16",  "UINT32",
                                       "INT32",  "FLOAT32", "BOOL",   "STRING", "ARRAY",
                                       "UINT64", "INT64",   "FLOAT64"};
  const uint32_t id = uint32_t(type);
  return id < sizeof(kNames) / sizeof(kNames[0]) ? kNames[id] : "unknown";
}

namespace detail {

constexpr uint32_t kGgufDefaultAlignment = 32;
// Arrays of arrays are legal GGUF; deeper nesting than this only serves to exhaust the stack.
constexpr unsigned kGgufMaxArrayDepth = 8;

inline bool gguf_type_known(uint32_t id) {
  return id <= uint32_t(GgufType::FLOAT64);
}

// Bytes a value of this type occupies in a file (scalars), or the least it can occupy
// (a string is at least its 8-byte length, an array its 4-byte type and 8-byte count).
inline uint64_t gguf_min_value_bytes(GgufType type) {
  switch (type) {
    case GgufType::UINT8:
    case GgufType::INT8:
    case GgufType::BOOL:
      return 1;
    case GgufType::UINT16:
    case GgufType::INT16:
      return 2;
    case GgufType::UINT32:
    case GgufType::INT32:
    case GgufType::FLOAT32:
      return 4;
    case GgufType::UINT64:
    case GgufType::INT64:
    case GgufType::FLOAT64:
    case GgufType::STRING:
      return 8;
    case GgufType::ARRAY:
      return 12;
  }
  return 1;
}

// Room to reserve for a count read from a file. The count is only as good as the bytes that
// follow it: a parsed element takes up to 80 times its bytes in the file, so a count that the
// file merely claims must not size an allocation. Reserve a little; grow as elements arrive.
inline size_t gguf_reserve_for(uint64_t count) {
  return size_t(std::min<uint64_t>(count, 4096));
}

// Writes a string for a human: quoted, control bytes escaped, cut after max_bytes (at a
// UTF-8 character boundary).
inline std::string gguf_quote(const std::string& s, size_t max_bytes) {
  size_t n = s.size();
  if (n > max_bytes) {
    n = max_bytes;
    while (n > 0 && (uint8_t(s[n]) & 0xc0) == 0x80) --n;
  }
  std::string out = "\"";
  for (size_t i = 0; i < n; ++i) {
    const char c = s[i];
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (uint8_t(c) < 0x20 || c == 0x7f) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\x%02x", unsigned(uint8_t(c)));
          out += buf;
        } else {
          out += c;
        }
    }
  }
  out += '"';
  if (n < s.size()) out += "... (" + std::to_string(s.size()) + " bytes)";
  return out;
}

// The shortest decimal form that reads back as the same value.
template <typename F>
std::string gguf_float_text(F v) {
  char buf[32];
  for (int precision = 1; precision <= std::numeric_limits<F>::max_digits10; ++precision) {
    std::snprintf(buf, sizeof(buf), "%.*g", precision, double(v));
    if (F(std::strtod(buf, nullptr)) == v || std::isnan(v)) break;
  }
  return buf;
}

}  // namespace detail

GgufValue GgufValue::f32(float v) {
  GgufValue r;
  r.type_ = GgufType::FLOAT32;
  r.float_ = v;
  return r;
}

GgufValue GgufValue::f64(double v) {
  GgufValue r;
  r.type_ = GgufType::FLOAT64;
  r.float_ = v;
  return r;
}

GgufValue GgufValue::string(std::string v) {
  GgufValue r;
  r.type_ = GgufType::STRING;
  r.str_ = std::move(v);
  return r;
}

GgufValue GgufValue::array(GgufType elem_type, std::vector<GgufValue> elems) {
  if (!detail::gguf_type_known(uint32_t(elem_type))) {
    detail::fail("GGUF array of unknown element type " + std::to_string(uint32_t(elem_type)));
  }
  for (size_t i = 0; i < elems.size(); ++i) {
    if (elems[i].type() != elem_type) {
      detail::fail(std::string("GGUF array of ") + gguf_type_name(elem_type) + " has a " +
                   gguf_type_name(elems[i].type()) + " at index " + std::to_string(i));
    }
  }
  GgufValue r;
  r.type_ = GgufType::ARRAY;
  r.array_type_ = elem_type;
  r.arr_ = std::move(elems);
  return r;
}

GgufValue GgufValue::string_array(const std::vector<std::string>& v) {
  std::vector<GgufValue> elems;
  elems.reserve(v.size());
  for (const std::string& s : v) elems.push_back(string(s));
  return array(GgufType::STRING, std::move(elems));
}

GgufValue GgufValue::f32_array(const std::vector<float>& v) {
  std::vector<GgufValue> elems;
  elems.reserve(v.size());
  for (float x : v) elems.push_back(f32(x));
  return array(GgufType::FLOAT32, std::move(elems));
}

GgufValue GgufValue::i32_array(const std::vector<int32_t>& v) {
  std::vector<GgufValue> elems;
  elems.reserve(v.size());
  for (int32_t x : v) elems.push_back(i32(x));
  return array(GgufType::INT32, std::move(elems));
}

bool GgufValue::is_integer() const {
  return detail::gguf_type_is_integer(type_);
}

namespace detail {

bool gguf_type_is_integer(GgufType type) {
  switch (type) {
    case GgufType::UINT8:
    case GgufType::INT8:
    case GgufType::UINT16:
    case GgufType::INT16:
    case GgufType::UINT32:
    case GgufType::INT32:
    case GgufType::UINT64:
    case GgufType::INT64:
      return true;
    default:
      return false;
  }
}

}  // namespace detail

bool GgufValue::operator==(const GgufValue& o) const {
  // Floats compare by bits, so that a NaN read back equals the NaN written.
  return type_ == o.type_ && array_type_ == o.array_type_ && int_ == o.int_ &&
         std::memcmp(&float_, &o.float_, sizeof(float_)) == 0 && str_ == o.str_ && arr_ == o.arr_;
}

std::string GgufValue::to_string(size_t max_elems) const {
  switch (type_) {
    case GgufType::UINT8:
    case GgufType::UINT16:
    case GgufType::UINT32:
    case GgufType::UINT64:
      return std::to_string(as_u64());
    case GgufType::INT8:
    case GgufType::INT16:
    case GgufType::INT32:
    case GgufType::INT64:
      return std::to_string(as_i64());
    case GgufType::BOOL:
      return as_bool() ? "true" : "false";
    case GgufType::FLOAT32:
      return detail::gguf_float_text(float(float_));
    case GgufType::FLOAT64:
      return detail::gguf_float_text(float_);
    case GgufType::STRING:
      return detail::gguf_quote(str_, 120);
    case GgufType::ARRAY: {
      std::string out = "[";
      const size_t shown = std::min(max_elems, arr_.size());
      for (size_t i = 0; i < shown; ++i) {
        if (i > 0) out += ", ";
        out += arr_[i].to_string(max_elems);
      }
      if (shown < arr_.size()) {
        out += (shown > 0 ? ", ... (" : "... (") + std::to_string(arr_.size()) + " in all)";
      }
      return out + "]";
    }
  }
  return "?";
}

std::string TensorInfo::shape_string() const {
  std::string out = "[";
  for (uint32_t d = 0; d < n_dims; ++d) {
    if (d > 0) out += ", ";
    out += std::to_string(ne[d]);
  }
  return out + "]";
}

// ---- reading ----

namespace detail {

inline std::string gguf_read_string(Cursor& c, const char* what) {
  const uint64_t start = c.offset();
  const uint64_t len = c.read<uint64_t>(what);
  if (len > c.remaining()) {
    fail_at(c.origin(), start,
            std::string(what) + ": a string of " + std::to_string(len) +
                " bytes runs past the end of the file (" + std::to_string(c.remaining()) +
                " bytes left)");
  }
  const uint8_t* p = c.take(len, what);
  return std::string(reinterpret_cast<const char*>(p), size_t(len));
}

// Reads one value of the given type; `what` names the key for error messages.
inline GgufValue gguf_read_value(Cursor& c, uint32_t type_id, unsigned depth,
                                 const std::string& what) {
  const char* w = what.c_str();
  switch (GgufType(type_id)) {
    case GgufType::UINT8:
      return GgufValue::u8(c.read<uint8_t>(w));
    case GgufType::INT8:
      return GgufValue::i8(c.read<int8_t>(w));
    case GgufType::UINT16:
      return GgufValue::u16(c.read<uint16_t>(w));
    case GgufType::INT16:
      return GgufValue::i16(c.read<int16_t>(w));
    case GgufType::UINT32:
      return GgufValue::u32(c.read<uint32_t>(w));
    case GgufType::INT32:
      return GgufValue::i32(c.read<int32_t>(w));
    case GgufType::UINT64:
      return GgufValue::u64(c.read<uint64_t>(w));
    case GgufType::INT64:
      return GgufValue::i64(c.read<int64_t>(w));
    case GgufType::FLOAT32:
      return GgufValue::f32(c.read<float>(w));
    case GgufType::FLOAT64:
      return GgufValue::f64(c.read<double>(w));
    case GgufType::BOOL: {
      const uint8_t b = c.read<uint8_t>(w);
      if (b > 1) {
        fail_at(c.origin(), c.offset() - 1,
                what + ": a BOOL must be 0 or 1, not " + std::to_string(b));
      }
      return GgufValue::boolean(b != 0);
    }
    case GgufType::STRING:
      return GgufValue::string(gguf_read_string(c, w));
    case GgufType::ARRAY: {
      const uint64_t start = c.offset();
      if (depth >= kGgufMaxArrayDepth) {
        fail_at(c.origin(), start,
                what + ": arrays nested more than " + std::to_string(kGgufMaxArrayDepth) + " deep");
      }
      const uint32_t elem_id = c.read<uint32_t>(w);
      if (!gguf_type_known(elem_id)) {
        fail_at(c.origin(), start,
                what + ": unknown array element type " + std::to_string(elem_id));
      }
      const GgufType elem = GgufType(elem_id);
      const uint64_t count = c.read<uint64_t>(w);
      // Every element takes at least one byte of the file: refuse counts the file cannot hold
      // before allocating anything for them.
      if (count > c.remaining() / gguf_min_value_bytes(elem)) {
        fail_at(c.origin(), start,
                what + ": an array of " + std::to_string(count) + " " + gguf_type_name(elem) +
                    " elements cannot fit in the " + std::to_string(c.remaining()) + " bytes left");
      }
      std::vector<GgufValue> elems;
      elems.reserve(gguf_reserve_for(count));
      for (uint64_t i = 0; i < count; ++i) {
        elems.push_back(gguf_read_value(c, elem_id, depth + 1, what));
      }
      return GgufValue::array(elem, std::move(elems));
    }
  }
  fail_at(c.origin(), c.offset() - 4, what + ": unknown value type " + std::to_string(type_id));
}

// The least a tensor info occupies: name length, n_dims, one dimension, type, offset.
constexpr uint64_t kGgufMinTensorInfoBytes = 8 + 4 + 8 + 4 + 8;
// The least a metadata entry occupies: key length, value type, a one-byte value.
constexpr uint64_t kGgufMinKvBytes = 8 + 4 + 1;

}  // namespace detail

Gguf Gguf::open(const std::string& path) {
  Gguf g;
  g.file_ = std::make_shared<MappedFile>(MappedFile::open(path));
  g.base_ = g.file_->data();
  g.size_ = g.file_->size();
  g.origin_ = path;
  g.parse_all();
  return g;
}

Gguf Gguf::parse(const uint8_t* data, uint64_t size, std::string origin) {
  Gguf g;
  g.base_ = data;
  g.size_ = size;
  g.origin_ = std::move(origin);
  g.parse_all();
  return g;
}

void Gguf::parse_all() {
  using detail::fail_at;
  detail::Cursor c(base_, size_, origin_);
  const uint8_t* magic = c.take(4, "the GGUF magic");
  if (std::memcmp(magic, "GGUF", 4) != 0) {
    fail_at(origin_, 0,
            "not a GGUF file: it starts with " +
                detail::gguf_quote(std::string(reinterpret_cast<const char*>(magic), 4), 4) +
                ", expected \"GGUF\"");
  }
  version_ = c.read<uint32_t>("the GGUF version");
  if (version_ == 1) {
    fail_at(origin_, 4,
            "GGUF version 1 is not supported (sllm reads versions 2 and 3); convert the model "
            "again with a current tool");
  }
  if (version_ != 2 && version_ != 3) {
    const uint32_t swapped = __builtin_bswap32(version_);
    fail_at(origin_, 4,
            swapped == 2 || swapped == 3 ? std::string("big-endian GGUF files are not supported")
                                         : "unsupported GGUF version " + std::to_string(version_) +
                                               " (sllm reads versions 2 and 3)");
  }
  const uint64_t n_tensors = c.read<uint64_t>("the tensor count");
  const uint64_t n_kv = c.read<uint64_t>("the metadata count");
  if (n_tensors > c.remaining() / detail::kGgufMinTensorInfoBytes) {
    fail_at(origin_, 8,
            "tensor count " + std::to_string(n_tensors) + " is impossible: only " +
                std::to_string(c.remaining()) + " bytes follow the header");
  }
  if (n_kv > c.remaining() / detail::kGgufMinKvBytes) {
    fail_at(origin_, 16,
            "metadata count " + std::to_string(n_kv) + " is impossible: only " +
                std::to_string(c.remaining()) + " bytes follow the header");
  }

  std::vector<uint64_t> kv_offsets;
  kv_offsets.reserve(detail::gguf_reserve_for(n_kv));
  kv_.reserve(detail::gguf_reserve_for(n_kv));
  for (uint64_t i = 0; i < n_kv; ++i) {
    const uint64_t start = c.offset();
    std::string key = detail::gguf_read_string(c, "a metadata key");
    if (kv_index_.count(key) != 0) fail_at(origin_, start, "duplicate metadata key '" + key + "'");
    const std::string what = "metadata key '" + key + "'";
    const uint32_t type_id = c.read<uint32_t>(what.c_str());
    GgufValue value = detail::gguf_read_value(c, type_id, 0, what);
    kv_index_.emplace(key, kv_.size());
    kv_.emplace_back(std::move(key), std::move(value));
    kv_offsets.push_back(start);
  }
  alignment_ = detail::kGgufDefaultAlignment;
  if (const auto it = kv_index_.find("general.alignment"); it != kv_index_.end()) {
    const GgufValue& v = kv_[it->second].second;
    if (v.type() != GgufType::UINT32) {
      fail_at(origin_, kv_offsets[it->second],
              std::string("general.alignment must be a UINT32, not ") + gguf_type_name(v.type()));
    }
    if (!detail::is_power_of_two(v.as_u64())) {
      fail_at(origin_, kv_offsets[it->second],
              "general.alignment must be a nonzero power of two, not " + v.to_string());
    }
    alignment_ = uint32_t(v.as_u64());
  }

  std::vector<uint64_t> info_offsets;
  info_offsets.reserve(detail::gguf_reserve_for(n_tensors));
  tensors_.reserve(detail::gguf_reserve_for(n_tensors));
  for (uint64_t i = 0; i < n_tensors; ++i) {
    const uint64_t start = c.offset();
    TensorInfo t;
    t.name = detail::gguf_read_string(c, "a tensor name");
    if (tensor_index_.count(t.name) != 0) {
      fail_at(origin_, start, "duplicate tensor name '" + t.name + "'");
    }
    const std::string what = "tensor '" + t.name + "'";
    t.n_dims = c.read<uint32_t>(what.c_str());
    if (t.n_dims == 0 || t.n_dims > 4) {
      fail_at(origin_, start,
              what + " has " + std::to_string(t.n_dims) + " dimensions (sllm reads 1 to 4)");
    }
    for (uint32_t d = 0; d < t.n_dims; ++d) t.ne[d] = c.read<uint64_t>(what.c_str());
    uint64_t n_elements = 1;
    for (uint32_t d = 0; d < t.n_dims; ++d) {
      if (t.ne[d] == 0) {
        fail_at(origin_, start, what + " has a zero dimension: " + t.shape_string());
      }
      if (n_elements > UINT64_MAX / t.ne[d]) {
        fail_at(origin_, start,
                what + " has more elements than 64 bits can count: " + t.shape_string());
      }
      n_elements *= t.ne[d];
    }
    const uint32_t type_id = c.read<uint32_t>(what.c_str());
    const TensorTypeInfo* type = tensor_type_info(type_id);
    if (type == nullptr) {
      fail_at(origin_, start, what + " has unknown type id " + std::to_string(type_id));
    }
    t.type = TensorType(type_id);
    // Whole tensors must be whole blocks; rows need not be (an old ggml quirk lets Q8_0
    // blocks run across rows). tensor_row_bytes refuses such rows where rows matter.
    if (n_elements % type->block_elems != 0) {
      fail_at(origin_, start,
              what + " " + t.shape_string() + " has " + std::to_string(n_elements) +
                  " elements, not a whole number of " + type->name + " blocks of " +
                  std::to_string(type->block_elems));
    }
    const uint64_t n_blocks = n_elements / type->block_elems;
    if (n_blocks > size_ / type->block_bytes) {
      fail_at(origin_, start,
              what + " " + t.shape_string() + " " + type->name + " needs more bytes than the " +
                  std::to_string(size_) + " of the whole file");
    }
    t.n_bytes = n_blocks * type->block_bytes;
    t.offset = c.read<uint64_t>(what.c_str());
    tensor_index_.emplace(t.name, tensors_.size());
    tensors_.push_back(std::move(t));
    info_offsets.push_back(start);
  }
  data_offset_ = detail::align_up(c.offset(), alignment_);

  for (size_t i = 0; i < tensors_.size(); ++i) {
    TensorInfo& t = tensors_[i];
    if (t.offset % alignment_ != 0) {
      fail_at(origin_, info_offsets[i],
              "tensor '" + t.name + "' data offset " + std::to_string(t.offset) +
                  " is not a multiple of the alignment " + std::to_string(alignment_));
    }
    const uint64_t data_bytes = data_offset_ <= size_ ? size_ - data_offset_ : 0;
    if (t.offset > data_bytes || t.n_bytes > data_bytes - t.offset) {
      fail_at(origin_, info_offsets[i],
              "tensor '" + t.name + "' data (" + std::to_string(t.n_bytes) +
                  " bytes at data offset " + std::to_string(t.offset) +
                  ") runs past the end of the file (the data section holds " +
                  std::to_string(data_bytes) + " bytes)");
    }
    t.data = base_ + data_offset_ + t.offset;
  }
  std::vector<size_t> order(tensors_.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return tensors_[a].offset < tensors_[b].offset; });
  for (size_t k = 1; k < order.size(); ++k) {
    const TensorInfo& a = tensors_[order[k - 1]];
    const TensorInfo& b = tensors_[order[k]];
    if (a.offset + a.n_bytes > b.offset) {
      fail_at(origin_, info_offsets[order[k]],
              "tensors '" + a.name + "' (data offset " + std::to_string(a.offset) + ", " +
                  std::to_string(a.n_bytes) + " bytes) and '" + b.name + "' (data offset " +
                  std::to_string(b.offset) + ") overlap");
    }
  }
}

const GgufValue* Gguf::find(std::string_view key) const {
  const auto it = kv_index_.find(key);
  return it == kv_index_.end() ? nullptr : &kv_[it->second].second;
}

const TensorInfo* Gguf::find_tensor(std::string_view name) const {
  const auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const TensorInfo& Gguf::tensor(std::string_view name) const {
  const TensorInfo* t = find_tensor(name);
  if (t == nullptr) detail::fail(origin_ + ": no tensor named '" + std::string(name) + "'");
  return *t;
}

// ---- typed access ----

namespace detail {

template <typename T>
const char* gguf_integer_name() {
  constexpr bool kSigned = std::is_signed<T>::value;
  switch (sizeof(T)) {
    case 1:
      return kSigned ? "INT8" : "UINT8";
    case 2:
      return kSigned ? "INT16" : "UINT16";
    case 4:
      return kSigned ? "INT32" : "UINT32";
    default:
      return kSigned ? "INT64" : "UINT64";
  }
}

// Whether a value of type t can be read as T (integers still have to fit).
template <typename T>
bool gguf_accepts(GgufType t) {
  if constexpr (std::is_same<T, bool>::value) {
    return t == GgufType::BOOL;
  } else if constexpr (std::is_same<T, std::string>::value) {
    return t == GgufType::STRING;
  } else if constexpr (std::is_floating_point<T>::value) {
    return t == GgufType::FLOAT32 || t == GgufType::FLOAT64 || gguf_type_is_integer(t);
  } else {
    return gguf_type_is_integer(t);
  }
}

// What T reads, for messages: "... is STRING, expected <this>".
template <typename T>
std::string gguf_expected() {
  if constexpr (std::is_same<T, bool>::value) {
    return "BOOL";
  } else if constexpr (std::is_same<T, std::string>::value) {
    return "STRING";
  } else if constexpr (std::is_floating_point<T>::value) {
    return "FLOAT32, FLOAT64 or an integer type";
  } else {
    return std::string(gguf_integer_name<T>()) + " or another integer type";
  }
}

inline std::string gguf_describe(const GgufValue& v) {
  if (v.type() != GgufType::ARRAY) return gguf_type_name(v.type());
  return std::string("an ARRAY of ") + gguf_type_name(v.array_type());
}

// v's type is accepted for T; where + (index) name the value in an Error when it does not fit.
template <typename T>
T gguf_convert(const GgufValue& v, const std::string& where, size_t index) {
  if constexpr (std::is_same<T, bool>::value) {
    return v.as_bool();
  } else if constexpr (std::is_same<T, std::string>::value) {
    return v.as_string();
  } else {
    const bool is_unsigned = v.type() == GgufType::UINT8 || v.type() == GgufType::UINT16 ||
                             v.type() == GgufType::UINT32 || v.type() == GgufType::UINT64;
    if constexpr (std::is_floating_point<T>::value) {
      if (v.is_float()) return T(v.as_f64());
      return is_unsigned ? T(v.as_u64()) : T(v.as_i64());
    } else {
      using Limits = std::numeric_limits<T>;
      const bool fits =
          is_unsigned ? v.as_u64() <= uint64_t(Limits::max())
                      : v.as_i64() >= int64_t(Limits::min()) &&
                            (v.as_i64() < 0 || uint64_t(v.as_i64()) <= uint64_t(Limits::max()));
      if (!fits) {
        fail(where + (index == size_t(-1) ? "" : " element " + std::to_string(index)) + " = " +
             v.to_string() + " does not fit in " + gguf_integer_name<T>());
      }
      return is_unsigned ? T(v.as_u64()) : T(v.as_i64());
    }
  }
}

}  // namespace detail

template <typename T>
T Gguf::get(std::string_view key) const {
  const std::string where = origin_ + ": metadata key '" + std::string(key) + "'";
  const GgufValue* v = find(key);
  if (v == nullptr) detail::fail(where + " is missing");
  if (!detail::gguf_accepts<T>(v->type())) {
    detail::fail(where + " is " + detail::gguf_describe(*v) + ", expected " +
                 detail::gguf_expected<T>());
  }
  return detail::gguf_convert<T>(*v, where, size_t(-1));
}

template <typename T>
std::vector<T> Gguf::get_array(std::string_view key) const {
  const std::string where = origin_ + ": metadata key '" + std::string(key) + "'";
  const GgufValue* v = find(key);
  if (v == nullptr) detail::fail(where + " is missing");
  if (v->type() != GgufType::ARRAY || !detail::gguf_accepts<T>(v->array_type())) {
    detail::fail(where + " is " + detail::gguf_describe(*v) + ", expected an ARRAY of " +
                 detail::gguf_expected<T>());
  }
  std::vector<T> out;
  out.reserve(v->as_array().size());
  for (size_t i = 0; i < v->as_array().size(); ++i) {
    out.push_back(detail::gguf_convert<T>(v->as_array()[i], where, i));
  }
  return out;
}

#define SLLM_GGUF_GETTERS_(T)                          \
  template T Gguf::get<T>(std::string_view key) const; \
  template std::vector<T> Gguf::get_array<T>(std::string_view key) const;
SLLM_GGUF_GETTERS_(bool)
SLLM_GGUF_GETTERS_(uint8_t)
SLLM_GGUF_GETTERS_(int8_t)
SLLM_GGUF_GETTERS_(uint16_t)
SLLM_GGUF_GETTERS_(int16_t)
SLLM_GGUF_GETTERS_(uint32_t)
SLLM_GGUF_GETTERS_(int32_t)
SLLM_GGUF_GETTERS_(uint64_t)
SLLM_GGUF_GETTERS_(int64_t)
SLLM_GGUF_GETTERS_(float)
SLLM_GGUF_GETTERS_(double)
SLLM_GGUF_GETTERS_(std::string)
#undef SLLM_GGUF_GETTERS_

// ---- writing ----

namespace detail {

inline void gguf_check_alignment(uint64_t alignment) {
  if (!is_power_of_two(alignment) || alignment > UINT32_MAX) {
    fail("GGUF alignment must be a nonzero power of two, not " + std::to_string(alignment));
  }
}

// Appends the little-endian GGUF encoding of values to a byte string.
class GgufEncoder {
 public:
  std::string bytes;
  template <typename T>
  void put(T v) {
    bytes.append(reinterpret_cast<const char*>(&v), sizeof(v));
  }
  void put_string(const std::string& s) {
    put<uint64_t>(s.size());
    bytes += s;
  }
  void put_value(const GgufValue& v) {
    switch (v.type()) {
      case GgufType::UINT8:
      case GgufType::INT8:
      case GgufType::BOOL:
        put(uint8_t(v.as_u64()));
        break;
      case GgufType::UINT16:
      case GgufType::INT16:
        put(uint16_t(v.as_u64()));
        break;
      case GgufType::UINT32:
      case GgufType::INT32:
        put(uint32_t(v.as_u64()));
        break;
      case GgufType::UINT64:
      case GgufType::INT64:
        put(v.as_u64());
        break;
      case GgufType::FLOAT32:
        put(float(v.as_f64()));
        break;
      case GgufType::FLOAT64:
        put(v.as_f64());
        break;
      case GgufType::STRING:
        put_string(v.as_string());
        break;
      case GgufType::ARRAY:
        put(uint32_t(v.array_type()));
        put<uint64_t>(v.as_array().size());
        for (const GgufValue& e : v.as_array()) put_value(e);
        break;
    }
  }
};

}  // namespace detail

GgufWriter::GgufWriter(uint32_t alignment) : alignment_(alignment) {
  detail::gguf_check_alignment(alignment);
  if (alignment != detail::kGgufDefaultAlignment) {
    kv_.emplace_back("general.alignment", GgufValue::u32(alignment));
  }
}

void GgufWriter::set(const std::string& key, GgufValue value) {
  if (key == "general.alignment") {
    if (value.type() != GgufType::UINT32) {
      detail::fail(std::string("general.alignment must be a UINT32, not ") +
                   gguf_type_name(value.type()));
    }
    detail::gguf_check_alignment(value.as_u64());
    alignment_ = uint32_t(value.as_u64());
  }
  for (auto& kv : kv_) {
    if (kv.first == key) {
      kv.second = std::move(value);
      return;
    }
  }
  kv_.emplace_back(key, std::move(value));
}

namespace detail {

// Checks a tensor for the writer and returns its info (without offset or data).
inline TensorInfo gguf_writer_tensor(const std::string& name, TensorType type,
                                     const std::vector<uint64_t>& dims) {
  const std::string what = "GGUF writer: tensor '" + name + "'";
  const TensorTypeInfo* info = tensor_type_info(uint32_t(type));
  if (info == nullptr) fail(what + " has unknown type id " + std::to_string(uint32_t(type)));
  if (dims.empty() || dims.size() > 4) {
    fail(what + " has " + std::to_string(dims.size()) + " dimensions (GGUF holds 1 to 4)");
  }
  TensorInfo t;
  t.name = name;
  t.type = type;
  t.n_dims = uint32_t(dims.size());
  uint64_t n_elements = 1;
  for (size_t d = 0; d < dims.size(); ++d) {
    t.ne[d] = dims[d];
    n_elements = checked_mul(n_elements, dims[d], "a tensor's element count");
  }
  if (n_elements == 0) fail(what + " has a zero dimension: " + t.shape_string());
  if (n_elements % info->block_elems != 0) {
    fail(what + " " + t.shape_string() + " is not a whole number of " + info->name + " blocks of " +
         std::to_string(info->block_elems));
  }
  t.n_bytes = checked_mul(n_elements / info->block_elems, info->block_bytes, "tensor bytes");
  return t;
}

}  // namespace detail

void GgufWriter::add_tensor(const std::string& name, TensorType type,
                            const std::vector<uint64_t>& dims, const void* data, uint64_t n_bytes) {
  Pending p;
  p.info = detail::gguf_writer_tensor(name, type, dims);
  if (n_bytes != p.info.n_bytes) {
    detail::fail("GGUF writer: tensor '" + name + "' " + p.info.shape_string() + " " +
                 tensor_type_name(type) + " needs " + std::to_string(p.info.n_bytes) +
                 " bytes, got " + std::to_string(n_bytes));
  }
  if (data == nullptr) detail::fail("GGUF writer: tensor '" + name + "' has no data");
  p.data = data;
  add_pending(std::move(p));
}

void GgufWriter::add_tensor(const std::string& name, TensorType type,
                            const std::vector<uint64_t>& dims,
                            std::function<void(uint8_t* dst)> fill) {
  Pending p;
  p.info = detail::gguf_writer_tensor(name, type, dims);
  if (!fill) detail::fail("GGUF writer: tensor '" + name + "' has no fill function");
  p.fill = std::move(fill);
  add_pending(std::move(p));
}

void GgufWriter::add_pending(Pending p) {
  for (const Pending& t : tensors_) {
    if (t.info.name == p.info.name) {
      detail::fail("GGUF writer: duplicate tensor name '" + p.info.name + "'");
    }
  }
  tensors_.push_back(std::move(p));
}

void GgufWriter::write(const std::string& path) const {
  detail::GgufEncoder head;
  head.bytes.append("GGUF", 4);
  head.put<uint32_t>(3);
  head.put<uint64_t>(tensors_.size());
  head.put<uint64_t>(kv_.size());
  for (const auto& kv : kv_) {
    head.put_string(kv.first);
    head.put(uint32_t(kv.second.type()));
    head.put_value(kv.second);
  }
  uint64_t offset = 0;
  for (const Pending& t : tensors_) {
    head.put_string(t.info.name);
    head.put(t.info.n_dims);
    for (uint32_t d = 0; d < t.info.n_dims; ++d) head.put(t.info.ne[d]);
    head.put(uint32_t(t.info.type));
    head.put(offset);
    offset =
        detail::align_up(detail::checked_add(offset, t.info.n_bytes, "the data size"), alignment_);
  }
  // The data section starts aligned; a file without tensors ends after its metadata (as the
  // files that llama.cpp writes do).
  if (!tensors_.empty()) {
    head.bytes.resize(size_t(detail::align_up(head.bytes.size(), alignment_)), '\0');
  }

  detail::OutputFile out(path);
  out.write(head.bytes.data(), head.bytes.size());
  const std::vector<uint8_t> zeros(alignment_, 0);
  std::vector<uint8_t> buffer;
  // Each tensor is followed by zeros up to the alignment, the last one too (as llama.cpp and
  // gguf-py write them).
  for (const Pending& t : tensors_) {
    const void* src = t.data;
    if (t.fill) {
      buffer.assign(size_t(t.info.n_bytes), 0);
      t.fill(buffer.data());
      src = buffer.data();
    }
    out.write(src, t.info.n_bytes);
    out.write(zeros.data(), detail::align_up(t.info.n_bytes, alignment_) - t.info.n_bytes);
  }
  out.commit();
}

}  // namespace sllm
