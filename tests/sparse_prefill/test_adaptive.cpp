// Adaptive allocation in the vertical-slash family: the heads share one pair budget and their
// columns / diagonals compete by estimated attention mass. Expectations are derived from the
// attention pattern built into the inputs, not from the policies' code.
#include "sparse_support.hpp"
#include "spattn/policies/flexprefill.hpp"
#include "spattn/policies/vertical_slash.hpp"

using namespace spattn;
using namespace spattn::test;

namespace {

// Two query heads over one KV head, n tokens, d = 64. Head 0's queries are zero: every causal
// key gets the same probability (diffuse attention). Head 1's queries point along e0, which only
// key 0 carries (20 e0; the other keys are small and orthogonal to e0): its scores are
// 25 for key 0 and ~0 elsewhere, so all of its mass sits on key 0 (a sink).
struct sink_and_diffuse {
  static constexpr index_t n = 1024, d = 64;
  tensor<float> q{n, 2, d}, k{n, 1, d};
  sink_and_diffuse() {
    std::mt19937 rng(3);
    std::normal_distribution<float> nd(0.0f, 0.3f);
    for (index_t t = 0; t < n; ++t) {
      float* kr = k.view().row(t, 0);
      for (index_t x = 1; x < d; ++x) kr[x] = nd(rng);
      kr[0] = t == 0 ? 20.0f : 0.0f;
      float* q0 = q.view().row(t, 0);
      float* q1 = q.view().row(t, 1);
      for (index_t x = 0; x < d; ++x) q0[x] = q1[x] = 0.0f;
      q1[0] = 10.0f;
    }
  }
  prefill_inputs in(executor e = executor::openmp(2)) const {
    prefill_inputs r{q.cview(), k.cview()};
    r.exec = e;
    return r;
  }
};

bool sees(const prefill_selection& sel, index_t h, index_t t, index_t key) {
  const auto keys = selected_keys(sel, h, t);
  return std::binary_search(keys.begin(), keys.end(), key);
}

}  // namespace

TEST_CASE("adaptive vertical-slash ranks the entries of all heads by estimated mass",
          "[sparse][policy][adaptive]") {
  const sink_and_diffuse x;
  const auto in = x.in();
  const policies::vertical_slash vs;
  const auto ada = vs.select(in, budget::compression(4, allocation::adaptive));
  REQUIRE_NOTHROW(ada.validate());
  const index_t per_head = ada.causal_pairs() / 2 / 4;
  // One budget for both heads.
  CHECK(ada.pairs() <= 2 * per_head);
  // Ranking by estimated mass (256 estimation queries at positions 768..1023, rows summing to 1):
  //  1. the forced parts (+inf) of both heads;
  //  2. head 1's diagonals at offsets 768..1023, one per estimation query, each holding that
  //     query's mass on key 0 (~1);
  //  3. head 0's columns 0..767 and diagonals 0..768, all exactly sum_{p=768}^{1023} 1/(p+1)
  //     ~ 0.29 (ties: lower head, columns before diagonals, lower index: columns 4, 5, ...);
  //  4. the rest (head 0's later columns / diagonals, head 1's ~e^-25 entries).
  // With a quarter of the pairs, the budget reaches into group 3.
  for (index_t t = 768; t < x.n; t += 17) {
    INFO("query " << t);
    for (index_t j = 0; j <= t - 768; j += 7) CHECK(sees(ada, 1, t, j));  // head 1, group 2
  }
  for (index_t t = 200; t < x.n; t += 13) {
    INFO("query " << t);
    CHECK(sees(ada, 0, t, 4));  // head 0, the first entries of group 3
    CHECK(sees(ada, 0, t, 5));
  }
  // Head 1 keeps nothing from group 4: no key at offsets 200..639 (away from the forced
  // diagonals' and the kept diagonals' 64-wide ranges) other than the forced columns.
  index_t extra = 0;
  for (index_t t = 300; t < x.n; t += 13)
    for (index_t j = std::max<index_t>(4, t - 639); j <= t - 200; ++j)
      extra += sees(ada, 1, t, j) ? 1 : 0;
  CHECK(extra == 0);
  // Uniform allocation keeps each head within its own share.
  const auto uni = vs.select(in, budget::compression(4));
  CHECK(uni.head_pairs(1) <= per_head);
  CHECK(uni.head_pairs(0) <= per_head);
  // Deterministic across thread counts.
  CHECK(vs.select(x.in(executor::serial()), budget::compression(4, allocation::adaptive)) == ada);
}

TEST_CASE("adaptive FlexPrefill: shared coverage and shared pair budgets",
          "[sparse][policy][adaptive]") {
  const sink_and_diffuse x;
  const auto in = x.in();
  policies::flexprefill fp;
  fp.min_budget = 64;
  // Mean scores: each head's sum to 1. Head 1's column 0 holds ~1, so one coverage of 0.5 over
  // both heads (mass 1 of 2) is met by it almost alone and head 0 keeps ~min_budget columns;
  // per head, head 0 needs half of its own (flat) mass: hundreds of columns.
  const auto uni = fp.select(in, budget::coverage(0.5));
  const auto ada = fp.select(in, budget::coverage(0.5, allocation::adaptive));
  REQUIRE_NOTHROW(ada.validate());
  CHECK(ada.head_pairs(0) < uni.head_pairs(0));
  for (index_t t = 300; t < x.n; t += 31) CHECK(sees(ada, 0, t, 60));  // min_budget columns
  // Pair budgets are shared as in vertical_slash.
  const auto shared = fp.select(in, budget::compression(4, allocation::adaptive));
  const index_t per_head = shared.causal_pairs() / 2 / 4;
  CHECK(shared.pairs() <= 2 * per_head);
  CHECK(fp.select(x.in(executor::serial()), budget::compression(4, allocation::adaptive)) ==
        shared);
}
