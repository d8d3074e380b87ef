#include "hf_tokenizer.h"

#include <algorithm>
#include <unordered_map>

#include "hf_files.h"

namespace sllm {
namespace hf {

// ---- SentencePiece protobuf ----

namespace {

// One field of a protobuf message (wire format: a varint tag = number << 3 | wire type, then a
// varint, 8 bytes, a varint length and that many bytes, or 4 bytes).
struct ProtoField {
  uint32_t number = 0;
  uint32_t wire = 0;
  uint64_t offset = 0;          // of the tag, for messages
  uint64_t varint = 0;          // wire type 0
  uint32_t fixed32 = 0;         // wire type 5
  uint64_t begin = 0, end = 0;  // wire type 2: the bytes' range
};

// Walks the fields of the message in [begin, end) of data; every read is bounds-checked and an
// Error names origin and the offset from the start of the file.
class ProtoReader {
 public:
  ProtoReader(const uint8_t* data, uint64_t begin, uint64_t end, const std::string& origin)
      : data_(data), pos_(begin), end_(end), origin_(origin) {}

  bool next(ProtoField& f) {
    if (pos_ >= end_) return false;
    f.offset = pos_;
    const uint64_t tag = varint("a field tag");
    f.number = uint32_t(tag >> 3);
    f.wire = uint32_t(tag & 7);
    if (f.number == 0 || tag >> 3 > 0x1FFFFFFF) fail(f.offset, "invalid field number");
    switch (f.wire) {
      case 0:
        f.varint = varint("a varint field");
        break;
      case 1:
        need(8, "a 64-bit field");
        pos_ += 8;
        break;
      case 2: {
        const uint64_t n = varint("a length");
        need(n, "a length-delimited field");
        f.begin = pos_;
        f.end = pos_ + n;
        pos_ += n;
        break;
      }
      case 5:
        need(4, "a 32-bit field");
        std::memcpy(&f.fixed32, data_ + pos_, 4);
        pos_ += 4;
        break;
      default:
        fail(f.offset, "unsupported wire type " + std::to_string(f.wire) + " (field " +
                           std::to_string(f.number) + ")");
    }
    return true;
  }

  // Error unless field f has wire type want.
  void expect(const ProtoField& f, uint32_t want, const char* name) const {
    if (f.wire != want) {
      fail(f.offset, std::string(name) + " has wire type " + std::to_string(f.wire) +
                         ", expected " + std::to_string(want));
    }
  }

  [[noreturn]] void fail(uint64_t offset, const std::string& message) const {
    detail::fail_at(origin_, offset, message);
  }

 private:
  uint64_t varint(const char* what) {
    const uint64_t start = pos_;
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      need(1, what);
      const uint8_t b = data_[pos_++];
      v |= uint64_t(b & 0x7F) << shift;
      if ((b & 0x80) == 0) return v;
    }
    fail(start, std::string("malformed varint in ") + what);
  }
  void need(uint64_t n, const char* what) const {
    if (n > end_ - pos_) {
      fail(pos_, std::string("unexpected end of message reading ") + what + " (needs " +
                     std::to_string(n) + " bytes, " + std::to_string(end_ - pos_) + " left)");
    }
  }

  const uint8_t* data_;
  uint64_t pos_, end_;
  const std::string& origin_;
};

}  // namespace

SentencePieceModel SentencePieceModel::parse(const uint8_t* data, uint64_t size,
                                             const std::string& origin) {
  // Field numbers of sentencepiece_model.proto.
  enum { kPieces = 1, kTrainerSpec = 2, kNormalizerSpec = 3 };
  enum { kPiece = 1, kScore = 2, kType = 3 };
  enum { kModelType = 3, kUnkId = 40, kBosId = 41, kEosId = 42, kPadId = 43 };
  enum { kAddDummyPrefix = 3 };
  SentencePieceModel m;
  ProtoReader model(data, 0, size, origin);
  ProtoField f;
  while (model.next(f)) {
    if (f.number == kPieces) {
      model.expect(f, 2, "a piece");
      Piece p;
      ProtoReader piece(data, f.begin, f.end, origin);
      ProtoField g;
      while (piece.next(g)) {
        if (g.number == kPiece) {
          piece.expect(g, 2, "a piece's text");
          p.piece.assign(reinterpret_cast<const char*>(data + g.begin), g.end - g.begin);
        } else if (g.number == kScore) {
          piece.expect(g, 5, "a piece's score");
          std::memcpy(&p.score, &g.fixed32, 4);
        } else if (g.number == kType) {
          piece.expect(g, 0, "a piece's type");
          if (g.varint < 1 || g.varint > 6) {
            piece.fail(g.offset, "piece type " + std::to_string(g.varint) + " is not 1..6");
          }
          p.type = int32_t(g.varint);
        }
      }
      if (p.piece.empty()) {
        model.fail(f.offset, "piece " + std::to_string(m.pieces.size()) + " is empty");
      }
      m.pieces.push_back(std::move(p));
    } else if (f.number == kTrainerSpec) {
      model.expect(f, 2, "trainer_spec");
      ProtoReader spec(data, f.begin, f.end, origin);
      ProtoField g;
      while (spec.next(g)) {
        // int32 fields: negative values are written as 64-bit two's complement varints.
        const auto as_int32 = [&] {
          spec.expect(g, 0, "a trainer_spec id");
          return int32_t(int64_t(g.varint));
        };
        if (g.number == kModelType) m.model_type = as_int32();
        if (g.number == kUnkId) m.unk_id = as_int32();
        if (g.number == kBosId) m.bos_id = as_int32();
        if (g.number == kEosId) m.eos_id = as_int32();
        if (g.number == kPadId) m.pad_id = as_int32();
      }
    } else if (f.number == kNormalizerSpec) {
      model.expect(f, 2, "normalizer_spec");
      ProtoReader spec(data, f.begin, f.end, origin);
      ProtoField g;
      while (spec.next(g)) {
        if (g.number == kAddDummyPrefix) {
          spec.expect(g, 0, "normalizer_spec.add_dummy_prefix");
          m.add_dummy_prefix = g.varint != 0;
        }
      }
    }
  }
  if (m.pieces.empty()) detail::fail(origin + ": no pieces: not a SentencePiece model");
  return m;
}

// ---- vocabularies ----

namespace {

const char kPieceSpace[] = "\xE2\x96\x81";  // U+2581, SentencePiece's space

// Added tokens that are control tokens by their look even where the config does not mark them
// special (as llama.cpp's converter decides: <|...|>, <｜...｜>, <pad>, <mask>, <unused...>).
bool looks_special(const std::string& t) {
  const auto starts = [&](const std::string& p) { return t.compare(0, p.size(), p) == 0; };
  const auto ends = [&](const std::string& s) {
    return t.size() >= s.size() && t.compare(t.size() - s.size(), s.size(), s) == 0;
  };
  return t == "<pad>" || t == "<mask>" || t == "<2mass>" || t == "[@BOS@]" ||
         (starts("<|") && ends("|>")) || (starts("<\xEF\xBD\x9C") && ends("\xEF\xBD\x9C>")) ||
         (starts("<unused") && ends(">"));
}

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  for (size_t pos = 0; (pos = s.find(from, pos)) != std::string::npos; pos += to.size()) {
    s.replace(pos, from.size(), to);
  }
  return s;
}

// An added token's type and text: control when special or special-looking, else user-defined
// with SentencePiece spaces written as spaces (user-defined tokens are matched in raw text).
void set_added_token(Vocabulary& v, size_t id, const std::string& content, bool special) {
  if (special || looks_special(content)) {
    v.tokens[id] = content;
    v.types[id] = TokenType::Control;
  } else {
    v.tokens[id] = replace_all(content, kPieceSpace, " ");
    v.types[id] = TokenType::UserDefined;
  }
}

// Pads v to n tokens with unused "[PADi]" tokens, as llama.cpp's converter does.
void pad_vocabulary(Vocabulary& v, size_t n, float pad_score) {
  for (size_t i = v.tokens.size(); i < n; ++i) {
    v.tokens.push_back("[PAD" + std::to_string(i) + "]");
    v.types.push_back(TokenType::Unused);
    if (v.model == "llama") v.scores.push_back(pad_score);
  }
}

[[noreturn]] void fail_too_many(const std::string& origin, size_t n_tokens, uint64_t n_vocab) {
  detail::fail(origin + ": the tokenizer has " + std::to_string(n_tokens) +
               " tokens but the model's vocab_size is " + std::to_string(n_vocab));
}

Vocabulary sentencepiece_vocabulary(const std::string& path, uint64_t n_vocab,
                                    SentencePieceModel* model_out) {
  const MappedFile file = MappedFile::open(path);
  SentencePieceModel m = SentencePieceModel::parse(file.data(), file.size(), path);
  if (m.model_type != SentencePieceModel::kBpe) {
    detail::fail(path + ": SentencePiece model type " + std::to_string(m.model_type) +
                 (m.model_type == SentencePieceModel::kUnigram ? " (unigram)" : "") +
                 " is not supported: sllm's SentencePiece tokenizer is BPE (type 2)");
  }
  if (n_vocab != 0 && m.pieces.size() > n_vocab) fail_too_many(path, m.pieces.size(), n_vocab);
  Vocabulary v;
  v.model = "llama";
  v.pre = "default";
  for (const SentencePieceModel::Piece& p : m.pieces) {
    v.tokens.push_back(p.piece);
    v.scores.push_back(p.score);
    v.types.push_back(TokenType(p.type));
  }
  v.add_space_prefix = m.add_dummy_prefix;
  // llama.cpp's converter makes its padding tokens with score -10000.
  pad_vocabulary(v, n_vocab, -10000.f);
  *model_out = std::move(m);
  return v;
}

// ---- byte-level BPE pre-tokenizers ----

// The pre-tokenizer families tokenizer.ggml.pre names, each as the steps of a Hugging Face
// pre_tokenizer (see pre_tokenizer_steps), with the regexes of their tokenizer.json files.
const char kGpt2Regex[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
const char kLlama3Regex[] =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char kQwen2Regex[] =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char kNewlineRegex[] = "[\r\n]";
const char kCjkRegex[] = "[一-龥ࠀ-一가-퟿]+";
// DeepSeek LLM's letters of cased scripts: copies of its tokenizer.json differ in the Unicode
// normalization of some characters of this class (U+1F7D or U+03CE, U+212A or 'K'), so it is
// matched by its start, which no other family shares.
const char kDeepseekLettersStart[] = "\\s?[A-Za-z\u00B5\u00C0-\u00D6\u00D8-\u00F6\u00F8-\u01BA";
const char kDeepseekPunctRegex[] = "\\s?[!-/:-~！-／：-～‘-‟　-。]+";

// A step of a pre-tokenizer family: the step's text, or (prefix) its start.
struct FamilyStep {
  FamilyStep(const char* t) : text(t) {}  // NOLINT: a step is written as its text
  FamilyStep(std::string t, bool p) : text(std::move(t)), prefix(p) {}
  std::string text;
  bool prefix = false;
  bool matches(const std::string& step) const {
    return prefix ? step.compare(0, text.size(), text) == 0 : step == text;
  }
};

FamilyStep split_step(const std::string& regex, bool prefix = false) {
  return FamilyStep("Split(" + regex + (prefix ? "" : ")"), prefix);
}

struct PreTokenizerFamily {
  const char* pre;
  std::vector<FamilyStep> steps;
  bool matches(const std::vector<std::string>& s) const {
    if (s.size() != steps.size()) return false;
    for (size_t i = 0; i < s.size(); ++i) {
      if (!steps[i].matches(s[i])) return false;
    }
    return true;
  }
};

const std::vector<PreTokenizerFamily>& pre_tokenizer_families() {
  static const std::vector<PreTokenizerFamily> families = {
      {"gpt-2", {"ByteLevel(regex)"}},
      {"gpt-2", {split_step(kGpt2Regex), "ByteLevel"}},
      {"llama-bpe", {split_step(kLlama3Regex), "ByteLevel"}},
      {"qwen2", {split_step(kQwen2Regex), "ByteLevel"}},
      {"starcoder", {"Digits(individual)", "ByteLevel(regex)"}},
      {"falcon",
       {"Punctuation(Contiguous)", "ByteLevel(regex)", "Digits", split_step("[0-9][0-9][0-9]")}},
      {"deepseek-coder",
       {split_step(kNewlineRegex), split_step(R"(\s?\p{L}+)"), split_step(R"(\s?\p{P}+)"),
        split_step(kCjkRegex), "Digits(individual)", "ByteLevel"}},
      {"deepseek-llm",
       {split_step(kNewlineRegex), split_step(kDeepseekLettersStart, true),
        split_step(kDeepseekPunctRegex), split_step(R"(\s+$)"), split_step(kCjkRegex),
        "Digits(individual)", "ByteLevel"}},
  };
  return families;
}

// A pre_tokenizer as a list of steps: "Split(REGEX)", "ByteLevel" or "ByteLevel(regex)" (with
// GPT-2's built-in split), "Digits" or "Digits(individual)", "Punctuation(BEHAVIOR)", or the
// type of any other pre-tokenizer. Split steps other than isolated regex matches are spelled out.
void pre_tokenizer_steps(const nlohmann::json& p, std::vector<std::string>& steps) {
  if (p.is_null()) return;
  const std::string type = p.value("type", "");
  if (type == "Sequence") {
    const auto it = p.find("pretokenizers");
    if (it != p.end() && it->is_array()) {
      for (const nlohmann::json& q : *it) pre_tokenizer_steps(q, steps);
    }
  } else if (type == "ByteLevel") {
    std::string s = "ByteLevel";
    const bool regex = p.value("use_regex", true), prefix = p.value("add_prefix_space", false);
    if (regex || prefix)
      s += std::string("(") + (regex ? "regex" : "") + (regex && prefix ? "," : "") +
           (prefix ? "prefix space" : "") + ")";
    steps.push_back(s);
  } else if (type == "Split") {
    const nlohmann::json pattern = p.value("pattern", nlohmann::json::object());
    std::string s;
    if (pattern.contains("Regex") && pattern["Regex"].is_string()) {
      s = "Split(" + pattern["Regex"].get<std::string>() + ")";
    } else if (pattern.contains("String") && pattern["String"].is_string()) {
      s = "Split(string " + pattern["String"].get<std::string>() + ")";
    } else {
      s = "Split(" + json_brief(pattern) + ")";
    }
    const std::string behavior = p.value("behavior", "");
    if (behavior != "Isolated") s += "[" + behavior + "]";
    if (p.value("invert", false)) s += "[inverted]";
    steps.push_back(s);
  } else if (type == "Digits") {
    steps.push_back(p.value("individual_digits", false) ? "Digits(individual)" : "Digits");
  } else if (type == "Punctuation") {
    steps.push_back("Punctuation(" + p.value("behavior", "Isolated") + ")");
  } else {
    steps.push_back(type.empty() ? json_brief(p) : type);
  }
}

// tokenizer.ggml.pre for a byte-level BPE tokenizer.json. The Llama 3 split with merges applied
// to every word is "smaug-bpe"; Llama 3 itself takes a word that is a token whole
// (model.ignore_merges), which "llama-bpe" means.
std::string detect_pre_tokenizer(const nlohmann::json& tokenizer, const std::string& origin) {
  std::vector<std::string> steps;
  pre_tokenizer_steps(tokenizer.value("pre_tokenizer", nlohmann::json()), steps);
  for (const PreTokenizerFamily& f : pre_tokenizer_families()) {
    if (!f.matches(steps)) continue;
    const bool ignore_merges = tokenizer["model"].value("ignore_merges", false);
    if (std::string(f.pre) == "llama-bpe" && !ignore_merges) return "smaug-bpe";
    return f.pre;
  }
  std::string list;
  for (const std::string& s : steps) list += (list.empty() ? "" : ", ") + s;
  detail::fail(origin + ": pre_tokenizer [" + list +
               "] is not one sllm knows (those of gpt-2, llama3, qwen2, starcoder, falcon, "
               "deepseek-coder, deepseek-llm); tokenizing with another family's split would "
               "give wrong token ids");
}

// The tokens of a tokenizer.json's model.vocab and added_tokens in id order, with their types;
// ids that neither names (and those up to n_vocab) become unused "[PADn]" tokens.
Vocabulary json_vocabulary(const nlohmann::json& j, const nlohmann::json::const_iterator& model,
                           const std::string& path, uint64_t n_vocab) {
  const auto vocab = model->find("vocab");
  if (vocab == model->end() || !vocab->is_object()) detail::fail(path + ": no model.vocab object");
  const nlohmann::json added = j.value("added_tokens", nlohmann::json::array());
  if (!added.is_array()) detail::fail(path + ": added_tokens is not a list");

  const auto check_id = [&](const nlohmann::json& id, const std::string& token) -> size_t {
    if (!id.is_number_unsigned() || id.get<uint64_t>() >= kMaxTokens) {
      detail::fail(path + ": token '" + token + "' has id " + json_brief(id) + ", not a token id");
    }
    return id.get<size_t>();
  };
  size_t n = 0;
  for (auto it = vocab->begin(); it != vocab->end(); ++it) {
    n = std::max(n, check_id(it.value(), it.key()) + 1);
  }
  for (const nlohmann::json& a : added) {
    if (!a.is_object() || !a.contains("content") || !a["content"].is_string()) {
      detail::fail(path + ": added_tokens entry " + json_brief(a) + " has no content");
    }
    n = std::max(n, check_id(a.value("id", nlohmann::json()), a["content"]) + 1);
  }
  if (n_vocab != 0 && n > n_vocab) fail_too_many(path, n, n_vocab);

  Vocabulary v;
  v.tokens.resize(n);
  v.types.assign(n, TokenType::Unused);
  for (auto it = vocab->begin(); it != vocab->end(); ++it) {
    const size_t id = it.value().get<size_t>();
    if (v.types[id] != TokenType::Unused) {
      detail::fail(path + ": tokens '" + v.tokens[id] + "' and '" + it.key() + "' share id " +
                   std::to_string(id));
    }
    v.tokens[id] = it.key();
    v.types[id] = TokenType::Normal;
  }
  for (const nlohmann::json& a : added) {
    set_added_token(v, a["id"].get<size_t>(), a["content"].get<std::string>(),
                    a.value("special", false));
  }
  for (size_t id = 0; id < n; ++id) {
    if (v.types[id] == TokenType::Unused) v.tokens[id] = "[PAD" + std::to_string(id) + "]";
  }
  pad_vocabulary(v, n_vocab, 0);
  return v;
}

nlohmann::json::const_iterator json_model(const nlohmann::json& j, const std::string& path) {
  const auto model = j.find("model");
  if (model == j.end() || !model->is_object()) detail::fail(path + ": no \"model\" object");
  return model;
}

Vocabulary byte_level_vocabulary(const nlohmann::json& j, const std::string& path,
                                 uint64_t n_vocab) {
  const auto model = json_model(j, path);
  std::vector<std::string> steps;
  pre_tokenizer_steps(j.value("pre_tokenizer", nlohmann::json()), steps);
  const bool byte_level = std::any_of(steps.begin(), steps.end(), [](const std::string& s) {
    return s.compare(0, 9, "ByteLevel") == 0;
  });
  if (!byte_level) {
    detail::fail(path +
                 ": a BPE tokenizer without a ByteLevel pre-tokenizer (SentencePiece-"
                 "style, byte_fallback " +
                 std::string(model->value("byte_fallback", false) ? "true" : "false") +
                 ") is not supported: convert it from its tokenizer.model");
  }
  Vocabulary v = json_vocabulary(j, model, path, n_vocab);
  v.model = "gpt2";
  v.pre = detect_pre_tokenizer(j, path);

  // Merges: "a b" strings, or [a, b] pairs (tokenizers >= 0.20), whose spaces GGUF writes as
  // U+0120 as the byte-level alphabet does.
  const nlohmann::json merges = model->value("merges", nlohmann::json::array());
  v.merges.reserve(merges.size());
  for (const nlohmann::json& m : merges) {
    if (m.is_string()) {
      v.merges.push_back(m.get<std::string>());
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      v.merges.push_back(replace_all(m[0].get<std::string>(), " ", "\xC4\xA0") + " " +
                         replace_all(m[1].get<std::string>(), " ", "\xC4\xA0"));
    } else {
      detail::fail(path + ": model.merges entry " + json_brief(m) + " is not \"a b\" or [a, b]");
    }
  }
  return v;
}

// A WordPiece tokenizer.json (BERT's) as GGUF's "bert" vocabulary. sllm's and llama.cpp's
// WordPiece implement BertTokenizer with lower-casing, so the normalizer and pre-tokenizer must
// be BERT's own; anything else would give other token ids.
Vocabulary wordpiece_vocabulary(const nlohmann::json& j, const std::string& path,
                                uint64_t n_vocab) {
  const auto model = json_model(j, path);
  const nlohmann::json normalizer = j.value("normalizer", nlohmann::json());
  if (!normalizer.is_object() || normalizer.value("type", nlohmann::json()) != "BertNormalizer") {
    detail::fail(path + ": the normalizer " + json_brief(normalizer) +
                 " is not a BertNormalizer, the one sllm's WordPiece tokenizer implements");
  }
  // strip_accents null follows lowercase, as BertNormalizer does.
  const nlohmann::json strip = normalizer.value("strip_accents", nlohmann::json());
  if (normalizer.value("lowercase", nlohmann::json()) != true || strip == false) {
    detail::fail(path +
                 ": a cased WordPiece tokenizer (BertNormalizer lowercase false or "
                 "strip_accents false) is not supported: sllm's WordPiece lower-cases and strips "
                 "accents as the uncased BERT models do");
  }
  const nlohmann::json pre = j.value("pre_tokenizer", nlohmann::json());
  if (!pre.is_object() || pre.value("type", nlohmann::json()) != "BertPreTokenizer") {
    detail::fail(path + ": the pre_tokenizer " + json_brief(pre) +
                 " is not a BertPreTokenizer, the one sllm's WordPiece tokenizer implements");
  }
  if (model->value("continuing_subword_prefix", nlohmann::json("##")) != "##") {
    detail::fail(path + ": model.continuing_subword_prefix is not \"##\"");
  }
  Vocabulary v = json_vocabulary(j, model, path, n_vocab);
  v.model = "bert";
  // What llama.cpp's converter names the BERT pre-tokenization of the uncased vocabularies
  // (its WordPiece tokenizer reads no pre-tokenizer name).
  v.pre = "bert-bge";
  // GGUF's WordPiece tokens mark word starts rather than continuations: "##ing" is stored as
  // "ing" and "walk" as "\u2581walk"; bracketed tokens ("[CLS]", "[unused0]") stay as they are.
  for (std::string& t : v.tokens) {
    if (t.size() >= 2 && t.front() == '[' && t.back() == ']') continue;
    t = t.compare(0, 2, "##") == 0 ? t.substr(2) : kPieceSpace + t;
  }
  v.add_bos = true;  // [CLS] ... [SEP], which GGUF's "bert" model implies
  v.add_eos = true;
  return v;
}

// ---- special tokens ----

// The id a special token's text has: an added token's first, else the vocabulary's.
class TokenFinder {
 public:
  TokenFinder(const Vocabulary& v, const nlohmann::json& added) {
    if (added.is_array()) {
      for (const nlohmann::json& a : added) {
        if (a.is_object() && a.value("content", nlohmann::json()).is_string()) {
          added_.emplace(a["content"].get<std::string>(), a.value("id", -1));
        }
      }
    }
    for (size_t i = 0; i < v.tokens.size(); ++i) vocab_.emplace(v.tokens[i], int32_t(i));
  }
  int32_t find(const std::string& text) const {
    const auto a = added_.find(text);
    if (a != added_.end()) return a->second;
    const auto t = vocab_.find(text);
    return t == vocab_.end() ? -1 : t->second;
  }

 private:
  std::unordered_map<std::string, int32_t> added_, vocab_;
};

// The text of a tokenizer_config.json special token entry: "<s>" or {"content": "<s>", ...}.
std::optional<std::string> special_text(const nlohmann::json& entry) {
  if (entry.is_string()) return entry.get<std::string>();
  if (entry.is_object() && entry.value("content", nlohmann::json()).is_string()) {
    return entry["content"].get<std::string>();
  }
  return std::nullopt;
}

// A config's "{type}_token_id": an integer, or a list whose first element is used.
std::optional<int64_t> config_token_id(const JsonObject& config, const std::string& key) {
  const nlohmann::json* v = config.find_any({key.c_str()});
  if (v != nullptr && v->is_array() && !v->empty()) v = &(*v)[0];
  if (v == nullptr || !v->is_number_integer()) return std::nullopt;
  return v->get<int64_t>();
}

// True/false when the tokenizer.json post-processor's template starts (front) or ends with
// token_text, unset when it has no template.
std::optional<bool> template_adds(const nlohmann::json& processor, const std::string& token_text,
                                  bool front) {
  if (!processor.is_object()) return std::nullopt;
  const std::string type = processor.value("type", "");
  if (type == "Sequence") {
    for (const nlohmann::json& p : processor.value("processors", nlohmann::json::array())) {
      const std::optional<bool> r = template_adds(p, token_text, front);
      if (r) return r;
    }
    return std::nullopt;
  }
  if (type != "TemplateProcessing") return std::nullopt;
  const nlohmann::json single = processor.value("single", nlohmann::json::array());
  if (!single.is_array() || single.empty()) return false;
  const nlohmann::json& item = front ? single.front() : single.back();
  const nlohmann::json special =
      item.is_object() ? item.value("SpecialToken", nlohmann::json()) : nlohmann::json();
  return special.is_object() && special.value("id", "") == token_text;
}

}  // namespace

namespace {

// read_hf_tokenizer; current names the file being interpreted, for messages about JSON values of
// unexpected types.
HfTokenizer read_tokenizer_files(const std::string& dir, uint64_t n_vocab, std::string& current) {
  HfTokenizer t;
  const std::string spm_path = path_join(dir, "tokenizer.model");
  const std::string json_path = path_join(dir, "tokenizer.json");
  const bool spm = is_regular_file(spm_path);
  nlohmann::json tokenizer_json;  // null when absent
  if (is_regular_file(json_path)) {
    tokenizer_json = read_json_file(json_path);
    if (!tokenizer_json.is_object()) detail::fail(json_path + ": expected a JSON object");
  }
  SentencePieceModel spm_model;
  if (spm) {
    t.vocab = sentencepiece_vocabulary(spm_path, n_vocab, &spm_model);
    t.files.push_back(spm_path);
  } else if (!tokenizer_json.is_null()) {
    current = json_path;
    const nlohmann::json& model = tokenizer_json.value("model", nlohmann::json());
    const std::string type = model.is_object() ? model.value("type", "") : "";
    if (type == "BPE") {
      t.vocab = byte_level_vocabulary(tokenizer_json, json_path, n_vocab);
    } else if (type == "WordPiece") {
      t.vocab = wordpiece_vocabulary(tokenizer_json, json_path, n_vocab);
    } else {
      detail::fail(json_path + ": tokenizer model type '" + type +
                   "' is not supported (sllm converts byte-level BPE and WordPiece "
                   "tokenizer.json files, and SentencePiece tokenizer.model files)");
    }
    t.files.push_back(json_path);
  } else {
    detail::fail(dir + ": no tokenizer.model or tokenizer.json");
  }
  Vocabulary& v = t.vocab;

  const std::string tc_path = path_join(dir, "tokenizer_config.json");
  const JsonObject tokenizer_config = JsonObject::read_if_exists(tc_path);
  const JsonObject config = JsonObject::read_if_exists(path_join(dir, "config.json"));
  const JsonObject generation =
      JsonObject::read_if_exists(path_join(dir, "generation_config.json"));
  for (const JsonObject* j : {&tokenizer_config, &config, &generation}) {
    if (is_regular_file(j->origin())) t.files.push_back(j->origin());
  }

  current = tc_path;
  if (spm) {
    // Tokens added to a SentencePiece vocabulary: added_tokens.json, then tokenizer_config.json's
    // added_tokens_decoder, which may also retype tokens of the model (llama.cpp's order).
    const std::string added_path = path_join(dir, "added_tokens.json");
    if (is_regular_file(added_path)) {
      current = added_path;
      const JsonObject added = JsonObject::read(added_path);
      t.files.push_back(added_path);
      for (auto it = added.doc().begin(); it != added.doc().end(); ++it) {
        if (!it.value().is_number_unsigned()) added.fail(it.key(), "expected a token id");
        const uint64_t id = it.value().get<uint64_t>();
        if (id >= v.tokens.size()) {
          log(LogLevel::kWarn, added_path + ": token '" + it.key() + "' has id " +
                                   std::to_string(id) + ", past the vocabulary; ignoring it");
          continue;
        }
        v.tokens[id] = it.key();
        v.scores[id] = -1000.f;
        v.types[id] = TokenType::UserDefined;
      }
    }
    current = tc_path;
    const nlohmann::json* decoder = tokenizer_config.find_any({"added_tokens_decoder"});
    if (decoder != nullptr && decoder->is_object()) {
      for (auto it = decoder->begin(); it != decoder->end(); ++it) {
        const std::optional<std::string> content = special_text(it.value());
        char* end = nullptr;
        const unsigned long long id = std::strtoull(it.key().c_str(), &end, 10);
        if (!content || *end != '\0' || it.key().empty()) {
          tokenizer_config.fail("added_tokens_decoder", "entry '" + it.key() + "' is malformed");
        }
        if (id >= v.tokens.size()) {
          log(LogLevel::kWarn, tc_path + ": added token '" + *content + "' has id " + it.key() +
                                   ", past the vocabulary; ignoring it");
          continue;
        }
        set_added_token(v, size_t(id), *content, it.value().value("special", false));
        v.scores[id] = -1000.f;
      }
    }
    if (const std::optional<bool> p = tokenizer_config.find_bool("add_prefix_space")) {
      v.add_space_prefix = *p;
    }
  }

  // Special tokens, each from the first source that names one in the vocabulary: the token text
  // in tokenizer_config.json, the id in config.json, then in generation_config.json, then (for
  // SentencePiece) the model's trainer_spec.
  current = tokenizer_json.is_object() ? json_path : tc_path;
  const TokenFinder finder(v, tokenizer_json.is_object()
                                  ? tokenizer_json.value("added_tokens", nlohmann::json())
                                  : nlohmann::json());
  const bool wordpiece = v.model == "bert";
  // fallback: the token's text when no file names one (BertTokenizer's defaults).
  const auto resolve = [&](const std::string& type, int32_t spm_id,
                           const char* fallback = nullptr) -> int32_t {
    std::vector<std::pair<int64_t, std::string>> candidates;  // (id, where)
    const nlohmann::json* entry = tokenizer_config.find_any({(type + "_token").c_str()});
    if (entry != nullptr) {
      if (const std::optional<std::string> text = special_text(*entry)) {
        const int32_t id = finder.find(*text);
        if (id >= 0) candidates.emplace_back(id, tc_path);
      }
    }
    for (const JsonObject* j : {&config, &generation}) {
      if (const std::optional<int64_t> id = config_token_id(*j, type + "_token_id")) {
        candidates.emplace_back(*id, j->origin());
      }
    }
    if (spm && spm_id >= 0) candidates.emplace_back(spm_id, spm_path);
    if (wordpiece && fallback != nullptr && finder.find(fallback) >= 0) {
      candidates.emplace_back(finder.find(fallback), json_path);
    }
    for (const auto& [id, where] : candidates) {
      if (id >= 0 && uint64_t(id) < v.tokens.size()) return int32_t(id);
      log(LogLevel::kWarn, where + ": " + type + " token id " + std::to_string(id) +
                               " is not in the vocabulary of " + std::to_string(v.tokens.size()) +
                               "; ignoring it");
    }
    return -1;
  };
  v.bos = resolve("bos", spm_model.bos_id);
  v.eos = resolve("eos", spm_model.eos_id);
  v.unk = resolve("unk", spm_model.unk_id, "[UNK]");
  t.sep = resolve("sep", -1, "[SEP]");
  v.pad = resolve("pad", spm_model.pad_id, "[PAD]");
  t.cls = resolve("cls", -1, "[CLS]");
  t.mask = resolve("mask", -1, "[MASK]");

  // Whether encoding adds BOS / EOS: tokenizer_config.json says so, else the post-processor's
  // template; else llama.cpp's defaults (SentencePiece and Llama 3 add BOS, when they have one).
  const nlohmann::json processor = tokenizer_json.is_object()
                                       ? tokenizer_json.value("post_processor", nlohmann::json())
                                       : nlohmann::json();
  const auto adds = [&](const char* key, int32_t id, bool front, bool fallback) {
    if (const std::optional<bool> b = tokenizer_config.find_bool(key)) return *b;
    if (id >= 0) {
      if (const std::optional<bool> b = template_adds(processor, v.tokens[id], front)) return *b;
    }
    return fallback;
  };
  if (!wordpiece) {  // WordPiece always adds [CLS] and [SEP]
    v.add_bos = adds("add_bos_token", v.bos, true, v.bos >= 0 && (spm || v.pre == "llama-bpe"));
    v.add_eos = adds("add_eos_token", v.eos, false, false);
  }

  current = tc_path;
  // The chat template: tokenizer_config.json's (a string, or a list of named templates), else
  // chat_template.jinja beside it (newer transformers save it so).
  const nlohmann::json* tmpl = tokenizer_config.find_any({"chat_template"});
  if (tmpl != nullptr && tmpl->is_string()) {
    t.chat_template = tmpl->get<std::string>();
  } else if (tmpl != nullptr && tmpl->is_array()) {
    for (const nlohmann::json& choice : *tmpl) {
      const std::string name = choice.is_object() ? choice.value("name", "") : "";
      if (name.empty() || !choice.value("template", nlohmann::json()).is_string()) {
        tokenizer_config.fail("chat_template", "entries must have a name and a template");
      }
      const std::string text = choice["template"].get<std::string>();
      if (name == "default") {
        t.chat_template = text;
      } else {
        std::string key;  // letters, digits and '_' only, as llama.cpp's converter keeps them
        for (char c : name) key += std::isalnum((unsigned char)c) ? c : '_';
        t.named_chat_templates.emplace_back(key, text);
      }
    }
  } else if (tmpl != nullptr) {
    tokenizer_config.fail("chat_template", "expected a string or a list of named templates");
  } else {
    const std::string jinja = path_join(dir, "chat_template.jinja");
    if (is_regular_file(jinja)) {
      const MappedFile f = MappedFile::open(jinja);
      t.chat_template.assign(reinterpret_cast<const char*>(f.data()), f.size());
      t.files.push_back(jinja);
    }
  }
  return t;
}

}  // namespace

HfTokenizer read_hf_tokenizer(const std::string& dir, uint64_t n_vocab) {
  std::string current = dir;
  try {
    return read_tokenizer_files(dir, n_vocab, current);
  } catch (const nlohmann::json::exception& e) {
    detail::fail(current + ": a value of an unexpected type: " + json_error_text(e));
  }
}

void add_tokenizer_metadata(GgufWriter& w, const HfTokenizer& t) {
  const Vocabulary& v = t.vocab;
  w.set("tokenizer.ggml.model", GgufValue::string(v.model));
  w.set("tokenizer.ggml.pre", GgufValue::string(v.pre));
  w.set("tokenizer.ggml.tokens", GgufValue::string_array(v.tokens));
  if (v.model == "llama") w.set("tokenizer.ggml.scores", GgufValue::f32_array(v.scores));
  std::vector<int32_t> types;
  types.reserve(v.types.size());
  for (TokenType type : v.types) types.push_back(int32_t(type));
  w.set("tokenizer.ggml.token_type", GgufValue::i32_array(types));
  if (v.model == "gpt2") w.set("tokenizer.ggml.merges", GgufValue::string_array(v.merges));
  const std::pair<const char*, int32_t> ids[] = {
      {"tokenizer.ggml.bos_token_id", v.bos},     {"tokenizer.ggml.eos_token_id", v.eos},
      {"tokenizer.ggml.unknown_token_id", v.unk}, {"tokenizer.ggml.seperator_token_id", t.sep},
      {"tokenizer.ggml.padding_token_id", v.pad}, {"tokenizer.ggml.cls_token_id", t.cls},
      {"tokenizer.ggml.mask_token_id", t.mask},
  };
  for (const auto& [key, id] : ids) {
    if (id >= 0) w.set(key, GgufValue::u32(uint32_t(id)));
  }
  // A "bert" vocabulary implies [CLS] ... [SEP]; llama.cpp's converter writes no flags for it.
  if (v.model != "bert") {
    w.set("tokenizer.ggml.add_bos_token", GgufValue::boolean(v.add_bos));
    w.set("tokenizer.ggml.add_eos_token", GgufValue::boolean(v.add_eos));
  }
  if (v.model == "llama") {
    w.set("tokenizer.ggml.add_space_prefix", GgufValue::boolean(v.add_space_prefix));
  }
  if (!t.chat_template.empty())
    w.set("tokenizer.chat_template", GgufValue::string(t.chat_template));
  std::vector<std::string> names;
  for (const auto& [name, text] : t.named_chat_templates) {
    w.set("tokenizer.chat_template." + name, GgufValue::string(text));
    names.push_back(name);
  }
  if (!names.empty()) w.set("tokenizer.chat_templates", GgufValue::string_array(names));
}

}  // namespace hf
}  // namespace sllm
