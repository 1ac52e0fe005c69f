#pragma once
// SnapKV (Li et al. 2024) as in sparse-frontier's SnapKVCompression (commit 31d86c1): compresses
// the KV cache once, right after prefill, from the attention of the prompt's last queries.
//
// For a prompt of L tokens, W = approximation_window, per query head h (KV head g = h / G) and
// window row i (query position L-W+i), P[h][i][j] = softmax_j(scale * q . k_j) over j <= L-W+i.
//   importance[g][j] = sum_i mean_{h in group g} P[h][i][j]
//   pooled[g][j]     = (sum of importance[g][t] for |t - j| <= kernel_size/2, 0 <= t < L) /
//   kernel_size
//                      (average pooling, zero padding counted: edges are divided by kernel_size
//                      too)
//   the first prefix_tokens and the last local_window positions are forced (+inf);
//   KV head g keeps the cap = min(token_capacity, L) best positions (ties: lower index).
// All heads keep exactly cap tokens; the reference requires cap > local_window + prefix_tokens.
//
// Budget: policy_default -> token_capacity; tokens(t) -> t per KV head; kept fraction f ->
// ceil(f * L). Coverage budgets and adaptive allocation raise (adaptive is ada_snapkv).
//
// Deliberate differences from the reference:
//  - probabilities stay fp32 (the reference rounds P to bf16 before summing), importance is
//    accumulated in double; ranking ties break by lower index (torch.topk: unspecified);
//  - kept tokens are stored in ascending position order (the reference stores them in topk order;
//    attention does not depend on the order);
//  - a capacity >= L keeps everything without looking at the queries (the reference still needs
//    L >= W there);
//  - kernel_size defaults to 21, the paper's configuration (the reference class default is 7).
#include <atomic>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "spattn/core/simd.hpp"
#include "spattn/policies/decode_policy.hpp"

namespace spattn::policies {

namespace snap_detail {

enum class snap_reduce { sum_mean, max_max };

struct snap_params {
  index_t window, kernel_size, local_window, prefix_tokens;
};

inline float dot_f32(const float* a, const float* b, index_t d) {
  using simd::vfloat;
  using simd::W;
  vfloat acc(0.0f);
  index_t x = 0;
  for (; x + W <= d; x += W) acc = xsimd::fma(simd::load(a + x), simd::load(b + x), acc);
  float s = simd::hsum(acc);
  for (; x < d; ++x) s += a[x] * b[x];
  return s;
}

// Checks SnapKV inputs; returns the prompt length L.
inline index_t check_snap_inputs(const eviction_inputs& in, const snap_params& p) {
  require(!in.keys.empty(), "keys", "the prompt's keys [L, kv_heads, head_dim]", "an empty view");
  const index_t L = in.keys.tokens();
  for (std::size_t h = 0; h < in.lengths.size(); ++h) {
    if (!(in.lengths[h] == L))
      require(false, "lengths",
              spattn::detail::concat("the prompt length (", L,
                                     ") for every KV head: SnapKV compresses "
                                     "right after prefill"),
              spattn::detail::concat(in.lengths[h], " for KV head ", h));
  }
  if (!(in.lengths.empty() || static_cast<index_t>(in.lengths.size()) == in.keys.heads()))
    require(false, "lengths", spattn::detail::concat("one per KV head (", in.keys.heads(), ")"),
            in.lengths.size());
  require(p.window >= 1, "approximation_window", ">= 1", p.window);
  require(p.kernel_size >= 1 && p.kernel_size % 2 == 1, "kernel_size",
          "an odd number >= 1 (output length L)", p.kernel_size);
  require(p.local_window >= 0, "local_window", ">= 0", p.local_window);
  require(p.prefix_tokens >= 0, "prefix_tokens", ">= 0", p.prefix_tokens);
  return L;
}

inline void check_snap_queries(const eviction_inputs& in, const snap_params& p, index_t L) {
  if (!(L >= p.window))
    require(false, "keys.tokens",
            spattn::detail::concat(">= approximation_window (", p.window, ")"), L);
  if (!(!in.queries.empty() && in.queries.tokens() >= p.window))
    require(false, "queries.tokens",
            spattn::detail::concat(">= approximation_window (", p.window,
                                   "): the prompt's last queries"),
            in.queries.tokens());
  if (!(in.queries.heads() % in.keys.heads() == 0))
    require(false, "queries.heads",
            spattn::detail::concat("a multiple of keys.heads (", in.keys.heads(), ")"),
            in.queries.heads());
  if (!(in.queries.head_dim() == in.keys.head_dim()))
    require(false, "queries.head_dim",
            spattn::detail::concat("keys.head_dim (", in.keys.head_dim(), ")"),
            in.queries.head_dim());
  require(std::isfinite(in.scale) && in.scale >= 0.0f, "scale", "a finite value >= 0", in.scale);
}

// Pooled, forced importance [kv_heads][L] (double), from the last W queries.
inline std::vector<std::vector<double>> snap_importance(const eviction_inputs& in,
                                                        const snap_params& p, snap_reduce red) {
  const index_t L = in.keys.tokens(), kvh = in.keys.heads(), d = in.keys.head_dim();
  const index_t heads = in.queries.heads(), group = heads / kvh, W = p.window;
  const index_t q0 = in.queries.tokens() - W;  // first window row in `queries`
  const float scale = in.scale > 0.0f ? in.scale : 1.0f / std::sqrt(static_cast<float>(d));
  std::vector<std::vector<double>> out(static_cast<std::size_t>(kvh));
  std::atomic<bool> bad_input{false};
  in.exec.parallel_for(kvh, [&](index_t g) {
    std::vector<float> k(static_cast<std::size_t>(L * d)), q(static_cast<std::size_t>(d));
    for (index_t t = 0; t < L; ++t) in.keys.row_f32(t, g, k.data() + t * d);
    std::vector<double> imp(static_cast<std::size_t>(L), 0.0);
    std::vector<float> s(static_cast<std::size_t>(L));
    for (index_t r = 0; r < group; ++r) {
      const index_t h = g * group + r;
      for (index_t i = 0; i < W; ++i) {
        in.queries.row_f32(q0 + i, h, q.data());
        for (index_t x = 0; x < d; ++x) q[static_cast<std::size_t>(x)] *= scale;
        const index_t n = L - W + i + 1;  // causal: keys [0, L-W+i]
        float m = -std::numeric_limits<float>::infinity();
        for (index_t j = 0; j < n; ++j) {
          s[static_cast<std::size_t>(j)] = dot_f32(q.data(), k.data() + j * d, d);
          m = std::max(m, s[static_cast<std::size_t>(j)]);
        }
        if (!std::isfinite(m)) {  // raised after the parallel region
          bad_input = true;
          return;
        }
        float sum = 0.0f;
        for (index_t j = 0; j < n; ++j) {
          s[static_cast<std::size_t>(j)] = std::exp(s[static_cast<std::size_t>(j)] - m);
          sum += s[static_cast<std::size_t>(j)];
        }
        const float inv = 1.0f / sum;
        for (index_t j = 0; j < n; ++j) {
          const double pr = static_cast<double>(s[static_cast<std::size_t>(j)] * inv);
          auto& v = imp[static_cast<std::size_t>(j)];
          v = red == snap_reduce::sum_mean ? v + pr : std::max(v, pr);
        }
      }
    }
    if (red == snap_reduce::sum_mean)
      for (auto& v : imp) v /= static_cast<double>(group);
    // Average pooling, zero padding counted.
    const index_t half = p.kernel_size / 2;
    auto& pooled = out[static_cast<std::size_t>(g)];
    pooled.resize(static_cast<std::size_t>(L));
    for (index_t j = 0; j < L; ++j) {
      const index_t a = std::max<index_t>(0, j - half), b = std::min(L, j + half + 1);
      double sum = 0.0;
      for (index_t t = a; t < b; ++t) sum += imp[static_cast<std::size_t>(t)];
      pooled[static_cast<std::size_t>(j)] = sum / static_cast<double>(p.kernel_size);
    }
    const double inf = std::numeric_limits<double>::infinity();
    for (index_t j = std::max<index_t>(0, L - p.local_window); j < L; ++j)
      pooled[static_cast<std::size_t>(j)] = inf;
    for (index_t j = 0; j < std::min(L, p.prefix_tokens); ++j)
      pooled[static_cast<std::size_t>(j)] = inf;
  });
  require(!bad_input, "queries/keys", "finite values", "a non-finite attention score");
  return out;
}

inline std::vector<index_t> top_k_double(const std::vector<double>& score, index_t k) {
  return spattn::detail::top_k(score, k);
}

inline eviction_selection keep_all(index_t kv_heads, index_t L) {
  eviction_selection sel;
  for (index_t h = 0; h < kv_heads; ++h) {
    sel.lengths.push_back(L);
    std::vector<index_t> k(static_cast<std::size_t>(L));
    std::iota(k.begin(), k.end(), index_t{0});
    sel.keep.push_back(std::move(k));
  }
  return sel;
}

// Capacity per KV head for a token / ratio / default budget over a prompt of L tokens.
inline index_t snap_capacity(const budget& b, index_t token_capacity, index_t L,
                             const char* policy) {
  switch (b.kind()) {
    case budget_kind::policy_default:
      require(token_capacity >= 1, "token_capacity", ">= 1", token_capacity);
      return token_capacity;
    case budget_kind::tokens:
      return static_cast<index_t>(b.value());
    case budget_kind::ratio:
      return std::max<index_t>(
          1, static_cast<index_t>(std::ceil(b.value() * static_cast<double>(L) - 1e-9)));
    default:
      throw error(
          spattn::detail::concat("argument 'budget': expected a token, kept-fraction or default "
                                 "budget for ",
                                 policy, ", got ", b.describe()));
  }
}

}  // namespace snap_detail

struct snapkv {
  index_t token_capacity = 1024;       // tokens kept per KV head (paper config)
  index_t approximation_window = 256;  // last prompt queries that vote
  index_t kernel_size = 21;            // average pooling (paper config; reference class: 7)
  index_t local_window = 128;          // last tokens always kept (inside the capacity)
  index_t prefix_tokens = 4;           // first tokens always kept (inside the capacity)

  std::string name() const { return "snapkv"; }

  // Pooled importance with forced positions (+inf), [kv_heads][L]; exposed for inspection.
  std::vector<std::vector<double>> importance(const eviction_inputs& in) const {
    const auto p = params();
    const index_t L = snap_detail::check_snap_inputs(in, p);
    snap_detail::check_snap_queries(in, p, L);
    return snap_detail::snap_importance(in, p, snap_detail::snap_reduce::sum_mean);
  }

  eviction_selection select(const eviction_inputs& in, const budget& b) const {
    spattn::detail::require_allocation(b, allocation::uniform,
                                       "snapkv (use ada_snapkv for adaptive)");
    const auto p = params();
    const index_t L = snap_detail::check_snap_inputs(in, p), kvh = in.keys.heads();
    const index_t cap = std::min(snap_detail::snap_capacity(b, token_capacity, L, "snapkv"), L);
    if (cap == L) return snap_detail::keep_all(kvh, L);
    if (!(cap > local_window + prefix_tokens))
      require(false, "snapkv capacity",
              spattn::detail::concat("> local_window + prefix_tokens (",
                                     local_window + prefix_tokens, ")"),
              cap);
    snap_detail::check_snap_queries(in, p, L);
    const auto imp = snap_detail::snap_importance(in, p, snap_detail::snap_reduce::sum_mean);
    eviction_selection sel;
    for (index_t g = 0; g < kvh; ++g) {
      sel.lengths.push_back(L);
      sel.keep.push_back(snap_detail::top_k_double(imp[static_cast<std::size_t>(g)], cap));
    }
    return sel;
  }

 private:
  snap_detail::snap_params params() const {
    return {approximation_window, kernel_size, local_window, prefix_tokens};
  }
};

static_assert(eviction_policy<snapkv>);

}  // namespace spattn::policies
