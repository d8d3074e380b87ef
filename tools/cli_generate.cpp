// `sllm generate`, `sllm tokenize` and `sllm logits`: text, token ids and logits from a model.
#include <cstdio>
#include <memory>
#include <unistd.h>
#include <string>
#include <vector>

#include "cli.h"
#include "sllm.h"

namespace sllm {
namespace cli {

namespace {

const char kGenerateUsage[] =
    "usage: sllm generate -m FILE -p TEXT [options]\n"
    "\n"
    "Generates text after the prompt and streams only the generated text to stdout; timing\n"
    "goes to stderr.\n"
    "\n"
    "options:\n"
    "  -m, --model FILE         GGUF model (required)\n"
    "  -p, --prompt TEXT        prompt (default: empty, i.e. start from BOS)\n"
    "  -n, --n-predict N        tokens to generate at most (default 128)\n" SLLM_CLI_SAMPLING_USAGE
    "  -t, --threads N          threads (default: OMP_NUM_THREADS, else all cores)\n"
    "  -c, --ctx-size N         context size in tokens (default: the model's, at most "
    "4096)\n" SLLM_CLI_KV_TYPE_USAGE
    "      --special            parse control tokens such as <|im_end|> in the prompt\n"
    "      --parallel N         N completions of the prompt (seeds SEED, SEED+1, ...) decoded\n"
    "                           together in one batch, printed one after another (default 1)\n"
    "  -h, --help               show this help\n";

const char kTokenizeUsage[] =
    "usage: sllm tokenize -m FILE -p TEXT [--no-bos] [--special]\n"
    "\n"
    "Prints the token ids of TEXT on one line, separated by spaces, with BOS first when the\n"
    "model adds one.\n"
    "\n"
    "options:\n"
    "  -m, --model FILE   GGUF model or vocabulary (required)\n"
    "  -p, --prompt TEXT  text to tokenize (required)\n"
    "      --no-bos       do not add BOS (or other special tokens the model adds)\n"
    "      --special      parse control tokens such as <|im_end|> in the text\n"
    "  -h, --help         show this help\n";

const char kLogitsUsage[] =
    "usage: sllm logits -m FILE --ids 1,2,3 -o OUT.f32 [options]\n"
    "\n"
    "Evaluates the token ids in one batch and writes the logits of every position as float32\n"
    "little-endian, n_ids rows of n_vocab, to compare with other runtimes.\n"
    "\n"
    "options:\n"
    "  -m, --model FILE   GGUF model (required)\n"
    "      --ids LIST     comma-separated token ids (required)\n"
    "  -o, --output FILE  output file (required)\n"
    "  -t, --threads N    threads (default: OMP_NUM_THREADS, else all cores)\n"
    "  -c, --ctx-size N   context size in tokens (default: the model's, at most 4096)\n"
    "  -h, --help         show this help\n";

bool help(int argc, char** argv, const char* usage) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      std::fputs(usage, stdout);
      return true;
    }
  }
  return false;
}

void require(const std::string& value, const char* option) {
  if (value.empty()) throw UsageError(std::string("missing required option ") + option);
}

std::vector<int32_t> parse_ids(const std::string& list) {
  std::vector<int32_t> ids;
  size_t start = 0;
  while (start <= list.size()) {
    const size_t end = std::min(list.find(',', start), list.size());
    const std::string item = list.substr(start, end - start);
    char* stop = nullptr;
    const long long v = std::strtoll(item.c_str(), &stop, 10);
    if (item.empty() || *stop != '\0' || v < 0 || v > INT32_MAX) {
      throw UsageError("--ids: '" + item + "' is not a token id");
    }
    ids.push_back(int32_t(v));
    start = end + 1;
  }
  return ids;
}

// --parallel: the completions share one engine; the prompt is computed once.
int generate_parallel(const Model& model, const SessionOptions& so, const std::string& prompt,
                      GenerateOptions opt, size_t parallel) {
  if (!opt.seed) opt.seed = Sampler(opt).seed();
  const std::vector<int32_t> tokens =
      model.tokenizer().encode(prompt, opt.add_special, opt.parse_special);
  // Room for every completion's prompt and tokens, and a partly filled block each.
  EngineOptions eo;
  eo.pool_tokens = parallel * (tokens.size() + size_t(opt.max_tokens) + eo.block_tokens);
  eo.kv_type = so.kv_type;
  const Engine engine(model, eo);
  std::vector<std::unique_ptr<Session>> owned;
  std::vector<Session*> sessions;
  for (size_t i = 0; i < parallel; ++i) {
    owned.push_back(std::make_unique<Session>(engine, so));
    sessions.push_back(owned.back().get());
  }
  std::vector<std::string> texts(parallel);
  const std::vector<GenerateStats> stats = engine.generate(
      sessions, tokens, opt, [&](size_t i, std::string_view piece) { texts[i] += piece; });
  size_t generated = 0;
  double seconds = 0;
  for (size_t i = 0; i < parallel; ++i) {
    std::printf("--- completion %zu (seed %llu, %zu tokens, stopped at %s) ---\n%s\n", i + 1,
                static_cast<unsigned long long>(stats[i].seed), stats[i].n_generated,
                stop_reason_name(stats[i].stop_reason), texts[i].c_str());
    generated += stats[i].n_generated;
    seconds = std::max(seconds, stats[i].generate_seconds);
  }
  std::fprintf(stderr,
               "sllm: %zu completions; prompt %zu tokens (%zu reused by the later ones); "
               "generated %zu tokens in %.3f s (%.1f tok/s together); %d threads\n",
               parallel, tokens.size(), stats.back().n_prompt_reused, generated, seconds,
               generated / std::max(seconds, 1e-9), model.transformer().n_threads());
  return 0;
}

}  // namespace

bool sampling_option(ArgReader& args, GenerateOptions& opt) {
  std::string stop;
  uint64_t seed = 0;
  if (args.option(nullptr, "--temp", opt.temperature) ||
      args.option(nullptr, "--top-k", opt.top_k) || args.option(nullptr, "--top-p", opt.top_p) ||
      args.option(nullptr, "--min-p", opt.min_p) ||
      args.option(nullptr, "--repeat-penalty", opt.repeat_penalty) ||
      args.option(nullptr, "--repeat-last-n", opt.penalty_last_n)) {
    return true;
  }
  if (args.option(nullptr, "--seed", seed)) {
    opt.seed = seed;
    return true;
  }
  if (args.option(nullptr, "--stop", stop)) {
    opt.stop.push_back(stop);
    return true;
  }
  return false;
}

int cmd_generate(int argc, char** argv) {
  if (help(argc, argv, kGenerateUsage)) return 0;
  std::string model_path;
  std::string prompt;
  GenerateOptions opt;
  int threads = 0;
  size_t ctx = 0, parallel = 1;
  SessionOptions so;
  ArgReader args(argc, argv);
  while (!args.done()) {
    if (args.option("-m", "--model", model_path) || args.option("-p", "--prompt", prompt) ||
        args.option("-n", "--n-predict", opt.max_tokens) || sampling_option(args, opt) ||
        args.option("-t", "--threads", threads) || args.option("-c", "--ctx-size", ctx) ||
        args.option(nullptr, "--parallel", parallel) || kv_type_option(args, so.kv_type)) {
    } else if (args.flag(nullptr, "--special")) {
      opt.parse_special = true;
    } else {
      args.reject();
    }
  }
  require(model_path, "-m");
  if (opt.max_tokens < 0) throw UsageError("-n must be at least 0");
  if (parallel < 1 || parallel > 256) throw UsageError("--parallel must be 1 to 256");

  ModelOptions mo;
  mo.n_threads = threads;
  const Model model = Model::open(model_path, mo);
  so.n_ctx = ctx;
  if (parallel > 1) return generate_parallel(model, so, prompt, opt, parallel);
  Session session(model, so);  // over an engine of its own
  const GenerateStats s = session.generate(prompt, opt, [](std::string_view piece) {
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
  });
  if (isatty(fileno(stdout))) std::fputs("\n", stdout);  // end the line on a terminal only
  std::fprintf(stderr,
               "\nsllm: prompt %zu tokens in %.3f s (%.1f tok/s); generated %zu tokens in %.3f s "
               "(%.1f tok/s); stopped at %s; seed %llu; %d threads\n",
               s.n_prompt, s.prompt_seconds, s.n_prompt / std::max(s.prompt_seconds, 1e-9),
               s.n_generated, s.generate_seconds,
               s.n_generated / std::max(s.generate_seconds, 1e-9), stop_reason_name(s.stop_reason),
               static_cast<unsigned long long>(s.seed), model.transformer().n_threads());
  if (s.stop_reason == StopReason::kContextFull) {
    std::fprintf(stderr, "sllm: warning: the context (%zu tokens) is full; use -c to enlarge it\n",
                 session.n_ctx());
  }
  return 0;
}

int cmd_tokenize(int argc, char** argv) {
  if (help(argc, argv, kTokenizeUsage)) return 0;
  std::string model_path, text;
  bool have_text = false, add_special = true, parse_special = false;
  ArgReader args(argc, argv);
  while (!args.done()) {
    if (args.option("-m", "--model", model_path)) {
    } else if (args.option("-p", "--prompt", text)) {
      have_text = true;
    } else if (args.flag(nullptr, "--no-bos")) {
      add_special = false;
    } else if (args.flag(nullptr, "--special")) {
      parse_special = true;
    } else {
      args.reject();
    }
  }
  require(model_path, "-m");
  if (!have_text) throw UsageError("missing required option -p");
  // Only the vocabulary is needed: vocabulary-only GGUFs (no weights) work too.
  const Tokenizer tokenizer = Tokenizer::from_gguf(Gguf::open(model_path));
  const std::vector<int32_t> ids = tokenizer.encode(text, add_special, parse_special);
  std::string line;
  for (size_t i = 0; i < ids.size(); ++i) line += (i ? " " : "") + std::to_string(ids[i]);
  std::puts(line.c_str());
  return 0;
}

int cmd_logits(int argc, char** argv) {
  if (help(argc, argv, kLogitsUsage)) return 0;
  std::string model_path, ids_text, out_path;
  int threads = 0;
  size_t ctx = 0;
  ArgReader args(argc, argv);
  while (!args.done()) {
    if (args.option("-m", "--model", model_path) || args.option(nullptr, "--ids", ids_text) ||
        args.option("-o", "--output", out_path) || args.option("-t", "--threads", threads) ||
        args.option("-c", "--ctx-size", ctx)) {
    } else {
      args.reject();
    }
  }
  require(model_path, "-m");
  require(ids_text, "--ids");
  require(out_path, "-o");
  const std::vector<int32_t> ids = parse_ids(ids_text);
  ModelOptions mo;
  mo.n_threads = threads;
  const Model model = Model::open(model_path, mo);
  SessionOptions so;
  so.n_ctx = ctx != 0 ? ctx : std::max<size_t>(ids.size(), 1);
  Session session(model, so);
  const std::vector<float> logits = session.evaluate_all(ids);
  detail::OutputFile out(out_path);
  out.write(logits.data(), logits.size() * sizeof(float));
  out.commit();
  std::fprintf(stderr, "sllm: wrote %zu x %zu logits to %s\n", ids.size(), model.config().n_vocab,
               out_path.c_str());
  return 0;
}

}  // namespace cli
}  // namespace sllm
