// The sllm command line: `sllm COMMAND [options]`. Each command lives in tools/cli_NAME.cpp.
// This is the one translation unit of the program that compiles sllm's implementation.
#define SLLM_IMPLEMENTATION
#include "sllm.h"

#include <cstdio>
#include <cstring>
#include <exception>
#include <string>

#include "cli.h"

namespace {

struct Command {
  const char* name;
  int (*run)(int argc, char** argv);
  const char* summary;
};

const Command kCommands[] = {
    {"generate", sllm::cli::cmd_generate, "generate text after a prompt, streaming it"},
    {"chat", sllm::cli::cmd_chat, "a conversation with a chat model, in a terminal or a pipe"},
    {"tokenize", sllm::cli::cmd_tokenize, "print the token ids of a text"},
    {"logits", sllm::cli::cmd_logits, "write the logits of token ids, for comparisons"},
    {"embed", sllm::cli::cmd_embed, "embed lines of text as vectors (BERT and other models)"},
    {"bench", sllm::cli::cmd_bench, "measure prompt and generation speed (tokens/s)"},
    {"quantize", sllm::cli::cmd_quantize,
     "quantize a GGUF file's weights (q8_0, q4_0, q5_0, q2_k to q6_k)"},
    {"info", sllm::cli::cmd_info, "show a GGUF file's metadata, tensors and sizes"},
    {"convert", sllm::cli::cmd_convert, "convert a Hugging Face checkpoint folder to GGUF"},
};

void print_usage(std::FILE* out) {
  std::fprintf(out,
               "usage: sllm COMMAND [options]\n"
               "\n"
               "Small language models on a CPU, from GGUF files.\n"
               "\n"
               "commands:\n");
  for (const Command& c : kCommands) std::fprintf(out, "  %-10s %s\n", c.name, c.summary);
  std::fprintf(out,
               "  %-10s %s\n"
               "\n"
               "Run 'sllm COMMAND --help' for the options of a command.\n"
               "Exit status: 0 on success, 1 when a command fails, 2 on a usage error.\n",
               "help", "show this help");
}

const Command* find_command(const char* name) {
  for (const Command& c : kCommands) {
    if (std::strcmp(name, c.name) == 0) return &c;
  }
  return nullptr;
}

}  // namespace

int main(int argc, char** argv) {
  using sllm::cli::UsageError;
  const Command* command = nullptr;
  try {
    if (argc < 2) throw UsageError("missing command");
    const std::string name = argv[1];
    if (name == "help" || name == "--help" || name == "-h") {
      print_usage(stdout);
      return 0;
    }
    command = find_command(argv[1]);
    if (command == nullptr) {
      throw UsageError((name[0] == '-' ? "unknown option '" : "unknown command '") + name + "'");
    }
    return command->run(argc - 1, argv + 1);
  } catch (const UsageError& e) {
    const std::string prog = command != nullptr ? std::string("sllm ") + command->name : "sllm";
    std::fprintf(stderr, "%s: %s (see '%s --help')\n", prog.c_str(), e.what(), prog.c_str());
    return 2;
  } catch (const std::exception& e) {
    // sllm::Error, and the rare failure of the system (out of memory).
    std::fprintf(stderr, "sllm: error: %s\n", e.what());
    return 1;
  }
}
