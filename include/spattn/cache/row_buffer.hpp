#pragma once
// An owning array of fixed-width rows with an exact, caller-controlled capacity: growth doubles,
// shrink() reallocates to exactly the rows in use, so the bytes a cache reports are the bytes it
// holds (std::vector::shrink_to_fit is only a request). Large buffers sit on huge pages
// (core/huge_pages.hpp): decode streams them whole.
#include <algorithm>
#include <cstring>

#include "spattn/core/error.hpp"
#include "spattn/core/huge_pages.hpp"
#include "spattn/core/tensor_view.hpp"

namespace spattn::detail {

template <class T>
class row_buffer {
 public:
  row_buffer() = default;
  explicit row_buffer(index_t row_elems) : row_elems_(row_elems) {}

  index_t capacity() const { return cap_; }
  index_t row_elems() const { return row_elems_; }
  T* row(index_t r) { return data_.data() + r * row_elems_; }
  const T* row(index_t r) const { return data_.data() + r * row_elems_; }
  const T* data() const { return data_.data(); }
  std::size_t bytes() const { return static_cast<std::size_t>(cap_ * row_elems_) * sizeof(T); }

  // Makes room for `rows` rows, keeping the first `used`; grows geometrically.
  void ensure(index_t rows, index_t used) {
    if (rows <= cap_) return;
    reallocate(std::max(rows, cap_ * 2), used);
  }
  // Reallocates to exactly `used` rows (releases everything when used == 0).
  void shrink(index_t used) {
    if (used == cap_) return;
    reallocate(used, used);
  }

 private:
  void reallocate(index_t rows, index_t used) {
    huge_page_array<T> fresh(static_cast<std::size_t>(rows * row_elems_));
    if (used > 0) {
      std::memcpy(fresh.data(), data_.data(),
                  static_cast<std::size_t>(used * row_elems_) * sizeof(T));
    }
    data_ = std::move(fresh);
    cap_ = rows;
  }
  huge_page_array<T> data_;
  index_t cap_ = 0;
  index_t row_elems_ = 0;
};

}  // namespace spattn::detail
