// Hand-computed selections for each method on small inputs (n = 128..300). The inputs are built so
// that the important keys are known; the expected selections are derived in the comments from the
// method definitions (sparse-frontier), not from the code under test.
#include "sparse_support.hpp"
#include "spattn/policies/a_shape.hpp"
#include "spattn/policies/block_sparse.hpp"
#include "spattn/policies/dense.hpp"
#include "spattn/policies/flexprefill.hpp"
#include "spattn/policies/vertical_slash.hpp"

using namespace spattn;
using namespace spattn::test;
using entry = prefill_selection::entry;

namespace {

entry make(std::vector<index_t> blocks, std::vector<index_t> columns) {
  return entry{std::move(blocks), std::move(columns)};
}

// Query token i is the one-hot e_i; key j is c * e_{(j + 100) mod 256}, so with d = 256 and scale
// 1/16 query i scores c/16 on key i - 100 (offset 100) and exactly 0 on every other visible key.
struct diagonal_data {
  tensor<float> q{256, 1, 256}, k{256, 1, 256};
  explicit diagonal_data(float c) {
    for (index_t i = 0; i < 256; ++i) q.data[static_cast<std::size_t>(i * 256 + i)] = 1.0f;
    for (index_t j = 0; j < 256; ++j)
      k.data[static_cast<std::size_t>(j * 256 + (j + 100) % 256)] = c;
  }
};

}  // namespace

TEST_CASE("MInference index conversion: the worked example", "[sparse][vertical_slash]") {
  // L = 300, v = {0,1,2,3,100,130,250}, s = {290,200,70,5,1,0}, query block 2 (rows 128..191,
  // end 192): offsets >= 192 skipped; 70 -> range [58,122); 0..3 < 58 become columns, 100 is
  // inside; 5 -> end 187 > 122 + 64: flush [58,122), new range [123,187) (130 inside); 1 -> 191
  // extends by one block to [123,251) (250 inside); 0 -> 192 covered. Blocks {58,123,187}.
  prefill_selection sel(1, 300, 300, 0, 64);
  policies::detail::vs_convert({0, 1, 2, 3, 100, 130, 250}, {290, 200, 70, 5, 1, 0}, sel, 0);
  CHECK(sel.at(0, 2) == make({58, 123, 187}, {0, 1, 2, 3}));
  // Block 0 (end 64): every offset < 64 maps to [0,64): one block, all columns inside it.
  CHECK(sel.at(0, 0) == make({0}, {}));
  REQUIRE_NOTHROW(sel.validate());
}

TEST_CASE("vertical-slash picks hot columns and converts them exactly",
          "[sparse][vertical_slash]") {
  // n = 192, d = 64, scale 1/8: every query is e0; keys 37 and 90 are 40 e0 (score 5), all other
  // keys are zero (score 0). The last 64 queries (positions 128..191) see both hot keys, so after
  // the forced columns 0..3 the best columns are 37 and 90: vertical_size 6 keeps {0,1,2,3,37,90}.
  // slash_size 64 keeps only the forced offsets 0..63. Conversion per 64-query block:
  //  block 0 (end 64): all offsets map to [0,64) -> blocks {0}; columns inside or >= 64.
  //  block 1 (end 128): offset 63 -> [1,65), 0 becomes a column, 62 -> 66 extends to [1,129);
  //    37 and 90 are inside -> blocks {1,65}, columns {0}.
  //  block 2 (end 192): 63 -> [65,129): 0,1,2,3,37 are columns; 62 extends to [65,193), 90
  //    inside -> blocks {65,129}, columns {0,1,2,3,37}.
  tensor<float> q(192, 1, 64), k(192, 1, 64);
  for (index_t i = 0; i < 192; ++i) q.data[static_cast<std::size_t>(i * 64)] = 1.0f;
  k.data[37 * 64] = 40.0f;
  k.data[90 * 64] = 40.0f;
  policies::vertical_slash vs;
  vs.vertical_size = 6;
  vs.slash_size = 64;
  vs.approximation_size = 64;
  const auto sel = vs.select({q.cview(), k.cview()}, budget::policy_default());
  REQUIRE(sel.q_blocks() == 3);
  CHECK(sel.at(0, 0) == make({0}, {}));
  CHECK(sel.at(0, 1) == make({1, 65}, {0}));
  CHECK(sel.at(0, 2) == make({65, 129}, {0, 1, 2, 3, 37}));
  // Estimation: 64 queries x 192 keys x 2 x 64.
  CHECK(sel.estimation_flops == 2.0 * 64 * 64 * 192);
  // The reference's own density figure counts whole 64x64 blocks and 64-cell columns.
  CHECK(sel.block_density() == (5.0 * 64 * 64 + 6.0 * 64) / (192.0 * 193 / 2));
}

TEST_CASE("vertical-slash and FlexPrefill pick a hot diagonal", "[sparse][vertical_slash][flex]") {
  // diagonal_data(128): query p >= 100 scores 8 on key p - 100, 0 elsewhere; so the last 64
  // queries (192..255) put mass h_p = e^8 / (e^8 + p) ~ 0.93 on offset 100, and columns 92..155
  // are hot, hotter for smaller p (h_p decreases with p), far above the background ~1/(e^8 + p).
  // vertical-slash with 65 / 65: forced 0..3 + the 61 best columns = 92..152; forced offsets
  // 0..63 + offset 100. FlexPrefill (alpha 0.65, min_budget 65): cover(diag) = 1 (0.93 > 0.65)
  // and cover(vert) ~ 45 (each hot column ~ 0.0146 of the mean), both raised to 65: same sizes.
  // Conversion (offsets descending {100, 63, ..., 0}):
  //  block 0 (end 64): 100 skipped, rest -> [0,64): {0}.
  //  block 1 (end 128): 100 -> max(28,64) = 64: [0,64); 63 -> 65 extends to [0,128); all covered.
  //  block 2 (end 192): 100 -> [28,92): columns 0..3; 63 -> 129 extends to [28,156); 35 -> 157
  //    extends to [28,220) -> blocks {28,92,156}; columns 92..152 inside.
  //  block 3 (end 256): 100 -> [92,156): columns 0..3; 63 -> 193 extends to [92,220); 35 -> 221
  //    extends to [92,284) -> blocks {92,156,220}.
  const diagonal_data data(128.0f);
  const std::vector<entry> expected = {make({0}, {}), make({0, 64}, {}),
                                       make({28, 92, 156}, {0, 1, 2, 3}),
                                       make({92, 156, 220}, {0, 1, 2, 3})};
  prefill_inputs in{data.q.cview(), data.k.cview()};
  policies::vertical_slash vs;
  vs.vertical_size = 65;
  vs.slash_size = 65;
  vs.approximation_size = 64;
  const auto a = vs.select(in, budget::policy_default());
  policies::flexprefill fp;
  fp.alpha = 0.65;
  fp.min_budget = 65;
  fp.approximation_size = 64;
  const auto b = fp.select(in, budget::policy_default());
  for (index_t m = 0; m < 4; ++m) {
    CHECK(a.at(0, m) == expected[static_cast<std::size_t>(m)]);
    CHECK(b.at(0, m) == expected[static_cast<std::size_t>(m)]);
  }
  // With the default slash size only forced diagonals would matter if offset 100 were cold:
  // scale the hot score down to 0 and offset 100 must disappear from block 3.
  const diagonal_data cold(0.0f);
  const auto c = vs.select({cold.q.cview(), cold.k.cview()}, budget::policy_default());
  CHECK(c.at(0, 3) != expected[3]);
}

TEST_CASE("FlexPrefill coverage count", "[sparse][flex]") {
  // cover(x, a) = 1 + #{k : cumsum(sorted desc)[k] <= a}; sorted {0.5, 0.25, 0.15, 0.1}.
  const std::vector<float> x = {0.1f, 0.5f, 0.25f, 0.15f};
  CHECK(policies::detail::cover_count(x, 0.3) == 1);   // 0.5 > 0.3
  CHECK(policies::detail::cover_count(x, 0.65) == 2);  // 0.5 <= 0.65 < 0.75
  CHECK(policies::detail::cover_count(x, 0.95) == 4);  // 0.5, 0.75, 0.9 <= 0.95 < 1.0
  CHECK(policies::detail::cover_count(x, 1.0) == 4);   // capped at the length
}

TEST_CASE("block-sparse keeps forced chunks and the best pooled chunk", "[sparse][block_sparse]") {
  // n = 128, chunks of 16 (8 query chunks, nb = 128/16 + 1 = 9). Every query is e0; keys of chunk
  // 2 (tokens 32..47) are 5 e0, all other keys zero: pooled score 5 for chunk 2, 0 for the rest.
  tensor<float> q(128, 1, 64), k(128, 1, 64);
  for (index_t i = 0; i < 128; ++i) q.data[static_cast<std::size_t>(i * 64)] = 1.0f;
  for (index_t j = 32; j < 48; ++j) k.data[static_cast<std::size_t>(j * 64)] = 5.0f;
  const prefill_inputs in{q.cview(), k.cview()};
  auto chunks = [](std::vector<index_t> c) {
    for (auto& x : c) x *= 16;
    return make(c, {});
  };
  SECTION("top_chunks 4") {
    // m + 1 < 4: dense (m = 0, 1, 2). Else forced {0, m-1, m} plus the best of 1..m-2:
    // m = 3: only 1 -> {0,1,2,3}; m >= 4: chunk 2.
    policies::block_sparse bs;
    bs.top_chunks = 4;
    const auto sel = bs.select(in, budget::policy_default());
    const std::vector<std::vector<index_t>> want = {{0},          {0, 1},       {0, 1, 2},
                                                    {0, 1, 2, 3}, {0, 2, 3, 4}, {0, 2, 4, 5},
                                                    {0, 2, 5, 6}, {0, 2, 6, 7}};
    for (index_t m = 0; m < 8; ++m)
      CHECK(sel.at(0, m) == chunks(want[static_cast<std::size_t>(m)]));
  }
  SECTION("top_chunks 5: ties go to the lower chunk") {
    // m <= 3 dense; m >= 4: forced + chunk 2 + the lowest-index tie among the zero scores.
    policies::block_sparse bs;
    bs.top_chunks = 5;
    const auto sel = bs.select(in, budget::policy_default());
    const std::vector<std::vector<index_t>> want = {{0},
                                                    {0, 1},
                                                    {0, 1, 2},
                                                    {0, 1, 2, 3},
                                                    {0, 1, 2, 3, 4},
                                                    {0, 1, 2, 4, 5},
                                                    {0, 1, 2, 5, 6},
                                                    {0, 1, 2, 6, 7}};
    for (index_t m = 0; m < 8; ++m)
      CHECK(sel.at(0, m) == chunks(want[static_cast<std::size_t>(m)]));
  }
  SECTION("a ratio budget picks the largest top_chunks that fits") {
    // Exact pairs with top k: row at position p in chunk m sees (min(m+1, k) - 1) * 16 + (p - 16m +
    // 1).
    auto pairs = [](index_t kk) {
      index_t t = 0;
      for (index_t p = 0; p < 128; ++p) t += (std::min(p / 16 + 1, kk) - 1) * 16 + p % 16 + 1;
      return t;
    };
    const double f = 0.6;
    const index_t causal = 128 * 129 / 2;
    index_t best = 3;
    while (best + 1 <= 9 && static_cast<double>(pairs(best + 1)) <= f * causal) ++best;
    const auto sel = policies::block_sparse{}.select(in, budget::kept(f));
    CHECK(sel.head_pairs(0) == pairs(best));
    CHECK(static_cast<double>(sel.head_pairs(0)) <= f * causal);
  }
}

TEST_CASE("A-shape: sinks plus a block-level window", "[sparse][a_shape]") {
  // n = 256, 4 sinks, window 100: query block b (positions 64b..64b+63) sees the sinks and keys
  // from 64b - 99: b = 0, 1 start at 0 (sinks inside); b = 2 starts at 29, b = 3 at 93.
  tensor<float> q(256, 2, 64), k(256, 1, 64);
  policies::a_shape as;
  as.window = 100;
  const prefill_inputs in{q.cview(), k.cview()};
  const auto sel = as.select(in, budget::policy_default());
  for (index_t h = 0; h < 2; ++h) {
    CHECK(sel.at(h, 0) == make({0}, {}));
    CHECK(sel.at(h, 1) == make({0, 64}, {}));
    CHECK(sel.at(h, 2) == make({29, 93, 157}, {0, 1, 2, 3}));
    CHECK(sel.at(h, 3) == make({93, 157, 221}, {0, 1, 2, 3}));
  }
  // Budget: the largest window w whose pairs fit; pairs counted by brute force.
  auto pairs = [](index_t w) {
    index_t t = 0;
    for (index_t p = 0; p < 256; ++p) {
      const index_t start = std::max<index_t>(0, p / 64 * 64 - w + 1);
      t += p - start + 1 + std::min<index_t>(4, start);
    }
    return t;
  };
  const index_t target = 256 * 40;  // tokens(40): 40 keys per query on average
  index_t w = 1;
  while (pairs(w + 1) <= target) ++w;
  const auto b = as.select(in, budget::tokens(40));
  CHECK(b.head_pairs(0) == pairs(w));
  CHECK(b.head_pairs(1) == pairs(w));
}

TEST_CASE("dense policy: the full causal layout", "[sparse][dense]") {
  tensor<float> q(130, 1, 64), k(200, 1, 64);
  const auto sel = policies::dense{}.select({q.cview(), k.cview()}, budget::policy_default());
  // Queries at positions 70..199; block b's last position 70 + 64b + 63 (or 199).
  CHECK(sel.at(0, 0) == make({0, 64, 128}, {}));
  CHECK(sel.at(0, 1) == make({0, 64, 128, 192}, {}));
  CHECK(sel.at(0, 2) == make({0, 64, 128, 192}, {}));
  CHECK(sel.pairs() == sel.causal_pairs());
  CHECK(sel.density() == 1.0);
  CHECK(sel.attention_flops() == 4.0 * 64 * (130 * 70 + 130 * 131 / 2));
}

TEST_CASE("vertical-slash budget search beyond the first ranked 4096", "[sparse][vertical_slash]") {
  // A lenient budget on 5000 keys needs sizes above 4096: the search must rank everything and
  // still return the largest size that fits (checked against the next size up).
  auto q = random_tensor<float>(5000, 1, 64, 5);
  auto k = random_tensor<float>(5000, 1, 64, 6);
  const prefill_inputs in{q.cview(), k.cview()};
  const budget b = budget::kept(0.97);
  const auto sel = policies::vertical_slash{}.select(in, b);
  REQUIRE_NOTHROW(sel.validate());
  const double limit = 0.97 * static_cast<double>(sel.causal_pairs());
  CHECK(static_cast<double>(sel.pairs()) <= limit);
  CHECK(static_cast<double>(sel.pairs()) > 0.9 * limit);  // not needlessly small
}

namespace {

// MInference's convert_vertical_slash_indexes for one query block, as its kernel loops: one step
// per kept column or offset (the reference for the library's range-stepping version).
entry reference_convert(const std::vector<index_t>& v, const std::vector<index_t>& s,
                        index_t start_m, index_t last) {
  entry e;
  const index_t end_m = start_m + 64, nv = static_cast<index_t>(v.size()),
                ns = static_cast<index_t>(s.size());
  index_t vi = 0, si = 0;
  while (si < ns && s[static_cast<std::size_t>(si)] >= end_m) ++si;
  if (si == ns) {
    for (index_t c : v)
      if (c <= last) e.columns.push_back(c);
    return e;
  }
  index_t v_idx = vi < nv ? v[static_cast<std::size_t>(vi++)] : end_m + 64;
  index_t s_idx = std::max<index_t>(end_m - s[static_cast<std::size_t>(si++)], 64);
  index_t r_start = s_idx - 64, r_end = s_idx;
  auto emit = [&] {
    for (index_t x = r_start; x < r_end && x <= last; x += 64) e.blocks.push_back(x);
  };
  while (true) {
    if (v_idx < r_end) {
      if (v_idx < r_start) e.columns.push_back(v_idx);
      v_idx = vi < nv ? v[static_cast<std::size_t>(vi++)] : end_m + 64;
    } else {
      if (si < ns) {
        s_idx = std::max<index_t>(end_m - s[static_cast<std::size_t>(si++)], 64);
      } else {
        emit();
        break;
      }
      if (s_idx > r_end + 64) {
        emit();
        r_start = s_idx - 64;
        r_end = s_idx;
      } else if (s_idx > r_end) {
        r_end += 64;
      }
    }
  }
  return e;
}

}  // namespace

TEST_CASE("index conversion equals MInference's per-offset loop", "[sparse][vertical_slash]") {
  std::mt19937 rng(14);
  for (int trial = 0; trial < 300; ++trial) {
    const index_t nq = 1 + rng() % 900, off = trial % 4 == 0 ? rng() % 400 : 0, P = off + nq;
    // Dense runs of offsets near the diagonal and scattered ones, as vertical-slash keeps.
    const unsigned col_rate = 2 + rng() % 30, diag_rate = 2 + rng() % 30;
    std::vector<index_t> v, s;
    for (index_t j = 0; j < P; ++j) {
      if (rng() % col_rate == 0) v.push_back(j);
      if (j < 200 ? rng() % 3 != 0 : rng() % diag_rate == 0) s.push_back(j);
    }
    if (trial % 5 != 0) s.push_back(0);  // usually forced; sometimes not
    std::sort(s.begin(), s.end(), std::greater<>());
    s.erase(std::unique(s.begin(), s.end()), s.end());
    prefill_selection sel(1, nq, P, off, 64);
    policies::detail::vs_convert(v, s, sel, 0);
    for (index_t m = 0; m < sel.q_blocks(); ++m) {
      INFO("trial " << trial << " block " << m);
      CHECK(sel.at(0, m) == reference_convert(v, s, sel.first_position(m), sel.last_position(m)));
    }
    CHECK(policies::detail::vs_pairs(v, s, sel) == sel.head_pairs(0));
  }
}

TEST_CASE("pair counting: closed form, and the budget search's count without building",
          "[sparse][vertical_slash][selection]") {
  std::mt19937 rng(11);
  // interval_pairs against counting every (query, key) pair.
  for (int trial = 0; trial < 2000; ++trial) {
    const index_t a = rng() % 200, z = a + rng() % 100, p0 = rng() % 250, p1 = p0 + rng() % 80;
    index_t brute = 0;
    for (index_t p = p0; p <= p1; ++p)
      for (index_t key = a; key < z; ++key) brute += key <= p ? 1 : 0;
    INFO("a=" << a << " z=" << z << " p0=" << p0 << " p1=" << p1);
    REQUIRE(interval_pairs(a, z, p0, p1) == brute);
  }
  // vs_pairs equals the pairs of the selection vs_convert builds, for random kept columns and
  // offsets, sequence lengths and query offsets (chunked prefill).
  for (int trial = 0; trial < 200; ++trial) {
    const index_t nq = 1 + rng() % 700, off = trial % 3 == 0 ? rng() % 300 : 0, P = off + nq;
    std::vector<index_t> v, s;
    for (index_t j = 0; j < P; ++j) {
      if (rng() % 8 == 0) v.push_back(j);
      if (rng() % 6 == 0) s.push_back(j);
    }
    s.push_back(0);  // offset 0 is always kept (forced)
    std::sort(s.begin(), s.end(), std::greater<>());
    s.erase(std::unique(s.begin(), s.end()), s.end());
    prefill_selection sel(1, nq, P, off, 64);
    policies::detail::vs_convert(v, s, sel, 0);
    REQUIRE_NOTHROW(sel.validate());
    INFO("trial " << trial << " nq=" << nq << " offset=" << off);
    CHECK(policies::detail::vs_pairs(v, s, sel) == sel.head_pairs(0));
  }
}

TEST_CASE("largest_fitting: within 1/64 of the largest fitting size, whatever it starts from",
          "[sparse][vertical_slash]") {
  std::mt19937 rng(12);
  for (int trial = 0; trial < 3000; ++trial) {
    const index_t top = 1 + rng() % 5000, best = rng() % (top + 1);  // fits(x) iff x <= best
    index_t calls = 0;
    auto fits = [&](index_t x) {
      ++calls;
      return x <= best;
    };
    const index_t x = policies::detail::largest_fitting(top, fits);
    INFO("top=" << top << " best=" << best);
    CHECK(x <= best);
    CHECK(best - x <= std::max<index_t>(0, best / 64));
    // Every power-of-two start <= 64 gives the same answer.
    for (index_t first : {1, 2, 8, 32, 64})
      CHECK(policies::detail::largest_fitting(top, fits, first) == x);
  }
}

TEST_CASE("largest_within: the largest size whose pairs fit, within 1/64",
          "[sparse][vertical_slash]") {
  std::mt19937 rng(13);
  for (int trial = 0; trial < 3000; ++trial) {
    const index_t top = 1 + rng() % 6000;
    // A non-decreasing pair count: linear, convex, or steps with plateaus.
    std::vector<index_t> f(static_cast<std::size_t>(top + 1));
    const int shape = trial % 3;
    index_t acc = 1 + rng() % 1000;
    for (index_t x = 0; x <= top; ++x) {
      if (shape == 0) acc += 500;
      if (shape == 1) acc += x;
      if (shape == 2) acc += rng() % 4 == 0 ? rng() % 5000 : 0;
      f[static_cast<std::size_t>(x)] = acc;
    }
    const index_t target =
        f[0] + static_cast<index_t>(rng() % static_cast<unsigned>(f.back() - f[0] + 100));
    index_t best = 0;  // the true largest fitting x
    for (index_t x = 0; x <= top; ++x)
      if (f[static_cast<std::size_t>(x)] <= target) best = x;
    int calls = 0;
    const index_t x = policies::detail::largest_within(top, target, f[0], [&](index_t y) {
      ++calls;
      REQUIRE(y >= 0);
      REQUIRE(y <= top);
      return f[static_cast<std::size_t>(y)];
    });
    INFO("trial " << trial << " top=" << top << " target=" << target << " best=" << best);
    CHECK(f[static_cast<std::size_t>(x)] <= target);
    CHECK(x <= best);
    CHECK(best - x <= std::max<index_t>(0, x / 64));
    if (shape == 0) CHECK(calls <= 4);  // linear counts: interpolation lands on the crossing
  }
}
