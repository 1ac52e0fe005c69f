#pragma once
// The double-precision reference oracle: plain, obviously-correct attention with any mask, used
// as ground truth by every test. It converts the stored values (f16/bf16/f32) exactly to double
// and does all arithmetic in double, so it differs from the kernels only by their fp32 rounding.
#include <Eigen/Dense>
#include <cmath>
#include <functional>
#include <limits>
#include <span>
#include <vector>

#include "spattn/core/error.hpp"
#include "spattn/core/tensor_view.hpp"

namespace spattn::eval {

struct reference_result {
  index_t tokens = 0, heads = 0, head_dim = 0;
  std::vector<double> out;  // [tokens][heads][head_dim]
  std::vector<double> lse;  // [tokens][heads]; -inf for a fully masked row (whose out is 0)
  double o(index_t t, index_t h, index_t x) const {
    return out[static_cast<std::size_t>((t * heads + h) * head_dim + x)];
  }
  double l(index_t t, index_t h) const { return lse[static_cast<std::size_t>(t * heads + h)]; }
};

// Key positions query `q_token` of head `head` attends (any order, no duplicates).
using key_list_fn = std::function<std::vector<index_t>(index_t head, index_t q_token)>;

namespace detail {
template <class T>
Eigen::MatrixXd head_matrix(const tensor_view<T>& x, index_t head) {
  Eigen::MatrixXd m(x.tokens(), x.head_dim());
  for (index_t t = 0; t < x.tokens(); ++t) {
    const auto* r = x.row(t, head);
    for (index_t j = 0; j < x.head_dim(); ++j) m(t, j) = static_cast<double>(to_float(r[j]));
  }
  return m;
}
}  // namespace detail

// Attention over explicit key lists. `rows`: which query tokens to compute (empty: all); rows
// not computed are left NaN. scale 0 means 1/sqrt(head_dim).
template <class Q, class K, class V>
reference_result reference_attention(tensor_view<Q> q, tensor_view<K> k, tensor_view<V> v,
                                     const key_list_fn& keys, double scale = 0.0,
                                     std::span<const index_t> rows = {}) {
  require(q.heads() % k.heads() == 0, "q.heads", "a multiple of k.heads", q.heads());
  require(k.tokens() == v.tokens() && k.heads() == v.heads(), "v", "the shape of k",
          "a different shape");
  require(q.head_dim() == k.head_dim() && k.head_dim() == v.head_dim(), "head_dim",
          "equal for q, k and v", "different values");
  const index_t group = q.heads() / k.heads(), d = q.head_dim();
  if (scale == 0.0) scale = 1.0 / std::sqrt(static_cast<double>(d));
  reference_result r;
  r.tokens = q.tokens();
  r.heads = q.heads();
  r.head_dim = d;
  r.out.assign(static_cast<std::size_t>(q.tokens() * q.heads() * d),
               std::numeric_limits<double>::quiet_NaN());
  r.lse.assign(static_cast<std::size_t>(q.tokens() * q.heads()),
               std::numeric_limits<double>::quiet_NaN());
  std::vector<index_t> all_rows;
  if (rows.empty()) {
    for (index_t t = 0; t < q.tokens(); ++t) all_rows.push_back(t);
    rows = all_rows;
  }
  for (index_t kvh = 0; kvh < k.heads(); ++kvh) {
    const Eigen::MatrixXd km = detail::head_matrix(k, kvh), vm = detail::head_matrix(v, kvh);
    for (index_t g = 0; g < group; ++g) {
      const index_t h = kvh * group + g;
      for (const index_t t : rows) {
        require(t >= 0 && t < q.tokens(), "rows", "query tokens in range", t);
        Eigen::VectorXd qv(d);
        for (index_t j = 0; j < d; ++j) qv(j) = static_cast<double>(to_float(q.row(t, h)[j]));
        const std::vector<index_t> ks = keys(h, t);
        std::vector<double> s(ks.size());
        double m = -std::numeric_limits<double>::infinity();
        for (std::size_t i = 0; i < ks.size(); ++i) {
          require(ks[i] >= 0 && ks[i] < k.tokens(), "key list", "keys in [0, k.tokens)", ks[i]);
          s[i] = scale * km.row(ks[i]).dot(qv);
          m = std::max(m, s[i]);
        }
        Eigen::VectorXd acc = Eigen::VectorXd::Zero(d);
        double sum = 0.0;
        for (std::size_t i = 0; i < ks.size(); ++i) {
          const double p = std::exp(s[i] - m);
          sum += p;
          acc += p * vm.row(ks[i]).transpose();
        }
        for (index_t j = 0; j < d; ++j) {
          r.out[static_cast<std::size_t>((t * r.heads + h) * d + j)] = sum > 0 ? acc(j) / sum : 0.0;
        }
        r.lse[static_cast<std::size_t>(t * r.heads + h)] =
            sum > 0 ? m + std::log(sum) : -std::numeric_limits<double>::infinity();
      }
    }
  }
  return r;
}

// Attention with a mask predicate allowed(head, q_pos, k_pos); query token t sits at position
// q_offset + t (-1: k.tokens - q.tokens, the queries are the last positions).
template <class Q, class K, class V, class Mask>
reference_result reference_attention_masked(tensor_view<Q> q, tensor_view<K> k, tensor_view<V> v,
                                            Mask allowed, double scale = 0.0, index_t q_offset = -1,
                                            std::span<const index_t> rows = {}) {
  if (q_offset < 0) q_offset = k.tokens() - q.tokens();
  const index_t nk = k.tokens();
  return reference_attention(
      q, k, v,
      [&](index_t h, index_t t) {
        std::vector<index_t> ks;
        for (index_t j = 0; j < nk; ++j)
          if (allowed(h, q_offset + t, j)) ks.push_back(j);
        return ks;
      },
      scale, rows);
}

// Causal (or full) dense attention.
template <class Q, class K, class V>
reference_result reference_dense(tensor_view<Q> q, tensor_view<K> k, tensor_view<V> v,
                                 bool causal = true, double scale = 0.0, index_t q_offset = -1,
                                 std::span<const index_t> rows = {}) {
  return reference_attention_masked(
      q, k, v, [causal](index_t, index_t qp, index_t kp) { return !causal || kp <= qp; }, scale,
      q_offset, rows);
}

}  // namespace spattn::eval
