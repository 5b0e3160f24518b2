#pragma once
// Training losses, as SUMS over tokens plus token COUNTS, so that an optimizer step made of several
// micro-batches (and ranks) normalises by the number of trained tokens of the whole step, not by a mean
// of per-micro-batch means (which would weight a token of a short micro-batch more than one of a long).
//
//   CE   next-token cross-entropy, summed over trained tokens: targets != kIgnoreIndex (-100).
//   KL   logit distillation: forward KL(teacher || student) of the temperature-tau softmaxes, times tau^2
//        (so gradient magnitudes do not shrink with tau, as in Hinton et al.), summed over the KL tokens:
//        the trained tokens, or any mask given (e.g. every non-pad token, prompts included).
//   step objective  alpha * KL_sum / KL_tokens + (1 - alpha) * CE_sum / CE_tokens, token counts of the
//        whole step; each micro-batch backpropagates its own share (micro_batch_loss), and the gradients
//        accumulate to the gradient of the step objective.
//
// Targets are aligned with positions: targets[b, t] is the token the model should predict at position
// t (the next input token), or -100. shift_labels converts Hugging Face `labels` (aligned with the inputs,
// shifted inside the model) to this form.
//
// Chunking: the logits of T tokens over a vocabulary of V are T x V values; their float32 log-softmax
// and its gradient are the largest tensors of a fine-tuning step (V = 150k: 0.6 MB per token). The loss
// is computed from the final hidden states chunk by chunk: each chunk's logits exist only while that chunk
// is computed, and backward recomputes them chunk by chunk (trainer/activation_checkpoint.h), so the peak
// holds one chunk's logits instead of all of them (at the price of one more LM-head matmul per token).
// Only rows that carry a CE or KL term are computed at all.
#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <vector>

#include "data/packing.h"  // kIgnoreIndex
#include "model/decoder.h"

namespace mlaforge {

// labels (B, T) -> targets (B, T): targets[:, t] = labels[:, t + 1], targets[:, T - 1] = -100.
torch::Tensor shift_labels(const torch::Tensor& labels);

struct LossOptions {
  // Tokens (rows of logits) per chunk: > 0 that many; 0 all at once (no recomputation); -1 automatic:
  // as many as keep one float32 (rows, V) buffer near 256 MiB (>= 1). Peak memory of the loss is about
  // 5 such buffers (logits, log-softmax, their gradients; 3 more with a teacher).
  int64_t chunk_tokens = -1;
  double temperature = 1.0;  // distillation temperature tau (> 0)
};

struct LossSums {
  torch::Tensor ce_sum;    // () float32, differentiable: sum of -log p(target) over trained tokens
  torch::Tensor kl_sum;    // () float32, differentiable: tau^2 * sum of KL(teacher||student); undefined w/o teacher
  int64_t ce_tokens = 0;   // trained tokens (targets != -100)
  int64_t kl_tokens = 0;   // tokens in the KL sum (0 without teacher)
};

// The logits head: maps hidden rows (n, D) to logits (n, V); `params` are the tensors it reads that may
// need gradients (passed to the checkpoint). model_head() is the decoder's LM head (tied or not,
// Gemma2's final soft-capping included).
struct LogitsHead {
  std::function<torch::Tensor(const torch::Tensor& hidden)> fn;
  std::vector<torch::Tensor> params;
  int64_t vocab = 0;  // V: needed for automatic chunking and target validation (0: unknown)
};
// Reads the model through a raw pointer: the model must outlive the loss's backward.
LogitsHead model_head(DecoderImpl& model);

// The loss sums from final hidden states hidden (B, T, D) (DecoderImpl::hidden), targets (B, T) int64.
// teacher_logits (B, T, V), any float dtype, or undefined (no KL). kl_mask (B, T) bool selects the KL
// tokens; undefined: the trained tokens.
LossSums lm_loss_sums(const LogitsHead& head, const torch::Tensor& hidden, const torch::Tensor& targets,
                      const torch::Tensor& teacher_logits = {}, const torch::Tensor& kl_mask = {},
                      const LossOptions& options = {});

// The same sums from full logits (B, T, V): the unchunked reference, also for evaluation code that has
// logits anyway.
LossSums loss_sums_from_logits(const torch::Tensor& logits, const torch::Tensor& targets,
                               const torch::Tensor& teacher_logits = {}, const torch::Tensor& kl_mask = {},
                               double temperature = 1.0);

// Token counts of one optimizer step: the sum over its micro-batches (and, with data parallelism, an
// all-reduce over ranks: then every rank must sum the gradients, not average them, or multiply this
// loss by the number of ranks). Known before the first backward, since they come from the targets.
struct StepTokens {
  int64_t ce = 0;
  int64_t kl = 0;
};
// Counts one micro-batch's tokens (targets != -100; KL: kl_mask if given, else the trained tokens, and
// only when `distill`). Add the results of all micro-batches of the step.
StepTokens count_tokens(const torch::Tensor& targets, bool distill = false, const torch::Tensor& kl_mask = {});
StepTokens& operator+=(StepTokens& a, const StepTokens& b);

// The micro-batch's share of the step objective:
//   alpha * kl_sum / step.kl + (1 - alpha) * ce_sum / step.ce
// Terms with weight 0 are left out (alpha = 0 needs no teacher; alpha = 1 still reports CE). A term with
// weight > 0 needs a positive step count; a micro-batch without such tokens contributes zero.
torch::Tensor micro_batch_loss(const LossSums& sums, const StepTokens& step, double alpha = 0.0);

// Accumulates the detached sums of a step's micro-batches for logging (one host sync, in report()).
class LossMeter {
 public:
  void add(const LossSums& sums);
  struct Report {
    double ce = 0;     // mean CE per trained token
    double kl = 0;     // mean KL per KL token (0 without teacher)
    double total = 0;  // alpha * kl + (1 - alpha) * ce
    int64_t ce_tokens = 0, kl_tokens = 0;
  };
  Report report(double alpha = 0.0) const;
  void reset() { *this = LossMeter(); }

 private:
  torch::Tensor ce_, kl_;
  int64_t ce_tokens_ = 0, kl_tokens_ = 0;
};

}  // namespace mlaforge
