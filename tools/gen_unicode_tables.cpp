// Writes include/sllm/unicode_tables.h: the Unicode character classes that the tokenizer's
// pre-tokenizers need (letters, numbers, marks, punctuation, symbols, separators, other, and the
// White_Space property), as sorted ranges of code points with equal classes; and the lower-case
// accent-free form of each code point that WordPiece (BERT) normalization needs, as runs of
// code points that map alike.
//
//   gen_unicode_tables UNICODE_DIR OUTPUT
//
// UNICODE_DIR holds the Unicode Character Database as Debian's unicode-data package installs
// it (/usr/share/unicode): UnicodeData.txt, and PropList.txt for White_Space (when PropList.txt
// is missing, the White_Space list of Unicode 15 is used; it has not changed since Unicode 6).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace {

constexpr uint32_t kCodePoints = 0x110000;

// Keep in sync with the enum written below.
enum : uint8_t {
  kLetter = 1 << 0,
  kNumber = 1 << 1,
  kMark = 1 << 2,
  kPunctuation = 1 << 3,
  kSymbol = 1 << 4,
  kSeparator = 1 << 5,
  kOther = 1 << 6,
  kWhitespace = 1 << 7,
};

[[noreturn]] void die(const std::string& message) {
  std::cerr << "gen_unicode_tables: " << message << "\n";
  std::exit(1);
}

std::vector<std::string> split(const std::string& line, char sep) {
  std::vector<std::string> fields;
  std::string field;
  std::istringstream in(line);
  while (std::getline(in, field, sep)) fields.push_back(field);
  return fields;
}

std::string trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t");
  if (b == std::string::npos) return "";
  const size_t e = s.find_last_not_of(" \t");
  return s.substr(b, e - b + 1);
}

uint32_t parse_code_point(const std::string& hex, const std::string& where) {
  size_t used = 0;
  unsigned long v = 0;
  try {
    v = std::stoul(hex, &used, 16);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != hex.size() || v >= kCodePoints) {
    die(where + ": bad code point '" + hex + "'");
  }
  return uint32_t(v);
}

uint8_t category_class(const std::string& category, const std::string& where) {
  if (category.size() != 2) die(where + ": bad general category '" + category + "'");
  switch (category[0]) {
    case 'L':
      return kLetter;
    case 'N':
      return kNumber;
    case 'M':
      return kMark;
    case 'P':
      return kPunctuation;
    case 'S':
      return kSymbol;
    case 'Z':
      return kSeparator;
    case 'C':
      return category == "Cn" ? 0 : kOther;
  }
  die(where + ": bad general category '" + category + "'");
}

// What UnicodeData.txt says about each code point beyond its class.
struct CharacterData {
  std::vector<std::vector<uint32_t>> decomposition;  // canonical (field 5 without a <tag>)
  std::vector<uint32_t> lowercase;                   // simple lower-case mapping (field 13)
  std::vector<bool> nonspacing;                      // general category Mn
  CharacterData() : decomposition(kCodePoints), lowercase(kCodePoints), nonspacing(kCodePoints) {
    for (uint32_t c = 0; c < kCodePoints; ++c) lowercase[c] = c;
  }
};

// UnicodeData.txt: "code;name;category;...". Large blocks are given as a pair of lines whose
// names end in ", First>" and ", Last>".
void read_unicode_data(const std::string& path, std::vector<uint8_t>& classes,
                       CharacterData& data) {
  std::ifstream in(path);
  if (!in) die("cannot open " + path);
  std::string line;
  int line_no = 0;
  uint32_t range_first = kCodePoints;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.empty()) continue;
    const std::string where = path + ":" + std::to_string(line_no);
    const std::vector<std::string> f = split(line, ';');
    if (f.size() < 14) die(where + ": expected at least 14 fields");
    const uint32_t cp = parse_code_point(f[0], where);
    const uint8_t cls = category_class(f[2], where);
    const std::string& name = f[1];
    if (name.size() > 8 && name.compare(name.size() - 8, 8, ", First>") == 0) {
      range_first = cp;
      continue;
    }
    uint32_t first = cp;
    if (name.size() > 7 && name.compare(name.size() - 7, 7, ", Last>") == 0) {
      if (range_first > cp) die(where + ": range end without a start");
      first = range_first;
      range_first = kCodePoints;
    }
    for (uint32_t c = first; c <= cp; ++c) {
      classes[c] |= cls;
      data.nonspacing[c] = f[2] == "Mn";
    }
    if (!f[5].empty() && f[5][0] != '<') {
      for (const std::string& part : split(f[5], ' ')) {
        data.decomposition[cp].push_back(parse_code_point(part, where));
      }
    }
    if (!f[13].empty()) data.lowercase[cp] = parse_code_point(f[13], where);
  }
}

// Hangul syllables decompose by arithmetic (Unicode 3.12), done at run time by the tokenizer.
constexpr uint32_t kHangulFirst = 0xAC00, kHangulLast = 0xD7A3;

void append_decomposition(const CharacterData& data, uint32_t c, std::vector<uint32_t>& out) {
  if (data.decomposition[c].empty()) {
    out.push_back(c);
    return;
  }
  for (uint32_t part : data.decomposition[c]) append_decomposition(data, part, out);
}

// The lower case of the canonical decomposition without its nonspacing marks, as Hugging
// Face's BERT normalizer computes it (NFD, drop Mn, lower-case). Lower-casing first gives the
// same for every code point (Python's BertTokenizer does it in that order).
std::vector<uint32_t> lower_without_accents(const CharacterData& data, uint32_t c) {
  std::vector<uint32_t> nfd, out;
  append_decomposition(data, c, nfd);
  for (uint32_t d : nfd) {
    if (!data.nonspacing[d]) out.push_back(data.lowercase[d]);
  }
  return out;
}

// A run of code points first, first + stride, ... (count of them) that map alike.
enum FoldKind : uint8_t { kDelta, kTarget, kRemove, kSequence };
struct FoldRun {
  uint32_t first = 0;
  uint32_t count = 1;
  uint32_t stride = 1;
  FoldKind kind = kDelta;
  int64_t value = 0;  // delta, target, or offset << 8 | length in the sequence table
};

// The code points that do not map to themselves, as runs: each greedy run is the longest of
// the kinds that fit (same delta or same target, stride 1 or 2; removed; sequences alone).
void fold_runs(const CharacterData& data, std::vector<FoldRun>& runs,
               std::vector<uint32_t>& sequences) {
  std::vector<std::pair<uint32_t, std::vector<uint32_t>>> mapped;
  for (uint32_t c = 0; c < kCodePoints; ++c) {
    if (c >= kHangulFirst && c <= kHangulLast) continue;
    std::vector<uint32_t> m = lower_without_accents(data, c);
    if (m.size() != 1 || m[0] != c) mapped.emplace_back(c, std::move(m));
  }
  constexpr uint32_t kMaxCount = 256;  // the key's 8 bits of count - 1
  for (size_t i = 0; i < mapped.size();) {
    const auto& [c, m] = mapped[i];
    FoldRun best;
    best.first = c;
    best.count = 0;
    if (m.size() > 1) {
      best.count = 1;
      best.kind = kSequence;
      best.value = int64_t(sequences.size()) << 8 | int64_t(m.size());
      sequences.insert(sequences.end(), m.begin(), m.end());
      runs.push_back(best);
      ++i;
      continue;
    }
    for (FoldKind kind : {kDelta, kTarget, kRemove}) {
      if ((kind == kRemove) != m.empty()) continue;
      for (uint32_t stride : {1u, 2u}) {
        const auto fits = [&](size_t j) {
          const auto& [cj, mj] = mapped[j];
          if (cj != c + (j - i) * stride || mj.size() != m.size()) return false;
          if (kind == kDelta) return int64_t(mj[0]) - cj == int64_t(m[0]) - c;
          return kind == kRemove || mj[0] == m[0];
        };
        size_t j = i + 1;
        while (j < mapped.size() && j - i < kMaxCount && fits(j)) ++j;
        if (j - i > best.count) {
          best.count = uint32_t(j - i);
          best.stride = stride;
          best.kind = kind;
          best.value = kind == kDelta ? int64_t(m[0]) - c : kind == kTarget ? m[0] : 0;
        }
      }
    }
    if (best.count == 1) best.stride = 1;
    runs.push_back(best);
    i += best.count;
  }
}

// PropList.txt: "XXXX..YYYY ; Property # comment".
bool read_white_space(const std::string& path, std::vector<uint8_t>& classes) {
  std::ifstream in(path);
  if (!in) return false;
  std::string line;
  int line_no = 0;
  int n_found = 0;
  while (std::getline(in, line)) {
    ++line_no;
    const std::string data = trim(line.substr(0, line.find('#')));
    if (data.empty()) continue;
    const std::vector<std::string> f = split(data, ';');
    if (f.size() != 2 || trim(f[1]) != "White_Space") continue;
    const std::string where = path + ":" + std::to_string(line_no);
    const std::string range = trim(f[0]);
    const size_t dots = range.find("..");
    const uint32_t first = parse_code_point(range.substr(0, dots), where);
    const uint32_t last =
        dots == std::string::npos ? first : parse_code_point(range.substr(dots + 2), where);
    for (uint32_t c = first; c <= last; ++c) classes[c] |= kWhitespace;
    ++n_found;
  }
  if (n_found == 0) die(path + ": no White_Space entries");
  return true;
}

void set_standard_white_space(std::vector<uint8_t>& classes) {
  const uint32_t ranges[][2] = {
      {0x09, 0x0D},     {0x20, 0x20},     {0x85, 0x85},     {0xA0, 0xA0},     {0x1680, 0x1680},
      {0x2000, 0x200A}, {0x2028, 0x2029}, {0x202F, 0x202F}, {0x205F, 0x205F}, {0x3000, 0x3000}};
  for (const auto& r : ranges) {
    for (uint32_t c = r[0]; c <= r[1]; ++c) classes[c] |= kWhitespace;
  }
}

std::string unicode_version(const std::string& dir) {
  // DerivedAge.txt and PropList.txt start with "# Name-X.Y.Z.txt".
  for (const char* name : {"PropList.txt", "DerivedAge.txt"}) {
    std::ifstream in(dir + "/" + name);
    std::string first;
    if (!in || !std::getline(in, first)) continue;
    const size_t dash = first.find('-');
    const size_t ext = first.rfind(".txt");
    if (dash != std::string::npos && ext != std::string::npos && ext > dash) {
      return first.substr(dash + 1, ext - dash - 1);
    }
  }
  return "unknown";
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: gen_unicode_tables UNICODE_DIR OUTPUT\n"
                 "  UNICODE_DIR: Unicode Character Database (e.g. /usr/share/unicode)\n"
                 "  OUTPUT:      the header to write (include/sllm/unicode_tables.h)\n";
    return 2;
  }
  const std::string dir = argv[1];
  std::vector<uint8_t> classes(kCodePoints, 0);
  CharacterData data;
  read_unicode_data(dir + "/UnicodeData.txt", classes, data);
  const bool have_proplist = read_white_space(dir + "/PropList.txt", classes);
  if (!have_proplist) set_standard_white_space(classes);

  std::vector<uint32_t> entries;  // (first << 8) | classes, where the classes change
  for (uint32_t c = 0; c < kCodePoints; ++c) {
    if (c == 0 || classes[c] != classes[c - 1]) entries.push_back(c << 8 | classes[c]);
  }

  std::ostringstream out;
  out << "// Unicode data for the tokenizers: the character classes of the pre-tokenizers, and "
         "the\n"
         "// lower-case accent-free forms of WordPiece (BERT) normalization.\n"
         "// GENERATED by tools/gen_unicode_tables.cpp from the Unicode Character Database "
      << unicode_version(dir) << "\n// (UnicodeData.txt"
      << (have_proplist ? ", PropList.txt" : "; White_Space: the standard list")
      << ") -- do not edit. Regenerate with\n"
         "//   cmake --build BUILD_DIR --target sllm_unicode_tables      (or meson: "
         "ninja unicode_tables)\n"
         "// which runs: gen_unicode_tables /usr/share/unicode include/sllm/unicode_tables.h\n"
         "namespace sllm {\n"
         "namespace detail {\n"
         "\n"
         "// Classes of a code point: its general category's major class (L, N, M, P, S, Z, or\n"
         "// C without Cn) and the White_Space property. Unassigned code points have none.\n"
         "enum UnicodeClass : uint8_t {\n"
         "  kUnicodeLetter = 1 << 0,\n"
         "  kUnicodeNumber = 1 << 1,\n"
         "  kUnicodeMark = 1 << 2,\n"
         "  kUnicodePunctuation = 1 << 3,\n"
         "  kUnicodeSymbol = 1 << 4,\n"
         "  kUnicodeSeparator = 1 << 5,\n"
         "  kUnicodeOther = 1 << 6,\n"
         "  kUnicodeWhitespace = 1 << 7,\n"
         "};\n"
         "\n"
         "// Entry i is (first code point << 8) | classes; its range ends where entry i + 1 "
         "starts\n"
         "// (the last one at U+10FFFF).\n"
         "inline constexpr uint32_t kUnicodeRanges["
      << entries.size() << "] = {\n";
  for (size_t i = 0; i < entries.size(); ++i) {
    if (i % 8 == 0) out << "   ";
    char buf[16];
    std::snprintf(buf, sizeof buf, " 0x%08X,", unsigned(entries[i]));
    out << buf;
    if (i % 8 == 7 || i + 1 == entries.size()) out << "\n";
  }
  std::vector<FoldRun> runs;
  std::vector<uint32_t> sequences;
  fold_runs(data, runs, sequences);
  out << "};\n"
         "\n"
         "// Lower case without accents, as BERT's normalizer makes it: the lower case (simple\n"
         "// mapping) of the canonical decomposition (NFD) with its nonspacing marks (Mn) "
         "removed.\n"
         "// Code points in no run map to themselves; Hangul syllables (U+AC00..U+D7A3) decompose\n"
         "// into their jamo by arithmetic instead.\n"
         "enum UnicodeFoldKind : uint8_t {\n"
         "  kFoldDelta = 0,     // to code point + value\n"
         "  kFoldTarget = 1,    // to code point value\n"
         "  kFoldRemove = 2,    // to nothing (a nonspacing mark)\n"
         "  kFoldSequence = 3,  // to kUnicodeFoldSequences[value >> 8 ...], value & 0xFF of them\n"
         "};\n"
         "// A run of count code points first, first + stride, ... that map alike. key is\n"
         "// first << 11 | (count - 1) << 3 | (stride - 1) << 2 | kind. Sorted; runs do not "
         "overlap.\n"
         "struct UnicodeFoldRun {\n"
         "  uint32_t key;\n"
         "  int32_t value;\n"
         "};\n"
         "inline constexpr UnicodeFoldRun kUnicodeFoldRuns["
      << runs.size() << "] = {\n";
  std::string line;
  const auto flush_line = [&](bool force) {
    if (!line.empty() && (force || line.size() > 80)) {
      out << "   " << line << "\n";
      line.clear();
    }
  };
  for (const FoldRun& r : runs) {
    char buf[48];
    const uint32_t key = r.first << 11 | (r.count - 1) << 3 | (r.stride - 1) << 2 | r.kind;
    std::snprintf(buf, sizeof buf, " {0x%X, %lld},", unsigned(key),
                  static_cast<long long>(r.value));
    line += buf;
    flush_line(false);
  }
  flush_line(true);
  out << "};\n"
         "inline constexpr uint32_t kUnicodeFoldSequences["
      << sequences.size() << "] = {\n";
  for (size_t i = 0; i < sequences.size(); ++i) {
    char buf[16];
    std::snprintf(buf, sizeof buf, " 0x%X,", unsigned(sequences[i]));
    line += buf;
    flush_line(i + 1 == sequences.size());
  }
  out << "};\n"
         "\n"
         "}  // namespace detail\n"
         "}  // namespace sllm\n";

  const std::string path = argv[2];
  std::ofstream file(path, std::ios::binary);
  file << out.str();
  file.close();
  if (!file) die("cannot write " + path);
  std::cout << "wrote " << path << ": " << entries.size() << " class ranges, " << runs.size()
            << " lower-case runs\n";
  return 0;
}
