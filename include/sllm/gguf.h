// GGUF layer: reader (v2, v3) and writer. Every count, length, offset, dimension and type
// read from a file is checked before it is used; tensors are views into the memory map.
// Version 1 files (32-bit counts, 2023) are refused with an Error that names the version.
#include <map>

namespace sllm {

// Tensor element types, with ggml's numbering (the value stored in GGUF files).
enum class TensorType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  I8 = 24,  // int8; also the KV cache's int8 entries (with a scale per token and head)
  BF16 = 30,
};

struct TensorTypeInfo {
  const char* name;      // "Q4_0"
  uint32_t block_elems;  // elements per block (1 for plain float types)
  uint32_t block_bytes;  // bytes per block
};
// Returns nullptr for a type id sllm does not know.
const TensorTypeInfo* tensor_type_info(uint32_t type_id);
const char* tensor_type_name(TensorType type);
// Bytes of a row of n elements; Error when n is not a whole number of blocks. The reader
// accepts a tensor whose rows are not whole blocks as long as the whole tensor is (old ggml
// files let Q8_0 blocks run across 172-wide rows); layers that work row by row call this.
uint64_t tensor_row_bytes(TensorType type, uint64_t n);

// Metadata value types, as numbered in GGUF.
enum class GgufType : uint32_t {
  UINT8 = 0,
  INT8 = 1,
  UINT16 = 2,
  INT16 = 3,
  UINT32 = 4,
  INT32 = 5,
  FLOAT32 = 6,
  BOOL = 7,
  STRING = 8,
  ARRAY = 9,
  UINT64 = 10,
  INT64 = 11,
  FLOAT64 = 12,
};
const char* gguf_type_name(GgufType type);
namespace detail {
bool gguf_type_is_integer(GgufType type);  // the eight integer types (not BOOL)
}  // namespace detail

// One metadata value: a scalar, a string, or an array of scalars or strings (or arrays).
class GgufValue {
 public:
  GgufValue() = default;
  static GgufValue u8(uint8_t v) { return scalar(GgufType::UINT8, v); }
  static GgufValue i8(int8_t v) { return scalar(GgufType::INT8, v); }
  static GgufValue u16(uint16_t v) { return scalar(GgufType::UINT16, v); }
  static GgufValue i16(int16_t v) { return scalar(GgufType::INT16, v); }
  static GgufValue u32(uint32_t v) { return scalar(GgufType::UINT32, v); }
  static GgufValue i32(int32_t v) { return scalar(GgufType::INT32, v); }
  static GgufValue u64(uint64_t v) { return scalar(GgufType::UINT64, v); }
  static GgufValue i64(int64_t v) { return scalar(GgufType::INT64, v); }
  static GgufValue f32(float v);
  static GgufValue f64(double v);
  static GgufValue boolean(bool v) { return scalar(GgufType::BOOL, v ? 1 : 0); }
  static GgufValue string(std::string v);
  // An array whose elements all have type elem_type (checked).
  static GgufValue array(GgufType elem_type, std::vector<GgufValue> elems);
  static GgufValue string_array(const std::vector<std::string>& v);
  static GgufValue f32_array(const std::vector<float>& v);
  static GgufValue i32_array(const std::vector<int32_t>& v);

  GgufType type() const { return type_; }
  GgufType array_type() const { return array_type_; }  // element type, for arrays
  bool is_integer() const;
  bool is_float() const { return type_ == GgufType::FLOAT32 || type_ == GgufType::FLOAT64; }
  // Scalar accessors (no range checks; use Gguf::get for checked, named access).
  int64_t as_i64() const { return int_; }
  uint64_t as_u64() const { return uint64_t(int_); }
  double as_f64() const { return float_; }
  bool as_bool() const { return int_ != 0; }
  const std::string& as_string() const { return str_; }
  const std::vector<GgufValue>& as_array() const { return arr_; }

  bool operator==(const GgufValue& o) const;
  bool operator!=(const GgufValue& o) const { return !(*this == o); }
  // Short human-readable form: strings quoted and escaped, cut after 120 bytes; arrays
  // longer than max_elems cut with their length ("[1, 2, ... (512 in all)]").
  std::string to_string(size_t max_elems = 8) const;

 private:
  static GgufValue scalar(GgufType t, int64_t v) {
    GgufValue r;
    r.type_ = t;
    r.int_ = v;
    return r;
  }
  GgufType type_ = GgufType::UINT8;
  GgufType array_type_ = GgufType::UINT8;
  int64_t int_ = 0;  // all integer types and bool (uint64 stored bit-exactly)
  double float_ = 0;
  std::string str_;
  std::vector<GgufValue> arr_;
};

struct TensorInfo {
  std::string name;
  TensorType type = TensorType::F32;
  uint32_t n_dims = 0;
  uint64_t ne[4] = {1, 1, 1, 1};  // ne[0] is the row length (fastest-varying), as in ggml
  uint64_t offset = 0;            // from the start of the data section
  uint64_t n_bytes = 0;
  const uint8_t* data = nullptr;  // view into the memory map, aligned as the file says
  uint64_t n_elements() const { return ne[0] * ne[1] * ne[2] * ne[3]; }
  uint64_t n_rows() const { return ne[1] * ne[2] * ne[3]; }
  std::string shape_string() const;  // "[64, 512]"
};

// A GGUF file opened for reading. Owns the memory map; tensor data pointers stay valid for
// the lifetime of this object (moving it keeps them valid).
class Gguf {
 public:
  static Gguf open(const std::string& path);
  // Parses bytes already in memory (not copied; they must outlive the Gguf). For tests/fuzzing.
  static Gguf parse(const uint8_t* data, uint64_t size, std::string origin);

  uint32_t version() const { return version_; }
  uint32_t alignment() const { return alignment_; }
  // Where the tensor data starts: the end of the tensor infos, aligned. A file without
  // tensors may end before it.
  uint64_t data_offset() const { return data_offset_; }
  uint64_t file_size() const { return size_; }
  const std::string& path() const { return origin_; }

  // Metadata in file order.
  const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return kv_; }
  bool has(std::string_view key) const { return find(key) != nullptr; }
  const GgufValue* find(std::string_view key) const;
  // Typed access: Error names the file and key when it is missing, has an incompatible type
  // or does not fit. Integer types convert when the value fits; float and double accept
  // FLOAT32, FLOAT64 and integers; bool only BOOL; std::string only STRING.
  // T: bool, uint8..uint64, int8..int64, float, double, std::string (instantiated once in the
  // implementation; other types do not link).
  template <typename T>
  T get(std::string_view key) const;
  template <typename T>
  T get_or(std::string_view key, T fallback) const {
    return has(key) ? get<T>(key) : fallback;
  }
  // Arrays: T as above (elements checked one by one).
  template <typename T>
  std::vector<T> get_array(std::string_view key) const;

  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find_tensor(std::string_view name) const;
  const TensorInfo& tensor(std::string_view name) const;  // Error when missing

 private:
  std::shared_ptr<MappedFile> file_;  // null when parsing caller-owned bytes
  const uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
  std::string origin_;
  uint32_t version_ = 0;
  uint32_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<std::pair<std::string, GgufValue>> kv_;
  std::map<std::string, size_t, std::less<>> kv_index_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> tensor_index_;
  void parse_all();
};

// Builds a GGUF v3 file as llama.cpp writes them: metadata in insertion order, tensor infos,
// then each tensor's data padded to the alignment. write() goes to a new temporary file beside
// path, syncs it and renames it into place, so a failure (which throws, and removes the
// temporary file) never leaves a partial file under the final name.
class GgufWriter {
 public:
  // A nonzero power of two; other than 32 it is written as general.alignment (the first key).
  explicit GgufWriter(uint32_t alignment = 32);
  // Replaces an existing key in place. Setting general.alignment (a UINT32) sets the alignment.
  void set(const std::string& key, GgufValue value);
  // Tensor dims as ggml counts them: dims[0] is the row length. data must hold exactly the
  // bytes for that type and shape, and stay alive until write() returns.
  void add_tensor(const std::string& name, TensorType type, const std::vector<uint64_t>& dims,
                  const void* data, uint64_t n_bytes);
  // Same, but the bytes are produced when writing (for streaming conversion): fill(dst) must
  // write all the bytes of that type and shape. What fill() throws, write() throws.
  void add_tensor(const std::string& name, TensorType type, const std::vector<uint64_t>& dims,
                  std::function<void(uint8_t* dst)> fill);
  void write(const std::string& path) const;

 private:
  struct Pending {
    TensorInfo info;
    const void* data = nullptr;
    std::function<void(uint8_t*)> fill;
  };
  void add_pending(Pending p);
  uint32_t alignment_;
  std::vector<std::pair<std::string, GgufValue>> kv_;
  std::vector<Pending> tensors_;
};

}  // namespace sllm
