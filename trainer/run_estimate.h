#pragma once
// A paper estimate of a training run's GPU memory and speed (`mlaforge validate RECIPE --estimate`), from
// the recipe, its parallel plan and the model's config (model/config.h: the dimensions are never read
// anywhere else). It is arithmetic, not a measurement: it exists so that recipes for hardware we do not
// have state memory and throughput figures whose derivation anyone can check. Torch-free.
//
// Parameters per GPU. Every tensor of the weight table (model/weight_names.h) counts whole when it is
// replicated under tensor parallelism and 1/tp of it when split (column, row, vocabulary): P_r for the
// student, T_r for its trainable part (model.trainable presets all / attention / up_proj; name patterns
// count as all, an upper bound), Pt_r for the teacher.
//
// Memory per GPU, bytes (b = micro_batch_size sequences of s = data.max_seq_len tokens; w = 2 for bf16,
// 4 for fp32; z = dp with parallel.zero 1, else 1; L layers, D hidden, I intermediate, H heads, V vocab):
//   weights        w * P_r                                  (trained and frozen, compute dtype)
//   gradients      bf16: (2 + 4) * T_r  (bf16 .grad + its fp32 accumulation, trainer/optimizer.h)
//                  fp32: 4 * T_r
//   optimizer      bf16 with masters: 12 * T_r / z  (fp32 master, exp_avg, exp_avg_sq); fp32: 8 * T_r / z
//   teacher        w * Pt_r                                 (frozen, sharded like the student)
//   checkpoints    L * b * s * D * w                        (activation checkpointing: each layer's input;
//                                                            replicated over TP: no sequence parallelism)
//   layer          2 * b * s * A * w                        (one layer's activations and their gradients
//                  (x L / 2 + 1 layers' activations          during its backward; A = values per token a
//                   without checkpointing)                   layer keeps: norms' outputs, q/k/v/attention
//                                                            output / tp, MLA latent, MLP 4 * I / tp or, for
//                                                            MoE (experts replicated), top_k * 4 * I)
//   attention      3 * b * s^2                              (the boolean mask of packed / padded rows and
//                                                            SDPA's additive bias in bf16); soft-capped
//                                                            attention (Gemma-2) adds its explicit scores,
//                                                            8 * b * (H / tp) * s^2
//   loss           teacher logits b * s * (V / tp) * w, plus the chunked loss's float32 buffers,
//                  (5 + 3 with a teacher) * min(256 MiB, b * s * (V / tp) * 4) (trainer/losses.h)
//   buckets        2 * parallel.bucket_mb MiB                (data parallel: buckets in flight)
//   overhead       overhead_gib (CUDA context, cuBLAS/NCCL workspaces, allocator fragmentation)
// peak = the larger of that sum and the start-up peak: the student is built in float32 before the bf16
// cast (4 * P_r) next to the fp32 masters (4 * T_r / z), the teacher and the overhead.
//
// Speed: FLOPs per token = 2 * M (forward) + 2 * M (activation gradients) + 2 * M_T (weight gradients)
// of the student, where M counts the matrices a token goes through (the input embedding is a lookup; an
// MoE token uses top_k of the experts) and M_T the trainable ones, plus 3 * 2 * (s / 2) * H * (qk + v) * L
// for causal attention (forward + backward, mean context s / 2), plus the teacher's forward
// 2 * M_teacher + 2 * (s / 2) * H_t * (qk_t + v_t) * L_t when distilling (kl_ratio > 0). Activation
// recomputation is not counted (the MFU convention): it is part of the assumed efficiency.
//   tokens/s (job) = world_size * mfu * peak_tflops * 1e12 / (FLOPs per token)
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "model/config.h"
#include "trainer/recipe.h"

namespace mlaforge {

struct EstimateAssumptions {
  double mfu = 0.35;             // model FLOPs utilisation assumed
  double peak_tflops = 989;      // dense bf16 peak per GPU (H100 SXM: 989)
  double gpu_memory_gib = 79.6;  // per GPU (H100 80GB: 81,559 MiB)
  double overhead_gib = 2.0;     // CUDA context, library workspaces, fragmentation
};

struct MemoryTerm {
  std::string name;  // "weights", "gradients", ...
  double bytes = 0;
};

struct RunEstimate {
  EstimateAssumptions assumptions;
  int64_t world_size = 1, tp = 1, dp = 1;
  double student_parameters = 0;    // whole model
  double rank_parameters = 0;       // P_r
  double trainable_parameters = 0;  // whole model
  double rank_trainable = 0;        // T_r
  double teacher_parameters = 0;    // 0 without a teacher
  double rank_teacher = 0;          // Pt_r
  bool trainable_upper_bound = false;  // name patterns: counted as all
  std::vector<MemoryTerm> memory;   // steady state, per GPU
  double steady_bytes = 0;          // their sum
  double startup_bytes = 0;         // start-up peak
  double peak_bytes = 0;            // max of the two
  double flops_per_token = 0;
  double tokens_per_second = 0;     // whole job
  double step_seconds = 0;          // one optimizer step of global_batch_size full sequences
  std::optional<double> run_hours;  // train.max_steps steps (unknown with epochs)

  bool fits() const;  // peak below the GPU's memory (gpu_memory_gib GiB)
  // Human-readable lines ("memory per GPU (estimate): 61.3 GiB of 80 = weights 2.1 + ...").
  std::vector<std::string> describe() const;
  nlohmann::json to_json() const;
};

// Parameters of a config as the weight table holds them: (whole model, this TP rank's share). The whole
// count equals ModelConfig::num_parameters() (tested).
struct ParameterCount {
  double total = 0;
  double rank = 0;
};
// `trainable`: the recipe's model.trainable items (presets; anything else counts as all).
ParameterCount count_parameters(const ModelConfig& config, int64_t tp, const std::vector<std::string>& trainable = {"all"});

// The estimate for `recipe` run with `plan` (plan_run). `teacher`: the teacher's config (required when
// the recipe distils, i.e. teacher.path set and kl_ratio > 0).
RunEstimate estimate_run(const Recipe& recipe, const RunPlan& plan, const ModelConfig& student,
                         const std::optional<ModelConfig>& teacher, const EstimateAssumptions& assumptions = {});

}  // namespace mlaforge
