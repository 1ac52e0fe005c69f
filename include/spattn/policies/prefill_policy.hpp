#pragma once
// The prefill policy interface. A policy is a small value type (a plain struct of parameters)
// that decides which query-key pairs a sparse prefill computes:
//
//   struct my_policy {
//     std::string name() const;
//     prefill_selection select(const prefill_inputs&, const budget&) const;
//   };
//
// It never computes attention outputs: the one sparse kernel (kernels/sparse_prefill.hpp)
// executes whatever selection it returns. Budgets (budget/budget.hpp) mean, for every policy:
//   policy_default()        the policy's reference parameters;
//   tokens(T)               at most T keys per query on average, per head (T <= k tokens);
//   kept(f)/compression(c)  at most the fraction f of the causal pairs, per head;
//   coverage(a)             the smallest set holding the fraction a of the estimated attention
//                           mass (policies that estimate mass; others raise spattn::error).
// A budget a policy cannot meet (e.g. smaller than its forced parts) raises spattn::error.
#include <algorithm>
#include <cmath>
#include <concepts>
#include <string>

#include "spattn/budget/budget.hpp"
#include "spattn/core/any_view.hpp"
#include "spattn/core/executor.hpp"
#include "spattn/selection/prefill_selection.hpp"

namespace spattn {

// What a policy may look at: the queries and keys of one sequence (values never matter to the
// selection), where the queries sit, the softmax scale, and the threads it may use.
struct prefill_inputs {
  any_view q;             // [q_tokens, heads, head_dim]
  any_view k;             // [k_tokens, kv_heads, head_dim]
  index_t q_offset = -1;  // position of query 0; -1: k.tokens - q.tokens (queries are the last)
  float scale = 0.0f;     // softmax scale; 0: 1/sqrt(head_dim)
  executor exec = executor::openmp();

  index_t heads() const { return q.heads(); }
  index_t kv_heads() const { return k.heads(); }
  index_t group() const { return q.heads() / k.heads(); }
  index_t head_dim() const { return q.head_dim(); }
  index_t q_tokens() const { return q.tokens(); }
  index_t k_tokens() const { return k.tokens(); }
  index_t offset() const { return q_offset < 0 ? k.tokens() - q.tokens() : q_offset; }
  float softmax_scale() const {
    return scale > 0.0f ? scale : 1.0f / std::sqrt(static_cast<float>(q.head_dim()));
  }

  // Raises spattn::error on shapes a policy cannot work with.
  void validate() const {
    require(q.tokens() > 0, "inputs q.tokens", "> 0", q.tokens());
    require(k.tokens() > 0, "inputs k.tokens", "> 0", k.tokens());
    require(q.heads() % k.heads() == 0, "inputs q.heads",
            detail::lazy("a multiple of k.heads (", k.heads(), ")"), q.heads());
    require(q.head_dim() == k.head_dim(), "inputs k.head_dim",
            detail::lazy("q.head_dim (", q.head_dim(), ")"), k.head_dim());
    require(q_offset >= -1, "inputs q_offset", ">= 0 or -1 (auto)", q_offset);
    require(offset() >= 0 && offset() + q.tokens() <= k.tokens(), "inputs q_offset",
            detail::lazy("queries inside the key sequence (k.tokens ", k.tokens(), ", q.tokens ",
                         q.tokens(), ")"),
            q_offset);
    require(std::isfinite(scale) && scale >= 0.0f, "inputs scale", "a finite value >= 0", scale);
  }

  // An empty selection with this input's shape.
  prefill_selection empty_selection(index_t block_q = 64, index_t block_k = 64) const {
    return prefill_selection(heads(), q_tokens(), k_tokens(), offset(), head_dim(), block_q,
                             block_k);
  }
};

namespace detail {

// Causal pairs of one head: queries at q_offset .. q_offset + q_tokens - 1.
inline index_t causal_pairs_per_head(index_t q_tokens, index_t q_offset) {
  return q_tokens * q_offset + q_tokens * (q_tokens + 1) / 2;
}

// The most pairs one head may compute under a token or ratio budget (see the header comment).
// Raises for budgets without a pair form (policy default, coverage).
inline index_t pair_budget(const budget& b, const prefill_inputs& in) {
  const index_t causal = causal_pairs_per_head(in.q_tokens(), in.offset());
  switch (b.kind()) {
    case budget_kind::tokens:
      return std::min(causal, b.tokens_for(in.k_tokens()) * in.q_tokens());
    case budget_kind::ratio:
      return std::max<index_t>(
          1, static_cast<index_t>(std::floor(b.value() * static_cast<double>(causal) + 1e-9)));
    default:
      throw error(
          concat("argument 'budget': expected a token or ratio budget, got ", b.describe()));
  }
}

inline void require_uniform(const budget& b, const char* policy) {
  require(b.alloc() == allocation::uniform, "budget allocation",
          lazy("uniform (", policy, " has no adaptive allocation)"), "adaptive");
}

}  // namespace detail

template <class P>
concept prefill_policy = std::semiregular<P> &&
    requires(const P& p, const prefill_inputs& in, const budget& b) {
  { p.name() } -> std::convertible_to<std::string>;
  { p.select(in, b) } -> std::same_as<prefill_selection>;
};

}  // namespace spattn
