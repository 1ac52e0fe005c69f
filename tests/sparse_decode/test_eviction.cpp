// SnapKV, Ada-SnapKV and StreamingLLM: kept indices on hand-computed cases, identity when the
// capacity covers the cache, and decoding an evicted cache against the oracle on the kept tokens.
#include "decode_support.hpp"

using namespace spattn;
using namespace spattn::policies;
using namespace spattn::test;

namespace {

using keep_t = std::vector<std::vector<index_t>>;

// Prompt of L tokens whose keys are c_j * e0 and queries q * e0 (other dims zero).
struct toy_prompt {
  index_t L, heads, kvh, d = 8;
  tensor<float> q, k;
  toy_prompt(index_t l, index_t h, index_t kv) : L(l), heads(h), kvh(kv), q(l, h, 8), k(l, kv, 8) {}
  void set_key(index_t t, index_t g, float c) {
    k.data[static_cast<std::size_t>((t * kvh + g) * d)] = c;
  }
  void set_query(index_t h, float c) {
    for (index_t t = 0; t < L; ++t) q.data[static_cast<std::size_t>((t * heads + h) * d)] = c;
  }
  eviction_inputs inputs() const {
    eviction_inputs in;
    in.queries = q.cview();
    in.keys = k.cview();
    in.scale = 1.0f;
    return in;
  }
};

}  // namespace

TEST_CASE("snapkv keeps forced tokens and the pooled neighbourhoods of dominant keys", "[snapkv]") {
  // L = 16, window 4 (queries at 12..15 all see every key), kernel 3, prefix 1, local 2.
  // Keys 5 and 9 score 30, the rest 0: each window row puts ~1/2 on each of them, so the pooled
  // importance of 4, 5, 6 and 8, 9, 10 is ~W/6 and every other position's is ~e^-30.
  toy_prompt p(16, 2, 1);
  p.set_query(0, 1.0f);
  p.set_query(1, 1.0f);
  p.set_key(5, 0, 30.0f);
  p.set_key(9, 0, 30.0f);
  const snapkv s{9, 4, 3, 2, 1};
  const auto sel = s.select(p.inputs(), budget::policy_default());
  CHECK(sel.keep == keep_t{{0, 4, 5, 6, 8, 9, 10, 14, 15}});
  CHECK(sel.lengths == std::vector<index_t>{16});
  // The importance itself: forced +inf, and pooled = (sum of 3 neighbours) / 3 at the edges too.
  const auto imp = s.importance(p.inputs());
  CHECK(std::isinf(imp[0][0]));
  CHECK(std::isinf(imp[0][14]));
  CHECK(std::isinf(imp[0][15]));
  CHECK(imp[0][5] == Approx(4.0 * 0.5 / 3).epsilon(1e-6));
  CHECK(imp[0][4] == Approx(4.0 * 0.5 / 3).epsilon(1e-6));
  CHECK(imp[0][7] < 1e-10);
}

TEST_CASE("snapkv ties break by lower index; pooling divides edges by the kernel size",
          "[snapkv]") {
  // q = 0: uniform attention. Window 2 -> rows at 14 (sees 0..14, p = 1/15) and 15 (1/16):
  // importance[j] = 1/15 + 1/16 for j <= 14 and 1/16 for j = 15. Kernel 3: pooled[j] equal for
  // 1 <= j <= 13, pooled[0] = 2a/3 (zero padding counted). Forced: 0 (prefix) and 14, 15 (local).
  toy_prompt p(16, 1, 1);
  const snapkv s{6, 2, 3, 2, 1};
  const auto sel = s.select(p.inputs(), budget::policy_default());
  CHECK(sel.keep == keep_t{{0, 1, 2, 3, 14, 15}});
  snapkv no_prefix = s;
  no_prefix.prefix_tokens = 0;
  no_prefix.token_capacity = 5;
  // Position 0 is now scored 2a/3 < a: positions 1, 2, 3 win.
  CHECK(no_prefix.select(p.inputs(), budget::policy_default()).keep == keep_t{{1, 2, 3, 14, 15}});
  const auto imp = no_prefix.importance(p.inputs());
  const double a = 1.0 / 15 + 1.0 / 16;
  CHECK(imp[0][0] == Approx(2 * a / 3).epsilon(1e-6));
  CHECK(imp[0][7] == Approx(a).epsilon(1e-6));
  CHECK(imp[0][13] == Approx(a).epsilon(1e-6));  // (a + a + a) / 3
}

TEST_CASE("snapkv averages the group's heads", "[snapkv]") {
  // Two query heads share KV head 0. Head 0 attends key 3 (score 30 on dim 0), head 1 attends
  // key 10 (score 30 on dim 1): with the mean over the group both neighbourhoods are kept.
  toy_prompt p(16, 2, 1);
  // Head 0's query uses dim 0, head 1's dim 1.
  for (index_t t = 0; t < p.L; ++t) {
    p.q.data[static_cast<std::size_t>((t * 2 + 0) * 8 + 0)] = 1.0f;
    p.q.data[static_cast<std::size_t>((t * 2 + 1) * 8 + 1)] = 1.0f;
  }
  p.k.data[static_cast<std::size_t>(3 * 8 + 0)] = 30.0f;
  p.k.data[static_cast<std::size_t>(10 * 8 + 1)] = 30.0f;
  const snapkv s{9, 4, 3, 2, 1};
  CHECK(s.select(p.inputs(), budget::policy_default()).keep ==
        keep_t{{0, 2, 3, 4, 9, 10, 11, 14, 15}});
}

TEST_CASE("ada-snapkv: per-head floor, then the best remaining tokens across heads",
          "[ada_snapkv]") {
  // Two KV heads (one query head each), L = 16, window 4, kernel 1 (no pooling), prefix 1,
  // local 2. Head 0: keys 3, 5, 7, 9 score 30 -> max_i P ~ 1/4 there, ~0 elsewhere. Head 1:
  // q = 0 -> uniform; its best rows give max_i P = 1/13 for j <= 12 (row 12 sees 13 keys).
  toy_prompt p(16, 2, 2);
  p.set_query(0, 1.0f);
  for (const index_t t : {3, 5, 7, 9}) p.set_key(t, 0, 30.0f);
  ada_snapkv a{6, 4, 1, 2, 1, 0.2};
  // total 12; floor max(int(1.2), 3) = 3 = the forced tokens; the remaining 6 go to head 0's
  // four dominant keys (1/4) and then head 1's best (1/13, ties by lower position: 1, 2).
  auto sel = a.select(p.inputs(), budget::policy_default());
  CHECK(sel.keep == keep_t{{0, 3, 5, 7, 9, 14, 15}, {0, 1, 2, 14, 15}});
  CHECK(sel.total_kept() == 12);
  CHECK(a.min_capacity(6) == 3);
  // Floor = capacity: every head keeps its own top 6 (ties by lower index).
  a.min_head_capacity_ratio = 1.0;
  sel = a.select(p.inputs(), budget::policy_default());
  CHECK(sel.keep == keep_t{{0, 3, 5, 7, 14, 15}, {0, 1, 2, 3, 14, 15}});
  // The reference's floor truncates: int(1024 * 0.2) = 204.
  CHECK(ada_snapkv{}.min_capacity(1024) == 204);
}

TEST_CASE("streaming-llm keeps sinks and the recent window", "[streaming_llm]") {
  const streaming_llm s{2, 3};
  CHECK(s.kept(budget::policy_default(), 10) == std::vector<index_t>{0, 1, 7, 8, 9});
  CHECK(s.kept(budget::policy_default(), 4) == std::vector<index_t>{0, 1, 2, 3});
  CHECK(s.kept(budget::tokens(4), 10) == std::vector<index_t>{0, 1, 8, 9});
  CHECK(s.kept(budget::kept(0.5), 10) == std::vector<index_t>{0, 1, 7, 8, 9});
  eviction_inputs in;
  in.lengths = {10, 6};
  CHECK(s.select(in, budget::policy_default()).keep == keep_t{{0, 1, 7, 8, 9}, {0, 1, 3, 4, 5}});
}

TEST_CASE("eviction with capacity at least the length is the identity", "[evict]") {
  const index_t L = 300, heads = 4, kvh = 2, d = 16;
  auto q = random_tensor<float>(L, heads, d, 1);
  auto k = random_tensor<f16>(L, kvh, d, 2);
  auto v = random_tensor<f16>(L, kvh, d, 3);
  eviction_inputs in;
  in.queries = q.cview();
  in.keys = k.cview();
  for (const auto& b : {budget::tokens(300), budget::tokens(1000), budget::kept(1.0)}) {
    const auto s1 = snapkv{}.select(in, b);
    const auto s2 = ada_snapkv{}.select(in, b);
    const auto s3 = streaming_llm{}.select(in, b);
    CHECK(s1.is_identity());
    CHECK(s2.is_identity());
    CHECK(s3.is_identity());
    CHECK(s1.kept(0) == L);
  }
  CHECK(snapkv{}.select(in, budget::policy_default()).is_identity());  // 1024 >= 300
  // Compacting with the identity leaves the cache and the decode output unchanged.
  kv_cache<f16> c(kvh, d);
  c.append(k.cview(), v.cview());
  auto qd = random_tensor<float>(1, heads, d, 9);
  auto [before, lb] = run_decode<float>(qd, c, nullptr, 2);
  const std::size_t bytes = c.bytes();
  c.compact(snapkv{}.select(in, budget::tokens(L)));
  auto [after, la] = run_decode<float>(qd, c, nullptr, 2);
  CHECK(bit_equal(before, after));
  CHECK(c.bytes() == bytes);
}

namespace {

template <class TKV, class Policy>
void check_decode_after_eviction(const Policy& policy, const budget& b, index_t L, index_t heads,
                                 index_t kvh, index_t d, bool paged) {
  INFO(policy.name() << " L=" << L << " budget=" << b.describe() << " paged=" << paged);
  const auto seed = static_cast<std::uint64_t>(L + d);
  auto q = random_tensor<float>(L, heads, d, seed, 1.0f);
  auto k = random_tensor<TKV>(L, kvh, d, seed + 1, 1.5f);
  auto v = random_tensor<TKV>(L, kvh, d, seed + 2);
  eviction_inputs in;
  in.queries = q.cview();
  in.keys = k.cview();
  in.exec = executor::openmp(2);
  const auto sel = policy.select(in, b);
  sel.validate();
  REQUIRE(sel.heads() == kvh);
  // Decode step: one new token appended after the kept prompt tokens.
  auto kn = random_tensor<TKV>(1, kvh, d, seed + 3, 1.5f);
  auto vn = random_tensor<TKV>(1, kvh, d, seed + 4);
  auto qd = random_tensor<float>(1, heads, d, seed + 5);
  tensor<TKV> kall(L + 1, kvh, d), vall(L + 1, kvh, d);
  std::copy(k.data.begin(), k.data.end(), kall.data.begin());
  std::copy(kn.data.begin(), kn.data.end(), kall.data.begin() + L * kvh * d);
  std::copy(v.data.begin(), v.data.end(), vall.data.begin());
  std::copy(vn.data.begin(), vn.data.end(), vall.data.begin() + L * kvh * d);
  const auto keys_of = [&](index_t h) {
    auto t = sel.keep[static_cast<std::size_t>(h / (heads / kvh))];
    t.push_back(L);
    return t;
  };
  if (paged) {
    paged_cache<TKV> pc(kvh, d, 16);
    const index_t id = pc.add_sequence();
    pc.append(id, k.cview(), v.cview());
    pc.compact(id, sel);
    pc.append(id, kn.cview(), vn.cview());
    for (index_t g = 0; g < kvh; ++g) REQUIRE(pc.length(id, g) == sel.kept(g) + 1);
    auto [out, lse] = run_decode<float>(qd, pc.sequence(id), nullptr, 2);
    check_against_oracle<float>(qd, kall, vall, keys_of, out, lse);
  } else {
    kv_cache<TKV> c(kvh, d);
    c.append(k.cview(), v.cview());
    c.compact(sel);
    for (index_t g = 0; g < kvh; ++g)  // memory released down to the kept tokens
      REQUIRE(c.bytes(g) == 2 * static_cast<std::size_t>(sel.kept(g)) * d * sizeof(TKV));
    c.append(kn.cview(), vn.cview());
    for (index_t g = 0; g < kvh; ++g) REQUIRE(c.length(g) == sel.kept(g) + 1);
    auto [out, lse] = run_decode<float>(qd, c, nullptr, 2);
    auto [out1, lse1] = run_decode<float>(qd, c, nullptr, 1);
    CHECK(bit_equal(out, out1));
    check_against_oracle<float>(qd, kall, vall, keys_of, out, lse);
  }
}

}  // namespace

TEST_CASE("decoding an evicted cache equals the oracle on the kept tokens", "[evict][decode]") {
  const snapkv snap{64, 32, 7, 16, 4};
  const ada_snapkv ada{64, 32, 7, 16, 4, 0.2};
  for (const bool paged : {false, true}) {
    check_decode_after_eviction<float>(snap, budget::policy_default(), 400, 8, 2, 64, paged);
    check_decode_after_eviction<bf16>(snap, budget::kept(0.25), 700, 4, 4, 32, paged);
    check_decode_after_eviction<f16>(ada, budget::policy_default(), 500, 8, 4, 64, paged);
    check_decode_after_eviction<f16>(ada, budget::tokens(100, allocation::adaptive), 600, 8, 2, 32,
                                     paged);
    check_decode_after_eviction<float>(streaming_llm{4, 60}, budget::policy_default(), 300, 4, 2,
                                       32, paged);
  }
}

TEST_CASE("ada-snapkv gives heads different lengths, with the floor and the total respected",
          "[ada_snapkv]") {
  const index_t L = 800, heads = 8, kvh = 4, d = 32;
  auto q = random_tensor<float>(L, heads, d, 41, 2.0f);
  auto k = random_tensor<float>(L, kvh, d, 42, 2.0f);
  eviction_inputs in;
  in.queries = q.cview();
  in.keys = k.cview();
  const ada_snapkv a{200, 64, 21, 32, 4, 0.2};
  const auto sel = a.select(in, budget::policy_default());
  CHECK(sel.total_kept() == 200 * kvh);
  bool unequal = false;
  for (index_t g = 0; g < kvh; ++g) {
    CHECK(sel.kept(g) >= a.min_capacity(200));
    unequal = unequal || sel.kept(g) != sel.kept(0);
  }
  CHECK(unequal);
}

TEST_CASE("streaming-llm evicts continuously while decoding", "[streaming_llm][decode]") {
  const index_t heads = 4, kvh = 2, d = 16, sinks = 3, window = 20, steps = 50;
  auto k = random_tensor<f16>(steps, kvh, d, 51, 1.5f);
  auto v = random_tensor<f16>(steps, kvh, d, 52);
  const streaming_llm s{sinks, window};
  kv_cache<f16> c(kvh, d);
  kv_cache<f16> full(kvh, d);
  const auto kview = k.cview();
  for (index_t t = 0; t < steps; ++t) {
    INFO("step " << t);
    s.append(c, k.cview().slice_tokens(t, 1), v.cview().slice_tokens(t, 1));
    full.append(k.cview().slice_tokens(t, 1), v.cview().slice_tokens(t, 1));
    const index_t n = t + 1;
    REQUIRE(c.length(0) == std::min(n, sinks + window));
    // The cache holds exactly the sinks and the last `window` tokens, in order.
    std::vector<index_t> want;
    for (index_t j = 0; j < n; ++j)
      if (j < sinks || j >= n - window) want.push_back(j);
    for (std::size_t i = 0; i < want.size(); ++i)
      REQUIRE(c.key(1, static_cast<index_t>(i))[3].bits == kview.row(want[i], 1)[3].bits);
    auto q = random_tensor<float>(1, heads, d, static_cast<std::uint64_t>(t));
    auto [out, lse] = run_decode<float>(q, c, nullptr, 1);
    tensor<f16> kn(n, kvh, d), vn(n, kvh, d);
    std::copy_n(k.data.begin(), n * kvh * d, kn.data.begin());
    std::copy_n(v.data.begin(), n * kvh * d, vn.data.begin());
    check_against_oracle<float>(
        q, kn, vn, [&](index_t) { return want; }, out, lse);
    // The mask form over the full cache reads the same tokens: the same bits.
    const auto sel = s.select(make_decode_inputs(q.cview(), full), budget::policy_default());
    auto [out_mask, lse_mask] = run_decode<float>(q, full, &sel, 1);
    CHECK(bit_equal(out, out_mask));
  }
}
