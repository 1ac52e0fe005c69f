// Sparse decoding on a Llama-3-8B-like shape (32 query heads, 8 KV heads, head_dim 128, fp16 K/V,
// fp32 query), one decode step against 32768 and 131072 cached tokens, this machine's ceilings
// measured first in the same run:
//   dense:        spattn::decode over the whole cache (the baseline);
//   quest/B:      Quest at token budget B (page 16, pages shared per GQA group): page scoring over
//                 the summaries + sparse_decode over the chosen pages, both timed;
//   quest_select: the scoring + choice alone (budget 1024);
//   quest_decode: sparse_decode alone over a fixed Quest selection (budget 1024);
//   quest_paged:  Quest at 1024 on a paged cache (16-token pages);
//   evicted:      cache_decode on a cache compacted (StreamingLLM selection) to 1024 tokens/head.
// byte_per_s counts the bytes actually read: K and V rows read, plus for Quest the page summaries
// scored (min and max rows of every complete page). frac_read_bw is against roofline_read;
// speedup_vs_dense divides the dense time at the same length by this case's time. Every timed step
// starts with cold caches (flushed, untimed), so small working sets (1024 selected tokens, the
// summaries, the evicted cache) are read from memory as in a real multi-layer decode step.
#include <chrono>
#include <map>
#include <memory>
#include <string>

#include "common.hpp"
#include "roofline.hpp"
#include "spattn/cache/kv_cache.hpp"
#include "spattn/cache/paged_cache.hpp"
#include "spattn/kernels/sparse_decode.hpp"
#include "spattn/policies/quest.hpp"
#include "spattn/policies/streaming_llm.hpp"

namespace spattn::bench {
namespace {

using policies::quest;
using policies::streaming_llm;

constexpr index_t heads = 32, kv_heads = 8, head_dim = 128, page = 16;
using TKV = f16;

struct fixture {
  index_t n;
  huge_page_array<TKV> k, v;
  std::vector<float> q;
  std::unique_ptr<kv_cache<TKV>> cache, evicted;
  std::unique_ptr<paged_cache<TKV>> paged;
  index_t seq = 0;
  explicit fixture(index_t len) : n(len) {
    k = random_cache_values<TKV>(static_cast<std::size_t>(n * kv_heads * head_dim), 2);
    v = random_cache_values<TKV>(static_cast<std::size_t>(n * kv_heads * head_dim), 3);
    q = random_values<float>(static_cast<std::size_t>(heads * head_dim), 1);
  }
  tensor_view<const TKV> kview() const { return {k.data(), n, kv_heads, head_dim}; }
  tensor_view<const TKV> vview() const { return {v.data(), n, kv_heads, head_dim}; }
  tensor_view<const float> qview() const { return {q.data(), 1, heads, head_dim}; }
  const kv_cache<TKV>& contiguous() {
    if (!cache) {
      cache = std::make_unique<kv_cache<TKV>>(kv_heads, head_dim, n);
      cache->append(kview(), vview());
      cache->enable_summaries(page);
    }
    return *cache;
  }
  paged_sequence<TKV> paged_seq() {
    if (!paged) {
      paged = std::make_unique<paged_cache<TKV>>(kv_heads, head_dim, page);
      seq = paged->add_sequence();
      paged->append(seq, kview(), vview());
      paged->enable_summaries(seq, page);
    }
    return paged->sequence(seq);
  }
  const kv_cache<TKV>& evicted_cache() {
    if (!evicted) {
      evicted = std::make_unique<kv_cache<TKV>>(kv_heads, head_dim, n);
      evicted->append(kview(), vview());
      const auto sel =
          streaming_llm{4, 1020}.select(make_eviction_inputs(*evicted), budget::policy_default());
      evicted->compact(sel);  // 1024 tokens per head, memory released
    }
    return *evicted;
  }
};

// One fixture alive at a time (benchmarks run in registration order, grouped by length).
fixture& data(index_t n) {
  static std::unique_ptr<fixture> f;
  if (!f || f->n != n) {
    f.reset();
    f = std::make_unique<fixture>(n);
  }
  return *f;
}

std::map<index_t, double>& dense_seconds() {
  static std::map<index_t, double> m;
  return m;
}

attention_options options() {
  attention_options opt;
  opt.exec = executor::openmp(threads());
  return opt;
}

// Per-iteration times of the running benchmark; counters use their median, which a busy machine
// (threads descheduled for a time slice now and then) disturbs far less than the mean.
std::vector<double>& iteration_seconds() {
  static std::vector<double> v;
  return v;
}

double median_seconds() {
  auto v = iteration_seconds();
  if (v.empty()) return 0;
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(v.size() / 2), v.end());
  return v[v.size() / 2];
}

void finish(benchmark::State& st, index_t n, double bytes, double tokens) {
  const double med = median_seconds();
  if (med <= 0) return;
  st.counters["median_us"] = med * 1e6;
  st.counters["byte_per_s"] = bytes / med;
  if (read_peak() > 0) st.counters["frac_read_bw"] = bytes / med / read_peak();
  st.counters["tokens_read_per_head"] = tokens;
  const auto it = dense_seconds().find(n);
  if (it != dense_seconds().end()) st.counters["speedup_vs_dense"] = it->second / med;
}

// Evicts the caches (reads 96 MiB, 3x this machine's L3, on every benchmark thread) so that each
// timed step reads K, V and the summaries from memory, as a decode step does when all the other
// layers' caches pass through the caches in between. Not timed.
// SPATTN_BENCH_FLUSH_MB overrides the size (machines with a larger last-level cache).
void flush_caches() {
  static std::vector<float> junk([] {
    const char* e = std::getenv("SPATTN_BENCH_FLUSH_MB");
    const std::size_t mb = e ? static_cast<std::size_t>(std::max(1, std::atoi(e))) : 96;
    return std::vector<float>(mb << 18, 1.0f);
  }());
  float total = 0;
#pragma omp parallel for num_threads(threads()) reduction(+ : total) schedule(static)
  for (std::size_t i = 0; i < junk.size(); i += 16) total += junk[i];
  benchmark::DoNotOptimize(total);
}

// Times body() per iteration with the caches flushed before each (manual time).
template <class F>
void timed(benchmark::State& st, F&& body) {
  iteration_seconds().clear();
  for (auto _ : st) {
    flush_caches();
    const auto t0 = std::chrono::steady_clock::now();
    body();
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    st.SetIterationTime(dt);
    iteration_seconds().push_back(dt);
  }
}

void bench_dense(benchmark::State& st, index_t n) {
  auto& f = data(n);
  std::vector<float> out(static_cast<std::size_t>(heads * head_dim));
  const tensor_view<float> ov(out.data(), 1, heads, head_dim);
  const auto opt = options();
  timed(st, [&] {
    decode(f.qview(), f.kview(), f.vview(), ov, {}, opt);
    benchmark::DoNotOptimize(out.data());
  });
  dense_seconds()[n] = median_seconds();
  finish(st, n, 2.0 * static_cast<double>(n * kv_heads * head_dim) * sizeof(TKV),
         static_cast<double>(n));
}

double summary_bytes(const page_summaries<TKV>& s) {
  double b = 0;
  for (index_t h = 0; h < kv_heads; ++h) b += static_cast<double>(s.bytes_scored(h));
  return b;
}

template <class Cache>
void bench_quest_on(benchmark::State& st, index_t n, index_t budget_tokens, const Cache& cache) {
  auto& f = data(n);
  std::vector<float> out(static_cast<std::size_t>(heads * head_dim));
  const tensor_view<float> ov(out.data(), 1, heads, head_dim);
  const auto opt = options();
  const quest policy{budget_tokens, page, true};
  decode_selection sel;
  timed(st, [&] {
    sel = policy.select(make_decode_inputs(f.qview(), cache, opt.exec), budget::policy_default());
    sparse_decode(f.qview(), cache, sel, ov, {}, opt);
    benchmark::DoNotOptimize(out.data());
  });
  const double bytes = summary_bytes(*cache.summaries()) + sel.kv_bytes(head_dim, sizeof(TKV));
  finish(st, n, bytes, static_cast<double>(sel.tokens(0)));
}

void bench_quest(benchmark::State& st, index_t n, index_t budget_tokens) {
  bench_quest_on(st, n, budget_tokens, data(n).contiguous());
}

void bench_quest_paged(benchmark::State& st, index_t n) {
  bench_quest_on(st, n, 1024, data(n).paged_seq());
}

void bench_quest_select(benchmark::State& st, index_t n) {
  auto& f = data(n);
  const auto& cache = f.contiguous();
  const auto opt = options();
  const quest policy{1024, page, true};
  decode_selection sel;
  timed(st, [&] {
    sel = policy.select(make_decode_inputs(f.qview(), cache, opt.exec), budget::policy_default());
    benchmark::DoNotOptimize(sel.pages.data());
  });
  finish(st, n, summary_bytes(*cache.summaries()), 0.0);
}

void bench_quest_decode(benchmark::State& st, index_t n) {
  auto& f = data(n);
  const auto& cache = f.contiguous();
  std::vector<float> out(static_cast<std::size_t>(heads * head_dim));
  const tensor_view<float> ov(out.data(), 1, heads, head_dim);
  const auto opt = options();
  const auto sel = quest{1024, page, true}.select(make_decode_inputs(f.qview(), cache),
                                                  budget::policy_default());
  timed(st, [&] {
    sparse_decode(f.qview(), cache, sel, ov, {}, opt);
    benchmark::DoNotOptimize(out.data());
  });
  finish(st, n, sel.kv_bytes(head_dim, sizeof(TKV)), static_cast<double>(sel.tokens(0)));
}

void bench_evicted(benchmark::State& st, index_t n) {
  auto& f = data(n);
  const auto& cache = f.evicted_cache();
  std::vector<float> out(static_cast<std::size_t>(heads * head_dim));
  const tensor_view<float> ov(out.data(), 1, heads, head_dim);
  const auto opt = options();
  timed(st, [&] {
    cache_decode(f.qview(), cache, ov, {}, opt);
    benchmark::DoNotOptimize(out.data());
  });
  st.counters["cache_bytes"] = static_cast<double>(cache.bytes());
  finish(st, n, 2.0 * static_cast<double>(cache.length(0) * kv_heads * head_dim) * sizeof(TKV),
         static_cast<double>(cache.length(0)));
}

void register_all() {
  register_rooflines();
  for (const index_t n : {32768, 131072}) {
    const std::string sn = "/n=" + std::to_string(n);
    std::vector<benchmark::internal::Benchmark*> bs;
    bs.push_back(benchmark::RegisterBenchmark(("dense" + sn).c_str(),
                                              [n](benchmark::State& s) { bench_dense(s, n); }));
    for (const index_t b : {1024, 2048, 4096}) {
      bs.push_back(
          benchmark::RegisterBenchmark(("quest/budget=" + std::to_string(b) + sn).c_str(),
                                       [n, b](benchmark::State& s) { bench_quest(s, n, b); }));
    }
    bs.push_back(
        benchmark::RegisterBenchmark(("quest_select/budget=1024" + sn).c_str(),
                                     [n](benchmark::State& s) { bench_quest_select(s, n); }));
    bs.push_back(
        benchmark::RegisterBenchmark(("quest_decode/budget=1024" + sn).c_str(),
                                     [n](benchmark::State& s) { bench_quest_decode(s, n); }));
    bs.push_back(
        benchmark::RegisterBenchmark(("quest_paged/budget=1024" + sn).c_str(),
                                     [n](benchmark::State& s) { bench_quest_paged(s, n); }));
    bs.push_back(benchmark::RegisterBenchmark(("evicted/kept=1024" + sn).c_str(),
                                              [n](benchmark::State& s) { bench_evicted(s, n); }));
    for (auto* b : bs) b->Unit(benchmark::kMicrosecond)->UseManualTime()->MinTime(0.2);
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
