#pragma once
// Non-owning views. A tensor_view is [tokens, heads, head_dim] with head_dim contiguous and the
// other two strides free (so slices of a larger buffer, e.g. a packed QKV projection, work).
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "spattn/core/dtype.hpp"
#include "spattn/core/error.hpp"

namespace spattn {

using index_t = std::int64_t;

template <class T>
class tensor_view {
  static_assert(is_storage_type_v<T>, "tensor_view element must be float, spattn::f16 or bf16");

 public:
  using element_type = T;
  using value_type = std::remove_cv_t<T>;

  tensor_view() = default;

  // Dense layout: strides derived from the shape.
  tensor_view(T* data, index_t tokens, index_t heads, index_t head_dim)
      : tensor_view(data, tokens, heads, head_dim, heads * head_dim, head_dim) {}

  tensor_view(T* data, index_t tokens, index_t heads, index_t head_dim, index_t token_stride,
              index_t head_stride)
      : data_(data),
        tokens_(tokens),
        heads_(heads),
        head_dim_(head_dim),
        token_stride_(token_stride),
        head_stride_(head_stride) {
    require(tokens >= 0, "tokens", ">= 0", tokens);
    require(heads > 0, "heads", "> 0", heads);
    require(head_dim > 0, "head_dim", "> 0", head_dim);
    require(head_stride >= head_dim, "head_stride", detail::lazy(">= head_dim (", head_dim, ")"),
            head_stride);
    // Rows must not overlap: token-major ([T, H, D], the usual) or head-major ([H, T, D]).
    const bool token_major = tokens <= 1 || token_stride >= (heads - 1) * head_stride + head_dim;
    const bool head_major = heads == 1 || head_stride >= (tokens - 1) * token_stride + head_dim;
    require(token_stride > 0 || tokens <= 1, "token_stride", "> 0", token_stride);
    require(token_major || head_major, "token_stride",
            detail::lazy("rows that do not overlap (heads=", heads, ", head_dim=", head_dim,
                         ", head_stride=", head_stride, ")"),
            token_stride);
    require(data != nullptr || tokens == 0, "data", "non-null pointer", "nullptr");
  }

  // Implicit view-to-const conversion.
  template <class U, class = std::enable_if_t<std::is_same_v<const U, T> && !std::is_same_v<U, T>>>
  tensor_view(const tensor_view<U>& o)  // NOLINT(google-explicit-constructor)
      : data_(o.data()),
        tokens_(o.tokens()),
        heads_(o.heads()),
        head_dim_(o.head_dim()),
        token_stride_(o.token_stride()),
        head_stride_(o.head_stride()) {}

  T* data() const { return data_; }
  index_t tokens() const { return tokens_; }
  index_t heads() const { return heads_; }
  index_t head_dim() const { return head_dim_; }
  index_t token_stride() const { return token_stride_; }
  index_t head_stride() const { return head_stride_; }
  bool empty() const { return tokens_ == 0; }

  // Pointer to the head_dim-long row of (token, head).
  T* row(index_t token, index_t head) const {
    return data_ + token * token_stride_ + head * head_stride_;
  }

  // Sub-range of tokens [begin, begin + count).
  tensor_view slice_tokens(index_t begin, index_t count) const {
    if (begin < 0 || count < 0 || begin + count > tokens_) {
      require(false, "slice_tokens", detail::concat("a range inside [0, ", tokens_, ")"),
              detail::concat("[", begin, ", ", begin + count, ")"));
    }
    tensor_view r = *this;
    r.data_ = count ? data_ + begin * token_stride_ : data_;
    r.tokens_ = count;
    return r;
  }

  // Byte range touched by the view (for aliasing checks).
  const void* begin_address() const { return data_; }
  const void* end_address() const {
    if (tokens_ == 0) return data_;
    return row(tokens_ - 1, heads_ - 1) + head_dim_;
  }

 private:
  T* data_ = nullptr;
  index_t tokens_ = 0;
  index_t heads_ = 1;
  index_t head_dim_ = 1;
  index_t token_stride_ = 0;
  index_t head_stride_ = 0;
};

// Log-sum-exp output, [tokens, heads] floats (natural log of the sum of exp(scale * q.k)).
class lse_view {
 public:
  lse_view() = default;
  lse_view(float* data, index_t tokens, index_t heads) : lse_view(data, tokens, heads, heads) {}
  lse_view(float* data, index_t tokens, index_t heads, index_t token_stride)
      : data_(data), tokens_(tokens), heads_(heads), token_stride_(token_stride) {
    require(tokens >= 0, "lse tokens", ">= 0", tokens);
    require(heads > 0, "lse heads", "> 0", heads);
    require(token_stride >= heads || tokens <= 1, "lse token_stride",
            detail::lazy(">= heads (", heads, ")"), token_stride);
    require(data != nullptr || tokens == 0, "lse data", "non-null pointer", "nullptr");
  }
  float* data() const { return data_; }
  index_t tokens() const { return tokens_; }
  index_t heads() const { return heads_; }
  index_t token_stride() const { return token_stride_; }
  bool empty() const { return data_ == nullptr; }
  float& at(index_t token, index_t head) const { return data_[token * token_stride_ + head]; }
  const void* begin_address() const { return data_; }
  const void* end_address() const {
    return tokens_ ? data_ + (tokens_ - 1) * token_stride_ + heads_ : data_;
  }

 private:
  float* data_ = nullptr;
  index_t tokens_ = 0;
  index_t heads_ = 1;
  index_t token_stride_ = 1;
};

template <class T>
tensor_view<const std::remove_cv_t<T>> as_const(const tensor_view<T>& v) {
  return v;
}

namespace detail {
inline bool ranges_overlap(const void* a0, const void* a1, const void* b0, const void* b1) {
  auto x0 = reinterpret_cast<std::uintptr_t>(a0), x1 = reinterpret_cast<std::uintptr_t>(a1);
  auto y0 = reinterpret_cast<std::uintptr_t>(b0), y1 = reinterpret_cast<std::uintptr_t>(b1);
  return x0 < y1 && y0 < x1;
}
}  // namespace detail

}  // namespace spattn
