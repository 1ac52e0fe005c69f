#pragma once
// Tolerances against the double-precision oracle, in one place.
//
// The oracle sees exactly the stored inputs (f16/bf16 values converted exactly to double), so the
// only differences are the kernels' own roundings:
//  - fp32 arithmetic: each score carries ~d * 2^-24 relative error, exp2 approximation < 2e-7,
//    and the output is a weighted mean of V rows accumulated over up to ~1e5 keys in fp32,
//    which for |v| ~ 1 stays well under 1e-5; we allow 5e-5 absolute (outputs are O(1)).
//  - an f16 output adds its rounding, 2^-11 relative (|o| <= ~3 here): 2e-3 absolute;
//    a bf16 output adds 2^-8 relative: 1.5e-2 absolute.
//  - LSE is log(sum) in fp32 of terms already rounded: 1e-4 absolute.
// Thread count never changes results: work splits do not depend on it, so those checks are exact.
#include "spattn/core/dtype.hpp"

namespace spattn::test {

template <class TO>
constexpr double out_tolerance() {
  if constexpr (std::is_same_v<TO, float>) return 5e-5;
  if constexpr (std::is_same_v<TO, f16>) return 2e-3;
  return 1.5e-2;
}

inline constexpr double lse_tolerance = 1e-4;

}  // namespace spattn::test
