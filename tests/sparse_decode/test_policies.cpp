// The policy interface for decoding: concepts (including must-not-compile checks), one generic
// conformance suite run over every decode and eviction policy, and bad input.
#include "decode_support.hpp"

using namespace spattn;
using namespace spattn::policies;
using namespace spattn::test;

namespace {

// --- concepts ----------------------------------------------------------------------------------

// A user policy is a plain struct: read the last `pages` pages (a sliding window at page grain).
struct last_pages {
  index_t pages = 2, page_size = 16;
  std::string name() const { return "last_pages"; }
  decode_selection select(const decode_inputs& in, const budget&) const {
    decode_selection s;
    s.page_size = page_size;
    s.group = in.q.heads() / in.kv_heads();
    s.lengths = in.lengths;
    for (const index_t n : in.lengths) {
      std::vector<index_t> p;
      const index_t np = (n + page_size - 1) / page_size;
      for (index_t x = std::max<index_t>(0, np - pages); x < np; ++x) p.push_back(x);
      s.pages.push_back(p);
    }
    return s;
  }
};

struct no_name {
  decode_selection select(const decode_inputs&, const budget&) const { return {}; }
};
struct wrong_result {
  std::string name() const { return "x"; }
  std::vector<index_t> select(const decode_inputs&, const budget&) const { return {}; }
};
struct non_const_select {
  std::string name() const { return "x"; }
  decode_selection select(const decode_inputs&, const budget&) { return {}; }
};
struct name_is_int {
  int name() const { return 1; }
  decode_selection select(const decode_inputs&, const budget&) const { return {}; }
};
struct no_budget {
  std::string name() const { return "x"; }
  decode_selection select(const decode_inputs&) const { return {}; }
};
struct decode_not_eviction {
  std::string name() const { return "x"; }
  decode_selection select(const eviction_inputs&, const budget&) const { return {}; }
};

static_assert(decode_policy<last_pages>);
static_assert(decode_policy<quest> && decode_policy<streaming_llm>);
static_assert(eviction_policy<snapkv> && eviction_policy<ada_snapkv> &&
              eviction_policy<streaming_llm>);
static_assert(!decode_policy<no_name>);
static_assert(!decode_policy<wrong_result>);
static_assert(!decode_policy<non_const_select>);
static_assert(!decode_policy<name_is_int>);
static_assert(!decode_policy<no_budget>);
static_assert(!eviction_policy<decode_not_eviction>);
static_assert(!eviction_policy<quest> && !decode_policy<snapkv> && !decode_policy<ada_snapkv>);
static_assert(kv_cache_reader<kv_cache<f16>> && kv_cache_reader<paged_sequence<bf16>>);
static_assert(!kv_cache_reader<paged_cache<float>>);  // read a sequence() of it

// --- conformance: decode policies ---------------------------------------------------------------

template <class P>
void decode_conformance(const P& policy, const std::vector<budget>& budgets,
                        index_t summary_page = 16) {
  const index_t heads = 8, kvh = 2, d = 32;
  for (const index_t n : {1, 16, 17, 500, 1300}) {
    auto k = random_tensor<f16>(n, kvh, d, static_cast<std::uint64_t>(n), 1.5f);
    auto v = random_tensor<f16>(n, kvh, d, static_cast<std::uint64_t>(n) + 1);
    auto q = random_tensor<bf16>(1, heads, d, static_cast<std::uint64_t>(n) + 2);
    kv_cache<f16> cache(kvh, d);
    cache.append(k.cview(), v.cview());
    cache.enable_summaries(summary_page);
    for (const auto& b : budgets) {
      INFO(policy.name() << " n=" << n << " budget=" << b.describe());
      REQUIRE_FALSE(policy.name().empty());
      const auto in = make_decode_inputs(q.cview(), cache);
      const auto sel = policy.select(in, b);
      REQUIRE_NOTHROW(sel.validate());  // sorted, unique, in range
      for (index_t s = 0; s < sel.heads(); ++s) {
        REQUIRE(sel.lengths[static_cast<std::size_t>(s)] == n);
        // The current token is always read.
        const auto toks = selected_tokens(sel, sel.per_query_head ? s : s * sel.group);
        REQUIRE(!toks.empty());
        REQUIRE(toks.back() == n - 1);
        if (b.kind() == budget_kind::tokens) {
          REQUIRE(sel.tokens(s) <= static_cast<index_t>(b.value()) + sel.page_size);
        }
      }
      // Deterministic, and independent of the executor.
      auto in2 = make_decode_inputs(q.cview(), cache, executor::serial());
      REQUIRE(policy.select(in2, b) == sel);
      // The kernel reads exactly the selection.
      auto [out, lse] = run_decode<float>(q, cache, &sel, 1);
      check_against_oracle<float>(
          q, k, v, [&](index_t h) { return selected_tokens(sel, h); }, out, lse);
    }
  }
}

// --- conformance: eviction policies ------------------------------------------------------------

template <class P>
void eviction_conformance(const P& policy, const std::vector<budget>& budgets, bool shared_budget) {
  const index_t heads = 8, kvh = 2, d = 32;
  for (const index_t L : {300, 1000}) {
    auto q = random_tensor<float>(L, heads, d, static_cast<std::uint64_t>(L), 1.5f);
    auto k = random_tensor<bf16>(L, kvh, d, static_cast<std::uint64_t>(L) + 1, 1.5f);
    eviction_inputs in;
    in.queries = q.cview();
    in.keys = k.cview();
    for (const auto& b : budgets) {
      INFO(policy.name() << " L=" << L << " budget=" << b.describe());
      REQUIRE_FALSE(policy.name().empty());
      const auto sel = policy.select(in, b);
      REQUIRE_NOTHROW(sel.validate());
      REQUIRE(sel.heads() == kvh);
      const index_t cap =
          b.kind() == budget_kind::tokens
              ? static_cast<index_t>(b.value())
              : static_cast<index_t>(std::ceil(b.value() * static_cast<double>(L) - 1e-9));
      if (shared_budget) {
        REQUIRE(sel.total_kept() == std::min(cap, L) * kvh);
      } else {
        for (index_t g = 0; g < kvh; ++g) REQUIRE(sel.kept(g) == std::min(cap, L));
      }
      for (index_t g = 0; g < kvh; ++g) {
        // Forced parts: the first token (sink / prefix) and the last (local window).
        const auto& keep = sel.keep[static_cast<std::size_t>(g)];
        REQUIRE(keep.front() == 0);
        REQUIRE(keep.back() == L - 1);
        REQUIRE(sel.lengths[static_cast<std::size_t>(g)] == L);
      }
      auto in2 = in;
      in2.exec = executor::serial();
      REQUIRE(policy.select(in2, b) == sel);
      // Capacity covering the prompt: identity.
      REQUIRE(policy.select(in, budget::tokens(L)).is_identity());
    }
  }
}

}  // namespace

TEST_CASE("decode policies pass the conformance suite", "[policy][conformance]") {
  decode_conformance(quest{}, {budget::policy_default(), budget::tokens(64), budget::tokens(256),
                               budget::kept(0.1)});
  decode_conformance(quest{128, 16, false}, {budget::policy_default(), budget::tokens(32)});
  decode_conformance(quest{64, 8, true}, {budget::policy_default()}, 8);
  decode_conformance(streaming_llm{},
                     {budget::policy_default(), budget::tokens(100), budget::kept(0.2)});
  decode_conformance(last_pages{}, {budget::policy_default()});
}

TEST_CASE("eviction policies pass the conformance suite", "[policy][conformance]") {
  eviction_conformance(snapkv{128, 64, 21, 32, 4}, {budget::tokens(100), budget::kept(0.3)}, false);
  eviction_conformance(ada_snapkv{128, 64, 21, 32, 4, 0.2},
                       {budget::tokens(100), budget::kept(0.3, allocation::adaptive)}, true);
  eviction_conformance(streaming_llm{}, {budget::tokens(100), budget::kept(0.3)}, false);
}

TEST_CASE("selections print, compare and report density", "[selection]") {
  decode_selection s;
  s.page_size = 4;
  s.group = 2;
  s.lengths = {10, 10};
  s.pages = {{0, 2}, {1}};
  CHECK(s.tokens(0) == 6);  // page 2 holds tokens 8, 9
  CHECK(s.total_tokens() == 10);
  CHECK(s.density() == Approx(0.5));
  CHECK(s.kv_bytes(64, 2) == 2.0 * 10 * 64 * 2);
  CHECK(s.ranges(0) == std::vector<std::pair<index_t, index_t>>{{0, 4}, {8, 10}});
  CHECK_THAT(s.to_string(), Catch::Contains("head 0 (length 10, 6 tokens): pages 0 2"));
  auto t = s;
  CHECK(t == s);
  t.pages[1] = {2};
  CHECK_FALSE(t == s);
  eviction_selection e;
  e.lengths = {5, 5};
  e.keep = {{0, 4}, {0, 1, 2, 3, 4}};
  CHECK(e.density() == Approx(0.7));
  CHECK_FALSE(e.is_identity());
  CHECK_THAT(e.to_string(), Catch::Contains("kv head 0 (length 5, keeps 2): 0 4"));
}

TEST_CASE("bad budgets, selections and cache states raise spattn::error", "[errors]") {
  const index_t heads = 4, kvh = 2, d = 16, n = 100;
  auto k = random_tensor<float>(n, kvh, d, 1);
  auto q = random_tensor<float>(1, heads, d, 2);
  auto q2 = random_tensor<float>(2, heads, d, 2);
  kv_cache<float> cache(kvh, d);
  cache.append(k.cview(), k.cview());

  // Quest needs summaries with its page size.
  REQUIRE_THROWS_WITH(
      quest{}.select(make_decode_inputs(q.cview(), cache), budget::policy_default()),
      Catch::Contains("summaries page_size"));
  cache.enable_summaries(8);
  REQUIRE_THROWS_WITH(
      quest{}.select(make_decode_inputs(q.cview(), cache), budget::policy_default()),
      Catch::Contains("summaries page_size"));
  cache.enable_summaries(16);
  const auto in = make_decode_inputs(q.cview(), cache);
  REQUIRE_THROWS_WITH(quest{}.select(in, budget::tokens(40)), Catch::Contains("multiple"));
  REQUIRE_THROWS_WITH(quest{}.select(in, budget::coverage(0.9)), Catch::Contains("coverage"));
  REQUIRE_THROWS_WITH(quest{}.select(in, budget::tokens(64, allocation::adaptive)),
                      Catch::Contains("allocation"));
  REQUIRE_THROWS_AS((quest{0, 16, true}.select(in, budget::policy_default())), spattn::error);
  REQUIRE_THROWS_AS((quest{64, 0, true}.select(in, budget::policy_default())), spattn::error);
  REQUIRE_THROWS_AS(quest{}.select(make_decode_inputs(q2.cview(), cache), budget::tokens(64)),
                    spattn::error);
  auto q3 = random_tensor<float>(1, 3, d, 2);
  REQUIRE_THROWS_WITH(quest{}.select(make_decode_inputs(q3.cview(), cache), budget::tokens(64)),
                      Catch::Contains("q.heads"));
  REQUIRE_THROWS_AS(budget::tokens(0), spattn::error);
  auto qnan = q;
  qnan.data[5] = std::numeric_limits<float>::quiet_NaN();
  REQUIRE_THROWS_WITH(quest{}.select(make_decode_inputs(qnan.cview(), cache), budget::tokens(32)),
                      Catch::Contains("NaN"));

  // A selection made before an append no longer matches the cache.
  const auto sel = quest{}.select(in, budget::tokens(32));
  tensor<float> out(1, heads, d);
  REQUIRE_NOTHROW(sparse_decode(q.cview(), cache, sel, out.view()));
  auto k1 = random_tensor<float>(1, kvh, d, 3);
  cache.append(k1.cview(), k1.cview());
  REQUIRE_THROWS_WITH(sparse_decode(q.cview(), cache, sel, out.view()),
                      Catch::Contains("selection lengths"));
  auto bad = quest{}.select(make_decode_inputs(q.cview(), cache), budget::tokens(32));
  REQUIRE_NOTHROW(sparse_decode(q.cview(), cache, bad, out.view()));
  std::swap(bad.pages[0][0], bad.pages[0][1]);
  REQUIRE_THROWS_WITH(sparse_decode(q.cview(), cache, bad, out.view()),
                      Catch::Contains("ascending"));
  std::swap(bad.pages[0][0], bad.pages[0][1]);
  bad.pages[1].push_back(7);  // 101 tokens: pages 0..6
  REQUIRE_THROWS_WITH(sparse_decode(q.cview(), cache, bad, out.view()), Catch::Contains("[0, 7)"));
  bad.pages[1].pop_back();
  bad.group = 1;
  REQUIRE_THROWS_WITH(sparse_decode(q.cview(), cache, bad, out.view()),
                      Catch::Contains("selection group"));
  bad.group = 2;
  bad.per_query_head = true;
  REQUIRE_THROWS_WITH(sparse_decode(q.cview(), cache, bad, out.view()),
                      Catch::Contains("selection heads"));
  bad.per_query_head = false;
  tensor<float> out_bad(1, heads, 8);
  REQUIRE_THROWS_WITH(sparse_decode(q.cview(), cache, bad, out_bad.view()), Catch::Contains("out"));
  tensor<float> out2(2, heads, d);
  REQUIRE_THROWS_WITH(cache_decode(q2.cview(), cache, out2.view()), Catch::Contains("q.tokens"));
  kv_cache<float> odd(1, 12);
  auto ko = random_tensor<float>(3, 1, 12, 1);
  odd.append(ko.cview(), ko.cview());
  auto qo = random_tensor<float>(1, 1, 12, 1);
  tensor<float> oo(1, 1, 12);
  REQUIRE_THROWS_WITH(cache_decode(qo.cview(), odd, oo.view()), Catch::Contains("head_dim"));

  // SnapKV family.
  const index_t L = 200;
  auto pq = random_tensor<float>(L, heads, d, 5);
  auto pk = random_tensor<float>(L, kvh, d, 6);
  eviction_inputs ev;
  ev.queries = pq.cview();
  ev.keys = pk.cview();
  const snapkv snap64{1024, 64};
  REQUIRE_THROWS_WITH(snap64.select(ev, budget::tokens(132)), Catch::Contains("capacity"));
  REQUIRE_NOTHROW(snap64.select(ev, budget::tokens(133)));
  REQUIRE_THROWS_WITH((snapkv{150, 256, 21, 128, 4}.select(ev, budget::policy_default())),
                      Catch::Contains("approximation_window"));  // L = 200 < 256
  REQUIRE_THROWS_WITH((snapkv{150, 64, 20, 16, 4}.select(ev, budget::policy_default())),
                      Catch::Contains("kernel_size"));
  REQUIRE_THROWS_WITH(snapkv{}.select(ev, budget::coverage(0.5)), Catch::Contains("coverage"));
  REQUIRE_THROWS_WITH(snapkv{}.select(ev, budget::tokens(150, allocation::adaptive)),
                      Catch::Contains("allocation"));
  auto ev_short = ev;
  ev_short.queries = pq.cview().slice_tokens(L - 100, 100);  // fewer than the 256-query window
  REQUIRE_THROWS_WITH((snapkv{150, 128, 21, 16, 4}.select(ev_short, budget::policy_default())),
                      Catch::Contains("queries.tokens"));
  auto ev_len = ev;
  ev_len.lengths = {L, L + 5};  // not right after prefill
  REQUIRE_THROWS_WITH(snapkv{}.select(ev_len, budget::tokens(150)), Catch::Contains("lengths"));
  REQUIRE_THROWS_WITH((ada_snapkv{100, 64, 21, 16, 4, 1.5}.select(ev, budget::policy_default())),
                      Catch::Contains("min_head_capacity_ratio"));
  REQUIRE_THROWS_WITH((ada_snapkv{1024, 64}.select(ev, budget::tokens(131))),
                      Catch::Contains("capacity"));
  REQUIRE_NOTHROW((ada_snapkv{1024, 64}.select(ev, budget::tokens(132))));
  auto pq_nan = pq;
  pq_nan.data[static_cast<std::size_t>((L - 1) * heads * d)] =
      std::numeric_limits<float>::quiet_NaN();
  auto ev_nan = ev;
  ev_nan.queries = pq_nan.cview();
  REQUIRE_THROWS_WITH(snap64.select(ev_nan, budget::tokens(150)), Catch::Contains("finite"));
  REQUIRE_THROWS_WITH((ada_snapkv{150, 64}.select(ev_nan, budget::policy_default())),
                      Catch::Contains("finite"));
  eviction_inputs none;
  REQUIRE_THROWS_AS(snapkv{}.select(none, budget::policy_default()), spattn::error);
  REQUIRE_THROWS_WITH(streaming_llm{}.select(none, budget::policy_default()),
                      Catch::Contains("lengths or keys"));
  REQUIRE_THROWS_WITH(streaming_llm{}.select(ev, budget::tokens(4)), Catch::Contains("sink"));
  REQUIRE_THROWS_WITH(streaming_llm{}.select(ev, budget::coverage(0.5)),
                      Catch::Contains("coverage"));
}
