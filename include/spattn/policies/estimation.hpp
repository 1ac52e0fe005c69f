#pragma once
// Shared pieces of importance estimation for the prefill policies: score tiles through the
// prefill tile micro-kernels (kernels/tile.hpp), deterministic top-k, and running per-head work
// on the inputs' executor with exceptions carried out of the worker threads.
#include <algorithm>
#include <exception>
#include <numeric>
#include <type_traits>
#include <vector>

#include "spattn/kernels/tile.hpp"
#include "spattn/policies/prefill_policy.hpp"

namespace spattn::policies::detail {

using kernels::BC;
using kernels::MR;

// Calls panel(std::integral_constant<int, R>{}, r0) over `rows` rows in register panels of MR
// rows, then one panel for the remainder (R < MR).
template <class Panel>
inline void for_each_row_panel(int rows, Panel&& panel) {
  int r0 = 0;
  for (; r0 + MR <= rows; r0 += MR) panel(std::integral_constant<int, MR>{}, r0);
  switch (rows - r0) {
    case 1:
      panel(std::integral_constant<int, 1>{}, r0);
      break;
    case 2:
      panel(std::integral_constant<int, 2>{}, r0);
      break;
    case 3:
      panel(std::integral_constant<int, 3>{}, r0);
      break;
    case 4:
      panel(std::integral_constant<int, 4>{}, r0);
      break;
    case 5:
      panel(std::integral_constant<int, 5>{}, r0);
      break;
    default:
      break;
  }
}

// S[r][0..BC) = qs[r] . Kt for `rows` packed rows (row stride dpad); S has row stride BC.
inline void score_rows(const float* qs, index_t dpad, const float* kt, index_t d, float* s,
                       int rows) {
  const kernels::k_columns kc = kernels::packed_columns(kt);
  for_each_row_panel(rows, [&](auto R, int r0) {
    kernels::qk_panel_all<R()>(qs + r0 * dpad, dpad, kc, d, s + r0 * BC);
  });
}

#if defined(__AVX512BF16__)
// The same with bf16 dot products: q rows as bf16 pairs (ldq pairs apart), K packed by
// kernels::pack_k_pairs_transposed, scores multiplied by `scale`.
inline void score_rows_bf16(const std::uint32_t* qs, index_t ldq, const std::uint32_t* kp,
                            index_t d, float scale, float* s, int rows) {
  for_each_row_panel(rows, [&](auto R, int r0) {
    kernels::qk_panel_bf16<R(), 4>(qs + r0 * ldq, ldq, kp, d, scale, s + r0 * BC, 0);
  });
}
#endif

// Orders candidate indices by score, highest first; equal scores by lower index (our documented
// tie-break: torch.topk leaves tie order unspecified).
struct by_score {
  const float* x;
  bool operator()(index_t a, index_t b) const { return x[a] > x[b] || (x[a] == x[b] && a < b); }
};

// The k best indices of x[0..n) (any order).
inline std::vector<index_t> top_k(const float* x, index_t n, index_t k) {
  std::vector<index_t> idx(static_cast<std::size_t>(n));
  std::iota(idx.begin(), idx.end(), index_t{0});
  k = std::clamp<index_t>(k, 0, n);
  if (k < n) {
    std::nth_element(idx.begin(), idx.begin() + k, idx.end(), by_score{x});
    idx.resize(static_cast<std::size_t>(k));
  }
  return idx;
}

// The `count` best indices of x[0..n), best first.
inline std::vector<index_t> rank_top(const float* x, index_t n, index_t count) {
  std::vector<index_t> idx(static_cast<std::size_t>(n));
  std::iota(idx.begin(), idx.end(), index_t{0});
  count = std::clamp<index_t>(count, 0, n);
  if (count < n) {
    std::nth_element(idx.begin(), idx.begin() + count, idx.end(), by_score{x});
    idx.resize(static_cast<std::size_t>(count));
  }
  std::sort(idx.begin(), idx.end(), by_score{x});
  return idx;
}

// Runs body(i) for i in [0, n) on exec; the first exception thrown by any task is rethrown here.
template <class Body>
void for_each_task(const executor& exec, index_t n, Body&& body) {
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(n));
  exec.parallel_for(n, [&](index_t i) {
    try {
      body(i);
    } catch (...) {
      errors[static_cast<std::size_t>(i)] = std::current_exception();
    }
  });
  for (const auto& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace spattn::policies::detail
