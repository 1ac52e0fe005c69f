#pragma once
// Quest page summaries: for every page of `page_size` consecutive cached tokens and every KV head,
// the element-wise minimum and maximum of the page's keys. They are updated incrementally, one
// token at a time, as the cache appends (a new page starts as the token itself; later tokens
// widen it), so the whole cache is never rescanned. The last page of a head may be partial and
// summarises only the tokens it holds.
//
// Summaries are stored in the cache's storage type T: the min and max of T values are T values,
// so this is exact, and reading them costs 1/page_size of reading K and V twice (what Quest's
// memory traffic is judged on). Per page the min row and the max row are adjacent.
#include <cstring>
#include <vector>

#include "spattn/cache/row_buffer.hpp"
#include "spattn/core/dtype.hpp"
#include "spattn/core/error.hpp"
#include "spattn/core/tensor_view.hpp"

namespace spattn {

template <class T>
class page_summaries {
  static_assert(is_storage_type_v<T> && !std::is_const_v<T>, "T: float, spattn::f16 or bf16");

 public:
  using value_type = T;

  page_summaries() = default;
  page_summaries(index_t kv_heads, index_t head_dim, index_t page_size)
      : head_dim_(head_dim), page_size_(page_size) {
    require(kv_heads > 0, "kv_heads", "> 0", kv_heads);
    require(head_dim > 0, "head_dim", "> 0", head_dim);
    require(page_size >= 1, "page_size", ">= 1", page_size);
    heads_.resize(static_cast<std::size_t>(kv_heads));
    for (auto& s : heads_) s.rows = detail::row_buffer<T>(2 * head_dim);
  }

  index_t kv_heads() const { return static_cast<index_t>(heads_.size()); }
  index_t head_dim() const { return head_dim_; }
  index_t page_size() const { return page_size_; }
  // Tokens summarised for KV head h.
  index_t length(index_t h) const { return at(h).length; }
  // Pages holding at least one token, and pages holding page_size tokens.
  index_t pages(index_t h) const { return (at(h).length + page_size_ - 1) / page_size_; }
  index_t complete_pages(index_t h) const { return at(h).length / page_size_; }

  const T* min_row(index_t h, index_t page) const { return at(h).rows.row(page); }
  const T* max_row(index_t h, index_t page) const { return at(h).rows.row(page) + head_dim_; }

  // [pages(h), 1, head_dim] views of the minima and the maxima of KV head h.
  tensor_view<const T> min_view(index_t h) const { return view(h, 0); }
  tensor_view<const T> max_view(index_t h) const { return view(h, head_dim_); }

  // Widens KV head h's summaries by one key row (already stored as T).
  void append_row(index_t h, const T* k) {
    auto& s = at(h);
    const index_t p = s.length / page_size_;
    if (s.length % page_size_ == 0) {
      s.rows.ensure(p + 1, p);
      T* r = s.rows.row(p);
      std::memcpy(r, k, static_cast<std::size_t>(head_dim_) * sizeof(T));
      std::memcpy(r + head_dim_, k, static_cast<std::size_t>(head_dim_) * sizeof(T));
    } else {
      T* mn = s.rows.row(p);
      T* mx = mn + head_dim_;
      for (index_t x = 0; x < head_dim_; ++x) {
        const float v = to_float(k[x]);
        if (v < to_float(mn[x])) mn[x] = k[x];
        if (v > to_float(mx[x])) mx[x] = k[x];
      }
    }
    ++s.length;
  }

  // Forgets KV head h (before summarising a compacted cache again).
  void clear(index_t h) { at(h).length = 0; }

  // Releases capacity beyond the pages in use.
  void shrink() {
    for (index_t h = 0; h < kv_heads(); ++h) at(h).rows.shrink(pages(h));
  }

  // Bytes held (capacity, min and max) for KV head h, and in total.
  std::size_t bytes(index_t h) const { return at(h).rows.bytes(); }
  std::size_t bytes() const {
    std::size_t b = 0;
    for (const auto& s : heads_) b += s.rows.bytes();
    return b;
  }
  // Bytes a full scoring pass reads for KV head h (all complete pages, min and max).
  std::size_t bytes_scored(index_t h) const {
    return static_cast<std::size_t>(complete_pages(h) * 2 * head_dim_) * sizeof(T);
  }

 private:
  struct head {
    detail::row_buffer<T> rows;  // [page][min d | max d]
    index_t length = 0;
  };
  head& at(index_t h) {
    if (!(h >= 0 && h < kv_heads()))
      require(false, "kv head", detail::concat("in [0, ", kv_heads(), ")"), h);
    return heads_[static_cast<std::size_t>(h)];
  }
  const head& at(index_t h) const {
    if (!(h >= 0 && h < kv_heads()))
      require(false, "kv head", detail::concat("in [0, ", kv_heads(), ")"), h);
    return heads_[static_cast<std::size_t>(h)];
  }
  tensor_view<const T> view(index_t h, index_t offset) const {
    const index_t n = pages(h);
    if (n == 0) return {};
    return {at(h).rows.data() + offset, n, 1, head_dim_, 2 * head_dim_, head_dim_};
  }

  std::vector<head> heads_;
  index_t head_dim_ = 0;
  index_t page_size_ = 1;
};

}  // namespace spattn
