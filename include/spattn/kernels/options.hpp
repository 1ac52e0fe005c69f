#pragma once
// Options shared by the dense (and sparse) attention kernels, and the argument checks they share.
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "spattn/core/error.hpp"
#include "spattn/core/executor.hpp"
#include "spattn/core/tensor_view.hpp"
#include "spattn/core/varlen.hpp"

namespace spattn {

struct attention_options {
  // Softmax scale; 0 means 1/sqrt(head_dim).
  float scale = 0.0f;
  // Causal masking (query at position p sees keys [0, p]).
  bool causal = true;
  // Position of the first query (chunked prefill: queries at [p, p+m) attend keys [0, p+m)).
  // -1 means k.tokens - q.tokens (the queries are the last positions). Single-sequence calls only.
  index_t q_offset = -1;
  executor exec = executor::openmp();
};

namespace detail {

inline constexpr index_t max_head_dim = 256;

template <class Q, class K, class V, class O>
constexpr void static_check_views() {
  static_assert(std::is_same_v<std::remove_cv_t<K>, std::remove_cv_t<V>>,
                "k and v must have the same storage type");
  static_assert(!std::is_const_v<O>, "out must be a writable view");
}

struct resolved_call {
  index_t heads = 0, kv_heads = 0, group = 0, head_dim = 0;
  float scale = 0.0f;
  std::vector<sequence_span> seqs;
};

template <class TQ, class TKV, class TO>
resolved_call check_attention_args(const tensor_view<const TQ>& q, const tensor_view<const TKV>& k,
                                   const tensor_view<const TKV>& v, const tensor_view<TO>& out,
                                   const lse_view& lse, const attention_options& opt) {
  resolved_call c;
  require(k.heads() == v.heads(), "v.heads", detail::lazy("k.heads (", k.heads(), ")"), v.heads());
  require(k.tokens() == v.tokens(), "v.tokens", detail::lazy("k.tokens (", k.tokens(), ")"),
          v.tokens());
  require(q.heads() % k.heads() == 0, "q.heads",
          detail::lazy("a multiple of k.heads (", k.heads(), ")"), q.heads());
  require(k.head_dim() == q.head_dim(), "k.head_dim",
          detail::lazy("q.head_dim (", q.head_dim(), ")"), k.head_dim());
  require(v.head_dim() == q.head_dim(), "v.head_dim",
          detail::lazy("q.head_dim (", q.head_dim(), ")"), v.head_dim());
  require(q.head_dim() % 8 == 0 && q.head_dim() <= max_head_dim, "head_dim",
          detail::lazy("a multiple of 8 in [8, ", max_head_dim, "]"), q.head_dim());
  require(out.tokens() == q.tokens() && out.heads() == q.heads() && out.head_dim() == q.head_dim(),
          "out", detail::lazy("shape [", q.tokens(), ", ", q.heads(), ", ", q.head_dim(), "]"),
          detail::lazy("[", out.tokens(), ", ", out.heads(), ", ", out.head_dim(), "]"));
  if (!lse.empty()) {
    require(lse.tokens() == q.tokens() && lse.heads() == q.heads(), "lse",
            detail::lazy("shape [", q.tokens(), ", ", q.heads(), "]"),
            detail::lazy("[", lse.tokens(), ", ", lse.heads(), "]"));
  }
  const bool alias =
      ranges_overlap(out.begin_address(), out.end_address(), q.begin_address(), q.end_address()) ||
      ranges_overlap(out.begin_address(), out.end_address(), k.begin_address(), k.end_address()) ||
      ranges_overlap(out.begin_address(), out.end_address(), v.begin_address(), v.end_address());
  require(!alias, "out", "memory disjoint from q, k and v", "an aliasing view");
  if (!lse.empty()) {
    const void* b = lse.begin_address();
    const void* e = lse.end_address();
    const bool lse_alias = ranges_overlap(b, e, q.begin_address(), q.end_address()) ||
                           ranges_overlap(b, e, k.begin_address(), k.end_address()) ||
                           ranges_overlap(b, e, v.begin_address(), v.end_address()) ||
                           ranges_overlap(b, e, out.begin_address(), out.end_address());
    require(!lse_alias, "lse", "memory disjoint from q, k, v and out", "an aliasing view");
  }
  require(std::isfinite(opt.scale) && opt.scale >= 0.0f, "scale",
          "a finite value >= 0 (0: default)", opt.scale);
  c.heads = q.heads();
  c.kv_heads = k.heads();
  c.group = q.heads() / k.heads();
  c.head_dim = q.head_dim();
  c.scale = opt.scale > 0.0f ? opt.scale : 1.0f / std::sqrt(static_cast<float>(q.head_dim()));
  return c;
}

// Single sequence: resolves q_offset.
inline sequence_span single_sequence(index_t q_tokens, index_t k_tokens,
                                     const attention_options& opt) {
  require(k_tokens > 0 || q_tokens == 0, "k.tokens", "> 0 (an empty key sequence)", k_tokens);
  sequence_span s;
  s.q_len = q_tokens;
  s.k_len = k_tokens;
  if (opt.causal) {
    require(opt.q_offset >= -1, "q_offset", ">= 0 or -1 (auto)", opt.q_offset);
    s.q_offset = opt.q_offset == -1 ? k_tokens - q_tokens : opt.q_offset;
    require(s.q_offset >= 0, "q.tokens", detail::lazy("<= k.tokens (", k_tokens, ")"), q_tokens);
    require(s.q_offset + q_tokens <= k_tokens, "q_offset",
            detail::lazy("<= k.tokens - q.tokens (", k_tokens - q_tokens, ")"), opt.q_offset);
  } else {
    require(opt.q_offset == -1 || opt.q_offset == 0, "q_offset", "-1 or 0 for non-causal attention",
            opt.q_offset);
  }
  return s;
}

}  // namespace detail
}  // namespace spattn
