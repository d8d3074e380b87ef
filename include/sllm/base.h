// Base layer: errors, fp16/bf16 conversion, aligned buffers, logging hook.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace sllm {

// Every failure caused by input (files, tokens, options) is an Error whose message says what
// was wrong and where, so that a user can act on it without a debugger.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum class LogLevel { kDebug, kInfo, kWarn, kError };
using LogFn = std::function<void(LogLevel, std::string_view)>;
// Replaces the log sink (default: warnings and errors to stderr). Not thread-safe.
void set_log_handler(LogFn fn);
void log(LogLevel level, std::string_view message);

// IEEE half and bfloat16 conversions, bit-exact with the hardware instructions (round to
// nearest even; NaN stays NaN).
float fp16_to_f32(uint16_t h);
uint16_t f32_to_fp16(float f);
inline float bf16_to_f32(uint16_t h) {
  uint32_t bits = uint32_t{h} << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
uint16_t f32_to_bf16(float f);

namespace detail {

[[noreturn]] void fail(const std::string& message);

// Checked arithmetic for sizes read from files: a hostile count must not wrap around.
inline uint64_t checked_mul(uint64_t a, uint64_t b, const char* what) {
  uint64_t r;
  if (__builtin_mul_overflow(a, b, &r)) fail(std::string("size overflow computing ") + what);
  return r;
}
inline uint64_t checked_add(uint64_t a, uint64_t b, const char* what) {
  uint64_t r;
  if (__builtin_add_overflow(a, b, &r)) fail(std::string("size overflow computing ") + what);
  return r;
}

struct AlignedFree {
  void operator()(void* p) const;
};

// A zero-initialised array aligned for the widest SIMD vector (64 bytes).
template <typename T>
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(size_t n) { resize(n); }
  void resize(size_t n);
  T* data() { return data_.get(); }
  const T* data() const { return data_.get(); }
  size_t size() const { return size_; }
  T& operator[](size_t i) { return data_.get()[i]; }
  const T& operator[](size_t i) const { return data_.get()[i]; }

 private:
  std::unique_ptr<T, AlignedFree> data_;
  size_t size_ = 0;
};

void* aligned_zalloc(size_t bytes);

template <typename T>
void AlignedBuffer<T>::resize(size_t n) {
  static_assert(std::is_trivially_copyable<T>::value, "AlignedBuffer holds plain data");
  if (n == size_) return;
  data_.reset(static_cast<T*>(aligned_zalloc(checked_mul(n, sizeof(T), "buffer size"))));
  size_ = n;
}

}  // namespace detail
}  // namespace sllm
