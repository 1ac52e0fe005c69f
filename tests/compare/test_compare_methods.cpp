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

// ---------------------------------------------------------------------------------------------
// Decode: decode policies (select + sparse_decode per step on the full cache) and eviction
// policies (one eviction of the prompt, then cache_decode per step).

namespace {

problem decode_problem(const input& in, index_t steps = 16) {
  problem p;
  p.in = &in;
  p.ph = phase::decode;
  p.q_offset = in.tokens - steps;
  p.q_tokens = steps;
  p.exec = executor::openmp(2);
  p.reps = 1;
  return p;
}

std::vector<index_t> iota_keys(index_t a, index_t z) {  // [a, z)
  std::vector<index_t> k;
  for (index_t j = a; j < z; ++j) k.push_back(j);
  return k;
}

// Rebuilds the key set of (query head h, decode step t) from a decode run's native files.
std::vector<index_t> decode_keys_from_saved(const std::filesystem::path& dir, index_t h,
                                            index_t t) {
  std::vector<index_t> ks;
  if (std::filesystem::exists(dir / "decode_layout.npy")) {
    const auto layout = eval::read_npy(dir / "decode_layout.npy").to_i64();
    REQUIRE(layout.size() == 6);
    const index_t heads = layout[0], steps = layout[1], page_size = layout[3], group = layout[4];
    const bool per_query_head = layout[5] != 0;
    const auto lengths = eval::read_npy(dir / "page_lengths.npy").to_i64();
    const auto off = eval::read_npy(dir / "page_offsets.npy").to_i64();
    const auto pages = eval::read_npy(dir / "pages.npy").to_i64();
    REQUIRE(off.size() == static_cast<std::size_t>(heads * steps + 1));
    const index_t s = per_query_head ? h : h / group;
    const auto e = static_cast<std::size_t>(s * steps + t);
    CHECK(lengths[e] == layout[2] + t + 1);
    for (auto i = off[e]; i < off[e + 1]; ++i) {
      const index_t p = pages[static_cast<std::size_t>(i)];
      for (index_t j = p * page_size; j < std::min((p + 1) * page_size, lengths[e]); ++j)
        ks.push_back(j);
    }
    return ks;
  }
  const auto layout = eval::read_npy(dir / "eviction_layout.npy").to_i64();
  REQUIRE(layout.size() == 4);
  const index_t kvh = layout[0], group = layout[1], L = layout[2];
  const auto off = eval::read_npy(dir / "kept_offsets.npy").to_i64();
  const auto kept = eval::read_npy(dir / "kept.npy").to_i64();
  REQUIRE(off.size() == static_cast<std::size_t>(kvh + 1));
  const auto g = static_cast<std::size_t>(h / group);
  for (auto i = off[g]; i < off[g + 1]; ++i) ks.push_back(kept[static_cast<std::size_t>(i)]);
  for (index_t j = L; j <= L + t; ++j) ks.push_back(j);
  return ks;
}

}  // namespace

TEST_CASE("compare methods: every decode and eviction policy computes the key sets it reports",
          "[compare][decode]") {
  const auto all = builtin_methods();
  const std::vector<std::string> decode_methods{"quest", "snapkv", "ada-snapkv", "streaming-llm"};
  for (const dtype ty : {dtype::f32, dtype::bf16}) {
    const index_t T = 2048, steps = 16, L = T - steps;
    const input in = make_input(ty, T);
    const problem p = decode_problem(in, steps);
    const double causal = 4 * eval::causal_pairs(steps, T, L);
    for (const auto& name : decode_methods) {
      const method& m = find_method(all, name);
      CHECK(m.decode);
      CHECK(!m.prefill);
      CHECK(m.uses_budget);
      const bool quest = name == "quest";
      for (const auto& b : {budget::policy_default(), budget::compression(4),
                            budget::compression(8), budget::tokens(320)}) {
        INFO(name << " " << dtype_name(ty) << " " << b.describe());
        const method_run r = m.run(p, b);
        // Every step's output is there and equals the oracle over the step's key set.
        CHECK(r.out_first == 0);
        REQUIRE(r.out.size() == static_cast<std::size_t>(steps * 4 * 32));
        CHECK(kernel_vs_keys(p, r) < 1e-5);
        const double pairs = eval::count_pairs(r.keys, 4, steps, L);  // validates every list
        CHECK(pairs <= causal);
        CHECK(r.seconds > 0);
        CHECK(r.estimation_seconds >= 0);
        CHECK(!r.budget_note.empty());
        for (index_t t = 0; t < steps; ++t) {
          const auto ks = r.keys(1, t);
          REQUIRE(!ks.empty());
          CHECK(ks.back() == L + t);  // the current token is always read
          if (!quest) {
            // Eviction: the decode tokens are never evicted, and the prompt part (one eviction)
            // is the same at every step.
            REQUIRE(ks.size() > static_cast<std::size_t>(t + 1));
            const auto split = ks.end() - (t + 1);
            CHECK(std::vector<index_t>(split, ks.end()) == iota_keys(L, L + t + 1));
            const auto first = r.keys(1, 0);
            CHECK(std::vector<index_t>(ks.begin(), split) ==
                  std::vector<index_t>(first.begin(), first.end() - 1));
          }
        }
        // Budgets: the kept prompt tokens per KV head (eviction), or the pages read besides the
        // current page (quest), within the budget.
        const index_t kept_last = static_cast<index_t>(r.keys(0, steps - 1).size());
        if (b.kind() == budget_kind::ratio) {
          const double f = b.value();
          if (quest) {  // round(f * n / 16) pages + the current page's 1..16 tokens
            CHECK(kept_last <= std::llround(f * T / 16.0) * 16 + 16);
            CHECK(r.estimation_flops > 0);
          } else if (name == "ada-snapkv") {  // shared: the average over KV heads
            const double total = static_cast<double>(r.keys(0, 0).size() + r.keys(2, 0).size());
            CHECK(total - 2 <= 2 * std::ceil(f * L));
          } else {
            CHECK(static_cast<double>(r.keys(0, 0).size()) - 1 <= std::ceil(f * L));
          }
          if (name == "snapkv" || name == "ada-snapkv") CHECK(r.estimation_flops > 0);
          if (name == "streaming-llm") CHECK(r.estimation_flops == 0);
        }
        if (b.kind() == budget_kind::tokens) {
          if (quest) CHECK(kept_last <= 320 + 16);
          if (name == "snapkv" || name == "streaming-llm")
            CHECK(r.keys(0, 0).size() == std::size_t{321});
        }
        // The native selection files describe the same key sets.
        REQUIRE(r.save_selection);
        const auto dir = std::filesystem::temp_directory_path() /
                         ("spattn_compare_dsel_" + std::to_string(::getpid()));
        std::filesystem::remove_all(dir);
        r.save_selection(dir);
        CHECK(std::filesystem::exists(dir / (quest ? "pages.npy" : "kept.npy")));
        for (const index_t h : {0, 1, 3})
          for (const index_t t : {index_t{0}, index_t{7}, steps - 1}) {
            INFO("head " << h << " step " << t);
            CHECK(decode_keys_from_saved(dir, h, t) == r.keys(h, t));
          }
        std::filesystem::remove_all(dir);
      }
    }
  }
}

TEST_CASE("compare methods: decode budgets covering the cache equal dense decode",
          "[compare][decode]") {
  const index_t T = 1500, steps = 8, L = T - steps;
  const input in = make_input(dtype::f32, T);
  const problem p = decode_problem(in, steps);
  const auto dense = run_dense(p, budget::policy_default());
  const auto all = builtin_methods();
  // Quest with a token budget covering every page, eviction keeping every prompt token.
  const std::vector<std::pair<std::string, budget>> runs{
      {"quest", budget::tokens((T + 15) / 16 * 16)},
      {"snapkv", budget::kept(1.0)},
      {"ada-snapkv", budget::tokens(T)},
      {"streaming-llm", budget::kept(1.0)}};
  for (const auto& [name, b] : runs) {
    INFO(name);
    const auto r = find_method(all, name).run(p, b);
    for (index_t t = 0; t < steps; ++t)
      for (index_t h = 0; h < 4; ++h) REQUIRE(r.keys(h, t) == iota_keys(0, L + t + 1));
    // The last step's output equals the dense kernel's.
    double worst = 0;
    const auto HD = static_cast<std::size_t>(4 * 32);
    for (std::size_t x = 0; x < HD; ++x)
      worst = std::max(
          worst, static_cast<double>(
                     std::abs(r.out[static_cast<std::size_t>(steps - 1) * HD + x] - dense.out[x])));
    CHECK(worst < 1e-5);
    if (name == "snapkv" || name == "ada-snapkv") CHECK(r.estimation_flops == 0);  // looked at none
  }
}

TEST_CASE("compare methods: decode budgets a policy cannot meet are reported",
          "[compare][decode]") {
  const input in = make_input(dtype::f32, 1024);
  const problem p = decode_problem(in);
  const auto all = builtin_methods();
  for (const auto* name : {"quest", "snapkv", "ada-snapkv", "streaming-llm"}) {
    INFO(name);
    // No coverage form.
    CHECK_THROWS_AS(find_method(all, name).run(p, budget::coverage(0.9)), budget_not_met);
    CHECK_THROWS_WITH(find_method(all, name).run(p, budget::coverage(0.9)),
                      Catch::Contains("budget"));
  }
  // Quest token budgets are whole pages; SnapKV's capacity holds its 4 + 128 forced tokens.
  CHECK_THROWS_AS(find_method(all, "quest").run(p, budget::tokens(100)), budget_not_met);
  CHECK_THROWS_AS(find_method(all, "snapkv").run(p, budget::compression(20)), budget_not_met);
  CHECK_THROWS_AS(find_method(all, "ada-snapkv").run(p, budget::compression(20)), budget_not_met);
  CHECK_THROWS_WITH(find_method(all, "snapkv").run(p, budget::compression(20)),
                    Catch::Contains("local_window + prefix_tokens"));
  // StreamingLLM keeps its sinks and at least the current token at any compression.
  const auto r = find_method(all, "streaming-llm").run(p, budget::compression(100));
  CHECK(kernel_vs_keys(p, r) < 1e-5);
  // A decode method is not a prefill method, and the prompt must exist.
  CHECK_THROWS_AS(run_decode_policy(policies::quest{}, prefill_problem(in), budget::compression(5)),
                  spattn::error);
  CHECK_THROWS_AS(
      run_eviction_policy(policies::snapkv{}, prefill_problem(in), budget::compression(5)),
      spattn::error);
}

TEST_CASE("compare methods: decode needles are seen by the decode phase", "[compare][decode]") {
  // The generator puts the first needle of each retrieval head at the last token.
  const input in = make_input(dtype::f32, 2048);
  const problem p = decode_problem(in);
  const auto dense = run_dense(p, budget::policy_default());
  const auto nr = eval::needle_recall_of(in.needles, dense.keys, p.q_offset, p.q_tokens);
  CHECK(nr.total >= 1);
  CHECK(nr.found == nr.total);
  for (const auto* name : {"quest", "snapkv", "ada-snapkv", "streaming-llm"}) {
    const auto r = find_method(builtin_methods(), name).run(p, budget::compression(4));
    const auto n = eval::needle_recall_of(in.needles, r.keys, p.q_offset, p.q_tokens);
    CHECK(n.total == nr.total);
  }
}

namespace {
// Policies written in a test, registered with one line each: a decode policy reading the last
// 64 tokens (a token list: page_size 1) and an eviction policy keeping every other prompt token.
struct recent_policy {
  std::string name() const { return "recent"; }
  decode_selection select(const decode_inputs& in, const budget&) const {
    decode_selection sel;
    sel.group = in.q.heads() / in.kv_heads();
    sel.lengths = in.lengths;
    for (const index_t n : in.lengths)
      sel.pages.push_back(iota_keys(std::max<index_t>(0, n - 64), n));
    return sel;
  }
};
struct every_other_policy {
  std::string name() const { return "every-other"; }
  eviction_selection select(const eviction_inputs& in, const budget&) const {
    eviction_selection sel;
    sel.lengths = in.lengths;
    for (const index_t n : in.lengths) {
      std::vector<index_t> k;
      for (index_t j = 0; j < n; j += 2) k.push_back(j);
      sel.keep.push_back(std::move(k));
    }
    return sel;
  }
};
static_assert(decode_policy<recent_policy>);
static_assert(eviction_policy<every_other_policy>);
}  // namespace

TEST_CASE("compare methods: any decode or eviction policy registers with one line",
          "[compare][decode]") {
  std::vector<method> m;
  m.push_back(decode_method(recent_policy{}));
  m.push_back(eviction_method(every_other_policy{}));
  m.push_back(decode_method(policies::streaming_llm{}, "streaming-llm-mask"));  // both concepts
  CHECK(m[0].name == "recent");
  CHECK(m[1].name == "every-other");
  CHECK_THAT(m[0].description, Catch::Contains("user-defined"));
  CHECK(m[0].decode);
  CHECK(!m[1].prefill);
  const input in = make_input(dtype::f16, 600);
  const problem p = decode_problem(in, 4);
  const auto r0 = m[0].run(p, budget::compression(5));
  CHECK(r0.keys(3, 2) == iota_keys(596 + 2 + 1 - 64, 596 + 2 + 1));
  CHECK(r0.estimation_flops == 0);  // unknown to the tool
  CHECK(kernel_vs_keys(p, r0) < 1e-5);
  const auto r1 = m[1].run(p, budget::compression(2));
  auto want = std::vector<index_t>{};
  for (index_t j = 0; j < 596; j += 2) want.push_back(j);
  for (index_t j = 596; j <= 597; ++j) want.push_back(j);
  CHECK(r1.keys(0, 1) == want);
  CHECK(kernel_vs_keys(p, r1) < 1e-5);
  // StreamingLLM as a mask over the full cache: sinks and the window sliding with the step.
  const auto r2 = m[2].run(p, budget::tokens(100));
  std::vector<index_t> mask{0, 1, 2, 3};
  for (index_t j = 597 - 96 + 1; j <= 597; ++j) mask.push_back(j);
  CHECK(r2.keys(0, 1) == mask);
  CHECK(kernel_vs_keys(p, r2) < 1e-5);
  // Built-in names are unique across phases.
  const auto all = builtin_methods();
  std::set<std::string> names;
  for (const auto& x : all) names.insert(x.name);
  CHECK(names.size() == all.size());
}
