#pragma once
// Building blocks shared by every family: RMSNorm, the gated MLP (SwiGLU / GeGLU), Mixtral's sparse MoE.
#include <torch/torch.h>

#include "model/config.h"

namespace mlaforge {

// y = x / rms(x) * w, computed in float32 and cast back. Gemma2 stores w - 1 (unit_offset: y * (1 + w)).
class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, double eps, bool unit_offset = false);
  torch::Tensor forward(const torch::Tensor& x);  // (..., dim)
  torch::Tensor weight;

 private:
  double eps_;
  bool unit_offset_;
};
TORCH_MODULE(RMSNorm);

torch::Tensor activation(const std::string& name, const torch::Tensor& x);

// down(act(gate(x)) * up(x))
class GatedMLPImpl : public torch::nn::Module {
 public:
  GatedMLPImpl(int64_t hidden, int64_t intermediate, const std::string& act, bool bias);
  torch::Tensor forward(const torch::Tensor& x);
  torch::nn::Linear w_gate{nullptr}, w_up{nullptr}, w_down{nullptr};

 private:
  std::string act_;
};
TORCH_MODULE(GatedMLP);

// Mixtral sparse MoE: softmax router, top-k experts renormalised, weighted sum of expert outputs.
// Keeps the Switch-Transformer load-balancing loss of the last forward for the trainer.
class SparseMoEImpl : public torch::nn::Module {
 public:
  explicit SparseMoEImpl(const ModelConfig& config);
  torch::Tensor forward(const torch::Tensor& x);  // (B, T, D)
  // num_experts * sum_e(fraction of tokens routed to e * mean router probability of e), per HF.
  torch::Tensor last_aux_loss;
  // The two factors of that loss for the last forward, (E,) each: top-k assignments per expert divided by
  // the token count (sums to top_k), and the mean router probability. DecoderImpl::aux_loss() pools them
  // over layers the way transformers' load_balancing_loss_func does.
  torch::Tensor last_expert_fraction, last_router_prob;

  torch::nn::Linear router{nullptr};
  torch::nn::ModuleList experts;

 private:
  int64_t num_experts_, top_k_;
};
TORCH_MODULE(SparseMoE);

}  // namespace mlaforge
