// Quest page scores and choice (hand-computed), and sparse decoding over selected pages of
// contiguous and paged caches against the oracle and against dense decoding.
#include "decode_support.hpp"

using namespace spattn;
using namespace spattn::policies;
using namespace spattn::test;

namespace {

// One KV head, two query heads, page size 4, 13 tokens: complete pages 0, 1, 2 and the current
// page 3 holding token 12. Only the first two dims are non-zero.
struct hand_case {
  static constexpr index_t d = 8, n = 13;
  tensor<float> k{n, 1, d}, v{n, 1, d}, q{1, 2, d};
  kv_cache<float> cache{1, d};
  hand_case() {
    const float keys[n][2] = {
        {1, -2},   {3, 0},  {-1, 1}, {2, 2},   // page 0: min (-1, -2), max (3, 2)
        {0, 0},    {0, 0},  {0, 0},  {5, -3},  // page 1: min (0, -3),  max (5, 0)
        {-4, 1},   {-4, 1}, {-2, 4}, {-3, 2},  // page 2: min (-4, 1),  max (-2, 4)
        {100, 100}};                           // page 3 (current): never scored
    for (index_t t = 0; t < n; ++t) {
      k.data[static_cast<std::size_t>(t * d)] = keys[t][0];
      k.data[static_cast<std::size_t>(t * d + 1)] = keys[t][1];
      for (index_t x = 0; x < d; ++x) v.data[static_cast<std::size_t>(t * d + x)] = float(t + x);
    }
    // q0 = (1, -1), q1 = (-2, 0.5)
    q.data[0] = 1;
    q.data[1] = -1;
    q.data[d] = -2;
    q.data[d + 1] = 0.5f;
    cache.append(k.cview(), v.cview());
    cache.enable_summaries(4);
  }
};

}  // namespace

TEST_CASE("quest page scores and choice on a hand-computed case", "[quest]") {
  hand_case c;
  const auto in = make_decode_inputs(c.q.cview(), c.cache);
  // u[h][p] = sum_d max(q_d min_d, q_d max_d):
  //  q0: page 0: max(-1, 3) + max(2, -2) = 5;  page 1: max(0, 5) + max(3, 0) = 8;
  //      page 2: max(-4, -2) + max(-1, -4) = -3
  //  q1: page 0: max(2, -6) + max(-1, 1) = 3;  page 1: max(0, -10) + max(-1.5, 0) = 0;
  //      page 2: max(8, 4) + max(0.5, 2) = 10
  quest shared{4, 4, true}, per_head{4, 4, false};
  using scores = std::vector<std::vector<float>>;
  CHECK(shared.page_scores(in) == scores{{8, 8, 7}});
  CHECK(per_head.page_scores(in) == scores{{5, 8, -3}, {3, 0, 10}});

  // 1 page of budget: the best complete page (0 and 1 tie at 8: the lower wins) + current page 3.
  auto sel = shared.select(in, budget::policy_default());
  CHECK(sel.pages == std::vector<std::vector<index_t>>{{0, 3}});
  CHECK(sel.tokens(0) == 5);  // budget 4 + the current page's 1 token
  CHECK_FALSE(sel.per_query_head);
  auto ph = per_head.select(in, budget::policy_default());
  CHECK(ph.pages == std::vector<std::vector<index_t>>{{1, 3}, {2, 3}});
  CHECK(ph.per_query_head);
  // 2 pages.
  CHECK(shared.select(in, budget::tokens(8)).pages == std::vector<std::vector<index_t>>{{0, 1, 3}});
  CHECK(per_head.select(in, budget::tokens(8)).pages ==
        std::vector<std::vector<index_t>>{{0, 1, 3}, {0, 2, 3}});
  // 3 pages cover every complete page: all pages.
  CHECK(shared.select(in, budget::tokens(12)).pages ==
        std::vector<std::vector<index_t>>{{0, 1, 2, 3}});
  // Kept fraction 0.3 of 13 tokens -> round(3.9 / 4) = 1 page.
  CHECK(shared.select(in, budget::kept(0.3)).pages == std::vector<std::vector<index_t>>{{0, 3}});

  // Decoding the hand selection equals the oracle over tokens 0..3 and 12.
  auto [out, lse] = run_decode<float>(c.q, c.cache, &sel, 1);
  check_against_oracle<float>(
      c.q, c.k, c.v,
      [](index_t) {
        return std::vector<index_t>{0, 1, 2, 3, 12};
      },
      out, lse);
  auto [out2, lse2] = run_decode<float>(c.q, c.cache, &ph, 1);
  check_against_oracle<float>(
      c.q, c.k, c.v,
      [](index_t h) {
        return h == 0 ? std::vector<index_t>{4, 5, 6, 7, 12}
                      : std::vector<index_t>{8, 9, 10, 11, 12};
      },
      out2, lse2);
}

TEST_CASE("quest's current page is the partial last page, or the full last page", "[quest]") {
  // 16 tokens, page size 4: the current page is page 3 (full); complete pages 0..2 compete.
  const index_t d = 8;
  auto k = random_tensor<float>(16, 1, d, 3);
  auto q = random_tensor<float>(1, 1, d, 4);
  kv_cache<float> c(1, d);
  c.append(k.cview(), k.cview());
  c.enable_summaries(4);
  const auto sel =
      quest{4, 4, true}.select(make_decode_inputs(q.cview(), c), budget::policy_default());
  REQUIRE(sel.pages[0].size() == 2);
  CHECK(sel.pages[0].back() == 3);
  CHECK(sel.pages[0][0] < 3);
  CHECK(sel.tokens(0) == 8);
}

namespace {

template <class TKV>
void check_quest_decode(index_t n, index_t heads, index_t kvh, index_t d, index_t page_size,
                        const budget& b, bool share) {
  INFO("n=" << n << " heads=" << heads << ":" << kvh << " d=" << d << " page=" << page_size
            << " budget=" << b.describe() << " share=" << share);
  const auto seed = static_cast<std::uint64_t>(n * 7 + d + heads);
  auto q = random_tensor<float>(1, heads, d, seed, 1.0f);
  auto k = random_tensor<TKV>(n, kvh, d, seed + 1, 1.5f);
  auto v = random_tensor<TKV>(n, kvh, d, seed + 2, 1.0f);
  kv_cache<TKV> cache(kvh, d);
  paged_cache<TKV> pc(kvh, d, 16);
  const index_t id = pc.add_sequence();
  cache.append(k.cview(), v.cview());
  pc.append(id, k.cview(), v.cview());
  cache.enable_summaries(page_size);
  pc.enable_summaries(id, page_size);
  const quest policy{1024, page_size, share};
  const auto sel = policy.select(make_decode_inputs(q.cview(), cache), b);
  sel.validate();
  // The paged cache's summaries give the same selection.
  REQUIRE(sel == policy.select(make_decode_inputs(q.cview(), pc.sequence(id)), b));
  auto [out, lse] = run_decode<float>(q, cache, &sel, 2);
  check_against_oracle<float>(
      q, k, v, [&](index_t h) { return selected_tokens(sel, h); }, out, lse);
  // Thread count and cache layout do not change a bit of the result.
  auto [out1, lse1] = run_decode<float>(q, cache, &sel, 1);
  auto [outp, lsep] = run_decode<float>(q, pc.sequence(id), &sel, 2);
  CHECK(bit_equal(out, out1));
  CHECK(bit_equal(out, outp));
  CHECK(lse == lse1);
  CHECK(lse == lsep);
}

}  // namespace

TEST_CASE("quest decoding equals the oracle on the selected pages", "[quest][decode]") {
  check_quest_decode<float>(1000, 8, 2, 64, 16, budget::tokens(128), true);
  check_quest_decode<float>(1000, 8, 2, 64, 16, budget::tokens(128), false);
  check_quest_decode<f16>(2049, 8, 2, 128, 16, budget::tokens(256), true);
  check_quest_decode<bf16>(777, 4, 4, 72, 16, budget::kept(0.1), true);
  check_quest_decode<f16>(1500, 8, 1, 64, 8, budget::tokens(64), false);
  check_quest_decode<float>(300, 6, 2, 32, 5, budget::tokens(40), true);  // page size 5
  check_quest_decode<bf16>(4100, 32, 8, 128, 16, budget::policy_default(), true);
}

TEST_CASE("quest with a budget covering the whole cache equals dense decode", "[quest][decode]") {
  for (const index_t n : {1, 15, 16, 17, 640, 1601}) {
    INFO("n=" << n);
    const index_t heads = 8, kvh = 2, d = 64;
    auto q = random_tensor<float>(1, heads, d, static_cast<std::uint64_t>(n), 1.0f);
    auto k = random_tensor<f16>(n, kvh, d, static_cast<std::uint64_t>(n) + 1, 1.5f);
    auto v = random_tensor<f16>(n, kvh, d, static_cast<std::uint64_t>(n) + 2, 1.0f);
    kv_cache<f16> cache(kvh, d);
    cache.append(k.cview(), v.cview());
    cache.enable_summaries(16);
    const index_t budget_tokens = (n + 15) / 16 * 16;
    const auto sel =
        quest{}.select(make_decode_inputs(q.cview(), cache), budget::tokens(budget_tokens));
    for (index_t s = 0; s < kvh; ++s) REQUIRE(sel.tokens(s) == n);
    auto [out, lse] = run_decode<float>(q, cache, &sel, 2);
    // Dense decode over the same tensors.
    tensor<float> dense(1, heads, d);
    std::vector<float> dense_lse(static_cast<std::size_t>(heads));
    decode(q.cview(), k.cview(), v.cview(), dense.view(), lse_view(dense_lse.data(), 1, heads));
    for (std::size_t i = 0; i < out.data.size(); ++i)
      REQUIRE(std::abs(out.data[i] - dense.data[i]) <= 1e-5);
    for (std::size_t i = 0; i < lse.size(); ++i) REQUIRE(std::abs(lse[i] - dense_lse[i]) <= 1e-5);
    check_against_oracle<float>(
        q, k, v,
        [&](index_t) {
          std::vector<index_t> all(static_cast<std::size_t>(n));
          std::iota(all.begin(), all.end(), index_t{0});
          return all;
        },
        out, lse);
  }
}

TEST_CASE("quest while decoding: summaries follow appends, every step matches the oracle",
          "[quest][decode]") {
  const index_t heads = 4, kvh = 2, d = 32, n0 = 90, steps = 40;
  auto k = random_tensor<bf16>(n0 + steps, kvh, d, 21, 1.5f);
  auto v = random_tensor<bf16>(n0 + steps, kvh, d, 22);
  kv_cache<bf16> cache(kvh, d);
  paged_cache<bf16> pc(kvh, d, 8);
  const index_t id = pc.add_sequence();
  cache.enable_summaries(16);
  pc.enable_summaries(id, 16);
  cache.append(k.cview().slice_tokens(0, n0), v.cview().slice_tokens(0, n0));
  pc.append(id, k.cview().slice_tokens(0, n0), v.cview().slice_tokens(0, n0));
  for (index_t step = 0; step < steps; ++step) {
    const index_t n = n0 + step + 1;
    INFO("step " << step);
    cache.append(k.cview().slice_tokens(n - 1, 1), v.cview().slice_tokens(n - 1, 1));
    pc.append(id, k.cview().slice_tokens(n - 1, 1), v.cview().slice_tokens(n - 1, 1));
    auto q = random_tensor<float>(1, heads, d, static_cast<std::uint64_t>(100 + step));
    const auto sel =
        quest{32, 16, true}.select(make_decode_inputs(q.cview(), cache), budget::policy_default());
    REQUIRE(sel.pages[0].back() == (n - 1) / 16);
    REQUIRE(sel.pages[0].size() == 3);
    auto [out, lse] = run_decode<float>(q, pc.sequence(id), &sel, 1);
    tensor<bf16> kn(n, kvh, d), vn(n, kvh, d);
    std::copy_n(k.data.begin(), n * kvh * d, kn.data.begin());
    std::copy_n(v.data.begin(), n * kvh * d, vn.data.begin());
    check_against_oracle<float>(
        q, kn, vn, [&](index_t h) { return selected_tokens(sel, h); }, out, lse);
  }
}

TEST_CASE("sparse decode over token lists and odd page sizes", "[decode]") {
  const index_t heads = 6, kvh = 3, d = 40, n = 700;
  auto q = random_tensor<f16>(1, heads, d, 31);
  auto k = random_tensor<float>(n, kvh, d, 32, 1.5f);
  auto v = random_tensor<float>(n, kvh, d, 33);
  kv_cache<float> cache(kvh, d);
  cache.append(k.cview(), v.cview());
  decode_selection tok;
  tok.page_size = 1;
  tok.group = 2;
  tok.lengths = {n, n, n};
  tok.pages = {{0, 5, 6, 7, 100, 699}, {}, {3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 500}};
  for (index_t t = 520; t < 1200 && t < n; t += 3) tok.pages[0].push_back(t);
  std::sort(tok.pages[0].begin(), tok.pages[0].end());
  tok.pages[0].erase(std::unique(tok.pages[0].begin(), tok.pages[0].end()), tok.pages[0].end());
  auto [out, lse] = run_decode<f16>(q, cache, &tok, 2);
  // KV head 1 has no selected tokens: zero output and LSE = -inf.
  check_against_oracle<f16>(
      q, k, v, [&](index_t h) { return selected_tokens(tok, h); }, out, lse);
  decode_selection pg;
  pg.page_size = 9;
  pg.group = 2;
  pg.lengths = {n, n, n};
  pg.pages = {{0, 1, 2, 50, 77}, {77}, {10, 11, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 60, 61}};
  auto [out2, lse2] = run_decode<f16>(q, cache, &pg, 2);
  check_against_oracle<f16>(
      q, k, v, [&](index_t h) { return selected_tokens(pg, h); }, out2, lse2);
  REQUIRE(pg.tokens(0) == 4 * 9 + 7);  // page 77 is the partial tail: tokens 693..699
}

TEST_CASE("quest scores and choice equal a recomputation from the raw keys", "[quest]") {
  // Wide heads (the vector path) and a head_dim with a tail; scores recomputed in double from
  // the page definition: sum over the group's heads of sum_d max(q min_d, q max_d), with min and
  // max taken over the page's stored keys.
  for (const index_t d : {128, 72}) {
    for (const bool share : {true, false}) {
      INFO("d=" << d << " share=" << share);
      const index_t heads = 8, kvh = 2, group = 4, n = 1000, ps = 16;
      auto k = random_tensor<bf16>(n, kvh, d, static_cast<std::uint64_t>(d), 1.5f);
      auto q = random_tensor<float>(1, heads, d, static_cast<std::uint64_t>(d) + 1);
      kv_cache<bf16> cache(kvh, d);
      cache.append(k.cview(), k.cview());
      cache.enable_summaries(ps);
      const quest policy{128, ps, share};
      const auto in = make_decode_inputs(q.cview(), cache);
      const auto got = policy.page_scores(in);
      const auto kv = k.cview();
      const auto qv_all = q.cview();
      const index_t complete = (n - 1) / ps;
      const auto sel = policy.select(in, budget::policy_default());
      for (index_t s = 0; s < (share ? kvh : heads); ++s) {
        const index_t g = share ? s : s / group;
        std::vector<double> want(static_cast<std::size_t>(complete), 0.0);
        for (index_t p = 0; p < complete; ++p) {
          for (index_t h = share ? g * group : s; h < (share ? (g + 1) * group : s + 1); ++h) {
            for (index_t x = 0; x < d; ++x) {
              double mn = INFINITY, mx = -INFINITY;
              for (index_t t = p * ps; t < (p + 1) * ps; ++t) {
                mn = std::min<double>(mn, to_float(kv.row(t, g)[x]));
                mx = std::max<double>(mx, to_float(kv.row(t, g)[x]));
              }
              const double qv = qv_all.row(0, h)[x];
              want[static_cast<std::size_t>(p)] += std::max(qv * mn, qv * mx);
            }
          }
          REQUIRE(got[static_cast<std::size_t>(s)][static_cast<std::size_t>(p)] ==
                  Approx(want[static_cast<std::size_t>(p)]).margin(1e-3));
        }
        // The chosen complete pages are the 8 best by the recomputed score (up to fp32 noise).
        const auto& pages = sel.pages[static_cast<std::size_t>(s)];
        REQUIRE(pages.size() == 9);
        REQUIRE(pages.back() == complete);  // the current page
        double worst_in = INFINITY, best_out = -INFINITY;
        for (index_t p = 0; p < complete; ++p) {
          const bool in_sel = std::binary_search(pages.begin(), pages.end() - 1, p);
          const double w = want[static_cast<std::size_t>(p)];
          if (in_sel)
            worst_in = std::min(worst_in, w);
          else
            best_out = std::max(best_out, w);
        }
        REQUIRE(worst_in >= best_out - 1e-3);
      }
    }
  }
}
