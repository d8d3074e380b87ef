// Damaged GGUF files, built byte by byte from the format description: each must give an
// sllm::Error that says what is wrong, never a crash, a huge allocation or a read past the end.
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "test_support.h"

using doctest::Contains;

namespace {

// Little-endian GGUF encoding, by hand.
struct Bytes {
  std::string b;
  Bytes& u8(uint8_t v) { return raw(&v, 1); }
  Bytes& u32(uint32_t v) { return raw(&v, 4); }
  Bytes& u64(uint64_t v) { return raw(&v, 8); }
  Bytes& str(const std::string& s) {
    u64(s.size());
    b += s;
    return *this;
  }
  Bytes& raw(const void* p, size_t n) {
    b.append(static_cast<const char*>(p), n);
    return *this;
  }
};

// GGUF value type ids.
enum : uint32_t { U8 = 0, I8 = 1, U32 = 4, I32 = 5, F32 = 6, BOOL = 7, STR = 8, ARR = 9, U64 = 10 };

struct Tensor {
  std::string name;
  std::vector<uint64_t> dims;
  uint32_t type;
  uint64_t offset;
};

// A small valid file: four metadata keys (one a nested array of strings), two tensors: t0 F32
// [4, 2] at data offset 0 (32 bytes) and t1 Q8_0 [32] at 32 (34 bytes), ending at t1's end.
struct Spec {
  std::string magic = "GGUF";
  uint32_t version = 3;
  bool override_counts = false;
  uint64_t n_tensors = 0, n_kv = 0;
  std::vector<std::string> kvs;  // encoded key, type, value
  std::vector<Tensor> tensors = {{"t0", {4, 2}, 0, 0}, {"t1", {32}, 8, 32}};
  uint64_t alignment = 32;
  uint64_t data_bytes = 66;

  Spec() {
    kvs.push_back(Bytes().str("general.architecture").u32(STR).str("llama").b);
    kvs.push_back(Bytes().str("a.u32").u32(U32).u32(7).b);
    kvs.push_back(Bytes().str("a.ints").u32(ARR).u32(I32).u64(3).u32(1).u32(2).u32(3).b);
    kvs.push_back(Bytes()
                      .str("a.nested")
                      .u32(ARR)
                      .u32(ARR)
                      .u64(2)
                      .u32(STR)
                      .u64(2)
                      .str("x")
                      .str("yz")
                      .u32(STR)
                      .u64(0)
                      .b);
  }

  // Offsets of each section's end, for truncation at the boundaries.
  std::vector<size_t> boundaries;

  std::string build() {
    boundaries.clear();
    Bytes f;
    f.b += magic;
    boundaries.push_back(f.b.size());
    f.u32(version);
    boundaries.push_back(f.b.size());
    f.u64(override_counts ? n_tensors : tensors.size());
    boundaries.push_back(f.b.size());
    f.u64(override_counts ? n_kv : kvs.size());
    boundaries.push_back(f.b.size());
    for (const std::string& kv : kvs) {
      f.b += kv;
      boundaries.push_back(f.b.size());
    }
    for (const Tensor& t : tensors) {
      f.str(t.name).u32(uint32_t(t.dims.size()));
      for (uint64_t d : t.dims) f.u64(d);
      f.u32(t.type).u64(t.offset);
      boundaries.push_back(f.b.size());
    }
    while (f.b.size() % alignment != 0) f.u8(0);
    boundaries.push_back(f.b.size());
    for (uint64_t i = 0; i < data_bytes; ++i) f.u8(uint8_t(i));
    return f.b;
  }
};

sllm::Gguf parse(const std::string& bytes) {
  return sllm::Gguf::parse(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(),
                           "hostile.gguf");
}

// What parsing the damaged file says, or "" when it parses.
std::string error_of(const std::string& bytes) {
  try {
    parse(bytes);
  } catch (const sllm::Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("the undamaged file parses") {
  Spec spec;
  const std::string bytes = spec.build();
  const sllm::Gguf g = parse(bytes);
  CHECK(g.metadata().size() == 4);
  CHECK(g.get<uint32_t>("a.u32") == 7);
  CHECK(g.get_array<int32_t>("a.ints") == std::vector<int32_t>{1, 2, 3});
  CHECK(g.find("a.nested")->as_array().at(0).as_array().at(1).as_string() == "yz");
  REQUIRE(g.tensors().size() == 2);
  CHECK(g.tensor("t1").n_bytes == 34);
  CHECK(g.tensor("t1").data == reinterpret_cast<const uint8_t*>(bytes.data()) + bytes.size() - 34);
  CHECK(g.data_offset() + 66 == bytes.size());
}

TEST_CASE("truncated at every section boundary") {
  Spec spec;
  const std::string bytes = spec.build();
  const std::vector<std::string> expected = {
      "offset 4: unexpected end of file reading the GGUF version",
      "offset 8: unexpected end of file reading the tensor count",
      "offset 16: unexpected end of file reading the metadata count",
      "tensor count 2 is impossible: only 0 bytes follow the header",
      "tensor count 2 is impossible: only 45 bytes follow the header",  // after 1st entry
      "reading a metadata key",                                         // after the 2nd
      "reading a metadata key",                                         // after the 3rd
      "reading a tensor name",
      "reading a tensor name",  // after t0's info
      "tensor 't0' data (32 bytes at data offset 0) runs past the end of the file",  // infos end
      "tensor 't0' data (32 bytes at data offset 0) runs past the end of the file",  // padding
  };
  REQUIRE(spec.boundaries.size() == expected.size());
  CHECK_THROWS_WITH_AS(parse(""),
                       "hostile.gguf: offset 0: unexpected end of file reading the GGUF magic "
                       "(needs 4 bytes, 0 left)",
                       sllm::Error);
  for (size_t i = 0; i < expected.size(); ++i) {
    CAPTURE(spec.boundaries[i]);
    CHECK_THROWS_WITH_AS(parse(bytes.substr(0, spec.boundaries[i])), Contains(expected[i].c_str()),
                         sllm::Error);
  }
  CHECK_THROWS_WITH_AS(parse(bytes.substr(0, bytes.size() - 34)),
                       Contains("tensor 't1' data (34 bytes at data offset 32) runs past the end "
                                "of the file (the data section holds 32 bytes)"),
                       sllm::Error);
}

TEST_CASE("truncated at every byte") {
  Spec spec;
  const std::string bytes = spec.build();
  for (size_t n = 0; n < bytes.size(); ++n) {
    CAPTURE(n);
    const std::string message = error_of(bytes.substr(0, n));
    // Every cut is an error, of one of the kinds a short file gives.
    CHECK((message.find("unexpected end of file") != std::string::npos ||
           message.find("runs past the end of the file") != std::string::npos ||
           message.find("is impossible") != std::string::npos ||
           message.find("cannot fit") != std::string::npos));
    CHECK(message.rfind("hostile.gguf: offset ", 0) == 0);
  }
}

TEST_CASE("damaged headers") {
  Spec spec;
  spec.magic = "GGUX";
  CHECK_THROWS_WITH_AS(parse(spec.build()),
                       "hostile.gguf: offset 0: not a GGUF file: it starts with \"GGUX\", expected "
                       "\"GGUF\"",
                       sllm::Error);
  spec = Spec();
  spec.magic = std::string("\x00\x01\xff\n", 4);
  CHECK_THROWS_WITH_AS(parse(spec.build()), Contains("starts with \"\\x00\\x01\xff\\n\""),
                       sllm::Error);
  for (uint32_t version : {0u, 99u, 0xffffffffu}) {
    spec = Spec();
    spec.version = version;
    CHECK_THROWS_WITH_AS(parse(spec.build()),
                         Contains(("offset 4: unsupported GGUF version " + std::to_string(version) +
                                   " (sllm reads versions 2 and 3)")
                                      .c_str()),
                         sllm::Error);
  }
  spec = Spec();
  spec.version = 1;
  CHECK_THROWS_WITH_AS(parse(spec.build()), Contains("GGUF version 1 is not supported"),
                       sllm::Error);
  spec = Spec();
  spec.version = 0x03000000;
  CHECK_THROWS_WITH_AS(parse(spec.build()), Contains("big-endian GGUF files are not supported"),
                       sllm::Error);
  spec = Spec();
  spec.version = 2;
  CHECK_NOTHROW(parse(spec.build()));

  spec = Spec();
  spec.override_counts = true;
  spec.n_tensors = uint64_t(1) << 63;
  spec.n_kv = 4;
  CHECK_THROWS_WITH_AS(parse(spec.build()),
                       Contains("offset 8: tensor count 9223372036854775808 is impossible"),
                       sllm::Error);
  spec.n_tensors = 2;
  spec.n_kv = uint64_t(1) << 62;
  CHECK_THROWS_WITH_AS(parse(spec.build()),
                       Contains("offset 16: metadata count 4611686018427387904 is impossible"),
                       sllm::Error);
  spec.n_kv = 5;  // one more than there are: the tensor infos are read as a key
  CHECK_THROWS(parse(spec.build()));
}

TEST_CASE("damaged metadata") {
  struct Case {
    const char* what;
    std::string kv;
    const char* expected;
  };
  const std::vector<Case> cases = {
      {"key length past the end", Bytes().u64(uint64_t(1) << 40).b,
       "a metadata key: a string of 1099511627776 bytes runs past the end of the file"},
      {"string value past the end", Bytes().str("s").u32(STR).u64(uint64_t(-1)).b,
       "metadata key 's': a string of 18446744073709551615 bytes runs past the end"},
      {"array of 2^40 bytes", Bytes().str("a").u32(ARR).u32(U8).u64(uint64_t(1) << 40).b,
       "metadata key 'a': an array of 1099511627776 UINT8 elements cannot fit in the"},
      {"array of 2^61 strings", Bytes().str("a").u32(ARR).u32(STR).u64(uint64_t(1) << 61).b,
       "an array of 2305843009213693952 STRING elements cannot fit"},
      {"array of 2^60 arrays", Bytes().str("a").u32(ARR).u32(ARR).u64(uint64_t(1) << 60).b,
       "an array of 1152921504606846976 ARRAY elements cannot fit"},
      {"unknown value type", Bytes().str("k").u32(13).u32(0).b,
       "metadata key 'k': unknown value type 13"},
      {"unknown array element type", Bytes().str("k").u32(ARR).u32(99).u64(1).b,
       "metadata key 'k': unknown array element type 99"},
      {"BOOL neither 0 nor 1", Bytes().str("b").u32(BOOL).u8(2).b,
       "metadata key 'b': a BOOL must be 0 or 1, not 2"},
      {"duplicate key", Bytes().str("a.u32").u32(U32).u32(8).b, "duplicate metadata key 'a.u32'"},
      {"alignment 3", Bytes().str("general.alignment").u32(U32).u32(3).b,
       "general.alignment must be a nonzero power of two, not 3"},
      {"alignment 0", Bytes().str("general.alignment").u32(U32).u32(0).b,
       "general.alignment must be a nonzero power of two, not 0"},
      {"alignment of the wrong type", Bytes().str("general.alignment").u32(U64).u64(32).b,
       "general.alignment must be a UINT32, not UINT64"},
      {"alignment as a string", Bytes().str("general.alignment").u32(STR).str("32").b,
       "general.alignment must be a UINT32, not STRING"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.what);
    Spec spec;
    spec.kvs.insert(spec.kvs.begin() + 2, c.kv);
    CHECK_THROWS_WITH_AS(parse(spec.build()), Contains(c.expected), sllm::Error);
  }

  // Arrays nested 8 deep are read; 9 deep are refused before the stack is at risk.
  for (int depth : {8, 9, 100000}) {
    CAPTURE(depth);
    Bytes kv;
    kv.str("deep").u32(ARR);
    for (int i = 1; i < depth; ++i) kv.u32(ARR).u64(1);
    kv.u32(U8).u64(1).u8(42);
    Spec spec;
    spec.kvs.push_back(kv.b);
    if (depth <= 8) {
      CHECK_NOTHROW(parse(spec.build()));
    } else {
      CHECK_THROWS_WITH_AS(parse(spec.build()),
                           Contains("metadata key 'deep': arrays nested more than 8 deep"),
                           sllm::Error);
    }
  }

  // The offset in the message is where the damaged entry starts.
  Spec spec;
  const size_t entry = 24 + spec.kvs[0].size();
  spec.kvs.insert(spec.kvs.begin() + 1, Bytes().str("general.architecture").u32(U8).u8(1).b);
  CHECK_THROWS_WITH_AS(parse(spec.build()),
                       ("hostile.gguf: offset " + std::to_string(entry) +
                        ": duplicate metadata key 'general.architecture'")
                           .c_str(),
                       sllm::Error);
}

TEST_CASE("damaged tensor infos") {
  struct Case {
    const char* what;
    std::function<void(Spec&)> damage;
    const char* expected;
  };
  const uint64_t big = uint64_t(1) << 32;
  const std::vector<Case> cases = {
      {"duplicate tensor name", [](Spec& s) { s.tensors[1].name = "t0"; },
       "duplicate tensor name 't0'"},
      {"0 dimensions", [](Spec& s) { s.tensors[0].dims = {}; },
       "tensor 't0' has 0 dimensions (sllm reads 1 to 4)"},
      {"5 dimensions",
       [](Spec& s) {
         s.tensors[0].dims = {1, 1, 2, 1, 4};
       },
       "tensor 't0' has 5 dimensions (sllm reads 1 to 4)"},
      {"zero dimension",
       [](Spec& s) {
         s.tensors[0].dims = {4, 0};
       },
       "tensor 't0' has a zero dimension: [4, 0]"},
      {"product of dims overflows",
       [&](Spec& s) {
         s.tensors[0].dims = {big, big};
       },
       "tensor 't0' has more elements than 64 bits can count: [4294967296, 4294967296]"},
      {"product wraps to zero",
       [&](Spec& s) {
         s.tensors[0].dims = {big * 2, big / 2, 1};
       },
       "has more elements than 64 bits can count"},
      {"product wraps to a small number",
       [&](Spec& s) {
         s.tensors[0].dims = {big + 1, big - 1, 2};
       },
       "has more elements than 64 bits can count"},
      {"unknown type id", [](Spec& s) { s.tensors[0].type = 99; },
       "tensor 't0' has unknown type id 99"},
      {"removed type id Q4_2", [](Spec& s) { s.tensors[0].type = 4; },
       "tensor 't0' has unknown type id 4"},
      {"not whole blocks", [](Spec& s) { s.tensors[1].dims = {33}; },
       "tensor 't1' [33] has 33 elements, not a whole number of Q8_0 blocks of 32"},
      {"larger than the file",
       [&](Spec& s) {
         s.tensors[0].dims = {big, big / 8};
       },
       "tensor 't0' [4294967296, 536870912] F32 needs more bytes than the"},
      {"offset past the end", [](Spec& s) { s.tensors[1].offset = 4096; },
       "tensor 't1' data (34 bytes at data offset 4096) runs past the end of the file"},
      {"offset near 2^64", [](Spec& s) { s.tensors[1].offset = uint64_t(-32); },
       "runs past the end of the file"},
      {"data one byte short", [](Spec& s) { s.data_bytes = 65; },
       "tensor 't1' data (34 bytes at data offset 32) runs past the end of the file (the data "
       "section holds 65 bytes)"},
      {"misaligned offset", [](Spec& s) { s.tensors[1].offset = 16; },
       "tensor 't1' data offset 16 is not a multiple of the alignment 32"},
      {"overlapping tensors", [](Spec& s) { s.tensors[1].offset = 0; },
       "tensors 't0' (data offset 0, 32 bytes) and 't1' (data offset 0) overlap"},
      {"overlap listed in reverse order",
       [](Spec& s) {
         s.tensors[0].offset = 32;
         s.tensors[1].offset = 0;
         s.tensors[1].dims = {64};  // 68 bytes: runs into t0
         s.data_bytes = 96;
       },
       "tensors 't1' (data offset 0, 68 bytes) and 't0' (data offset 32) overlap"},
      {"misaligned with a larger alignment",
       [](Spec& s) {
         s.kvs.push_back(Bytes().str("general.alignment").u32(U32).u32(64).b);
         s.alignment = 64;
       },
       "tensor 't1' data offset 32 is not a multiple of the alignment 64"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.what);
    Spec spec;
    c.damage(spec);
    CHECK_THROWS_WITH_AS(parse(spec.build()), Contains(c.expected), sllm::Error);
  }
}

TEST_CASE("a tensor name whose length runs past the end") {
  // A tensor name whose length field claims more bytes than the file holds.
  Spec spec;
  spec.tensors.resize(1);
  spec.data_bytes = 0;
  std::string bytes = spec.build();
  const size_t name_len_at = spec.boundaries[spec.boundaries.size() - 3];
  const uint64_t huge = uint64_t(1) << 50;
  std::memcpy(&bytes[name_len_at], &huge, 8);
  CHECK_THROWS_WITH_AS(parse(bytes),
                       Contains("a tensor name: a string of 1125899906842624 bytes runs past the "
                                "end of the file"),
                       sllm::Error);
}
