#pragma once
// StreamingLLM (Xiao et al. 2023): attention sinks plus a recent window. Not in sparse-frontier
// (commit 31d86c1); the semantics follow the same author's nano-sparse-attention
// LocalAndSinksAttention: the token at position p sees {j < sink_tokens} and {p - window < j <= p}
// (the window includes the token itself).
//
// Two uses, one rule (keep [0, sink_tokens) and the last local_window tokens of each KV head):
//  - eviction_policy: select(eviction_inputs) names the tokens to keep; append() appends a
//    decoding step's K/V and evicts at once, so the cache never holds more than
//    sink_tokens + local_window tokens per head (continuous eviction while decoding);
//  - decode_policy: select(decode_inputs) reads only those tokens of a full cache (a mask,
//    page_size 1), nothing evicted.
// Defaults (a project choice, not reference values): 4 sinks, as SnapKV's prefix_tokens, and a
// 1020-token window, so 1024 tokens in all like the other methods' default budget.
// Budget: policy_default -> sink_tokens + local_window; tokens(t) -> t in all (window t - sinks);
// kept fraction f -> ceil(f * n) for a head of n tokens (window at least 1). Coverage / adaptive
// raise.
#include <string>
#include <vector>

#include "spattn/policies/decode_policy.hpp"

namespace spattn::policies {

struct streaming_llm {
  index_t sink_tokens = 4;
  index_t local_window = 1020;

  std::string name() const { return "streaming_llm"; }

  // Recent-window size for a head holding n tokens.
  index_t window(const budget& b, index_t n) const {
    require(sink_tokens >= 0, "sink_tokens", ">= 0", sink_tokens);
    spattn::detail::require_allocation(b, allocation::uniform, "streaming_llm");
    index_t total = 0;
    switch (b.kind()) {
      case budget_kind::policy_default:
        require(local_window >= 1, "local_window", ">= 1 (the current token)", local_window);
        return local_window;
      case budget_kind::tokens:
        total = static_cast<index_t>(b.value());
        break;
      case budget_kind::ratio:  // short heads keep at least the sinks and the current token
        total = static_cast<index_t>(std::ceil(b.value() * static_cast<double>(n) - 1e-9));
        return std::max<index_t>(1, total - sink_tokens);
      default:
        throw error(
            spattn::detail::concat("argument 'budget': expected a token, kept-fraction or default "
                                   "budget for streaming_llm, got ",
                                   b.describe()));
    }
    if (!(total > sink_tokens))
      require(false, "streaming_llm budget",
              spattn::detail::concat("> sink_tokens (", sink_tokens, ") tokens"), total);
    return total - sink_tokens;
  }

  // Kept tokens of a head holding n tokens, ascending.
  std::vector<index_t> kept(const budget& b, index_t n) const {
    const index_t w = window(b, n);
    std::vector<index_t> k;
    for (index_t t = 0; t < n; ++t)
      if (t < sink_tokens || t >= n - w) k.push_back(t);
    return k;
  }

  eviction_selection select(const eviction_inputs& in, const budget& b) const {
    eviction_selection sel;
    sel.lengths = in.lengths;
    if (sel.lengths.empty()) {
      require(!in.keys.empty(), "eviction inputs", "lengths or keys", "neither");
      sel.lengths.assign(static_cast<std::size_t>(in.keys.heads()), in.keys.tokens());
    }
    for (const index_t n : sel.lengths) sel.keep.push_back(kept(b, n));
    return sel;
  }

  decode_selection select(const decode_inputs& in, const budget& b) const {
    if (!(in.kv_heads() > 0 && !in.q.empty() && in.q.heads() % in.kv_heads() == 0))
      require(false, "q.heads",
              spattn::detail::concat("a multiple of the KV heads (", in.kv_heads(), ")"),
              in.q.heads());
    decode_selection sel;
    sel.page_size = 1;
    sel.group = in.q.heads() / in.kv_heads();
    sel.lengths = in.lengths;
    for (const index_t n : in.lengths) sel.pages.push_back(kept(b, n));
    return sel;
  }

  // Appends one decoding step's k, v to the cache (kv_cache, or anything with append(k, v) and
  // compact(selection, shrink)) and evicts down to the budget. Compaction keeps the capacity
  // (no reallocation per step). Returns what was kept.
  template <class Cache, class U>
  eviction_selection append(Cache& cache, tensor_view<U> k, tensor_view<U> v,
                            const budget& b = budget::policy_default()) const {
    cache.append(k, v);
    const auto sel = select(make_eviction_inputs(cache), b);
    if (!sel.is_identity()) cache.compact(sel, /*shrink=*/false);
    return sel;
  }
};

static_assert(decode_policy<streaming_llm>);
static_assert(eviction_policy<streaming_llm>);

}  // namespace spattn::policies
