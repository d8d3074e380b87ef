namespace sllm {

const char* pooling_name(Pooling pooling) {
  switch (pooling) {
    case Pooling::kModel:
      return "model";
    case Pooling::kMean:
      return "mean";
    case Pooling::kCls:
      return "cls";
    case Pooling::kLast:
      return "last";
  }
  return "?";
}

std::optional<Pooling> pooling_from_name(std::string_view name) {
  for (Pooling p : {Pooling::kMean, Pooling::kCls, Pooling::kLast}) {
    if (name == pooling_name(p)) return p;
  }
  return std::nullopt;
}

Pooling model_pooling(const Model& model) {
  const std::string key = model.config().architecture + ".pooling_type";
  const uint32_t type = model.gguf().get_or<uint32_t>(key, 0);
  switch (type) {
    case 0:
      return Pooling::kModel;
    case 1:
      return Pooling::kMean;
    case 2:
      return Pooling::kCls;
    case 3:
      return Pooling::kLast;
  }
  detail::fail("metadata " + key + " in " + model.gguf().path() + " is " + std::to_string(type) +
               (type == 4 ? " (rank, a reranker's)" : "") +
               "; sllm pools embeddings by 1 (mean), 2 (cls) or 3 (last)");
}

Embeddings embed_tokens(const Model& model, const std::vector<std::vector<int32_t>>& texts,
                        const EmbedOptions& options) {
  const Transformer& transformer = model.transformer();
  const ModelConfig& c = transformer.config();
  const Pooling pooling =
      options.pooling == Pooling::kModel ? model_pooling(model) : options.pooling;
  if (pooling == Pooling::kModel) {
    detail::fail(model.gguf().path() + " does not say how to pool its embeddings (no " +
                 c.architecture +
                 ".pooling_type): choose mean, cls or last (EmbedOptions::pooling, "
                 "sllm embed --pooling)");
  }
  if (options.batch_tokens == 0) detail::fail("EmbedOptions::batch_tokens must be at least 1");
  for (size_t i = 0; i < texts.size(); ++i) {
    if (texts[i].empty()) {
      detail::fail("text " + std::to_string(i) +
                   " (counting from 0) has no tokens: it is empty, and the vocabulary adds no "
                   "special tokens");
    }
    if (texts[i].size() > c.context_length) {
      detail::fail("text " + std::to_string(i) + " (counting from 0) has " +
                   std::to_string(texts[i].size()) + " tokens, more than the " +
                   std::to_string(c.context_length) + " positions of the model (" + c.architecture +
                   ".context_length); split it into shorter passages");
    }
  }

  // Batches of whole texts, [first[b], first[b + 1]); the KV pool holds the largest one.
  const size_t block_tokens = KvPool::kDefaultBlockTokens;
  const auto blocks_of = [&](size_t n) { return (n + block_tokens - 1) / block_tokens; };
  std::vector<size_t> first{0};
  size_t max_tokens = 0, max_blocks = 0;
  for (size_t i = 0, tokens = 0, blocks = 0; i < texts.size(); ++i) {
    if (i > first.back() && tokens + texts[i].size() > options.batch_tokens) {
      first.push_back(i);
      tokens = blocks = 0;
    }
    tokens += texts[i].size();
    blocks += blocks_of(texts[i].size());
    max_tokens = std::max(max_tokens, tokens);
    max_blocks = std::max(max_blocks, blocks);
  }
  first.push_back(texts.size());

  Embeddings out;
  out.n_texts = texts.size();
  out.n_embd = c.n_embd;
  out.data.resize(detail::checked_mul(out.n_texts, out.n_embd, "embeddings size"));
  if (texts.empty()) return out;
  KvPool pool(transformer.kv_shape(), max_blocks, block_tokens, TensorType::F32);
  ForwardScratch scratch;
  std::vector<float> states(detail::checked_mul(max_tokens, c.n_embd, "hidden states size"));
  std::vector<int32_t> tokens;
  std::vector<size_t> sizes;
  const size_t d = c.n_embd;
  std::vector<double> sum(d);
  for (size_t b = 0; b + 1 < first.size(); ++b) {
    std::vector<KvSequence> seqs;
    std::vector<KvSequence*> seq_ptrs;
    tokens.clear();
    sizes.clear();
    for (size_t i = first[b]; i < first[b + 1]; ++i) {
      seqs.emplace_back(pool, texts[i].size());
      tokens.insert(tokens.end(), texts[i].begin(), texts[i].end());
      sizes.push_back(texts[i].size());
    }
    for (KvSequence& seq : seqs) seq_ptrs.push_back(&seq);
    try {
      transformer.forward_states(tokens.data(), sizes.data(), seq_ptrs.data(), sizes.size(),
                                 scratch, states.data());
    } catch (const Error& e) {
      detail::fail("embedding texts " + std::to_string(first[b]) + " to " +
                   std::to_string(first[b + 1] - 1) + ": " + e.what());
    }
    const float* text_states = states.data();
    for (size_t i = first[b]; i < first[b + 1]; ++i) {
      const size_t n = texts[i].size();
      float* v = out.data.data() + i * d;
      if (pooling == Pooling::kMean) {
        std::fill(sum.begin(), sum.end(), 0.0);
        for (size_t t = 0; t < n; ++t) {
          for (size_t k = 0; k < d; ++k) sum[k] += text_states[t * d + k];
        }
        for (size_t k = 0; k < d; ++k) v[k] = float(sum[k] / double(n));
      } else {
        const float* chosen = text_states + (pooling == Pooling::kCls ? 0 : n - 1) * d;
        std::copy(chosen, chosen + d, v);
      }
      if (options.normalize) {
        const float norm = std::sqrt(detail::dot_f32(v, v, d));
        if (norm > 0) {
          for (size_t k = 0; k < d; ++k) v[k] /= norm;
        }
      }
      text_states += n * d;
    }
  }
  return out;
}

Embeddings embed(const Model& model, const std::vector<std::string>& texts,
                 const EmbedOptions& options) {
  std::vector<std::vector<int32_t>> tokens;
  tokens.reserve(texts.size());
  for (const std::string& text : texts)
    tokens.push_back(model.tokenizer().encode(text, true, false));
  return embed_tokens(model, tokens, options);
}

float cosine_similarity(const float* a, const float* b, size_t n) {
  double ab = 0, aa = 0, bb = 0;
  for (size_t i = 0; i < n; ++i) {
    ab += double(a[i]) * b[i];
    aa += double(a[i]) * a[i];
    bb += double(b[i]) * b[i];
  }
  return aa > 0 && bb > 0 ? float(ab / std::sqrt(aa * bb)) : 0.0f;
}

}  // namespace sllm
