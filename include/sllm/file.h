// File layer: a read-only memory map and a cursor that never reads past it.
namespace sllm {

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
  [[noreturn]] void fail_at(const std::string& message) const;

 private:
  const uint8_t* begin_;
  uint64_t size_;
  uint64_t pos_ = 0;
  std::string origin_;
};

}  // namespace detail
}  // namespace sllm
