#pragma once
// A read-only tensor view whose storage type is known at run time. Policies take their inputs
// through it, so a policy is a plain (non-template) struct that still reads f32/f16/bf16 data:
// visit() hands the typed tensor_view to a generic lambda (one dispatch per call, not per element).
#include "spattn/core/tensor_view.hpp"

namespace spattn {

class any_view {
 public:
  any_view() = default;
  template <class T>
  any_view(const tensor_view<T>& v)  // NOLINT(google-explicit-constructor)
      : data_(v.data()),
        type_(dtype_of<T>()),
        tokens_(v.tokens()),
        heads_(v.heads()),
        head_dim_(v.head_dim()),
        token_stride_(v.token_stride()),
        head_stride_(v.head_stride()) {}

  dtype type() const { return type_; }
  bool empty() const { return data_ == nullptr || tokens_ == 0; }
  index_t tokens() const { return tokens_; }
  index_t heads() const { return heads_; }
  index_t head_dim() const { return head_dim_; }
  index_t token_stride() const { return token_stride_; }
  index_t head_stride() const { return head_stride_; }

  template <class T>
  tensor_view<const T> as() const {
    require(dtype_of<T>() == type_, "view dtype", dtype_name(dtype_of<T>()), dtype_name(type_));
    return {static_cast<const T*>(data_), tokens_, heads_, head_dim_, token_stride_, head_stride_};
  }

  template <class F>
  decltype(auto) visit(F&& f) const {
    switch (type_) {
      case dtype::f16:
        return f(as<f16>());
      case dtype::bf16:
        return f(as<bf16>());
      default:
        return f(as<float>());
    }
  }

  // Copies row (token, head) as fp32 into dst[head_dim].
  void row_f32(index_t token, index_t head, float* dst) const {
    visit([&](const auto& v) {
      const auto* r = v.row(token, head);
      for (index_t x = 0; x < head_dim_; ++x) dst[x] = to_float(r[x]);
    });
  }

 private:
  const void* data_ = nullptr;
  dtype type_ = dtype::f32;
  index_t tokens_ = 0, heads_ = 1, head_dim_ = 1, token_stride_ = 0, head_stride_ = 0;
};

}  // namespace spattn
