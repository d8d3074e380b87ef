// `sllm quantize` (tools/cli_quantize.cpp), run in-process on GGUF files written here: the
// tensor types of each type name against the ones llama-quantize (llama.cpp c392e50) chose for
// tinyllama-1.1b's tensors, general.file_type, ggml's row sizes, the data against the reference
// quantizers, and the fallback of rows that are not whole blocks.
#include <map>
#include <set>

#include "cli.h"
#include "test_support.h"

using sllm::Gguf;
using sllm::GgufValue;
using sllm::TensorInfo;
using sllm::TensorType;
using sllm_test::TempDir;

namespace {

// A llama model's tensor names with the given row widths, two rows per matrix (the rules look
// at names, layers and widths only), random F16 weights and F32 norms.
struct Shape {
  uint64_t dim, kv_dim, ffn, vocab;
  uint32_t layers;
  bool tied;
};

void write_model(const std::string& path, const Shape& s) {
  sllm::GgufWriter w;
  w.set("general.architecture", GgufValue::string("llama"));
  w.set("llama.block_count", GgufValue::u32(s.layers));
  w.set("llama.attention.head_count", GgufValue::u32(uint32_t(s.dim / 64)));
  w.set("llama.attention.head_count_kv", GgufValue::u32(uint32_t(s.kv_dim / 64)));
  w.set("test.kept", GgufValue::string("kept"));
  struct Tensor {
    std::string name;
    uint64_t cols, rows;
  };
  std::vector<Tensor> tensors = {{"token_embd.weight", s.dim, 2}, {"output_norm.weight", s.dim, 0}};
  if (!s.tied) tensors.push_back({"output.weight", s.dim, 2});
  for (uint32_t l = 0; l < s.layers; ++l) {
    const std::string blk = "blk." + std::to_string(l) + ".";
    for (const Tensor& t : std::vector<Tensor>{{"attn_norm.weight", s.dim, 0},
                                               {"attn_q.weight", s.dim, 2},
                                               {"attn_k.weight", s.dim, 2},
                                               {"attn_v.weight", s.dim, 2},
                                               {"attn_output.weight", s.dim, 2},
                                               {"ffn_norm.weight", s.dim, 0},
                                               {"ffn_gate.weight", s.dim, 2},
                                               {"ffn_up.weight", s.dim, 2},
                                               {"ffn_down.weight", s.ffn, 2}}) {
      tensors.push_back({blk + t.name, t.cols, t.rows});
    }
  }
  sllm::Rng rng(1);
  std::vector<std::vector<uint16_t>> data;
  for (const Tensor& t : tensors) {
    const uint64_t n = t.cols * std::max<uint64_t>(t.rows, 1);
    data.emplace_back(2 * n);  // room for F32 norms
    uint16_t* d = data.back().data();
    if (t.rows == 0) {
      std::vector<float> ones(n, 1.0f);
      std::memcpy(d, ones.data(), 4 * n);
      w.add_tensor(t.name, TensorType::F32, {t.cols}, d, 4 * n);
    } else {
      for (uint64_t i = 0; i < n; ++i) d[i] = sllm::f32_to_fp16(0.05f * (2 * rng.uniform() - 1));
      w.add_tensor(t.name, TensorType::F16, {t.cols, t.rows}, d, 2 * n);
    }
  }
  w.write(path);
}

int quantize(std::vector<std::string> args) {
  args.insert(args.begin(), "quantize");
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(&a[0]);
  return sllm::cli::cmd_quantize(int(argv.size()), argv.data());
}

// ggml's bytes per row of `cols` values.
uint64_t ggml_row_bytes(TensorType type, uint64_t cols) {
  switch (type) {
    case TensorType::Q2_K:
      return cols / 256 * 84;
    case TensorType::Q3_K:
      return cols / 256 * 110;
    case TensorType::Q4_K:
      return cols / 256 * 144;
    case TensorType::Q5_K:
      return cols / 256 * 176;
    case TensorType::Q6_K:
      return cols / 256 * 210;
    case TensorType::Q8_0:
      return cols / 32 * 34;
    case TensorType::Q4_0:
      return cols / 32 * 18;
    case TensorType::Q5_0:
      return cols / 32 * 22;
    case TensorType::F16:
      return cols * 2;
    default:
      return cols * 4;
  }
}

// Checks every tensor of out against in: the type `want` gives (Q4_K where it has no entry,
// F32 for vectors), ggml's size, and (with check_data) data equal to the reference quantizer's
// output for the source rows (vectors copied).
void check_quantized(const Gguf& in, const Gguf& out, const std::map<std::string, TensorType>& want,
                     TensorType rest = TensorType::Q4_K, bool check_data = true) {
  REQUIRE(out.tensors().size() == in.tensors().size());
  for (const TensorInfo& t : in.tensors()) {
    CAPTURE(t.name);
    const TensorInfo& q = out.tensor(t.name);
    const auto it = want.find(t.name);
    const TensorType type = t.n_dims == 1 ? TensorType::F32 : it != want.end() ? it->second : rest;
    CHECK(sllm::tensor_type_name(q.type) == std::string(sllm::tensor_type_name(type)));
    CHECK(q.n_dims == t.n_dims);
    CHECK(q.ne[0] == t.ne[0]);
    CHECK(q.ne[1] == t.ne[1]);
    const uint64_t row_bytes = ggml_row_bytes(type, t.ne[0]);
    REQUIRE(q.n_bytes == row_bytes * t.n_rows());
    if (!check_data) continue;
    std::vector<float> row(t.ne[0]);
    std::vector<uint8_t> expect(row_bytes);
    for (uint64_t r = 0; r < t.n_rows(); ++r) {
      sllm::dequantize_row(t.type, t.data + r * sllm::tensor_row_bytes(t.type, t.ne[0]), row.data(),
                           t.ne[0]);
      sllm::quantize_row(type, row.data(), expect.data(), t.ne[0]);
      CHECK(std::memcmp(q.data + r * row_bytes, expect.data(), row_bytes) == 0);
    }
  }
}

// The tensors of tinyllama-1.1b (22 layers, 8 query heads per KV head) that llama-quantize
// does not store in the type's base type (checked against its q2_k, q3_k_m and q4_k_m files).
std::map<std::string, TensorType> llama_quantize_choices(const std::string& type) {
  std::map<std::string, TensorType> want;
  if (type != "q8_0") want["output.weight"] = TensorType::Q6_K;
  auto set = [&](int l, const char* tensor, TensorType t) {
    want["blk." + std::to_string(l) + "." + tensor] = t;
  };
  for (int l = 0; l < 22; ++l) {
    // The first and last eighth of the layers and every third between.
    const bool more_bits = l < 2 || l >= 19 || (l - 2) % 3 == 2;
    if (type == "q2_k") {
      set(l, "attn_v.weight", TensorType::Q4_K);
      set(l, "ffn_down.weight", TensorType::Q3_K);
      set(l, "attn_output.weight", TensorType::Q3_K);
    } else if (type == "q3_k_m") {
      set(l, "attn_v.weight", l < 2 ? TensorType::Q5_K : TensorType::Q4_K);
      set(l, "ffn_down.weight", l < 1 ? TensorType::Q5_K : TensorType::Q4_K);
      set(l, "attn_output.weight", TensorType::Q4_K);
    } else if (type == "q3_k_l") {
      for (const char* tensor : {"attn_v.weight", "ffn_down.weight", "attn_output.weight"})
        set(l, tensor, TensorType::Q5_K);
    } else if ((type == "q4_k_m" || type == "q5_k_m") && more_bits) {
      set(l, "attn_v.weight", TensorType::Q6_K);
      set(l, "ffn_down.weight", TensorType::Q6_K);
    } else if (type == "q4_k_s") {
      if (l < 4) set(l, "attn_v.weight", TensorType::Q5_K);
      if (l < 2) set(l, "ffn_down.weight", TensorType::Q5_K);
    }
  }
  return want;
}

}  // namespace

TEST_CASE("every type stores tinyllama's tensors in llama-quantize's types") {
  TempDir dir;
  const Shape tinyllama{2048, 256, 5632, 32000, 22, false};
  write_model(dir.path("in.gguf"), tinyllama);
  const Gguf in = Gguf::open(dir.path("in.gguf"));
  struct Case {
    const char* type;
    const char* same_as;  // the type whose choices an alias makes
    uint32_t file_type;   // llama.cpp's LLAMA_FTYPE_MOSTLY_*
    TensorType base;
    bool check_data;  // the data too (costs time)
  };
  const Case cases[] = {
      {"q8_0", "q8_0", 7, TensorType::Q8_0, false},
      {"q4_0", "q4_0", 2, TensorType::Q4_0, true},
      {"q5_0", "q5_0", 8, TensorType::Q5_0, false},
      {"q2_k", "q2_k", 10, TensorType::Q2_K, true},
      {"q3_k_s", "q3_k_s", 11, TensorType::Q3_K, false},
      {"q3_k_m", "q3_k_m", 12, TensorType::Q3_K, true},
      {"Q3_K", "q3_k_m", 12, TensorType::Q3_K, false},
      {"q3_k_l", "q3_k_l", 13, TensorType::Q3_K, false},
      {"q4_k_m", "q4_k_m", 15, TensorType::Q4_K, true},
      {"Q4_K", "q4_k_m", 15, TensorType::Q4_K, false},
      {"q4_k_s", "q4_k_s", 14, TensorType::Q4_K, false},
      {"q5_k_m", "q5_k_m", 17, TensorType::Q5_K, false},
      {"q5_k", "q5_k_m", 17, TensorType::Q5_K, false},
      {"q5_k_s", "q5_k_s", 16, TensorType::Q5_K, false},
      {"q6_k", "q6_k", 18, TensorType::Q6_K, false},
  };
  for (const Case& c : cases) {
    CAPTURE(c.type);
    const std::string out_path = dir.path(std::string(c.type) + ".gguf");
    REQUIRE(quantize({"-q", "-t", "2", dir.path("in.gguf"), out_path, c.type}) == 0);
    const Gguf out = Gguf::open(out_path);
    CHECK(out.get<uint32_t>("general.file_type") == c.file_type);
    CHECK(out.get<std::string>("test.kept") == "kept");
    check_quantized(in, out, llama_quantize_choices(c.same_as), c.base, c.check_data);
  }
}

TEST_CASE("q2_k: attn_v gets Q3_K where fewer than 4 query heads share a KV head") {
  TempDir dir;
  write_model(dir.path("in.gguf"), Shape{256, 128, 256, 256, 2, false});  // 4 heads, 2 KV heads
  REQUIRE(quantize({"-q", dir.path("in.gguf"), dir.path("out.gguf"), "q2_k"}) == 0);
  const Gguf out = Gguf::open(dir.path("out.gguf"));
  CHECK(out.tensor("blk.1.attn_v.weight").type == TensorType::Q3_K);
  CHECK(out.tensor("blk.1.attn_q.weight").type == TensorType::Q2_K);
}

TEST_CASE("a tied token embedding gets the output matrix's type") {
  TempDir dir;
  write_model(dir.path("in.gguf"), Shape{256, 256, 512, 512, 8, true});
  REQUIRE(quantize({"-q", dir.path("in.gguf"), dir.path("out.gguf"), "q4_k_m"}) == 0);
  const Gguf out = Gguf::open(dir.path("out.gguf"));
  CHECK(out.tensor("token_embd.weight").type == TensorType::Q6_K);
  CHECK(out.tensor("blk.0.attn_q.weight").type == TensorType::Q4_K);
  // Of 8 layers, 0, 3, 6 and 7 get more bits (the first and last eighth, every third between).
  CHECK(out.tensor("blk.3.attn_v.weight").type == TensorType::Q6_K);
  CHECK(out.tensor("blk.4.attn_v.weight").type == TensorType::Q4_K);
}

TEST_CASE("a fused attn_qkv matrix gets llama-quantize's type: Q4_K, Q5_K or Q6_K") {
  TempDir dir;
  sllm::GgufWriter w;
  w.set("general.architecture", GgufValue::string("phi3"));
  w.set("phi3.block_count", GgufValue::u32(1));
  const std::vector<float> values(256 * 3, 0.5f);
  w.add_tensor("blk.0.attn_qkv.weight", TensorType::F32, {256, 3}, values.data(), 4 * 768);
  w.add_tensor("blk.0.attn_output.weight", TensorType::F32, {256, 3}, values.data(), 4 * 768);
  w.write(dir.path("in.gguf"));
  struct Case {
    const char* type;
    TensorType qkv, output;
  };
  for (const Case& c : {Case{"q3_k_m", TensorType::Q4_K, TensorType::Q4_K},
                        Case{"q3_k_l", TensorType::Q4_K, TensorType::Q5_K},
                        Case{"q4_k_m", TensorType::Q5_K, TensorType::Q4_K},
                        Case{"q5_k_m", TensorType::Q6_K, TensorType::Q5_K}}) {
    CAPTURE(c.type);
    const std::string out_path = dir.path(std::string(c.type) + ".gguf");
    REQUIRE(quantize({"-q", dir.path("in.gguf"), out_path, c.type}) == 0);
    const Gguf out = Gguf::open(out_path);
    CHECK(out.tensor("blk.0.attn_qkv.weight").type == c.qkv);
    CHECK(out.tensor("blk.0.attn_output.weight").type == c.output);
  }
}

TEST_CASE(
    "rows that are not whole blocks fall back: Q4_0, Q5_0 or Q8_0 for rows of 32s, else F16") {
  TempDir dir;
  // Rows of 288 (9 blocks of 32, not whole super-blocks) and ffn_down rows of 100.
  write_model(dir.path("in.gguf"), Shape{288, 288, 100, 512, 8, false});
  const Gguf in = Gguf::open(dir.path("in.gguf"));
  REQUIRE(quantize({"-q", dir.path("in.gguf"), dir.path("km.gguf"), "q4_k_m"}) == 0);
  // Q6_K wishes (the output, attn_v of layers 0, 3, 6, 7) become Q8_0, Q4_K ones Q5_0, as
  // llama-quantize makes them.
  std::map<std::string, TensorType> want;
  for (const TensorInfo& t : in.tensors()) want[t.name] = TensorType::Q5_0;
  want["output.weight"] = TensorType::Q8_0;
  for (int l : {0, 3, 6, 7}) want["blk." + std::to_string(l) + ".attn_v.weight"] = TensorType::Q8_0;
  for (int l = 0; l < 8; ++l)
    want["blk." + std::to_string(l) + ".ffn_down.weight"] = TensorType::F16;
  check_quantized(in, Gguf::open(dir.path("km.gguf")), want);

  REQUIRE(quantize({"-q", dir.path("in.gguf"), dir.path("q6.gguf"), "q6_k"}) == 0);
  for (auto& [name, type] : want) {
    if (type != TensorType::F16) type = TensorType::Q8_0;
  }
  check_quantized(in, Gguf::open(dir.path("q6.gguf")), want);

  // Q2_K and Q3_K wishes become Q4_0 (llama-quantize's IQ4_NL has as many bits).
  REQUIRE(quantize({"-q", dir.path("in.gguf"), dir.path("q2.gguf"), "q2_k"}) == 0);
  const Gguf q2 = Gguf::open(dir.path("q2.gguf"));
  CHECK(q2.tensor("blk.0.attn_q.weight").type == TensorType::Q4_0);
  CHECK(q2.tensor("blk.0.attn_output.weight").type == TensorType::Q4_0);
  CHECK(q2.tensor("blk.0.ffn_down.weight").type == TensorType::F16);
}

TEST_CASE("an unknown type is a usage error that lists the known ones, and writes nothing") {
  TempDir dir;
  write_model(dir.path("in.gguf"), Shape{256, 256, 256, 256, 1, false});
  try {
    quantize({dir.path("in.gguf"), dir.path("out.gguf"), "q3_x"});
    FAIL("no error");
  } catch (const sllm::cli::UsageError& e) {
    CHECK(std::string(e.what()) ==
          "unknown quantization type 'q3_x' (known: "
          "q8_0, q4_0, q5_0, q2_k, q3_k_s, q3_k_m, q3_k, q3_k_l, q4_k_m, q4_k, q4_k_s, q5_k_m, "
          "q5_k, q5_k_s, q6_k)");
  }
  CHECK(dir.files() == std::vector<std::string>{"in.gguf"});
}
