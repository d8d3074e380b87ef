// Reader of Hugging Face safetensors files: an 8-byte little-endian header length, a JSON header
// naming each tensor's dtype, shape and byte range, then the data. Everything read from the file
// is checked before use (header inside the file, valid JSON, byte ranges inside the data section,
// sizes equal to dtype x shape, no two tensors sharing bytes), and an Error names the file and the
// tensor. Tensors are views into a read-only memory map, so a checkpoint costs no memory to open.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "sllm.h"

namespace sllm {
namespace hf {

struct SafeTensor {
  std::string name;
  std::string dtype;              // as the file spells it: "F32", "BF16", "I64", ...
  uint32_t dtype_bytes = 0;       // bytes per element
  std::vector<uint64_t> shape;    // outermost first, as PyTorch writes it (the last runs fastest)
  const uint8_t* data = nullptr;  // into the file's memory map
  uint64_t n_bytes = 0;
  std::string file;  // the path it came from, for messages
  uint64_t n_elements() const;
  std::string shape_string() const;  // "[512, 64]"
  // Drops the tensor's pages from this process's memory once it has been read: the map is
  // private and read-only, so they come back from the file if it is read again. Keeps a
  // converter's resident size near one tensor rather than the whole checkpoint.
  void release_pages() const;
};

// Bytes per element of a safetensors dtype name, or 0 for a name the format does not define.
uint32_t safetensors_dtype_bytes(const std::string& dtype);

// One .safetensors file, mapped and checked. Movable; tensor data stays valid while it lives.
class SafetensorsFile {
 public:
  static SafetensorsFile open(const std::string& path);
  const std::string& path() const { return map_.path(); }
  const std::vector<SafeTensor>& tensors() const { return tensors_; }

 private:
  static SafetensorsFile parse(const std::string& path);
  MappedFile map_;
  std::vector<SafeTensor> tensors_;  // in order of their data
};

// The tensors of a checkpoint folder: model.safetensors.index.json's shards when it exists (each
// tensor must be in the shard its weight_map names), else every *.safetensors file in it.
// A tensor name found twice is an Error.
class SafetensorsCheckpoint {
 public:
  static SafetensorsCheckpoint open(const std::string& dir);
  const SafeTensor* find(const std::string& name) const;
  const std::map<std::string, const SafeTensor*>& tensors() const { return by_name_; }
  // Paths of the files read (the index first, when there is one).
  const std::vector<std::string>& files() const { return paths_; }

 private:
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::vector<std::string> paths_;
  std::map<std::string, const SafeTensor*> by_name_;
};

}  // namespace hf
}  // namespace sllm
