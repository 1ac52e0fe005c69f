#pragma once
// Shared benchmark pieces: the machine's ceilings (measured in the same run), input data and
// threads. Every rate is reported next to the ceiling it should be read against.
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <random>
#include <vector>

#include "spattn/spattn.hpp"

namespace spattn::bench {

// Threads for every benchmark: SPATTN_BENCH_THREADS, default 2 (this machine's cores).
inline int threads() {
  const char* e = std::getenv("SPATTN_BENCH_THREADS");
  return e ? std::max(1, std::atoi(e)) : 2;
}

// Ceilings measured by the roofline benchmarks of this run (0 until measured).
inline double& fma_peak() {
  static double v = 0;
  return v;
}
inline double& read_peak() {
  static double v = 0;
  return v;
}

// n normal values (fixed seed) in a std::vector, or, for K/V that decode streams, in a
// huge_page_array (2 MiB pages where Linux grants them, as kv_cache uses and as an engine would
// allocate its cache: on 4 KiB pages TLB misses cost a decode step about a tenth).
template <class T, class Array = std::vector<T>>
Array random_values(std::size_t n, std::uint64_t seed, float sigma = 1.0f) {
  Array x(n);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, sigma);
  for (auto& v : x) v = from_float<T>(nd(rng));
  return x;
}
template <class T>
huge_page_array<T> random_cache_values(std::size_t n, std::uint64_t seed) {
  return random_values<T, huge_page_array<T>>(n, seed);
}

inline void report_flops(benchmark::State& st, double flops_per_iter) {
  st.counters["flop_per_s"] =
      benchmark::Counter(flops_per_iter, benchmark::Counter::kIsIterationInvariantRate);
  st.SetLabel(fma_peak() > 0 ? "read flop_per_s against roofline_fma" : "");
}

inline void report_bytes(benchmark::State& st, double bytes_per_iter) {
  st.counters["byte_per_s"] =
      benchmark::Counter(bytes_per_iter, benchmark::Counter::kIsIterationInvariantRate);
}

// Fraction of a ceiling, from the measured time per iteration (call after the loop).
inline void report_fraction(benchmark::State& st, const char* name, double work_per_iter,
                            double seconds, double peak) {
  if (peak > 0 && seconds > 0) st.counters[name] = work_per_iter / seconds / peak;
}

}  // namespace spattn::bench
