#pragma once
// Quest (Tang et al. 2024) as in sparse-frontier's QuestAttention (commit 31d86c1).
//
// Per decode step, for a KV head holding n tokens (the current token included), pages of
// page_size tokens: cur = (n - 1) / page_size is the current page, pages 0 .. cur-1 are complete.
// Every complete page p gets, per query head h (KV head g = h / G), the upper bound
//     u[h][p] = sum_d max(q[h][d] * min[g][p][d], q[h][d] * max[g][p][d])      (no softmax scale)
// With share_pages (default) the score of page p for KV head g is the sum of u over the G query
// heads of its group, and the whole group reads the same pages; otherwise each query head chooses.
// Computed as sum_d (sum_h max(q_hd, 0)) max_d + (sum_h min(q_hd, 0)) min_d, which equals the
// reference's sum_h sum_d max(q min, q max) in exact arithmetic (fp32 rounding order differs):
// one pass over the summaries per KV head however large the group.
// The reference takes the top page_budget + 1 complete pages and replaces the lowest of them with
// the current page, i.e. it reads the top page_budget complete pages plus the current page's n -
// cur * page_size tokens (budget + 1 .. budget + page_size tokens). The current page is never
// scored; no sink page is forced. Ties rank the lower page first.
//
// Budget: policy_default -> token_budget; tokens(t) -> t (a multiple of page_size); a kept
// fraction f -> round(f * n / page_size) pages (at least 1) for a head of n tokens. Coverage
// budgets and adaptive allocation are not Quest's (spattn::error).
//
// Deliberate difference: the reference asserts when cur < page_budget + 1 (short contexts); here
// such a head reads all of its pages (dense), so a budget covering the cache equals dense decode.
#include <string>
#include <vector>

#include "spattn/core/simd.hpp"
#include "spattn/policies/decode_policy.hpp"

namespace spattn::policies {

struct quest {
  index_t token_budget = 1024;  // paper config (quest.yaml); page_budget = token_budget / page_size
  index_t page_size = 16;
  bool share_pages = true;  // pages chosen per KV head from the group's summed scores

  std::string name() const { return "quest"; }

  // Complete pages kept (besides the current page) for a head holding n tokens.
  index_t page_budget(const budget& b, index_t n) const {
    require(page_size >= 1, "quest page_size", ">= 1", page_size);
    spattn::detail::require_allocation(b, allocation::uniform, "quest");
    switch (b.kind()) {
      case budget_kind::policy_default:
        if (!(token_budget >= page_size && token_budget % page_size == 0))
          require(false, "quest token_budget",
                  spattn::detail::concat("a positive multiple of page_size (", page_size, ")"),
                  token_budget);
        return token_budget / page_size;
      case budget_kind::tokens: {
        const auto t = static_cast<index_t>(b.value());
        if (!(t % page_size == 0))
          require(false, "budget tokens",
                  spattn::detail::concat("a multiple of quest page_size (", page_size, ")"), t);
        return t / page_size;
      }
      case budget_kind::ratio: {
        const auto pages = static_cast<index_t>(
            std::llround(b.value() * static_cast<double>(n) / static_cast<double>(page_size)));
        return std::max<index_t>(1, pages);
      }
      default:
        throw error(spattn::detail::concat(
            "argument 'budget': expected a token, kept-fraction or default budget for quest, got ",
            b.describe()));
    }
  }

  // Scores of the complete pages, [selection head][page]: per KV head (group sum) with
  // share_pages, else per query head.
  std::vector<std::vector<float>> page_scores(const decode_inputs& in) const {
    check(in);
    const index_t kvh = in.kv_heads(), heads = in.q.heads(), group = heads / kvh;
    const index_t d = in.q.head_dim();
    std::vector<std::vector<float>> scores(static_cast<std::size_t>(share_pages ? kvh : heads));
    in.exec.parallel_for(kvh, [&](index_t g) {
      const index_t n = in.lengths[static_cast<std::size_t>(g)];
      const index_t complete = n == 0 ? 0 : (n - 1) / page_size;
      // Per row r: q+ = max(q, 0) and q- = min(q, 0), so that
      //   sum_d max(q_d min_d, q_d max_d) = sum_d q+_d max_d + q-_d min_d.
      // Shared pages sum this over the group: one row holding the sums of q+ and of q-.
      const index_t rows = share_pages ? 1 : group;
      std::vector<float> q(static_cast<std::size_t>(d)),
          qp(static_cast<std::size_t>(rows * d), 0.0f),
          qn(static_cast<std::size_t>(rows * d), 0.0f);
      for (index_t r = 0; r < group; ++r) {
        in.q.row_f32(0, g * group + r, q.data());
        const index_t o = share_pages ? 0 : r * d;
        for (index_t x = 0; x < d; ++x) {
          qp[static_cast<std::size_t>(o + x)] += std::max(q[static_cast<std::size_t>(x)], 0.0f);
          qn[static_cast<std::size_t>(o + x)] += std::min(q[static_cast<std::size_t>(x)], 0.0f);
        }
      }
      std::vector<float> u(static_cast<std::size_t>(rows * complete));
      in.page_min[static_cast<std::size_t>(g)].visit([&](const auto& mn) {
        using T = std::remove_cv_t<typename std::remove_cvref_t<decltype(mn)>::element_type>;
        const auto mx = in.page_max[static_cast<std::size_t>(g)].template as<T>();
        score_pages<T>(qp.data(), qn.data(), rows, d, mn, mx, complete, u.data());
      });
      for (index_t r = 0; r < rows; ++r) {
        scores[static_cast<std::size_t>(share_pages ? g : g * group + r)].assign(
            u.begin() + r * complete, u.begin() + (r + 1) * complete);
      }
    });
    return scores;
  }

  decode_selection select(const decode_inputs& in, const budget& b) const {
    const auto scores = page_scores(in);
    const index_t kvh = in.kv_heads(), group = in.q.heads() / kvh;
    const auto heads = static_cast<index_t>(scores.size());
    decode_selection sel;
    sel.page_size = page_size;
    sel.per_query_head = !share_pages;
    sel.group = group;
    sel.pages.resize(static_cast<std::size_t>(heads));
    // Everything that may raise runs here, outside the parallel region.
    std::vector<index_t> budgets;
    for (index_t s = 0; s < heads; ++s) {
      const index_t n = in.lengths[static_cast<std::size_t>(share_pages ? s : s / group)];
      sel.lengths.push_back(n);
      budgets.push_back(n > 0 ? page_budget(b, n) : 0);
      for (const float x : scores[static_cast<std::size_t>(s)]) {
        if (std::isnan(x))
          throw error("argument 'q': expected finite values, got a NaN page score");
      }
    }
    in.exec.parallel_for(heads, [&](index_t s) {
      const index_t n = sel.lengths[static_cast<std::size_t>(s)];
      auto& pages = sel.pages[static_cast<std::size_t>(s)];
      if (n == 0) return;
      const index_t cur = (n - 1) / page_size, pb = budgets[static_cast<std::size_t>(s)];
      if (cur <= pb) {
        for (index_t p = 0; p <= cur; ++p) pages.push_back(p);
      } else {
        pages = spattn::detail::top_k(scores[static_cast<std::size_t>(s)], pb);
        pages.push_back(cur);  // > every complete page: stays sorted
      }
    });
    return sel;
  }

 private:
  void check(const decode_inputs& in) const {
    require(page_size >= 1, "quest page_size", ">= 1", page_size);
    if (!(!in.q.empty() && in.q.tokens() == 1))
      require(false, "q", "one query token [1, heads, head_dim]",
              spattn::detail::concat(in.q.tokens(), " tokens"));
    const index_t kvh = in.kv_heads();
    if (!(kvh > 0 && in.q.heads() % kvh == 0))
      require(false, "q.heads", spattn::detail::concat("a multiple of the KV heads (", kvh, ")"),
              in.q.heads());
    if (!(in.page_size == page_size))
      require(false, "summaries page_size",
              spattn::detail::concat("quest page_size (", page_size,
                                     "); enable the cache's page summaries with it"),
              in.page_size);
    if (!(static_cast<index_t>(in.page_min.size()) == kvh &&
          static_cast<index_t>(in.page_max.size()) == kvh))
      require(false, "page summaries",
              spattn::detail::concat("one min and one max view per KV head (", kvh, ")"),
              in.page_min.size());
    for (index_t g = 0; g < kvh; ++g) {
      const index_t n = in.lengths[static_cast<std::size_t>(g)];
      const auto& mn = in.page_min[static_cast<std::size_t>(g)];
      const auto& mx = in.page_max[static_cast<std::size_t>(g)];
      const index_t pages = (n + page_size - 1) / page_size;
      if (!(mn.tokens() == pages && mx.tokens() == pages && mx.type() == mn.type()))
        require(false, "page summaries",
                spattn::detail::concat(pages, " pages for KV head ", g, " holding ", n, " tokens"),
                spattn::detail::concat(mn.tokens(), " min and ", mx.tokens(), " max pages"));
      require(pages == 0 || (mn.head_dim() == in.q.head_dim() && mx.head_dim() == in.q.head_dim()),
              "page summaries head_dim", in.q.head_dim(), mn.head_dim());
    }
  }

  // u[r * pages + p] = sum_d qp[r][d] * max[p][d] + qn[r][d] * min[p][d], pages [0, pages).
  template <class T>
  static void score_pages(const float* qp, const float* qn, index_t rows, index_t d,
                          const tensor_view<const T>& mn, const tensor_view<const T>& mx,
                          index_t pages, float* u) {
    using simd::vfloat;
    using simd::W;
    const index_t dv = d / W * W;
    // A page's min and max rows are adjacent: prefetch them a few pages ahead (one stream per KV
    // head is too little for the hardware prefetcher to reach memory bandwidth alone).
    constexpr index_t ahead = 8;
    const index_t page_bytes = 2 * d * static_cast<index_t>(sizeof(T));
    for (index_t p = 0; p < pages; ++p) {
      const T* a = mn.row(p, 0);
      const T* b = mx.row(p, 0);
      if (p + ahead < pages) {
        const char* f = reinterpret_cast<const char*>(mn.row(p + ahead, 0));
        for (index_t o = 0; o < page_bytes; o += 64) _mm_prefetch(f + o, _MM_HINT_T0);
      }
      for (index_t r = 0; r < rows; ++r) {
        const float* pr = qp + r * d;
        const float* nr = qn + r * d;
        vfloat acc0(0.0f), acc1(0.0f);
        for (index_t x = 0; x < dv; x += W) {
          acc0 = xsimd::fma(simd::load(pr + x), simd::load_f32(b + x), acc0);
          acc1 = xsimd::fma(simd::load(nr + x), simd::load_f32(a + x), acc1);
        }
        float s = simd::hsum(acc0 + acc1);
        for (index_t x = dv; x < d; ++x) s += pr[x] * to_float(b[x]) + nr[x] * to_float(a[x]);
        u[r * pages + p] = s;
      }
    }
  }
};

static_assert(decode_policy<quest>);

}  // namespace spattn::policies
