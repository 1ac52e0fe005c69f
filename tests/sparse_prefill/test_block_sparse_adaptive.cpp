// Block-sparse: adaptive allocation (one budget shared across heads, ranked by estimated block
// attention mass; our own choice, see policies/block_sparse.hpp) and the estimation's exactness:
// uniform selections equal a naive recomputation from the definition (pooled means, plain dot
// products, sort by score with ties to the lower chunk).
#include <algorithm>
#include <limits>

#include "sparse_support.hpp"
#include "spattn/policies/block_sparse.hpp"

using namespace spattn;
using namespace spattn::test;

namespace {

// Chunk indices (block starts / chunk size) of an entry.
std::vector<index_t> chunks_of(const prefill_selection& sel, index_t h, index_t b, index_t c) {
  std::vector<index_t> r;
  for (index_t s : sel.at(h, b).blocks) r.push_back(s / c);
  return r;
}

// Exact computed pairs per head with top k chunks, straight from the definition: a query at
// position p in chunk m sees (min(m + 1, k) - 1) full chunks plus its own chunk up to p.
index_t pairs_with(index_t nq, index_t offset, index_t c, index_t k) {
  index_t t = 0;
  for (index_t p = offset; p < offset + nq; ++p) t += (std::min(p / c + 1, k) - 1) * c + p % c + 1;
  return t;
}

// Integer-valued data in [-r, r]: pooled means (multiples of 1/chunk) and their dot products are
// exact in fp32 and in double, so a naive recomputation gives the very same scores; many ties.
template <class T>
tensor<T> integer_tensor(index_t t, index_t h, index_t d, std::uint64_t seed, int r) {
  tensor<T> x(t, h, d);
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> u(-r, r);
  for (auto& v : x.data) v = from_float<T>(static_cast<float>(u(rng)));
  return x;
}

// The uniform selection from the definition, computed naively in double: k found by brute force
// over the exact pairs, pooled means, scores, and per query chunk a full sort of chunks 1..m-2
// by (score desc, chunk asc). Empty when the budget cannot hold the forced chunks.
template <class T>
std::vector<std::vector<index_t>> naive_uniform(const tensor<T>& q, const tensor<T>& k,
                                                index_t offset, index_t c, index_t top,
                                                const budget& b) {
  const index_t nq = q.tokens, d = q.head_dim, H = q.heads, G = q.heads / k.heads;
  const index_t P = offset + nq, nb = P / c + 1, nqb = (nq + c - 1) / c, nk = (P + c - 1) / c;
  index_t kk = std::min(top, nb);
  if (!b.is_default()) {
    const index_t causal = nq * offset + nq * (nq + 1) / 2;
    const index_t target =
        b.kind() == budget_kind::tokens
            ? std::min(causal, static_cast<index_t>(b.value()) * nq)
            : static_cast<index_t>(std::floor(b.value() * static_cast<double>(causal) + 1e-9));
    if (pairs_with(nq, offset, c, 3) > target) return {};
    kk = 3;
    while (kk + 1 <= nb && pairs_with(nq, offset, c, kk + 1) <= target) ++kk;
  }
  auto pooled = [&](const tensor<T>& x, index_t h, index_t chunk, index_t first, index_t end) {
    std::vector<double> m(static_cast<std::size_t>(d), 0.0);
    for (index_t t = chunk * c - first; t < std::min((chunk + 1) * c, end) - first; ++t)
      for (index_t i = 0; i < d; ++i)
        m[static_cast<std::size_t>(i)] += to_float(x.cview().row(t, h)[i]);
    for (auto& v : m) v /= static_cast<double>(c);
    return m;
  };
  std::vector<std::vector<index_t>> out;  // [h * nqb + b] -> chunks
  for (index_t h = 0; h < H; ++h) {
    std::vector<std::vector<double>> kp;
    for (index_t n = 0; n < nk; ++n) kp.push_back(pooled(k, h / G, n, 0, P));
    for (index_t bq = 0; bq < nqb; ++bq) {
      const index_t m = offset / c + bq;
      std::vector<index_t> keep;
      if (m + 1 < kk) {
        for (index_t n = 0; n <= m; ++n) keep.push_back(n);
      } else {
        const auto qp = pooled(q, h, m, offset, P);
        std::vector<double> s(static_cast<std::size_t>(m + 1));
        for (index_t n = 0; n <= m; ++n)
          for (index_t i = 0; i < d; ++i)
            s[static_cast<std::size_t>(n)] +=
                qp[static_cast<std::size_t>(i)] *
                kp[static_cast<std::size_t>(n)][static_cast<std::size_t>(i)];
        keep = {0};
        if (m >= 2) keep.push_back(m - 1);
        if (m >= 1) keep.push_back(m);
        std::vector<index_t> cand;
        for (index_t n = 1; n <= m - 2; ++n) cand.push_back(n);
        std::sort(cand.begin(), cand.end(), [&](index_t a, index_t z) {
          const double x = s[static_cast<std::size_t>(a)], y = s[static_cast<std::size_t>(z)];
          return x > y || (x == y && a < z);
        });
        const auto extra = std::max<index_t>(0, kk - static_cast<index_t>(keep.size()));
        keep.insert(keep.end(), cand.begin(), cand.begin() + extra);
        std::sort(keep.begin(), keep.end());
      }
      out.push_back(keep);
    }
  }
  return out;
}

// Forced chunks of query chunk m with top k: all of 0..m when m + 1 < k, else 0, m - 1 and m.
std::vector<index_t> forced_chunks(index_t m, index_t k) {
  std::vector<index_t> r;
  if (m + 1 < k) {
    for (index_t n = 0; n <= m; ++n) r.push_back(n);
    return r;
  }
  r.push_back(0);
  if (m >= 2) r.push_back(m - 1);
  if (m >= 1) r.push_back(m);
  return r;
}

}  // namespace

TEST_CASE("block-sparse uniform selections equal a naive recomputation", "[sparse][block_sparse]") {
  struct config {
    index_t nq, nk, heads, kv_heads, d, chunk;
    int range;
    bool bf;
  };
  // Long rows (up to ~370 chunks), partial last chunks, chunked prefill, GQA, odd head_dim;
  // range 1 gives many ties, range 8 mostly distinct scores.
  const std::vector<config> configs = {{3000, 3000, 4, 2, 64, 8, 8, false},
                                       {2000, 2000, 2, 1, 64, 16, 1, true},
                                       {1000, 2968, 3, 3, 40, 16, 8, true},
                                       {777, 1193, 2, 1, 64, 32, 2, false}};
  std::uint64_t seed = 100;
  for (const auto& cf : configs) {
    auto run = [&](auto tag) {
      using T = decltype(tag);
      const auto q = integer_tensor<T>(cf.nq, cf.heads, cf.d, seed++, cf.range);
      const auto k = integer_tensor<T>(cf.nk, cf.kv_heads, cf.d, seed++, cf.range);
      policies::block_sparse bs;
      bs.chunk_size = cf.chunk;
      prefill_inputs in{q.cview(), k.cview()};
      in.exec = executor::openmp(2);
      for (const budget& b :
           {budget::policy_default(), budget::kept(0.1), budget::kept(0.35), budget::tokens(150)}) {
        INFO("nq=" << cf.nq << " nk=" << cf.nk << " chunk=" << cf.chunk << " range=" << cf.range
                   << " budget " << b.describe());
        const auto want = naive_uniform(q, k, cf.nk - cf.nq, cf.chunk, bs.top_chunks, b);
        if (want.empty()) {
          CHECK_THROWS_AS(bs.select(in, b), spattn::error);
          continue;
        }
        const auto sel = bs.select(in, b);
        const index_t nqb = sel.q_blocks();
        bool same = true;
        for (index_t h = 0; h < cf.heads && same; ++h) {
          for (index_t bq = 0; bq < nqb && same; ++bq) {
            if (chunks_of(sel, h, bq, cf.chunk) != want[static_cast<std::size_t>(h * nqb + bq)]) {
              same = false;
              FAIL_CHECK("head " << h << " query chunk " << bq << " differs");
            }
          }
        }
        CHECK(same);
      }
    };
    if (cf.bf)
      run(bf16{});
    else
      run(float{});
  }
}

TEST_CASE("block-sparse: NaN scores rank below every number", "[sparse][block_sparse]") {
  // n = 640, chunk 16, top_chunks 8: query chunks m >= 7 keep 0, m-1, m and 5 extras. One NaN in
  // key token 83 (chunk 5) makes every score against chunk 5 NaN: chunk 5 is never an extra
  // while other chunks remain (m >= 8; m = 7 must take all of 1..5). One NaN in query token 325
  // (chunk 20) makes all of its scores NaN: it keeps the lowest chunks 1..5. Every head still
  // computes the exact pairs of k = 8.
  auto q = integer_tensor<float>(640, 2, 64, 41, 4);
  auto k = integer_tensor<float>(640, 1, 64, 42, 4);
  k.data[83 * 64 + 7] = std::numeric_limits<float>::quiet_NaN();
  q.data[(325 * 2 + 1) * 64 + 3] = std::numeric_limits<float>::quiet_NaN();
  policies::block_sparse bs;
  bs.top_chunks = 8;
  for (const int threads : {1, 2}) {
    prefill_inputs in{q.cview(), k.cview()};
    in.exec = threads == 1 ? executor::serial() : executor::openmp(2);
    const auto sel = bs.select(in, budget::policy_default());
    REQUIRE_NOTHROW(sel.validate());
    for (index_t h = 0; h < 2; ++h) {
      CHECK(sel.head_pairs(h) == pairs_with(640, 0, 16, 8));
      CHECK(chunks_of(sel, h, 7, 16) == std::vector<index_t>{0, 1, 2, 3, 4, 5, 6, 7});  // L = 5
      for (index_t m = 8; m < 40; ++m) {
        const auto got = chunks_of(sel, h, m, 16);
        if (h == 1 && m == 20) {
          CHECK(got == std::vector<index_t>{0, 1, 2, 3, 4, 5, 19, 20});
        } else {
          CHECK(!std::binary_search(got.begin(), got.end(), index_t{5}));
        }
      }
    }
  }
}

TEST_CASE("block-sparse adaptive allocation respects the budget and keeps forced chunks",
          "[sparse][block_sparse][adaptive]") {
  struct config {
    index_t nq, nk, heads, kv_heads;
  };
  for (const auto& cf : std::vector<config>{{1100, 1100, 4, 2}, {320, 960, 4, 1}, {70, 70, 2, 2}}) {
    auto q = random_tensor<float>(cf.nq, cf.heads, 64, 11);
    auto k = random_tensor<bf16>(cf.nk, cf.kv_heads, 64, 12, 1.5f);
    prefill_inputs in{q.cview(), k.cview()};
    in.exec = executor::openmp(2);
    const index_t offset = cf.nk - cf.nq;
    const index_t causal = cf.nq * offset + cf.nq * (cf.nq + 1) / 2;
    policies::block_sparse bs;
    for (const budget& b :
         {budget::kept(0.1, allocation::adaptive), budget::kept(0.3, allocation::adaptive),
          budget::compression(4, allocation::adaptive), budget::tokens(64, allocation::adaptive)}) {
      INFO("nq=" << cf.nq << " nk=" << cf.nk << " budget " << b.describe());
      const double per_head = b.kind() == budget_kind::tokens
                                  ? 64.0 * static_cast<double>(cf.nq)
                                  : b.value() * static_cast<double>(causal);
      if (static_cast<double>(pairs_with(cf.nq, offset, 16, 3)) > per_head) {
        CHECK_THROWS_WITH(bs.select(in, b), Catch::Matchers::Contains("forced chunks"));
        continue;
      }
      const auto sel = bs.select(in, b);
      REQUIRE_NOTHROW(sel.validate());
      // The same k as uniform: the same total pairs, within heads x the per-head budget.
      const budget u =
          b.kind() == budget_kind::tokens ? budget::tokens(64) : budget::kept(b.value());
      const auto uni = bs.select(in, u);
      CHECK(sel.pairs() == uni.pairs());
      index_t sum = 0;
      for (index_t h = 0; h < cf.heads; ++h) sum += sel.head_pairs(h);
      CHECK(static_cast<double>(sum) <= static_cast<double>(cf.heads) * per_head);
      // k from the pairs: the largest with pairs_with(k) <= budget, as the uniform search.
      index_t kk = 3;
      while (kk + 1 <= (offset + cf.nq) / 16 + 1 &&
             static_cast<double>(pairs_with(cf.nq, offset, 16, kk + 1)) <= per_head + 1e-9)
        ++kk;
      CHECK(uni.head_pairs(0) == pairs_with(cf.nq, offset, 16, kk));
      // Forced chunks in every head; per query chunk the extras over all heads add up.
      bool ok = true;
      for (index_t bq = 0; bq < sel.q_blocks() && ok; ++bq) {
        const index_t m = offset / 16 + bq;
        const auto forced = forced_chunks(m, kk);
        index_t total = 0;
        for (index_t h = 0; h < cf.heads; ++h) {
          const auto got = chunks_of(sel, h, bq, 16);
          total += static_cast<index_t>(got.size());
          for (index_t f : forced) {
            if (!std::binary_search(got.begin(), got.end(), f)) {
              ok = false;
              FAIL_CHECK("head " << h << " query chunk " << bq << " misses forced chunk " << f);
            }
          }
          if (m + 1 < kk) CHECK(got.size() == forced.size());
        }
        const index_t want = cf.heads * (m + 1 < kk ? m + 1 : kk);
        if (total != want) {
          ok = false;
          FAIL_CHECK("query chunk " << bq << " keeps " << total << " chunks, want " << want);
        }
      }
      CHECK(ok);
    }
  }
}

TEST_CASE("block-sparse adaptive allocation: hand-derived cases",
          "[sparse][block_sparse][adaptive]") {
  // n = 256, chunk 16: query chunks m = 0..15, nb = 17. Every token of key chunk n is
  // e_n + e_63, so pooled keys are exactly e_n + e_63. Budget tokens(T) with
  // pairs(6) <= 256 T < pairs(7) gives k = 6 (pairs counted from the definition): m <= 4 dense;
  // m >= 5 keeps 0, m-1, m in both heads plus 2 * (6 - 3) = 6 extras shared among chunks 1..m-2
  // of both heads (L = m - 2 each).
  constexpr index_t n = 256, C = 16, d = 64;
  const index_t T = pairs_with(n, 0, C, 6) / n + 1;
  REQUIRE(pairs_with(n, 0, C, 6) <= T * n);
  REQUIRE(pairs_with(n, 0, C, 7) > T * n);
  auto run = [&](const tensor<float>& q, index_t kv_heads) {
    tensor<float> k(n, kv_heads, d);
    for (index_t j = 0; j < n; ++j) {
      for (index_t g = 0; g < kv_heads; ++g) {
        k.data[static_cast<std::size_t>((j * kv_heads + g) * d + j / C)] = 1.0f;
        k.data[static_cast<std::size_t>((j * kv_heads + g) * d + 63)] = 1.0f;
      }
    }
    prefill_inputs in{q.cview(), k.cview()};
    in.exec = executor::serial();
    auto sel = policies::block_sparse{}.select(in, budget::tokens(T, allocation::adaptive));
    auto uni = policies::block_sparse{}.select(in, budget::tokens(T));
    REQUIRE_NOTHROW(sel.validate());
    CHECK(sel.pairs() == uni.pairs());
    return std::pair{sel, uni};
  };
  auto with_forced = [](std::vector<index_t> x, index_t m) {
    x.insert(x.end(), {0, m - 1, m});
    std::sort(x.begin(), x.end());
    return x;
  };
  auto dense = [](index_t m) {
    std::vector<index_t> r;
    for (index_t c = 0; c <= m; ++c) r.push_back(c);
    return r;
  };

  SECTION("a diffuse head takes budget from a focused one") {
    // Head 0's queries are zero: all its scores are 0, its mass uniform, 1/(m+1) per chunk.
    // Head 1's queries in chunk m >= 3 are 160 e_t(m) + 8 e_63, t(m) = 1 + 5m mod (m - 2) in
    // 1..m-2: score 168 on t(m), 8 elsewhere; with scale 1/8 its mass is ~1 on t(m) and
    // 1 / (e^20 + m) ~ 2e-9 on every other chunk, far below head 0's. (Raw scores would rank
    // head 1's 8 above head 0's 0.) Ranking: head 1's t(m), then head 0's chunks (equal mass:
    // lowest first), then head 1's other chunks (lowest first). So head 0 gets the min(L, 5)
    // lowest chunks, head 1 t(m) plus the 5 - L left over (m = 5, 6) lowest chunks other than
    // t(m). Uniform: each head its 3 best, ties to the lowest.
    auto target = [](index_t m) { return 1 + (5 * m) % (m - 2); };
    tensor<float> q(n, 2, d);
    for (index_t t = 3 * C; t < n; ++t) {
      q.data[static_cast<std::size_t>((t * 2 + 1) * d + target(t / C))] = 160.0f;
      q.data[static_cast<std::size_t>((t * 2 + 1) * d + 63)] = 8.0f;
    }
    for (const index_t kv_heads : {index_t{1}, index_t{2}}) {
      INFO("kv_heads " << kv_heads);
      const auto [sel, uni] = run(q, kv_heads);
      for (index_t m = 0; m < 16; ++m) {
        INFO("query chunk " << m);
        std::vector<index_t> h0, h1, u0, u1;
        if (m <= 4) {
          h0 = h1 = u0 = u1 = dense(m);
        } else {
          const index_t L = m - 2, t = target(m);
          h1.push_back(t);
          for (index_t c = 1; c <= std::min<index_t>(L, 5); ++c) h0.push_back(c);
          for (index_t c = 1, left = std::max<index_t>(0, 5 - L); c <= L && left > 0; ++c) {
            if (c != t) {
              h1.push_back(c);
              --left;
            }
          }
          u0 = {1, 2, 3};
          u1.push_back(t);
          for (index_t c = 1, left = 2; left > 0; ++c) {
            if (c != t) {
              u1.push_back(c);
              --left;
            }
          }
          h0 = with_forced(h0, m);
          h1 = with_forced(h1, m);
          u0 = with_forced(u0, m);
          u1 = with_forced(u1, m);
        }
        CHECK(chunks_of(sel, 0, m, C) == h0);
        CHECK(chunks_of(sel, 1, m, C) == h1);
        CHECK(chunks_of(uni, 0, m, C) == u0);
        CHECK(chunks_of(uni, 1, m, C) == u1);
        CHECK(uni.at(0, m).blocks.size() == uni.at(1, m).blocks.size());
      }
      // Head 0 got more than its uniform share, head 1 less.
      CHECK(sel.head_pairs(0) > uni.head_pairs(0));
      CHECK(sel.head_pairs(1) < uni.head_pairs(1));
    }
  }

  SECTION("equal masses go to the lower head, then the lower chunk") {
    // Both heads' queries are zero: every candidate of both heads has mass 1/(m+1). The 6
    // extras go to head 0's lowest min(L, 6) chunks, the rest to head 1's lowest: m = 5 (L = 3)
    // 3 + 3; m = 6: 4 + 2; m = 7: 5 + 1; m >= 8: 6 + 0 (head 1 keeps only its forced chunks).
    const tensor<float> q(n, 2, d);
    const auto [sel, uni] = run(q, 1);
    for (index_t m = 0; m < 16; ++m) {
      INFO("query chunk " << m);
      if (m <= 4) {
        CHECK(chunks_of(sel, 0, m, C) == dense(m));
        CHECK(chunks_of(sel, 1, m, C) == dense(m));
        continue;
      }
      const index_t L = m - 2, a = std::min<index_t>(L, 6);
      std::vector<index_t> h0, h1;
      for (index_t c = 1; c <= a; ++c) h0.push_back(c);
      for (index_t c = 1; c <= 6 - a; ++c) h1.push_back(c);
      CHECK(chunks_of(sel, 0, m, C) == with_forced(h0, m));
      CHECK(chunks_of(sel, 1, m, C) == with_forced(h1, m));
      CHECK(chunks_of(uni, 0, m, C) == with_forced({1, 2, 3}, m));
      CHECK(chunks_of(uni, 1, m, C) == with_forced({1, 2, 3}, m));
    }
  }
}

TEST_CASE("block-sparse adaptive: the kernel over the selection equals the oracle",
          "[sparse][block_sparse][adaptive]") {
  struct config {
    index_t nq, nk, heads, kv_heads;
  };
  for (const auto& cf : std::vector<config>{{1100, 1100, 4, 2}, {320, 960, 4, 1}}) {
    auto q = random_tensor<float>(cf.nq, cf.heads, 64, 21);
    auto k = random_tensor<bf16>(cf.nk, cf.kv_heads, 64, 22, 1.5f);
    auto v = random_tensor<bf16>(cf.nk, cf.kv_heads, 64, 23);
    prefill_inputs in{q.cview(), k.cview()};
    for (const budget& b :
         {budget::kept(0.2, allocation::adaptive), budget::tokens(200, allocation::adaptive)}) {
      INFO("nq=" << cf.nq << " nk=" << cf.nk << " budget " << b.describe());
      const auto sel = policies::block_sparse{}.select(in, b);
      REQUIRE_NOTHROW(sel.validate());
      // Heads really differ (random data): otherwise this would only test uniform selections.
      bool differ = false;
      for (index_t bq = 0; bq < sel.q_blocks(); ++bq)
        differ = differ || sel.at(0, bq).blocks.size() != sel.at(1, bq).blocks.size();
      CHECK(differ);
      check_kernel_matches_oracle<float>(q, k, v, sel, 2, 30);
    }
  }
}

TEST_CASE("block-sparse selections are deterministic across thread counts",
          "[sparse][block_sparse][adaptive]") {
  auto q = random_tensor<bf16>(2100, 6, 64, 31);
  auto k = random_tensor<bf16>(2100, 2, 64, 32, 1.5f);
  prefill_inputs in{q.cview(), k.cview()};
  for (const budget& b :
       {budget::kept(0.15, allocation::adaptive), budget::tokens(300, allocation::adaptive),
        budget::kept(0.15), budget::policy_default()}) {
    INFO("budget " << b.describe() << (b.alloc() == allocation::adaptive ? " adaptive" : ""));
    in.exec = executor::serial();
    const auto one = policies::block_sparse{}.select(in, b);
    CHECK(policies::block_sparse{}.select(in, b) == one);
    in.exec = executor::openmp(2);
    const auto two = policies::block_sparse{}.select(in, b);
    CHECK(two == one);
    CHECK(policies::block_sparse{}.select(in, b) == two);
  }
}
