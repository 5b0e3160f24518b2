#pragma once
// The points where a tensor-parallel rank's model talks to the other ranks of its TP group (Megatron-LM's
// f / g operators). The model code stays single-device maths: a TP rank's model is an ordinary Decoder
// built from a per-rank config (heads / tp, intermediate / tp, vocab / tp; parallel/tensor_parallel.h),
// and consults this object, when one is installed (DecoderImpl::set_tp_hooks), at exactly these points.
// Without hooks (every single-device run) nothing changes. The implementation lives in parallel/.
// With hooks, hidden() is the full (replicated) hidden state on every rank, while forward() and
// logits_from_hidden() return this rank's vocabulary slice of the logits, (..., padded vocab / tp): the
// loss is parallel::vocab_parallel_loss_sums, which never gathers them.
#include <torch/torch.h>

namespace mlaforge {

// Which call site asks; lets the implementation (and its tests) tell the points apart.
enum class TpPoint {
  attn_input,     // GQA: the normed input of the column-parallel q/k/v projections
  mla_query,      // MLA: the input of the column-parallel query projection (x, or the normed q_a latent)
  mla_latent,     // MLA: [c_kv | k_pe], the replicated latent and shared rope key read by every head
  mlp_input,      // dense MLP: the input of the column-parallel gate/up projections
  lm_head_input,  // the final hidden states entering the vocabulary-parallel LM head
  attn_output,    // after the row-parallel o_proj (partial sums over this rank's heads)
  mlp_output,     // after the row-parallel down projection (partial sums over this rank's slice)
};

class TensorParallelHooks {
 public:
  virtual ~TensorParallelHooks() = default;
  // f: identity forward, all-reduce (sum) of the gradient in backward. Placed where a replicated tensor
  // feeds rank-local (column-parallel) work, so everything upstream gets the full gradient.
  virtual torch::Tensor copy_to_tp(const torch::Tensor& x, TpPoint point) = 0;
  // g: all-reduce (sum) forward, identity backward. Placed after row-parallel outputs.
  virtual torch::Tensor reduce_from_tp(const torch::Tensor& x, TpPoint point) = 0;
  // Vocabulary-parallel embedding: weight (V / tp, D) is this rank's rows; ids outside them give zeros,
  // and the all-reduce assembles the full embedding. tokens (B, T) global ids -> (B, T, D).
  virtual torch::Tensor embed(const torch::Tensor& weight, const torch::Tensor& tokens) = 0;
};

}  // namespace mlaforge
