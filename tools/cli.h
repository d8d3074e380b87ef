// The sllm command line: one function per subcommand (tools/cli_NAME.cpp) and the argument
// reader they share. tools/sllm.cpp dispatches to them.
#pragma once
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace sllm {

struct GenerateOptions;
enum class TensorType : uint32_t;

namespace cli {

// A mistake in the command line: main prints it on one line and exits with status 2.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Subcommands. argv[0] is the subcommand's name; the return value is the exit status.
// Bad input files throw sllm::Error (exit status 1), bad arguments UsageError (status 2).
int cmd_info(int argc, char** argv);
int cmd_generate(int argc, char** argv);
int cmd_tokenize(int argc, char** argv);
int cmd_logits(int argc, char** argv);
int cmd_chat(int argc, char** argv);
int cmd_bench(int argc, char** argv);
int cmd_convert(int argc, char** argv);
int cmd_quantize(int argc, char** argv);
int cmd_embed(int argc, char** argv);

// "1.13 MiB" for a byte count.
std::string human_bytes(uint64_t n);

// A one-line progress bar on stderr, redrawn at most ten times a second; the tools show it
// only when stderr is a terminal.
class ProgressBar {
 public:
  void update(uint64_t done, uint64_t total);

 private:
  std::chrono::steady_clock::time_point last_{};
};

// Walks a subcommand's arguments in order:
//   ArgReader args(argc, argv);
//   while (!args.done()) {
//     if (args.flag("-h", "--help")) ...
//     else if (args.option("-n", "--n-predict", n)) ...
//     else if (args.positional(path)) ...
//     else args.reject();
//   }
// Options take their value from the next argument or after '=' (--n-predict=64).
class ArgReader {
 public:
  ArgReader(int argc, char** argv) : argc_(argc), argv_(argv), pos_(1) {}
  bool done() const { return pos_ >= argc_; }

  bool flag(const char* short_name, const char* long_name) {
    if (done() || !matches(short_name, long_name)) return false;
    ++pos_;
    return true;
  }

  // T: std::string, an integer or a floating-point type.
  template <typename T>
  bool option(const char* short_name, const char* long_name, T& value) {
    if (done()) return false;
    const std::string arg = argv_[pos_];
    std::string text;
    const std::string long_prefix = std::string(long_name) + "=";
    if (matches(short_name, long_name)) {
      if (pos_ + 1 >= argc_) throw UsageError("option " + arg + " needs a value");
      text = argv_[pos_ + 1];
      pos_ += 2;
    } else if (long_name != nullptr && arg.compare(0, long_prefix.size(), long_prefix) == 0) {
      text = arg.substr(long_prefix.size());
      pos_ += 1;
    } else {
      return false;
    }
    value = parse<T>(long_name != nullptr ? long_name : short_name, text);
    return true;
  }

  // Takes the current argument when it is not an option ("-" alone counts as a value).
  bool positional(std::string& value) {
    if (done()) return false;
    const std::string arg = argv_[pos_];
    if (arg.size() > 1 && arg[0] == '-') return false;
    value = arg;
    ++pos_;
    return true;
  }

  // Throws the UsageError for the current argument, which nothing accepted.
  [[noreturn]] void reject() const {
    const std::string arg = argv_[pos_];
    if (arg.size() > 1 && arg[0] == '-') throw UsageError("unknown option '" + arg + "'");
    throw UsageError("unexpected argument '" + arg + "'");
  }

 private:
  bool matches(const char* short_name, const char* long_name) const {
    const std::string arg = argv_[pos_];
    return (short_name != nullptr && arg == short_name) ||
           (long_name != nullptr && arg == long_name);
  }

  template <typename T>
  static T parse(const std::string& option, const std::string& text) {
    if constexpr (std::is_same<T, std::string>::value) {
      return text;
    } else {
      const char* begin = text.c_str();
      char* end = nullptr;
      errno = 0;
      T v{};
      bool ok;
      if constexpr (std::is_floating_point<T>::value) {
        v = T(std::strtod(begin, &end));
        ok = true;
      } else if constexpr (std::is_signed<T>::value) {
        const long long x = std::strtoll(begin, &end, 10);
        v = T(x);
        ok = (long long)v == x;
      } else {
        const unsigned long long x = std::strtoull(begin, &end, 10);
        v = T(x);
        ok = (unsigned long long)v == x && text.find('-') == std::string::npos;
      }
      if (!ok || errno != 0 || text.empty() || *end != '\0') {
        throw UsageError("option " + option + ": '" + text + "' is not a valid " +
                         (std::is_floating_point<T>::value ? "number" : "integer"));
      }
      return v;
    }
  }

  int argc_;
  char** argv_;
  int pos_;
};

// The sampling options of `sllm generate` and `sllm chat`, and their lines of the usage text.
bool sampling_option(ArgReader& args, GenerateOptions& options);
#define SLLM_CLI_SAMPLING_USAGE                                                                 \
  "      --temp T             temperature; 0 is greedy (default 0.8)\n"                         \
  "      --top-k K            keep the K most likely tokens; 0 is off (default 40)\n"           \
  "      --top-p P            keep the most likely tokens up to probability P (default 0.95)\n" \
  "      --min-p P            drop tokens below P times the best one's probability (default "   \
  "0.05)\n"                                                                                     \
  "      --repeat-penalty R   penalise tokens seen in the last 64; 1 is off (default 1)\n"      \
  "      --repeat-last-n N    window of the penalties (default 64)\n"                           \
  "      --stop TEXT          stop before TEXT (may be given several times)\n"                  \
  "      --seed S             random seed (default: random, printed to stderr)\n"

// --kv-type of `sllm generate`, `sllm chat` and `sllm bench`: f16, q8_0 (sllm's int8 entries,
// named as llama.cpp's -ctk/-ctv name its 8-bit cache; also q8, i8, int8) or f32. A UsageError
// names the allowed values.
bool kv_type_option(ArgReader& args, TensorType& type);
// The --kv-type name of a KV entry type ("f16", "q8_0", "f32").
const char* kv_type_name(TensorType type);
#define SLLM_CLI_KV_TYPE_USAGE                                                                \
  "      --kv-type TYPE       KV cache entries: f16 (default), q8_0 (int8 with a scale per\n" \
  "                           token and head, about half the memory; also q8, i8, int8)\n"    \
  "                           or f32\n"

}  // namespace cli
}  // namespace sllm
