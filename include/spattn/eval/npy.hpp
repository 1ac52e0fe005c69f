#pragma once
// NumPy .npy files: a small, strict reader and writer (format versions 1.0, 2.0 and 3.0; the
// header must be ASCII, which is all numpy writes for these dtypes).
//
// Supported: little-endian '<f4' (float), '<f2' (IEEE half, spattn::f16), '<i8' and '<i4'
// (index arrays), C order, any rank (including 0-d). Everything else is rejected with a
// spattn::error naming the file and the problem: bad magic, unknown version, truncated header or
// data, a header that is not the dict numpy writes ({'descr': ..., 'fortran_order': ...,
// 'shape': (...)}, keys once each, in any order), big-endian or other dtypes, Fortran order,
// negative or overflowing shapes, and a data size that differs from the shape's (trailing bytes
// included). Files are read whole; data is returned as raw little-endian bytes plus typed helpers.
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "spattn/core/dtype.hpp"
#include "spattn/core/error.hpp"
#include "spattn/core/tensor_view.hpp"

namespace spattn::eval {

static_assert(std::endian::native == std::endian::little, "npy I/O assumes a little-endian host");

enum class npy_dtype { f32, f16, i64, i32 };

inline std::string_view npy_descr(npy_dtype t) {
  switch (t) {
    case npy_dtype::f32:
      return "<f4";
    case npy_dtype::f16:
      return "<f2";
    case npy_dtype::i64:
      return "<i8";
    case npy_dtype::i32:
      return "<i4";
  }
  return "?";
}
inline std::size_t npy_itemsize(npy_dtype t) {
  return t == npy_dtype::f16 ? 2 : (t == npy_dtype::i64 ? 8 : 4);
}

struct npy_header {
  npy_dtype type = npy_dtype::f32;
  std::vector<index_t> shape;
  std::size_t data_offset = 0;  // bytes before the data
  std::size_t count = 1;        // number of elements (product of shape)
};

struct npy_array {
  npy_dtype type = npy_dtype::f32;
  std::vector<index_t> shape;
  std::vector<std::byte> data;  // count * itemsize little-endian bytes
  std::size_t count() const { return data.size() / npy_itemsize(type); }

  // Elements converted to float (f32 or f16 arrays) or to int64 (i64 or i32 arrays).
  std::vector<float> to_f32() const {
    std::vector<float> r(count());
    for (std::size_t i = 0; i < r.size(); ++i) {
      if (type == npy_dtype::f32) {
        std::memcpy(&r[i], data.data() + 4 * i, 4);
      } else if (type == npy_dtype::f16) {
        f16 h;
        std::memcpy(&h.bits, data.data() + 2 * i, 2);
        r[i] = to_float(h);
      } else {
        throw error(spattn::detail::concat("npy: expected a float array ('<f4' or '<f2'), got '",
                                           npy_descr(type), "'"));
      }
    }
    return r;
  }
  std::vector<std::int64_t> to_i64() const {
    std::vector<std::int64_t> r(count());
    for (std::size_t i = 0; i < r.size(); ++i) {
      if (type == npy_dtype::i64) {
        std::memcpy(&r[i], data.data() + 8 * i, 8);
      } else if (type == npy_dtype::i32) {
        std::int32_t x;
        std::memcpy(&x, data.data() + 4 * i, 4);
        r[i] = x;
      } else {
        throw error(spattn::detail::concat("npy: expected an integer array ('<i8' or '<i4'), got '",
                                           npy_descr(type), "'"));
      }
    }
    return r;
  }
};

namespace detail {

// A cursor over the header dict; every failure names the file.
struct npy_dict_parser {
  std::string_view s;
  std::size_t i = 0;
  const std::string& name;

  [[noreturn]] void fail(const std::string& what) const {
    throw error(spattn::detail::concat("npy file '", name, "': ", what));
  }
  void ws() {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) ++i;
  }
  bool eat(char c) {
    ws();
    if (i < s.size() && s[i] == c) return ++i, true;
    return false;
  }
  void expect(char c, const char* where) {
    if (!eat(c)) fail(spattn::detail::concat("malformed header: expected '", c, "' ", where));
  }
  std::string_view quoted() {
    ws();
    if (i >= s.size() || (s[i] != '\'' && s[i] != '"')) fail("malformed header: expected a string");
    const char q = s[i++];
    const std::size_t b = i;
    while (i < s.size() && s[i] != q) ++i;
    if (i >= s.size()) fail("malformed header: unterminated string");
    return s.substr(b, i++ - b);
  }
  bool boolean() {
    ws();
    for (const auto& [word, value] : {std::pair{"True", true}, std::pair{"False", false}}) {
      const std::string_view w = word;
      if (s.substr(i, w.size()) == w) return i += w.size(), value;
    }
    fail("malformed header: 'fortran_order' must be True or False");
  }
  index_t integer() {
    ws();
    if (i >= s.size() || s[i] < '0' || s[i] > '9') fail("malformed header: bad shape entry");
    index_t v = 0;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9') {
      if (v > (std::numeric_limits<index_t>::max() - 9) / 10) fail("shape entry overflows");
      v = v * 10 + (s[i++] - '0');
    }
    if (i < s.size() && (s[i] == 'L' || s[i] == 'l')) ++i;  // Python 2 longs
    return v;
  }
  std::vector<index_t> tuple() {
    expect('(', "to open 'shape'");
    std::vector<index_t> dims;
    if (eat(')')) return dims;
    for (;;) {
      dims.push_back(integer());
      if (eat(')')) {
        return dims;
      }
      expect(',', "between shape entries");
      if (eat(')')) return dims;
    }
  }
};

}  // namespace detail

// Parses the magic, version and header dict of the file `name` (for messages) whose first bytes
// are `bytes`, and checks that exactly count * itemsize data bytes follow.
inline npy_header parse_npy_header(std::span<const std::byte> bytes, const std::string& name) {
  auto fail = [&](const std::string& what) -> void {
    throw error(spattn::detail::concat("npy file '", name, "': ", what));
  };
  auto u8 = [&](std::size_t at) { return std::to_integer<std::uint32_t>(bytes[at]); };
  static constexpr unsigned char magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
  if (bytes.size() < 10)
    fail(spattn::detail::concat("truncated: ", bytes.size(), " bytes, no header"));
  for (std::size_t j = 0; j < 6; ++j)
    if (u8(j) != magic[j]) fail("not a .npy file (bad magic string)");
  const std::uint32_t major = u8(6), minor = u8(7);
  if (major < 1 || major > 3 || minor != 0)
    fail(spattn::detail::concat("unsupported format version ", major, ".", minor,
                                " (1.0, 2.0, 3.0)"));
  std::size_t len_bytes = major == 1 ? 2 : 4;
  if (bytes.size() < 8 + len_bytes) fail("truncated header length");
  std::size_t hlen = 0;
  for (std::size_t j = 0; j < len_bytes; ++j)
    hlen |= static_cast<std::size_t>(u8(8 + j)) << (8 * j);
  npy_header h;
  h.data_offset = 8 + len_bytes + hlen;
  if (bytes.size() < h.data_offset)
    fail(spattn::detail::concat("truncated header: needs ", h.data_offset, " bytes, file has ",
                                bytes.size()));
  const std::string_view text(reinterpret_cast<const char*>(bytes.data()) + 8 + len_bytes, hlen);
  for (char c : text)
    if (static_cast<unsigned char>(c) >= 0x80 || c == '\0') fail("header is not ASCII text");

  detail::npy_dict_parser p{text, 0, name};
  bool seen_descr = false, seen_order = false, seen_shape = false;
  p.expect('{', "to open the header dict");
  while (!p.eat('}')) {
    const std::string_view key = p.quoted();
    p.expect(':', "after a key");
    if (key == "descr" && !seen_descr) {
      seen_descr = true;
      const std::string_view d = p.quoted();
      if (d == "<f4")
        h.type = npy_dtype::f32;
      else if (d == "<f2")
        h.type = npy_dtype::f16;
      else if (d == "<i8")
        h.type = npy_dtype::i64;
      else if (d == "<i4")
        h.type = npy_dtype::i32;
      else
        fail(spattn::detail::concat("unsupported dtype '", d,
                                    "' (expected '<f4', '<f2', '<i8' or '<i4')"));
    } else if (key == "fortran_order" && !seen_order) {
      seen_order = true;
      if (p.boolean()) fail("Fortran-order arrays are not supported (expected C order)");
    } else if (key == "shape" && !seen_shape) {
      seen_shape = true;
      h.shape = p.tuple();
    } else {
      p.fail(spattn::detail::concat("malformed header: unexpected or repeated key '", key, "'"));
    }
    if (!p.eat(',')) {
      p.expect('}', "to close the header dict");
      break;
    }
  }
  p.ws();
  if (p.i != text.size()) fail("malformed header: text after the dict");
  if (!seen_descr || !seen_order || !seen_shape)
    fail("malformed header: needs the keys 'descr', 'fortran_order' and 'shape'");
  const std::size_t item = npy_itemsize(h.type);
  const std::size_t limit = std::numeric_limits<std::size_t>::max() / item;
  for (index_t dim : h.shape) {
    const auto u = static_cast<std::size_t>(dim);
    if (u != 0 && h.count > limit / u) fail("shape overflows the addressable size");
    h.count *= u;
  }
  const std::size_t have = bytes.size() - h.data_offset;
  if (have != h.count * item)
    fail(spattn::detail::concat(
        have < h.count * item ? "truncated data" : "trailing bytes after the data",
        ": shape needs ", h.count * item, " bytes, file has ", have));
  return h;
}

inline npy_array parse_npy(std::span<const std::byte> bytes, const std::string& name) {
  const npy_header h = parse_npy_header(bytes, name);
  npy_array a;
  a.type = h.type;
  a.shape = h.shape;
  a.data.assign(bytes.begin() + static_cast<std::ptrdiff_t>(h.data_offset), bytes.end());
  return a;
}

inline npy_array read_npy(const std::filesystem::path& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw error(spattn::detail::concat("npy file '", path.string(), "': cannot open"));
  std::vector<std::byte> bytes;
  f.seekg(0, std::ios::end);
  const auto size = f.tellg();
  if (size < 0) throw error(spattn::detail::concat("npy file '", path.string(), "': cannot read"));
  f.seekg(0);
  bytes.resize(static_cast<std::size_t>(size));
  if (!f.read(reinterpret_cast<char*>(bytes.data()), size))
    throw error(spattn::detail::concat("npy file '", path.string(), "': read failed"));
  return parse_npy(bytes, path.string());
}

// The bytes of a version 1.0 .npy file (2.0 when the header needs more than 65535 bytes).
inline std::vector<std::byte> encode_npy(npy_dtype type, std::span<const index_t> shape,
                                         const void* data) {
  std::string dict = spattn::detail::concat("{'descr': '", npy_descr(type),
                                            "', 'fortran_order': False, 'shape': (");
  std::size_t count = 1;
  for (std::size_t j = 0; j < shape.size(); ++j) {
    require(shape[j] >= 0, "npy shape", "entries >= 0", shape[j]);
    count *= static_cast<std::size_t>(shape[j]);
    dict += spattn::detail::concat(shape[j],
                                   shape.size() == 1 ? "," : (j + 1 < shape.size() ? ", " : ""));
  }
  dict += "), }";
  const std::size_t len_bytes = dict.size() + 11 > 65535 ? 4 : 2;
  const std::size_t pre = 8 + len_bytes;
  std::size_t total = pre + dict.size() + 1;
  dict.append((64 - total % 64) % 64, ' ');
  dict += '\n';
  std::vector<std::byte> out(pre + dict.size() + count * npy_itemsize(type));
  const unsigned char magic[8] = {
      0x93, 'N', 'U', 'M', 'P', 'Y', static_cast<unsigned char>(len_bytes == 2 ? 1 : 2), 0};
  std::memcpy(out.data(), magic, 8);
  for (std::size_t j = 0; j < len_bytes; ++j)
    out[8 + j] = static_cast<std::byte>((dict.size() >> (8 * j)) & 0xff);
  std::memcpy(out.data() + pre, dict.data(), dict.size());
  if (count) std::memcpy(out.data() + pre + dict.size(), data, count * npy_itemsize(type));
  return out;
}

inline void write_npy(const std::filesystem::path& path, npy_dtype type,
                      std::span<const index_t> shape, const void* data) {
  const auto bytes = encode_npy(type, shape, data);
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  f.close();
  if (!f) throw error(spattn::detail::concat("npy file '", path.string(), "': write failed"));
}

template <class T>
inline constexpr npy_dtype npy_dtype_of() {
  if constexpr (std::is_same_v<T, float>)
    return npy_dtype::f32;
  else if constexpr (std::is_same_v<T, f16>)
    return npy_dtype::f16;
  else if constexpr (std::is_same_v<T, std::int64_t>)
    return npy_dtype::i64;
  else {
    static_assert(std::is_same_v<T, std::int32_t>, "npy element: float, f16, int64 or int32");
    return npy_dtype::i32;
  }
}

template <class T>
inline void write_npy(const std::filesystem::path& path, std::span<const index_t> shape,
                      std::span<const T> values) {
  std::size_t count = 1;
  for (index_t s : shape) count *= static_cast<std::size_t>(s < 0 ? 0 : s);
  require(values.size() == count, "npy values",
          spattn::detail::lazy(count, " elements for the shape"), values.size());
  write_npy(path, npy_dtype_of<T>(), shape, values.data());
}

// Reads a [tokens, heads, head_dim] float (f4 or f2) array as fp32; checks the rank.
inline std::vector<float> read_npy_f32_3d(const std::filesystem::path& path, index_t& tokens,
                                          index_t& heads, index_t& head_dim) {
  const npy_array a = read_npy(path);
  if (a.shape.size() != 3)
    throw error(spattn::detail::concat(
        "npy file '", path.string(), "': expected a 3-d array [tokens, heads, head_dim], got rank ",
        a.shape.size()));
  if (a.type != npy_dtype::f32 && a.type != npy_dtype::f16)
    throw error(spattn::detail::concat("npy file '", path.string(),
                                       "': expected dtype '<f4' or '<f2', got '", npy_descr(a.type),
                                       "'"));
  tokens = a.shape[0];
  heads = a.shape[1];
  head_dim = a.shape[2];
  return a.to_f32();
}

}  // namespace spattn::eval
