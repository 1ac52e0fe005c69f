// KV caches (contiguous and paged) and Quest page summaries: contents, incremental summaries,
// exact memory footprint, compaction, and bad input.
#include "decode_support.hpp"

using namespace spattn;
using namespace spattn::policies;
using namespace spattn::test;

namespace {

// Summaries recomputed from scratch: element-wise min / max over each page's stored keys.
template <class T, class Cache>
void check_summaries_match_recomputation(const Cache& cache) {
  const auto* s = cache.summaries();
  REQUIRE(s != nullptr);
  const index_t d = cache.head_dim(), ps = s->page_size();
  for (index_t h = 0; h < cache.kv_heads(); ++h) {
    const index_t n = cache.length(h);
    REQUIRE(s->length(h) == n);
    REQUIRE(s->pages(h) == (n + ps - 1) / ps);
    const auto keys = cache.key_rows(h);
    for (index_t p = 0; p < s->pages(h); ++p) {
      for (index_t x = 0; x < d; ++x) {
        float mn = INFINITY, mx = -INFINITY;
        for (index_t t = p * ps; t < std::min(n, (p + 1) * ps); ++t) {
          mn = std::min(mn, to_float(keys(t)[x]));
          mx = std::max(mx, to_float(keys(t)[x]));
        }
        INFO("head " << h << " page " << p << " dim " << x);
        REQUIRE(to_float(s->min_row(h, p)[x]) == mn);
        REQUIRE(to_float(s->max_row(h, p)[x]) == mx);
      }
    }
  }
}

template <class T>
void check_append_and_summaries(index_t page_size) {
  const index_t kvh = 3, d = 24;
  kv_cache<T> c(kvh, d);
  paged_cache<T> pc(kvh, d, 16);
  const index_t id = pc.add_sequence();
  c.enable_summaries(page_size);
  pc.enable_summaries(id, page_size);
  auto all_k = random_tensor<float>(200, kvh, d, 11);
  auto all_v = random_tensor<float>(200, kvh, d, 12);
  // Chunks of varied sizes cross page boundaries at every offset, then single-token steps.
  index_t t = 0;
  for (const index_t n :
       {1, 5, 16, 17, 3, 31, 40, 7, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 64}) {
    const auto kv = all_k.cview().slice_tokens(t, n);
    const auto vv = all_v.cview().slice_tokens(t, n);
    c.append(kv, vv);
    pc.append(id, kv, vv);
    t += n;
    check_summaries_match_recomputation<T>(c);
    check_summaries_match_recomputation<T>(pc.sequence(id));
  }
  REQUIRE(t == 200);
  const auto kall = all_k.cview(), vall = all_v.cview();
  for (index_t h = 0; h < kvh; ++h) {
    REQUIRE(c.length(h) == 200);
    for (index_t i = 0; i < 200; i += 13) {
      for (index_t x = 0; x < d; ++x) {
        REQUIRE(to_float(c.key(h, i)[x]) == stored<T>(kall.row(i, h)[x]));
        REQUIRE(to_float(c.value(h, i)[x]) == stored<T>(vall.row(i, h)[x]));
        REQUIRE(to_float(pc.sequence(id).key(h, i)[x]) == to_float(c.key(h, i)[x]));
        REQUIRE(to_float(pc.sequence(id).value(h, i)[x]) == to_float(c.value(h, i)[x]));
      }
    }
  }
}

}  // namespace

TEST_CASE("appends across page boundaries keep summaries equal to a recomputation", "[cache]") {
  check_append_and_summaries<float>(16);
  check_append_and_summaries<f16>(16);
  check_append_and_summaries<bf16>(16);
  check_append_and_summaries<float>(5);  // page size not a power of two
  check_append_and_summaries<f16>(1);
}

TEST_CASE("summaries enabled on a filled cache equal a recomputation", "[cache]") {
  kv_cache<f16> c(2, 16);
  auto k = random_tensor<f16>(37, 2, 16, 3);
  c.append(k.cview(), k.cview());
  c.enable_summaries(8);
  check_summaries_match_recomputation<f16>(c);
  auto k2 = random_tensor<f16>(9, 2, 16, 4);
  c.append(k2.cview(), k2.cview());
  check_summaries_match_recomputation<f16>(c);
}

TEST_CASE("memory footprint is exact", "[cache][memory]") {
  const index_t kvh = 2, d = 32;
  kv_cache<f16> c(kvh, d, 100);
  REQUIRE(c.bytes(0) == 2u * 100 * d * sizeof(f16));
  REQUIRE(c.bytes() == kvh * 2u * 100 * d * sizeof(f16));
  auto k = random_tensor<float>(150, kvh, d, 1);
  c.append(k.cview(), k.cview());  // grows to max(150, 200) rows
  REQUIRE(c.bytes(1) == 2u * 200 * d * sizeof(f16));
  c.shrink();
  REQUIRE(c.bytes(1) == 2u * 150 * d * sizeof(f16));
  c.enable_summaries(16);
  // 10 pages (150 / 16 rounded up), min and max rows; growth doubles from 1 page.
  const std::size_t pages_cap = 16;
  REQUIRE(c.summary_bytes() == kvh * pages_cap * 2 * d * sizeof(f16));
  c.shrink();
  REQUIRE(c.summary_bytes() == kvh * 10u * 2 * d * sizeof(f16));
  REQUIRE(c.bytes() == kvh * 2u * 150 * d * sizeof(f16) + kvh * 10u * 2 * d * sizeof(f16));

  paged_cache<bf16> pc(kvh, d, 16);
  const index_t a = pc.add_sequence(), b = pc.add_sequence();
  pc.append(a, k.cview().slice_tokens(0, 33), k.cview().slice_tokens(0, 33));  // 3 pages / head
  pc.append(b, k.cview().slice_tokens(0, 16), k.cview().slice_tokens(0, 16));  // 1 page / head
  REQUIRE(pc.page_bytes() == 2u * 16 * d * sizeof(bf16));
  REQUIRE(pc.live_pages() == kvh * 4);
  REQUIRE(pc.bytes(a, 0) == 3 * pc.page_bytes());
  REQUIRE(pc.bytes() == static_cast<std::size_t>(kvh * 4) * pc.page_bytes());
  REQUIRE(pc.block_table(a, 0).size() == 3);
  REQUIRE(pc.block_table(b, 1).size() == 1);
  // Block tables never share pages.
  std::vector<std::int32_t> ids;
  for (index_t s : {a, b})
    for (index_t h = 0; h < kvh; ++h)
      for (auto p : pc.block_table(s, h)) ids.push_back(p);
  std::sort(ids.begin(), ids.end());
  REQUIRE(std::adjacent_find(ids.begin(), ids.end()) == ids.end());
  pc.remove_sequence(b);
  REQUIRE(pc.live_pages() == kvh * 3);
  REQUIRE(pc.bytes() == static_cast<std::size_t>(kvh * 3) * pc.page_bytes());
  // Freed pages are reused by later appends.
  const index_t c2 = pc.add_sequence();
  pc.append(c2, k.cview().slice_tokens(0, 1), k.cview().slice_tokens(0, 1));
  REQUIRE(pc.live_pages() == kvh * 4);
}

TEST_CASE("compaction keeps the selected rows in order and releases memory", "[cache][evict]") {
  const index_t kvh = 2, d = 16, n = 50;
  auto k = random_tensor<float>(n, kvh, d, 5);
  auto v = random_tensor<float>(n, kvh, d, 6);
  eviction_selection sel;
  sel.lengths = {n, n};
  sel.keep = {{0, 1, 7, 20, 33, 49},
              {3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 40}};
  kv_cache<bf16> c(kvh, d);
  paged_cache<bf16> pc(kvh, d, 8);
  const index_t id = pc.add_sequence();
  c.append(k.cview(), v.cview());
  pc.append(id, k.cview(), v.cview());
  c.enable_summaries(4);
  pc.enable_summaries(id, 4);
  c.compact(sel);
  pc.compact(id, sel);
  const auto kvw = k.cview(), vvw = v.cview();
  for (index_t h = 0; h < kvh; ++h) {
    const auto& keep = sel.keep[static_cast<std::size_t>(h)];
    REQUIRE(c.length(h) == static_cast<index_t>(keep.size()));
    REQUIRE(pc.length(id, h) == static_cast<index_t>(keep.size()));
    REQUIRE(c.bytes(h) == 2 * keep.size() * d * sizeof(bf16));
    REQUIRE(pc.bytes(id, h) == (keep.size() + 7) / 8 * pc.page_bytes());
    for (std::size_t i = 0; i < keep.size(); ++i) {
      for (index_t x = 0; x < d; ++x) {
        const float want_k = stored<bf16>(kvw.row(keep[i], h)[x]);
        const float want_v = stored<bf16>(vvw.row(keep[i], h)[x]);
        REQUIRE(to_float(c.key(h, static_cast<index_t>(i))[x]) == want_k);
        REQUIRE(to_float(c.value(h, static_cast<index_t>(i))[x]) == want_v);
        REQUIRE(to_float(pc.sequence(id).key(h, static_cast<index_t>(i))[x]) == want_k);
        REQUIRE(to_float(pc.sequence(id).value(h, static_cast<index_t>(i))[x]) == want_v);
      }
    }
  }
  check_summaries_match_recomputation<bf16>(c);
  check_summaries_match_recomputation<bf16>(pc.sequence(id));
  REQUIRE(pc.live_pages() == 1 + 3);  // 6 tokens -> 1 page, 20 tokens -> 3 pages
  // Appending after eviction continues each head at its own length.
  auto k2 = random_tensor<float>(3, kvh, d, 7);
  c.append(k2.cview(), k2.cview());
  REQUIRE(c.length(0) == 9);
  REQUIRE(c.length(1) == 23);
  REQUIRE(to_float(c.key(1, 22)[5]) == stored<bf16>(k2.cview().row(2, 1)[5]));
  check_summaries_match_recomputation<bf16>(c);
}

TEST_CASE("bad cache arguments and states raise spattn::error", "[cache][errors]") {
  REQUIRE_THROWS_AS(paged_cache<float>(2, 16, 0), spattn::error);
  REQUIRE_THROWS_AS(paged_cache<float>(2, 16, 12), spattn::error);  // not a power of two
  REQUIRE_THROWS_AS(paged_cache<float>(2, 16, 8192), spattn::error);
  REQUIRE_THROWS_AS(kv_cache<float>(0, 16), spattn::error);
  REQUIRE_THROWS_AS(kv_cache<float>(2, 0), spattn::error);
  REQUIRE_THROWS_AS(page_summaries<float>(2, 16, 0), spattn::error);
  kv_cache<float> c(2, 16);
  REQUIRE_THROWS_AS(c.enable_summaries(0), spattn::error);
  auto k3 = random_tensor<float>(4, 3, 16, 1);
  auto k2 = random_tensor<float>(4, 2, 16, 1);
  auto k2b = random_tensor<float>(5, 2, 16, 1);
  auto k2d = random_tensor<float>(4, 2, 8, 1);
  REQUIRE_THROWS_AS(c.append(k3.cview(), k3.cview()), spattn::error);
  REQUIRE_THROWS_AS(c.append(k2.cview(), k2b.cview()), spattn::error);
  REQUIRE_THROWS_AS(c.append(k2d.cview(), k2d.cview()), spattn::error);
  c.append(k2.cview(), k2.cview());
  REQUIRE_THROWS_WITH(c.key(2, 0), Catch::Contains("kv head"));
  eviction_selection sel;
  sel.lengths = {4, 4};
  sel.keep = {{0, 2}, {3, 1}};  // unsorted
  REQUIRE_THROWS_WITH(c.compact(sel), Catch::Contains("ascending"));
  sel.keep = {{0, 2}, {1, 4}};  // out of range
  REQUIRE_THROWS_WITH(c.compact(sel), Catch::Contains("[0, 4)"));
  sel.keep = {{0, 2}, {1, 1}};  // duplicate
  REQUIRE_THROWS_AS(c.compact(sel), spattn::error);
  sel.keep = {{0, 2}, {1, 3}};
  sel.lengths = {5, 4};  // made for another cache state
  REQUIRE_THROWS_WITH(c.compact(sel), Catch::Contains("eviction selection lengths"));
  sel.lengths = {4};
  sel.keep = {{0}};
  REQUIRE_THROWS_AS(c.compact(sel), spattn::error);
  paged_cache<float> pc(2, 16, 4);
  REQUIRE_THROWS_AS(pc.append(3, k2.cview(), k2.cview()), spattn::error);
  const index_t id = pc.add_sequence();
  pc.remove_sequence(id);
  REQUIRE_THROWS_WITH(pc.sequence(id), Catch::Contains("sequence id"));
}
