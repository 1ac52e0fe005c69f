#pragma once
// Metrics for comparing attention methods (issue 6), per method x budget:
//  - density:         computed query-key pairs / causal pairs;
//  - FLOPs:           4 * head_dim per computed pair (Q.K and P.V), with the method's importance
//                     estimation FLOPs reported apart (isoFLOPS comparisons add both);
//  - output error:    ||o - o_dense|| / ||o_dense|| per head and overall (Frobenius over rows);
//  - mass recall:     the fraction of the dense softmax mass that falls on the kept keys,
//                     computed exactly in double from Q and K;
//  - needle recall:   whether each needle key is kept for the query and head that retrieves it.
// A method's selection is seen here as a key set: keys(head, q_token) -> the sorted key positions
// query token q_token (at position q_offset + q_token) of query head `head` attends. This is
// independent of how a policy stores its selection (blocks, columns, pages, kept tokens).
#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "spattn/core/error.hpp"
#include "spattn/core/executor.hpp"
#include "spattn/core/tensor_view.hpp"
#include "spattn/eval/synthetic.hpp"

namespace spattn::eval {

using key_set_fn = std::function<std::vector<index_t>(index_t head, index_t q_token)>;

// Pairs a causal attention computes for q_tokens queries at positions [q_offset, q_offset + q)
// over k_tokens keys (per head).
inline double causal_pairs(index_t q_tokens, index_t k_tokens, index_t q_offset) {
  require(q_tokens >= 0 && k_tokens >= 0, "tokens", ">= 0", q_tokens < 0 ? q_tokens : k_tokens);
  require(q_offset >= 0 && q_offset + q_tokens <= k_tokens, "q_offset",
          spattn::detail::lazy("in [0, ", k_tokens - q_tokens, "]"), q_offset);
  // sum over t of (q_offset + t + 1)
  const double a = static_cast<double>(q_offset), n = static_cast<double>(q_tokens);
  return n * (a + 1.0) + n * (n - 1.0) / 2.0;
}

inline double attention_flops(double pairs, index_t head_dim) {
  return 4.0 * static_cast<double>(head_dim) * pairs;
}

// Raises spattn::error unless `keys` is sorted, unique, in [0, position] (causal).
inline void check_key_set(const std::vector<index_t>& keys, index_t head, index_t q_token,
                          index_t position) {
  for (std::size_t i = 0; i < keys.size(); ++i) {
    const bool ok = keys[i] >= 0 && keys[i] <= position && (i == 0 || keys[i] > keys[i - 1]);
    if (!ok)
      throw error(spattn::detail::concat("argument 'key set': expected sorted unique keys in [0, ",
                                         position, "] for head ", head, ", query ", q_token,
                                         ", got key ", keys[i], " at index ", i));
  }
}

// Computed pairs of a key set over all heads and queries (validates every list).
inline double count_pairs(const key_set_fn& keys, index_t heads, index_t q_tokens,
                          index_t q_offset) {
  double n = 0;
  for (index_t h = 0; h < heads; ++h) {
    for (index_t t = 0; t < q_tokens; ++t) {
      const auto ks = keys(h, t);
      check_key_set(ks, h, t, q_offset + t);
      n += static_cast<double>(ks.size());
    }
  }
  return n;
}

// ||a - b|| / ||b|| per head and overall, for [rows, heads, head_dim] arrays (row-major).
struct relative_error {
  std::vector<double> per_head;
  double overall = 0;
};

template <class A, class B>
relative_error relative_error_of(std::span<const A> a, std::span<const B> b, index_t heads,
                                 index_t head_dim) {
  require(a.size() == b.size(), "output size", b.size(), a.size());
  require(heads > 0 && head_dim > 0 && a.size() % static_cast<std::size_t>(heads * head_dim) == 0,
          "output size", "a multiple of heads * head_dim", a.size());
  std::vector<double> num(static_cast<std::size_t>(heads)), den(num.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    const auto h = (i / static_cast<std::size_t>(head_dim)) % static_cast<std::size_t>(heads);
    const double x = static_cast<double>(a[i]), y = static_cast<double>(b[i]);
    num[h] += (x - y) * (x - y);
    den[h] += y * y;
  }
  relative_error r;
  double tn = 0, td = 0;
  for (std::size_t h = 0; h < num.size(); ++h) {
    r.per_head.push_back(den[h] > 0 ? std::sqrt(num[h] / den[h]) : (num[h] > 0 ? INFINITY : 0.0));
    tn += num[h];
    td += den[h];
  }
  r.overall = td > 0 ? std::sqrt(tn / td) : (tn > 0 ? INFINITY : 0.0);
  return r;
}

// Accuracy of one key set against dense causal attention, on the evaluated query rows.
struct key_set_accuracy {
  std::vector<double> mass_recall_per_head;  // mean over rows
  double mass_recall = 0;                    // mean over heads and rows
  double min_mass_recall = 1;                // worst (head, row)
  relative_error error;                      // of the key-set output against dense
  std::vector<double> out;                   // [rows, heads, head_dim]: output over the key set
};

struct dense_rows {
  std::vector<index_t> rows;  // query tokens evaluated
  std::vector<double> out;    // [rows, heads, head_dim]: dense causal output
};

// Evaluates several key sets at once against dense causal attention, exactly in double, on the
// query tokens `rows` (queries at positions q_offset + t; -1: the last k.tokens - q.tokens).
// For each (head, row) the dense logits are computed once; each key set's mass recall is the
// softmax mass of its keys, its output the softmax over its keys alone (renormalised).
template <class Q, class K, class V>
std::vector<key_set_accuracy> evaluate_key_sets(tensor_view<Q> q, tensor_view<K> k,
                                                tensor_view<V> v, std::span<const key_set_fn> sets,
                                                std::span<const index_t> rows, double scale = 0.0,
                                                index_t q_offset = -1,
                                                const executor& exec = executor::openmp(),
                                                dense_rows* dense = nullptr) {
  require(q.heads() % k.heads() == 0, "q.heads", "a multiple of k.heads", q.heads());
  require(k.tokens() == v.tokens() && k.heads() == v.heads(), "v", "the shape of k",
          "a different shape");
  require(q.head_dim() == k.head_dim() && k.head_dim() == v.head_dim(), "head_dim",
          "equal for q, k and v", "different values");
  if (q_offset < 0) q_offset = k.tokens() - q.tokens();
  require(q_offset + q.tokens() <= k.tokens(), "q_offset", "queries inside the key sequence",
          q_offset);
  const index_t H = q.heads(), D = q.head_dim(), G = q.heads() / k.heads();
  const auto R = static_cast<index_t>(rows.size());
  if (scale == 0.0) scale = 1.0 / std::sqrt(static_cast<double>(D));
  for (index_t t : rows) require(t >= 0 && t < q.tokens(), "rows", "query tokens in range", t);
  const std::size_t S = sets.size();
  std::vector<key_set_accuracy> acc(S);
  for (auto& a : acc) {
    a.out.assign(static_cast<std::size_t>(R * H * D), 0.0);
    a.mass_recall_per_head.assign(static_cast<std::size_t>(H), 0.0);
  }
  std::vector<double> dense_out(static_cast<std::size_t>(R * H * D));
  std::vector<double> recall(S * static_cast<std::size_t>(R * H));
  auto at = [](auto& vec, index_t i, index_t h, index_t H_, index_t D_) {
    return vec.data() + (i * H_ + h) * D_;
  };
  // One task per (head, row); each writes only its own slots.
  exec.parallel_for(H * R, [&](index_t task) {
    const index_t h = task / R, i = task % R, t = rows[static_cast<std::size_t>(i)];
    const index_t kh = h / G, pos = q_offset + t;
    std::vector<double> qd(static_cast<std::size_t>(D)), logit(static_cast<std::size_t>(pos + 1));
    for (index_t x = 0; x < D; ++x)
      qd[static_cast<std::size_t>(x)] = static_cast<double>(to_float(q.row(t, h)[x]));
    double m = -std::numeric_limits<double>::infinity();
    for (index_t j = 0; j <= pos; ++j) {
      const auto* kr = k.row(j, kh);
      double s = 0;
      for (index_t x = 0; x < D; ++x)
        s += qd[static_cast<std::size_t>(x)] * static_cast<double>(to_float(kr[x]));
      logit[static_cast<std::size_t>(j)] = s * scale;
      m = std::max(m, s * scale);
    }
    double z = 0;
    for (auto& l : logit) z += (l = std::exp(l - m));  // now unnormalised probabilities
    double* od = at(dense_out, i, h, H, D);
    for (index_t j = 0; j <= pos; ++j) {
      const double p = logit[static_cast<std::size_t>(j)] / z;
      const auto* vr = v.row(j, kh);
      for (index_t x = 0; x < D; ++x) od[x] += p * static_cast<double>(to_float(vr[x]));
    }
    for (std::size_t si = 0; si < S; ++si) {
      const auto ks = sets[si](h, t);
      check_key_set(ks, h, t, pos);
      double zs = 0;
      for (index_t j : ks) zs += logit[static_cast<std::size_t>(j)];
      double* os = at(acc[si].out, i, h, H, D);
      if (zs > 0) {
        for (index_t j : ks) {
          const double p = logit[static_cast<std::size_t>(j)] / zs;
          const auto* vr = v.row(j, kh);
          for (index_t x = 0; x < D; ++x) os[x] += p * static_cast<double>(to_float(vr[x]));
        }
      }
      recall[si * static_cast<std::size_t>(R * H) + static_cast<std::size_t>(h * R + i)] = zs / z;
    }
  });
  for (std::size_t si = 0; si < S; ++si) {
    auto& a = acc[si];
    double total = 0;
    for (index_t h = 0; h < H; ++h) {
      double sum = 0;
      for (index_t i = 0; i < R; ++i) {
        const double r =
            recall[si * static_cast<std::size_t>(R * H) + static_cast<std::size_t>(h * R + i)];
        sum += r;
        a.min_mass_recall = std::min(a.min_mass_recall, r);
      }
      a.mass_recall_per_head[static_cast<std::size_t>(h)] = R ? sum / static_cast<double>(R) : 1.0;
      total += sum;
    }
    a.mass_recall = R ? total / static_cast<double>(R * H) : 1.0;
    a.error = relative_error_of<double, double>(a.out, dense_out, H, D);
  }
  if (dense) {
    dense->rows.assign(rows.begin(), rows.end());
    dense->out = std::move(dense_out);
  }
  return acc;
}

// Needle recall: whether each needle's key is in the key set of its head and query. Needles whose
// query is not among the phase's queries (positions [q_offset, q_offset + q_tokens)) are skipped.
struct needle_recall {
  index_t found = 0, total = 0;
  std::vector<needle> evaluated;
  std::vector<bool> kept;  // per evaluated needle
  double fraction() const {
    return total ? static_cast<double>(found) / static_cast<double>(total) : 1.0;
  }
};

inline needle_recall needle_recall_of(std::span<const needle> needles, const key_set_fn& keys,
                                      index_t q_offset, index_t q_tokens) {
  needle_recall r;
  for (const needle& n : needles) {
    const index_t t = n.query - q_offset;
    if (t < 0 || t >= q_tokens) continue;
    const auto ks = keys(n.head, t);
    const bool kept = std::binary_search(ks.begin(), ks.end(), n.key);
    r.evaluated.push_back(n);
    r.kept.push_back(kept);
    r.total += 1;
    r.found += kept ? 1 : 0;
  }
  return r;
}

// Query rows to evaluate for a phase: about `count` rows evenly spread (always the last one), plus
// every needle query that falls inside the phase; sorted, unique.
inline std::vector<index_t> evaluation_rows(index_t q_tokens, index_t q_offset, index_t count,
                                            std::span<const needle> needles = {}) {
  std::vector<index_t> r;
  if (q_tokens <= 0) return r;
  if (count >= q_tokens) {
    for (index_t t = 0; t < q_tokens; ++t) r.push_back(t);
  } else {
    for (index_t i = 0; i < count; ++i) r.push_back((i + 1) * q_tokens / count - 1);
  }
  for (const needle& n : needles) {
    const index_t t = n.query - q_offset;
    if (t >= 0 && t < q_tokens) r.push_back(t);
  }
  std::sort(r.begin(), r.end());
  r.erase(std::unique(r.begin(), r.end()), r.end());
  return r;
}

}  // namespace spattn::eval
