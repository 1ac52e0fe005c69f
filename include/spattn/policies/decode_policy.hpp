#pragma once
// The policy interface for the decoding phase, the same shape as prefill_policy: a policy is a
// small value type (std::semiregular; the library's live in spattn::policies) with
//     std::string name() const;
//     <plain-data selection> select(const <inputs>&, const budget&) const;
// - decode_policy: per decode step, which pages/tokens of the cache to read (decode_selection);
//   the kernel is sparse_decode.
// - eviction_policy: which tokens each KV head keeps (eviction_selection); the cache is then
//   compacted with cache.compact(selection) and decoded with cache_decode.
// Inputs are read through any_view, so a policy is a plain (non-template) struct that accepts
// fp32, fp16 and bf16 data.
//
// Ties: every library policy ranks by score, then by lower index (documented choice; the
// reference's torch.topk leaves tie order unspecified).
#include <algorithm>
#include <cmath>
#include <concepts>
#include <functional>
#include <numeric>
#include <string>
#include <vector>

#include "spattn/budget/budget.hpp"
#include "spattn/core/any_view.hpp"
#include "spattn/core/executor.hpp"
#include "spattn/selection/decode_selection.hpp"

namespace spattn {

// What a decode policy sees at one step.
struct decode_inputs {
  any_view q;  // [1, heads, head_dim]: the current query (the cache already holds its key)
  // Per KV head: Quest page summaries [pages, 1, head_dim] (min and max); empty when the cache
  // keeps none (policies that need them raise).
  std::vector<any_view> page_min, page_max;
  index_t page_size = 0;         // summaries' page size (0: no summaries)
  std::vector<index_t> lengths;  // tokens per KV head, including the current token
  executor exec = executor::openmp();

  index_t kv_heads() const { return static_cast<index_t>(lengths.size()); }
};

// What an eviction policy sees.
struct eviction_inputs {
  // SnapKV family: the prompt's last queries [w, heads, head_dim] (positions L-w .. L-1) and its
  // keys [L, kv_heads, head_dim]. Not needed by StreamingLLM.
  any_view queries;
  any_view keys;
  // Tokens per KV head now held (empty: keys.tokens() for every KV head).
  std::vector<index_t> lengths;
  float scale = 0.0f;  // 0: 1/sqrt(head_dim)
  executor exec = executor::openmp();
};

template <class P>
concept decode_policy = std::semiregular<P> &&
    requires(const P& p, const decode_inputs& in, const budget& b) {
  { p.name() } -> std::convertible_to<std::string>;
  { p.select(in, b) } -> std::same_as<decode_selection>;
};

template <class P>
concept eviction_policy = std::semiregular<P> &&
    requires(const P& p, const eviction_inputs& in, const budget& b) {
  { p.name() } -> std::convertible_to<std::string>;
  { p.select(in, b) } -> std::same_as<eviction_selection>;
};

// Decode inputs for query q against a cache (kv_cache or paged_cache::sequence()).
template <class TQ, class Cache>
decode_inputs make_decode_inputs(tensor_view<TQ> q, const Cache& cache,
                                 executor exec = executor::openmp()) {
  decode_inputs in;
  in.q = tensor_view<const std::remove_cv_t<TQ>>(q);
  for (index_t h = 0; h < cache.kv_heads(); ++h) in.lengths.push_back(cache.length(h));
  if (const auto* s = cache.summaries()) {
    in.page_size = s->page_size();
    for (index_t h = 0; h < cache.kv_heads(); ++h) {
      in.page_min.emplace_back(s->min_view(h));
      in.page_max.emplace_back(s->max_view(h));
    }
  }
  in.exec = std::move(exec);
  return in;
}

// Eviction inputs for a cache's current lengths (StreamingLLM), optionally with prompt data.
template <class Cache>
eviction_inputs make_eviction_inputs(const Cache& cache) {
  eviction_inputs in;
  for (index_t h = 0; h < cache.kv_heads(); ++h) in.lengths.push_back(cache.length(h));
  return in;
}

namespace detail {

// Indices of the k largest scores, ranked by (score descending, index ascending), returned in
// ascending index order: the k-th largest value t is found (nth_element on a copy), then every
// index with a score > t is kept and, in ascending order, as many with score == t as fit.
// NaN scores are rejected.
template <class S>
std::vector<index_t> top_k(const std::vector<S>& score, index_t k) {
  const index_t n = static_cast<index_t>(score.size());
  k = std::clamp<index_t>(k, 0, n);
  std::vector<index_t> idx;
  if (k == 0) return idx;
  for (index_t i = 0; i < n; ++i) {
    if (std::isnan(score[static_cast<std::size_t>(i)]))
      throw error(
          detail::concat("argument 'scores': expected no NaN (finite inputs), got NaN at "
                         "index ",
                         i));
  }
  idx.reserve(static_cast<std::size_t>(k));
  if (k == n) {
    for (index_t i = 0; i < n; ++i) idx.push_back(i);
    return idx;
  }
  std::vector<S> tmp(score);
  std::nth_element(tmp.begin(), tmp.begin() + (k - 1), tmp.end(), std::greater<S>());
  const S t = tmp[static_cast<std::size_t>(k - 1)];
  index_t above = 0;
  for (const S x : score) above += x > t;
  index_t ties = k - above;  // how many scores equal to t are kept (lowest indices first)
  for (index_t i = 0; i < n; ++i) {
    const S x = score[static_cast<std::size_t>(i)];
    if (x > t || (x == t && ties-- > 0)) idx.push_back(i);
  }
  return idx;
}

inline std::vector<index_t> top_k_indices(const std::vector<float>& score, index_t k) {
  return top_k(score, k);
}

inline void require_allocation(const budget& b, allocation want, const char* policy) {
  if (!(b.is_default() || b.alloc() == want))
    require(false, "budget allocation",
            detail::concat(want == allocation::uniform ? "uniform" : "adaptive", " for ", policy),
            b.alloc() == allocation::uniform ? "uniform" : "adaptive");
}

}  // namespace detail
}  // namespace spattn
