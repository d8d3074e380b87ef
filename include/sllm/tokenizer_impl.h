#include <algorithm>
#include <cmath>
#include <queue>

namespace sllm {
namespace detail {

uint8_t unicode_classes(uint32_t cp) {
  if (cp >= 0x110000) return 0;
  const uint32_t* begin = kUnicodeRanges;
  const uint32_t* end = kUnicodeRanges + sizeof(kUnicodeRanges) / sizeof(kUnicodeRanges[0]);
  // The first entry starts at U+0000, so the range holding cp is the one before upper_bound.
  const uint32_t* it = std::upper_bound(begin, end, cp << 8 | 0xFF);
  return uint8_t(it[-1] & 0xFF);
}

void append_lower_without_accents(uint32_t cp, std::vector<uint32_t>& out) {
  constexpr uint32_t kHangulFirst = 0xAC00, kHangulLast = 0xD7A3;
  if (cp >= kHangulFirst && cp <= kHangulLast) {
    // Unicode 3.12: a syllable is leading consonant, vowel and (but for index 0) trailing
    // consonant; all three are letters (Lo), so none is removed.
    const uint32_t s = cp - kHangulFirst;
    out.push_back(0x1100 + s / 588);
    out.push_back(0x1161 + s % 588 / 28);
    if (s % 28 != 0) out.push_back(0x11A7 + s % 28);
    return;
  }
  const UnicodeFoldRun* begin = kUnicodeFoldRuns;
  const UnicodeFoldRun* end = begin + sizeof(kUnicodeFoldRuns) / sizeof(kUnicodeFoldRuns[0]);
  const UnicodeFoldRun* it = std::upper_bound(
      begin, end, cp, [](uint32_t c, const UnicodeFoldRun& r) { return c < r.key >> 11; });
  if (it != begin && cp < 0x110000) {
    const UnicodeFoldRun& run = it[-1];
    const uint32_t offset = cp - (run.key >> 11);
    const uint32_t count = (run.key >> 3 & 0xFF) + 1, stride = (run.key >> 2 & 1) + 1;
    if (offset % stride == 0 && offset / stride < count) {
      switch (UnicodeFoldKind(run.key & 3)) {
        case kFoldDelta:
          out.push_back(uint32_t(int64_t(cp) + run.value));
          return;
        case kFoldTarget:
          out.push_back(uint32_t(run.value));
          return;
        case kFoldRemove:
          return;
        case kFoldSequence: {
          const uint32_t* seq = kUnicodeFoldSequences + (run.value >> 8);
          out.insert(out.end(), seq, seq + (run.value & 0xFF));
          return;
        }
      }
    }
  }
  out.push_back(cp);
}

namespace {

// Bytes of the UTF-8 character at s[i], or 1 for a byte that does not start a valid one
// (overlong forms, surrogates, code points past U+10FFFF and truncated sequences included).
// Sets *cp to the code point, or to 0xFFFFFFFF (no Unicode class) for an invalid byte.
size_t utf8_char(std::string_view s, size_t i, uint32_t* cp) {
  const auto byte = [&](size_t k) { return uint8_t(s[k]); };
  const uint8_t b0 = byte(i);
  *cp = 0xFFFFFFFF;
  if (b0 < 0x80) {
    *cp = b0;
    return 1;
  }
  size_t n;
  uint32_t v;
  uint8_t lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    n = 2;
    v = b0 & 0x1F;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    n = 3;
    v = b0 & 0x0F;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    n = 4;
    v = b0 & 0x07;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    return 1;
  }
  if (i + n > s.size()) return 1;
  for (size_t k = 1; k < n; ++k) {
    const uint8_t b = byte(i + k);
    if (b < (k == 1 ? lo : 0x80) || b > (k == 1 ? hi : 0xBF)) return 1;
    v = v << 6 | (b & 0x3F);
  }
  *cp = v;
  return n;
}

void append_utf8(uint32_t cp, std::string& out) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | cp >> 6);
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | cp >> 12);
    out += char(0x80 | (cp >> 6 & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | cp >> 18);
    out += char(0x80 | (cp >> 12 & 0x3F));
    out += char(0x80 | (cp >> 6 & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

// GPT-2's byte-level alphabet: each byte stands for one printable character. Bytes that are
// printable Latin-1 characters ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves; the other
// 68 bytes take U+0100, U+0101, ... in byte order (so ' ' is 'Ġ' U+0120, '\n' is 'Ċ' U+010A).
struct ByteLevelAlphabet {
  std::array<std::string, 256> byte_chars;   // UTF-8 of each byte's character
  std::array<int16_t, 256 + 68> char_bytes;  // code point -> byte, or -1

  ByteLevelAlphabet() {
    char_bytes.fill(-1);
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      const uint32_t cp = printable ? b : next++;
      append_utf8(cp, byte_chars[b]);
      char_bytes[cp] = int16_t(b);
    }
  }
};

const ByteLevelAlphabet& byte_level_alphabet() {
  static const ByteLevelAlphabet alphabet;
  return alphabet;
}

constexpr std::string_view kSpmSpace = "\xE2\x96\x81";  // "▁" U+2581, SentencePiece's space

struct CodePointRange {
  uint32_t first, last;
};

template <size_t N>
bool in_ranges(const CodePointRange (&ranges)[N], uint32_t cp) {
  const CodePointRange* it = std::upper_bound(
      ranges, ranges + N, cp, [](uint32_t c, const CodePointRange& r) { return c < r.first; });
  return it != ranges && cp <= it[-1].last;
}

// [一-龥ࠀ-一가-퟿] of the DeepSeek pre-tokenizers.
constexpr CodePointRange kCjkRanges[] = {{0x0800, 0x9FA5}, {0xAC00, 0xD7FF}};

// The CJK ideographs that BERT's tokenizer makes words of their own (its _is_chinese_char):
// the unified ideographs and their extensions A to F, and the compatibility ideographs.
constexpr CodePointRange kBertCjkRanges[] = {
    {0x3400, 0x4DBF},   {0x4E00, 0x9FFF},   {0xF900, 0xFAFF},   {0x20000, 0x2A6DF},
    {0x2A700, 0x2B73F}, {0x2B740, 0x2B81F}, {0x2B820, 0x2CEAF}, {0x2F800, 0x2FA1F},
};

// The letters of DeepSeek LLM's word pattern: the cased scripts (Latin, Greek, Cyrillic,
// Armenian, Georgian, Cherokee, Glagolitic, Coptic, Deseret, Osage, Old Hungarian, Warang Citi,
// Adlam, letterlike symbols), as the class in its tokenizer config lists them.
constexpr CodePointRange kCasedLetterRanges[] = {
    {0x41, 0x5A},       {0x61, 0x7A},       {0xB5, 0xB5},       {0xC0, 0xD6},
    {0xD8, 0xF6},       {0xF8, 0x1BA},      {0x1BC, 0x1BF},     {0x1C4, 0x293},
    {0x295, 0x2AF},     {0x370, 0x373},     {0x376, 0x377},     {0x37B, 0x37D},
    {0x37F, 0x37F},     {0x386, 0x386},     {0x388, 0x38A},     {0x38C, 0x38C},
    {0x38E, 0x3A1},     {0x3A3, 0x3F5},     {0x3F7, 0x481},     {0x48A, 0x52F},
    {0x531, 0x556},     {0x10A0, 0x10C5},   {0x13A0, 0x13F5},   {0x13F8, 0x13FD},
    {0x1C90, 0x1CBA},   {0x1CBD, 0x1CBF},   {0x1D00, 0x1D2B},   {0x1D6B, 0x1D77},
    {0x1D79, 0x1D9A},   {0x1E00, 0x1F15},   {0x1F18, 0x1F1D},   {0x1F20, 0x1F45},
    {0x1F48, 0x1F4D},   {0x1F50, 0x1F57},   {0x1F59, 0x1F59},   {0x1F5B, 0x1F5B},
    {0x1F5D, 0x1F5D},   {0x1F5F, 0x1F7D},   {0x1F80, 0x1FB4},   {0x1FB6, 0x1FBC},
    {0x1FBE, 0x1FBE},   {0x1FC2, 0x1FC4},   {0x1FC6, 0x1FCC},   {0x1FD0, 0x1FD3},
    {0x1FD6, 0x1FDB},   {0x1FE0, 0x1FEC},   {0x1FF2, 0x1FF4},   {0x1FF6, 0x1FFC},
    {0x2102, 0x2102},   {0x2107, 0x2107},   {0x210A, 0x2113},   {0x2115, 0x2115},
    {0x2119, 0x211D},   {0x2124, 0x2124},   {0x2126, 0x2126},   {0x2128, 0x2128},
    {0x212A, 0x212D},   {0x212F, 0x2134},   {0x2139, 0x2139},   {0x213C, 0x213F},
    {0x2145, 0x2149},   {0x214E, 0x214E},   {0x2183, 0x2184},   {0x2C00, 0x2C7B},
    {0x2C7E, 0x2CE4},   {0x2CEB, 0x2CEE},   {0x2CF2, 0x2CF3},   {0xA640, 0xA66D},
    {0xA680, 0xA69B},   {0xA722, 0xA76F},   {0xA771, 0xA787},   {0xA78B, 0xA78E},
    {0xAB70, 0xABBF},   {0xFB00, 0xFB06},   {0xFB13, 0xFB17},   {0xFF21, 0xFF3A},
    {0xFF41, 0xFF5A},   {0x10400, 0x1044F}, {0x104B0, 0x104D3}, {0x104D8, 0x104FB},
    {0x10C80, 0x10CB2}, {0x10CC0, 0x10CF2}, {0x118A0, 0x118DF}, {0x1E900, 0x1E943},
};

// [!-/:-~！-／：-～‘-‟　-。] of DeepSeek LLM's punctuation pattern.
constexpr CodePointRange kAsciiPunctRanges[] = {
    {0x21, 0x2F},     {0x3A, 0x7E},     {0x2018, 0x201F},
    {0x3000, 0x3002}, {0xFF01, 0xFF0F}, {0xFF1A, 0xFF5E},
};

// A text as code points, with their Unicode classes and byte offsets (offset[n] = size).
struct CodePoints {
  std::vector<uint32_t> cp;
  std::vector<uint8_t> cls;
  std::vector<uint32_t> offset;

  explicit CodePoints(std::string_view text) {
    for (size_t i = 0; i < text.size();) {
      uint32_t c;
      const size_t n = utf8_char(text, i, &c);
      cp.push_back(c);
      cls.push_back(unicode_classes(c));
      offset.push_back(uint32_t(i));
      i += n;
    }
    offset.push_back(uint32_t(text.size()));
  }
};

// Finds the match of one split pattern at position i of text[begin, end): its length in code
// points, 0 when there is none. Each case follows its regular expression (leftmost alternative
// first, greedy quantifiers with backtracking), written out over code point classes.
class PatternMatcher {
 public:
  PatternMatcher(const CodePoints& text, size_t begin, size_t end)
      : cp_(text.cp), cls_(text.cls), begin_(begin), end_(end) {}

  size_t match(SplitPattern pattern, size_t i) const {
    switch (pattern) {
      case SplitPattern::kGpt2:
        return gpt2(i);
      case SplitPattern::kLlama3:
        return llama3(i, 3);
      case SplitPattern::kQwen2:
        return llama3(i, 1);
      case SplitPattern::kNumber:
        return has(i, kUnicodeNumber) ? 1 : 0;
      case SplitPattern::kNumbers:
        return run(i, [&](size_t k) { return has(k, kUnicodeNumber); });
      case SplitPattern::kAsciiDigits3:
        return i + 3 <= end_ && ascii_digit(i) && ascii_digit(i + 1) && ascii_digit(i + 2) ? 3 : 0;
      case SplitPattern::kFalconPunct:
        return run(i, [&](size_t k) { return falcon_punct(k); });
      case SplitPattern::kNewline:
        return newline(i) ? 1 : 0;
      case SplitPattern::kSpaceLetters:
        return space_then_run(i, [&](size_t k) { return has(k, kUnicodeLetter); });
      case SplitPattern::kSpacePunct:
        return space_then_run(i, [&](size_t k) { return has(k, kUnicodePunctuation); });
      case SplitPattern::kCjk:
        return run(i, [&](size_t k) { return in_ranges(kCjkRanges, cp_[k]); });
      case SplitPattern::kSpaceCasedLetters:
        return space_then_run(i, [&](size_t k) { return in_ranges(kCasedLetterRanges, cp_[k]); });
      case SplitPattern::kSpaceAsciiPunct:
        return space_then_run(i, [&](size_t k) { return in_ranges(kAsciiPunctRanges, cp_[k]); });
      case SplitPattern::kTrailingSpace:
        return trailing_space(i);
    }
    return 0;
  }

 private:
  bool has(size_t k, uint8_t cls) const { return (cls_[k] & cls) != 0; }
  bool space(size_t k) const { return has(k, kUnicodeWhitespace); }
  // [^\s\p{L}\p{N}]
  bool other(size_t k) const {
    return !has(k, kUnicodeWhitespace | kUnicodeLetter | kUnicodeNumber);
  }
  bool newline(size_t k) const { return cp_[k] == '\r' || cp_[k] == '\n'; }
  bool ascii_digit(size_t k) const { return cp_[k] >= '0' && cp_[k] <= '9'; }
  bool falcon_punct(size_t k) const {
    const uint32_t c = cp_[k];
    return has(k, kUnicodePunctuation) || c == '$' || c == '+' || c == '<' || c == '=' ||
           c == '>' || c == '^' || c == '~' || c == '|' || c == '`';
  }

  // Length of the run of code points from i that satisfy pred (0 when cp[i] does not).
  template <typename Pred>
  size_t run(size_t i, Pred pred) const {
    size_t k = i;
    while (k < end_ && pred(k)) ++k;
    return k - i;
  }

  // \s?X+
  template <typename Pred>
  size_t space_then_run(size_t i, Pred pred) const {
    if (space(i) && i + 1 < end_ && pred(i + 1)) return 1 + run(i + 1, pred);
    return run(i, pred);
  }

  // 's|'t|'re|'ve|'m|'ll|'d, optionally ignoring case.
  size_t contraction(size_t i, bool ignore_case) const {
    if (cp_[i] != '\'' || i + 1 >= end_) return 0;
    const auto lower = [&](size_t k) {
      const uint32_t c = cp_[k];
      return ignore_case && c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
    };
    const uint32_t c1 = lower(i + 1);
    if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return 2;
    if (i + 2 >= end_) return 0;
    const uint32_t c2 = lower(i + 2);
    if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) return 3;
    return 0;
  }

  // \s+(?!\S)|\s+ at the start of a run of whitespace: all of it before the end of the text
  // or a single whitespace; otherwise all but the last, which goes with the next word.
  size_t spaces(size_t i) const {
    const size_t n = run(i, [&](size_t k) { return space(k); });
    return i + n == end_ || n == 1 ? n : n - 1;
  }

  size_t gpt2(size_t i) const {
    if (size_t n = contraction(i, false)) return n;
    // " ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+": a code point outside \s is in exactly one of the
    // three classes; an optional ' ' before it joins the run.
    const size_t s = cp_[i] == ' ' && i + 1 < end_ && !space(i + 1) ? i + 1 : i;
    const auto letter = [&](size_t k) { return has(k, kUnicodeLetter); };
    const auto number = [&](size_t k) { return has(k, kUnicodeNumber); };
    if (letter(s)) return s - i + run(s, letter);
    if (number(s)) return s - i + run(s, number);
    if (other(s)) return s - i + run(s, [&](size_t k) { return other(k); });
    return spaces(i);
  }

  size_t llama3(size_t i, size_t max_digits) const {
    if (size_t n = contraction(i, true)) return n;
    const auto letter = [&](size_t k) { return has(k, kUnicodeLetter); };
    // [^\r\n\p{L}\p{N}]?\p{L}+
    if (letter(i)) return run(i, letter);
    if (!newline(i) && !has(i, kUnicodeNumber) && i + 1 < end_ && letter(i + 1)) {
      return 1 + run(i + 1, letter);
    }
    // \p{N}{1,3}
    if (has(i, kUnicodeNumber)) {
      return std::min(max_digits, run(i, [&](size_t k) { return has(k, kUnicodeNumber); }));
    }
    // " ?[^\s\p{L}\p{N}]+[\r\n]*"
    const size_t s = cp_[i] == ' ' && i + 1 < end_ && other(i + 1) ? i + 1 : i;
    if (other(s)) {
      const size_t k = s + run(s, [&](size_t j) { return other(j); });
      return k - i + run(k, [&](size_t j) { return newline(j); });
    }
    // \s*[\r\n]+ : the whitespace up to and including its last line break.
    const size_t n = run(i, [&](size_t k) { return space(k); });
    for (size_t k = i + n; k > i; --k) {
      if (newline(k - 1)) return k - i;
    }
    return spaces(i);
  }

  // \s+$ : a run of whitespace that reaches the end. A position inside a run cannot match
  // when the run's start did not, so only starts are tried (keeping the search linear).
  size_t trailing_space(size_t i) const {
    if (!space(i) || (i > begin_ && space(i - 1))) return 0;
    const size_t n = run(i, [&](size_t k) { return space(k); });
    return i + n == end_ ? n : 0;
  }

  const std::vector<uint32_t>& cp_;
  const std::vector<uint8_t>& cls_;
  size_t begin_, end_;
};

using Span = std::pair<uint32_t, uint32_t>;  // [begin, end) in code points

// Splits text[span] into the matches of pattern and the runs between them, in order.
void split_isolated(SplitPattern pattern, const CodePoints& text, Span span,
                    std::vector<Span>& out) {
  const PatternMatcher matcher(text, span.first, span.second);
  uint32_t gap = span.first;
  uint32_t i = span.first;
  while (i < span.second) {
    const size_t n = matcher.match(pattern, i);
    if (n == 0) {
      ++i;
      continue;
    }
    if (gap < i) out.push_back({gap, i});
    out.push_back({i, uint32_t(i + n)});
    i += uint32_t(n);
    gap = i;
  }
  if (gap < span.second) out.push_back({gap, span.second});
}

std::vector<SplitPattern> split_patterns(const std::string& pre, bool* ignore_merges) {
  using P = SplitPattern;
  *ignore_merges = false;
  if (pre == "default" || pre == "gpt-2" || pre == "gpt2" || pre == "phi-2" || pre == "mpt" ||
      pre == "gpt-neox" || pre == "olmo" || pre == "jais") {
    return {P::kGpt2};
  }
  if (pre == "llama3" || pre == "llama-v3" || pre == "llama-bpe" || pre == "falcon3") {
    *ignore_merges = true;
    return {P::kLlama3};
  }
  if (pre == "dbrx" || pre == "smaug-bpe") return {P::kLlama3};
  if (pre == "qwen2" || pre == "deepseek-r1-qwen" || pre == "stablelm2" || pre == "megrez") {
    return {P::kQwen2};
  }
  if (pre == "deepseek-llm") {
    return {P::kNewline, P::kSpaceCasedLetters, P::kSpaceAsciiPunct, P::kTrailingSpace, P::kCjk,
            P::kNumbers};
  }
  if (pre == "deepseek-coder") {
    return {P::kNewline, P::kSpaceLetters, P::kSpacePunct, P::kCjk, P::kNumber};
  }
  if (pre == "falcon") return {P::kFalconPunct, P::kGpt2, P::kAsciiDigits3};
  if (pre == "starcoder" || pre == "refact" || pre == "command-r" || pre == "smollm" ||
      pre == "codeshell") {
    return {P::kNumber, P::kGpt2};
  }
  fail("tokenizer.ggml.pre '" + pre +
       "' is not a pre-tokenizer sllm knows (default, gpt-2, mpt, llama3/llama-bpe, qwen2, "
       "deepseek-llm, deepseek-coder, falcon, starcoder, refact, ...)");
}

// Tokens that end generation, by their text (chat models mark the end of a turn with them).
bool is_eog_text(const std::string& s) {
  static const char* const kTexts[] = {
      "</s>",
      "<|endoftext|>",
      "<|im_end|>",
      "<|eot_id|>",
      "<|eom_id|>",
      "<|end|>",
      "<end_of_turn>",
      "<|end_of_text|>",
      "<EOT>",
      "<｜end▁of▁sentence｜>",  // DeepSeek (fullwidth bars, ▁ for spaces)
  };
  for (const char* t : kTexts) {
    if (s == t) return true;
  }
  return false;
}

struct SpmSymbol {
  uint32_t begin, size;  // bytes of the text; size 0 once merged into its left neighbour
  int32_t prev, next;
};

struct SpmPair {
  float score;
  int32_t left, right;
  uint32_t size;  // bytes of both when queued; differs once either side has changed
};

struct SpmPairOrder {  // highest score first, then leftmost
  bool operator()(const SpmPair& a, const SpmPair& b) const {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  }
};

struct BpeSymbol {
  int32_t id;  // -1: a byte without a token
  int32_t prev, next;
};

struct BpePair {
  int32_t rank;
  int32_t left, right;        // symbol positions
  int32_t left_id, right_id;  // their tokens when queued
  int32_t result;             // the merged token
};

struct BpePairOrder {  // lowest rank first, then leftmost
  bool operator()(const BpePair& a, const BpePair& b) const {
    return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
  }
};

// What a normal token stands for: SentencePiece writes a space as "▁"; byte-level BPE writes
// each byte as a character of its alphabet.
std::string spm_token_text(const std::string& piece) {
  std::string out;
  for (size_t i = 0; i < piece.size();) {
    if (piece.compare(i, kSpmSpace.size(), kSpmSpace) == 0) {
      out += ' ';
      i += kSpmSpace.size();
    } else {
      out += piece[i++];
    }
  }
  return out;
}

std::string byte_level_token_text(const std::string& piece) {
  const ByteLevelAlphabet& alphabet = byte_level_alphabet();
  std::string out;
  for (size_t i = 0; i < piece.size();) {
    uint32_t cp;
    const size_t n = utf8_char(piece, i, &cp);
    if (cp < alphabet.char_bytes.size() && alphabet.char_bytes[cp] >= 0) {
      out += char(alphabet.char_bytes[cp]);
    } else {
      out.append(piece, i, n);  // not a byte-level character: keep it as it is
    }
    i += n;
  }
  return out;
}

// The byte of a "<0xNN>" piece, or -1.
int byte_piece_value(const std::string& piece) {
  if (piece.size() != 6 || piece.compare(0, 3, "<0x") != 0 || piece[5] != '>') return -1;
  int v = 0;
  for (size_t k = 3; k < 5; ++k) {
    const char c = piece[k];
    const int d = c >= '0' && c <= '9'   ? c - '0'
                  : c >= 'A' && c <= 'F' ? c - 'A' + 10
                  : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                         : -1;
    if (d < 0) return -1;
    v = v * 16 + d;
  }
  return v;
}

void append_hex(uint8_t b, std::string& out) {
  static const char kHex[] = "0123456789ABCDEF";
  out += kHex[b >> 4];
  out += kHex[b & 15];
}

// Whether merging may produce the token: SentencePiece builds only normal and user-defined
// pieces from text, never control, unknown, unused or byte tokens.
bool buildable(TokenType type) {
  return type == TokenType::Normal || type == TokenType::UserDefined ||
         type == TokenType::Undefined;
}

}  // namespace

std::vector<std::string_view> pre_tokenize(std::string_view text,
                                           const std::vector<SplitPattern>& patterns) {
  const CodePoints cps(text);
  std::vector<Span> words{{0, uint32_t(cps.cp.size())}}, split;
  for (SplitPattern pattern : patterns) {
    split.clear();
    for (const Span& w : words) split_isolated(pattern, cps, w, split);
    words.swap(split);
  }
  std::vector<std::string_view> out;
  out.reserve(words.size());
  for (const Span& w : words) {
    if (w.first == w.second) continue;  // the empty text
    out.push_back(text.substr(cps.offset[w.first], cps.offset[w.second] - cps.offset[w.first]));
  }
  return out;
}

void StringIndex::build(const std::vector<std::string>& strings) {
  size_t capacity = 16;
  while (capacity < strings.size() * 2) capacity *= 2;
  slots_.assign(capacity, -1);
  mask_ = capacity - 1;
  std::hash<std::string_view> hash;
  for (size_t id = 0; id < strings.size(); ++id) {
    const std::string& s = strings[id];
    if (s.empty()) continue;  // an empty token can never be matched
    for (size_t slot = hash(s) & mask_;; slot = (slot + 1) & mask_) {
      if (slots_[slot] < 0) {
        slots_[slot] = int32_t(id);
        break;
      }
      if (strings[slots_[slot]] == s) {
        fail("the vocabulary has the token '" + s + "' twice (ids " + std::to_string(slots_[slot]) +
             " and " + std::to_string(id) + ")");
      }
    }
  }
}

int32_t StringIndex::find(std::string_view s, const std::vector<std::string>& strings) const {
  if (slots_.empty()) return -1;
  for (size_t slot = std::hash<std::string_view>()(s) & mask_;; slot = (slot + 1) & mask_) {
    const int32_t id = slots_[slot];
    if (id < 0) return -1;
    if (strings[id] == s) return id;
  }
}

}  // namespace detail

struct Tokenizer::Fragment {
  std::string_view text;
  int32_t token;  // -1: text to tokenize
};

Tokenizer::Tokenizer(Vocabulary vocab) {
  using detail::fail;
  const size_t n = vocab.tokens.size();
  if (vocab.model != "llama" && vocab.model != "gpt2" && vocab.model != "bert") {
    fail("tokenizer model '" + vocab.model +
         "' is not supported (sllm reads 'llama' = SentencePiece, 'gpt2' = byte-level BPE and "
         "'bert' = WordPiece)");
  }
  if (n == 0) fail("the vocabulary has no tokens");
  if (n > size_t(INT32_MAX)) fail("the vocabulary has too many tokens: " + std::to_string(n));
  if (!vocab.scores.empty() && vocab.scores.size() != n) {
    fail("the vocabulary has " + std::to_string(n) + " tokens but " +
         std::to_string(vocab.scores.size()) + " scores");
  }
  for (size_t id = 0; id < vocab.scores.size(); ++id) {
    if (std::isnan(vocab.scores[id])) fail("the score of token " + std::to_string(id) + " is NaN");
  }
  if (!vocab.types.empty() && vocab.types.size() != n) {
    fail("the vocabulary has " + std::to_string(n) + " tokens but " +
         std::to_string(vocab.types.size()) + " token types");
  }
  const std::pair<const char*, int32_t> ids[] = {{"BOS", vocab.bos},     {"EOS", vocab.eos},
                                                 {"EOT", vocab.eot},     {"EOM", vocab.eom},
                                                 {"unknown", vocab.unk}, {"padding", vocab.pad}};
  for (const auto& [name, id] : ids) {
    if (id < -1 || id >= int64_t(n)) {
      fail(std::string(name) + " token id " + std::to_string(id) +
           " is out of range (the vocabulary has " + std::to_string(n) + " tokens)");
    }
  }
  if (vocab.add_bos && vocab.bos < 0) fail("the vocabulary asks to add BOS but has no BOS token");
  if (vocab.add_eos && vocab.eos < 0) fail("the vocabulary asks to add EOS but has no EOS token");

  byte_level_ = vocab.model == "gpt2";
  wordpiece_ = vocab.model == "bert";
  if (wordpiece_ && vocab.unk < 0) {
    fail("the WordPiece vocabulary has no unknown token ([UNK]) for words it cannot split");
  }
  pieces_ = std::move(vocab.tokens);
  scores_ = std::move(vocab.scores);
  if (scores_.empty()) scores_.assign(n, 0.0f);
  types_ = std::move(vocab.types);
  if (types_.empty()) types_.assign(n, TokenType::Normal);
  index_.build(pieces_);
  bos_ = vocab.bos;
  eos_ = vocab.eos;
  unk_ = vocab.unk;
  pad_ = vocab.pad;
  add_bos_ = vocab.add_bos;
  add_eos_ = vocab.add_eos;
  add_space_prefix_ = wordpiece_ || (!byte_level_ && vocab.add_space_prefix);
  for (const std::string& piece : pieces_)
    max_piece_bytes_ = std::max(max_piece_bytes_, piece.size());

  // Byte tokens: SentencePiece's <0xNN> pieces, or the byte-level alphabet's characters.
  for (int b = 0; b < 256; ++b) {
    if (byte_level_) {
      byte_tokens_[b] = find_piece(detail::byte_level_alphabet().byte_chars[b]);
    } else {
      std::string piece = "<0x";
      detail::append_hex(uint8_t(b), piece);
      byte_tokens_[b] = find_piece(piece + ">");
    }
  }

  texts_.resize(n);
  for (size_t id = 0; id < n; ++id) {
    const std::string& piece = pieces_[id];
    const TokenType type = types_[id];
    const int byte = type == TokenType::Byte ? detail::byte_piece_value(piece) : -1;
    if (byte >= 0) {
      texts_[id] = std::string(1, char(byte));
    } else if (type == TokenType::Control || type == TokenType::UserDefined ||
               type == TokenType::Unknown) {
      texts_[id] = piece;
    } else {
      texts_[id] =
          byte_level_ ? detail::byte_level_token_text(piece) : detail::spm_token_text(piece);
    }
  }

  // Tokens matched whole in the text, grouped by first byte, longest first.
  for (size_t id = 0; id < n; ++id) {
    const TokenType type = types_[id];
    if (!pieces_[id].empty() && (type == TokenType::Control || type == TokenType::UserDefined ||
                                 type == TokenType::Unknown)) {
      specials_.push_back(int32_t(id));
    }
  }
  std::stable_sort(specials_.begin(), specials_.end(), [&](int32_t a, int32_t b) {
    const uint8_t fa = uint8_t(pieces_[a][0]), fb = uint8_t(pieces_[b][0]);
    return fa != fb ? fa < fb : pieces_[a].size() > pieces_[b].size();
  });
  for (size_t k = 0, b = 0; b <= 256; ++b) {
    while (k < specials_.size() && uint8_t(pieces_[specials_[k]][0]) < b) ++k;
    special_begin_[b] = uint32_t(k);
  }

  for (int32_t id : {vocab.eos, vocab.eot, vocab.eom}) {
    if (id >= 0) eog_.push_back(id);
  }
  for (size_t id = 0; id < n; ++id) {
    if (detail::is_eog_text(pieces_[id])) eog_.push_back(int32_t(id));
  }
  std::sort(eog_.begin(), eog_.end());
  eog_.erase(std::unique(eog_.begin(), eog_.end()), eog_.end());

  if (byte_level_) {
    splits_ = detail::split_patterns(vocab.pre, &ignore_merges_);
    merges_.reserve(vocab.merges.size());
    for (size_t rank = 0; rank < vocab.merges.size(); ++rank) {
      const std::string& merge = vocab.merges[rank];
      const size_t space = merge.find(' ', 1);
      if (space == std::string::npos) {
        fail("BPE merge " + std::to_string(rank) + " '" + merge +
             "' is not two tokens separated by a space");
      }
      const std::string_view m(merge);
      const int32_t left = find_piece(m.substr(0, space));
      const int32_t right = find_piece(m.substr(space + 1));
      std::string joined = merge;
      joined.erase(space, 1);
      const int32_t result = find_piece(joined);
      // A merge of tokens that are not in the vocabulary can never apply.
      if (left < 0 || right < 0 || result < 0) continue;
      merges_.emplace(uint64_t(uint32_t(left)) << 32 | uint32_t(right),
                      detail::BpeMerge{int32_t(rank), result});
    }
  }
}

Tokenizer Tokenizer::from_gguf(const Gguf& gguf) {
  Vocabulary v;
  v.model = gguf.get<std::string>("tokenizer.ggml.model");
  if (v.model != "llama" && v.model != "gpt2" && v.model != "bert") {
    detail::fail(gguf.path() + ": tokenizer.ggml.model '" + v.model +
                 "' is not supported (sllm reads 'llama' = SentencePiece, 'gpt2' = "
                 "byte-level BPE and 'bert' = WordPiece)");
  }
  const bool spm = v.model == "llama";
  const bool wordpiece = v.model == "bert";
  v.pre = gguf.get_or<std::string>("tokenizer.ggml.pre", "default");
  v.tokens = gguf.get_array<std::string>("tokenizer.ggml.tokens");
  const size_t n = v.tokens.size();
  const auto check_count = [&](const char* key, size_t count) {
    if (count != n) {
      detail::fail(gguf.path() + ": " + key + " has " + std::to_string(count) +
                   " entries but tokenizer.ggml.tokens has " + std::to_string(n));
    }
  };
  if (gguf.has("tokenizer.ggml.scores")) {
    v.scores = gguf.get_array<float>("tokenizer.ggml.scores");
    check_count("tokenizer.ggml.scores", v.scores.size());
  }
  if (gguf.has("tokenizer.ggml.token_type")) {
    const std::vector<int32_t> types = gguf.get_array<int32_t>("tokenizer.ggml.token_type");
    check_count("tokenizer.ggml.token_type", types.size());
    v.types.reserve(n);
    for (int32_t t : types) {
      // Numbers outside the enum are read as undefined, as llama.cpp does.
      v.types.push_back(t >= 0 && t <= 6 ? TokenType(t) : TokenType::Undefined);
    }
  }
  if (v.model == "gpt2") v.merges = gguf.get_array<std::string>("tokenizer.ggml.merges");

  // Special token ids; ids past the vocabulary (converters write 0xFFFFFFFF or -1 for "none")
  // mean the vocabulary has no such token. SentencePiece's defaults are llama's.
  const auto special = [&](const char* key, int32_t fallback) -> int32_t {
    if (!gguf.has(key)) return fallback;
    const int64_t id = gguf.get<int64_t>(key);
    if (id >= 0 && id < int64_t(n)) return int32_t(id);
    if (id != -1 && id != 0xFFFFFFFF) {
      sllm::log(LogLevel::kWarn, gguf.path() + ": " + key + " = " + std::to_string(id) +
                                     " is not a token id (vocabulary of " + std::to_string(n) +
                                     "); ignoring it");
    }
    return -1;
  };
  const auto default_id = [&](int32_t id) { return spm && id < int64_t(n) ? id : -1; };
  v.bos = special("tokenizer.ggml.bos_token_id", default_id(1));
  v.eos = special("tokenizer.ggml.eos_token_id", default_id(2));
  if (wordpiece) {
    v.bos = special("tokenizer.ggml.cls_token_id", v.bos);
    v.eos = special("tokenizer.ggml.seperator_token_id", v.eos);
  }
  v.unk = special("tokenizer.ggml.unknown_token_id", default_id(0));
  v.eot = special("tokenizer.ggml.eot_token_id", -1);
  v.eom = special("tokenizer.ggml.eom_token_id", -1);
  v.pad = special("tokenizer.ggml.padding_token_id", -1);

  const bool llama3 =
      v.pre == "llama3" || v.pre == "llama-v3" || v.pre == "llama-bpe" || v.pre == "falcon3";
  v.add_bos = gguf.get_or<bool>("tokenizer.ggml.add_bos_token", spm || llama3 || wordpiece);
  v.add_eos = gguf.get_or<bool>("tokenizer.ggml.add_eos_token", wordpiece);
  v.add_space_prefix = spm && gguf.get_or<bool>("tokenizer.ggml.add_space_prefix", true);
  try {
    return Tokenizer(std::move(v));
  } catch (const Error& e) {
    detail::fail(gguf.path() + ": " + e.what());
  }
}

void Tokenizer::check_id(int32_t id) const {
  if (id < 0 || id >= n_vocab()) {
    detail::fail("token id " + std::to_string(id) + " is out of range (the vocabulary has " +
                 std::to_string(n_vocab()) + " tokens)");
  }
}

const std::string& Tokenizer::piece(int32_t id) const {
  check_id(id);
  return pieces_[id];
}

TokenType Tokenizer::token_type(int32_t id) const {
  check_id(id);
  return types_[id];
}

std::string Tokenizer::token_text(int32_t id) const {
  check_id(id);
  return texts_[id];
}

bool Tokenizer::is_eog(int32_t id) const {
  return std::binary_search(eog_.begin(), eog_.end(), id);
}

std::vector<Tokenizer::Fragment> Tokenizer::split_specials(std::string_view text,
                                                           bool parse_special) const {
  std::vector<Fragment> out;
  size_t start = 0;  // of the text not yet emitted
  for (size_t i = 0; i < text.size();) {
    const uint8_t first = uint8_t(text[i]);
    int32_t found = -1;
    for (uint32_t k = special_begin_[first]; k < special_begin_[first + 1]; ++k) {
      const int32_t id = specials_[k];
      if (!parse_special && types_[id] != TokenType::UserDefined) continue;
      if (text.compare(i, pieces_[id].size(), pieces_[id]) == 0) {
        found = id;
        break;
      }
    }
    if (found < 0) {
      ++i;
      continue;
    }
    if (i > start) out.push_back({text.substr(start, i - start), -1});
    out.push_back({{}, found});
    i += pieces_[found].size();
    start = i;
  }
  if (start < text.size()) out.push_back({text.substr(start), -1});
  return out;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special,
                                       bool parse_special) const {
  // Positions are 32-bit; SentencePiece adds 3 bytes for the leading space.
  if (text.size() > size_t(INT32_MAX) - 3) {
    detail::fail("cannot tokenize a text of " + std::to_string(text.size()) +
                 " bytes: the limit is 2 GiB");
  }
  std::vector<int32_t> out;
  if (add_special && add_bos_) out.push_back(bos_);
  // SentencePiece's leading space goes before text at the start and after a special token.
  bool after_special = true;
  for (const Fragment& f : split_specials(text, parse_special)) {
    if (f.token >= 0) {
      out.push_back(f.token);
      after_special = true;
      continue;
    }
    if (byte_level_) {
      encode_bpe(f.text, out);
    } else if (wordpiece_) {
      encode_wordpiece(f.text, out);
    } else {
      encode_spm(f.text, add_space_prefix_ && after_special, out);
    }
    after_special = false;
  }
  if (add_special && add_eos_) out.push_back(eos_);
  return out;
}

void Tokenizer::emit_bytes(std::string_view bytes, std::vector<int32_t>& out) const {
  bool all = true;
  for (char c : bytes) all = all && byte_tokens_[uint8_t(c)] >= 0;
  if (all) {
    for (char c : bytes) out.push_back(byte_tokens_[uint8_t(c)]);
  } else if (!byte_level_ && unk_ >= 0) {
    out.push_back(unk_);
  }
  // Otherwise the bytes are dropped, as Hugging Face and llama.cpp do: byte-level vocabularies
  // often lack the bytes that never occur in UTF-8 (C0, C1, F5..FF), and their "unknown" id is
  // often just <|endoftext|>.
}

void Tokenizer::encode_spm(std::string_view text, bool space_prefix,
                           std::vector<int32_t>& out) const {
  using detail::SpmPair;
  using detail::SpmSymbol;
  std::string s;
  s.reserve(text.size() + 3);
  if (space_prefix) s += detail::kSpmSpace;
  for (char c : text) {
    if (c == ' ') {
      s += detail::kSpmSpace;
    } else {
      s += c;
    }
  }
  const std::string_view sv(s);

  std::vector<SpmSymbol> symbols;
  for (size_t i = 0; i < s.size();) {
    uint32_t cp;
    const size_t n = detail::utf8_char(sv, i, &cp);
    const int32_t k = int32_t(symbols.size());
    symbols.push_back({uint32_t(i), uint32_t(n), k - 1, k + 1});
    i += n;
  }
  if (symbols.empty()) return;
  symbols.back().next = -1;

  std::priority_queue<SpmPair, std::vector<SpmPair>, detail::SpmPairOrder> queue;
  const auto try_pair = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const uint32_t size = symbols[left].size + symbols[right].size;
    const int32_t id = find_piece(sv.substr(symbols[left].begin, size));
    if (id < 0 || !detail::buildable(types_[id])) return;
    queue.push({scores_[id], left, right, size});
  };
  for (int32_t i = 1; i < int32_t(symbols.size()); ++i) try_pair(i - 1, i);
  while (!queue.empty()) {
    const SpmPair pair = queue.top();
    queue.pop();
    SpmSymbol& left = symbols[pair.left];
    SpmSymbol& right = symbols[pair.right];
    if (left.size == 0 || right.size == 0 || left.size + right.size != pair.size) continue;
    left.size += right.size;
    right.size = 0;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = pair.left;
    try_pair(left.prev, pair.left);
    try_pair(pair.left, left.next);
  }

  for (int32_t i = 0; i >= 0; i = symbols[i].next) {
    const std::string_view piece = sv.substr(symbols[i].begin, symbols[i].size);
    const int32_t id = find_piece(piece);
    if (id >= 0 && detail::buildable(types_[id])) {
      out.push_back(id);
    } else {
      emit_bytes(piece, out);  // byte fallback
    }
  }
}

void Tokenizer::encode_bpe(std::string_view text, std::vector<int32_t>& out) const {
  for (std::string_view word : detail::pre_tokenize(text, splits_)) encode_bpe_word(word, out);
}

void Tokenizer::encode_bpe_word(std::string_view word, std::vector<int32_t>& out) const {
  using detail::BpePair;
  using detail::BpeSymbol;
  if (ignore_merges_) {
    std::string chars;
    for (char c : word) chars += detail::byte_level_alphabet().byte_chars[uint8_t(c)];
    const int32_t id = find_piece(chars);
    if (id >= 0) {
      out.push_back(id);
      return;
    }
  }
  std::vector<BpeSymbol> symbols(word.size());
  for (size_t i = 0; i < word.size(); ++i) {
    symbols[i] = {byte_tokens_[uint8_t(word[i])], int32_t(i) - 1, int32_t(i) + 1};
  }
  if (symbols.empty()) return;
  symbols.back().next = -1;

  std::priority_queue<BpePair, std::vector<BpePair>, detail::BpePairOrder> queue;
  const auto try_pair = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const int32_t l = symbols[left].id, r = symbols[right].id;
    if (l < 0 || r < 0) return;
    const auto it = merges_.find(uint64_t(uint32_t(l)) << 32 | uint32_t(r));
    if (it != merges_.end()) queue.push({it->second.rank, left, right, l, r, it->second.result});
  };
  for (int32_t i = 1; i < int32_t(symbols.size()); ++i) try_pair(i - 1, i);
  while (!queue.empty()) {
    const BpePair pair = queue.top();
    queue.pop();
    BpeSymbol& left = symbols[pair.left];
    BpeSymbol& right = symbols[pair.right];
    if (left.next != pair.right || left.id != pair.left_id || right.id != pair.right_id) continue;
    left.id = pair.result;
    left.next = right.next;
    right.id = -1;
    right.prev = right.next = -1;
    if (left.next >= 0) symbols[left.next].prev = pair.left;
    try_pair(left.prev, pair.left);
    try_pair(pair.left, left.next);
  }
  for (int32_t i = 0; i >= 0; i = symbols[i].next) {
    if (symbols[i].id >= 0) {
      out.push_back(symbols[i].id);
    } else {
      emit_bytes(word.substr(size_t(i), 1), out);
    }
  }
}

void Tokenizer::encode_wordpiece(std::string_view text, std::vector<int32_t>& out) const {
  // Hugging Face's BertNormalizer and BertPreTokenizer, one code point at a time: control
  // characters (and invalid bytes) go, whitespace ends a word, CJK ideographs are words of
  // their own, and so is each punctuation character of the lower-cased accent-free text.
  std::string word(detail::kSpmSpace);
  size_t n_chars = 0;
  const auto end_word = [&] {
    if (n_chars > 0) encode_wordpiece_word(word, n_chars, out);
    word.resize(detail::kSpmSpace.size());
    n_chars = 0;
  };
  std::vector<uint32_t> folded;
  for (size_t i = 0; i < text.size();) {
    uint32_t cp;
    i += detail::utf8_char(text, i, &cp);
    const uint8_t cls = detail::unicode_classes(cp);
    if (cp == '\t' || cp == '\n' || cp == '\r') {
      end_word();
      continue;
    }
    // Cc, Cf, Co, Cs and unassigned code points (class 0, as are invalid bytes) are dropped.
    if (cp == 0 || cp == 0xFFFD || cls == 0 || (cls & detail::kUnicodeOther) != 0) continue;
    const bool cjk = detail::in_ranges(detail::kBertCjkRanges, cp);
    if (cjk) end_word();
    folded.clear();
    detail::append_lower_without_accents(cp, folded);
    for (uint32_t c : folded) {
      const uint8_t folded_cls = detail::unicode_classes(c);
      if ((folded_cls & detail::kUnicodeWhitespace) != 0) {
        end_word();
        continue;
      }
      const bool ascii_punct = (c >= 33 && c <= 47) || (c >= 58 && c <= 64) ||
                               (c >= 91 && c <= 96) || (c >= 123 && c <= 126);
      const bool punct = ascii_punct || (folded_cls & detail::kUnicodePunctuation) != 0;
      if (punct) end_word();
      detail::append_utf8(c, word);
      ++n_chars;
      if (punct) end_word();
    }
    if (cjk) end_word();
  }
  end_word();
}

void Tokenizer::encode_wordpiece_word(std::string_view word, size_t n_chars,
                                      std::vector<int32_t>& out) const {
  constexpr size_t kMaxWordChars = 100;  // BERT's max_input_chars_per_word
  const size_t first_piece = out.size();
  const size_t prefix = detail::kSpmSpace.size();
  for (size_t begin = 0; n_chars <= kMaxWordChars && begin < word.size();) {
    // The longest piece from begin that ends at a character boundary; the first piece carries
    // the "▁" prefix and at least one character.
    int32_t id = -1;
    size_t end = std::min(word.size(), begin + max_piece_bytes_);
    for (; end > (begin == 0 ? prefix : begin); --end) {
      if (end < word.size() && (uint8_t(word[end]) & 0xC0) == 0x80) continue;
      id = find_piece(word.substr(begin, end - begin));
      if (id >= 0 && detail::buildable(types_[id])) break;
      id = -1;
    }
    if (id < 0) break;
    out.push_back(id);
    begin = end;
    if (begin == word.size()) return;
  }
  out.resize(first_piece);  // no split (or too long): the whole word is unknown
  out.push_back(unk_);
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool render_special) const {
  Detokenizer detok(*this, true, render_special);
  std::string out;
  for (int32_t id : ids) out += detok.push(id);
  out += detok.flush();
  return out;
}

Detokenizer::Detokenizer(const Tokenizer& tokenizer, bool at_start, bool render_special)
    : tokenizer_(&tokenizer), strip_space_(at_start), render_special_(render_special) {}

std::string Detokenizer::push(int32_t id) {
  const TokenType type = tokenizer_->token_type(id);  // Error when out of range
  const bool special = type == TokenType::Control || type == TokenType::Unknown;
  std::string text = special && !render_special_ ? std::string() : tokenizer_->token_text(id);
  if (id == tokenizer_->bos()) {
    strip_space_ = true;  // a new text starts
  } else if (strip_space_ && !text.empty()) {
    if (tokenizer_->add_space_prefix() && text[0] == ' ') text.erase(0, 1);
    strip_space_ = false;
  }
  pending_ += text;
  // Hold back a UTF-8 character whose last bytes have not arrived: find where the last
  // character starts (at most 3 bytes back) and compare its length with what is there.
  size_t keep = 0;
  const size_t size = pending_.size();
  for (size_t back = 1; back <= 4 && back <= size; ++back) {
    const uint8_t b = uint8_t(pending_[size - back]);
    if ((b & 0xC0) == 0x80) continue;  // continuation byte
    const size_t len = b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : b >= 0xC0 ? 2 : 1;
    if (len > back && b <= 0xF4) keep = back;
    break;
  }
  std::string ready = pending_.substr(0, size - keep);
  pending_.erase(0, size - keep);
  return ready;
}

std::string Detokenizer::flush() {
  std::string rest;
  rest.swap(pending_);
  return rest;
}

}  // namespace sllm
