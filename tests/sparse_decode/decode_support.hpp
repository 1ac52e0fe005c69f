#pragma once
// Support for the sparse-decoding tests: building caches from tensors and comparing a decode step
// with the oracle over explicit key lists.
#include "spattn/cache/kv_cache.hpp"
#include "spattn/cache/paged_cache.hpp"
#include "spattn/kernels/sparse_decode.hpp"
#include "spattn/policies/ada_snapkv.hpp"
#include "spattn/policies/quest.hpp"
#include "spattn/policies/snapkv.hpp"
#include "spattn/policies/streaming_llm.hpp"
#include "support.hpp"

namespace spattn::test {

// Stored value of x as T, back in float (what a cache of T holds).
template <class T>
float stored(float x) {
  return to_float(from_float<T>(x));
}

// Runs one decode step (selection or all cached tokens) and returns out [1, heads, d] + lse.
template <class TO, class TQ, class Cache>
std::pair<tensor<TO>, std::vector<float>> run_decode(const tensor<TQ>& q, const Cache& cache,
                                                     const decode_selection* sel, int threads) {
  tensor<TO> out(1, q.heads, q.head_dim);
  std::vector<float> lse(static_cast<std::size_t>(q.heads));
  attention_options opt;
  opt.exec = threads == 1 ? executor::serial() : executor::openmp(threads);
  if (sel) {
    sparse_decode(q.cview(), cache, *sel, out.view(), lse_view(lse.data(), 1, q.heads), opt);
  } else {
    cache_decode(q.cview(), cache, out.view(), lse_view(lse.data(), 1, q.heads), opt);
  }
  return {std::move(out), std::move(lse)};
}

// Tokens a decode selection reads for query head h (cache positions).
inline std::vector<index_t> selected_tokens(const decode_selection& sel, index_t h) {
  const index_t s = sel.per_query_head ? h : h / sel.group;
  std::vector<index_t> t;
  for (const auto& r : sel.ranges(s))
    for (index_t x = r.first; x < r.second; ++x) t.push_back(x);
  return t;
}

// Compares a decode output with the oracle attending, for query head h, keys keys_of(h) of the
// [n, kv_heads, d] tensors k, v.
template <class TO, class TQ, class TKV>
void check_against_oracle(const tensor<TQ>& q, const tensor<TKV>& k, const tensor<TKV>& v,
                          const std::function<std::vector<index_t>(index_t)>& keys_of,
                          const tensor<TO>& out, const std::vector<float>& lse) {
  const auto ref = eval::reference_attention(q.cview(), k.cview(), v.cview(),
                                             [&](index_t h, index_t) { return keys_of(h); });
  const auto st = compare<TO>(ref, out.cview(), &lse);
  CHECK(st.all_finite);
  CHECK(st.max_out_err <= out_tolerance<TO>());
  CHECK(st.max_lse_err <= lse_tolerance);
}

template <class T>
bool bit_equal(const tensor<T>& a, const tensor<T>& b) {
  return std::memcmp(a.data.data(), b.data.data(), a.data.size() * sizeof(T)) == 0;
}

}  // namespace spattn::test
