#include "trainer/metrics_log.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "core/error.h"
#include "core/log.h"
#include "trainer/metrics_tfevents.h"

namespace mlaforge::metrics {
namespace {

double find_value(const Scalars& values, std::string_view name) {
  for (const auto& [key, value] : values)
    if (key == name) return value;
  return ProgressFields::kUnknown;
}

bool want_live_line(ProgressMode mode) {
  switch (mode) {
    case ProgressMode::always: return true;
    case ProgressMode::never: return false;
    case ProgressMode::automatic: return ::isatty(STDERR_FILENO) == 1;
  }
  return false;
}

// "eval step 500: loss 2.3456 | ppl 10.45 | tokens 20480"
std::string eval_message(int64_t step, const Scalars& values) {
  std::string text = "eval step " + std::to_string(step) + ":";
  bool first = true;
  for (const auto& [name, value] : values) {
    char number[48];
    std::snprintf(number, sizeof number, name == "loss" ? "%.4f" : "%.6g", value);
    text += (first ? " " : " | ") + name + " " + number;
    first = false;
  }
  return text;
}

}  // namespace

MetricsOptions MetricsOptions::in_dir(const std::string& dir) {
  const std::filesystem::path root(dir);
  MetricsOptions options;
  options.jsonl_path = (root / "metrics.jsonl").string();
  options.tensorboard_dir = (root / "tensorboard").string();
  options.plot_path = (root / "loss.png").string();
  return options;
}

double MetricsLogger::now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

MetricsLogger::MetricsLogger(MetricsOptions options)
    : options_(std::move(options)), live_(want_live_line(options_.progress)) {
  MLA_CHECK(!options_.jsonl_path.empty(), "metrics: no JSONL file path given");
  MLA_CHECK(options_.log_every >= 1, "metrics: log_every must be >= 1 (got ", options_.log_every, ")");
  MLA_CHECK(options_.total_steps >= 0, "metrics: total_steps must be >= 0 (got ", options_.total_steps, ")");
  MLA_CHECK(options_.plot_smoothing >= 0 && options_.plot_smoothing < 1, "metrics: plot smoothing ",
            options_.plot_smoothing, " outside [0, 1)");
  curves_.smoothing = options_.plot_smoothing;
  const bool resuming = options_.resume_step >= 0;
  if (resuming) {
    // The previous run's records up to the checkpoint stay, so the final plot shows the whole run.
    for (const MetricRecord& record : truncate_jsonl_after(options_.jsonl_path, options_.resume_step)) {
      const double loss = find_value(record.values, "loss");
      if (std::isnan(loss)) continue;
      if (record.split == "train") curves_.train.emplace_back(record.step, loss);
      if (record.split == "eval") curves_.eval.emplace_back(record.step, loss);
    }
  }
  jsonl_ = std::make_unique<JsonlWriter>(options_.jsonl_path, /*append=*/resuming);
  if (!options_.tensorboard_dir.empty()) {
    const double t = now();
    tensorboard_ = std::make_unique<TfEventsWriter>(options_.tensorboard_dir, t);
    // A fresh run (resume_step -1) starts at 0, hiding every earlier file's events, as the JSONL file
    // is overwritten; a resumed run hides only what came after its checkpoint.
    tensorboard_->add_session_start(std::max<int64_t>(options_.resume_step, -1) + 1, t);
  }
}

MetricsLogger::~MetricsLogger() {
  try {
    finish();
  } catch (const std::exception& e) {
    log::warn("metrics: ", e.what());
  }
}

std::string MetricsLogger::tensorboard_file() const { return tensorboard_ ? tensorboard_->path() : std::string(); }

void MetricsLogger::write(const MetricRecord& record, const char* tag_prefix) {
  MLA_CHECK(!finished_, "metrics: ", record.split, " step ", record.step, " logged after finish()");
  jsonl_->write(record);
  if (tensorboard_) {
    std::vector<TbScalar> scalars;
    scalars.reserve(record.values.size());
    for (const auto& [name, value] : record.values)
      scalars.push_back({tag_prefix + name, static_cast<float>(value)});
    tensorboard_->add_scalars(record.step, record.wall_time, scalars);
  }
}

ProgressFields MetricsLogger::progress_fields(int64_t step, const Scalars& values, double wall_time) const {
  ProgressFields f;
  f.step = step;
  f.total = options_.total_steps;
  f.loss = find_value(values, "loss");
  f.grad_norm = find_value(values, "grad_norm");
  f.lr = find_value(values, "lr");
  f.tokens_per_s = find_value(values, "tokens_per_s");
  f.mfu = find_value(values, "mfu");
  f.mem_gb = find_value(values, "mem_gb");
  if (first_step_) f.eta_s = eta_seconds(step, options_.total_steps, *first_step_, wall_time - first_time_);
  return f;
}

void MetricsLogger::log_train(int64_t step, const Scalars& values, std::optional<double> wall_time) {
  const MetricRecord record{"train", step, wall_time.value_or(now()), values};
  write(record, "train/");
  const double loss = find_value(values, "loss");
  if (!std::isnan(loss)) curves_.train.emplace_back(step, loss);

  const bool first = !first_step_.has_value();
  if (first) first_step_ = step, first_time_ = record.wall_time;
  const ProgressFields fields = progress_fields(step, values, record.wall_time);
  last_fields_ = fields;
  const bool last = options_.total_steps > 0 && step >= options_.total_steps;
  if (live_.enabled())
    live_.draw(fields, first || last);
  else if (first || last || step % options_.log_every == 0)
    log::info(format_progress_line(fields));
}

void MetricsLogger::log_eval(int64_t step, const Scalars& values, std::optional<double> wall_time) {
  const MetricRecord record{"eval", step, wall_time.value_or(now()), values};
  write(record, "eval/");
  const double loss = find_value(values, "loss");
  if (!std::isnan(loss)) curves_.eval.emplace_back(step, loss);
  // An evaluation is rare and worth a line of its own in every mode; the live line comes back under it.
  live_.clear();
  log::info(eval_message(step, values));
  if (live_.enabled() && last_fields_) live_.draw(*last_fields_, /*force=*/true);
}

void MetricsLogger::finish() {
  if (finished_) return;
  finished_ = true;
  live_.finish();
  if (!options_.plot_path.empty()) {
    write_loss_plot_png(options_.plot_path, curves_);
    log::info("loss curve written to ", options_.plot_path);
  }
}

}  // namespace mlaforge::metrics
