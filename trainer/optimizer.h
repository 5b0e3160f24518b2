#pragma once
// AdamW with decoupled weight decay (Loshchilov & Hutter), arithmetic identical to torch.optim.AdamW
// (foreach=False, amsgrad=False): the same ATen ops in the same order with the same scalars, so on CPU
// and fp32 the same gradients give bitwise-equal weights (tests/torch/optimizer_test.cpp checks this
// against torch). Per step t (1-based), for every parameter with a gradient g:
//     w  <- w * (1 - lr * wd)                      (only when wd != 0 for the parameter's group)
//     m  <- lerp(m, g, 1 - beta1)                  exp_avg
//     v  <- v * beta2 + (1 - beta2) * g * g        exp_avg_sq
//     w  <- w - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
//
// Parameter groups, by mlaforge name (applies_weight_decay):
//   no decay   norm weights (any module whose name ends in "norm": attn_norm, mlp_norm, the Gemma2 post
//              norms, the final norm, MLA's q_a_norm / kv_a_norm), biases (".bias"), and the input
//              embedding "embed.weight" unless decay_embeddings (with tied embeddings that tensor is also
//              the LM head). An untied lm_head.weight is an ordinary matrix and decays.
//   decay      everything else (projections, MLP and expert matrices, routers).
//
// Precision modes:
//   fp32         parameters, gradients and states in float32; the update is applied to the parameter.
//   bf16_master  the model's trainable parameters are bfloat16 (what forward and backward compute with);
//                the optimizer keeps a float32 master copy of each, plus float32 exp_avg / exp_avg_sq.
//                Gradients are cast to float32 (accumulate_grads() can do that after every micro-batch so
//                that accumulation itself happens in float32), clipped, applied to the master, and the
//                bf16 parameter is re-cast from the master (round to nearest even). Constructing the
//                optimizer from float32 parameters takes the masters from them exactly and then casts the
//                parameters to bf16 in place; cast the frozen ones too (trainer/trainable.h).
//
// Memory per trainable parameter: fp32 12 bytes (+4 for the gradient); bf16_master 2 (weight) + 12
// (master, m, v) + 2 (bf16 gradient) + 4 transiently (fp32 gradient during the step).
//
// ZeRO-1 (parallel/zero.h): with shard_count > 1 this optimizer owns only rows
// zero_row_range(rows, shard_rank, shard_count) of every parameter: its master, exp_avg and exp_avg_sq
// have those rows only (1/dp of the state memory), step() reads those rows of each gradient (which the
// caller has reduce-scattered) and updates those rows of the weight; the caller then all-gathers the
// other rows. The gradient norm is then a per-rank partial sum that the norm reducer completes.
#include <torch/torch.h>

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "model/checkpoint.h"

namespace mlaforge {

enum class Precision { fp32, bf16_master };
std::string precision_name(Precision precision);   // "fp32", "bf16"
Precision parse_precision(const std::string& name);  // "fp32" | "float32" | "bf16" | "bfloat16" | "bf16_master"

struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.01;    // applied to the decay group only
  bool decay_embeddings = false;  // put embed.weight in the decay group
  // Parameters (mlaforge names) kept out of weight decay in addition to the rule of applies_weight_decay
  // (a recipe's optim.no_decay patterns, resolved by the trainer). Names not among the parameters are
  // ignored: a frozen parameter has no optimizer slot.
  std::vector<std::string> no_decay_names;
  Precision precision = Precision::fp32;
  // ZeRO-1 sharding over the data-parallel group (see above); 1: every rank holds the whole state.
  int shard_rank = 0;
  int shard_count = 1;
};

// The group rule above, for one parameter's mlaforge name.
bool applies_weight_decay(const std::string& name, bool decay_embeddings);

// Completes a squared gradient norm across ranks in place (all-reduces); used for the global gradient norm
// under tensor parallelism or ZeRO. `grads` are the tensors the local norm was taken over (the optimizer's
// own rows under ZeRO), for reducers that must count some of them differently (tensors replicated over
// the TP group). Null: this process holds every gradient.
using NormReducer = std::function<void(torch::Tensor& squared_norm, const std::vector<torch::Tensor>& grads)>;

// torch.nn.utils.clip_grad_norm_(norm_type=2, foreach=False): the L2 norm of the per-tensor L2 norms, then
// every gradient scaled in place by min(1, max_norm / (norm + 1e-6)) (always multiplied, as torch does,
// which is bitwise a no-op when the factor is 1). max_norm <= 0: no scaling. Undefined tensors are skipped.
// Returns the pre-clip norm as a 0-dim float32 tensor on the gradients' device (no host sync).
// With a reducer the squared norm is reduced across ranks before the square root.
torch::Tensor clip_grad_norm(const std::vector<torch::Tensor>& grads, double max_norm,
                             const NormReducer& reduce = nullptr);

struct StepResult {
  double grad_norm = 0;  // global L2 norm of the gradients before clipping (NaN/inf when skipped)
  bool skipped = false;  // the norm was not finite: no parameter or state changed, the step count neither
  bool clipped = false;  // grad_norm > max_grad_norm > 0
  double lr = 0;
};

class AdamW {
 public:
  // params: (mlaforge name, tensor) of every trainable parameter, e.g. trainable_parameters(model). The
  // order is the order of the norm computation (so of its rounding) and of state_dict's keys.
  AdamW(std::vector<std::pair<std::string, torch::Tensor>> params, AdamWOptions options);

  // bf16_master: folds each parameter's bf16 .grad into a float32 accumulator and releases the .grad,
  // so gradient accumulation over micro-batches happens in float32. Call after each micro-batch's
  // backward (optional: step() folds what is left). fp32: nothing to do (autograd accumulates in fp32).
  void accumulate_grads();

  // One optimizer step at learning rate `lr`, clipping the global gradient norm to max_grad_norm (<= 0:
  // no clipping). Parameters without a gradient are left alone (as torch does; the step count is shared,
  // so a parameter that skipped steps gets the global count's bias correction afterwards). Gradients are
  // not cleared: call zero_grad(). A non-finite norm skips the step (see StepResult) and is reported.
  StepResult step(double lr, double max_grad_norm = 0);

  // The step's gradients as step() will use them, in parameter order: the parameters' .grad in fp32 mode,
  // the fp32 accumulators in bf16 mode (accumulate_grads() is called first). Changing them in place (a
  // data-parallel all-reduce) changes the step. A parameter without a gradient gets zeros first when
  // `zeros_for_missing` (every rank of an all-reduce must contribute the same tensors), else its entry
  // is undefined.
  std::vector<torch::Tensor> gradients(bool zeros_for_missing = false);
  // Entry i of gradients(), folding only parameter i's .grad (a data-parallel reducer calls it from the
  // autograd hook that fires once the parameter's last gradient of the step has been accumulated).
  torch::Tensor gradient(size_t i, bool zeros_for_missing = false);

  // Drops every gradient (set to undefined, like torch's set_to_none) and the fp32 accumulators.
  void zero_grad();

  // Optimizer state, name -> tensor, for checkpoints (safetensors-compatible, CPU copies):
  //   <param>.exp_avg, <param>.exp_avg_sq   float32, the parameter's shape (its own rows under ZeRO)
  //   <param>.master                        float32, bf16_master mode only
  //   step                                  int64 (1,): optimizer steps taken
  // Loading restores the exact state (and, in bf16_master mode, re-casts the bf16 parameters from the
  // masters: under ZeRO only the own rows, the caller all-gathers the rest), so training continues
  // bitwise as if it had not stopped. Missing, unexpected or misshapen entries and a precision-mode
  // mismatch throw, naming the entry.
  StateDict state_dict() const;
  void load_state_dict(const StateDict& state);

  void set_norm_reducer(NormReducer reduce) { reduce_ = std::move(reduce); }

  int64_t step_count() const { return step_; }
  const AdamWOptions& options() const { return options_; }
  size_t size() const { return slots_.size(); }
  const std::string& name(size_t i) const { return slots_.at(i).name; }
  bool decays(size_t i) const { return slots_.at(i).decay; }
  // The float32 master of parameter i (bf16_master), else the parameter itself. Under ZeRO the master
  // holds only the own rows (shard_rows(i)); the fp32-mode parameter is whole.
  const torch::Tensor& master(size_t i) const;
  // Rows [begin, end) of parameter i this optimizer owns (all rows without ZeRO).
  std::pair<int64_t, int64_t> shard_rows(size_t i) const { return {slots_.at(i).row_begin, slots_.at(i).row_end}; }
  bool sharded() const { return options_.shard_count > 1; }

 private:
  struct Slot {
    std::string name;
    torch::Tensor param;       // the model's tensor (fp32, or bf16 in bf16_master mode)
    torch::Tensor master;      // fp32 copy (bf16_master only)
    torch::Tensor exp_avg, exp_avg_sq;  // fp32
    torch::Tensor grad_acc;    // fp32 accumulated gradient (bf16_master only; undefined when none)
    bool decay = true;
    int64_t row_begin = 0, row_end = 0;  // the rows this optimizer updates (ZeRO), else all
  };
  // Rows [row_begin, row_end) of a tensor shaped like the slot's parameter (itself without ZeRO).
  torch::Tensor own_rows(const Slot& slot, const torch::Tensor& t) const;
  // The fp32 gradient the update uses (undefined when the parameter got none).
  torch::Tensor fp32_grad(Slot& slot);
  void accumulate(Slot& slot);  // bf16_master: slot.param's .grad folded into grad_acc and released

  std::vector<Slot> slots_;
  AdamWOptions options_;
  int64_t step_ = 0;
  NormReducer reduce_;
};

}  // namespace mlaforge
