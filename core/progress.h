#pragma once
// A one-line progress bar on a terminal (stderr), silent otherwise, so logs and CI output stay clean.
#include <chrono>
#include <cstdint>
#include <string>

namespace mlaforge {

class Progress {
 public:
  Progress(std::string label, int64_t total, bool enabled = true);
  ~Progress();
  // Advances to `done` and redraws at most ~10 times a second; `extra` is shown after the counts.
  void update(int64_t done, const std::string& extra = "");
  void finish();

  static bool stderr_is_terminal();

 private:
  std::string label_;
  int64_t total_;
  bool enabled_;
  bool finished_ = false;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

}  // namespace mlaforge
