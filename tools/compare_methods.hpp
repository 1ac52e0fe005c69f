#pragma once
// spattn-compare's method abstraction. A method is a name plus a function that, for one problem
// (an input and a phase) and one budget, returns what it computed as key sets, what that cost
// (measured time, estimation time and FLOPs) and, optionally, the output its kernel produced.
//
// Adding a prefill policy (any type satisfying spattn::prefill_policy, a user's plain struct
// included) is one line in builtin_methods():
//
//   m.push_back(prefill_method(policies::vertical_slash{}, "vertical-slash", "description"));
//   m.push_back(prefill_method(strided_policy{}));  // name from policy.name()
//
// prefill_method() wraps run_prefill_policy(), which times what a user pays: the policy's
// select() (its importance estimation, also timed on its own) followed by sparse_prefill() over
// that selection; reports density and FLOPs from the selection (estimation FLOPs from its
// estimation_flops), its key sets for the accuracy metrics, the kernel output (checked against
// those key sets) and the selection in its native .npy format for --save-selections. A budget the
// policy refuses (spattn::error from select(), e.g. below its forced parts or a coverage budget for
// a fixed pattern) becomes budget_not_met: reported in the results, not fatal.
//
// Other methods write a run function by hand (see run_dense). Decode methods fill r.keys for each
// of the phase's decode steps (keys_from_table) and time the last step; r.out then holds that
// step's output with r.out_first = p.q_tokens - 1. Everything else (density, FLOPs, accuracy
// against dense, needle recall, tables, CSV/JSON, selections as .npy) is done by the tool from
// those fields.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "../examples/strided_policy.hpp"  // a user-defined policy, shared with the example
#include "spattn/eval/metrics.hpp"
#include "spattn/eval/npy.hpp"
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
  key_set_fn keys;                 // required: (query head, q token of the phase) -> sorted keys
  double computed_pairs = -1;      // < 0: counted from `keys`
  double estimation_flops = 0;     // FLOPs spent estimating importance (selection), not attention
  double seconds = 0;              // measured (fastest call): selection + kernel, as a user pays
  double estimation_seconds = -1;  // of that, the selection alone (fastest call); < 0: none
  std::vector<float> out;   // optional kernel output, [q_tokens - out_first, heads, head_dim]
  index_t out_first = 0;    // first q token `out` covers
  std::string budget_note;  // e.g. the window chosen for a compression budget
  std::function<void(const std::filesystem::path&)> save_selection;  // optional native format
};

// Raised by a method for a budget it cannot meet or has no form for: the tool reports the run as
// "not met" (with this message) and goes on.
struct budget_not_met : std::runtime_error {
  using std::runtime_error::runtime_error;
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
// Prefill policies: one generic adapter for every type satisfying spattn::prefill_policy.

// The selection's native format, written by --save-selections next to the key sets (documented
// in spattn-compare --help and the README). Entry e = h * q_blocks + b is query head h, query
// block b (query tokens [b * block_q, (b + 1) * block_q), positions from q_offset):
//   layout.npy         int64 [7]  heads, q_tokens, k_tokens, q_offset, q_blocks, block_q, block_k
//   block_offsets.npy  int64 [heads * q_blocks + 1]  CSR offsets into block_starts
//   block_starts.npy   int64 [nb]  key-block start columns of entry e:
//                      block_starts[block_offsets[e] : block_offsets[e + 1]], each block covering
//                      keys [start, start + block_k)
//   column_offsets.npy int64 [heads * q_blocks + 1]  CSR offsets into columns
//   columns.npy        int64 [nc]  extra key columns of entry e, outside its blocks
// Keys past a query's own position are masked (causal), as the kernel does.
inline void save_prefill_selection(const std::filesystem::path& dir, const prefill_selection& s) {
  std::filesystem::create_directories(dir);
  std::vector<std::int64_t> boff{0}, starts, coff{0}, cols;
  for (const auto& e : s.entries) {  // head-major: e = h * q_blocks + b
    starts.insert(starts.end(), e.blocks.begin(), e.blocks.end());
    cols.insert(cols.end(), e.columns.begin(), e.columns.end());
    boff.push_back(static_cast<std::int64_t>(starts.size()));
    coff.push_back(static_cast<std::int64_t>(cols.size()));
  }
  const std::vector<std::int64_t> layout{s.heads,      s.q_tokens, s.k_tokens, s.q_offset,
                                         s.q_blocks(), s.block_q,  s.block_k};
  auto write = [&](const char* file, const std::vector<std::int64_t>& x) {
    eval::write_npy<std::int64_t>(dir / file, std::vector<index_t>{static_cast<index_t>(x.size())},
                                  x);
  };
  write("layout.npy", layout);
  write("block_offsets.npy", boff);
  write("block_starts.npy", starts);
  write("column_offsets.npy", coff);
  write("columns.npy", cols);
}

// Runs `policy` on a prefill problem: select() then sparse_prefill(), timed together (and select()
// alone) as a user pays them. A budget the policy refuses raises budget_not_met.
template <prefill_policy P>
method_run run_prefill_policy(const P& policy, const problem& p, const budget& b) {
  require(p.ph == phase::prefill, "phase", "prefill (a prefill policy)", phase_name(p.ph));
  using clock = std::chrono::steady_clock;
  method_run r;
  const index_t H = p.heads(), D = p.head_dim();
  prefill_inputs in{p.q(), p.k(), p.q_offset, 0.0f, p.exec};
  std::shared_ptr<const prefill_selection> sel;
  double select_best = 1e300;
  r.out.assign(static_cast<std::size_t>(p.q_tokens * H * D), 0.0f);
  with_storage_type(p.type(), [&](auto tag) {
    using T = decltype(tag);
    const auto q = p.q().as<T>(), k = p.k().as<T>(), v = p.v().as<T>();
    tensor_view<float> o(r.out.data(), p.q_tokens, H, D);
    attention_options opt;
    opt.exec = p.exec;
    r.seconds = time_best(p.reps, [&] {
      const auto t0 = clock::now();
      std::shared_ptr<const prefill_selection> s;
      // select() raises for a budget it cannot meet; it is deterministic, so that happens on the
      // first (warm-up) call, before anything is timed.
      try {
        s = std::make_shared<const prefill_selection>(policy.select(in, b));
      } catch (const error& e) {
        throw budget_not_met(e.what());
      }
      select_best = std::min(select_best, std::chrono::duration<double>(clock::now() - t0).count());
      sparse_prefill(q, k, v, o, *s, {}, opt);
      sel = std::move(s);
    });
  });
  r.estimation_seconds = select_best;
  r.keys = keys_from_prefill_selection(sel);
  r.computed_pairs = static_cast<double>(sel->pairs());
  r.estimation_flops = sel->estimation_flops;
  r.budget_note = spattn::detail::concat(sel->block_q, "x", sel->block_k, " blocks: block density ",
                                         sel->block_density());
  r.save_selection = [sel](const std::filesystem::path& dir) { save_prefill_selection(dir, *sel); };
  return r;
}

// A prefill method from any policy: one line in builtin_methods(). The name defaults to
// policy.name(); uses_budget = false runs it once per input with the policy default.
template <prefill_policy P>
method prefill_method(P policy, std::string name = {}, std::string description = {},
                      bool uses_budget = true) {
  if (name.empty()) name = policy.name();
  if (description.empty()) description = "prefill policy '" + policy.name() + "' (user-defined)";
  return {std::move(name),
          std::move(description),
          /*prefill=*/true,
          /*decode=*/false,
          uses_budget,
          [policy](const problem& p, const budget& b) { return run_prefill_policy(policy, p, b); }};
}

// The registry. Decode policies (issue 5) are added here as they land.
inline std::vector<method> builtin_methods() {
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
