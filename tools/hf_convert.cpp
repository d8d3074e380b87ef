#include "hf_convert.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <sys/stat.h>

#include "hf_files.h"
#include "hf_tokenizer.h"
#include "safetensors.h"

namespace sllm {
namespace hf {

namespace {

// ---- architectures ----

// Sizes of a model, from config.json.
struct Hparams {
  uint64_t n_embd = 0, n_layer = 0, n_head = 0, n_head_kv = 0, head_dim = 0, n_ff = 0;
  uint64_t n_vocab = 0, n_ctx = 0;
  uint64_t n_token_types = 0;  // BERT's segment embeddings
};

// A dimension of a tensor, in terms of the hyperparameters.
enum class Dim : uint8_t {
  kNone,   // a 1-D tensor's second dimension
  kEmbd,   // n_embd
  kQ,      // n_head * head_dim
  kKv,     // n_head_kv * head_dim
  kQkv,    // kQ + 2 kKv (fused Q, K, V)
  kFf,     // n_ff
  kFf2,    // 2 n_ff (fused gate and up)
  kVocab,  // n_vocab
  kCtx,    // n_ctx (learned positions)
  kTypes,  // n_token_types
};

uint64_t dim_size(Dim d, const Hparams& h) {
  switch (d) {
    case Dim::kNone:
      return 0;
    case Dim::kEmbd:
      return h.n_embd;
    case Dim::kQ:
      return h.n_head * h.head_dim;
    case Dim::kKv:
      return h.n_head_kv * h.head_dim;
    case Dim::kQkv:
      return (h.n_head + 2 * h.n_head_kv) * h.head_dim;
    case Dim::kFf:
      return h.n_ff;
    case Dim::kFf2:
      return 2 * h.n_ff;
    case Dim::kVocab:
      return h.n_vocab;
    case Dim::kCtx:
      return h.n_ctx;
    case Dim::kTypes:
      return h.n_token_types;
  }
  return 0;
}

// How a Hugging Face tensor becomes the GGUF one.
enum class Transform : uint8_t {
  kCopy,
  // Rows of Q (n_head heads) or K (n_head_kv heads) from Hugging Face's rotate-half order (the
  // first half of each head's dimensions pair with the second half) to the interleaved order of
  // GGUF's llama rope (dimension 2i pairs with 2i + 1), as llama.cpp's converter permutes them.
  kPermuteQ,
  kPermuteK,
  kTranspose,  // GPT-2's Conv1D stores [in, out]; GGUF wants rows of the inputs
  kAddOne,     // Gemma's RMSNorm multiplies by 1 + weight; GGUF stores 1 + weight
};

struct TensorRule {
  const char* hf;    // Hugging Face name; "{}" stands for the block number
  const char* gguf;  // GGUF name
  Dim rows, cols;    // the Hugging Face shape: [rows] or [rows, cols]
  Transform transform = Transform::kCopy;
  bool optional = false;  // converted when present (biases that only some checkpoints have)
};

// Where output.weight (the logits matrix) comes from when lm_head.weight is absent.
enum class TiedOutput {
  kNone,       // tied: no output.weight (llama.cpp reuses token_embd.weight)
  kDuplicate,  // llama.cpp's loader requires output.weight: a copy of token_embd.weight
};

enum class Family { kLlama, kQwen2, kPhi3, kGpt2, kGemma, kBert };

struct Architecture {
  const char* hf_name;
  const char* gguf_name;
  Family family;
  std::vector<TensorRule> head;    // before the blocks
  std::vector<TensorRule> blocks;  // per block
  std::vector<TensorRule> tail;    // after the blocks (lm_head is handled by tied_output)
  TiedOutput tied_output;
  bool lm_head = true;  // false: lm_head.weight is ignored (Gemma always ties)
  // A prefix some checkpoints of the architecture put before every name ("transformer." in
  // GPT-2's, "bert." in BERT's own; sentence-transformers saves BERT without it).
  const char* name_prefix = "";
};

using D = Dim;
using T = Transform;

std::vector<TensorRule> llama_blocks(bool permute, bool biases, Transform norm) {
  std::vector<TensorRule> r = {
      {"model.layers.{}.input_layernorm.weight", "blk.{}.attn_norm.weight", D::kEmbd, D::kNone,
       norm},
      {"model.layers.{}.self_attn.q_proj.weight", "blk.{}.attn_q.weight", D::kQ, D::kEmbd,
       permute ? T::kPermuteQ : T::kCopy},
      {"model.layers.{}.self_attn.q_proj.bias", "blk.{}.attn_q.bias", D::kQ, D::kNone,
       permute ? T::kPermuteQ : T::kCopy, !biases},
      {"model.layers.{}.self_attn.k_proj.weight", "blk.{}.attn_k.weight", D::kKv, D::kEmbd,
       permute ? T::kPermuteK : T::kCopy},
      {"model.layers.{}.self_attn.k_proj.bias", "blk.{}.attn_k.bias", D::kKv, D::kNone,
       permute ? T::kPermuteK : T::kCopy, !biases},
      {"model.layers.{}.self_attn.v_proj.weight", "blk.{}.attn_v.weight", D::kKv, D::kEmbd},
      {"model.layers.{}.self_attn.v_proj.bias", "blk.{}.attn_v.bias", D::kKv, D::kNone, T::kCopy,
       !biases},
      {"model.layers.{}.self_attn.o_proj.weight", "blk.{}.attn_output.weight", D::kEmbd, D::kQ},
      {"model.layers.{}.self_attn.o_proj.bias", "blk.{}.attn_output.bias", D::kEmbd, D::kNone,
       T::kCopy, true},
      {"model.layers.{}.post_attention_layernorm.weight", "blk.{}.ffn_norm.weight", D::kEmbd,
       D::kNone, norm},
      {"model.layers.{}.mlp.gate_proj.weight", "blk.{}.ffn_gate.weight", D::kFf, D::kEmbd},
      {"model.layers.{}.mlp.up_proj.weight", "blk.{}.ffn_up.weight", D::kFf, D::kEmbd},
      {"model.layers.{}.mlp.down_proj.weight", "blk.{}.ffn_down.weight", D::kEmbd, D::kFf},
  };
  return r;
}

const std::vector<Architecture>& architectures() {
  static const TensorRule kEmbed = {"model.embed_tokens.weight", "token_embd.weight", D::kVocab,
                                    D::kEmbd};
  static const TensorRule kNorm = {"model.norm.weight", "output_norm.weight", D::kEmbd, D::kNone};
  static const std::vector<Architecture> archs = [] {
    std::vector<Architecture> a;
    // Llama rotates pairs (2i, 2i+1) in GGUF ("norm" rope): Q and K rows are permuted. Qwen2,
    // Phi-3 and Gemma rotate halves ("neox" rope) in llama.cpp too, so their rows stay.
    const Architecture llama = {"LlamaForCausalLM",
                                "llama",
                                Family::kLlama,
                                {kEmbed},
                                llama_blocks(true, false, T::kCopy),
                                {kNorm},
                                TiedOutput::kNone};
    a.push_back(llama);
    Architecture mistral = llama;
    mistral.hf_name = "MistralForCausalLM";
    a.push_back(mistral);
    a.push_back({"Qwen2ForCausalLM",
                 "qwen2",
                 Family::kQwen2,
                 {kEmbed},
                 llama_blocks(false, true, T::kCopy),
                 {kNorm},
                 TiedOutput::kNone});
    a.push_back(
        {"Phi3ForCausalLM",
         "phi3",
         Family::kPhi3,
         {kEmbed},
         {
             {"model.layers.{}.input_layernorm.weight", "blk.{}.attn_norm.weight", D::kEmbd,
              D::kNone},
             {"model.layers.{}.self_attn.qkv_proj.weight", "blk.{}.attn_qkv.weight", D::kQkv,
              D::kEmbd},
             {"model.layers.{}.self_attn.o_proj.weight", "blk.{}.attn_output.weight", D::kEmbd,
              D::kQ},
             {"model.layers.{}.post_attention_layernorm.weight", "blk.{}.ffn_norm.weight", D::kEmbd,
              D::kNone},
             {"model.layers.{}.mlp.gate_up_proj.weight", "blk.{}.ffn_up.weight", D::kFf2, D::kEmbd},
             {"model.layers.{}.mlp.down_proj.weight", "blk.{}.ffn_down.weight", D::kEmbd, D::kFf},
         },
         {kNorm},
         TiedOutput::kDuplicate});
    Architecture gpt2 = {
        "GPT2LMHeadModel",
        "gpt2",
        Family::kGpt2,
        {{"wte.weight", "token_embd.weight", D::kVocab, D::kEmbd},
         {"wpe.weight", "position_embd.weight", D::kCtx, D::kEmbd}},
        {
            {"h.{}.ln_1.weight", "blk.{}.attn_norm.weight", D::kEmbd, D::kNone},
            {"h.{}.ln_1.bias", "blk.{}.attn_norm.bias", D::kEmbd, D::kNone},
            {"h.{}.attn.c_attn.weight", "blk.{}.attn_qkv.weight", D::kEmbd, D::kQkv, T::kTranspose},
            {"h.{}.attn.c_attn.bias", "blk.{}.attn_qkv.bias", D::kQkv, D::kNone},
            {"h.{}.attn.c_proj.weight", "blk.{}.attn_output.weight", D::kEmbd, D::kEmbd,
             T::kTranspose},
            {"h.{}.attn.c_proj.bias", "blk.{}.attn_output.bias", D::kEmbd, D::kNone},
            {"h.{}.ln_2.weight", "blk.{}.ffn_norm.weight", D::kEmbd, D::kNone},
            {"h.{}.ln_2.bias", "blk.{}.ffn_norm.bias", D::kEmbd, D::kNone},
            {"h.{}.mlp.c_fc.weight", "blk.{}.ffn_up.weight", D::kEmbd, D::kFf, T::kTranspose},
            {"h.{}.mlp.c_fc.bias", "blk.{}.ffn_up.bias", D::kFf, D::kNone},
            {"h.{}.mlp.c_proj.weight", "blk.{}.ffn_down.weight", D::kFf, D::kEmbd, T::kTranspose},
            {"h.{}.mlp.c_proj.bias", "blk.{}.ffn_down.bias", D::kEmbd, D::kNone},
        },
        {{"ln_f.weight", "output_norm.weight", D::kEmbd, D::kNone},
         {"ln_f.bias", "output_norm.bias", D::kEmbd, D::kNone}},
        TiedOutput::kDuplicate};
    gpt2.name_prefix = "transformer.";
    a.push_back(gpt2);
    Architecture gemma = {
        "GemmaForCausalLM",
        "gemma",
        Family::kGemma,
        {kEmbed},
        llama_blocks(false, false, T::kAddOne),
        {{"model.norm.weight", "output_norm.weight", D::kEmbd, D::kNone, T::kAddOne}},
        TiedOutput::kNone};
    gemma.lm_head = false;
    a.push_back(gemma);
    // The encoder of BERT: post-LN blocks with biases everywhere; its pooler and pre-training
    // heads are not part of what an embedding model computes (see is_ignored_tensor).
    Architecture bert = {
        "BertModel",
        "bert",
        Family::kBert,
        {{"embeddings.word_embeddings.weight", "token_embd.weight", D::kVocab, D::kEmbd},
         {"embeddings.token_type_embeddings.weight", "token_types.weight", D::kTypes, D::kEmbd},
         {"embeddings.position_embeddings.weight", "position_embd.weight", D::kCtx, D::kEmbd},
         {"embeddings.LayerNorm.weight", "token_embd_norm.weight", D::kEmbd, D::kNone},
         {"embeddings.LayerNorm.bias", "token_embd_norm.bias", D::kEmbd, D::kNone}},
        {
            {"encoder.layer.{}.attention.self.query.weight", "blk.{}.attn_q.weight", D::kQ,
             D::kEmbd},
            {"encoder.layer.{}.attention.self.query.bias", "blk.{}.attn_q.bias", D::kQ, D::kNone},
            {"encoder.layer.{}.attention.self.key.weight", "blk.{}.attn_k.weight", D::kKv,
             D::kEmbd},
            {"encoder.layer.{}.attention.self.key.bias", "blk.{}.attn_k.bias", D::kKv, D::kNone},
            {"encoder.layer.{}.attention.self.value.weight", "blk.{}.attn_v.weight", D::kKv,
             D::kEmbd},
            {"encoder.layer.{}.attention.self.value.bias", "blk.{}.attn_v.bias", D::kKv, D::kNone},
            {"encoder.layer.{}.attention.output.dense.weight", "blk.{}.attn_output.weight",
             D::kEmbd, D::kQ},
            {"encoder.layer.{}.attention.output.dense.bias", "blk.{}.attn_output.bias", D::kEmbd,
             D::kNone},
            {"encoder.layer.{}.attention.output.LayerNorm.weight", "blk.{}.attn_output_norm.weight",
             D::kEmbd, D::kNone},
            {"encoder.layer.{}.attention.output.LayerNorm.bias", "blk.{}.attn_output_norm.bias",
             D::kEmbd, D::kNone},
            {"encoder.layer.{}.intermediate.dense.weight", "blk.{}.ffn_up.weight", D::kFf,
             D::kEmbd},
            {"encoder.layer.{}.intermediate.dense.bias", "blk.{}.ffn_up.bias", D::kFf, D::kNone},
            {"encoder.layer.{}.output.dense.weight", "blk.{}.ffn_down.weight", D::kEmbd, D::kFf},
            {"encoder.layer.{}.output.dense.bias", "blk.{}.ffn_down.bias", D::kEmbd, D::kNone},
            {"encoder.layer.{}.output.LayerNorm.weight", "blk.{}.layer_output_norm.weight",
             D::kEmbd, D::kNone},
            {"encoder.layer.{}.output.LayerNorm.bias", "blk.{}.layer_output_norm.bias", D::kEmbd,
             D::kNone},
        },
        {},
        TiedOutput::kNone};
    bert.lm_head = false;
    bert.name_prefix = "bert.";
    a.push_back(bert);
    return a;
  }();
  return archs;
}

bool starts_with(const std::string& s, const char* prefix) {
  return s.compare(0, std::strlen(prefix), prefix) == 0;
}

// Tensors of checkpoints that carry no weights (buffers saved by older transformers), and
// BERT's parts that an encoder for embeddings does not run: the pooler (a dense layer on [CLS]
// for next-sentence prediction) and the pre-training heads, as llama.cpp's converter drops them.
bool is_ignored_tensor(const Architecture& arch, const std::string& name) {
  for (const char* suffix : {".rotary_emb.inv_freq", ".attn.bias", ".attn.masked_bias"}) {
    const size_t n = std::strlen(suffix);
    if (name.size() >= n && name.compare(name.size() - n, n, suffix) == 0) return true;
  }
  if (arch.family != Family::kBert) return false;
  const std::string n =
      starts_with(name, arch.name_prefix) ? name.substr(std::strlen(arch.name_prefix)) : name;
  return n == "embeddings.position_ids" || starts_with(n, "pooler.") || starts_with(n, "cls.");
}

std::string with_block(const char* pattern, uint64_t block) {
  std::string s = pattern;
  const size_t pos = s.find("{}");
  if (pos != std::string::npos) s.replace(pos, 2, std::to_string(block));
  return s;
}

const Architecture& find_architecture(const JsonObject& config) {
  const nlohmann::json* list = config.find_any({"architectures"});
  if (list == nullptr || !list->is_array() || list->empty() || !(*list)[0].is_string()) {
    config.fail("architectures",
                "missing: the model class (e.g. [\"LlamaForCausalLM\"]) is needed");
  }
  const std::string name = (*list)[0].get<std::string>();
  std::string known;
  for (const Architecture& a : architectures()) {
    if (name == a.hf_name) return a;
    known += std::string(known.empty() ? "" : ", ") + a.hf_name;
  }
  detail::fail(config.origin() + ": architecture '" + name + "' is not supported (sllm converts " +
               known + ")");
}

Hparams read_hparams(const Architecture& arch, const JsonObject& c) {
  const auto check = [&](uint64_t v, const char* what) {
    if (v == 0 || v >= (uint64_t(1) << 31)) {
      detail::fail(c.origin() + ": " + what + " is " + std::to_string(v) +
                   ", not a size between 1 and 2^31");
    }
  };
  Hparams h;
  if (arch.family == Family::kGpt2) {
    h.n_embd = c.get_uint({"n_embd", "hidden_size"});
    h.n_layer = c.get_uint({"n_layer", "num_hidden_layers"});
    h.n_head = c.get_uint({"n_head", "num_attention_heads"});
    h.n_head_kv = h.n_head;
    h.n_ff = c.find_uint({"n_inner"}).value_or(4 * h.n_embd);
    h.n_ctx = c.get_uint({"n_positions", "n_ctx"});
  } else {
    h.n_embd = c.get_uint({"hidden_size"});
    h.n_layer = c.get_uint({"num_hidden_layers"});
    h.n_head = c.get_uint({"num_attention_heads"});
    h.n_head_kv = c.find_uint({"num_key_value_heads"}).value_or(h.n_head);
    h.n_ff = c.get_uint({"intermediate_size"});
    h.n_ctx = c.get_uint({"max_position_embeddings"});
  }
  if (arch.family == Family::kBert) {
    h.n_token_types = c.find_uint({"type_vocab_size"}).value_or(2);  // BertConfig's default
    check(h.n_token_types, "type_vocab_size");
    const std::string positions = c.find_string("position_embedding_type").value_or("absolute");
    if (positions != "absolute") {
      c.fail("position_embedding_type",
             "is '" + positions + "'; sllm's bert runs learned absolute positions only");
    }
  }
  h.n_vocab = c.get_uint({"vocab_size"});
  check(h.n_embd, "the embedding size");
  check(h.n_layer, "the layer count");
  check(h.n_head, "the head count");
  check(h.n_head_kv, "the key/value head count");
  check(h.n_ff, "the feed-forward size");
  check(h.n_vocab, "vocab_size");
  if (h.n_vocab > kMaxTokens) {
    detail::fail(c.origin() + ": vocab_size " + std::to_string(h.n_vocab) + " is more than " +
                 std::to_string(kMaxTokens) + " tokens");
  }
  check(h.n_ctx, "the context length");
  if (h.n_head % h.n_head_kv != 0) {
    detail::fail(c.origin() + ": num_attention_heads " + std::to_string(h.n_head) +
                 " is not a multiple of num_key_value_heads " + std::to_string(h.n_head_kv));
  }
  if (const std::optional<uint64_t> hd = c.find_uint({"head_dim"});
      hd && arch.family != Family::kGpt2 && arch.family != Family::kBert) {
    h.head_dim = *hd;
  } else {
    if (h.n_embd % h.n_head != 0) {
      detail::fail(c.origin() + ": the embedding size " + std::to_string(h.n_embd) +
                   " is not a multiple of the head count " + std::to_string(h.n_head));
    }
    h.head_dim = h.n_embd / h.n_head;
  }
  check(h.head_dim, "head_dim");
  const bool rope = arch.family != Family::kGpt2 && arch.family != Family::kBert;
  if (h.head_dim % 2 != 0 && rope) {
    detail::fail(c.origin() + ": head_dim " + std::to_string(h.head_dim) +
                 " is odd; rotary embeddings rotate pairs");
  }
  return h;
}

// ---- tensors ----

struct PlannedTensor {
  std::string name;          // GGUF
  std::vector<uint64_t> ne;  // GGUF dims, ne[0] the row length
  TensorType type = TensorType::F32;
  const SafeTensor* src = nullptr;  // null: values
  Transform transform = Transform::kCopy;
  uint64_t heads = 0;         // for kPermuteQ/K
  std::vector<float> values;  // generated tensors
  uint64_t n_bytes() const {
    uint64_t n = 1;
    for (uint64_t d : ne) n *= d;
    return tensor_row_bytes(type, n);
  }
};

TensorType dtype_tensor_type(const SafeTensor& t) {
  if (t.dtype == "F32") return TensorType::F32;
  if (t.dtype == "F16") return TensorType::F16;
  if (t.dtype == "BF16") return TensorType::BF16;
  detail::fail(t.file + ": tensor '" + t.name + "' has dtype " + t.dtype +
               "; sllm converts F32, F16 and BF16 tensors");
}

// The type of a converted tensor, by llama.cpp's converter's rule: vectors, norms, biases and
// learned positions stay F32; matrices take the output type.
TensorType stored_type(const std::string& gguf_name, size_t n_dims, TensorType matrix_type) {
  const auto ends = [&](const char* s) {
    const size_t n = std::strlen(s);
    return gguf_name.size() >= n && gguf_name.compare(gguf_name.size() - n, n, s) == 0;
  };
  if (n_dims <= 1 || ends("_norm.weight") || !ends(".weight") ||
      gguf_name == "position_embd.weight" || gguf_name == "token_types.weight") {
    return TensorType::F32;
  }
  return matrix_type;
}

float load_element(const uint8_t* p, TensorType type) {
  if (type == TensorType::F32) {
    float f;
    std::memcpy(&f, p, 4);
    return f;
  }
  uint16_t h;
  std::memcpy(&h, p, 2);
  return type == TensorType::F16 ? fp16_to_f32(h) : bf16_to_f32(h);
}

void store_element(uint8_t* p, TensorType type, float f) {
  if (type == TensorType::F32) {
    std::memcpy(p, &f, 4);
    return;
  }
  const uint16_t h = type == TensorType::F16 ? f32_to_fp16(f) : f32_to_bf16(f);
  std::memcpy(p, &h, 2);
}

// Writes tensor t into dst, one output row at a time (so memory stays at the output buffer).
void fill_tensor(const PlannedTensor& t, uint8_t* dst) {
  const uint64_t row_len = t.ne[0];
  uint64_t n_rows = 1;
  for (size_t i = 1; i < t.ne.size(); ++i) n_rows *= t.ne[i];
  const uint32_t out_size = t.type == TensorType::F32 ? 4 : 2;
  if (t.src == nullptr) {
    for (uint64_t i = 0; i < row_len * n_rows; ++i)
      store_element(dst + i * out_size, t.type, t.values[i]);
    return;
  }
  const TensorType in_type = dtype_tensor_type(*t.src);
  const uint32_t in_size = t.src->dtype_bytes;
  // A 1-D tensor (a bias) permutes its elements as a matrix permutes its rows.
  const bool vector = t.ne.size() == 1;
  const uint64_t perm_rows = vector ? row_len : n_rows;
  const uint64_t perm_len = vector ? 1 : row_len;
  const uint64_t head_dim = t.heads ? perm_rows / t.heads : 0;
  const bool permute = t.transform == Transform::kPermuteQ || t.transform == Transform::kPermuteK;
  const bool exact = in_type == t.type && t.transform != Transform::kAddOne &&
                     t.transform != Transform::kTranspose;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < int64_t(perm_rows); ++r) {
    uint64_t src_row = uint64_t(r);
    if (permute) {
      // Output row h*d + 2i + j holds input row h*d + j*d/2 + i.
      const uint64_t h = src_row / head_dim, k = src_row % head_dim;
      src_row = h * head_dim + (k % 2) * (head_dim / 2) + k / 2;
    }
    uint8_t* out = dst + uint64_t(r) * perm_len * out_size;
    if (t.transform == Transform::kTranspose) {
      // Output row r is input column r (the input has n_rows columns... of row_len rows).
      for (uint64_t c = 0; c < perm_len; ++c) {
        const uint8_t* in = t.src->data + (c * perm_rows + uint64_t(r)) * in_size;
        store_element(out + c * out_size, t.type, load_element(in, in_type));
      }
      continue;
    }
    const uint8_t* in = t.src->data + src_row * perm_len * in_size;
    if (exact) {
      std::memcpy(out, in, perm_len * in_size);
      continue;
    }
    for (uint64_t c = 0; c < perm_len; ++c) {
      float v = load_element(in + c * in_size, in_type);
      if (t.transform == Transform::kAddOne) v += 1.0f;
      store_element(out + c * out_size, t.type, v);
    }
  }
}

// Llama 3.1's rope scaling as rope_freqs.weight: a factor dividing each rotation frequency,
// computed as llama.cpp's converter does.
std::vector<float> llama3_rope_factors(const JsonObject& config, const nlohmann::json& scaling,
                                       uint64_t rope_dim) {
  const double base = config.find_number({"rope_theta"}).value_or(10000.0);
  const JsonObject s(scaling, config.origin() + ": rope_scaling");
  const double factor = s.find_number({"factor"}).value_or(8.0);
  const double low_freq_factor = s.find_number({"low_freq_factor"}).value_or(1.0);
  const double high_freq_factor = s.find_number({"high_freq_factor"}).value_or(4.0);
  const double old_context =
      s.find_number({"original_max_position_embeddings"})
          .value_or(config.find_number({"original_max_position_embeddings"}).value_or(8192.0));
  const double low_freq_wavelen = old_context / low_freq_factor;
  const double high_freq_wavelen = old_context / high_freq_factor;
  if (low_freq_wavelen == high_freq_wavelen) {
    s.fail("low_freq_factor", "equals high_freq_factor");
  }
  std::vector<float> factors;
  for (uint64_t i = 0; i < rope_dim; i += 2) {
    const float freq = float(1.0 / std::pow(base, double(i) / double(rope_dim)));
    const double wavelen = 2 * M_PI / freq;
    if (wavelen < high_freq_wavelen) {
      factors.push_back(1.0f);
    } else if (wavelen > low_freq_wavelen) {
      factors.push_back(float(factor));
    } else {
      const double smooth =
          (old_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
      factors.push_back(float(1.0 / ((1 - smooth) / factor + smooth)));
    }
  }
  return factors;
}

// A float array of config.json as floats, Error unless it has n numbers.
std::vector<float> float_list(const JsonObject& s, const char* key, size_t n) {
  const nlohmann::json* v = s.find_any({key});
  if (v == nullptr || !v->is_array() || v->size() != n) {
    s.fail(key, "expected a list of " + std::to_string(n) + " numbers");
  }
  std::vector<float> out;
  for (const nlohmann::json& x : *v) {
    if (!x.is_number()) s.fail(key, "expected numbers");
    out.push_back(x.get<float>());
  }
  return out;
}

// The pooling of a sentence-transformers folder as GGUF's pooling_type (1 mean, 2 CLS, 3 last
// token), 0 when it has no Pooling module. The module is where modules.json says, else in
// 1_Pooling (the folder sentence-transformers names it). Appends the files read to files.
uint32_t sentence_transformers_pooling(const std::string& dir, std::vector<std::string>& files) {
  std::string folder = "1_Pooling";
  const std::string modules_path = path_join(dir, "modules.json");
  if (is_regular_file(modules_path)) {
    const nlohmann::json modules = read_json_file(modules_path);
    files.push_back(modules_path);
    if (!modules.is_array()) detail::fail(modules_path + ": expected a list of modules");
    for (const nlohmann::json& m : modules) {
      if (m.is_object() &&
          m.value("type", nlohmann::json()) == "sentence_transformers.models.Pooling") {
        if (!m.value("path", nlohmann::json()).is_string()) {
          detail::fail(modules_path + ": the Pooling module has no path");
        }
        folder = m["path"].get<std::string>();
      }
    }
  }
  const std::string path = path_join(path_join(dir, folder), "config.json");
  if (!is_regular_file(path)) return 0;
  const JsonObject pooling = JsonObject::read(path);
  files.push_back(path);
  // In llama.cpp's converter's order: mean before CLS when a config sets both.
  const std::pair<const char*, uint32_t> modes[] = {{"pooling_mode_mean_tokens", 1},
                                                    {"pooling_mode_cls_token", 2},
                                                    {"pooling_mode_lasttoken", 3}};
  for (const auto& [key, type] : modes) {
    if (pooling.find_bool(key).value_or(false)) return type;
  }
  detail::fail(path +
               ": the pooling is not one sllm runs (it pools by mean, CLS token or last token: "
               "pooling_mode_mean_tokens, pooling_mode_cls_token or pooling_mode_lasttoken)");
}

// ---- the conversion ----

class Converter {
 public:
  Converter(const std::string& dir, const ConvertOptions& options) : dir_(dir), options_(options) {}

  ConvertResult run(const std::string& out);

 private:
  void plan_tensors(const SafetensorsCheckpoint& ckpt);
  void add_rule(const SafetensorsCheckpoint& ckpt, const TensorRule& rule, uint64_t block);
  const SafeTensor* find(const SafetensorsCheckpoint& ckpt, const std::string& name) const;
  void add_tensor(const std::string& name, const SafeTensor* src,
                  const std::vector<uint64_t>& hf_shape, Transform transform);
  void add_values(const std::string& name, std::vector<float> values);
  void add_hparams(GgufWriter& w, const std::string& name) const;
  void check_output(const std::string& out) const;

  std::string dir_;
  ConvertOptions options_;
  JsonObject config_;
  const Architecture* arch_ = nullptr;
  Hparams hp_;
  TensorType matrix_type_ = TensorType::F32;
  std::vector<PlannedTensor> tensors_;
  std::vector<std::string> inputs_;  // files read
  uint32_t pooling_ = 0;             // GGUF's pooling_type; 0: none given
  std::vector<std::string> used_;    // checkpoint tensors converted
};

const SafeTensor* Converter::find(const SafetensorsCheckpoint& ckpt,
                                  const std::string& name) const {
  const std::string prefixed = arch_->name_prefix + name;
  for (const std::string& n : {name, prefixed}) {
    if (const SafeTensor* t = ckpt.find(n)) return t;
    // BERT checkpoints ported from TensorFlow name LayerNorm's scale and shift gamma and beta.
    if (arch_->family == Family::kBert && n.find(".LayerNorm.") != std::string::npos) {
      const size_t dot = n.rfind('.');
      const std::string tf = n.substr(0, dot) + (n.substr(dot) == ".weight" ? ".gamma" : ".beta");
      if (const SafeTensor* t = ckpt.find(tf)) return t;
    }
  }
  return nullptr;
}

void Converter::add_tensor(const std::string& name, const SafeTensor* src,
                           const std::vector<uint64_t>& hf_shape, Transform transform) {
  PlannedTensor t;
  t.name = name;
  t.src = src;
  t.transform = transform;
  t.ne.assign(hf_shape.rbegin(), hf_shape.rend());
  if (transform == Transform::kTranspose) std::reverse(t.ne.begin(), t.ne.end());
  if (transform == Transform::kPermuteQ) t.heads = hp_.n_head;
  if (transform == Transform::kPermuteK) t.heads = hp_.n_head_kv;
  t.type = stored_type(name, t.ne.size(), matrix_type_);
  tensors_.push_back(std::move(t));
}

void Converter::add_values(const std::string& name, std::vector<float> values) {
  PlannedTensor t;
  t.name = name;
  t.ne = {values.size()};
  t.values = std::move(values);
  tensors_.push_back(std::move(t));
}

void Converter::add_rule(const SafetensorsCheckpoint& ckpt, const TensorRule& rule,
                         uint64_t block) {
  const std::string name = with_block(rule.hf, block);
  const SafeTensor* src = find(ckpt, name);
  if (src == nullptr) {
    if (rule.optional) return;
    detail::fail(dir_ + ": tensor '" + name + "' is missing from the checkpoint (a " +
                 arch_->hf_name + " with " + std::to_string(hp_.n_layer) + " layers needs it)");
  }
  dtype_tensor_type(*src);
  std::vector<uint64_t> want = {dim_size(rule.rows, hp_)};
  if (rule.cols != Dim::kNone) want.push_back(dim_size(rule.cols, hp_));
  if (src->shape != want) {
    SafeTensor expected;
    expected.shape = want;
    detail::fail(src->file + ": tensor '" + name + "' has shape " + src->shape_string() +
                 " but config.json implies " + expected.shape_string() + " (embedding " +
                 std::to_string(hp_.n_embd) + ", heads " + std::to_string(hp_.n_head) + "/" +
                 std::to_string(hp_.n_head_kv) + " of " + std::to_string(hp_.head_dim) +
                 ", feed-forward " + std::to_string(hp_.n_ff) + ", vocabulary " +
                 std::to_string(hp_.n_vocab) + ")");
  }
  used_.push_back(src->name);
  add_tensor(with_block(rule.gguf, block), src, src->shape, rule.transform);
}

void Converter::plan_tensors(const SafetensorsCheckpoint& ckpt) {
  // The matrix type: the option's, or the checkpoint's commonest float type by bytes.
  uint64_t bytes[3] = {0, 0, 0};  // F32, F16, BF16
  for (const auto& [name, t] : ckpt.tensors()) {
    if (t->shape.size() != 2) continue;
    if (t->dtype == "F32") bytes[0] += t->n_bytes;
    if (t->dtype == "F16") bytes[1] += t->n_bytes;
    if (t->dtype == "BF16") bytes[2] += t->n_bytes;
  }
  switch (options_.type) {
    case OutputType::kF32:
      matrix_type_ = TensorType::F32;
      break;
    case OutputType::kF16:
      matrix_type_ = TensorType::F16;
      break;
    case OutputType::kBF16:
      matrix_type_ = TensorType::BF16;
      break;
    case OutputType::kAuto:
      matrix_type_ = bytes[1] > bytes[0] && bytes[1] >= bytes[2]  ? TensorType::F16
                     : bytes[2] > bytes[0] && bytes[2] > bytes[1] ? TensorType::BF16
                                                                  : TensorType::F32;
      break;
  }

  const Architecture& a = *arch_;
  // Rope frequency factors come first, as llama.cpp's converter generates them.
  const nlohmann::json* scaling = config_.find_any({"rope_scaling"});
  const std::string scaling_type =
      scaling != nullptr && scaling->is_object()
          ? scaling->value("rope_type", scaling->value("type", std::string()))
          : std::string();
  if (a.family == Family::kLlama && scaling_type == "llama3") {
    add_values("rope_freqs.weight", llama3_rope_factors(config_, *scaling, hp_.head_dim));
  }
  if (a.family == Family::kPhi3 && (scaling_type == "longrope" || scaling_type == "su")) {
    const JsonObject s(*scaling, config_.origin() + ": rope_scaling");
    add_values("rope_factors_long.weight", float_list(s, "long_factor", hp_.head_dim / 2));
    add_values("rope_factors_short.weight", float_list(s, "short_factor", hp_.head_dim / 2));
  }
  for (const TensorRule& r : a.head) add_rule(ckpt, r, 0);
  for (uint64_t b = 0; b < hp_.n_layer; ++b) {
    for (const TensorRule& r : a.blocks) add_rule(ckpt, r, b);
  }
  for (const TensorRule& r : a.tail) add_rule(ckpt, r, 0);

  const std::string embed_name = with_block(a.head[0].hf, 0);
  const SafeTensor* lm_head = find(ckpt, "lm_head.weight");
  if (lm_head != nullptr && !a.lm_head) used_.push_back(lm_head->name);
  if (lm_head != nullptr && a.lm_head) {
    add_rule(ckpt, {"lm_head.weight", "output.weight", D::kVocab, D::kEmbd}, 0);
  } else if (a.lm_head && config_.find_bool("tie_word_embeddings") == false) {
    detail::fail(dir_ +
                 ": tensor 'lm_head.weight' is missing from the checkpoint "
                 "(config.json says tie_word_embeddings is false)");
  } else if (a.tied_output == TiedOutput::kDuplicate) {
    const SafeTensor* embed = find(ckpt, embed_name);
    add_tensor("output.weight", embed, embed->shape, Transform::kCopy);
  }

  // Every tensor of the checkpoint must have been converted: one left over means a variant of
  // the architecture that this converter would silently get wrong.
  std::sort(used_.begin(), used_.end());
  for (const auto& [name, t] : ckpt.tensors()) {
    if (!std::binary_search(used_.begin(), used_.end(), name) && !is_ignored_tensor(a, name)) {
      detail::fail(t->file + ": tensor '" + name + "' is not part of a " + a.hf_name +
                   " as sllm converts it (" + t->dtype + " " + t->shape_string() + ")");
    }
  }
}

void Converter::add_hparams(GgufWriter& w, const std::string& name) const {
  const std::string p = std::string(arch_->gguf_name) + ".";
  const auto u32 = [&](const std::string& key, uint64_t v) {
    w.set(p + key, GgufValue::u32(uint32_t(v)));
  };
  const auto f32 = [&](const std::string& key, double v) {
    w.set(p + key, GgufValue::f32(float(v)));
  };
  const JsonObject& c = config_;
  const Family f = arch_->family;
  w.set("general.architecture", GgufValue::string(arch_->gguf_name));
  w.set("general.type", GgufValue::string("model"));
  w.set("general.name", GgufValue::string(name));
  u32("block_count", hp_.n_layer);
  u32("context_length", hp_.n_ctx);
  u32("embedding_length", hp_.n_embd);
  u32("feed_forward_length", hp_.n_ff);
  u32("attention.head_count", hp_.n_head);
  if (f == Family::kBert) {
    // llama.cpp's converter writes BERT's keys only: no key/value heads, no rope.
    f32("attention.layer_norm_epsilon", c.get_number({"layer_norm_eps"}));
    w.set(p + "attention.causal", GgufValue::boolean(false));
    if (pooling_ != 0) u32("pooling_type", pooling_);
    w.set("tokenizer.ggml.token_type_count", GgufValue::u32(uint32_t(hp_.n_token_types)));
  } else if (f == Family::kGpt2) {
    u32("attention.head_count_kv", hp_.n_head_kv);
    f32("attention.layer_norm_epsilon", c.get_number({"layer_norm_epsilon", "layer_norm_eps"}));
  } else {
    u32("attention.head_count_kv", hp_.n_head_kv);
    f32("attention.layer_norm_rms_epsilon", c.get_number({"rms_norm_eps"}));
    if (const std::optional<double> theta = c.find_number({"rope_theta"})) {
      f32("rope.freq_base", *theta);
    }
  }
  if (f == Family::kGemma || c.has("head_dim")) {
    u32("attention.key_length", hp_.head_dim);
    u32("attention.value_length", hp_.head_dim);
  }
  if (f == Family::kLlama) u32("vocab_size", hp_.n_vocab);
  if (f == Family::kLlama || f == Family::kPhi3) u32("rope.dimension_count", hp_.head_dim);
  if (f == Family::kPhi3) {
    if (const std::optional<uint64_t> orig = c.find_uint({"original_max_position_embeddings"})) {
      u32("rope.scaling.original_context_length", *orig);
    }
    u32("attention.sliding_window", c.find_uint({"sliding_window"}).value_or(0));
  }

  const nlohmann::json* scaling = c.find_any({"rope_scaling"});
  if (scaling != nullptr && scaling->is_object()) {
    const JsonObject s(*scaling, c.origin() + ": rope_scaling");
    const std::string type =
        s.find_string("rope_type").value_or(s.find_string("type").value_or(""));
    if (f == Family::kLlama && type == "linear") {
      w.set(p + "rope.scaling.type", GgufValue::string("linear"));
      f32("rope.scaling.factor", s.get_number({"factor"}));
    } else if (f == Family::kQwen2 && type == "yarn") {
      w.set(p + "rope.scaling.type", GgufValue::string("yarn"));
      f32("rope.scaling.factor", s.get_number({"factor"}));
      u32("rope.scaling.original_context_length", s.get_uint({"original_max_position_embeddings"}));
    } else if (f == Family::kPhi3 && (type == "longrope" || type == "su" || type == "yarn")) {
      const double orig = double(c.get_uint({"original_max_position_embeddings"}));
      const double scale = double(hp_.n_ctx) / orig;
      double attn_factor = 1.0;
      if (scale > 1.0) {
        attn_factor = type == "yarn" ? 0.1 * std::log(scale) + 1.0
                                     : std::sqrt(1 + std::log(scale) / std::log(orig));
      }
      f32("rope.scaling.attn_factor", attn_factor);
    } else if (!(f == Family::kLlama && type == "llama3")) {
      log(LogLevel::kWarn, c.origin() + ": rope_scaling type '" + type + "' is not converted for " +
                               arch_->gguf_name + "; the model will use plain rope");
    }
  }
  uint32_t file_type = 0;
  if (matrix_type_ == TensorType::F16) file_type = 1;
  if (matrix_type_ == TensorType::BF16) file_type = 32;
  w.set("general.file_type", GgufValue::u32(file_type));
}

void Converter::check_output(const std::string& out) const {
  struct stat out_st;
  if (::stat(out.c_str(), &out_st) != 0) return;  // a new file
  if (S_ISDIR(out_st.st_mode)) detail::fail("the output '" + out + "' is a folder");
  for (const std::string& in : inputs_) {
    struct stat in_st;
    if (::stat(in.c_str(), &in_st) == 0 && in_st.st_dev == out_st.st_dev &&
        in_st.st_ino == out_st.st_ino) {
      detail::fail("refusing to write '" + out + "': it is the input file '" + in + "'");
    }
  }
}

ConvertResult Converter::run(const std::string& out) {
  struct stat st;
  if (::stat(dir_.c_str(), &st) != 0) detail::fail_errno("open the folder", dir_, errno);
  if (!S_ISDIR(st.st_mode))
    detail::fail("'" + dir_ + "' is not a folder (a Hugging Face checkpoint)");
  const std::string config_path = path_join(dir_, "config.json");
  const bool has_config = is_regular_file(config_path);
  if (!has_config && !options_.vocab_only) {
    detail::fail(dir_ + ": no config.json (a Hugging Face checkpoint folder has one)");
  }
  if (has_config) {
    config_ = JsonObject::read(config_path);
    arch_ = &find_architecture(config_);
    hp_ = read_hparams(*arch_, config_);
  }
  // The tensors first: their shapes check config.json's sizes, vocab_size among them.
  SafetensorsCheckpoint ckpt;
  if (!options_.vocab_only) {
    ckpt = SafetensorsCheckpoint::open(dir_);
    inputs_ = ckpt.files();
    plan_tensors(ckpt);
  }
  if (arch_ != nullptr && arch_->family == Family::kBert) {
    pooling_ = sentence_transformers_pooling(dir_, inputs_);
  }
  const HfTokenizer tokenizer = read_hf_tokenizer(dir_, has_config ? hp_.n_vocab : 0);
  inputs_.insert(inputs_.end(), tokenizer.files.begin(), tokenizer.files.end());

  // general.name: the folder's name, as llama.cpp's converter falls back to.
  char* real = ::realpath(dir_.c_str(), nullptr);
  std::string name = real != nullptr ? real : dir_;
  std::free(real);
  while (name.size() > 1 && name.back() == '/') name.pop_back();
  name = name.substr(name.find_last_of('/') + 1);

  GgufWriter w;
  if (has_config) {
    add_hparams(w, name);
  } else {
    w.set("general.name", GgufValue::string(name));
  }
  add_tokenizer_metadata(w, tokenizer);
  w.set("general.quantization_version", GgufValue::u32(2));

  ConvertResult result;
  result.architecture = arch_ != nullptr ? arch_->gguf_name : "";
  result.type = matrix_type_;
  result.n_tensors = tensors_.size();
  result.n_tokens = tokenizer.vocab.tokens.size();
  for (const PlannedTensor& t : tensors_) result.n_bytes += t.n_bytes();
  uint64_t done = 0;
  for (const PlannedTensor& t : tensors_) {
    w.add_tensor(t.name, t.type, t.ne, [&, total = result.n_bytes](uint8_t* dst) {
      fill_tensor(t, dst);
      if (t.src != nullptr) t.src->release_pages();
      done += t.n_bytes();
      if (options_.progress) options_.progress(done, total);
    });
  }
  check_output(out);
  w.write(out);
  return result;
}

}  // namespace

ConvertResult convert_checkpoint(const std::string& dir, const std::string& out,
                                 const ConvertOptions& options) {
  try {
    return Converter(dir, options).run(out);
  } catch (const nlohmann::json::exception& e) {
    // The tokenizer's and the safetensors' readers name their files; what is left is config.json.
    detail::fail(path_join(dir, "config.json") +
                 ": a value of an unexpected type: " + json_error_text(e));
  }
}

}  // namespace hf
}  // namespace sllm
