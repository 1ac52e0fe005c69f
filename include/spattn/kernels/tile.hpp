#pragma once
// The prefill tile kernel's building blocks. A work item holds `rows` query rows (the rows of a
// query block for every head of one GQA group, stacked) packed in fp32 and pre-scaled by
// scale*log2(e). Key tiles of BC keys are packed once per work item, K transposed ([d][BC]) and
// V row-major ([BC][dpad]), so the whole group reuses them. Each tile is processed in register
// panels of MR rows: S = Q.K^T, online softmax (exp2), O += P.V. Masking is a per-row count of
// valid leading columns (keys are always sorted by position), applied only to tiles that need it.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "spattn/core/simd.hpp"
#include "spattn/core/tensor_view.hpp"

namespace spattn::kernels {

using simd::vfloat;
using simd::W;

inline constexpr int BC = 64;  // keys per tile
// Register panels: MR rows x NV vectors of accumulators, plus NV operand vectors and a broadcast,
// must fit the register file: 6 x 4 + 4 + 1 of 32 under AVX-512, 6 x 2 + 2 + 1 of 16 under AVX2
// (3 x 4 there left the operands as memory operands of every FMA: 15 loads per 12 FMAs, and ran
// the fp32 tile at ~47% of one core's FMA peak).
inline constexpr int MR = 6;                   // query rows per register panel
inline constexpr int QK_NV = W == 16 ? 4 : 2;  // vectors per column chunk in S = Q.K^T
inline constexpr int PV_NV = W == 16 ? 4 : 2;  // vectors per head_dim chunk in O += P.V
inline constexpr float neg_inf = -std::numeric_limits<float>::infinity();
inline constexpr float log2e = 1.4426950408889634f;
inline constexpr float ln2 = 0.6931471805599453f;
static_assert(BC % (QK_NV * W) == 0, "BC must be a multiple of the column chunk");

inline index_t padded_dim(index_t d) {
  return (d + W - 1) / W * W;
}

// Per-work-item state of the online softmax: running max m (log2 units), sum l, and the
// unnormalised output O [rows][dpad].
struct softmax_state {
  float* o = nullptr;
  float* m = nullptr;
  float* l = nullptr;
  int rows = 0;
  index_t dpad = 0;

  void reset() const {
    std::fill(o, o + rows * dpad, 0.0f);
    std::fill(m, m + rows, neg_inf);
    std::fill(l, l + rows, 0.0f);
  }
};

// Packs `n` rows of one head (pointers from row_ptr(j)) as fp32, scaled, into dst [n][dpad].
template <class T, class RowPtr>
inline void pack_rows(RowPtr row_ptr, int n, index_t d, index_t dpad, float scale, float* dst) {
  for (int j = 0; j < n; ++j) {
    float* o = dst + j * dpad;
    simd::convert_to_f32(row_ptr(j), o, d);
    if (scale != 1.0f) {
      for (index_t x = 0; x < d; ++x) o[x] *= scale;
    }
    std::fill(o + d, o + dpad, 0.0f);
  }
}

// Packs a key tile transposed: kt[x * BC + j] = K[j][x]; columns j >= n are zero. Portable
// version; pack_k_transposed below uses in-register transposes where it can.
template <class T, class RowPtr>
inline void pack_k_transposed_scalar(RowPtr row_ptr, int n, index_t d, float* kt) {
  alignas(64) float buf[BC];
  for (int j = 0; j < n; ++j) {
    const T* src = row_ptr(j);
    for (index_t x0 = 0; x0 < d; x0 += BC) {
      const index_t len = std::min<index_t>(BC, d - x0);
      simd::convert_to_f32(src + x0, buf, len);
      for (index_t x = 0; x < len; ++x) kt[(x0 + x) * BC + j] = buf[x];
    }
  }
  if (n < BC) {
    for (index_t x = 0; x < d; ++x) std::fill(kt + x * BC + n, kt + x * BC + BC, 0.0f);
  }
}

// Same result as pack_k_transposed_scalar (kt[x * BC + j] = K[j][x], columns j >= n zero), with
// 16x16 in-register transposes under AVX-512 when head_dim is a multiple of 16. The scalar
// transpose costs about as much as attending a 16-row tile, so sparse tiles with few rows need
// this; other targets and head dims use the scalar version.
template <class T, class RowPtr>
inline void pack_k_transposed(RowPtr row_ptr, int n, index_t d, float* kt) {
#if defined(__AVX512F__)
  if (d % 16 == 0) {
    for (int j0 = 0; j0 < BC; j0 += 16) {
      const int rows = std::clamp(n - j0, 0, 16);
      for (index_t x0 = 0; x0 < d; x0 += 16) {
        __m512 r[16];
        SPATTN_UNROLL for (int i = 0; i < 16; ++i) {
          r[i] = i < rows ? __m512(simd::load_f32(row_ptr(j0 + i) + x0)) : _mm512_setzero_ps();
        }
        __m512 t[16], u[16];
        SPATTN_UNROLL for (int i = 0; i < 8; ++i) {
          t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
          t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
        }
        SPATTN_UNROLL for (int k = 0; k < 4; ++k) {
          u[4 * k + 0] = _mm512_shuffle_ps(t[4 * k + 0], t[4 * k + 2], _MM_SHUFFLE(1, 0, 1, 0));
          u[4 * k + 1] = _mm512_shuffle_ps(t[4 * k + 0], t[4 * k + 2], _MM_SHUFFLE(3, 2, 3, 2));
          u[4 * k + 2] = _mm512_shuffle_ps(t[4 * k + 1], t[4 * k + 3], _MM_SHUFFLE(1, 0, 1, 0));
          u[4 * k + 3] = _mm512_shuffle_ps(t[4 * k + 1], t[4 * k + 3], _MM_SHUFFLE(3, 2, 3, 2));
        }
        SPATTN_UNROLL for (int c = 0; c < 4; ++c) {
          const __m512 w0 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x44);
          const __m512 w1 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xEE);
          const __m512 w2 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x44);
          const __m512 w3 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xEE);
          float* base = kt + (x0 + c) * BC + j0;
          _mm512_storeu_ps(base, _mm512_shuffle_f32x4(w0, w2, 0x88));
          _mm512_storeu_ps(base + 4 * BC, _mm512_shuffle_f32x4(w0, w2, 0xDD));
          _mm512_storeu_ps(base + 8 * BC, _mm512_shuffle_f32x4(w1, w3, 0x88));
          _mm512_storeu_ps(base + 12 * BC, _mm512_shuffle_f32x4(w1, w3, 0xDD));
        }
      }
    }
    return;
  }
#endif
  pack_k_transposed_scalar<T>(row_ptr, n, d, kt);
}

// Where a tile's transposed keys are: K[j][x] of tile column j = v * W + i (lane i of vector v)
// is at[v][x * BC + i]. A packed tile (pack_k_transposed) has at[v] = kt + v * W; a tile gathered
// from whole-sequence panels (kernels/sparse_prefill.hpp) points each vector at its keys' panel.
struct k_columns {
  static constexpr int dims = 1;  // dimensions per stored row
  const float* at[BC / W];
  // Vector v of dimension x (x + half, half < dims).
  vfloat load(int v, index_t x, int) const { return simd::load(at[v] + x * BC); }
};

// The same for bf16 keys packed as transposed dimension pairs (pack_k_pairs_transposed): the
// 32-bit word (K[j][2 x2], K[j][2 x2 + 1]) of column j = v * W + i is at[v][x2 * BC + i]. A
// word's low half is dimension 2 x2 (<< 16 makes it fp32), its high half dimension 2 x2 + 1
// (masking the low half does): the same fp32 values as unpacked keys, so the same scores.
struct k_pair_columns {
  static constexpr int dims = 2;
  const std::uint32_t* at[BC / W];
  vfloat load(int v, index_t x, int half) const {
    const auto* p = reinterpret_cast<const std::int32_t*>(at[v]) + x / 2 * BC;
    // AVX2: load the words again for the odd half (an L1 hit) instead of keeping them live next
    // to the panel's 12 accumulators and operands; kept live, one accumulator went to the stack.
    if constexpr (W == 8)
      if (half != 0) asm("" : "+r"(p));
    const auto w = simd::vint::load_unaligned(p);
    return xsimd::bitwise_cast<vfloat>(
        half == 0 ? w << 16 : w & simd::vint(static_cast<std::int32_t>(0xFFFF0000u)));
  }
};

inline k_columns packed_columns(const float* kt) {
  k_columns c;
  for (int v = 0; v < BC / W; ++v) c.at[v] = kt + v * W;
  return c;
}

// An FMA operand reused by a panel's rows: held in a register under AVX2 (one load feeds R FMAs;
// GCC otherwise folds the load into every FMA and the panel becomes load-port bound). Under
// AVX-512 the compiler's choice is kept.
inline vfloat operand(vfloat v) {
  if constexpr (W == 8) return simd::pin(v);
  return v;
}

// S[R][BC] (columns col0 .. col0 + NV*W) = Q[R][d] . K^T, K^T from a k_columns or
// k_pair_columns (d a multiple of its dims). FMAs run in dimension order either way.
template <int R, int NV, class KC>
inline void qk_panel(const float* q, index_t ldq, const KC& kc, index_t d, float* s, int col0) {
  vfloat acc[R][NV];
  SPATTN_UNROLL for (int r = 0; r < R; ++r) {
    SPATTN_UNROLL for (int v = 0; v < NV; ++v) acc[r][v] = vfloat(0.0f);
  }
  for (index_t x = 0; x < d; x += KC::dims) {
    SPATTN_UNROLL for (int h = 0; h < KC::dims; ++h) {
      vfloat b[NV];
      SPATTN_UNROLL for (int v = 0; v < NV; ++v) b[v] = operand(kc.load(col0 / W + v, x, h));
      SPATTN_UNROLL for (int r = 0; r < R; ++r) {
        const vfloat a(q[r * ldq + x + h]);
        SPATTN_UNROLL for (int v = 0; v < NV; ++v) acc[r][v] = xsimd::fma(a, b[v], acc[r][v]);
      }
    }
  }
  SPATTN_UNROLL for (int r = 0; r < R; ++r) {
    SPATTN_UNROLL for (int v = 0; v < NV; ++v) simd::store(s + r * BC + col0 + v * W, acc[r][v]);
  }
}

// Packs a bf16 key tile as transposed dimension pairs: kp[x2 * BC + j] = (K[j][2 x2], K[j][2 x2
// + 1]) as one 32-bit word; columns j >= n are zero. d must be even.
template <class RowPtr>
inline void pack_k_pairs_transposed(RowPtr row_ptr, int n, index_t d, std::uint32_t* kp) {
  const index_t d2 = d / 2;
  if (d2 % 16 == 0) {
    // A pair is 32 bits: the fp32 in-register transpose over d / 2 "elements" moves them
    // bit-exactly (loads, shuffles and stores never look at the values).
    pack_k_transposed<float>([&](int j) { return reinterpret_cast<const float*>(row_ptr(j)); }, n,
                             d2, reinterpret_cast<float*>(kp));
    return;
  }
  for (int j = 0; j < BC; ++j) {
    for (index_t x2 = 0; x2 < d2; ++x2) {
      std::uint32_t w = 0;
      if (j < n) std::memcpy(&w, row_ptr(j) + 2 * x2, sizeof w);
      kp[x2 * BC + j] = w;
    }
  }
}

#if defined(__AVX512BF16__)
// bf16 x bf16 scores with AVX512-BF16 dot products (two products per lane per instruction, exact
// products, fp32 accumulation): twice the fp32 FMA rate, for estimation passes over bf16 inputs.
inline constexpr bool has_bf16_dot = true;

// S[R][col0 .. col0 + NV*W] = scale * Q[R][d] . K (q rows as bf16 pairs, ldq pairs apart).
template <int R, int NV>
inline void qk_panel_bf16(const std::uint32_t* q, index_t ldq, const std::uint32_t* kp, index_t d,
                          float scale, float* s, int col0) {
  __m512 acc[R][NV];
  SPATTN_UNROLL for (int r = 0; r < R; ++r) {
    SPATTN_UNROLL for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  }
  const std::uint32_t* kr = kp + col0;
  for (index_t x2 = 0; x2 < d / 2; ++x2, kr += BC) {
    __m512bh b[NV];
    SPATTN_UNROLL for (int v = 0; v < NV; ++v) b[v] = (__m512bh)_mm512_loadu_si512(kr + v * 16);
    SPATTN_UNROLL for (int r = 0; r < R; ++r) {
      const __m512bh a = (__m512bh)_mm512_set1_epi32(static_cast<int>(q[r * ldq + x2]));
      SPATTN_UNROLL for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], a, b[v]);
    }
  }
  const __m512 sc = _mm512_set1_ps(scale);
  SPATTN_UNROLL for (int r = 0; r < R; ++r) {
    SPATTN_UNROLL for (int v = 0; v < NV; ++v)
        _mm512_storeu_ps(s + r * BC + col0 + v * 16, _mm512_mul_ps(acc[r][v], sc));
  }
}
#else
inline constexpr bool has_bf16_dot = false;
#endif

// Where the V rows of a tile are. Packed per tile: fp32 rows `dpad` apart (v_packed). Read in
// place: fp32 rows (v_rows, d a multiple of W), or bf16 rows as 32-bit words (v_pair_rows, d a
// multiple of 2 W), whose low halves are the even dimensions and high halves the odd ones. The
// pair form accumulates O in pair layout: in each block of 2 W dimensions, the W even ones
// first, then the W odd ones (unpermute_pairs restores the order).
struct v_packed {
  const float* vp;
  index_t dpad;
  template <int NV>
  void load(int j, index_t d0, vfloat* b) const {
    const float* row = vp + j * dpad + d0;
    SPATTN_UNROLL for (int v = 0; v < NV; ++v) b[v] = simd::load(row + v * W);
  }
};
struct v_rows {
  const float* row[BC];
  template <int NV>
  void load(int j, index_t d0, vfloat* b) const {
    SPATTN_UNROLL for (int v = 0; v < NV; ++v) b[v] = simd::load(row[j] + d0 + v * W);
  }
};
struct v_pair_rows {
  const std::uint32_t* row[BC];
  template <int NV>
  void load(int j, index_t d0, vfloat* b) const {
    static_assert(NV % 2 == 0, "pairs come as even / odd vector pairs");
    const auto* words = reinterpret_cast<const std::int32_t*>(row[j]) + d0 / 2;
    for (int v = 0; v < NV; v += 2) {
      const auto w = simd::vint::load_unaligned(words + v / 2 * W);
      b[v] = xsimd::bitwise_cast<vfloat>(w << 16);
      b[v + 1] =
          xsimd::bitwise_cast<vfloat>(w & simd::vint(static_cast<std::int32_t>(0xFFFF0000u)));
    }
  }
};

// O[R][d0 .. d0 + NV*W] += P[R][0..ncols) . V[0..ncols)[...].
template <int R, int NV, class VS>
inline void pv_panel(const float* p, int ncols, const VS& vs, index_t dpad, float* o, index_t d0) {
  vfloat acc[R][NV];
  SPATTN_UNROLL for (int r = 0; r < R; ++r) {
    SPATTN_UNROLL for (int v = 0; v < NV; ++v) acc[r][v] = simd::load(o + r * dpad + d0 + v * W);
  }
  for (int j = 0; j < ncols; ++j) {
    vfloat b[NV];
    vs.template load<NV>(j, d0, b);
    SPATTN_UNROLL for (int v = 0; v < NV; ++v) b[v] = operand(b[v]);
    SPATTN_UNROLL for (int r = 0; r < R; ++r) {
      const vfloat a(p[r * BC + j]);
      SPATTN_UNROLL for (int v = 0; v < NV; ++v) acc[r][v] = xsimd::fma(a, b[v], acc[r][v]);
    }
  }
  SPATTN_UNROLL for (int r = 0; r < R; ++r) {
    SPATTN_UNROLL for (int v = 0; v < NV; ++v) simd::store(o + r * dpad + d0 + v * W, acc[r][v]);
  }
}

// Writes the first d values of an O row in pair layout (v_pair_rows) in dimension order.
inline void unpermute_pairs(const float* o, index_t d, float* out) {
  for (index_t b = 0; b < d; b += 2 * W)
    for (index_t i = 0; i < W; ++i) {
      out[b + 2 * i] = o[b + i];
      out[b + 2 * i + 1] = o[b + W + i];
    }
}

// Online softmax on one row of S (in place: S becomes P). `valid` leading columns count, the rest
// are masked (P is zero there). Updates m, l and rescales the output row. Returns false when the
// row is still fully masked (P is zero then). Only the vectors holding valid columns are
// exponentiated: short rows (a short cache, the last block of a chunk, diagonal tiles) skip the
// rest (a 8-token, 32-head decode call spent a third of its time here on masked columns).
inline bool softmax_row(float* s, int valid, float& m, float& l, float* o_row, index_t dpad) {
  const int vend = (valid + W - 1) / W * W;  // end of the vectors with valid columns
  for (int c = valid; c < vend; ++c) s[c] = neg_inf;
  for (int c = vend; c < BC; c += W) simd::store(s + c, vfloat(0.0f));
  if (vend == 0) return m != neg_inf;
  vfloat mx = simd::load(s);
  for (int c = W; c < vend; c += W) mx = xsimd::max(mx, simd::load(s + c));
  const float m_new = std::max(m, simd::hmax(mx));
  if (m_new == neg_inf) {
    std::fill(s, s + vend, 0.0f);
    return false;
  }
  const vfloat mv(m_new);
  vfloat sum(0.0f);
  for (int c = 0; c < vend; c += W) {
    const vfloat pv = simd::exp2_neg(simd::load(s + c) - mv);
    simd::store(s + c, pv);
    sum += pv;
  }
  const float alpha = m == neg_inf ? 0.0f : std::exp2(m - m_new);
  l = l * alpha + simd::hsum(sum);
  if (alpha != 1.0f) {
    const vfloat av(alpha);
    for (index_t x = 0; x < dpad; x += W) simd::store(o_row + x, simd::load(o_row + x) * av);
  }
  m = m_new;
  return true;
}

template <int R, class KC>
inline void qk_panel_all(const float* q, index_t ldq, const KC& kc, index_t d, float* s) {
  for (int c = 0; c < BC; c += QK_NV * W) qk_panel<R, QK_NV>(q, ldq, kc, d, s, c);
}

template <int R, class VS>
inline void pv_panel_all(const float* p, int ncols, const VS& vp, index_t dpad, float* o) {
  const index_t full = dpad / (PV_NV * W) * (PV_NV * W);
  for (index_t d0 = 0; d0 < full; d0 += PV_NV * W) pv_panel<R, PV_NV>(p, ncols, vp, dpad, o, d0);
  if constexpr (std::is_same_v<VS, v_pair_rows>) {  // dpad a multiple of 2 W
    if (dpad - full == 2 * W) pv_panel<R, 2>(p, ncols, vp, dpad, o, full);
  } else {
    switch ((dpad - full) / W) {
      case 1:
        pv_panel<R, 1>(p, ncols, vp, dpad, o, full);
        break;
      case 2:
        pv_panel<R, 2>(p, ncols, vp, dpad, o, full);
        break;
      case 3:
        pv_panel<R, 3>(p, ncols, vp, dpad, o, full);
        break;
      default:
        break;
    }
  }
}

// One packed key tile against a panel of R rows starting at row r0.
// valid[r] = number of leading tile columns row r0 + r may see (0..ncols).
template <int R, class KC, class VS>
inline void attend_panel(const float* qs, index_t dpad, index_t d, const KC& kt, const VS& vp,
                         const int* valid, const softmax_state& st, int r0, float* s) {
  int max_valid = 0;
  for (int r = 0; r < R; ++r) max_valid = std::max(max_valid, valid[r]);
  if (max_valid == 0) return;
  qk_panel_all<R>(qs + r0 * dpad, dpad, kt, d, s);
  for (int r = 0; r < R; ++r) {
    softmax_row(s + r * BC, valid[r], st.m[r0 + r], st.l[r0 + r], st.o + (r0 + r) * dpad, dpad);
  }
  pv_panel_all<R>(s, max_valid, vp, dpad, st.o + r0 * dpad);
}

// Runs a packed tile over all rows of the state. valid_of(r) gives row r's valid column count.
template <class KC, class VS, class ValidOf>
inline void attend_tile(const float* qs, index_t d, const KC& kt, const VS& vp,
                        const softmax_state& st, ValidOf valid_of, float* s_scratch) {
  int valid[MR];
  int r0 = 0;
  for (; r0 + MR <= st.rows; r0 += MR) {
    for (int r = 0; r < MR; ++r) valid[r] = valid_of(r0 + r);
    attend_panel<MR>(qs, st.dpad, d, kt, vp, valid, st, r0, s_scratch);
  }
  const int rest = st.rows - r0;
  for (int r = 0; r < rest; ++r) valid[r] = valid_of(r0 + r);
  switch (rest) {
    case 1:
      attend_panel<1>(qs, st.dpad, d, kt, vp, valid, st, r0, s_scratch);
      break;
    case 2:
      attend_panel<2>(qs, st.dpad, d, kt, vp, valid, st, r0, s_scratch);
      break;
    case 3:
      attend_panel<3>(qs, st.dpad, d, kt, vp, valid, st, r0, s_scratch);
      break;
    case 4:
      attend_panel<4>(qs, st.dpad, d, kt, vp, valid, st, r0, s_scratch);
      break;
    case 5:
      attend_panel<5>(qs, st.dpad, d, kt, vp, valid, st, r0, s_scratch);
      break;
    default:
      break;
  }
}

// Merges row r of the split-K partial results of `chunks` chunks, in chunk order (so the result
// never depends on which thread computed which chunk). part(ch) points at chunk ch's buffer:
// O [rows][dpad], then m [rows] (log2 units), then l [rows]. Writes the unnormalised sum to acc
// [d] and returns the merged (m, l) for finalize_row.
template <class PartPtr>
inline void merge_partials(PartPtr part, index_t chunks, int rows, int r, index_t d, index_t dpad,
                           float* acc, float& m, float& l) {
  m = neg_inf;
  for (index_t ch = 0; ch < chunks; ++ch) m = std::max(m, part(ch)[rows * dpad + r]);
  std::fill(acc, acc + d, 0.0f);
  l = 0.0f;
  if (m == neg_inf) return;
  for (index_t ch = 0; ch < chunks; ++ch) {
    const float* b = part(ch);
    const float mc = b[rows * dpad + r], lc = b[rows * dpad + rows + r];
    if (lc == 0.0f) continue;
    const float w = std::exp2(mc - m);
    l += lc * w;
    const float* o = b + r * dpad;
    for (index_t x = 0; x < d; ++x) acc[x] += w * o[x];
  }
}

// Writes O / l (fp32 -> T) and the LSE (natural log) of one row; a fully masked row gives zeros
// and LSE = -inf.
template <class T>
inline void finalize_row(const float* o, float m, float l, index_t d, T* out, float* lse) {
  if (l > 0.0f) {
    const float inv = 1.0f / l;
    for (index_t x = 0; x < d; ++x) out[x] = from_float<T>(o[x] * inv);
    if (lse) *lse = (m + std::log2(l)) * ln2;
  } else {
    for (index_t x = 0; x < d; ++x) out[x] = from_float<T>(0.0f);
    if (lse) *lse = neg_inf;
  }
}

}  // namespace spattn::kernels
