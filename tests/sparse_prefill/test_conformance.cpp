// One conformance suite for every prefill policy, including the user-defined policy of
// examples/custom_policy.cpp: the selection is valid, deterministic (also across thread counts),
// within its budget and holds the policy's forced parts; the kernel's output over it equals the
// oracle restricted to the same selection.
#define SPATTN_EXAMPLE_NO_MAIN
#include "../../examples/custom_policy.cpp"
#include "sparse_support.hpp"
#include "spattn/policies/a_shape.hpp"
#include "spattn/policies/block_sparse.hpp"
#include "spattn/policies/dense.hpp"
#include "spattn/policies/flexprefill.hpp"
#include "spattn/policies/vertical_slash.hpp"

using namespace spattn;
using namespace spattn::test;

namespace {

// Budgets each policy is checked under, and the keys it must always keep for a query at position
// `pos` (from each method's definition, not from its code).
template <class P>
struct traits;

template <>
struct traits<policies::dense> {
  static std::vector<budget> budgets() { return {budget::policy_default(), budget::kept(1.0)}; }
  static std::vector<index_t> forced(const policies::dense&, index_t pos) {
    std::vector<index_t> r;
    for (index_t j = 0; j <= pos; ++j) r.push_back(j);
    return r;
  }
};

template <>
struct traits<policies::a_shape> {
  static std::vector<budget> budgets() {
    return {budget::policy_default(), budget::compression(4), budget::tokens(150)};
  }
  static std::vector<index_t> forced(const policies::a_shape& p, index_t pos) {
    std::vector<index_t> r;  // the sinks and the query itself
    for (index_t j = 0; j < std::min(p.sink_tokens, pos + 1); ++j) r.push_back(j);
    r.push_back(pos);
    return r;
  }
};

std::vector<index_t> vs_forced(index_t pos) {
  std::vector<index_t> r;  // columns 0..3 and offsets 0..63
  for (index_t j = 0; j < std::min<index_t>(4, pos + 1); ++j) r.push_back(j);
  for (index_t o = 0; o < 64 && o <= pos; ++o) r.push_back(pos - o);
  return r;
}

template <>
struct traits<policies::vertical_slash> {
  static std::vector<budget> budgets() {
    return {budget::policy_default(), budget::compression(3), budget::tokens(250),
            budget::compression(3, allocation::adaptive),
            budget::tokens(250, allocation::adaptive)};
  }
  static std::vector<index_t> forced(const policies::vertical_slash&, index_t pos) {
    return vs_forced(pos);
  }
};

template <>
struct traits<policies::flexprefill> {
  static std::vector<budget> budgets() {
    return {budget::policy_default(), budget::coverage(0.3), budget::compression(3),
            budget::coverage(0.3, allocation::adaptive),
            budget::compression(3, allocation::adaptive)};
  }
  static std::vector<index_t> forced(const policies::flexprefill&, index_t pos) {
    return vs_forced(pos);
  }
};

template <>
struct traits<policies::block_sparse> {
  static std::vector<budget> budgets() {
    return {budget::policy_default(), budget::compression(3), budget::tokens(200),
            budget::compression(3, allocation::adaptive),
            budget::tokens(200, allocation::adaptive)};
  }
  static std::vector<index_t> forced(const policies::block_sparse& p, index_t pos) {
    const index_t c = p.chunk_size, m = pos / c;
    std::vector<index_t> r;  // chunk 0, the previous chunk and the diagonal chunk
    for (index_t j = 0; j < std::min(c, pos + 1); ++j) r.push_back(j);
    if (m >= 1)
      for (index_t j = (m - 1) * c; j < m * c; ++j) r.push_back(j);
    for (index_t j = m * c; j <= pos; ++j) r.push_back(j);
    return r;
  }
};

template <>
struct traits<strided_policy> {
  static std::vector<budget> budgets() { return {budget::policy_default()}; }
  static std::vector<index_t> forced(const strided_policy&, index_t pos) {
    std::vector<index_t> r;  // block 0 and the query's own key block
    for (index_t j = 0; j < std::min<index_t>(64, pos + 1); ++j) r.push_back(j);
    for (index_t j = pos / 64 * 64; j <= pos; ++j) r.push_back(j);
    return r;
  }
};

struct shape {
  index_t nq, nk, heads, kv_heads, d;
};

template <class P>
void conformance(const shape& s, std::uint64_t seed, bool defaults_only = false) {
  const P policy{};
  REQUIRE(!policy.name().empty());
  auto q = random_tensor<float>(s.nq, s.heads, s.d, seed);
  auto k = random_tensor<bf16>(s.nk, s.kv_heads, s.d, seed + 1, 1.5f);
  auto v = random_tensor<bf16>(s.nk, s.kv_heads, s.d, seed + 2);
  prefill_inputs in{q.cview(), k.cview()};
  in.exec = executor::openmp(2);
  prefill_inputs serial_in = in;
  serial_in.exec = executor::serial();
  const index_t offset = s.nk - s.nq;
  for (const budget& b : traits<P>::budgets()) {
    if (defaults_only && !b.is_default()) continue;
    INFO(policy.name() << " budget " << b.describe() << " nq=" << s.nq << " nk=" << s.nk);
    const prefill_selection sel = policy.select(in, b);
    // Valid and shaped like the inputs.
    REQUIRE_NOTHROW(sel.validate());
    CHECK(sel.heads == s.heads);
    CHECK(sel.q_tokens == s.nq);
    CHECK(sel.k_tokens == s.nk);
    CHECK(sel.q_offset == offset);
    // Deterministic, whatever the threads.
    CHECK(policy.select(in, b) == sel);
    CHECK(policy.select(serial_in, b) == sel);
    // Budget respected: per head (uniform allocation) or over all heads (adaptive).
    const index_t causal = sel.causal_pairs() / s.heads;
    const double per_head = b.kind() == budget_kind::ratio ? b.value() * static_cast<double>(causal)
                            : b.kind() == budget_kind::tokens
                                ? b.value() * static_cast<double>(s.nq)
                                : -1.0;
    if (per_head >= 0 && b.alloc() == allocation::adaptive) {
      CHECK(static_cast<double>(sel.pairs()) <= per_head * static_cast<double>(s.heads));
    } else if (per_head >= 0) {
      for (index_t h = 0; h < s.heads; ++h)
        CHECK(static_cast<double>(sel.head_pairs(h)) <= per_head);
    }
    CHECK(sel.density() > 0.0);
    CHECK(sel.density() <= 1.0);
    // Forced parts present (every row of every head).
    bool forced_ok = true;
    for (index_t h = 0; h < s.heads && forced_ok; ++h) {
      for (index_t t = 0; t < s.nq && forced_ok; ++t) {
        const auto keys = selected_keys(sel, h, t);
        for (index_t j : traits<P>::forced(policy, offset + t)) {
          if (!std::binary_search(keys.begin(), keys.end(), j)) {
            forced_ok = false;
            FAIL_CHECK("head " << h << " token " << t << " misses forced key " << j);
            break;
          }
        }
      }
    }
    // The kernel over this selection equals the oracle restricted to it.
    check_kernel_matches_oracle<float>(q, k, v, sel, 2, 30);
  }
}

}  // namespace

static_assert(prefill_policy<policies::dense>);
static_assert(prefill_policy<policies::a_shape>);
static_assert(prefill_policy<policies::vertical_slash>);
static_assert(prefill_policy<policies::block_sparse>);
static_assert(prefill_policy<policies::flexprefill>);
static_assert(prefill_policy<strided_policy>);

TEMPLATE_TEST_CASE("prefill policy conformance", "[sparse][policy][conformance]", policies::dense,
                   policies::a_shape, policies::vertical_slash, policies::block_sparse,
                   policies::flexprefill, strided_policy) {
  SECTION("whole prompt, GQA") {
    conformance<TestType>({1100, 1100, 4, 2, 64}, 7);
  }
  SECTION("chunked prefill: queries at an offset") {
    conformance<TestType>({320, 960, 4, 1, 64}, 8);
  }
  SECTION("short prompt") {
    conformance<TestType>({100, 100, 2, 2, 64}, 9, true);
  }
}
