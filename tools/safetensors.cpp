#include "safetensors.h"

#include <algorithm>
#include <cerrno>
#include <dirent.h>
#include <set>
#include <sys/mman.h>
#include <unistd.h>

#include "hf_files.h"

namespace sllm {
namespace hf {

uint64_t SafeTensor::n_elements() const {
  uint64_t n = 1;
  for (uint64_t d : shape) n *= d;  // checked when the file was opened
  return n;
}

std::string SafeTensor::shape_string() const {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

void SafeTensor::release_pages() const {
  if (n_bytes == 0) return;
  const uintptr_t page = uintptr_t(::sysconf(_SC_PAGESIZE));
  const uintptr_t begin = uintptr_t(data) / page * page;
  const uintptr_t end = (uintptr_t(data) + n_bytes + page - 1) / page * page;
  ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

uint32_t safetensors_dtype_bytes(const std::string& dtype) {
  static const std::pair<const char*, uint32_t> kDtypes[] = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1},
      {"I16", 2},  {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},
      {"U32", 4},  {"F32", 4}, {"F64", 8}, {"I64", 8},     {"U64", 8},
  };
  for (const auto& d : kDtypes) {
    if (dtype == d.first) return d.second;
  }
  return 0;
}

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  try {
    return parse(path);
  } catch (const nlohmann::json::exception& e) {
    detail::fail(path + ": header: a value of an unexpected type: " + json_error_text(e));
  }
}

SafetensorsFile SafetensorsFile::parse(const std::string& path) {
  SafetensorsFile f;
  f.map_ = MappedFile::open(path);
  const uint64_t size = f.map_.size();
  const uint8_t* base = f.map_.data();
  detail::Cursor cursor(base, size, path);
  const uint64_t header_len = cursor.read<uint64_t>("the safetensors header length");
  if (header_len > cursor.remaining()) {
    detail::fail_at(path, 0,
                    "the header length " + std::to_string(header_len) +
                        " runs past the end of the "
                        "file (" +
                        std::to_string(size) +
                        " bytes): not a safetensors file, or a "
                        "truncated one");
  }
  const char* header = reinterpret_cast<const char*>(cursor.take(header_len, "the header"));
  const nlohmann::json doc = parse_json(header, header + header_len, path + ": header");
  if (!doc.is_object()) detail::fail(path + ": header: expected a JSON object");
  const uint64_t data_start = 8 + header_len;
  const uint64_t data_size = size - data_start;

  for (auto it = doc.begin(); it != doc.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    const std::string where = path + ": tensor '" + it.key() + "'";
    const nlohmann::json& entry = it.value();
    if (!entry.is_object())
      detail::fail(where + ": expected an object with dtype, shape, data_offsets");
    SafeTensor t;
    t.name = it.key();
    t.file = path;
    const auto dtype = entry.find("dtype");
    if (dtype == entry.end() || !dtype->is_string()) detail::fail(where + ": missing dtype");
    t.dtype = dtype->get<std::string>();
    t.dtype_bytes = safetensors_dtype_bytes(t.dtype);
    if (t.dtype_bytes == 0) detail::fail(where + ": unknown dtype '" + t.dtype + "'");
    const auto shape = entry.find("shape");
    if (shape == entry.end() || !shape->is_array()) detail::fail(where + ": missing shape");
    uint64_t n = 1;
    for (const nlohmann::json& d : *shape) {
      if (!d.is_number_unsigned())
        detail::fail(where + ": shape " + json_brief(*shape) + " is not a list of sizes");
      t.shape.push_back(d.get<uint64_t>());
      n = detail::checked_mul(n, t.shape.back(), "a tensor's element count");
    }
    const uint64_t n_bytes = detail::checked_mul(n, t.dtype_bytes, "a tensor's size");
    const auto offsets = entry.find("data_offsets");
    if (offsets == entry.end() || !offsets->is_array() || offsets->size() != 2 ||
        !(*offsets)[0].is_number_unsigned() || !(*offsets)[1].is_number_unsigned()) {
      detail::fail(where + ": data_offsets must be [begin, end]");
    }
    const uint64_t begin = (*offsets)[0].get<uint64_t>(), end = (*offsets)[1].get<uint64_t>();
    if (begin > end || end > data_size) {
      detail::fail(where + ": data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                   "] are not inside the data section (" + std::to_string(data_size) +
                   " bytes): the file is truncated or corrupt");
    }
    if (end - begin != n_bytes) {
      detail::fail(where + ": " + t.dtype + " " + t.shape_string() + " needs " +
                   std::to_string(n_bytes) + " bytes but data_offsets [" + std::to_string(begin) +
                   ", " + std::to_string(end) + "] hold " + std::to_string(end - begin));
    }
    t.data = base + data_start + begin;
    t.n_bytes = n_bytes;
    f.tensors_.push_back(std::move(t));
  }
  std::sort(f.tensors_.begin(), f.tensors_.end(),
            [](const SafeTensor& a, const SafeTensor& b) { return a.data < b.data; });
  for (size_t i = 1; i < f.tensors_.size(); ++i) {
    const SafeTensor& prev = f.tensors_[i - 1];
    if (f.tensors_[i].data < prev.data + prev.n_bytes) {
      detail::fail(path + ": tensors '" + prev.name + "' and '" + f.tensors_[i].name +
                   "' overlap in the data section");
    }
  }
  return f;
}

namespace {

// *.safetensors files in dir, sorted by name.
std::vector<std::string> safetensors_in(const std::string& dir) {
  std::vector<std::string> names;
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) detail::fail_errno("open the folder", dir, errno);
  const std::string suffix = ".safetensors";
  while (const dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    if (name.size() > suffix.size() &&
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0) {
      names.push_back(name);
    }
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace

SafetensorsCheckpoint SafetensorsCheckpoint::open(const std::string& dir) {
  SafetensorsCheckpoint c;
  const std::string index_path = path_join(dir, "model.safetensors.index.json");
  std::map<std::string, std::string> weight_map;  // tensor -> file name
  std::vector<std::string> names;
  if (is_regular_file(index_path)) {
    const JsonObject index = JsonObject::read(index_path);
    const nlohmann::json* map = index.find_any({"weight_map"});
    if (map == nullptr || !map->is_object()) index.fail("weight_map", "missing, or not an object");
    std::set<std::string> files;
    for (auto it = map->begin(); it != map->end(); ++it) {
      if (!it.value().is_string()) index.fail("weight_map", "'" + it.key() + "' names no file");
      const std::string file = it.value().get<std::string>();
      // Shards live beside the index: a path elsewhere is refused rather than followed.
      if (file.empty() || file.find('/') != std::string::npos || file == "." || file == "..") {
        index.fail("weight_map", "'" + it.key() + "' names '" + file + "', not a file in " + dir);
      }
      weight_map[it.key()] = file;
      files.insert(file);
    }
    names.assign(files.begin(), files.end());
    c.paths_.push_back(index_path);
  } else {
    names = safetensors_in(dir);
    if (names.empty())
      detail::fail(dir + ": no *.safetensors files (and no model.safetensors.index.json)");
  }
  for (const std::string& name : names) {
    const std::string path = path_join(dir, name);
    c.files_.push_back(std::make_unique<SafetensorsFile>(SafetensorsFile::open(path)));
    c.paths_.push_back(path);
    for (const SafeTensor& t : c.files_.back()->tensors()) {
      const auto [it, inserted] = c.by_name_.emplace(t.name, &t);
      if (!inserted) {
        detail::fail(path + ": tensor '" + t.name + "' is also in " + it->second->file);
      }
    }
  }
  for (const auto& [tensor, file] : weight_map) {
    const SafeTensor* t = c.find(tensor);
    if (t == nullptr || t->file != path_join(dir, file)) {
      detail::fail(index_path + ": tensor '" + tensor + "' is not in " + file +
                   (t ? " (it is in " + t->file + ")" : ""));
    }
  }
  if (!weight_map.empty()) {
    for (const auto& [name, t] : c.by_name_) {
      if (weight_map.count(name) == 0) {
        detail::fail(t->file + ": tensor '" + name + "' is missing from " + index_path);
      }
    }
  }
  return c;
}

const SafeTensor* SafetensorsCheckpoint::find(const std::string& name) const {
  const auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : it->second;
}

}  // namespace hf
}  // namespace sllm
