// Dense prefill and decode on a Llama-3-8B-like shape (32 query heads, 8 KV heads, head_dim 128),
// with this machine's ceilings measured first in the same run.
//   prefill: flop_per_s counts causal FLOPs, 4 * d * n(n+1)/2 per query head; frac_fma_peak.
//   decode:  byte_per_s counts the K and V bytes read; frac_read_bw.
#include <chrono>
#include <string>

#include "common.hpp"
#include "roofline.hpp"

namespace spattn::bench {
namespace {

constexpr index_t heads = 32, kv_heads = 8, head_dim = 128;

template <class T>
void bench_prefill(benchmark::State& st, index_t n) {
  const auto q = random_values<T>(static_cast<std::size_t>(n * heads * head_dim), 1);
  const auto k = random_values<T>(static_cast<std::size_t>(n * kv_heads * head_dim), 2);
  const auto v = random_values<T>(static_cast<std::size_t>(n * kv_heads * head_dim), 3);
  std::vector<T> out(q.size());
  attention_options opt;
  opt.exec = executor::openmp(threads());
  tensor_view<const T> qv(q.data(), n, heads, head_dim), kv(k.data(), n, kv_heads, head_dim),
      vv(v.data(), n, kv_heads, head_dim);
  tensor_view<T> ov(out.data(), n, heads, head_dim);
  const double flops = 4.0 * head_dim * static_cast<double>(n) * (n + 1) / 2 * heads;
  double secs = 0;
  for (auto _ : st) {
    const auto t0 = std::chrono::steady_clock::now();
    prefill(qv, kv, vv, ov, {}, opt);
    secs += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    benchmark::DoNotOptimize(out.data());
  }
  report_flops(st, flops);
  report_fraction(st, "frac_fma_peak", flops, secs / static_cast<double>(st.iterations()),
                  fma_peak());
}

template <class TKV>
void bench_decode(benchmark::State& st, index_t n) {
  const auto q = random_values<float>(static_cast<std::size_t>(heads * head_dim), 1);
  const auto k = random_cache_values<TKV>(static_cast<std::size_t>(n * kv_heads * head_dim), 2);
  const auto v = random_cache_values<TKV>(static_cast<std::size_t>(n * kv_heads * head_dim), 3);
  std::vector<float> out(q.size());
  attention_options opt;
  opt.exec = executor::openmp(threads());
  tensor_view<const float> qv(q.data(), 1, heads, head_dim);
  tensor_view<const TKV> kv(k.data(), n, kv_heads, head_dim), vv(v.data(), n, kv_heads, head_dim);
  tensor_view<float> ov(out.data(), 1, heads, head_dim);
  const double bytes = 2.0 * static_cast<double>(n * kv_heads * head_dim) * sizeof(TKV);
  double secs = 0;
  for (auto _ : st) {
    const auto t0 = std::chrono::steady_clock::now();
    decode(qv, kv, vv, ov, {}, opt);
    secs += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    benchmark::DoNotOptimize(out.data());
  }
  report_bytes(st, bytes);
  report_fraction(st, "frac_read_bw", bytes, secs / static_cast<double>(st.iterations()),
                  read_peak());
}

void register_all() {
  register_rooflines();
  for (index_t n : {1024, 4096, 16384}) {
    auto* f =
        benchmark::RegisterBenchmark(("dense_prefill/f32/n=" + std::to_string(n)).c_str(),
                                     [n](benchmark::State& s) { bench_prefill<float>(s, n); });
    auto* b = benchmark::RegisterBenchmark(("dense_prefill/bf16/n=" + std::to_string(n)).c_str(),
                                           [n](benchmark::State& s) { bench_prefill<bf16>(s, n); });
    for (auto* x : {f, b}) {
      x->Unit(benchmark::kMillisecond)->UseRealTime();
      if (n >= 16384) x->Iterations(1);
    }
  }
  for (index_t n : {4096, 32768, 131072}) {
    auto* f = benchmark::RegisterBenchmark(("dense_decode/f32/n=" + std::to_string(n)).c_str(),
                                           [n](benchmark::State& s) { bench_decode<float>(s, n); });
    auto* h = benchmark::RegisterBenchmark(("dense_decode/f16/n=" + std::to_string(n)).c_str(),
                                           [n](benchmark::State& s) { bench_decode<f16>(s, n); });
    for (auto* x : {f, h}) x->Unit(benchmark::kMicrosecond)->UseRealTime();
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
