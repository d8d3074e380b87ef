#include "hf_files.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <sys/stat.h>

#include "sllm.h"

namespace sllm {
namespace hf {

std::string path_join(const std::string& dir, const std::string& name) {
  if (dir.empty() || dir.back() == '/') return dir + name;
  return dir + "/" + name;
}

bool is_regular_file(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string json_brief(const nlohmann::json& v) {
  const std::string s = v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  return s.size() <= 60 ? s : s.substr(0, 60) + "...";
}

std::string json_error_text(const nlohmann::json::exception& e) {
  // e.what() reads "[json.exception.parse_error.101] parse error at line 1, column 5: ...".
  const std::string what = e.what();
  const size_t bracket = what.find("] ");
  return what[0] == '[' && bracket != std::string::npos ? what.substr(bracket + 2) : what;
}

nlohmann::json parse_json(const char* begin, const char* end, const std::string& origin) {
  try {
    return nlohmann::json::parse(begin, end);
  } catch (const nlohmann::json::exception& e) {
    detail::fail(origin + ": not valid JSON: " + json_error_text(e));
  }
}

nlohmann::json read_json_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) detail::fail_errno("open", path, errno);
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) detail::fail_errno("read", path, errno);
  const std::string s = text.str();
  return parse_json(s.data(), s.data() + s.size(), path);
}

JsonObject::JsonObject(nlohmann::json doc, std::string origin)
    : doc_(std::move(doc)), origin_(std::move(origin)) {
  if (!doc_.is_object()) detail::fail(origin_ + ": expected a JSON object at the top level");
}

JsonObject JsonObject::read_if_exists(const std::string& path) {
  if (!is_regular_file(path)) return JsonObject(nlohmann::json::object(), path);
  return read(path);
}

bool JsonObject::has(const char* key) const {
  const auto it = doc_.find(key);
  return it != doc_.end() && !it->is_null();
}

const nlohmann::json* JsonObject::find_any(std::initializer_list<const char*> keys) const {
  for (const char* key : keys) {
    const auto it = doc_.find(key);
    if (it != doc_.end() && !it->is_null()) return &*it;
  }
  return nullptr;
}

void JsonObject::fail(const std::string& key, const std::string& message) const {
  detail::fail(origin_ + ": \"" + key + "\": " + message);
}

namespace {

std::string key_list(std::initializer_list<const char*> keys) {
  std::string s;
  for (const char* key : keys) s += std::string(s.empty() ? "" : "\" or \"") + key;
  return s;
}

// The name under which the first present key appears, for messages.
const char* found_key(const nlohmann::json& doc, std::initializer_list<const char*> keys) {
  for (const char* key : keys) {
    const auto it = doc.find(key);
    if (it != doc.end() && !it->is_null()) return key;
  }
  return *keys.begin();
}

}  // namespace

std::optional<uint64_t> JsonObject::find_uint(std::initializer_list<const char*> keys) const {
  const nlohmann::json* v = find_any(keys);
  if (v == nullptr) return std::nullopt;
  if (v->is_number_unsigned()) return v->get<uint64_t>();
  if (v->is_number_float()) {
    const double d = v->get<double>();
    if (d >= 0 && d < 1.8e19 && d == double(uint64_t(d))) return uint64_t(d);
  }
  fail(found_key(doc_, keys), "expected a non-negative integer, found " + json_brief(*v));
}

uint64_t JsonObject::get_uint(std::initializer_list<const char*> keys) const {
  const std::optional<uint64_t> v = find_uint(keys);
  if (!v) fail(key_list(keys), "missing");
  return *v;
}

std::optional<double> JsonObject::find_number(std::initializer_list<const char*> keys) const {
  const nlohmann::json* v = find_any(keys);
  if (v == nullptr) return std::nullopt;
  if (!v->is_number()) fail(found_key(doc_, keys), "expected a number, found " + json_brief(*v));
  return v->get<double>();
}

double JsonObject::get_number(std::initializer_list<const char*> keys) const {
  const std::optional<double> v = find_number(keys);
  if (!v) fail(key_list(keys), "missing");
  return *v;
}

std::optional<bool> JsonObject::find_bool(const char* key) const {
  const nlohmann::json* v = find_any({key});
  if (v == nullptr) return std::nullopt;
  if (!v->is_boolean()) fail(key, "expected true or false, found " + json_brief(*v));
  return v->get<bool>();
}

std::optional<std::string> JsonObject::find_string(const char* key) const {
  const nlohmann::json* v = find_any({key});
  if (v == nullptr) return std::nullopt;
  if (!v->is_string()) fail(key, "expected a string, found " + json_brief(*v));
  return v->get<std::string>();
}

}  // namespace hf
}  // namespace sllm
