namespace sllm {

KvPool::KvPool(const KvShape& shape, size_t n_blocks, size_t block_tokens, TensorType type)
    : shape_(shape), type_(type), block_tokens_(block_tokens), n_blocks_(n_blocks) {
  if (type != TensorType::F32 && type != TensorType::F16 && type != TensorType::I8) {
    detail::fail(std::string("KV cache entries must be F32, F16 or I8, not ") +
                 tensor_type_name(type));
  }
  if (shape.n_layers == 0 || shape.n_kv_heads == 0 || shape.key_dim == 0 || shape.value_dim == 0 ||
      block_tokens == 0 || n_blocks == 0) {
    detail::fail("KV cache pool needs at least one layer, head, block and token per block");
  }
  if (n_blocks > UINT32_MAX) detail::fail("KV cache pool of more than 2^32 blocks");
  using detail::checked_add;
  using detail::checked_mul;
  // A head's row: its elements, after an f32 scale for I8.
  const auto head_bytes = [type](size_t dim) {
    if (type == TensorType::I8) return checked_add(dim, sizeof(float), "KV row");
    return checked_mul(dim, type == TensorType::F32 ? 4 : 2, "KV row");
  };
  row_bytes_ = std::max(head_bytes(shape.key_dim), head_bytes(shape.value_dim));
  run_bytes_ = checked_mul(block_tokens, row_bytes_, "KV block");
  n_slices_ = checked_mul(checked_mul(shape.n_layers, 2, "KV block"), shape.n_kv_heads, "KV block");
  block_bytes_ = checked_mul(run_bytes_, n_slices_, "KV block");
  slice_bytes_ = checked_mul(run_bytes_, n_blocks, "KV cache pool");
  data_.resize(checked_mul(slice_bytes_, n_slices_, "KV cache pool"));
  free_.resize(n_blocks);
  for (size_t i = 0; i < n_blocks; ++i) free_[i] = uint32_t(n_blocks - 1 - i);
  refs_.assign(n_blocks, 0);
  meta_.resize(n_blocks);
  block_token_ids_.resize(checked_mul(n_blocks, block_tokens, "KV cache pool"));
}

KvPool KvPool::for_tokens(const KvShape& shape, size_t n_tokens, size_t block_tokens,
                          TensorType type) {
  const size_t n_blocks = block_tokens == 0 ? 0 : (n_tokens + block_tokens - 1) / block_tokens;
  return KvPool(shape, n_blocks, block_tokens, type);
}

std::vector<uint32_t> KvPool::allocate(size_t n) {
  if (n > free_blocks()) {
    detail::fail("KV cache pool exhausted: " + std::to_string(n) + " more blocks of " +
                 std::to_string(block_tokens_) + " tokens needed, " +
                 std::to_string(free_blocks()) + " of " + std::to_string(n_blocks_) + " free");
  }
  // Evicting a cached block makes it an unused one.
  while (free_.size() < n) unpublish(lru_.front());
  std::vector<uint32_t> blocks(free_.end() - ptrdiff_t(n), free_.end());
  std::reverse(blocks.begin(), blocks.end());
  free_.resize(free_.size() - n);
  for (uint32_t b : blocks) refs_[b] = 1;
  return blocks;
}

void KvPool::release(uint32_t block) {
  if (--refs_[block] != 0) return;
  BlockMeta& m = meta_[block];
  if (m.published) {
    m.lru = lru_.insert(lru_.end(), block);
  } else {
    free_.push_back(block);
  }
}

void KvPool::copy_block(uint32_t dst, uint32_t src) {
  for (size_t s = 0; s < n_slices_; ++s) {
    std::memcpy(block_data(dst) + s * slice_bytes_, block_data(src) + s * slice_bytes_, run_bytes_);
  }
}

uint64_t KvPool::key_of(uint64_t parent, const int32_t* tokens, size_t n) {
  // splitmix64's finalizer over the parent key and each token: well mixed, and cheap next to
  // the forward pass that the key saves.
  const auto mix = [](uint64_t x) {
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
  };
  uint64_t h = mix(parent);
  for (size_t i = 0; i < n; ++i)
    h = mix(h ^ (uint64_t(uint32_t(tokens[i])) + 0x9e3779b97f4a7c15ull));
  return h;
}

void KvPool::publish(uint32_t block, uint64_t key, uint64_t parent, const int32_t* tokens) {
  if (meta_[block].published || !index_.emplace(key, block).second) return;
  BlockMeta& m = meta_[block];
  m.published = true;
  m.key = key;
  m.parent = parent;
  std::copy(tokens, tokens + block_tokens_,
            block_token_ids_.begin() + ptrdiff_t(block * block_tokens_));
}

void KvPool::unpublish(uint32_t block) {
  BlockMeta& m = meta_[block];
  if (!m.published) return;
  index_.erase(m.key);
  m.published = false;
  if (refs_[block] == 0) {
    lru_.erase(m.lru);
    free_.push_back(block);
  }
}

uint32_t KvPool::find(uint64_t key, uint64_t parent, const int32_t* tokens) {
  const auto it = index_.find(key);
  if (it == index_.end()) return kNoBlock;
  const uint32_t block = it->second;
  const BlockMeta& m = meta_[block];
  const auto ids = block_token_ids_.begin() + ptrdiff_t(block * block_tokens_);
  if (m.parent != parent || !std::equal(tokens, tokens + block_tokens_, ids)) return kNoBlock;
  if (refs_[block]++ == 0) lru_.erase(m.lru);
  return block;
}

KvSequence::KvSequence(KvPool& pool, size_t max_tokens) : pool_(&pool), max_tokens_(max_tokens) {}

KvSequence::~KvSequence() {
  release_all();
}

KvSequence::KvSequence(KvSequence&& other) noexcept
    : pool_(other.pool_),
      max_tokens_(other.max_tokens_),
      size_(other.size_),
      tokens_(std::move(other.tokens_)),
      keys_(std::move(other.keys_)),
      blocks_(std::move(other.blocks_)),
      block_data_(std::move(other.block_data_)) {
  other.size_ = 0;
  other.tokens_.clear();
  other.keys_.clear();
  other.blocks_.clear();
  other.block_data_.clear();
}

KvSequence& KvSequence::operator=(KvSequence&& other) noexcept {
  if (this != &other) {
    release_all();
    pool_ = other.pool_;
    max_tokens_ = other.max_tokens_;
    size_ = other.size_;
    tokens_ = std::move(other.tokens_);
    keys_ = std::move(other.keys_);
    blocks_ = std::move(other.blocks_);
    block_data_ = std::move(other.block_data_);
    other.size_ = 0;
    other.tokens_.clear();
    other.keys_.clear();
    other.blocks_.clear();
    other.block_data_.clear();
  }
  return *this;
}

void KvSequence::release_all() {
  for (uint32_t b : blocks_) pool_->release(b);
  blocks_.clear();
  block_data_.clear();
  tokens_.clear();
  keys_.clear();
  size_ = 0;
}

KvSequence KvSequence::fork() const {
  KvSequence child(*pool_, max_tokens_);
  const size_t bt = pool_->block_tokens();
  const size_t used = (size_ + bt - 1) / bt;  // blocks reserved past size() stay the parent's
  child.blocks_.assign(blocks_.begin(), blocks_.begin() + ptrdiff_t(used));
  child.block_data_.assign(block_data_.begin(), block_data_.begin() + ptrdiff_t(used));
  for (uint32_t b : child.blocks_) pool_->retain(b);
  child.size_ = size_;
  child.tokens_ = tokens_;
  child.keys_ = keys_;
  return child;
}

void KvSequence::reserve(size_t n) {
  if (n > max_tokens_ || size_ > max_tokens_ - n) {
    detail::fail("context overflow: the sequence holds " + std::to_string(size_) + " tokens and " +
                 std::to_string(n) + " more would exceed the context length of " +
                 std::to_string(max_tokens_));
  }
  if (n == 0) return;
  const size_t bt = pool_->block_tokens();
  const size_t needed = (size_ + n + bt - 1) / bt;
  // The blocks that n tokens after size() write: copies replace the shared ones among them,
  // and all new blocks are taken at once, so that an exhausted pool changes nothing.
  const size_t first = size_ / bt;
  std::vector<size_t> shared;
  for (size_t i = first; i < std::min(needed, blocks_.size()); ++i) {
    if (pool_->ref_count(blocks_[i]) > 1) shared.push_back(i);
  }
  const size_t grow = needed > blocks_.size() ? needed - blocks_.size() : 0;
  const std::vector<uint32_t> fresh = pool_->allocate(shared.size() + grow);
  size_t next = 0;
  for (size_t i : shared) {
    const uint32_t copy = fresh[next++];
    pool_->copy_block(copy, blocks_[i]);
    pool_->release(blocks_[i]);
    blocks_[i] = copy;
    block_data_[i] = pool_->block_data(copy);
  }
  // A cached block that only this sequence holds is changed in place: out of the cache first.
  for (size_t i = first; i < std::min(needed, blocks_.size()); ++i) pool_->unpublish(blocks_[i]);
  for (; next < fresh.size(); ++next) {
    blocks_.push_back(fresh[next]);
    block_data_.push_back(pool_->block_data(fresh[next]));
  }
}

void KvSequence::commit(size_t n, const int32_t* tokens) {
  if (size_ + n > blocks_.size() * pool_->block_tokens()) {
    detail::fail("KV sequence: committing " + std::to_string(n) + " tokens that were not reserved");
  }
  if (tokens != nullptr) {
    tokens_.insert(tokens_.end(), tokens, tokens + n);
  } else {
    tokens_.resize(tokens_.size() + n, -1);
  }
  size_ += n;
  publish_full_blocks();
}

void KvSequence::publish_full_blocks() {
  const size_t bt = pool_->block_tokens();
  while (keys_.size() < size_ / bt) {
    const int32_t* ids = tokens_.data() + keys_.size() * bt;
    if (std::any_of(ids, ids + bt, [](int32_t t) { return t < 0; })) return;
    const uint64_t parent = keys_.empty() ? KvPool::kRootKey : keys_.back();
    const uint64_t key = KvPool::key_of(parent, ids, bt);
    pool_->publish(blocks_[keys_.size()], key, parent, ids);
    keys_.push_back(key);
  }
}

size_t KvSequence::reuse_prefix(const int32_t* tokens, size_t n) {
  const size_t bt = pool_->block_tokens();
  if (size_ % bt != 0 || keys_.size() != size_ / bt || blocks_.size() != keys_.size()) return 0;
  size_t reused = 0;
  while (reused + bt <= n && size_ + bt <= max_tokens_) {
    const uint64_t parent = keys_.empty() ? KvPool::kRootKey : keys_.back();
    const int32_t* ids = tokens + reused;
    const uint64_t key = KvPool::key_of(parent, ids, bt);
    const uint32_t block = pool_->find(key, parent, ids);
    if (block == KvPool::kNoBlock) break;
    blocks_.push_back(block);
    block_data_.push_back(pool_->block_data(block));
    keys_.push_back(key);
    tokens_.insert(tokens_.end(), ids, ids + bt);
    size_ += bt;
    reused += bt;
  }
  return reused;
}

void KvSequence::truncate(size_t n) {
  if (n >= size_) return;
  const size_t bt = pool_->block_tokens();
  const size_t keep = (n + bt - 1) / bt;
  for (size_t i = keep; i < blocks_.size(); ++i) pool_->release(blocks_[i]);
  blocks_.resize(keep);
  block_data_.resize(keep);
  tokens_.resize(n);
  keys_.resize(std::min(keys_.size(), n / bt));
  size_ = n;
}

void KvSequence::write(size_t layer, size_t pos, const float* key, const float* value) {
  if (layer >= pool_->shape().n_layers || pos < size_ ||
      pos >= blocks_.size() * pool_->block_tokens()) {
    detail::fail("KV sequence: writing layer " + std::to_string(layer) + " position " +
                 std::to_string(pos) + ", which was not reserved");
  }
  const KvShape& shape = pool_->shape();
  const TensorType type = pool_->type();
  // One head's dim elements from src to dst, in the pool's type.
  const auto store = [type](uint8_t* dst, const float* src, size_t dim) {
    if (type == TensorType::F32) {
      std::memcpy(dst, src, dim * sizeof(float));
    } else if (type == TensorType::F16) {
      for (size_t i = 0; i < dim; ++i) {
        const uint16_t h = f32_to_fp16(src[i]);
        std::memcpy(dst + 2 * i, &h, 2);
      }
    } else {
      // I8: scaled by the head's largest magnitude, rounded to the nearest step.
      float max = 0.0f;
      for (size_t i = 0; i < dim; ++i) max = std::max(max, std::fabs(src[i]));
      const float scale = max / 127.0f;
      const float inv = scale > 0.0f ? 1.0f / scale : 0.0f;
      std::memcpy(dst, &scale, sizeof(float));
      for (size_t i = 0; i < dim; ++i) {
        dst[sizeof(float) + i] = uint8_t(int8_t(std::lrintf(src[i] * inv)));
      }
    }
  };
  const size_t bt = pool_->block_tokens();
  uint8_t* block = pool_->block_data(blocks_[pos / bt]);
  const size_t slot = pos % bt;
  for (size_t h = 0; h < shape.n_kv_heads; ++h) {
    store(block + pool_->key_offset(layer, h) + slot * pool_->key_stride(), key + h * shape.key_dim,
          shape.key_dim);
    store(block + pool_->value_offset(layer, h) + slot * pool_->value_stride(),
          value + h * shape.value_dim, shape.value_dim);
  }
}

detail::PagedRows KvSequence::keys(size_t layer, size_t kv_head) const {
  return detail::PagedRows{block_data_.data(), pool_->block_tokens(),
                           pool_->key_offset(layer, kv_head), pool_->key_stride(), pool_->type()};
}

detail::PagedRows KvSequence::values(size_t layer, size_t kv_head) const {
  return detail::PagedRows{block_data_.data(), pool_->block_tokens(),
                           pool_->value_offset(layer, kv_head), pool_->value_stride(),
                           pool_->type()};
}

}  // namespace sllm
