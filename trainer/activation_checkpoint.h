#pragma once
// Activation checkpointing (recomputation) for LibTorch C++, which has no torch.utils.checkpoint.
//
// checkpoint(fn, inputs, params) runs fn without recording autograd history, so none of its internal
// activations are kept; only `inputs` are saved. In backward it re-runs fn on the saved inputs with grad
// enabled and backpropagates through that fresh graph. The parameters fn reads are handed to autograd as
// extra inputs of the checkpoint node, so their gradients leave the recomputation through the engine like
// any other gradient: they accumulate into .grad under loss.backward() across micro-batches, and
// torch::autograd::grad(loss, params) returns them. (This also keeps a layer's parameters trainable when
// its input does not require grad, e.g. a frozen embedding under the up_proj set, where a reentrant
// checkpoint that only sees the inputs would silently produce no gradients.)
//
// Requirements on fn:
//   - a pure function of its inputs, of `params` and of tensors it captures, which must not be modified
//     in place before backward (the inputs are version-checked; captured tensors are not);
//   - deterministic: the recomputed outputs must equal the first ones. The CPU generator and, for CUDA
//     inputs, that device's generator are saved before the forward and restored around the recompute
//     (and put back afterwards), so random ops such as dropout repeat exactly. Kernels that are
//     nondeterministic on GPU (atomic index_add in the MoE, some SDPA backwards) make the recomputed
//     graph differ from the first forward by rounding only.
//   - backward through the checkpoint once (no retain_graph reuse, no double backward).
//
// Memory: one layer's activations exist at a time during backward (plus every layer's input), instead of
// every layer's activations for the whole backward.
#include <torch/torch.h>

#include <functional>
#include <vector>

#include "model/decoder.h"

namespace mlaforge {

using CheckpointFn = std::function<std::vector<torch::Tensor>(const std::vector<torch::Tensor>& inputs)>;

// Returns fn(inputs). Gradients flow to the inputs that require grad and to `params` (parameters with
// requires_grad == false may be left out or included; they are skipped). Outputs that are not floating
// point are marked non-differentiable. Without grad mode, or when nothing needs a gradient, it is a plain
// call of fn.
std::vector<torch::Tensor> checkpoint(const CheckpointFn& fn, const std::vector<torch::Tensor>& inputs,
                                      const std::vector<torch::Tensor>& params);

// One decoder layer through checkpoint(): x (B, T, D) -> (B, T, D), training only (no KV cache). For a
// MoE layer the router probabilities are also routed through the checkpoint, so DecoderImpl::aux_loss()
// of a checkpointed forward still has a gradient; the per-layer SparseMoE::last_aux_loss does not.
torch::Tensor checkpointed_layer_forward(DecoderLayerImpl& layer, const torch::Tensor& x, const AttentionContext& ctx);

// Installs (or removes) a DecoderImpl::layer_runner that checkpoints every layer whenever grad mode is
// on and no KV cache is used; evaluation and generation are unaffected.
void set_activation_checkpointing(DecoderImpl& model, bool enabled);

}  // namespace mlaforge
