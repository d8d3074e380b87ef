// File layer: a read-only memory map and a cursor that never reads past it.
namespace sllm {

// Files are read and written by copying little-endian bytes into native integers.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "sllm supports little-endian hosts");

// A whole file mapped read-only (POSIX mmap). Move-only; unmaps on destruction.
class MappedFile {
 public:
  MappedFile() = default;
  static MappedFile open(const std::string& path);  // Error names the path and errno text
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }
  // Hints the kernel that [offset, offset+bytes) will be read soon / sequentially.
  void advise_willneed(uint64_t offset, uint64_t bytes) const;

 private:
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
  std::string path_;
};

namespace detail {

// A file written under a temporary name beside its final path and renamed into place by
// commit(), so that no reader ever sees a partial file under the final name. Destroying it
// uncommitted (say, after an exception) removes the temporary file.
class OutputFile {
 public:
  explicit OutputFile(const std::string& path);
  ~OutputFile();
  OutputFile(const OutputFile&) = delete;
  OutputFile& operator=(const OutputFile&) = delete;
  void write(const void* data, uint64_t n);  // Error naming the path on failure
  void commit();                             // sync, close, rename, sync the directory

 private:
  std::string path_, temp_path_;
  int fd_ = -1;
};

inline bool is_power_of_two(uint64_t v) {
  return v != 0 && (v & (v - 1)) == 0;
}
// v rounded up to a multiple of alignment (any nonzero value); Error if that overflows.
inline uint64_t align_up(uint64_t v, uint64_t alignment) {
  return checked_add(v, (alignment - v % alignment) % alignment, "an aligned offset");
}

// Error "cannot ACTION 'PATH': strerror(err)".
[[noreturn]] void fail_errno(const char* action, const std::string& path, int err);
// Error "ORIGIN: offset N: MESSAGE", the form of every complaint about a file's contents.
[[noreturn]] void fail_at(const std::string& origin, uint64_t offset, const std::string& message);

// Reads little-endian values from a byte range; every read is bounds-checked and a short
// read is an Error that says what was being read and at which offset.
class Cursor {
 public:
  Cursor(const uint8_t* begin, uint64_t size, std::string origin)
      : begin_(begin), size_(size), origin_(std::move(origin)) {}
  uint64_t offset() const { return pos_; }
  uint64_t remaining() const { return size_ - pos_; }
  // Returns a pointer to the next n bytes and advances past them.
  const uint8_t* take(uint64_t n, const char* what);
  template <typename T>
  T read(const char* what) {
    T v;
    std::memcpy(&v, take(sizeof(T), what), sizeof(T));
    return v;
  }
  const std::string& origin() const { return origin_; }
  // Error at the current offset.
  [[noreturn]] void fail_at(const std::string& message) const;

 private:
  const uint8_t* begin_;
  uint64_t size_;
  uint64_t pos_ = 0;
  std::string origin_;
};

}  // namespace detail
}  // namespace sllm
