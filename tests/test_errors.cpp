// Bad input raises spattn::error with a message naming the argument.
#include "support.hpp"

using namespace spattn;
using namespace spattn::test;
using Catch::Matchers::Contains;

namespace {
struct fixture {
  tensor<float> q = random_tensor<float>(16, 8, 64, 1);
  tensor<float> k = random_tensor<float>(16, 2, 64, 2);
  tensor<float> v = random_tensor<float>(16, 2, 64, 3);
  tensor<float> out = tensor<float>(16, 8, 64);
};
}  // namespace

TEST_CASE("mismatched shapes name the argument", "[errors]") {
  fixture f;
  auto k3 = random_tensor<float>(16, 3, 64, 4);
  auto v3 = random_tensor<float>(16, 3, 64, 4);
  CHECK_THROWS_WITH(prefill(f.q.cview(), k3.cview(), v3.cview(), f.out.view()),
                    Contains("'q.heads'") && Contains("multiple of k.heads (3)"));
  auto v_short = random_tensor<float>(15, 2, 64, 5);
  CHECK_THROWS_WITH(prefill(f.q.cview(), f.k.cview(), v_short.cview(), f.out.view()),
                    Contains("'v.tokens'"));
  auto k_d = random_tensor<float>(16, 2, 32, 5);
  CHECK_THROWS_WITH(prefill(f.q.cview(), k_d.cview(), k_d.cview(), f.out.view()),
                    Contains("'k.head_dim'"));
  tensor<float> out_bad(16, 8, 32);
  CHECK_THROWS_WITH(decode(f.q.cview(), f.k.cview(), f.v.cview(), out_bad.view()),
                    Contains("'out'") && Contains("[16, 8, 64]"));
  std::vector<float> lse(10);
  CHECK_THROWS_WITH(
      prefill(f.q.cview(), f.k.cview(), f.v.cview(), f.out.view(), lse_view(lse.data(), 10, 1)),
      Contains("'lse'"));
}

TEST_CASE("unsupported head_dim", "[errors]") {
  auto q = random_tensor<float>(4, 1, 20, 1);
  tensor<float> o(4, 1, 20);
  CHECK_THROWS_WITH(prefill(q.cview(), q.cview(), q.cview(), o.view()),
                    Contains("'head_dim'") && Contains("multiple of 8"));
  auto q2 = random_tensor<float>(2, 1, 264, 1);
  tensor<float> o2(2, 1, 264);
  CHECK_THROWS_WITH(decode(q2.cview(), q2.cview(), q2.cview(), o2.view()), Contains("'head_dim'"));
}

TEST_CASE("negative or inconsistent offsets and lengths", "[errors]") {
  fixture f;
  attention_options opt;
  opt.q_offset = 5;  // 5 + 16 > 16 keys
  CHECK_THROWS_WITH(prefill(f.q.cview(), f.k.cview(), f.v.cview(), f.out.view(), {}, opt),
                    Contains("'q_offset'"));
  opt.q_offset = -3;
  CHECK_THROWS_WITH(decode(f.q.cview(), f.k.cview(), f.v.cview(), f.out.view(), {}, opt),
                    Contains("'q_offset'"));
  // more queries than keys under a causal mask
  auto k_short = random_tensor<float>(8, 2, 64, 5);
  CHECK_THROWS_WITH(prefill(f.q.cview(), k_short.cview(), k_short.cview(), f.out.view()),
                    Contains("'q.tokens'"));
  // varlen: offsets that do not add up, decreasing, empty key sequence
  std::vector<index_t> cq{0, 8, 16}, ck{0, 8, 15}, ck_dec{0, 9, 8, 16}, cq3{0, 8, 8, 16},
      ck_empty{0, 8, 8, 16};
  CHECK_THROWS_WITH(
      prefill(f.q.cview(), f.k.cview(), f.v.cview(), f.out.view(), varlen_batch{cq, ck}),
      Contains("'cu_k.back()'"));
  CHECK_THROWS_WITH(
      prefill(f.q.cview(), f.k.cview(), f.v.cview(), f.out.view(), varlen_batch{cq3, ck_dec}),
      Contains("'cu_k'") && Contains("non-decreasing"));
  CHECK_THROWS_WITH(
      decode(f.q.cview(), f.k.cview(), f.v.cview(), f.out.view(), varlen_batch{cq3, ck_empty}),
      Contains("'cu_k'") && Contains("no keys"));
  // bad scale
  attention_options s;
  s.scale = -1.0f;
  CHECK_THROWS_WITH(prefill(f.q.cview(), f.k.cview(), f.v.cview(), f.out.view(), {}, s),
                    Contains("'scale'"));
  s.scale = NAN;
  CHECK_THROWS_WITH(prefill(f.q.cview(), f.k.cview(), f.v.cview(), f.out.view(), {}, s),
                    Contains("'scale'"));
}

TEST_CASE("null data and aliasing output", "[errors]") {
  CHECK_THROWS_WITH(tensor_view<const float>(nullptr, 4, 2, 64), Contains("'data'"));
  CHECK_THROWS_WITH(tensor_view<const float>(nullptr, 4, 0, 64), Contains("'heads'"));
  CHECK_THROWS_WITH(tensor_view<const float>(nullptr, -1, 2, 64), Contains("'tokens'"));
  CHECK_THROWS_WITH(tensor_view<const float>(nullptr, 0, 2, 64, 128, 32),
                    Contains("'head_stride'"));
  fixture f;
  // out written over q
  tensor_view<float> out_on_q(f.q.data.data(), 16, 8, 64);
  CHECK_THROWS_WITH(prefill(f.q.cview(), f.k.cview(), f.v.cview(), out_on_q),
                    Contains("'out'") && Contains("aliasing"));
  std::vector<float> lse(16 * 8);
  lse_view lse_on_out(f.out.data.data(), 16, 8);
  CHECK_THROWS_WITH(decode(f.q.cview(), f.k.cview(), f.v.cview(), f.out.view(), lse_on_out),
                    Contains("'lse'"));
  CHECK_THROWS_WITH(executor::openmp(-1), Contains("'threads'"));
}
