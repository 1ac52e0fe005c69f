// Dense prefill and decode kernels against the double-precision oracle.
#include <thread>

#include "support.hpp"

using namespace spattn;
using namespace spattn::test;

namespace {

struct dense_case {
  index_t nq, nk, heads, kv_heads, d;
};

enum class path { prefill, decode };

template <class TQ, class TKV, class TO>
void check_dense(const dense_case& c, path p, int threads, bool causal = true,
                 index_t q_offset = -1, float scale = 0.0f) {
  INFO("nq=" << c.nq << " nk=" << c.nk << " heads=" << c.heads << ":" << c.kv_heads << " d=" << c.d
             << " threads=" << threads << " causal=" << causal << " q_offset=" << q_offset
             << " path=" << (p == path::prefill ? "prefill" : "decode"));
  const std::uint64_t seed = static_cast<std::uint64_t>(c.nq * 131 + c.nk * 7 + c.d + c.heads);
  auto q = random_tensor<TQ>(c.nq, c.heads, c.d, seed, 1.0f);
  auto k = random_tensor<TKV>(c.nk, c.kv_heads, c.d, seed + 1, 1.5f);
  auto v = random_tensor<TKV>(c.nk, c.kv_heads, c.d, seed + 2, 1.0f);
  tensor<TO> out(c.nq, c.heads, c.d);
  std::vector<float> lse(static_cast<std::size_t>(std::max<index_t>(c.nq * c.heads, 1)));
  attention_options opt;
  opt.causal = causal;
  opt.q_offset = q_offset;
  opt.scale = scale;
  opt.exec = threads == 1 ? executor::serial() : executor::openmp(threads);
  lse_view lv(lse.data(), c.nq, c.heads);
  if (p == path::prefill) {
    prefill(q.cview(), k.cview(), v.cview(), out.view(), lv, opt);
  } else {
    decode(q.cview(), k.cview(), v.cview(), out.view(), lv, opt);
  }
  const auto rows = sample_rows(c.nq);
  const index_t off = causal ? (q_offset < 0 ? c.nk - c.nq : q_offset) : 0;
  const auto ref = eval::reference_attention_masked(
      q.cview(), k.cview(), v.cview(),
      [&](index_t, index_t qp, index_t kp) { return !causal || kp <= qp; }, scale, off, rows);
  const auto st = compare<TO>(ref, out.cview(), &lse, rows);
  CHECK(st.all_finite);
  CHECK(st.max_out_err <= out_tolerance<TO>());
  CHECK(st.max_lse_err <= lse_tolerance);
}

}  // namespace

TEST_CASE("prefill equals the oracle across lengths and head layouts (fp32)", "[prefill]") {
  const index_t n = GENERATE(1, 7, 64, 65, 1000);
  const auto layout =
      GENERATE(std::pair<index_t, index_t>{1, 1}, std::pair<index_t, index_t>{8, 2},
               std::pair<index_t, index_t>{32, 8}, std::pair<index_t, index_t>{4, 1});
  const index_t d = GENERATE(64, 128, 72);
  const int threads = d == 72 ? 1 : 2;  // both serial and threaded runs across the grid
  check_dense<float, float, float>({n, n, layout.first, layout.second, d}, path::prefill, threads);
}

TEST_CASE("prefill on a long sequence and a Llama-like layout", "[prefill]") {
  check_dense<float, float, float>({4097, 4097, 4, 1, 64}, path::prefill, 2);
  check_dense<float, float, float>({300, 300, 32, 8, 128}, path::prefill, 2);
}

TEST_CASE("prefill with f16 and bf16 storage", "[prefill][dtype]") {
  const index_t n = GENERATE(65, 333);
  check_dense<f16, f16, float>({n, n, 8, 2, 128}, path::prefill, 2);
  check_dense<bf16, bf16, float>({n, n, 8, 2, 64}, path::prefill, 2);
  check_dense<f16, f16, f16>({n, n, 4, 1, 72}, path::prefill, 1);
  check_dense<bf16, bf16, bf16>({n, n, 4, 4, 128}, path::prefill, 1);
  check_dense<float, f16, float>({n, n, 8, 2, 64}, path::prefill, 2);
}

TEST_CASE("chunked prefill: queries at an offset", "[prefill][offset]") {
  // Queries are the last m positions (auto offset) or sit in the middle (explicit offset).
  check_dense<float, float, float>({100, 1000, 8, 2, 64}, path::prefill, 2);
  check_dense<float, float, float>({64, 777, 4, 1, 128}, path::prefill, 2, true, 300);
  check_dense<float, float, float>({1, 4097, 4, 2, 64}, path::prefill, 1);
  check_dense<bf16, bf16, float>({130, 500, 8, 2, 72}, path::prefill, 2, true, 17);
}

TEST_CASE("non-causal attention and a custom scale", "[prefill]") {
  check_dense<float, float, float>({65, 200, 8, 2, 64}, path::prefill, 2, false);
  check_dense<float, float, float>({200, 200, 4, 1, 128}, path::prefill, 2, true, -1, 0.3f);
  check_dense<float, float, float>({5, 300, 4, 1, 64}, path::decode, 2, false);
}

TEST_CASE("decode equals the oracle across cache lengths", "[decode]") {
  const index_t n = GENERATE(1, 7, 64, 65, 1000, 4097);
  const index_t nq = GENERATE(1, 3);
  if (nq > n) return;
  const auto layout =
      GENERATE(std::pair<index_t, index_t>{1, 1}, std::pair<index_t, index_t>{32, 8},
               std::pair<index_t, index_t>{4, 1});
  const index_t d = GENERATE(64, 128, 72);
  const int threads = d == 72 ? 1 : 2;
  check_dense<float, float, float>({nq, n, layout.first, layout.second, d}, path::decode, threads);
}

TEST_CASE("decode reads f16 and bf16 caches directly", "[decode][dtype]") {
  const index_t n = GENERATE(65, 5000);
  check_dense<float, f16, float>({1, n, 32, 8, 128}, path::decode, 2);
  check_dense<float, bf16, float>({2, n, 8, 2, 64}, path::decode, 2);
  check_dense<f16, f16, f16>({1, n, 4, 1, 72}, path::decode, 1);
  check_dense<bf16, bf16, bf16>({1, n, 8, 8, 128}, path::decode, 2);
}

TEST_CASE("decode at an explicit offset", "[decode][offset]") {
  check_dense<float, float, float>({2, 3000, 8, 2, 128}, path::decode, 2, true, 1234);
}

TEST_CASE("results do not depend on the thread count or executor", "[threads]") {
  const index_t n = 777;
  auto q = random_tensor<float>(n, 8, 64, 1);
  auto k = random_tensor<f16>(n, 2, 64, 2);
  auto v = random_tensor<f16>(n, 2, 64, 3);
  auto run = [&](const executor& ex, bool dec) {
    tensor<float> out(dec ? 2 : n, 8, 64);
    attention_options opt;
    opt.exec = ex;
    auto qv = dec ? q.cview().slice_tokens(n - 2, 2) : q.cview();
    if (dec) {
      decode(qv, k.cview(), v.cview(), out.view(), {}, opt);
    } else {
      prefill(qv, k.cview(), v.cview(), out.view(), {}, opt);
    }
    return out.data;
  };
  // A caller-supplied pool: runs tasks in reverse order on two std::threads.
  auto pool = executor::custom(
      [](std::int64_t count, const std::function<void(std::int64_t)>& body) {
        std::thread t([&] {
          for (std::int64_t i = count - 1; i >= 0; i -= 2) body(i);
        });
        for (std::int64_t i = count - 2; i >= 0; i -= 2) body(i);
        t.join();
      },
      2);
  for (bool dec : {false, true}) {
    const auto a = run(executor::serial(), dec);
    CHECK(a == run(executor::openmp(2), dec));
    CHECK(a == run(pool, dec));
  }
}

TEST_CASE("decode spreads a short cache over several tasks", "[decode][threads]") {
  // 512 cached tokens were one split-K task (a second thread idle); a caller's pool must see a
  // region with several tasks, and the result still equals the oracle.
  const index_t n = 512;
  auto q = random_tensor<float>(1, 4, 128, 21);
  auto k = random_tensor<f16>(n, 1, 128, 22);
  auto v = random_tensor<f16>(n, 1, 128, 23);
  std::int64_t most_tasks = 0;
  auto pool = executor::custom(
      [&](std::int64_t count, const std::function<void(std::int64_t)>& body) {
        most_tasks = std::max(most_tasks, count);
        for (std::int64_t i = 0; i < count; ++i) body(i);
      },
      2);
  tensor<float> out(1, 4, 128);
  attention_options opt;
  opt.exec = pool;
  decode(q.cview(), k.cview(), v.cview(), out.view(), {}, opt);
  CHECK(most_tasks >= 2);
  const auto ref = eval::reference_dense(q.cview(), k.cview(), v.cview());
  CHECK(compare<float>(ref, out.cview(), nullptr).max_out_err <= out_tolerance<float>());
}

TEST_CASE("varlen batches equal per-sequence calls and the oracle", "[varlen]") {
  const std::vector<index_t> q_lens = {5, 1, 130, 64, 0}, k_lens = {5, 200, 130, 1000, 3};
  std::vector<index_t> cu_q{0}, cu_k{0};
  for (std::size_t s = 0; s < q_lens.size(); ++s) {
    cu_q.push_back(cu_q.back() + q_lens[s]);
    cu_k.push_back(cu_k.back() + k_lens[s]);
  }
  auto q = random_tensor<float>(cu_q.back(), 8, 64, 11);
  auto k = random_tensor<bf16>(cu_k.back(), 2, 64, 12);
  auto v = random_tensor<bf16>(cu_k.back(), 2, 64, 13);
  for (bool dec : {false, true}) {
    tensor<float> out(cu_q.back(), 8, 64);
    std::vector<float> lse(static_cast<std::size_t>(cu_q.back() * 8));
    lse_view lv(lse.data(), cu_q.back(), 8);
    if (dec) {
      decode(q.cview(), k.cview(), v.cview(), out.view(), varlen_batch{cu_q, cu_k}, lv);
    } else {
      prefill(q.cview(), k.cview(), v.cview(), out.view(), varlen_batch{cu_q, cu_k}, lv);
    }
    for (std::size_t s = 0; s < q_lens.size(); ++s) {
      if (q_lens[s] == 0) continue;
      auto qs = q.cview().slice_tokens(cu_q[s], q_lens[s]);
      auto ks = k.cview().slice_tokens(cu_k[s], k_lens[s]);
      auto vs = v.cview().slice_tokens(cu_k[s], k_lens[s]);
      const auto ref = eval::reference_dense(qs, ks, vs);
      std::vector<float> lse_s(lse.begin() + cu_q[s] * 8, lse.begin() + cu_q[s + 1] * 8);
      const auto st = compare<float>(ref, out.cview().slice_tokens(cu_q[s], q_lens[s]), &lse_s);
      INFO("sequence " << s << " decode=" << dec);
      CHECK(st.max_out_err <= out_tolerance<float>());
      CHECK(st.max_lse_err <= lse_tolerance);
    }
  }
}

TEST_CASE("strided views: a packed QKV buffer and a head-major layout", "[views]") {
  // q, k, v interleaved per token in one buffer (as a fused QKV projection writes them).
  const index_t n = 150, hq = 4, hk = 2, d = 64, stride = (hq + 2 * hk) * d;
  std::vector<float> qkv(static_cast<std::size_t>(n * stride));
  std::mt19937 rng(5);
  std::normal_distribution<float> nd;
  for (auto& x : qkv) x = nd(rng);
  tensor_view<const float> q(qkv.data(), n, hq, d, stride, d);
  tensor_view<const float> k(qkv.data() + hq * d, n, hk, d, stride, d);
  tensor_view<const float> v(qkv.data() + (hq + hk) * d, n, hk, d, stride, d);
  // Output head-major: [heads][tokens][d].
  std::vector<float> o(static_cast<std::size_t>(hq * n * d));
  tensor_view<float> out(o.data(), n, hq, d, d, n * d);
  prefill(q, k, v, out);
  const auto ref = eval::reference_dense(q, k, v);
  CHECK(compare<float>(ref, as_const(out), nullptr).max_out_err <= out_tolerance<float>());
}

TEST_CASE("decode over head-major and packed caches (rows not one compact range)",
          "[decode][views]") {
  // Dense decode sweeps a token-major cache block by block and prefetches rows one by one
  // otherwise; both layouts must give the oracle's result.
  const index_t n = 1500, hq = 8, hk = 2, d = 128;
  std::mt19937 rng(11);
  std::normal_distribution<float> nd;
  std::vector<f16> kbuf(static_cast<std::size_t>(n * hk * d)), vbuf(kbuf.size());
  for (auto& x : kbuf) x = to_f16(nd(rng));
  for (auto& x : vbuf) x = to_f16(nd(rng));
  std::vector<float> qbuf(static_cast<std::size_t>(hq * d));
  for (auto& x : qbuf) x = nd(rng);
  tensor_view<const float> q(qbuf.data(), 1, hq, d);
  // Head-major: [kv_heads][tokens][d].
  tensor_view<const f16> kh(kbuf.data(), n, hk, d, d, n * d);
  tensor_view<const f16> vh(vbuf.data(), n, hk, d, d, n * d);
  // Token-major with padding between tokens (K and V of a packed buffer): 3 head slots per token.
  std::vector<f16> packed(static_cast<std::size_t>(n * 2 * 3 * d));
  for (index_t t = 0; t < n; ++t) {
    for (index_t h = 0; h < hk; ++h) {
      for (index_t x = 0; x < d; ++x) {
        packed[static_cast<std::size_t>((t * 6 + h) * d + x)] = kh.row(t, h)[x];
        packed[static_cast<std::size_t>((t * 6 + 3 + h) * d + x)] = vh.row(t, h)[x];
      }
    }
  }
  tensor_view<const f16> kp(packed.data(), n, hk, d, 6 * d, d);
  tensor_view<const f16> vp(packed.data() + 3 * d, n, hk, d, 6 * d, d);
  for (const auto& [k, v] : {std::pair{kh, vh}, std::pair{kp, vp}}) {
    std::vector<float> o(static_cast<std::size_t>(hq * d));
    tensor_view<float> out(o.data(), 1, hq, d);
    attention_options opt;
    opt.exec = executor::openmp(2);
    decode(q, k, v, out, {}, opt);
    const auto ref = eval::reference_dense(q, k, v);
    CHECK(compare<float>(ref, as_const(out), nullptr).max_out_err <= out_tolerance<float>());
  }
}
