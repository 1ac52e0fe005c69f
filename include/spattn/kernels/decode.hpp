#pragma once
// Dense decoding (flash-decoding): a few new query tokens per sequence against a long KV cache.
// Keys are split into chunks (sized from the cache length alone) processed in parallel, each
// giving a partial (O, m, l); the partials are merged in chunk order, so the result never depends
// on the thread count. K and V are read in place in their storage type (fp16/bf16 converted in
// registers), once per GQA group.
#include <algorithm>
#include <type_traits>
#include <vector>

#include "spattn/kernels/options.hpp"
#include "spattn/kernels/tile.hpp"

namespace spattn {
namespace kernels {

inline constexpr index_t decode_chunk_keys = 512;      // keys per split-K task, long caches
inline constexpr index_t decode_min_chunk_keys = 256;  // shortest task of a shorter cache
inline constexpr index_t decode_min_chunks = 16;       // tasks a shorter cache is cut into
inline constexpr int decode_row_panel = 4;             // query rows sharing each K/V load

// Keys per split-K task for a sequence whose queries see `keys` keys: decode_chunk_keys from
// 16 x 512 keys up; below, about decode_min_chunks chunks of whole BC-key blocks, at least
// decode_min_chunk_keys, so a short cache still spreads over the threads (512 tokens were one
// task: 2 threads no faster than 1; now 2 tasks, 1.86x). Shorter chunks measured slower (64-key
// chunks: 1000 tokens on 2 threads +9%, 1 thread +3%). The length depends on the sequence only,
// never on the thread count, so results do not either.
inline index_t decode_chunk_length(index_t keys) {
  const index_t per = (keys + decode_min_chunks - 1) / decode_min_chunks;
  return std::clamp<index_t>((per + BC - 1) / BC * BC, decode_min_chunk_keys, decode_chunk_keys);
}

// Loads min(W, n) elements as fp32, zero-filling the rest (head_dim tails under AVX-512).
template <class T>
inline vfloat load_f32_n(const T* p, index_t n) {
  alignas(64) float tmp[W] = {};
  for (index_t i = 0; i < n; ++i) tmp[i] = to_float(p[i]);
  return vfloat::load_aligned(tmp);
}

inline constexpr int decode_prefetch_keys = 32;  // K rows fetched this many keys ahead

// Prefetches a row of `bytes` bytes into L1 (the cache streams K/V rows at a large stride, one
// KV head among many, which hardware prefetchers follow poorly).
inline void prefetch_row(const void* p, index_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (index_t o = 0; o < bytes; o += 64) _mm_prefetch(c + o, _MM_HINT_T0);
}

inline void prefetch_row_l2(const void* p, index_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (index_t o = 0; o < bytes; o += 64) _mm_prefetch(c + o, _MM_HINT_T1);
}

// Reads one byte of every cache line of [lo, hi), in address order: a sequential sweep that the
// hardware stream prefetcher follows at full bandwidth, unlike a strided per-head row walk.
inline void touch_lines(const char* lo, const char* hi) {
  int acc = 0;
  for (const char* p = lo; p < hi; p += 64) acc |= *reinterpret_cast<const volatile char*>(p);
  (void)acc;
}

// Prefetches the next block of a compact cache a few lines per key visited, i.e. spread evenly
// over the arithmetic on the current block. Under AVX-512 with 2-byte K/V the block walk was a
// demand sweep followed by the arithmetic, with no overlap between the two; prefetching the next
// block in one burst per block or per head filled the line-fill buffers and stalled the kernel's
// own loads (slower than the sweep). Spread out (2-core Xeon, f16, 32768 tokens): ~13 -> ~10 ms.
// fp32 measured no faster with it and keeps the sweep. Into L2 only (T2): a block (256 KiB at 8
// KV heads x 128 dims) never fits L1, so T0 lines could only displace the rows in use there; T2
// measured 3-8% faster than T0 in each of four interleaved rounds (medians of 8-10 runs each).
struct line_stream {
  const char* k = nullptr;  // next line of K's range
  const char* v = nullptr;  // next line of V's range (as long as K's)
  index_t left = 0;         // lines left in each range
  index_t rate = 0;         // lines of each range per key visited, 16.16 fixed point
  index_t credit = 0;       // lines owed, 16.16 fixed point

  // A fractional rate spreads the lines over the whole block: rounded up to whole lines per
  // visit the stream ended after ~2/3 of the block (2 lines per visit for 1.33 needed) and
  // measured 5-10% slower (f16 at 32768 / 131072 tokens, three rounds of 4-8 interleaved runs).
  void advance() {
    if (left <= 0) return;
    credit += rate;
    const index_t n = std::min(credit >> 16, left);
    credit -= n << 16;
    for (index_t i = 0; i < n; ++i) {
      _mm_prefetch(k + 64 * i, _MM_HINT_T2);
      _mm_prefetch(v + 64 * i, _MM_HINT_T2);
    }
    k += 64 * n;
    v += 64 * n;
    left -= n;
  }
};

// The kernels advance a local copy of the stream (kept in registers) and store it back once:
// through the pointer, every prefetch reloaded and stored its range cursor (perf: ~40% of the
// P.V loop's samples were in the stream's bookkeeping).
struct local_stream {
  line_stream* from;
  line_stream s;
  explicit local_stream(line_stream* p) : from(p) {
    if (p) s = *p;
  }
  ~local_stream() {
    if (from) *from = s;
  }
  local_stream(const local_stream&) = delete;
  local_stream& operator=(const local_stream&) = delete;
  void advance() {
    if (from) s.advance();
  }
};

template <int RP, int JK>
using step_sums = vfloat[RP][JK];

// Scores of RP rows against JK keys of a W-key group, at positions jj.. of the group, handed
// unreduced (a vector of partial sums per score, acc[r][u]) to sink. Each q load feeds JK FMAs.
template <int RP, int JK, bool PREFETCH, class T, class KeyPtr, class ValPtr, class Sink>
inline void decode_qk_step(const float* q, index_t dpad, index_t d, KeyPtr key, ValPtr val,
                           index_t b0, int nb, index_t avail, bool prefetch_v, int jg, int jj,
                           line_stream* ls, Sink&& sink) {
  const index_t row_bytes = d * static_cast<index_t>(sizeof(T));
  const index_t dfull = d / W * W;
  const T* kr[JK];
  local_stream stream(ls);
  SPATTN_UNROLL for (int u = 0; u < JK; ++u) {
    // Keys past the block reuse its last key: their scores are masked later.
    const index_t kt_idx = b0 + std::min(jg + jj + u, nb - 1);
    kr[u] = key(kt_idx);
    stream.advance();
    if (PREFETCH && jg + jj + u < nb) {
      // Far: this head's next block into L2 (the other heads' blocks come between).
      // Near: K a few keys ahead, and V for the P.V pass right after, into L1.
      if (kt_idx - b0 + BC < avail) {
        prefetch_row_l2(key(kt_idx + BC), row_bytes);
        if (prefetch_v) prefetch_row_l2(val(kt_idx + BC), row_bytes);
      }
      if (kt_idx - b0 + decode_prefetch_keys < avail) {
        prefetch_row(key(kt_idx + decode_prefetch_keys), row_bytes);
      }
      if (prefetch_v) prefetch_row(val(kt_idx), row_bytes);
    }
  }
  vfloat acc[RP][JK];
  SPATTN_UNROLL for (int r = 0; r < RP; ++r) {
    SPATTN_UNROLL for (int u = 0; u < JK; ++u) acc[r][u] = vfloat(0.0f);
  }
  for (index_t x = 0; x < dfull; x += W) {
    vfloat kv[JK];
    SPATTN_UNROLL for (int u = 0; u < JK; ++u) kv[u] = simd::load_f32(kr[u] + x);
    SPATTN_UNROLL for (int r = 0; r < RP; ++r) {
      const vfloat qv = simd::pin(simd::load(q + r * dpad + x));  // one load, JK FMAs
      SPATTN_UNROLL for (int u = 0; u < JK; ++u) acc[r][u] = xsimd::fma(qv, kv[u], acc[r][u]);
    }
  }
  if (dfull < d) {  // head_dim tail (not a multiple of W)
    vfloat kv[JK];
    SPATTN_UNROLL for (int u = 0; u < JK; ++u) kv[u] = load_f32_n(kr[u] + dfull, d - dfull);
    SPATTN_UNROLL for (int r = 0; r < RP; ++r) {
      const vfloat qv = simd::load(q + r * dpad + dfull);
      SPATTN_UNROLL for (int u = 0; u < JK; ++u) acc[r][u] = xsimd::fma(qv, kv[u], acc[r][u]);
    }
  }
  sink(acc);
}

// How the W keys of a group are split into decode_qk_step calls for an RP-row panel: step S
// covers keys [qk_step_first, + qk_step_keys). L1 delivers about one vector load per cycle on
// Zen 3 (measured), so under AVX2 a 4-row panel takes 3 keys per q load (12 sums, 3 keys and 1 q
// row: all 16 registers) where 2 keys left the FMAs waiting on q loads (f16 in L3: ~+10%).
// Other panels take decode_qk_keys keys per step.
inline constexpr int decode_qk_keys = W == 16 ? 4 : 2;
static_assert(W % decode_qk_keys == 0);
template <int RP>
inline constexpr bool qk_three_keys = W == 8 && RP == 4;  // steps of 3, 3, 2 keys
template <int RP>
inline constexpr int qk_steps = qk_three_keys<RP> ? 3 : W / decode_qk_keys;
template <int RP, int S>
inline constexpr int qk_step_keys = qk_three_keys<RP> ? (S < 2 ? 3 : 2) : decode_qk_keys;
template <int RP, int S>
inline constexpr int qk_step_first = (qk_three_keys<RP> ? 3 : decode_qk_keys) * S;

// Calls f(integral_constant<int, S>) for S = 0 .. N-1.
template <int N, class F>
inline void for_steps(F&& f) {
  [&]<int... S>(std::integer_sequence<int, S...>) {
    (f(std::integral_constant<int, S>{}), ...);
  }
  (std::make_integer_sequence<int, N>{});
}

// Scores of RP rows against nb keys: s[r][j] = q_r . k_j (q pre-scaled). Keys up to `avail`
// after b0 exist (for prefetching K ahead); when `val` rows are given they are prefetched too,
// for the P.V pass that follows.
template <int RP, bool PREFETCH, class T, class KeyPtr, class ValPtr>
inline void decode_qk(const float* q, index_t dpad, index_t d, KeyPtr key, ValPtr val, index_t b0,
                      int nb, index_t avail, bool prefetch_v, float* s, line_stream* ls = nullptr) {
#if defined(__AVX512F__)
  // Each 4-key step's sums are reduced at once, half-way (sum4_within_lanes), in registers; a
  // group's four halves are then finished together. Storing all 16 x RP sums and reducing them
  // afterwards (the AVX2 way below) cost 16 stores and loads per step and twice the shuffles:
  // 2-core Xeon, f16, 8 rounds interleaved: 4096 tokens (L3-resident) 0.857 -> 0.787 ms.
  static_assert(qk_steps<RP> == 4 && decode_qk_keys == 4);
  for (int jg = 0; jg < nb; jg += W) {
    __m512 half[4][RP];
    for_steps<4>([&](auto S) {
      auto reduce = [&](const step_sums<RP, 4>& acc) {
        SPATTN_UNROLL for (int r = 0; r < RP; ++r) {
          half[S()][r] = simd::sum4_within_lanes(acc[r][0], acc[r][1], acc[r][2], acc[r][3]);
        }
      };
      decode_qk_step<RP, 4, PREFETCH, T>(q, dpad, d, key, val, b0, nb, avail, prefetch_v, jg,
                                         4 * S(), ls, reduce);
    });
    SPATTN_UNROLL for (int r = 0; r < RP; ++r) {
      _mm512_storeu_ps(s + r * BC + jg,
                       simd::sum4_across_lanes(half[0][r], half[1][r], half[2][r], half[3][r]));
    }
  }
#else
  alignas(64) float t[RP][W][W];
  for (int jg = 0; jg < nb; jg += W) {
    for_steps<qk_steps<RP> >([&](auto S) {
      constexpr int first = qk_step_first<RP, S()>, keys = qk_step_keys<RP, S()>;
      auto keep = [&](const step_sums<RP, keys>& acc) {
        SPATTN_UNROLL for (int r = 0; r < RP; ++r) {
          SPATTN_UNROLL for (int u = 0; u < keys; ++u) simd::store(t[r][first + u], acc[r][u]);
        }
      };
      decode_qk_step<RP, keys, PREFETCH, T>(q, dpad, d, key, val, b0, nb, avail, prefetch_v, jg,
                                            first, ls, keep);
    });
    SPATTN_UNROLL for (int r = 0; r < RP; ++r) {
      vfloat rows[W];
      SPATTN_UNROLL for (int jj = 0; jj < W; ++jj) rows[jj] = vfloat::load_aligned(t[r][jj]);
      simd::store(s + r * BC + jg, simd::transpose_sum(rows));
    }
  }
#endif
}

// O[RP][d0 .. d0 + NV*W] += P[RP][0..n) . V[b0 .. b0+n)[...]; TAIL: last vector is partial.
template <int RP, int NV, bool TAIL, class T, class ValPtr>
inline void decode_pv(const float* p, int n, ValPtr val, index_t b0, index_t d, index_t dpad,
                      float* o, index_t d0, line_stream* ls) {
  vfloat acc[RP][NV];
  SPATTN_UNROLL for (int r = 0; r < RP; ++r) {
    SPATTN_UNROLL for (int v = 0; v < NV; ++v) acc[r][v] = simd::load(o + r * dpad + d0 + v * W);
  }
  local_stream stream(ls);
  for (int j = 0; j < n; ++j) {
    const T* vr = val(b0 + j) + d0;
    stream.advance();
    vfloat b[NV];
    SPATTN_UNROLL for (int v = 0; v < NV; ++v) {
      if constexpr (TAIL) {
        b[v] = v + 1 < NV ? simd::load_f32(vr + v * W) : load_f32_n(vr + v * W, d - d0 - v * W);
      } else {
        b[v] = simd::load_f32(vr + v * W);
      }
    }
    SPATTN_UNROLL for (int r = 0; r < RP; ++r) {
      const vfloat a(p[r * BC + j]);
      SPATTN_UNROLL for (int v = 0; v < NV; ++v) acc[r][v] = xsimd::fma(a, b[v], acc[r][v]);
    }
  }
  SPATTN_UNROLL for (int r = 0; r < RP; ++r) {
    SPATTN_UNROLL for (int v = 0; v < NV; ++v) simd::store(o + r * dpad + d0 + v * W, acc[r][v]);
  }
}

template <int RP, int NV, class T, class ValPtr>
inline void decode_pv_chunk(const float* p, int n, ValPtr val, index_t b0, index_t d, index_t dpad,
                            float* o, index_t d0, line_stream* ls) {
  if (d0 + NV * W > d) {
    decode_pv<RP, NV, true, T>(p, n, val, b0, d, dpad, o, d0, ls);
  } else {
    decode_pv<RP, NV, false, T>(p, n, val, b0, d, dpad, o, d0, ls);
  }
}

template <int RP, class T, class ValPtr>
inline void decode_pv_all(const float* p, int n, ValPtr val, index_t b0, index_t d, index_t dpad,
                          float* o, line_stream* ls = nullptr) {
  const index_t full = dpad / (PV_NV * W) * (PV_NV * W);
  for (index_t d0 = 0; d0 < full; d0 += PV_NV * W)
    decode_pv_chunk<RP, PV_NV, T>(p, n, val, b0, d, dpad, o, d0, ls);
  switch ((dpad - full) / W) {
    case 1:
      decode_pv_chunk<RP, 1, T>(p, n, val, b0, d, dpad, o, full, ls);
      break;
    case 2:
      decode_pv_chunk<RP, 2, T>(p, n, val, b0, d, dpad, o, full, ls);
      break;
    case 3:
      decode_pv_chunk<RP, 3, T>(p, n, val, b0, d, dpad, o, full, ls);
      break;
    default:
      break;
  }
}

template <int RP, bool PREFETCH, class T, class KeyPtr, class ValPtr>
inline void decode_panel(const float* q, index_t d, KeyPtr key, ValPtr val, index_t b0, int nb,
                         index_t avail, const int* valid, const softmax_state& st, int r0, float* s,
                         line_stream* ls) {
  int max_valid = 0;
  for (int r = 0; r < RP; ++r) max_valid = std::max(max_valid, valid[r]);
  if (max_valid == 0) return;
  decode_qk<RP, PREFETCH, T>(q + r0 * st.dpad, st.dpad, d, key, val, b0, nb, avail, r0 == 0, s, ls);
  for (int r = 0; r < RP; ++r) {
    softmax_row(s + r * BC, valid[r], st.m[r0 + r], st.l[r0 + r], st.o + (r0 + r) * st.dpad,
                st.dpad);
  }
  decode_pv_all<RP, T>(s, max_valid, val, b0, d, st.dpad, st.o + r0 * st.dpad, ls);
}

// Attends st.rows packed query rows (pre-scaled by scale*log2e) to keys [k0, k1) read through
// key(t) / val(t). valid_of(r, b0, nb) gives how many leading keys of block [b0, b0+nb) row r
// may see. Accumulates into st (online softmax), so ranges can be chained.
// PREFETCH: fetch K and V rows ahead of use (rows gathered from anywhere, as in sparse
// decoding); prefetch_end (>= k1): keys before it exist and may be prefetched. Without it the
// caller has brought the rows in (dense decoding sweeps each block first) or streams them (ls:
// advanced once per key visited).
template <class T, bool PREFETCH = true, class KeyPtr, class ValPtr, class ValidOf>
void decode_range(const float* q, index_t d, KeyPtr key, ValPtr val, index_t k0, index_t k1,
                  const softmax_state& st, ValidOf valid_of, float* s, index_t prefetch_end,
                  line_stream* ls = nullptr) {
  int valid[decode_row_panel];
  for (index_t b0 = k0; b0 < k1; b0 += BC) {
    const int nb = static_cast<int>(std::min<index_t>(BC, k1 - b0));
    for (int r0 = 0; r0 < st.rows; r0 += decode_row_panel) {
      const int rp = std::min(decode_row_panel, st.rows - r0);
      for (int r = 0; r < rp; ++r) valid[r] = valid_of(r0 + r, b0, nb);
      switch (rp) {
        case 4:
          decode_panel<4, PREFETCH, T>(q, d, key, val, b0, nb, prefetch_end - b0, valid, st, r0, s,
                                       ls);
          break;
        case 3:
          decode_panel<3, PREFETCH, T>(q, d, key, val, b0, nb, prefetch_end - b0, valid, st, r0, s,
                                       ls);
          break;
        case 2:
          decode_panel<2, PREFETCH, T>(q, d, key, val, b0, nb, prefetch_end - b0, valid, st, r0, s,
                                       ls);
          break;
        default:
          decode_panel<1, PREFETCH, T>(q, d, key, val, b0, nb, prefetch_end - b0, valid, st, r0, s,
                                       ls);
          break;
      }
    }
  }
}

template <class T, bool PREFETCH = true, class KeyPtr, class ValPtr, class ValidOf>
void decode_range(const float* q, index_t d, KeyPtr key, ValPtr val, index_t k0, index_t k1,
                  const softmax_state& st, ValidOf valid_of, float* s) {
  decode_range<T, PREFETCH>(q, d, key, val, k0, k1, st, valid_of, s, k1);
}

// Keys per P.V step in decode_block_heads: every KV head's step is done before the next one, so
// V is consumed in address order in runs of this many token rows. Short runs keep the walk
// sequential but reload the O accumulators every run (in L1, 4 rows x 128 f16: 8-key runs ran
// the P.V loop at ~75% of the FMA rate, whole 64-key blocks at ~100%). Zen 3, 2 threads, 2 MiB
// pages: 2-byte K/V at 32768 tokens ~18 GB/s with 8 rows, ~19 with 32, ~21-23 with the whole
// block; f32 rows are 4 KiB apart for 8 KV heads (every row of a head in the same L1 sets) and
// halve in speed with whole blocks, so f32 keeps 8 (~+15% over 16 measured earlier).
template <class T>
inline constexpr int decode_pv_step = sizeof(T) <= 2 ? BC : 8;
// K rows are prefetched this many tokens ahead (into the next block at its end); V is left to the
// hardware prefetchers, which on Zen 3 measured faster than prefetching it too (f16 at 32768
// tokens: ~17.9 vs ~16.2 GB/s).
inline constexpr int decode_key_ahead = 16;

// One block [b0, b0 + nb) of a token-major cache, all KV heads, in address order: the scores of
// each W-key group are computed for every head before the next group, and P.V likewise per
// decode_pv_step keys, so the hardware prefetchers stream the cache while the arithmetic runs
// (instead of a sweep followed by a per-head walk). qs: per KV head [rows][dpad]; s: per KV head
// [rows][BC]; state(h) and key(h, t) / val(h, t) as in decode_range; keys before `avail` exist.
template <class T, class KeyOf, class ValOf, class StateOf, class ValidOf>
void decode_block_heads(const float* qs, index_t d, index_t dpad, int rows, index_t kv_heads,
                        KeyOf key, ValOf val, index_t b0, int nb, index_t avail, StateOf state,
                        ValidOf valid_of, float* s) {
  const index_t row_bytes = d * static_cast<index_t>(sizeof(T));
  const index_t head_q = rows * dpad, head_s = static_cast<index_t>(rows) * BC;
  // Panel dispatch kept local like decode_range's: one shared out-of-line helper for both changed
  // GCC's inlining (decode_pv no longer inlined) and measured 5-12% slower on dense and Quest
  // decoding at 32768 tokens.
  auto panels = [&](auto&& f) {
    for (int r0 = 0; r0 < rows; r0 += decode_row_panel) {
      const int rp = std::min(decode_row_panel, rows - r0);
      switch (rp) {
        case 4:
          f(std::integral_constant<int, 4>{}, r0);
          break;
        case 3:
          f(std::integral_constant<int, 3>{}, r0);
          break;
        case 2:
          f(std::integral_constant<int, 2>{}, r0);
          break;
        default:
          f(std::integral_constant<int, 1>{}, r0);
          break;
      }
    }
  };
  for (int jg = 0; jg < nb; jg += W) {
    const int ng = std::min(W, nb - jg);
    for (index_t h = 0; h < kv_heads; ++h) {
      auto kr = [&](index_t t) { return key(h, t); };
      for (int j = 0; j < ng; ++j) {
        const index_t ahead = b0 + jg + j + decode_key_ahead;
        if (ahead < avail) prefetch_row(key(h, ahead), row_bytes);
      }
      panels([&](auto RP, int r0) {
        decode_qk<RP(), false, T>(qs + h * head_q + r0 * dpad, dpad, d, kr, kr, b0 + jg, ng,
                                  b0 + jg + ng, false, s + h * head_s + r0 * BC + jg);
      });
    }
  }
  int max_valid = 0;
  for (index_t h = 0; h < kv_heads; ++h) {
    const softmax_state st = state(h);
    for (int r = 0; r < rows; ++r) {
      const int valid = valid_of(r, b0, nb);
      max_valid = std::max(max_valid, valid);
      softmax_row(s + h * head_s + r * BC, valid, st.m[r], st.l[r], st.o + r * dpad, dpad);
    }
  }
  for (int j0 = 0; j0 < max_valid; j0 += decode_pv_step<T>) {
    const int nj = std::min(decode_pv_step<T>, max_valid - j0);
    for (index_t h = 0; h < kv_heads; ++h) {
      auto vr = [&](index_t t) { return val(h, t); };
      const softmax_state st = state(h);
      panels([&](auto RP, int r0) {
        decode_pv_all<RP(), T>(s + h * head_s + r0 * BC + j0, nj, vr, b0 + j0, d, dpad,
                               st.o + r0 * dpad);
      });
    }
  }
}

// How dense decoding walks a token-major cache, chosen per target by measurement. AVX2 (Zen 3):
// decode_block_heads, heads interleaved in address order (f16 / f32 at 32768 tokens ~15 ->
// ~17.5 / ~19.5 GB/s on 2 cores). AVX-512: walk each block head by head, after sweeping it (fp32)
// or while streaming the next one in (2-byte K/V, decode_stream_next_block); measured best on
// Zen 4 earlier, and the interleaved order was no faster on two Intel Xeon hosts.
inline constexpr bool decode_interleave_heads = W == 8;
// Whether the head-by-head walk streams the next block in while it works (line_stream) instead of
// sweeping each block before its arithmetic: 2-byte K/V only (fp32 measured no faster).
template <class T>
inline constexpr bool decode_stream_next_block = sizeof(T) <= 2;

// A split-K task: keys [k0, k1) of one sequence, for every KV head. Walking all heads of a
// token block together reads the cache ([tokens, heads, d]) as one sequential stream.
struct decode_item {
  index_t seq, k0, k1, slot;  // slot: index of the first partial result (one per KV head)
};

struct decode_group {
  index_t seq, first_item, chunks;
};

template <class TQ, class TKV, class TO>
void decode_sequences(const tensor_view<const TQ>& q, const tensor_view<const TKV>& k,
                      const tensor_view<const TKV>& v, const tensor_view<TO>& out,
                      const lse_view& lse, const detail::resolved_call& c,
                      const attention_options& opt) {
  const index_t d = c.head_dim, dpad = padded_dim(d);
  const index_t row_bytes = d * static_cast<index_t>(sizeof(TKV));
  // Bytes spanned by a BC-token block of all KV heads; compact: about the rows' own bytes.
  auto block_span = [&](const auto& x) {
    return ((BC - 1) * x.token_stride() + (c.kv_heads - 1) * x.head_stride()) *
               static_cast<index_t>(sizeof(TKV)) +
           row_bytes;
  };
  const bool compact = block_span(k) + block_span(v) <= 2 * BC * c.kv_heads * row_bytes;
  std::vector<decode_item> items;
  std::vector<decode_group> groups;
  index_t max_rows = 0;  // query rows per KV head: group * q_len
  for (index_t s = 0; s < static_cast<index_t>(c.seqs.size()); ++s) {
    const auto& sp = c.seqs[static_cast<std::size_t>(s)];
    if (sp.q_len == 0) continue;
    max_rows = std::max(max_rows, sp.q_len * c.group);
    const index_t k_end = opt.causal ? sp.q_offset + sp.q_len : sp.k_len;
    const index_t chunk = decode_chunk_length(k_end);
    const index_t chunks = (k_end + chunk - 1) / chunk;
    groups.push_back({s, static_cast<index_t>(items.size()), chunks});
    for (index_t ch = 0; ch < chunks; ++ch) {
      const index_t k0 = ch * chunk;
      items.push_back(
          {s, k0, std::min(k_end, k0 + chunk), static_cast<index_t>(items.size()) * c.kv_heads});
    }
  }
  // Queries packed once (fp32, pre-scaled, head_dim padded), not once per chunk: a sequence's
  // query head h holds rows [(q_begin * heads + h * q_len), + q_len) of [., dpad], so the
  // group * q_len rows of each KV head are contiguous.
  const float qscale = c.scale * log2e;
  simd::aligned_buffer qpack(static_cast<std::size_t>(q.tokens() * c.heads * dpad));
  opt.exec.parallel_for(static_cast<index_t>(groups.size()), [&](index_t gi) {
    const auto& sp = c.seqs[static_cast<std::size_t>(groups[static_cast<std::size_t>(gi)].seq)];
    for (index_t h = 0; h < c.heads; ++h) {
      pack_rows<TQ>([&](int j) { return q.row(sp.q_begin + j, h); }, static_cast<int>(sp.q_len), d,
                    dpad, qscale, qpack.data() + (sp.q_begin * c.heads + h * sp.q_len) * dpad);
    }
  });
  // Partial results: per (item, KV head), O [rows][dpad] then m [rows] then l [rows].
  const index_t stride = max_rows * (dpad + 2);
  simd::aligned_buffer partial(static_cast<std::size_t>(items.size() * c.kv_heads * stride));
  const bool causal = opt.causal;

  opt.exec.parallel_for(static_cast<index_t>(items.size()), [&](index_t i) {
    const auto& it = items[static_cast<std::size_t>(i)];
    const auto& sp = c.seqs[static_cast<std::size_t>(it.seq)];
    const int rows = static_cast<int>(sp.q_len * c.group);
    const float* qs = qpack.data() + sp.q_begin * c.heads * dpad;
    thread_local simd::aligned_buffer sbuf;
    sbuf.resize(
        static_cast<std::size_t>(std::max<index_t>(decode_row_panel, c.kv_heads * rows) * BC));
    auto state = [&](index_t kvh) {
      float* base = partial.data() + (it.slot + kvh) * stride;
      return softmax_state{base, base + rows * dpad, base + rows * dpad + rows, rows, dpad};
    };
    for (index_t kvh = 0; kvh < c.kv_heads; ++kvh) state(kvh).reset();
    auto valid_of = [&](int r, index_t b0, int nb) {
      if (!causal) return nb;
      const index_t pos = sp.q_offset + r % sp.q_len;
      return static_cast<int>(std::clamp<index_t>(pos - b0 + 1, 0, nb));
    };
    if (compact && decode_interleave_heads) {
      for (index_t b0 = it.k0; b0 < it.k1; b0 += BC) {
        const int nb = static_cast<int>(std::min<index_t>(BC, it.k1 - b0));
        decode_block_heads<TKV>(
            qs, d, dpad, rows, c.kv_heads,
            [&](index_t h, index_t t) { return k.row(sp.k_begin + t, h); },
            [&](index_t h, index_t t) { return v.row(sp.k_begin + t, h); }, b0, nb, it.k1, state,
            valid_of, sbuf.data());
      }
      return;
    }
    // A token-major cache holds a block's rows of all KV heads in one compact range per tensor.
    auto first_line = [&](const auto& x, index_t t) {
      return reinterpret_cast<const char*>(x.row(sp.k_begin + t, 0));
    };
    auto past_line = [&](const auto& x, index_t t) {
      return reinterpret_cast<const char*>(x.row(sp.k_begin + t, c.kv_heads - 1)) + row_bytes;
    };
    const bool stream = compact && decode_stream_next_block<TKV>;
    const index_t panels = (rows + decode_row_panel - 1) / decode_row_panel;
    const index_t pv_chunks = (dpad + PV_NV * W - 1) / (PV_NV * W);
    line_stream ls;
    for (index_t b0 = it.k0; b0 < it.k1; b0 += BC) {
      const index_t b1 = std::min(it.k1, b0 + BC);
      // Sweep the block's ranges in address order first (the sweep streams at full bandwidth and
      // the per-head walk below then hits cache; ~20% faster at 32768 tokens than per-row software
      // prefetching, whose instructions cost as much as the arithmetic), or, streaming, only the
      // first block: each block's walk prefetches the next one. Other layouts keep the per-row
      // prefetching.
      if (compact && (!stream || b0 == it.k0)) {
        touch_lines(first_line(k, b0), past_line(k, b1 - 1));
        touch_lines(first_line(v, b0), past_line(v, b1 - 1));
      }
      if (stream) {
        ls = {};
        if (b1 < it.k1) {
          const index_t n1 = std::min(it.k1, b1 + BC);
          ls.k = first_line(k, b1);
          ls.v = first_line(v, b1);
          // Compact ranges of K and V span the same bytes; min() keeps both inside theirs.
          ls.left = std::min((past_line(k, n1 - 1) - ls.k + 63) / 64,
                             (past_line(v, n1 - 1) - ls.v + 63) / 64);
          // Key visits in this block: every head and panel scores each key once and runs
          // pv_chunks P.V passes over it.
          const index_t visits = c.kv_heads * (b1 - b0) * panels * (1 + pv_chunks);
          ls.rate = ((ls.left << 16) + visits - 1) / visits;
        }
      }
      for (index_t kvh = 0; kvh < c.kv_heads; ++kvh) {
        auto key = [&](index_t t) { return k.row(sp.k_begin + t, kvh); };
        auto val = [&](index_t t) { return v.row(sp.k_begin + t, kvh); };
        const float* qh = qs + kvh * rows * dpad;
        if (compact) {
          decode_range<TKV, false>(qh, d, key, val, b0, b1, state(kvh), valid_of, sbuf.data(), b1,
                                   stream ? &ls : nullptr);
        } else {
          decode_range<TKV>(qh, d, key, val, b0, b1, state(kvh), valid_of, sbuf.data(),
                            std::min(it.k1, b1 + 2 * BC));
        }
      }
    }
  });

  // Merge the chunks of each (sequence, KV head) in chunk order.
  const index_t n_merge = static_cast<index_t>(groups.size()) * c.kv_heads;
  opt.exec.parallel_for(n_merge, [&](index_t gi) {
    const auto& gr = groups[static_cast<std::size_t>(gi / c.kv_heads)];
    const index_t kvh = gi % c.kv_heads;
    const auto& sp = c.seqs[static_cast<std::size_t>(gr.seq)];
    const int rows = static_cast<int>(sp.q_len * c.group);
    auto part = [&](index_t ch) {
      return partial.data() +
             (items[static_cast<std::size_t>(gr.first_item + ch)].slot + kvh) * stride;
    };
    thread_local std::vector<float> acc;
    acc.assign(static_cast<std::size_t>(dpad), 0.0f);
    for (int r = 0; r < rows; ++r) {
      float m, l;
      merge_partials(part, gr.chunks, rows, r, d, dpad, acc.data(), m, l);
      const index_t g = r / sp.q_len, i = r % sp.q_len;
      const index_t h = kvh * c.group + g, t = sp.q_begin + i;
      finalize_row(acc.data(), m, l, d, out.row(t, h), lse.empty() ? nullptr : &lse.at(t, h));
    }
  });
}

}  // namespace kernels

// Dense decoding: the same contract as prefill() (causal, bottom-right aligned, optional LSE),
// tuned for few queries per sequence against a long cache (split along keys).
template <class Q, class K, class V, class O>
void decode(tensor_view<Q> q, tensor_view<K> k, tensor_view<V> v, tensor_view<O> out,
            lse_view lse = {}, const attention_options& opt = {}) {
  detail::static_check_views<Q, K, V, O>();
  auto c = detail::check_attention_args(as_const(q), as_const(k), as_const(v), out, lse, opt);
  c.seqs = {detail::single_sequence(q.tokens(), k.tokens(), opt)};
  kernels::decode_sequences(as_const(q), as_const(k), as_const(v), out, lse, c, opt);
}

template <class Q, class K, class V, class O>
void decode(tensor_view<Q> q, tensor_view<K> k, tensor_view<V> v, tensor_view<O> out,
            const varlen_batch& batch, lse_view lse = {}, const attention_options& opt = {}) {
  detail::static_check_views<Q, K, V, O>();
  auto c = detail::check_attention_args(as_const(q), as_const(k), as_const(v), out, lse, opt);
  require(opt.q_offset == -1, "q_offset", "-1 for varlen batches (offsets come from lengths)",
          opt.q_offset);
  c.seqs = detail::resolve_varlen(batch, q.tokens(), k.tokens(), opt.causal);
  kernels::decode_sequences(as_const(q), as_const(k), as_const(v), out, lse, c, opt);
}

}  // namespace spattn
