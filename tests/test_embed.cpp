// Pooled embeddings against llama.cpp's (ref-embd/: a tiny random BERT with mean and CLS pooling,
// F32 and Q8_0, and the tiny llama with mean pooling), batching, threads, and bad input.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <thread>

#include "test_support.h"

namespace {

using sllm::Embeddings;
using sllm::EmbedOptions;
using sllm::Model;
using sllm::Pooling;

// A reference file of ref-embd/README.md: texts, llama.cpp's tokens and unnormalized vectors.
struct EmbdRef {
  std::vector<std::string> texts;
  std::vector<std::vector<int32_t>> tokens;
  size_t n_embd = 0;
  std::vector<float> vectors;  // row per text
  const float* row(size_t i) const { return vectors.data() + i * n_embd; }
};

EmbdRef read_ref(const std::string& path) {
  const sllm::Gguf g = sllm::Gguf::open(path);
  EmbdRef r;
  r.texts = g.get_array<std::string>("ref.texts");
  for (size_t j = 0; j < r.texts.size(); ++j) {
    r.tokens.push_back(g.get_array<int32_t>("ref.tokens." + std::to_string(j)));
  }
  const sllm::TensorInfo& t = g.tensor("embeddings");
  REQUIRE(t.type == sllm::TensorType::F32);
  REQUIRE(t.ne[1] == r.texts.size());
  r.n_embd = t.ne[0];
  r.vectors.resize(t.n_elements());
  std::memcpy(r.vectors.data(), t.data, t.n_bytes);
  return r;
}

// The README's bounds for one text: cosine >= 0.9999 and max |diff| <= 1e-3 * max |ref|.
bool within_bounds(const float* got, const float* ref, size_t n, double* max_diff_ratio) {
  double max_ref = 0, max_diff = 0;
  for (size_t k = 0; k < n; ++k) {
    max_ref = std::max(max_ref, double(std::fabs(ref[k])));
    max_diff = std::max(max_diff, double(std::fabs(got[k] - ref[k])));
  }
  *max_diff_ratio = max_diff / max_ref;
  return sllm::cosine_similarity(got, ref, n) >= 0.9999f && *max_diff_ratio <= 1e-3;
}

struct Case {
  const char* ref;
  const char* model;
  Pooling pooling;  // kModel: the file's bert.pooling_type
};

// The CLS references once more from the mean model's file with the pooling chosen by option:
// the tensors are the same, and tests/data holds only that file (see tests/data/README.md).
const Case kCases[] = {
    {"bert_tiny_mean.F32.embd.gguf", "bert_tiny_mean.F32.gguf", Pooling::kModel},
    {"bert_tiny_cls.F32.embd.gguf", "bert_tiny_cls.F32.gguf", Pooling::kModel},
    {"bert_tiny_mean.Q8_0.embd.gguf", "bert_tiny_mean.Q8_0.gguf", Pooling::kModel},
    {"bert_tiny_cls.Q8_0.embd.gguf", "bert_tiny_cls.Q8_0.gguf", Pooling::kModel},
    {"bert_tiny_cls.Q8_0.embd.gguf", "bert_tiny_mean.Q8_0.gguf", Pooling::kCls},
    {"bert_tiny_mean.F32.embd.gguf", "bert_tiny_mean.F32.gguf", Pooling::kMean},
    {"a_llama.F32.mean.embd.gguf", "a_llama.F32.gguf", Pooling::kMean},
};

std::string ref_embd(const std::string& name) {
  return sllm_test::fixture("ref-embd/" + name);
}

// The bundled BERT (Q8_0, mean pooling), or null with SKIPPED.
std::unique_ptr<Model> bert_model() {
  const std::string path = ref_embd("bert_tiny_mean.Q8_0.gguf");
  if (path.empty()) return nullptr;
  return std::make_unique<Model>(Model::open(path));
}

EmbdRef bert_ref() {
  return read_ref(ref_embd("bert_tiny_mean.Q8_0.embd.gguf"));
}

double max_abs_diff(const Embeddings& a, const Embeddings& b) {
  REQUIRE(a.data.size() == b.data.size());
  double m = 0;
  for (size_t i = 0; i < a.data.size(); ++i) {
    m = std::max(m, double(std::fabs(a.data[i] - b.data[i])));
  }
  return m;
}

}  // namespace

TEST_CASE("embeddings equal llama.cpp's: tokens, cosine and max |diff| per text") {
  for (const Case& c : kCases) {
    const std::string ref_path = ref_embd(c.ref);
    const std::string model_path = ref_embd(c.model);
    if (ref_path.empty() || model_path.empty()) continue;
    const std::string names =
        std::string(c.model) + " vs " + c.ref + " pooling " + sllm::pooling_name(c.pooling);
    CAPTURE(names);
    const EmbdRef ref = read_ref(ref_path);
    const Model model = Model::open(model_path);
    REQUIRE(model.config().n_embd == ref.n_embd);
    for (size_t j = 0; j < ref.texts.size(); ++j) {
      CHECK(model.tokenizer().encode(ref.texts[j], true, false) == ref.tokens[j]);
    }
    sllm_test::for_each_simd_target([&] {
      EmbedOptions options;
      options.pooling = c.pooling;
      options.normalize = false;  // the references are llama.cpp's raw pooled vectors
      const Embeddings e = sllm::embed(model, ref.texts, options);
      REQUIRE(e.n_texts == ref.texts.size());
      REQUIRE(e.n_embd == ref.n_embd);
      for (size_t j = 0; j < ref.texts.size(); ++j) {
        double ratio = 0;
        const bool ok = within_bounds(e.row(j), ref.row(j), ref.n_embd, &ratio);
        CHECK_MESSAGE(ok, "text " << j << ": cosine "
                                  << sllm::cosine_similarity(e.row(j), ref.row(j), ref.n_embd)
                                  << ", max |diff| / max |ref| " << ratio);
      }
    });
  }
}

TEST_CASE("embeddings: Q8_0 and F32 differ by more than the bounds, so a mix-up fails") {
  const std::string q8_model = ref_embd("bert_tiny_mean.Q8_0.gguf");
  const std::string f32_ref = ref_embd("bert_tiny_mean.F32.embd.gguf");
  if (q8_model.empty() || f32_ref.empty()) return;
  const EmbdRef ref = read_ref(f32_ref);
  EmbedOptions options;
  options.normalize = false;
  const Embeddings e = sllm::embed(Model::open(q8_model), ref.texts, options);
  size_t outside = 0;
  for (size_t j = 0; j < ref.texts.size(); ++j) {
    double ratio = 0;
    outside += !within_bounds(e.row(j), ref.row(j), ref.n_embd, &ratio);
  }
  CHECK(outside > 0);
}

TEST_CASE("embeddings: normalized vectors are the references scaled to unit length") {
  const auto model = bert_model();
  if (!model) return;
  const EmbdRef ref = bert_ref();
  const Embeddings e = sllm::embed(*model, ref.texts);  // normalize by default
  for (size_t j = 0; j < ref.texts.size(); ++j) {
    std::vector<float> unit(ref.row(j), ref.row(j) + ref.n_embd);
    double norm = 0;
    for (float v : unit) norm += double(v) * v;
    for (float& v : unit) v = float(v / std::sqrt(norm));
    double got_norm = 0;
    for (size_t k = 0; k < e.n_embd; ++k) got_norm += double(e.row(j)[k]) * e.row(j)[k];
    CHECK(got_norm == doctest::Approx(1.0).epsilon(1e-5));
    double ratio = 0;
    CHECK(within_bounds(e.row(j), unit.data(), e.n_embd, &ratio));
  }
  // The paraphrase pair is closer than the unrelated pair (random weights, but the shared
  // tokens "cat", "on", "the" pull them together).
  CHECK(sllm::cosine_similarity(e.row(0), e.row(1), e.n_embd) >
        sllm::cosine_similarity(e.row(0), e.row(5), e.n_embd));
}

TEST_CASE("embeddings: batching several texts per pass equals one text at a time") {
  const auto model = bert_model();
  if (!model) return;
  const EmbdRef ref = bert_ref();
  // Each text also once more, so that batches mix texts of different lengths.
  std::vector<std::string> texts = ref.texts;
  texts.insert(texts.end(), ref.texts.rbegin(), ref.texts.rend());
  EmbedOptions one_at_a_time;
  one_at_a_time.batch_tokens = 1;
  const Embeddings alone = sllm::embed(*model, texts, one_at_a_time);
  for (size_t batch_tokens : {size_t(20), size_t(64), size_t(512)}) {
    CAPTURE(batch_tokens);
    EmbedOptions batched;
    batched.batch_tokens = batch_tokens;
    const Embeddings e = sllm::embed(*model, texts, batched);
    CHECK(max_abs_diff(e, alone) <= 1e-5);
  }
  // The same text in two batch positions gives the same vector.
  const size_t n = ref.texts.size();
  for (size_t j = 0; j < n; ++j) {
    double m = 0;
    for (size_t k = 0; k < alone.n_embd; ++k) {
      m = std::max(m, double(std::fabs(alone.row(j)[k] - alone.row(2 * n - 1 - j)[k])));
    }
    CHECK(m <= 1e-6);
  }
}

TEST_CASE("embeddings: one Model used by several threads at once") {
  const auto model = bert_model();
  if (!model) return;
  const EmbdRef ref = bert_ref();
  const Embeddings serial = sllm::embed(*model, ref.texts);
  std::vector<Embeddings> results(4);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < results.size(); ++i) {
    threads.emplace_back([&, i] {
      EmbedOptions options;
      options.batch_tokens = 8 + 16 * i;  // different batches in each thread
      for (int repeat = 0; repeat < 5; ++repeat)
        results[i] = sllm::embed(*model, ref.texts, options);
    });
  }
  for (std::thread& t : threads) t.join();
  for (const Embeddings& r : results) CHECK(max_abs_diff(r, serial) <= 1e-5);
}

TEST_CASE("embeddings: empty texts, long texts, pooling choices and bad input") {
  const auto model = bert_model();
  if (!model) return;
  const sllm::Tokenizer& tok = model->tokenizer();
  // An empty text is [CLS] [SEP]: a vector like any other.
  CHECK(tok.encode("", true, false) == std::vector<int32_t>{tok.bos(), tok.eos()});
  const Embeddings empty = sllm::embed(*model, {""});
  const Embeddings from_tokens = sllm::embed_tokens(*model, {{tok.bos(), tok.eos()}});
  CHECK(max_abs_diff(empty, from_tokens) == 0);
  // No texts: no rows.
  CHECK(sllm::embed(*model, {}).n_texts == 0);

  // 510 words + [CLS] [SEP] fill the 512 positions; one more word is refused, by name.
  std::string words;
  for (int i = 0; i < 510; ++i) words += " cat";
  REQUIRE(tok.encode(words, true, false).size() == 512);
  CHECK(sllm::embed(*model, {words}).n_texts == 1);
  const std::string message = sllm_test::error_message([&] {
    sllm::embed(*model, {"short", words + " cat"});
  });
  CHECK(message.find("text 1 (counting from 0) has 513 tokens") != std::string::npos);
  CHECK(message.find("512 positions") != std::string::npos);

  // Token lists: none at all, or an id outside the vocabulary.
  CHECK(sllm_test::error_message([&] { sllm::embed_tokens(*model, {{}}); }).find("no tokens") !=
        std::string::npos);
  CHECK(sllm_test::error_message([&] {
          sllm::embed_tokens(*model, {{101, 30522, 102}});
        }).find("outside the vocabulary") != std::string::npos);
  EmbedOptions zero_batch;
  zero_batch.batch_tokens = 0;
  CHECK_THROWS_AS(sllm::embed(*model, {"a"}, zero_batch), sllm::Error);

  // Pooling: the file says mean; CLS and last differ from it; by name.
  CHECK(sllm::model_pooling(*model) == Pooling::kMean);
  CHECK(sllm::pooling_from_name("cls") == Pooling::kCls);
  CHECK(sllm::pooling_from_name("last") == Pooling::kLast);
  CHECK(sllm::pooling_from_name("mean") == Pooling::kMean);
  CHECK_FALSE(sllm::pooling_from_name("max").has_value());
  EmbedOptions cls, last;
  cls.pooling = Pooling::kCls;
  last.pooling = Pooling::kLast;
  const Embeddings mean_v = sllm::embed(*model, {"a cat"});
  CHECK(max_abs_diff(sllm::embed(*model, {"a cat"}, cls), mean_v) > 1e-3);
  CHECK(max_abs_diff(sllm::embed(*model, {"a cat"}, last), mean_v) > 1e-3);

  // An encoder gives no next-token logits.
  sllm::Session session(*model);
  CHECK(sllm_test::error_message([&] {
          session.evaluate({101, 102});
        }).find("encoder") != std::string::npos);
}

TEST_CASE("embeddings: a decoder needs a pooling choice") {
  const std::string path = ref_embd("a_llama.F32.gguf");
  if (path.empty()) return;
  const Model model = Model::open(path);
  CHECK(sllm::model_pooling(model) == Pooling::kModel);
  const std::string message = sllm_test::error_message([&] { sllm::embed(model, {"a"}); });
  CHECK(message.find("pooling") != std::string::npos);
  EmbedOptions last;
  last.pooling = Pooling::kLast;
  const Embeddings e = sllm::embed(model, {"a", ""}, last);  // "" is BOS alone
  CHECK(e.n_texts == 2);
}

TEST_CASE("cosine_similarity") {
  const float a[] = {1, 0, 0}, b[] = {0, 2, 0}, c[] = {3, 0, 0}, d[] = {-1, -1, 0}, z[] = {0, 0, 0};
  CHECK(sllm::cosine_similarity(a, b, 3) == doctest::Approx(0.0));
  CHECK(sllm::cosine_similarity(a, c, 3) == doctest::Approx(1.0));
  CHECK(sllm::cosine_similarity(a, d, 3) == doctest::Approx(-std::sqrt(0.5)));
  CHECK(sllm::cosine_similarity(a, z, 3) == 0.0f);
}
