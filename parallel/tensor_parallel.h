#pragma once
// Megatron-style tensor parallelism over the parameter plan of model/weight_names.h (TpSplit per
// parameter). A TP rank's model is an ordinary single-device Decoder built from tp_rank_config(), holding
// shard_state_dict()'s slice of the weights, with make_tp_hooks()'s object installed
// (DecoderImpl::set_tp_hooks): the model consults it at the f/g points listed in model/tp_hooks.h.
// The loss is vocab_parallel_loss_sums(): the full logits never exist on any rank.
//
// Splits (dim 0 = output features of a Linear):
//   column  contiguous dim-0 slice: q/k/v (GQA, per-head row blocks, head-major), MLA q_proj / q_b_proj
//           (per head [nope | rope]) and kv_b_proj (per head [nope | v]), gate/up. Rank r holds heads
//           [r H/tp, (r+1) H/tp) (and KV heads [r KV/tp, ...), so GQA groups stay on one rank).
//   row     contiguous dim-1 slice: o_proj, down_proj.
//   vocab   dim-0 slice of the vocabulary padded with zero rows to a multiple of tp.
//   replicated  everything else (norms, MLA kv_a_proj_with_mqa / kv_a_layernorm / q_a_proj /
//           q_a_layernorm, the MoE router and experts).
// All state dicts here are keyed by Hugging Face names (what load_weights / export_weights use).
#include <memory>
#include <vector>

#include "model/checkpoint.h"
#include "model/config.h"
#include "model/decoder.h"
#include "model/tp_hooks.h"
#include "parallel/communicator.h"
#include "model/weight_names.h"
#include "trainer/losses.h"

namespace mlaforge::parallel {

// The vocabulary padded up to a multiple of tp.
int64_t padded_vocab(int64_t vocab, int tp);

// The tp values (1..heads) this config can use: those dividing the attention heads (and, GQA, the KV
// heads; dense MLP: the intermediate size).
std::vector<int> valid_tp_sizes(const ModelConfig& config);

// The config of one TP rank's model: heads / tp, KV heads / tp, intermediate / tp (dense MLP; MoE
// experts are replicated and keep theirs), vocab = padded vocab / tp. Throws mlaforge::Error naming the
// valid tp values when tp does not divide them, and for the not yet supported row-parallel biases
// (o_proj_bias, mlp_bias, MLA attention_bias).
ModelConfig tp_rank_config(const ModelConfig& config, int tp);

// This rank's slice of a full (HF-named) state dict: the input of load_weights() for the rank's model.
// Every name of the config's table must be present.
StateDict shard_state_dict(const ModelConfig& config, const StateDict& full, int tp, int rank);
// The same one tensor at a time, for load_weights(model, reader, transform): each rank reads a lazily
// mapped checkpoint tensor by tensor and keeps only its slice, so no rank ever holds the whole model.
WeightTransform tp_weight_slicer(const ModelConfig& config, int tp, int rank);

// Where a TP rank's local tensor (cut as shard_state_dict cuts it) lies in the global, single-device
// tensor: the global shape, and per dimension the offset and the extent of the local tensor that is real
// (the vocabulary padding of the last ranks excluded: `sizes` may be smaller than the local shape, and 0).
struct GlobalRegion {
  std::vector<int64_t> global_shape, offsets, sizes;
};
GlobalRegion tp_global_region(const ModelConfig& config, TpSplit split, c10::IntArrayRef local_shape, int tp, int rank);

// The inverse: the full state dict (vocab padding dropped) from every rank's shard, in rank order.
StateDict gather_state_dict(const ModelConfig& config, const std::vector<StateDict>& shards);
// The same over the TP communicator (collective; every rank gets the full dict): for export.
StateDict gather_state_dict(const ModelConfig& config, const StateDict& local, Communicator& tp);

// Which slice this rank holds and how the hooks behave.
struct TpOptions {
  // Test knob: points whose copy_to_tp skips the backward all-reduce (tests/parallel/tp_test.cpp shows
  // that without the reduction at TpPoint::mla_latent the replicated kv_a_proj_with_mqa gradient is
  // partial). Empty in real runs.
  std::vector<TpPoint> skip_backward_reduce;
};

// The hooks of one rank: f/g as torch::autograd::Function subclasses calling `tp` (which must outlive
// the model), vocabulary-parallel embedding over rows [rank * V_pad/tp, (rank + 1) * V_pad/tp).
std::shared_ptr<TensorParallelHooks> make_tp_hooks(const ModelConfig& config, Communicator& tp,
                                                   TpOptions options = {});

// Cross-entropy with vocabulary-parallel logits: logits (n, V_pad / tp) are this rank's columns, starting
// at global id vocab_start; columns at global ids >= vocab (padding) are excluded. targets (n) int64
// global ids or -100. Returns the CE sum over non-ignored rows (() float32, the same on every rank,
// differentiable w.r.t. logits): max, sum-exp and the target logit are all-reduced, never the logits.
torch::Tensor vocab_parallel_cross_entropy(const torch::Tensor& logits, const torch::Tensor& targets,
                                           int64_t vocab_start, int64_t vocab, Communicator& tp);

// lm_loss_sums (trainer/losses.h) for a TP rank, chunked with recomputation like the unsharded one
// (options.chunk_tokens; -1: automatic). `model` is the rank's model with hooks installed; `full_vocab`
// the unpadded vocabulary size. teacher_logits (B, T, V/tp): the teacher's vocabulary-parallel logits
// (a teacher sharded like the student); then the KL term (forward KL(teacher || student) at
// options.temperature, x tau^2, over the trained tokens) is added, its log-normalisers all-reduced.
LossSums vocab_parallel_loss_sums(DecoderImpl& model, const torch::Tensor& hidden, const torch::Tensor& targets,
                                  int64_t full_vocab, Communicator& tp, const LossOptions& options = {},
                                  const torch::Tensor& teacher_logits = {});

}  // namespace mlaforge::parallel
