// LSE merge: combining attention over two disjoint key sets equals attention over their union.
#include "support.hpp"

using namespace spattn;
using namespace spattn::test;

TEST_CASE("merging two key chunks equals attention over the whole", "[merge]") {
  const index_t nq = 40, nk = 700, split = 333, hq = 8, hk = 2, d = 64;
  auto q = random_tensor<float>(nq, hq, d, 21);
  auto k = random_tensor<float>(nk, hk, d, 22, 1.5f);
  auto v = random_tensor<float>(nk, hk, d, 23);
  attention_options full;
  full.causal = false;
  tensor<float> oa(nq, hq, d), ob(nq, hq, d);
  std::vector<float> la(nq * hq), lb(nq * hq), lm(nq * hq);
  prefill(q.cview(), k.cview().slice_tokens(0, split), v.cview().slice_tokens(0, split), oa.view(),
          lse_view(la.data(), nq, hq), full);
  prefill(q.cview(), k.cview().slice_tokens(split, nk - split),
          v.cview().slice_tokens(split, nk - split), ob.view(), lse_view(lb.data(), nq, hq), full);
  // In place into oa.
  merge_states(as_const(oa.view()), lse_view(la.data(), nq, hq), as_const(ob.view()),
               lse_view(lb.data(), nq, hq), oa.view(), lse_view(lm.data(), nq, hq));
  const auto ref = eval::reference_dense(q.cview(), k.cview(), v.cview(), false);
  const auto st = compare<float>(ref, as_const(oa.view()), &lm);
  CHECK(st.max_out_err <= out_tolerance<float>());
  CHECK(st.max_lse_err <= lse_tolerance);
}

TEST_CASE("merge by hand: weights from LSE, empty sides", "[merge]") {
  // a = (1, 1) with lse log 1 = 0, b = (3, -1) with lse log 3: out = (1*1 + 3*3)/4, (1 - 3)/4.
  std::vector<float> a{1, 1, 0, 0, 0, 0, 0, 0}, b{3, -1, 0, 0, 0, 0, 0, 0}, o(8);
  float la = 0.0f, lb = std::log(3.0f), lo = 0.0f;
  merge_states(tensor_view<const float>(a.data(), 1, 1, 8), lse_view(&la, 1, 1),
               tensor_view<const float>(b.data(), 1, 1, 8), lse_view(&lb, 1, 1),
               tensor_view<float>(o.data(), 1, 1, 8), lse_view(&lo, 1, 1));
  CHECK(o[0] == Approx(2.5));
  CHECK(o[1] == Approx(-0.5));
  CHECK(lo == Approx(std::log(4.0f)));
  // b empty (-inf): out = a.
  lb = -INFINITY;
  merge_states(tensor_view<const float>(a.data(), 1, 1, 8), lse_view(&la, 1, 1),
               tensor_view<const float>(b.data(), 1, 1, 8), lse_view(&lb, 1, 1),
               tensor_view<float>(o.data(), 1, 1, 8), lse_view(&lo, 1, 1));
  CHECK(o[0] == 1.0f);
  CHECK(lo == 0.0f);
  // both empty: zeros and -inf, no NaN.
  la = -INFINITY;
  merge_states(tensor_view<const float>(a.data(), 1, 1, 8), lse_view(&la, 1, 1),
               tensor_view<const float>(b.data(), 1, 1, 8), lse_view(&lb, 1, 1),
               tensor_view<float>(o.data(), 1, 1, 8), lse_view(&lo, 1, 1));
  CHECK(o[0] == 0.0f);
  CHECK(std::isinf(lo));
  CHECK_THROWS_AS(merge_states(tensor_view<const float>(a.data(), 1, 1, 8), lse_view(&la, 1, 1),
                               tensor_view<const float>(b.data(), 1, 1, 8), lse_view{},
                               tensor_view<float>(o.data(), 1, 1, 8)),
                  spattn::error);
}

TEST_CASE("chunked prefill: two chunks merged equal one call", "[merge][offset]") {
  // Chunk 2 (queries [300, 500)) attends keys [0, 500): split its keys into [0, 300) without mask
  // and [300, 500) causal, merge, and compare with the causal oracle.
  const index_t n = 500, p = 300, hq = 4, hk = 1, d = 128;
  auto q = random_tensor<float>(n, hq, d, 31);
  auto k = random_tensor<float>(n, hk, d, 32);
  auto v = random_tensor<float>(n, hk, d, 33);
  auto q2 = q.cview().slice_tokens(p, n - p);
  tensor<float> oa(n - p, hq, d), ob(n - p, hq, d), om(n - p, hq, d);
  std::vector<float> la((n - p) * hq), lb((n - p) * hq);
  attention_options nc;
  nc.causal = false;
  prefill(q2, k.cview().slice_tokens(0, p), v.cview().slice_tokens(0, p), oa.view(),
          lse_view(la.data(), n - p, hq), nc);
  prefill(q2, k.cview().slice_tokens(p, n - p), v.cview().slice_tokens(p, n - p), ob.view(),
          lse_view(lb.data(), n - p, hq));
  merge_states(as_const(oa.view()), lse_view(la.data(), n - p, hq), as_const(ob.view()),
               lse_view(lb.data(), n - p, hq), om.view());
  const auto ref = eval::reference_dense(q2, k.cview(), v.cview(), true, 0.0, p);
  CHECK(compare<float>(ref, as_const(om.view()), nullptr).max_out_err <= out_tolerance<float>());
}
