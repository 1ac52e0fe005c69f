#pragma once
// A contiguous KV cache for one sequence: per KV head, one contiguous [capacity][head_dim] array
// for K and one for V, in fp32, fp16 or bf16. Heads have their own lengths (after eviction they
// hold different numbers of tokens). Appends convert from any storage type; compaction after
// eviction moves the kept rows to the front in place and (by default) releases the rest.
//
// Every cache type exposes the same read interface (the `kv_cache_reader` concept): kv_heads(),
// head_dim(), length(h), key_rows(h) / value_rows(h) returning an accessor t -> const T* row,
// and summaries() (Quest page summaries, or nullptr when not enabled). Kernels read through it,
// in place, so a contiguous cache, a paged cache and an evicted cache share one decode kernel.
#include <concepts>
#include <cstring>
#include <optional>
#include <vector>

#include "spattn/cache/page_summaries.hpp"
#include "spattn/cache/row_buffer.hpp"
#include "spattn/core/error.hpp"
#include "spattn/core/tensor_view.hpp"
#include "spattn/selection/decode_selection.hpp"

namespace spattn {

// Rows of one head stored contiguously.
template <class T>
struct contiguous_rows {
  const T* base = nullptr;
  index_t stride = 0;
  const T* operator()(index_t t) const { return base + t * stride; }
};

template <class C>
concept kv_cache_reader = requires(const C& c, index_t h) {
  typename C::value_type;
  { c.kv_heads() } -> std::convertible_to<index_t>;
  { c.head_dim() } -> std::convertible_to<index_t>;
  { c.length(h) } -> std::convertible_to<index_t>;
  { c.key_rows(h)(index_t{0}) } -> std::convertible_to<const typename C::value_type*>;
  { c.value_rows(h)(index_t{0}) } -> std::convertible_to<const typename C::value_type*>;
  { c.summaries() } -> std::convertible_to<const page_summaries<typename C::value_type>*>;
};

namespace detail {

template <class T, class U>
inline void convert_row(const U* src, T* dst, index_t n) {
  if constexpr (std::is_same_v<std::remove_cv_t<U>, T>) {
    std::memcpy(dst, src, static_cast<std::size_t>(n) * sizeof(T));
  } else {
    for (index_t x = 0; x < n; ++x) dst[x] = from_float<T>(to_float(src[x]));
  }
}

template <class U>
inline void check_append(const tensor_view<U>& k, const tensor_view<U>& v, index_t kv_heads,
                         index_t head_dim) {
  if (!(k.heads() == kv_heads))
    require(false, "k.heads", detail::concat("the cache's KV heads (", kv_heads, ")"), k.heads());
  if (!(k.head_dim() == head_dim))
    require(false, "k.head_dim", detail::concat("the cache's head_dim (", head_dim, ")"),
            k.head_dim());
  if (!(v.heads() == kv_heads && v.head_dim() == head_dim && v.tokens() == k.tokens()))
    require(false, "v",
            detail::concat("the shape of k [", k.tokens(), ", ", kv_heads, ", ", head_dim, "]"),
            detail::concat("[", v.tokens(), ", ", v.heads(), ", ", v.head_dim(), "]"));
}

// Checks an eviction selection against a cache's current lengths.
template <class Cache>
inline void check_eviction(const Cache& c, const eviction_selection& sel) {
  sel.validate();
  if (!(sel.heads() == c.kv_heads()))
    require(false, "eviction selection heads",
            detail::concat("the cache's KV heads (", c.kv_heads(), ")"), sel.heads());
  for (index_t h = 0; h < c.kv_heads(); ++h) {
    if (!(sel.lengths[static_cast<std::size_t>(h)] == c.length(h)))
      require(false, "eviction selection lengths",
              detail::concat("the cache's length of KV head ", h, " (", c.length(h), ")"),
              sel.lengths[static_cast<std::size_t>(h)]);
  }
}

}  // namespace detail

template <class T>
class kv_cache {
  static_assert(is_storage_type_v<T> && !std::is_const_v<T>, "T: float, spattn::f16 or bf16");

 public:
  using value_type = T;

  kv_cache(index_t kv_heads, index_t head_dim, index_t reserve_tokens = 0) : head_dim_(head_dim) {
    require(kv_heads > 0, "kv_heads", "> 0", kv_heads);
    require(head_dim > 0, "head_dim", "> 0", head_dim);
    require(reserve_tokens >= 0, "reserve_tokens", ">= 0", reserve_tokens);
    heads_.resize(static_cast<std::size_t>(kv_heads));
    lengths_.assign(static_cast<std::size_t>(kv_heads), 0);
    for (auto& h : heads_) {
      h.k = detail::row_buffer<T>(head_dim);
      h.v = detail::row_buffer<T>(head_dim);
      h.k.ensure(reserve_tokens, 0);
      h.v.ensure(reserve_tokens, 0);
    }
  }

  index_t kv_heads() const { return static_cast<index_t>(heads_.size()); }
  index_t head_dim() const { return head_dim_; }
  index_t length(index_t h) const { return lengths_[checked(h)]; }
  const std::vector<index_t>& lengths() const { return lengths_; }
  index_t max_length() const {
    index_t m = 0;
    for (const index_t l : lengths_) m = std::max(m, l);
    return m;
  }

  const T* key(index_t h, index_t t) const { return heads_[checked(h)].k.row(t); }
  const T* value(index_t h, index_t t) const { return heads_[checked(h)].v.row(t); }
  contiguous_rows<T> key_rows(index_t h) const { return {heads_[checked(h)].k.data(), head_dim_}; }
  contiguous_rows<T> value_rows(index_t h) const {
    return {heads_[checked(h)].v.data(), head_dim_};
  }
  // [length(h), 1, head_dim] views of KV head h.
  tensor_view<const T> keys(index_t h) const { return head_view(heads_[checked(h)].k, h); }
  tensor_view<const T> values(index_t h) const { return head_view(heads_[checked(h)].v, h); }

  // Appends k, v [n, kv_heads, head_dim] (any storage type) to every KV head.
  template <class U>
  void append(tensor_view<U> k, tensor_view<U> v) {
    detail::check_append(k, v, kv_heads(), head_dim_);
    const index_t n = k.tokens();
    for (index_t h = 0; h < kv_heads(); ++h) {
      auto& hd = heads_[static_cast<std::size_t>(h)];
      index_t& len = lengths_[static_cast<std::size_t>(h)];
      hd.k.ensure(len + n, len);
      hd.v.ensure(len + n, len);
      for (index_t t = 0; t < n; ++t) {
        detail::convert_row(k.row(t, h), hd.k.row(len + t), head_dim_);
        detail::convert_row(v.row(t, h), hd.v.row(len + t), head_dim_);
        if (summaries_) summaries_->append_row(h, hd.k.row(len + t));
      }
      len += n;
    }
  }

  // Starts Quest page summaries: built once from the current contents, then kept up to date
  // token by token on append. Enabling again with another page size starts over.
  void enable_summaries(index_t page_size) {
    summaries_.emplace(kv_heads(), head_dim_, page_size);
    for (index_t h = 0; h < kv_heads(); ++h) rebuild_summaries(h);
  }
  void disable_summaries() { summaries_.reset(); }
  const page_summaries<T>* summaries() const { return summaries_ ? &*summaries_ : nullptr; }

  // Keeps, per KV head, the tokens `sel` lists (in ascending order, moved to the front in place);
  // with `shrink`, memory beyond the kept tokens is released. Summaries, if enabled, are rebuilt
  // for the compacted contents (their pages changed). The selection must have been made for the
  // cache's current lengths.
  void compact(const eviction_selection& sel, bool shrink = true) {
    detail::check_eviction(*this, sel);
    for (index_t h = 0; h < kv_heads(); ++h) {
      const auto& keep = sel.keep[static_cast<std::size_t>(h)];
      auto& hd = heads_[static_cast<std::size_t>(h)];
      const index_t n = static_cast<index_t>(keep.size());
      if (n == length(h)) continue;  // ascending + unique + in range: the identity
      const std::size_t row_bytes = static_cast<std::size_t>(head_dim_) * sizeof(T);
      for (index_t i = 0; i < n; ++i) {
        const index_t src = keep[static_cast<std::size_t>(i)];
        if (src == i) continue;  // src > i: rows never overlap
        std::memcpy(hd.k.row(i), hd.k.row(src), row_bytes);
        std::memcpy(hd.v.row(i), hd.v.row(src), row_bytes);
      }
      lengths_[static_cast<std::size_t>(h)] = n;
      if (summaries_) rebuild_summaries(h);
    }
    if (shrink) this->shrink();
  }

  // Releases capacity beyond each head's length.
  void shrink() {
    for (index_t h = 0; h < kv_heads(); ++h) {
      heads_[static_cast<std::size_t>(h)].k.shrink(length(h));
      heads_[static_cast<std::size_t>(h)].v.shrink(length(h));
    }
    if (summaries_) summaries_->shrink();
  }

  // Bytes held by KV head h (K and V capacity), and in total (all heads plus summaries).
  std::size_t bytes(index_t h) const {
    const auto& hd = heads_[checked(h)];
    return hd.k.bytes() + hd.v.bytes();
  }
  std::size_t bytes() const {
    std::size_t b = 0;
    for (index_t h = 0; h < kv_heads(); ++h) b += bytes(h);
    return b + summary_bytes();
  }
  std::size_t summary_bytes() const { return summaries_ ? summaries_->bytes() : 0; }

 private:
  struct head {
    detail::row_buffer<T> k, v;
  };
  std::size_t checked(index_t h) const {
    if (!(h >= 0 && h < kv_heads()))
      require(false, "kv head", detail::concat("in [0, ", kv_heads(), ")"), h);
    return static_cast<std::size_t>(h);
  }
  tensor_view<const T> head_view(const detail::row_buffer<T>& b, index_t h) const {
    const index_t n = length(h);
    if (n == 0) return {};
    return {b.data(), n, 1, head_dim_};
  }
  void rebuild_summaries(index_t h) {
    summaries_->clear(h);
    const auto& hd = heads_[static_cast<std::size_t>(h)];
    for (index_t t = 0; t < length(h); ++t) summaries_->append_row(h, hd.k.row(t));
  }

  std::vector<head> heads_;
  std::vector<index_t> lengths_;
  index_t head_dim_ = 0;
  std::optional<page_summaries<T>> summaries_;
};

}  // namespace spattn
