#pragma once
// `mlaforge train RECIPE.yaml`: the training run a recipe describes, in one process (CPU or one GPU).
//
// What a run does, in order (trainer/train.cpp reads top to bottom in this order):
//   1. the resolved recipe is written to <output_dir>/recipe.yaml (what ran, every default filled);
//   2. the model (and the teacher, when teacher.path is set) is loaded, checked against the recipe
//      (vocabularies equal, trainable presets the model has, tp fits), built in float32 on the device;
//   3. the trainable set is selected, the optimizer built (fp32, or bf16 compute with fp32 masters), the
//      frozen parameters cast to the compute dtype, per-layer activation checkpointing installed;
//   4. the training (and evaluation) data are tokenised once into memory-mapped caches
//      (data/token_cache.h) and streamed by a DataLoader (data/data_loader.h): packed rows with
//      per-document attention and restarting positions, deterministic shuffling by seed;
//   5. evaluation before the first step (and of the teacher, once: the "original" model's numbers);
//   6. the loop: per optimizer step, the token counts of the whole step first, then per micro-batch
//      forward -> loss (CE over trained tokens, + KL to the teacher at temperature tau, + the MoE
//      load-balancing loss) -> backward; then clipping, AdamW at the schedule's learning rate;
//      metrics every log_every steps, evaluation every eval_every steps;
//   7. the final evaluation, the model exported as a Hugging Face folder (<output_dir>/model: config.json
//      as loaded, safetensors in the source checkpoint's dtype, tokenizer files), report.json with every
//      evaluation and the run's speed, metrics.jsonl / TensorBoard events / loss.png (trainer/metrics_log.h).
//
// Step objective (trainer/losses.h): alpha * KL_sum / KL_tokens + (1 - alpha) * CE_sum / CE_tokens over the
// whole step's tokens (alpha = teacher.kl_ratio, 0 without a teacher), plus router_aux_loss_coef x the
// load-balancing loss averaged over the step's micro-batches for MoE models. The logged `loss` is that
// objective; `ce` and `kl` are its terms per token.
//
// Evaluation: the eval split's samples (same template, loss mask and packing as training), in order, no
// gradient: ce = mean CE per trained token, ppl = exp(ce), and kl with a teacher. With
// train.eval_batches > 0 only that many micro-batches are evaluated (the same ones every time).
//
// Parallel runs (`mpirun -np N mlaforge train ...`; parallel/README.md): the world is split into TP groups
// of parallel.tp consecutive ranks and DP groups across them. Each DP rank takes its rows of the global
// step (the loader), gradients are summed over the DP group in buckets, evaluation sums are added over
// it, and the replicas are checked bitwise identical at the end. Under tensor parallelism each rank holds
// its slice of every split tensor (parallel/tensor_parallel.h), the loss is vocabulary-parallel, the
// gradient norm counts replicated tensors once, and the export gathers the slices. Distillation under
// tensor parallelism is refused (not implemented yet). World rank 0 writes the run folder, metrics and
// export; other ranks log warnings only.
//
// Periodic checkpoints and resume are not done by this loop yet: checkpoint.every below the run's length
// is warned about, an explicit checkpoint.resume path is an error; the final model is exported when
// train.export_at_end.
//
// Threads: LibTorch's intra-op threads as set by the caller (the CLI's --threads); on a CPU shared with
// other work use fewer threads than idle cores (OpenMP regions wait for descheduled threads).
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "trainer/recipe.h"

namespace mlaforge {

// One evaluation's numbers.
struct EvalReport {
  int64_t step = 0;        // optimizer steps taken when it ran
  double ce = 0;           // mean CE per trained token
  double perplexity = 0;   // exp(ce)
  double kl = 0;           // mean KL(teacher || model) per token at temperature tau (0 without teacher)
  int64_t tokens = 0;      // trained tokens evaluated
  double seconds = 0;
  nlohmann::json to_json() const;
};

// One optimizer step's numbers (what the log line and metrics.jsonl show).
struct StepReport {
  int64_t step = 0;          // 1-based: steps taken after this one
  double loss = 0;           // the step objective (see above)
  double ce = 0, kl = 0, aux = 0;
  double grad_norm = 0;      // before clipping
  bool clipped = false, skipped = false;
  double lr = 0;
  int64_t trained_tokens = 0;  // CE tokens of the step
  int64_t tokens = 0;          // real (non-padding) tokens of the step
  double seconds = 0;          // wall time of the step
  double comm_seconds = 0;     // of which waiting for the data-parallel gradient reduction after the backward
  int64_t grad_buckets = 0;    // data parallel: gradient buckets reduced
  int64_t overlapped_buckets = 0;  // of which started during the backward (parallel/grad_sync.h)
};

struct TrainSummary {
  std::string output_dir;
  std::string model_dir;             // the exported model ("" when not exported)
  int64_t steps = 0;                 // optimizer steps taken
  int64_t skipped_steps = 0;         // non-finite gradient norm
  int64_t tokens = 0;                // real tokens trained on
  int64_t trained_tokens = 0;        // loss terms
  double train_seconds = 0;          // the loop only (no evaluation, no export)
  double tokens_per_second = 0;      // tokens / train_seconds
  int64_t world_size = 1, tp = 1, dp = 1;
  std::optional<bool> replicas_identical;  // data parallel: checked at the end (unset with dp 1)
  std::string resumed_from;          // the checkpoint this run continued ("" when it started afresh)
  int64_t start_step = 0;            // steps already taken when this process started (resume)
  std::string last_checkpoint;       // the newest checkpoint this run committed ("" when none)
  int64_t trainable_parameters = 0;  // elements
  int64_t total_parameters = 0;
  std::optional<EvalReport> teacher;  // the teacher on the eval split (the original model's numbers)
  std::vector<EvalReport> evals;      // in step order (first: before training when eval.at_start)
  std::vector<StepReport> steps_log;  // every step
  nlohmann::json to_json() const;
};

struct TrainOptions {
  int threads = 0;  // CPU threads for LibTorch (0: leave as set)
  // Called after every step (tests, benchmarks); the run stops early when it returns false.
  std::function<bool(const StepReport&)> on_step;
};

// Runs the recipe (already loaded and validated by load_recipe). Throws mlaforge::Error naming the recipe
// key, file or sample at fault.
TrainSummary run_training(const Recipe& recipe, const TrainOptions& options = {});

}  // namespace mlaforge
