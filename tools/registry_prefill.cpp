// The dense reference method, and the built-in prefill methods of spattn-compare's registry
// (declared in compare_methods.hpp). Compiled once into spattn_compare_methods, which the tool and
// its tests link: these instantiate the prefill kernels for every storage dtype.
#include "compare_methods.hpp"

namespace spattn::compare {

method_run run_dense(const problem& p, const budget&) {
  method_run r;
  const index_t off = p.q_offset, H = p.heads(), D = p.head_dim();
  r.keys = [off](index_t, index_t t) {
    std::vector<index_t> ks(static_cast<std::size_t>(off + t + 1));
    for (index_t j = 0; j <= off + t; ++j) ks[static_cast<std::size_t>(j)] = j;
    return ks;
  };
  r.computed_pairs = static_cast<double>(H) * eval::causal_pairs(p.q_tokens, p.tokens(), off);
  with_storage_type(p.type(), [&](auto tag) {
    using T = decltype(tag);
    const auto q = p.q().as<T>(), k = p.k().as<T>(), v = p.v().as<T>();
    attention_options opt;
    opt.exec = p.exec;
    if (p.ph == phase::prefill) {
      r.out.assign(static_cast<std::size_t>(p.q_tokens * H * D), 0.0f);
      tensor_view<float> o(r.out.data(), p.q_tokens, H, D);
      r.seconds = time_best(p.reps, [&] { prefill(q, k, v, o, {}, opt); });
    } else {  // one decode step: the last query against the whole cache
      r.out.assign(static_cast<std::size_t>(H * D), 0.0f);
      r.out_first = p.q_tokens - 1;
      tensor_view<float> o(r.out.data(), 1, H, D);
      const auto q1 = q.slice_tokens(p.q_tokens - 1, 1);
      r.seconds = time_best(p.reps, [&] { decode(q1, k, v, o, {}, opt); });
    }
  });
  return r;
}

std::vector<method> builtin_prefill_methods() {
  std::vector<method> m;
  m.push_back({"dense", "dense causal attention (kernels/prefill.hpp, kernels/decode.hpp)", true,
               true, false, run_dense});
  m.push_back(prefill_method(policies::dense{}, "dense-policy",
                             "policies::dense through select() + sparse_prefill(): the sparse "
                             "path's cost at full density (policy default only)",
                             /*uses_budget=*/false));
  m.push_back(prefill_method(policies::a_shape{}, "a-shape",
                             "policies::a_shape: 4 sinks + local window per 64-query block"));
  m.push_back(prefill_method(policies::vertical_slash{}, "vertical-slash",
                             "policies::vertical_slash: top key columns + diagonals from the last "
                             "256 queries (MInference index conversion)"));
  m.push_back(prefill_method(policies::block_sparse{}, "block-sparse",
                             "policies::block_sparse: top 16-token chunks by mean-pooled Q.K"));
  m.push_back(prefill_method(policies::flexprefill{}, "flexprefill",
                             "policies::flexprefill: vertical-slash sized by attention-mass "
                             "coverage (alpha 0.65, min 512); coverage:F budgets set alpha"));
  m.push_back(prefill_method(strided_policy{}));  // a user's policy: examples/strided_policy.hpp
  return m;
}

}  // namespace spattn::compare
