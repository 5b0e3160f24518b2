#pragma once
// Logging interface. The implementation uses spdlog, but this header includes nothing of it: LibTorch's
// wheel ships fmt 12 headers that clash with Debian's spdlog (fmt 9), so spdlog lives only in log.cpp.
#include <sstream>
#include <string>
#include <string_view>

namespace mlaforge::log {

enum class Level { debug, info, warn, error, off };

void set_level(Level level);
Level level();
// Parses "debug" | "info" | "warn" | "error" | "off"; throws mlaforge::Error on anything else.
Level parse_level(std::string_view name);

void write(Level level, std::string_view message);

namespace detail {
template <typename... Args>
std::string concat(Args&&... args) {
  std::ostringstream out;
  (out << ... << std::forward<Args>(args));
  return out.str();
}
}  // namespace detail

// log::info("loaded ", n, " tensors from ", path);
template <typename... Args> void debug(Args&&... a) {
  if (level() <= Level::debug) write(Level::debug, detail::concat(std::forward<Args>(a)...));
}
template <typename... Args> void info(Args&&... a) {
  if (level() <= Level::info) write(Level::info, detail::concat(std::forward<Args>(a)...));
}
template <typename... Args> void warn(Args&&... a) {
  if (level() <= Level::warn) write(Level::warn, detail::concat(std::forward<Args>(a)...));
}
template <typename... Args> void error(Args&&... a) {
  if (level() <= Level::error) write(Level::error, detail::concat(std::forward<Args>(a)...));
}

}  // namespace mlaforge::log
