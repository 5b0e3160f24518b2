#pragma once
// Learning-rate schedule: linear warmup, then cosine, linear or constant decay to min_lr_ratio * lr.
// Stateless: the rate of any step is a pure function of the step index, so a resumed run needs only its
// step count (the optimizer state's `step`).
//
// With W warmup steps, T total steps, m = min_lr_ratio and s the 0-based index of the optimizer step
// about to be taken (s = 0 is the first update; torch's LambdaLR calls lambda(s) for that step):
//   s < W                 factor = (s + 1) / W                 (never 0: the first step already learns)
//   s >= W                p = clamp((s - W) / max(1, T - W - 1), 0, 1)
//                         cosine    factor = m + (1 - m) * (1 + cos(pi * p)) / 2
//                         linear    factor = m + (1 - m) * (1 - p)
//                         constant  factor = 1
//   lr(s) = lr * factor
// so the first post-warmup step runs at the peak rate, the last step (s = T - 1) at exactly m * lr for
// cosine and linear, and steps past T stay at m * lr.
#include <cstdint>
#include <optional>
#include <string>

namespace mlaforge {

enum class LRDecay { cosine, linear, constant };
std::string lr_decay_name(LRDecay decay);
LRDecay parse_lr_decay(const std::string& name);  // "cosine" | "linear" | "constant"

struct LRScheduleOptions {
  double lr = 0;             // peak learning rate
  int64_t total_steps = 0;   // optimizer steps in the run
  // Warmup: either a step count or a fraction of total_steps (rounded to the nearest step), not both.
  std::optional<int64_t> warmup_steps;
  std::optional<double> warmup_ratio;
  double min_lr_ratio = 0.0;  // in [0, 1]
  LRDecay decay = LRDecay::cosine;
};

class LRSchedule {
 public:
  // Validates (throws mlaforge::Error naming the field): lr > 0, total_steps > 0, warmup in [0, total],
  // ratio in [0, 1], not both warmup forms.
  explicit LRSchedule(const LRScheduleOptions& options);

  double lr(int64_t step) const { return base_lr_ * factor(step); }
  double factor(int64_t step) const;  // lr(step) / peak lr
  int64_t warmup_steps() const { return warmup_; }
  int64_t total_steps() const { return total_; }
  double peak_lr() const { return base_lr_; }

 private:
  double base_lr_;
  int64_t total_, warmup_;
  double min_ratio_;
  LRDecay decay_;
};

}  // namespace mlaforge
