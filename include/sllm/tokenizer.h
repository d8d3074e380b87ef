// Tokenizer layer: text <-> token ids, from the tokenizer.ggml.* metadata of a GGUF file.
// Two models, as llama.cpp names them in tokenizer.ggml.model:
//  - "llama": SentencePiece BPE. Adjacent pieces merge while the merged piece is in the
//    vocabulary, highest score first; characters without a token become <0xNN> byte tokens.
//  - "gpt2": byte-level BPE. The text is split into words by the pre-tokenizer named in
//    tokenizer.ggml.pre (regular expressions written by hand over Unicode classes), each word's
//    bytes map to printable characters, and pairs merge by rank (tokenizer.ggml.merges).
//  - "bert": WordPiece, as Hugging Face's BertTokenizer (lower-casing) does it: control
//    characters dropped, the text lower-cased without accents (NFD, nonspacing marks removed;
//    Hangul keeps all its jamo), split at whitespace, around punctuation and around CJK
//    ideographs; each word is then the longest vocabulary pieces from its start, or [UNK] when
//    it has no such split (or more than 100 characters). llama.cpp's GGUF vocabularies write a
//    word's first piece with SentencePiece's "▁" in front and continuation pieces ("##s" in
//    Hugging Face's vocab.txt) bare. BOS is [CLS] and EOS is [SEP].
#include <array>
#include <unordered_map>

namespace sllm {

// Token types, numbered as in tokenizer.ggml.token_type.
enum class TokenType : int32_t {
  Undefined = 0,
  Normal = 1,
  Unknown = 2,
  Control = 3,      // BOS, EOS, chat markers: matched in text only when parsing specials
  UserDefined = 4,  // always matched whole in the text, before any splitting
  Unused = 5,
  Byte = 6,  // "<0xNN>": one byte, for SentencePiece byte fallback
};

// What a tokenizer is built from: the tokenizer.ggml.* metadata with every default resolved.
// Tokenizer::from_gguf fills one from a file; tests and converters may fill one by hand.
struct Vocabulary {
  std::string model = "llama";  // "llama" (SentencePiece), "gpt2" (byte-level BPE) or "bert"
                                // (WordPiece)
  std::string pre = "default";  // pre-tokenizer of "gpt2" (tokenizer.ggml.pre)
  std::vector<std::string> tokens;
  std::vector<float> scores;        // "llama": merge priority, higher first (empty: all 0)
  std::vector<TokenType> types;     // empty: all Normal
  std::vector<std::string> merges;  // "gpt2": "left right", highest priority first
  int32_t bos = -1;                 // -1: the vocabulary has no such token
  int32_t eos = -1;
  int32_t eot = -1;  // end of turn, for chat models
  int32_t eom = -1;  // end of message
  int32_t unk = -1;
  int32_t pad = -1;
  bool add_bos = false;           // encode(add_special = true) starts with BOS
  bool add_eos = false;           // ... and ends with EOS
  bool add_space_prefix = false;  // "llama": the text is encoded as if it began with a space
};

namespace detail {

// The pre-tokenizer patterns, each a regular expression of a Hugging Face tokenizer config.
// A pre-tokenizer applies a sequence of them; each splits every piece of text into its matches
// and the runs of text between matches (Hugging Face's "Isolated" split behaviour).
enum class SplitPattern : uint8_t {
  kGpt2,               // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  kLlama3,             // (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
                       //   ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
  kQwen2,              // the same with \p{N} in place of \p{N}{1,3}
  kNumber,             // \p{N}
  kNumbers,            // \p{N}+
  kAsciiDigits3,       // [0-9][0-9][0-9]
  kFalconPunct,        // [\p{P}\$\+<=>\^~\|`]+
  kNewline,            // [\r\n]
  kSpaceLetters,       // \s?\p{L}+
  kSpacePunct,         // \s?\p{P}+
  kCjk,                // [一-龥ࠀ-一가-퟿]+
  kSpaceCasedLetters,  // \s?[A-Za-zµÀ-ÖØ-öø-ƺ...]+ (DeepSeek LLM: letters of cased scripts)
  kSpaceAsciiPunct,    // \s?[!-/:-~！-／：-～‘-‟　-。]+
  kTrailingSpace,      // \s+$
};

// Unicode classes (kUnicode* bits) of a code point.
uint8_t unicode_classes(uint32_t cp);
// Appends the lower case of cp's canonical decomposition without its nonspacing marks (Mn):
// BERT's normalization of one code point (none, one or several).
void append_lower_without_accents(uint32_t cp, std::vector<uint32_t>& out);

// Splits text into words by applying each pattern in turn to the pieces the previous ones left.
// Invalid UTF-8 bytes count as code points of no class and stay in the words as they are.
std::vector<std::string_view> pre_tokenize(std::string_view text,
                                           const std::vector<SplitPattern>& patterns);

// Open-addressing index from strings to their positions in a vector of strings. It stores
// positions, not pointers, so it stays valid when the vector is moved or copied with it.
class StringIndex {
 public:
  void build(const std::vector<std::string>& strings);  // Error on a duplicate
  // Position of s in strings (the vector given to build), or -1.
  int32_t find(std::string_view s, const std::vector<std::string>& strings) const;

 private:
  std::vector<int32_t> slots_;  // -1: empty
  size_t mask_ = 0;
};

struct BpeMerge {
  int32_t rank;
  int32_t result;  // the token of the merged pair
};

}  // namespace detail

class Gguf;

class Tokenizer {
 public:
  // Reads tokenizer.ggml.model, .pre, .tokens, .scores, .token_type, .merges, the special token
  // ids (.bos_token_id, .eos_token_id, .eot_token_id, .eom_token_id, .unknown_token_id,
  // .padding_token_id; WordPiece: .cls_token_id and .seperator_token_id, so spelt) and
  // .add_bos_token, .add_eos_token, .add_space_prefix. Error names the key when one is missing,
  // malformed or unsupported. Absent keys take llama.cpp's defaults: SentencePiece has BOS 1,
  // EOS 2, unknown 0, adds BOS and the leading space; byte-level BPE adds BOS only for Llama 3,
  // and a missing .pre means "default" (GPT-2's split); WordPiece adds [CLS] and [SEP]. Special
  // ids past the vocabulary (0xFFFFFFFF is common) mean "none".
  static Tokenizer from_gguf(const Gguf& gguf);
  explicit Tokenizer(Vocabulary vocab);

  // Token ids of text. add_special adds BOS/EOS as the vocabulary asks (add_bos, add_eos).
  // parse_special matches control tokens (e.g. "<|im_start|>") written in the text; user-defined
  // tokens are always matched. Text the vocabulary cannot represent (no piece, no byte token)
  // becomes the unknown token in SentencePiece and WordPiece and is dropped in byte-level BPE.
  std::vector<int32_t> encode(std::string_view text, bool add_special, bool parse_special) const;
  // The bytes a token stands for: byte tokens and the byte-level mapping decoded, "▁" as a
  // space; control tokens give their text. Error when id is out of range.
  std::string token_text(int32_t id) const;
  // Decodes ids as one text (see Detokenizer); control and unknown tokens are left out unless
  // render_special.
  std::string decode(const std::vector<int32_t>& ids, bool render_special = false) const;

  int32_t n_vocab() const { return int32_t(pieces_.size()); }
  // The token as stored in the vocabulary (e.g. "▁the", "Ġthe", "<0x0A>"). Error when out of
  // range.
  const std::string& piece(int32_t id) const;
  TokenType token_type(int32_t id) const;
  // The token whose stored piece is exactly piece, or -1.
  int32_t find_piece(std::string_view piece) const { return index_.find(piece, pieces_); }
  int32_t bos() const { return bos_; }  // -1 when the vocabulary has none
  int32_t eos() const { return eos_; }
  int32_t unk() const { return unk_; }
  int32_t pad() const { return pad_; }
  // End of generation: EOS, EOT, EOM, and tokens such as <|im_end|>, <|eot_id|>, <|end|> and
  // <|endoftext|>. False for ids out of range.
  bool is_eog(int32_t id) const;
  bool add_bos() const { return add_bos_; }
  bool add_eos() const { return add_eos_; }
  // SentencePiece's leading space: encoding adds it, decoding drops it at the start of a text.
  // WordPiece marks words' first pieces with the same "▁": decoding drops it there too.
  bool add_space_prefix() const { return add_space_prefix_; }
  bool is_byte_level() const { return byte_level_; }

 private:
  struct Fragment;  // a run of text, or a special token matched in it
  std::vector<Fragment> split_specials(std::string_view text, bool parse_special) const;
  void encode_spm(std::string_view text, bool space_prefix, std::vector<int32_t>& out) const;
  void encode_bpe(std::string_view text, std::vector<int32_t>& out) const;
  void encode_bpe_word(std::string_view word, std::vector<int32_t>& out) const;
  void encode_wordpiece(std::string_view text, std::vector<int32_t>& out) const;
  // word: "▁" and the word's n_chars normalized characters.
  void encode_wordpiece_word(std::string_view word, size_t n_chars,
                             std::vector<int32_t>& out) const;
  void emit_bytes(std::string_view bytes, std::vector<int32_t>& out) const;
  void check_id(int32_t id) const;

  bool byte_level_ = false;  // "gpt2"
  bool wordpiece_ = false;   // "bert"; neither: SentencePiece
  size_t max_piece_bytes_ = 0;
  std::vector<std::string> pieces_;
  std::vector<std::string> texts_;  // token_text of each token
  std::vector<float> scores_;
  std::vector<TokenType> types_;
  detail::StringIndex index_;
  std::unordered_map<uint64_t, detail::BpeMerge> merges_;  // (left << 32 | right) -> merge
  std::array<int32_t, 256> byte_tokens_{};                 // byte -> its token, or -1
  std::vector<int32_t> specials_;              // matchable tokens, by first byte then longest first
  std::array<uint32_t, 257> special_begin_{};  // specials_ starting with byte b: [b], [b + 1]
  std::vector<detail::SplitPattern> splits_;
  std::vector<int32_t> eog_;    // sorted
  bool ignore_merges_ = false;  // a word that is a token is taken whole (Llama 3)
  int32_t bos_ = -1, eos_ = -1, unk_ = -1, pad_ = -1;
  bool add_bos_ = false, add_eos_ = false, add_space_prefix_ = false;
};

// Turns a stream of token ids into text as it arrives. push() returns the text completed so
// far; a UTF-8 character split over several tokens (byte tokens) is held back until its last
// byte arrives. flush() returns what is left (an incomplete character's bytes as they are).
class Detokenizer {
 public:
  // at_start: the stream begins a text, so SentencePiece's leading space is dropped from the
  // first piece (as it is after every BOS). Pass false to continue a text, e.g. the tokens
  // generated after a prompt. render_special: write control and unknown tokens' text (e.g.
  // "</s>"). The tokenizer must outlive the Detokenizer.
  explicit Detokenizer(const Tokenizer& tokenizer, bool at_start = true,
                       bool render_special = false);
  std::string push(int32_t id);
  std::string flush();

 private:
  const Tokenizer* tokenizer_;
  std::string pending_;  // bytes of an incomplete UTF-8 character
  bool strip_space_;
  bool render_special_;
};

}  // namespace sllm
