// Writes a GGUF with random weights at a real model's shape, so that the speed of real sizes can
// be measured without downloading weights:
//   make_random_gguf SHAPE OUT.gguf [--type f32|f16] [--seed N] [--vocab VOCAB.gguf]
// SHAPE: tinyllama-1.1b or stories110m (llama; the vocabulary is a placeholder of the right size,
// byte tokens plus made-up pieces, that sllm and llama.cpp both load), or bge-small (a BERT
// encoder with mean pooling; its tokenizer.* keys come from --vocab, e.g.
// ../shared/fixtures/vocab/ggml-vocab-bert-bge.gguf, so that real text tokenizes as it would).
#define SLLM_IMPLEMENTATION
#include "sllm.h"

#include <cmath>
#include <cstdio>
#include <string>

namespace {

struct Shape {
  const char* name;
  const char* arch;
  uint32_t dim, layers, heads, kv_heads, ffn, vocab, context;
};

const Shape kShapes[] = {
    {"tinyllama-1.1b", "llama", 2048, 22, 32, 4, 5632, 32000, 2048},
    {"stories110m", "llama", 768, 12, 12, 12, 2048, 32000, 1024},
    {"bge-small", "bert", 384, 12, 12, 12, 1536, 30522, 512},
};

// Fills n weights of a type with uniform values in [-a, a], a = sqrt(3 / fan_in), so that
// activations keep their scale through the layers (as a trained model's roughly do).
void fill_random(sllm::TensorType type, uint64_t n, uint64_t fan_in, uint64_t seed, uint8_t* dst) {
  sllm::Rng rng(seed);
  const float a = std::sqrt(3.0f / float(fan_in));
  for (uint64_t i = 0; i < n; ++i) {
    const float v = (2 * rng.uniform() - 1) * a;
    if (type == sllm::TensorType::F32) {
      std::memcpy(dst + 4 * i, &v, 4);
    } else {
      const uint16_t h = sllm::f32_to_fp16(v);
      std::memcpy(dst + 2 * i, &h, 2);
    }
  }
}

// A BERT encoder's tensors as llama.cpp names them: embeddings (token, type, position) and their
// LayerNorm, then per layer Q, K, V, output, FFN up and down with biases and the two post-norms.
// Norm weights are 1 and biases 0.
void write_bert_tensors(sllm::GgufWriter& w, const Shape& shape, sllm::TensorType type,
                        uint64_t seed) {
  const uint64_t dim = shape.dim;
  const auto matrix = [&](const std::string& name, uint64_t cols, uint64_t rows) {
    const uint64_t s = seed++;
    w.add_tensor(name, type, {cols, rows},
                 [=](uint8_t* dst) { fill_random(type, cols * rows, cols, s, dst); });
  };
  static const std::vector<float> ones(shape.ffn, 1.0f), zeros(shape.ffn, 0.0f);
  const auto vector = [&](const std::string& name, const std::vector<float>& values, uint64_t n) {
    w.add_tensor(name, sllm::TensorType::F32, {n}, values.data(), n * 4);
  };
  const auto norm = [&](const std::string& name) {
    vector(name + ".weight", ones, dim);
    vector(name + ".bias", zeros, dim);
  };
  const auto linear = [&](const std::string& name, uint64_t cols, uint64_t rows) {
    matrix(name + ".weight", cols, rows);
    vector(name + ".bias", zeros, rows);
  };
  matrix("token_embd.weight", dim, shape.vocab);
  matrix("token_types.weight", dim, 2);
  matrix("position_embd.weight", dim, shape.context);
  norm("token_embd_norm");
  for (uint32_t l = 0; l < shape.layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    for (const char* name : {"attn_q", "attn_k", "attn_v", "attn_output"}) {
      linear(p + name, dim, dim);
    }
    norm(p + "attn_output_norm");
    linear(p + "ffn_up", dim, shape.ffn);
    linear(p + "ffn_down", shape.ffn, dim);
    norm(p + "layer_output_norm");
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr,
                 "usage: make_random_gguf SHAPE OUT.gguf [--type f32|f16] [--seed N] "
                 "[--vocab VOCAB.gguf]\n"
                 "shapes: tinyllama-1.1b, stories110m, bge-small (needs --vocab)\n");
    return 2;
  }
  const std::string shape_name = argv[1], out = argv[2];
  sllm::TensorType type = sllm::TensorType::F16;
  uint64_t seed = 1;
  std::string vocab_path;
  for (int i = 3; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--type" && (value == "f16" || value == "f32")) {
      type = value == "f16" ? sllm::TensorType::F16 : sllm::TensorType::F32;
    } else if (flag == "--seed") {
      seed = std::stoull(value);
    } else if (flag == "--vocab") {
      vocab_path = value;
    } else {
      std::fprintf(stderr, "make_random_gguf: bad option %s %s\n", flag.c_str(), value.c_str());
      return 2;
    }
  }
  const Shape* shape = nullptr;
  for (const Shape& s : kShapes)
    if (shape_name == s.name) shape = &s;
  if (shape == nullptr) {
    std::fprintf(stderr, "make_random_gguf: unknown shape %s\n", shape_name.c_str());
    return 2;
  }
  const bool bert = std::string(shape->arch) == "bert";
  if (bert && vocab_path.empty()) {
    std::fprintf(stderr, "make_random_gguf: %s needs --vocab VOCAB.gguf\n", shape->name);
    return 2;
  }

  try {
    sllm::GgufWriter w;
    const std::string a = std::string(shape->arch) + ".";
    w.set("general.architecture", sllm::GgufValue::string(shape->arch));
    w.set("general.name", sllm::GgufValue::string(std::string(shape->name) + "-random"));
    w.set("general.file_type", sllm::GgufValue::u32(type == sllm::TensorType::F16 ? 1 : 0));
    w.set(a + "context_length", sllm::GgufValue::u32(shape->context));
    w.set(a + "embedding_length", sllm::GgufValue::u32(shape->dim));
    w.set(a + "block_count", sllm::GgufValue::u32(shape->layers));
    w.set(a + "feed_forward_length", sllm::GgufValue::u32(shape->ffn));
    w.set(a + "attention.head_count", sllm::GgufValue::u32(shape->heads));
    if (bert) {
      const sllm::Gguf vocab = sllm::Gguf::open(vocab_path);
      w.set(a + "attention.layer_norm_epsilon", sllm::GgufValue::f32(1e-12f));
      w.set(a + "attention.causal", sllm::GgufValue::boolean(false));
      w.set(a + "pooling_type", sllm::GgufValue::u32(1));  // mean
      for (const auto& kv : vocab.metadata()) {
        if (kv.first.compare(0, 10, "tokenizer.") == 0) w.set(kv.first, kv.second);
      }
      write_bert_tensors(w, *shape, type, seed);
      w.write(out);
      std::fprintf(stderr, "wrote %s\n", out.c_str());
      return 0;
    }
    w.set("llama.rope.dimension_count", sllm::GgufValue::u32(shape->dim / shape->heads));
    w.set("llama.attention.head_count_kv", sllm::GgufValue::u32(shape->kv_heads));
    w.set("llama.attention.layer_norm_rms_epsilon", sllm::GgufValue::f32(1e-5f));
    w.set("llama.vocab_size", sllm::GgufValue::u32(shape->vocab));

    // SentencePiece-style vocabulary: <unk>, <s>, </s>, the 256 byte tokens, then pieces.
    std::vector<std::string> tokens = {"<unk>", "<s>", "</s>"};
    std::vector<float> scores = {0, 0, 0};
    std::vector<int32_t> types = {2, 3, 3};  // unknown, control, control
    for (int b = 0; b < 256; ++b) {
      char piece[8];
      std::snprintf(piece, sizeof(piece), "<0x%02X>", b);
      tokens.push_back(piece);
      scores.push_back(0);
      types.push_back(6);  // byte
    }
    while (tokens.size() < shape->vocab) {
      scores.push_back(-float(tokens.size()));
      tokens.push_back("\xe2\x96\x81t" + std::to_string(tokens.size()));
      types.push_back(1);  // normal
    }
    w.set("tokenizer.ggml.model", sllm::GgufValue::string("llama"));
    w.set("tokenizer.ggml.tokens", sllm::GgufValue::string_array(tokens));
    w.set("tokenizer.ggml.scores", sllm::GgufValue::f32_array(scores));
    w.set("tokenizer.ggml.token_type", sllm::GgufValue::i32_array(types));
    w.set("tokenizer.ggml.bos_token_id", sllm::GgufValue::u32(1));
    w.set("tokenizer.ggml.eos_token_id", sllm::GgufValue::u32(2));
    w.set("tokenizer.ggml.unknown_token_id", sllm::GgufValue::u32(0));

    const uint64_t dim = shape->dim, kv_dim = dim / shape->heads * shape->kv_heads;
    uint64_t tensor_seed = seed;
    const auto matrix = [&](const std::string& name, uint64_t cols, uint64_t rows) {
      const uint64_t s = tensor_seed++;
      w.add_tensor(name, type, {cols, rows},
                   [=](uint8_t* dst) { fill_random(type, cols * rows, cols, s, dst); });
    };
    static const std::vector<float> ones(dim, 1.0f);
    const auto norm = [&](const std::string& name) {
      w.add_tensor(name, sllm::TensorType::F32, {dim}, ones.data(), dim * 4);
    };
    matrix("token_embd.weight", dim, shape->vocab);
    for (uint32_t l = 0; l < shape->layers; ++l) {
      const std::string p = "blk." + std::to_string(l) + ".";
      norm(p + "attn_norm.weight");
      matrix(p + "attn_q.weight", dim, dim);
      matrix(p + "attn_k.weight", dim, kv_dim);
      matrix(p + "attn_v.weight", dim, kv_dim);
      matrix(p + "attn_output.weight", dim, dim);
      norm(p + "ffn_norm.weight");
      matrix(p + "ffn_gate.weight", dim, shape->ffn);
      matrix(p + "ffn_up.weight", dim, shape->ffn);
      matrix(p + "ffn_down.weight", shape->ffn, dim);
    }
    norm("output_norm.weight");
    matrix("output.weight", dim, shape->vocab);
    w.write(out);
  } catch (const sllm::Error& e) {
    std::fprintf(stderr, "make_random_gguf: error: %s\n", e.what());
    return 1;
  }
  std::fprintf(stderr, "wrote %s\n", out.c_str());
  return 0;
}
