// Tokenizer tests: llama.cpp's tokenizer test vectors (made with the Hugging Face tokenizers of
// each model), llama2.c's encoding and decoding of stories260K, hand-built vocabularies whose
// results follow from the algorithm's definition, and the Unicode tables against the Unicode
// Character Database.
#include <chrono>
#include <cmath>
#include <fstream>
#include <functional>
#include <sstream>

#include "test_support.h"

namespace {

using sllm::Tokenizer;
using sllm::TokenType;
using sllm::Vocabulary;

void check_gguf_vocab(const std::string& name, bool lossless = true) {
  const std::string base = "vocab/ggml-vocab-" + name + ".gguf";
  const std::string gguf_path = sllm_test::fixture(base);
  if (gguf_path.empty()) return;
  const Tokenizer tok = Tokenizer::from_gguf(sllm::Gguf::open(gguf_path));
  sllm_test::check_vocab_vectors(
      name, tok, sllm_test::read_vocab_vectors(gguf_path + ".inp", gguf_path + ".out"), lossless);
}

// A small SentencePiece vocabulary: <unk> <s> </s>, the 256 byte tokens, then pieces.
Vocabulary spm_vocabulary(const std::vector<std::pair<std::string, float>>& pieces) {
  Vocabulary v;
  v.model = "llama";
  v.tokens = {"<unk>", "<s>", "</s>"};
  v.scores = {0, 0, 0};
  v.types = {TokenType::Unknown, TokenType::Control, TokenType::Control};
  for (int b = 0; b < 256; ++b) {
    char piece[8];
    std::snprintf(piece, sizeof piece, "<0x%02X>", b);
    v.tokens.push_back(piece);
    v.scores.push_back(0);
    v.types.push_back(TokenType::Byte);
  }
  for (const auto& [piece, score] : pieces) {
    v.tokens.push_back(piece);
    v.scores.push_back(score);
    v.types.push_back(TokenType::Normal);
  }
  v.unk = 0;
  v.bos = 1;
  v.eos = 2;
  v.add_bos = true;
  v.add_space_prefix = true;
  return v;
}

constexpr int32_t kFirstPiece = 3 + 256;  // id of the first piece given to spm_vocabulary
int32_t byte_id(uint8_t b) {
  return 3 + b;
}

}  // namespace

TEST_CASE("unicode tables: spot checks of general categories and White_Space") {
  using namespace sllm::detail;
  CHECK(unicode_classes('A') == kUnicodeLetter);
  CHECK(unicode_classes(0x00E9) == kUnicodeLetter);  // é
  CHECK(unicode_classes(0x4E2D) == kUnicodeLetter);  // 中 (in a First/Last block)
  CHECK(unicode_classes('7') == kUnicodeNumber);
  CHECK(unicode_classes(0x00BD) == kUnicodeNumber);  // ½ (No)
  CHECK(unicode_classes(0x0301) == kUnicodeMark);    // combining acute
  CHECK(unicode_classes('!') == kUnicodePunctuation);
  CHECK(unicode_classes('$') == kUnicodeSymbol);
  CHECK(unicode_classes(0x1F999) == kUnicodeSymbol);  // 🦙
  CHECK(unicode_classes(' ') == (kUnicodeSeparator | kUnicodeWhitespace));
  CHECK(unicode_classes(0x3000) == (kUnicodeSeparator | kUnicodeWhitespace));
  CHECK(unicode_classes('\n') == (kUnicodeOther | kUnicodeWhitespace));
  CHECK(unicode_classes(0x200B) == kUnicodeOther);  // zero width space: Cf, not White_Space
  CHECK(unicode_classes(0xE000) == kUnicodeOther);  // private use
  CHECK(unicode_classes(0x0378) == 0);              // unassigned
  CHECK(unicode_classes(0x10FFFF) == 0);
  CHECK(unicode_classes(0x110000) == 0);
}

TEST_CASE("unicode tables agree with UnicodeData.txt for every code point") {
  std::ifstream in("/usr/share/unicode/UnicodeData.txt");
  if (!in) {
    MESSAGE("SKIPPED: /usr/share/unicode/UnicodeData.txt is absent (package unicode-data)");
    return;
  }
  using namespace sllm::detail;
  std::vector<char> major(0x110000, 0);  // first letter of the general category, 0: unassigned
  std::string line;
  uint32_t range_first = 0;
  while (std::getline(in, line)) {
    std::vector<std::string> f;
    std::istringstream ls(line);
    for (std::string field; std::getline(ls, field, ';');) f.push_back(field);
    const uint32_t cp = uint32_t(std::stoul(f[0], nullptr, 16));
    if (f[1].find(", First>") != std::string::npos) {
      range_first = cp;
      continue;
    }
    const uint32_t first = f[1].find(", Last>") != std::string::npos ? range_first : cp;
    for (uint32_t c = first; c <= cp; ++c) major[c] = f[2] == "Cn" ? 0 : f[2][0];
  }
  size_t mismatches = 0;
  for (uint32_t c = 0; c < 0x110000; ++c) {
    const uint8_t cls = unicode_classes(c) & ~kUnicodeWhitespace;
    const uint8_t expected = major[c] == 'L'   ? kUnicodeLetter
                             : major[c] == 'N' ? kUnicodeNumber
                             : major[c] == 'M' ? kUnicodeMark
                             : major[c] == 'P' ? kUnicodePunctuation
                             : major[c] == 'S' ? kUnicodeSymbol
                             : major[c] == 'Z' ? kUnicodeSeparator
                             : major[c] == 'C' ? kUnicodeOther
                                               : 0;
    if (cls != expected && ++mismatches <= 5) MESSAGE("U+" << std::hex << c << " differs");
  }
  CHECK(mismatches == 0);
}

TEST_CASE("lower case without accents agrees with UnicodeData.txt for every code point") {
  std::ifstream in("/usr/share/unicode/UnicodeData.txt");
  if (!in) {
    MESSAGE("SKIPPED: /usr/share/unicode/UnicodeData.txt is absent (package unicode-data)");
    return;
  }
  std::vector<std::vector<uint32_t>> decomposition(0x110000);
  std::vector<uint32_t> lower(0x110000);
  std::vector<bool> mn(0x110000);
  for (uint32_t c = 0; c < 0x110000; ++c) lower[c] = c;
  std::string line;
  while (std::getline(in, line)) {
    std::vector<std::string> f;
    std::istringstream ls(line);
    for (std::string field; std::getline(ls, field, ';');) f.push_back(field);
    f.resize(15);
    const uint32_t cp = uint32_t(std::stoul(f[0], nullptr, 16));
    mn[cp] = f[2] == "Mn";  // no First/Last block is Mn
    if (!f[5].empty() && f[5][0] != '<') {
      std::istringstream parts(f[5]);
      for (std::string part; parts >> part;) {
        decomposition[cp].push_back(uint32_t(std::stoul(part, nullptr, 16)));
      }
    }
    if (!f[13].empty()) lower[cp] = uint32_t(std::stoul(f[13], nullptr, 16));
  }
  // Hangul syllables by the formula of Unicode 3.12; the rest by recursive decomposition.
  std::function<void(uint32_t, std::vector<uint32_t>&)> nfd = [&](uint32_t c, auto& out) {
    if (c >= 0xAC00 && c <= 0xD7A3) {
      const uint32_t s = c - 0xAC00, l = 0x1100 + s / 588, v = 0x1161 + (s % 588) / 28;
      const uint32_t t = 0x11A7 + s % 28;
      out.push_back(l);
      out.push_back(v);
      if (t != 0x11A7) out.push_back(t);
    } else if (decomposition[c].empty()) {
      out.push_back(c);
    } else {
      for (uint32_t d : decomposition[c]) nfd(d, out);
    }
  };
  size_t mismatches = 0, changed = 0;
  std::vector<uint32_t> decomposed, expected, got;
  for (uint32_t c = 0; c < 0x110000; ++c) {
    decomposed.clear();
    expected.clear();
    got.clear();
    nfd(c, decomposed);
    for (uint32_t d : decomposed) {
      if (!mn[d]) expected.push_back(lower[d]);
    }
    sllm::detail::append_lower_without_accents(c, got);
    changed += expected != std::vector<uint32_t>{c};
    if (got != expected && ++mismatches <= 5) MESSAGE("U+" << std::hex << c << " differs");
  }
  CHECK(mismatches == 0);
  CHECK(changed > 5000);  // 1985 marks, 1433 upper-case letters, the precomposed ones, ...
}

TEST_CASE("pre-tokenizers split as their regular expressions do") {
  using P = sllm::detail::SplitPattern;
  const auto split = [](std::string_view text, std::vector<P> patterns) {
    std::vector<std::string> words;
    for (std::string_view w : sllm::detail::pre_tokenize(text, patterns)) words.emplace_back(w);
    return words;
  };
  using Words = std::vector<std::string>;
  // A run of whitespace before a word leaves its last space to the word; a contraction is a
  // word of its own.
  CHECK(split("Hello world's  end\t\n!!", {P::kGpt2}) ==
        Words{"Hello", " world", "'s", " ", " end", "\t", "\n", "!!"});
  CHECK(split("a  ", {P::kGpt2}) == Words{"a", "  "});
  CHECK(split("a\xFF"
              "b",
              {P::kGpt2}) == Words{"a", "\xFF", "b"});  // invalid UTF-8 byte
  CHECK(split("", {P::kGpt2}).empty());
  // Llama 3: contractions in any case, numbers by three, punctuation with its line breaks.
  CHECK(split("I'M 12345 hello!!\n\n  x\n", {P::kLlama3}) ==
        Words{"I", "'M", " ", "123", "45", " hello", "!!\n\n", " ", " x", "\n"});
  CHECK(split("12345", {P::kQwen2}) == Words{"1", "2", "3", "4", "5"});
  const std::vector<P> deepseek_llm = {
      P::kNewline, P::kSpaceCasedLetters, P::kSpaceAsciiPunct, P::kTrailingSpace, P::kCjk,
      P::kNumbers};
  CHECK(split("a\xF0\x9F\x98\x80  ", deepseek_llm) == Words{"a", "\xF0\x9F\x98\x80", "  "});
  CHECK(split("Hi\n \xE4\xB8\xAD\xE6\x96\x87"
              "123",
              deepseek_llm) == Words{"Hi", "\n", " ", "\xE4\xB8\xAD\xE6\x96\x87", "123"});  // 中文
  CHECK(split("foo.bar(1)", {P::kNewline, P::kSpaceLetters, P::kSpacePunct, P::kCjk, P::kNumber}) ==
        Words{"foo", ".", "bar", "(", "1", ")"});
  CHECK(split("x+=1234", {P::kFalconPunct, P::kGpt2, P::kAsciiDigits3}) ==
        Words{"x", "+=", "123", "4"});
  CHECK(split("a12 b", {P::kNumber, P::kGpt2}) == Words{"a", "1", "2", " b"});
}

TEST_CASE("vocab test vectors: SentencePiece (llama-spm, phi-3)") {
  check_gguf_vocab("llama-spm");
  check_gguf_vocab("phi-3");
}

TEST_CASE("vocab test vectors: WordPiece (bert-bge)") {
  check_gguf_vocab("bert-bge", false);  // lower-cased and without accents: not lossless
}

TEST_CASE("WordPiece: lower case without accents, Hangul jamo kept, CJK, punctuation, [UNK]") {
  const std::string path = sllm_test::fixture("vocab/ggml-vocab-bert-bge.gguf");
  if (path.empty()) return;
  const Tokenizer tok = Tokenizer::from_gguf(sllm::Gguf::open(path));
  const auto id = [&](const std::string& piece) {
    const int32_t i = tok.find_piece(piece);
    REQUIRE_MESSAGE(i >= 0, piece);
    return i;
  };
  const int32_t cls = id("[CLS]"), sep = id("[SEP]"), unk = id("[UNK]");
  CHECK(tok.bos() == cls);
  CHECK(tok.eos() == sep);
  CHECK(tok.unk() == unk);
  using Ids = std::vector<int32_t>;
  CHECK(tok.encode("", true, false) == Ids{cls, sep});
  CHECK(tok.encode("Hello", true, false) == Ids{cls, id("\xE2\x96\x81hello"), sep});
  // "Café" and "CAFE" with a combining accent: NFD, marks (Mn) dropped, lower case.
  const Ids cafe = tok.encode("cafe", false, false);
  CHECK(tok.encode("Caf\xC3\xA9", false, false) == cafe);
  CHECK(tok.encode("CAFE\xCC\x81", false, false) == cafe);
  // Punctuation and CJK ideographs are words of their own; control characters vanish.
  CHECK(tok.encode("a,b", false, false) == Ids{id("\xE2\x96\x81"
                                                  "a"),
                                               id("\xE2\x96\x81,"),
                                               id("\xE2\x96\x81"
                                                  "b")});
  CHECK(tok.encode("a\xE2\x80\x8B"
                   "b",
                   false, false) == tok.encode("ab", false, false));
  CHECK(tok.encode("\xE4\xB8\xAD\xE5\x9B\xBD", false, false) ==  // 中国
        Ids{id("\xE2\x96\x81\xE4\xB8\xAD"), id("\xE2\x96\x81\xE5\x9B\xBD")});
  // Continuation pieces ("##" in Hugging Face's vocab.txt) are stored bare.
  const Ids unbelievably = tok.encode("unbelievably", false, false);
  REQUIRE(unbelievably.size() >= 2);
  CHECK(tok.piece(unbelievably[0]).rfind("\xE2\x96\x81", 0) == 0);
  CHECK(tok.piece(unbelievably[1]).rfind("\xE2\x96\x81", 0) != 0);
  CHECK(tok.decode(unbelievably) == "unbelievably");
  // A word with no split, or of more than 100 characters, is [UNK] as a whole.
  CHECK(tok.encode("\xF0\x9F\xA6\x99", false, false) == Ids{unk});  // 🦙
  CHECK(tok.encode("ab\xF0\x9F\xA6\x99", false, false) == Ids{unk});
  CHECK(tok.encode(std::string(100, 'a'), false, false).size() > 1);
  CHECK(tok.encode(std::string(101, 'a'), false, false) == Ids{unk});
  // Hangul: 한 (U+D55C) is ᄒ ᅡ ᆫ after NFD; all three jamo stay (llama.cpp keeps only ᄒ).
  const Ids han = tok.encode("\xED\x95\x9C", false, false);
  CHECK(han == tok.encode("\xE1\x84\x92\xE1\x85\xA1\xE1\x86\xAB", false, false));
  CHECK(han != tok.encode("\xE1\x84\x92", false, false));
}

TEST_CASE("vocab test vectors: byte-level BPE from GGUF") {
  for (const char* name :
       {"gpt-2", "deepseek-coder", "deepseek-llm", "falcon", "mpt", "refact", "starcoder"}) {
    check_gguf_vocab(name);
  }
}

TEST_CASE("stories260K: llama2.c's prompt encoding and greedy text") {
  const Tokenizer tok =
      Tokenizer::from_gguf(sllm::Gguf::open(sllm_test::test_data("stories260K.gguf")));
  CHECK(tok.n_vocab() == 512);
  CHECK(tok.bos() == 1);
  CHECK(tok.eos() == 2);
  CHECK(tok.unk() == 0);
  CHECK(tok.pad() == -1);  // stored as 0xFFFFFFFF: none
  CHECK(tok.add_bos());
  CHECK(tok.add_space_prefix());
  CHECK_FALSE(tok.is_byte_level());
  CHECK(tok.is_eog(2));
  CHECK_FALSE(tok.is_eog(1));

  // llama2.c's run.c encodes the prompt so (expected/greedy_prompt_lily_tom_n64.prompt_ids).
  const std::vector<int32_t> prompt_ids = {1,   317, 269, 274, 287, 263,
                                           377, 267, 265, 282, 295, 433};
  CHECK(tok.encode("Lily and Tom went to the park", true, false) == prompt_ids);

  const std::string expected = sllm_test::fixture("models/stories260K/expected/");
  if (expected.empty()) return;
  CHECK(sllm_test::parse_ids(sllm_test::read_file(
            expected + "greedy_prompt_lily_tom_n64.prompt_ids")) == prompt_ids);
  // run.c prints the pieces, dropping the leading space of the first one after BOS, then a
  // newline.
  const std::vector<int32_t> ids =
      sllm_test::parse_ids(sllm_test::read_file(expected + "greedy_bos_n256.ids"));
  REQUIRE(ids.size() == 256);
  CHECK(tok.decode(ids) + "\n" == sllm_test::read_file(expected + "greedy_bos_n256.txt"));
  sllm::Detokenizer detok(tok);
  std::string streamed = detok.push(tok.bos());
  for (int32_t id : ids) streamed += detok.push(id);
  CHECK(streamed + detok.flush() + "\n" == sllm_test::read_file(expected + "greedy_bos_n256.txt"));

  std::vector<int32_t> all = prompt_ids;
  const std::vector<int32_t> generated =
      sllm_test::parse_ids(sllm_test::read_file(expected + "greedy_prompt_lily_tom_n64.ids"));
  all.insert(all.end(), generated.begin(), generated.end());
  CHECK(tok.decode(all) + "\n" ==
        sllm_test::read_file(expected + "greedy_prompt_lily_tom_n64.txt"));
}

TEST_CASE("SentencePiece: merges by score, byte fallback, leading space, specials") {
  // Pieces: ▁ a b ab ba ▁a ▁ab, with "ab" preferred over "ba" and "▁a" over "ab".
  const Tokenizer tok(spm_vocabulary({{"\xE2\x96\x81", -1},
                                      {"a", -2},
                                      {"b", -2},
                                      {"ab", -3},
                                      {"ba", -4},
                                      {"\xE2\x96\x81"
                                       "a",
                                       -2.5f},
                                      {"\xE2\x96\x81"
                                       "ab",
                                       -5}}));
  const int32_t space = kFirstPiece, a = space + 1, b = a + 1, ab = b + 1, ba = ab + 1,
                space_a = ba + 1, space_ab = space_a + 1;
  // "▁bab": pairs ▁b (none), ba (-4), ab (-3): ab first -> ▁ b ab; then ▁b and bab are not
  // pieces.
  CHECK(tok.encode("bab", false, false) == std::vector<int32_t>{space, b, ab});
  // "▁ab": ▁a (-2.5) beats ab (-3); then ▁a+b = ▁ab.
  CHECK(tok.encode("ab", false, false) == std::vector<int32_t>{space_ab});
  // Spaces become ▁; add_special puts BOS first.
  CHECK(tok.encode("a a", true, false) == std::vector<int32_t>{1, space_a, space_a});
  // Characters without a piece fall back to their UTF-8 bytes.
  CHECK(tok.encode("é", false, false) == std::vector<int32_t>{space, byte_id(0xC3), byte_id(0xA9)});
  // Control tokens in the text are matched only when parsing specials; the text after one
  // gets the leading space again.
  CHECK(tok.encode("a</s>a", false, true) == std::vector<int32_t>{space_a, 2, space_a});
  const std::vector<int32_t> literal = tok.encode("</s>", false, false);
  CHECK(literal.size() == 5);  // ▁ and the bytes of '<', '/', 's', '>'
  CHECK(tok.decode(literal) == "</s>");
  CHECK(tok.encode("", false, false).empty());
  CHECK(tok.encode("", true, false) == std::vector<int32_t>{1});

  CHECK(tok.token_text(space_a) == " a");
  CHECK(tok.token_text(byte_id(0x41)) == "A");
  CHECK(tok.token_text(1) == "<s>");
  CHECK(tok.decode({1, space_a, b, 2}) == "ab");
  CHECK(tok.decode({1, space_a, b, 2}, true) == "<s>ab</s>");
  CHECK(tok.decode({space, space_a}) == " a");  // only the first leading space goes
  CHECK_THROWS_AS(tok.token_text(tok.n_vocab()), sllm::Error);
  CHECK_THROWS_AS(tok.token_text(-1), sllm::Error);
  CHECK_THROWS_AS(tok.decode({a, 100000}), sllm::Error);
}

TEST_CASE("SentencePiece: without byte tokens, unknown characters become <unk>") {
  Vocabulary v;
  v.tokens = {"<unk>", "<s>", "</s>", "\xE2\x96\x81", "a"};
  v.types = {TokenType::Unknown, TokenType::Control, TokenType::Control, TokenType::Normal,
             TokenType::Normal};
  v.unk = 0;
  v.add_space_prefix = true;
  const Tokenizer tok(v);
  CHECK(tok.encode("a\xC3\xA9"
                   "a",
                   false, false) == std::vector<int32_t>{3, 4, 0, 4});
  CHECK(tok.decode({3, 4, 0, 4}) == "aa");  // <unk> is not rendered
}

TEST_CASE("SentencePiece: user-defined tokens are matched whole even without parse_special") {
  Vocabulary v = spm_vocabulary({{"a", -1}, {"<tag>", 0}, {"<tag>x", 0}});
  v.types.back() = TokenType::UserDefined;
  v.types[v.types.size() - 2] = TokenType::UserDefined;
  const Tokenizer tok(std::move(v));
  const int32_t a = kFirstPiece, tag = a + 1, tagx = tag + 1;
  // The longest user-defined token at a position wins.
  CHECK(tok.encode("<tag>x<tag>a", false, false) ==
        std::vector<int32_t>{tagx, tag, byte_id(0xE2), byte_id(0x96), byte_id(0x81), a});
}

TEST_CASE("byte-level BPE: merges by rank, byte alphabet, Llama 3 whole words") {
  Vocabulary v;
  v.model = "gpt2";
  v.pre = "gpt-2";
  // The byte-level alphabet: '!'..'~' stand for themselves, ' ' is 'Ġ' (U+0120), '\n' 'Ċ'.
  v.tokens = {"a",
              "b",
              "c",
              "\xC4\xA0",
              "ab",
              "bc",
              "abc",
              "\xC4\xA0"
              "a",
              "\xC4\x8A",
              "<|end|>"};
  v.merges = {"b c", "a b", "a bc", "\xC4\xA0 a"};
  v.types.assign(v.tokens.size(), TokenType::Normal);
  v.types.back() = TokenType::Control;
  v.eos = 9;
  const Tokenizer tok(v);
  // "abc": "b c" (rank 0) before "a b" (rank 1), then "a bc".
  CHECK(tok.encode("abc", false, false) == std::vector<int32_t>{6});
  CHECK(tok.encode("cab", false, false) == std::vector<int32_t>{2, 4});
  // " ab" is one word (" ?\p{L}+"): "a b" (rank 1) goes before "Ġ a" (rank 3), leaving Ġ ab.
  CHECK(tok.encode(" ab", false, false) == std::vector<int32_t>{3, 4});
  CHECK(tok.encode("a\n", false, false) == std::vector<int32_t>{0, 8});
  CHECK(tok.encode("a<|end|>", false, true) == std::vector<int32_t>{0, 9});
  CHECK(tok.token_text(3) == " ");
  CHECK(tok.token_text(8) == "\n");
  CHECK(tok.token_text(9) == "<|end|>");
  CHECK(tok.is_eog(9));
  CHECK(tok.decode({0, 9}) == "a");
  CHECK(tok.decode({3, 4}) == " ab");  // no leading space is dropped in byte-level BPE
  // A byte without a token is dropped.
  CHECK(tok.encode("xa", false, false) == std::vector<int32_t>{0});

  // With these merges "abc" is "ab" + "c", but Llama 3 takes a word that is itself a token
  // whole.
  v.merges = {"a b", "b c"};
  CHECK(Tokenizer(v).encode("abc", false, false) == std::vector<int32_t>{4, 2});
  v.pre = "llama-bpe";
  CHECK(Tokenizer(v).encode("abc", false, false) == std::vector<int32_t>{6});
}

TEST_CASE("Detokenizer: characters split over byte tokens come out whole") {
  const Tokenizer tok(spm_vocabulary({{"\xE2\x96\x81", -1},
                                      {"\xE2\x96\x81"
                                       "a",
                                       -1}}));
  const int32_t space = kFirstPiece, space_a = space + 1;
  sllm::Detokenizer detok(tok);
  CHECK(detok.push(1) == "");
  CHECK(detok.push(space_a) == "a");  // the leading space after BOS goes
  CHECK(detok.push(byte_id(0xC3)) == "");
  CHECK(detok.push(byte_id(0xA9)) == "\xC3\xA9");  // é
  // 🦙 U+1F999 = F0 9F A6 99, over four tokens.
  CHECK(detok.push(byte_id(0xF0)) == "");
  CHECK(detok.push(byte_id(0x9F)) == "");
  CHECK(detok.push(byte_id(0xA6)) == "");
  CHECK(detok.push(byte_id(0x99)) == "\xF0\x9F\xA6\x99");
  CHECK(detok.push(space) == " ");
  // An ASCII byte completes at once; an incomplete character is given out by flush().
  CHECK(detok.push(byte_id('x')) == "x");
  CHECK(detok.push(byte_id(0xE4)) == "");
  CHECK(detok.push(byte_id(0xB8)) == "");
  CHECK(detok.flush() == "\xE4\xB8");
  CHECK(detok.flush() == "");
  // A byte that cannot start a character is not held back.
  CHECK(detok.push(byte_id(0xA9)) == "\xA9");
  CHECK_THROWS_AS(detok.push(tok.n_vocab()), sllm::Error);

  // Continuing a text keeps the first piece's space.
  sllm::Detokenizer continued(tok, false);
  CHECK(continued.push(space_a) == " a");

  // The same through a real vocabulary: each push gives only whole UTF-8 characters.
  const std::string path = sllm_test::fixture("vocab/ggml-vocab-llama-spm.gguf");
  if (path.empty()) return;
  const Tokenizer llama = Tokenizer::from_gguf(sllm::Gguf::open(path));
  const std::string text = "🦙 Führer 我想 😶‍🌫️";
  const std::vector<int32_t> ids = llama.encode(text, true, false);
  sllm::Detokenizer stream(llama);
  std::string out;
  size_t byte_tokens = 0;
  for (int32_t id : ids) {
    byte_tokens += llama.token_type(id) == TokenType::Byte;
    const std::string piece = stream.push(id);
    // No piece ends inside a character.
    for (size_t i = 0; i < piece.size();) {
      const uint8_t lead = uint8_t(piece[i]);
      const size_t len = lead < 0x80 ? 1 : lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : 2;
      REQUIRE(i + len <= piece.size());
      i += len;
    }
    out += piece;
  }
  CHECK(byte_tokens >= 4);  // 🦙 is not a piece of the Llama 2 vocabulary
  CHECK(out + stream.flush() == text);
}

TEST_CASE("Tokenizer: bad vocabularies are errors") {
  Vocabulary v = spm_vocabulary({{"a", 0}});
  SUBCASE("unknown model") {
    v.model = "t5";
    CHECK_THROWS_AS(Tokenizer{v}, sllm::Error);
  }
  SUBCASE("duplicate token") {
    v.tokens.push_back("a");
    v.scores.push_back(0);
    v.types.push_back(TokenType::Normal);
    CHECK_THROWS_WITH_AS(Tokenizer{v}, doctest::Contains("twice"), sllm::Error);
  }
  SUBCASE("score count") {
    v.scores.pop_back();
    CHECK_THROWS_AS(Tokenizer{v}, sllm::Error);
  }
  SUBCASE("NaN score") {
    v.scores[5] = std::nanf("");
    CHECK_THROWS_WITH_AS(Tokenizer{v}, doctest::Contains("NaN"), sllm::Error);
  }
  SUBCASE("special id out of range") {
    v.eos = int32_t(v.tokens.size());
    CHECK_THROWS_WITH_AS(Tokenizer{v}, doctest::Contains("EOS token id"), sllm::Error);
  }
  SUBCASE("add_bos without BOS") {
    v.bos = -1;
    CHECK_THROWS_AS(Tokenizer{v}, sllm::Error);
  }
  SUBCASE("unknown pre-tokenizer") {
    v.model = "gpt2";
    v.pre = "no-such-pre";
    CHECK_THROWS_WITH_AS(Tokenizer{v}, doctest::Contains("no-such-pre"), sllm::Error);
  }
  SUBCASE("malformed merge") {
    v.model = "gpt2";
    v.merges = {"ab"};
    CHECK_THROWS_AS(Tokenizer{v}, sllm::Error);
  }
}

TEST_CASE("Tokenizer: GGUF files without a usable tokenizer are errors") {
  const std::string path = "tokenizer_t5.gguf";
  sllm::GgufWriter w;
  w.set("tokenizer.ggml.model", sllm::GgufValue::string("t5"));
  w.set("tokenizer.ggml.tokens", sllm::GgufValue::string_array({"a", "b"}));
  w.write(path);
  CHECK_THROWS_WITH_AS(Tokenizer::from_gguf(sllm::Gguf::open(path)),
                       doctest::Contains("tokenizer.ggml.model 't5'"), sllm::Error);
  std::remove(path.c_str());
}

TEST_CASE("Tokenizer: a WordPiece vocabulary needs [UNK]") {
  Vocabulary v;
  v.model = "bert";
  v.tokens = {"[CLS]", "[SEP]",
              "\xE2\x96\x81"
              "a"};
  CHECK_THROWS_WITH_AS(Tokenizer{v}, doctest::Contains("unknown token"), sllm::Error);
}

TEST_CASE("Tokenizer: random texts, invalid UTF-8 included, decode to themselves") {
  // Pieces that exercise the pre-tokenizers' branches, whole or cut into bytes.
  const std::vector<std::string> parts = {
      "a",    "Zq",   " ",   "  ",          "\n",           "\r\n", "\t", "'s",
      "'LL",  "7",    "123", "\xC3\xA9",    "\xE4\xB8\xAD", "!?",   "$",  "\xF0\x9F\xA6\x99",
      "\xFF", "\xC3", "<s>", "\xE3\x80\x80"};
  uint64_t state = 12345;
  const auto next = [&] {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return uint32_t(state >> 33);
  };
  std::vector<std::string> texts;
  for (int i = 0; i < 300; ++i) {
    std::string t;
    for (uint32_t n = next() % 24; n > 0; --n) t += parts[next() % parts.size()];
    if (next() % 4 == 0 && !t.empty()) t.erase(next() % t.size(), 1);  // cut a character
    texts.push_back(t);
  }
  // Only gpt-2 and llama-spm have a token for each of the 256 bytes. The others lack the bytes
  // that never occur in UTF-8 (C0, C1, F5..FF): encoding drops them, and in DeepSeek's
  // vocabularies their byte-level characters ('À', 'ÿ', ...) are user-defined tokens that stand
  // for those characters. Texts with such bytes come back only through the first two.
  const auto has_non_utf8_byte = [](const std::string& t) {
    for (char c : t) {
      const uint8_t b = uint8_t(c);
      if (b == 0xC0 || b == 0xC1 || b >= 0xF5) return true;
    }
    return false;
  };
  for (const std::string name :
       {"llama-spm", "gpt-2", "deepseek-coder", "deepseek-llm", "falcon", "mpt", "starcoder"}) {
    const std::string path = sllm_test::fixture("vocab/ggml-vocab-" + name + ".gguf");
    if (path.empty()) return;
    const Tokenizer tok = Tokenizer::from_gguf(sllm::Gguf::open(path));
    const bool all_bytes = name == "gpt-2" || name == "llama-spm";
    size_t checked = 0, round_trips = 0;
    for (const std::string& t : texts) {
      if (!all_bytes && has_non_utf8_byte(t)) continue;
      ++checked;
      const std::string back = tok.decode(tok.encode(t, true, false));
      if (back == t) {
        ++round_trips;
      } else {
        MESSAGE(name << ": '" << t << "' decodes to '" << back << "'");
      }
    }
    CHECK(checked >= texts.size() / 2);
    CHECK_MESSAGE(round_trips == checked, name);
    if (name == "mpt")
      CHECK(tok.decode(tok.encode("a\xFF"
                                  "b",
                                  false, false)) == "ab");
  }
}

TEST_CASE("Tokenizer: encoding 100 KB of text") {
  for (const char* name : {"llama-spm", "gpt-2", "deepseek-llm"}) {
    const std::string path = sllm_test::fixture(std::string("vocab/ggml-vocab-") + name + ".gguf");
    if (path.empty()) return;
    const Tokenizer tok = Tokenizer::from_gguf(sllm::Gguf::open(path));
    std::string text;
    const std::string inp = sllm_test::read_file(path + ".inp");
    while (text.size() < 100000) text += inp;
    const auto t0 = std::chrono::steady_clock::now();
    const std::vector<int32_t> ids = tok.encode(text, false, false);
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    MESSAGE(std::string(name) << ": " << text.size() << " bytes -> " << ids.size() << " tokens in "
                              << ms << " ms");
    CHECK(tok.decode(ids) == text);
  }
}
