// KV layer: the paged KV cache. One pool of fixed-size blocks, sized at start; each block holds
// the keys and values of block_tokens consecutive tokens for every layer. A sequence is a table
// of blocks. Running out of blocks or past the context is an Error, never a silent wrap.
namespace sllm {

// What one token stores per layer: n_kv_heads heads of key_dim key and value_dim value
// elements.
struct KvShape {
  size_t n_layers = 0;
  size_t n_kv_heads = 0;
  size_t key_dim = 0;
  size_t value_dim = 0;
  bool operator==(const KvShape& o) const {
    return n_layers == o.n_layers && n_kv_heads == o.n_kv_heads && key_dim == o.key_dim &&
           value_dim == o.value_dim;
  }
  bool operator!=(const KvShape& o) const { return !(*this == o); }
};

// The blocks of one model's KV cache, allocated once. Entries are F32 or F16 (type).
// Layout of a block, per layer: block_tokens key rows, then block_tokens value rows; a key row
// is the n_kv_heads * key_dim elements of one token.
class KvPool {
 public:
  static constexpr size_t kDefaultBlockTokens = 16;
  KvPool(const KvShape& shape, size_t n_blocks, size_t block_tokens = kDefaultBlockTokens,
         TensorType type = TensorType::F32);
  // A pool holding exactly one sequence of up to n_tokens tokens.
  static KvPool for_tokens(const KvShape& shape, size_t n_tokens,
                           size_t block_tokens = kDefaultBlockTokens,
                           TensorType type = TensorType::F32);

  const KvShape& shape() const { return shape_; }
  TensorType type() const { return type_; }
  size_t block_tokens() const { return block_tokens_; }
  size_t n_blocks() const { return n_blocks_; }
  size_t free_blocks() const { return free_.size(); }
  size_t block_bytes() const { return block_bytes_; }

  // Takes n free blocks (Error naming the numbers when fewer are free; then nothing is taken).
  std::vector<uint32_t> allocate(size_t n);
  void release(uint32_t block);
  uint8_t* block_data(uint32_t block) { return data_.data() + size_t{block} * block_bytes_; }

  // Byte offsets inside a block of layer's first key and value rows, and between tokens.
  size_t key_offset(size_t layer) const { return layer * layer_bytes_; }
  size_t value_offset(size_t layer) const { return layer * layer_bytes_ + key_bytes_; }
  size_t key_stride() const { return key_row_bytes_; }
  size_t value_stride() const { return value_row_bytes_; }

 private:
  KvShape shape_;
  TensorType type_;
  size_t block_tokens_;
  size_t n_blocks_;
  size_t key_row_bytes_ = 0, value_row_bytes_ = 0;
  size_t key_bytes_ = 0, layer_bytes_ = 0, block_bytes_ = 0;
  detail::AlignedBuffer<uint8_t> data_;
  std::vector<uint32_t> free_;  // a stack; the lowest ids are handed out first
};

// The cached tokens of one sequence: a block table into a pool (which must outlive it).
// Holds at most max_tokens tokens (the context length).
class KvSequence {
 public:
  KvSequence(KvPool& pool, size_t max_tokens);
  ~KvSequence();
  KvSequence(KvSequence&& other) noexcept;
  KvSequence& operator=(KvSequence&& other) noexcept;
  KvSequence(const KvSequence&) = delete;
  KvSequence& operator=(const KvSequence&) = delete;

  KvPool& pool() const { return *pool_; }
  size_t size() const { return size_; }  // tokens stored
  size_t max_tokens() const { return max_tokens_; }
  const std::vector<uint32_t>& blocks() const { return blocks_; }

  // Makes room for n more tokens after size(). Error on context overflow or when the pool has
  // too few free blocks; then the sequence is unchanged.
  void reserve(size_t n);
  // Marks n tokens after size() as written (they must have been reserved).
  void commit(size_t n);
  // Keeps the first n tokens and returns the blocks no longer needed to the pool.
  void truncate(size_t n);
  void clear() { truncate(0); }

  // Stores the key and value rows (all KV heads, f32, converted to the pool's type) of token
  // pos of a layer; pos must be reserved.
  void write(size_t layer, size_t pos, const float* key, const float* value);
  // Paged views of one KV head's keys / values of a layer, for the attention kernel.
  detail::PagedRows keys(size_t layer, size_t kv_head) const;
  detail::PagedRows values(size_t layer, size_t kv_head) const;

 private:
  void release_all();
  uint8_t* row(size_t pos, size_t offset, size_t stride);
  KvPool* pool_;
  size_t max_tokens_;
  size_t size_ = 0;
  std::vector<uint32_t> blocks_;
  std::vector<const uint8_t*> block_data_;  // blocks_' addresses, for PagedRows
};

}  // namespace sllm
