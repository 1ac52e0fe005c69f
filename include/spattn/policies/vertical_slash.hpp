#pragma once
// Vertical-slash (MInference-style) sparse prefill, after sparse-frontier's
// `VerticalAndSlashAttentionMInference` (commit 31d86c1).
//
// Per query head (query heads of a GQA group choose independently, as in the reference):
//  1. Estimation: the last `approximation_size` queries attend all keys (causal, softmax with the
//     model's scale); vert[j] = sum over those queries of P[i, j]; diag[t] = sum of P over the
//     diagonal with offset (query position - key) = P_end - 1 - t.
//  2. Columns 0..3 and offsets 0..63 are forced (+inf); the top `vertical_size` columns and top
//     `slash_size` offsets are kept.
//  3. MInference's index conversion, exactly: per 64-query block, each kept offset becomes a
//     64-wide key range ending at end_m - offset (at least [0, 64)); overlapping ranges extend by
//     one 64-block; kept columns outside the ranges become extra columns. So 512 + 512 covers far
//     more than 1024 exact lines.
//
// Parameters default to the paper's configuration (configs/attention/vertical_and_slash.yaml:
// 512 / 512 / 256); the reference class defaults are 64 / 128 / 64.
//
// Deliberate differences from the reference (documented choices):
//  - Estimation scores and sums are fp32 (the reference computes scores and rounds P to bf16);
//    P is held as fp16 between the two passes (see vs_estimate). Near-ties may resolve
//    differently. bf16 inputs on AVX512-BF16 machines score with bf16 dot
//    products: exact products, fp32 sums, i.e. the fp32 scores up to summation order.
//  - Ties in top-k go to the lower index of the score array (vertical: lower column; slash: lower
//    t, i.e. the larger offset); torch.topk leaves tie order unspecified.
//  - Short sequences: sizes and the forced parts are clamped to the sequence (the reference
//    asserts slash_size >= 64, failing below 64 tokens).
//  - Chunked prefill (queries at an offset, which the reference never does): estimation uses the
//    chunk's last queries, keys up to the chunk's end, and 64-query blocks start at the offset.
//  - Blocks that start after a query block's last query (only possible in a final partial block)
//    are dropped; they would compute nothing.
//  - Budgets: tokens(T) / kept(f) choose per head a size x (vertical = slash = x, at least the
//    forced 4 / 64) whose computed pairs fit, within 1/64 of the largest such x (search over the
//    exact pair count); the reference has no budget mapping. Coverage budgets raise (use
//    flexprefill).
//  - Adaptive allocation (ours; the reference has none): the heads share heads x the per-head
//    pair budget. Columns and diagonals of all heads compete by estimated attention mass (every
//    head's scores sum to the same total, so they compare across heads, as in Ada-KV's
//    allocation for decoding): each head keeps its forced parts plus its entries scoring at
//    least the K-th best score over all heads, K the largest (within 1/64) whose total pairs
//    fit. Heads with concentrated attention give budget to heads with diffuse attention.
//  - fp32 scores are kept per tile relative to a running row maximum (online softmax) and
//    rescaled once; mathematically the same probabilities.
#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "spattn/policies/estimation.hpp"

namespace spattn::policies {

namespace detail {

inline constexpr index_t vs_forced_columns = 4;   // topk_vertical_inf
inline constexpr index_t vs_forced_offsets = 64;  // topk_slash_inf
inline constexpr index_t vs_block = 64;           // BLOCK_M = BLOCK_N

// Attention of the last A queries of head h over keys [0, P): column sums and diagonal sums of
// the probabilities (divided by A when `mean`). Returns the estimation FLOPs.
template <class TQ, class TK>
double vs_estimate(const tensor_view<const TQ>& q, const tensor_view<const TK>& k, index_t h,
                   index_t kvh, index_t q_offset, index_t A, float scale, bool mean,
                   std::vector<float>& vert, std::vector<float>& diag) {
  using simd::vfloat;
  constexpr int W = simd::W;
  const index_t nq = q.tokens(), P = q_offset + nq, d = q.head_dim();
  const index_t dpad = kernels::padded_dim(d), t0 = nq - A, ntiles = (P + BC - 1) / BC;
  // One pass over the keys keeps, per row, a running max and sum (online softmax) and stores
  // p = 2^(s - running max) in (0, 1] per tile with the max it used; the second pass only
  // rescales by 2^(tile max - final max) / sum and accumulates. p is stored as fp16 (relative
  // rounding 2^-11, finer than the reference's bf16 P; values below 2^-24 of the row's running
  // max flush to zero): the A x P buffer is the pass's memory traffic, and halving it saves ~12%.
  thread_local simd::aligned_buffer qs, kt, sbuf;
  thread_local std::vector<f16> pbuf;
  thread_local std::vector<float> tile_max;
  pbuf.resize(static_cast<std::size_t>(ntiles * A * BC));
  kt.resize(static_cast<std::size_t>(d * BC));
  sbuf.resize(static_cast<std::size_t>(A * BC));
  tile_max.resize(static_cast<std::size_t>(ntiles * A));
  // bf16 inputs on AVX512-BF16 machines score with bf16 dot products (exact products, fp32
  // sums: the fp32 path's scores up to summation order) at twice the FMA rate.
  constexpr bool pairs =
      kernels::has_bf16_dot && std::is_same_v<TQ, bf16> && std::is_same_v<TK, bf16>;
  if constexpr (pairs) {
    qs.resize(static_cast<std::size_t>(A * dpad / 2));
    auto* q2 = reinterpret_cast<std::uint32_t*>(qs.data());
    for (index_t j = 0; j < A; ++j) {
      std::uint32_t* dst = q2 + j * dpad / 2;
      std::memcpy(dst, q.row(t0 + j, h), static_cast<std::size_t>(d) * sizeof(bf16));
      std::fill(dst + d / 2, dst + dpad / 2, 0u);
    }
  } else {
    qs.resize(static_cast<std::size_t>(A * dpad));
    kernels::pack_rows<TQ>([&](int j) { return q.row(t0 + j, h); }, static_cast<int>(A), d, dpad,
                           scale * kernels::log2e, qs.data());
  }
  // Per row: the running max (scalar) and the running sum as a vector of lane sums, rescaled
  // when the max grows; the max is reduced horizontally only when some lane exceeds it.
  std::vector<float> mx(static_cast<std::size_t>(A), kernels::neg_inf);
  thread_local simd::aligned_buffer lsum;
  lsum.resize(static_cast<std::size_t>(A * W));
  std::fill(lsum.data(), lsum.data() + A * W, 0.0f);
  for (index_t tile = 0; tile < ntiles; ++tile) {
    const index_t k0 = tile * BC;
    const int n = static_cast<int>(std::min<index_t>(BC, P - k0));
    if constexpr (pairs) {
#if defined(__AVX512BF16__)
      auto* kp = reinterpret_cast<std::uint32_t*>(kt.data());
      kernels::pack_k_pairs_transposed([&](int j) { return k.row(k0 + j, kvh); }, n, d, kp);
      score_rows_bf16(reinterpret_cast<const std::uint32_t*>(qs.data()), dpad / 2, kp, d,
                      scale * kernels::log2e, sbuf.data(), static_cast<int>(A));
#endif
    } else {
      kernels::pack_k_transposed<TK>([&](int j) { return k.row(k0 + j, kvh); }, n, d, kt.data());
      score_rows(qs.data(), dpad, kt.data(), d, sbuf.data(), static_cast<int>(A));
    }
    f16* pt = pbuf.data() + tile * A * BC;
    for (index_t i = 0; i < A; ++i) {
      float* row = sbuf.data() + i * BC;
      const index_t pos = q_offset + t0 + i;
      const int valid = static_cast<int>(std::clamp<index_t>(pos - k0 + 1, 0, n));
      for (int c = valid; c < BC; ++c) row[c] = kernels::neg_inf;
      vfloat m = simd::load(row);
      for (int c = W; c < BC; c += W) m = xsimd::max(m, simd::load(row + c));
      float& mi = mx[static_cast<std::size_t>(i)];
      float* li = lsum.data() + i * W;
      if (xsimd::any(m > vfloat(mi))) {
        const float m_new = simd::hmax(m);
        if (mi != kernels::neg_inf) simd::store(li, simd::load(li) * vfloat(std::exp2(mi - m_new)));
        mi = m_new;
      }
      tile_max[static_cast<std::size_t>(tile * A + i)] = mi;
      if (mi == kernels::neg_inf) continue;  // nothing visible yet (pass 2 skips the row)
      const vfloat mv(mi);
      vfloat sum(0.0f);
      f16* prow = pt + i * BC;
      for (int c = 0; c < BC; c += W) {
        const vfloat p = simd::exp2_neg(simd::load(row + c) - mv);
        simd::store_f16(prow + c, p);
        sum += p;
      }
      simd::store(li, simd::load(li) + sum);
    }
  }
  // Per row: 1 / (sum, times A when `mean`).
  std::vector<float> inv_l(static_cast<std::size_t>(A));
  for (index_t i = 0; i < A; ++i) {
    const float l = simd::hsum(simd::load(lsum.data() + i * W));
    inv_l[static_cast<std::size_t>(i)] = 1.0f / (mean ? l * static_cast<float>(A) : l);
  }
  vert.assign(static_cast<std::size_t>(ntiles * BC), 0.0f);
  diag.assign(static_cast<std::size_t>(ntiles * BC + A), 0.0f);
  std::vector<float> w(static_cast<std::size_t>(A));
  for (index_t tile = 0; tile < ntiles; ++tile) {
    const index_t k0 = tile * BC;
    const f16* pt = pbuf.data() + tile * A * BC;
    const float* tm = tile_max.data() + tile * A;
    // Row weights 2^(tile max - final max) / sum; rows with nothing visible yet get 0 (skipped).
    index_t i0 = 0;
    for (; i0 + W <= A; i0 += W) {
      const vfloat t = simd::load(tm + i0);
      const vfloat e =
          simd::exp2_neg(t - simd::load(mx.data() + i0)) * simd::load(inv_l.data() + i0);
      simd::store(w.data() + i0, xsimd::select(t == vfloat(kernels::neg_inf), vfloat(0.0f), e));
    }
    for (index_t i = i0; i < A; ++i) {
      const auto ii = static_cast<std::size_t>(i);
      w[ii] = tm[i] == kernels::neg_inf ? 0.0f : std::exp2(tm[i] - mx[ii]) * inv_l[ii];
    }
    constexpr int NV = BC / W;
    vfloat vacc[NV];
    SPATTN_UNROLL for (int v = 0; v < NV; ++v) vacc[v] = vfloat(0.0f);
    for (index_t i = 0; i < A; ++i) {
      const float wi = w[static_cast<std::size_t>(i)];
      if (wi == 0.0f) continue;
      const f16* row = pt + i * BC;
      const vfloat wv(wi);
      float* dr = diag.data() + k0 + (A - 1 - i);  // t = j + (P - 1 - pos_i)
      SPATTN_UNROLL for (int v = 0; v < NV; ++v) {
        const vfloat p = simd::load_f32(row + v * W) * wv;
        vacc[v] += p;
        simd::store(dr + v * W, simd::load(dr + v * W) + p);
      }
    }
    SPATTN_UNROLL for (int v = 0; v < NV; ++v) simd::store(vert.data() + k0 + v * W, vacc[v]);
  }
  vert.resize(static_cast<std::size_t>(P));
  diag.resize(static_cast<std::size_t>(P));
  return 2.0 * static_cast<double>(d) * static_cast<double>(A) * static_cast<double>(P);
}

// MInference's convert_vertical_slash_indexes for one 64-query block starting at start_m (last
// visible key position `last`): `v` kept columns ascending, `s` kept offsets descending. Calls
// block(x) for each key block [x, x + 64), ascending, and columns(a, b) for runs v[a .. b) of
// extra columns, ascending; the blocks are disjoint, no column lies in one, and every column is
// before start_m (the last block always covers [start_m, end_m): offset 0 is forced).
//
// Same result as the reference's loop over every offset and column, in steps per range instead:
// offsets whose 64-wide range ends inside the current range change nothing and are skipped by a
// binary search, and the columns inside a range likewise (the budget search converts a head many
// times, and a walk over every kept offset of every query block dominated it).
template <class Block, class Columns>
void vs_convert_block(const std::vector<index_t>& v, const std::vector<index_t>& s, index_t start_m,
                      index_t last, Block&& block, Columns&& columns) {
  const index_t ns = static_cast<index_t>(s.size());
  const index_t end_m = start_m + vs_block;
  auto first_below = [&](index_t from,
                         index_t bound) {  // first offset index >= from with o < bound
    return std::partition_point(s.begin() + from, s.end(), [&](index_t o) { return o >= bound; }) -
           s.begin();
  };
  auto v_from = [&](index_t from, index_t x) {  // first column index >= from with c >= x
    return std::lower_bound(v.begin() + from, v.end(), x) - v.begin();
  };
  index_t si = first_below(0, end_m);  // offsets >= end_m do not reach this block
  if (si == ns) {  // no diagonal reaches this block (cannot happen: offset 0 is forced)
    columns(0, std::upper_bound(v.begin(), v.end(), last) - v.begin());
    return;
  }
  index_t r_end = std::max<index_t>(end_m - s[static_cast<std::size_t>(si++)], vs_block);
  index_t r_start = r_end - vs_block;
  index_t vi = v_from(0, r_start);
  columns(0, vi);
  while (true) {
    // Offsets with end_m - o <= r_end end inside the range: skip them.
    si = first_below(si, end_m - r_end);
    const bool more = si < ns;
    const index_t s_idx =
        more ? std::max<index_t>(end_m - s[static_cast<std::size_t>(si++)], vs_block) : 0;
    if (more && s_idx <= r_end + vs_block) {
      r_end += vs_block;  // MInference extends by one block
      continue;
    }
    vi = v_from(vi, r_end);  // columns inside [r_start, r_end) are covered
    for (index_t x = r_start; x < r_end && x <= last; x += vs_block) block(x);
    if (!more) return;  // columns after the last range are past the block
    r_start = s_idx - vs_block;
    r_end = s_idx;
    const index_t vj = v_from(vi, r_start);
    columns(vi, vj);
    vi = vj;
  }
}

// Fills head h's entries of `sel` (block_q = block_k = 64) from kept columns and offsets.
inline void vs_convert(const std::vector<index_t>& v, const std::vector<index_t>& s,
                       prefill_selection& sel, index_t h) {
  for (index_t m = 0; m < sel.q_blocks(); ++m) {
    auto& e = sel.at(h, m);
    e.blocks.clear();
    e.columns.clear();
    vs_convert_block(
        v, s, sel.first_position(m), sel.last_position(m),
        [&](index_t x) { e.blocks.push_back(x); },
        [&](index_t a, index_t b) {
          e.columns.insert(e.columns.end(), v.begin() + a, v.begin() + b);
        });
  }
}

// The pairs vs_convert's selection of one head computes (sel.head_pairs(h) after vs_convert),
// without building it: the budget search evaluates many sizes.
inline index_t vs_pairs(const std::vector<index_t>& v, const std::vector<index_t>& s,
                        const prefill_selection& sel) {
  index_t total = 0;
  for (index_t m = 0; m < sel.q_blocks(); ++m) {
    const index_t p0 = sel.first_position(m), p1 = sel.last_position(m);
    const index_t limit = std::min(sel.k_tokens, p1 + 1);
    vs_convert_block(
        v, s, p0, p1,
        [&](index_t x) { total += interval_pairs(x, std::min(x + vs_block, limit), p0, p1); },
        [&](index_t a, index_t b) {
          // All before p0 when offset 0 is kept (seen by every row); counted exactly otherwise.
          const auto mid = std::lower_bound(v.begin() + a, v.begin() + b, p0) - v.begin();
          total += (mid - a) * (p1 - p0 + 1);
          for (auto i = mid; i < b; ++i) {
            const index_t c = v[static_cast<std::size_t>(i)];
            total += interval_pairs(c, std::min(c + 1, limit), p0, p1);
          }
        });
  }
  return total;
}

// Kept columns (ascending) and offsets (descending) from the best-first orders.
inline void vs_pick(const std::vector<index_t>& v_order, const std::vector<index_t>& d_order,
                    index_t nv, index_t ns, index_t P, std::vector<index_t>& v,
                    std::vector<index_t>& s) {
  v.assign(v_order.begin(), v_order.begin() + std::min<index_t>(nv, P));
  std::sort(v.begin(), v.end());
  s.clear();
  for (index_t i = 0; i < std::min<index_t>(ns, P); ++i)
    s.push_back(P - 1 - d_order[static_cast<std::size_t>(i)]);
  std::sort(s.begin(), s.end(), std::greater<>());
}

// Smallest prefix of x sorted descending whose mass exceeds alpha: 1 + #{k : cumsum[k] <= alpha}
// (sparse-frontier FlexPrefill), at most n. Found by quickselect on the cumulative mass (expected
// linear time; a full sort of the scores cost ~10% of FlexPrefill's estimation); masses are summed
// in double, so only a cumsum within ~1e-16 of alpha could count differently from sequential
// sums.
inline index_t cover_count(const std::vector<float>& x, double alpha) {
  std::vector<float> v(x);
  auto lo = v.begin(), hi = v.end();
  double cum = 0;  // mass of the entries already counted (all larger than those in [lo, hi))
  index_t count = 0;
  while (lo != hi) {
    const float pivot = *(lo + (hi - lo) / 2);
    const auto gt_end = std::partition(lo, hi, [&](float y) { return y > pivot; });
    const auto eq_end = std::partition(gt_end, hi, [&](float y) { return y == pivot; });
    double gt = 0;
    for (auto it = lo; it != gt_end; ++it) gt += static_cast<double>(*it);
    if (cum + gt > alpha) {  // the prefix ends among the larger entries
      hi = gt_end;
      continue;
    }
    cum += gt;
    count += gt_end - lo;
    const index_t eq = eq_end - gt_end;
    index_t e = 0;  // equal entries that still fit
    while (e < eq && cum + static_cast<double>(pivot) <= alpha) {
      cum += static_cast<double>(pivot);
      ++e;
    }
    count += e;
    if (e < eq) break;
    lo = eq_end;
  }
  return std::min<index_t>(count + 1, static_cast<index_t>(x.size()));
}

struct vs_config {
  index_t approximation = 256;
  bool mean = false;                    // FlexPrefill averages over the estimation queries
  bool coverage_sizes = false;          // FlexPrefill: sizes from coverage
  index_t vertical = 512, slash = 512;  // fixed sizes (vertical-slash)
  double alpha = 0.65;                  // coverage (FlexPrefill)
  index_t min_budget = 512;             // FlexPrefill
  bool shared = false;                  // adaptive allocation: one budget shared by all heads
};

// One query head's estimate: column and diagonal scores (forced entries +inf), the size caps,
// and best-first orders ranked as far as a search has needed.
struct vs_head {
  std::vector<float> vert, diag;
  index_t nv = 0, ns = 0;  // most columns / diagonals (fixed sizes or coverage sizes)
  std::vector<index_t> v_order, d_order;
  index_t ranked = 0;

  void rank(index_t count) {
    const auto P = static_cast<index_t>(vert.size());
    count = std::min(count, P);
    if (count <= ranked) return;
    // Rank further in big steps: a full sort of P scores is what the steps save.
    ranked = std::max(count, std::min(P, 2 * ranked));
    v_order = rank_top(vert.data(), P, ranked);
    d_order = rank_top(diag.data(), P, ranked);
  }
  // Columns (or diagonals) scoring >= tau; ranks further while every ranked one does.
  index_t at_least(bool diagonals, float tau) {
    const std::vector<float>& x = diagonals ? diag : vert;
    const auto P = static_cast<index_t>(x.size());
    while (true) {
      const std::vector<index_t>& order = diagonals ? d_order : v_order;
      const index_t n =
          std::partition_point(order.begin(), order.end(),
                               [&](index_t i) { return x[static_cast<std::size_t>(i)] >= tau; }) -
          order.begin();
      if (n < ranked || ranked == P) return n;
      rank(ranked + 1);
    }
  }
};

// The largest tau with count(tau) >= k, for a count non-increasing in tau over scores >= 0
// (non-negative floats order like their bit patterns).
template <class Count>
float kth_largest(index_t k, Count count) {
  std::uint32_t lo = 0, hi = 0x7f800000u;  // 0 .. +inf
  while (lo < hi) {
    const std::uint32_t mid = lo + (hi - lo + 1) / 2;
    if (count(std::bit_cast<float>(mid)) >= k)
      lo = mid;
    else
      hi = mid - 1;
  }
  return std::bit_cast<float>(lo);
}

// How many of the k best entries over several arrays of scores >= 0 each array holds. Ties go
// to the lower array, then (within an array) to the order the caller ranks it by, so exactly k
// entries are taken even when many scores are equal. ge(i, tau): entries of array i >= tau.
template <class Ge>
std::vector<index_t> split_best(index_t k, index_t arrays, Ge ge) {
  const float tau = kth_largest(k, [&](float t) {
    index_t n = 0;
    for (index_t i = 0; i < arrays; ++i) n += ge(i, t);
    return n;
  });
  const float above = tau == std::numeric_limits<float>::infinity()
                          ? tau
                          : std::nextafter(tau, std::numeric_limits<float>::infinity());
  std::vector<index_t> take(static_cast<std::size_t>(arrays));
  index_t left = k;
  for (index_t i = 0; i < arrays; ++i) {
    auto& t = take[static_cast<std::size_t>(i)];
    t = tau == above ? 0 : ge(i, above);  // strictly better than tau
    left -= t;
  }
  for (index_t i = 0; i < arrays; ++i) {
    auto& t = take[static_cast<std::size_t>(i)];
    const index_t tie = std::min(std::max<index_t>(left, 0), ge(i, tau) - t);
    t += tie;
    left -= tie;
  }
  return take;
}

// FlexPrefill's cover count over the scores of all heads together (each head's scores sum to 1):
// the fewest entries, best first, whose mass exceeds alpha * heads; returns each head's share.
inline std::vector<index_t> shared_cover_counts(const std::vector<const std::vector<float>*>& xs,
                                                double alpha) {
  std::vector<float> all;
  for (const auto* x : xs) all.insert(all.end(), x->begin(), x->end());
  const index_t k = cover_count(all, alpha * static_cast<double>(xs.size()));
  return split_best(k, static_cast<index_t>(xs.size()), [&](index_t i, float t) {
    const auto& x = *xs[static_cast<std::size_t>(i)];
    return static_cast<index_t>(std::count_if(x.begin(), x.end(), [&](float y) { return y >= t; }));
  });
}

// The largest x in [0, top] with fits(x), within 1/64 of it, for fits monotone (true up to some
// x) and fits(0) true: doubling from `first`, then bisection. Any power of two first <= 64 gives
// the same x (below 64 the bisection runs to width 1, above it the brackets are the same powers
// of two); 64 saves the doubling steps below it.
template <class Fits>
index_t largest_fitting(index_t top, Fits fits, index_t first = 64) {
  index_t lo = 0, hi = first;
  while (hi < top && fits(hi)) {
    lo = hi;
    hi *= 2;
  }
  hi = std::min(hi, top);
  if (hi == top && fits(top)) lo = top;
  while (hi - lo > std::max<index_t>(1, lo / 64)) {
    const index_t mid = lo + (hi - lo) / 2;
    if (fits(mid))
      lo = mid;
    else
      hi = mid;
  }
  return lo;
}

// The largest x in [0, top] with pairs(x) <= target, within 1/64 of it (pairs non-decreasing in
// x, pairs(0) = least <= target). Pair counts grow about linearly in x, so a line through the
// known counts lands near the crossing: each guess aims half a tolerance below it and then probes
// one tolerance up, which usually closes the bracket in 3-5 evaluations (doubling and bisection
// take ~12; each evaluation converts a whole head, and large x cost the most, so the search never
// starts at top). After a few rounds it doubles / bisects, keeping the worst case logarithmic.
template <class Pairs>
index_t largest_within(index_t top, index_t target, index_t least, Pairs pairs) {
  auto tol = [](index_t x) { return std::max<index_t>(1, x / 64); };
  index_t lo = 0, plo = least;
  index_t hi = top + 1, phi = 0;  // hi: the smallest x known not to fit (top + 1: none yet)
  for (int round = 0; hi - lo > tol(lo); ++round) {
    index_t x;
    if (hi > top) {  // no upper end yet: extrapolate from (0, least) through (lo, plo)
      if (round >= 4) {
        x = std::max<index_t>(2 * lo, 64);
      } else if (lo > 0 && plo > least) {
        x = static_cast<index_t>(static_cast<double>(lo) * static_cast<double>(target - least) /
                                 static_cast<double>(plo - least));
      } else {  // forced parts ~ x = 64
        x = 64 * std::max<index_t>(1, target / std::max<index_t>(1, least));
      }
    } else if (round < 6 && phi > plo) {
      const double t = static_cast<double>(target - plo) / static_cast<double>(phi - plo);
      x = lo + static_cast<index_t>(t * static_cast<double>(hi - lo));
    } else {
      x = lo + (hi - lo) / 2;
    }
    x = std::clamp(x - tol(x) / 2, lo + 1, std::min(hi - 1, top));
    const index_t px = pairs(x);
    if (px > target) {
      hi = x;
      phi = px;
      continue;
    }
    lo = x;
    plo = px;
    const index_t y = lo + tol(lo);  // closes the bracket if it does not fit
    if (y >= hi || y > top) continue;
    const index_t py = pairs(y);
    if (py > target) {
      hi = y;
      phi = py;
    } else {
      lo = y;
      plo = py;
    }
  }
  return std::min(lo, top);
}

// The shared vertical-slash selection; `cfg` says how sizes are chosen. `target` (pairs per head,
// or -1) caps the sizes (see the budget notes above): per head (uniform allocation), or in total
// over the heads (cfg.shared: adaptive allocation).
inline prefill_selection vs_select(const prefill_inputs& in, const vs_config& cfg, index_t target,
                                   const char* policy) {
  prefill_selection sel = in.empty_selection(vs_block, vs_block);
  const index_t P = in.offset() + in.q_tokens(), H = in.heads();
  const index_t A = std::min(cfg.approximation, in.q_tokens());
  const float scale = in.softmax_scale();
  const float inf = std::numeric_limits<float>::infinity();
  const index_t fc = std::min(vs_forced_columns, P), fo = std::min(vs_forced_offsets, P);
  std::vector<double> flops(static_cast<std::size_t>(H), 0.0);
  std::vector<vs_head> heads(static_cast<std::size_t>(H));
  for_each_task(in.exec, H, [&](index_t h) {
    auto& e = heads[static_cast<std::size_t>(h)];
    const index_t kvh = h / in.group();
    in.q.visit([&](const auto& qv) {
      in.k.visit([&](const auto& kv) {
        flops[static_cast<std::size_t>(h)] =
            vs_estimate(qv, kv, h, kvh, in.offset(), A, scale, cfg.mean, e.vert, e.diag);
      });
    });
    e.nv = std::min(cfg.vertical, P);
    e.ns = std::min(cfg.slash, P);
    if (cfg.coverage_sizes && !cfg.shared) {  // computed before forcing, as in the reference
      e.nv = std::min(P, std::max(cfg.min_budget, cover_count(e.vert, cfg.alpha)));
      e.ns = std::min(P, std::max(cfg.min_budget, cover_count(e.diag, cfg.alpha)));
    }
  });
  for (double f : flops) sel.estimation_flops += f;
  if (cfg.coverage_sizes && cfg.shared) {  // one coverage over the mass of all heads
    std::vector<const std::vector<float>*> vs, ds;
    for (auto& e : heads) {
      vs.push_back(&e.vert);
      ds.push_back(&e.diag);
    }
    const auto cv = shared_cover_counts(vs, cfg.alpha), cd = shared_cover_counts(ds, cfg.alpha);
    for (index_t h = 0; h < H; ++h) {
      auto& e = heads[static_cast<std::size_t>(h)];
      e.nv = std::min(P, std::max(cfg.min_budget, cv[static_cast<std::size_t>(h)]));
      e.ns = std::min(P, std::max(cfg.min_budget, cd[static_cast<std::size_t>(h)]));
    }
  }
  for (auto& e : heads) {
    for (index_t j = 0; j < fc; ++j) e.vert[static_cast<std::size_t>(j)] = inf;
    for (index_t t = P - fo; t < P; ++t) e.diag[static_cast<std::size_t>(t)] = inf;
    e.nv = std::max(e.nv, fc);
    e.ns = std::max(e.ns, fo);
  }
  // Pairs of head h with xv columns and xs diagonals (within its caps); `build` also writes its
  // selection.
  auto apply = [&](index_t h, index_t xv, index_t xs, bool build) {
    auto& e = heads[static_cast<std::size_t>(h)];
    xv = std::clamp(xv, fc, e.nv);
    xs = std::clamp(xs, fo, e.ns);
    e.rank(std::max(xv, xs));
    std::vector<index_t> v, s;
    vs_pick(e.v_order, e.d_order, xv, xs, P, v, s);
    if (!build) return vs_pairs(v, s, sel);
    vs_convert(v, s, sel, h);
    return sel.head_pairs(h);
  };
  auto too_small = [&](index_t least, const char* what) {
    return spattn::detail::concat("at least ", policy, "'s forced parts (", least, " pairs ", what,
                                  ")");
  };
  if (target < 0) {  // the caps are the sizes
    for_each_task(in.exec, H, [&](index_t h) {
      auto& e = heads[static_cast<std::size_t>(h)];
      std::vector<index_t> v, s;
      vs_pick(top_k(e.vert.data(), P, e.nv), top_k(e.diag.data(), P, e.ns), e.nv, e.ns, P, v, s);
      vs_convert(v, s, sel, h);
    });
    return sel;
  }
  if (!cfg.shared) {
    // Uniform: per head, the largest size x (columns = diagonals = x, within the caps) whose
    // pairs fit, within 1/64 of it.
    for_each_task(in.exec, H, [&](index_t h) {
      auto& e = heads[static_cast<std::size_t>(h)];
      e.rank(std::min<index_t>(P, 4096));
      const auto pairs_at = [&](index_t x, bool build = false) { return apply(h, x, x, build); };
      const index_t least = pairs_at(0);
      require(least <= target, "budget",
              too_small(least, spattn::detail::concat("for head ", h).c_str()),
              spattn::detail::lazy(target, " pairs per head"));
      const index_t top = std::max(e.nv, e.ns);
      const index_t lo = largest_within(top, target, least, pairs_at);
      pairs_at(lo, true);
    });
    return sel;
  }
  // Adaptive: the heads share heads * target pairs. Their columns and diagonals compete by
  // estimated attention mass (each head's scores sum to the same total, so they compare): the K
  // best entries over all heads are kept (ties: lower head, columns before diagonals, lower
  // index), within each head's caps, K the largest (within 1/64) whose pairs fit.
  for (auto& e : heads) e.rank(std::min<index_t>(P, 1024));
  const index_t total = target * H;
  std::vector<index_t> head_pairs(static_cast<std::size_t>(H));
  const auto pairs_at = [&](index_t K, bool build = false) {
    // Columns (even arrays) and diagonals (odd) of every head; ranking may extend (sequential).
    const auto take = split_best(K, 2 * H, [&](index_t i, float tau) {
      auto& e = heads[static_cast<std::size_t>(i / 2)];
      return e.at_least(i % 2 == 1, tau);
    });
    for (index_t h = 0; h < H; ++h) {
      heads[static_cast<std::size_t>(h)].rank(std::max(take[static_cast<std::size_t>(2 * h)],
                                                       take[static_cast<std::size_t>(2 * h + 1)]));
    }
    for_each_task(in.exec, H, [&](index_t h) {
      head_pairs[static_cast<std::size_t>(h)] =
          apply(h, take[static_cast<std::size_t>(2 * h)], take[static_cast<std::size_t>(2 * h + 1)],
                build);
    });
    index_t sum = 0;
    for (index_t x : head_pairs) sum += x;
    return sum;
  };
  const index_t forced = H * (fc + fo);  // the +inf entries come first
  const index_t least = pairs_at(forced);
  require(least <= total, "budget", too_small(least, "over all heads"),
          spattn::detail::lazy(total, " pairs over ", H, " heads"));
  index_t most = 0;
  for (const auto& e : heads) most += e.nv + e.ns;
  const index_t lo =  // extra entries beyond the forced ones
      largest_fitting(most - forced, [&](index_t e) { return pairs_at(forced + e) <= total; });
  pairs_at(forced + lo, true);
  return sel;
}

}  // namespace detail

struct vertical_slash {
  index_t vertical_size = 512;       // kept key columns (reference class default 64)
  index_t slash_size = 512;          // kept diagonals (reference class default 128)
  index_t approximation_size = 256;  // estimation queries, the last ones (class default 64)

  std::string name() const { return "vertical_slash"; }

  prefill_selection select(const prefill_inputs& in, const budget& b) const {
    in.validate();
    require(vertical_size >= detail::vs_forced_columns, "vertical_slash vertical_size", ">= 4",
            vertical_size);
    require(slash_size >= detail::vs_forced_offsets, "vertical_slash slash_size", ">= 64",
            slash_size);
    require(approximation_size >= 1, "vertical_slash approximation_size", ">= 1",
            approximation_size);
    detail::vs_config cfg;
    cfg.approximation = approximation_size;
    cfg.vertical = vertical_size;
    cfg.slash = slash_size;
    index_t target = -1;
    if (!b.is_default()) {
      target = spattn::detail::pair_budget(b, in);
      cfg.shared = b.alloc() == allocation::adaptive;
      const index_t P = in.offset() + in.q_tokens();
      cfg.vertical = cfg.slash = P;  // the budget search chooses the size
    }
    return detail::vs_select(in, cfg, target, "vertical_slash");
  }
};

static_assert(prefill_policy<vertical_slash>);

}  // namespace spattn::policies
