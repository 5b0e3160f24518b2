#pragma once
// The human-facing side of training metrics: one status line
//   step 120/1000 (12%) | loss 2.3456 | gnorm 0.870 | lr 3.00e-04 | 12.3k tok/s | MFU 41.2% | mem 12.3G | ETA 1h02m
// redrawn in place on a terminal (stderr), or written as a plain log line every N steps when stderr is a
// file or pipe (CI logs, nohup) where carriage returns would pile up. The formatting is pure functions so
// tests can pin the exact text.
#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>

namespace mlaforge::metrics {

enum class ProgressMode { automatic, always, never };
// "auto" | "always" | "never"; throws mlaforge::Error on anything else.
ProgressMode parse_progress_mode(std::string_view name);

// "0s", "59s", "1m01s", "1h02m", "1d03h"; "?" when unknown (NaN, negative, infinite).
std::string format_duration(double seconds);
// Three significant digits with a k/M/G/T suffix: "950", "12.3k", "1.50M".
std::string format_si(double value);
// Seconds left, extrapolating the rate since this run's first logged step (a resumed run's earlier steps
// do not count). NaN when unknown: no total, no progress yet, or the run is past its total.
double eta_seconds(int64_t step, int64_t total, int64_t first_step, double seconds_since_first);

struct ProgressFields {
  static constexpr double kUnknown = std::numeric_limits<double>::quiet_NaN();
  int64_t step = 0;
  int64_t total = 0;  // 0: unknown, shown as "step 120"
  double loss = kUnknown;
  double grad_norm = kUnknown;
  double lr = kUnknown;
  double tokens_per_s = kUnknown;
  double mfu = kUnknown;     // fraction of peak, shown as a percentage
  double mem_gb = kUnknown;  // GiB
  double eta_s = kUnknown;
};

// The status line; unknown (NaN) fields are left out. With max_width > 0 the least useful fields (memory,
// MFU, grad norm, lr, throughput, in that order) are dropped until the line fits, then it is cut.
std::string format_progress_line(const ProgressFields& fields, size_t max_width = 0);

// Columns of the terminal on stderr, 0 when stderr is not a terminal.
int stderr_terminal_width();

// Draws the line in place on stderr ("\r" + text + erase to end of line), at most ten times a second.
class LiveLine {
 public:
  explicit LiveLine(bool enabled) : enabled_(enabled) {}
  ~LiveLine() { finish(); }
  bool enabled() const { return enabled_; }
  // `force` draws even within the 0.1 s throttle (first and last steps).
  void draw(const ProgressFields& fields, bool force);
  // Erases the line so that a log message can be printed; the next draw() brings it back.
  void clear();
  // Leaves the last drawn line on screen and moves to the next line.
  void finish();

 private:
  bool enabled_;
  bool shown_ = false;
  std::chrono::steady_clock::time_point last_draw_{};
};

}  // namespace mlaforge::metrics
