// spattn-compare's method layer (tools/compare_methods.hpp): the built-in methods compute exactly
// the key sets they report (kernel output against the double evaluation of those key sets), their
// pair counts match the key sets, budgets are respected, and the selection adapters are right.
#include <catch2/catch.hpp>

#include <memory>
#include <vector>

#include "../../tools/compare_methods.hpp"
#include "spattn/eval/metrics.hpp"

using namespace spattn;
using namespace spattn::compare;

namespace {

input make_input(dtype ty, index_t tokens) {
  eval::synthetic_options o;
  o.tokens = tokens;
  o.heads = 4;
  o.kv_heads = 2;
  o.head_dim = 32;
  o.seed = 11;
  const auto s = eval::make_synthetic(o);
  input in;
  in.name = "t";
  in.tokens = tokens;
  in.heads = 4;
  in.kv_heads = 2;
  in.head_dim = 32;
  in.q = stored_tensor(s.q, tokens, 4, 32, ty);
  in.k = stored_tensor(s.k, tokens, 2, 32, ty);
  in.v = stored_tensor(s.v, tokens, 2, 32, ty);
  in.needles = s.needles;
  return in;
}

// Relative difference between the kernel output of `r` and the key-set output in double.
double kernel_vs_keys(const problem& p, const method_run& r) {
  std::vector<index_t> rows;
  for (index_t t = r.out_first; t < p.q_tokens; t += 7) rows.push_back(t);
  if (rows.back() != p.q_tokens - 1) rows.push_back(p.q_tokens - 1);
  const std::vector<key_set_fn> sets{r.keys};
  std::vector<eval::key_set_accuracy> acc;
  with_storage_type(p.type(), [&](auto tag) {
    using T = decltype(tag);
    acc = eval::evaluate_key_sets(p.q().as<T>(), p.k().as<T>(), p.v().as<T>(),
                                  std::span<const key_set_fn>(sets), rows, 0.0, p.q_offset,
                                  executor::serial());
  });
  const index_t HD = p.heads() * p.head_dim();
  double num = 0, den = 0;
  for (std::size_t i = 0; i < rows.size(); ++i) {
    for (index_t x = 0; x < HD; ++x) {
      const double a = r.out[static_cast<std::size_t>((rows[i] - r.out_first) * HD + x)];
      const double b = acc[0].out[i * static_cast<std::size_t>(HD) + static_cast<std::size_t>(x)];
      num += (a - b) * (a - b);
      den += b * b;
    }
  }
  return std::sqrt(num / den);
}

}  // namespace

TEST_CASE("compare methods: a-shape-builtin key sets and pair counts", "[compare]") {
  // Query 300 with window 128 and chunk 128: chunk starts at 256, keys [128, 300] plus sinks 0..3.
  const auto ks = a_shape_prefill_keys(300, 128, 128);
  REQUIRE(ks.size() == 4 + (300 - 128 + 1));
  CHECK(ks[3] == 3);
  CHECK(ks[4] == 128);
  CHECK(ks.back() == 300);
  // Early queries: the window reaches the sinks, no duplicates.
  CHECK(a_shape_prefill_keys(70, 64, 64) == [] {
    std::vector<index_t> r;
    for (index_t j = 0; j <= 70; ++j) r.push_back(j);
    return r;
  }());
  for (const index_t w : {64, 128, 256}) {
    double n = 0;
    for (index_t t = 0; t < 1000; ++t)
      n += static_cast<double>(a_shape_prefill_keys(t, w, w).size());
    CHECK(a_shape_prefill_pairs(1000, w, w) == n);
  }
}

TEST_CASE("compare methods: kernels compute the key sets they report", "[compare]") {
  for (const dtype ty : {dtype::f32, dtype::f16}) {
    const index_t T = 4096;
    const input in = make_input(ty, T);
    for (const phase ph : {phase::prefill, phase::decode}) {
      problem p;
      p.in = &in;
      p.ph = ph;
      p.q_offset = ph == phase::prefill ? 0 : T - 16;
      p.q_tokens = ph == phase::prefill ? T : 16;
      p.exec = executor::openmp(2);
      p.reps = 1;
      INFO(phase_name(ph) << " " << dtype_name(ty));
      const auto dense = run_dense(p, budget::policy_default());
      CHECK(dense.computed_pairs == 4 * eval::causal_pairs(p.q_tokens, T, p.q_offset));
      CHECK(eval::count_pairs(dense.keys, 4, p.q_tokens, p.q_offset) == dense.computed_pairs);
      CHECK(kernel_vs_keys(p, dense) < 1e-5);
      CHECK(dense.seconds > 0);
      for (const double c : {5.0, 10.0}) {
        const auto r = run_a_shape_builtin(p, budget::compression(c));
        INFO("compression " << c << ": " << r.budget_note);
        const double pairs = eval::count_pairs(r.keys, 4, p.q_tokens, p.q_offset);
        if (ph == phase::prefill) CHECK(r.computed_pairs == pairs);
        CHECK(pairs <= dense.computed_pairs / c * 1.001);  // within the budget
        CHECK(pairs >= dense.computed_pairs / c * 0.4);    // and not far below it
        CHECK(kernel_vs_keys(p, r) < 1e-5);
      }
      CHECK_THROWS_AS(run_a_shape_builtin(p, budget::coverage(0.9)), spattn::error);
    }
  }
  // A budget below the smallest prefill window is reported, not hidden.
  const input small = make_input(dtype::f32, 1024);
  problem p;
  p.in = &small;
  p.q_tokens = 1024;
  p.reps = 1;
  CHECK_THAT(run_a_shape_builtin(p, budget::compression(20)).budget_note,
             Catch::Contains("not met"));
  CHECK_THAT(run_a_shape_builtin(p, budget::compression(2)).budget_note,
             !Catch::Contains("not met"));
}

namespace {
// The shape of spattn::prefill_selection that the adapter relies on.
struct fake_selection {
  index_t block_q = 4, q_offset = 8;
  void key_intervals(index_t h, index_t b, std::vector<std::pair<index_t, index_t>>& out) const {
    out.clear();
    out.emplace_back(0, 2);                                                      // a sink block
    out.emplace_back(q_offset + b * block_q - h, q_offset + (b + 1) * block_q);  // local
  }
};
}  // namespace

TEST_CASE("compare methods: selection adapters", "[compare]") {
  const auto keys = keys_from_prefill_selection(std::make_shared<const fake_selection>());
  // Query token 5 sits at position 13 in block 1 (positions 12..15): ranges [0,2) and [12-h, 16),
  // clipped to the query's own position.
  CHECK(keys(0, 5) == std::vector<index_t>{0, 1, 12, 13});
  CHECK(keys(1, 5) == std::vector<index_t>{0, 1, 11, 12, 13});
  auto table = std::make_shared<std::vector<std::vector<std::vector<index_t>>>>(
      2, std::vector<std::vector<index_t>>{{0, 3}, {1}});
  (*table)[1][0] = {2};
  const auto tk = keys_from_table(table);
  CHECK(tk(0, 0) == std::vector<index_t>{0, 3});
  CHECK(tk(1, 0) == std::vector<index_t>{1});
  CHECK(tk(0, 1) == std::vector<index_t>{2});
}
