#pragma once
// One exception type for every user-facing failure. The CLI prints what() as a single line and exits
// non-zero, so messages must name the file, tensor, field or rank at fault.
#include <sstream>
#include <stdexcept>
#include <string>

namespace mlaforge {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

template <typename... Args>
[[noreturn]] void fail(Args&&... args) {
  std::ostringstream out;
  (out << ... << std::forward<Args>(args));
  throw Error(out.str());
}

// MLA_CHECK(cond, "message parts", ...) throws mlaforge::Error when cond is false.
#define MLA_CHECK(cond, ...)               \
  do {                                     \
    if (!(cond)) ::mlaforge::fail(__VA_ARGS__); \
  } while (0)

}  // namespace mlaforge
