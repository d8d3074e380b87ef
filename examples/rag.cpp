// Retrieval-augmented generation: index a folder of text files as passages embedded by an
// embedding model, then answer a question from the passages closest to it (cosine similarity),
// citing them, with a chat model. See examples/README.md for models to use.
//   rag index -e EMBED.gguf -d FOLDER -o INDEX [--words N]
//   rag ask   -e EMBED.gguf -i INDEX -m CHAT.gguf -q QUESTION [-k K] [-n N] [--temp T]
//
// The index file (little-endian):
//   "SLLMRAG\0"  u32 version (1)  u32 dims  u64 count  u32 n, the embedding model's name (n bytes)
//   count times: u32 n, source path (n bytes)  u32 n, passage text (n bytes)  f32[dims] vector
//   u64 FNV-1a hash of every byte before it
// Loading checks each of these; a damaged or foreign file is an sllm::Error that says what.
#define SLLM_IMPLEMENTATION
#include "sllm.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

namespace {

constexpr char kMagic[8] = {'S', 'L', 'L', 'M', 'R', 'A', 'G', '\0'};
constexpr uint32_t kVersion = 1;

struct Passage {
  std::string source;  // the file it comes from, relative to the indexed folder
  std::string text;
};

struct Index {
  std::string model_name;  // of the embedding model
  std::vector<Passage> passages;
  sllm::Embeddings vectors;  // row i: passage i, unit length
};

[[noreturn]] void fail(const std::string& message) {
  throw sllm::Error(message);
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open " + path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string model_name(const sllm::Model& model) {
  return model.gguf().get_or<std::string>(
      "general.name", std::filesystem::path(model.gguf().path()).filename().string());
}

// Passages of at most max_words words: paragraphs (split at blank lines) joined while they fit,
// longer ones cut into pieces of max_words.
std::vector<std::string> split_passages(const std::string& text, size_t max_words) {
  std::vector<std::string> passages;
  std::string current;
  size_t current_words = 0;
  const auto flush = [&] {
    if (current_words > 0) passages.push_back(current);
    current.clear();
    current_words = 0;
  };
  std::istringstream lines(text);
  std::string line, paragraph;
  const auto add_paragraph = [&] {
    std::istringstream in(paragraph);
    std::vector<std::string> words;
    for (std::string w; in >> w;) words.push_back(w);
    paragraph.clear();
    if (words.empty()) return;
    if (current_words + words.size() > max_words) flush();
    for (const std::string& w : words) {
      if (current_words == max_words) flush();
      current += (current_words++ > 0 ? " " : "") + w;
    }
  };
  while (std::getline(lines, line)) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) {
      add_paragraph();
    } else {
      paragraph += line + "\n";
    }
  }
  add_paragraph();
  flush();
  return passages;
}

Index build_index(const sllm::Model& embedder, const std::string& folder, size_t max_words) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(folder)) fail(folder + " is not a folder (-d)");
  std::vector<fs::path> files;
  for (const auto& entry : fs::recursive_directory_iterator(folder)) {
    const std::string ext = entry.path().extension().string();
    if (entry.is_regular_file() && (ext == ".txt" || ext == ".md")) files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  Index index;
  index.model_name = model_name(embedder);
  std::vector<std::string> texts;
  for (const fs::path& file : files) {
    for (std::string& text : split_passages(read_file(file.string()), max_words)) {
      index.passages.push_back({fs::relative(file, folder).string(), text});
      texts.push_back(std::move(text));
    }
  }
  if (texts.empty()) fail(folder + " has no .txt or .md file with text to index");
  index.vectors = sllm::embed(embedder, texts);
  return index;
}

// ---- the index file ----

class Writer {
 public:
  void bytes(const void* p, size_t n) { data_.append(static_cast<const char*>(p), n); }
  template <typename T>
  void value(T v) {
    bytes(&v, sizeof v);
  }
  void text(const std::string& s) {
    value(uint32_t(s.size()));
    bytes(s.data(), s.size());
  }
  std::string& data() { return data_; }

 private:
  std::string data_;
};

uint64_t fnv1a(const char* p, size_t n) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; ++i) h = (h ^ uint8_t(p[i])) * 0x100000001b3ull;
  return h;
}

void save_index(const Index& index, const std::string& path) {
  Writer w;
  w.bytes(kMagic, sizeof kMagic);
  w.value(kVersion);
  w.value(uint32_t(index.vectors.n_embd));
  w.value(uint64_t(index.passages.size()));
  w.text(index.model_name);
  for (size_t i = 0; i < index.passages.size(); ++i) {
    w.text(index.passages[i].source);
    w.text(index.passages[i].text);
    w.bytes(index.vectors.row(i), index.vectors.n_embd * sizeof(float));
  }
  w.value(fnv1a(w.data().data(), w.data().size()));
  const std::string tmp = path + ".tmp";
  std::ofstream out(tmp, std::ios::binary);
  out.write(w.data().data(), std::streamsize(w.data().size()));
  out.close();
  if (!out || std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    fail("cannot write " + path);
  }
}

// Reads the file's fields in order, each checked against what is left of it.
class Reader {
 public:
  Reader(const std::string& data, const std::string& path) : data_(data), path_(path) {}
  void bytes(void* p, size_t n, const char* what) {
    if (n > data_.size() - pos_) {
      fail(path_ + ": damaged index: " + what + " at byte " + std::to_string(pos_) +
           " runs past the end of the file (" + std::to_string(data_.size()) + " bytes)");
    }
    std::memcpy(p, data_.data() + pos_, n);
    pos_ += n;
  }
  template <typename T>
  T value(const char* what) {
    T v;
    bytes(&v, sizeof v, what);
    return v;
  }
  std::string text(const char* what) {
    std::string s(value<uint32_t>(what), '\0');
    bytes(s.data(), s.size(), what);
    return s;
  }
  size_t pos() const { return pos_; }
  size_t left() const { return data_.size() - pos_; }

 private:
  const std::string& data_;
  const std::string& path_;
  size_t pos_ = 0;
};

Index load_index(const std::string& path) {
  const std::string data = read_file(path);
  Reader r(data, path);
  char magic[sizeof kMagic];
  r.bytes(magic, sizeof magic, "the magic");
  if (std::memcmp(magic, kMagic, sizeof kMagic) != 0) {
    fail(path + " is not an sllm RAG index (it does not start with \"SLLMRAG\")");
  }
  const uint32_t version = r.value<uint32_t>("the version");
  if (version != kVersion) {
    fail(path + ": index version " + std::to_string(version) + "; this program reads version " +
         std::to_string(kVersion) + " (build the index again)");
  }
  Index index;
  const uint32_t dims = r.value<uint32_t>("the dimensions");
  const uint64_t count = r.value<uint64_t>("the passage count");
  if (dims == 0 || dims > 65536) fail(path + ": damaged index: " + std::to_string(dims) + " dims");
  // Each passage takes at least its two lengths and its vector: a count the file cannot hold is
  // damage, found before anything that size is allocated.
  if (count == 0 || count > r.left() / (8 + uint64_t(dims) * 4)) {
    fail(path + ": damaged index: " + std::to_string(count) + " passages cannot fit in its " +
         std::to_string(data.size()) + " bytes");
  }
  index.model_name = r.text("the model name");
  index.vectors.n_texts = count;
  index.vectors.n_embd = dims;
  index.vectors.data.resize(count * dims);
  index.passages.resize(count);
  for (uint64_t i = 0; i < count; ++i) {
    index.passages[i].source = r.text("a source path");
    index.passages[i].text = r.text("a passage");
    r.bytes(index.vectors.data.data() + i * dims, dims * sizeof(float), "a vector");
  }
  const size_t hashed = r.pos();
  const uint64_t hash = r.value<uint64_t>("the checksum");
  if (r.left() != 0) {
    fail(path + ": damaged index: " + std::to_string(r.left()) + " bytes after its end");
  }
  if (hash != fnv1a(data.data(), hashed)) {
    fail(path + ": damaged index: the checksum does not match its contents");
  }
  return index;
}

// ---- asking ----

// The k passages most similar to the question, best first.
std::vector<size_t> retrieve(const Index& index, const std::vector<float>& question, size_t k) {
  std::vector<float> score(index.passages.size());
  for (size_t i = 0; i < score.size(); ++i) {
    score[i] = sllm::cosine_similarity(index.vectors.row(i), question.data(), question.size());
  }
  std::vector<size_t> order(score.size());
  std::iota(order.begin(), order.end(), size_t{0});
  k = std::min(k, order.size());
  std::partial_sort(order.begin(), order.begin() + ptrdiff_t(k), order.end(),
                    [&](size_t a, size_t b) { return score[a] > score[b]; });
  order.resize(k);
  for (size_t rank = 0; rank < k; ++rank) {
    std::fprintf(stderr, "[%zu] %.3f %s: %.70s...\n", rank + 1, double(score[order[rank]]),
                 index.passages[order[rank]].source.c_str(),
                 index.passages[order[rank]].text.c_str());
  }
  return order;
}

std::string prompt_for(const Index& index, const std::vector<size_t>& best,
                       const std::string& question) {
  std::string p =
      "Answer the question from the passages below only, and cite the passages you use by "
      "their numbers, like [1].\n\n";
  for (size_t rank = 0; rank < best.size(); ++rank) {
    const Passage& passage = index.passages[best[rank]];
    p += "[" + std::to_string(rank + 1) + "] (" + passage.source + ") " + passage.text + "\n\n";
  }
  return p + "Question: " + question + "\nAnswer:";
}

int ask(const sllm::Model& embedder, const Index& index, const std::string& chat_path,
        const std::string& question, size_t k, const sllm::GenerateOptions& options) {
  if (index.vectors.n_embd != embedder.config().n_embd) {
    fail("the index holds vectors of " + std::to_string(index.vectors.n_embd) + " dims (made by " +
         index.model_name + "), but " + embedder.gguf().path() + " makes " +
         std::to_string(embedder.config().n_embd) + "; use the model that built it");
  }
  const sllm::Embeddings q = sllm::embed(embedder, {question});
  const std::vector<size_t> best =
      retrieve(index, std::vector<float>(q.row(0), q.row(0) + q.n_embd), k);
  const std::string prompt = prompt_for(index, best, question);

  const sllm::Model chat_model = sllm::Model::open(chat_path);
  sllm::Session session(chat_model);
  const auto print = [](std::string_view piece) { std::cout << piece << std::flush; };
  // Chat models answer in their chat format; base models (no template) continue the prompt.
  if (chat_model.gguf().has("tokenizer.chat_template")) {
    sllm::Chat chat(session);
    chat.add(sllm::ChatRole::kUser, prompt);
    chat.respond(options, print);
  } else {
    session.generate(prompt, options, print);
  }
  std::cout << "\n\nSources:";
  for (size_t rank = 0; rank < best.size(); ++rank) {
    std::cout << " [" << rank + 1 << "] " << index.passages[best[rank]].source;
  }
  std::cout << "\n";
  return 0;
}

const char kUsage[] =
    "usage: rag index -e EMBED.gguf -d FOLDER -o INDEX [--words N]\n"
    "       rag ask   -e EMBED.gguf -i INDEX -m CHAT.gguf -q QUESTION [-k K] [-n N] [--temp T]\n"
    "\n"
    "index: splits the .txt and .md files under FOLDER into passages of at most N words\n"
    "       (default 80), embeds them and writes the index file.\n"
    "ask:   retrieves the K passages closest to QUESTION (default 3; shown on stderr) and\n"
    "       streams the chat model's answer from them (at most N tokens, default 256;\n"
    "       temperature T, default 0), then the sources.\n";

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || (std::string(argv[1]) != "index" && std::string(argv[1]) != "ask")) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  const std::string command = argv[1];
  std::string embed_path, folder, index_path, chat_path, question;
  size_t words = 80, k = 3;
  sllm::GenerateOptions options;
  options.max_tokens = 256;
  options.temperature = 0;
  try {
    for (int i = 2; i < argc; ++i) {
      const std::string flag = argv[i];
      if (i + 1 >= argc) throw std::invalid_argument(flag + " needs a value");
      const std::string value = argv[++i];
      if (flag == "-e") {
        embed_path = value;
      } else if (flag == "-d") {
        folder = value;
      } else if (flag == "-o" || flag == "-i") {
        index_path = value;
      } else if (flag == "-m") {
        chat_path = value;
      } else if (flag == "-q") {
        question = value;
      } else if (flag == "--words") {
        words = std::stoul(value);
      } else if (flag == "-k") {
        k = std::stoul(value);
      } else if (flag == "-n") {
        options.max_tokens = std::stoi(value);
      } else if (flag == "--temp") {
        options.temperature = std::stof(value);
      } else {
        throw std::invalid_argument("unknown option " + flag);
      }
    }
    const bool indexing = command == "index";
    if (embed_path.empty() || index_path.empty() || (indexing && folder.empty()) ||
        (!indexing && (chat_path.empty() || question.empty())) || words == 0 || k == 0) {
      throw std::invalid_argument("missing or zero option");
    }
  } catch (const std::exception& e) {  // std::stoul and friends throw std::logic_error
    std::fprintf(stderr, "rag: %s\n%s", e.what(), kUsage);
    return 2;
  }
  try {
    const sllm::Model embedder = sllm::Model::open(embed_path);
    if (command == "index") {
      const Index index = build_index(embedder, folder, words);
      save_index(index, index_path);
      std::fprintf(stderr, "rag: %zu passages of %s indexed in %s (%zu dims, %s)\n",
                   index.passages.size(), folder.c_str(), index_path.c_str(), index.vectors.n_embd,
                   index.model_name.c_str());
      return 0;
    }
    return ask(embedder, load_index(index_path), chat_path, question, k, options);
  } catch (const sllm::Error& e) {
    std::fprintf(stderr, "rag: error: %s\n", e.what());
    return 1;
  }
}
