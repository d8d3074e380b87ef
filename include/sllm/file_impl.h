#include <algorithm>
#include <atomic>
#include <random>
#include <cerrno>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace sllm {
namespace detail {

void fail_errno(const char* action, const std::string& path, int err) {
  fail(std::string("cannot ") + action + " '" + path + "': " + std::strerror(err));
}

void fail_at(const std::string& origin, uint64_t offset, const std::string& message) {
  fail(origin + ": offset " + std::to_string(offset) + ": " + message);
}

}  // namespace detail

MappedFile MappedFile::open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) detail::fail_errno("open", path, errno);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    detail::fail_errno("stat", path, err);
  }
  if (S_ISDIR(st.st_mode)) {
    ::close(fd);
    detail::fail_errno("read", path, EISDIR);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    detail::fail("cannot read '" + path + "': not a regular file");
  }
  if (st.st_size == 0) {
    ::close(fd);
    detail::fail("cannot read '" + path + "': the file is empty");
  }
  void* map = ::mmap(nullptr, size_t(st.st_size), PROT_READ, MAP_PRIVATE, fd, 0);
  const int err = errno;
  ::close(fd);  // the mapping keeps the file open
  if (map == MAP_FAILED) detail::fail_errno("map", path, err);
  MappedFile f;
  f.data_ = static_cast<const uint8_t*>(map);
  f.size_ = uint64_t(st.st_size);
  f.path_ = path;
  return f;
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
}

MappedFile::MappedFile(MappedFile&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      path_(std::move(other.path_)) {}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    path_ = std::move(other.path_);
  }
  return *this;
}

void MappedFile::advise_willneed(uint64_t offset, uint64_t bytes) const {
  if (data_ == nullptr || offset >= size_) return;
  bytes = std::min(bytes, size_ - offset);
  // madvise wants a page-aligned start; widen the range down to the page boundary.
  const uint64_t page = uint64_t(::sysconf(_SC_PAGESIZE));
  const uint64_t start = offset / page * page;
  // Only a hint: a kernel that refuses it changes nothing but speed.
  ::madvise(const_cast<uint8_t*>(data_) + start, bytes + (offset - start), MADV_WILLNEED);
}

namespace detail {

const uint8_t* Cursor::take(uint64_t n, const char* what) {
  if (n > size_ - pos_) {
    fail_at(std::string("unexpected end of file reading ") + what + " (needs " + std::to_string(n) +
            " bytes, " + std::to_string(size_ - pos_) + " left)");
  }
  const uint8_t* p = begin_ + pos_;
  pos_ += n;
  return p;
}

void Cursor::fail_at(const std::string& message) const {
  detail::fail_at(origin_, pos_, message);
}

}  // namespace detail
namespace detail {

OutputFile::OutputFile(const std::string& path) : path_(path) {
  static std::atomic<uint64_t> counter{0};
  std::random_device rd;
  for (int attempt = 0; attempt < 100 && fd_ < 0; ++attempt) {
    temp_path_ = path + ".tmp." + std::to_string(::getpid()) + "." +
                 std::to_string(counter.fetch_add(1)) + "." + std::to_string(rd());
    fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd_ < 0 && errno != EEXIST) fail_errno("create a temporary file for", path, errno);
  }
  if (fd_ < 0) fail("cannot create a temporary file for '" + path + "': every name tried exists");
}

OutputFile::~OutputFile() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(temp_path_.c_str());
  }
}

void OutputFile::write(const void* data, uint64_t n) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd_, p, size_t(std::min<uint64_t>(n, uint64_t(1) << 30)));
    if (w < 0) {
      if (errno == EINTR) continue;
      fail_errno("write", path_, errno);
    }
    p += w;
    n -= uint64_t(w);
  }
}

void OutputFile::commit() {
  if (::fsync(fd_) != 0) fail_errno("sync", path_, errno);
  const int closed = ::close(fd_);
  fd_ = -1;
  if (closed != 0 || ::rename(temp_path_.c_str(), path_.c_str()) != 0) {
    const int err = errno;
    ::unlink(temp_path_.c_str());
    fail_errno(closed != 0 ? "write" : "rename the temporary file to", path_, err);
  }
  // Make the rename itself durable; a file system that cannot sync a directory loses nothing
  // that was promised.
  const size_t slash = path_.rfind('/');
  const std::string dir = slash == std::string::npos ? "."
                          : slash == 0               ? "/"
                                                     : path_.substr(0, slash);
  const int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd >= 0) {
    ::fsync(dir_fd);
    ::close(dir_fd);
  }
}

}  // namespace detail
}  // namespace sllm
