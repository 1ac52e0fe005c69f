#pragma once
// spattn-compare's method abstraction. A method is a name plus a function that, for one problem
// (an input and a phase) and one budget, returns what it computed as key sets, what that cost
// (measured time, estimation FLOPs) and, optionally, the output its kernel produced.
//
// Adding a policy (issues 4 and 5) is a run function plus one entry in builtin_methods(), e.g.
// (checked against the draft vertical_slash policy and sparse_prefill kernel):
//
//   inline method_run run_vertical_slash(const problem& p, const budget& b) {
//     method_run r;
//     std::shared_ptr<const prefill_selection> sel;
//     r.out.assign(static_cast<std::size_t>(p.q_tokens * p.heads() * p.head_dim()), 0.0f);
//     with_storage_type(p.type(), [&](auto tag) {
//       using T = decltype(tag);
//       const auto q = p.q().as<T>(), k = p.k().as<T>(), v = p.v().as<T>();
//       tensor_view<float> o(r.out.data(), p.q_tokens, p.heads(), p.head_dim());
//       attention_options opt;
//       opt.exec = p.exec;
//       r.seconds = time_best(p.reps, [&] {  // selection (estimation) + kernel, as a user pays
//         prefill_inputs in{p.q(), p.k(), p.q_offset, 0.0f, p.exec};
//         sel = std::make_shared<const prefill_selection>(policies::vertical_slash{}.select(in,
//         b)); sparse_prefill(q, k, v, o, *sel, {}, opt);
//       });
//     });
//     r.keys = keys_from_prefill_selection(sel);
//     r.computed_pairs = static_cast<double>(sel->pairs());
//     r.estimation_flops = sel->estimation_flops;
//     return r;  // optionally r.save_selection = [sel](const path& dir) { native .npy format }
//   }
//   m.push_back({"vertical-slash", "...", /*prefill=*/true, /*decode=*/false,
//                /*uses_budget=*/true, run_vertical_slash});
//
// Decode methods fill r.keys for each of the phase's decode steps (keys_from_table) and time the
// last step; r.out then holds that step's output with r.out_first = p.q_tokens - 1.
// Everything else (density, FLOPs, accuracy against dense, needle recall, tables, CSV/JSON,
// selections as .npy) is done by the tool from those fields.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "spattn/eval/metrics.hpp"
#include "spattn/eval/synthetic.hpp"
#include "spattn/spattn.hpp"

namespace spattn::compare {

using eval::key_set_fn;

enum class phase { prefill, decode };
inline const char* phase_name(phase p) {
  return p == phase::prefill ? "prefill" : "decode";
}

// Q, K or V in the storage dtype chosen with --dtype (converted once from fp32).
struct stored_tensor {
  dtype type = dtype::f32;
  index_t tokens = 0, heads = 0, head_dim = 0;
  std::vector<float> f32;
  std::vector<f16> h16;
  std::vector<bf16> b16;

  stored_tensor() = default;
  stored_tensor(const std::vector<float>& x, index_t t, index_t h, index_t d, dtype ty)
      : type(ty), tokens(t), heads(h), head_dim(d) {
    if (ty == dtype::f32) f32 = x;
    if (ty == dtype::f16)
      for (float e : x) h16.push_back(to_f16(e));
    if (ty == dtype::bf16)
      for (float e : x) b16.push_back(to_bf16(e));
  }
  any_view view() const {
    switch (type) {
      case dtype::f16:
        return tensor_view<const f16>(h16.data(), tokens, heads, head_dim);
      case dtype::bf16:
        return tensor_view<const bf16>(b16.data(), tokens, heads, head_dim);
      default:
        return tensor_view<const float>(f32.data(), tokens, heads, head_dim);
    }
  }
};

// Calls f(T{}) with T the storage type of `t`.
template <class F>
decltype(auto) with_storage_type(dtype t, F&& f) {
  switch (t) {
    case dtype::f16:
      return f(f16{});
    case dtype::bf16:
      return f(bf16{});
    default:
      return f(float{});
  }
}

// One input sequence (synthetic, or one layer of the user's Q/K/V).
struct input {
  std::string name;
  index_t tokens = 0, heads = 0, kv_heads = 0, head_dim = 0;
  stored_tensor q, k, v;
  std::vector<eval::needle> needles;  // synthetic inputs only
};

// What a method is asked to compute: the queries of one phase of one input.
//  prefill: every token is a query (q_offset 0, q_tokens = tokens), causal.
//  decode:  the last `q_tokens` tokens are decode steps against the cache of everything before
//           them (q_offset = tokens - q_tokens); a method's time is that of the last step.
struct problem {
  const input* in = nullptr;
  phase ph = phase::prefill;
  index_t q_offset = 0, q_tokens = 0;
  executor exec = executor::openmp();
  int reps = 3;

  index_t heads() const { return in->heads; }
  index_t kv_heads() const { return in->kv_heads; }
  index_t head_dim() const { return in->head_dim; }
  index_t tokens() const { return in->tokens; }
  dtype type() const { return in->q.type; }
  // The phase's queries ([q_tokens, heads, head_dim]) and the full K, V.
  any_view q() const {
    return in->q.view().visit(
        [&](auto v) -> any_view { return v.slice_tokens(q_offset, q_tokens); });
  }
  any_view k() const { return in->k.view(); }
  any_view v() const { return in->v.view(); }
};

// What a method returns for one problem and budget.
struct method_run {
  key_set_fn keys;              // required: (query head, q token of the phase) -> sorted keys
  double computed_pairs = -1;   // < 0: counted from `keys`
  double estimation_flops = 0;  // FLOPs spent estimating importance (selection), not attention
  double seconds = 0;           // measured (median): selection + kernel, as a user would pay
  std::vector<float> out;       // optional kernel output, [q_tokens - out_first, heads, head_dim]
  index_t out_first = 0;        // first q token `out` covers
  std::string budget_note;      // e.g. the window chosen for a compression budget
  std::function<void(const std::filesystem::path&)> save_selection;  // optional native format
};

struct method {
  std::string name;
  std::string description;
  bool prefill = true, decode = false;
  bool uses_budget = true;  // false: run once per phase (dense)
  std::function<method_run(const problem&, const budget&)> run;
};

// Wall time of one call of f: the fastest of at least `reps` timed calls (the first call warms
// caches and is not counted unless it took over a second: then it counts, and at most 2 calls are
// made, so long inputs stay affordable). Short calls (decode steps) are repeated until 50 ms have
// been timed, up to 1000 calls. The fastest call is the least disturbed by other work.
template <class F>
double time_best(int reps, F&& f) {
  using clock = std::chrono::steady_clock;
  auto a = clock::now();
  f();
  const double first = std::chrono::duration<double>(clock::now() - a).count();
  if (first > 1.0) reps = std::min(reps, 1);
  double best = first > 1.0 ? first : 1e300, total = 0;
  for (int i = 0; i < 1000 && (i < std::max(first > 1.0 ? 0 : 1, reps) || total < 0.05); ++i) {
    a = clock::now();
    f();
    const double t = std::chrono::duration<double>(clock::now() - a).count();
    best = std::min(best, t);
    total += t;
  }
  return best;
}

// ---------------------------------------------------------------------------------------------
// Adapters from policy selections to key sets (duck-typed, so they do not depend on the selection
// headers while those are in flux).

// A prefill selection: anything with block_q, q_offset and key_intervals(h, b, out) (sorted
// disjoint half-open key ranges of query block b, clipped to its last query), as
// spattn::prefill_selection has. Each query sees its block's ranges clipped to its own position.
template <class Selection>
key_set_fn keys_from_prefill_selection(std::shared_ptr<const Selection> sel) {
  return [sel](index_t h, index_t t) {
    std::vector<std::pair<index_t, index_t>> iv;
    sel->key_intervals(h, t / sel->block_q, iv);
    const index_t pos = sel->q_offset + t;
    std::vector<index_t> ks;
    for (const auto& [a, z] : iv)
      for (index_t j = a; j < std::min(z, pos + 1); ++j) ks.push_back(j);
    return ks;
  };
}

// A table of key lists [q token][query head] (e.g. one decode or eviction selection per decode
// step, a KV head's list repeated for the heads of its group).
inline key_set_fn keys_from_table(
    std::shared_ptr<const std::vector<std::vector<std::vector<index_t>>>> table) {
  return [table](index_t h, index_t t) {
    return (*table)[static_cast<std::size_t>(t)][static_cast<std::size_t>(h)];
  };
}

// ---------------------------------------------------------------------------------------------
// dense: the reference every other method is measured against.

inline method_run run_dense(const problem& p, const budget&) {
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

// ---------------------------------------------------------------------------------------------
// a-shape-builtin: a BUILT-IN BASELINE, not the library's A-shape / StreamingLLM policy (issue 4/5
// replace it with policies/a_shape.hpp and policies/streaming_llm.hpp). It is expressed with the
// dense kernels only:
//  prefill: queries in chunk [c0, c0 + C) (C = max(64, W)) see keys [max(0, c0 - W), t] plus the
//           first 4 sink tokens: one causal prefill() per chunk on the key slice, one non-causal
//           prefill() on the sinks, merged with merge_states(). So a query sees between W and
//           W + C recent keys: the key set reported is exactly what the kernels computed.
//  decode:  a StreamingLLM-like cache: 4 sinks + the last W tokens (contiguous copy, made
//           outside the timing, as an eviction cache would hold it); one decode() step.
// The window W (a multiple of 64 in prefill) is the largest that fits the budget's pairs.

inline constexpr index_t baseline_sinks = 4;

// Key set of the prefill baseline for query position `pos`.
inline std::vector<index_t> a_shape_prefill_keys(index_t pos, index_t window, index_t chunk) {
  const index_t c0 = pos / chunk * chunk, s = std::max<index_t>(0, c0 - window);
  std::vector<index_t> ks;
  for (index_t j = 0; j < std::min(baseline_sinks, s); ++j) ks.push_back(j);
  for (index_t j = s; j <= pos; ++j) ks.push_back(j);
  return ks;
}

inline double a_shape_prefill_pairs(index_t tokens, index_t window, index_t chunk) {
  double n = 0;
  for (index_t c0 = 0; c0 < tokens; c0 += chunk) {
    const index_t s = std::max<index_t>(0, c0 - window), c1 = std::min(tokens, c0 + chunk);
    const double sinks = static_cast<double>(std::min(baseline_sinks, s));
    for (index_t t = c0; t < c1; ++t) n += sinks + static_cast<double>(t - s + 1);
  }
  return n;
}

// Keys a budget allows per head for `q_tokens` queries: its pair count.
inline double budget_pairs(const budget& b, index_t q_tokens, index_t k_tokens, index_t q_offset) {
  const double causal = eval::causal_pairs(q_tokens, k_tokens, q_offset);
  if (b.kind() == budget_kind::ratio) return b.value() * causal;
  if (b.kind() == budget_kind::tokens) return b.value() * static_cast<double>(q_tokens);
  throw error(spattn::detail::concat(
      "argument 'budget': expected a compression, kept fraction or token budget for "
      "a-shape-builtin, got ",
      b.describe()));
}

inline method_run run_a_shape_builtin(const problem& p, const budget& b) {
  method_run r;
  const index_t T = p.tokens(), H = p.heads(), D = p.head_dim();
  const double target = budget_pairs(b, p.q_tokens, T, p.q_offset);
  attention_options opt;
  opt.exec = p.exec;
  if (p.ph == phase::prefill) {
    index_t window = 64;
    auto chunk_of = [](index_t w) { return std::max<index_t>(64, w); };
    while (window + 64 < T &&
           a_shape_prefill_pairs(T, window + 64, chunk_of(window + 64)) <= target)
      window += 64;
    const index_t chunk = chunk_of(window);
    const bool reachable = a_shape_prefill_pairs(T, window, chunk) <= target;
    r.budget_note =
        spattn::detail::concat("window ", window, " chunk ", chunk, " sinks ", baseline_sinks,
                               reachable ? "" : " (budget below the smallest window: not met)");
    r.keys = [window, chunk](index_t, index_t t) { return a_shape_prefill_keys(t, window, chunk); };
    r.computed_pairs = static_cast<double>(H) * a_shape_prefill_pairs(T, window, chunk);
    r.out.assign(static_cast<std::size_t>(T * H * D), 0.0f);
    std::vector<float> o_sink(static_cast<std::size_t>(chunk * H * D)),
        l_sink(static_cast<std::size_t>(chunk * H)), l_win(static_cast<std::size_t>(chunk * H));
    std::vector<float> o_win(static_cast<std::size_t>(chunk * H * D));
    with_storage_type(p.type(), [&](auto tag) {
      using X = decltype(tag);
      const auto q = p.q().as<X>(), k = p.k().as<X>(), v = p.v().as<X>();
      r.seconds = time_best(p.reps, [&] {
        for (index_t c0 = 0; c0 < T; c0 += chunk) {
          const index_t n = std::min(chunk, T - c0), s = std::max<index_t>(0, c0 - window);
          const auto qc = q.slice_tokens(c0, n);
          tensor_view<float> out(r.out.data() + c0 * H * D, n, H, D);
          attention_options o = opt;
          o.q_offset = c0 - s;
          const index_t sinks = std::min(baseline_sinks, s);
          if (sinks == 0) {
            prefill(qc, k.slice_tokens(s, c0 + n - s), v.slice_tokens(s, c0 + n - s), out, {}, o);
            continue;
          }
          tensor_view<float> ow(o_win.data(), n, H, D), os(o_sink.data(), n, H, D);
          lse_view lw(l_win.data(), n, H), ls(l_sink.data(), n, H);
          prefill(qc, k.slice_tokens(s, c0 + n - s), v.slice_tokens(s, c0 + n - s), ow, lw, o);
          attention_options full = opt;
          full.causal = false;
          full.q_offset = -1;
          prefill(qc, k.slice_tokens(0, sinks), v.slice_tokens(0, sinks), os, ls, full);
          merge_states(as_const(ow), lw, as_const(os), ls, out, lse_view{});
        }
      });
    });
    return r;
  }
  // decode: sinks + the last W keys of the final step; W from the budget's pairs per step.
  const index_t window = std::clamp<index_t>(
      static_cast<index_t>(target / static_cast<double>(p.q_tokens)) - baseline_sinks, 1,
      T - baseline_sinks);
  const index_t off = p.q_offset;
  r.budget_note = spattn::detail::concat("window ", window, " sinks ", baseline_sinks);
  r.keys = [window, off](index_t, index_t t) {
    const index_t pos = off + t;
    std::vector<index_t> ks;
    for (index_t j = 0; j < std::min(baseline_sinks, pos + 1); ++j) ks.push_back(j);
    for (index_t j = std::max(baseline_sinks, pos - window + 1); j <= pos; ++j) ks.push_back(j);
    return ks;
  };
  r.out.assign(static_cast<std::size_t>(H * D), 0.0f);
  r.out_first = p.q_tokens - 1;
  with_storage_type(p.type(), [&](auto tag) {
    using X = decltype(tag);
    const auto q = p.q().as<X>(), k = p.k().as<X>(), v = p.v().as<X>();
    // The compact cache of the last step: sinks then positions [T - window, T).
    const index_t kept = baseline_sinks + window, HK = p.kv_heads();
    std::vector<X> kc(static_cast<std::size_t>(kept * HK * D)), vc(kc.size());
    for (index_t i = 0; i < kept; ++i) {
      const index_t j = i < baseline_sinks ? i : T - window + (i - baseline_sinks);
      for (index_t h = 0; h < HK; ++h) {
        std::copy_n(k.row(j, h), D, kc.data() + (i * HK + h) * D);
        std::copy_n(v.row(j, h), D, vc.data() + (i * HK + h) * D);
      }
    }
    tensor_view<const X> kcv(kc.data(), kept, HK, D), vcv(vc.data(), kept, HK, D);
    tensor_view<float> o(r.out.data(), 1, H, D);
    const auto q1 = q.slice_tokens(p.q_tokens - 1, 1);
    r.seconds = time_best(p.reps, [&] { decode(q1, kcv, vcv, o, {}, opt); });
  });
  return r;
}

// The registry. Policies from issues 4 and 5 are added here as they land.
inline std::vector<method> builtin_methods() {
  std::vector<method> m;
  m.push_back({"dense", "dense causal attention (kernels/prefill.hpp, kernels/decode.hpp)", true,
               true, false, run_dense});
  m.push_back({"a-shape-builtin",
               "BUILT-IN BASELINE: 4 sinks + local window on the dense kernels (to be replaced by "
               "the A-shape / StreamingLLM policies)",
               true, true, true, run_a_shape_builtin});
  return m;
}

}  // namespace spattn::compare
