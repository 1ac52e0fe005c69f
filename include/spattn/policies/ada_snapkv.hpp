#pragma once
// Ada-SnapKV (Feng et al. 2024) as in sparse-frontier's AdaSnapKVCompression (commit 31d86c1):
// SnapKV's importance with max pooling of evidence, and the budget shared across KV heads.
//
//   importance[g][j] = max_{h in group g} max_i P[h][i][j]      (P as in SnapKV)
//   pooled, forced (+inf on the first prefix_tokens and last local_window) exactly as SnapKV;
//   total   = token_capacity * kv_heads      (token_capacity is the per-head average)
//   min_cap = max(int(token_capacity * min_head_capacity_ratio), local_window + prefix_tokens)
//   every KV head first keeps its min_cap best positions (so all forced ones), then the remaining
//   total - min_cap * kv_heads slots go to the best remaining (head, position) pairs over all
//   heads, ranked by pooled score, ties by lower flat index g * L + j (the reference flattens
//   row-major). Heads end with unequal lengths.
//
// Budget: policy_default -> token_capacity; tokens(t) -> t per KV head on average; kept fraction
// f -> ceil(f * L). Either allocation is accepted (the policy is adaptive by construction).
// Reference asserts kept as spattn::error: token_capacity >= local_window + prefix_tokens.
//
// Deliberate differences: as SnapKV (fp32 probabilities, double accumulation, ties by lower
// index), plus: a capacity >= L keeps everything (the reference asserts token_capacity <= L and
// W < L instead).
#include "spattn/policies/snapkv.hpp"

namespace spattn::policies {

struct ada_snapkv {
  index_t token_capacity = 1024;  // average tokens kept per KV head
  index_t approximation_window = 256;
  index_t kernel_size = 21;  // paper config (reference class default: 7)
  index_t local_window = 128;
  index_t prefix_tokens = 4;
  double min_head_capacity_ratio = 0.2;  // per-head floor, as a fraction of token_capacity

  std::string name() const { return "ada_snapkv"; }

  std::vector<std::vector<double>> importance(const eviction_inputs& in) const {
    const auto p = params();
    const index_t L = snap_detail::check_snap_inputs(in, p);
    snap_detail::check_snap_queries(in, p, L);
    return snap_detail::snap_importance(in, p, snap_detail::snap_reduce::max_max);
  }

  // The per-head floor for a capacity.
  index_t min_capacity(index_t capacity) const {
    return std::max(static_cast<index_t>(static_cast<double>(capacity) * min_head_capacity_ratio),
                    local_window + prefix_tokens);
  }

  eviction_selection select(const eviction_inputs& in, const budget& b) const {
    const auto p = params();
    require(std::isfinite(min_head_capacity_ratio) && min_head_capacity_ratio >= 0.0 &&
                min_head_capacity_ratio <= 1.0,
            "min_head_capacity_ratio", "a value in [0, 1]", min_head_capacity_ratio);
    const index_t L = snap_detail::check_snap_inputs(in, p), kvh = in.keys.heads();
    const index_t cap = snap_detail::snap_capacity(b, token_capacity, L, "ada_snapkv");
    if (cap >= L) return snap_detail::keep_all(kvh, L);
    if (!(cap >= local_window + prefix_tokens))
      require(false, "ada_snapkv capacity",
              spattn::detail::concat(">= local_window + prefix_tokens (",
                                     local_window + prefix_tokens, ")"),
              cap);
    snap_detail::check_snap_queries(in, p, L);
    const auto imp = snap_detail::snap_importance(in, p, snap_detail::snap_reduce::max_max);
    const index_t floor_cap = min_capacity(cap);
    const index_t rest = cap * kvh - floor_cap * kvh;
    std::vector<std::vector<char>> chosen(static_cast<std::size_t>(kvh),
                                          std::vector<char>(static_cast<std::size_t>(L), 0));
    for (index_t g = 0; g < kvh; ++g) {
      for (const index_t j : snap_detail::top_k_double(imp[static_cast<std::size_t>(g)], floor_cap))
        chosen[static_cast<std::size_t>(g)][static_cast<std::size_t>(j)] = 1;
    }
    // Global top `rest` of the unchosen (head, position) pairs.
    std::vector<double> flat(static_cast<std::size_t>(kvh * L));
    for (index_t g = 0; g < kvh; ++g)
      for (index_t j = 0; j < L; ++j) {
        const auto gi = static_cast<std::size_t>(g), ji = static_cast<std::size_t>(j);
        flat[static_cast<std::size_t>(g * L + j)] =
            chosen[gi][ji] ? -std::numeric_limits<double>::infinity() : imp[gi][ji];
      }
    for (const index_t f : snap_detail::top_k_double(flat, rest))
      chosen[static_cast<std::size_t>(f / L)][static_cast<std::size_t>(f % L)] = 1;
    eviction_selection sel;
    for (index_t g = 0; g < kvh; ++g) {
      sel.lengths.push_back(L);
      std::vector<index_t> keep;
      for (index_t j = 0; j < L; ++j)
        if (chosen[static_cast<std::size_t>(g)][static_cast<std::size_t>(j)]) keep.push_back(j);
      sel.keep.push_back(std::move(keep));
    }
    return sel;
  }

 private:
  snap_detail::snap_params params() const {
    return {approximation_window, kernel_size, local_window, prefix_tokens};
  }
};

static_assert(eviction_policy<ada_snapkv>);

}  // namespace spattn::policies
