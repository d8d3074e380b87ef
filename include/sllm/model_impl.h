namespace sllm {
namespace detail {

inline std::string shape_of(size_t cols, size_t rows) {
  return "[" + std::to_string(cols) + ", " + std::to_string(rows) + "]";
}

inline const TensorInfo& required_tensor(const Gguf& gguf, const std::string& name) {
  const TensorInfo* t = gguf.find_tensor(name);
  if (t == nullptr) {
    fail("tensor " + name + " is missing from " + gguf.path() +
         " (the llama architecture needs it)");
  }
  return *t;
}

// A 2-D weight of cols x rows (ggml order: ne[0] = cols) read in place.
inline MatrixView weight_matrix(const Gguf& gguf, const TensorInfo& t, size_t cols, size_t rows) {
  if (t.type != TensorType::F32 && t.type != TensorType::F16 && t.type != TensorType::BF16) {
    fail("tensor " + t.name + " has type " + tensor_type_name(t.type) +
         ", which this build cannot run yet (supported: F32, F16, BF16)");
  }
  if (t.n_dims != 2 || t.ne[0] != cols || t.ne[1] != rows) {
    fail("tensor " + t.name + " in " + gguf.path() + " has shape " + t.shape_string() +
         ", but the model's metadata implies " + shape_of(cols, rows));
  }
  const size_t elem = t.type == TensorType::F32 ? 4 : 2;
  if (reinterpret_cast<uintptr_t>(t.data) % elem != 0) {
    fail("tensor " + t.name + " in " + gguf.path() + " is not aligned to its element size");
  }
  return MatrixView{t.type, t.data, rows, cols, cols * elem};
}

inline MatrixView weight_matrix(const Gguf& gguf, const std::string& name, size_t cols,
                                size_t rows) {
  return weight_matrix(gguf, required_tensor(gguf, name), cols, rows);
}

// A 1-D F32 weight of n elements (norm weights, rope frequency factors).
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

template <typename T>
void grow(AlignedBuffer<T>& buffer, size_t n) {
  if (buffer.size() < n) buffer.resize(n);
}

}  // namespace detail

ModelConfig ModelConfig::from_gguf(const Gguf& gguf) {
  ModelConfig c;
  c.architecture = gguf.get<std::string>("general.architecture");
  if (c.architecture != "llama") {
    detail::fail("unsupported architecture '" + c.architecture + "' (general.architecture in " +
                 gguf.path() + "); this build runs: llama");
  }
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
  c.rope_dim = count_or(a + "rope.dimension_count", c.key_dim);
  if (c.rope_dim % 2 != 0 || c.rope_dim > c.key_dim) {
    detail::fail("metadata " + a + "rope.dimension_count (" + std::to_string(c.rope_dim) +
                 ") must be even and at most the key size " + std::to_string(c.key_dim) + " in " +
                 gguf.path());
  }
  c.rope_base = gguf.get_or<float>(a + "rope.freq_base", 10000.f);
  c.rms_eps = gguf.get_or<float>(a + "attention.layer_norm_rms_epsilon", 1e-5f);
  if (!(c.rope_base > 0) || !(c.rms_eps > 0) || !std::isfinite(c.rope_base) ||
      !std::isfinite(c.rms_eps)) {
    detail::fail("metadata " + a + "rope.freq_base and " + a +
                 "attention.layer_norm_rms_epsilon must be positive numbers in " + gguf.path());
  }
  const std::string scaling = gguf.get_or<std::string>(a + "rope.scaling.type", "none");
  if (scaling != "none") {
    detail::fail("metadata " + a + "rope.scaling.type is '" + scaling + "' in " + gguf.path() +
                 "; this build supports only unscaled rope");
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
  t.n_threads_ = options.n_threads > 0 ? options.n_threads : omp_get_max_threads();
  using detail::checked_mul;
  const size_t q_dim = checked_mul(c.n_heads, c.key_dim, "query size");
  const size_t k_dim = checked_mul(c.n_kv_heads, c.key_dim, "key size");
  const size_t v_dim = checked_mul(c.n_kv_heads, c.value_dim, "value size");
  const size_t att_dim = checked_mul(c.n_heads, c.value_dim, "attention output size");
  t.token_embd_ = detail::weight_matrix(gguf, "token_embd.weight", c.n_embd, c.n_vocab);
  t.output_norm_ = detail::weight_vector(gguf, "output_norm.weight", c.n_embd);
  const TensorInfo* output = gguf.find_tensor("output.weight");
  t.output_ = output ? detail::weight_matrix(gguf, *output, c.n_embd, c.n_vocab) : t.token_embd_;
  if (const TensorInfo* freqs = gguf.find_tensor("rope_freqs.weight")) {
    t.rope_freqs_ = detail::weight_vector(gguf, *freqs, c.rope_dim / 2);
  }
  t.layers_.resize(c.n_layers);
  for (size_t l = 0; l < c.n_layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    Layer& layer = t.layers_[l];
    layer.attn_norm = detail::weight_vector(gguf, p + "attn_norm.weight", c.n_embd);
    layer.wq = detail::weight_matrix(gguf, p + "attn_q.weight", c.n_embd, q_dim);
    layer.wk = detail::weight_matrix(gguf, p + "attn_k.weight", c.n_embd, k_dim);
    layer.wv = detail::weight_matrix(gguf, p + "attn_v.weight", c.n_embd, v_dim);
    layer.wo = detail::weight_matrix(gguf, p + "attn_output.weight", att_dim, c.n_embd);
    layer.ffn_norm = detail::weight_vector(gguf, p + "ffn_norm.weight", c.n_embd);
    layer.gate = detail::weight_matrix(gguf, p + "ffn_gate.weight", c.n_embd, c.n_ff);
    layer.up = detail::weight_matrix(gguf, p + "ffn_up.weight", c.n_embd, c.n_ff);
    layer.down = detail::weight_matrix(gguf, p + "ffn_down.weight", c.n_ff, c.n_embd);
  }
  return t;
}

void Transformer::prepare(ForwardScratch& s, size_t n, size_t n_ctx) const {
  const ModelConfig& c = config_;
  if (n <= s.n_tokens_ && n_ctx <= s.n_ctx_ && size_t(n_threads_) <= s.n_threads_) return;
  s.n_tokens_ = std::max(s.n_tokens_, n);
  s.n_ctx_ = std::max(s.n_ctx_, n_ctx);
  s.n_threads_ = std::max(s.n_threads_, size_t(n_threads_));
  using detail::checked_mul;
  const auto rows = [&](size_t width) { return checked_mul(s.n_tokens_, width, "scratch size"); };
  detail::grow(s.x_, rows(c.n_embd));
  detail::grow(s.xb_, rows(c.n_embd));
  detail::grow(s.q_, rows(c.n_heads * c.key_dim));
  detail::grow(s.k_, rows(c.n_kv_heads * c.key_dim));
  detail::grow(s.v_, rows(c.n_kv_heads * c.value_dim));
  detail::grow(s.att_, rows(c.n_heads * c.value_dim));
  detail::grow(s.gate_, rows(c.n_ff));
  detail::grow(s.up_, rows(c.n_ff));
  detail::grow(s.rope_cos_, rows(c.rope_dim));
  detail::grow(s.rope_sin_, rows(c.rope_dim));
  detail::grow(s.scores_, checked_mul(s.n_threads_, s.n_ctx_, "scratch size"));
}

void Transformer::forward(const int32_t* tokens, size_t n, KvSequence& seq, ForwardScratch& s,
                          float* logits, LogitsFor which) const {
  const ModelConfig& c = config_;
  for (size_t i = 0; i < n; ++i) {
    if (tokens[i] < 0 || size_t(tokens[i]) >= c.n_vocab) {
      detail::fail("token id " + std::to_string(tokens[i]) + " at batch position " +
                   std::to_string(i) + " is outside the vocabulary of " +
                   std::to_string(c.n_vocab) + " tokens");
    }
  }
  if (seq.pool().shape() != kv_shape()) {
    detail::fail("the KV cache pool was made for another model shape than this transformer's");
  }
  if (n == 0) return;
  const size_t pos0 = seq.size();
  // Reserving first checks the context length, so that a huge n fails there rather than in
  // allocating scratch. Reserved blocks do not change the sequence's size.
  seq.reserve(n);
  prepare(s, n, pos0 + n);

  const int nt = n_threads_;
  const size_t d = c.n_embd;
#pragma omp parallel for num_threads(nt) if (n > 1)
  for (size_t t = 0; t < n; ++t) {
    detail::row_to_f32(token_embd_.type,
                       token_embd_.data + size_t(tokens[t]) * token_embd_.row_bytes, d,
                       s.x_.data() + t * d);
    detail::rope_table(pos0 + t, c.rope_dim, c.rope_base, rope_freqs_,
                       s.rope_cos_.data() + t * c.rope_dim, s.rope_sin_.data() + t * c.rope_dim);
  }
  for (size_t l = 0; l < c.n_layers; ++l) {
    attention_block(layers_[l], l, n, pos0, seq, s);
    ffn_block(layers_[l], n, s);
  }
  seq.commit(n);

  if (which == LogitsFor::kNone) return;
  const size_t first = which == LogitsFor::kAll ? 0 : n - 1;
  const size_t rows = n - first;
  for (size_t t = first; t < n; ++t) {
    detail::rmsnorm(s.x_.data() + t * d, output_norm_, d, c.rms_eps, s.xb_.data() + t * d);
  }
  detail::matmul(output_, s.xb_.data() + first * d, rows, d, logits, c.n_vocab, nt);
}

void Transformer::attention_block(const Layer& layer, size_t l, size_t n, size_t pos0,
                                  KvSequence& seq, ForwardScratch& s) const {
  const ModelConfig& c = config_;
  const int nt = n_threads_;
  const size_t d = c.n_embd;
  const size_t q_dim = c.n_heads * c.key_dim, k_dim = c.n_kv_heads * c.key_dim;
  const size_t v_dim = c.n_kv_heads * c.value_dim, att_dim = c.n_heads * c.value_dim;
  float* x = s.x_.data();
  float* xb = s.xb_.data();
  for (size_t t = 0; t < n; ++t) {
    detail::rmsnorm(x + t * d, layer.attn_norm, d, c.rms_eps, xb + t * d);
  }
  detail::matmul(layer.wq, xb, n, d, s.q_.data(), q_dim, nt);
  detail::matmul(layer.wk, xb, n, d, s.k_.data(), k_dim, nt);
  detail::matmul(layer.wv, xb, n, d, s.v_.data(), v_dim, nt);
  for (size_t t = 0; t < n; ++t) {
    const float* cos = s.rope_cos_.data() + t * c.rope_dim;
    const float* sin = s.rope_sin_.data() + t * c.rope_dim;
    detail::rope(s.q_.data() + t * q_dim, c.n_heads, c.key_dim, c.rope_dim, cos, sin);
    detail::rope(s.k_.data() + t * k_dim, c.n_kv_heads, c.key_dim, c.rope_dim, cos, sin);
    seq.write(l, pos0 + t, s.k_.data() + t * k_dim, s.v_.data() + t * v_dim);
  }
  // Token t of the batch attends to the cache up to its own position (causal mask), with each
  // group of n_heads / n_kv_heads query heads sharing one KV head.
  const size_t group = c.n_heads / c.n_kv_heads;
  const float scale = 1.0f / std::sqrt(float(c.key_dim));
  const size_t n_tasks = n * c.n_heads;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (n_tasks > 1)
  for (size_t task = 0; task < n_tasks; ++task) {
    const size_t t = task / c.n_heads, h = task % c.n_heads;
    float* scores = s.scores_.data() + size_t(omp_get_thread_num()) * s.n_ctx_;
    detail::attention(s.q_.data() + t * q_dim + h * c.key_dim, c.key_dim, seq.keys(l, h / group),
                      seq.values(l, h / group), pos0 + t + 1, scale, scores,
                      s.att_.data() + t * att_dim + h * c.value_dim);
  }
  detail::matmul(layer.wo, s.att_.data(), n, att_dim, xb, d, nt);
  for (size_t i = 0; i < n * d; ++i) x[i] += xb[i];
}

void Transformer::ffn_block(const Layer& layer, size_t n, ForwardScratch& s) const {
  const ModelConfig& c = config_;
  const int nt = n_threads_;
  const size_t d = c.n_embd, f = c.n_ff;
  float* x = s.x_.data();
  float* xb = s.xb_.data();
  for (size_t t = 0; t < n; ++t) {
    detail::rmsnorm(x + t * d, layer.ffn_norm, d, c.rms_eps, xb + t * d);
  }
  detail::matmul(layer.gate, xb, n, d, s.gate_.data(), f, nt);
  detail::matmul(layer.up, xb, n, d, s.up_.data(), f, nt);
#pragma omp parallel for num_threads(nt) if (n > 1)
  for (size_t t = 0; t < n; ++t) {
    detail::swiglu(s.gate_.data() + t * f, s.up_.data() + t * f, f, s.gate_.data() + t * f);
  }
  detail::matmul(layer.down, s.gate_.data(), n, f, xb, d, nt);
  for (size_t i = 0; i < n * d; ++i) x[i] += xb[i];
}

}  // namespace sllm
