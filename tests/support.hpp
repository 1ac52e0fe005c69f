#pragma once
// Test support: owning tensors, random data, and comparison with the oracle.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "spattn/eval/reference.hpp"
#include "spattn/spattn.hpp"
#include "tolerances.hpp"

namespace spattn::test {

template <class T>
struct tensor {
  std::vector<T> data;
  index_t tokens = 0, heads = 0, head_dim = 0;
  tensor() = default;
  tensor(index_t t, index_t h, index_t d)
      : data(static_cast<std::size_t>(std::max<index_t>(t * h * d, 1))),
        tokens(t),
        heads(h),
        head_dim(d) {}
  tensor_view<T> view() { return {data.data(), tokens, heads, head_dim}; }
  tensor_view<const T> cview() const { return {data.data(), tokens, heads, head_dim}; }
};

// Gaussian values with std `sigma`, stored as T.
template <class T>
tensor<T> random_tensor(index_t t, index_t h, index_t d, std::uint64_t seed, float sigma = 1.0f) {
  tensor<T> x(t, h, d);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, sigma);
  for (index_t i = 0; i < t * h * d; ++i)
    x.data[static_cast<std::size_t>(i)] = from_float<T>(nd(rng));
  return x;
}

struct compare_stats {
  double max_out_err = 0, max_lse_err = 0;
  bool all_finite = true;
};

// Compares kernel output (and LSE if given) to the oracle on the rows the oracle computed.
template <class TO>
compare_stats compare(const eval::reference_result& ref, tensor_view<const TO> out,
                      const std::vector<float>* lse, std::span<const index_t> rows = {}) {
  compare_stats s;
  std::vector<index_t> all;
  if (rows.empty()) {
    for (index_t t = 0; t < ref.tokens; ++t) all.push_back(t);
    rows = all;
  }
  for (index_t t : rows) {
    for (index_t h = 0; h < ref.heads; ++h) {
      for (index_t x = 0; x < ref.head_dim; ++x) {
        const double got = to_float(out.row(t, h)[x]);
        if (!std::isfinite(got)) s.all_finite = false;
        s.max_out_err = std::max(s.max_out_err, std::abs(got - ref.o(t, h, x)));
      }
      if (lse) {
        const double got = (*lse)[static_cast<std::size_t>(t * ref.heads + h)];
        const double want = ref.l(t, h);
        if (std::isinf(want)) {
          if (!(std::isinf(got) && got < 0)) s.max_lse_err = INFINITY;
        } else {
          s.max_lse_err = std::max(s.max_lse_err, std::abs(got - want));
        }
      }
    }
  }
  return s;
}

// Rows to check for long sequences: the first and last few plus an even sample.
inline std::vector<index_t> sample_rows(index_t n, index_t count = 24) {
  std::vector<index_t> r;
  if (n <= count * 2) {
    for (index_t t = 0; t < n; ++t) r.push_back(t);
    return r;
  }
  for (index_t t = 0; t < 4; ++t) r.push_back(t);
  for (index_t i = 0; i < count; ++i) r.push_back(4 + i * (n - 8) / count);
  for (index_t t = n - 4; t < n; ++t) r.push_back(t);
  std::sort(r.begin(), r.end());
  r.erase(std::unique(r.begin(), r.end()), r.end());
  return r;
}

}  // namespace spattn::test
