// `sllm embed`: one vector per line of text, from an embedding model (or a decoder with a
// pooling choice).
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "cli.h"
#include "sllm.h"

namespace sllm {
namespace cli {

namespace {

const char kEmbedUsage[] =
    "usage: sllm embed -m FILE (-p TEXT | -f FILE_OF_LINES) [options]\n"
    "\n"
    "Embeds each line of the input as one vector: the model's final hidden states pooled\n"
    "(mean, [CLS] or last token) and scaled to unit length. An empty line is an empty text\n"
    "([CLS] [SEP] alone in BERT); a line longer than the model's positions is an error, not cut.\n"
    "Prints 'embedding J: V1 V2 ...' per line, J counting from 0 (as llama-embedding does, but\n"
    "every value); statistics go to stderr.\n"
    "\n"
    "options:\n"
    "  -m, --model FILE         GGUF model (required)\n"
    "  -p, --prompt TEXT        the texts, one per line\n"
    "  -f, --file FILE          the texts, one per line of FILE ('-': standard input)\n"
    "      --pooling P          mean, cls or last (default: the model's <arch>.pooling_type;\n"
    "                           required for models without one, such as llama)\n"
    "      --no-normalize       print the pooled vectors as they are, not at unit length\n"
    "  -o, --output FILE        write float32 little-endian instead, one row per text\n"
    "      --json               print [[V1, V2, ...], ...] instead\n"
    "  -b, --batch-size N       tokens per forward pass, whole texts only (default 512; 1:\n"
    "                           one text at a time)\n"
    "  -t, --threads N          threads (default: OMP_NUM_THREADS, else all cores)\n"
    "  -h, --help               show this help\n";

// The lines of text (a final newline ends the last line, it does not start an empty one; a
// carriage return before a newline is dropped).
std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> lines;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(start, end - start);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.push_back(std::move(line));
    start = end + 1;
  }
  return lines;
}

std::string read_all(const std::string& path) {
  if (path == "-") {
    return std::string(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) detail::fail("cannot open " + path + " (-f)");
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_f32(const std::string& path, const Embeddings& e) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) detail::fail("cannot create " + path + " (-o)");
  const size_t n = e.data.size();
  const bool ok = std::fwrite(e.data.data(), sizeof(float), n, f) == n;
  if (std::fclose(f) != 0 || !ok) detail::fail("cannot write " + path + " (-o)");
}

void print_vectors(const Embeddings& e, bool json) {
  if (json) std::fputc('[', stdout);
  for (size_t i = 0; i < e.n_texts; ++i) {
    if (json) {
      std::fputs(i == 0 ? "[" : ",\n[", stdout);
    } else {
      std::printf("embedding %zu:", i);
    }
    for (size_t k = 0; k < e.n_embd; ++k) {
      std::printf(json ? (k == 0 ? "%.7g" : ", %.7g") : " %.7g", double(e.row(i)[k]));
    }
    std::fputs(json ? "]" : "\n", stdout);
  }
  if (json) std::fputs("]\n", stdout);
}

}  // namespace

int cmd_embed(int argc, char** argv) {
  std::string model_path, prompt, input_path, output_path, pooling_text;
  bool have_prompt = false, json = false;
  EmbedOptions options;
  int threads = 0;
  ArgReader args(argc, argv);
  while (!args.done()) {
    if (args.flag("-h", "--help")) {
      std::fputs(kEmbedUsage, stdout);
      return 0;
    }
    if (args.option("-p", "--prompt", prompt)) {
      have_prompt = true;
    } else if (args.option("-m", "--model", model_path) ||
               args.option("-f", "--file", input_path) ||
               args.option(nullptr, "--pooling", pooling_text) ||
               args.option("-o", "--output", output_path) ||
               args.option("-b", "--batch-size", options.batch_tokens) ||
               args.option("-t", "--threads", threads)) {
    } else if (args.flag(nullptr, "--no-normalize")) {
      options.normalize = false;
    } else if (args.flag(nullptr, "--json")) {
      json = true;
    } else {
      args.reject();
    }
  }
  if (model_path.empty()) throw UsageError("missing required option -m");
  if (have_prompt == !input_path.empty()) throw UsageError("give either -p TEXT or -f FILE");
  if (json && !output_path.empty()) throw UsageError("give either -o FILE or --json");
  if (options.batch_tokens == 0) throw UsageError("-b must be at least 1");
  if (!pooling_text.empty()) {
    const std::optional<Pooling> pooling = pooling_from_name(pooling_text);
    if (!pooling)
      throw UsageError("--pooling must be mean, cls or last, not '" + pooling_text + "'");
    options.pooling = *pooling;
  }

  const std::vector<std::string> texts = split_lines(have_prompt ? prompt : read_all(input_path));
  if (texts.empty()) {
    detail::fail(have_prompt ? std::string("-p: the prompt is empty: no line to embed")
                             : input_path + " has no lines to embed");
  }
  ModelOptions mo;
  mo.n_threads = threads;
  const Model model = Model::open(model_path, mo);
  const auto start = std::chrono::steady_clock::now();
  const Embeddings e = embed(model, texts, options);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!output_path.empty()) {
    write_f32(output_path, e);
  } else {
    print_vectors(e, json);
  }
  const Pooling pooling =
      options.pooling == Pooling::kModel ? model_pooling(model) : options.pooling;
  std::fprintf(stderr,
               "sllm: %zu texts embedded in %.3f s (%.1f texts/s): %zu dimensions, %s pooling, "
               "%s; %d threads\n",
               e.n_texts, seconds, double(e.n_texts) / std::max(seconds, 1e-9), e.n_embd,
               pooling_name(pooling), options.normalize ? "unit length" : "not normalized",
               model.transformer().n_threads());
  return 0;
}

}  // namespace cli
}  // namespace sllm
