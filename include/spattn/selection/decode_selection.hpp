#pragma once
// Decoding selections: plain data a person can print and check.
//
//  - decode_selection: which pages of the KV cache one decode step reads, per selection head
//    (a KV head when the choice is shared across its GQA group, else a query head). A page p
//    covers tokens [p*page_size, min((p+1)*page_size, length)); page_size 1 makes it a token list.
//    Only the last page of a head may be partial, so the selected tokens, concatenated in page
//    order, are exactly token(i) = pages[i / page_size] * page_size + i % page_size.
//  - eviction_selection: the token indices each KV head keeps when its cache is compacted.
//
// Both carry the cache lengths they were made for, so a kernel or a cache can refuse a selection
// made for another cache state. validate() raises spattn::error on unsorted, duplicate or
// out-of-range indices.
#include <algorithm>
#include <ostream>
#include <sstream>
#include <string>
#include <vector>

#include "spattn/core/error.hpp"
#include "spattn/core/tensor_view.hpp"

namespace spattn {

struct decode_selection {
  index_t page_size = 1;
  // false: one entry per KV head, shared by its query heads; true: one entry per query head.
  bool per_query_head = false;
  // Query heads per KV head (G); selection head s reads KV head s (shared) or s / group.
  index_t group = 1;
  // Per selection head: tokens held by its KV head when the selection was made.
  std::vector<index_t> lengths;
  // Per selection head: selected page indices, ascending, unique, < pages_for(length).
  std::vector<std::vector<index_t>> pages;

  index_t heads() const { return static_cast<index_t>(pages.size()); }
  index_t kv_head_of(index_t s) const { return per_query_head ? s / group : s; }
  index_t page_count(index_t s) const {
    return (lengths[static_cast<std::size_t>(s)] + page_size - 1) / page_size;
  }

  // Tokens read by selection head s (the last page of the cache may be partial).
  index_t tokens(index_t s) const {
    const auto& p = pages[static_cast<std::size_t>(s)];
    const index_t len = lengths[static_cast<std::size_t>(s)];
    index_t n = 0;
    for (const index_t x : p) n += std::min(page_size, len - x * page_size);
    return n;
  }
  index_t total_tokens() const {
    index_t n = 0;
    for (index_t s = 0; s < heads(); ++s) n += tokens(s);
    return n;
  }
  // Fraction of the cached tokens read, over all selection heads.
  double density() const {
    index_t all = 0;
    for (const index_t l : lengths) all += l;
    return all ? static_cast<double>(total_tokens()) / static_cast<double>(all) : 0.0;
  }
  // K and V bytes the kernel reads for this selection (per selection head; summaries excluded).
  double kv_bytes(index_t head_dim, index_t element_size) const {
    return 2.0 * static_cast<double>(total_tokens() * head_dim * element_size);
  }
  // Token ranges [begin, end) of selection head s, consecutive pages merged.
  std::vector<std::pair<index_t, index_t>> ranges(index_t s) const {
    std::vector<std::pair<index_t, index_t>> r;
    const index_t len = lengths[static_cast<std::size_t>(s)];
    for (const index_t p : pages[static_cast<std::size_t>(s)]) {
      const index_t b = p * page_size, e = std::min(b + page_size, len);
      if (!r.empty() && r.back().second == b) {
        r.back().second = e;
      } else {
        r.emplace_back(b, e);
      }
    }
    return r;
  }

  void validate() const {
    require(page_size >= 1, "selection page_size", ">= 1", page_size);
    require(group >= 1, "selection group", ">= 1", group);
    if (!(lengths.size() == pages.size()))
      require(false, "selection lengths",
              detail::concat("one per selection head (", pages.size(), ")"), lengths.size());
    for (index_t s = 0; s < heads(); ++s) {
      const auto& p = pages[static_cast<std::size_t>(s)];
      const index_t len = lengths[static_cast<std::size_t>(s)];
      require(len >= 0, "selection lengths", ">= 0", len);
      const index_t np = page_count(s);
      for (std::size_t i = 0; i < p.size(); ++i) {
        if (!(p[i] >= 0 && p[i] < np))
          require(false, "selection pages",
                  detail::concat("page indices in [0, ", np, ") for head ", s, " entry ", i), p[i]);
        if (!(i == 0 || p[i - 1] < p[i]))
          require(false, "selection pages",
                  detail::concat("ascending unique page indices at head ", s, " entry ", i),
                  detail::concat(p[i - 1], " then ", p[i]));
      }
    }
  }

  std::string to_string() const {
    std::ostringstream os;
    os << "decode_selection(page_size=" << page_size
       << (per_query_head ? ", per query head" : ", per KV head") << ", group=" << group
       << ", tokens=" << total_tokens() << ", density=" << density() << ")\n";
    for (index_t s = 0; s < heads(); ++s) {
      os << "  head " << s << " (length " << lengths[static_cast<std::size_t>(s)] << ", "
         << tokens(s) << " tokens): pages";
      for (const index_t p : pages[static_cast<std::size_t>(s)]) os << ' ' << p;
      os << '\n';
    }
    return os.str();
  }

  friend bool operator==(const decode_selection&, const decode_selection&) = default;
  friend std::ostream& operator<<(std::ostream& os, const decode_selection& s) {
    return os << s.to_string();
  }
};

struct eviction_selection {
  // Per KV head: tokens held before eviction.
  std::vector<index_t> lengths;
  // Per KV head: kept token indices, ascending, unique, < length.
  std::vector<std::vector<index_t>> keep;

  index_t heads() const { return static_cast<index_t>(keep.size()); }
  index_t kept(index_t h) const {
    return static_cast<index_t>(keep[static_cast<std::size_t>(h)].size());
  }
  index_t total_kept() const {
    index_t n = 0;
    for (const auto& k : keep) n += static_cast<index_t>(k.size());
    return n;
  }
  double density() const {
    index_t all = 0;
    for (const index_t l : lengths) all += l;
    return all ? static_cast<double>(total_kept()) / static_cast<double>(all) : 0.0;
  }
  // True when every head keeps all its tokens.
  bool is_identity() const {
    for (index_t h = 0; h < heads(); ++h)
      if (kept(h) != lengths[static_cast<std::size_t>(h)]) return false;
    return true;
  }

  void validate() const {
    if (!(lengths.size() == keep.size()))
      require(false, "eviction lengths", detail::concat("one per KV head (", keep.size(), ")"),
              lengths.size());
    for (index_t h = 0; h < heads(); ++h) {
      const auto& k = keep[static_cast<std::size_t>(h)];
      const index_t len = lengths[static_cast<std::size_t>(h)];
      require(len >= 0, "eviction lengths", ">= 0", len);
      for (std::size_t i = 0; i < k.size(); ++i) {
        if (!(k[i] >= 0 && k[i] < len))
          require(false, "eviction keep",
                  detail::concat("token indices in [0, ", len, ") for head ", h, " entry ", i),
                  k[i]);
        if (!(i == 0 || k[i - 1] < k[i]))
          require(false, "eviction keep",
                  detail::concat("ascending unique token indices at head ", h, " entry ", i),
                  detail::concat(k[i - 1], " then ", k[i]));
      }
    }
  }

  std::string to_string() const {
    std::ostringstream os;
    os << "eviction_selection(kept=" << total_kept() << ", density=" << density() << ")\n";
    for (index_t h = 0; h < heads(); ++h) {
      os << "  kv head " << h << " (length " << lengths[static_cast<std::size_t>(h)] << ", keeps "
         << kept(h) << "):";
      for (const index_t t : keep[static_cast<std::size_t>(h)]) os << ' ' << t;
      os << '\n';
    }
    return os.str();
  }

  friend bool operator==(const eviction_selection&, const eviction_selection&) = default;
  friend std::ostream& operator<<(std::ostream& os, const eviction_selection& s) {
    return os << s.to_string();
  }
};

}  // namespace spattn
