// Bad budgets, bad policy parameters and bad selections raise spattn::error naming the problem;
// structs that do not satisfy the policy concept are rejected at compile time.
#include "sparse_support.hpp"
#include "spattn/policies/a_shape.hpp"
#include "spattn/policies/block_sparse.hpp"
#include "spattn/policies/dense.hpp"
#include "spattn/policies/flexprefill.hpp"
#include "spattn/policies/vertical_slash.hpp"

using namespace spattn;
using namespace spattn::test;
using Catch::Matchers::Contains;

namespace {

// Must-not-satisfy: each struct breaks one requirement of prefill_policy.
struct no_name {
  prefill_selection select(const prefill_inputs&, const budget&) const { return {}; }
};
struct name_not_string {
  int name() const { return 0; }
  prefill_selection select(const prefill_inputs&, const budget&) const { return {}; }
};
struct select_not_const {
  std::string name() const { return "x"; }
  prefill_selection select(const prefill_inputs&, const budget&) { return {}; }
};
struct select_wrong_result {
  std::string name() const { return "x"; }
  std::vector<index_t> select(const prefill_inputs&, const budget&) const { return {}; }
};
struct select_without_budget {
  std::string name() const { return "x"; }
  prefill_selection select(const prefill_inputs&) const { return {}; }
};
struct computes_outputs {  // takes values and an output: not a policy's job
  std::string name() const { return "x"; }
  void select(const prefill_inputs&, const budget&, tensor_view<float>) const {}
};
struct not_copyable {
  not_copyable() = default;
  not_copyable(const not_copyable&) = delete;
  std::string name() const { return "x"; }
  prefill_selection select(const prefill_inputs&, const budget&) const { return {}; }
};
struct no_default_constructor {
  explicit no_default_constructor(int) {}
  std::string name() const { return "x"; }
  prefill_selection select(const prefill_inputs&, const budget&) const { return {}; }
};
struct good {
  std::string name() const { return "good"; }
  prefill_selection select(const prefill_inputs&, const budget&) const { return {}; }
};

static_assert(!prefill_policy<no_name>);
static_assert(!prefill_policy<name_not_string>);
static_assert(!prefill_policy<select_not_const>);
static_assert(!prefill_policy<select_wrong_result>);
static_assert(!prefill_policy<select_without_budget>);
static_assert(!prefill_policy<computes_outputs>);
static_assert(!prefill_policy<not_copyable>);
static_assert(!prefill_policy<no_default_constructor>);
static_assert(!prefill_policy<int>);
static_assert(prefill_policy<good>);  // the control: the checks above fail for their own reason

struct inputs {
  tensor<float> q = random_tensor<float>(300, 4, 64, 1);
  tensor<float> k = random_tensor<float>(300, 2, 64, 2);
  prefill_inputs in() const { return {q.cview(), k.cview()}; }
};

}  // namespace

TEST_CASE("budgets that cannot be met raise", "[sparse][errors][budget]") {
  CHECK_THROWS_AS(budget::kept(0.0), spattn::error);
  CHECK_THROWS_AS(budget::kept(std::nan("")), spattn::error);
  CHECK_THROWS_AS(budget::kept(1.5), spattn::error);
  CHECK_THROWS_AS(budget::compression(0.5), spattn::error);
  CHECK_THROWS_AS(budget::coverage(0.0), spattn::error);
  CHECK_THROWS_AS(budget::coverage(1.01), spattn::error);
  CHECK_THROWS_AS(budget::tokens(0), spattn::error);
  const inputs x;
  const auto in = x.in();
  // More tokens than the sequence.
  CHECK_THROWS_WITH(policies::a_shape{}.select(in, budget::tokens(301)), Contains("budget tokens"));
  CHECK_THROWS_AS(policies::vertical_slash{}.select(in, budget::tokens(301)), spattn::error);
  CHECK_THROWS_AS(policies::block_sparse{}.select(in, budget::tokens(301)), spattn::error);
  // Smaller than the forced parts.
  CHECK_THROWS_WITH(policies::vertical_slash{}.select(in, budget::compression(20)),
                    Contains("forced parts"));
  CHECK_THROWS_WITH(policies::flexprefill{}.select(in, budget::compression(20)),
                    Contains("forced parts"));
  CHECK_THROWS_WITH(policies::block_sparse{}.select(in, budget::compression(20)),
                    Contains("forced chunks"));
  CHECK_THROWS_AS(policies::a_shape{}.select(in, budget::tokens(1)), spattn::error);
  // Budgets a policy has no form for.
  CHECK_THROWS_WITH(policies::dense{}.select(in, budget::compression(2)), Contains("dense"));
  CHECK_THROWS_AS(policies::a_shape{}.select(in, budget::coverage(0.9)), spattn::error);
  CHECK_THROWS_AS(policies::vertical_slash{}.select(in, budget::coverage(0.9)), spattn::error);
  CHECK_THROWS_AS(policies::block_sparse{}.select(in, budget::coverage(0.9)), spattn::error);
  // A-shape is a fixed pattern: nothing to share a budget by.
  CHECK_THROWS_WITH(policies::a_shape{}.select(in, budget::kept(0.5, allocation::adaptive)),
                    Contains("allocation"));
  // Adaptive budgets too small for the forced parts of all heads together.
  CHECK_THROWS_WITH(
      policies::vertical_slash{}.select(in, budget::compression(20, allocation::adaptive)),
      Contains("over all heads"));
  CHECK_THROWS_WITH(
      policies::block_sparse{}.select(in, budget::compression(20, allocation::adaptive)),
      Contains("forced chunks"));
}

TEST_CASE("bad policy parameters and inputs raise", "[sparse][errors]") {
  const inputs x;
  const auto in = x.in();
  policies::vertical_slash vs;
  vs.vertical_size = 3;
  CHECK_THROWS_WITH(vs.select(in, budget::policy_default()), Contains("vertical_size"));
  vs = {};
  vs.slash_size = 63;
  CHECK_THROWS_WITH(vs.select(in, budget::policy_default()), Contains("slash_size"));
  policies::block_sparse bs;
  bs.chunk_size = 12;
  CHECK_THROWS_WITH(bs.select(in, budget::policy_default()), Contains("chunk_size"));
  bs = {};
  bs.top_chunks = 2;
  CHECK_THROWS_WITH(bs.select(in, budget::policy_default()), Contains("top_chunks"));
  policies::flexprefill fp;
  fp.alpha = 0.0;
  CHECK_THROWS_WITH(fp.select(in, budget::policy_default()), Contains("alpha"));
  policies::a_shape as;
  as.window = 0;
  CHECK_THROWS_WITH(as.select(in, budget::policy_default()), Contains("window"));
  // Chunked prefill for block-sparse needs chunk-aligned offsets.
  auto q = random_tensor<float>(100, 4, 64, 3);
  prefill_inputs off{q.cview(), x.k.cview(), 5};
  CHECK_THROWS_WITH(policies::block_sparse{}.select(off, budget::policy_default()),
                    Contains("q_offset"));
  // Heads not divisible, queries past the keys.
  auto q3 = random_tensor<float>(300, 3, 64, 4);
  CHECK_THROWS_WITH(policies::dense{}.select({q3.cview(), x.k.cview()}, budget::policy_default()),
                    Contains("q.heads"));
  prefill_inputs past{q.cview(), x.k.cview(), 250};
  CHECK_THROWS_WITH(policies::dense{}.select(past, budget::policy_default()), Contains("q_offset"));
}

TEST_CASE("bad selections raise, naming the head, block and index", "[sparse][errors][selection]") {
  auto fresh = [] {
    prefill_selection s(2, 200, 200, 0, 64, 64, 64);
    s.at(1, 2).blocks = {0, 64};
    s.at(1, 2).columns = {130};
    return s;
  };
  REQUIRE_NOTHROW(fresh().validate());
  auto s = fresh();
  s.at(1, 2).blocks = {64, 0};
  CHECK_THROWS_WITH(s.validate(), Contains("head 1 query block 2 blocks") && Contains("sorted"));
  s = fresh();
  s.at(1, 2).blocks = {0, 32};
  CHECK_THROWS_WITH(s.validate(), Contains("non-overlapping"));
  s = fresh();
  s.at(1, 2).blocks = {0, 64, 192};  // block 2's last position is 191
  CHECK_THROWS_WITH(s.validate(), Contains("causal") && Contains("191"));
  s = fresh();
  s.at(1, 2).blocks = {-1};
  CHECK_THROWS_WITH(s.validate(), Contains(">= 0"));
  s = fresh();
  s.at(1, 2).columns = {130, 130};
  CHECK_THROWS_WITH(s.validate(), Contains("unique"));
  s = fresh();
  s.at(1, 2).columns = {140, 130};
  CHECK_THROWS_WITH(s.validate(), Contains("sorted"));
  s = fresh();
  s.at(1, 2).columns = {10};
  CHECK_THROWS_WITH(s.validate(), Contains("outside the key blocks"));
  s = fresh();
  s.at(0, 0).columns = {64};  // block 0's last position is 63
  CHECK_THROWS_WITH(s.validate(), Contains("head 0 query block 0 columns") && Contains("causal"));
  s = fresh();
  s.at(0, 3).columns = {-2};
  CHECK_THROWS_AS(s.validate(), spattn::error);
  s = fresh();
  s.entries.pop_back();
  CHECK_THROWS_WITH(s.validate(), Contains("entries"));
  CHECK_THROWS_WITH(prefill_selection(2, 200, 200, 0, 64, 48, 64), Contains("block_q"));
  CHECK_THROWS_WITH(prefill_selection(2, 200, 150, 0, 64), Contains("k_tokens"));
  CHECK_THROWS_WITH(prefill_selection(0, 200, 200, 0, 64), Contains("heads"));
  CHECK_THROWS_AS(fresh().at(2, 0), spattn::error);

  // The kernel validates too, and checks the selection against the tensors.
  auto q = random_tensor<float>(200, 2, 64, 1);
  auto k = random_tensor<float>(200, 1, 64, 2);
  tensor<float> out(200, 2, 64);
  s = fresh();
  s.at(1, 2).columns = {10};
  CHECK_THROWS_AS(sparse_prefill(q.cview(), k.cview(), k.cview(), out.view(), s), spattn::error);
  prefill_selection other(4, 200, 200, 0, 64);
  CHECK_THROWS_WITH(sparse_prefill(q.cview(), k.cview(), k.cview(), out.view(), other),
                    Contains("selection heads"));
  prefill_selection shifted(2, 200, 300, 100, 64);
  CHECK_THROWS_WITH(sparse_prefill(q.cview(), k.cview(), k.cview(), out.view(), shifted),
                    Contains("k_tokens"));
  attention_options opt;
  opt.causal = false;
  CHECK_THROWS_WITH(sparse_prefill(q.cview(), k.cview(), k.cview(), out.view(), fresh(), {}, opt),
                    Contains("causal"));
  opt = {};
  opt.q_offset = 3;
  CHECK_THROWS_WITH(sparse_prefill(q.cview(), k.cview(), k.cview(), out.view(), fresh(), {}, opt),
                    Contains("q_offset"));
}

TEST_CASE("selections print, compare and report density and FLOPs", "[sparse][selection]") {
  prefill_selection s(1, 128, 128, 0, 32, 64, 64);
  s.at(0, 0).blocks = {0};
  s.at(0, 1).blocks = {64};
  s.at(0, 1).columns = {0, 5};
  s.estimation_flops = 123;
  std::ostringstream os;
  os << s;
  CHECK_THAT(os.str(), Contains("head 0 qblock 1 (positions 64..127): blocks [64] columns [0, 5]"));
  CHECK_THAT(os.str(), Contains("estimation_flops=123"));
  // Pairs: block 0 is the causal triangle (64*65/2); block 1 rows see 64..p (triangle) + 2 columns.
  const index_t pairs = 64 * 65 / 2 + 64 * 65 / 2 + 2 * 64;
  CHECK(s.pairs() == pairs);
  CHECK(s.causal_pairs() == 128 * 129 / 2);
  CHECK(s.density() == static_cast<double>(pairs) / (128 * 129 / 2));
  CHECK(s.attention_flops() == 4.0 * 32 * pairs);
  auto t = s;
  CHECK(t == s);
  t.at(0, 1).columns.push_back(6);
  CHECK(t != s);
}
