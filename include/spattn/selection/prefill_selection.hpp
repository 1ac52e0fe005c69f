#pragma once
// The prefill selection: which query-key pairs a sparse prefill computes. Plain data, printable
// and comparable. It generalises MInference's vertical-slash index format:
//
//   for every query head h and query block b (query tokens [b*block_q, (b+1)*block_q)):
//     blocks  - sorted start columns of key blocks, each covering block_k consecutive keys
//               [start, start + block_k) (starts need not be aligned; blocks never overlap);
//     columns - sorted extra key columns not covered by any of the block's key blocks.
//
// Query token t sits at position q_offset + t and may see keys [0, q_offset + t] (causal). Blocks
// may reach past a query's position or past k_tokens; those keys are masked (the kernel clips
// them), so only pairs with key <= query position are ever computed. The FLOPs of the attention are
// 4 * head_dim per computed pair (Q.K and P.V); the policy's importance estimation reports its own
// FLOPs in estimation_flops, kept apart.
#include <algorithm>
#include <cstdint>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "spattn/core/error.hpp"
#include "spattn/core/tensor_view.hpp"

namespace spattn {

// Causal pairs of the key interval [a, z) with the queries at positions p0..p1: query p sees
// the keys a..min(p, z - 1). Closed form of sum over p of clamp(p + 1 - a, 0, z - a).
inline index_t interval_pairs(index_t a, index_t z, index_t p0, index_t p1) {
  if (z <= a || p1 < a) return 0;
  const index_t lo = std::max(p0, a), hi = std::min(p1, z - 1);  // rows seeing part of it
  index_t total = 0;
  if (lo <= hi) total += (hi - lo + 1) * (lo + hi + 2 - 2 * a) / 2;
  const index_t full_from = std::max(p0, z);  // rows seeing all of it
  if (full_from <= p1) total += (p1 - full_from + 1) * (z - a);
  return total;
}

struct prefill_selection {
  struct entry {
    std::vector<index_t> blocks;   // start columns of key blocks, ascending, non-overlapping
    std::vector<index_t> columns;  // extra key columns, ascending, outside every block
    friend bool operator==(const entry&, const entry&) = default;
  };

  index_t heads = 0;            // query heads
  index_t q_tokens = 0;         // queries
  index_t k_tokens = 0;         // keys (>= q_offset + q_tokens)
  index_t q_offset = 0;         // position of query 0
  index_t head_dim = 0;         // for FLOP reporting
  index_t block_q = 64;         // query tokens per query block: divides 64 or is a multiple of 64
  index_t block_k = 64;         // keys per key block
  std::vector<entry> entries;   // [heads][q_blocks()], head-major
  double estimation_flops = 0;  // FLOPs the policy spent estimating importance

  prefill_selection() = default;
  prefill_selection(index_t heads_, index_t q_tokens_, index_t k_tokens_, index_t q_offset_,
                    index_t head_dim_, index_t block_q_ = 64, index_t block_k_ = 64)
      : heads(heads_),
        q_tokens(q_tokens_),
        k_tokens(k_tokens_),
        q_offset(q_offset_),
        head_dim(head_dim_),
        block_q(block_q_),
        block_k(block_k_) {
    check_shape();
    entries.resize(static_cast<std::size_t>(heads * q_blocks()));
  }

  index_t q_blocks() const { return block_q > 0 ? (q_tokens + block_q - 1) / block_q : 0; }

  entry& at(index_t h, index_t b) { return entries[index_of(h, b)]; }
  const entry& at(index_t h, index_t b) const { return entries[index_of(h, b)]; }

  // Positions of the first and last query of block b.
  index_t first_position(index_t b) const { return q_offset + b * block_q; }
  index_t last_position(index_t b) const {
    return q_offset + std::min((b + 1) * block_q, q_tokens) - 1;
  }

  // The keys of (h, b) that its last query may see, as sorted disjoint half-open intervals
  // [first, second): blocks clipped to [0, min(k_tokens, last_position(b) + 1)), columns as
  // unit intervals, adjacent pieces merged. Assumes a valid selection.
  void key_intervals(index_t h, index_t b, std::vector<std::pair<index_t, index_t>>& out) const {
    out.clear();
    const entry& e = at(h, b);
    const index_t limit = std::min(k_tokens, last_position(b) + 1);
    auto push = [&](index_t a, index_t z) {
      z = std::min(z, limit);
      if (a >= z) return;
      if (!out.empty() && out.back().second >= a) {
        out.back().second = std::max(out.back().second, z);
      } else {
        out.emplace_back(a, z);
      }
    };
    std::size_t i = 0, j = 0;
    while (i < e.blocks.size() || j < e.columns.size()) {
      if (j == e.columns.size() || (i < e.blocks.size() && e.blocks[i] < e.columns[j])) {
        push(e.blocks[i], e.blocks[i] + block_k);
        ++i;
      } else {
        push(e.columns[j], e.columns[j] + 1);
        ++j;
      }
    }
  }

  // Checks the layout: shape, and for every entry sorted / unique / in range / causal indices.
  // Raises spattn::error naming the head, the query block and the offending index.
  void validate() const {
    check_shape();
    require(entries.size() == static_cast<std::size_t>(heads * q_blocks()), "selection entries",
            detail::lazy("heads * q_blocks = ", heads * q_blocks()), entries.size());
    for (index_t h = 0; h < heads; ++h) {
      for (index_t b = 0; b < q_blocks(); ++b) validate_entry(h, b);
    }
  }

  // Query-key pairs computed (causal, exact), for one head and in total, and the causal total.
  index_t head_pairs(index_t h) const {
    std::vector<std::pair<index_t, index_t>> iv;
    index_t total = 0;
    for (index_t b = 0; b < q_blocks(); ++b) {
      key_intervals(h, b, iv);
      for (const auto& [a, z] : iv)
        total += interval_pairs(a, z, first_position(b), last_position(b));
    }
    return total;
  }
  index_t pairs() const {
    index_t total = 0;
    for (index_t h = 0; h < heads; ++h) total += head_pairs(h);
    return total;
  }
  index_t causal_pairs() const {
    // sum over t of (q_offset + t + 1), per head
    const index_t per_head = q_tokens * q_offset + q_tokens * (q_tokens + 1) / 2;
    return per_head * heads;
  }
  // Fraction of causal pairs computed.
  double density() const {
    const index_t c = causal_pairs();
    return c > 0 ? static_cast<double>(pairs()) / static_cast<double>(c) : 0.0;
  }
  // The reference's own density figure (sparse-frontier §3.5): every key block counted as a full
  // block_q x block_k tile and every column as block_q cells, over the causal pairs.
  double block_density() const {
    double cells = 0;
    for (const auto& e : entries) {
      cells += static_cast<double>(e.blocks.size()) * static_cast<double>(block_q * block_k) +
               static_cast<double>(e.columns.size()) * static_cast<double>(block_q);
    }
    const index_t c = causal_pairs();
    return c > 0 ? cells / static_cast<double>(c) : 0.0;
  }
  // FLOPs of the attention over the selected pairs (Q.K and P.V): 4 * head_dim per pair.
  double attention_flops() const {
    return 4.0 * static_cast<double>(head_dim) * static_cast<double>(pairs());
  }
  double dense_flops() const {
    return 4.0 * static_cast<double>(head_dim) * static_cast<double>(causal_pairs());
  }

  friend bool operator==(const prefill_selection&, const prefill_selection&) = default;

  // Human-readable: a header line, then one line per (head, query block).
  friend std::ostream& operator<<(std::ostream& os, const prefill_selection& s) {
    os << "prefill_selection heads=" << s.heads << " q_tokens=" << s.q_tokens
       << " k_tokens=" << s.k_tokens << " q_offset=" << s.q_offset << " block_q=" << s.block_q
       << " block_k=" << s.block_k << " density=" << s.density()
       << " estimation_flops=" << s.estimation_flops << "\n";
    for (index_t h = 0; h < s.heads; ++h) {
      for (index_t b = 0; b < s.q_blocks(); ++b) {
        const entry& e = s.at(h, b);
        os << "  head " << h << " qblock " << b << " (positions " << s.first_position(b) << ".."
           << s.last_position(b) << "): blocks [";
        for (std::size_t i = 0; i < e.blocks.size(); ++i) os << (i ? ", " : "") << e.blocks[i];
        os << "] columns [";
        for (std::size_t i = 0; i < e.columns.size(); ++i) os << (i ? ", " : "") << e.columns[i];
        os << "]\n";
      }
    }
    return os;
  }

 private:
  std::size_t index_of(index_t h, index_t b) const {
    const index_t nb = q_blocks();
    if (h < 0 || h >= heads) {
      throw error(
          detail::concat("argument 'selection head': expected in [0, ", heads, "), got ", h));
    }
    if (b < 0 || b >= nb) {
      throw error(
          detail::concat("argument 'selection query block': expected in [0, ", nb, "), got ", b));
    }
    return static_cast<std::size_t>(h * nb + b);
  }

  void check_shape() const {
    require(heads > 0, "selection heads", "> 0", heads);
    require(q_tokens >= 0, "selection q_tokens", ">= 0", q_tokens);
    require(q_offset >= 0, "selection q_offset", ">= 0", q_offset);
    require(k_tokens >= q_offset + q_tokens, "selection k_tokens",
            detail::lazy(">= q_offset + q_tokens (", q_offset + q_tokens, ")"), k_tokens);
    require(head_dim >= 0, "selection head_dim", ">= 0", head_dim);
    require(block_q > 0 && (64 % block_q == 0 || block_q % 64 == 0), "selection block_q",
            "a divisor or a multiple of 64", block_q);
    require(block_k > 0, "selection block_k", "> 0", block_k);
  }

  void validate_entry(index_t h, index_t b) const {
    const entry& e = at(h, b);
    const index_t last = last_position(b);
    // Messages are built only on failure (validation runs on every kernel call).
    auto fail = [&](const char* what, const std::string& expected, index_t given) {
      throw error(detail::concat("argument 'selection head ", h, " query block ", b, " ", what,
                                 "': expected ", expected, ", got ", given));
    };
    for (std::size_t i = 0; i < e.blocks.size(); ++i) {
      const index_t s = e.blocks[i];
      if (s < 0) fail("blocks", "start columns >= 0", s);
      if (s > last) {
        fail("blocks",
             detail::concat("causal start columns <= the block's last query position (", last, ")"),
             s);
      }
      if (i > 0 && s < e.blocks[i - 1] + block_k) {
        fail("blocks",
             detail::concat("sorted, non-overlapping starts (>= ", e.blocks[i - 1] + block_k,
                            " after ", e.blocks[i - 1], ")"),
             s);
      }
    }
    std::size_t bi = 0;
    for (std::size_t i = 0; i < e.columns.size(); ++i) {
      const index_t c = e.columns[i];
      if (c < 0) fail("columns", "columns >= 0", c);
      if (c > last) {
        fail("columns",
             detail::concat("causal columns <= the block's last query position (", last, ")"), c);
      }
      if (i > 0 && c <= e.columns[i - 1]) {
        fail("columns", detail::concat("sorted, unique columns (> ", e.columns[i - 1], ")"), c);
      }
      while (bi < e.blocks.size() && e.blocks[bi] + block_k <= c) ++bi;
      if (bi < e.blocks.size() && e.blocks[bi] <= c) {
        fail("columns", detail::concat("columns outside the key blocks (block ", e.blocks[bi], ")"),
             c);
      }
    }
  }
};

}  // namespace spattn
