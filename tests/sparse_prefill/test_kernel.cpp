// The sparse prefill kernel against the oracle restricted to the same selection, and against the
// dense kernel for the full causal selection.
#include <cstring>

#include "sparse_support.hpp"
#include "spattn/policies/dense.hpp"

using namespace spattn;
using namespace spattn::test;

namespace {

template <class TQ, class TKV, class TO>
void check_full_equals_dense(index_t nq, index_t nk, index_t heads, index_t kv_heads, index_t d,
                             index_t q_offset) {
  INFO("nq=" << nq << " nk=" << nk << " heads=" << heads << ":" << kv_heads << " d=" << d
             << " q_offset=" << q_offset);
  const auto seed = static_cast<std::uint64_t>(nq * 7 + nk + d);
  auto q = random_tensor<TQ>(nq, heads, d, seed);
  auto k = random_tensor<TKV>(nk, kv_heads, d, seed + 1, 1.5f);
  auto v = random_tensor<TKV>(nk, kv_heads, d, seed + 2);
  tensor<TO> o1(nq, heads, d), o2(nq, heads, d);
  std::vector<float> l1(static_cast<std::size_t>(nq * heads)), l2(l1.size());
  attention_options opt;
  opt.q_offset = q_offset;
  opt.exec = executor::openmp(2);
  prefill(q.cview(), k.cview(), v.cview(), o1.view(), lse_view(l1.data(), nq, heads), opt);
  prefill_inputs in{q.cview(), k.cview(), q_offset};
  const auto sel = policies::dense{}.select(in, budget::policy_default());
  CHECK(sel.density() == 1.0);
  sparse_prefill(q.cview(), k.cview(), v.cview(), o2.view(), sel, lse_view(l2.data(), nq, heads),
                 opt);
  // Same tiles in the same order: bit-identical.
  CHECK(std::memcmp(o1.data.data(), o2.data.data(), o1.data.size() * sizeof(TO)) == 0);
  CHECK(std::memcmp(l1.data(), l2.data(), l1.size() * sizeof(float)) == 0);
}

}  // namespace

TEST_CASE("a full causal selection reproduces the dense kernel bit for bit", "[sparse][kernel]") {
  check_full_equals_dense<float, float, float>(1, 1, 1, 1, 64, -1);
  check_full_equals_dense<float, float, float>(200, 200, 8, 2, 64, -1);
  check_full_equals_dense<float, float, float>(513, 513, 4, 1, 128, -1);
  check_full_equals_dense<float, float, float>(100, 1000, 4, 2, 72, -1);
  check_full_equals_dense<float, float, float>(130, 700, 4, 4, 64, 301);
  check_full_equals_dense<bf16, bf16, bf16>(300, 300, 8, 2, 128, -1);
  check_full_equals_dense<f16, f16, float>(129, 129, 2, 1, 64, -1);
  check_full_equals_dense<float, bf16, f16>(77, 77, 6, 3, 64, -1);
}

TEST_CASE("random selections equal the oracle restricted to them", "[sparse][kernel]") {
  const index_t bq = GENERATE(64, 16, 128, 32);
  const index_t bk = GENERATE(64, 16, 40);
  const auto layout = GENERATE(std::pair<index_t, index_t>{1, 1}, std::pair<index_t, index_t>{8, 2},
                               std::pair<index_t, index_t>{5, 1});
  INFO("block_q=" << bq << " block_k=" << bk << " heads=" << layout.first << ":" << layout.second);
  const auto sel = random_selection(layout.first, 333, 333, 0, 64, bq, bk,
                                    static_cast<std::uint64_t>(bq * 100 + bk + layout.first));
  check_against_oracle<float, float, float>(sel, layout.second, 2, 11);
}

TEST_CASE("sparse kernel: dtypes, offsets, head dims", "[sparse][kernel][dtype]") {
  SECTION("bf16 / f16 storage") {
    const auto sel = random_selection(8, 260, 260, 0, 128, 64, 64, 5);
    check_against_oracle<bf16, bf16, float>(sel, 2, 2, 3);
    check_against_oracle<f16, f16, f16>(sel, 2, 1, 4);
    check_against_oracle<float, bf16, bf16>(sel, 4, 2, 6);
  }
  SECTION("queries at an offset (chunked prefill)") {
    const auto sel = random_selection(4, 150, 900, 700, 64, 64, 64, 9, 0.2, 0.02);
    check_against_oracle<float, float, float>(sel, 2, 2, 12);
    const auto sel2 = random_selection(4, 100, 1000, 900, 72, 16, 16, 10, 0.2, 0.02);
    check_against_oracle<float, float, float>(sel2, 1, 2, 13);
  }
  SECTION("a long sequence, dense-ish and very sparse heads") {
    auto sel = random_selection(4, 2000, 2000, 0, 64, 64, 64, 21, 0.02, 0.002);
    const auto dense_heads = random_selection(4, 2000, 2000, 0, 64, 64, 64, 22, 0.9, 0.1);
    for (index_t b = 0; b < sel.q_blocks(); ++b) sel.at(2, b) = dense_heads.at(2, b);
    check_against_oracle<float, float, float>(sel, 1, 2, 14);
  }
}

// Selections of whole key blocks at multiples of block_k (block-sparse chunks), with some extra
// columns: tiles made of aligned 16-key runs read K from the per-call panels (fp32 and bf16 keys),
// the others are packed per tile; both against the oracle, every row.
namespace {
prefill_selection aligned_selection(index_t heads, index_t nq, index_t nk, index_t offset,
                                    index_t d, index_t block_q, index_t block_k, std::uint64_t seed,
                                    double p_col) {
  prefill_selection sel(heads, nq, nk, offset, d, block_q, block_k);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(0, 1);
  for (index_t h = 0; h < heads; ++h) {
    for (index_t b = 0; b < sel.q_blocks(); ++b) {
      auto& e = sel.at(h, b);
      const index_t last = sel.last_position(b);
      for (index_t s = 0; s <= last; s += block_k)
        if (u(rng) < 0.4 || s + block_k > last - block_k) e.blocks.push_back(s);  // + local
      add_random_columns(e, last, block_k, p_col, rng);
    }
  }
  return sel;
}
}  // namespace

TEST_CASE("block-aligned selections (K read from panels) equal the oracle", "[sparse][kernel]") {
  const index_t bq = GENERATE(16, 32);
  const index_t bk = GENERATE(16, 32);
  const index_t d = GENERATE(64, 128, 72);
  const double p_col = GENERATE(0.0, 0.03);
  INFO("block_q=" << bq << " block_k=" << bk << " d=" << d << " p_col=" << p_col);
  const auto seed = static_cast<std::uint64_t>(bq * 1000 + bk * 10 + d);
  // 8 query heads over 2 KV heads; keys end mid-chunk (333); queries at offset 32.
  const auto sel = aligned_selection(8, 301, 333, 32, d, bq, bk, seed, p_col);
  REQUIRE_NOTHROW(sel.validate());
  const auto q = random_tensor<float>(301, 8, d, seed, 1.0f);
  const auto kf = random_tensor<float>(333, 2, d, seed + 1, 1.5f);
  const auto vf = random_tensor<float>(333, 2, d, seed + 2, 1.0f);
  check_kernel_matches_oracle<float>(q, kf, vf, sel, 2, 301);
  const auto kb = random_tensor<bf16>(333, 2, d, seed + 1, 1.5f);
  const auto vb = random_tensor<bf16>(333, 2, d, seed + 2, 1.0f);
  check_kernel_matches_oracle<float>(q, kb, vb, sel, 2, 301);
  const auto kh = random_tensor<f16>(333, 2, d, seed + 1, 1.5f);
  const auto vh = random_tensor<f16>(333, 2, d, seed + 2, 1.0f);
  check_kernel_matches_oracle<bf16>(q, kh, vh, sel, 1, 301);
}

TEST_CASE("rows that select nothing give zero output and LSE -inf", "[sparse][kernel]") {
  prefill_selection sel(2, 100, 100, 0, 64, 64, 64);
  sel.at(0, 0).columns = {0, 5};  // head 0 block 0: rows 0..4 see only key 0
  sel.at(1, 1).blocks = {64};     // head 1 block 0 empty; block 1 sees [64, 128)
  check_against_oracle<float, float, float>(sel, 1, 1, 3);
  auto q = random_tensor<float>(100, 2, 64, 1);
  auto k = random_tensor<float>(100, 1, 64, 2);
  tensor<float> out(100, 2, 64);
  std::vector<float> lse(200);
  sparse_prefill(q.cview(), k.cview(), k.cview(), out.view(), sel, lse_view(lse.data(), 100, 2));
  CHECK(std::isinf(lse[0 * 2 + 1]));  // token 0, head 1: nothing selected
  CHECK(lse[0 * 2 + 1] < 0);
  CHECK(out.data[64] == 0.0f);  // token 0, head 1, x = 0
  CHECK(std::isfinite(lse[64 * 2 + 1]));
}

TEST_CASE("sparse results do not depend on the thread count", "[sparse][kernel][threads]") {
  const auto sel = random_selection(8, 700, 700, 0, 64, 16, 16, 31, 0.1, 0.01);
  auto q = random_tensor<float>(700, 8, 64, 1);
  auto k = random_tensor<bf16>(700, 2, 64, 2);
  auto v = random_tensor<bf16>(700, 2, 64, 3);
  tensor<float> o1(700, 8, 64), o2(700, 8, 64), o3(700, 8, 64);
  attention_options opt;
  opt.exec = executor::serial();
  sparse_prefill(q.cview(), k.cview(), v.cview(), o1.view(), sel, {}, opt);
  opt.exec = executor::openmp(2);
  sparse_prefill(q.cview(), k.cview(), v.cview(), o2.view(), sel, {}, opt);
  opt.exec = executor::custom(
      [](std::int64_t n, const std::function<void(std::int64_t)>& body) {
        for (std::int64_t i = n - 1; i >= 0; --i) body(i);  // reverse order
      },
      3);
  sparse_prefill(q.cview(), k.cview(), v.cview(), o3.view(), sel, {}, opt);
  CHECK(o1.data == o2.data);
  CHECK(o1.data == o3.data);
}

TEMPLATE_TEST_CASE("the fast transposing K pack equals the scalar pack", "[sparse][kernel][pack]",
                   float, f16, bf16) {
  const index_t d = GENERATE(16, 64, 72, 128, 256);
  const int n = GENERATE(1, 15, 17, 63, 64);
  auto k = random_tensor<TestType>(64, 1, d, 77);
  simd::aligned_buffer a(static_cast<std::size_t>(d * kernels::BC)),
      b(static_cast<std::size_t>(d * kernels::BC));
  std::fill(a.data(), a.data() + d * kernels::BC, 1.0f);  // stale data must be overwritten
  std::fill(b.data(), b.data() + d * kernels::BC, 2.0f);
  // Gathered, unordered rows.
  auto row = [&](int j) { return k.cview().row((j * 37) % 64, 0); };
  kernels::pack_k_transposed_scalar<TestType>(row, n, d, a.data());
  kernels::pack_k_transposed<TestType>(row, n, d, b.data());
  CHECK(std::memcmp(a.data(), b.data(), static_cast<std::size_t>(d * kernels::BC) * 4) == 0);
}
