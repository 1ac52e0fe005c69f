#pragma once
// Dense causal prefill: flash-style tiles with online softmax (see tile.hpp). One work item is a
// (sequence, KV head, query block); it packs the block's rows for every query head of the GQA
// group, so each K/V tile is loaded once per group. Work items are ordered by decreasing cost
// and their boundaries never depend on the thread count, so results do not either.
#include <algorithm>
#include <vector>

#include "spattn/kernels/options.hpp"
#include "spattn/kernels/tile.hpp"

namespace spattn {

namespace kernels {

inline constexpr index_t prefill_block_q = 64;  // query positions per work item

struct prefill_item {
  index_t seq, kv_head, q0, q1, k_end;
};

// Work items for all sequences, most expensive first.
inline std::vector<prefill_item> plan_prefill(const std::vector<sequence_span>& seqs,
                                              index_t kv_heads, bool causal) {
  std::vector<prefill_item> items;
  for (index_t s = 0; s < static_cast<index_t>(seqs.size()); ++s) {
    const auto& sp = seqs[s];
    for (index_t q0 = 0; q0 < sp.q_len; q0 += prefill_block_q) {
      const index_t q1 = std::min(sp.q_len, q0 + prefill_block_q);
      const index_t k_end = causal ? std::min(sp.k_len, sp.q_offset + q1) : sp.k_len;
      for (index_t h = 0; h < kv_heads; ++h) items.push_back({s, h, q0, q1, k_end});
    }
  }
  std::stable_sort(items.begin(), items.end(), [](const prefill_item& a, const prefill_item& b) {
    return a.k_end * (a.q1 - a.q0) > b.k_end * (b.q1 - b.q0);
  });
  return items;
}

// Scratch for one work item.
struct prefill_scratch {
  simd::aligned_buffer qs, o, ml, kt, vp, s;
  void reserve(index_t rows, index_t d, index_t dpad) {
    qs.resize(rows * dpad);
    o.resize(rows * dpad);
    ml.resize(2 * rows);
    kt.resize(d * BC);
    vp.resize(BC * dpad);
    s.resize(MR * BC);
  }
};

template <class TQ, class TKV, class TO>
void run_prefill_item(const prefill_item& it, const sequence_span& sp,
                      const tensor_view<const TQ>& q, const tensor_view<const TKV>& k,
                      const tensor_view<const TKV>& v, const tensor_view<TO>& out,
                      const lse_view& lse, const detail::resolved_call& c, bool causal,
                      prefill_scratch& sc) {
  const index_t d = c.head_dim, dpad = padded_dim(d), bq = it.q1 - it.q0;
  const int rows = static_cast<int>(bq * c.group);
  sc.reserve(rows, d, dpad);
  const float qscale = c.scale * log2e;
  for (index_t g = 0; g < c.group; ++g) {
    const index_t h = it.kv_head * c.group + g;
    pack_rows<TQ>([&](int j) { return q.row(sp.q_begin + it.q0 + j, h); }, static_cast<int>(bq), d,
                  dpad, qscale, sc.qs.data() + g * bq * dpad);
  }
  softmax_state st{sc.o.data(), sc.ml.data(), sc.ml.data() + rows, rows, dpad};
  st.reset();
  const index_t first_pos = sp.q_offset + it.q0;  // position of row 0 of each head
  for (index_t k0 = 0; k0 < it.k_end; k0 += BC) {
    const int n = static_cast<int>(std::min<index_t>(BC, it.k_end - k0));
    pack_k_transposed<TKV>([&](int j) { return k.row(sp.k_begin + k0 + j, it.kv_head); }, n, d,
                           sc.kt.data());
    pack_rows<TKV>([&](int j) { return v.row(sp.k_begin + k0 + j, it.kv_head); }, n, d, dpad, 1.0f,
                   sc.vp.data());
    const bool masked = (causal && k0 + n - 1 > first_pos) || n < BC;
    const k_columns kc = packed_columns(sc.kt.data());
    const v_packed vs{sc.vp.data(), dpad};
    if (!masked) {
      attend_tile(
          sc.qs.data(), d, kc, vs, st, [](int) { return BC; }, sc.s.data());
    } else {
      attend_tile(
          sc.qs.data(), d, kc, vs, st,
          [&](int r) {
            if (!causal) return n;
            const index_t pos = first_pos + r % bq;
            return static_cast<int>(std::clamp<index_t>(pos - k0 + 1, 0, n));
          },
          sc.s.data());
    }
  }
  for (int r = 0; r < rows; ++r) {
    const index_t g = r / bq, i = r % bq;
    const index_t h = it.kv_head * c.group + g, t = sp.q_begin + it.q0 + i;
    finalize_row(st.o + r * dpad, st.m[r], st.l[r], d, out.row(t, h),
                 lse.empty() ? nullptr : &lse.at(t, h));
  }
}

template <class TQ, class TKV, class TO>
void prefill_sequences(const tensor_view<const TQ>& q, const tensor_view<const TKV>& k,
                       const tensor_view<const TKV>& v, const tensor_view<TO>& out,
                       const lse_view& lse, const detail::resolved_call& c,
                       const attention_options& opt) {
  const auto items = plan_prefill(c.seqs, c.kv_heads, opt.causal);
  opt.exec.parallel_for(static_cast<index_t>(items.size()), [&](index_t i) {
    thread_local prefill_scratch sc;
    const auto& it = items[static_cast<std::size_t>(i)];
    run_prefill_item(it, c.seqs[static_cast<std::size_t>(it.seq)], q, k, v, out, lse, c, opt.causal,
                     sc);
  });
}

}  // namespace kernels

// Dense attention over one sequence: out[t, h] = softmax(scale * q[t, h] . K^T) V over the keys
// query t may see (causal by default, queries at positions q_offset + t). Optional LSE output.
// Views may hold float, f16 or bf16 (K and V the same); arithmetic is fp32.
template <class Q, class K, class V, class O>
void prefill(tensor_view<Q> q, tensor_view<K> k, tensor_view<V> v, tensor_view<O> out,
             lse_view lse = {}, const attention_options& opt = {}) {
  detail::static_check_views<Q, K, V, O>();
  auto c = detail::check_attention_args(as_const(q), as_const(k), as_const(v), out, lse, opt);
  c.seqs = {detail::single_sequence(q.tokens(), k.tokens(), opt)};
  kernels::prefill_sequences(as_const(q), as_const(k), as_const(v), out, lse, c, opt);
}

// Varlen batch: sequences packed along tokens, bottom-right causal alignment per sequence.
template <class Q, class K, class V, class O>
void prefill(tensor_view<Q> q, tensor_view<K> k, tensor_view<V> v, tensor_view<O> out,
             const varlen_batch& batch, lse_view lse = {}, const attention_options& opt = {}) {
  detail::static_check_views<Q, K, V, O>();
  auto c = detail::check_attention_args(as_const(q), as_const(k), as_const(v), out, lse, opt);
  require(opt.q_offset == -1, "q_offset", "-1 for varlen batches (offsets come from lengths)",
          opt.q_offset);
  c.seqs = detail::resolve_varlen(batch, q.tokens(), k.tokens(), opt.causal);
  kernels::prefill_sequences(as_const(q), as_const(k), as_const(v), out, lse, c, opt);
}

}  // namespace spattn
