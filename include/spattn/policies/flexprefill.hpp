#pragma once
// FlexPrefill as implemented in sparse-frontier (`FlexPrefill`, commit 31d86c1): vertical-slash
// with adaptive, coverage-based sizes and a minimum budget, per query head. Not the original
// FlexPrefill: no query-aware / vertical-slash head classification, no pooled block scoring.
//
// Per query head: the last `approximation_size` queries attend all keys (causal softmax, fp32);
// vert = mean over those queries of P[i, j], diag = mean diagonal sums (both sum to 1);
// nv = max(min_budget, cover(vert, alpha)), ns = max(min_budget, cover(diag, alpha)) where
// cover(x, a) = 1 + #{k : cumsum(sort_desc(x))[k] <= a}, computed before forcing columns 0..3 and
// offsets 0..63; then exactly vertical-slash's top-k and MInference index conversion.
//
// Parameters default to the paper's configuration (configs/attention/flexprefill.yaml:
// alpha 0.65, min_budget 512, approximation 512); the reference class defaults are 0.9 / 256 / 512.
//
// Deliberate differences from the reference (documented choices):
//  - approximation_size and min_budget are clamped to the sequence (the reference requires
//    L >= approximation_size and crashes when min_budget > L).
//  - The coverage cumsum is accumulated in double; ties in top-k go to the lower index.
//  - The forced columns 0..3 and offsets 0..63 are always kept whole: sizes are raised to at
//    least 4 / 64. (With min_budget < 64 the reference's topk(ns) would keep only ns of the
//    forced offsets, possibly not offset 0; the defaults never reach this.)
//  - The same chunked-prefill generalisation as vertical_slash.
//  - Budgets: coverage(a) sets alpha = a; tokens(T) / kept(f) cap both sizes per head at the
//    largest x whose computed pairs fit (the coverage sizes still apply below the cap).
//  - Adaptive allocation (ours): with coverage(a), one coverage over all heads - the fewest
//    columns (diagonals) of all heads together, best first, holding a x heads of the mass (each
//    head's scores sum to 1) - then min_budget per head; with tokens(T) / kept(f), the coverage
//    sizes cap each head and the heads share the pairs as in vertical_slash's adaptive mode.
#include <string>

#include "spattn/policies/vertical_slash.hpp"

namespace spattn::policies {

struct flexprefill {
  double alpha = 0.65;               // attention mass to cover (reference class default 0.9)
  index_t approximation_size = 512;  // estimation queries, the last ones
  index_t min_budget = 512;          // least columns / diagonals (class default 256)

  std::string name() const { return "flexprefill"; }

  prefill_selection select(const prefill_inputs& in, const budget& b) const {
    in.validate();
    require(std::isfinite(alpha) && alpha > 0.0 && alpha <= 1.0, "flexprefill alpha",
            "a coverage in (0, 1]", alpha);
    require(approximation_size >= 1, "flexprefill approximation_size", ">= 1", approximation_size);
    require(min_budget >= 1, "flexprefill min_budget", ">= 1", min_budget);
    detail::vs_config cfg;
    cfg.approximation = approximation_size;
    cfg.mean = true;
    cfg.coverage_sizes = true;
    cfg.alpha = alpha;
    cfg.min_budget = min_budget;
    cfg.shared = b.alloc() == allocation::adaptive;
    index_t target = -1;
    if (b.kind() == budget_kind::coverage) {
      cfg.alpha = b.value();
    } else if (!b.is_default()) {
      target = spattn::detail::pair_budget(b, in);
    }
    return detail::vs_select(in, cfg, target, "flexprefill");
  }
};

static_assert(prefill_policy<flexprefill>);

}  // namespace spattn::policies
