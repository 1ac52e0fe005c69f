#pragma once
// A structured synthetic Q/K/V generator whose heads behave like those of long-context LLMs,
// deterministic for a seed: the random stream is SplitMix64 with our own Box-Muller (no
// std::mt19937 / std:: distributions, whose outputs differ across standard libraries), so only
// libm's last-bit rounding of log/cos/tan can differ between platforms.
//
// head_dim is split into channels, each responsible for one behaviour. Every channel's
// contribution to a score is designed in *logit units* (after the 1/sqrt(head_dim) softmax
// scale), and ln(tokens) appears where a behaviour must hold for any sequence length:
//
//   channel 0       sink:     k = 1 on the first `sink_tokens` keys, 0 elsewhere;
//                             q = sink strength of the head.
//   channel 1       vertical: k = 1 on a sparse set of heavy key columns (per KV head, about
//                             tokens/64 of them, always past the sinks), 0 elsewhere;
//                             q = vertical strength of the head.
//   channels 2..2+2r  local (RoPE-like): r rotary pairs. Key j holds (cos w_i j, sin w_i j) * c_i,
//                     query t holds (cos w_i t, sin w_i t) * c_i * A, so q.k = A * sum_i c_i^2
//                     cos(w_i (t - j)) depends only on the distance t - j, exactly as with RoPE.
//                     The frequencies are the quantiles of a Cauchy(1/width) density, which makes
//                     the kernel approximate exp(-|t - j| / width): strong near the diagonal,
//                     decaying with distance. A is the head's local amplitude.
//   the rest        content:  Gaussian noise (logit std about 1 between a random query and key),
//                             plus the needles: needle n of a retrieval head is a random unit
//                             direction u_n written into key `key` of that head's KV head and,
//                             scaled, into query `query` of the retrieving head, so that this one
//                             query puts most of its mass on that one key.
//
// Query heads cycle through four kinds (head h gets kinds[h % 4]):
//   local      strong local amplitude (most mass within ~64 recent keys), weak sink/vertical;
//   retrieval  moderate local and sink, plus `needles_per_head` needles; the first needle of
//              each retrieval head is retrieved by the last token (so decoding sees it), the
//              others by queries at least tokens/8 after their key;
//   sink       sink-dominated: most mass on the first `sink_tokens` keys;
//   vertical   most mass on the heavy key columns.
// Every head also has a little of every other behaviour, as real heads do. Values are Gaussian.
// Requires tokens >= 64, head_dim >= 16 and a multiple of 4 (the kernels need multiples of 8),
// heads a multiple of kv_heads.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numbers>
#include <string_view>
#include <vector>

#include "spattn/core/error.hpp"
#include "spattn/core/tensor_view.hpp"

namespace spattn::eval {

enum class head_kind { local, retrieval, sink, vertical };

inline std::string_view head_kind_name(head_kind k) {
  switch (k) {
    case head_kind::local:
      return "local";
    case head_kind::retrieval:
      return "retrieval";
    case head_kind::sink:
      return "sink";
    case head_kind::vertical:
      return "vertical";
  }
  return "?";
}

struct synthetic_options {
  index_t tokens = 4096;
  index_t heads = 8;
  index_t kv_heads = 2;
  index_t head_dim = 64;
  std::uint64_t seed = 0;
  index_t sink_tokens = 4;
  index_t needles_per_head = 2;
  double local_width = 8.0;  // decay length of the local kernel, in tokens
};

// Needle: query token `query` of query head `head` retrieves key `key`.
struct needle {
  index_t head = 0, key = 0, query = 0;
  friend bool operator==(const needle&, const needle&) = default;
};

struct synthetic_data {
  index_t tokens = 0, heads = 0, kv_heads = 0, head_dim = 0;
  std::vector<float> q, k, v;    // [tokens, heads, head_dim], [tokens, kv_heads, head_dim] x2
  std::vector<head_kind> kinds;  // per query head
  std::vector<needle> needles;   // sorted by (head, query)
  std::vector<std::vector<index_t>> vertical_columns;  // per KV head, sorted
  index_t sink_tokens = 0;

  tensor_view<const float> qv() const { return {q.data(), tokens, heads, head_dim}; }
  tensor_view<const float> kv() const { return {k.data(), tokens, kv_heads, head_dim}; }
  tensor_view<const float> vv() const { return {v.data(), tokens, kv_heads, head_dim}; }
};

namespace detail {

// SplitMix64: a tiny, portable, well-mixed generator.
struct splitmix64 {
  std::uint64_t s;
  std::uint64_t next() {
    std::uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }  // [0, 1)
  double normal() {
    const double u1 = 1.0 - uniform(), u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
  }
  index_t below(index_t n) { return static_cast<index_t>(uniform() * static_cast<double>(n)); }
};

}  // namespace detail

inline synthetic_data make_synthetic(const synthetic_options& o) {
  require(o.tokens >= 64, "tokens", ">= 64", o.tokens);
  require(o.kv_heads > 0, "kv_heads", "> 0", o.kv_heads);
  require(o.heads > 0 && o.heads % o.kv_heads == 0, "heads",
          spattn::detail::lazy("a positive multiple of kv_heads (", o.kv_heads, ")"), o.heads);
  require(o.head_dim >= 16 && o.head_dim % 4 == 0, "head_dim", "a multiple of 4, >= 16",
          o.head_dim);
  require(o.sink_tokens >= 1 && o.sink_tokens < o.tokens / 4, "sink_tokens", "in [1, tokens / 4)",
          o.sink_tokens);
  require(o.needles_per_head >= 0 && o.needles_per_head <= 64, "needles_per_head", "in [0, 64]",
          o.needles_per_head);
  require(o.local_width > 0.0, "local_width", "> 0", o.local_width);

  const index_t T = o.tokens, H = o.heads, HK = o.kv_heads, D = o.head_dim, G = H / HK;
  const index_t r = D / 4;                    // rotary pairs: D/2 channels
  const index_t c0 = 2 + 2 * r, dc = D - c0;  // content channels
  const double L = std::log(static_cast<double>(T));
  // Logits are built as q.k * scale with scale = 1/sqrt(D); q and k each carry D^(1/4).
  const double unit = std::pow(static_cast<double>(D), 0.25);
  detail::splitmix64 rng{o.seed * 0x2545f4914f6cdd1dull + 0x1234567ull};

  synthetic_data s;
  s.tokens = T;
  s.heads = H;
  s.kv_heads = HK;
  s.head_dim = D;
  s.sink_tokens = o.sink_tokens;
  s.q.assign(static_cast<std::size_t>(T * H * D), 0.0f);
  s.k.assign(static_cast<std::size_t>(T * HK * D), 0.0f);
  s.v.resize(s.k.size());
  constexpr head_kind cycle[4] = {head_kind::local, head_kind::retrieval, head_kind::sink,
                                  head_kind::vertical};
  for (index_t h = 0; h < H; ++h) s.kinds.push_back(cycle[h % 4]);
  auto qat = [&](index_t t, index_t h, index_t c) -> float& {
    return s.q[static_cast<std::size_t>((t * H + h) * D + c)];
  };
  auto kat = [&](index_t t, index_t h, index_t c) -> float& {
    return s.k[static_cast<std::size_t>((t * HK + h) * D + c)];
  };

  // Rotary frequencies: Cauchy quantiles (the spectrum of exp(-|x| / width)), equal weights.
  std::vector<double> freq(static_cast<std::size_t>(r));
  for (index_t i = 0; i < r; ++i) {
    const double u = (static_cast<double>(i) + 0.5) / static_cast<double>(r);
    freq[static_cast<std::size_t>(i)] = std::tan(0.5 * std::numbers::pi * u) / o.local_width;
  }
  const double cw = 1.0 / std::sqrt(static_cast<double>(r));

  // Keys: sinks, heavy columns, rotary, content noise (std 1 per channel); values Gaussian.
  const double sigma_k = 1.0;
  const double sigma_q = std::sqrt(static_cast<double>(D) / static_cast<double>(dc)) / sigma_k;
  s.vertical_columns.resize(static_cast<std::size_t>(HK));
  for (index_t kh = 0; kh < HK; ++kh) {
    auto& cols = s.vertical_columns[static_cast<std::size_t>(kh)];
    const index_t n_cols = std::max<index_t>(4, T / 64);
    while (static_cast<index_t>(cols.size()) < n_cols) {
      const index_t j = o.sink_tokens + rng.below(T - o.sink_tokens);
      if (std::find(cols.begin(), cols.end(), j) == cols.end()) cols.push_back(j);
    }
    std::sort(cols.begin(), cols.end());
    for (index_t j = 0; j < T; ++j) {
      kat(j, kh, 0) = j < o.sink_tokens ? static_cast<float>(unit) : 0.0f;
      kat(j, kh, 1) =
          std::binary_search(cols.begin(), cols.end(), j) ? static_cast<float>(unit) : 0.0f;
      for (index_t i = 0; i < r; ++i) {
        const double a = std::fmod(freq[static_cast<std::size_t>(i)] * static_cast<double>(j),
                                   2.0 * std::numbers::pi);
        kat(j, kh, 2 + 2 * i) = static_cast<float>(unit * cw * std::cos(a));
        kat(j, kh, 3 + 2 * i) = static_cast<float>(unit * cw * std::sin(a));
      }
      for (index_t c = c0; c < D; ++c) kat(j, kh, c) = static_cast<float>(sigma_k * rng.normal());
    }
  }
  for (auto& x : s.v) x = static_cast<float>(rng.normal());

  // Per-kind strengths in logits: {sink, vertical, local amplitude}.
  auto strengths = [&](head_kind kind) {
    struct st {
      double sink, vert, local;
    };
    switch (kind) {
      case head_kind::local:
        return st{L - 3.0, L - 6.0, 16.0};
      case head_kind::retrieval:
        return st{L - 2.0, L - 5.0, 8.0};
      case head_kind::sink:
        return st{L + 3.0, L - 5.0, 6.0};
      case head_kind::vertical:
        return st{L - 3.0, L + 1.0, 4.0};
    }
    return st{0, 0, 0};
  };
  // Queries. Content scale sigma_q makes q.k content logits ~N(0, 1) against noise keys
  // (q.k has std sqrt(dc) * sigma_q * sigma_k = sqrt(D), i.e. logit std 1).
  for (index_t h = 0; h < H; ++h) {
    const auto st = strengths(s.kinds[static_cast<std::size_t>(h)]);
    for (index_t t = 0; t < T; ++t) {
      qat(t, h, 0) = static_cast<float>(st.sink * unit);
      qat(t, h, 1) = static_cast<float>(st.vert * unit);
      for (index_t i = 0; i < r; ++i) {
        const double a = std::fmod(freq[static_cast<std::size_t>(i)] * static_cast<double>(t),
                                   2.0 * std::numbers::pi);
        qat(t, h, 2 + 2 * i) = static_cast<float>(st.local * unit * cw * std::cos(a));
        qat(t, h, 3 + 2 * i) = static_cast<float>(st.local * unit * cw * std::sin(a));
      }
      for (index_t c = c0; c < D; ++c) qat(t, h, c) = static_cast<float>(sigma_q * rng.normal());
    }
  }
  // Needles: key content replaced by a unit direction u of norm `key_norm`; the query's content by
  // u scaled so the needle logit is ln(T) + 10 (well above sink, local and noise logits).
  const double needle_logit = L + 10.0;
  for (index_t h = 0; h < H; ++h) {
    if (s.kinds[static_cast<std::size_t>(h)] != head_kind::retrieval) continue;
    const index_t kh = h / G;
    std::vector<index_t> used_q;
    for (index_t n = 0; n < o.needles_per_head; ++n) {
      needle nd;
      nd.head = h;
      for (int attempt = 0;; ++attempt) {
        require(attempt < 10000, "tokens", "room for the needles", T);
        const index_t key = o.sink_tokens + rng.below(T * 3 / 4 - o.sink_tokens);
        const index_t gap = std::max<index_t>(T / 8, 64);
        const index_t query =
            n == 0 ? T - 1 : key + gap + rng.below(std::max<index_t>(1, T - key - gap));
        if (query >= T || query - key < gap) continue;
        if (std::find(used_q.begin(), used_q.end(), query) != used_q.end()) continue;
        bool key_taken =
            std::binary_search(s.vertical_columns[static_cast<std::size_t>(kh)].begin(),
                               s.vertical_columns[static_cast<std::size_t>(kh)].end(), key);
        for (const auto& other : s.needles) key_taken |= other.key == key && other.head / G == kh;
        if (key_taken) continue;
        nd.key = key;
        nd.query = query;
        break;
      }
      used_q.push_back(nd.query);
      std::vector<double> u(static_cast<std::size_t>(dc));
      double norm = 0.0;
      for (auto& x : u) {
        x = rng.normal();
        norm += x * x;
      }
      norm = std::sqrt(norm);
      // Twice the norm of a noise key: distinctive, so the needle stands out of the noise.
      const double key_norm = 2.0 * std::sqrt(static_cast<double>(dc)) * sigma_k;
      for (index_t c = 0; c < dc; ++c) {
        const double uc = u[static_cast<std::size_t>(c)] / norm;
        kat(nd.key, kh, c0 + c) = static_cast<float>(key_norm * uc);
        qat(nd.query, h, c0 + c) = static_cast<float>(needle_logit * unit * unit / key_norm * uc);
      }
      s.needles.push_back(nd);
    }
  }
  std::sort(s.needles.begin(), s.needles.end(), [](const needle& a, const needle& b) {
    return a.head != b.head ? a.head < b.head : a.query < b.query;
  });
  return s;
}

}  // namespace spattn::eval
