// A project that uses the installed spattn package through find_package(spattn).
#include <cmath>
#include <cstdio>
#include <spattn/spattn.hpp>
#include <vector>

int main() {
  const long n = 64, h = 4, d = 64;
  std::vector<float> q(n * h * d), k(n * d), v(n * d), o(n * h * d);
  for (std::size_t i = 0; i < q.size(); ++i) q[i] = std::sin(0.1f * static_cast<float>(i));
  for (std::size_t i = 0; i < k.size(); ++i) k[i] = std::cos(0.07f * static_cast<float>(i));
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i % 7);
  spattn::prefill(spattn::tensor_view<const float>(q.data(), n, h, d),
                  spattn::tensor_view<const float>(k.data(), n, 1, d),
                  spattn::tensor_view<const float>(v.data(), n, 1, d),
                  spattn::tensor_view<float>(o.data(), n, h, d));
  // Query 0 sees only key 0: its output is v[0].
  const bool ok = std::abs(o[1] - v[1]) < 1e-6f;
  std::printf("consumer: spattn %d.%d.%d %s\n", SPATTN_VERSION_MAJOR, SPATTN_VERSION_MINOR,
              SPATTN_VERSION_PATCH, ok ? "ok" : "WRONG");
  return ok ? 0 : 1;
}
