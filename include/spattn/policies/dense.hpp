#pragma once
// Dense causal attention expressed as a prefill policy, so every place that takes a policy takes
// dense too. The selection is the full causal layout: for each 64-query block, 64-key blocks at
// 0, 64, 128, ... up to the block's last query; through the sparse kernel it performs exactly the
// dense kernel's arithmetic (same tiles, same order). Reference: sparse-frontier `DenseAttention`
// (no parameters). It accepts only budgets that keep everything: the policy default, kept(1),
// coverage(1), or a token budget of at least k.tokens; anything smaller raises spattn::error.
#include <string>

#include "spattn/policies/prefill_policy.hpp"

namespace spattn::policies {

struct dense {
  std::string name() const { return "dense"; }

  prefill_selection select(const prefill_inputs& in, const budget& b) const {
    in.validate();
    const bool keeps_all =
        b.is_default() || (b.kind() == budget_kind::ratio && b.value() >= 1.0) ||
        (b.kind() == budget_kind::coverage && b.value() >= 1.0) ||
        (b.kind() == budget_kind::tokens && b.value() >= static_cast<double>(in.k_tokens()));
    require(keeps_all, "budget", "one that keeps every pair (dense cannot sparsify)", b.describe());
    return full_causal(in);
  }

  // The full causal layout for `in`'s shape.
  static prefill_selection full_causal(const prefill_inputs& in) {
    prefill_selection sel = in.empty_selection(64, 64);
    for (index_t h = 0; h < sel.heads; ++h) {
      for (index_t b = 0; b < sel.q_blocks(); ++b) {
        auto& e = sel.at(h, b);
        for (index_t s = 0; s <= sel.last_position(b); s += 64) e.blocks.push_back(s);
      }
    }
    return sel;
  }
};

static_assert(prefill_policy<dense>);

}  // namespace spattn::policies
