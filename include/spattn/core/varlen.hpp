#pragma once
// Varlen batches: several sequences of different lengths packed along the token axis, described
// by cumulative offsets (FlashAttention's cu_seqlens): sequence s owns query tokens
// [cu_q[s], cu_q[s+1]) and key tokens [cu_k[s], cu_k[s+1]). Causal alignment is bottom-right:
// the queries of a sequence are its last q_len positions (chunked prefill and decoding).
#include <span>
#include <vector>

#include "spattn/core/error.hpp"
#include "spattn/core/tensor_view.hpp"

namespace spattn {

struct varlen_batch {
  std::span<const index_t> cu_q;
  std::span<const index_t> cu_k;
};

// One sequence of a call, resolved: where its tokens are and the position of its first query.
struct sequence_span {
  index_t q_begin = 0, q_len = 0;
  index_t k_begin = 0, k_len = 0;
  index_t q_offset = 0;  // query i sits at position q_offset + i and sees keys [0, q_offset + i]
};

namespace detail {

inline std::vector<sequence_span> resolve_varlen(const varlen_batch& b, index_t q_tokens,
                                                 index_t k_tokens, bool causal) {
  require(b.cu_q.size() >= 2, "cu_q", "at least 2 offsets (one sequence)", b.cu_q.size());
  require(b.cu_k.size() == b.cu_q.size(), "cu_k",
          detail::lazy("as many offsets as cu_q (", b.cu_q.size(), ")"), b.cu_k.size());
  require(b.cu_q.front() == 0, "cu_q[0]", 0, b.cu_q.front());
  require(b.cu_k.front() == 0, "cu_k[0]", 0, b.cu_k.front());
  require(b.cu_q.back() == q_tokens, "cu_q.back()", detail::lazy("q tokens (", q_tokens, ")"),
          b.cu_q.back());
  require(b.cu_k.back() == k_tokens, "cu_k.back()", detail::lazy("k tokens (", k_tokens, ")"),
          b.cu_k.back());
  std::vector<sequence_span> seqs;
  seqs.reserve(b.cu_q.size() - 1);
  for (std::size_t s = 0; s + 1 < b.cu_q.size(); ++s) {
    sequence_span sp;
    sp.q_begin = b.cu_q[s];
    sp.q_len = b.cu_q[s + 1] - b.cu_q[s];
    sp.k_begin = b.cu_k[s];
    sp.k_len = b.cu_k[s + 1] - b.cu_k[s];
    require(sp.q_len >= 0, "cu_q", "non-decreasing offsets",
            detail::lazy("sequence ", s, " has negative length"));
    require(sp.k_len >= 0, "cu_k", "non-decreasing offsets",
            detail::lazy("sequence ", s, " has negative length"));
    require(sp.k_len > 0, "cu_k", "non-empty key sequences",
            detail::lazy("sequence ", s, " has no keys"));
    require(!causal || sp.q_len <= sp.k_len, "cu_q", "causal sequences with q_len <= k_len",
            detail::lazy("sequence ", s, ": q_len ", sp.q_len, " > k_len ", sp.k_len));
    sp.q_offset = causal ? sp.k_len - sp.q_len : 0;
    seqs.push_back(sp);
  }
  return seqs;
}

}  // namespace detail
}  // namespace spattn
