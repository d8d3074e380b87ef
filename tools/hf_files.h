// Files of a Hugging Face model folder: paths, and JSON documents read with errors that name the
// file and the key.
#pragma once
#include <cstdint>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

namespace sllm {
namespace hf {

std::string path_join(const std::string& dir, const std::string& name);
bool is_regular_file(const std::string& path);

// The whole document; Error "PATH: not valid JSON: ..." or "cannot open 'PATH': ...".
nlohmann::json read_json_file(const std::string& path);
// Parses text that came from origin (a file, or a header inside one).
nlohmann::json parse_json(const char* begin, const char* end, const std::string& origin);

// A JSON value for a message: its text, cut after 60 bytes.
std::string json_brief(const nlohmann::json& v);
// nlohmann-json's message without its "[json.exception.type_error.302] " prefix.
std::string json_error_text(const nlohmann::json::exception& e);

// A JSON object read from a file, with typed access that names the file and key on error.
class JsonObject {
 public:
  JsonObject() = default;
  JsonObject(nlohmann::json doc, std::string origin);
  static JsonObject read(const std::string& path) { return JsonObject(read_json_file(path), path); }
  // The object, or an empty one when the file does not exist.
  static JsonObject read_if_exists(const std::string& path);

  const std::string& origin() const { return origin_; }
  const nlohmann::json& doc() const { return doc_; }
  bool has(const char* key) const;  // present and not null
  // The first of keys that is present (not null), or nullptr.
  const nlohmann::json* find_any(std::initializer_list<const char*> keys) const;

  // Error naming the file and key(s) when absent (get) or of another type (both). Integers must
  // be whole numbers that fit; floats accept any number.
  uint64_t get_uint(std::initializer_list<const char*> keys) const;
  std::optional<uint64_t> find_uint(std::initializer_list<const char*> keys) const;
  double get_number(std::initializer_list<const char*> keys) const;
  std::optional<double> find_number(std::initializer_list<const char*> keys) const;
  std::optional<bool> find_bool(const char* key) const;
  std::optional<std::string> find_string(const char* key) const;

  [[noreturn]] void fail(const std::string& key, const std::string& message) const;

 private:
  nlohmann::json doc_ = nlohmann::json::object();
  std::string origin_;
};

}  // namespace hf
}  // namespace sllm
