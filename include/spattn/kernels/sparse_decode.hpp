#pragma once
// Sparse decoding over a KV cache, in place:
//  - sparse_decode(q, cache, selection, out): one decode step reading only the selected pages
//    (Quest) or tokens (page_size 1) of a contiguous or paged cache;
//  - cache_decode(q, cache, out): every cached token of each KV head, which is how an evicted
//    (compacted) cache with per-head lengths is decoded.
// Both run the dense decode kernel (kernels::decode_range) through accessors: selected token i of
// a head is cache row pages[i / page_size] * page_size + i % page_size, read where it lies (no
// gather copy), in 64-key blocks. A GQA group whose heads share the selection is processed as one
// work item, so K and V are read once per group (a per-query-head selection reads each query
// head's pages separately). Selected tokens are split into fixed chunks of
// sparse_decode_chunk_keys; the chunks' partial softmax states are merged in chunk order, so the
// result does not depend on the thread count. q is one token, [1, heads, head_dim]; a head with no
// selected tokens gives zero output and LSE = -inf.
#include <algorithm>
#include <bit>
#include <vector>

#include "spattn/cache/kv_cache.hpp"
#include "spattn/kernels/decode.hpp"
#include "spattn/selection/decode_selection.hpp"

namespace spattn {
namespace kernels {

inline constexpr index_t sparse_decode_chunk_keys = 512;

// Selection index -> cache token.
struct identity_token_map {
  index_t operator()(index_t i) const { return i; }
};
struct pow2_page_map {
  const index_t* pages;
  int shift;
  index_t mask;
  index_t operator()(index_t i) const { return (pages[i >> shift] << shift) | (i & mask); }
};
struct page_map {
  const index_t* pages;
  index_t page_size;
  index_t operator()(index_t i) const { return pages[i / page_size] * page_size + i % page_size; }
};
struct token_list_map {
  const index_t* tokens;
  index_t operator()(index_t i) const { return tokens[i]; }
};

struct sparse_decode_item {
  index_t head, k0, k1, slot;  // head: selection head; [k0, k1): selected tokens; slot: partial
};
struct sparse_decode_group {
  index_t head, first_slot, chunks;
};

// Work plan of sparse_decode: selection heads, their query rows and token maps.
struct selection_plan {
  const decode_selection& sel;
  const std::vector<index_t>& tokens_per_head;
  index_t group;
  bool pow2;
  int shift;
  index_t kv_head(index_t s) const { return sel.kv_head_of(s); }
  index_t rows(index_t) const { return sel.per_query_head ? 1 : group; }
  index_t q_head(index_t s, index_t r) const { return sel.per_query_head ? s : s * group + r; }
  index_t tokens(index_t s) const { return tokens_per_head[static_cast<std::size_t>(s)]; }
  template <class F>
  void with_map(index_t s, F&& f) const {
    const index_t* p = sel.pages[static_cast<std::size_t>(s)].data();
    if (sel.page_size == 1) {
      f(token_list_map{p});
    } else if (pow2) {
      f(pow2_page_map{p, shift, sel.page_size - 1});
    } else {
      f(page_map{p, sel.page_size});
    }
  }
};

// Work plan of cache_decode: every token of each KV head.
template <class Cache>
struct full_cache_plan {
  const Cache& cache;
  index_t group;
  index_t kv_head(index_t s) const { return s; }
  index_t rows(index_t) const { return group; }
  index_t q_head(index_t s, index_t r) const { return s * group + r; }
  index_t tokens(index_t s) const { return cache.length(s); }
  template <class F>
  void with_map(index_t, F&& f) const {
    f(identity_token_map{});
  }
};

// One decode step for `heads` selection heads. Plan: kv_head(s), q_head(s, r) for its rows r in
// [0, rows(s)), tokens(s) (selected tokens), with_map(s, f) calling f(token map).
template <class TQ, class Cache, class TO, class Plan>
void sparse_decode_run(const tensor_view<const TQ>& q, const Cache& cache,
                       const tensor_view<TO>& out, const lse_view& lse, float scale,
                       const executor& exec, index_t heads, const Plan& plan) {
  using TKV = typename Cache::value_type;
  const index_t d = cache.head_dim(), dpad = padded_dim(d);
  std::vector<sparse_decode_item> items;
  std::vector<sparse_decode_group> groups;
  index_t max_rows = 1;
  for (index_t s = 0; s < heads; ++s) {
    max_rows = std::max(max_rows, plan.rows(s));
    const index_t n = plan.tokens(s);
    const index_t chunks = (n + sparse_decode_chunk_keys - 1) / sparse_decode_chunk_keys;
    groups.push_back({s, static_cast<index_t>(items.size()), chunks});
    for (index_t ch = 0; ch < chunks; ++ch) {
      const index_t k0 = ch * sparse_decode_chunk_keys;
      items.push_back(
          {s, k0, std::min(n, k0 + sparse_decode_chunk_keys), static_cast<index_t>(items.size())});
    }
  }
  const index_t stride = max_rows * (dpad + 2);
  simd::aligned_buffer partial(static_cast<std::size_t>(std::max<index_t>(1, items.size())) *
                               static_cast<std::size_t>(stride));
  const float qscale = scale * log2e;

  exec.parallel_for(static_cast<index_t>(items.size()), [&](index_t i) {
    const auto& it = items[static_cast<std::size_t>(i)];
    const index_t s = it.head;
    const int rows = static_cast<int>(plan.rows(s));
    thread_local simd::aligned_buffer qs, sbuf;
    qs.resize(static_cast<std::size_t>(rows * dpad));
    sbuf.resize(decode_row_panel * BC);
    for (int r = 0; r < rows; ++r) {
      const index_t h = plan.q_head(s, r);
      pack_rows<TQ>([&](int) { return q.row(0, h); }, 1, d, dpad, qscale, qs.data() + r * dpad);
    }
    float* base = partial.data() + it.slot * stride;
    softmax_state st{base, base + rows * dpad, base + rows * dpad + rows, rows, dpad};
    st.reset();
    const auto krows = cache.key_rows(plan.kv_head(s));
    const auto vrows = cache.value_rows(plan.kv_head(s));
    const index_t n = plan.tokens(s);
    const index_t row_bytes = d * static_cast<index_t>(sizeof(TKV));
    plan.with_map(s, [&](auto map) {
      // decode_range fetches K rows ahead through key(); the V row of the same token is
      // prefetched with it, so V reads stay ahead too when selected pages are scattered.
      const auto key = [&](index_t t) {
        const index_t tok = map(t);
        const char* vr = reinterpret_cast<const char*>(vrows(tok));
        for (index_t o = 0; o < row_bytes; o += 64) _mm_prefetch(vr + o, _MM_HINT_T0);
        return krows(tok);
      };
      decode_range<TKV>(
          qs.data(), d, key, [&](index_t t) { return vrows(map(t)); }, it.k0, it.k1, st,
          [](int, index_t, int nb) { return nb; }, sbuf.data(), n);
    });
  });

  exec.parallel_for(static_cast<index_t>(groups.size()), [&](index_t gi) {
    const auto& gr = groups[static_cast<std::size_t>(gi)];
    const index_t s = gr.head;
    const int rows = static_cast<int>(plan.rows(s));
    thread_local std::vector<float> acc;
    acc.assign(static_cast<std::size_t>(dpad), 0.0f);
    auto part = [&](index_t ch) { return partial.data() + (gr.first_slot + ch) * stride; };
    for (int r = 0; r < rows; ++r) {
      float m, l;
      merge_partials(part, gr.chunks, rows, r, d, dpad, acc.data(), m, l);
      const index_t h = plan.q_head(s, r);
      finalize_row(acc.data(), m, l, d, out.row(0, h), lse.empty() ? nullptr : &lse.at(0, h));
    }
  });
}

// Checks q / out / lse against the cache; returns the softmax scale.
template <class TQ, class Cache, class TO>
float check_cache_decode(const tensor_view<const TQ>& q, const Cache& cache,
                         const tensor_view<TO>& out, const lse_view& lse,
                         const attention_options& opt) {
  const index_t d = cache.head_dim();
  require(q.tokens() == 1, "q.tokens", "1 (one decode step)", q.tokens());
  if (!(q.heads() % cache.kv_heads() == 0))
    require(false, "q.heads",
            detail::concat("a multiple of the cache's KV heads (", cache.kv_heads(), ")"),
            q.heads());
  if (!(q.head_dim() == d))
    require(false, "q.head_dim", detail::concat("the cache's head_dim (", d, ")"), q.head_dim());
  if (!(d % 8 == 0 && d <= detail::max_head_dim))
    require(false, "head_dim", detail::concat("a multiple of 8 in [8, ", detail::max_head_dim, "]"),
            d);
  if (!(out.tokens() == 1 && out.heads() == q.heads() && out.head_dim() == d))
    require(false, "out", detail::concat("shape [1, ", q.heads(), ", ", d, "]"),
            detail::concat("[", out.tokens(), ", ", out.heads(), ", ", out.head_dim(), "]"));
  require(!detail::ranges_overlap(out.begin_address(), out.end_address(), q.begin_address(),
                                  q.end_address()),
          "out", "memory disjoint from q", "an aliasing view");
  if (!lse.empty()) {
    if (!(lse.tokens() == 1 && lse.heads() == q.heads()))
      require(false, "lse", detail::concat("shape [1, ", q.heads(), "]"),
              detail::concat("[", lse.tokens(), ", ", lse.heads(), "]"));
  }
  require(std::isfinite(opt.scale) && opt.scale >= 0.0f, "scale",
          "a finite value >= 0 (0: default)", opt.scale);
  return opt.scale > 0.0f ? opt.scale : 1.0f / std::sqrt(static_cast<float>(d));
}

}  // namespace kernels

// One decode step over the selected pages of `cache` (kv_cache, or paged_cache::sequence()).
// The selection must match the cache's current lengths and the query's heads.
template <class TQ, class Cache, class TO>
requires kv_cache_reader<Cache>
void sparse_decode(tensor_view<TQ> q, const Cache& cache, const decode_selection& sel,
                   tensor_view<TO> out, lse_view lse = {}, const attention_options& opt = {}) {
  static_assert(!std::is_const_v<TO>, "out must be a writable view");
  const tensor_view<const std::remove_cv_t<TQ>> qc = q;
  const float scale = kernels::check_cache_decode(qc, cache, out, lse, opt);
  const index_t group = q.heads() / cache.kv_heads();
  sel.validate();
  const index_t want = sel.per_query_head ? q.heads() : cache.kv_heads();
  if (!(sel.heads() == want))
    require(false, "selection heads",
            detail::concat(want, sel.per_query_head ? " (query heads)" : " (KV heads)"),
            sel.heads());
  if (!(sel.group == group))
    require(false, "selection group", detail::concat("the query's GQA group (", group, ")"),
            sel.group);
  for (index_t s = 0; s < sel.heads(); ++s) {
    const index_t len = cache.length(sel.kv_head_of(s));
    if (!(sel.lengths[static_cast<std::size_t>(s)] == len))
      require(false, "selection lengths",
              detail::concat("the cache's length of KV head ", sel.kv_head_of(s), " (", len,
                             ") for selection head ", s),
              sel.lengths[static_cast<std::size_t>(s)]);
  }
  std::vector<index_t> tokens(static_cast<std::size_t>(sel.heads()));
  for (index_t s = 0; s < sel.heads(); ++s) tokens[static_cast<std::size_t>(s)] = sel.tokens(s);
  const bool pow2 = std::has_single_bit(static_cast<std::uint64_t>(sel.page_size));
  const int shift = std::countr_zero(static_cast<std::uint64_t>(sel.page_size));
  const kernels::selection_plan plan{sel, tokens, group, pow2, shift};
  kernels::sparse_decode_run(qc, cache, out, lse, scale, opt.exec, sel.heads(), plan);
}

// One decode step over every token each KV head holds (dense over the cache; after eviction the
// heads' lengths may differ).
template <class TQ, class Cache, class TO>
requires kv_cache_reader<Cache>
void cache_decode(tensor_view<TQ> q, const Cache& cache, tensor_view<TO> out, lse_view lse = {},
                  const attention_options& opt = {}) {
  static_assert(!std::is_const_v<TO>, "out must be a writable view");
  const tensor_view<const std::remove_cv_t<TQ>> qc = q;
  const float scale = kernels::check_cache_decode(qc, cache, out, lse, opt);
  const kernels::full_cache_plan<Cache> plan{cache, q.heads() / cache.kv_heads()};
  kernels::sparse_decode_run(qc, cache, out, lse, scale, opt.exec, cache.kv_heads(), plan);
}

}  // namespace spattn
