#pragma once
// SIMD helpers on top of xsimd, compiled for the build's target (-march=native in our builds).
// The vector width W is a compile-time constant; loops are written in units of W floats.
#include <immintrin.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <new>
#include <xsimd/xsimd.hpp>

#include "spattn/core/dtype.hpp"

// Put before a loop over register-blocked accumulators or operands (arrays with compile-time
// bounds): the arrays stay in registers only when such loops are fully unrolled. GCC does that
// at -O3 by itself but not at -O2 (CMake's RelWithDebInfo, distribution builds), where the
// arrays lived on the stack and dense prefill / decode ran 3.4x / 1.7x slower, the FMA ceiling
// loop 5x. The pragma asks for the unrolling at any optimisation level.
#if defined(__clang__)
#define SPATTN_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define SPATTN_UNROLL _Pragma("GCC unroll 16")
#else
#define SPATTN_UNROLL
#endif

namespace spattn::simd {

using vfloat = xsimd::batch<float>;
using vint = xsimd::batch<std::int32_t>;
inline constexpr int W = static_cast<int>(vfloat::size);

inline vfloat load(const float* p) {
  return vfloat::load_unaligned(p);
}
inline void store(float* p, vfloat v) {
  v.store_unaligned(p);
}
inline vfloat splat(float x) {
  return vfloat(x);
}

// Loads W elements of storage type T as fp32 (F16C / AVX-512 conversions where present).
inline vfloat load_f32(const float* p) {
  return load(p);
}

// xsimd picks the widest instruction set the target has, so the preprocessor tells which
// width W is: 16 under AVX-512, 8 under AVX/AVX2.
inline vfloat load_f32(const f16* p) {
#if defined(__AVX512F__)
  static_assert(W == 16);
  return vfloat(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))));
#elif defined(__AVX__) && defined(__F16C__)
  static_assert(W == 8);
  return vfloat(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
#else
  alignas(64) float tmp[W];
  for (int i = 0; i < W; ++i) tmp[i] = to_float(p[i]);
  return vfloat::load_aligned(tmp);
#endif
}

inline vfloat load_f32(const bf16* p) {
#if defined(__AVX512F__)
  static_assert(W == 16);
  const __m512i x = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return vfloat(_mm512_castsi512_ps(_mm512_slli_epi32(x, 16)));
#elif defined(__AVX2__)
  static_assert(W == 8);
  const __m256i x = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return vfloat(_mm256_castsi256_ps(_mm256_slli_epi32(x, 16)));
#else
  alignas(64) float tmp[W];
  for (int i = 0; i < W; ++i) tmp[i] = to_float(p[i]);
  return vfloat::load_aligned(tmp);
#endif
}

// Stores W fp32 values as fp16 (round to nearest even; F16C / AVX-512 where present).
inline void store_f16(f16* p, vfloat v) {
#if defined(__AVX512F__)
  static_assert(W == 16);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                      _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#elif defined(__AVX__) && defined(__F16C__)
  static_assert(W == 8);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                   _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#else
  alignas(64) float tmp[W];
  v.store_aligned(tmp);
  for (int i = 0; i < W; ++i) p[i] = to_f16(tmp[i]);
#endif
}

// Converts n elements of T to fp32 (n any size; vectorised body, scalar tail).
template <class T>
inline void convert_to_f32(const T* src, float* dst, std::ptrdiff_t n) {
  std::ptrdiff_t i = 0;
  for (; i + W <= n; i += W) store(dst + i, load_f32(src + i));
  for (; i < n; ++i) dst[i] = to_float(src[i]);
}

// Converts n fp32 values to T.
template <class T>
inline void convert_from_f32(const float* src, T* dst, std::ptrdiff_t n) {
  for (std::ptrdiff_t i = 0; i < n; ++i) dst[i] = from_float<T>(src[i]);
}

// Keeps v in a register: stops the compiler from folding a reused load into each FMA as a
// memory operand (which makes a loop load-port bound).
inline vfloat pin(vfloat v) {
  typename vfloat::register_type r = v;
#if defined(__AVX512F__)
  asm("" : "+v"(r));
#elif defined(__AVX__) || defined(__SSE2__)
  asm("" : "+x"(r));
#endif
  return vfloat(r);
}

inline float hmax(vfloat v) {
  alignas(64) float t[W];
  v.store_aligned(t);
  float m = t[0];
  for (int i = 1; i < W; ++i) m = t[i] > m ? t[i] : m;
  return m;
}

inline float hsum(vfloat v) {
  return xsimd::hadd(v);
}

#if defined(__AVX__)
// Sums of 8 vectors, one per lane: result[i] = sum of h[i]'s lanes.
inline __m256 transpose_sum8(const __m256* h) {
  const __m256 t0 = _mm256_hadd_ps(h[0], h[1]), t1 = _mm256_hadd_ps(h[2], h[3]);
  const __m256 t2 = _mm256_hadd_ps(h[4], h[5]), t3 = _mm256_hadd_ps(h[6], h[7]);
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}
#endif

#if defined(__AVX512F__)
// The AVX-512 lane-sum tree in two halves, so a kernel can run the first half as soon as four
// accumulators are done (keeping 4 of them live instead of 16). Only in-lane and 128-bit-lane
// shuffles: 30 shuffles and 15 adds per 16 sums, where halving to 256 bits first took 45 and 30
// (shuffles and 512-bit FMAs share ports 0 and 5 on Intel cores).
// sum4_within_lanes: lane 4 L + u of the result is the sum of a[u]'s 128-bit lane L.
inline __m512 sum4_within_lanes(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
  const __m512 t01 = _mm512_add_ps(_mm512_unpacklo_ps(a0, a1), _mm512_unpackhi_ps(a0, a1));
  const __m512 t23 = _mm512_add_ps(_mm512_unpacklo_ps(a2, a3), _mm512_unpackhi_ps(a2, a3));
  const __m512d d01 = _mm512_castps_pd(t01), d23 = _mm512_castps_pd(t23);
  return _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(d01, d23)),
                       _mm512_castpd_ps(_mm512_unpackhi_pd(d01, d23)));
}

// v[s] = sum4_within_lanes of rows 4 s .. 4 s + 3: result[i] = sum of row i's lanes.
inline __m512 sum4_across_lanes(__m512 v0, __m512 v1, __m512 v2, __m512 v3) {
  constexpr int even = _MM_SHUFFLE(2, 0, 2, 0), odd = _MM_SHUFFLE(3, 1, 3, 1);
  const __m512 w01 =
      _mm512_add_ps(_mm512_shuffle_f32x4(v0, v1, even), _mm512_shuffle_f32x4(v0, v1, odd));
  const __m512 w23 =
      _mm512_add_ps(_mm512_shuffle_f32x4(v2, v3, even), _mm512_shuffle_f32x4(v2, v3, odd));
  return _mm512_add_ps(_mm512_shuffle_f32x4(w01, w23, even), _mm512_shuffle_f32x4(w01, w23, odd));
}
#endif

// result[i] = sum of the lanes of rows[i], for W rows. (xsimd 8.1's haddp permutes lanes under
// AVX-512, so we keep our own.)
inline vfloat transpose_sum(const vfloat* rows) {
#if defined(__AVX512F__)
  __m512 v[4];
  SPATTN_UNROLL for (int s = 0; s < 4; ++s) {
    v[s] = sum4_within_lanes(rows[4 * s], rows[4 * s + 1], rows[4 * s + 2], rows[4 * s + 3]);
  }
  return vfloat(sum4_across_lanes(v[0], v[1], v[2], v[3]));
#elif defined(__AVX__)
  static_assert(W == 8);
  __m256 h[8];
  SPATTN_UNROLL for (int i = 0; i < 8; ++i) h[i] = rows[i];
  return vfloat(transpose_sum8(h));
#else
  alignas(64) float out[W];
  for (int i = 0; i < W; ++i) out[i] = hsum(rows[i]);
  return vfloat::load_aligned(out);
#endif
}

// 2^x for x <= 0 (attention probabilities), relative error < 2e-7 (fit: 1.5e-7); exactly 0 below
// -126 (so masked scores of -inf give 0, never a NaN).
inline vfloat exp2_neg(vfloat x) {
  const vfloat lo(-126.0f);
  const auto underflow = x < lo;
  x = xsimd::max(x, lo);
  const vfloat fi = xsimd::floor(x);
  const vfloat f = x - fi;  // [0, 1)
  // Minimax polynomial for 2^f on [0, 1).
  vfloat p(1.87623361e-3f);
  p = xsimd::fma(p, f, vfloat(8.99258908e-3f));
  p = xsimd::fma(p, f, vfloat(5.58235943e-2f));
  p = xsimd::fma(p, f, vfloat(2.40154535e-1f));
  p = xsimd::fma(p, f, vfloat(6.93152964e-1f));
  p = xsimd::fma(p, f, vfloat(9.9999994e-1f));
#if defined(__AVX512F__)
  // p * 2^fi in one instruction (exact, like the multiply below): the exponent arithmetic is a
  // third of this function's instructions, and softmax runs it on every score.
  return xsimd::select(underflow, vfloat(0.0f), vfloat(_mm512_scalef_ps(p, fi)));
#else
  const vint e = (xsimd::to_int(fi) + vint(127)) << 23;
  const vfloat scale = xsimd::bitwise_cast<vfloat>(e);
  return xsimd::select(underflow, vfloat(0.0f), p * scale);
#endif
}

// 64-byte aligned scratch buffer of floats (no initialisation).
class aligned_buffer {
 public:
  aligned_buffer() = default;
  explicit aligned_buffer(std::size_t n) { resize(n); }
  aligned_buffer(const aligned_buffer&) = delete;
  aligned_buffer& operator=(const aligned_buffer&) = delete;
  ~aligned_buffer() { release(); }
  void resize(std::size_t n) {
    if (n <= cap_) return;
    release();
    data_ = static_cast<float*>(::operator new[](n * sizeof(float), std::align_val_t{64}));
    cap_ = n;
  }
  float* data() const { return data_; }

 private:
  void release() {
    if (data_) ::operator delete[](data_, std::align_val_t{64});
    data_ = nullptr;
    cap_ = 0;
  }
  float* data_ = nullptr;
  std::size_t cap_ = 0;
};

}  // namespace spattn::simd
