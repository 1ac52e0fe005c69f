// .npy reader/writer: round trips, hand-written byte headers (as numpy writes them), and every
// malformation rejected with a spattn::error that names the file and the problem.
#include <catch2/catch.hpp>

#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "spattn/eval/npy.hpp"

using namespace spattn;
using namespace spattn::eval;

namespace {

std::vector<std::byte> bytes_of(const std::string& s) {
  std::vector<std::byte> b(s.size());
  if (!s.empty()) std::memcpy(b.data(), s.data(), s.size());  // memcpy(nullptr, ..., 0) is UB
  return b;
}

// A version-1.0 file with the given dict text (padded like numpy) followed by `data`.
std::string v1_file(const std::string& dict, const std::string& data, bool pad = true) {
  std::string h = dict;
  if (pad) {
    while ((10 + h.size() + 1) % 64 != 0) h += ' ';
    h += '\n';
  }
  std::string f = "\x93NUMPY";
  f += '\x01';
  f += '\x00';
  f += static_cast<char>(h.size() & 0xff);
  f += static_cast<char>(h.size() >> 8);
  return f + h + data;
}

std::string floats(std::initializer_list<float> xs) {
  std::string s(xs.size() * 4, '\0');
  if (!s.empty()) std::memcpy(s.data(), std::data(xs), s.size());
  return s;
}

void expect_error(const std::string& file, const std::string& fragment) {
  const auto b = bytes_of(file);
  try {
    (void)parse_npy(b, "x.npy");
    FAIL("no error for a file that should fail with '" << fragment << "'");
  } catch (const spattn::error& e) {
    const std::string msg = e.what();
    INFO(msg);
    CHECK(msg.find("x.npy") != std::string::npos);
    CHECK(msg.find(fragment) != std::string::npos);
  }
}

}  // namespace

TEST_CASE("npy: hand-written numpy header parses", "[npy]") {
  // Exactly what numpy 1.24 writes for np.arange(6, dtype='<f4').reshape(2, 3).
  const std::string f = v1_file("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }",
                                floats({0, 1, 2, 3, 4, 5}));
  REQUIRE(f.size() == 128 + 24);
  const auto a = parse_npy(bytes_of(f), "x.npy");
  CHECK(a.type == npy_dtype::f32);
  CHECK(a.shape == std::vector<index_t>{2, 3});
  CHECK(a.to_f32() == std::vector<float>{0, 1, 2, 3, 4, 5});
}

TEST_CASE("npy: header variants numpy accepts", "[npy]") {
  SECTION("1-d shape with trailing comma, keys reordered, double quotes, no padding") {
    const auto a = parse_npy(
        bytes_of(v1_file("{\"shape\": (2,), \"fortran_order\": False, \"descr\": \"<f4\"}",
                         floats({7, 8}), false)),
        "x.npy");
    CHECK(a.shape == std::vector<index_t>{2});
    CHECK(a.to_f32() == std::vector<float>{7, 8});
  }
  SECTION("0-d array") {
    const auto a = parse_npy(
        bytes_of(v1_file("{'descr': '<f4', 'fortran_order': False, 'shape': (), }", floats({3}))),
        "x.npy");
    CHECK(a.shape.empty());
    CHECK(a.count() == 1);
  }
  SECTION("empty array") {
    const auto a = parse_npy(
        bytes_of(v1_file("{'descr': '<i8', 'fortran_order': False, 'shape': (0, 4), }", "")),
        "x.npy");
    CHECK(a.count() == 0);
  }
  SECTION("version 2.0 and 3.0 use a 4-byte header length") {
    for (char major : {'\x02', '\x03'}) {
      std::string h = "{'descr': '<f2', 'fortran_order': False, 'shape': (1,), }\n";
      std::string f = "\x93NUMPY";
      f += major;
      f += '\x00';
      f += static_cast<char>(h.size());
      f += std::string(3, '\0');
      f += h;
      f += std::string("\x00\x3c", 2);  // 1.0 in fp16
      const auto a = parse_npy(bytes_of(f), "x.npy");
      CHECK(a.type == npy_dtype::f16);
      CHECK(a.to_f32() == std::vector<float>{1.0f});
    }
  }
}

TEST_CASE("npy: round trip through files for every dtype", "[npy]") {
  const auto dir = std::filesystem::temp_directory_path() / "spattn_npy_test";
  std::filesystem::create_directories(dir);
  const std::vector<index_t> shape{3, 2, 4};
  std::vector<float> xf(24);
  std::vector<f16> xh(24);
  std::vector<std::int64_t> xl(24);
  std::vector<std::int32_t> xi(24);
  for (int i = 0; i < 24; ++i) {
    xf[i] = 0.25f * static_cast<float>(i) - 3.0f;
    xh[i] = to_f16(xf[i]);
    xl[i] = (std::int64_t{1} << 40) + i;
    xi[i] = -i;
  }
  write_npy<float>(dir / "f.npy", shape, xf);
  write_npy<f16>(dir / "h.npy", shape, xh);
  write_npy<std::int64_t>(dir / "l.npy", shape, xl);
  write_npy<std::int32_t>(dir / "i.npy", shape, xi);
  CHECK(read_npy(dir / "f.npy").to_f32() == xf);
  CHECK(read_npy(dir / "h.npy").to_f32() == xf);  // exactly representable in fp16
  CHECK(read_npy(dir / "l.npy").to_i64() == xl);
  const auto ai = read_npy(dir / "i.npy");
  CHECK(ai.type == npy_dtype::i32);
  CHECK(ai.to_i64() == std::vector<std::int64_t>(xi.begin(), xi.end()));
  index_t t = 0, h = 0, d = 0;
  CHECK(read_npy_f32_3d(dir / "h.npy", t, h, d) == xf);
  CHECK((t == 3 && h == 2 && d == 4));
  // Header is 64-byte aligned as numpy does it, and ends in a newline.
  const auto raw = encode_npy(npy_dtype::f32, shape, xf.data());
  CHECK(raw.size() == 128 + 24 * 4);
  CHECK(raw[127] == std::byte{'\n'});
  CHECK_THROWS_AS(read_npy(dir / "missing.npy"), spattn::error);
  CHECK_THROWS_AS(read_npy(dir / "l.npy").to_f32(), spattn::error);
  CHECK_THROWS_AS(read_npy(dir / "f.npy").to_i64(), spattn::error);
  CHECK_THROWS_WITH(read_npy_f32_3d(dir / "l.npy", t, h, d), Catch::Contains("'<i8'"));
  const std::vector<index_t> flat{24};
  write_npy<float>(dir / "flat.npy", flat, xf);
  CHECK_THROWS_WITH(read_npy_f32_3d(dir / "flat.npy", t, h, d), Catch::Contains("rank 1"));
  CHECK_THROWS_AS(write_npy<float>(dir / "bad.npy", flat, std::span<const float>(xf).first(3)),
                  spattn::error);
  std::filesystem::remove_all(dir);
}

TEST_CASE("npy: malformed files are rejected with a clear error", "[npy]") {
  const std::string good_dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }";
  const std::string good = v1_file(good_dict, floats({1, 2}));
  REQUIRE_NOTHROW(parse_npy(bytes_of(good), "x.npy"));

  expect_error("", "truncated");
  expect_error(good.substr(0, 9), "truncated");
  expect_error("PK\x03\x04" + good.substr(4), "bad magic");
  expect_error(good.substr(0, 6) + '\x04' + good.substr(7), "version 4.0");
  expect_error(good.substr(0, 7) + '\x01' + good.substr(8), "version 1.1");
  expect_error(good.substr(0, 40), "truncated header");
  expect_error(good.substr(0, good.size() - 1), "truncated data");
  expect_error(good + "x", "trailing bytes");
  expect_error(v1_file("{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", floats({1, 2})),
               "'>f4'");
  expect_error(v1_file("{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }", floats({1, 2})),
               "unsupported dtype '<f8'");
  expect_error(v1_file("{'descr': '|u1', 'fortran_order': False, 'shape': (8,), }", floats({1, 2})),
               "unsupported dtype");
  expect_error(v1_file("{'descr': '<f4', 'fortran_order': True, 'shape': (2,), }", floats({1, 2})),
               "Fortran");
  expect_error(v1_file("{'descr': '<f4', 'fortran_order': false, 'shape': (2,), }", floats({1, 2})),
               "True or False");
  expect_error(v1_file("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", floats({1, 2})),
               "truncated data");
  expect_error(v1_file("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", floats({1, 2})),
               "trailing bytes");
  expect_error(
      v1_file("{'descr': '<f4', 'fortran_order': False, 'shape': (-2,), }", floats({1, 2})),
      "bad shape entry");
  expect_error(
      v1_file("{'descr': '<f4', 'fortran_order': False, 'shape': (2 2), }", floats({1, 2})),
      "between shape entries");
  expect_error(
      v1_file("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }", ""),
      "overflows");
  expect_error(v1_file("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, "
                       "4294967296), }",
                       ""),
               "overflows");
  expect_error(v1_file("{'descr': '<f4', 'shape': (2,), }", floats({1, 2})), "needs the keys");
  expect_error(v1_file("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2,)}",
                       floats({1, 2})),
               "repeated key 'descr'");
  expect_error(
      v1_file("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}", floats({1, 2})),
      "key 'x'");
  expect_error(
      v1_file("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), } junk", floats({1, 2})),
      "text after the dict");
  expect_error(v1_file("{'descr': '<f4', 'fortran_order': False, 'shape': (2,)", floats({1, 2})),
               "close the header dict");
  expect_error(v1_file("{'descr: '<f4', 'fortran_order': False, 'shape': (2,)}", floats({1, 2})),
               "malformed header");
  expect_error(
      v1_file("{'descr': '<f4', 'fortran_order': False, 'shape': (2,)}\xff", floats({1, 2})),
      "not ASCII");
  // Header length pointing past the end of the file.
  std::string big = good;
  big[8] = '\xff';
  big[9] = '\x7f';
  expect_error(big, "truncated header");
}
