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
//  - Pooling and scores in fp32 (the reference scores in bf16); ties go to the lower chunk index;
//    NaN scores (from NaN / inf inputs) rank below every number.
//  - Chunked prefill: chunks are aligned to positions, so q_offset must be a multiple of
//    chunk_size; pools cover keys below the chunk's end position only.
//  - Budgets: tokens(T) / kept(f) pick the largest top_chunks (>= 3) whose exact computed pairs
//    fit; the reference's `_get_blocks_for_sparsity` (unused in its run path) picks the nearest
//    analytic sparsity instead, which may exceed the budget. Coverage budgets raise.
//  - Adaptive allocation (tokens(T, adaptive) / kept(f, adaptive)) is our own choice: Ada-KV's
//    allocation (one budget shared by the heads, spent where the estimated attention mass is)
//    applied to block-sparse prefill; the reference has no adaptive mode. The rule: k is the
//    top_chunks the uniform search finds, so the pairs summed over all heads equal the uniform
//    total (within heads x the per-head budget; one head may exceed the per-head budget). Query
//    chunk m with m + 1 < k is dense in every head, as in uniform mode. Otherwise every head keeps
//    its forced chunks (0, m - 1, m), and the remaining heads * (k - |forced|) picks go to the
//    best (head, chunk) candidates among chunks 1..m-2 of all query heads, ranked by estimated
//    block attention mass
//        mass[h][m][n] = softmax over chunks n' <= m of (score[h][m][n'] * softmax scale)
//    in fp32 (exp through simd::exp2_neg): normalising per head and query chunk makes heads
//    comparable, the raw pooled dot products are not. Ties go to the lower head, then the lower
//    chunk. A head gets 0..m-2 extra chunks. Uniform mode is unaffected. (With a single head the
//    order is the score order except where fp32 masses tie, e.g. both underflow to 0.)
//
// Estimation (selections identical to a plain sort of each row's scores; see the tests): key
// chunks are pooled and packed once per KV head and kept for all KV heads at once (nk * head_dim
// floats per KV head: K's bf16 size / 8 at chunk 16). Query chunks are pooled inside the tasks,
// blocks of `block_rows` query chunks: per (block, head) in uniform mode; per block with all
// heads in adaptive mode, which holds the scores of all heads of a block at once (the block is
// made smaller to keep that under ~16 MiB per task). Tasks run most expensive first. Each row's
// top-k finds a lower bound on its k-th best score with vectorised counting passes (seeded by the
// previous row), then ranks only the entries at or above it (detail::bs_top).
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "spattn/policies/estimation.hpp"

namespace spattn::policies {

namespace detail {

// Entries of x[0..n) that are >= t (NaN never counts).
inline index_t bs_count_ge(const float* x, index_t n, float t) {
  index_t c = 0, i = 0;
#if defined(__AVX512F__)
  const __m512 vt = _mm512_set1_ps(t);
  index_t c2 = 0;
  for (; i + 32 <= n; i += 32) {
    c += std::popcount(
        static_cast<unsigned>(_mm512_cmp_ps_mask(_mm512_loadu_ps(x + i), vt, _CMP_GE_OQ)));
    c2 += std::popcount(
        static_cast<unsigned>(_mm512_cmp_ps_mask(_mm512_loadu_ps(x + i + 16), vt, _CMP_GE_OQ)));
  }
  c += c2;
#endif
  for (; i < n; ++i) c += x[i] >= t ? 1 : 0;
  return c;
}

// Smallest and largest non-NaN entries of x[0..n) (+inf and -inf when there are none).
inline void bs_min_max(const float* x, index_t n, float& mn, float& mx) {
  constexpr float inf = std::numeric_limits<float>::infinity();
  mn = inf;
  mx = -inf;
  index_t i = 0;
#if defined(__AVX512F__)
  __m512 vmn = _mm512_set1_ps(inf), vmx = _mm512_set1_ps(-inf);
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    vmn = _mm512_min_ps(v, vmn);  // a NaN in v yields the second operand
    vmx = _mm512_max_ps(v, vmx);
  }
  mn = _mm512_reduce_min_ps(vmn);
  mx = _mm512_reduce_max_ps(vmx);
#endif
  for (; i < n; ++i) {
    if (x[i] < mn) mn = x[i];
    if (x[i] > mx) mx = x[i];
  }
}

// Copies the entries of x[0..n) that are >= t, and their indices, in index order to val / idx;
// returns the count. Entries are extracted one by one from 64-bit comparison masks (few branch
// misses; vector compress measured slower here).
inline index_t bs_compact_ge(const float* x, index_t n, float t, float* val, std::int32_t* idx) {
  index_t c = 0, i = 0;
#if defined(__AVX512F__)
  const __m512 vt = _mm512_set1_ps(t);
  auto mask = [&](index_t at) {
    return static_cast<std::uint64_t>(_mm512_cmp_ps_mask(_mm512_loadu_ps(x + at), vt, _CMP_GE_OQ));
  };
  for (; i + 64 <= n; i += 64) {
    auto k = mask(i) | mask(i + 16) << 16 | mask(i + 32) << 32 | mask(i + 48) << 48;
    for (; k != 0; k &= k - 1, ++c) {
      const index_t j = i + std::countr_zero(k);
      val[c] = x[j];
      idx[c] = static_cast<std::int32_t>(j);
    }
  }
#endif
  for (; i < n; ++i) {
    if (x[i] >= t) {
      val[c] = x[i];
      idx[c] = static_cast<std::int32_t>(i);
      ++c;
    }
  }
  return c;
}

// Order-preserving map of non-NaN floats to unsigned integers (-0 just below +0), and back.
inline std::uint32_t bs_key(float f) {
  const auto u = std::bit_cast<std::uint32_t>(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
inline float bs_unkey(std::uint32_t k) {
  return std::bit_cast<float>((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// Smallest entry of x[0..n) that is >= t (+inf when there is none).
inline float bs_min_ge(const float* x, index_t n, float t) {
  constexpr float inf = std::numeric_limits<float>::infinity();
  float mn = inf;
  index_t i = 0;
#if defined(__AVX512F__)
  const __m512 vt = _mm512_set1_ps(t);
  __m512 vmn = _mm512_set1_ps(inf);
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    vmn = _mm512_mask_min_ps(vmn, _mm512_cmp_ps_mask(v, vt, _CMP_GE_OQ), v, vmn);
  }
  mn = _mm512_reduce_min_ps(vmn);
#endif
  for (; i < n; ++i)
    if (x[i] >= t && x[i] < mn) mn = x[i];
  return mn;
}

// Exact top-k of float rows: the `count` best entries of x[0..n), ranked by value, ties to the
// lower index (everything above the count-th largest value, then the lowest-index entries equal to
// it); NaN ranks below every number (NaN scores come only from NaN / inf inputs). Same result as
// an nth_element over the row (`plain`, used when the row has fewer than `count` numbers),
// faster: vectorised counting passes find a lower bound `lo` on the count-th largest value with
// at most ~2 * count entries at or above it (starting from the previous row's hint, then
// bisecting); those entries are compacted and the exact value is found by bisecting over their
// order-preserving integer images. Keeps its scratch and the hint between rows.
class bs_top {
 public:
  // Calls emit(i) for the selected entries, in ascending i (count >= 1).
  template <class Emit>
  void select(const float* x, index_t n, index_t count, Emit&& emit) {
    if (count >= n) {
      for (index_t i = 0; i < n; ++i) emit(i);
      return;
    }
    const index_t cap = 2 * count + 32;
    want_ = count + (cap - count) / 2;  // the next row's hint should keep about this many
    best_ = -1;
    if (n > std::numeric_limits<std::int32_t>::max()) {
      hint_ok_ = false;
      plain(x, n, count, emit);
      return;
    }
    float lo = 0.0f;
    index_t c = -1;
    if (hint_ok_) {  // usually right: compact at the hint straight away
      reserve(n);
      c = bs_compact_ge(x, n, hint_, val_.data(), idx_.data());
      lo = hint_;
    }
    if (c < count || c > cap) {
      if (!bound(x, n, count, cap, lo, c)) {
        hint_ok_ = false;
        plain(x, n, count, emit);
        return;
      }
      reserve(c);
      c = bs_compact_ge(x, n, lo, val_.data(), idx_.data());
    }
    note(lo, c);
    const float* v = val_.data();
    // The count-th largest: the largest t with #{v >= t} >= count, over the integer images.
    float mx = 0.0f, mn = 0.0f;
    bs_min_max(v, c, mn, mx);
    std::uint32_t klo = bs_key(lo), khi = bs_key(mx) + 1;  // #{>= klo} >= count > #{>= khi}
    float thr = lo;
    bool exact = false;  // exactly `count` entries are >= thr
    if (c == count) {
      thr = mn;
      exact = true;
    }
    while (!exact && khi - klo > 1) {
      const std::uint32_t mid = klo + (khi - klo) / 2;
      const float t = bs_unkey(mid);
      const index_t m = bs_count_ge(v, c, t);
      if (m >= count) {
        klo = mid;
        note(t, m);
        if (m == count) {
          thr = bs_min_ge(v, c, t);
          exact = true;
        }
      } else {
        khi = mid;
      }
    }
    if (!exact) thr = bs_unkey(klo);
    if (exact || bs_count_ge(v, c, thr) == count) {
      emit_ge(v, c, thr, emit);
    } else {  // entries equal to thr straddle the cut: the lowest indices go first
      index_t ties = count;
      for (index_t j = 0; j < c; ++j) ties -= v[j] > thr ? 1 : 0;
      for (index_t j = 0; j < c; ++j) {
        if (v[j] > thr || (v[j] == thr && ties-- > 0))
          emit(static_cast<index_t>(idx_[static_cast<std::size_t>(j)]));
      }
    }
    hint_ = best_t_;
    hint_ok_ = true;
  }

  // The plain computation: nth_element over the whole row (NaN last, as the fast path: rows
  // with fewer than `count` numbers keep all their numbers and their lowest-index NaNs).
  template <class Emit>
  void plain(const float* x, index_t n, index_t count, Emit&& emit) {
    work_.assign(x, x + n);
    std::nth_element(work_.begin(), work_.begin() + (count - 1), work_.end(),
                     [](float a, float b) { return a > b || (!std::isnan(a) && std::isnan(b)); });
    const float thr = work_[static_cast<std::size_t>(count - 1)];
    if (std::isnan(thr)) {
      index_t nans = count - bs_count_ge(x, n, -std::numeric_limits<float>::infinity());
      for (index_t i = 0; i < n; ++i) {
        if (!std::isnan(x[i]) || nans-- > 0) emit(i);
      }
      return;
    }
    index_t above = 0;
    for (index_t i = 0; i < n; ++i) above += x[i] > thr ? 1 : 0;
    index_t ties = count - above;
    for (index_t i = 0; i < n; ++i) {
      if (x[i] > thr || (x[i] == thr && ties-- > 0)) emit(i);
    }
  }

 private:
  // Remembers threshold t (keeping m >= count entries) as the next row's hint if m is the
  // closest to want_ so far.
  void note(float t, index_t m) {
    const index_t dist = m > want_ ? m - want_ : want_ - m;
    if (best_ < 0 || dist < best_) {
      best_ = dist;
      best_t_ = t;
    }
  }

  // Calls emit(idx[j]) for the entries v[j] >= thr, in order.
  template <class Emit>
  void emit_ge(const float* v, index_t c, float thr, Emit& emit) const {
    const std::int32_t* idx = idx_.data();
    index_t j = 0;
#if defined(__AVX512F__)
    const __m512 vt = _mm512_set1_ps(thr);
    for (; j + 16 <= c; j += 16) {
      auto k = static_cast<unsigned>(_mm512_cmp_ps_mask(_mm512_loadu_ps(v + j), vt, _CMP_GE_OQ));
      for (; k != 0; k &= k - 1) emit(static_cast<index_t>(idx[j + std::countr_zero(k)]));
    }
#endif
    for (; j < c; ++j)
      if (v[j] >= thr) emit(static_cast<index_t>(idx[j]));
  }

  // Finds lo with c = #{x >= lo} >= count, preferably c <= cap; on entry lo is the hint and c
  // its count, or c is -1 without a hint. False when no such lo exists among the non-NaN entries
  // (the row holds NaN).
  bool bound(const float* x, index_t n, index_t count, index_t cap, float& lo, index_t& c) {
    bool have_lo = false, have_hi = false;
    float hi = 0.0f;
    if (c >= 0) {
      if (c >= count) {
        note(lo, c);
        have_lo = true;
      } else {
        hi = lo;
        have_hi = true;
      }
    }
    if (!have_lo || !have_hi) {
      float mn = 0.0f, mx = 0.0f;
      bs_min_max(x, n, mn, mx);
      if (!have_lo) {
        lo = mn;
        c = bs_count_ge(x, n, mn);
        if (c < count) return false;
        note(lo, c);
        if (c <= cap) return true;
      }
      if (!have_hi) hi = mx;
    }
    for (int it = 0; it < 16 && std::isfinite(lo) && std::isfinite(hi); ++it) {
      const float mid = 0.5f * lo + 0.5f * hi;
      if (!(mid > lo && mid < hi)) break;
      const index_t m = bs_count_ge(x, n, mid);
      if (m >= count) {
        lo = mid;
        c = m;
        note(lo, c);
        if (m <= cap) break;
      } else {
        hi = mid;
      }
    }
    return true;
  }

  void reserve(index_t c) {
    if (val_.size() < static_cast<std::size_t>(c + 16)) {
      val_.resize(static_cast<std::size_t>(c + 16));
      idx_.resize(static_cast<std::size_t>(c + 16));
    }
  }

  std::vector<float> val_, work_;
  std::vector<std::int32_t> idx_;
  float hint_ = 0.0f, best_t_ = 0.0f;
  index_t want_ = 0, best_ = -1;
  bool hint_ok_ = false;
};

// out[n - 1] for n in 1..m-2: softmax over chunks n' <= m of s[n'] * scale, at n. `tmp` holds
// m + 1 rounded up to the vector width; s is readable that far.
inline void bs_mass(const float* s, index_t m, float scale, float* tmp, float* out) {
  using simd::vfloat;
  using simd::W;
  alignas(64) static constexpr float lane[16] = {0, 1, 2,  3,  4,  5,  6,  7,
                                                 8, 9, 10, 11, 12, 13, 14, 15};
  static_assert(W <= 16);
  float mn = 0.0f, mx = 0.0f;
  bs_min_max(s, m + 1, mn, mx);
  const float c = scale * kernels::log2e;
  const vfloat vc(c), vb(mx * c), neg_inf(-std::numeric_limits<float>::infinity());
  vfloat sum(0.0f);
  for (index_t n = 0; n <= m; n += W) {
    vfloat x = xsimd::fms(simd::load(s + n), vc, vb);
    if (n + W > m + 1)  // lanes past chunk m: exp2_neg(-inf) = 0
      x = xsimd::select(vfloat::load_aligned(lane) < vfloat(static_cast<float>(m + 1 - n)), x,
                        neg_inf);
    const vfloat e = simd::exp2_neg(x);
    simd::store(tmp + n, e);
    sum += e;
  }
  const float z = simd::hsum(sum);
  for (index_t n = 1; n <= m - 2; ++n) out[n - 1] = tmp[n] / z;
}

}  // namespace detail

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
            spattn::detail::lazy("a multiple of chunk_size (", C, ")"), off);
    const index_t P = off + in.q_tokens(), nb = P / C + 1;
    index_t k = std::min(top_chunks, nb);
    const bool adaptive = !b.is_default() && b.alloc() == allocation::adaptive;
    if (!b.is_default()) {
      const index_t target = spattn::detail::pair_budget(b, in);
      require(pairs_for(in, 3) <= target, "budget",
              spattn::detail::lazy("at least block_sparse's forced chunks (", pairs_for(in, 3),
                                   " pairs per head)"),
              spattn::detail::lazy(target, " pairs per head"));
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
    in.q.visit([&](const auto& qv) {
      in.k.visit(
          [&](const auto& kv) { sel.estimation_flops = estimate(qv, kv, in, k, adaptive, sel); });
    });
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
  static constexpr index_t block_rows = 32;  // query chunks scored at once (per task)

  // dst[c] = sum of rows [t0 + c*C, min(t0 + (c+1)*C, t1)) of head h, in row order starting from
  // 0, times 1/C (zero padded to dpad), for the chunks c covering [t0, t1). fp32, the same
  // operations per element as ever (selections must not change).
  template <class T>
  void pool(const tensor_view<const T>& x, index_t h, index_t t0, index_t t1, float* dst) const {
    using simd::vfloat;
    using simd::W;
    constexpr int NV = 8;  // vectors summed in registers at once
    const index_t C = chunk_size, d = x.head_dim(), dpad = kernels::padded_dim(d);
    const float inv = 1.0f / static_cast<float>(C);
    for (index_t a = t0; a < t1; a += C, dst += dpad) {
      const index_t z = std::min(t1, a + C);
      index_t j = 0;
      for (; j + NV * W <= d; j += NV * W) {
        vfloat acc[NV];
        SPATTN_UNROLL for (int v = 0; v < NV; ++v) acc[v] = vfloat(0.0f);
        for (index_t t = a; t < z; ++t) {
          const T* r = x.row(t, h) + j;
          SPATTN_UNROLL for (int v = 0; v < NV; ++v) acc[v] += simd::load_f32(r + v * W);
        }
        SPATTN_UNROLL for (int v = 0; v < NV; ++v)
            simd::store(dst + j + v * W, acc[v] * vfloat(inv));
      }
      for (; j + W <= d; j += W) {
        vfloat acc(0.0f);
        for (index_t t = a; t < z; ++t) acc += simd::load_f32(x.row(t, h) + j);
        simd::store(dst + j, acc * vfloat(inv));
      }
      for (; j < d; ++j) {
        float acc = 0.0f;
        for (index_t t = a; t < z; ++t) acc += to_float(x.row(t, h)[j]);
        dst[j] = acc * inv;
      }
      std::fill(dst + d, dst + dpad, 0.0f);
    }
  }

  // Pools query chunks [first, r1) of head h and scores them against key chunk tiles [0, tiles)
  // of `kt`: out[r][n] (row stride ld) = score of query chunk first + r with key chunk n.
  // Returns the scores computed.
  template <class TQ>
  index_t score_block(const tensor_view<const TQ>& q, index_t h, index_t first, index_t r1,
                      const float* kt, index_t tiles, float* qp, float* s, float* out,
                      index_t ld) const {
    constexpr index_t BC = kernels::BC;
    const index_t C = chunk_size, d = q.head_dim(), dpad = kernels::padded_dim(d);
    pool(q, h, first * C, std::min(q.tokens(), r1 * C), qp);
    const int rows = static_cast<int>(r1 - first);
    for (index_t tile = 0; tile < tiles; ++tile) {
      detail::score_rows(qp, dpad, kt + tile * d * BC, d, s, rows);
      for (index_t r = 0; r < rows; ++r)
        std::copy(s + r * BC, s + (r + 1) * BC, out + r * ld + tile * BC);
    }
    return rows * tiles * BC;
  }

  // The whole estimation and selection; returns its FLOPs (pooling adds and pooled dot products;
  // the adaptive softmax is not counted).
  template <class TQ, class TK>
  double estimate(const tensor_view<const TQ>& q, const tensor_view<const TK>& k,
                  const prefill_inputs& in, index_t top, bool adaptive,
                  prefill_selection& sel) const {
    constexpr index_t BC = kernels::BC;
    const index_t C = chunk_size, d = q.head_dim(), dpad = kernels::padded_dim(d);
    const index_t H = q.heads(), G = in.group(), KVH = k.heads(), off = in.offset();
    const index_t P = off + q.tokens(), nk = (P + C - 1) / C, nqb = (q.tokens() + C - 1) / C;
    const index_t m0 = off / C, ntiles = (nk + BC - 1) / BC, tile_size = d * BC;
    // Key chunks, pooled and packed transposed in tiles of BC chunks, once per KV head.
    simd::aligned_buffer kt(static_cast<std::size_t>(KVH * ntiles * tile_size));
    detail::for_each_task(in.exec, KVH * ntiles, [&](index_t i) {
      const index_t g = i / ntiles, c0 = (i % ntiles) * BC;
      const int n = static_cast<int>(std::min<index_t>(BC, nk - c0));
      simd::aligned_buffer kp(static_cast<std::size_t>(n * dpad));
      pool(k, g, c0 * C, std::min(P, (c0 + n) * C), kp.data());
      kernels::pack_k_transposed<float>([&](int j) { return kp.data() + j * dpad; }, n, d,
                                        kt.data() + i * tile_size);
    });
    const float* ktp = kt.data();
    auto dense = [&](index_t h, index_t bq, index_t m) {
      auto& e = sel.at(h, bq);
      e.blocks.reserve(static_cast<std::size_t>(m + 1));
      for (index_t n = 0; n <= m; ++n) e.blocks.push_back(n * C);
    };
    // Forced chunks below / above the extra ones (chunk 0; chunks m - 1 and m).
    auto forced_count = [](index_t m) { return 1 + (m >= 2 ? 1 : 0) + (m >= 1 ? 1 : 0); };
    auto forced_tail = [&](prefill_selection::entry& e, index_t m) {
      if (m >= 2) e.blocks.push_back((m - 1) * C);
      if (m >= 1) e.blocks.push_back(m * C);
    };

    // Query chunks in blocks of RB: tasks from the last block (the most key chunks) down.
    index_t RB = block_rows;
    if (adaptive) {  // the scores of all heads are held at once: at most ~16 MiB
      const index_t per_row = H * ntiles * BC;
      RB = std::clamp<index_t>((index_t{1} << 22) / std::max<index_t>(per_row, 1), 1, block_rows);
    }
    const index_t nrb = (nqb + RB - 1) / RB;
    const index_t tasks = adaptive ? nrb : nrb * H;
    std::vector<double> scored(static_cast<std::size_t>(tasks), 0.0);
    detail::for_each_task(in.exec, tasks, [&](index_t i) {
      const index_t rb = nrb - 1 - (adaptive ? i : i / H);
      const index_t h0 = adaptive ? 0 : i % H, h1 = adaptive ? H : h0 + 1;
      const index_t r0 = rb * RB, r1 = std::min(nqb, r0 + RB);
      const index_t first = std::clamp(top - 1 - m0, r0, r1);  // rows before are dense
      for (index_t bq = r0; bq < first; ++bq)
        for (index_t h = h0; h < h1; ++h) dense(h, bq, m0 + bq);
      if (first == r1) return;
      const index_t rows = r1 - first, tiles = std::min(ntiles, (m0 + r1 - 1) / BC + 1);
      const index_t ld = tiles * BC;
      simd::aligned_buffer qp(static_cast<std::size_t>(rows * dpad)),
          s(static_cast<std::size_t>(rows * BC)),
          sc(static_cast<std::size_t>((h1 - h0) * rows * ld));
      index_t n_scored = 0;
      for (index_t h = h0; h < h1; ++h) {
        n_scored += score_block(q, h, first, r1, ktp + (h / G) * ntiles * tile_size, tiles,
                                qp.data(), s.data(), sc.data() + (h - h0) * rows * ld, ld);
      }
      scored[static_cast<std::size_t>(i)] = static_cast<double>(n_scored);
      detail::bs_top topk;
      if (!adaptive) {
        for (index_t bq = first; bq < r1; ++bq) {
          const index_t m = m0 + bq, others = top - forced_count(m);
          const float* row = sc.data() + (bq - first) * ld;
          auto& e = sel.at(h0, bq);
          e.blocks.reserve(static_cast<std::size_t>(top));
          e.blocks.push_back(0);
          if (others > 0)
            topk.select(row + 1, m - 2, others,
                        [&](index_t j) { e.blocks.push_back((j + 1) * C); });
          forced_tail(e, m);
        }
        return;
      }
      // Adaptive: mass rows of all heads side by side, one shared top-k per query chunk; the
      // picks come in (head, chunk) order.
      std::vector<float> mass(static_cast<std::size_t>(H * std::max<index_t>(m0 + r1 - 3, 1)));
      std::vector<index_t> picks, per_head(static_cast<std::size_t>(H));
      simd::aligned_buffer tmp(static_cast<std::size_t>(ld));
      for (index_t bq = first; bq < r1; ++bq) {
        const index_t m = m0 + bq, others = top - forced_count(m), L = m - 2;
        picks.clear();
        if (others > 0) {
          for (index_t h = 0; h < H; ++h) {
            detail::bs_mass(sc.data() + (h * rows + bq - first) * ld, m, in.softmax_scale(),
                            tmp.data(), mass.data() + h * L);
          }
          topk.select(mass.data(), H * L, H * others, [&](index_t j) { picks.push_back(j); });
        }
        std::fill(per_head.begin(), per_head.end(), 0);
        for (index_t j : picks) ++per_head[static_cast<std::size_t>(j / L)];
        std::size_t next = 0;
        for (index_t h = 0; h < H; ++h) {
          auto& e = sel.at(h, bq);
          e.blocks.reserve(
              static_cast<std::size_t>(forced_count(m) + per_head[static_cast<std::size_t>(h)]));
          e.blocks.push_back(0);
          for (index_t x = 0; x < per_head[static_cast<std::size_t>(h)]; ++x, ++next)
            e.blocks.push_back((1 + picks[next] % L) * C);
          forced_tail(e, m);
        }
      }
    });
    // Pooling (one add per element: queries per head, keys per KV head) and the dot products.
    double total = static_cast<double>(d) * static_cast<double>(q.tokens() * H + P * KVH);
    for (double x : scored) total += 2.0 * static_cast<double>(d) * x;
    return total;
  }
};

static_assert(prefill_policy<block_sparse>);

}  // namespace spattn::policies
