// Metrics: hand-computed values, and the double evaluation against the oracle.
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "spattn/eval/metrics.hpp"
#include "spattn/eval/reference.hpp"
#include "support.hpp"

using namespace spattn;
using namespace spattn::eval;

TEST_CASE("metrics: causal pairs, FLOPs and pair counts", "[metrics]") {
  CHECK(causal_pairs(4, 4, 0) == 10);      // 1 + 2 + 3 + 4
  CHECK(causal_pairs(2, 5, 3) == 9);       // 4 + 5
  CHECK(causal_pairs(1, 100, 99) == 100);  // one decode step
  CHECK(causal_pairs(0, 3, 3) == 0);
  CHECK_THROWS_AS(causal_pairs(3, 4, 2), spattn::error);
  CHECK(attention_flops(10, 64) == 2560);

  const key_set_fn dense = [](index_t, index_t t) {
    std::vector<index_t> k;
    for (index_t j = 0; j <= 3 + t; ++j) k.push_back(j);
    return k;
  };
  CHECK(count_pairs(dense, 2, 3, 3) == 2 * causal_pairs(3, 6, 3));
  const key_set_fn sink_and_self = [](index_t, index_t t) {
    return t == 0 ? std::vector<index_t>{0} : std::vector<index_t>{0, t};
  };
  CHECK(count_pairs(sink_and_self, 3, 4, 0) == 3 * (1 + 2 + 2 + 2));
  const key_set_fn unsorted = [](index_t, index_t) { return std::vector<index_t>{1, 0}; };
  const key_set_fn future = [](index_t, index_t t) { return std::vector<index_t>{t + 1}; };
  const key_set_fn dup = [](index_t, index_t) { return std::vector<index_t>{0, 0}; };
  CHECK_THROWS_WITH(count_pairs(unsorted, 1, 2, 1), Catch::Contains("sorted unique"));
  CHECK_THROWS_AS(count_pairs(future, 1, 2, 0), spattn::error);
  CHECK_THROWS_AS(count_pairs(dup, 1, 2, 0), spattn::error);
}

TEST_CASE("metrics: relative error per head and overall", "[metrics]") {
  // 1 row, 2 heads, head_dim 2: head 0 exact, head 1 entirely wrong.
  const std::vector<double> dense{3, 4, 1, 0}, got{3, 4, 0, 0};
  const auto e = relative_error_of<double, double>(got, dense, 2, 2);
  REQUIRE(e.per_head.size() == 2);
  CHECK(e.per_head[0] == 0.0);
  CHECK(e.per_head[1] == Approx(1.0));
  CHECK(e.overall == Approx(std::sqrt(1.0 / 26.0)));
  const std::vector<float> half{1.5f, 2.0f, 0.5f, 0.0f};
  CHECK(relative_error_of<float, double>(half, dense, 2, 2).overall == Approx(0.5));
  const std::vector<double> one{1.0};
  CHECK_THROWS_AS((relative_error_of<double, double>(got, one, 2, 2)), spattn::error);
}

TEST_CASE("metrics: mass recall and key-set output, hand-computed", "[metrics]") {
  // One head, head_dim 1, scale 1: row 2 has logits 0, ln 2, ln 3 -> probabilities 1/6, 2/6, 3/6.
  std::vector<float> q{1, 1, 1}, k{0.0f, std::log(2.0f), std::log(3.0f)}, v{10, 20, 30};
  tensor_view<const float> qv(q.data(), 3, 1, 1), kv(k.data(), 3, 1, 1), vv(v.data(), 3, 1, 1);
  const key_set_fn ends = [](index_t, index_t t) {
    return t == 0 ? std::vector<index_t>{0} : std::vector<index_t>{0, t};
  };
  const std::vector<key_set_fn> sets{ends};
  const std::vector<index_t> rows{0, 2};
  dense_rows d;
  const auto acc = evaluate_key_sets(qv, kv, vv, std::span<const key_set_fn>(sets), rows, 1.0, -1,
                                     executor::serial(), &d);
  REQUIRE(acc.size() == 1);
  // Row 0: one key, recall 1. Row 2: keys {0, 2} hold (1 + 3) / 6.
  CHECK(acc[0].mass_recall == Approx((1.0 + 4.0 / 6.0) / 2.0));
  CHECK(acc[0].min_mass_recall == Approx(4.0 / 6.0));
  CHECK(d.out[0] == Approx(10.0));
  CHECK(d.out[1] == Approx(140.0 / 6.0));
  CHECK(acc[0].out[1] == Approx(25.0));  // (1 * 10 + 3 * 30) / 4
  CHECK(acc[0].error.overall ==
        Approx(std::abs(25.0 - 140.0 / 6.0) / std::sqrt(100.0 + (140.0 / 6.0) * (140.0 / 6.0))));
}

TEST_CASE("metrics: evaluate_key_sets agrees with the oracle (GQA, f16, offsets)", "[metrics]") {
  const index_t T = 200, H = 4, HK = 2, D = 16;
  auto q = test::random_tensor<f16>(T, H, D, 1), k = test::random_tensor<f16>(T, HK, D, 2),
       v = test::random_tensor<f16>(T, HK, D, 3);
  // Decode-like phase: the last 40 tokens are the queries.
  const index_t nq = 40, off = T - nq;
  auto qv = q.cview().slice_tokens(off, nq);
  const key_set_fn strided = [&](index_t h, index_t t) {
    std::vector<index_t> ks;
    for (index_t j = h % 2; j <= off + t; j += 3) ks.push_back(j);
    return ks;
  };
  const key_set_fn all = [&](index_t, index_t t) {
    std::vector<index_t> ks;
    for (index_t j = 0; j <= off + t; ++j) ks.push_back(j);
    return ks;
  };
  const std::vector<key_set_fn> sets{strided, all};
  const auto rows = evaluation_rows(nq, off, 10);
  CHECK(rows.size() == 10);
  CHECK(rows.back() == nq - 1);
  dense_rows d;
  const auto acc = evaluate_key_sets(qv, k.cview(), v.cview(), std::span<const key_set_fn>(sets),
                                     rows, 0.0, off, executor::openmp(2), &d);
  const auto ref_dense = reference_dense(qv, k.cview(), v.cview(), true, 0.0, off, rows);
  const auto ref_sparse = reference_attention(qv, k.cview(), v.cview(), strided, 0.0, rows);
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  double num = 0, den = 0;
  for (std::size_t i = 0; i < rows.size(); ++i) {
    for (index_t h = 0; h < H; ++h) {
      for (index_t x = 0; x < D; ++x) {
        const auto idx = (i * H + static_cast<std::size_t>(h)) * D + static_cast<std::size_t>(x);
        CHECK(d.out[idx] == Approx(ref_dense.o(rows[i], h, x)).margin(1e-12));
        CHECK(acc[0].out[idx] == Approx(ref_sparse.o(rows[i], h, x)).margin(1e-12));
        CHECK(acc[1].out[idx] == Approx(ref_dense.o(rows[i], h, x)).margin(1e-12));
        const double e = acc[0].out[idx] - ref_dense.o(rows[i], h, x);
        num += e * e;
        den += ref_dense.o(rows[i], h, x) * ref_dense.o(rows[i], h, x);
      }
    }
  }
  CHECK(acc[0].error.overall == Approx(std::sqrt(num / den)).epsilon(1e-9));
  CHECK(acc[1].error.overall < 1e-12);
  CHECK(acc[1].mass_recall == Approx(1.0).margin(1e-12));
  // Recall of the strided set from the oracle: exp(lse_sparse - lse_dense) is the kept mass.
  double recall = 0;
  for (index_t t : rows) {
    for (index_t h = 0; h < H; ++h) recall += std::exp(ref_sparse.l(t, h) - ref_dense.l(t, h));
  }
  CHECK(acc[0].mass_recall == Approx(recall / static_cast<double>(rows.size() * H)).epsilon(1e-9));
  (void)scale;
  CHECK(acc[0].mass_recall > 0.2);
  CHECK(acc[0].mass_recall < 0.6);
  const key_set_fn bad = [](index_t, index_t) { return std::vector<index_t>{1, 1}; };
  const std::vector<key_set_fn> bad_sets{bad};
  CHECK_THROWS_AS(evaluate_key_sets(qv, k.cview(), v.cview(), std::span<const key_set_fn>(bad_sets),
                                    rows, 0.0, off, executor::serial()),
                  spattn::error);
}

TEST_CASE("metrics: needle recall and evaluation rows", "[metrics]") {
  const std::vector<needle> needles{{0, 5, 90}, {1, 7, 95}, {1, 3, 20}};
  const key_set_fn keep_5 = [](index_t, index_t) { return std::vector<index_t>{1, 5, 9}; };
  // Phase with queries at positions [80, 100): the third needle (query 20) is not in it.
  const auto r = needle_recall_of(needles, keep_5, 80, 20);
  CHECK(r.total == 2);
  CHECK(r.found == 1);
  CHECK(r.kept == std::vector<bool>{true, false});
  CHECK(r.fraction() == 0.5);
  CHECK(needle_recall_of(needles, keep_5, 0, 10).total == 0);
  CHECK(needle_recall_of(needles, keep_5, 0, 10).fraction() == 1.0);
  CHECK(evaluation_rows(100, 0, 4) == std::vector<index_t>{24, 49, 74, 99});
  CHECK(evaluation_rows(20, 80, 2, needles) == std::vector<index_t>{9, 10, 15, 19});
  CHECK(evaluation_rows(3, 0, 10) == std::vector<index_t>{0, 1, 2});
}
