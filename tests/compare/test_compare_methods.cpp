// spattn-compare's method layer (tools/compare_methods.hpp): every method (dense and each prefill
// policy through the generic adapter) computes exactly the key sets it reports (kernel output
// against the double evaluation of those key sets), its pair counts match the key sets, budgets
// are respected or reported as not met, the native selection files describe the same key sets,
// and the selection adapters are right.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <memory>
#include <set>
#include <string>
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

namespace {

problem prefill_problem(const input& in) {
  problem p;
  p.in = &in;
  p.ph = phase::prefill;
  p.q_tokens = in.tokens;
  p.exec = executor::openmp(2);
  p.reps = 1;
  return p;
}

const method& find_method(const std::vector<method>& all, const std::string& name) {
  for (const auto& m : all)
    if (m.name == name) return m;
  FAIL("no method " << name);
  return all.front();
}

// Reads back the native selection files and rebuilds the key set of (head h, query token t).
std::vector<index_t> keys_from_saved(const std::filesystem::path& dir, index_t h, index_t t) {
  const auto layout = eval::read_npy(dir / "layout.npy").to_i64();
  const auto boff = eval::read_npy(dir / "block_offsets.npy").to_i64();
  const auto starts = eval::read_npy(dir / "block_starts.npy").to_i64();
  const auto coff = eval::read_npy(dir / "column_offsets.npy").to_i64();
  const auto cols = eval::read_npy(dir / "columns.npy").to_i64();
  const index_t k_tokens = layout[2], q_offset = layout[3], q_blocks = layout[4];
  const index_t block_q = layout[5], block_k = layout[6], pos = q_offset + t;
  const auto e = static_cast<std::size_t>(h * q_blocks + t / block_q);
  REQUIRE(boff.size() == static_cast<std::size_t>(layout[0] * q_blocks + 1));
  std::vector<index_t> ks;
  for (auto i = boff[e]; i < boff[e + 1]; ++i)
    for (index_t j = starts[static_cast<std::size_t>(i)];
         j < starts[static_cast<std::size_t>(i)] + block_k && j <= pos && j < k_tokens; ++j)
      ks.push_back(j);
  for (auto i = coff[e]; i < coff[e + 1]; ++i)
    if (cols[static_cast<std::size_t>(i)] <= pos) ks.push_back(cols[static_cast<std::size_t>(i)]);
  std::sort(ks.begin(), ks.end());
  return ks;
}

}  // namespace

TEST_CASE("compare methods: dense computes the key sets it reports", "[compare]") {
  for (const dtype ty : {dtype::f32, dtype::f16}) {
    const index_t T = 4096;
    const input in = make_input(ty, T);
    for (const phase ph : {phase::prefill, phase::decode}) {
      problem p = prefill_problem(in);
      p.ph = ph;
      p.q_offset = ph == phase::prefill ? 0 : T - 16;
      p.q_tokens = ph == phase::prefill ? T : 16;
      INFO(phase_name(ph) << " " << dtype_name(ty));
      const auto dense = run_dense(p, budget::policy_default());
      CHECK(dense.computed_pairs == 4 * eval::causal_pairs(p.q_tokens, T, p.q_offset));
      CHECK(eval::count_pairs(dense.keys, 4, p.q_tokens, p.q_offset) == dense.computed_pairs);
      CHECK(kernel_vs_keys(p, dense) < 1e-5);
      CHECK(dense.seconds > 0);
      CHECK(dense.estimation_seconds < 0);  // no estimation
    }
  }
}

TEST_CASE("compare methods: every prefill policy through select + sparse_prefill", "[compare]") {
  const auto all = builtin_methods();
  const std::vector<std::string> policies{"dense-policy", "a-shape",     "vertical-slash",
                                          "block-sparse", "flexprefill", "strided"};
  for (const dtype ty : {dtype::f32, dtype::f16}) {
    const index_t T = 2048;
    const input in = make_input(ty, T);
    const problem p = prefill_problem(in);
    const double causal = 4 * eval::causal_pairs(T, T, 0);
    for (const auto& name : policies) {
      const method& m = find_method(all, name);
      CHECK(m.prefill);
      CHECK(!m.decode);
      CHECK(m.uses_budget == (name != "dense-policy"));
      std::vector<std::pair<std::string, budget>> budgets{{"default", budget::policy_default()}};
      if (m.uses_budget)
        for (const double c : {3.0, 5.0})
          budgets.push_back({"compression", budget::compression(c)});
      for (const auto& [label, b] : budgets) {
        INFO(name << " " << dtype_name(ty) << " " << b.describe());
        const method_run r = m.run(p, b);
        // The pairs reported are those of the key sets, and the kernel computed exactly them.
        CHECK(eval::count_pairs(r.keys, 4, T, 0) == r.computed_pairs);
        CHECK(kernel_vs_keys(p, r) < 1e-5);
        if (b.kind() == budget_kind::ratio) CHECK(r.computed_pairs <= b.value() * causal);
        if (name == "dense-policy") CHECK(r.computed_pairs == causal);
        CHECK(r.seconds > 0);
        CHECK(r.estimation_seconds >= 0);
        CHECK(r.estimation_seconds <= r.seconds * 2);  // fastest calls: roughly a part of it
        const bool estimates =
            name == "vertical-slash" || name == "block-sparse" || name == "flexprefill";
        CHECK((r.estimation_flops > 0) == estimates);
        CHECK_THAT(r.budget_note, Catch::Contains("block density"));
        // The native selection files describe the same key sets.
        REQUIRE(r.save_selection);
        const auto dir = std::filesystem::temp_directory_path() /
                         ("spattn_compare_sel_" + std::to_string(::getpid()));
        std::filesystem::remove_all(dir);
        r.save_selection(dir);
        for (const index_t h : {0, 3})
          for (const index_t t : {0, 63, 64, 700, 1500, 2047}) {
            INFO("head " << h << " token " << t);
            CHECK(keys_from_saved(dir, h, t) == r.keys(h, t));
          }
        std::filesystem::remove_all(dir);
      }
    }
  }
}

TEST_CASE("compare methods: dense as a policy equals the dense kernel", "[compare]") {
  const input in = make_input(dtype::f32, 1000);
  const problem p = prefill_problem(in);
  const auto dense = run_dense(p, budget::policy_default());
  const auto pol = run_prefill_policy(policies::dense{}, p, budget::policy_default());
  REQUIRE(pol.out.size() == dense.out.size());
  double worst = 0;
  for (std::size_t i = 0; i < pol.out.size(); ++i)
    worst = std::max(worst, static_cast<double>(std::abs(pol.out[i] - dense.out[i])));
  CHECK(worst < 1e-6);
}

TEST_CASE("compare methods: budgets a policy cannot meet are reported", "[compare]") {
  const input in = make_input(dtype::f32, 1024);
  const problem p = prefill_problem(in);
  const auto all = builtin_methods();
  // A fixed pattern has no coverage form; dense keeps everything; the forced parts do not fit.
  CHECK_THROWS_AS(find_method(all, "a-shape").run(p, budget::coverage(0.9)), budget_not_met);
  CHECK_THROWS_AS(find_method(all, "dense-policy").run(p, budget::compression(5)), budget_not_met);
  CHECK_THROWS_AS(find_method(all, "block-sparse").run(p, budget::compression(500)),
                  budget_not_met);
  CHECK_THROWS_AS(find_method(all, "vertical-slash").run(p, budget::compression(100)),
                  budget_not_met);
  CHECK_THROWS_AS(find_method(all, "strided").run(p, budget::tokens(100)), budget_not_met);
  CHECK_THROWS_WITH(find_method(all, "a-shape").run(p, budget::coverage(0.9)),
                    Catch::Contains("budget"));
  // flexprefill takes coverage budgets (alpha).
  const auto r = find_method(all, "flexprefill").run(p, budget::coverage(0.5));
  CHECK(kernel_vs_keys(p, r) < 1e-5);
  // A prefill policy is not a decode method.
  problem d = p;
  d.ph = phase::decode;
  d.q_offset = 1000;
  d.q_tokens = 24;
  CHECK_THROWS_AS(run_prefill_policy(policies::a_shape{}, d, budget::policy_default()),
                  spattn::error);
}

namespace {
// A policy written in a test: registered with one line, named by its name().
struct last_block_policy {
  std::string name() const { return "last-block"; }
  prefill_selection select(const prefill_inputs& in, const budget&) const {
    prefill_selection sel = in.empty_selection(64, 64);
    for (index_t h = 0; h < sel.heads; ++h)
      for (index_t b = 0; b < sel.q_blocks(); ++b)
        sel.at(h, b).blocks.push_back(sel.last_position(b) / 64 * 64);
    return sel;
  }
};
}  // namespace

TEST_CASE("compare methods: any prefill_policy registers with one line", "[compare]") {
  std::vector<method> m;
  m.push_back(prefill_method(last_block_policy{}));
  m.push_back(prefill_method(strided_policy{}));
  CHECK(m[0].name == "last-block");
  CHECK(m[1].name == "strided");
  CHECK_THAT(m[1].description, Catch::Contains("strided"));
  const input in = make_input(dtype::bf16, 512);
  const auto r = m[0].run(prefill_problem(in), budget::compression(3));
  CHECK(r.keys(1, 100) == [] {
    std::vector<index_t> k;
    for (index_t j = 64; j <= 100; ++j) k.push_back(j);
    return k;
  }());
  CHECK(kernel_vs_keys(prefill_problem(in), r) < 1e-5);
  // The names of the built-in registry are unique.
  const auto all = builtin_methods();
  std::set<std::string> names;
  for (const auto& x : all) names.insert(x.name);
  CHECK(names.size() == all.size());
  CHECK(names.count("a-shape-builtin") == 0);
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
