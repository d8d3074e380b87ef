// The smallest complete program: open a model, generate text, stream it to stdout.
//   simple MODEL.gguf [PROMPT]
#define SLLM_IMPLEMENTATION
#include "sllm.h"

#include <iostream>

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: simple MODEL.gguf [PROMPT]\n";
    return 2;
  }
  try {
    const sllm::Model model = sllm::Model::open(argv[1]);
    sllm::Session session(model);
    sllm::GenerateOptions options;
    options.max_tokens = 64;
    options.temperature = 0.8f;
    options.seed = 42;  // same seed, same text
    const std::string prompt = argc > 2 ? argv[2] : "Once upon a time";
    std::cout << prompt;
    const sllm::GenerateStats stats = session.generate(
        prompt, options, [](std::string_view piece) { std::cout << piece << std::flush; });
    std::cout << "\n[" << stats.n_generated << " tokens, "
              << stats.n_generated / stats.generate_seconds << " tokens/s]\n";
  } catch (const sllm::Error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
