#include "trainer/lr_schedule.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace mlaforge {

std::string lr_decay_name(LRDecay decay) {
  switch (decay) {
    case LRDecay::cosine: return "cosine";
    case LRDecay::linear: return "linear";
    case LRDecay::constant: return "constant";
  }
  return "?";
}

LRDecay parse_lr_decay(const std::string& name) {
  if (name == "cosine") return LRDecay::cosine;
  if (name == "linear") return LRDecay::linear;
  if (name == "constant") return LRDecay::constant;
  fail("unknown learning-rate decay '", name, "' (expected cosine, linear or constant)");
}

LRSchedule::LRSchedule(const LRScheduleOptions& o)
    : base_lr_(o.lr), total_(o.total_steps), warmup_(0), min_ratio_(o.min_lr_ratio), decay_(o.decay) {
  MLA_CHECK(std::isfinite(o.lr) && o.lr > 0, "lr schedule: lr must be > 0, got ", o.lr);
  MLA_CHECK(o.total_steps > 0, "lr schedule: total_steps must be > 0, got ", o.total_steps);
  MLA_CHECK(o.min_lr_ratio >= 0 && o.min_lr_ratio <= 1, "lr schedule: min_lr_ratio must be in [0, 1], got ",
            o.min_lr_ratio);
  MLA_CHECK(!(o.warmup_steps && o.warmup_ratio), "lr schedule: give warmup_steps or warmup_ratio, not both");
  if (o.warmup_steps) {
    MLA_CHECK(*o.warmup_steps >= 0 && *o.warmup_steps <= o.total_steps, "lr schedule: warmup_steps (",
              *o.warmup_steps, ") must be in [0, total_steps = ", o.total_steps, "]");
    warmup_ = *o.warmup_steps;
  } else if (o.warmup_ratio) {
    MLA_CHECK(*o.warmup_ratio >= 0 && *o.warmup_ratio <= 1, "lr schedule: warmup_ratio must be in [0, 1], got ",
              *o.warmup_ratio);
    warmup_ = static_cast<int64_t>(std::llround(*o.warmup_ratio * static_cast<double>(o.total_steps)));
  }
}

double LRSchedule::factor(int64_t step) const {
  MLA_CHECK(step >= 0, "lr schedule: negative step ", step);
  if (step < warmup_) return static_cast<double>(step + 1) / static_cast<double>(warmup_);
  if (decay_ == LRDecay::constant) return 1.0;
  const double span = static_cast<double>(std::max<int64_t>(1, total_ - warmup_ - 1));
  const double progress = std::clamp(static_cast<double>(step - warmup_) / span, 0.0, 1.0);
  const double m = min_ratio_;
  if (decay_ == LRDecay::linear) return m + (1 - m) * (1 - progress);
  return m + (1 - m) * 0.5 * (1 + std::cos(M_PI * progress));
}

}  // namespace mlaforge
