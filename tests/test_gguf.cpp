// The file and GGUF layers against real files: the fixtures (made by llama.cpp, gguf-py and
// llama2.c's converter), llama2.c's own checkpoint of the same weights, and the writer's
// output compared byte for byte with files that llama.cpp wrote.
#include <csignal>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <sys/resource.h>
#include <unistd.h>

#include "test_support.h"

namespace fs = std::filesystem;
using doctest::Contains;
using sllm::Gguf;
using sllm::GgufType;
using sllm::GgufValue;
using sllm::GgufWriter;
using sllm::TensorType;

namespace {

// A fresh directory, removed with everything in it at the end of the test.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "sllm_test_gguf.XXXXXX").string();
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    path_ = tmpl;
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  std::vector<std::string> entries() const {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(path_)) names.push_back(e.path().filename());
    return names;
  }

 private:
  fs::path path_;
};

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::vector<uint64_t> dims_of(const sllm::TensorInfo& t) {
  return std::vector<uint64_t>(t.ne, t.ne + t.n_dims);
}

// Writes everything g holds with the writer.
void copy_with_writer(const Gguf& g, const std::string& path) {
  GgufWriter w(g.alignment());
  for (const auto& kv : g.metadata()) w.set(kv.first, kv.second);
  for (const auto& t : g.tensors()) w.add_tensor(t.name, t.type, dims_of(t), t.data, t.n_bytes);
  w.write(path);
}

// Every GGUF file under the fixture folders.
// Every GGUF of the whole shared fixtures folder (none when it is absent: the copies under
// tests/data are a small subset).
std::vector<std::string> fixture_ggufs() {
  std::vector<std::string> files;
  if (sllm_test::fixture("vocab").empty()) return files;
  for (const char* dir : {"models", "ref", "ref-embd", "vocab"}) {
    const std::string root = std::string(SLLM_FIXTURES_DIR) + "/" + dir;
    for (const auto& e : fs::recursive_directory_iterator(root)) {
      if (e.path().extension() == ".gguf") files.push_back(e.path().string());
    }
  }
  return files;
}

}  // namespace

TEST_CASE("tensor types have ggml's block sizes") {
  struct Expected {
    uint32_t id;
    const char* name;
    uint32_t block_elems, block_bytes;
  };
  // ggml-common.h: e.g. block_q4_K = 2 halves + 12 scale bytes + 128 nibble bytes.
  const Expected expected[] = {
      {0, "F32", 1, 4},       {1, "F16", 1, 2},       {30, "BF16", 1, 2},
      {2, "Q4_0", 32, 18},    {3, "Q4_1", 32, 20},    {6, "Q5_0", 32, 22},
      {7, "Q5_1", 32, 24},    {8, "Q8_0", 32, 34},    {9, "Q8_1", 32, 36},
      {10, "Q2_K", 256, 84},  {11, "Q3_K", 256, 110}, {12, "Q4_K", 256, 144},
      {13, "Q5_K", 256, 176}, {14, "Q6_K", 256, 210}, {15, "Q8_K", 256, 292},
  };
  for (const Expected& e : expected) {
    CAPTURE(e.name);
    const sllm::TensorTypeInfo* info = sllm::tensor_type_info(e.id);
    REQUIRE(info != nullptr);
    CHECK(std::string(info->name) == e.name);
    CHECK(info->block_elems == e.block_elems);
    CHECK(info->block_bytes == e.block_bytes);
    CHECK(std::string(sllm::tensor_type_name(TensorType(e.id))) == e.name);
  }
  // 4 and 5 were Q4_2 and Q4_3, removed from ggml; 31 onwards are newer formats.
  for (uint32_t id : {4u, 5u, 16u, 29u, 31u, 1000u}) CHECK(sllm::tensor_type_info(id) == nullptr);
  CHECK(sllm::tensor_row_bytes(TensorType::Q4_K, 512) == 288);
  CHECK(sllm::tensor_row_bytes(TensorType::F16, 3) == 6);
  CHECK_THROWS_WITH_AS(sllm::tensor_row_bytes(TensorType::Q8_0, 172),
                       Contains("172 elements is not a whole number of Q8_0 blocks"), sllm::Error);
}

TEST_CASE("MappedFile names the path and the reason it cannot map a file") {
  TempDir dir;
  CHECK_THROWS_WITH_AS(sllm::MappedFile::open(dir.file("absent.gguf")),
                       Contains("absent.gguf': No such file or directory"), sllm::Error);
  CHECK_THROWS_WITH_AS(sllm::MappedFile::open(dir.file("")), Contains("Is a directory"),
                       sllm::Error);
  std::ofstream(dir.file("empty.gguf")).close();
  CHECK_THROWS_WITH_AS(sllm::MappedFile::open(dir.file("empty.gguf")),
                       Contains("empty.gguf': the file is empty"), sllm::Error);
  CHECK_THROWS_WITH_AS(Gguf::open(dir.file("absent.gguf")), Contains("cannot open"), sllm::Error);

  std::ofstream(dir.file("abc")) << "abc";
  sllm::MappedFile f = sllm::MappedFile::open(dir.file("abc"));
  REQUIRE(f.size() == 3);
  CHECK(std::memcmp(f.data(), "abc", 3) == 0);
  sllm::MappedFile moved = std::move(f);
  CHECK(f.data() == nullptr);
  CHECK(moved.size() == 3);
  moved.advise_willneed(1, 100);  // past the end: clipped, no fault
}

TEST_CASE("stories260K: metadata as the model card says") {
  const Gguf g = Gguf::open(sllm_test::test_data("stories260K.gguf"));
  CHECK(g.version() == 3);
  CHECK(g.alignment() == 32);
  CHECK(g.get<std::string>("general.architecture") == "llama");
  CHECK(g.get<uint32_t>("llama.block_count") == 5);
  CHECK(g.get<uint32_t>("llama.embedding_length") == 64);
  CHECK(g.get<uint32_t>("llama.feed_forward_length") == 172);
  CHECK(g.get<uint32_t>("llama.attention.head_count") == 8);
  CHECK(g.get<uint32_t>("llama.attention.head_count_kv") == 4);
  CHECK(g.get<float>("llama.attention.layer_norm_rms_epsilon") == 1e-5f);
  CHECK(g.get_or<float>("llama.rope.freq_base", 10000.0f) == 10000.0f);

  const auto tokens = g.get_array<std::string>("tokenizer.ggml.tokens");
  REQUIRE(tokens.size() == 512);
  CHECK(tokens[0] == "<unk>");
  CHECK(tokens[1] == "<s>");
  CHECK(tokens[2] == "</s>");
  CHECK(tokens[3] == "<0x00>");  // byte fallback tokens follow the specials
  CHECK(tokens[258] == "<0xFF>");
  CHECK(g.get_array<float>("tokenizer.ggml.scores").size() == 512);
  CHECK(g.get_array<int32_t>("tokenizer.ggml.token_type")[3] == 6);  // BYTE
  CHECK(g.get<std::string>("tokenizer.ggml.model") == "llama");

  // Conversions: integers convert when they fit, floats accept integers, nothing else.
  CHECK(g.get<uint8_t>("llama.block_count") == 5);
  CHECK(g.get<int64_t>("llama.block_count") == 5);
  CHECK(g.get<double>("llama.block_count") == 5.0);
  CHECK(g.get<double>("llama.attention.layer_norm_rms_epsilon") == double(1e-5f));
  CHECK(g.get<uint32_t>("tokenizer.ggml.seperator_token_id") == 0xffffffffu);
  CHECK(g.get<int64_t>("tokenizer.ggml.seperator_token_id") == 0xffffffff);
  CHECK_THROWS_WITH_AS(g.get<int32_t>("tokenizer.ggml.seperator_token_id"),
                       Contains("'tokenizer.ggml.seperator_token_id' = 4294967295 does not fit "
                                "in INT32"),
                       sllm::Error);
  CHECK_THROWS_WITH_AS(g.get<uint32_t>("general.architecture"),
                       Contains("'general.architecture' is STRING, expected UINT32"), sllm::Error);
  CHECK_THROWS_WITH_AS(g.get<std::string>("llama.block_count"),
                       Contains("'llama.block_count' is UINT32, expected STRING"), sllm::Error);
  CHECK_THROWS_WITH_AS(g.get<bool>("llama.block_count"), Contains("expected BOOL"), sllm::Error);
  CHECK_THROWS_WITH_AS(g.get<int32_t>("llama.attention.layer_norm_rms_epsilon"),
                       Contains("is FLOAT32, expected INT32"), sllm::Error);
  CHECK_THROWS_WITH_AS(g.get<uint32_t>("llama.expert_count"),
                       Contains("stories260K.gguf: metadata key 'llama.expert_count' is missing"),
                       sllm::Error);
  CHECK_THROWS_WITH_AS(g.get_array<int32_t>("tokenizer.ggml.tokens"),
                       Contains("is an ARRAY of STRING, expected an ARRAY of INT32"), sllm::Error);
  CHECK_THROWS_WITH_AS(g.get_array<uint32_t>("llama.block_count"),
                       Contains("is UINT32, expected an ARRAY of UINT32"), sllm::Error);
  CHECK(g.get_array<uint8_t>("tokenizer.ggml.token_type")[0] == 2);
  CHECK(g.get_array<double>("tokenizer.ggml.token_type")[0] == 2.0);
}

TEST_CASE("stories260K: tensors are views of the same weights as llama2.c's checkpoint") {
  const Gguf g = Gguf::open(sllm_test::test_data("stories260K.gguf"));
  REQUIRE(g.tensors().size() == 3 + 5 * 9);
  const sllm::TensorInfo& emb = g.tensor("token_embd.weight");
  CHECK(emb.type == TensorType::F32);
  CHECK(emb.n_dims == 2);
  CHECK(emb.ne[0] == 64);
  CHECK(emb.ne[1] == 512);
  CHECK(emb.shape_string() == "[64, 512]");
  CHECK(emb.n_bytes == 64 * 512 * 4);
  CHECK(g.tensor("blk.4.ffn_down.weight").shape_string() == "[172, 64]");
  CHECK(g.tensor("blk.0.attn_k.weight").shape_string() == "[64, 32]");  // 4 KV heads of 8
  CHECK(g.find_tensor("blk.5.ffn_down.weight") == nullptr);
  CHECK_THROWS_WITH_AS(g.tensor("blk.5.ffn_down.weight"),
                       Contains("no tensor named 'blk.5.ffn_down.weight'"), sllm::Error);
  for (const sllm::TensorInfo& t : g.tensors()) {
    CAPTURE(t.name);
    CHECK((g.data_offset() + t.offset) % g.alignment() == 0);
    CHECK(reinterpret_cast<uintptr_t>(t.data) % 32 == 0);  // the map starts on a page
  }

  const std::string bin_path = sllm_test::fixture("models/stories260K/stories260K.bin");
  if (bin_path.empty()) return;
  // llama2.c: 7 int32 of config, then token embeddings, attention norms, wq, wk, wv, wo, FFN
  // norms, w1, w2 (down), w3, final norm; all float32.
  const std::string bin = read_bytes(bin_path);
  const size_t dim = 64, hidden = 172, layers = 5, vocab = 512, kv_dim = 32;
  size_t at = 28;
  auto section = [&](size_t floats) {
    const size_t start = at;
    at += floats * 4;
    REQUIRE(at <= bin.size());
    return start;
  };
  const size_t embeddings = section(vocab * dim);
  const size_t attn_norms = section(layers * dim);
  section(layers * dim * dim);     // wq (rows permuted for GGUF's rope order)
  section(layers * dim * kv_dim);  // wk (permuted too)
  section(layers * dim * kv_dim);  // wv
  section(layers * dim * dim);     // wo
  const size_t ffn_norms = section(layers * dim);
  section(layers * dim * hidden);  // w1
  const size_t w2 = section(layers * hidden * dim);
  section(layers * dim * hidden);  // w3
  const size_t final_norm = section(dim);
  auto same = [&](const char* name, size_t bin_offset) {
    CAPTURE(name);
    const sllm::TensorInfo& t = g.tensor(name);
    REQUIRE(bin_offset + t.n_bytes <= bin.size());
    CHECK(std::memcmp(t.data, bin.data() + bin_offset, t.n_bytes) == 0);
  };
  same("token_embd.weight", embeddings);
  same("output.weight", embeddings);  // the checkpoint shares the classifier
  same("output_norm.weight", final_norm);
  for (size_t l = 0; l < layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    same((p + "attn_norm.weight").c_str(), attn_norms + l * dim * 4);
    same((p + "ffn_norm.weight").c_str(), ffn_norms + l * dim * 4);
    same((p + "ffn_down.weight").c_str(), w2 + l * hidden * dim * 4);
  }
}

TEST_CASE("stories260K Q8_0 v2: read; its 172-wide rows are not whole blocks") {
  const std::string path =
      sllm_test::fixture("models/stories260K/tinyllamas-stories-260k-q8_0.v2.gguf");
  if (path.empty()) return;
  const Gguf g = Gguf::open(path);
  CHECK(g.version() == 2);
  CHECK(g.get<uint32_t>("llama.block_count") == 5);
  CHECK(g.get<uint32_t>("llama.attention.head_count_kv") == 4);
  CHECK(g.get_array<std::string>("tokenizer.ggml.tokens").size() == 512);
  const sllm::TensorInfo& down = g.tensor("blk.0.ffn_down.weight");
  CHECK(down.type == TensorType::Q8_0);
  CHECK(down.shape_string() == "[172, 64]");
  CHECK(down.n_bytes == 172 * 64 / 32 * 34);  // 344 blocks, running across rows
  CHECK_THROWS_WITH_AS(sllm::tensor_row_bytes(down.type, down.ne[0]),
                       Contains("not a whole number of Q8_0 blocks"), sllm::Error);
  CHECK(g.tensor("blk.0.attn_norm.weight").type == TensorType::F32);

  // The first Q8_0 block of the embeddings (fp16 scale, 32 int8) holds llama2.c's first 32
  // floats to within the quantization error.
  const std::string bin_path = sllm_test::fixture("models/stories260K/stories260K.bin");
  if (bin_path.empty()) return;
  const std::string bin = read_bytes(bin_path);
  const sllm::TensorInfo& emb = g.tensor("token_embd.weight");
  REQUIRE(emb.type == TensorType::Q8_0);
  uint16_t d_bits;
  std::memcpy(&d_bits, emb.data, 2);
  const float d = sllm::fp16_to_f32(d_bits);
  CHECK(d > 0);
  for (int i = 0; i < 32; ++i) {
    float ref;
    std::memcpy(&ref, bin.data() + 28 + 4 * i, 4);
    const float q = d * float(int8_t(emb.data[2 + i]));
    // Half a step of rounding, plus the scale's own rounding to fp16 (2^-11 relative) times
    // at most 127 steps.
    CHECK(std::fabs(q - ref) <= 0.5f * d + 127 * d / 2048);
  }
}

TEST_CASE("stories260K v1 is refused with an error naming the version") {
  const std::string path =
      sllm_test::fixture("models/stories260K/tinyllamas-stories-260k-f32.v1.gguf");
  if (path.empty()) return;
  CHECK_THROWS_WITH_AS(Gguf::open(path), Contains("offset 4: GGUF version 1 is not supported"),
                       sllm::Error);
}

TEST_CASE("llama-2-tiny-random: F16 and F32 tensors, the 32000-token Llama 2 vocabulary") {
  const std::string path =
      sllm_test::fixture("models/llama-2-tiny-random/llama-2-tiny-random.gguf");
  if (path.empty()) return;
  const Gguf g = Gguf::open(path);
  CHECK(g.version() == 3);
  CHECK(g.get<std::string>("general.architecture") == "llama");
  CHECK(g.get<uint32_t>("llama.embedding_length") == 8);
  CHECK(g.get<uint32_t>("llama.block_count") == 1);
  const auto tokens = g.get_array<std::string>("tokenizer.ggml.tokens");
  REQUIRE(tokens.size() == 32000);
  CHECK(tokens[29871] == "\xe2\x96\x81");  // "▁", SentencePiece's word boundary, alone
  CHECK(g.tensor("token_embd.weight").type == TensorType::F16);
  CHECK(g.tensor("token_embd.weight").shape_string() == "[8, 32000]");
  CHECK(g.tensor("blk.0.attn_norm.weight").type == TensorType::F32);
}

TEST_CASE("reference files: tensor shapes agree with their metadata") {
  const std::string logits = sllm_test::fixture("ref/a_llama.F32.ref.gguf");
  if (!logits.empty()) {
    const Gguf g = Gguf::open(logits);
    const auto ids = g.get_array<int32_t>("ref.tokens");
    CHECK(ids.at(0) == 1);  // BOS first
    CHECK(g.get_array<int32_t>("ref.greedy").size() == 32);
    CHECK(g.get_array<float>("ref.greedy_top2_gap").size() == 32);
    const sllm::TensorInfo& t = g.tensor("logits");
    CHECK(t.type == TensorType::F32);
    CHECK(t.ne[0] == 512);
    CHECK(t.ne[1] == ids.size());
  }
  const std::string embd = sllm_test::fixture("ref-embd/bert_tiny_cls.F32.embd.gguf");
  if (!embd.empty()) {
    const Gguf g = Gguf::open(embd);
    CHECK(g.get<std::string>("ref.pooling") == "cls");
    const auto texts = g.get_array<std::string>("ref.texts");
    REQUIRE(texts.size() == 6);
    CHECK(texts[0] == "The cat sat on the mat.");
    CHECK(g.get_array<int32_t>("ref.tokens.0").at(0) == 101);  // [CLS]
    CHECK(g.tensor("embeddings").shape_string() == "[128, 6]");
  }
  const std::string bert = sllm_test::fixture("ref-embd/bert_tiny_mean.Q8_0.gguf");
  if (!bert.empty()) {
    const Gguf g = Gguf::open(bert);
    CHECK(g.get<std::string>("general.architecture") == "bert");
    CHECK(g.get<uint32_t>("bert.pooling_type") == 1);
    CHECK(g.get_array<std::string>("tokenizer.ggml.tokens").size() == 30522);
    CHECK(g.tensor("token_embd.weight").type == TensorType::Q8_0);
  }
}

TEST_CASE("every fixture GGUF opens (v1 is refused) and the writer reproduces it byte for byte") {
  TempDir dir;
  const std::vector<std::string> files = fixture_ggufs();
  if (files.empty()) return;
  CHECK(files.size() >= 60);
  for (const std::string& path : files) {
    CAPTURE(path);
    if (path.find(".v1.gguf") != std::string::npos) {
      CHECK_THROWS_WITH_AS(Gguf::open(path), Contains("GGUF version 1 is not supported"),
                           sllm::Error);
      continue;
    }
    const Gguf g = Gguf::open(path);
    CHECK(g.has("general.architecture"));
    for (const auto& kv : g.metadata()) CHECK(g.find(kv.first) == &kv.second);
    for (const auto& t : g.tensors()) {
      CHECK(g.data_offset() + t.offset + t.n_bytes <= g.file_size());
    }
    // These files were written by llama.cpp and gguf-py: the same layout, the same bytes.
    copy_with_writer(g, dir.file("copy.gguf"));
    std::string original = read_bytes(path);
    const std::string copy = read_bytes(dir.file("copy.gguf"));
    if (g.version() == 2) {
      REQUIRE(original.size() >= 8);
      original[4] = 3;  // the writer writes version 3, otherwise identical to v2
    }
    CHECK(copy.size() == original.size());
    CHECK(copy == original);
  }
  CHECK(dir.entries() == std::vector<std::string>{"copy.gguf"});
}

TEST_CASE("round trip: every value type, nested arrays, alignment, tensor bytes") {
  TempDir dir;
  for (uint32_t alignment : {32u, 1u, 64u, 4096u}) {
    CAPTURE(alignment);
    std::vector<GgufValue> nested_strings = {GgufValue::string_array({"a", "", "ccc"}),
                                             GgufValue::string_array({}),
                                             GgufValue::string_array({"\xe2\x96\x81x"})};
    std::vector<GgufValue> nested_ints = {GgufValue::i32_array({1, -2}),
                                          GgufValue::array(GgufType::UINT8, {GgufValue::u8(7)})};
    const std::vector<std::pair<std::string, GgufValue>> kv = {
        {"general.architecture", GgufValue::string("llama")},
        {"t.u8", GgufValue::u8(255)},
        {"t.i8", GgufValue::i8(-128)},
        {"t.u16", GgufValue::u16(65535)},
        {"t.i16", GgufValue::i16(-32768)},
        {"t.u32", GgufValue::u32(0xffffffffu)},
        {"t.i32", GgufValue::i32(INT32_MIN)},
        {"t.u64", GgufValue::u64(UINT64_MAX)},
        {"t.i64", GgufValue::i64(INT64_MIN)},
        {"t.f32", GgufValue::f32(-1.5e-30f)},
        {"t.f32nan", GgufValue::f32(std::nanf(""))},
        {"t.f64", GgufValue::f64(0.1)},
        {"t.bool", GgufValue::boolean(true)},
        {"t.false", GgufValue::boolean(false)},
        {"t.str", GgufValue::string(std::string("nul\0inside \xf0\x9f\x98\x80", 15))},
        {"t.empty", GgufValue::string("")},
        {"t.strs", GgufValue::string_array({"x", "yy"})},
        {"t.f32s", GgufValue::f32_array({1.0f, -0.0f, 3.25f})},
        {"t.bools",
         GgufValue::array(GgufType::BOOL, {GgufValue::boolean(false), GgufValue::boolean(true)})},
        {"t.u64s",
         GgufValue::array(GgufType::UINT64, {GgufValue::u64(1), GgufValue::u64(1ull << 63)})},
        {"t.f64s", GgufValue::array(GgufType::FLOAT64, {GgufValue::f64(-2.5)})},
        {"t.none", GgufValue::array(GgufType::INT16, {})},
        {"t.nested_strings", GgufValue::array(GgufType::ARRAY, nested_strings)},
        {"t.nested_ints", GgufValue::array(GgufType::ARRAY, nested_ints)},
    };
    // Tensors of several block types, filled with a pattern, one made by fill().
    struct Tensor {
      std::string name;
      TensorType type;
      std::vector<uint64_t> dims;
      std::string bytes;
    };
    std::vector<Tensor> tensors = {
        {"a", TensorType::F32, {3}, {}},          {"b", TensorType::Q4_0, {64, 3}, {}},
        {"c", TensorType::Q6_K, {256, 1, 2}, {}}, {"d", TensorType::F16, {1, 1, 1, 5}, {}},
        {"e", TensorType::BF16, {7, 3}, {}},
    };
    for (size_t i = 0; i < tensors.size(); ++i) {
      Tensor& t = tensors[i];
      uint64_t n = 1;
      for (uint64_t d : t.dims) n *= d;
      const sllm::TensorTypeInfo* info = sllm::tensor_type_info(uint32_t(t.type));
      t.bytes.resize(n / info->block_elems * info->block_bytes);
      for (size_t j = 0; j < t.bytes.size(); ++j) t.bytes[j] = char(j * 7 + i * 31 + 1);
    }
    GgufWriter w(alignment);
    for (const auto& e : kv) w.set(e.first, e.second);
    for (const Tensor& t : tensors) {
      if (t.name == "c") {
        w.add_tensor(t.name, t.type, t.dims,
                     [&t](uint8_t* dst) { std::memcpy(dst, t.bytes.data(), t.bytes.size()); });
      } else {
        w.add_tensor(t.name, t.type, t.dims, t.bytes.data(), t.bytes.size());
      }
    }
    const std::string path = dir.file("rt.gguf");
    w.write(path);
    const Gguf g = Gguf::open(path);
    CHECK(g.version() == 3);
    CHECK(g.alignment() == alignment);
    // general.alignment is written (first) only when it is not the default.
    const size_t extra = alignment == 32 ? 0 : 1;
    REQUIRE(g.metadata().size() == kv.size() + extra);
    if (extra) CHECK(g.metadata()[0].second == GgufValue::u32(alignment));
    for (size_t i = 0; i < kv.size(); ++i) {
      CAPTURE(kv[i].first);
      CHECK(g.metadata()[i + extra].first == kv[i].first);
      CHECK(g.metadata()[i + extra].second == kv[i].second);
    }
    CHECK(g.get<std::string>("t.str").size() == 15);
    CHECK(g.get<uint64_t>("t.u64") == UINT64_MAX);
    CHECK(g.get<int64_t>("t.i64") == INT64_MIN);
    CHECK(g.get<bool>("t.bool"));
    CHECK(std::isnan(g.get<float>("t.f32nan")));
    const GgufValue& ns = *g.find("t.nested_strings");
    REQUIRE(ns.as_array().size() == 3);
    CHECK(ns.array_type() == GgufType::ARRAY);
    CHECK(ns.as_array()[0].as_array()[2].as_string() == "ccc");
    CHECK(ns.as_array()[2].as_array()[0].as_string() == "\xe2\x96\x81x");
    REQUIRE(g.tensors().size() == tensors.size());
    for (size_t i = 0; i < tensors.size(); ++i) {
      const sllm::TensorInfo& t = g.tensors()[i];
      CAPTURE(t.name);
      CHECK(t.name == tensors[i].name);
      CHECK(t.type == tensors[i].type);
      CHECK(dims_of(t) == tensors[i].dims);
      CHECK((g.data_offset() + t.offset) % alignment == 0);
      REQUIRE(t.n_bytes == tensors[i].bytes.size());
      CHECK(std::memcmp(t.data, tensors[i].bytes.data(), t.n_bytes) == 0);
    }
    // Each tensor is padded to the alignment, the last one too.
    const sllm::TensorInfo& last = g.tensors().back();
    const uint64_t end = g.data_offset() + last.offset + last.n_bytes;
    CHECK(g.file_size() == (end + alignment - 1) / alignment * alignment);
    CHECK(dir.entries() == std::vector<std::string>{"rt.gguf"});
  }
}

TEST_CASE("GgufValue: equality, access and the human form") {
  CHECK(GgufValue::u32(5) == GgufValue::u32(5));
  CHECK(GgufValue::u32(5) != GgufValue::i32(5));
  CHECK(GgufValue::f32(1) != GgufValue::f64(1));
  CHECK(GgufValue::string_array({"a"}) != GgufValue::string_array({"a", "b"}));
  CHECK(GgufValue::u64(UINT64_MAX).as_u64() == UINT64_MAX);
  CHECK(GgufValue::i8(-3).is_integer());
  CHECK_FALSE(GgufValue::boolean(true).is_integer());
  CHECK(GgufValue::f64(2).is_float());

  CHECK(GgufValue::u64(UINT64_MAX).to_string() == "18446744073709551615");
  CHECK(GgufValue::i16(-7).to_string() == "-7");
  CHECK(GgufValue::f32(1e-5f).to_string() == "1e-05");
  CHECK(GgufValue::f32(0.1f).to_string() == "0.1");
  CHECK(GgufValue::f64(0.1).to_string() == "0.1");
  CHECK(GgufValue::boolean(false).to_string() == "false");
  CHECK(GgufValue::string("a\"b\n\x01").to_string() == "\"a\\\"b\\n\\x01\"");
  CHECK(GgufValue::i32_array({1, 2, 3}).to_string() == "[1, 2, 3]");
  CHECK(GgufValue::i32_array({1, 2, 3, 4}).to_string(2) == "[1, 2, ... (4 in all)]");
  CHECK(GgufValue::i32_array({}).to_string() == "[]");
  CHECK(GgufValue::array(GgufType::ARRAY, {GgufValue::string_array({"x"})}).to_string() ==
        "[[\"x\"]]");
  const std::string long_text(500, 'z');
  CHECK(GgufValue::string(long_text).to_string().find("(500 bytes)") != std::string::npos);

  CHECK_THROWS_WITH_AS(GgufValue::array(GgufType::INT32, {GgufValue::u32(1)}),
                       Contains("array of INT32 has a UINT32 at index 0"), sllm::Error);
}

TEST_CASE("writer: bad tensors and alignments are refused when added") {
  GgufWriter w;
  const float data[4] = {};
  w.add_tensor("x", TensorType::F32, {4}, data, sizeof(data));
  CHECK_THROWS_WITH_AS(w.add_tensor("x", TensorType::F32, {4}, data, sizeof(data)),
                       Contains("duplicate tensor name 'x'"), sllm::Error);
  CHECK_THROWS_WITH_AS(w.add_tensor("y", TensorType::F32, {4}, data, 12),
                       Contains("needs 16 bytes, got 12"), sllm::Error);
  CHECK_THROWS_WITH_AS(w.add_tensor("y", TensorType::F32, {4, 0}, data, 0),
                       Contains("zero dimension"), sllm::Error);
  CHECK_THROWS_WITH_AS(w.add_tensor("y", TensorType::F32, {1, 1, 1, 1, 4}, data, 16),
                       Contains("5 dimensions"), sllm::Error);
  CHECK_THROWS_WITH_AS(w.add_tensor("y", TensorType::Q8_0, {16}, data, 16),
                       Contains("not a whole number of Q8_0 blocks"), sllm::Error);
  CHECK_THROWS_WITH_AS(w.add_tensor("y", TensorType(4), {16}, data, 16),
                       Contains("unknown type id 4"), sllm::Error);
  CHECK_THROWS_WITH_AS(GgufWriter(3), Contains("power of two, not 3"), sllm::Error);
  CHECK_THROWS_WITH_AS(GgufWriter(0), Contains("power of two, not 0"), sllm::Error);
  CHECK_THROWS_WITH_AS(w.set("general.alignment", GgufValue::u32(48)),
                       Contains("power of two, not 48"), sllm::Error);
  CHECK_THROWS_WITH_AS(w.set("general.alignment", GgufValue::u64(64)),
                       Contains("must be a UINT32, not UINT64"), sllm::Error);
}

TEST_CASE("writer: set() replaces a key in place, general.alignment takes effect") {
  TempDir dir;
  GgufWriter w;
  w.set("a", GgufValue::u32(1));
  w.set("b", GgufValue::u32(2));
  w.set("a", GgufValue::string("one"));
  w.set("general.alignment", GgufValue::u32(128));
  const float data[3] = {1, 2, 3};
  w.add_tensor("x", TensorType::F32, {3}, data, sizeof(data));
  w.add_tensor("y", TensorType::F32, {3}, data, sizeof(data));
  w.write(dir.file("kv.gguf"));
  const Gguf g = Gguf::open(dir.file("kv.gguf"));
  REQUIRE(g.metadata().size() == 3);
  CHECK(g.metadata()[0].first == "a");
  CHECK(g.metadata()[0].second == GgufValue::string("one"));
  CHECK(g.alignment() == 128);
  CHECK(g.data_offset() % 128 == 0);
  CHECK(g.tensor("y").offset == 128);
}

TEST_CASE("writer: a failed write leaves no file, and never a partial one under the name") {
  TempDir dir;
  const float data[4] = {1, 2, 3, 4};

  SUBCASE("the directory does not exist") {
    GgufWriter w;
    w.add_tensor("x", TensorType::F32, {4}, data, sizeof(data));
    CHECK_THROWS_WITH_AS(w.write(dir.file("missing/out.gguf")),
                         Contains("missing/out.gguf': No such file or directory"), sllm::Error);
    CHECK(dir.entries().empty());
  }
  SUBCASE("fill() throws: its exception comes through, the old file stays") {
    {
      GgufWriter first;
      first.set("version", GgufValue::string("old"));
      first.write(dir.file("out.gguf"));
    }
    const std::string before = read_bytes(dir.file("out.gguf"));
    GgufWriter w;
    w.set("version", GgufValue::string("new"));
    w.add_tensor("x", TensorType::F32, {4}, data, sizeof(data));
    w.add_tensor("y", TensorType::F32, {1 << 20},
                 [](uint8_t*) { throw std::runtime_error("conversion failed"); });
    CHECK_THROWS_WITH_AS(w.write(dir.file("out.gguf")), "conversion failed", std::runtime_error);
    CHECK(dir.entries() == std::vector<std::string>{"out.gguf"});
    CHECK(read_bytes(dir.file("out.gguf")) == before);
  }
  SUBCASE("the target is a directory: rename fails, the temporary file goes") {
    fs::create_directory(dir.file("taken.gguf"));
    GgufWriter w;
    w.add_tensor("x", TensorType::F32, {4}, data, sizeof(data));
    CHECK_THROWS_WITH_AS(w.write(dir.file("taken.gguf")), Contains("cannot rename"), sllm::Error);
    CHECK(dir.entries() == std::vector<std::string>{"taken.gguf"});
  }
  SUBCASE("a write fails (file size limit): the error names the file, nothing is left") {
    // RLIMIT_FSIZE makes write() fail with EFBIG, as a full disk fails with ENOSPC.
    const auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
    rlimit old_limit;
    REQUIRE(::getrlimit(RLIMIT_FSIZE, &old_limit) == 0);
    rlimit limit = old_limit;
    limit.rlim_cur = 4096;
    REQUIRE(::setrlimit(RLIMIT_FSIZE, &limit) == 0);
    std::vector<float> big(1 << 16);
    GgufWriter w;
    w.add_tensor("x", TensorType::F32, {big.size()}, big.data(), big.size() * 4);
    CHECK_THROWS_WITH_AS(
        w.write(dir.file("big.gguf")),
        Contains(("cannot write '" + dir.file("big.gguf") + "': File too large").c_str()),
        sllm::Error);
    ::setrlimit(RLIMIT_FSIZE, &old_limit);
    std::signal(SIGXFSZ, old_handler);
    CHECK(dir.entries().empty());
  }
}
