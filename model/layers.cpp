#include "model/layers.h"

#include "core/error.h"

namespace mlaforge {

RMSNormImpl::RMSNormImpl(int64_t dim, double eps, bool unit_offset) : eps_(eps), unit_offset_(unit_offset) {
  weight = register_parameter("weight", unit_offset ? torch::zeros({dim}) : torch::ones({dim}));
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) {
  auto h = x.to(torch::kFloat32);
  h = h * torch::rsqrt(h.pow(2).mean(-1, /*keepdim=*/true) + eps_);
  if (unit_offset_) return (h * (1.0 + weight.to(torch::kFloat32))).to(x.dtype());
  // Llama casts back before scaling (weight * x.to(dtype)); keep that order for bf16 parity.
  return weight * h.to(x.dtype());
}

torch::Tensor activation(const std::string& name, const torch::Tensor& x) {
  if (name == "silu") return torch::silu(x);
  if (name == "gelu_pytorch_tanh") return torch::gelu(x, "tanh");
  if (name == "gelu") return torch::gelu(x);
  fail("unsupported activation '", name, "'");
}

GatedMLPImpl::GatedMLPImpl(int64_t hidden, int64_t intermediate, const std::string& act, bool bias)
    : act_(act) {
  w_gate = register_module("w_gate", torch::nn::Linear(torch::nn::LinearOptions(hidden, intermediate).bias(bias)));
  w_up = register_module("w_up", torch::nn::Linear(torch::nn::LinearOptions(hidden, intermediate).bias(bias)));
  w_down = register_module("w_down", torch::nn::Linear(torch::nn::LinearOptions(intermediate, hidden).bias(bias)));
}

torch::Tensor GatedMLPImpl::forward(const torch::Tensor& x) {
  return w_down(activation(act_, w_gate(x)) * w_up(x));
}

SparseMoEImpl::SparseMoEImpl(const ModelConfig& c)
    : num_experts_(c.num_local_experts), top_k_(c.num_experts_per_tok) {
  router = register_module("router", torch::nn::Linear(torch::nn::LinearOptions(c.hidden_size, num_experts_).bias(false)));
  experts = register_module("experts", torch::nn::ModuleList());
  for (int64_t e = 0; e < num_experts_; ++e)
    experts->push_back(GatedMLP(c.hidden_size, c.intermediate_size, c.hidden_act, false));
}

torch::Tensor SparseMoEImpl::forward(const torch::Tensor& x) {
  const auto shape = x.sizes().vec();
  auto tokens = x.reshape({-1, x.size(-1)});                       // (N, D)
  auto router_logits = router(tokens);                             // (N, E)
  auto probs = torch::softmax(router_logits, 1, torch::kFloat32);  // (N, E)
  auto [top_weights, top_experts] = probs.topk(top_k_, -1);        // (N, k)
  top_weights = (top_weights / top_weights.sum(-1, true)).to(x.dtype());

  auto out = torch::zeros_like(tokens);
  // expert_mask (E, k, N): which token chose which expert in which slot.
  auto expert_mask = torch::one_hot(top_experts, num_experts_).permute({2, 1, 0});
  auto used = expert_mask.sum({1, 2}).nonzero().flatten();
  auto used_cpu = used.cpu();
  auto used_acc = used_cpu.accessor<int64_t, 1>();
  for (int64_t n = 0; n < used_cpu.size(0); ++n) {
    const int64_t e = used_acc[n];
    auto where = expert_mask[e].nonzero();  // (M, 2): (slot, token)
    auto slot = where.select(1, 0), token = where.select(1, 1);
    auto expert_out = experts[e]->as<GatedMLPImpl>()->forward(tokens.index_select(0, token));
    auto weight = top_weights.index({token, slot}).unsqueeze(-1);
    out.index_add_(0, token, expert_out * weight);
  }

  // Load balancing (Switch Transformer, as in transformers' load_balancing_loss_func).
  auto routed = torch::one_hot(top_experts, num_experts_).to(torch::kFloat32);  // (N, k, E)
  last_expert_fraction = routed.sum(1).mean(0);                                 // (E,)
  last_router_prob = probs.mean(0);                                             // (E,)
  last_aux_loss = (last_expert_fraction * last_router_prob).sum() * num_experts_;
  return out.reshape(shape);
}

}  // namespace mlaforge
