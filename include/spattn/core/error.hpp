#pragma once
// spattn::error: the one exception type for bad input. Messages name the argument,
// the expected value and the given value, so a caller can fix the call without reading code.
#include <sstream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

namespace spattn {

class error : public std::invalid_argument {
 public:
  explicit error(const std::string& what) : std::invalid_argument("spattn: " + what) {}
};

namespace detail {

template <class... Parts>
std::string concat(Parts&&... parts) {
  std::ostringstream os;
  (os << ... << std::forward<Parts>(parts));
  return os.str();
}

// The parts of a message, concatenated only when called: require(ok, arg, lazy(...), given) costs
// nothing on success. Holds references, so it lives only within the full expression of the call.
template <class... Parts>
struct lazy_text {
  std::tuple<const Parts&...> parts;
  std::string operator()() const {
    return std::apply([](const auto&... p) { return concat(p...); }, parts);
  }
};

template <class... Parts>
lazy_text<Parts...> lazy(const Parts&... parts) {
  return {{parts...}};
}

}  // namespace detail

// Throws spattn::error("argument 'name': expected <expected>, got <given>") unless ok.
// `expected` and `given` may be callables returning the text, so hot paths build no message
// unless they fail (detail::lazy; an ostringstream per check was ~3% of a short decode call).
template <class Expected, class Given>
inline void require(bool ok, const char* argument, const Expected& expected, const Given& given) {
  if (ok) [[likely]]
    return;
  auto text = [](const auto& x) -> decltype(auto) {
    if constexpr (std::is_invocable_v<decltype(x)>) {
      return x();
    } else {
      return (x);
    }
  };
  throw error(detail::concat("argument '", argument, "': expected ", text(expected), ", got ",
                             text(given)));
}

}  // namespace spattn
