#pragma once
// A small executor so an engine keeps control of its threads: OpenMP (default when the build
// has it), serial, or the caller's own parallel-for. Kernels split work into tasks whose
// boundaries never depend on the thread count, so results are identical for any executor.
#include <cstdint>
#include <functional>
#include <utility>

#include "spattn/core/error.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace spattn {

class executor {
 public:
  // The caller's pool: must call body(i) exactly once for every i in [0, n), possibly
  // concurrently, and return when all calls have finished.
  using parallel_for_fn =
      std::function<void(std::int64_t n, const std::function<void(std::int64_t)>& body)>;

  enum class kind { serial, openmp, custom };

  // OpenMP with `threads` workers (0: OpenMP's default). Falls back to serial when the
  // translation unit is built without OpenMP.
  static executor openmp(int threads = 0) {
    require(threads >= 0, "threads", ">= 0", threads);
    executor e;
    e.kind_ = kind::openmp;
    e.threads_ = threads;
    return e;
  }
  static executor serial() {
    executor e;
    e.kind_ = kind::serial;
    e.threads_ = 1;
    return e;
  }
  static executor custom(parallel_for_fn fn, int threads) {
    require(static_cast<bool>(fn), "fn", "a callable parallel-for", "an empty std::function");
    require(threads >= 1, "threads", ">= 1", threads);
    executor e;
    e.kind_ = kind::custom;
    e.fn_ = std::move(fn);
    e.threads_ = threads;
    return e;
  }

  kind type() const { return kind_; }

  // Number of workers that may run tasks at once.
  int concurrency() const {
    if (kind_ == kind::openmp) {
#if defined(_OPENMP)
      return threads_ > 0 ? threads_ : omp_get_max_threads();
#else
      return 1;
#endif
    }
    return threads_;
  }

  // Runs body(i) for i in [0, n). Tasks are taken dynamically, in index order, so callers
  // put the most expensive tasks first for load balance. Bodies must not throw: an exception
  // escaping an OpenMP region terminates the program, so spattn validates before it starts tasks.
  template <class Body>
  void parallel_for(std::int64_t n, Body&& body) const {
    if (n <= 0) return;
    if (kind_ == kind::custom) {
      fn_(n, std::function<void(std::int64_t)>(std::ref(body)));
      return;
    }
#if defined(_OPENMP)
    const int t = concurrency();
    if (kind_ == kind::openmp && t > 1 && n > 1) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(t)
      for (std::int64_t i = 0; i < n; ++i) body(i);
      return;
    }
#endif
    for (std::int64_t i = 0; i < n; ++i) body(i);
  }

 private:
  executor() = default;
  kind kind_ = kind::openmp;
  int threads_ = 0;
  parallel_for_fn fn_;
};

}  // namespace spattn
