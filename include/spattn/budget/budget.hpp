#pragma once
// Budgets: how much of the attention a policy may keep. Three interchangeable forms:
//  - a token count (keys per query / per head),
//  - a kept fraction (compression ratio: kept(1/20) == compression(20)),
//  - a coverage of attention mass (keep the smallest set holding this fraction of the mass),
// plus `policy_default()`: the policy's own reference parameters. Allocation across heads is
// uniform (every head gets the same amount) or adaptive (shared, from estimated importance).
#include <cmath>
#include <limits>
#include <string>

#include "spattn/core/error.hpp"
#include "spattn/core/tensor_view.hpp"

namespace spattn {

enum class budget_kind { policy_default, tokens, ratio, coverage };
enum class allocation { uniform, adaptive };

class budget {
 public:
  static budget policy_default() { return budget(budget_kind::policy_default, 0.0); }

  static budget tokens(index_t n, allocation a = allocation::uniform) {
    require(n > 0, "budget tokens", "> 0", n);
    return budget(budget_kind::tokens, static_cast<double>(n), a);
  }
  // Kept fraction in (0, 1], e.g. 0.05 keeps 1 in 20.
  static budget kept(double fraction, allocation a = allocation::uniform) {
    require(std::isfinite(fraction) && fraction > 0.0 && fraction <= 1.0, "budget fraction",
            "a kept fraction in (0, 1]", fraction);
    return budget(budget_kind::ratio, fraction, a);
  }
  // Compression factor >= 1: compression(20) keeps 1/20.
  static budget compression(double factor, allocation a = allocation::uniform) {
    require(std::isfinite(factor) && factor >= 1.0, "budget compression", "a factor >= 1", factor);
    return kept(1.0 / factor, a);
  }
  // Fraction of the attention mass to cover, in (0, 1].
  static budget coverage(double mass, allocation a = allocation::uniform) {
    require(std::isfinite(mass) && mass > 0.0 && mass <= 1.0, "budget coverage",
            "an attention-mass fraction in (0, 1]", mass);
    return budget(budget_kind::coverage, mass, a);
  }

  budget_kind kind() const { return kind_; }
  double value() const { return value_; }
  allocation alloc() const { return alloc_; }
  bool is_default() const { return kind_ == budget_kind::policy_default; }

  // Keys to keep out of `n` for a token or ratio budget (at least 1). Raises when the budget
  // cannot be met (more tokens than n) or has no token form (coverage, policy default).
  index_t tokens_for(index_t n) const {
    require(n > 0, "sequence length", "> 0", n);
    switch (kind_) {
      case budget_kind::tokens:
        require(static_cast<index_t>(value_) <= n, "budget tokens",
                detail::lazy("<= the sequence length (", n, ")"), static_cast<index_t>(value_));
        return static_cast<index_t>(value_);
      case budget_kind::ratio: {
        const auto t = static_cast<index_t>(std::ceil(value_ * static_cast<double>(n) - 1e-9));
        return t < 1 ? 1 : t;
      }
      default:
        throw error(detail::concat("argument 'budget': expected a token or ratio budget, got ",
                                   describe()));
    }
  }

  std::string describe() const {
    switch (kind_) {
      case budget_kind::policy_default:
        return "policy default";
      case budget_kind::tokens:
        return detail::concat(static_cast<index_t>(value_), " tokens");
      case budget_kind::ratio:
        return detail::concat("kept fraction ", value_);
      case budget_kind::coverage:
        return detail::concat("coverage ", value_);
    }
    return "?";
  }

  friend bool operator==(const budget&, const budget&) = default;

 private:
  budget(budget_kind k, double v, allocation a = allocation::uniform)
      : kind_(k), value_(v), alloc_(a) {}
  budget_kind kind_;
  double value_;
  allocation alloc_;
};

}  // namespace spattn
