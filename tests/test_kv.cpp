#include <vector>

#include "test_support.h"

namespace {

using sllm::KvPool;
using sllm::KvSequence;
using sllm::KvShape;
using sllm::TensorType;

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// A value that names its layer, token (< 20), kind (key/value) and element (< 10): an integer
// below 2048 over 64, so F16 holds it exactly.
float tag(size_t layer, size_t pos, bool value, size_t i) {
  return float(layer * 200 + pos * 10 + i) * (value ? -1.f : 1.f) / 64.f;
}

void write_token(KvSequence& seq, const KvShape& shape, size_t layer, size_t pos) {
  std::vector<float> k(shape.n_kv_heads * shape.key_dim), v(shape.n_kv_heads * shape.value_dim);
  for (size_t i = 0; i < k.size(); ++i) k[i] = tag(layer, pos, false, i);
  for (size_t i = 0; i < v.size(); ++i) v[i] = tag(layer, pos, true, i);
  seq.write(layer, pos, k.data(), v.data());
}

// Reads every head of every token back through the paged views the attention kernel uses.
void check_tokens(const KvSequence& seq, const KvShape& shape, size_t n_tokens) {
  for (size_t l = 0; l < shape.n_layers; ++l) {
    for (size_t h = 0; h < shape.n_kv_heads; ++h) {
      const sllm::detail::PagedRows keys = seq.keys(l, h), values = seq.values(l, h);
      for (size_t pos = 0; pos < n_tokens; ++pos) {
        for (size_t i = 0; i < shape.key_dim; ++i) {
          REQUIRE(sllm::ref::element_to_f32(keys.type, keys.row(pos), i) ==
                  tag(l, pos, false, h * shape.key_dim + i));
        }
        for (size_t i = 0; i < shape.value_dim; ++i) {
          REQUIRE(sllm::ref::element_to_f32(values.type, values.row(pos), i) ==
                  tag(l, pos, true, h * shape.value_dim + i));
        }
      }
    }
  }
}

const KvShape kShape{3, 2, 3, 5};  // 3 layers, 2 KV heads, keys of 3 and values of 5

}  // namespace

TEST_CASE("KV rows written to a sequence read back through the paged views") {
  for (TensorType type : {TensorType::F32, TensorType::F16}) {
    KvPool pool(kShape, 6, 4, type);
    CHECK(pool.free_blocks() == 6);
    // Another sequence takes a block first, so the tested one's blocks are not the first ones.
    KvSequence other(pool, 100);
    other.reserve(1);
    KvSequence seq(pool, 20);
    size_t n = 0;
    for (size_t chunk : {3, 1, 6, 5}) {  // crosses block boundaries at uneven points
      seq.reserve(chunk);
      for (size_t pos = n; pos < n + chunk; ++pos) {
        for (size_t l = 0; l < kShape.n_layers; ++l) write_token(seq, kShape, l, pos);
      }
      seq.commit(chunk);
      n += chunk;
      CHECK(seq.size() == n);
      CHECK(seq.blocks().size() == (n + 3) / 4);
    }
    check_tokens(seq, kShape, n);
    CHECK(pool.free_blocks() == 6 - 1 - 4);
  }
}

TEST_CASE("KV sequence: context overflow is an Error and leaves the sequence unchanged") {
  KvPool pool(kShape, 8, 4);
  KvSequence seq(pool, 10);
  seq.reserve(7);
  seq.commit(7);
  const std::string msg = sllm_test::error_message([&] { seq.reserve(4); });
  CAPTURE(msg);
  CHECK(contains(msg, "context overflow"));
  CHECK(contains(msg, "holds 7 tokens"));
  CHECK(contains(msg, "context length of 10"));
  CHECK(seq.size() == 7);
  CHECK(seq.blocks().size() == 2);
  CHECK(pool.free_blocks() == 6);
  seq.reserve(3);  // exactly up to the context length is fine
  CHECK(!sllm_test::error_message([&] { seq.reserve(size_t(-1)); }).empty());
}

TEST_CASE("KV pool exhaustion is an Error naming the numbers; nothing is taken") {
  KvPool pool(kShape, 5, 4);
  KvSequence a(pool, 100), b(pool, 100);
  a.reserve(8);  // 2 blocks
  const std::string msg = sllm_test::error_message([&] { b.reserve(16); });
  CAPTURE(msg);
  CHECK(contains(msg, "KV cache pool exhausted"));
  CHECK(contains(msg, "4 more blocks of 4 tokens needed, 3 of 5 free"));
  CHECK(b.blocks().empty());
  CHECK(pool.free_blocks() == 3);
  b.reserve(12);
  CHECK(pool.free_blocks() == 0);
}

TEST_CASE("KV sequence: truncate, clear, destruction and moves return blocks to the pool") {
  KvPool pool(kShape, 6, 4);
  {
    KvSequence seq(pool, 24);
    seq.reserve(10);
    for (size_t pos = 0; pos < 10; ++pos) {
      for (size_t l = 0; l < kShape.n_layers; ++l) write_token(seq, kShape, l, pos);
    }
    seq.commit(10);
    CHECK(pool.free_blocks() == 3);
    seq.truncate(5);
    CHECK(seq.size() == 5);
    CHECK(pool.free_blocks() == 4);
    check_tokens(seq, kShape, 5);  // the kept tokens are intact

    KvSequence moved(std::move(seq));
    CHECK(moved.size() == 5);
    CHECK(seq.size() == 0);
    CHECK(seq.blocks().empty());
    moved.clear();
    CHECK(pool.free_blocks() == 6);
    moved.reserve(20);
    CHECK(pool.free_blocks() == 1);
  }
  CHECK(pool.free_blocks() == 6);
}

TEST_CASE("KV pool rejects unsupported entry types and empty shapes") {
  CHECK(contains(sllm_test::error_message([] { KvPool(kShape, 4, 16, TensorType::Q8_0); }),
                 "F32, F16 or I8"));
  CHECK(!sllm_test::error_message([] { KvPool(KvShape{0, 1, 1, 1}, 4); }).empty());
  CHECK(!sllm_test::error_message([] { KvPool(kShape, 0); }).empty());
  KvPool pool(kShape, 2, 4);
  KvSequence seq(pool, 8);
  const float row[16] = {};
  CHECK(contains(sllm_test::error_message([&] { seq.write(0, 0, row, row); }), "not reserved"));
  CHECK(contains(sllm_test::error_message([&] { seq.commit(1); }), "not reserved"));
}

TEST_CASE("KV prefix cache: freed full blocks stay findable; the least recently used go first") {
  KvPool pool(kShape, 3, 2);
  const int32_t ids[6] = {1, 2, 3, 4, 5, 6};
  // Three one-block sequences of different tokens, freed in the order 1, 0, 2.
  std::vector<KvSequence> seqs;
  for (size_t i = 0; i < 3; ++i) {
    seqs.emplace_back(pool, 8);
    seqs[i].reserve(2);
    seqs[i].commit(2, ids + 2 * i);
  }
  CHECK(pool.free_blocks() == 0);
  for (size_t i : {1, 0, 2}) seqs[i].clear();
  CHECK(pool.free_blocks() == 3);
  CHECK(pool.cached_blocks() == 3);
  // Taking a block evicts sequence 1's, the least recently freed.
  KvSequence taker(pool, 8);
  taker.reserve(1);
  CHECK(pool.cached_blocks() == 2);
  for (size_t i : {0, 1, 2}) {
    KvSequence probe(pool, 8);
    CHECK(probe.reuse_prefix(ids + 2 * i, 2) == (i == 1 ? 0 : 2));
  }
  // A block found again is held, so it is not evicted while in use.
  KvSequence holder(pool, 8);
  CHECK(holder.reuse_prefix(ids + 4, 2) == 2);
  CHECK(pool.ref_count(holder.blocks()[0]) == 1);
  CHECK(pool.free_blocks() == 1);
  taker.reserve(3);  // the other cached block
  const std::string msg = sllm_test::error_message([&] { taker.reserve(5); });
  CHECK(contains(msg, "1 more blocks of 2 tokens needed, 0 of 3 free"));
  CHECK(holder.size() == 2);
}

TEST_CASE("KV fork shares blocks; writing copies the shared one; the parent reads the same") {
  KvPool pool(kShape, 6, 4);
  KvSequence parent(pool, 20);
  parent.reserve(6);
  for (size_t pos = 0; pos < 6; ++pos) {
    for (size_t l = 0; l < kShape.n_layers; ++l) write_token(parent, kShape, l, pos);
  }
  parent.commit(6);
  KvSequence child = parent.fork();
  CHECK(child.blocks() == parent.blocks());
  CHECK(pool.ref_count(parent.blocks()[1]) == 2);
  CHECK(pool.free_blocks() == 4);
  child.reserve(1);  // token 6 goes into the shared second block: copied first
  CHECK(child.blocks()[0] == parent.blocks()[0]);
  CHECK(child.blocks()[1] != parent.blocks()[1]);
  CHECK(pool.ref_count(parent.blocks()[1]) == 1);
  std::vector<float> k(kShape.n_kv_heads * kShape.key_dim, 99.f);
  std::vector<float> v(kShape.n_kv_heads * kShape.value_dim, 99.f);
  for (size_t l = 0; l < kShape.n_layers; ++l) child.write(l, 6, k.data(), v.data());
  child.commit(1);
  check_tokens(child, kShape, 6);   // the copy holds the parent's tokens
  check_tokens(parent, kShape, 6);  // and the parent is untouched
  // A copy that does not fit leaves the sequence as it was.
  KvPool tight(kShape, 2, 4);
  KvSequence a(tight, 20);
  a.reserve(6);
  a.commit(6);
  KvSequence b = a.fork();
  CHECK(contains(sllm_test::error_message([&] { b.reserve(1); }), "1 more blocks"));
  CHECK(b.blocks() == a.blocks());
  CHECK(b.size() == 6);
}
