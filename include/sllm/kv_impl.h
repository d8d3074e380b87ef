namespace sllm {

KvPool::KvPool(const KvShape& shape, size_t n_blocks, size_t block_tokens, TensorType type)
    : shape_(shape), type_(type), block_tokens_(block_tokens), n_blocks_(n_blocks) {
  if (type != TensorType::F32 && type != TensorType::F16) {
    detail::fail(std::string("KV cache entries must be F32 or F16, not ") + tensor_type_name(type));
  }
  if (shape.n_layers == 0 || shape.n_kv_heads == 0 || shape.key_dim == 0 || shape.value_dim == 0 ||
      block_tokens == 0 || n_blocks == 0) {
    detail::fail("KV cache pool needs at least one layer, head, block and token per block");
  }
  if (n_blocks > UINT32_MAX) detail::fail("KV cache pool of more than 2^32 blocks");
  const size_t elem = type == TensorType::F32 ? 4 : 2;
  using detail::checked_add;
  using detail::checked_mul;
  key_row_bytes_ =
      checked_mul(checked_mul(shape.n_kv_heads, shape.key_dim, "KV row"), elem, "KV row");
  value_row_bytes_ =
      checked_mul(checked_mul(shape.n_kv_heads, shape.value_dim, "KV row"), elem, "KV row");
  key_bytes_ = checked_mul(block_tokens, key_row_bytes_, "KV block");
  layer_bytes_ =
      checked_add(key_bytes_, checked_mul(block_tokens, value_row_bytes_, "KV block"), "KV block");
  block_bytes_ = checked_mul(layer_bytes_, shape.n_layers, "KV block");
  data_.resize(checked_mul(block_bytes_, n_blocks, "KV cache pool"));
  free_.resize(n_blocks);
  for (size_t i = 0; i < n_blocks; ++i) free_[i] = uint32_t(n_blocks - 1 - i);
}

KvPool KvPool::for_tokens(const KvShape& shape, size_t n_tokens, size_t block_tokens,
                          TensorType type) {
  const size_t n_blocks = block_tokens == 0 ? 0 : (n_tokens + block_tokens - 1) / block_tokens;
  return KvPool(shape, n_blocks, block_tokens, type);
}

std::vector<uint32_t> KvPool::allocate(size_t n) {
  if (n > free_.size()) {
    detail::fail("KV cache pool exhausted: " + std::to_string(n) + " more blocks of " +
                 std::to_string(block_tokens_) + " tokens needed, " + std::to_string(free_.size()) +
                 " of " + std::to_string(n_blocks_) + " free");
  }
  std::vector<uint32_t> blocks(free_.end() - ptrdiff_t(n), free_.end());
  std::reverse(blocks.begin(), blocks.end());
  free_.resize(free_.size() - n);
  return blocks;
}

void KvPool::release(uint32_t block) {
  free_.push_back(block);
}

KvSequence::KvSequence(KvPool& pool, size_t max_tokens) : pool_(&pool), max_tokens_(max_tokens) {}

KvSequence::~KvSequence() {
  release_all();
}

KvSequence::KvSequence(KvSequence&& other) noexcept
    : pool_(other.pool_),
      max_tokens_(other.max_tokens_),
      size_(other.size_),
      blocks_(std::move(other.blocks_)),
      block_data_(std::move(other.block_data_)) {
  other.size_ = 0;
  other.blocks_.clear();
  other.block_data_.clear();
}

KvSequence& KvSequence::operator=(KvSequence&& other) noexcept {
  if (this != &other) {
    release_all();
    pool_ = other.pool_;
    max_tokens_ = other.max_tokens_;
    size_ = other.size_;
    blocks_ = std::move(other.blocks_);
    block_data_ = std::move(other.block_data_);
    other.size_ = 0;
    other.blocks_.clear();
    other.block_data_.clear();
  }
  return *this;
}

void KvSequence::release_all() {
  for (uint32_t b : blocks_) pool_->release(b);
  blocks_.clear();
  block_data_.clear();
  size_ = 0;
}

void KvSequence::reserve(size_t n) {
  if (n > max_tokens_ || size_ > max_tokens_ - n) {
    detail::fail("context overflow: the sequence holds " + std::to_string(size_) + " tokens and " +
                 std::to_string(n) + " more would exceed the context length of " +
                 std::to_string(max_tokens_));
  }
  const size_t bt = pool_->block_tokens();
  const size_t needed = (size_ + n + bt - 1) / bt;
  if (needed <= blocks_.size()) return;
  for (uint32_t b : pool_->allocate(needed - blocks_.size())) {
    blocks_.push_back(b);
    block_data_.push_back(pool_->block_data(b));
  }
}

void KvSequence::commit(size_t n) {
  if (size_ + n > blocks_.size() * pool_->block_tokens()) {
    detail::fail("KV sequence: committing " + std::to_string(n) + " tokens that were not reserved");
  }
  size_ += n;
}

void KvSequence::truncate(size_t n) {
  if (n >= size_) return;
  const size_t bt = pool_->block_tokens();
  const size_t keep = (n + bt - 1) / bt;
  for (size_t i = keep; i < blocks_.size(); ++i) pool_->release(blocks_[i]);
  blocks_.resize(keep);
  block_data_.resize(keep);
  size_ = n;
}

uint8_t* KvSequence::row(size_t pos, size_t offset, size_t stride) {
  const size_t bt = pool_->block_tokens();
  return pool_->block_data(blocks_[pos / bt]) + offset + (pos % bt) * stride;
}

void KvSequence::write(size_t layer, size_t pos, const float* key, const float* value) {
  if (layer >= pool_->shape().n_layers || pos >= blocks_.size() * pool_->block_tokens()) {
    detail::fail("KV sequence: writing layer " + std::to_string(layer) + " position " +
                 std::to_string(pos) + ", which was not reserved");
  }
  const KvShape& shape = pool_->shape();
  const bool f16 = pool_->type() == TensorType::F16;
  const auto store = [f16](uint8_t* dst, const float* src, size_t n) {
    if (!f16) {
      std::memcpy(dst, src, n * sizeof(float));
      return;
    }
    for (size_t i = 0; i < n; ++i) {
      const uint16_t h = f32_to_fp16(src[i]);
      std::memcpy(dst + 2 * i, &h, 2);
    }
  };
  store(row(pos, pool_->key_offset(layer), pool_->key_stride()), key,
        shape.n_kv_heads * shape.key_dim);
  store(row(pos, pool_->value_offset(layer), pool_->value_stride()), value,
        shape.n_kv_heads * shape.value_dim);
}

detail::PagedRows KvSequence::keys(size_t layer, size_t kv_head) const {
  const size_t head_bytes = pool_->key_stride() / pool_->shape().n_kv_heads;
  return detail::PagedRows{block_data_.data(), pool_->block_tokens(),
                           pool_->key_offset(layer) + kv_head * head_bytes, pool_->key_stride(),
                           pool_->type()};
}

detail::PagedRows KvSequence::values(size_t layer, size_t kv_head) const {
  const size_t head_bytes = pool_->value_stride() / pool_->shape().n_kv_heads;
  return detail::PagedRows{block_data_.data(), pool_->block_tokens(),
                           pool_->value_offset(layer) + kv_head * head_bytes, pool_->value_stride(),
                           pool_->type()};
}

}  // namespace sllm
