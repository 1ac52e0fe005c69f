#pragma once
// This machine's ceilings, measured in the same binary as the kernels: a register-blocked FMA
// loop (fp32 FLOP/s over all benchmark threads) and a streaming read of 1 GiB (bytes/s).
#include <chrono>

#include "common.hpp"

namespace spattn::bench {

inline void roofline_fma(benchmark::State& st) {
  using simd::vfloat;
  constexpr int acc_n = 12;  // independent chains: > FMA latency x FMA ports
  const long iters = 1L << 24;
  const int t = threads();
  double flops = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : st) {
    float sink = 0;
#pragma omp parallel num_threads(t) reduction(+ : sink)
    {
      vfloat acc[acc_n];
      SPATTN_UNROLL for (int i = 0; i < acc_n; ++i) acc[i] = vfloat(static_cast<float>(i) * 1e-3f);
      const vfloat a(0.999999f), b(1e-7f);
      for (long i = 0; i < iters; ++i) {
        SPATTN_UNROLL for (int j = 0; j < acc_n; ++j) acc[j] = xsimd::fma(acc[j], a, b);
      }
      SPATTN_UNROLL for (int j = 0; j < acc_n; ++j) sink += xsimd::hadd(acc[j]);
    }
    benchmark::DoNotOptimize(sink);
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  flops = 2.0 * acc_n * simd::W * static_cast<double>(iters) * t;
  report_flops(st, flops);
  fma_peak() = flops * static_cast<double>(st.iterations()) / secs;
}

inline void roofline_read(benchmark::State& st) {
  const std::size_t n = (std::size_t{1} << 30) / sizeof(float);
  // On huge pages, as the decode benchmarks' K/V are: the ceiling those are read against.
  static const huge_page_array<float> buf = [n] {
    huge_page_array<float> b(n);
    for (auto& x : b) x = 1.0f;
    return b;
  }();
  const int t = threads();
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : st) {
    float total = 0;
#pragma omp parallel for num_threads(t) reduction(+ : total) schedule(static)
    for (std::size_t c = 0; c < n; c += 4096) {
      simd::vfloat a(0.0f), b(0.0f), cc(0.0f), d(0.0f);
      for (std::size_t i = c; i < c + 4096; i += 4 * simd::W) {
        a += simd::load(&buf[i]);
        b += simd::load(&buf[i + simd::W]);
        cc += simd::load(&buf[i + 2 * simd::W]);
        d += simd::load(&buf[i + 3 * simd::W]);
      }
      total += xsimd::hadd(a + b + cc + d);
    }
    benchmark::DoNotOptimize(total);
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double bytes = static_cast<double>(n * sizeof(float));
  report_bytes(st, bytes);
  read_peak() = bytes * static_cast<double>(st.iterations()) / secs;
}

// Registers the two ceilings; call before registering kernels so they run first.
inline void register_rooflines() {
  benchmark::RegisterBenchmark("roofline_fma", roofline_fma)
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime()
      ->MinTime(1.0);
  benchmark::RegisterBenchmark("roofline_read", roofline_read)
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime()
      ->MinTime(2.0);
}

}  // namespace spattn::bench
