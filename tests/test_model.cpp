// The llama forward pass against llama.cpp's reference logits and llama2.c's greedy output,
// F16/BF16 copies of the weights, and bad models and inputs.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <unistd.h>
#include <vector>

#include "test_support.h"

namespace {

using sllm::ForwardScratch;
using sllm::Gguf;
using sllm::KvPool;
using sllm::KvSequence;
using sllm::LogitsFor;
using sllm::TensorType;
using sllm::Transformer;

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// A reference case of ref/README.md: tokens, llama.cpp's logits for each, greedy continuation.
struct RefCase {
  std::string model;
  std::vector<int32_t> tokens, greedy;
  std::vector<float> gaps;
  std::vector<float> logits;  // row per position
  size_t n_vocab = 0;
};

RefCase read_ref(const std::string& ref_path, const std::string& model_path) {
  const Gguf g = Gguf::open(ref_path);
  RefCase r;
  r.model = model_path;
  r.tokens = g.get_array<int32_t>("ref.tokens");
  r.greedy = g.get_array<int32_t>("ref.greedy");
  r.gaps = g.get_array<float>("ref.greedy_top2_gap");
  const sllm::TensorInfo& t = g.tensor("logits");
  REQUIRE(t.type == TensorType::F32);
  REQUIRE(t.ne[1] == r.tokens.size());
  r.n_vocab = t.ne[0];
  r.logits.resize(t.n_elements());
  std::memcpy(r.logits.data(), t.data, t.n_bytes);
  return r;
}

// One sequence of a model: its pool, block table and scratch.
struct Runner {
  const Transformer& tf;
  KvPool pool;
  KvSequence seq;
  ForwardScratch scratch;
  explicit Runner(const Transformer& t, TensorType kv_type = TensorType::F32)
      : tf(t),
        pool(KvPool::for_tokens(t.kv_shape(), t.config().context_length, 16, kv_type)),
        seq(pool, t.config().context_length) {}
  size_t n_vocab() const { return tf.config().n_vocab; }

  // Logits of every token, evaluated in chunks of the given sizes (repeated); chunks of one
  // token ask only for the last position's logits, as a decoder does.
  std::vector<float> logits_in_chunks(const std::vector<int32_t>& tokens,
                                      const std::vector<size_t>& chunks) {
    std::vector<float> out(tokens.size() * n_vocab());
    for (size_t pos = 0, i = 0; pos < tokens.size(); ++i) {
      const size_t n = std::min(chunks[i % chunks.size()], tokens.size() - pos);
      tf.forward(tokens.data() + pos, n, seq, scratch, out.data() + pos * n_vocab(),
                 n == 1 ? LogitsFor::kLast : LogitsFor::kAll);
      pos += n;
    }
    return out;
  }
  std::vector<float> step(int32_t token) {
    std::vector<float> logits(n_vocab());
    tf.forward(&token, 1, seq, scratch, logits.data());
    return logits;
  }
};

int32_t argmax(const float* v, size_t n) {
  return int32_t(std::max_element(v, v + n) - v);
}

// max over positions of max|got - want| / max|want|.
double worst_ratio(const std::vector<float>& got, const std::vector<float>& want, size_t n_vocab) {
  double worst = 0;
  for (size_t t = 0; t < want.size() / n_vocab; ++t) {
    double max_ref = 0, max_diff = 0;
    for (size_t i = t * n_vocab; i < (t + 1) * n_vocab; ++i) {
      max_ref = std::max(max_ref, std::fabs(double(want[i])));
      max_diff = std::max(max_diff, std::fabs(double(got[i]) - want[i]));
    }
    worst = std::max(worst, max_diff / max_ref);
  }
  return worst;
}

// Mean over positions of KL(softmax(want) || softmax(got)), and whether every top-1 agrees.
double mean_kl(const std::vector<float>& got, const std::vector<float>& want, size_t n_vocab,
               bool* same_top1) {
  const size_t n = want.size() / n_vocab;
  const auto log_softmax = [n_vocab](const float* x, std::vector<double>& out) {
    const double max = *std::max_element(x, x + n_vocab);
    double sum = 0;
    for (size_t i = 0; i < n_vocab; ++i) sum += std::exp(x[i] - max);
    for (size_t i = 0; i < n_vocab; ++i) out[i] = x[i] - max - std::log(sum);
  };
  std::vector<double> lp(n_vocab), lq(n_vocab);
  double total = 0;
  *same_top1 = true;
  for (size_t t = 0; t < n; ++t) {
    log_softmax(want.data() + t * n_vocab, lp);
    log_softmax(got.data() + t * n_vocab, lq);
    for (size_t i = 0; i < n_vocab; ++i) total += std::exp(lp[i]) * (lp[i] - lq[i]);
    *same_top1 &=
        argmax(want.data() + t * n_vocab, n_vocab) == argmax(got.data() + t * n_vocab, n_vocab);
  }
  return total / double(n);
}

std::vector<int32_t> read_ids(const std::string& path) {
  std::ifstream in(path);
  REQUIRE(in.good());
  std::vector<int32_t> ids;
  for (int32_t id; in >> id;) ids.push_back(id);
  return ids;
}

// Greedy decoding: n tokens after the prompt, each the argmax of the previous logits.
std::vector<int32_t> greedy(const Transformer& tf, const std::vector<int32_t>& prompt, size_t n) {
  Runner run(tf);
  // The prompt but its last token without logits, then the last one as the first decode step.
  tf.forward(prompt.data(), prompt.size() - 1, run.seq, run.scratch, nullptr, LogitsFor::kNone);
  std::vector<float> logits = run.step(prompt.back());
  std::vector<int32_t> out;
  while (out.size() < n) {
    out.push_back(argmax(logits.data(), logits.size()));
    if (out.size() < n) logits = run.step(out.back());
  }
  return out;
}

// A temporary file, removed when this goes out of scope.
struct TempFile {
  std::string path;
  explicit TempFile(const std::string& name)
      : path((std::filesystem::temp_directory_path() /
              ("sllm_test_model_" + std::to_string(::getpid()) + "_" + name))
                 .string()) {}
  ~TempFile() { std::remove(path.c_str()); }
};

// Writes a copy of a GGUF with edits: metadata set or replaced, a tensor left out, 2-D tensors
// converted to F16 or BF16.
struct CopyEdits {
  std::vector<std::pair<std::string, sllm::GgufValue>> metadata;
  std::string drop_tensor;
  TensorType matrix_type = TensorType::F32;
  std::vector<std::pair<std::string, std::vector<float>>> added_vectors;  // 1-D F32 tensors
};

void write_copy(const Gguf& src, const std::string& path, const CopyEdits& edits) {
  sllm::GgufWriter w;
  for (const auto& kv : src.metadata()) {
    if (kv.first != "general.alignment") w.set(kv.first, kv.second);
  }
  for (const auto& kv : edits.metadata) w.set(kv.first, kv.second);
  std::vector<std::unique_ptr<std::vector<uint8_t>>> converted;
  for (const sllm::TensorInfo& t : src.tensors()) {
    if (t.name == edits.drop_tensor) continue;
    const std::vector<uint64_t> dims(t.ne, t.ne + t.n_dims);
    if (t.n_dims == 2 && t.type == TensorType::F32 && edits.matrix_type != TensorType::F32) {
      auto bytes = std::make_unique<std::vector<uint8_t>>(t.n_elements() * 2);
      for (size_t i = 0; i < t.n_elements(); ++i) {
        float f;
        std::memcpy(&f, t.data + 4 * i, 4);
        const uint16_t h =
            edits.matrix_type == TensorType::F16 ? sllm::f32_to_fp16(f) : sllm::f32_to_bf16(f);
        std::memcpy(bytes->data() + 2 * i, &h, 2);
      }
      w.add_tensor(t.name, edits.matrix_type, dims, bytes->data(), bytes->size());
      converted.push_back(std::move(bytes));
    } else {
      w.add_tensor(t.name, t.type, dims, t.data, t.n_bytes);
    }
  }
  for (const auto& v : edits.added_vectors) {
    w.add_tensor(v.first, TensorType::F32, {v.second.size()}, v.second.data(),
                 v.second.size() * sizeof(float));
  }
  w.write(path);
}

std::string load_error(const Gguf& src, const std::string& name, const CopyEdits& edits) {
  TempFile file(name);
  write_copy(src, file.path, edits);
  const Gguf copy = Gguf::open(file.path);
  return sllm_test::error_message([&] { Transformer::load(copy); });
}

void check_ref_case(const std::string& ref_name, const std::string& model_name) {
  const std::string ref_path = sllm_test::fixture("ref/kv_f32/" + ref_name + ".ref.gguf");
  const std::string model_path = sllm_test::fixture("ref/" + model_name);
  if (ref_path.empty() || model_path.empty()) return;
  const RefCase ref = read_ref(ref_path, model_path);
  const Gguf gguf = Gguf::open(model_path);
  for (int threads : {1, 2}) {
    sllm::TransformerOptions options;
    options.n_threads = threads;
    const Transformer tf = Transformer::load(gguf, options);
    REQUIRE(tf.config().n_vocab == ref.n_vocab);
    CAPTURE(ref_name);
    CAPTURE(threads);
    // One batch (prefill), one token at a time (decode), and uneven chunks.
    const std::vector<std::vector<size_t>> splits = {{ref.tokens.size()}, {1}, {3, 1, 5, 2}};
    for (const auto& chunks : splits) {
      Runner run(tf);
      const std::vector<float> got = run.logits_in_chunks(ref.tokens, chunks);
      const double ratio = worst_ratio(got, ref.logits, ref.n_vocab);
      CAPTURE(chunks.size());
      CHECK(ratio <= 1e-4);
      if (threads == 1) {
        MESSAGE(ref_name << ": max|diff|/max|logit| = " << ratio << " (chunks "
                         << (chunks.size() == 1 ? std::to_string(chunks[0]) : "3,1,5,2") << ")");
      }
      // Continue greedily, fed llama.cpp's ids, checking ours where its top-2 gap is clear.
      std::vector<float> last(got.end() - ptrdiff_t(ref.n_vocab), got.end());
      size_t checked = 0;
      for (size_t i = 0; i < ref.greedy.size(); ++i) {
        if (ref.gaps[i] >= 1e-2f) {
          CHECK(argmax(last.data(), last.size()) == ref.greedy[i]);
          ++checked;
        }
        last = run.step(ref.greedy[i]);
      }
      CHECK(checked >= ref.greedy.size() / 2);
    }
  }
}

}  // namespace

TEST_CASE("stories260K logits equal llama.cpp's (F32 KV), batched, one by one and chunked") {
  check_ref_case("stories260K.once_upon", "stories260K.gguf");
  check_ref_case("stories260K.lily_tom", "stories260K.gguf");
}

TEST_CASE("a_llama (GQA, untied output) logits equal llama.cpp's (F32 KV)") {
  check_ref_case("a_llama.F32", "a_llama.F32.gguf");
}

TEST_CASE("F16 KV cache stays within llama.cpp's F16-KV noise of its references") {
  using Case = std::pair<std::string, std::string>;  // reference, model
  for (const Case& c : {Case{"stories260K.once_upon", "stories260K.gguf"},
                        Case{"stories260K.lily_tom", "stories260K.gguf"},
                        Case{"a_llama.F32", "a_llama.F32.gguf"}}) {
    const std::string ref_path = sllm_test::fixture("ref/" + c.first + ".ref.gguf");
    const std::string model_path = sllm_test::fixture("ref/" + c.second);
    if (ref_path.empty() || model_path.empty()) return;
    const RefCase ref = read_ref(ref_path, model_path);
    const Gguf gguf = Gguf::open(model_path);
    const Transformer tf = Transformer::load(gguf);
    Runner run(tf, TensorType::F16);
    const std::vector<float> got = run.logits_in_chunks(ref.tokens, {ref.tokens.size()});
    bool same_top1 = false;
    const double kl = mean_kl(got, ref.logits, ref.n_vocab, &same_top1);
    CAPTURE(c.first);
    MESSAGE(c.first << " F16 KV: mean KL = " << kl);
    CHECK(kl <= 5e-6);
    CHECK(same_top1);
  }
}

TEST_CASE("greedy stories260K equals llama2.c's ids from BOS (256) and from a prompt (53)") {
  const std::string model_path = sllm_test::test_data("stories260K.gguf");
  const std::string bos_ids = sllm_test::fixture("models/stories260K/expected/greedy_bos_n256.ids");
  const std::string prompt_ids =
      sllm_test::fixture("models/stories260K/expected/greedy_prompt_lily_tom_n64.prompt_ids");
  const std::string prompt_out =
      sllm_test::fixture("models/stories260K/expected/greedy_prompt_lily_tom_n64.ids");
  if (bos_ids.empty() || prompt_ids.empty() || prompt_out.empty()) return;
  const Gguf gguf = Gguf::open(model_path);
  const Transformer tf = Transformer::load(gguf);
  const std::vector<int32_t> want = read_ids(bos_ids);
  REQUIRE(want.size() == 256);
  CHECK(greedy(tf, {1}, 256) == want);
  const std::vector<int32_t> want_prompt = read_ids(prompt_out);
  CHECK(greedy(tf, read_ids(prompt_ids), want_prompt.size()) == want_prompt);
}

TEST_CASE("F16 and BF16 copies of stories260K: same greedy text, logits within 1e-2") {
  const std::string ref_path = sllm_test::fixture("ref/kv_f32/stories260K.once_upon.ref.gguf");
  const std::string bos_ids = sllm_test::fixture("models/stories260K/expected/greedy_bos_n256.ids");
  if (ref_path.empty() || bos_ids.empty()) return;
  const Gguf original = Gguf::open(sllm_test::test_data("stories260K.gguf"));
  const RefCase ref = read_ref(ref_path, "stories260K.gguf");
  std::vector<int32_t> want = read_ids(bos_ids);
  want.resize(64);
  for (TensorType type : {TensorType::F16, TensorType::BF16}) {
    const std::string type_name = type == TensorType::F16 ? "F16" : "BF16";
    CAPTURE(type_name);
    TempFile file("stories260K." + type_name + ".gguf");
    CopyEdits edits;
    edits.matrix_type = type;
    write_copy(original, file.path, edits);
    const Gguf copy = Gguf::open(file.path);
    CHECK(copy.tensor("blk.0.attn_q.weight").type == type);
    const Transformer tf = Transformer::load(copy);
    CHECK(greedy(tf, {1}, 64) == want);
    Runner run(tf);
    const double ratio =
        worst_ratio(run.logits_in_chunks(ref.tokens, {ref.tokens.size()}), ref.logits, ref.n_vocab);
    MESSAGE("stories260K " << type_name << " weights: max|diff|/max|logit| = " << ratio);
    CHECK(ratio <= 1e-2);
  }
}

TEST_CASE("rope frequency factors (rope_freqs.weight) divide the rotation angles") {
  // Factors f_i = (10000 / 500)^(-2i/d) turn base 10000 into base 500 exactly, so a copy with
  // them must compute what a copy with rope.freq_base = 500 computes.
  const Gguf src = Gguf::open(sllm_test::test_data("stories260K.gguf"));
  const size_t rope_dim = 8;
  std::vector<float> factors(rope_dim / 2);
  for (size_t i = 0; i < factors.size(); ++i) {
    factors[i] = float(std::pow(20.0, -2.0 * double(i) / double(rope_dim)));
  }
  CopyEdits with_factors, with_base;
  with_factors.added_vectors = {{"rope_freqs.weight", factors}};
  with_base.metadata = {{"llama.rope.freq_base", sllm::GgufValue::f32(500.f)}};
  TempFile file_factors("rope_freqs.gguf"), file_base("rope_base.gguf");
  write_copy(src, file_factors.path, with_factors);
  write_copy(src, file_base.path, with_base);
  const Gguf g_factors = Gguf::open(file_factors.path), g_base = Gguf::open(file_base.path);
  const Transformer original = Transformer::load(src), tf_factors = Transformer::load(g_factors),
                    tf_base = Transformer::load(g_base);
  std::vector<int32_t> tokens(40);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = int32_t(1 + (i * 37) % 500);
  const auto logits = [&](const Transformer& tf) {
    return Runner(tf).logits_in_chunks(tokens, {tokens.size()});
  };
  const std::vector<float> want = logits(tf_base);
  CHECK(worst_ratio(logits(tf_factors), want, 512) <= 1e-5);
  CHECK(worst_ratio(logits(original), want, 512) > 1e-3);  // the factors do matter
  CopyEdits wrong_size;
  wrong_size.added_vectors = {{"rope_freqs.weight", {1.f, 1.f}}};
  CHECK(contains(load_error(src, "rope_freqs_size.gguf", wrong_size), "tensor rope_freqs.weight"));
}

TEST_CASE("model config of stories260K and a_llama from their metadata") {
  const Gguf stories = Gguf::open(sllm_test::test_data("stories260K.gguf"));
  const sllm::ModelConfig c = sllm::ModelConfig::from_gguf(stories);
  CHECK(c.architecture == "llama");
  CHECK(c.n_embd == 64);
  CHECK(c.n_layers == 5);
  CHECK(c.n_heads == 8);
  CHECK(c.n_kv_heads == 4);
  CHECK(c.key_dim == 8);
  CHECK(c.value_dim == 8);
  CHECK(c.n_ff == 172);
  CHECK(c.n_vocab == 512);
  CHECK(c.rope_dim == 8);
  CHECK(c.rope_base == 10000.f);
  const std::string a_llama = sllm_test::fixture("ref/a_llama.F32.gguf");
  if (a_llama.empty()) return;
  const sllm::ModelConfig a = sllm::ModelConfig::from_gguf(Gguf::open(a_llama));
  CHECK(a.n_embd == 128);
  CHECK(a.n_heads == 8);
  CHECK(a.n_kv_heads == 2);
  CHECK(a.n_ff == 320);
  CHECK(a.n_layers == 2);
}

TEST_CASE("bad models are refused with an Error naming the tensor or key") {
  const Gguf src = Gguf::open(sllm_test::test_data("stories260K.gguf"));
  CopyEdits wrong_ffn;
  wrong_ffn.metadata = {{"llama.feed_forward_length", sllm::GgufValue::u32(100)}};
  std::string msg = load_error(src, "ffn.gguf", wrong_ffn);
  CAPTURE(msg);
  CHECK(contains(msg, "tensor blk.0.ffn_gate.weight"));
  CHECK(contains(msg, "shape [64, 172]"));
  CHECK(contains(msg, "implies [64, 100]"));

  CopyEdits missing;
  missing.drop_tensor = "blk.3.ffn_up.weight";
  msg = load_error(src, "missing.gguf", missing);
  CHECK(contains(msg, "tensor blk.3.ffn_up.weight is missing"));

  CopyEdits arch;
  arch.metadata = {{"general.architecture", sllm::GgufValue::string("mamba9")}};
  msg = load_error(src, "arch.gguf", arch);
  CHECK(contains(msg, "unsupported architecture 'mamba9'"));

  CopyEdits heads;
  heads.metadata = {{"llama.attention.head_count", sllm::GgufValue::u32(7)}};
  msg = load_error(src, "heads.gguf", heads);
  CHECK(contains(msg, "llama.attention.head_count (7)"));

  CopyEdits no_layers;
  no_layers.metadata = {{"llama.block_count", sllm::GgufValue::u32(0)}};
  msg = load_error(src, "layers.gguf", no_layers);
  CHECK(contains(msg, "llama.block_count"));

  const std::string q8 = sllm_test::fixture("ref/a_llama.Q8_0.gguf");
  if (q8.empty()) return;
  const Gguf quantized = Gguf::open(q8);
  msg = sllm_test::error_message([&] { Transformer::load(quantized); });
  CHECK(contains(msg, "has type Q8_0, which this build cannot run yet"));
}

TEST_CASE("bad input to forward: token ids, context overflow, pool exhaustion") {
  const Gguf gguf = Gguf::open(sllm_test::test_data("stories260K.gguf"));
  const Transformer tf = Transformer::load(gguf);
  ForwardScratch scratch;
  std::vector<float> logits(512);
  KvPool pool(tf.kv_shape(), 2, 16);  // 32 tokens
  KvSequence seq(pool, 20);
  const std::vector<int32_t> tokens = {1, 400, 512, 3};
  std::string msg = sllm_test::error_message(
      [&] { tf.forward(tokens.data(), tokens.size(), seq, scratch, logits.data()); });
  CHECK(contains(msg, "token id 512 at batch position 2 is outside the vocabulary of 512"));
  const int32_t negative = -1;
  msg = sllm_test::error_message([&] { tf.forward(&negative, 1, seq, scratch, logits.data()); });
  CHECK(contains(msg, "token id -1"));
  CHECK(seq.size() == 0);

  const std::vector<int32_t> prompt(15, 300);
  tf.forward(prompt.data(), prompt.size(), seq, scratch, logits.data());
  CHECK(seq.size() == 15);
  msg =
      sllm_test::error_message([&] { tf.forward(prompt.data(), 6, seq, scratch, logits.data()); });
  CHECK(contains(msg,
                 "context overflow: the sequence holds 15 tokens and 6 more would exceed "
                 "the context length of 20"));
  CHECK(seq.size() == 15);
  tf.forward(prompt.data(), 5, seq, scratch, logits.data());  // up to the limit is fine
  CHECK(seq.size() == 20);

  KvSequence greedy_seq(pool, 64);  // the pool has no blocks left
  msg = sllm_test::error_message(
      [&] { tf.forward(prompt.data(), 1, greedy_seq, scratch, logits.data()); });
  CHECK(contains(msg, "KV cache pool exhausted"));

  KvPool other(sllm::KvShape{2, 2, 8, 8}, 4);
  KvSequence wrong(other, 16);
  msg = sllm_test::error_message([&] { tf.forward(prompt.data(), 1, wrong, scratch, nullptr); });
  CHECK(contains(msg, "another model shape"));
}
