#pragma once
// Helpers shared by the sparse prefill tests: the oracle restricted to a selection (key lists
// built from the selection's plain data with a direct loop), random selections, and a runner.
#include <random>
#include <set>

#include "spattn/kernels/sparse_prefill.hpp"
#include "spattn/policies/prefill_policy.hpp"
#include "support.hpp"

namespace spattn::test {

// Keys query token t of head h sees under `sel`, straight from the definition.
inline std::vector<index_t> selected_keys(const prefill_selection& sel, index_t h, index_t t) {
  const index_t b = t / sel.block_q, pos = sel.q_offset + t;
  std::set<index_t> keys;
  const auto& e = sel.at(h, b);
  for (index_t s : e.blocks)
    for (index_t j = s; j < s + sel.block_k; ++j)
      if (j <= pos && j < sel.k_tokens) keys.insert(j);
  for (index_t c : e.columns)
    if (c <= pos) keys.insert(c);
  return {keys.begin(), keys.end()};
}

// Adds each key 0..last that e's blocks (sorted, disjoint, block_k wide) do not cover as an extra
// column with probability p_col.
inline void add_random_columns(prefill_selection::entry& e, index_t last, index_t block_k,
                               double p_col, std::mt19937_64& rng) {
  std::uniform_real_distribution<double> u(0, 1);
  std::size_t bi = 0;
  for (index_t c = 0; c <= last; ++c) {
    while (bi < e.blocks.size() && e.blocks[bi] + block_k <= c) ++bi;
    const bool covered = bi < e.blocks.size() && e.blocks[bi] <= c;
    if (!covered && u(rng) < p_col) e.columns.push_back(c);
  }
}

// A random valid selection: blocks of block_k at random (unaligned) starts, and random columns.
inline prefill_selection random_selection(index_t heads, index_t nq, index_t nk, index_t offset,
                                          index_t d, index_t block_q, index_t block_k,
                                          std::uint64_t seed, double p_block = 0.3,
                                          double p_col = 0.05) {
  prefill_selection sel(heads, nq, nk, offset, d, block_q, block_k);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(0, 1);
  for (index_t h = 0; h < heads; ++h) {
    for (index_t b = 0; b < sel.q_blocks(); ++b) {
      auto& e = sel.at(h, b);
      const index_t last = sel.last_position(b);
      index_t s = 0;
      while (s <= last) {
        if (u(rng) < p_block) {
          e.blocks.push_back(s);
          s += block_k;
        } else {
          s += 1 + static_cast<index_t>(u(rng) * static_cast<double>(block_k));
        }
      }
      add_random_columns(e, last, block_k, p_col, rng);
    }
  }
  return sel;
}

// Runs the sparse kernel over `sel` on q / k / v and compares `rows` sampled rows with the oracle
// restricted to the same selection.
template <class TO, class TQ, class TKV>
void check_kernel_matches_oracle(const tensor<TQ>& q, const tensor<TKV>& k, const tensor<TKV>& v,
                                 const prefill_selection& sel, int threads, index_t rows) {
  const index_t nq = sel.q_tokens, heads = sel.heads;
  tensor<TO> out(nq, heads, sel.head_dim);
  std::vector<float> lse(static_cast<std::size_t>(std::max<index_t>(nq * heads, 1)));
  attention_options opt;
  opt.exec = threads == 1 ? executor::serial() : executor::openmp(threads);
  sparse_prefill(q.cview(), k.cview(), v.cview(), out.view(), sel, lse_view(lse.data(), nq, heads),
                 opt);
  const auto sampled = sample_rows(nq, rows);
  const auto ref = eval::reference_attention(
      q.cview(), k.cview(), v.cview(),
      [&](index_t h, index_t t) { return selected_keys(sel, h, t); }, 0.0, sampled);
  const auto st = compare<TO>(ref, out.cview(), &lse, sampled);
  CHECK(st.all_finite);
  CHECK(st.max_out_err <= out_tolerance<TO>());
  CHECK(st.max_lse_err <= lse_tolerance);
}

// Runs the sparse kernel on random data and compares with the oracle on sampled rows.
template <class TQ, class TKV, class TO>
void check_against_oracle(const prefill_selection& sel, index_t kv_heads, int threads,
                          std::uint64_t seed, float k_sigma = 1.5f) {
  const index_t nq = sel.q_tokens, nk = sel.k_tokens, heads = sel.heads, d = sel.head_dim;
  const auto q = random_tensor<TQ>(nq, heads, d, seed, 1.0f);
  const auto k = random_tensor<TKV>(nk, kv_heads, d, seed + 1, k_sigma);
  const auto v = random_tensor<TKV>(nk, kv_heads, d, seed + 2, 1.0f);
  check_kernel_matches_oracle<TO>(q, k, v, sel, threads, 40);
}

}  // namespace spattn::test
