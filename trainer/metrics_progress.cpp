#include "trainer/metrics_progress.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <vector>

#include "core/error.h"

namespace mlaforge::metrics {
namespace {

std::string printf_string(const char* format, double value) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, format, value);
  return buffer;
}

}  // namespace

ProgressMode parse_progress_mode(std::string_view name) {
  if (name == "auto") return ProgressMode::automatic;
  if (name == "always") return ProgressMode::always;
  if (name == "never") return ProgressMode::never;
  fail("unknown progress mode '", name, "' (expected auto, always or never)");
}

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const long long s = std::llround(seconds);
  char buffer[48];
  if (s < 60)
    std::snprintf(buffer, sizeof buffer, "%llds", s);
  else if (s < 3600)
    std::snprintf(buffer, sizeof buffer, "%lldm%02llds", s / 60, s % 60);
  else if (s < 86400)
    std::snprintf(buffer, sizeof buffer, "%lldh%02lldm", s / 3600, (s % 3600) / 60);
  else
    std::snprintf(buffer, sizeof buffer, "%lldd%02lldh", s / 86400, (s % 86400) / 3600);
  return buffer;
}

std::string format_si(double value) {
  if (!std::isfinite(value)) return "?";
  static constexpr std::array<const char*, 5> kSuffix = {"", "k", "M", "G", "T"};
  const char* sign = value < 0 ? "-" : "";
  double v = std::fabs(value);
  size_t unit = 0;
  while (unit + 1 < kSuffix.size() && v >= 1000) {
    v /= 1000;
    ++unit;
  }
  // Three significant digits; a value that rounds up to 1000 moves to the next suffix (999.7 -> "1.00k").
  for (;;) {
    const char* format = v < 9.995 ? "%.2f" : v < 99.95 ? "%.1f" : "%.0f";
    std::string digits = printf_string(format, v);
    if (digits != "1000" || unit + 1 >= kSuffix.size()) return sign + digits + kSuffix[unit];
    v /= 1000;
    ++unit;
  }
}

double eta_seconds(int64_t step, int64_t total, int64_t first_step, double seconds_since_first) {
  constexpr double kUnknown = std::numeric_limits<double>::quiet_NaN();
  if (total <= 0 || step > total) return kUnknown;
  if (step == total) return 0;
  const int64_t done = step - first_step;
  if (done <= 0 || !(seconds_since_first > 0)) return kUnknown;
  return static_cast<double>(total - step) * seconds_since_first / static_cast<double>(done);
}

std::string format_progress_line(const ProgressFields& f, size_t max_width) {
  // Each field with the rank at which it is dropped for width (higher goes first; 0 is never dropped).
  struct Field {
    std::string text;
    int drop_rank;
  };
  std::vector<Field> fields;
  std::string head = "step " + std::to_string(f.step);
  if (f.total > 0) {
    head += "/" + std::to_string(f.total);
    const long long percent = f.step >= 0 ? (100 * f.step) / f.total : 0;
    head += " (" + std::to_string(percent) + "%)";
  }
  fields.push_back({head, 0});
  if (!std::isnan(f.loss)) fields.push_back({printf_string("loss %.4f", f.loss), 0});
  if (!std::isnan(f.grad_norm)) fields.push_back({printf_string("gnorm %.3g", f.grad_norm), 3});
  if (!std::isnan(f.lr)) fields.push_back({printf_string("lr %.2e", f.lr), 2});
  if (!std::isnan(f.tokens_per_s)) fields.push_back({format_si(f.tokens_per_s) + " tok/s", 1});
  if (!std::isnan(f.mfu)) fields.push_back({printf_string("MFU %.1f%%", 100 * f.mfu), 4});
  if (!std::isnan(f.mem_gb)) fields.push_back({printf_string("mem %.1fG", f.mem_gb), 5});
  if (!std::isnan(f.eta_s)) fields.push_back({"ETA " + format_duration(f.eta_s), 0});

  const auto join = [&fields] {
    std::string line;
    for (const Field& field : fields) {
      if (!line.empty()) line += " | ";
      line += field.text;
    }
    return line;
  };
  std::string line = join();
  while (max_width > 0 && line.size() > max_width) {
    auto worst = fields.end();
    for (auto it = fields.begin(); it != fields.end(); ++it)
      if (it->drop_rank > 0 && (worst == fields.end() || it->drop_rank > worst->drop_rank)) worst = it;
    if (worst == fields.end()) {
      line.resize(max_width);  // only the essential fields left and still too wide: cut
      break;
    }
    fields.erase(worst);
    line = join();
  }
  return line;
}

int stderr_terminal_width() {
  if (::isatty(STDERR_FILENO) != 1) return 0;
  winsize size{};
  if (::ioctl(STDERR_FILENO, TIOCGWINSZ, &size) == 0 && size.ws_col > 0) return size.ws_col;
  return 80;
}

void LiveLine::draw(const ProgressFields& fields, bool force) {
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
  if (!force && shown_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
  last_draw_ = now;
  const int width = stderr_terminal_width();
  // One column spare: writing the last column makes some terminals wrap before the "\r".
  const std::string line = format_progress_line(fields, width > 1 ? static_cast<size_t>(width - 1) : 0);
  std::fprintf(stderr, "\r%s\x1b[K", line.c_str());
  std::fflush(stderr);
  shown_ = true;
}

void LiveLine::clear() {
  if (!enabled_ || !shown_) return;
  std::fprintf(stderr, "\r\x1b[K");
  std::fflush(stderr);
  shown_ = false;
}

void LiveLine::finish() {
  if (!enabled_ || !shown_) return;
  std::fprintf(stderr, "\n");
  std::fflush(stderr);
  shown_ = false;
}

}  // namespace mlaforge::metrics
