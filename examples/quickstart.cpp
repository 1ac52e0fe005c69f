// The README's usage example: causal prefill, then one decoding step, on a GQA layout.
#include <cstdio>
#include <spattn/spattn.hpp>
#include <vector>

int main() {
  const long n = 1000, heads = 32, kv_heads = 8, d = 128;  // Llama-3-8B-like heads
  std::vector<float> q(n * heads * d, 0.01f), out(q.size());
  std::vector<spattn::bf16> k(n * kv_heads * d, spattn::to_bf16(0.02f)), v(k);
  std::vector<float> lse(n * heads);

  // Views are [tokens, heads, head_dim]; K/V are read once per GQA group.
  spattn::tensor_view<const float> qv(q.data(), n, heads, d);
  spattn::tensor_view<const spattn::bf16> kv(k.data(), n, kv_heads, d),
      vv(v.data(), n, kv_heads, d);
  spattn::prefill(qv, kv, vv, spattn::tensor_view<float>(out.data(), n, heads, d),
                  spattn::lse_view(lse.data(), n, heads));

  // One new token against the whole cache, split along the keys over threads.
  std::vector<float> o1(heads * d);
  spattn::attention_options opt;
  opt.exec = spattn::executor::openmp(2);
  spattn::decode(qv.slice_tokens(n - 1, 1), kv, vv,
                 spattn::tensor_view<float>(o1.data(), 1, heads, d), {}, opt);
  std::printf("out[0] = %.4f, lse[0] = %.4f\n", out[0], lse[0]);
  const float diff = o1[0] - out[(n - 1) * heads * d];  // same row, two kernels
  return diff < 1e-5f && diff > -1e-5f ? 0 : 1;
}
