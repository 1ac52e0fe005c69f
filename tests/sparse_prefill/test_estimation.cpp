// The vertical-slash estimation (column and diagonal sums of the last queries' attention) against
// a double-precision recomputation, for fp32 inputs and for bf16 inputs (which score with bf16
// dot products on AVX512-BF16 machines, kernels::has_bf16_dot).
#include "sparse_support.hpp"
#include "spattn/policies/vertical_slash.hpp"

using namespace spattn;
using namespace spattn::test;

namespace {

// vert[j] = sum_i P[i][j], diag[t] = sum over P[i][j] with pos_i - j = P_end - 1 - t, for the
// last A queries of head h, in double.
void reference_estimate(const tensor<bf16>& q, const tensor<bf16>& k, index_t h, index_t kvh,
                        index_t A, std::vector<double>& vert, std::vector<double>& diag) {
  const index_t n = q.tokens, d = q.head_dim;
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  vert.assign(static_cast<std::size_t>(n), 0.0);
  diag.assign(static_cast<std::size_t>(n), 0.0);
  for (index_t i = n - A; i < n; ++i) {
    std::vector<double> s(static_cast<std::size_t>(i + 1));
    double mx = -1e300;
    for (index_t j = 0; j <= i; ++j) {
      double acc = 0;
      for (index_t x = 0; x < d; ++x)
        acc += static_cast<double>(to_float(q.cview().row(i, h)[x])) *
               static_cast<double>(to_float(k.cview().row(j, kvh)[x]));
      s[static_cast<std::size_t>(j)] = acc * scale;
      mx = std::max(mx, acc * scale);
    }
    double sum = 0;
    for (auto& v : s) sum += (v = std::exp(v - mx));
    for (index_t j = 0; j <= i; ++j) {
      const double p = s[static_cast<std::size_t>(j)] / sum;
      vert[static_cast<std::size_t>(j)] += p;
      diag[static_cast<std::size_t>(n - 1 - (i - j))] += p;
    }
  }
}

template <class T>
tensor<T> copy_as(const tensor<bf16>& x) {
  tensor<T> r(x.tokens, x.heads, x.head_dim);
  for (index_t t = 0; t < x.tokens; ++t)
    for (index_t h = 0; h < x.heads; ++h)
      for (index_t i = 0; i < x.head_dim; ++i)
        r.view().row(t, h)[i] = from_float<T>(to_float(x.cview().row(t, h)[i]));
  return r;
}

}  // namespace

TEST_CASE("vertical-slash estimation equals a double-precision recomputation",
          "[sparse][policy][estimation]") {
  INFO("bf16 dot products in use: " << kernels::has_bf16_dot);
  const index_t d = GENERATE(64, 128, 72);
  const index_t n = 300, A = 100;
  const auto q = random_tensor<bf16>(n, 2, d, 21, 1.0f);
  const auto k = random_tensor<bf16>(n, 1, d, 22, 2.0f);
  const auto qf = copy_as<float>(q);
  const auto kf = copy_as<float>(k);
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  for (index_t h = 0; h < 2; ++h) {
    INFO("d=" << d << " head " << h);
    std::vector<double> rv, rd;
    reference_estimate(q, k, h, 0, A, rv, rd);
    std::vector<float> v16, d16, v32, d32;
    policies::detail::vs_estimate(q.cview(), k.cview(), h, 0, 0, A, scale, false, v16, d16);
    policies::detail::vs_estimate(qf.cview(), kf.cview(), h, 0, 0, A, scale, false, v32, d32);
    REQUIRE(v16.size() == static_cast<std::size_t>(n));
    REQUIRE(v32.size() == static_cast<std::size_t>(n));
    // fp32 scores and exp2: ~1e-6 relative per probability, summed over A rows (2e-5 absolute);
    // the probabilities are held as fp16 between the two passes: relative rounding 2^-11 of
    // each, so at most 2^-11 of the exact sum on top (values below 2^-24 flush: < 2e-5 in all).
    // Scaled excess over that bound; <= 1 passes.
    double err16 = 0, err32 = 0, total = 0;
    auto excess = [](double got, double want) {
      return std::abs(got - want) / (2e-5 + std::ldexp(std::abs(want), -11));
    };
    for (std::size_t j = 0; j < rv.size(); ++j) {
      err16 = std::max({err16, excess(v16[j], rv[j]), excess(d16[j], rd[j])});
      err32 = std::max({err32, excess(v32[j], rv[j]), excess(d32[j], rd[j])});
      total += rv[j];
    }
    CHECK(total == Approx(static_cast<double>(A)).epsilon(1e-9));  // rows sum to 1
    CHECK(err32 <= 1.0);
    CHECK(err16 <= 1.0);
  }
}

TEST_CASE("FlexPrefill's cover count equals the sorted cumulative-sum definition",
          "[sparse][policy][estimation]") {
  std::mt19937 rng(5);
  for (int trial = 0; trial < 200; ++trial) {
    const auto n = static_cast<std::size_t>(1 + rng() % 3000);
    std::vector<float> x(n);
    // Some trials with many ties and zeros, some with continuous values.
    for (auto& v : x)
      v = trial % 2 ? static_cast<float>(rng() % 5)
                    : std::uniform_real_distribution<float>(0, 1)(rng);
    double total = 0;
    for (float v : x) total += v;
    if (total > 0)
      for (auto& v : x) v = static_cast<float>(v / total);
    const double alpha = std::uniform_real_distribution<double>(0.01, 1.0)(rng);
    std::vector<float> sorted(x);
    std::sort(sorted.begin(), sorted.end(), std::greater<>());
    double cum = 0;
    index_t fit = 0;
    for (float v : sorted) {
      cum += v;
      if (cum <= alpha)
        ++fit;
      else
        break;
    }
    INFO("trial " << trial << " n=" << n << " alpha=" << alpha);
    CHECK(policies::detail::cover_count(x, alpha) ==
          std::min<index_t>(fit + 1, static_cast<index_t>(n)));
  }
}
