// A user-defined sparse prefill policy: a plain struct with name() and select(). This one keeps,
// for every 64-query block, the first key block (attention sink), the two most recent key blocks
// and every `stride`-th block in between. The library's one sparse kernel runs it; no new kernel.
#include <cstdio>
#include <spattn/kernels/prefill.hpp>
#include <spattn/kernels/sparse_prefill.hpp>
#include <spattn/policies/prefill_policy.hpp>
#include <vector>

struct strided_policy {
  long stride = 8;

  std::string name() const { return "strided"; }

  spattn::prefill_selection select(const spattn::prefill_inputs& in,
                                   const spattn::budget& b) const {
    spattn::require(b.is_default(), "budget", "the policy default", b.describe());
    spattn::prefill_selection sel = in.empty_selection(64, 64);
    for (long h = 0; h < sel.heads; ++h) {
      for (long qb = 0; qb < sel.q_blocks(); ++qb) {
        const long diag = sel.last_position(qb) / 64;  // key block holding the last query
        for (long kb = 0; kb <= diag; ++kb) {
          if (kb == 0 || kb >= diag - 1 || kb % stride == 0)
            sel.at(h, qb).blocks.push_back(kb * 64);
        }
      }
    }
    return sel;
  }
};
static_assert(spattn::prefill_policy<strided_policy>);

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
