// `sllm chat`: a conversation with a chat model, in a terminal or through a pipe.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "cli.h"
#include "sllm.h"

namespace sllm {
namespace cli {

namespace {

// The chat template names as lines of the usage text, indented to its option descriptions.
std::string wrapped_template_names() {
  const std::string indent(27, ' ');
  const std::string names = chat_template_names();
  std::string out, line = indent;
  for (size_t start = 0; start < names.size();) {
    const size_t comma = names.find(", ", start);
    const std::string word =
        names.substr(start, comma == std::string::npos ? comma : comma + 1 - start);
    start = comma == std::string::npos ? names.size() : comma + 2;
    if (line.size() > indent.size() && line.size() + 1 + word.size() > 90) {
      out += line + "\n";
      line = indent;
    }
    line += (line.size() > indent.size() ? " " : "") + word;
  }
  return out + line + "\n";
}

std::string chat_usage() {
  return std::string(
             "usage: sllm chat -m FILE [options]\n"
             "\n"
             "A conversation with a chat model. In a terminal, type a message after the '> '\n"
             "prompt and the answer streams as it is generated; /reset starts a new conversation,\n"
             "/exit or Ctrl-D leaves, Ctrl-C stops an answer (and, at the prompt, leaves). The\n"
             "speed of each answer goes to stderr. When stdin is not a terminal, each line is one\n"
             "user message and each answer is printed followed by a newline, without prompts, for\n"
             "scripts; /reset and /exit work there too. Empty lines are skipped. The conversation\n"
             "stays in the context, so each message computes only its own tokens.\n"
             "\n"
             "options:\n"
             "  -m, --model FILE         GGUF model (required)\n"
             "      --system TEXT        system message that starts the conversation\n"
             "      --chat-template NAME the model's chat format, in place of the one its\n"
             "                           tokenizer.chat_template belongs to, one of\n") +
         wrapped_template_names() +
         "  -n, --n-predict N        tokens per answer at most; -1 is no limit but the context\n"
         "                           (default -1)\n" SLLM_CLI_SAMPLING_USAGE
         "  -t, --threads N          threads (default: OMP_NUM_THREADS, else all cores)\n"
         "  -c, --ctx-size N         context size in tokens, for the whole conversation (default:\n"
         "                           the model's, at most 4096)\n" SLLM_CLI_KV_TYPE_USAGE
         "      --verbose            the speed of each answer also when stdin is not a terminal\n"
         "  -h, --help               show this help\n";
}

// Set by Ctrl-C: stops the answer being generated, or the read at the prompt.
std::atomic<bool> g_interrupted{false};
static_assert(std::atomic<bool>::is_always_lock_free, "the SIGINT handler needs a lock-free flag");

void on_interrupt(int) {
  g_interrupted.store(true);
}

// Without SA_RESTART, so that Ctrl-C at the prompt ends the read (EINTR) instead of resuming it.
void catch_interrupts() {
  struct sigaction action {};
  action.sa_handler = on_interrupt;
  sigemptyset(&action.sa_mask);
  action.sa_flags = 0;
  sigaction(SIGINT, &action, nullptr);
}

// One line of stdin without its line end; false at the end of the input or when Ctrl-C
// interrupted the read.
bool read_line(std::string& line) {
  char* buffer = nullptr;
  size_t capacity = 0;
  const ssize_t n = ::getline(&buffer, &capacity, stdin);
  if (n >= 0) line.assign(buffer, size_t(n));
  std::free(buffer);
  if (n < 0) return false;
  while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.pop_back();
  return true;
}

void print_piece(std::string_view piece) {
  std::fwrite(piece.data(), 1, piece.size(), stdout);
  std::fflush(stdout);
}

}  // namespace

int cmd_chat(int argc, char** argv) {
  std::string model_path, system, template_name;
  GenerateOptions opt;
  int32_t max_tokens = -1;
  int threads = 0;
  size_t ctx = 0;
  bool verbose = false;
  SessionOptions so;
  ArgReader args(argc, argv);
  while (!args.done()) {
    if (args.flag("-h", "--help")) {
      std::fputs(chat_usage().c_str(), stdout);
      return 0;
    }
    if (args.option("-m", "--model", model_path) || args.option(nullptr, "--system", system) ||
        args.option(nullptr, "--chat-template", template_name) ||
        args.option("-n", "--n-predict", max_tokens) || sampling_option(args, opt) ||
        args.option("-t", "--threads", threads) || args.option("-c", "--ctx-size", ctx) ||
        kv_type_option(args, so.kv_type)) {
    } else if (args.flag(nullptr, "--verbose")) {
      verbose = true;
    } else {
      args.reject();
    }
  }
  if (model_path.empty()) throw UsageError("missing required option -m");
  if (max_tokens < -1) throw UsageError("-n must be -1 (no limit) or more");
  opt.max_tokens = max_tokens == -1 ? INT32_MAX : max_tokens;
  if (!template_name.empty() && !chat_template_from_name(template_name)) {
    throw UsageError("unknown chat template '" + template_name + "'; the known ones are " +
                     chat_template_names());
  }

  ModelOptions mo;
  mo.n_threads = threads;
  const Model model = Model::open(model_path, mo);
  so.n_ctx = ctx;
  // Over an engine of its own: the blocks of a finished conversation stay in its prefix cache,
  // so a new one (/reset) takes the system prompt's blocks from there instead of computing them.
  Session session(model, so);
  Chat chat(session, ChatFormat::for_model(model, template_name));
  const auto start = [&] {
    chat.reset();
    if (!system.empty()) chat.add(ChatRole::kSystem, system);
  };
  start();

  const bool interactive = isatty(fileno(stdin)) != 0;
  if (interactive) {
    std::fprintf(stderr,
                 "sllm chat: %s, %s format, %zu-token context. /reset starts over, /exit or "
                 "Ctrl-D leaves, Ctrl-C stops an answer.\n",
                 model_path.c_str(), chat_template_name(chat.format().family), session.n_ctx());
  }
  catch_interrupts();
  opt.cancel = &g_interrupted;
  std::string line;
  for (;;) {
    if (interactive) {
      std::fputs("> ", stdout);
      std::fflush(stdout);
    }
    g_interrupted.store(false);
    if (!read_line(line)) {
      if (interactive) std::fputs("\n", stdout);
      break;
    }
    if (line == "/exit") break;
    if (line == "/reset") {
      start();
      if (interactive) std::fputs("(a new conversation)\n", stderr);
      continue;
    }
    if (line.empty()) continue;

    chat.add(ChatRole::kUser, line);
    ChatStats s;
    try {
      s = chat.respond(opt, print_piece);
    } catch (const Error& e) {
      // The conversation no longer fits. A script gets the error (exit status 1); a person a
      // new conversation to go on with.
      if (!interactive) throw;
      std::fprintf(stderr, "sllm: error: %s\nsllm: starting a new conversation\n", e.what());
      start();
      continue;
    }
    std::fputs("\n", stdout);
    std::fflush(stdout);
    if (interactive || verbose) {
      const size_t computed = s.n_prompt - s.n_prompt_reused;
      std::fprintf(stderr,
                   "[%zu tokens, %.1f tok/s; prompt %zu tokens kept from the last turn, %zu from "
                   "the prefix cache, %zu computed at %.1f tok/s%s]\n",
                   s.n_generated, s.n_generated / std::max(s.generate_seconds, 1e-9), s.n_cached,
                   s.n_prompt_reused, computed, computed / std::max(s.prompt_seconds, 1e-9),
                   s.stop_reason == StopReason::kCancelled ? "; stopped" : "");
    }
    if (s.stop_reason == StopReason::kContextFull) {
      std::fprintf(stderr,
                   "sllm: warning: the context (%zu tokens) is full; /reset starts over, -c "
                   "enlarges it\n",
                   session.n_ctx());
    }
  }
  return 0;
}

}  // namespace cli
}  // namespace sllm
