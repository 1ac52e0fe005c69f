#pragma once
// A paged KV cache (as in vLLM and FlashInfer): memory is a pool of fixed-size pages, and every
// sequence maps its logical token positions to pages through a block table. Because heads hold
// different numbers of tokens after eviction, each (sequence, KV head) has its own block table;
// a page holds `page_size` tokens of one KV head, K rows then V rows. Pages are allocated on
// demand and freed (memory returned) when a sequence is compacted or removed, so bytes() is
// exactly the live pages.
//
// page_size must be a power of two (token -> page is then a shift and a mask in the kernels).
// sequence(id) returns a read view with the same interface as kv_cache (kv_cache_reader), so the
// decode kernels and the policies read paged and contiguous caches alike, in place.
#include <bit>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "spattn/cache/kv_cache.hpp"
#include "spattn/cache/page_summaries.hpp"

namespace spattn {

// Rows of one head spread over pages: row t lives in page t >> shift at slot t & mask.
template <class T>
struct paged_rows {
  const T* const* pages = nullptr;
  int shift = 0;
  index_t mask = 0;
  index_t stride = 0;  // head_dim
  index_t offset = 0;  // 0 for K, page_size * head_dim for V
  const T* operator()(index_t t) const { return pages[t >> shift] + offset + (t & mask) * stride; }
};

template <class T>
class paged_cache;

// Read view of one sequence of a paged cache (valid until the cache changes that sequence).
template <class T>
class paged_sequence {
 public:
  using value_type = T;
  index_t kv_heads() const { return cache_->kv_heads(); }
  index_t head_dim() const { return cache_->head_dim(); }
  index_t length(index_t h) const { return cache_->length(seq_, h); }
  std::vector<index_t> lengths() const { return cache_->lengths(seq_); }
  paged_rows<T> key_rows(index_t h) const { return cache_->rows(seq_, h, false); }
  paged_rows<T> value_rows(index_t h) const { return cache_->rows(seq_, h, true); }
  const T* key(index_t h, index_t t) const { return key_rows(h)(t); }
  const T* value(index_t h, index_t t) const { return value_rows(h)(t); }
  const page_summaries<T>* summaries() const { return cache_->summaries(seq_); }

 private:
  friend class paged_cache<T>;
  paged_sequence(const paged_cache<T>* c, index_t s) : cache_(c), seq_(s) {}
  const paged_cache<T>* cache_;
  index_t seq_;
};

template <class T>
class paged_cache {
  static_assert(is_storage_type_v<T> && !std::is_const_v<T>, "T: float, spattn::f16 or bf16");

 public:
  using value_type = T;

  paged_cache(index_t kv_heads, index_t head_dim, index_t page_size)
      : kv_heads_(kv_heads), head_dim_(head_dim), page_size_(page_size) {
    require(kv_heads > 0, "kv_heads", "> 0", kv_heads);
    require(head_dim > 0, "head_dim", "> 0", head_dim);
    require(page_size >= 1 && page_size <= 4096 &&
                std::has_single_bit(static_cast<std::uint64_t>(page_size)),
            "page_size", "a power of two in [1, 4096]", page_size);
    shift_ = std::countr_zero(static_cast<std::uint64_t>(page_size));
  }

  index_t kv_heads() const { return kv_heads_; }
  index_t head_dim() const { return head_dim_; }
  index_t page_size() const { return page_size_; }

  // Adds an empty sequence; returns its id.
  index_t add_sequence() {
    seq s;
    s.heads.resize(static_cast<std::size_t>(kv_heads_));
    s.alive = true;
    seqs_.push_back(std::move(s));
    return static_cast<index_t>(seqs_.size()) - 1;
  }
  // Frees a sequence's pages; its id is not reused.
  void remove_sequence(index_t id) {
    auto& s = at(id);
    for (auto& h : s.heads) release_from(h, 0);
    s.heads.clear();
    s.summaries.reset();
    s.alive = false;
  }

  index_t length(index_t id, index_t h) const { return head_of(id, h).length; }
  std::vector<index_t> lengths(index_t id) const {
    std::vector<index_t> l;
    for (const auto& h : at(id).heads) l.push_back(h.length);
    return l;
  }
  // Page ids of sequence `id`, KV head h, in token order.
  std::span<const std::int32_t> block_table(index_t id, index_t h) const {
    return head_of(id, h).table;
  }
  paged_sequence<T> sequence(index_t id) const {
    at(id);
    return {this, id};
  }
  const page_summaries<T>* summaries(index_t id) const {
    const auto& s = at(id);
    return s.summaries ? &*s.summaries : nullptr;
  }

  // Appends k, v [n, kv_heads, head_dim] (any storage type) to sequence `id`.
  template <class U>
  void append(index_t id, tensor_view<U> k, tensor_view<U> v) {
    detail::check_append(k, v, kv_heads_, head_dim_);
    auto& s = at(id);
    for (index_t h = 0; h < kv_heads_; ++h) {
      auto& hd = s.heads[static_cast<std::size_t>(h)];
      for (index_t t = 0; t < k.tokens(); ++t) {
        if ((hd.length & (page_size_ - 1)) == 0) add_page(hd);
        T* kr = row(hd, hd.length, false);
        detail::convert_row(k.row(t, h), kr, head_dim_);
        detail::convert_row(v.row(t, h), row(hd, hd.length, true), head_dim_);
        if (s.summaries) s.summaries->append_row(h, kr);
        ++hd.length;
      }
    }
  }

  // Quest page summaries for sequence `id` (any page size; usually the cache's): built once from
  // its contents, then updated token by token on append.
  void enable_summaries(index_t id, index_t summary_page_size) {
    auto& s = at(id);
    s.summaries.emplace(kv_heads_, head_dim_, summary_page_size);
    for (index_t h = 0; h < kv_heads_; ++h) rebuild_summaries(s, h);
  }

  // Keeps, per KV head, the tokens `sel` lists (moved to the front in place, ascending). With
  // `shrink`, pages no longer needed are freed. Summaries, if enabled, are rebuilt.
  void compact(index_t id, const eviction_selection& sel, bool shrink = true) {
    detail::check_eviction(sequence(id), sel);
    auto& s = at(id);
    const std::size_t row_bytes = static_cast<std::size_t>(head_dim_) * sizeof(T);
    for (index_t h = 0; h < kv_heads_; ++h) {
      auto& hd = s.heads[static_cast<std::size_t>(h)];
      const auto& keep = sel.keep[static_cast<std::size_t>(h)];
      const index_t n = static_cast<index_t>(keep.size());
      if (n == hd.length) continue;
      for (index_t i = 0; i < n; ++i) {
        const index_t src = keep[static_cast<std::size_t>(i)];
        if (src == i) continue;
        std::memcpy(row(hd, i, false), row(hd, src, false), row_bytes);
        std::memcpy(row(hd, i, true), row(hd, src, true), row_bytes);
      }
      hd.length = n;
      if (shrink) release_from(hd, (n + page_size_ - 1) / page_size_);
      if (s.summaries) rebuild_summaries(s, h);
    }
    if (shrink && s.summaries) s.summaries->shrink();
  }

  // Bytes held: by one (sequence, KV head) in pages, and in total (live pages plus summaries).
  std::size_t bytes(index_t id, index_t h) const {
    return head_of(id, h).table.size() * page_bytes();
  }
  std::size_t bytes() const {
    std::size_t b = static_cast<std::size_t>(live_pages_) * page_bytes();
    for (const auto& s : seqs_)
      if (s.summaries) b += s.summaries->bytes();
    return b;
  }
  std::size_t page_bytes() const {
    return static_cast<std::size_t>(2 * page_size_ * head_dim_) * sizeof(T);
  }
  index_t live_pages() const { return live_pages_; }

 private:
  friend class paged_sequence<T>;
  struct head_table {
    std::vector<std::int32_t> table;
    std::vector<const T*> ptrs;
    index_t length = 0;
  };
  struct seq {
    std::vector<head_table> heads;
    std::optional<page_summaries<T>> summaries;
    bool alive = false;
  };

  seq& at(index_t id) {
    require(id >= 0 && id < static_cast<index_t>(seqs_.size()) &&
                seqs_[static_cast<std::size_t>(id)].alive,
            "sequence id", "a live sequence of this cache", id);
    return seqs_[static_cast<std::size_t>(id)];
  }
  const seq& at(index_t id) const { return const_cast<paged_cache*>(this)->at(id); }
  const head_table& head_of(index_t id, index_t h) const {
    if (!(h >= 0 && h < kv_heads_))
      require(false, "kv head", detail::concat("in [0, ", kv_heads_, ")"), h);
    return at(id).heads[static_cast<std::size_t>(h)];
  }

  T* row(head_table& hd, index_t t, bool value) {
    T* page =
        pool_[static_cast<std::size_t>(hd.table[static_cast<std::size_t>(t >> shift_)])].get();
    return page + (value ? page_size_ * head_dim_ : 0) + (t & (page_size_ - 1)) * head_dim_;
  }
  paged_rows<T> rows(index_t id, index_t h, bool value) const {
    const auto& hd = head_of(id, h);
    return {hd.ptrs.data(), shift_, page_size_ - 1, head_dim_, value ? page_size_ * head_dim_ : 0};
  }

  void add_page(head_table& hd) {
    std::int32_t pid;
    if (!free_.empty()) {
      pid = free_.back();
      free_.pop_back();
    } else {
      pid = static_cast<std::int32_t>(pool_.size());
      pool_.emplace_back();
    }
    auto& p = pool_[static_cast<std::size_t>(pid)];
    p.reset(new T[static_cast<std::size_t>(2 * page_size_ * head_dim_)]);
    hd.table.push_back(pid);
    hd.ptrs.push_back(p.get());
    ++live_pages_;
  }
  // Frees the pages of hd from table position `keep_pages` on.
  void release_from(head_table& hd, index_t keep_pages) {
    while (static_cast<index_t>(hd.table.size()) > keep_pages) {
      const std::int32_t pid = hd.table.back();
      pool_[static_cast<std::size_t>(pid)].reset();
      free_.push_back(pid);
      hd.table.pop_back();
      hd.ptrs.pop_back();
      --live_pages_;
    }
    hd.table.shrink_to_fit();
    hd.ptrs.shrink_to_fit();
  }
  void rebuild_summaries(seq& s, index_t h) {
    s.summaries->clear(h);
    auto& hd = s.heads[static_cast<std::size_t>(h)];
    for (index_t t = 0; t < hd.length; ++t) s.summaries->append_row(h, row(hd, t, false));
  }

  index_t kv_heads_, head_dim_, page_size_;
  int shift_ = 0;
  std::vector<std::unique_ptr<T[]>> pool_;
  std::vector<std::int32_t> free_;
  std::vector<seq> seqs_;
  index_t live_pages_ = 0;
};

}  // namespace spattn
