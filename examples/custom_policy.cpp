// A user-defined sparse prefill policy (examples/strided_policy.hpp: a plain struct with name() and
// select()) run through the library's one sparse kernel: no new kernel. spattn-compare lists it
// as `strided` (tools/compare_methods.hpp).
#include <cstdio>
#include <spattn/kernels/prefill.hpp>
#include <spattn/kernels/sparse_prefill.hpp>
#include <vector>

#include "strided_policy.hpp"

#ifndef SPATTN_EXAMPLE_NO_MAIN
int main() {
  const long n = 2048, heads = 8, kv_heads = 2, d = 64;
  std::vector<float> q(n * heads * d), k(n * kv_heads * d), v(k.size()), out(q.size());
  for (std::size_t i = 0; i < q.size(); ++i) q[i] = static_cast<float>((i * 7919) % 13) / 13.0f;
  for (std::size_t i = 0; i < k.size(); ++i)
    k[i] = v[i] = static_cast<float>((i * 104729) % 17) / 17.0f;
  spattn::tensor_view<const float> qv(q.data(), n, heads, d), kv(k.data(), n, kv_heads, d),
      vv(v.data(), n, kv_heads, d);

  const strided_policy policy;
  const spattn::prefill_selection sel = policy.select({qv, kv}, spattn::budget::policy_default());
  sel.validate();  // sorted, unique, in range, causal
  spattn::sparse_prefill(qv, kv, vv, spattn::tensor_view<float>(out.data(), n, heads, d), sel);

  std::printf("%s: density %.3f, %.2f GFLOP instead of %.2f\n", policy.name().c_str(),
              sel.density(), sel.attention_flops() * 1e-9, sel.dense_flops() * 1e-9);
  // The first query block is dense, so its rows must match the dense kernel.
  std::vector<float> dense(q.size());
  spattn::prefill(qv, kv, vv, spattn::tensor_view<float>(dense.data(), n, heads, d));
  for (long i = 0; i < 64 * heads * d; ++i) {
    if (out[i] != dense[i]) return 1;
  }
  return sel.density() > 0.05 && sel.density() < 0.5 ? 0 : 1;
}
#endif
