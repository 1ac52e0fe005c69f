#pragma once
// A user-defined sparse prefill policy: a plain struct with name() and select(). It keeps, for
// every 64-query block, the first key block (attention sink), the two most recent key blocks and
// every `stride`-th block in between. examples/custom_policy.cpp runs it through the kernels;
// spattn-compare (tools/compare_methods.hpp) registers it with one line.
#include <spattn/policies/prefill_policy.hpp>
#include <string>

struct strided_policy {
  long stride = 8;

  std::string name() const { return "strided"; }

  // Budgets: the policy default (`stride`), or a kept fraction / compression: the smallest stride
  // whose selection fits. Others raise spattn::error, as the policy concept asks.
  spattn::prefill_selection select(const spattn::prefill_inputs& in,
                                   const spattn::budget& b) const {
    if (b.is_default()) return with_stride(in, stride);
    spattn::require(b.kind() == spattn::budget_kind::ratio, "budget",
                    "the policy default or a kept fraction", b.describe());
    for (long s = 1; s <= in.k_tokens() / 64 + 1; ++s) {
      spattn::prefill_selection sel = with_stride(in, s);
      if (sel.density() <= b.value()) return sel;  // every head has the same pattern
    }
    throw spattn::error(
        "argument 'budget': expected at least the strided pattern's first and "
        "last blocks, got " +
        b.describe());
  }

  static spattn::prefill_selection with_stride(const spattn::prefill_inputs& in, long stride) {
    spattn::prefill_selection sel = in.empty_selection(64, 64);
    for (long h = 0; h < sel.heads; ++h) {
      for (long qb = 0; qb < sel.q_blocks(); ++qb) {
        const long diag = sel.last_position(qb) / 64;  // key block holding the last query
        for (long kb = 0; kb <= diag; ++kb) {
          if (kb == 0 || kb >= diag - 1 || kb % stride == 0)
            sel.at(h, qb).blocks.push_back(kb * 64);
        }
      }
    }
    return sel;
  }
};
static_assert(spattn::prefill_policy<strided_policy>);
