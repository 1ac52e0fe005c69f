// libFuzzer target for the .npy reader: any byte string either parses into an array whose data
// size matches its shape, or raises spattn::error. Crashes, sanitizer reports, other exceptions
// and inconsistent results are bugs. Built and run by scripts/fuzz (clang, -fsanitize=fuzzer).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

#include "spattn/eval/npy.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  try {
    const spattn::eval::npy_array a = spattn::eval::parse_npy(bytes, "fuzz.npy");
    std::size_t count = 1;
    for (const spattn::index_t d : a.shape) {
      if (d < 0) std::abort();
      count *= static_cast<std::size_t>(d);
    }
    if (a.data.size() != count * spattn::eval::npy_itemsize(a.type)) std::abort();
    // Re-encoding gives a file that parses to the same array.
    const auto again = spattn::eval::encode_npy(a.type, a.shape, a.data.data());
    const spattn::eval::npy_array b = spattn::eval::parse_npy(again, "fuzz.npy");
    if (b.shape != a.shape || b.type != a.type || b.data != a.data) std::abort();
  } catch (const spattn::error&) {
  }
  return 0;
}
