// Conversion of Hugging Face checkpoints to GGUF (tools/hf_convert.h), checked against files that
// other programs made: the stories260K.gguf that llama.cpp's converter wrote from the same
// weights and llama2.c's greedy ids; the vocabularies llama.cpp wrote and its tokenizer test
// vectors; llama.cpp's tiny models of each architecture, turned back into Hugging Face layout by
// this test; the tiny BERT of ref-embd/ saved as a sentence-transformers folder, whose conversion
// must embed as llama.cpp did; and hostile inputs, each an Error that leaves no file behind.
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <random>
#include <tuple>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "hf_convert.h"
#include "hf_tokenizer.h"
#include "safetensors.h"
#include "test_support.h"

namespace {

namespace hf = sllm::hf;
using nlohmann::json;
using sllm::Gguf;
using sllm::GgufValue;
using sllm::TensorInfo;
using sllm::TensorType;
using sllm::TokenType;
using sllm_test::TempDir;

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), std::streamsize(bytes.size()));
  REQUIRE(out.good());
}

void write_json(const std::string& path, const json& j) {
  write_file(path, j.dump(2));
}

// The checkpoint in tests/data/stories260K-hf: a Llama with tied embeddings, F32.
const char* const kStoriesFiles[] = {"config.json", "model.safetensors", "tokenizer.model",
                                     "tokenizer_config.json"};

std::string stories_hf(const std::string& file = "") {
  return sllm_test::test_data("stories260K-hf" + (file.empty() ? "" : "/" + file));
}

void copy_stories(const TempDir& dir) {
  for (const char* f : kStoriesFiles) {
    write_file(dir.path(f), sllm_test::read_file(stories_hf(f)));
  }
}

// A tensor of a safetensors file, as this test reads and writes them (independently of the
// converter's reader).
struct StEntry {
  std::string name, dtype;
  std::vector<uint64_t> shape;
  std::string bytes;
};

std::vector<StEntry> read_safetensors(const std::string& path) {
  const std::string file = sllm_test::read_file(path);
  uint64_t n = 0;
  std::memcpy(&n, file.data(), 8);
  const json header = json::parse(file.substr(8, n));
  std::vector<StEntry> entries;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    const uint64_t begin = it.value()["data_offsets"][0], end = it.value()["data_offsets"][1];
    entries.push_back({it.key(), it.value()["dtype"], it.value()["shape"],
                       file.substr(8 + n + begin, end - begin)});
  }
  return entries;
}

// The safetensors layout: header length, JSON header (padded with spaces to 8 bytes), data.
std::string safetensors_bytes(const std::vector<StEntry>& entries) {
  json header = json::object();
  header["__metadata__"] = {{"format", "pt"}};
  std::string data;
  for (const StEntry& e : entries) {
    header[e.name] = {{"dtype", e.dtype},
                      {"shape", e.shape},
                      {"data_offsets", {data.size(), data.size() + e.bytes.size()}}};
    data += e.bytes;
  }
  std::string h = header.dump();
  h.resize((h.size() + 7) / 8 * 8, ' ');
  const uint64_t n = h.size();
  return std::string(reinterpret_cast<const char*>(&n), 8) + h + data;
}

void write_safetensors(const std::string& path, const std::vector<StEntry>& entries) {
  write_file(path, safetensors_bytes(entries));
}

std::string tensor_bytes(const TensorInfo& t) {
  return std::string(reinterpret_cast<const char*>(t.data), size_t(t.n_bytes));
}

std::vector<float> tensor_floats(const TensorInfo& t) {
  REQUIRE(t.type == TensorType::F32);
  std::vector<float> v(size_t(t.n_elements()));
  std::memcpy(v.data(), t.data, t.n_bytes);
  return v;
}

std::string float_bytes(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4);
}

// Converts dir into out_dir/out.gguf, which must fail: returns the Error's message, having
// checked that no file (not even a temporary one) was left in out_dir.
std::string convert_error(const std::string& dir, const TempDir& out_dir,
                          const hf::ConvertOptions& options = {}) {
  const std::vector<std::string> before = out_dir.files();
  const std::string message = sllm_test::error_message(
      [&] { hf::convert_checkpoint(dir, out_dir.path("out.gguf"), options); });
  CHECK(out_dir.files() == before);
  return message;
}

// Greedy ids from BOS through the Session API: evaluate, take the largest logit, repeat.
std::vector<int32_t> greedy_ids(const sllm::Model& model, size_t n) {
  sllm::Session session(model);
  std::vector<int32_t> ids;
  int32_t next = model.tokenizer().bos();
  for (size_t i = 0; i < n; ++i) {
    session.evaluate({next});
    const std::vector<float>& logits = session.logits();
    next = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
    ids.push_back(next);
  }
  return ids;
}

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

std::string greedy_text(const sllm::Model& model, int32_t n) {
  sllm::Session session(model);
  sllm::GenerateOptions o;
  o.temperature = 0;
  o.max_tokens = n;
  std::string text;
  session.generate("", o, [&](std::string_view piece) { text += piece; });
  return text;
}

}  // namespace

TEST_CASE("stories260K-hf converts to the shipped stories260K.gguf's tensors and vocabulary") {
  TempDir out;
  const std::string path = out.path("s.gguf");
  const hf::ConvertResult r = hf::convert_checkpoint(stories_hf(), path, {});
  CHECK(r.architecture == "llama");
  CHECK(r.type == TensorType::F32);  // the checkpoint's own type
  CHECK(r.n_tensors == 47);
  const Gguf got = Gguf::open(path);
  const Gguf want = Gguf::open(sllm_test::test_data("stories260K.gguf"));

  // llama.cpp's converter made the shipped file from llama2.c's checkpoint, whose output matrix
  // is the embedding; the Hugging Face checkpoint ties them, so the conversion has none.
  CHECK(got.find_tensor("output.weight") == nullptr);
  CHECK(tensor_bytes(want.tensor("output.weight")) ==
        tensor_bytes(want.tensor("token_embd.weight")));
  CHECK(got.tensors().size() + 1 == want.tensors().size());
  for (const TensorInfo& w : want.tensors()) {
    if (w.name == "output.weight") continue;
    CAPTURE(w.name);
    const TensorInfo* g = got.find_tensor(w.name);
    REQUIRE(g != nullptr);
    CHECK(g->type == w.type);
    CHECK(g->shape_string() == w.shape_string());
    // Bit for bit: the Q and K rows permuted back to GGUF's order exactly as llama.cpp did.
    CHECK(tensor_bytes(*g) == tensor_bytes(w));
  }
  for (const char* key :
       {"general.architecture", "llama.embedding_length", "llama.block_count",
        "llama.feed_forward_length", "llama.attention.head_count", "llama.attention.head_count_kv",
        "llama.attention.layer_norm_rms_epsilon", "llama.rope.dimension_count",
        "tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.scores",
        "tokenizer.ggml.token_type", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.unknown_token_id"}) {
    const std::string name = key;
    CAPTURE(name);
    REQUIRE(got.find(key) != nullptr);
    CHECK(*got.find(key) == *want.find(key));
  }
  // config.json's max_position_embeddings; llama.cpp's llama2.c converter wrote 2048.
  CHECK(got.get<uint32_t>("llama.context_length") == 512);
  CHECK(got.get<uint32_t>("general.file_type") == 0);
  CHECK(got.get<bool>("tokenizer.ggml.add_bos_token"));
  CHECK_FALSE(got.get<bool>("tokenizer.ggml.add_eos_token"));
  CHECK(got.get<std::string>("general.name") == "stories260K-hf");

  // Greedy from BOS: llama2.c's ids (run.c, an independent implementation), and the same text
  // as the shipped file's.
  const sllm::Model model = sllm::Model::open(path);
  const std::vector<int32_t> want_ids =
      sllm_test::parse_ids(sllm_test::read_file(stories_hf("greedy_bos_n256.ids")));
  REQUIRE(want_ids.size() == 256);
  CHECK(greedy_ids(model, 256) == want_ids);
  const std::string text = greedy_text(model, 256);
  CHECK(text == greedy_text(sllm::Model::open(sllm_test::test_data("stories260K.gguf")), 256));
  CHECK(starts_with(text, "Once upon a time, there was "));
}

TEST_CASE("--type f16 and bf16 round the matrices; norms stay F32") {
  const Gguf want = Gguf::open(sllm_test::test_data("stories260K.gguf"));
  for (const auto& [option, type, file_type] :
       {std::make_tuple(hf::OutputType::kF16, TensorType::F16, 1u),
        std::make_tuple(hf::OutputType::kBF16, TensorType::BF16, 32u)}) {
    const std::string type_name = sllm::tensor_type_name(type);
    CAPTURE(type_name);
    TempDir out;
    hf::ConvertOptions options;
    options.type = option;
    uint64_t last_done = 0, calls = 0, total = 0;
    options.progress = [&](uint64_t done, uint64_t all) {
      CHECK(done > last_done);
      last_done = done;
      total = all;
      ++calls;
    };
    const hf::ConvertResult r = hf::convert_checkpoint(stories_hf(), out.path("s.gguf"), options);
    CHECK(calls == r.n_tensors);
    CHECK(last_done == total);
    CHECK(total == r.n_bytes);
    const Gguf got = Gguf::open(out.path("s.gguf"));
    CHECK(got.get<uint32_t>("general.file_type") == file_type);
    for (const TensorInfo& g : got.tensors()) {
      CAPTURE(g.name);
      const std::vector<float> w = tensor_floats(want.tensor(g.name));
      if (g.n_dims == 1) {
        CHECK(g.type == TensorType::F32);
        continue;
      }
      REQUIRE(g.type == type);
      size_t mismatches = 0;
      for (size_t i = 0; i < w.size(); ++i) {
        uint16_t h;
        std::memcpy(&h, g.data + 2 * i, 2);
        const uint16_t expected =
            type == TensorType::F16 ? sllm::f32_to_fp16(w[i]) : sllm::f32_to_bf16(w[i]);
        mismatches += h != expected;
      }
      CHECK(mismatches == 0);
    }
    // The rounded model still tells the story.
    CHECK(starts_with(greedy_text(sllm::Model::open(out.path("s.gguf")), 8), "Once upon a time"));
  }
}

TEST_CASE("shards listed in model.safetensors.index.json convert as one checkpoint") {
  TempDir dir, out;
  copy_stories(dir);
  std::remove(dir.path("model.safetensors").c_str());
  const std::vector<StEntry> all = read_safetensors(stories_hf("model.safetensors"));
  std::vector<StEntry> first, second;
  json weight_map = json::object();
  for (const StEntry& e : all) {
    const bool late = e.name.find("layers.3") != std::string::npos ||
                      e.name.find("layers.4") != std::string::npos || e.name == "model.norm.weight";
    (late ? second : first).push_back(e);
    weight_map[e.name] =
        late ? "model-00002-of-00002.safetensors" : "model-00001-of-00002.safetensors";
  }
  write_safetensors(dir.path("model-00001-of-00002.safetensors"), first);
  write_safetensors(dir.path("model-00002-of-00002.safetensors"), second);
  write_json(dir.path("model.safetensors.index.json"),
             {{"metadata", {{"total_size", 1044480}}}, {"weight_map", weight_map}});
  hf::convert_checkpoint(dir.path(), out.path("a.gguf"), {});
  hf::convert_checkpoint(stories_hf(), out.path("b.gguf"), {});
  const Gguf a = Gguf::open(out.path("a.gguf")), b = Gguf::open(out.path("b.gguf"));
  REQUIRE(a.tensors().size() == b.tensors().size());
  for (size_t i = 0; i < a.tensors().size(); ++i) {
    CHECK(a.tensors()[i].name == b.tensors()[i].name);
    CHECK(tensor_bytes(a.tensors()[i]) == tensor_bytes(b.tensors()[i]));
  }

  SUBCASE("a tensor the index places in another shard") {
    weight_map["model.norm.weight"] = "model-00001-of-00002.safetensors";
    write_json(dir.path("model.safetensors.index.json"), {{"weight_map", weight_map}});
    const std::string m = convert_error(dir.path(), out);
    CHECK(m.find("model.norm.weight") != std::string::npos);
    CHECK(m.find("model-00002-of-00002.safetensors") != std::string::npos);
  }
  SUBCASE("a shard that is missing") {
    std::remove(dir.path("model-00002-of-00002.safetensors").c_str());
    CHECK(convert_error(dir.path(), out).find("model-00002-of-00002.safetensors") !=
          std::string::npos);
  }
  SUBCASE("a shard outside the folder") {
    weight_map["model.norm.weight"] = "../elsewhere.safetensors";
    write_json(dir.path("model.safetensors.index.json"), {{"weight_map", weight_map}});
    CHECK(convert_error(dir.path(), out).find("not a file in") != std::string::npos);
  }
}

// ---- vocabularies ----

namespace {

// Converts the tokenizer in dir (--vocab-only) and reads it back.
Gguf convert_vocab(const std::string& dir, const TempDir& out) {
  hf::ConvertOptions options;
  options.vocab_only = true;
  hf::convert_checkpoint(dir, out.path("vocab.gguf"), options);
  return Gguf::open(out.path("vocab.gguf"));
}

// Runs llama.cpp's vectors vocab/ggml-vocab-NAME.gguf.{inp,out} on a converted vocabulary.
void check_vectors(const std::string& name, const Gguf& gguf) {
  const std::string inp = sllm_test::fixture("vocab/ggml-vocab-" + name + ".gguf.inp");
  const std::string outp = sllm_test::fixture("vocab/ggml-vocab-" + name + ".gguf.out");
  if (inp.empty() || outp.empty()) return;
  sllm_test::check_vocab_vectors(name, sllm::Tokenizer::from_gguf(gguf),
                                 sllm_test::read_vocab_vectors(inp, outp));
}

}  // namespace

TEST_CASE(
    "--vocab-only: Llama 3 and Qwen tokenizer.json pass llama.cpp's llama-bpe and qwen2 vectors") {
  const std::string llama3 = sllm_test::fixture("tokenizers/llama3.2");
  if (!llama3.empty()) {
    TempDir out;
    const Gguf g = convert_vocab(llama3, out);
    // Chosen from the tokenizer.json's split regex and its ignore_merges flag.
    CHECK(g.get<std::string>("tokenizer.ggml.pre") == "llama-bpe");
    CHECK(g.get<std::string>("tokenizer.ggml.model") == "gpt2");
    CHECK_FALSE(g.has("general.architecture"));  // no config.json: a tokenizer only
    CHECK(g.tensors().empty());
    check_vectors("llama-bpe", g);
  }
  const std::string qwen3 = sllm_test::fixture("tokenizers/qwen3");
  if (qwen3.empty()) return;
  TempDir out;
  const Gguf g = convert_vocab(qwen3, out);
  CHECK(g.get<std::string>("tokenizer.ggml.pre") == "qwen2");
  check_vectors("qwen2", g);
  // tokenizer_config.json's special tokens and chat template.
  CHECK(g.get<uint32_t>("tokenizer.ggml.eos_token_id") == 151645);      // <|im_end|>
  CHECK(g.get<uint32_t>("tokenizer.ggml.padding_token_id") == 151643);  // <|endoftext|>
  CHECK_FALSE(g.has("tokenizer.ggml.bos_token_id"));                    // bos_token: null
  CHECK_FALSE(g.get<bool>("tokenizer.ggml.add_bos_token"));
  CHECK(g.get<std::string>("tokenizer.chat_template").find("<|im_start|>") != std::string::npos);
  const std::vector<int32_t> types = g.get_array<int32_t>("tokenizer.ggml.token_type");
  REQUIRE(types.size() == 151669);
  CHECK(types[151644] == int32_t(TokenType::Control));      // <|im_start|>: special
  CHECK(types[151659] == int32_t(TokenType::Control));      // <|fim_prefix|>: looks special
  CHECK(types[151657] == int32_t(TokenType::UserDefined));  // <tool_call>

  const sllm::Tokenizer qwen = sllm::Tokenizer::from_gguf(g);
  // Chat markers are control tokens: matched whole only when parsing specials.
  const int32_t im_start = qwen.find_piece("<|im_start|>"), im_end = qwen.find_piece("<|im_end|>");
  REQUIRE(im_start >= 0);
  REQUIRE(im_end >= 0);
  std::vector<int32_t> expected = {im_start};
  for (int32_t id : qwen.encode("user\nHi", false, false)) expected.push_back(id);
  expected.push_back(im_end);
  CHECK(qwen.encode("<|im_start|>user\nHi<|im_end|>", false, true) == expected);
  const std::vector<int32_t> literal = qwen.encode("<|im_end|>", false, false);
  CHECK(literal.size() > 1);
  CHECK(qwen.decode(literal) == "<|im_end|>");
  CHECK(qwen.is_eog(im_end));
  CHECK(qwen.is_eog(qwen.find_piece("<|endoftext|>")));
  CHECK_FALSE(qwen.is_eog(im_start));
  CHECK(qwen.decode(expected) == "user\nHi");
  CHECK(qwen.decode(expected, true) == "<|im_start|>user\nHi<|im_end|>");
}

TEST_CASE(
    "--vocab-only: GPT-2's tokenizer.json and Llama 2's tokenizer.model equal llama.cpp's "
    "vocabularies") {
  SUBCASE("gpt2") {
    const std::string dir = sllm_test::fixture("tokenizers/gpt2");
    const std::string ref_path = sllm_test::fixture("vocab/ggml-vocab-gpt-2.gguf");
    if (dir.empty() || ref_path.empty()) return;
    TempDir out;
    const Gguf g = convert_vocab(dir, out);
    const Gguf ref = Gguf::open(ref_path);
    CHECK(g.get<std::string>("tokenizer.ggml.pre") == "gpt-2");
    for (const char* key : {"tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens",
                            "tokenizer.ggml.token_type", "tokenizer.ggml.merges"}) {
      const std::string name = key;
      CAPTURE(name);
      CHECK(*g.find(key) == *ref.find(key));
    }
    check_vectors("gpt-2", g);
  }
  SUBCASE("llama2-spm") {
    const std::string dir = sllm_test::fixture("tokenizers/llama2-spm");
    const std::string ref_path = sllm_test::fixture("vocab/ggml-vocab-llama-spm.gguf");
    if (dir.empty() || ref_path.empty()) return;
    TempDir out;
    const Gguf g = convert_vocab(dir, out);
    const Gguf ref = Gguf::open(ref_path);
    for (const char* key :
         {"tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens",
          "tokenizer.ggml.scores", "tokenizer.ggml.token_type", "tokenizer.ggml.bos_token_id",
          "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id"}) {
      const std::string name = key;
      CAPTURE(name);
      CHECK(*g.find(key) == *ref.find(key));
    }
    CHECK(g.get<bool>("tokenizer.ggml.add_space_prefix"));
    check_vectors("llama-spm", g);
  }
}

namespace {

// The pre_tokenizer of each family's published tokenizer.json.
const json kPreTokenizers = json::parse(R"({
  "mpt": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true},
  "refact": {"type": "Sequence", "pretokenizers": [
      {"type": "Digits", "individual_digits": true},
      {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]},
  "starcoder": {"type": "Sequence", "pretokenizers": [
      {"type": "Digits", "individual_digits": true},
      {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]},
  "falcon": {"type": "Sequence", "pretokenizers": [
      {"type": "Punctuation", "behavior": "Contiguous"},
      {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
      {"type": "Digits", "individual_digits": false},
      {"type": "Split", "pattern": {"Regex": "[0-9][0-9][0-9]"}, "behavior": "Isolated",
       "invert": false}]},
  "deepseek-coder": {"type": "Sequence", "pretokenizers": [
      {"type": "Split", "pattern": {"Regex": "[\r\n]"}, "behavior": "Isolated", "invert": false},
      {"type": "Split", "pattern": {"Regex": "\\s?\\p{L}+"}, "behavior": "Isolated", "invert": false},
      {"type": "Split", "pattern": {"Regex": "\\s?\\p{P}+"}, "behavior": "Isolated", "invert": false},
      {"type": "Split", "pattern": {"Regex": "[一-龥ࠀ-一가-퟿]+"}, "behavior": "Isolated",
       "invert": false},
      {"type": "Digits", "individual_digits": true},
      {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]},
  "deepseek-llm": {"type": "Sequence", "pretokenizers": [
      {"type": "Split", "pattern": {"Regex": "[\r\n]"}, "behavior": "Isolated", "invert": false},
      {"type": "Split", "pattern": {"Regex": "\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+"},
       "behavior": "Isolated", "invert": false},
      {"type": "Split", "pattern": {"Regex": "\\s?[!-/:-~！-／：-～‘-‟　-。]+"}, "behavior": "Isolated",
       "invert": false},
      {"type": "Split", "pattern": {"Regex": "\\s+$"}, "behavior": "Isolated", "invert": false},
      {"type": "Split", "pattern": {"Regex": "[一-龥ࠀ-一가-퟿]+"}, "behavior": "Isolated",
       "invert": false},
      {"type": "Digits", "individual_digits": true},
      {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]}
})");

// A tokenizer.json with the vocabulary of a GGUF made by llama.cpp: normal tokens in the model's
// vocab, control and user-defined tokens as added tokens, unused ones left out.
json tokenizer_json_from_gguf(const Gguf& g, const json& pre_tokenizer) {
  const std::vector<std::string> tokens = g.get_array<std::string>("tokenizer.ggml.tokens");
  const std::vector<int32_t> types = g.get_array<int32_t>("tokenizer.ggml.token_type");
  json vocab = json::object(), added = json::array();
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (types[i] == int32_t(TokenType::Normal)) vocab[tokens[i]] = i;
    if (types[i] == int32_t(TokenType::Control) || types[i] == int32_t(TokenType::UserDefined)) {
      added.push_back({{"id", i},
                       {"content", tokens[i]},
                       {"special", types[i] == int32_t(TokenType::Control)}});
    }
  }
  return {{"added_tokens", added},
          {"pre_tokenizer", pre_tokenizer},
          {"decoder", {{"type", "ByteLevel"}}},
          {"model",
           {{"type", "BPE"},
            {"vocab", vocab},
            {"merges", g.get_array<std::string>("tokenizer.ggml.merges")}}}};
}

}  // namespace

TEST_CASE("tokenizer.ggml.pre comes from the tokenizer.json's pre_tokenizer") {
  // Each family's vocabulary (from llama.cpp's GGUF) with its published pre_tokenizer: the
  // converter names the family, and the converted file passes the family's vectors.
  for (const auto& family :
       std::vector<std::pair<std::string, std::string>>{{"mpt", "gpt-2"},
                                                        {"starcoder", "starcoder"},
                                                        {"refact", "starcoder"},
                                                        {"falcon", "falcon"},
                                                        {"deepseek-coder", "deepseek-coder"},
                                                        {"deepseek-llm", "deepseek-llm"}}) {
    const std::string& name = family.first;
    const std::string& pre = family.second;
    CAPTURE(name);
    const std::string ref_path = sllm_test::fixture("vocab/ggml-vocab-" + name + ".gguf");
    if (ref_path.empty()) continue;
    const Gguf ref = Gguf::open(ref_path);
    TempDir dir, out;
    write_json(dir.path("tokenizer.json"), tokenizer_json_from_gguf(ref, kPreTokenizers.at(name)));
    const Gguf g = convert_vocab(dir.path(), out);
    CHECK(g.get<std::string>("tokenizer.ggml.pre") == pre);
    CHECK(*g.find("tokenizer.ggml.merges") == *ref.find("tokenizer.ggml.merges"));
    check_vectors(name, g);
  }
}

namespace {

// A small byte-level BPE tokenizer.json, Llama 3 style.
json small_tokenizer_json() {
  return json::parse(R"({
    "added_tokens": [
      {"id": 4, "content": "<|begin_of_text|>", "special": true},
      {"id": 5, "content": "<|eot_id|>", "special": true},
      {"id": 6, "content": "<tool>", "special": false},
      {"id": 7, "content": "<|reserved|>", "special": false},
      {"id": 8, "content": "a\u2581b", "special": false}],
    "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
      {"type": "Split", "pattern": {"Regex":
        "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
       "behavior": "Isolated", "invert": false},
      {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]},
    "post_processor": {"type": "Sequence", "processors": [
      {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
      {"type": "TemplateProcessing",
       "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                  {"Sequence": {"id": "A", "type_id": 0}}],
       "pair": [], "special_tokens": {}}]},
    "decoder": {"type": "ByteLevel"},
    "model": {"type": "BPE", "ignore_merges": true,
              "vocab": {"a": 0, "b": 1, "ab": 2, "Ġa": 3},
              "merges": [["a", "b"], [" a", "b"]]}
  })");
}

}  // namespace

TEST_CASE("special tokens, added tokens, padding, templates from the config files") {
  TempDir dir;
  write_json(dir.path("tokenizer.json"), small_tokenizer_json());
  write_json(dir.path("tokenizer_config.json"),
             {{"bos_token", "<|begin_of_text|>"},
              {"eos_token", {{"content", "<|eot_id|>"}, {"lstrip", false}}},
              {"chat_template", "{{ messages }}"}});
  write_json(dir.path("generation_config.json"), {{"pad_token_id", 9}, {"eos_token_id", {4, 5}}});
  write_json(dir.path("config.json"), {{"vocab_size", 12}});
  const hf::HfTokenizer t = hf::read_hf_tokenizer(dir.path(), 12);
  const sllm::Vocabulary& v = t.vocab;
  CHECK(v.model == "gpt2");
  CHECK(v.pre == "llama-bpe");  // the Llama 3 split, and ignore_merges
  REQUIRE(v.tokens.size() == 12);
  CHECK(v.tokens[2] == "ab");
  CHECK(v.tokens[7] == "<|reserved|>");
  CHECK(v.types[7] == TokenType::Control);  // not marked special, but looks so
  CHECK(v.tokens[6] == "<tool>");
  CHECK(v.types[6] == TokenType::UserDefined);
  CHECK(v.tokens[8] == "a b");     // user-defined tokens are matched in raw text: ▁ is a space
  CHECK(v.tokens[9] == "[PAD9]");  // config.json's vocab_size pads the list
  CHECK(v.types[11] == TokenType::Unused);
  CHECK(v.merges == std::vector<std::string>{"a b",
                                             "\xC4\xA0"
                                             "a b"});  // [" a", "b"]: Ġ
  CHECK(v.bos == 4);
  CHECK(v.eos == 5);  // tokenizer_config.json before generation_config.json
  CHECK(v.pad == 9);  // the id from generation_config.json
  CHECK(v.unk == -1);
  CHECK(v.add_bos);  // the post-processor's template starts with BOS
  CHECK_FALSE(v.add_eos);
  CHECK(t.chat_template == "{{ messages }}");

  // Without ignore_merges the Llama 3 split is "smaug-bpe"; tokenizer_config.json's add_bos_token
  // overrides the template.
  json j = small_tokenizer_json();
  j["model"]["ignore_merges"] = false;
  write_json(dir.path("tokenizer.json"), j);
  write_json(
      dir.path("tokenizer_config.json"),
      {{"add_bos_token", false},
       {"chat_template",
        {{{"name", "default"}, {"template", "A"}}, {{"name", "tool use"}, {"template", "B"}}}}});
  const hf::HfTokenizer t2 = hf::read_hf_tokenizer(dir.path(), 0);
  CHECK(t2.vocab.pre == "smaug-bpe");
  CHECK(t2.vocab.tokens.size() == 9);
  CHECK_FALSE(t2.vocab.add_bos);
  CHECK(t2.vocab.eos == 4);  // generation_config.json's first eos id
  CHECK(t2.chat_template == "A");
  CHECK(t2.named_chat_templates ==
        std::vector<std::pair<std::string, std::string>>{{"tool_use", "B"}});

  SUBCASE("a pre-tokenizer of no known family is an error naming it") {
    j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\p{L}+|\\p{N}{1,4}";
    write_json(dir.path("tokenizer.json"), j);
    const std::string m = sllm_test::error_message([&] { hf::read_hf_tokenizer(dir.path(), 0); });
    CHECK(m.find("tokenizer.json") != std::string::npos);
    CHECK(m.find("Split(\\p{L}+|\\p{N}{1,4})") != std::string::npos);
  }
  SUBCASE("a tokenizer with more tokens than the model's vocab_size") {
    CHECK(sllm_test::error_message([&] {
            hf::read_hf_tokenizer(dir.path(), 8);
          }).find("the model's vocab_size is 8") != std::string::npos);
  }
  SUBCASE("SentencePiece-style BPE in tokenizer.json") {
    j["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "\u2581"}};
    j["model"]["byte_fallback"] = true;
    write_json(dir.path("tokenizer.json"), j);
    CHECK(sllm_test::error_message([&] {
            hf::read_hf_tokenizer(dir.path(), 0);
          }).find("tokenizer.model") != std::string::npos);
  }
}

namespace {

// Protobuf encoding, for hand-made SentencePiece models.
std::string varint(uint64_t v) {
  std::string s;
  do {
    s += char((v & 0x7F) | (v > 0x7F ? 0x80 : 0));
    v >>= 7;
  } while (v != 0);
  return s;
}
std::string field(uint32_t number, uint32_t wire) {
  return varint(uint64_t(number) << 3 | wire);
}
std::string bytes_field(uint32_t number, const std::string& bytes) {
  return field(number, 2) + varint(bytes.size()) + bytes;
}
std::string varint_field(uint32_t number, int64_t v) {
  return field(number, 0) + varint(uint64_t(v));
}
std::string piece(const std::string& text, float score, int type) {
  std::string f(4, '\0');
  std::memcpy(&f[0], &score, 4);
  return bytes_field(1, bytes_field(1, text) + field(2, 5) + f + varint_field(3, type));
}

}  // namespace

TEST_CASE("SentencePiece models: the protobuf fields a converter needs") {
  TempDir dir;
  // pieces (field 1), trainer_spec (2: model_type 3, unk/bos/eos/pad ids 40-43, an unknown
  // fixed64 field), normalizer_spec (3: add_dummy_prefix 3), self_test_data (4, ignored).
  const std::string fixed64 = field(7, 1) + std::string(8, '\x11');
  const std::string model =
      piece("<pad>", 0, 3) + piece("<unk>", 0, 2) + piece("<s>", 0, 3) + piece("</s>", 0, 3) +
      piece("<0x41>", 0, 6) +
      piece(
          "\xE2\x96\x81"
          "a",
          -1.5f, 1) +
      piece("<sep>", 0, 4) + piece("old", 0, 5) +
      bytes_field(2, varint_field(3, 2) + fixed64 + varint_field(40, 1) + varint_field(41, 2) +
                         varint_field(42, 3) + varint_field(43, 0)) +
      bytes_field(3, bytes_field(1, "identity") + varint_field(3, 0)) +
      bytes_field(4, bytes_field(1, bytes_field(1, "x")));
  write_file(dir.path("tokenizer.model"), model);
  const hf::HfTokenizer t = hf::read_hf_tokenizer(dir.path(), 10);
  const sllm::Vocabulary& v = t.vocab;
  CHECK(v.model == "llama");
  REQUIRE(v.tokens.size() == 10);
  CHECK(v.tokens[5] ==
        "\xE2\x96\x81"
        "a");
  CHECK(v.scores[5] == -1.5f);
  CHECK(v.types == std::vector<TokenType>{TokenType::Control, TokenType::Unknown,
                                          TokenType::Control, TokenType::Control, TokenType::Byte,
                                          TokenType::Normal, TokenType::UserDefined,
                                          TokenType::Unused, TokenType::Unused, TokenType::Unused});
  CHECK(v.tokens[9] == "[PAD9]");
  CHECK(v.scores[9] == -10000.f);
  CHECK(v.unk == 1);  // from trainer_spec, there being no config files
  CHECK(v.bos == 2);
  CHECK(v.eos == 3);
  CHECK(v.pad == 0);
  CHECK_FALSE(v.add_space_prefix);  // normalizer_spec.add_dummy_prefix = false
  CHECK(v.add_bos);                 // SentencePiece's default

  // A pad id of -1 (a ten-byte varint) means none; a token past the vocabulary is ignored.
  write_file(dir.path("tokenizer.model"),
             piece("<unk>", 0, 2) + piece("a", 0, 1) +
                 bytes_field(2, varint_field(3, 2) + varint_field(43, -1) + varint_field(41, 7)));
  const hf::HfTokenizer t2 = hf::read_hf_tokenizer(dir.path(), 0);
  CHECK(t2.vocab.pad == -1);
  CHECK(t2.vocab.bos == -1);
  CHECK(t2.vocab.add_space_prefix);  // the default

  SUBCASE("a unigram model") {
    write_file(dir.path("tokenizer.model"), piece("a", 0, 1) + bytes_field(2, varint_field(3, 1)));
    CHECK(sllm_test::error_message([&] { hf::read_hf_tokenizer(dir.path(), 0); }).find("unigram") !=
          std::string::npos);
  }
  SUBCASE("truncated") {
    write_file(dir.path("tokenizer.model"), model.substr(0, 40));
    const std::string m = sllm_test::error_message([&] { hf::read_hf_tokenizer(dir.path(), 0); });
    CHECK(m.find("tokenizer.model: offset ") != std::string::npos);
    CHECK(m.find("unexpected end") != std::string::npos);
  }
  SUBCASE("a bad piece type") {
    write_file(dir.path("tokenizer.model"), piece("a", 0, 9));
    CHECK(sllm_test::error_message([&] {
            hf::read_hf_tokenizer(dir.path(), 0);
          }).find("piece type 9") != std::string::npos);
  }
  SUBCASE("a group (wire type 3)") {
    write_file(dir.path("tokenizer.model"), piece("a", 0, 1) + field(5, 3));
    CHECK(sllm_test::error_message([&] {
            hf::read_hf_tokenizer(dir.path(), 0);
          }).find("wire type 3") != std::string::npos);
  }
}

// ---- architectures, from llama.cpp's tiny models ----

namespace {

// What the Hugging Face checkpoint of one of ref/'s tiny models looks like.
struct ArchCase {
  const char* model;  // ref/NAME.F32.gguf
  const char* hf_class;
};

// The Hugging Face name of a GGUF tensor, per architecture (from the transformers models).
std::string hf_name(const std::string& arch, const std::string& gguf) {
  const size_t dot = gguf.find('.', 4);
  const bool block = gguf.compare(0, 4, "blk.") == 0;
  const std::string n = block ? gguf.substr(4, dot - 4) : "";
  const std::string rest = block ? gguf.substr(dot + 1) : gguf;
  if (arch == "gpt2") {
    static const std::map<std::string, std::string> top = {
        {"token_embd.weight", "transformer.wte.weight"},
        {"position_embd.weight", "transformer.wpe.weight"},
        {"output_norm.weight", "transformer.ln_f.weight"},
        {"output_norm.bias", "transformer.ln_f.bias"},
        {"output.weight", "lm_head.weight"}};
    static const std::map<std::string, std::string> layer = {
        {"attn_norm", "ln_1"}, {"attn_qkv", "attn.c_attn"}, {"attn_output", "attn.c_proj"},
        {"ffn_norm", "ln_2"},  {"ffn_up", "mlp.c_fc"},      {"ffn_down", "mlp.c_proj"}};
    if (!block) return top.at(gguf);
    const size_t d = rest.find('.');
    return "transformer.h." + n + "." + layer.at(rest.substr(0, d)) + rest.substr(d);
  }
  const std::map<std::string, std::string> top = {
      {"token_embd.weight", "model.embed_tokens.weight"},
      {"output_norm.weight", "model.norm.weight"},
      {"output.weight", "lm_head.weight"}};
  const std::map<std::string, std::string> layer = {
      {"attn_norm", "input_layernorm"},
      {"attn_q", "self_attn.q_proj"},
      {"attn_k", "self_attn.k_proj"},
      {"attn_v", "self_attn.v_proj"},
      {"attn_qkv", "self_attn.qkv_proj"},
      {"attn_output", "self_attn.o_proj"},
      {"ffn_norm", "post_attention_layernorm"},
      {"ffn_gate", "mlp.gate_proj"},
      {"ffn_up", arch == "phi3" ? "mlp.gate_up_proj" : "mlp.up_proj"},
      {"ffn_down", "mlp.down_proj"}};
  if (!block) return top.at(gguf);
  const size_t d = rest.find('.');
  return "model.layers." + n + "." + layer.at(rest.substr(0, d)) + rest.substr(d);
}

// The Hugging Face tensor holding a GGUF tensor t of a model of architecture arch: rows
// reversed into PyTorch's [out, in], Llama's Q/K rows in rotate-half order (HF row k of a head
// is GGUF row 2k for the first half, 2(k - d/2) + 1 for the second), GPT-2's Conv1D weights as
// [in, out], Gemma's norms as weight - 1.
StEntry hf_tensor(const std::string& arch, const Gguf& g, const TensorInfo& t) {
  StEntry e{hf_name(arch, t.name), "F32", {}, tensor_bytes(t)};
  for (uint32_t d = t.n_dims; d-- > 0;) e.shape.push_back(t.ne[d]);
  std::vector<float> v = tensor_floats(t);
  const bool q = t.name.find("attn_q.") != std::string::npos;
  const bool k = t.name.find("attn_k.") != std::string::npos;
  if (arch == "llama" && (q || k)) {
    const uint64_t heads =
        g.get<uint32_t>(arch + (q ? ".attention.head_count" : ".attention.head_count_kv"));
    const uint64_t rows = t.ne[1], cols = t.ne[0], hd = rows / heads;
    std::vector<float> hf(v.size());
    for (uint64_t h = 0; h < heads; ++h) {
      for (uint64_t r = 0; r < hd; ++r) {
        const uint64_t from = h * hd + (r < hd / 2 ? 2 * r : 2 * (r - hd / 2) + 1);
        std::copy_n(&v[from * cols], cols, &hf[(h * hd + r) * cols]);
      }
    }
    v = hf;
  }
  const bool conv1d = t.n_dims == 2 && t.name.compare(0, 4, "blk.") == 0;
  if (arch == "gpt2" && conv1d) {
    const uint64_t rows = t.ne[1], cols = t.ne[0];
    std::vector<float> hf(v.size());
    for (uint64_t r = 0; r < rows; ++r) {
      for (uint64_t c = 0; c < cols; ++c) hf[c * rows + r] = v[r * cols + c];
    }
    v = hf;
    std::swap(e.shape[0], e.shape[1]);
  }
  if (arch == "gemma" && t.name.find("norm.weight") != std::string::npos) {
    for (float& x : v) x -= 1.0f;
  }
  e.bytes = float_bytes(v);
  return e;
}

// config.json for a ref model, from its GGUF metadata.
json hf_config(const std::string& arch, const ArchCase& c, const Gguf& g) {
  const auto u = [&](const std::string& key) { return g.get<uint32_t>(arch + "." + key); };
  const auto f = [&](const std::string& key) { return double(g.get<float>(arch + "." + key)); };
  json j = {{"architectures", {c.hf_class}}, {"vocab_size", 512}};
  if (arch == "gpt2") {
    j.update({{"n_embd", u("embedding_length")},
              {"n_layer", u("block_count")},
              {"n_head", u("attention.head_count")},
              {"n_positions", u("context_length")},
              {"layer_norm_epsilon", f("attention.layer_norm_epsilon")}});
    return j;
  }
  j.update({{"hidden_size", u("embedding_length")},
            {"num_hidden_layers", u("block_count")},
            {"intermediate_size", u("feed_forward_length")},
            {"num_attention_heads", u("attention.head_count")},
            {"num_key_value_heads", u("attention.head_count_kv")},
            {"max_position_embeddings", u("context_length")},
            {"rms_norm_eps", f("attention.layer_norm_rms_epsilon")},
            {"rope_theta", f("rope.freq_base")},
            {"tie_word_embeddings", g.find_tensor("output.weight") == nullptr}});
  if (arch == "gemma") j["head_dim"] = u("attention.key_length");
  if (arch == "phi3") j["sliding_window"] = u("attention.sliding_window");
  return j;
}

}  // namespace

TEST_CASE("llama, qwen2, phi3, gpt2, gemma: llama.cpp's tensors and hyperparameters") {
  const ArchCase cases[] = {{"a_llama", "LlamaForCausalLM"},
                            {"b_qwen2", "Qwen2ForCausalLM"},
                            {"c_phi3", "Phi3ForCausalLM"},
                            {"d_gpt2", "GPT2LMHeadModel"},
                            {"e_gemma", "GemmaForCausalLM"}};
  for (const ArchCase& c : cases) {
    CAPTURE(c.model);
    const std::string ref_path = sllm_test::fixture("ref/" + std::string(c.model) + ".F32.gguf");
    if (ref_path.empty()) return;
    const Gguf ref = Gguf::open(ref_path);
    const std::string arch = ref.get<std::string>("general.architecture");
    TempDir dir, out;
    std::vector<StEntry> entries;
    for (const TensorInfo& t : ref.tensors()) entries.push_back(hf_tensor(arch, ref, t));
    write_safetensors(dir.path("model.safetensors"), entries);
    write_json(dir.path("config.json"), hf_config(arch, c, ref));
    for (const char* f : {"tokenizer.model", "tokenizer_config.json"}) {
      write_file(dir.path(f), sllm_test::read_file(stories_hf(f)));
    }
    const hf::ConvertResult r = hf::convert_checkpoint(dir.path(), out.path("m.gguf"), {});
    CHECK(r.architecture == arch);
    const Gguf got = Gguf::open(out.path("m.gguf"));

    // Every tensor as llama.cpp stores it: names, shapes, types, values.
    CHECK(got.tensors().size() == ref.tensors().size());
    for (const TensorInfo& w : ref.tensors()) {
      CAPTURE(w.name);
      const TensorInfo* g = got.find_tensor(w.name);
      REQUIRE(g != nullptr);
      CHECK(g->type == TensorType::F32);
      CHECK(g->shape_string() == w.shape_string());
      std::vector<float> expected = tensor_floats(w);
      if (arch == "gemma" && w.name.find("norm.weight") != std::string::npos) {
        for (float& x : expected) x = (x - 1.0f) + 1.0f;  // what the checkpoint holds, plus one
      }
      CHECK(tensor_bytes(*g) == float_bytes(expected));
    }
    // Every hyperparameter llama.cpp wrote, under the same key and type.
    for (const auto& kv : ref.metadata()) {
      const std::string& key = kv.first;
      if (key.compare(0, arch.size() + 1, arch + ".") != 0 && key != "general.architecture") {
        continue;
      }
      CAPTURE(key);
      REQUIRE(got.find(key) != nullptr);
      CHECK(*got.find(key) == kv.second);
    }
    CHECK(*got.find("tokenizer.ggml.tokens") == *ref.find("tokenizer.ggml.tokens"));
  }
}

// ---- BERT encoders (sentence-transformers folders), from the tiny BERT of ref-embd/ ----

namespace {

// transformers' BertModel name of a GGUF tensor of llama.cpp's "bert" (after the model's own
// modeling_bert.py: embeddings, then encoder.layer.N with attention.self, attention.output,
// intermediate and output); prefix is "bert." in BertForMaskedLM-style checkpoints, "" in
// sentence-transformers ones.
std::string bert_hf_name(const std::string& gguf, const std::string& prefix) {
  static const std::map<std::string, std::string> top = {
      {"token_embd.weight", "embeddings.word_embeddings.weight"},
      {"position_embd.weight", "embeddings.position_embeddings.weight"},
      {"token_types.weight", "embeddings.token_type_embeddings.weight"},
      {"token_embd_norm.weight", "embeddings.LayerNorm.weight"},
      {"token_embd_norm.bias", "embeddings.LayerNorm.bias"}};
  static const std::map<std::string, std::string> layer = {
      {"attn_q", "attention.self.query"},
      {"attn_k", "attention.self.key"},
      {"attn_v", "attention.self.value"},
      {"attn_output", "attention.output.dense"},
      {"attn_output_norm", "attention.output.LayerNorm"},
      {"ffn_up", "intermediate.dense"},
      {"ffn_down", "output.dense"},
      {"layer_output_norm", "output.LayerNorm"}};
  if (gguf.compare(0, 4, "blk.") != 0) return prefix + top.at(gguf);
  const size_t dot = gguf.find('.', 4);
  const std::string rest = gguf.substr(dot + 1);
  const size_t d = rest.find('.');
  return prefix + "encoder.layer." + gguf.substr(4, dot - 4) + "." + layer.at(rest.substr(0, d)) +
         rest.substr(d);
}

// A GGUF tensor's values as floats (Q8_0 dequantized row by row).
std::vector<float> dequantized(const TensorInfo& t) {
  std::vector<float> v(size_t(t.n_elements()));
  const uint64_t row_bytes = sllm::tensor_row_bytes(t.type, t.ne[0]);
  for (uint64_t r = 0; r < t.n_rows(); ++r) {
    sllm::dequantize_row(t.type, t.data + r * row_bytes, v.data() + r * t.ne[0], size_t(t.ne[0]));
  }
  return v;
}

// tokenizer.json of BERT's WordPiece (as Hugging Face saves bert-base-uncased's) with the
// vocabulary of a GGUF "bert" file: GGUF marks word starts with U+2581 where WordPiece marks
// continuations with "##"; bracketed tokens are the same in both. Control tokens are the
// special added tokens.
json bert_tokenizer_json(const Gguf& g) {
  const std::vector<std::string> tokens = g.get_array<std::string>("tokenizer.ggml.tokens");
  const std::vector<int32_t> types = g.get_array<int32_t>("tokenizer.ggml.token_type");
  const std::string start = "\xE2\x96\x81";
  json vocab = json::object(), added = json::array();
  for (size_t id = 0; id < tokens.size(); ++id) {
    const std::string& t = tokens[id];
    std::string text;
    if (t.size() >= 2 && t.front() == '[' && t.back() == ']') {
      text = t;
    } else {
      text = starts_with(t, start) ? t.substr(start.size()) : "##" + t;
    }
    REQUIRE_MESSAGE(!vocab.contains(text), "token " << id);
    vocab[text] = id;
    if (types[id] == int32_t(TokenType::Control)) {
      added.push_back({{"id", id},
                       {"content", text},
                       {"single_word", false},
                       {"lstrip", false},
                       {"rstrip", false},
                       {"normalized", false},
                       {"special", true}});
    }
  }
  const auto special = [](const char* t) {
    return json{{"SpecialToken", {{"id", t}, {"type_id", 0}}}};
  };
  return {{"version", "1.0"},
          {"truncation", nullptr},
          {"padding", nullptr},
          {"added_tokens", added},
          {"normalizer",
           {{"type", "BertNormalizer"},
            {"clean_text", true},
            {"handle_chinese_chars", true},
            {"strip_accents", nullptr},
            {"lowercase", true}}},
          {"pre_tokenizer", {{"type", "BertPreTokenizer"}}},
          {"post_processor",
           {{"type", "TemplateProcessing"},
            {"single",
             {special("[CLS]"), {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}, special("[SEP]")}}}},
          {"decoder", {{"type", "WordPiece"}, {"prefix", "##"}, {"cleanup", true}}},
          {"model",
           {{"type", "WordPiece"},
            {"unk_token", "[UNK]"},
            {"continuing_subword_prefix", "##"},
            {"max_input_chars_per_word", 100},
            {"vocab", vocab}}}};
}

// The folder sentence-transformers saves for a BERT encoder with the tensors of g (a GGUF
// "bert" file): model.safetensors (F32, names with prefix), config.json, the tokenizer files,
// modules.json and 1_Pooling/config.json (mean or CLS pooling).
void write_bert_folder(const TempDir& dir, const Gguf& g, const std::string& prefix,
                       bool mean_pooling) {
  std::vector<StEntry> entries;
  for (const TensorInfo& t : g.tensors()) {
    StEntry e{bert_hf_name(t.name, prefix), "F32", {}, float_bytes(dequantized(t))};
    for (uint32_t d = t.n_dims; d-- > 0;) e.shape.push_back(t.ne[d]);
    entries.push_back(std::move(e));
  }
  write_safetensors(dir.path("model.safetensors"), entries);
  const auto u = [&](const std::string& key) { return g.get<uint32_t>("bert." + key); };
  write_json(dir.path("config.json"),
             {{"architectures", {"BertModel"}},
              {"model_type", "bert"},
              {"attention_probs_dropout_prob", 0.1},
              {"hidden_act", "gelu"},
              {"hidden_size", u("embedding_length")},
              {"num_hidden_layers", u("block_count")},
              {"num_attention_heads", u("attention.head_count")},
              {"intermediate_size", u("feed_forward_length")},
              {"max_position_embeddings", u("context_length")},
              {"layer_norm_eps", double(g.get<float>("bert.attention.layer_norm_epsilon"))},
              {"type_vocab_size", g.find_tensor("token_types.weight")->ne[1]},
              {"vocab_size", g.get_array<std::string>("tokenizer.ggml.tokens").size()},
              {"pad_token_id", 0},
              {"position_embedding_type", "absolute"}});
  write_json(dir.path("tokenizer.json"), bert_tokenizer_json(g));
  write_json(dir.path("tokenizer_config.json"), {{"tokenizer_class", "BertTokenizer"},
                                                 {"do_lower_case", true},
                                                 {"cls_token", "[CLS]"},
                                                 {"sep_token", "[SEP]"},
                                                 {"unk_token", "[UNK]"},
                                                 {"pad_token", "[PAD]"},
                                                 {"mask_token", "[MASK]"}});
  write_json(dir.path("modules.json"),
             json::array({{{"idx", 0},
                           {"name", "0"},
                           {"path", ""},
                           {"type", "sentence_transformers.models.Transformer"}},
                          {{"idx", 1},
                           {"name", "1"},
                           {"path", "1_Pooling"},
                           {"type", "sentence_transformers.models.Pooling"}},
                          {{"idx", 2},
                           {"name", "2"},
                           {"path", "2_Normalize"},
                           {"type", "sentence_transformers.models.Normalize"}}}));
  REQUIRE(::mkdir(dir.path("1_Pooling").c_str(), 0700) == 0);
  write_json(dir.path("1_Pooling/config.json"),
             {{"word_embedding_dimension", u("embedding_length")},
              {"pooling_mode_cls_token", !mean_pooling},
              {"pooling_mode_mean_tokens", mean_pooling},
              {"pooling_mode_max_tokens", false},
              {"pooling_mode_mean_sqrt_len_tokens", false}});
}

// The GGUF file g with its tensors dequantized to F32, written to path: the model a checkpoint
// made from g's values is.
void write_dequantized(const Gguf& g, const std::string& path,
                       std::vector<std::vector<float>>& values) {
  sllm::GgufWriter w;
  for (const auto& [key, value] : g.metadata()) w.set(key, value);
  w.set("general.file_type", GgufValue::u32(0));
  for (const TensorInfo& t : g.tensors()) {
    values.push_back(dequantized(t));
    w.add_tensor(t.name, TensorType::F32, std::vector<uint64_t>(t.ne, t.ne + t.n_dims),
                 values.back().data(), values.back().size() * 4);
  }
  w.write(path);
}

}  // namespace

TEST_CASE("BertModel (sentence-transformers): llama.cpp's tensors, keys and embeddings") {
  // The F32 model when ../shared has it, else the Q8_0 one that tests/data carries, whose
  // dequantized values then make the checkpoint.
  std::string source = sllm_test::fixture("ref-embd/bert_tiny_mean.F32.gguf");
  const bool f32 = !source.empty();
  if (!f32) source = sllm_test::fixture("ref-embd/bert_tiny_mean.Q8_0.gguf");
  const std::string reference = sllm_test::fixture(f32 ? "ref-embd/bert_tiny_mean.F32.embd.gguf"
                                                       : "ref-embd/bert_tiny_mean.Q8_0.embd.gguf");
  if (source.empty() || reference.empty()) return;
  CAPTURE(source);
  const Gguf ref = Gguf::open(source);
  TempDir dir, out;
  write_bert_folder(dir, ref, "", true);
  const hf::ConvertResult r = hf::convert_checkpoint(dir.path(), out.path("bert.gguf"), {});
  CHECK(r.architecture == "bert");
  CHECK(r.n_tokens == 30522);
  const Gguf got = Gguf::open(out.path("bert.gguf"));

  // Every tensor as llama.cpp's converter names and shapes it, holding the checkpoint's values.
  CHECK(got.tensors().size() == ref.tensors().size());
  for (const TensorInfo& w : ref.tensors()) {
    CAPTURE(w.name);
    const TensorInfo* g = got.find_tensor(w.name);
    REQUIRE(g != nullptr);
    CHECK(g->type == TensorType::F32);
    CHECK(g->shape_string() == w.shape_string());
    CHECK(tensor_bytes(*g) == float_bytes(dequantized(w)));
  }
  // The same bert.* and tokenizer.* keys with the same values: no more, no fewer.
  const auto model_key = [](const std::string& key) {
    return starts_with(key, "bert.") || starts_with(key, "tokenizer.") ||
           key == "general.architecture";
  };
  for (const auto& [key, value] : ref.metadata()) {
    if (!model_key(key)) continue;
    CAPTURE(key);
    REQUIRE(got.find(key) != nullptr);
    CHECK(*got.find(key) == value);
  }
  for (const auto& kv : got.metadata()) {
    if (model_key(kv.first)) CHECK_MESSAGE(ref.find(kv.first) != nullptr, kv.first);
  }

  // The converted model tokenizes llama.cpp's reference texts as llama.cpp did, and embeds them
  // as llama.cpp did (the README's bounds) from the F32 model; a Q8_0 model's embeddings differ
  // from its dequantized weights' by more than those bounds (llama.cpp quantizes activations),
  // so from the Q8_0 model they must equal those of the fixture file with dequantized tensors.
  const Gguf ref_embd = Gguf::open(reference);
  const std::vector<std::string> texts = ref_embd.get_array<std::string>("ref.texts");
  const sllm::Model model = sllm::Model::open(out.path("bert.gguf"));
  for (size_t j = 0; j < texts.size(); ++j) {
    CHECK(model.tokenizer().encode(texts[j], true, false) ==
          ref_embd.get_array<int32_t>("ref.tokens." + std::to_string(j)));
  }
  sllm::EmbedOptions options;
  options.normalize = false;
  const sllm::Embeddings e = sllm::embed(model, texts, options);  // the file's pooling: mean
  if (!f32) {
    std::vector<std::vector<float>> values;
    write_dequantized(ref, out.path("dequantized.gguf"), values);
    const sllm::Embeddings want =
        sllm::embed(sllm::Model::open(out.path("dequantized.gguf")), texts, options);
    CHECK(e.data == want.data);
    return;
  }
  const std::vector<float> want = tensor_floats(*ref_embd.find_tensor("embeddings"));
  REQUIRE(e.n_texts == texts.size());
  REQUIRE(e.n_embd * e.n_texts == want.size());
  for (size_t j = 0; j < texts.size(); ++j) {
    CAPTURE(texts[j]);
    const float* w = want.data() + j * e.n_embd;
    float max_ref = 0, max_diff = 0;
    for (size_t i = 0; i < e.n_embd; ++i) {
      max_ref = std::max(max_ref, std::fabs(w[i]));
      max_diff = std::max(max_diff, std::fabs(e.row(j)[i] - w[i]));
    }
    CHECK(sllm::cosine_similarity(e.row(j), w, e.n_embd) >= 0.9999f);
    CHECK(max_diff <= 1e-3f * max_ref);
  }
}

TEST_CASE("BertModel: a bert. prefix, the pooler and heads left out, CLS pooling, defaults") {
  const std::string source = sllm_test::fixture("ref-embd/bert_tiny_mean.Q8_0.gguf");
  if (source.empty()) return;
  const Gguf ref = Gguf::open(source);
  TempDir dir, out;
  write_bert_folder(dir, ref, "bert.", false);
  // BertForPreTraining's extra tensors, and the position ids buffer older transformers save.
  std::vector<StEntry> entries = read_safetensors(dir.path("model.safetensors"));
  entries.push_back(
      {"bert.pooler.dense.weight", "F32", {128, 128}, std::string(128 * 128 * 4, '\0')});
  entries.push_back({"bert.pooler.dense.bias", "F32", {128}, std::string(128 * 4, '\0')});
  entries.push_back({"cls.predictions.bias", "F32", {30522}, std::string(30522 * 4, '\0')});
  entries.push_back({"bert.embeddings.position_ids", "I64", {1, 512}, std::string(512 * 8, '\0')});
  // Checkpoints ported from TensorFlow call LayerNorm's weight and bias gamma and beta.
  for (StEntry& e : entries) {
    if (e.name == "bert.embeddings.LayerNorm.weight") e.name = "bert.embeddings.LayerNorm.gamma";
  }
  write_safetensors(dir.path("model.safetensors"), entries);
  // Without modules.json the Pooling module is looked for in 1_Pooling; without
  // tokenizer_config.json the special tokens are BertTokenizer's defaults.
  std::remove(dir.path("modules.json").c_str());
  std::remove(dir.path("tokenizer_config.json").c_str());
  hf::convert_checkpoint(dir.path(), out.path("bert.gguf"), {});
  const Gguf got = Gguf::open(out.path("bert.gguf"));
  CHECK(got.tensors().size() == ref.tensors().size());
  CHECK(tensor_bytes(*got.find_tensor("token_embd_norm.weight")) ==
        float_bytes(dequantized(*ref.find_tensor("token_embd_norm.weight"))));
  CHECK(got.get<uint32_t>("bert.pooling_type") == 2);
  for (const char* key : {"unknown", "seperator", "padding", "cls", "mask"}) {
    const std::string k = std::string("tokenizer.ggml.") + key + "_token_id";
    CAPTURE(k);
    CHECK(got.get<uint32_t>(k) == ref.get<uint32_t>(k));
  }
  // Without a Pooling module no pooling_type is written: the caller chooses.
  sllm_test::remove_all(dir.path("1_Pooling"));
  hf::convert_checkpoint(dir.path(), out.path("bert.gguf"), {});
  CHECK(Gguf::open(out.path("bert.gguf")).find("bert.pooling_type") == nullptr);
}

TEST_CASE("BertModel: a missing tensor, a cased tokenizer, another pooling are errors") {
  const std::string source = sllm_test::fixture("ref-embd/bert_tiny_mean.Q8_0.gguf");
  if (source.empty()) return;
  const Gguf ref = Gguf::open(source);
  TempDir dir, out;
  write_bert_folder(dir, ref, "", true);
  SUBCASE("a missing tensor") {
    std::vector<StEntry> entries = read_safetensors(dir.path("model.safetensors"));
    entries.erase(std::remove_if(entries.begin(), entries.end(),
                                 [](const StEntry& e) {
                                   return e.name == "encoder.layer.1.output.LayerNorm.bias";
                                 }),
                  entries.end());
    write_safetensors(dir.path("model.safetensors"), entries);
    CHECK(convert_error(dir.path(), out)
              .find("tensor 'encoder.layer.1.output.LayerNorm.bias' is missing from the "
                    "checkpoint (a BertModel with 2 layers needs it)") != std::string::npos);
  }
  SUBCASE("a token type count that disagrees with the tensor") {
    json config = json::parse(sllm_test::read_file(dir.path("config.json")));
    config["type_vocab_size"] = 1;
    write_json(dir.path("config.json"), config);
    CHECK(convert_error(dir.path(), out)
              .find("'embeddings.token_type_embeddings.weight' has shape [2, 128] but "
                    "config.json implies [1, 128]") != std::string::npos);
  }
  SUBCASE("a cased tokenizer") {
    json tok = json::parse(sllm_test::read_file(dir.path("tokenizer.json")));
    tok["normalizer"]["lowercase"] = false;
    write_json(dir.path("tokenizer.json"), tok);
    CHECK(convert_error(dir.path(), out).find("a cased WordPiece tokenizer") != std::string::npos);
  }
  SUBCASE("max pooling") {
    write_json(dir.path("1_Pooling/config.json"),
               {{"pooling_mode_mean_tokens", false}, {"pooling_mode_max_tokens", true}});
    CHECK(convert_error(dir.path(), out).find("1_Pooling/config.json: the pooling is not one") !=
          std::string::npos);
  }
  SUBCASE("relative positions") {
    json config = json::parse(sllm_test::read_file(dir.path("config.json")));
    config["position_embedding_type"] = "relative_key";
    write_json(dir.path("config.json"), config);
    CHECK(convert_error(dir.path(), out).find("position_embedding_type") != std::string::npos);
  }
}

// ---- bad input ----

TEST_CASE("bad checkpoints are errors naming the file and tensor, and leave no output") {
  TempDir dir, out;
  copy_stories(dir);
  const std::string st = dir.path("model.safetensors");
  const std::string original = sllm_test::read_file(st);
  std::vector<StEntry> entries = read_safetensors(st);

  SUBCASE("truncated safetensors") {
    write_file(st, original.substr(0, original.size() - 1000));
    const std::string m = convert_error(dir.path(), out);
    CHECK(m.find("model.safetensors: tensor 'model.") != std::string::npos);
    CHECK(m.find("are not inside the data section") != std::string::npos);
    CHECK(m.find("truncated") != std::string::npos);
  }
  SUBCASE("a header length past the end") {
    write_file(st, original.substr(0, 4000));
    CHECK(convert_error(dir.path(), out).find("header length 4856 runs past the end") !=
          std::string::npos);
  }
  SUBCASE("a file shorter than the header length") {
    write_file(st, "abc");
    CHECK(convert_error(dir.path(), out).find("model.safetensors") != std::string::npos);
  }
  SUBCASE("a header that is not JSON") {
    std::string bad = original;
    bad[8 + 100] = '\x01';
    write_file(st, bad);
    CHECK(convert_error(dir.path(), out).find("not valid JSON") != std::string::npos);
  }
  SUBCASE("data_offsets disagreeing with dtype x shape") {
    std::string bad = original;
    const size_t pos =
        bad.find("[172,64]") != std::string::npos ? bad.find("[172,64]") : bad.find("[172, 64]");
    REQUIRE(pos != std::string::npos);
    bad.replace(pos, 4, "[171");
    write_file(st, bad);
    const std::string m = convert_error(dir.path(), out);
    CHECK(m.find("needs 43776 bytes") != std::string::npos);
  }
  SUBCASE("overlapping tensors") {
    json header = json::parse(original.substr(8, 4856));
    header["model.norm.weight"]["data_offsets"] = {0, 256};
    std::string h = header.dump();
    REQUIRE(h.size() <= 4856);
    h.resize(4856, ' ');
    write_file(st, original.substr(0, 8) + h + original.substr(8 + 4856));
    CHECK(convert_error(dir.path(), out).find("overlap") != std::string::npos);
  }
  SUBCASE("an unknown dtype, and a dtype that is no float") {
    entries[3].dtype = "F17";
    write_safetensors(st, entries);
    CHECK(convert_error(dir.path(), out).find("unknown dtype 'F17'") != std::string::npos);
    entries[3].dtype = "I32";
    write_safetensors(st, entries);
    const std::string m = convert_error(dir.path(), out);
    CHECK(m.find("'" + entries[3].name + "' has dtype I32") != std::string::npos);
  }
  SUBCASE("a shape that disagrees with config.json") {
    json config = json::parse(sllm_test::read_file(dir.path("config.json")));
    config["num_key_value_heads"] = 2;
    write_json(dir.path("config.json"), config);
    const std::string m = convert_error(dir.path(), out);
    CHECK(m.find("tensor 'model.layers.0.self_attn.k_proj.weight' has shape [32, 64] but "
                 "config.json implies [16, 64]") != std::string::npos);
  }
  SUBCASE("a missing tensor") {
    entries.erase(std::remove_if(entries.begin(), entries.end(),
                                 [](const StEntry& e) {
                                   return e.name == "model.layers.3.mlp.up_proj.weight";
                                 }),
                  entries.end());
    write_safetensors(st, entries);
    CHECK(convert_error(dir.path(), out)
              .find("tensor 'model.layers.3.mlp.up_proj.weight' is "
                    "missing") != std::string::npos);
  }
  SUBCASE("a tensor the architecture does not have") {
    entries.push_back(
        {"model.layers.0.self_attn.q_norm.weight", "F32", {8}, std::string(32, '\0')});
    write_safetensors(st, entries);
    CHECK(convert_error(dir.path(), out)
              .find("'model.layers.0.self_attn.q_norm.weight' is not "
                    "part of a LlamaForCausalLM") != std::string::npos);
  }
  SUBCASE("untied output without lm_head.weight") {
    json config = json::parse(sllm_test::read_file(dir.path("config.json")));
    config["tie_word_embeddings"] = false;
    write_json(dir.path("config.json"), config);
    CHECK(convert_error(dir.path(), out).find("'lm_head.weight' is missing") != std::string::npos);
  }
  SUBCASE("an unsupported architecture") {
    json config = json::parse(sllm_test::read_file(dir.path("config.json")));
    config["architectures"] = {"MambaForCausalLM"};
    write_json(dir.path("config.json"), config);
    CHECK(convert_error(dir.path(), out).find("architecture 'MambaForCausalLM' is not supported") !=
          std::string::npos);
  }
  SUBCASE("config.json without a size") {
    json config = json::parse(sllm_test::read_file(dir.path("config.json")));
    config.erase("intermediate_size");
    write_json(dir.path("config.json"), config);
    CHECK(convert_error(dir.path(), out).find("config.json: \"intermediate_size\": missing") !=
          std::string::npos);
  }
  SUBCASE("no config.json, no tokenizer, no folder") {
    std::remove(dir.path("config.json").c_str());
    CHECK(convert_error(dir.path(), out).find("no config.json") != std::string::npos);
    copy_stories(dir);
    std::remove(dir.path("tokenizer.model").c_str());
    CHECK(convert_error(dir.path(), out).find("no tokenizer.model or tokenizer.json") !=
          std::string::npos);
    CHECK(convert_error(dir.path("nothing"), out).find("No such file") != std::string::npos);
  }
}

TEST_CASE("the output is never one of the inputs, and replaces an existing file only whole") {
  TempDir dir, out;
  copy_stories(dir);
  for (const char* input : kStoriesFiles) {
    CAPTURE(input);
    const std::string before = sllm_test::read_file(dir.path(input));
    const std::string m =
        sllm_test::error_message([&] { hf::convert_checkpoint(dir.path(), dir.path(input), {}); });
    CHECK(m.find("refusing to write") != std::string::npos);
    CHECK(sllm_test::read_file(dir.path(input)) == before);
  }
  // The same file under another name (a hard link) is the same input.
  REQUIRE(::link(dir.path("model.safetensors").c_str(), out.path("linked.gguf").c_str()) == 0);
  CHECK(sllm_test::error_message([&] {
          hf::convert_checkpoint(dir.path(), out.path("linked.gguf"), {});
        }).find("it is the input file") != std::string::npos);
  std::remove(out.path("linked.gguf").c_str());
  CHECK(dir.files().size() == 4);

  // A good conversion replaces OUT; a failed one leaves the previous OUT as it was.
  write_file(out.path("out.gguf"), "old");
  hf::convert_checkpoint(dir.path(), out.path("out.gguf"), {});
  const std::string good = sllm_test::read_file(out.path("out.gguf"));
  CHECK(good.compare(0, 4, "GGUF") == 0);
  write_file(dir.path("model.safetensors"), "short");
  convert_error(dir.path(), out);
  CHECK(sllm_test::read_file(out.path("out.gguf")) == good);
  CHECK(out.files() == std::vector<std::string>{"out.gguf"});
}

TEST_CASE("JSON values of unexpected types are errors naming the file") {
  TempDir dir, out;
  copy_stories(dir);
  json config = json::parse(sllm_test::read_file(dir.path("config.json")));
  config["rope_scaling"] = {{"rope_type", 3}};
  write_json(dir.path("config.json"), config);
  CHECK(convert_error(dir.path(), out).find("config.json: a value of an unexpected type") !=
        std::string::npos);

  TempDir tok;
  json j = small_tokenizer_json();
  j["added_tokens"][0]["special"] = "yes";
  write_json(tok.path("tokenizer.json"), j);
  CHECK(sllm_test::error_message([&] {
          hf::read_hf_tokenizer(tok.path(), 0);
        }).find("tokenizer.json: a value of an unexpected type") != std::string::npos);
  write_json(tok.path("tokenizer.json"), small_tokenizer_json());
  write_json(tok.path("tokenizer_config.json"), {{"chat_template", {{{"name", 1}}}}});
  CHECK(sllm_test::error_message([&] {
          hf::read_hf_tokenizer(tok.path(), 0);
        }).find("tokenizer_config.json: a value of an unexpected type") != std::string::npos);
}

TEST_CASE("corrupted safetensors headers and SentencePiece models are errors, never crashes") {
  std::mt19937 rng(20240611);
  const std::string st = sllm_test::read_file(stories_hf("model.safetensors"));
  const std::string spm = sllm_test::read_file(stories_hf("tokenizer.model"));
  TempDir dir;
  size_t errors = 0, parsed = 0;
  // Header bytes (the length, the JSON) changed at random: each file opens or is an Error.
  for (int i = 0; i < 200; ++i) {
    std::string bad = st;
    for (int k = 0; k < 1 + int(rng() % 3); ++k) {
      bad[rng() % (8 + 4856)] = char(rng() % 4 == 0 ? rng() : "0123456789,[]{}\" "[rng() % 17]);
    }
    write_file(dir.path("model.safetensors"), bad);
    try {
      hf::SafetensorsFile::open(dir.path("model.safetensors"));
      ++parsed;
    } catch (const sllm::Error&) {
      ++errors;
    }
  }
  // SentencePiece models with changed bytes or cut short.
  for (int i = 0; i < 3000; ++i) {
    std::string bad = spm.substr(0, i % 2 ? spm.size() : rng() % spm.size());
    for (int k = 0; k < 1 + int(rng() % 4); ++k) bad[rng() % bad.size()] = char(rng());
    try {
      hf::SentencePieceModel::parse(reinterpret_cast<const uint8_t*>(bad.data()), bad.size(),
                                    "tokenizer.model");
      ++parsed;
    } catch (const sllm::Error&) {
      ++errors;
    }
  }
  MESSAGE(parsed << " corrupted files parsed, " << errors << " refused");
  CHECK(errors > 0);
}
