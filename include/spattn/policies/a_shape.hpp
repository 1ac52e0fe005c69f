#pragma once
// A-shape (StreamingLLM-style sink + local window) prefill: the fixed-pattern baseline.
//
// Not in the reference: sparse-frontier @31d86c1 has no A-shape method. The closest code by the
// same author (nano-sparse-attention `LocalAndSinksAttention`) lets query p see key j iff j <= p
// and (p - j < window or j < sinks). Our defaults are a project decision: 4 sink tokens (the
// prefix SnapKV always keeps) and a window of 1020, so a query sees 1024 keys like the decoding
// methods' default capacity.
//
// Deliberate difference: the pattern is applied per 64-query block (as MInference's block
// kernels do), not per row: every query of a block sees the sinks and the keys
// [first_query - window + 1, its own position], i.e. its exact window plus up to 63 older keys.
//
// Budgets: tokens(T) and kept(f) choose the largest window whose computed pairs fit (sinks kept);
// coverage budgets raise (the pattern estimates nothing). Every head gets the same pattern.
#include <string>

#include "spattn/policies/prefill_policy.hpp"

namespace spattn::policies {

struct a_shape {
  index_t sink_tokens = 4;
  index_t window = 1020;  // keys ending at (and including) the query

  std::string name() const { return "a_shape"; }

  prefill_selection select(const prefill_inputs& in, const budget& b) const {
    in.validate();
    require(sink_tokens >= 0, "a_shape sink_tokens", ">= 0", sink_tokens);
    require(window >= 1, "a_shape window", ">= 1", window);
    index_t w = window;
    if (!b.is_default()) {
      spattn::detail::require_uniform(b, "a_shape");
      const index_t target = spattn::detail::pair_budget(b, in);
      const index_t kmax = in.offset() + in.q_tokens();
      require(head_pairs(in, 1) <= target, "budget",
              spattn::detail::lazy("at least the sinks plus a window of 1 (", head_pairs(in, 1),
                                   " pairs per head)"),
              spattn::detail::lazy(b.describe(), " (", target, " pairs per head)"));
      index_t lo = 1, hi = kmax;  // largest w with head_pairs(w) <= target
      while (lo < hi) {
        const index_t mid = lo + (hi - lo + 1) / 2;
        if (head_pairs(in, mid) <= target)
          lo = mid;
        else
          hi = mid - 1;
      }
      w = lo;
    }
    prefill_selection sel = in.empty_selection(64, 64);
    for (index_t bq = 0; bq < sel.q_blocks(); ++bq) fill(sel, bq, w);
    for (index_t h = 1; h < sel.heads; ++h) {
      for (index_t bq = 0; bq < sel.q_blocks(); ++bq) sel.at(h, bq) = sel.at(0, bq);
    }
    return sel;
  }

 private:
  void fill(prefill_selection& sel, index_t bq, index_t w) const {
    auto& e = sel.at(0, bq);
    e.blocks.clear();
    e.columns.clear();
    const index_t last = sel.last_position(bq);
    const index_t start = std::max<index_t>(0, sel.first_position(bq) - w + 1);
    for (index_t s = start; s <= last; s += 64) e.blocks.push_back(s);
    for (index_t j = 0; j < std::min(sink_tokens, start); ++j) e.columns.push_back(j);
  }

  index_t head_pairs(const prefill_inputs& in, index_t w) const {
    prefill_selection one(1, in.q_tokens(), in.k_tokens(), in.offset(), in.head_dim(), 64, 64);
    for (index_t bq = 0; bq < one.q_blocks(); ++bq) fill(one, bq, w);
    return one.pairs();
  }
};

static_assert(prefill_policy<a_shape>);

}  // namespace spattn::policies
