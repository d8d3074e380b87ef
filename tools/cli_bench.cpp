// `sllm bench`: prompt processing (pp) and text generation (tg) speed, as llama-bench reports
// them, so that the two programs can be compared line by line.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "cli.h"
#include "sllm.h"

namespace sllm {
namespace cli {

namespace {

const char kBenchUsage[] =
    "usage: sllm bench -m FILE [options]\n"
    "\n"
    "Measures prompt processing (pp: the prompt evaluated in one batch) and text generation\n"
    "(tg: one token at a time) in tokens per second, mean and standard deviation over the\n"
    "repetitions, after one warm-up run. Tokens are new random ids for every run (so no run\n"
    "reuses cached KV blocks) and the context starts empty.\n"
    "\n"
    "options:\n"
    "  -m, --model FILE     GGUF model (required)\n"
    "  -p, --n-prompt N     prompt tokens; 0 skips pp (default 512)\n"
    "  -n, --n-gen N        generated tokens; 0 skips tg (default 128)\n"
    "  -t, --threads N      threads (default: OMP_NUM_THREADS, else all cores)\n"
    "  -r, --repetitions N  repetitions of each test (default 5)\n"
    "      --kv-type TYPE   KV cache entries: f16 (default), q8_0 (int8 with a scale per token\n"
    "                       and head; also q8, i8, int8) or f32\n"
    "  -o, --output FORMAT  md (a table, default) or json\n"
    "  -h, --help           show this help\n";

struct Result {
  std::string test;  // "pp512", "tg128"
  size_t n_tokens;
  std::vector<double> tokens_per_second;
  double mean() const {
    double s = 0;
    for (double v : tokens_per_second) s += v;
    return s / double(tokens_per_second.size());
  }
  double stddev() const {
    if (tokens_per_second.size() < 2) return 0;
    const double m = mean();
    double s = 0;
    for (double v : tokens_per_second) s += (v - m) * (v - m);
    return std::sqrt(s / double(tokens_per_second.size() - 1));
  }
};

// Seconds to evaluate tokens in one batch (pp) or one by one (tg), from an empty context.
double time_run(Session& session, const std::vector<int32_t>& tokens, bool one_by_one) {
  session.reset();
  const auto t0 = std::chrono::steady_clock::now();
  if (one_by_one) {
    for (int32_t t : tokens) session.evaluate({t});
  } else {
    session.evaluate(tokens);
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::string json_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) < 0x20) continue;
    out += c;
  }
  return out;
}

}  // namespace

int cmd_bench(int argc, char** argv) {
  std::string model_path, format = "md";
  size_t n_prompt = 512, n_gen = 128;
  int threads = 0, reps = 5;
  SessionOptions so;
  ArgReader args(argc, argv);
  while (!args.done()) {
    if (args.flag("-h", "--help")) {
      std::fputs(kBenchUsage, stdout);
      return 0;
    }
    if (!(args.option("-m", "--model", model_path) || args.option("-p", "--n-prompt", n_prompt) ||
          args.option("-n", "--n-gen", n_gen) || args.option("-t", "--threads", threads) ||
          args.option("-r", "--repetitions", reps) || args.option("-o", "--output", format) ||
          kv_type_option(args, so.kv_type))) {
      args.reject();
    }
  }
  if (model_path.empty()) throw UsageError("missing required option -m");
  if (format != "md" && format != "json") throw UsageError("-o must be md or json");
  if (reps < 1) throw UsageError("-r must be at least 1");

  ModelOptions mo;
  mo.n_threads = threads;
  const Model model = Model::open(model_path, mo);
  so.n_ctx = std::max<size_t>(std::max(n_prompt, n_gen), 1);
  Session session(model, so);
  Rng rng(1);
  const auto random_tokens = [&](size_t n) {
    std::vector<int32_t> t(n);
    for (int32_t& id : t) id = int32_t(rng.next() % model.config().n_vocab);
    return t;
  };

  std::vector<Result> results;
  for (const bool tg : {false, true}) {
    const size_t n = tg ? n_gen : n_prompt;
    if (n == 0) continue;
    Result r{(tg ? "tg" : "pp") + std::to_string(n), n, {}};
    // New tokens for every run, so that no run reuses the cached KV blocks of another.
    time_run(session, random_tokens(n), tg);  // warm-up: page in the weights, size the buffers
    for (int i = 0; i < reps; ++i) {
      r.tokens_per_second.push_back(double(n) / time_run(session, random_tokens(n), tg));
    }
    results.push_back(r);
  }

  const Gguf& g = model.gguf();
  uint64_t params = 0, weight_bytes = 0;
  for (const TensorInfo& t : g.tensors()) {
    params += t.n_elements();
    weight_bytes += t.n_bytes;
  }
  const std::string name = g.get_or<std::string>("general.name", model.config().architecture);
  const int n_threads = model.transformer().n_threads();
  if (format == "json") {
    std::printf("[\n");
    for (size_t i = 0; i < results.size(); ++i) {
      const Result& r = results[i];
      std::printf(
          "  {\"model\": \"%s\", \"model_size\": %llu, \"model_n_params\": %llu, "
          "\"n_threads\": %d, \"type_k\": \"%s\", \"type_v\": \"%s\", \"test\": \"%s\", "
          "\"n_tokens\": %zu, \"avg_ts\": %.3f, \"stddev_ts\": %.3f, \"samples_ts\": [",
          json_escape(name).c_str(), static_cast<unsigned long long>(weight_bytes),
          static_cast<unsigned long long>(params), n_threads, kv_type_name(so.kv_type),
          kv_type_name(so.kv_type), r.test.c_str(), r.n_tokens, r.mean(), r.stddev());
      for (size_t j = 0; j < r.tokens_per_second.size(); ++j)
        std::printf("%s%.3f", j ? ", " : "", r.tokens_per_second[j]);
      std::printf("]}%s\n", i + 1 < results.size() ? "," : "");
    }
    std::printf("]\n");
  } else {
    // As llama-bench, the KV types only when they are not the default.
    const bool kv_column = so.kv_type != SessionOptions{}.kv_type;
    std::printf("| model | size | params | threads |%s test | t/s |\n",
                kv_column ? " type_k | type_v |" : "");
    std::printf("| --- | ---: | ---: | ---: |%s ---: | ---: |\n",
                kv_column ? " ---: | ---: |" : "");
    const std::string kv = kv_column ? std::string(" ") + kv_type_name(so.kv_type) + " | " +
                                           kv_type_name(so.kv_type) + " |"
                                     : "";
    for (const Result& r : results) {
      std::printf("| %s | %.2f MiB | %.2f M | %d |%s %s | %.2f ± %.2f |\n", name.c_str(),
                  double(weight_bytes) / (1 << 20), double(params) / 1e6, n_threads, kv.c_str(),
                  r.test.c_str(), r.mean(), r.stddev());
    }
  }
  return 0;
}

}  // namespace cli
}  // namespace sllm
