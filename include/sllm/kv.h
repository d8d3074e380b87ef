// KV layer: the paged KV cache. One pool of fixed-size blocks, sized at start; each block holds
// the keys and values of block_tokens consecutive tokens for every layer. A sequence is a table
// of blocks; many sequences share one pool, and a block may be shared by several of them
// (reference counts): forks share their parent's blocks and copy a shared block before writing
// it. A full block is keyed by a hash of its tokens and of its parent block's key, so that a
// new sequence starting with the same tokens takes the cached block instead of recomputing it;
// blocks no sequence holds stay cached until the pool needs them (least recently used first).
// Running out of blocks or past the context is an Error, never a silent wrap.
//
// Thread safety: a pool and its sequences are one unit; calls on them (and forward passes over
// them) must not overlap. Distinct pools are independent.
#include <list>
#include <unordered_map>

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

// The blocks of one model's KV cache, allocated once. Entries are F16 (default), I8 or F32; an I8
// head row is an f32 scale and the int8 elements (see detail::PagedRows).
// Layout: the memory is n_layers * 2 * n_kv_heads slices (per layer, the keys of each KV head,
// then the values of each), and every slice holds a run of block_tokens head rows (key_dim or
// value_dim elements of one token; row_bytes, the larger of the two) for every block, in block
// order. Attention reads one KV head of one layer at a time, so a sequence whose blocks were
// taken in order is one contiguous stream for it, which the hardware prefetches.
class KvPool {
 public:
  static constexpr size_t kDefaultBlockTokens = 16;
  KvPool(const KvShape& shape, size_t n_blocks, size_t block_tokens = kDefaultBlockTokens,
         TensorType type = TensorType::F16);
  // A pool holding exactly one sequence of up to n_tokens tokens.
  static KvPool for_tokens(const KvShape& shape, size_t n_tokens,
                           size_t block_tokens = kDefaultBlockTokens,
                           TensorType type = TensorType::F16);

  const KvShape& shape() const { return shape_; }
  TensorType type() const { return type_; }
  size_t block_tokens() const { return block_tokens_; }
  size_t n_blocks() const { return n_blocks_; }
  // Blocks that allocate() can take: unused ones and cached ones that no sequence holds.
  size_t free_blocks() const { return free_.size() + lru_.size(); }
  size_t cached_blocks() const { return lru_.size(); }  // of those, the ones still cached
  size_t block_bytes() const { return block_bytes_; }   // all its runs, every layer and head
  // Bytes of one token's keys and values, all layers.
  size_t token_bytes() const { return block_bytes_ / block_tokens_; }

  // Takes n blocks with a reference count of 1, unused ones first, then evicting the least
  // recently used cached ones (Error naming the numbers when fewer are free; then nothing is
  // taken).
  std::vector<uint32_t> allocate(size_t n);
  void retain(uint32_t block) { ++refs_[block]; }
  // Drops a reference; a block nobody holds becomes free, or stays cached when it is keyed.
  void release(uint32_t block);
  uint32_t ref_count(uint32_t block) const { return refs_[block]; }
  // Where a block's run starts in the first slice: key_offset() and value_offset() lead from
  // there to the block's run of a layer's KV head.
  uint8_t* block_data(uint32_t block) { return data_.data() + size_t{block} * run_bytes_; }
  void copy_block(uint32_t dst, uint32_t src);

  // Prefix cache. key_of() chains a full block's tokens to its parent's key (kRootKey for the
  // first block). publish() makes a full block findable under its key (unless another block
  // already is); unpublish() before its contents change. find() returns the block published
  // under key whose parent and tokens are these (verified, so a hash collision is a miss),
  // retained for the caller, or kNoBlock.
  static constexpr uint64_t kRootKey = 0x6a09e667f3bcc909ull;
  static constexpr uint32_t kNoBlock = UINT32_MAX;
  static uint64_t key_of(uint64_t parent, const int32_t* tokens, size_t n);
  void publish(uint32_t block, uint64_t key, uint64_t parent, const int32_t* tokens);
  void unpublish(uint32_t block);
  bool published(uint32_t block) const { return meta_[block].published; }
  uint32_t find(uint64_t key, uint64_t parent, const int32_t* tokens);

  // Byte offsets from block_data() of a block's first key and value rows of a layer's KV head,
  // and between the rows of consecutive tokens.
  size_t key_offset(size_t layer, size_t kv_head) const {
    return (layer * 2 * shape_.n_kv_heads + kv_head) * slice_bytes_;
  }
  size_t value_offset(size_t layer, size_t kv_head) const {
    return ((layer * 2 + 1) * shape_.n_kv_heads + kv_head) * slice_bytes_;
  }
  size_t key_stride() const { return row_bytes_; }
  size_t value_stride() const { return row_bytes_; }

 private:
  KvShape shape_;
  TensorType type_;
  size_t block_tokens_;
  size_t n_blocks_;
  size_t row_bytes_ = 0, run_bytes_ = 0, slice_bytes_ = 0, n_slices_ = 0, block_bytes_ = 0;
  detail::AlignedBuffer<uint8_t> data_;
  std::vector<uint32_t> free_;  // a stack; the lowest ids are handed out first
  std::vector<uint32_t> refs_;
  struct BlockMeta {
    bool published = false;
    uint64_t key = 0, parent = 0;
    std::list<uint32_t>::iterator lru;  // valid while cached (refs 0, published)
  };
  std::vector<BlockMeta> meta_;
  std::vector<int32_t> block_token_ids_;  // block_tokens per block, for published blocks
  std::unordered_map<uint64_t, uint32_t> index_;
  std::list<uint32_t> lru_;  // cached blocks nobody holds, least recently used first
};

// The cached tokens of one sequence: a block table into a pool (which must outlive it).
// Holds at most max_tokens tokens (the context length). Knows its token ids when commit() is
// given them, which lets its full blocks be published to the pool's prefix cache.
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
  // The ids of the tokens held (-1 where commit() was not told them).
  const std::vector<int32_t>& tokens() const { return tokens_; }

  // A sequence holding the same tokens, sharing every block with this one (copy on write).
  KvSequence fork() const;
  // Makes room for n more tokens after size(), copying a block to be written that other
  // sequences share. Error on context overflow or when the pool has too few free blocks; then
  // the sequence is unchanged.
  void reserve(size_t n);
  // Marks n tokens after size() as written (they must have been reserved); tokens (n ids, or
  // null when unknown) lets the blocks they fill be published to the prefix cache.
  void commit(size_t n, const int32_t* tokens = nullptr);
  // Takes from the pool's prefix cache the cached full blocks that continue this sequence with
  // tokens[0..n), as many as match, and returns how many tokens they hold (whole blocks, at
  // most n). Nothing is taken when the sequence does not end at a block boundary of known
  // tokens.
  size_t reuse_prefix(const int32_t* tokens, size_t n);
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
  void publish_full_blocks();
  KvPool* pool_;
  size_t max_tokens_;
  size_t size_ = 0;
  std::vector<int32_t> tokens_;
  std::vector<uint64_t> keys_;  // prefix-cache keys of the first full blocks of known tokens
  std::vector<uint32_t> blocks_;
  std::vector<const uint8_t*> block_data_;  // blocks_' addresses, for PagedRows
};

}  // namespace sllm
