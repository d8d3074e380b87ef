// The paged KV cache shared by many sequences: attention over block tables, forks with
// copy-on-write, prefix reuse and batched decode, each against a run without the feature.
#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "test_support.h"

namespace {

using sllm::ForwardScratch;
using sllm::Gguf;
using sllm::KvPool;
using sllm::KvSequence;
using sllm::KvShape;
using sllm::TensorType;
using sllm::Transformer;
using Tokens = std::vector<int32_t>;

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// max |a - b| over max |b|.
double relative_diff(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  double diff = 0, scale = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, std::fabs(double(a[i]) - b[i]));
    scale = std::max(scale, std::fabs(double(b[i])));
  }
  return diff / scale;
}

// Logits of the last token after feeding chunks one forward call each, in a pool of its own.
std::vector<float> alone(const Transformer& tf, const std::vector<Tokens>& chunks) {
  KvPool pool = KvPool::for_tokens(tf.kv_shape(), 512);
  KvSequence seq(pool, 512);
  ForwardScratch scratch;
  std::vector<float> logits(tf.config().n_vocab);
  for (const Tokens& c : chunks) tf.forward(c.data(), c.size(), seq, scratch, logits.data());
  return logits;
}

std::vector<float> step(const Transformer& tf, KvSequence& seq, const Tokens& tokens) {
  ForwardScratch scratch;
  std::vector<float> logits(tf.config().n_vocab);
  tf.forward(tokens.data(), tokens.size(), seq, scratch, logits.data());
  return logits;
}

Tokens count_up(int32_t first, size_t n, int32_t n_vocab) {
  Tokens t(n);
  for (size_t i = 0; i < n; ++i) t[i] = int32_t((first + 7 * int32_t(i)) % n_vocab);
  return t;
}

// The models the tests run: stories260K (bundled) and the fixtures' a_llama (GQA) if present.
std::vector<std::string> model_paths() {
  std::vector<std::string> paths = {sllm_test::test_data("stories260K.gguf")};
  const std::string a_llama = sllm_test::fixture("ref/a_llama.F32.gguf");
  if (!a_llama.empty()) paths.push_back(a_llama);
  return paths;
}

constexpr double kSameComputation = 1e-5;  // bound of the diff between identical computations

}  // namespace

TEST_CASE("attention over paged blocks equals a contiguous-cache reference (GQA)") {
  const size_t n_heads = 6, n_kv_heads = 2, dim = 12, group = n_heads / n_kv_heads;
  const KvShape shape{1, n_kv_heads, dim, dim};
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.f, 1.f);
  for (TensorType type : {TensorType::F32, TensorType::F16, TensorType::I8}) {
    for (size_t block_tokens : {1, 16, 32}) {
      for (size_t length : {1, 15, 37, 70}) {
        CAPTURE(block_tokens);
        CAPTURE(length);
        // Another sequence grows in between, so the tested blocks are scattered in the pool.
        KvPool pool(shape, 2 * ((length + block_tokens - 1) / block_tokens) + 2, block_tokens,
                    type);
        KvSequence seq(pool, length), other(pool, length);
        // The contiguous cache: keys[t][kv_head][i], values alike, as the pool's type stores them.
        std::vector<float> keys(length * n_kv_heads * dim), values(keys.size());
        for (size_t t = 0; t < length; ++t) {
          float* k = keys.data() + t * n_kv_heads * dim;
          float* v = values.data() + t * n_kv_heads * dim;
          for (size_t i = 0; i < n_kv_heads * dim; ++i) {
            k[i] = normal(rng);
            v[i] = normal(rng);
            if (type == TensorType::F16) {
              k[i] = sllm::fp16_to_f32(sllm::f32_to_fp16(k[i]));
              v[i] = sllm::fp16_to_f32(sllm::f32_to_fp16(v[i]));
            }
          }
          seq.reserve(1);
          seq.write(0, t, k, v);
          seq.commit(1);
          if (type == TensorType::I8) {
            // The contiguous cache holds what the pool stores: each element within half a step
            // (the head's largest magnitude / 127) of what was written.
            for (size_t h = 0; h < n_kv_heads; ++h) {
              const sllm::detail::PagedRows kr = seq.keys(0, h), vr = seq.values(0, h);
              for (float* row : {k + h * dim, v + h * dim}) {
                float max = 0;
                for (size_t i = 0; i < dim; ++i) max = std::max(max, std::fabs(row[i]));
                for (size_t i = 0; i < dim; ++i) {
                  const float stored =
                      sllm::ref::element_to_f32(type, (row == k + h * dim ? kr : vr).row(t), i);
                  REQUIRE(std::fabs(stored - row[i]) <= max / 127 * 0.5001f);
                  row[i] = stored;
                }
              }
            }
          }
          other.reserve(1);
          other.commit(1);
        }
        std::vector<float> q(n_heads * dim);
        for (float& x : q) x = normal(rng);
        const float scale = 1.0f / std::sqrt(float(dim));
        for (size_t begin : {size_t{0}, length / 3}) {
          std::vector<float> expected(n_heads * dim);
          for (size_t h = 0; h < n_heads; ++h) {
            const size_t kvh = h / group;
            std::vector<double> p;
            double max = -INFINITY;
            for (size_t t = begin; t < length; ++t) {
              double s = 0;
              for (size_t i = 0; i < dim; ++i) {
                s += double(q[h * dim + i]) * keys[(t * n_kv_heads + kvh) * dim + i];
              }
              p.push_back(s * scale);
              max = std::max(max, p.back());
            }
            double sum = 0;
            for (double& x : p) sum += (x = std::exp(x - max));
            for (size_t i = 0; i < dim; ++i) {
              double acc = 0;
              for (size_t t = begin; t < length; ++t) {
                acc += p[t - begin] * values[(t * n_kv_heads + kvh) * dim + i];
              }
              expected[h * dim + i] = float(acc / sum);
            }
          }
          sllm_test::for_each_simd_target([&] {
            // Each KV head's group of query heads at once, and one head at a time.
            std::vector<float> got(n_heads * dim), one_by_one(n_heads * dim);
            for (size_t kvh = 0; kvh < n_kv_heads; ++kvh) {
              sllm::detail::attention(q.data() + kvh * group * dim, group, dim, seq.keys(0, kvh),
                                      seq.values(0, kvh), begin, length, scale,
                                      got.data() + kvh * group * dim);
            }
            for (size_t h = 0; h < n_heads; ++h) {
              sllm::detail::attention(q.data() + h * dim, dim, seq.keys(0, h / group),
                                      seq.values(0, h / group), begin, length, scale,
                                      one_by_one.data() + h * dim);
            }
            CHECK(relative_diff(got, expected) < 1e-5);
            CHECK(relative_diff(one_by_one, expected) < 1e-5);
          });
        }
      }
    }
  }
}

TEST_CASE("fork + divergent continuations: each child equals a run from scratch, parent intact") {
  for (const std::string& path : model_paths()) {
    CAPTURE(path);
    const Gguf gguf = Gguf::open(path);
    const Transformer tf = Transformer::load(gguf);
    const int32_t n_vocab = int32_t(tf.config().n_vocab);
    const Tokens prompt = count_up(1, 21, n_vocab);  // ends inside the second block
    const Tokens a = count_up(40, 14, n_vocab), b = count_up(90, 3, n_vocab);
    const Tokens c = count_up(200, 5, n_vocab);
    KvPool pool(tf.kv_shape(), 12, 16);
    KvSequence parent(pool, 256);
    step(tf, parent, prompt);
    const std::vector<uint32_t> parent_blocks = parent.blocks();
    KvSequence child_a = parent.fork(), child_b = parent.fork();
    CHECK(pool.ref_count(parent_blocks[0]) == 3);
    CHECK(pool.free_blocks() == 10);  // nothing copied yet
    const std::vector<float> got_a = step(tf, child_a, a);
    // child_a copied the shared partial block and shares the full one.
    CHECK(child_a.blocks()[0] == parent_blocks[0]);
    CHECK(child_a.blocks()[1] != parent_blocks[1]);
    // child_b grows one token at a time, across the block boundary.
    std::vector<float> got_b;
    for (int32_t t : b) got_b = step(tf, child_b, {t});
    const Tokens c0 = {c[0]};
    const Tokens c_rest(c.begin() + 1, c.end());
    CHECK(relative_diff(got_a, alone(tf, {prompt, a})) <= kSameComputation);
    Tokens b_chunks_last = {b.back()};
    CHECK(relative_diff(got_b, alone(tf, {prompt, {b[0]}, {b[1]}, b_chunks_last})) <=
          kSameComputation);
    // The parent's own blocks and tokens were not touched by its children.
    CHECK(parent.blocks() == parent_blocks);
    CHECK(parent.size() == prompt.size());
    CHECK(relative_diff(step(tf, parent, c), alone(tf, {prompt, c})) <= kSameComputation);
    // Freeing everything returns every block (the full shared one stays cached).
    child_a.clear();
    child_b.clear();
    parent.clear();
    CHECK(pool.free_blocks() == 12);
  }
}

TEST_CASE("truncate then diverge: the shared block is copied, the fork keeps its tokens") {
  const Gguf gguf = Gguf::open(sllm_test::test_data("stories260K.gguf"));
  const Transformer tf = Transformer::load(gguf);
  const Tokens prompt = count_up(3, 30, 512), other = count_up(77, 6, 512);
  KvPool pool(tf.kv_shape(), 8, 16);
  KvSequence seq(pool, 128);
  step(tf, seq, prompt);
  KvSequence keep = seq.fork();
  seq.truncate(10);  // into the first block, which keep still holds
  const std::vector<float> got = step(tf, seq, other);
  const Tokens head(prompt.begin(), prompt.begin() + 10);
  CHECK(relative_diff(got, alone(tf, {prompt})) > 0);  // a real divergence
  CHECK(relative_diff(got, alone(tf, {head, other})) <= kSameComputation);
  const Tokens next = {5};
  CHECK(relative_diff(step(tf, keep, next), alone(tf, {prompt, next})) <= kSameComputation);
}

TEST_CASE("prefix reuse: a prompt sharing its first tokens computes only the rest") {
  for (const std::string& path : model_paths()) {
    CAPTURE(path);
    const Gguf gguf = Gguf::open(path);
    const Transformer tf = Transformer::load(gguf);
    const int32_t n_vocab = int32_t(tf.config().n_vocab);
    KvPool pool(tf.kv_shape(), 16, 16);
    const Tokens first = count_up(1, 45, n_vocab);
    {
      KvSequence seq(pool, 256);
      step(tf, seq, first);
    }  // freed: its two full blocks stay cached
    CHECK(pool.cached_blocks() == 2);
    Tokens second(first.begin(), first.begin() + 35);  // shares 35 tokens: 2 whole blocks
    const Tokens tail = count_up(300, 9, n_vocab);
    second.insert(second.end(), tail.begin(), tail.end());
    KvSequence seq(pool, 256);
    const size_t reused = seq.reuse_prefix(second.data(), second.size() - 1);
    CHECK(reused == 32);
    CHECK(pool.cached_blocks() == 0);
    const Tokens rest(second.begin() + ptrdiff_t(reused), second.end());
    const std::vector<float> got = step(tf, seq, rest);
    CHECK(seq.size() == second.size());
    const Tokens head(second.begin(), second.begin() + 32);
    CHECK(relative_diff(got, alone(tf, {head, rest})) <= kSameComputation);
    // The whole prompt in one batch: the same up to matmul rounding.
    CHECK(relative_diff(got, alone(tf, {second})) <= 1e-4);
    // A prompt that differs inside the first block reuses nothing.
    Tokens third = second;
    third[5] = (third[5] + 1) % n_vocab;
    KvSequence seq3(pool, 256);
    CHECK(seq3.reuse_prefix(third.data(), third.size() - 1) == 0);
  }
}

TEST_CASE("batched decode: each row equals its sequence stepped alone; join and leave") {
  for (const std::string& path : model_paths()) {
    CAPTURE(path);
    const Gguf gguf = Gguf::open(path);
    const Transformer tf = Transformer::load(gguf);
    const int32_t n_vocab = int32_t(tf.config().n_vocab);
    const size_t V = size_t(n_vocab);
    KvPool pool(tf.kv_shape(), 32, 16);
    std::vector<Tokens> prompts = {count_up(1, 5, n_vocab), count_up(9, 17, n_vocab),
                                   count_up(30, 40, n_vocab), count_up(50, 2, n_vocab)};
    std::vector<KvSequence> seqs;
    for (size_t i = 0; i < prompts.size(); ++i) {
      seqs.emplace_back(pool, 256);
      step(tf, seqs.back(), prompts[i]);
    }
    std::vector<std::vector<Tokens>> history(prompts.size());
    for (size_t i = 0; i < prompts.size(); ++i) history[i] = {prompts[i]};
    ForwardScratch scratch;
    // Steps over batches of changing membership: 0,1,2 then 1,2,3 (0 left, 3 joined), then 3,0.
    const std::vector<std::vector<size_t>> batches = {{0, 1, 2}, {0, 1, 2}, {1, 2, 3}, {3, 0}};
    int32_t next = 100;
    for (const auto& members : batches) {
      Tokens tokens;
      std::vector<KvSequence*> batch;
      for (size_t i : members) {
        tokens.push_back(next++ % n_vocab);
        batch.push_back(&seqs[i]);
        history[i].push_back({tokens.back()});
      }
      std::vector<float> logits(members.size() * V);
      tf.forward_batch(tokens.data(), batch.data(), batch.size(), scratch, logits.data());
      for (size_t r = 0; r < members.size(); ++r) {
        CAPTURE(members[r]);
        const std::vector<float> row(logits.begin() + ptrdiff_t(r * V),
                                     logits.begin() + ptrdiff_t((r + 1) * V));
        CHECK(relative_diff(row, alone(tf, history[members[r]])) <= kSameComputation);
      }
    }
    const Tokens two = {1, 2};
    KvSequence* same[2] = {&seqs[0], &seqs[0]};
    std::vector<float> logits(2 * V);
    CHECK(contains(sllm_test::error_message(
                       [&] { tf.forward_batch(two.data(), same, 2, scratch, logits.data()); }),
                   "also sequence 0"));
  }
}

TEST_CASE("an exhausted pool fails the one request; the other sequences go on unharmed") {
  const Gguf gguf = Gguf::open(sllm_test::test_data("stories260K.gguf"));
  const Transformer tf = Transformer::load(gguf);
  KvPool pool(tf.kv_shape(), 4, 16);
  KvSequence a(pool, 256), b(pool, 256), greedy(pool, 256);
  const Tokens pa = count_up(1, 16, 512), pb = count_up(2, 10, 512), pg = count_up(3, 32, 512);
  step(tf, a, pa);  // a's block is full: its next token needs a new one
  step(tf, b, pb);
  step(tf, greedy, {pg.begin(), pg.begin() + 16});  // 3 of the 4 blocks in use
  // Each request reserves its token first; the one that cannot is dropped from the batch.
  std::vector<KvSequence*> batch;
  std::vector<std::string> errors;
  for (KvSequence* s : {&a, &b, &greedy}) {
    const size_t size = s->size();
    try {
      s->reserve(1);
      batch.push_back(s);
    } catch (const sllm::Error& e) {
      errors.push_back(e.what());
      CHECK(s->size() == size);
    }
  }
  REQUIRE(errors.size() == 1);
  CHECK(contains(errors[0],
                 "KV cache pool exhausted: 1 more blocks of 16 tokens needed, 0 of 4 free"));
  REQUIRE(batch.size() == 2);
  CHECK(batch[0] == &a);
  CHECK(batch[1] == &b);
  const Tokens tokens = {7, 8};
  std::vector<float> logits(2 * 512);
  ForwardScratch scratch;
  tf.forward_batch(tokens.data(), batch.data(), 2, scratch, logits.data());
  const std::vector<float> row_b(logits.begin() + 512, logits.end());
  CHECK(relative_diff(row_b, alone(tf, {pb, {8}})) <= kSameComputation);
  CHECK(greedy.size() == 16);
  // forward_batch itself names the sequence that did not fit, and changes no size.
  KvSequence* all[2] = {&b, &greedy};
  const Tokens two = {1, 2};
  const std::string msg = sllm_test::error_message(
      [&] { tf.forward_batch(two.data(), all, 2, scratch, logits.data()); });
  CHECK(contains(msg, "batch sequence 1: KV cache pool exhausted"));
  CHECK(b.size() == 11);
  CHECK(greedy.size() == 16);
}
