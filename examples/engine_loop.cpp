// How an inference engine drives spattn for one sequence and one layer: chunked sparse prefill
// (vertical-slash), the prompt's K/V into a paged fp16 cache with Quest summaries, then decoding
// steps that let Quest pick pages and read only those, in place.
#include <cmath>
#include <cstdio>
#include <random>
#include <spattn/spattn.hpp>
#include <vector>

using namespace spattn;

int main() {
  const index_t prompt = 2048, chunk = 1024, steps = 8, heads = 8, kv_heads = 2, d = 64;
  std::mt19937 rng(7);
  std::normal_distribution<float> nd;
  auto randn = [&](std::size_t n) {
    std::vector<float> x(n);
    for (auto& e : x) e = nd(rng);
    return x;
  };
  // Stand-ins for the layer's projections of the prompt.
  const auto q = randn(prompt * heads * d), k = randn(prompt * kv_heads * d), v = randn(k.size());
  std::vector<float> out(q.size());
  tensor_view<const float> qv(q.data(), prompt, heads, d), kv(k.data(), prompt, kv_heads, d),
      vv(v.data(), prompt, kv_heads, d);

  // 1. Chunked sparse prefill: chunk c holds queries [p, p + chunk) and sees keys [0, p + chunk).
  const policies::vertical_slash prefill_policy;  // reference parameters, sized to the budget
  for (index_t p = 0; p < prompt; p += chunk) {
    auto qc = qv.slice_tokens(p, chunk);
    auto kc = kv.slice_tokens(0, p + chunk), vc = vv.slice_tokens(0, p + chunk);
    const prefill_selection sel =
        prefill_policy.select(prefill_inputs{qc, kc, p}, budget::compression(4));
    sparse_prefill(qc, kc, vc, tensor_view<float>(out.data() + p * heads * d, chunk, heads, d),
                   sel);
    std::printf("prefill chunk at %4ld: density %.3f\n", static_cast<long>(p), sel.density());
  }

  // 2. The prompt's K/V go into a paged fp16 cache that keeps Quest's page summaries.
  paged_cache<f16> cache(kv_heads, d, 16);
  const index_t seq = cache.add_sequence();
  cache.enable_summaries(seq, 16);
  cache.append(seq, kv, vv);

  // 3. Decoding: append the new token's K/V, let Quest choose pages, attend to those only.
  const policies::quest decode_policy;  // pages of 16, shared across the GQA group
  std::vector<float> o(heads * d);
  bool finite = true;
  for (index_t step = 0; step < steps; ++step) {
    const auto qn = randn(heads * d), kn = randn(kv_heads * d), vn = randn(kv_heads * d);
    tensor_view<const float> q1(qn.data(), 1, heads, d);
    cache.append(seq, tensor_view<const float>(kn.data(), 1, kv_heads, d),
                 tensor_view<const float>(vn.data(), 1, kv_heads, d));
    const auto view = cache.sequence(seq);
    const decode_selection sel =
        decode_policy.select(make_decode_inputs(q1, view), budget::tokens(512));
    sparse_decode(q1, view, sel, tensor_view<float>(o.data(), 1, heads, d));
    for (float x : o) finite = finite && std::isfinite(x);
  }
  std::printf("decoded %ld tokens; cache holds %zu bytes\n", static_cast<long>(steps),
              cache.bytes());
  return finite ? 0 : 1;
}
