namespace sllm {
namespace detail {

// The supported architectures: what each one's layers do, as llama.cpp computes them for the
// same GGUF files (the reference logits of the tests come from there).
inline const std::vector<ArchitectureTraits>& architecture_traits() {
  static const std::vector<ArchitectureTraits> table = [] {
    std::vector<ArchitectureTraits> all;
    ArchitectureTraits llama;  // Llama 1-3, Mistral, TinyLlama, SmolLM
    llama.name = "llama";
    llama.honours_sliding_window = true;  // Mistral 7B v0.1
    all.push_back(llama);

    ArchitectureTraits qwen2;  // Qwen 1.5, Qwen2, Qwen2.5
    qwen2.name = "qwen2";
    qwen2.rope_style = RopeStyle::kNeox;
    qwen2.qkv_bias = true;
    all.push_back(qwen2);

    // Phi-3's files carry attention.sliding_window, but llama.cpp ignores it (its results
    // were worse with it); phi3 follows llama.cpp, so the same file gives the same logits.
    ArchitectureTraits phi3;
    phi3.name = "phi3";
    phi3.rope_style = RopeStyle::kNeox;
    phi3.fused_qkv = true;
    phi3.fused_gate_up = true;
    all.push_back(phi3);

    ArchitectureTraits gpt2;
    gpt2.name = "gpt2";
    gpt2.norm = NormType::kLayer;
    gpt2.positions = PositionType::kLearned;
    gpt2.ffn = FfnType::kGelu;
    gpt2.fused_qkv = true;
    gpt2.all_biases = true;
    all.push_back(gpt2);

    // Gemma's RMSNorm weights are applied as the file stores them: llama.cpp's converter has
    // already added the 1 that Gemma's own code adds at run time.
    ArchitectureTraits gemma;
    gemma.name = "gemma";
    gemma.rope_style = RopeStyle::kNeox;
    gemma.ffn = FfnType::kGeGlu;
    gemma.scaled_embedding = true;
    all.push_back(gemma);

    // BERT encoders (bge, all-MiniLM, ...): embeddings only, no rope, post-LN.
    ArchitectureTraits bert;
    bert.name = "bert";
    bert.norm = NormType::kLayer;
    bert.positions = PositionType::kLearned;
    bert.ffn = FfnType::kGelu;
    bert.all_biases = true;
    bert.token_types = true;
    bert.embedding_norm = true;
    bert.post_norm = true;
    bert.causal = false;
    all.push_back(bert);
    return all;
  }();
  return table;
}

inline std::string shape_of(size_t cols, size_t rows) {
  return "[" + std::to_string(cols) + ", " + std::to_string(rows) + "]";
}

inline const TensorInfo& required_tensor(const Gguf& gguf, const std::string& name) {
  const TensorInfo* t = gguf.find_tensor(name);
  if (t == nullptr) {
    fail("tensor " + name + " is missing from " + gguf.path() + " (the " +
         gguf.get_or<std::string>("general.architecture", "") + " architecture needs it)");
  }
  return *t;
}

// A 2-D weight of cols x rows (ggml order: ne[0] = cols) read in place. The one place that
// decides which tensor types the matmul runs.
inline MatrixView weight_matrix(const Gguf& gguf, const TensorInfo& t, size_t cols, size_t rows) {
  const bool quantized = matmul_q_reads(t.type);
  if (t.type != TensorType::F32 && t.type != TensorType::F16 && t.type != TensorType::BF16 &&
      !quantized) {
    fail("tensor " + t.name + " has type " + tensor_type_name(t.type) +
         ", which this build cannot run yet (supported: F32, F16, BF16, Q8_0, Q4_0, Q5_0, Q2_K, "
         "Q3_K, Q4_K, Q5_K, Q6_K)");
  }
  if (t.n_dims != 2 || t.ne[0] != cols || t.ne[1] != rows) {
    fail("tensor " + t.name + " in " + gguf.path() + " has shape " + t.shape_string() +
         ", but the model's metadata implies " + shape_of(cols, rows));
  }
  const size_t block = tensor_type_info(uint32_t(t.type))->block_elems;
  if (quantized && cols % block != 0) {
    // Old ggml let blocks run across rows (the Q8_0 stories260K file); sllm reads rows in place.
    fail("tensor " + t.name + " in " + gguf.path() + " has rows of " + std::to_string(cols) +
         " values, not a whole number of " + tensor_type_name(t.type) + " blocks of " +
         std::to_string(block) + "; re-quantize the model with a current tool");
  }
  const size_t elem = t.type == TensorType::F32 ? 4 : 2;  // quantized blocks start with an f16
  if (reinterpret_cast<uintptr_t>(t.data) % elem != 0) {
    fail("tensor " + t.name + " in " + gguf.path() + " is not aligned to its element size");
  }
  return MatrixView{t.type, t.data, rows, cols, size_t(tensor_row_bytes(t.type, cols))};
}

inline MatrixView weight_matrix(const Gguf& gguf, const std::string& name, size_t cols,
                                size_t rows) {
  return weight_matrix(gguf, required_tensor(gguf, name), cols, rows);
}

// A 1-D F32 weight of n elements (norm weights, biases, rope frequency factors).
inline const float* weight_vector(const Gguf& gguf, const TensorInfo& t, size_t n) {
  if (t.type != TensorType::F32) {
    fail("tensor " + t.name + " has type " + tensor_type_name(t.type) +
         ", but sllm reads this vector only as F32");
  }
  if (t.ne[0] != n || t.n_elements() != n) {
    fail("tensor " + t.name + " in " + gguf.path() + " has shape " + t.shape_string() +
         ", but the model's metadata implies [" + std::to_string(n) + "]");
  }
  if (reinterpret_cast<uintptr_t>(t.data) % 4 != 0) {
    fail("tensor " + t.name + " in " + gguf.path() + " is not aligned to its element size");
  }
  return reinterpret_cast<const float*>(t.data);
}

inline const float* weight_vector(const Gguf& gguf, const std::string& name, size_t n) {
  return weight_vector(gguf, required_tensor(gguf, name), n);
}

// The vector when the file has it, else null; an Error when it is missing but required.
inline const float* optional_vector(const Gguf& gguf, const std::string& name, size_t n,
                                    bool required) {
  if (required) return weight_vector(gguf, name, n);
  const TensorInfo* t = gguf.find_tensor(name);
  return t != nullptr ? weight_vector(gguf, *t, n) : nullptr;
}

template <typename T>
void grow(AlignedBuffer<T>& buffer, size_t n) {
  if (buffer.size() < n) buffer.resize(n);
}

}  // namespace detail

ModelConfig ModelConfig::from_gguf(const Gguf& gguf) {
  ModelConfig c;
  c.architecture = gguf.get<std::string>("general.architecture");
  const auto& table = detail::architecture_traits();
  const auto found = std::find_if(table.begin(), table.end(), [&](const ArchitectureTraits& t) {
    return t.name == c.architecture;
  });
  if (found == table.end()) {
    std::string names;
    for (const ArchitectureTraits& t : table) names += (names.empty() ? "" : ", ") + t.name;
    detail::fail("unsupported architecture '" + c.architecture + "' (general.architecture in " +
                 gguf.path() + "); this build runs: " + names);
  }
  c.traits = *found;
  const std::string a = c.architecture + ".";
  const auto positive = [&](const std::string& key, size_t value) {
    if (value == 0) detail::fail("metadata " + key + " in " + gguf.path() + " is 0");
    return value;
  };
  const auto count = [&](const std::string& key) {
    return positive(key, size_t(gguf.get<uint32_t>(key)));
  };
  const auto count_or = [&](const std::string& key, size_t fallback) {
    return positive(key, gguf.has(key) ? size_t(gguf.get<uint32_t>(key)) : fallback);
  };
  const auto positive_float = [&](const std::string& key, float fallback) {
    const float value = gguf.get_or<float>(key, fallback);
    if (!(value > 0) || !std::isfinite(value)) {
      detail::fail("metadata " + key + " in " + gguf.path() + " must be a positive number");
    }
    return value;
  };
  c.n_embd = count(a + "embedding_length");
  c.n_layers = count(a + "block_count");
  c.n_heads = count(a + "attention.head_count");
  c.n_kv_heads = count_or(a + "attention.head_count_kv", c.n_heads);
  c.n_ff = count(a + "feed_forward_length");
  c.context_length = count(a + "context_length");
  if (c.n_heads % c.n_kv_heads != 0) {
    detail::fail("metadata " + a + "attention.head_count (" + std::to_string(c.n_heads) +
                 ") is not a multiple of " + a + "attention.head_count_kv (" +
                 std::to_string(c.n_kv_heads) + ") in " + gguf.path());
  }
  const bool explicit_dims =
      gguf.has(a + "attention.key_length") && gguf.has(a + "attention.value_length");
  if (!explicit_dims && c.n_embd % c.n_heads != 0) {
    detail::fail("metadata " + a + "embedding_length (" + std::to_string(c.n_embd) +
                 ") is not a multiple of " + a + "attention.head_count (" +
                 std::to_string(c.n_heads) + ") in " + gguf.path());
  }
  c.key_dim = count_or(a + "attention.key_length", c.n_embd / c.n_heads);
  c.value_dim = count_or(a + "attention.value_length", c.n_embd / c.n_heads);
  if (c.key_dim != c.value_dim) {
    detail::fail("metadata " + a + "attention.key_length (" + std::to_string(c.key_dim) +
                 ") differs from " + a + "attention.value_length (" + std::to_string(c.value_dim) +
                 ") in " + gguf.path() + "; sllm runs only equal key and value head sizes");
  }
  c.norm_eps =
      positive_float(a + (c.traits.norm == NormType::kRms ? "attention.layer_norm_rms_epsilon"
                                                          : "attention.layer_norm_epsilon"),
                     1e-5f);
  if (c.traits.positions == PositionType::kRope) {
    c.rope_dim = count_or(a + "rope.dimension_count", c.key_dim);
    if (c.rope_dim % 2 != 0 || c.rope_dim > c.key_dim) {
      detail::fail("metadata " + a + "rope.dimension_count (" + std::to_string(c.rope_dim) +
                   ") must be even and at most the key size " + std::to_string(c.key_dim) + " in " +
                   gguf.path());
    }
    c.rope_base = positive_float(a + "rope.freq_base", 10000.f);
    const std::string scaling = gguf.get_or<std::string>(a + "rope.scaling.type", "none");
    if (scaling != "none") {
      detail::fail("metadata " + a + "rope.scaling.type is '" + scaling + "' in " + gguf.path() +
                   "; this build supports only unscaled rope");
    }
  }
  if (c.traits.honours_sliding_window && gguf.has(a + "attention.sliding_window")) {
    c.sliding_window = gguf.get<uint32_t>(a + "attention.sliding_window");
  }
  if (const GgufValue* tokens = gguf.find("tokenizer.ggml.tokens")) {
    c.n_vocab = positive("tokenizer.ggml.tokens", tokens->as_array().size());
  } else {
    c.n_vocab = detail::required_tensor(gguf, "token_embd.weight").ne[1];
  }
  if (c.n_vocab > size_t(INT32_MAX)) {
    detail::fail("vocabulary of " + std::to_string(c.n_vocab) + " tokens in " + gguf.path() +
                 " does not fit 32-bit token ids");
  }
  return c;
}

Transformer Transformer::load(const Gguf& gguf, const TransformerOptions& options) {
  Transformer t;
  t.config_ = ModelConfig::from_gguf(gguf);
  const ModelConfig& c = t.config_;
  const ArchitectureTraits& arch = c.traits;
  t.n_threads_ = options.n_threads > 0 ? options.n_threads : omp_get_max_threads();
  using detail::checked_mul;
  const size_t d = c.n_embd;
  const size_t q_dim = checked_mul(c.n_heads, c.key_dim, "query size");
  const size_t k_dim = checked_mul(c.n_kv_heads, c.key_dim, "key size");
  const size_t v_dim = checked_mul(c.n_kv_heads, c.value_dim, "value size");
  const size_t att_dim = checked_mul(c.n_heads, c.value_dim, "attention output size");

  // NAME.weight of cols x rows, with NAME.bias when the file has it (or the architecture
  // requires it).
  const auto linear = [&](const std::string& name, size_t cols, size_t rows, bool bias) {
    Linear l;
    l.weight = detail::weight_matrix(gguf, name + ".weight", cols, rows);
    l.bias = detail::optional_vector(gguf, name + ".bias", rows, bias);
    return l;
  };
  // Named parts of the given rows each, or one fused tensor holding them all.
  using Part = std::pair<std::string, size_t>;
  const auto projection = [&](const std::vector<Part>& parts, bool bias) {
    Projection p;
    for (const Part& part : parts) {
      const Linear l = linear(part.first, d, part.second, bias);
      p.weights.push_back(l.weight);
      p.biases.push_back(l.bias);
      p.rows += part.second;
    }
    return p;
  };
  const auto norm = [&](const std::string& name) {
    Norm n;
    n.weight = detail::weight_vector(gguf, name + ".weight", d);
    if (arch.norm == NormType::kLayer) n.bias = detail::weight_vector(gguf, name + ".bias", d);
    return n;
  };

  t.token_embd_ = detail::weight_matrix(gguf, "token_embd.weight", d, c.n_vocab);
  if (arch.positions == PositionType::kLearned) {
    t.position_embd_ = detail::weight_matrix(gguf, "position_embd.weight", d, c.context_length);
  }
  if (arch.token_types) {
    const TensorInfo& types = detail::required_tensor(gguf, "token_types.weight");
    t.token_types_ = detail::weight_matrix(gguf, types, d, std::max<uint64_t>(types.ne[1], 1));
  }
  if (arch.embedding_norm) t.embedding_norm_ = norm("token_embd_norm");
  if (!arch.post_norm) t.output_norm_ = norm("output_norm");
  if (arch.causal) {  // an encoder has no LM head
    if (gguf.find_tensor("output.weight") != nullptr) {
      t.output_ = linear("output", d, c.n_vocab, false);
    } else {
      t.output_.weight = t.token_embd_;  // tied embeddings
    }
  }
  if (const TensorInfo* freqs = gguf.find_tensor("rope_freqs.weight")) {
    if (arch.positions == PositionType::kRope) {
      t.rope_freqs_ = detail::weight_vector(gguf, *freqs, c.rope_dim / 2);
    }
  }
  // Phi-3's 128k-context files scale rope by these (LongRoPE); running without would be wrong.
  for (const char* name : {"rope_factors_long.weight", "rope_factors_short.weight"}) {
    if (gguf.find_tensor(name) != nullptr) {
      detail::fail("tensor " + std::string(name) + " in " + gguf.path() +
                   " asks for LongRoPE scaling, which this build does not support");
    }
  }
  const size_t ffn_rows = checked_mul(c.n_ff, arch.ffn == FfnType::kGelu ? 1 : 2, "FFN size");
  const bool qkv_bias = arch.qkv_bias || arch.all_biases;
  t.layers_.resize(c.n_layers);
  for (size_t l = 0; l < c.n_layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    Layer& layer = t.layers_[l];
    layer.attn_norm = norm(p + (arch.post_norm ? "attn_output_norm" : "attn_norm"));
    layer.qkv =
        arch.fused_qkv
            ? projection({{p + "attn_qkv", q_dim + k_dim + v_dim}}, qkv_bias)
            : projection({{p + "attn_q", q_dim}, {p + "attn_k", k_dim}, {p + "attn_v", v_dim}},
                         qkv_bias);
    layer.attn_output = linear(p + "attn_output", att_dim, d, arch.all_biases);
    layer.ffn_norm = norm(p + (arch.post_norm ? "layer_output_norm" : "ffn_norm"));
    if (arch.ffn == FfnType::kGelu || arch.fused_gate_up) {
      layer.ffn_in = projection({{p + "ffn_up", ffn_rows}}, arch.all_biases);
    } else {
      layer.ffn_in =
          projection({{p + "ffn_gate", c.n_ff}, {p + "ffn_up", c.n_ff}}, arch.all_biases);
    }
    layer.ffn_down = linear(p + "ffn_down", c.n_ff, d, arch.all_biases);
  }
  return t;
}

void Transformer::prepare(ForwardScratch& s, size_t n) const {
  const ModelConfig& c = config_;
  if (n <= s.n_tokens_) return;
  s.n_tokens_ = n;
  using detail::checked_mul;
  const auto rows = [&](size_t width) { return checked_mul(s.n_tokens_, width, "scratch size"); };
  detail::grow(s.x_, rows(c.n_embd));
  detail::grow(s.xb_, rows(c.n_embd));
  detail::grow(s.qkv_, rows(layers_[0].qkv.rows));
  detail::grow(s.att_, rows(c.n_heads * c.value_dim));
  detail::grow(s.ffn_, rows(layers_[0].ffn_in.rows));
  detail::grow(s.rope_cos_, rows(c.rope_dim));
  detail::grow(s.rope_sin_, rows(c.rope_dim));
}

void Transformer::check_tokens(const int32_t* tokens, size_t n) const {
  for (size_t i = 0; i < n; ++i) {
    if (tokens[i] < 0 || size_t(tokens[i]) >= config_.n_vocab) {
      detail::fail("token id " + std::to_string(tokens[i]) + " at batch position " +
                   std::to_string(i) + " is outside the vocabulary of " +
                   std::to_string(config_.n_vocab) + " tokens");
    }
  }
}

void Transformer::check_sequence(const KvSequence& seq, size_t n) const {
  const ModelConfig& c = config_;
  if (seq.pool().shape() != kv_shape()) {
    detail::fail("the KV cache pool was made for another model shape than this transformer's");
  }
  const size_t pos0 = seq.size();
  if (c.traits.positions == PositionType::kLearned && n > c.context_length - pos0) {
    detail::fail("context overflow: the sequence holds " + std::to_string(pos0) + " tokens and " +
                 std::to_string(n) + " more would exceed the " + std::to_string(c.context_length) +
                 " positions that this " + c.architecture + " model has learned (" +
                 c.architecture + ".context_length)");
  }
}

void Transformer::check_decoder() const {
  if (!config_.traits.causal) {
    detail::fail("this " + config_.architecture +
                 " model is an encoder: it gives embeddings (sllm::embed), not next-token logits");
  }
}

void Transformer::forward(const int32_t* tokens, size_t n, KvSequence& seq, ForwardScratch& s,
                          float* logits, LogitsFor which) const {
  check_decoder();
  check_tokens(tokens, n);
  check_sequence(seq, n);
  if (n == 0) return;
  // Reserving first checks the context length, so that a huge n fails there rather than in
  // allocating scratch. Reserved blocks do not change the sequence's size.
  seq.reserve(n);
  const size_t pos0 = seq.size();
  prepare(s, n);
  s.seqs_.assign(n, &seq);
  s.pos_.resize(n);
  s.end_.resize(n);
  for (size_t t = 0; t < n; ++t) {
    s.pos_[t] = pos0 + t;
    s.end_[t] = pos0 + t + 1;
  }
  run(tokens, n, s);
  if (which != LogitsFor::kNone) output_logits(s, which == LogitsFor::kAll ? 0 : n - 1, n, logits);
  seq.commit(n, tokens);
}

void Transformer::forward_batch(const int32_t* tokens, KvSequence* const* seqs, size_t n,
                                ForwardScratch& s, float* logits) const {
  check_decoder();
  check_tokens(tokens, n);
  for (size_t i = 0; i < n; ++i) {
    check_sequence(*seqs[i], 1);
    for (size_t j = 0; j < i; ++j) {
      if (seqs[j] == seqs[i]) {
        detail::fail("forward_batch: sequence " + std::to_string(i) + " is also sequence " +
                     std::to_string(j) + " of the batch; each may add one token per step");
      }
    }
  }
  if (n == 0) return;
  for (size_t i = 0; i < n; ++i) {
    try {
      seqs[i]->reserve(1);
    } catch (const Error& e) {
      detail::fail("batch sequence " + std::to_string(i) + ": " + e.what());
    }
  }
  prepare(s, n);
  s.seqs_.assign(seqs, seqs + n);
  s.pos_.resize(n);
  s.end_.resize(n);
  for (size_t t = 0; t < n; ++t) {
    s.pos_[t] = seqs[t]->size();
    s.end_[t] = s.pos_[t] + 1;
  }
  run(tokens, n, s);
  output_logits(s, 0, n, logits);
  for (size_t t = 0; t < n; ++t) seqs[t]->commit(1, tokens + t);
}

void Transformer::forward_states(const int32_t* tokens, const size_t* sizes,
                                 KvSequence* const* seqs, size_t n_texts, ForwardScratch& s,
                                 float* states) const {
  size_t n = 0;
  for (size_t i = 0; i < n_texts; ++i) {
    try {
      check_sequence(*seqs[i], sizes[i]);
    } catch (const Error& e) {
      detail::fail("text " + std::to_string(i) + " of the batch: " + e.what());
    }
    for (size_t j = 0; j < i; ++j) {
      if (seqs[j] == seqs[i]) {
        detail::fail("forward_states: text " + std::to_string(i) + " has the sequence of text " +
                     std::to_string(j) + "; each text needs its own");
      }
    }
    n = detail::checked_add(n, sizes[i], "batch tokens");
  }
  check_tokens(tokens, n);
  if (n == 0) return;
  for (size_t i = 0; i < n_texts; ++i) {
    try {
      seqs[i]->reserve(sizes[i]);
    } catch (const Error& e) {
      detail::fail("text " + std::to_string(i) + " of the batch: " + e.what());
    }
  }
  prepare(s, n);
  s.seqs_.resize(n);
  s.pos_.resize(n);
  s.end_.resize(n);
  for (size_t i = 0, t = 0; i < n_texts; ++i) {
    const size_t pos0 = seqs[i]->size();
    for (size_t j = 0; j < sizes[i]; ++j, ++t) {
      s.seqs_[t] = seqs[i];
      s.pos_[t] = pos0 + j;
      s.end_[t] = config_.traits.causal ? pos0 + j + 1 : pos0 + sizes[i];
    }
  }
  run(tokens, n, s);
  normalize(output_norm_, s.x_.data(), n, states);
  for (size_t i = 0; i < n_texts; ++i) {
    seqs[i]->commit(sizes[i], tokens);
    tokens += sizes[i];
  }
}

void Transformer::run(const int32_t* tokens, size_t n, ForwardScratch& s) const {
  embed(tokens, n, s);
  for (size_t l = 0; l < config_.n_layers; ++l) {
    attention_block(layers_[l], l, n, s);
    ffn_block(layers_[l], n, s);
  }
}

void Transformer::output_logits(ForwardScratch& s, size_t first, size_t n, float* logits) const {
  const size_t d = config_.n_embd;
  normalize(output_norm_, s.x_.data() + first * d, n - first, s.xb_.data() + first * d);
  linear(output_, s.xb_.data() + first * d, n - first, d, logits, config_.n_vocab);
}

void Transformer::embed(const int32_t* tokens, size_t n, ForwardScratch& s) const {
  const ModelConfig& c = config_;
  const size_t d = c.n_embd;
  const bool rope = c.traits.positions == PositionType::kRope;
  const float scale = c.traits.scaled_embedding ? std::sqrt(float(d)) : 1.0f;
#pragma omp parallel for num_threads(n_threads_) if (n > 1)
  for (size_t t = 0; t < n; ++t) {
    float* x = s.x_.data() + t * d;
    detail::row_to_f32(token_embd_.type,
                       token_embd_.data + size_t(tokens[t]) * token_embd_.row_bytes, d, x);
    if (scale != 1.0f) {
      for (size_t i = 0; i < d; ++i) x[i] *= scale;
    }
    if (rope) {
      detail::rope_table(s.pos_[t], c.rope_dim, c.rope_base, rope_freqs_, c.traits.rope_style,
                         s.rope_cos_.data() + t * c.rope_dim, s.rope_sin_.data() + t * c.rope_dim);
    } else {
      float* position = s.xb_.data() + t * d;
      detail::row_to_f32(position_embd_.type,
                         position_embd_.data + s.pos_[t] * position_embd_.row_bytes, d, position);
      detail::add(x, position, d);
    }
    if (token_types_.data != nullptr) {
      float* type = s.xb_.data() + t * d;
      detail::row_to_f32(token_types_.type, token_types_.data, d, type);
      detail::add(x, type, d);
    }
    if (embedding_norm_.weight != nullptr) normalize(embedding_norm_, x, 1, x);
  }
}

void Transformer::normalize(const Norm& norm, const float* x, size_t n, float* out) const {
  const size_t d = config_.n_embd;
  if (norm.weight == nullptr) {
    if (out != x) std::copy(x, x + n * d, out);
    return;
  }
  for (size_t t = 0; t < n; ++t) {
    if (config_.traits.norm == NormType::kRms) {
      detail::rmsnorm(x + t * d, norm.weight, d, config_.norm_eps, out + t * d);
    } else {
      detail::layernorm(x + t * d, norm.weight, norm.bias, d, config_.norm_eps, out + t * d);
    }
  }
}

void Transformer::multiply(const detail::MatrixView* weights, const float* const* biases,
                           size_t n_parts, const float* x, size_t n, size_t x_stride, float* y,
                           size_t y_stride) const {
  if (detail::matmul_q_reads(weights[0].type)) {
    detail::matmul_q_parts_f32(weights, n_parts, x, n, x_stride, y, y_stride, n_threads_);
  } else {
    for (size_t i = 0, offset = 0; i < n_parts; offset += weights[i].rows, ++i) {
      detail::matmul(weights[i], x, n, x_stride, y + offset, y_stride, n_threads_);
    }
  }
  for (size_t i = 0, offset = 0; i < n_parts; offset += weights[i].rows, ++i) {
    if (biases[i] == nullptr) continue;
    for (size_t t = 0; t < n; ++t) {
      detail::add(y + t * y_stride + offset, biases[i], weights[i].rows);
    }
  }
}

void Transformer::linear(const Linear& l, const float* x, size_t n, size_t x_stride, float* y,
                         size_t y_stride) const {
  multiply(&l.weight, &l.bias, 1, x, n, x_stride, y, y_stride);
}

void Transformer::project(const Projection& p, const float* x, size_t n, size_t x_stride,
                          float* y) const {
  // Parts that read the same activations (quantized alike, or all floats) run together, so
  // that the threads meet once for, say, Q, K and V.
  const auto format = [](const detail::MatrixView& w) {
    return detail::matmul_q_reads(w.type) ? int(detail::activation_format(w.type)) : -1;
  };
  size_t offset = 0;
  for (size_t i = 0, j; i < p.weights.size(); i = j) {
    for (j = i + 1; j < p.weights.size() && format(p.weights[j]) == format(p.weights[i]); ++j) {
    }
    multiply(&p.weights[i], &p.biases[i], j - i, x, n, x_stride, y + offset, p.rows);
    for (size_t k = i; k < j; ++k) offset += p.weights[k].rows;
  }
}

void Transformer::attention_block(const Layer& layer, size_t l, size_t n, ForwardScratch& s) const {
  const ModelConfig& c = config_;
  const size_t d = c.n_embd;
  const size_t q_dim = c.n_heads * c.key_dim, k_dim = c.n_kv_heads * c.key_dim;
  const size_t att_dim = c.n_heads * c.value_dim;
  const size_t stride = layer.qkv.rows;  // a token's Q, K and V, side by side
  const bool post_norm = c.traits.post_norm;
  float* x = s.x_.data();
  float* xb = s.xb_.data();
  if (!post_norm) normalize(layer.attn_norm, x, n, xb);
  project(layer.qkv, post_norm ? x : xb, n, d, s.qkv_.data());
  for (size_t t = 0; t < n; ++t) {
    float* q = s.qkv_.data() + t * stride;
    float* k = q + q_dim;
    if (c.traits.positions == PositionType::kRope) {
      const float* cos = s.rope_cos_.data() + t * c.rope_dim;
      const float* sin = s.rope_sin_.data() + t * c.rope_dim;
      detail::rope(q, c.n_heads, c.key_dim, c.rope_dim, cos, sin, c.traits.rope_style);
      detail::rope(k, c.n_kv_heads, c.key_dim, c.rope_dim, cos, sin, c.traits.rope_style);
    }
    s.seqs_[t]->write(l, s.pos_[t], k, k + k_dim);
  }
  // Token t of the batch attends to its sequence's cache before end_[t] (its own position + 1
  // in a decoder: the causal mask), or to the last sliding_window tokens of that, with each
  // group of n_heads / n_kv_heads query heads sharing one KV head. A task is a group (its keys
  // and values read once for all its heads), or a part of one when there are fewer groups than
  // threads.
  const size_t group = c.n_heads / c.n_kv_heads;
  size_t parts = 1;
  while (parts < group && n * c.n_kv_heads * parts < size_t(n_threads_)) ++parts;
  const float scale = 1.0f / std::sqrt(float(c.key_dim));
  const size_t n_tasks = n * c.n_kv_heads * parts;
#pragma omp parallel for num_threads(n_threads_) schedule(dynamic, 1) if (n_tasks > 1)
  for (size_t task = 0; task < n_tasks; ++task) {
    const size_t t = task / (c.n_kv_heads * parts), kv_head = task / parts % c.n_kv_heads;
    const size_t part = task % parts;
    const size_t h0 = kv_head * group + part * group / parts;
    const size_t h1 = kv_head * group + (part + 1) * group / parts;
    const KvSequence& seq = *s.seqs_[t];
    const size_t end = s.end_[t];
    const size_t begin =
        c.sliding_window != 0 && end > c.sliding_window ? end - c.sliding_window : 0;
    detail::attention(s.qkv_.data() + t * stride + h0 * c.key_dim, h1 - h0, c.key_dim,
                      seq.keys(l, kv_head), seq.values(l, kv_head), begin, end, scale,
                      s.att_.data() + t * att_dim + h0 * c.value_dim);
  }
  linear(layer.attn_output, s.att_.data(), n, att_dim, xb, d);
  detail::add(x, xb, n * d);
  if (post_norm) normalize(layer.attn_norm, x, n, x);
}

void Transformer::ffn_block(const Layer& layer, size_t n, ForwardScratch& s) const {
  const ModelConfig& c = config_;
  const size_t d = c.n_embd, f = c.n_ff;
  const size_t stride = layer.ffn_in.rows;  // a token's gate and up rows, or up rows
  const bool post_norm = c.traits.post_norm;
  float* x = s.x_.data();
  float* xb = s.xb_.data();
  if (!post_norm) normalize(layer.ffn_norm, x, n, xb);
  project(layer.ffn_in, post_norm ? x : xb, n, d, s.ffn_.data());
  const FfnType type = c.traits.ffn;
#pragma omp parallel for num_threads(n_threads_) if (n > 1)
  for (size_t t = 0; t < n; ++t) {
    float* h = s.ffn_.data() + t * stride;
    switch (type) {
      case FfnType::kSwiGlu:
        detail::swiglu(h, h + f, f, h);
        break;
      case FfnType::kGeGlu:
        detail::geglu(h, h + f, f, h);
        break;
      case FfnType::kGelu:
        detail::gelu(h, f, h);
        break;
    }
  }
  linear(layer.ffn_down, s.ffn_.data(), n, stride, xb, d);
  detail::add(x, xb, n * d);
  if (post_norm) normalize(layer.ffn_norm, x, n, x);
}

}  // namespace sllm
