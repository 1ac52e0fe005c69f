#pragma once
// Merging partial attention results computed over disjoint key sets (chunked prefill, split-K
// decoding, sparse + dense parts): with weights w = exp(lse),
//   out = (w_a * o_a + w_b * o_b) / (w_a + w_b),   lse = log(w_a + w_b).
// A side with lse = -inf (no keys) contributes nothing; both -inf gives zeros and -inf.
#include <algorithm>
#include <cmath>

#include "spattn/core/error.hpp"
#include "spattn/core/tensor_view.hpp"

namespace spattn {

namespace detail {
template <class A, class B>
bool same_or_disjoint(const tensor_view<A>& a, const tensor_view<B>& b) {
  if (!ranges_overlap(a.begin_address(), a.end_address(), b.begin_address(), b.end_address()))
    return true;
  return static_cast<const void*>(a.data()) == static_cast<const void*>(b.data()) &&
         std::is_same_v<std::remove_cv_t<A>, std::remove_cv_t<B>> &&
         a.token_stride() == b.token_stride() && a.head_stride() == b.head_stride();
}
}  // namespace detail

// out may be the same view as o_a or o_b (in-place merge); partial overlaps are rejected.
template <class A, class B, class O>
void merge_states(tensor_view<A> o_a, lse_view lse_a, tensor_view<B> o_b, lse_view lse_b,
                  tensor_view<O> out, lse_view lse_out = {}) {
  static_assert(!std::is_const_v<O>, "out must be a writable view");
  const auto shape = [](const auto& t) {
    return detail::concat("[", t.tokens(), ", ", t.heads(), ", ", t.head_dim(), "]");
  };
  require(o_b.tokens() == o_a.tokens() && o_b.heads() == o_a.heads() &&
              o_b.head_dim() == o_a.head_dim(),
          "o_b", "the shape of o_a " + shape(o_a), shape(o_b));
  require(out.tokens() == o_a.tokens() && out.heads() == o_a.heads() &&
              out.head_dim() == o_a.head_dim(),
          "out", "the shape of o_a " + shape(o_a), shape(out));
  for (const auto* l : {&lse_a, &lse_b}) {
    require(!l->empty() && l->tokens() == o_a.tokens() && l->heads() == o_a.heads(),
            l == &lse_a ? "lse_a" : "lse_b",
            detail::lazy("[", o_a.tokens(), ", ", o_a.heads(), "] values"), [&] {
              return l->empty() ? std::string("an empty view")
                                : detail::concat("[", l->tokens(), ", ", l->heads(), "]");
            });
  }
  if (!lse_out.empty()) {
    require(lse_out.tokens() == o_a.tokens() && lse_out.heads() == o_a.heads(), "lse_out",
            detail::lazy("[", o_a.tokens(), ", ", o_a.heads(), "]"),
            detail::lazy("[", lse_out.tokens(), ", ", lse_out.heads(), "]"));
  }
  require(detail::same_or_disjoint(out, o_a) && detail::same_or_disjoint(out, o_b), "out",
          "the same view as o_a or o_b, or disjoint memory", "a partially overlapping view");
  for (index_t t = 0; t < o_a.tokens(); ++t) {
    for (index_t h = 0; h < o_a.heads(); ++h) {
      const float la = lse_a.at(t, h), lb = lse_b.at(t, h);
      require(!std::isnan(la) && !std::isnan(lb) && la != INFINITY && lb != INFINITY, "lse",
              "finite values or -inf", "NaN or +inf");
      const float m = std::max(la, lb);
      float wa = 0.0f, wb = 0.0f, lse = -INFINITY;
      if (m != -INFINITY) {
        wa = std::exp(la - m);
        wb = std::exp(lb - m);
        const float sum = wa + wb;
        lse = m + std::log(sum);
        wa /= sum;
        wb /= sum;
      }
      const auto* pa = o_a.row(t, h);
      const auto* pb = o_b.row(t, h);
      auto* po = out.row(t, h);
      for (index_t x = 0; x < o_a.head_dim(); ++x) {
        po[x] = from_float<O>(wa * to_float(pa[x]) + wb * to_float(pb[x]));
      }
      if (!lse_out.empty()) lse_out.at(t, h) = lse;
    }
  }
}

}  // namespace spattn
