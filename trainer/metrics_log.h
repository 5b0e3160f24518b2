#pragma once
// MetricsLogger: where `mlaforge train` sends its numbers. The training loop calls log_train() once per
// logged step and log_eval() after each evaluation, with named scalars; the logger fans them out to
//   - the JSONL metrics file (always): one object per call, flushed per line, cut back on resume;
//   - TensorBoard event files (optional), tags "train/<name>" and "eval/<name>";
//   - a status line: redrawn in place on a terminal, or a plain log line every `log_every` steps;
//   - at finish(), a loss-curve PNG (optional).
// Torch-free: it lives in mlaforge_core and takes plain doubles.
//
// Scalar names the status line knows (others go to the files only): loss, grad_norm, lr, tokens_per_s,
// mfu (fraction of peak FLOP/s), mem_gb (GiB). The plot uses "loss" of train and eval records.
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "trainer/metrics_jsonl.h"
#include "trainer/metrics_plot.h"
#include "trainer/metrics_progress.h"

namespace mlaforge::metrics {

class TfEventsWriter;

struct MetricsOptions {
  std::string jsonl_path;       // required
  std::string tensorboard_dir;  // empty: no TensorBoard events
  std::string plot_path;        // empty: no loss-curve PNG
  int64_t total_steps = 0;      // for "step N/total" and the ETA; 0 = unknown
  // >= 0: this run resumes from a checkpoint taken after step `resume_step`. Records with a later step
  // are dropped from the JSONL file (the run repeats those steps), the kept ones seed the plot, and the
  // TensorBoard file starts with a SessionLog START at resume_step + 1 so TensorBoard hides the stale
  // later events of the previous run's file. < 0: a fresh run; an existing JSONL file is overwritten and
  // the START at step 0 hides older event files in the folder.
  int64_t resume_step = -1;
  int64_t log_every = 10;  // plain status log line period (when the live line is off)
  ProgressMode progress = ProgressMode::automatic;  // live line: on a terminal / always / never
  double plot_smoothing = 0.9;                      // EMA weight of the plot's smoothed line; 0 = none

  // metrics.jsonl, tensorboard/ and loss.png under a run's output folder.
  static MetricsOptions in_dir(const std::string& dir);
};

class MetricsLogger {
 public:
  explicit MetricsLogger(MetricsOptions options);
  // Calls finish(); errors there are logged, not thrown.
  ~MetricsLogger();
  MetricsLogger(const MetricsLogger&) = delete;
  MetricsLogger& operator=(const MetricsLogger&) = delete;

  // `wall_time`: seconds since the Unix epoch; now when not given.
  void log_train(int64_t step, const Scalars& values, std::optional<double> wall_time = std::nullopt);
  void log_eval(int64_t step, const Scalars& values, std::optional<double> wall_time = std::nullopt);
  // Ends the live line and writes the plot. Idempotent; nothing may be logged afterwards.
  void finish();

  bool live() const { return live_.enabled(); }
  // The events file of this run ("" without TensorBoard).
  std::string tensorboard_file() const;
  const LossCurves& curves() const { return curves_; }

  static double now();

 private:
  ProgressFields progress_fields(int64_t step, const Scalars& values, double wall_time) const;
  void write(const MetricRecord& record, const char* tag_prefix);

  MetricsOptions options_;
  std::unique_ptr<JsonlWriter> jsonl_;
  std::unique_ptr<TfEventsWriter> tensorboard_;
  LiveLine live_;
  LossCurves curves_;
  std::optional<ProgressFields> last_fields_;  // to redraw the live line after an eval message
  std::optional<int64_t> first_step_;          // this run's first logged step and its time, for the ETA
  double first_time_ = 0;
  bool finished_ = false;
};

}  // namespace mlaforge::metrics
