// Sparse prefill: every policy at its reference defaults and at compression 10x and 20x, with the
// dense kernel timed in the same run on the same data. Shapes: n = 16384 with 8 query heads over
// 2 KV heads (head_dim 128), and n = 65536 with one KV group of 4 query heads.
//
// Inputs are synthetic but attention-like (see make_qk): RoPE-rotated shared directions make
// attention strongest on nearby keys with a long tail, plus sink and heavy-hitter key columns.
// (Uniform random Q/K would make vertical-slash pick scattered diagonals, each costing a 64-wide
// range per query block: an unrealistic worst case.)
//
// Counters, per case:
//   total_ms / estimate_ms   selection + kernel, and the selection (importance estimation) alone
//   est_frac                 estimate_ms / total_ms (target <= 0.10 at n = 65536)
//   density                  computed pairs / causal pairs
//   speedup                  dense kernel time / total_ms (same run, same data)
//   kernel_flop_per_s        4 * d * computed pairs / kernel time
//   rate_vs_dense            kernel_flop_per_s / dense kernel's flop_per_s (target >= 0.8 at >= 5%)
//   frac_fma_peak            kernel rate against this run's roofline_fma
#include <chrono>
#include <cmath>
#include <map>
#include <memory>
#include <string>

#include "common.hpp"
#include "roofline.hpp"
#include "spattn/kernels/sparse_prefill.hpp"
#include "spattn/policies/a_shape.hpp"
#include "spattn/policies/block_sparse.hpp"
#include "spattn/policies/dense.hpp"
#include "spattn/policies/flexprefill.hpp"
#include "spattn/policies/vertical_slash.hpp"

namespace spattn::bench {
namespace {

constexpr index_t head_dim = 128;

struct problem {
  index_t n, heads, kv_heads;
  std::vector<bf16> q, k, v;
  std::vector<bf16> out;
  tensor_view<const bf16> qv() const { return {q.data(), n, heads, head_dim}; }
  tensor_view<const bf16> kv() const { return {k.data(), n, kv_heads, head_dim}; }
  tensor_view<const bf16> vv() const { return {v.data(), n, kv_heads, head_dim}; }
  tensor_view<bf16> ov() { return {out.data(), n, heads, head_dim}; }
  double dense_seconds = 0, dense_rate = 0;
};

// Attention-like Q/K. Keys of KV head g are R(t) (mu_g + 0.5 eps) and queries of its heads
// R(t) (mu_g + 0.3 delta_h + 0.5 eps), with RoPE rotations R(t) (theta 10000) on the first 126
// dims: a query agrees most with nearby keys, decaying with distance. The last 2 dims are not
// rotated: queries hold 4 there, the first 4 keys (sinks) 8 and 0.2% of keys (heavy hitters) 6, so
// some key columns are strong for every query.
void make_qk(problem& p) {
  std::mt19937_64 rng(7);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  const index_t group = p.heads / p.kv_heads, rot = head_dim - 2;
  std::vector<float> mk(static_cast<std::size_t>(p.kv_heads * head_dim)),
      mq(static_cast<std::size_t>(p.heads * head_dim));
  for (auto& x : mk) x = nd(rng);
  for (index_t h = 0; h < p.heads; ++h)
    for (index_t x = 0; x < head_dim; ++x)
      mq[static_cast<std::size_t>(h * head_dim + x)] =
          mk[static_cast<std::size_t>((h / group) * head_dim + x)] + 0.3f * nd(rng);
  std::vector<double> theta(static_cast<std::size_t>(rot / 2));
  for (index_t i = 0; i < rot / 2; ++i)
    theta[static_cast<std::size_t>(i)] = std::pow(10000.0, -2.0 * static_cast<double>(i) / rot);
  auto fill = [&](std::vector<bf16>& out, index_t heads, const std::vector<float>& mu, bool key) {
    out.resize(static_cast<std::size_t>(p.n * heads * head_dim));
    for (index_t t = 0; t < p.n; ++t) {
      const bool heavy = key && (t < 4 || u(rng) < 0.002f);
      const float fixed = key ? (heavy ? (t < 4 ? 8.0f : 6.0f) : 0.0f) : 4.0f;
      for (index_t h = 0; h < heads; ++h) {
        const float* m = mu.data() + h * head_dim;
        bf16* o = out.data() + (t * heads + h) * head_dim;
        for (index_t i = 0; i < rot / 2; ++i) {
          const float a = m[2 * i] + 0.5f * nd(rng), b = m[2 * i + 1] + 0.5f * nd(rng);
          const double ang = static_cast<double>(t) * theta[static_cast<std::size_t>(i)];
          const auto c = static_cast<float>(std::cos(ang)), s = static_cast<float>(std::sin(ang));
          o[2 * i] = to_bf16(a * c - b * s);
          o[2 * i + 1] = to_bf16(a * s + b * c);
        }
        o[rot] = to_bf16(fixed + 0.5f * nd(rng));
        o[rot + 1] = to_bf16(fixed + 0.5f * nd(rng));
      }
    }
  };
  fill(p.q, p.heads, mq, false);
  fill(p.k, p.kv_heads, mk, true);
}

problem& get_problem(index_t n) {
  static std::map<index_t, std::unique_ptr<problem>> cache;
  auto& p = cache[n];
  if (!p) {
    p = std::make_unique<problem>();
    p->n = n;
    p->heads = n >= 65536 ? 4 : 8;
    p->kv_heads = n >= 65536 ? 1 : 2;
    make_qk(*p);
    p->v = random_values<bf16>(static_cast<std::size_t>(n * p->kv_heads * head_dim), 3);
    p->out.resize(p->q.size());
  }
  return *p;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void bench_dense(benchmark::State& st, index_t n) {
  problem& p = get_problem(n);
  attention_options opt;
  opt.exec = executor::openmp(threads());
  const double flops = 4.0 * head_dim * static_cast<double>(n) * static_cast<double>(n + 1) / 2 *
                       static_cast<double>(p.heads);
  double secs = 0;
  for (auto _ : st) {
    const auto t0 = std::chrono::steady_clock::now();
    prefill(p.qv(), p.kv(), p.vv(), p.ov(), {}, opt);
    secs += seconds_since(t0);
    benchmark::DoNotOptimize(p.out.data());
  }
  secs /= static_cast<double>(st.iterations());
  p.dense_seconds = secs;
  p.dense_rate = flops / secs;
  report_flops(st, flops);
  report_fraction(st, "frac_fma_peak", flops, secs, fma_peak());
}

template <class P>
void bench_policy(benchmark::State& st, index_t n, P policy, budget b) {
  problem& p = get_problem(n);
  attention_options opt;
  opt.exec = executor::openmp(threads());
  prefill_inputs in{p.qv(), p.kv()};
  in.exec = opt.exec;
  double est = 0, kern = 0;
  prefill_selection sel;
  for (auto _ : st) {
    const auto t0 = std::chrono::steady_clock::now();
    sel = policy.select(in, b);
    est += seconds_since(t0);
    const auto t1 = std::chrono::steady_clock::now();
    sparse_prefill(p.qv(), p.kv(), p.vv(), p.ov(), sel, {}, opt);
    kern += seconds_since(t1);
    benchmark::DoNotOptimize(p.out.data());
  }
  const auto iters = static_cast<double>(st.iterations());
  est /= iters;
  kern /= iters;
  const double total = est + kern, flops = sel.attention_flops();
  st.counters["total_ms"] = total * 1e3;
  st.counters["estimate_ms"] = est * 1e3;
  st.counters["est_frac"] = est / total;
  st.counters["density"] = sel.density();
  st.counters["kernel_flop_per_s"] = flops / kern;
  st.counters["est_gflop"] = sel.estimation_flops * 1e-9;
  if (p.dense_seconds > 0) {
    st.counters["speedup"] = p.dense_seconds / total;
    st.counters["rate_vs_dense"] = flops / kern / p.dense_rate;
  }
  report_fraction(st, "frac_fma_peak", flops, kern, fma_peak());
}

template <class P>
void add(const std::string& label, index_t n, P policy, budget b) {
  benchmark::RegisterBenchmark(("sparse_prefill/" + label + "/n=" + std::to_string(n)).c_str(),
                               [=](benchmark::State& s) { bench_policy(s, n, policy, b); })
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime()
      ->Iterations(1);
}

template <class P>
void add_all_budgets(const std::string& name, index_t n, P policy) {
  add(name + "/default", n, policy, budget::policy_default());
  add(name + "/compression=10", n, policy, budget::compression(10));
  add(name + "/compression=20", n, policy, budget::compression(20));
}

void register_all() {
  register_rooflines();
  for (index_t n : {16384, 65536}) {
    benchmark::RegisterBenchmark(("dense_prefill/bf16/n=" + std::to_string(n)).c_str(),
                                 [n](benchmark::State& s) { bench_dense(s, n); })
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime()
        ->Iterations(1);
    // Dense as a policy keeps everything: only its default (the sparse kernel on the full layout).
    add("dense/default", n, policies::dense{}, budget::policy_default());
    add_all_budgets("vertical_slash", n, policies::vertical_slash{});
    add_all_budgets("flexprefill", n, policies::flexprefill{});
    add_all_budgets("block_sparse", n, policies::block_sparse{});
    add_all_budgets("a_shape", n, policies::a_shape{});
  }
}

}  // namespace
}  // namespace spattn::bench

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  spattn::bench::register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
