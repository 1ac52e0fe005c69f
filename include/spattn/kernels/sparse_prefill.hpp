#pragma once
// The sparse prefill kernel: executes any prefill_selection (selection/prefill_selection.hpp)
// with the tile building blocks of kernels/tile.hpp.
//
// A work item is (KV head, a chunk of that group's query heads, a block of 64 query tokens, or
// block_q tokens when block_q > 64). Its rows, for every query head of the chunk, are packed once,
// as in the dense kernel. The item's rows fall into row groups: one per (query head, selection
// query block). Each row group selects a set of keys; the kernel sweeps the key axis once, splits
// it into pieces seen by the same set of row groups (a bit mask), and gathers each mask's keys
// into 64-key tiles. A tile is packed once (K transposed, V) and applied to every row group of its
// mask - contiguous row groups in one call - so K/V are read once per GQA group wherever the heads'
// selections agree, and never duplicated. Keys inside a tile are sorted, so the causal mask is a
// per-row count of leading columns, computed only for tiles that reach past a row's position.
// A multi-group mask's last partial tile (<= 32 keys) is handed to its groups' own lists, so
// fragments do not cost full tiles.
//
// Work items are ordered by their selected work (heads of very different density balance across
// threads); their contents never depend on the thread count, so neither do results. A full causal
// selection with 64-key blocks at multiples of 64 performs exactly the dense kernel's arithmetic.
#include <algorithm>
#include <bit>
#include <cstdint>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include "spattn/kernels/options.hpp"
#include "spattn/kernels/tile.hpp"
#include "spattn/selection/prefill_selection.hpp"

namespace spattn {

namespace kernels {

inline constexpr index_t sparse_block_q = 64;  // query tokens per work item (at least)

struct sparse_item {
  index_t kv_head = 0, h0 = 0, nh = 0;  // query heads kv_head*group + h0 .. + nh
  index_t q0 = 0, q1 = 0, qb0 = 0;      // query tokens [q0, q1); first selection query block
  double cost = 0;
};

struct sparse_layout {
  index_t item_q = 64, sub = 1, heads_per_item = 1;
};

inline sparse_layout sparse_item_layout(const prefill_selection& sel, index_t group) {
  sparse_layout l;
  l.item_q = std::max<index_t>(sparse_block_q, sel.block_q);
  l.sub = l.item_q / sel.block_q;
  l.heads_per_item = std::min<index_t>(group, std::max<index_t>(1, 64 / l.sub));
  return l;
}

inline std::vector<sparse_item> plan_sparse_prefill(const prefill_selection& sel, index_t kv_heads,
                                                    index_t group, const sparse_layout& lay) {
  std::vector<sparse_item> items;
  for (index_t q0 = 0; q0 < sel.q_tokens; q0 += lay.item_q) {
    const index_t q1 = std::min(sel.q_tokens, q0 + lay.item_q), qb0 = q0 / sel.block_q;
    for (index_t kvh = 0; kvh < kv_heads; ++kvh) {
      for (index_t g0 = 0; g0 < group; g0 += lay.heads_per_item) {
        sparse_item it{kvh, g0, std::min(lay.heads_per_item, group - g0), q0, q1, qb0, 0.0};
        for (index_t g = 0; g < it.nh; ++g) {
          for (index_t b = 0; b < lay.sub && qb0 + b < sel.q_blocks(); ++b) {
            const auto& e = sel.at(kvh * group + g0 + g, qb0 + b);  // cost estimate only
            const auto keys = static_cast<index_t>(e.blocks.size()) * sel.block_k +
                              static_cast<index_t>(e.columns.size());
            const index_t rows =
                std::min(sel.block_q, q1 - q0 - b * sel.block_q);  // rows of this query block
            it.cost += static_cast<double>(keys) * static_cast<double>(rows);
          }
        }
        items.push_back(it);
      }
    }
  }
  std::stable_sort(items.begin(), items.end(),
                   [](const sparse_item& a, const sparse_item& b) { return a.cost > b.cost; });
  return items;
}

struct sparse_scratch {
  simd::aligned_buffer qs, o, ml, kt, vp, s, row;
  std::vector<std::pair<index_t, index_t>> iv;
  std::vector<std::uint64_t> events;
  std::vector<std::vector<index_t>> lists;
  std::vector<std::uint64_t> masks;
  std::unordered_map<std::uint64_t, std::size_t> by_mask;
  std::size_t used = 0;

  std::vector<index_t>& list_for(std::uint64_t mask) {
    auto [pos, inserted] = by_mask.try_emplace(mask, used);
    if (inserted) {
      if (lists.size() <= used) lists.emplace_back();
      if (masks.size() <= used) masks.push_back(0);
      lists[used].clear();
      masks[used] = mask;
      ++used;
    }
    return lists[pos->second];
  }
  void reset_lists() {
    by_mask.clear();
    used = 0;
  }
};

// K^T panels: the keys of one KV head packed once per call as 64-key tiles - fp32 keys in
// pack_k_transposed's layout, bf16 keys as pack_k_pairs_transposed's dimension pairs (the same
// bytes as K; converted in registers by the pair qk_panel, bit-identical scores). A tile made of
// aligned runs of panel_run keys (block-sparse chunks) reads its keys from the panels instead of
// gathering and transposing K: with the few rows per tile of 16-query blocks with per-head chunk
// sets, that per-tile packing cost ~10% of the kernel. fp16 keys have no panels (packed per tile).
inline constexpr index_t panel_run = 16;
static_assert(panel_run % W == 0 && BC % panel_run == 0);

template <class TKV>
inline constexpr bool has_k_panels = std::is_same_v<TKV, float> || std::is_same_v<TKV, bf16>;

template <class TKV>
struct k_panels {
  static constexpr bool pairs = std::is_same_v<TKV, bf16>;
  using word = std::conditional_t<pairs, std::uint32_t, float>;
  using columns = std::conditional_t<pairs, k_pair_columns, k_columns>;
  using v_source = std::conditional_t<pairs, v_pair_rows, v_rows>;  // V read in place
  // Whether V rows can be read in place for head_dim d (whole vectors, whole pair blocks).
  static bool v_in_place(index_t d) { return d % (pairs ? 2 * W : W) == 0; }
  word* data = nullptr;
  index_t lines = 0;  // words per key per tile row: d (fp32) or d / 2 (bf16 pairs)

  static index_t words(index_t tokens, index_t d) {
    return (tokens + BC - 1) / BC * BC * (pairs ? d / 2 : d);
  }
  const word* at(index_t key) const { return data + key / BC * lines * BC + key % BC; }

  // Packs KV head kvh of k (tokens rounded up to BC keys, the rest zero).
  void pack(const tensor_view<const TKV>& k, index_t kvh, const executor& exec) {
    const index_t d = k.head_dim(), tiles = (k.tokens() + BC - 1) / BC;
    lines = pairs ? d / 2 : d;
    exec.parallel_for(tiles, [&](index_t t) {
      const int n = static_cast<int>(std::min<index_t>(BC, k.tokens() - t * BC));
      auto row = [&](int j) { return k.row(t * BC + j, kvh); };
      if constexpr (pairs) {
        pack_k_pairs_transposed(row, n, d, data + t * lines * BC);
      } else {
        pack_k_transposed<TKV>(row, n, d, data + t * lines * BC);
      }
    });
  }

  // The tile cols[0 .. n) (aligned_runs) in the panels; columns >= n repeat the first run (they
  // are masked).
  columns of(const index_t* cols, int n) const {
    columns kc;
    constexpr int per_run = static_cast<int>(panel_run) / W;
    for (int r = 0; r < BC / static_cast<int>(panel_run); ++r) {
      const word* p = at(r * panel_run < n ? cols[r * panel_run] : cols[0]);
      for (int i = 0; i < per_run; ++i) kc.at[r * per_run + i] = p + i * W;
    }
    return kc;
  }

  void prefetch_run(index_t key) const {
    const word* p = at(key);
    for (index_t x = 0; x < lines; ++x)
      _mm_prefetch(reinterpret_cast<const char*>(p + x * BC), _MM_HINT_T1);
  }
};

// Whether cols[0 .. n) is whole runs of panel_run consecutive keys, each starting at a multiple
// of panel_run (cols is sorted and unique, so a run's last key decides).
inline bool aligned_runs(const index_t* cols, int n) {
  if (n % panel_run != 0) return false;
  for (int j = 0; j < n; j += static_cast<int>(panel_run))
    if (cols[j] % panel_run != 0 || cols[j + panel_run - 1] != cols[j] + panel_run - 1)
      return false;
  return true;
}

template <class TQ, class TKV, class TO>
void run_sparse_item(const sparse_item& it, const prefill_selection& sel, const sparse_layout& lay,
                     const tensor_view<const TQ>& q, const tensor_view<const TKV>& k,
                     const tensor_view<const TKV>& v, const tensor_view<TO>& out,
                     const lse_view& lse, const detail::resolved_call& c,
                     const k_panels<TKV>* panels, sparse_scratch& sc) {
  const index_t d = c.head_dim, dpad = padded_dim(d), bq = it.q1 - it.q0;
  const int rows = static_cast<int>(bq * it.nh);
  sc.qs.resize(static_cast<std::size_t>(rows * dpad));
  sc.o.resize(static_cast<std::size_t>(rows * dpad));
  sc.ml.resize(static_cast<std::size_t>(2 * rows));
  sc.kt.resize(static_cast<std::size_t>(d * BC));
  sc.vp.resize(static_cast<std::size_t>(BC * dpad));
  sc.s.resize(static_cast<std::size_t>(MR * BC));
  const float qscale = c.scale * log2e;
  const index_t first_head = it.kv_head * c.group + it.h0;
  // Row groups (head g, sub-block b), sub-block major: bit b * nh + g holds rows
  // [base(b, g), base(b, g) + sub_rows(b)); every sub-block but the last is full. With one
  // sub-block this is the dense kernel's layout (head-major).
  const index_t sub = lay.sub, nh = it.nh, bqs = sel.block_q;
  auto sub_rows = [&](index_t b) { return std::clamp<index_t>(bq - b * bqs, 0, bqs); };
  auto base = [&](index_t b, index_t g) { return b * bqs * nh + g * sub_rows(b); };
  auto group_rows = [&](index_t rg) {
    const index_t b = rg / nh, g = rg % nh;
    return std::pair<index_t, index_t>(base(b, g), base(b, g) + sub_rows(b));
  };
  // Token offset (from it.q0) of state row r.
  auto row_token = [&](index_t r) {
    const index_t b = r / (bqs * nh), w = r % (bqs * nh);
    return b * bqs + w % sub_rows(b);
  };
  for (index_t b = 0; b < sub; ++b) {
    for (index_t g = 0; g < nh && sub_rows(b) > 0; ++g) {
      pack_rows<TQ>([&](int j) { return q.row(it.q0 + b * bqs + j, first_head + g); },
                    static_cast<int>(sub_rows(b)), d, dpad, qscale,
                    sc.qs.data() + base(b, g) * dpad);
    }
  }
  softmax_state st{sc.o.data(), sc.ml.data(), sc.ml.data() + rows, rows, dpad};
  st.reset();

  // Sweep the key axis: events (position << 7 | bit << 1 | is_start).
  sc.events.clear();
  for (index_t g = 0; g < it.nh; ++g) {
    for (index_t b = 0; b < sub && it.qb0 + b < sel.q_blocks(); ++b) {
      sel.key_intervals(first_head + g, it.qb0 + b, sc.iv);
      const auto bit = static_cast<std::uint64_t>(b * nh + g);
      for (const auto& [a, z] : sc.iv) {
        sc.events.push_back(static_cast<std::uint64_t>(a) << 7 | bit << 1 | 1u);
        sc.events.push_back(static_cast<std::uint64_t>(z) << 7 | bit << 1);
      }
    }
  }
  std::sort(sc.events.begin(), sc.events.end());
  sc.reset_lists();
  std::uint64_t mask = 0;
  for (std::size_t i = 0; i < sc.events.size();) {
    const std::uint64_t x = sc.events[i] >> 7;
    for (; i < sc.events.size() && (sc.events[i] >> 7) == x; ++i) {
      const std::uint64_t bit = std::uint64_t{1} << ((sc.events[i] >> 1) & 63u);
      mask = (sc.events[i] & 1u) ? (mask | bit) : (mask & ~bit);
    }
    if (mask != 0 && i < sc.events.size()) {
      auto& l = sc.list_for(mask);
      const auto end = static_cast<index_t>(sc.events[i] >> 7);
      for (auto col = static_cast<index_t>(x); col < end; ++col) l.push_back(col);
    }
  }
  // Hand small tails of shared lists to the single groups' lists.
  const std::size_t shared_lists = sc.used;
  for (std::size_t li = 0; li < shared_lists; ++li) {
    const std::uint64_t m = sc.masks[li];
    const std::size_t tail = sc.lists[li].size() % BC;
    if (std::popcount(m) < 2 || tail == 0 || tail > BC / 2) continue;
    for (std::uint64_t bits = m; bits != 0; bits &= bits - 1) {
      const std::uint64_t one = bits & (~bits + 1);
      auto& dst = sc.list_for(one);  // may reallocate sc.lists: index afresh below
      const auto& src = sc.lists[li];
      const auto old_size = static_cast<std::ptrdiff_t>(dst.size());
      dst.insert(dst.end(), src.end() - static_cast<std::ptrdiff_t>(tail), src.end());
      std::inplace_merge(dst.begin(), dst.begin() + old_size, dst.end());  // both parts sorted
    }
    auto& shrunk = sc.lists[li];
    shrunk.erase(shrunk.end() - static_cast<std::ptrdiff_t>(tail), shrunk.end());
  }

  const index_t first_pos = sel.q_offset + it.q0;  // position of row 0 of every head
  // Panel mode reads V rows in place (no per-tile V pack) where head_dim allows.
  bool v_in_place = false;
  if constexpr (has_k_panels<TKV>) v_in_place = panels != nullptr && k_panels<TKV>::v_in_place(d);
  // Gathered K/V rows are not sequential: fetch the next tile's rows (into L2) while attending
  // this one.
  const std::size_t row_bytes = static_cast<std::size_t>(d) * sizeof(TKV);
  auto prefetch_tile = [&](std::size_t li, std::size_t t0) {
    if (li >= sc.used || t0 >= sc.lists[li].size()) return;
    const std::vector<index_t>& list = sc.lists[li];
    const std::size_t end = std::min<std::size_t>(list.size(), t0 + BC);
    for (std::size_t j = t0; j < end; ++j) {
      const char* vr = reinterpret_cast<const char*>(v.row(list[j], it.kv_head));
      for (std::size_t b = 0; b < row_bytes; b += 64) _mm_prefetch(vr + b, _MM_HINT_T1);
      if (panels == nullptr) {
        const char* kr = reinterpret_cast<const char*>(k.row(list[j], it.kv_head));
        for (std::size_t b = 0; b < row_bytes; b += 64) _mm_prefetch(kr + b, _MM_HINT_T1);
      } else if (list[j] % panel_run == 0) {
        panels->prefetch_run(list[j]);  // the run's K^T lines
      }
    }
  };
  prefetch_tile(0, 0);
  for (std::size_t li = 0; li < sc.used; ++li) {
    const std::vector<index_t>& list = sc.lists[li];
    const std::uint64_t m = sc.masks[li];
    for (std::size_t t0 = 0; t0 < list.size(); t0 += BC) {
      const int n = static_cast<int>(std::min<std::size_t>(BC, list.size() - t0));
      const index_t* cols = list.data() + t0;
      if (t0 + BC < list.size()) {
        prefetch_tile(li, t0 + BC);
      } else {
        prefetch_tile(li + 1, 0);
      }
      const index_t max_col = cols[n - 1];
      // Every run of contiguous row groups of the mask attends the tile.
      auto attend_groups = [&](const auto& kc, const auto& vs) {
        for (std::uint64_t bits = m; bits != 0;) {
          const int lo = std::countr_zero(bits);
          const int len = std::countr_one(bits >> lo);
          bits = len >= 64 ? 0 : bits & ~(((std::uint64_t{1} << len) - 1) << lo);
          index_t r_begin = group_rows(lo).first, r_end = group_rows(lo + len - 1).second;
          index_t min_pos = first_pos + sel.block_q * sub;  // > any row's position
          for (int rg = lo; rg < lo + len; ++rg) {
            min_pos = std::min(min_pos, first_pos + (rg / nh) * bqs);
          }
          if (r_end <= r_begin) continue;
          const softmax_state part{st.o + r_begin * dpad, st.m + r_begin, st.l + r_begin,
                                   static_cast<int>(r_end - r_begin), dpad};
          const float* qpart = sc.qs.data() + r_begin * dpad;
          if (max_col <= min_pos) {
            attend_tile(
                qpart, d, kc, vs, part, [n](int) { return n; }, sc.s.data());
          } else {
            attend_tile(
                qpart, d, kc, vs, part,
                [&](int r) {
                  const index_t pos = first_pos + row_token(r_begin + r);
                  return static_cast<int>(std::upper_bound(cols, cols + n, pos) - cols);
                },
                sc.s.data());
          }
        }
      };
      // V: in place (panel mode), else packed for the tile.
      auto attend_with_v = [&](const auto& kc) {
        if constexpr (has_k_panels<TKV>) {
          if (v_in_place) {
            typename k_panels<TKV>::v_source vr;
            using word = typename k_panels<TKV>::word;
            for (int j = 0; j < n; ++j)
              vr.row[j] = reinterpret_cast<const word*>(v.row(cols[j], it.kv_head));
            for (int j = n; j < BC; ++j) vr.row[j] = vr.row[0];  // beyond ncols: never read
            attend_groups(kc, vr);
            return;
          }
        }
        pack_rows<TKV>([&](int j) { return v.row(cols[j], it.kv_head); }, n, d, dpad, 1.0f,
                       sc.vp.data());
        attend_groups(kc, v_packed{sc.vp.data(), dpad});
      };
      if (panels != nullptr && aligned_runs(cols, n)) {
        attend_with_v(panels->of(cols, n));
      } else {
        pack_k_transposed<TKV>([&](int j) { return k.row(cols[j], it.kv_head); }, n, d,
                               sc.kt.data());
        attend_with_v(packed_columns(sc.kt.data()));
      }
    }
  }
  const bool pair_layout = v_in_place && k_panels<TKV>::pairs;
  sc.row.resize(static_cast<std::size_t>(dpad));
  for (int r = 0; r < rows; ++r) {
    const index_t b = r / (bqs * nh), w = r % (bqs * nh);
    const index_t h = first_head + w / sub_rows(b), t = it.q0 + row_token(r);
    const float* o = st.o + r * dpad;
    if (pair_layout) {
      unpermute_pairs(o, d, sc.row.data());
      o = sc.row.data();
    }
    finalize_row(o, st.m[r], st.l[r], d, out.row(t, h), lse.empty() ? nullptr : &lse.at(t, h));
  }
}

}  // namespace kernels

// Sparse causal prefill over one sequence: out[t, h] = softmax(scale * q[t, h] . K^T) V over the
// keys `sel` selects for query t of head h (and only those with position <= q_offset + t).
// sel.q_offset gives the queries' position (opt.q_offset must be -1 or agree). A row that selects
// no key gets zero output and LSE = -inf. Storage f32/f16/bf16 (K and V the same), fp32 arithmetic;
// threads through opt.exec, results independent of the thread count.
template <class Q, class K, class V, class O>
void sparse_prefill(tensor_view<Q> q, tensor_view<K> k, tensor_view<V> v, tensor_view<O> out,
                    const prefill_selection& sel, lse_view lse = {},
                    const attention_options& opt = {}) {
  detail::static_check_views<Q, K, V, O>();
  auto c = detail::check_attention_args(as_const(q), as_const(k), as_const(v), out, lse, opt);
  require(opt.causal, "opt.causal", "true (sparse prefill is causal)", "false");
  sel.validate();
  require(sel.heads == q.heads(), "selection heads", detail::lazy("q.heads (", q.heads(), ")"),
          sel.heads);
  require(sel.q_tokens == q.tokens(), "selection q_tokens",
          detail::lazy("q.tokens (", q.tokens(), ")"), sel.q_tokens);
  require(sel.k_tokens == k.tokens(), "selection k_tokens",
          detail::lazy("k.tokens (", k.tokens(), ")"), sel.k_tokens);
  require(opt.q_offset == -1 || opt.q_offset == sel.q_offset, "q_offset",
          detail::lazy("-1 or the selection's q_offset (", sel.q_offset, ")"), opt.q_offset);
  require(sel.head_dim == 0 || sel.head_dim == q.head_dim(), "selection head_dim",
          detail::lazy("0 or q.head_dim (", q.head_dim(), ")"), sel.head_dim);
  if (q.tokens() == 0) return;
  const auto lay = kernels::sparse_item_layout(sel, c.group);
  const auto items = kernels::plan_sparse_prefill(sel, c.kv_heads, c.group, lay);
  const auto qc = as_const(q);
  const auto kc = as_const(k);
  const auto vc = as_const(v);
  using panels_t = kernels::k_panels<std::remove_const_t<K>>;
  auto run = [&](const std::vector<kernels::sparse_item>& list, const panels_t* panels) {
    opt.exec.parallel_for(static_cast<index_t>(list.size()), [&](index_t i) {
      thread_local kernels::sparse_scratch sc;
      kernels::run_sparse_item(list[static_cast<std::size_t>(i)], sel, lay, qc, kc, vc, out, lse, c,
                               panels, sc);
    });
  };
  // Query blocks under 64 tokens (few rows per tile) on 16-aligned key blocks: K from panels,
  // one KV head at a time, so the panels hold one KV head's K (fp32 or bf16, as stored).
  if constexpr (kernels::has_k_panels<std::remove_const_t<K>>) {
    if (sel.block_q < kernels::sparse_block_q && sel.block_k % kernels::panel_run == 0) {
      thread_local simd::aligned_buffer store;  // floats; holds bf16 pairs as 32-bit words
      store.resize(static_cast<std::size_t>(panels_t::words(k.tokens(), c.head_dim)));
      panels_t panels;
      panels.data = reinterpret_cast<typename panels_t::word*>(store.data());
      std::vector<kernels::sparse_item> head_items;
      for (index_t kvh = 0; kvh < c.kv_heads; ++kvh) {
        head_items.clear();
        for (const auto& it : items)
          if (it.kv_head == kvh) head_items.push_back(it);
        panels.pack(kc, kvh, opt.exec);
        run(head_items, &panels);
      }
      return;
    }
  }
  run(items, nullptr);
}

}  // namespace spattn
