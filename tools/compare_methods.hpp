#pragma once
// spattn-compare's method abstraction. A method is a name plus a function that, for one problem
// (an input and a phase) and one budget, returns what it computed as key sets, what that cost
// (measured time, estimation time and FLOPs) and, optionally, the output its kernel produced.
//
// Adding a prefill policy (any type satisfying spattn::prefill_policy, a user's plain struct
// included) is one line in builtin_prefill_methods() (tools/registry_prefill.cpp):
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
// Decode policies and eviction policies have their generic adapters too, one line each:
//
//   m.push_back(decode_method(policies::quest{}, "quest", "description"));      // decode_policy
//   m.push_back(eviction_method(policies::snapkv{}, "snapkv", "description"));  // eviction_policy
//
// decode_method() keeps the full cache and, per decode step, times select() (the estimation,
// also timed on its own) + sparse_decode(); eviction_method() evicts the prompt's cache once with
// select() (the estimation: paid once per sequence, timed apart) and times one cache_decode()
// step on the compacted cache. Both fill r.keys for every decode step, r.out with every step's
// output (out_first 0) and the selection's native .npy form (pages per step, or kept tokens per
// KV head); see "Decode policies" below.
//
// Other methods write a run function by hand (see run_dense). Decode methods fill r.keys for each
// of the phase's decode steps (keys_from_table or similar) and time the last step; r.out holds
// the output of steps out_first .. q_tokens - 1 (run_dense: the last step only). Everything else
// (density, FLOPs, accuracy against dense, needle recall, tables, CSV/JSON, selections as .npy)
// is done by the tool from those fields.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <limits>
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
                                   // per call (eviction: one decode step, the eviction apart)
  double estimation_seconds = -1;  // of that, the selection alone (fastest call); < 0: none;
                                   // eviction: the one eviction per sequence, not in `seconds`
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

// Defined in tools/registry_prefill.cpp (compiled once, linked into the tool and its tests).
method_run run_dense(const problem& p, const budget&);

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

// A prefill method from any policy: one line in builtin_prefill_methods(). The name defaults to
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

// ---------------------------------------------------------------------------------------------
// Decode policies (spattn::decode_policy, e.g. Quest) and eviction policies
// (spattn::eviction_policy: SnapKV, Ada-SnapKV, StreamingLLM): one generic adapter each.
//
// A decode problem has a prompt of L = q_offset tokens and q_tokens decode steps; step i is the
// token at position L + i, whose key is in the cache when it decodes (the cache holds [0, L + i]).
//
//  decode_method(policy):   the full cache is kept (kv_cache<T>, with Quest page summaries of the
//      policy's `page_size` when it has one). Every step: append the token, select() on the
//      cache, sparse_decode() over the selection. Time: the last step's select() +
//      sparse_decode(), as a user pays them per generated token; estimation: select() alone.
//  eviction_method(policy): select() once on the prompt (its last queries and keys: what SnapKV
//      reads right after prefill), compact the prompt's cache to the kept tokens, then every
//      step appends its token (decode tokens are never evicted: one eviction per sequence, as in
//      the reference) and runs cache_decode() over what the cache holds. Time: the last step's
//      cache_decode(); estimation: the eviction select(), paid once per sequence (amortised over
//      the generated tokens), not included in the step time.
// Both record every step's output (out_first = 0), so the tool checks every step's kernel output
// against the oracle over the key sets it reports, and both raise budget_not_met for a budget
// select() refuses (spattn::error, e.g. below SnapKV's forced prefix + window, or a coverage
// budget).

// FLOPs a policy's select() spends estimating importance. The library's policies are known here;
// another policy reports 0 unless an overload policy_estimation_flops(policy, inputs, selection)
// is visible (declared before this header's adapters, or in the policy's namespace).
//  quest: per selection head, every complete page scored against the page's min and max keys,
//         sum_d q+_d max_d + q-_d min_d: 4 * head_dim FLOPs (a shared GQA group is scored once
//         with the group's summed q+ and q-, as policies::quest computes it).
inline double policy_estimation_flops(const policies::quest& policy, const decode_inputs& in,
                                      const decode_selection& sel) {
  const index_t kvh = in.kv_heads(), group = kvh > 0 ? in.q.heads() / kvh : 1;
  double pages = 0;
  for (const index_t n : in.lengths)
    pages += static_cast<double>(n > 0 ? (n - 1) / policy.page_size : 0);
  return 4.0 * static_cast<double>(in.q.head_dim()) * pages *
         (sel.per_query_head ? static_cast<double>(group) : 1.0);
}

namespace impl {
// SnapKV-family scoring: every query head's last `window` prompt queries against the keys they see
// (row i of the window sees L - window + i + 1 keys), 2 * head_dim FLOPs per score (softmax,
// pooling and top-k are O(L) per head and left out). An identity selection (capacity >= L) looks
// at no query: 0.
inline double snap_estimation_flops(index_t window, const eviction_inputs& in,
                                    const eviction_selection& sel) {
  if (sel.is_identity() || in.keys.empty() || in.queries.empty()) return 0.0;
  const double L = static_cast<double>(in.keys.tokens()), W = static_cast<double>(window);
  const double scores = W * (L - W + 1.0) + W * (W - 1.0) / 2.0;
  return 2.0 * static_cast<double>(in.keys.head_dim()) * static_cast<double>(in.queries.heads()) *
         scores;
}
}  // namespace impl

inline double policy_estimation_flops(const policies::snapkv& policy, const eviction_inputs& in,
                                      const eviction_selection& sel) {
  return impl::snap_estimation_flops(policy.approximation_window, in, sel);
}
inline double policy_estimation_flops(const policies::ada_snapkv& policy, const eviction_inputs& in,
                                      const eviction_selection& sel) {
  return impl::snap_estimation_flops(policy.approximation_window, in, sel);
}

template <class P, class In, class Sel>
double estimation_flops_of(const P& policy, const In& in, const Sel& sel) {
  if constexpr (requires { policy_estimation_flops(policy, in, sel); }) {
    return policy_estimation_flops(policy, in, sel);
  } else {
    return 0.0;
  }
}

// Quest page summaries a decode policy needs: its `page_size` member when it has one (Quest's),
// else none.
template <class P>
index_t summary_page_size(const P& policy) {
  if constexpr (requires {
                  { policy.page_size } -> std::convertible_to<index_t>;
                }) {
    return policy.page_size;
  } else {
    return 0;
  }
}

// Key sets of a decode policy: steps[t] is step t's selection; query head h reads selection head
// h (per query head) or h / group (shared by its KV head's group).
inline key_set_fn keys_from_decode_selections(
    std::shared_ptr<const std::vector<decode_selection>> steps) {
  return [steps](index_t h, index_t t) {
    const auto& sel = (*steps)[static_cast<std::size_t>(t)];
    std::vector<index_t> ks;
    for (const auto& [a, z] : sel.ranges(sel.per_query_head ? h : h / sel.group))
      for (index_t j = a; j < z; ++j) ks.push_back(j);
    return ks;
  };
}

// Key sets after one eviction of a prompt of `prompt` tokens: query head h (KV head h / group) at
// decode step t reads the kept prompt tokens of its KV head and the decode tokens
// [prompt, prompt + t].
inline key_set_fn keys_from_eviction(std::shared_ptr<const eviction_selection> sel, index_t group,
                                     index_t prompt) {
  return [sel, group, prompt](index_t h, index_t t) {
    std::vector<index_t> ks = sel->keep[static_cast<std::size_t>(h / group)];
    for (index_t j = prompt; j <= prompt + t; ++j) ks.push_back(j);
    return ks;
  };
}

namespace impl {
inline void write_i64(const std::filesystem::path& file, const std::vector<std::int64_t>& x) {
  eval::write_npy<std::int64_t>(file, std::vector<index_t>{static_cast<index_t>(x.size())}, x);
}
}  // namespace impl

// A decode policy's selections in their native form (--save-selections; documented in
// spattn-compare --help and the README). Entry e = s * steps + i is selection head s (a KV head,
// or a query head when per_query_head) at decode step i (query token q_offset + i):
//   decode_layout.npy int64 [6]  selection heads, steps, q_offset, page_size, group (query heads
//                                per KV head), per_query_head (0: query head h reads entry of
//                                selection head h / group; 1: of h)
//   page_lengths.npy  int64 [heads * steps]      tokens the KV head held (q_offset + i + 1)
//   page_offsets.npy  int64 [heads * steps + 1]  CSR offsets into pages
//   pages.npy         int64 [np]  selected pages of entry e: pages[page_offsets[e] :
//                     page_offsets[e + 1]], page p covering tokens
//                     [p * page_size, min((p + 1) * page_size, length))
inline void save_decode_selections(const std::filesystem::path& dir,
                                   const std::vector<decode_selection>& steps, index_t q_offset) {
  std::filesystem::create_directories(dir);
  const index_t n = static_cast<index_t>(steps.size());
  const index_t heads = n ? steps.front().heads() : 0;
  std::vector<std::int64_t> lengths, offsets{0}, pages;
  for (index_t s = 0; s < heads; ++s) {
    for (const auto& sel : steps) {
      require(sel.heads() == heads, "decode selections", "the same heads at every step",
              sel.heads());
      const auto& p = sel.pages[static_cast<std::size_t>(s)];
      lengths.push_back(sel.lengths[static_cast<std::size_t>(s)]);
      pages.insert(pages.end(), p.begin(), p.end());
      offsets.push_back(static_cast<std::int64_t>(pages.size()));
    }
  }
  const decode_selection none;
  const auto& first = n ? steps.front() : none;
  impl::write_i64(dir / "decode_layout.npy",
                  {heads, n, q_offset, first.page_size, first.group, first.per_query_head ? 1 : 0});
  impl::write_i64(dir / "page_lengths.npy", lengths);
  impl::write_i64(dir / "page_offsets.npy", offsets);
  impl::write_i64(dir / "pages.npy", pages);
}

// An eviction policy's selection in its native form: the prompt tokens each KV head keeps.
//   eviction_layout.npy int64 [4]  kv_heads, group (query heads per KV head), prompt tokens L
//                                  (= q_offset), steps
//   kept_offsets.npy    int64 [kv_heads + 1]  CSR offsets into kept
//   kept.npy            int64 [nk]  kept prompt positions of KV head g, ascending:
//                       kept[kept_offsets[g] : kept_offsets[g + 1]]
// Decode step i (query token L + i) of query head h reads the kept tokens of KV head h / group
// and the decode tokens [L, L + i].
inline void save_eviction_selection(const std::filesystem::path& dir, const eviction_selection& sel,
                                    index_t group, index_t prompt, index_t steps) {
  std::filesystem::create_directories(dir);
  std::vector<std::int64_t> offsets{0}, kept;
  for (const auto& k : sel.keep) {
    kept.insert(kept.end(), k.begin(), k.end());
    offsets.push_back(static_cast<std::int64_t>(kept.size()));
  }
  impl::write_i64(dir / "eviction_layout.npy", {sel.heads(), group, prompt, steps});
  impl::write_i64(dir / "kept_offsets.npy", offsets);
  impl::write_i64(dir / "kept.npy", kept);
}

// Runs a decode policy on a decode problem (see above). A budget select() refuses raises
// budget_not_met.
template <decode_policy P>
method_run run_decode_policy(const P& policy, const problem& p, const budget& b) {
  require(p.ph == phase::decode, "phase", "decode (a decode policy)", phase_name(p.ph));
  require(p.q_offset >= 1 && p.q_tokens >= 1, "decode problem",
          "a prompt and at least one decode step",
          spattn::detail::concat(p.q_offset, " prompt tokens, ", p.q_tokens, " steps"));
  using clock = std::chrono::steady_clock;
  method_run r;
  const index_t H = p.heads(), D = p.head_dim(), L = p.q_offset, steps = p.q_tokens;
  const auto HD = static_cast<std::size_t>(H * D);
  auto sels = std::make_shared<std::vector<decode_selection>>();
  double select_best = 1e300;
  r.out.assign(static_cast<std::size_t>(steps) * HD, 0.0f);
  with_storage_type(p.type(), [&](auto tag) {
    using T = decltype(tag);
    const auto q = p.q().as<T>(), k = p.k().as<T>(), v = p.v().as<T>();
    attention_options opt;
    opt.exec = p.exec;
    auto choose = [&](const tensor_view<const T>& q1, const kv_cache<T>& cache) {
      try {
        return policy.select(make_decode_inputs(q1, cache, p.exec), b);
      } catch (const error& e) {  // deterministic: the first step raises, before any timing
        throw budget_not_met(e.what());
      }
    };
    kv_cache<T> cache(p.kv_heads(), D, p.tokens());
    cache.append(k.slice_tokens(0, L), v.slice_tokens(0, L));
    if (const index_t ps = summary_page_size(policy); ps > 0) cache.enable_summaries(ps);
    for (index_t t = 0; t < steps; ++t) {
      cache.append(k.slice_tokens(L + t, 1), v.slice_tokens(L + t, 1));
      const auto q1 = q.slice_tokens(t, 1);
      sels->push_back(choose(q1, cache));
      sparse_decode(q1, cache, sels->back(),
                    tensor_view<float>(r.out.data() + static_cast<std::size_t>(t) * HD, 1, H, D),
                    {}, opt);
    }
    // The last step as a user pays it per generated token: select() then sparse_decode().
    const auto q1 = q.slice_tokens(steps - 1, 1);
    std::vector<float> o(HD);
    r.seconds = time_best(p.reps, [&] {
      const auto t0 = clock::now();
      const decode_selection sel = choose(q1, cache);
      select_best = std::min(select_best, std::chrono::duration<double>(clock::now() - t0).count());
      sparse_decode(q1, cache, sel, tensor_view<float>(o.data(), 1, H, D), {}, opt);
    });
    r.estimation_flops =
        estimation_flops_of(policy, make_decode_inputs(q1, cache, p.exec), sels->back());
  });
  r.estimation_seconds = select_best;
  const decode_selection& last = sels->back();
  index_t lo = std::numeric_limits<index_t>::max(), hi = 0;
  for (index_t s = 0; s < last.heads(); ++s) {
    lo = std::min(lo, last.tokens(s));
    hi = std::max(hi, last.tokens(s));
  }
  r.budget_note = spattn::detail::concat(
      "last step: ", lo == hi ? spattn::detail::concat(lo) : spattn::detail::concat(lo, "-", hi),
      " of ", p.tokens(), " tokens per ", last.per_query_head ? "query" : "KV", " head",
      last.page_size > 1 ? spattn::detail::concat(" in pages of ", last.page_size) : "");
  r.keys = keys_from_decode_selections(sels);
  r.save_selection = [sels, L](const std::filesystem::path& dir) {
    save_decode_selections(dir, *sels, L);
  };
  return r;
}

// Runs an eviction policy on a decode problem (see above). A budget select() refuses raises
// budget_not_met.
template <eviction_policy P>
method_run run_eviction_policy(const P& policy, const problem& p, const budget& b) {
  require(p.ph == phase::decode, "phase", "decode (an eviction policy)", phase_name(p.ph));
  require(p.q_offset >= 1 && p.q_tokens >= 1, "decode problem",
          "a prompt and at least one decode step",
          spattn::detail::concat(p.q_offset, " prompt tokens, ", p.q_tokens, " steps"));
  method_run r;
  const index_t H = p.heads(), KVH = p.kv_heads(), D = p.head_dim(), L = p.q_offset;
  const index_t steps = p.q_tokens, group = H / KVH;
  const auto HD = static_cast<std::size_t>(H * D);
  auto sel = std::make_shared<eviction_selection>();
  r.out.assign(static_cast<std::size_t>(steps) * HD, 0.0f);
  with_storage_type(p.type(), [&](auto tag) {
    using T = decltype(tag);
    const auto qa = p.in->q.view().as<T>(), k = p.k().as<T>(), v = p.v().as<T>();
    const auto q = p.q().as<T>();
    // What the policy sees right after prefill: the prompt's queries (it reads its last ones) and
    // keys, every KV head holding L tokens.
    eviction_inputs in;
    in.queries = qa.slice_tokens(0, L);
    in.keys = k.slice_tokens(0, L);
    in.lengths.assign(static_cast<std::size_t>(KVH), L);
    in.exec = p.exec;
    try {  // deterministic: the first (warm-up) call raises, before anything is timed
      r.estimation_seconds = time_best(p.reps, [&] { *sel = policy.select(in, b); });
    } catch (const error& e) {
      throw budget_not_met(e.what());
    }
    r.estimation_flops = estimation_flops_of(policy, in, *sel);
    kv_cache<T> cache(KVH, D, L + steps);
    cache.append(k.slice_tokens(0, L), v.slice_tokens(0, L));
    cache.compact(*sel);
    attention_options opt;
    opt.exec = p.exec;
    for (index_t t = 0; t < steps; ++t) {
      cache.append(k.slice_tokens(L + t, 1), v.slice_tokens(L + t, 1));
      for (index_t g = 0; g < KVH; ++g)
        require(cache.length(g) == sel->kept(g) + t + 1, "evicted cache length",
                sel->kept(g) + t + 1, cache.length(g));
      cache_decode(q.slice_tokens(t, 1), cache,
                   tensor_view<float>(r.out.data() + static_cast<std::size_t>(t) * HD, 1, H, D), {},
                   opt);
    }
    // The last step: one decode over what the evicted cache holds.
    const auto q1 = q.slice_tokens(steps - 1, 1);
    std::vector<float> o(HD);
    r.seconds = time_best(
        p.reps, [&] { cache_decode(q1, cache, tensor_view<float>(o.data(), 1, H, D), {}, opt); });
  });
  index_t lo = std::numeric_limits<index_t>::max(), hi = 0;
  for (index_t g = 0; g < sel->heads(); ++g) {
    lo = std::min(lo, sel->kept(g));
    hi = std::max(hi, sel->kept(g));
  }
  r.budget_note = spattn::detail::concat(
      "kept ", lo == hi ? spattn::detail::concat(lo) : spattn::detail::concat(lo, "-", hi), " of ",
      L, " prompt tokens per KV head (+ the decode tokens); evicted once per sequence in ",
      std::round(r.estimation_seconds * 1e4) / 10, " ms (estimation)");
  r.keys = keys_from_eviction(sel, group, L);
  r.save_selection = [sel, group, L, steps](const std::filesystem::path& dir) {
    save_eviction_selection(dir, *sel, group, L, steps);
  };
  return r;
}

// A decode method from any decode policy / eviction policy: one line in builtin_decode_methods().
// The name defaults to policy.name().
template <decode_policy P>
method decode_method(P policy, std::string name = {}, std::string description = {}) {
  if (name.empty()) name = policy.name();
  if (description.empty()) description = "decode policy '" + policy.name() + "' (user-defined)";
  return {std::move(name),
          std::move(description),
          /*prefill=*/false,
          /*decode=*/true,
          /*uses_budget=*/true,
          [policy](const problem& p, const budget& b) { return run_decode_policy(policy, p, b); }};
}

template <eviction_policy P>
method eviction_method(P policy, std::string name = {}, std::string description = {}) {
  if (name.empty()) name = policy.name();
  if (description.empty()) description = "eviction policy '" + policy.name() + "' (user-defined)";
  return {
      std::move(name),
      std::move(description),
      /*prefill=*/false,
      /*decode=*/true,
      /*uses_budget=*/true,
      [policy](const problem& p, const budget& b) { return run_eviction_policy(policy, p, b); }};
}

// The registry: the built-in methods, defined in tools/registry_prefill.cpp and
// tools/registry_decode.cpp (a library the tool and its tests link, so the kernels behind every
// method are compiled once, in two translation units that build in parallel).
std::vector<method> builtin_prefill_methods();  // dense, then the prefill policies
std::vector<method> builtin_decode_methods();   // decode and eviction policies
inline std::vector<method> builtin_methods() {
  std::vector<method> m = builtin_prefill_methods();
  for (auto& d : builtin_decode_methods()) m.push_back(std::move(d));
  return m;
}

}  // namespace spattn::compare
