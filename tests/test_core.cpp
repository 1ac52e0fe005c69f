// Core types: dtype conversions, views, executor, SIMD helpers, and the oracle itself.
#include <cstring>
#include <set>

#include "support.hpp"

using namespace spattn;
using namespace spattn::test;

TEST_CASE("f16 conversion round-trips every half value and rounds to nearest even", "[dtype]") {
  for (std::uint32_t b = 0; b < 0x10000u; ++b) {
    const f16 h{static_cast<std::uint16_t>(b)};
    const float f = to_float(h);
    if (std::isnan(f)) {
      CHECK(std::isnan(to_float(to_f16(f))));
      continue;
    }
    REQUIRE(to_f16(f).bits == h.bits);
  }
  // Hand-checked values.
  CHECK(to_float(f16{0x3c00}) == 1.0f);
  CHECK(to_float(f16{0xc000}) == -2.0f);
  CHECK(to_float(f16{0x0001}) == std::ldexp(1.0f, -24));  // smallest subnormal
  CHECK(to_float(f16{0x7bff}) == 65504.0f);
  CHECK(to_f16(1.0f + std::ldexp(1.0f, -11)).bits == 0x3c00);      // tie -> even
  CHECK(to_f16(1.0f + 3 * std::ldexp(1.0f, -11)).bits == 0x3c02);  // tie -> even (up)
  CHECK(to_f16(65520.0f).bits == 0x7c00);                          // overflow to inf
  CHECK(to_f16(std::ldexp(1.0f, -25)).bits == 0x0000);             // tie to even zero
  CHECK(to_f16(std::ldexp(3.0f, -26)).bits == 0x0001);
}

TEST_CASE("bf16 conversion rounds to nearest even", "[dtype]") {
  CHECK(to_float(bf16{0x3f80}) == 1.0f);
  CHECK(to_bf16(1.0f).bits == 0x3f80);
  CHECK(to_bf16(1.0f + std::ldexp(1.0f, -8)).bits == 0x3f80);      // tie -> even
  CHECK(to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)).bits == 0x3f82);  // tie -> even (up)
  CHECK(to_bf16(1.0f + std::ldexp(1.0f, -7)).bits == 0x3f81);      // exact
  CHECK(std::isnan(to_float(to_bf16(std::nanf("")))));
}

TEST_CASE("vectorised loads convert like the scalar path", "[dtype][simd]") {
  std::vector<f16> h(64);
  std::vector<bf16> b(64);
  for (int i = 0; i < 64; ++i) {
    h[i] = to_f16(static_cast<float>(i) * 0.37f - 7.0f);
    b[i] = to_bf16(static_cast<float>(i) * -1.91f + 3.0f);
  }
  std::vector<float> fh(64), fb(64);
  simd::convert_to_f32(h.data(), fh.data(), 61);
  simd::convert_to_f32(b.data(), fb.data(), 61);
  for (int i = 0; i < 61; ++i) {
    CHECK(fh[i] == to_float(h[i]));
    CHECK(fb[i] == to_float(b[i]));
  }
}

TEST_CASE("exp2 approximation is accurate and exactly zero far below", "[simd]") {
  alignas(64) float in[simd::W], out[simd::W];
  double worst = 0;
  for (int s = 0; s < 20000; ++s) {
    for (int i = 0; i < simd::W; ++i) in[i] = -static_cast<float>(s * simd::W + i) * 1e-3f;
    simd::exp2_neg(simd::vfloat::load_aligned(in)).store_aligned(out);
    for (int i = 0; i < simd::W; ++i) {
      const double want = std::exp2(static_cast<double>(in[i]));
      if (want > 1e-30) worst = std::max(worst, std::abs(out[i] / want - 1.0));
    }
  }
  CHECK(worst < 5e-7);
  for (int i = 0; i < simd::W; ++i) in[i] = i % 2 ? -INFINITY : -200.0f;
  simd::exp2_neg(simd::vfloat::load_aligned(in)).store_aligned(out);
  for (int i = 0; i < simd::W; ++i) CHECK(out[i] == 0.0f);
}

TEST_CASE("transpose_sum gives each vector's lane sum in its lane", "[simd]") {
  alignas(64) float t[simd::W][simd::W];
  simd::vfloat rows[simd::W];
  for (int i = 0; i < simd::W; ++i) {
    for (int j = 0; j < simd::W; ++j) t[i][j] = static_cast<float>(i * 100 + j);
    rows[i] = simd::vfloat::load_aligned(t[i]);
  }
  alignas(64) float out[simd::W];
  simd::transpose_sum(rows).store_aligned(out);
  for (int i = 0; i < simd::W; ++i) {
    CHECK(out[i] == static_cast<float>(i * 100 * simd::W + simd::W * (simd::W - 1) / 2));
  }
}

TEST_CASE("tensor views: rows, strides and slices", "[views]") {
  std::vector<float> buf(2 * 3 * 8);
  for (std::size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<float>(i);
  tensor_view<float> v(buf.data(), 2, 3, 8);
  CHECK(v.row(1, 2)[0] == 40.0f);
  CHECK(v.token_stride() == 24);
  auto s = v.slice_tokens(1, 1);
  CHECK(s.row(0, 0)[0] == 24.0f);
  tensor_view<const float> c = v;  // to-const conversion
  CHECK(c.row(1, 1)[3] == 35.0f);
  // head-major layout is accepted
  CHECK_NOTHROW(tensor_view<float>(buf.data(), 3, 2, 8, 8, 24));
  CHECK_THROWS_AS(tensor_view<float>(buf.data(), 3, 2, 8, 8, 8), spattn::error);  // overlap
  CHECK_THROWS_AS(v.slice_tokens(1, 2), spattn::error);
}

TEST_CASE("executor runs every task once, whichever kind", "[executor]") {
  for (const auto& ex : {executor::serial(), executor::openmp(2), executor::openmp(),
                         executor::custom(
                             [](std::int64_t n, const std::function<void(std::int64_t)>&f) {
                               for (std::int64_t i = n - 1; i >= 0; --i) f(i);
                             },
                             1)}) {
    std::vector<std::atomic<int>> hits(1000);
    ex.parallel_for(1000, [&](std::int64_t i) { hits[static_cast<std::size_t>(i)]++; });
    bool once = true;
    for (auto& h : hits) once = once && h.load() == 1;
    CHECK(once);
  }
}

TEST_CASE("the oracle on hand-computed cases", "[oracle]") {
  // One head, d = 8, keys: k0 = e0, k1 = 2 e0; q = e0 * sqrt(8) so scaled scores are 1 and 2.
  // Query at position 1 sees both keys: p = softmax(1, 2) = (1, e) / (1 + e).
  const index_t d = 8;
  tensor<float> q(2, 1, d), k(2, 1, d), v(2, 1, d);
  std::fill(q.data.begin(), q.data.end(), 0.0f);
  std::fill(k.data.begin(), k.data.end(), 0.0f);
  std::fill(v.data.begin(), v.data.end(), 0.0f);
  for (index_t t = 0; t < 2; ++t) q.data[static_cast<std::size_t>(t * d)] = std::sqrt(8.0f);
  k.data[0] = 1.0f;
  k.data[static_cast<std::size_t>(d)] = 2.0f;
  v.data[1] = 10.0f;                                // v0 = 10 e1
  v.data[static_cast<std::size_t>(d + 2)] = -4.0f;  // v1 = -4 e2
  const auto r = eval::reference_dense(q.cview(), k.cview(), v.cview());
  const double e = std::exp(1.0);
  // Query 0 sees only key 0.
  CHECK(r.o(0, 0, 1) == Approx(10.0));
  CHECK(r.l(0, 0) == Approx(1.0));
  CHECK(r.o(1, 0, 1) == Approx(10.0 / (1 + e)));
  CHECK(r.o(1, 0, 2) == Approx(-4.0 * e / (1 + e)));
  CHECK(r.l(1, 0) == Approx(std::log(std::exp(1.0) + std::exp(2.0))));
  // An empty key list gives zeros and -inf.
  const auto z = eval::reference_attention(q.cview(), k.cview(), v.cview(),
                                           [](index_t, index_t) { return std::vector<index_t>{}; });
  CHECK(z.o(0, 0, 1) == 0.0);
  CHECK(std::isinf(z.l(0, 0)));
}

TEST_CASE("huge_page_array: sizes, alignment, default values, moves", "[core]") {
  const huge_page_array<float> none;
  CHECK(none.empty());
  CHECK(none.data() == nullptr);
  const huge_page_array<f16> zero(0);
  CHECK(zero.size() == 0);
  CHECK_THROWS_AS(huge_page_array<float>(SIZE_MAX / 2), std::bad_array_new_length);  // n * 4 wraps

  huge_page_array<f16> small(100);  // below 2 MiB: ordinary 64-byte-aligned storage
  REQUIRE(small.size() == 100);
  CHECK(reinterpret_cast<std::uintptr_t>(small.data()) % 64 == 0);
  for (const f16 h : small) CHECK(h.bits == 0);  // default-initialised as new f16[n]

  // 2 MiB and more: 2 MiB-aligned (so whole huge pages can back it); every element addressable.
  const std::size_t n = (huge_page_bytes / sizeof(float)) * 3 / 2 + 7;
  huge_page_array<float> big(n);
  REQUIRE(big.size() == n);
  CHECK(reinterpret_cast<std::uintptr_t>(big.data()) % huge_page_bytes == 0);
  for (std::size_t i = 0; i < n; ++i) big[i] = static_cast<float>(i);
  const float* p = big.data();
  huge_page_array<float> moved = std::move(big);
  CHECK(moved.data() == p);
  CHECK(moved.size() == n);
  CHECK(moved[n - 1] == static_cast<float>(n - 1));
  CHECK(moved[12345] == 12345.0f);
}
