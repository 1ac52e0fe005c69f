#pragma once
// Block-sparse prefill after sparse-frontier's `BlockSparseAttentionMInference` (commit 31d86c1).
//
// Per query head, with chunks of `chunk_size` tokens (query blocks and key blocks alike):
//  qpool[m], kpool[n] = mean of the chunk's rows, dividing by chunk_size even for a partial last
//  chunk (zero padding); score[m][n] = qpool[m] . kpool[n], unscaled, no softmax; n <= m only.
//  k = min(top_chunks, nb), nb = floor(L / chunk) + 1 (the reference always pads by 1..chunk).
//  Query chunk m keeps chunks 0..m when m + 1 < k (early chunks are dense); otherwise chunk 0,
//  m - 1 and m (forced) plus the best k - |forced| of chunks 1..m-2 by score. Attention is exact
//  (model scale) over the kept chunks with the causal mask.
//
// Parameters default to the paper's configuration (configs/attention/block_sparse.yaml: chunk 16,
// top 64; the reference class has no defaults). The reference asserts chunk_size >= 8 (a power of
// two) and top_chunks >= 3; so do we.
//
// Deliberate differences from the reference (documented choices):
//  - Pooling and scores in fp32 (the reference scores in bf16); ties go to the lower chunk index.
//  - Chunked prefill: chunks are aligned to positions, so q_offset must be a multiple of
//    chunk_size; pools cover keys below the chunk's end position only.
//  - Budgets: tokens(T) / kept(f) pick the largest top_chunks (>= 3) whose exact computed pairs
//    fit; the reference's `_get_blocks_for_sparsity` (unused in its run path) picks the nearest
//    analytic sparsity instead, which may exceed the budget. Coverage budgets and adaptive
//    allocation raise.
#include <string>
#include <vector>

#include "spattn/policies/estimation.hpp"

namespace spattn::policies {

struct block_sparse {
  index_t chunk_size = 16;
  index_t top_chunks = 64;

  std::string name() const { return "block_sparse"; }

  prefill_selection select(const prefill_inputs& in, const budget& b) const {
    in.validate();
    require(chunk_size >= 8 && chunk_size <= 64 && (chunk_size & (chunk_size - 1)) == 0,
            "block_sparse chunk_size", "a power of two in [8, 64]", chunk_size);
    require(top_chunks >= 3, "block_sparse top_chunks", ">= 3", top_chunks);
    const index_t C = chunk_size, off = in.offset();
    require(off % C == 0, "inputs q_offset",
            spattn::detail::concat("a multiple of chunk_size (", C, ")"), off);
    const index_t P = off + in.q_tokens(), nb = P / C + 1;
    index_t k = std::min(top_chunks, nb);
    if (!b.is_default()) {
      spattn::detail::require_uniform(b, "block_sparse");
      const index_t target = spattn::detail::pair_budget(b, in);
      require(pairs_for(in, 3) <= target, "budget",
              spattn::detail::concat("at least block_sparse's forced chunks (", pairs_for(in, 3),
                                     " pairs per head)"),
              spattn::detail::concat(target, " pairs per head"));
      index_t lo = 3, hi = std::max<index_t>(3, nb);
      while (lo < hi) {
        const index_t mid = lo + (hi - lo + 1) / 2;
        if (pairs_for(in, mid) <= target)
          lo = mid;
        else
          hi = mid - 1;
      }
      k = std::min(lo, nb);
    }
    prefill_selection sel = in.empty_selection(C, C);
    std::vector<double> flops(static_cast<std::size_t>(in.heads()), 0.0);
    detail::for_each_task(in.exec, in.heads(), [&](index_t h) {
      in.q.visit([&](const auto& qv) {
        in.k.visit([&](const auto& kv) {
          flops[static_cast<std::size_t>(h)] = select_head(qv, kv, h, h / in.group(), off, k, sel);
        });
      });
    });
    for (double f : flops) sel.estimation_flops += f;
    return sel;
  }

  // Exact computed pairs per head with top `k` chunks (data-independent).
  index_t pairs_for(const prefill_inputs& in, index_t k) const {
    const index_t C = chunk_size, off = in.offset();
    index_t total = 0;
    for (index_t t = 0; t < in.q_tokens(); ++t) {
      const index_t pos = off + t, m = pos / C;
      const index_t full = std::min(m + 1, k) - 1;  // chunks before the diagonal chunk
      total += full * C + (pos - m * C + 1);
    }
    return total;
  }

 private:
  // Pools the head's query and key chunks, scores them in blocks of 64 query chunks (tile
  // micro-kernels, pooled keys packed once) and fills the head's entries. Returns its FLOPs.
  template <class TQ, class TK>
  double select_head(const tensor_view<const TQ>& q, const tensor_view<const TK>& k, index_t h,
                     index_t kvh, index_t off, index_t top, prefill_selection& sel) const {
    constexpr index_t BC = kernels::BC;
    const index_t C = chunk_size, d = q.head_dim(), dpad = kernels::padded_dim(d);
    const index_t P = off + q.tokens(), nk = (P + C - 1) / C, nqb = (q.tokens() + C - 1) / C;
    const index_t m0 = off / C, ntiles = (nk + BC - 1) / BC;
    const float inv = 1.0f / static_cast<float>(C);
    simd::aligned_buffer qp(static_cast<std::size_t>(nqb * dpad)),
        kpool(static_cast<std::size_t>(nk * dpad)), kt(static_cast<std::size_t>(ntiles * d * BC));
    std::vector<float> tmp(static_cast<std::size_t>(d));
    auto pool = [&](auto row_ptr, index_t count, index_t chunks, float* dst) {
      std::fill(dst, dst + chunks * dpad, 0.0f);
      for (index_t t = 0; t < count; ++t) {
        simd::convert_to_f32(row_ptr(t), tmp.data(), d);
        float* o = dst + (t / C) * dpad;
        for (index_t x = 0; x < d; ++x) o[x] += tmp[static_cast<std::size_t>(x)];
      }
      for (index_t i = 0; i < chunks * dpad; ++i) dst[i] *= inv;
    };
    pool([&](index_t t) { return q.row(t, h); }, q.tokens(), nqb, qp.data());
    pool([&](index_t t) { return k.row(t, kvh); }, P, nk, kpool.data());
    for (index_t tile = 0; tile < ntiles; ++tile) {
      const int n = static_cast<int>(std::min<index_t>(BC, nk - tile * BC));
      kernels::pack_k_transposed<float>(
          [&](int j) { return kpool.data() + (tile * BC + j) * dpad; }, n, d,
          kt.data() + tile * d * BC);
    }
    constexpr index_t RB = 64;  // query chunks scored at once
    std::vector<float> rows(static_cast<std::size_t>(RB * ntiles * BC)), vals;
    simd::aligned_buffer s(static_cast<std::size_t>(RB * BC));
    double scored = 0;
    for (index_t r0 = 0; r0 < nqb; r0 += RB) {
      const index_t r1 = std::min(nqb, r0 + RB);
      const index_t first = std::max(r0, top - 1 - m0);  // rows before are dense: no scores
      if (first < r1) {
        const index_t tiles = std::min(ntiles, (m0 + r1 - 1) / BC + 1);  // key chunks <= m
        for (index_t tile = 0; tile < tiles; ++tile) {
          detail::score_rows(qp.data() + first * dpad, dpad, kt.data() + tile * d * BC, d, s.data(),
                             static_cast<int>(r1 - first));
          for (index_t r = first; r < r1; ++r) {
            std::copy(s.data() + (r - first) * BC, s.data() + (r - first + 1) * BC,
                      rows.data() + (r - r0) * ntiles * BC + tile * BC);
          }
        }
        scored += static_cast<double>((r1 - first) * tiles * BC);
      }
      for (index_t bq = r0; bq < r1; ++bq) {
        const index_t m = m0 + bq;
        auto& e = sel.at(h, bq);
        if (m + 1 < top) {  // early query chunks are dense
          for (index_t n = 0; n <= m; ++n) e.blocks.push_back(n * C);
          continue;
        }
        std::vector<index_t> keep = {0};  // forced: first, previous and diagonal chunk
        if (m - 1 > 0) keep.push_back(m - 1);
        if (m > 0) keep.push_back(m);
        const index_t others = top - static_cast<index_t>(keep.size());
        if (others > 0) {
          // The `others` best of chunks 1..m-2, ties to the lower index: find the threshold
          // score on plain floats, then take chunks above it and ties in index order.
          const float* row = rows.data() + (bq - r0) * ntiles * BC;
          vals.assign(row + 1, row + m - 1);
          std::nth_element(vals.begin(), vals.begin() + (others - 1), vals.end(), std::greater<>());
          const float thr = vals[static_cast<std::size_t>(others - 1)];
          index_t above = 0;
          for (index_t n = 1; n <= m - 2; ++n) above += row[n] > thr ? 1 : 0;
          index_t ties = others - above;
          for (index_t n = 1; n <= m - 2; ++n) {
            if (row[n] > thr || (row[n] == thr && ties-- > 0)) keep.push_back(n);
          }
        }
        std::sort(keep.begin(), keep.end());
        for (index_t n : keep) e.blocks.push_back(n * C);
      }
    }
    // Pooling (one add per element) and the pooled dot products computed.
    return static_cast<double>(d) * static_cast<double>(q.tokens() + P) +
           2.0 * static_cast<double>(d) * scored;
  }
};

static_assert(prefill_policy<block_sparse>);

}  // namespace spattn::policies
