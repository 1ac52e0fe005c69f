// spattn-compare: which sparse attention should I use for my model and context length, and what
// does it cost? Runs every method at every budget on structured synthetic data (default) or on the
// user's own Q/K/V (a folder of .npy files), and reports per method x budget: density, FLOPs
// (attention + importance estimation), measured time and speedup over dense in the same run,
// output relative error against dense, attention-mass recall and, on synthetic data, needle recall.
//
// Output folder (--out, default results/), written atomically (a temporary sibling folder renamed
// into place at the end; on error nothing is left behind and an existing folder is untouched):
//   results.csv     one row per input x phase x method x budget (columns: see csv_header below);
//                   status "ok", or "not met" for a budget the method cannot meet (budget_note
//                   says why; no measurements), or "error"
//   results.json    the same plus the configuration, per-needle results and (--per-head) per head
//   per_head.csv    with --per-head: mass recall and output error per query head
//   frontier.png    with --plot: speedup (x) against accuracy (y), one line per method
//   inputs/         with --save-inputs: the Q/K/V used, in the --input format (+ needles.npy)
//   selections/     with --save-selections, for every input/phase/method/budget a folder with
//                   rows.npy    int64 [R]        evaluated query tokens of the phase (position =
//                                                q_offset + row; q_offset 0 in prefill, tokens -
//                                                decode_queries in decode)
//                   offsets.npy int64 [H*R + 1]  CSR offsets: keys of (query head h, row i) are
//                   keys.npy    int64 [nnz]      keys[offsets[h*R + i] : offsets[h*R + i + 1]]
//                   plus the method's own native format when it has one; prefill policies:
//                   layout.npy          int64 [7] heads, q_tokens, k_tokens, q_offset, q_blocks,
//                                       block_q, block_k
//                   block_offsets.npy   int64 [heads*q_blocks + 1]  CSR offsets (entry
//                   block_starts.npy    int64 [nb]  e = h*q_blocks + b: query head h, query block
//                                       b): key blocks [start, start + block_k) of entry e are
//                                       block_starts[block_offsets[e] : block_offsets[e + 1]]
//                   column_offsets.npy  int64 [heads*q_blocks + 1]  CSR offsets, likewise
//                   columns.npy         int64 [nc]  extra key columns of entry e
//                   (tools/compare_methods.hpp, save_prefill_selection);
//                   decode policies (Quest), per selection head s and decode step i (entry
//                   e = s*steps + i, query token q_offset + i):
//                   decode_layout.npy   int64 [6] heads (selection heads: KV heads, or query
//                                       heads when per_query_head), steps, q_offset, page_size,
//                                       group, per_query_head
//                   page_lengths.npy    int64 [heads*steps]  tokens the KV head held
//                   page_offsets.npy    int64 [heads*steps + 1]  CSR offsets: pages of entry e
//                   pages.npy           int64 [np]  are pages[page_offsets[e] :
//                                       page_offsets[e + 1]], page p the tokens
//                                       [p*page_size, min((p + 1)*page_size, length))
//                   (save_decode_selections); eviction policies (SnapKV, Ada-SnapKV,
//                   StreamingLLM), the prompt tokens each KV head keeps:
//                   eviction_layout.npy int64 [4] kv_heads, group, prompt tokens L (=
//                                       q_offset), steps
//                   kept_offsets.npy    int64 [kv_heads + 1]  CSR offsets: KV head g keeps
//                   kept.npy            int64 [nk]  kept[kept_offsets[g] : kept_offsets[g + 1]];
//                                       decode step i also reads the decode tokens [L, L + i]
//                   (save_eviction_selection).
//
// Input folder (--input DIR): q.npy, k.npy, v.npy, or layerNN_q.npy / layerNN_k.npy /
// layerNN_v.npy for several layers (tools/export_qkv.py writes these): little-endian '<f4' or
// '<f2', C order, shapes [tokens, heads, head_dim] for q and [tokens, kv_heads, head_dim] for k, v,
// after RoPE. Optional needles.npy (or layerNN_needles.npy): int64 [n, 3] rows (query head, key
// position, query position) whose keys must survive; enables needle recall on your own data.
#include <fmt/core.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <unistd.h>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <thread>

#include "compare_methods.hpp"
#include "spattn/eval/npy.hpp"
#include "spattn/version.hpp"

#ifndef SPATTN_SOURCE_DIR
#define SPATTN_SOURCE_DIR "."
#endif

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace spattn;
using namespace spattn::compare;

namespace {

struct options {
  std::vector<std::string> methods;
  std::vector<std::string> budgets{"5", "10", "20"};
  index_t tokens = 8192, heads = 8, kv_heads = 2, head_dim = 64;
  std::string dtype_name = "f32";
  int threads = 0;
  std::string phase = "both";
  std::string out = "results";
  std::uint64_t seed = 0;
  std::string input;
  std::vector<int> layers;
  bool save_selections = false, per_head = false, plot = false, list_methods = false;
  bool save_inputs = false;
  int reps = 5;
  index_t eval_rows = 256, decode_queries = 16;
  std::string plot_script = SPATTN_SOURCE_DIR "/tools/plot_frontier.py";
  // Debian's interpreter, where python3-matplotlib lives (a pyenv/venv python3 may lack it).
  std::string python = fs::exists("/usr/bin/python3") ? "/usr/bin/python3" : "python3";
};

struct budget_spec {
  std::string label;
  budget b;
};

budget_spec parse_uniform_budget(const std::string& s);

// "20" or "20x": compression 20x; "kept:0.05"; "tokens:1024"; "coverage:0.9"; "default"; any but
// "default" with the suffix "@adaptive": the heads share the budget (adaptive allocation).
budget_spec parse_budget(const std::string& s) {
  const std::string suffix = "@adaptive";
  if (s.size() <= suffix.size() || s.compare(s.size() - suffix.size(), suffix.size(), suffix) != 0)
    return parse_uniform_budget(s);
  const auto base = parse_uniform_budget(s.substr(0, s.size() - suffix.size()));
  const budget& b = base.b;
  const auto a = allocation::adaptive;
  switch (b.kind()) {
    case budget_kind::tokens:
      return {base.label + "-ada", budget::tokens(static_cast<index_t>(b.value()), a)};
    case budget_kind::ratio:
      return {base.label + "-ada", budget::kept(b.value(), a)};
    case budget_kind::coverage:
      return {base.label + "-ada", budget::coverage(b.value(), a)};
    default:
      throw error(fmt::format("argument '--budgets': '{}' has no adaptive form", s));
  }
}

budget_spec parse_uniform_budget(const std::string& s) {
  auto number = [&](const std::string& x) {
    std::size_t used = 0;
    double v = 0;
    try {
      v = std::stod(x, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != x.size() || x.empty())
      throw error(fmt::format("argument '--budgets': expected a number in '{}'", s));
    return v;
  };
  if (s == "default") return {"default", budget::policy_default()};
  const auto colon = s.find(':');
  if (colon == std::string::npos) {
    const std::string x = !s.empty() && s.back() == 'x' ? s.substr(0, s.size() - 1) : s;
    const double c = number(x);
    return {fmt::format("{:g}x", c), budget::compression(c)};
  }
  const std::string kind = s.substr(0, colon), val = s.substr(colon + 1);
  if (kind == "kept") return {fmt::format("kept{:g}", number(val)), budget::kept(number(val))};
  if (kind == "coverage")
    return {fmt::format("cov{:g}", number(val)), budget::coverage(number(val))};
  if (kind == "tokens") {
    const double n = number(val);
    if (n != std::floor(n)) throw error(fmt::format("argument '--budgets': '{}' is not whole", s));
    return {fmt::format("{}tok", static_cast<index_t>(n)), budget::tokens(static_cast<index_t>(n))};
  }
  throw error(fmt::format(
      "argument '--budgets': expected N (compression), kept:F, tokens:N, coverage:F or default, "
      "got '{}'",
      s));
}

dtype parse_dtype(const std::string& s) {
  if (s == "f32") return dtype::f32;
  if (s == "f16") return dtype::f16;
  if (s == "bf16") return dtype::bf16;
  throw error(fmt::format("argument '--dtype': expected f32, f16 or bf16, got '{}'", s));
}

void check_kernel_shape(const std::string& where, index_t heads, index_t kv_heads,
                        index_t head_dim) {
  if (kv_heads <= 0 || heads <= 0 || heads % kv_heads != 0)
    throw error(fmt::format("{}: expected heads ({}) a positive multiple of kv_heads ({})", where,
                            heads, kv_heads));
  if (head_dim < 8 || head_dim % 8 != 0 || head_dim > 256)
    throw error(
        fmt::format("{}: expected head_dim a multiple of 8 in [8, 256], got {}", where, head_dim));
}

// ------------------------------------------------------------------------------------------------
// Inputs

std::vector<input> synthetic_inputs(const options& o, dtype ty) {
  check_kernel_shape("synthetic", o.heads, o.kv_heads, o.head_dim);
  eval::synthetic_options so;
  so.tokens = o.tokens;
  so.heads = o.heads;
  so.kv_heads = o.kv_heads;
  so.head_dim = o.head_dim;
  so.seed = o.seed;
  const auto s = eval::make_synthetic(so);
  input in;
  in.name = "synthetic";
  in.tokens = s.tokens;
  in.heads = s.heads;
  in.kv_heads = s.kv_heads;
  in.head_dim = s.head_dim;
  in.q = stored_tensor(s.q, s.tokens, s.heads, s.head_dim, ty);
  in.k = stored_tensor(s.k, s.tokens, s.kv_heads, s.head_dim, ty);
  in.v = stored_tensor(s.v, s.tokens, s.kv_heads, s.head_dim, ty);
  in.needles = s.needles;
  std::vector<input> r;
  r.push_back(std::move(in));
  return r;
}

input load_layer(const std::string& name, const fs::path& qf, const fs::path& kf,
                 const fs::path& vf, index_t max_tokens, dtype ty) {
  index_t t[3], h[3], d[3];
  auto q = eval::read_npy_f32_3d(qf, t[0], h[0], d[0]);
  auto k = eval::read_npy_f32_3d(kf, t[1], h[1], d[1]);
  auto v = eval::read_npy_f32_3d(vf, t[2], h[2], d[2]);
  auto shape = [&](int i) { return fmt::format("[{}, {}, {}]", t[i], h[i], d[i]); };
  if (t[1] != t[0] || t[2] != t[0])
    throw error(fmt::format("input '{}': q, k, v must have the same tokens; got {} {} {}", name,
                            shape(0), shape(1), shape(2)));
  if (h[1] != h[2] || d[1] != d[2])
    throw error(fmt::format("input '{}': k {} and v {} must have the same shape", name, shape(1),
                            shape(2)));
  if (d[0] != d[1])
    throw error(
        fmt::format("input '{}': q head_dim {} differs from k head_dim {}", name, d[0], d[1]));
  check_kernel_shape(fmt::format("input '{}' ({})", name, qf.string()), h[0], h[1], d[0]);
  if (t[0] < 2)
    throw error(fmt::format("input '{}': expected at least 2 tokens, got {}", name, t[0]));
  for (const auto* x : {&q, &k, &v})
    for (float e : *x)
      if (!std::isfinite(e))
        throw error(fmt::format("input '{}': non-finite values in the Q/K/V files", name));
  index_t T = t[0];
  if (max_tokens > 0) {
    if (max_tokens > T)
      throw error(fmt::format("argument '--tokens': {} is more than input '{}' has ({})",
                              max_tokens, name, T));
    T = max_tokens;
    q.resize(static_cast<std::size_t>(T * h[0] * d[0]));
    k.resize(static_cast<std::size_t>(T * h[1] * d[1]));
    v.resize(static_cast<std::size_t>(T * h[2] * d[2]));
  }
  input in;
  // Optional needles.npy next to q.npy: int64/int32 [n, 3] rows (query head, key, query position).
  const fs::path nf =
      qf.parent_path() /
      (qf.filename().string().substr(0, qf.filename().string().size() - 5) + "needles.npy");
  const fs::path& needles_file = nf;
  if (fs::exists(needles_file)) {
    const auto a = eval::read_npy(needles_file);
    if (a.shape.size() != 2 || a.shape[1] != 3)
      throw error(fmt::format("npy file '{}': expected needles of shape [n, 3], got rank {}",
                              needles_file.string(), a.shape.size()));
    const auto n = a.to_i64();
    for (std::size_t i = 0; i + 2 < n.size(); i += 3) {
      const eval::needle e{n[i], n[i + 1], n[i + 2]};
      if (e.head < 0 || e.head >= h[0] || e.key < 0 || e.key > e.query || e.query >= T)
        throw error(
            fmt::format("npy file '{}': needle {} (head {}, key {}, query {}) outside the input",
                        needles_file.string(), i / 3, e.head, e.key, e.query));
      in.needles.push_back(e);
    }
  }
  in.name = name;
  in.tokens = T;
  in.heads = h[0];
  in.kv_heads = h[1];
  in.head_dim = d[0];
  in.q = stored_tensor(q, T, h[0], d[0], ty);
  in.k = stored_tensor(k, T, h[1], d[1], ty);
  in.v = stored_tensor(v, T, h[2], d[2], ty);
  return in;
}

std::vector<input> folder_inputs(const options& o, index_t max_tokens, dtype ty) {
  const fs::path dir = o.input;
  if (!fs::is_directory(dir))
    throw error(fmt::format("argument '--input': '{}' is not a folder", o.input));
  std::vector<input> r;
  if (fs::exists(dir / "q.npy")) {
    if (!o.layers.empty())
      throw error("argument '--layers': the input folder has q.npy, not layerNN_q.npy files");
    r.push_back(load_layer("input", dir / "q.npy", dir / "k.npy", dir / "v.npy", max_tokens, ty));
    return r;
  }
  std::map<int, std::string> layers;
  const std::regex pat("layer([0-9]+)_q\\.npy");
  for (const auto& e : fs::directory_iterator(dir)) {
    std::smatch m;
    const std::string f = e.path().filename().string();
    if (std::regex_match(f, m, pat)) layers[std::stoi(m[1].str())] = m[1].str();
  }
  if (layers.empty())
    throw error(fmt::format(
        "argument '--input': no q.npy or layerNN_q.npy in '{}' (see spattn-compare --help)",
        o.input));
  std::set<int> want(o.layers.begin(), o.layers.end());
  for (int l : want)
    if (!layers.count(l))
      throw error(fmt::format("argument '--layers': layer {} not found in '{}'", l, o.input));
  for (const auto& [l, digits] : layers) {
    if (!want.empty() && !want.count(l)) continue;
    const std::string stem = "layer" + digits;
    r.push_back(load_layer(stem, dir / (stem + "_q.npy"), dir / (stem + "_k.npy"),
                           dir / (stem + "_v.npy"), max_tokens, ty));
  }
  return r;
}

// ------------------------------------------------------------------------------------------------
// Results

struct result_row {
  std::string input, phase, method, budget, budget_note, dtype;
  std::string status = "ok";  // "not met": the method cannot meet the budget (budget_note says
                              // why); "error": it failed. Such rows have no measurements.
  index_t tokens = 0, heads = 0, kv_heads = 0, head_dim = 0, q_tokens = 0, rows_evaluated = 0;
  double density = 0, attention_flops = 0, estimation_flops = 0, seconds = 0, speedup = 0;
  double estimation_seconds = -1;  // < 0: the method has no separate estimation
  double rel_error = 0, mass_recall = 0, min_mass_recall = 0, kernel_check = -1;
  index_t needles_found = 0, needles_total = 0;
  std::vector<double> head_recall, head_error;
  std::vector<json> needles;
};

const char* csv_header =
    "input,phase,method,budget,status,budget_note,dtype,tokens,heads,kv_heads,head_dim,q_tokens,"
    "density,attention_gflops,estimation_gflops,total_gflops,time_ms,estimation_ms,speedup,"
    "rel_error,"
    "mass_recall,min_mass_recall,needle_recall,needles_found,needles_total,rows_evaluated,"
    "kernel_vs_selection_error";

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string r = "\"";
  for (char c : s) r += c == '"' ? std::string("\"\"") : std::string(1, c);
  return r + "\"";
}

std::string csv_line(const result_row& r) {
  if (r.status != "ok")  // no measurements: the shape, the status and why
    return fmt::format("{},{},{},{},{},{},{},{},{},{},{},{}", csv_field(r.input), r.phase,
                       csv_field(r.method), r.budget, r.status, csv_field(r.budget_note), r.dtype,
                       r.tokens, r.heads, r.kv_heads, r.head_dim, r.q_tokens) +
           std::string(15, ',');  // the 15 measurement columns, empty
  const double needle =
      r.needles_total ? static_cast<double>(r.needles_found) / static_cast<double>(r.needles_total)
                      : NAN;
  return fmt::format(
      "{},{},{},{},{},{},{},{},{},{},{},{},{:.6g},{:.6g},{:.6g},{:.6g},{:.6g},{},{:.6g},{:.6g},"
      "{:.6g},{:.6g},{},{},{},{},{}",
      csv_field(r.input), r.phase, csv_field(r.method), r.budget, r.status,
      csv_field(r.budget_note), r.dtype, r.tokens, r.heads, r.kv_heads, r.head_dim, r.q_tokens,
      r.density, r.attention_flops * 1e-9, r.estimation_flops * 1e-9,
      (r.attention_flops + r.estimation_flops) * 1e-9, r.seconds * 1e3,
      r.estimation_seconds >= 0 ? fmt::format("{:.6g}", r.estimation_seconds * 1e3) : "", r.speedup,
      r.rel_error, r.mass_recall, r.min_mass_recall,
      r.needles_total ? fmt::format("{:.6g}", needle) : "", r.needles_found, r.needles_total,
      r.rows_evaluated, r.kernel_check >= 0 ? fmt::format("{:.3g}", r.kernel_check) : "");
}

json to_json(const result_row& r, bool per_head) {
  if (r.status != "ok")
    return {{"input", r.input},       {"phase", r.phase},       {"method", r.method},
            {"budget", r.budget},     {"status", r.status},     {"budget_note", r.budget_note},
            {"dtype", r.dtype},       {"tokens", r.tokens},     {"heads", r.heads},
            {"kv_heads", r.kv_heads}, {"head_dim", r.head_dim}, {"q_tokens", r.q_tokens}};
  json j = {{"input", r.input},
            {"phase", r.phase},
            {"method", r.method},
            {"budget", r.budget},
            {"status", r.status},
            {"budget_note", r.budget_note},
            {"dtype", r.dtype},
            {"tokens", r.tokens},
            {"heads", r.heads},
            {"kv_heads", r.kv_heads},
            {"head_dim", r.head_dim},
            {"q_tokens", r.q_tokens},
            {"density", r.density},
            {"attention_flops", r.attention_flops},
            {"estimation_flops", r.estimation_flops},
            {"total_flops", r.attention_flops + r.estimation_flops},
            {"seconds", r.seconds},
            {"estimation_seconds",
             r.estimation_seconds >= 0 ? json(r.estimation_seconds) : json(nullptr)},
            {"speedup", r.speedup},
            {"rel_error", r.rel_error},
            {"mass_recall", r.mass_recall},
            {"min_mass_recall", r.min_mass_recall},
            {"rows_evaluated", r.rows_evaluated},
            {"needles_found", r.needles_found},
            {"needles_total", r.needles_total},
            {"needles", r.needles}};
  j["needle_recall"] =
      r.needles_total
          ? json(static_cast<double>(r.needles_found) / static_cast<double>(r.needles_total))
          : json(nullptr);
  j["kernel_vs_selection_error"] = r.kernel_check >= 0 ? json(r.kernel_check) : json(nullptr);
  if (per_head) {
    j["per_head_mass_recall"] = r.head_recall;
    j["per_head_rel_error"] = r.head_error;
  }
  return j;
}

void print_table(const std::vector<result_row>& rows) {
  fmt::print("{:<12} {:<8} {:<14} {:>8} {:>8} {:>8} {:>9} {:>9} {:>8} {:>8} {:>10} {:>8} {:>7}\n",
             "input", "phase", "method", "budget", "density", "GFLOP", "est GFLOP", "time ms",
             "est ms", "speedup", "rel error", "recall", "needle");
  for (const auto& r : rows) {
    if (r.status != "ok") {
      fmt::print("{:<12} {:<8} {:<14} {:>8} {}: {}\n", r.input, r.phase, r.method, r.budget,
                 r.status, r.budget_note);
      continue;
    }
    const std::string needle =
        r.needles_total ? fmt::format("{}/{}", r.needles_found, r.needles_total) : "-";
    const std::string est =
        r.estimation_seconds >= 0 ? fmt::format("{:.3f}", r.estimation_seconds * 1e3) : "-";
    fmt::print(
        "{:<12} {:<8} {:<14} {:>8} {:>8.4f} {:>8.3f} {:>9.3f} {:>9.3f} {:>8} {:>7.2f}x {:>10.3e} "
        "{:>8.4f} {:>7}\n",
        r.input, r.phase, r.method, r.budget, r.density, r.attention_flops * 1e-9,
        r.estimation_flops * 1e-9, r.seconds * 1e3, est, r.speedup, r.rel_error, r.mass_recall,
        needle);
  }
}

void write_text(const fs::path& p, const std::string& s) {
  std::ofstream f(p, std::ios::trunc);
  f << s;
  f.close();
  if (!f) throw error(fmt::format("cannot write '{}'", p.string()));
}

void save_key_sets(const fs::path& dir, const key_set_fn& keys, const std::vector<index_t>& rows,
                   index_t heads) {
  fs::create_directories(dir);
  std::vector<std::int64_t> offsets{0}, all;
  for (index_t h = 0; h < heads; ++h) {
    for (index_t t : rows) {
      const auto ks = keys(h, t);
      all.insert(all.end(), ks.begin(), ks.end());
      offsets.push_back(static_cast<std::int64_t>(all.size()));
    }
  }
  const std::vector<std::int64_t> r(rows.begin(), rows.end());
  const std::vector<index_t> s_rows{static_cast<index_t>(r.size())},
      s_off{static_cast<index_t>(offsets.size())}, s_keys{static_cast<index_t>(all.size())};
  eval::write_npy<std::int64_t>(dir / "rows.npy", s_rows, r);
  eval::write_npy<std::int64_t>(dir / "offsets.npy", s_off, offsets);
  eval::write_npy<std::int64_t>(dir / "keys.npy", s_keys, all);
}

// The input as the tool saw it (after --dtype rounding; bf16 is written widened to '<f4'), in the
// --input format, plus needles.npy (int64 [n, 3]: head, key, query) for synthetic inputs.
void save_input(const fs::path& dir, const input& in) {
  fs::create_directories(dir);
  auto save = [&](const char* file, const stored_tensor& x) {
    const std::vector<index_t> shape{x.tokens, x.heads, x.head_dim};
    if (x.type == dtype::f16) {
      eval::write_npy<f16>(dir / file, shape, x.h16);
    } else if (x.type == dtype::bf16) {
      std::vector<float> w;
      for (bf16 e : x.b16) w.push_back(to_float(e));
      eval::write_npy<float>(dir / file, shape, w);
    } else {
      eval::write_npy<float>(dir / file, shape, x.f32);
    }
  };
  save("q.npy", in.q);
  save("k.npy", in.k);
  save("v.npy", in.v);
  if (!in.needles.empty()) {
    std::vector<std::int64_t> n;
    for (const auto& e : in.needles) n.insert(n.end(), {e.head, e.key, e.query});
    const std::vector<index_t> shape{static_cast<index_t>(in.needles.size()), 3};
    eval::write_npy<std::int64_t>(dir / "needles.npy", shape, n);
  }
}

std::string safe_name(std::string s) {
  for (char& c : s)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '.' && c != '_') c = '_';
  return s;
}

// ------------------------------------------------------------------------------------------------
// The comparison

struct progress {
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
  void operator()(const std::string& what) const {
    const double s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    fmt::print(stderr, "spattn-compare [{:6.1f}s] {}\n", s, what);
    std::fflush(stderr);
  }
};

// The 1-minute load average (Linux), or -1.
double load_average() {
  std::ifstream f("/proc/loadavg");
  double l = -1;
  if (f) f >> l;
  return l;
}

struct pending {
  const method* m;
  std::string budget_label;
  method_run run;
  std::string status = "ok", why;  // "not met" / "error": no run, `why` says why
};

std::string without_prefix(std::string s) {
  const std::string prefix = "spattn: ";
  return s.rfind(prefix, 0) == 0 ? s.substr(prefix.size()) : s;
}

void compare_problem(const problem& p, const std::vector<const method*>& methods,
                     const std::vector<budget_spec>& budgets, const options& o, const progress& log,
                     const fs::path& tmp, std::vector<result_row>& results) {
  const std::string ph = phase_name(p.ph);
  const auto rows = eval::evaluation_rows(
      p.q_tokens, p.q_offset, p.ph == phase::decode ? p.q_tokens : o.eval_rows, p.in->needles);
  const index_t HD = p.heads() * p.head_dim();
  // Keeps only the kernel output rows that are evaluated (bounded memory for long inputs):
  // afterwards out holds rows.size() rows, NaN where the kernel did not produce the row.
  auto trim_output = [&](method_run& r) {
    if (r.out.empty()) return;
    std::vector<float> kept(rows.size() * static_cast<std::size_t>(HD),
                            std::numeric_limits<float>::quiet_NaN());
    for (std::size_t i = 0; i < rows.size(); ++i) {
      if (rows[i] < r.out_first) continue;
      std::copy_n(r.out.data() + (rows[i] - r.out_first) * HD, HD,
                  kept.data() + i * static_cast<std::size_t>(HD));
    }
    r.out = std::move(kept);
  };
  std::vector<pending> runs;
  for (const method* m : methods) {
    if ((p.ph == phase::prefill && !m->prefill) || (p.ph == phase::decode && !m->decode)) continue;
    const std::vector<budget_spec> once{{"-", budget::policy_default()}};
    for (const auto& b : m->uses_budget ? budgets : once) {
      log(fmt::format("{} {}: {} {}", p.in->name, ph, m->name, b.label));
      // A budget a method cannot meet (e.g. below its forced parts, or coverage for a fixed
      // pattern) is reported as such, not fatal; so is a method that fails on this input.
      try {
        runs.push_back({m, b.label, m->run(p, b.b), "ok", ""});
        trim_output(runs.back().run);
        continue;
      } catch (const budget_not_met& e) {
        runs.push_back({m, b.label, {}, "not met", without_prefix(e.what())});
      } catch (const spattn::error& e) {
        runs.push_back({m, b.label, {}, "error", without_prefix(e.what())});
      }
      log(fmt::format("  {}: {}", runs.back().status, runs.back().why));
    }
  }
  std::vector<key_set_fn> sets;
  std::vector<std::size_t> set_of(runs.size(), 0);  // index into sets / acc of an ok run
  for (std::size_t i = 0; i < runs.size(); ++i) {
    if (runs[i].status != "ok") continue;
    set_of[i] = sets.size();
    sets.push_back(runs[i].run.keys);
  }
  log(fmt::format("{} {}: accuracy of {} runs on {} query rows (double precision)", p.in->name, ph,
                  sets.size(), rows.size()));
  std::vector<eval::key_set_accuracy> acc;
  with_storage_type(p.type(), [&](auto tag) {
    using T = decltype(tag);
    acc = eval::evaluate_key_sets(p.q().as<T>(), p.k().as<T>(), p.v().as<T>(),
                                  std::span<const key_set_fn>(sets), rows, 0.0, p.q_offset, p.exec);
  });
  double dense_seconds = 0;
  for (const auto& r : runs)
    if (r.m->name == "dense") dense_seconds = r.run.seconds;
  const double causal =
      static_cast<double>(p.heads()) * eval::causal_pairs(p.q_tokens, p.tokens(), p.q_offset);
  const index_t H = p.heads(), D = p.head_dim();
  for (std::size_t run_i = 0; run_i < runs.size(); ++run_i) {
    const auto& r = runs[run_i];
    const std::size_t i = set_of[run_i];
    result_row row;
    row.input = p.in->name;
    row.phase = ph;
    row.method = r.m->name;
    row.budget = r.budget_label;
    row.budget_note = r.run.budget_note;
    row.dtype = std::string(dtype_name(p.type()));
    row.tokens = p.tokens();
    row.heads = H;
    row.kv_heads = p.kv_heads();
    row.head_dim = D;
    row.q_tokens = p.q_tokens;
    if (r.status != "ok") {
      row.status = r.status;
      row.budget_note = r.why;
      results.push_back(std::move(row));
      continue;
    }
    row.rows_evaluated = static_cast<index_t>(rows.size());
    const double pairs = r.run.computed_pairs >= 0
                             ? r.run.computed_pairs
                             : eval::count_pairs(r.run.keys, H, p.q_tokens, p.q_offset);
    row.density = pairs / causal;
    row.attention_flops = eval::attention_flops(pairs, D);
    if (p.ph == phase::decode) row.attention_flops /= static_cast<double>(p.q_tokens);  // per step
    row.estimation_flops = r.run.estimation_flops;
    row.seconds = r.run.seconds;
    row.estimation_seconds = r.run.estimation_seconds;
    row.speedup = r.run.seconds > 0 ? dense_seconds / r.run.seconds : 0.0;
    row.rel_error = acc[i].error.overall;
    row.mass_recall = acc[i].mass_recall;
    row.min_mass_recall = acc[i].min_mass_recall;
    row.head_recall = acc[i].mass_recall_per_head;
    row.head_error = acc[i].error.per_head;
    const auto nr = eval::needle_recall_of(p.in->needles, r.run.keys, p.q_offset, p.q_tokens);
    row.needles_found = nr.found;
    row.needles_total = nr.total;
    for (std::size_t n = 0; n < nr.evaluated.size(); ++n)
      row.needles.push_back({{"head", nr.evaluated[n].head},
                             {"key", nr.evaluated[n].key},
                             {"query", nr.evaluated[n].query},
                             {"kept", static_cast<bool>(nr.kept[n])}});
    // The kernel computed what the key set says: its output against the key-set output in double.
    if (!r.run.out.empty()) {
      double num = 0, den = 0;
      for (std::size_t x = 0; x < r.run.out.size(); ++x) {
        if (std::isnan(r.run.out[x])) continue;  // a row the kernel did not produce
        const double a = r.run.out[x], b = acc[i].out[x];
        num += (a - b) * (a - b);
        den += b * b;
      }
      row.kernel_check = den > 0 ? std::sqrt(num / den) : 0.0;
    }
    if (o.save_selections) {
      const fs::path dir = tmp / "selections" / safe_name(p.in->name) / ph / safe_name(r.m->name) /
                           safe_name(r.budget_label);
      save_key_sets(dir, r.run.keys, rows, H);
      if (r.run.save_selection) r.run.save_selection(dir);
    }
    results.push_back(std::move(row));
  }
}

int run(const options& o, const CLI::App& app) {
  const auto all = builtin_methods();
  if (o.list_methods) {
    for (const auto& m : all)
      fmt::print("{:<18} {}{}  {}\n", m.name, m.prefill ? "prefill " : "", m.decode ? "decode" : "",
                 m.description);
    return 0;
  }
  const progress log;
  const dtype ty = parse_dtype(o.dtype_name);
  std::vector<budget_spec> budgets;
  for (const auto& s : o.budgets) budgets.push_back(parse_budget(s));
  if (budgets.empty()) throw error("argument '--budgets': expected at least one budget");
  std::vector<const method*> methods;
  const method* dense = nullptr;
  for (const auto& m : all)
    if (m.name == "dense") dense = &m;
  methods.push_back(dense);  // always: the reference for speedups
  for (const auto& name : o.methods) {
    const auto it =
        std::find_if(all.begin(), all.end(), [&](const method& m) { return m.name == name; });
    if (it == all.end()) {
      std::vector<std::string> names;
      for (const auto& m : all) names.push_back(m.name);
      throw error(fmt::format("argument '--methods': unknown method '{}' (available: {})", name,
                              fmt::join(names, ", ")));
    }
    if (&*it != dense) methods.push_back(&*it);
  }
  if (o.methods.empty())
    for (const auto& m : all)
      if (&m != dense) methods.push_back(&m);
  if (o.phase != "prefill" && o.phase != "decode" && o.phase != "both")
    throw error(
        fmt::format("argument '--phase': expected prefill, decode or both, got '{}'", o.phase));
  if (o.threads < 0) throw error("argument '--threads': expected >= 0");
  if (o.reps < 1) throw error("argument '--reps': expected >= 1");
  if (o.eval_rows < 1) throw error("argument '--eval-rows': expected >= 1");

  // Output folder: checked before the work, written at the end.
  const fs::path out = fs::absolute(o.out);
  if (fs::exists(out) && !fs::is_directory(out))
    throw error(fmt::format("argument '--out': '{}' exists and is not a folder", o.out));
  const std::string leaf = out.lexically_normal().filename().string();
  if (leaf.empty() || leaf == "." || leaf == "..")
    throw error(fmt::format("argument '--out': expected a folder name, got '{}'", o.out));
  if (!o.input.empty() && fs::exists(o.input)) {
    // The output folder is replaced as a whole: it must not hold the input.
    const auto in_abs = fs::weakly_canonical(fs::absolute(o.input));
    const auto out_abs = fs::weakly_canonical(out);
    const auto rel = in_abs.lexically_relative(out_abs);
    if (!rel.empty() && *rel.begin() != "..")
      throw error(
          fmt::format("argument '--out': '{}' contains the input folder '{}', which "
                      "would be replaced",
                      o.out, o.input));
  }
  if (o.plot && !fs::exists(o.plot_script))
    throw error(fmt::format("argument '--plot': plot script '{}' not found (--plot-script)",
                            o.plot_script));

  std::vector<input> inputs;
  if (o.input.empty()) {
    inputs = synthetic_inputs(o, ty);
  } else {
    const bool tokens_set = app.count("--tokens") > 0;
    inputs = folder_inputs(o, tokens_set ? o.tokens : 0, ty);
  }
  for (const auto& in : inputs) {
    if (o.phase != "prefill" && in.tokens <= o.decode_queries)
      throw error(fmt::format("argument '--decode-queries': {} needs more than {} tokens in '{}'",
                              o.decode_queries, in.tokens, in.name));
  }
  if (o.decode_queries < 1) throw error("argument '--decode-queries': expected >= 1");

  const double load = load_average();
  const int workers = executor::openmp(o.threads).concurrency();
  if (load > 0.5 && load + workers > 1.25 * std::thread::hardware_concurrency())
    log(
        fmt::format("warning: load average {:.1f} on {} hardware threads: other work will disturb "
                    "the timings (--threads 1 is steadier on a busy machine)",
                    load, std::thread::hardware_concurrency()));
  const fs::path tmp = out.parent_path() / fmt::format(".{}.tmp-{}", out.filename().string(),
                                                       static_cast<long>(::getpid()));
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  try {
    std::vector<result_row> results;
    for (const auto& in : inputs) {
      log(fmt::format("input {}: {} tokens, {} heads / {} KV heads, head_dim {}, {}", in.name,
                      in.tokens, in.heads, in.kv_heads, in.head_dim, dtype_name(ty)));
      if (o.save_inputs) save_input(tmp / "inputs" / safe_name(in.name), in);
      for (const phase ph : {phase::prefill, phase::decode}) {
        if (o.phase != "both" && o.phase != phase_name(ph)) continue;
        problem p;
        p.in = &in;
        p.ph = ph;
        p.q_offset = ph == phase::prefill ? 0 : in.tokens - o.decode_queries;
        p.q_tokens = ph == phase::prefill ? in.tokens : o.decode_queries;
        p.exec = executor::openmp(o.threads);
        p.reps = o.reps;
        compare_problem(p, methods, budgets, o, log, tmp, results);
      }
    }
    print_table(results);

    std::string csv = std::string(csv_header) + "\n";
    for (const auto& r : results) csv += csv_line(r) + "\n";
    write_text(tmp / "results.csv", csv);
    json j;
    std::vector<std::string> budget_labels;
    for (const auto& b : budgets) budget_labels.push_back(b.label);
    std::vector<std::string> method_names;
    for (const auto* m : methods) method_names.push_back(m->name);
    j["config"] = {{"spattn_version", fmt::format("{}.{}.{}", SPATTN_VERSION_MAJOR,
                                                  SPATTN_VERSION_MINOR, SPATTN_VERSION_PATCH)},
                   {"input", o.input.empty() ? std::string("synthetic") : o.input},
                   {"seed", o.seed},
                   {"dtype", o.dtype_name},
                   {"phase", o.phase},
                   {"methods", method_names},
                   {"budgets", budget_labels},
                   {"threads", executor::openmp(o.threads).concurrency()},
                   {"hardware_threads", std::thread::hardware_concurrency()},
                   {"load_average_at_start", load},
                   {"reps", o.reps},
                   {"eval_rows", o.eval_rows},
                   {"decode_queries", o.decode_queries}};
    j["results"] = json::array();
    for (const auto& r : results) j["results"].push_back(to_json(r, o.per_head));
    write_text(tmp / "results.json", j.dump(2) + "\n");
    if (o.per_head) {
      std::string ph = "input,phase,method,budget,head,mass_recall,rel_error\n";
      for (const auto& r : results)
        for (std::size_t h = 0; h < r.head_recall.size(); ++h)
          ph += fmt::format("{},{},{},{},{},{:.6g},{:.6g}\n", csv_field(r.input), r.phase,
                            csv_field(r.method), r.budget, h, r.head_recall[h], r.head_error[h]);
      write_text(tmp / "per_head.csv", ph);
    }
    if (o.plot) {
      log("plotting the frontier");
      const std::string cmd =
          fmt::format("'{}' '{}' '{}' '{}'", o.python, o.plot_script,
                      (tmp / "results.json").string(), (tmp / "frontier.png").string());
      if (std::system(cmd.c_str()) != 0)
        throw error(fmt::format("plotting failed: {} (is python3-matplotlib installed?)", cmd));
    }
    // Swap the finished folder into place.
    const fs::path old = out.parent_path() / fmt::format(".{}.old-{}", out.filename().string(),
                                                         static_cast<long>(::getpid()));
    if (fs::exists(out)) fs::rename(out, old);
    fs::rename(tmp, out);
    fs::remove_all(old);
    log(fmt::format("wrote {}", out.string()));
  } catch (...) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    throw;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "spattn-compare: compare dense and sparse attention methods on structured synthetic data or "
      "your own Q/K/V, and write results/ (CSV, JSON, optional plot).\n\n"
      "Input folder (--input): q.npy, k.npy, v.npy or layerNN_{q,k,v}.npy, '<f4' or '<f2', shapes\n"
      "[tokens, heads, head_dim] (q) and [tokens, kv_heads, head_dim] (k, v), after RoPE\n"
      "(tools/export_qkv.py writes them). Budgets: N or Nx (compression N), kept:F, tokens:N,\n"
      "coverage:F, default (each policy's reference parameters). A budget a method cannot meet\n"
      "is reported (status 'not met' in the table, CSV and JSON), not fatal.\n\n"
      "Selections (--save-selections): selections/<input>/<phase>/<method>/<budget>/ holds\n"
      "  rows.npy, offsets.npy, keys.npy: int64 CSR key lists of the evaluated query rows (keys "
      "of\n"
      "    query head h, row i: keys[offsets[h*R+i] : offsets[h*R+i+1]], R = len(rows));\n"
      "  for prefill policies, the selection itself, per query head h and query block b (entry\n"
      "  e = h*q_blocks + b, query tokens [b*block_q, (b+1)*block_q)):\n"
      "    layout.npy: int64 [heads, q_tokens, k_tokens, q_offset, q_blocks, block_q, block_k];\n"
      "    block_starts.npy + block_offsets.npy: key blocks [s, s+block_k) of entry e are\n"
      "      block_starts[block_offsets[e] : block_offsets[e+1]];\n"
      "    columns.npy + column_offsets.npy: extra key columns of entry e, likewise.\n"
      "  Keys past a query's position are masked (causal).\n"
      "  For decode policies (quest), the pages of every decode step, per selection head s (a KV\n"
      "  head, or a query head when per_query_head) and step i (entry e = s*steps + i):\n"
      "    decode_layout.npy: int64 [heads, steps, q_offset, page_size, group, per_query_head];\n"
      "    pages.npy + page_offsets.npy: pages of entry e are pages[page_offsets[e] :\n"
      "      page_offsets[e+1]], page p the tokens [p*page_size, min((p+1)*page_size, length)),\n"
      "      length = page_lengths.npy[e] (q_offset + i + 1).\n"
      "  For eviction policies (snapkv, ada-snapkv, streaming-llm), the prompt tokens kept:\n"
      "    eviction_layout.npy: int64 [kv_heads, group, prompt tokens L, steps];\n"
      "    kept.npy + kept_offsets.npy: KV head g keeps kept[kept_offsets[g]:kept_offsets[g+1]];\n"
      "      decode step i of query head h reads those of KV head h/group and tokens [L, L+i].\n"
      "  Decode: the last --decode-queries tokens are decode steps; quest selects per step over\n"
      "  the full cache (time: selection + sparse decode of one step); eviction methods evict\n"
      "  the prompt's cache once (reported as estimation, paid once per sequence) and are\n"
      "  timed on one decode step over the evicted cache.",
      "spattn-compare"};
  options o;
  app.add_option("--methods", o.methods,
                 "methods to compare (default: all; dense always runs; see --list-methods)")
      ->delimiter(',');
  app.add_option("--budgets", o.budgets,
                 "budgets: N (compression), kept:F, tokens:N, coverage:F, default; a suffix "
                 "@adaptive shares a budget across heads (e.g. 10@adaptive)")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--tokens", o.tokens, "sequence length (with --input: use the first N tokens)")
      ->capture_default_str()
      ->check(CLI::Range(index_t{64}, index_t{1} << 22));
  auto* heads =
      app.add_option("--heads", o.heads, "query heads (synthetic)")->capture_default_str();
  auto* kvh =
      app.add_option("--kv-heads", o.kv_heads, "KV heads (synthetic)")->capture_default_str();
  auto* hd =
      app.add_option("--head-dim", o.head_dim, "head_dim (synthetic)")->capture_default_str();
  app.add_option("--dtype", o.dtype_name, "storage of Q/K/V: f32, f16, bf16")
      ->capture_default_str()
      ->check(CLI::IsMember({"f32", "f16", "bf16"}));
  app.add_option("--threads", o.threads, "threads (0: OpenMP default)")->capture_default_str();
  app.add_option("--phase", o.phase, "prefill, decode or both")
      ->capture_default_str()
      ->check(CLI::IsMember({"prefill", "decode", "both"}));
  app.add_option("--out", o.out, "results folder (replaced atomically)")->capture_default_str();
  app.add_option("--seed", o.seed, "seed of the synthetic data")->capture_default_str();
  auto* in = app.add_option("--input", o.input, "folder of .npy Q/K/V (default: synthetic)");
  app.add_option("--layers", o.layers, "layers of --input to use (default: all)")
      ->delimiter(',')
      ->needs(in);
  heads->excludes(in);
  kvh->excludes(in);
  hd->excludes(in);
  app.add_flag("--save-selections", o.save_selections, "write selections as .npy index arrays");
  app.add_flag("--save-inputs", o.save_inputs,
               "write the Q/K/V used (inputs/<name>/{q,k,v}.npy, needles.npy)");
  app.add_flag("--per-head", o.per_head, "per-head recall and error (per_head.csv, JSON)");
  app.add_flag("--plot", o.plot, "write frontier.png with tools/plot_frontier.py (matplotlib)");
  app.add_option("--plot-script", o.plot_script, "path of plot_frontier.py")->capture_default_str();
  app.add_option("--python", o.python, "python interpreter for --plot")->capture_default_str();
  app.add_option("--reps", o.reps, "timing samples (the fastest is reported)")
      ->capture_default_str();
  app.add_option("--eval-rows", o.eval_rows, "prefill query rows evaluated in double")
      ->capture_default_str();
  app.add_option("--decode-queries", o.decode_queries, "last tokens evaluated as decode steps")
      ->capture_default_str();
  app.add_flag("--list-methods", o.list_methods, "list the methods and exit");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    return run(o, app);
  } catch (const std::exception& e) {
    fmt::print(stderr, "spattn-compare: error: {}\n", e.what());
    return 1;
  }
}
