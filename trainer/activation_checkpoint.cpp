#include "trainer/activation_checkpoint.h"

#include <ATen/Context.h>

#include <memory>
#include <mutex>
#include <optional>

#include "core/error.h"

namespace mlaforge {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// A generator's state, taken and put back under its lock.
torch::Tensor get_rng_state(c10::Device device) {
  at::Generator gen = at::globalContext().defaultGenerator(device);
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}
void set_rng_state(c10::Device device, const torch::Tensor& state) {
  at::Generator gen = at::globalContext().defaultGenerator(device);
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state);
}

// Everything the backward needs besides the saved inputs. Held by the autograd node (as an IValue
// capsule, which needs no class registration) and released with it.
struct Closure : torch::CustomClassHolder {
  CheckpointFn fn;
  size_t num_inputs = 0;
  std::vector<torch::Tensor> params;  // requires_grad, passed to autograd after the inputs
  torch::Tensor cpu_rng;              // generator states at the start of the forward
  std::optional<c10::Device> device;  // CUDA device of the inputs, if any
  torch::Tensor device_rng;
};

// Sets the generators to the forward's states for the recompute and puts the current ones back after,
// so the recompute neither sees different random numbers nor disturbs the stream that follows.
class RngFork {
 public:
  explicit RngFork(const Closure& c) : device_(c.device) {
    cpu_ = get_rng_state(c10::Device(c10::kCPU));
    set_rng_state(c10::Device(c10::kCPU), c.cpu_rng);
    if (device_) {
      dev_ = get_rng_state(*device_);
      set_rng_state(*device_, c.device_rng);
    }
  }
  ~RngFork() {
    set_rng_state(c10::Device(c10::kCPU), cpu_);
    if (device_) set_rng_state(*device_, dev_);
  }
  RngFork(const RngFork&) = delete;
  RngFork& operator=(const RngFork&) = delete;

 private:
  std::optional<c10::Device> device_;
  torch::Tensor cpu_, dev_;
};

class CheckpointFunction : public torch::autograd::Function<CheckpointFunction> {
 public:
  // `all` = inputs followed by params; only the inputs are saved (params are reached through fn).
  static variable_list forward(AutogradContext* ctx, c10::intrusive_ptr<Closure> closure, torch::TensorList all) {
    std::vector<torch::Tensor> inputs(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(closure->num_inputs));
    ctx->save_for_backward(inputs);
    ctx->saved_data["closure"] = c10::IValue::make_capsule(closure);
    ctx->set_materialize_grads(false);  // unused outputs (e.g. router probabilities) need no zero gradient
    variable_list outputs = closure->fn(inputs);  // grad mode is off here (Function::apply)
    for (const auto& o : outputs)
      if (o.defined() && !o.is_floating_point()) ctx->mark_non_differentiable({o});
    return outputs;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    auto closure = c10::static_intrusive_pointer_cast<Closure>(ctx->saved_data["closure"].toCapsule());
    const size_t n_in = closure->num_inputs, n_par = closure->params.size();
    const variable_list saved = ctx->get_saved_variables();

    // Fresh leaves for the recompute; gradients are wanted for those inputs (and params) autograd asks for.
    std::vector<torch::Tensor> inputs;
    variable_list wrt;
    std::vector<size_t> wrt_slot;  // position of each wrt entry in the result (after the closure slot)
    for (size_t i = 0; i < n_in; ++i) {
      torch::Tensor d = saved[i].detach();
      if (ctx->needs_input_grad(i) && d.is_floating_point()) {
        d.requires_grad_(true);
        wrt.push_back(d);
        wrt_slot.push_back(i);
      }
      inputs.push_back(d);
    }
    for (size_t j = 0; j < n_par; ++j) {
      if (!ctx->needs_input_grad(n_in + j)) continue;
      wrt.push_back(closure->params[j]);
      wrt_slot.push_back(n_in + j);
    }

    variable_list outputs;
    {
      RngFork fork(*closure);
      torch::AutoGradMode enable_grad(true);
      outputs = closure->fn(inputs);
    }
    MLA_CHECK(outputs.size() == grad_outputs.size(), "checkpoint: the recomputation returned ", outputs.size(),
              " outputs, the forward ", grad_outputs.size());
    variable_list roots, root_grads;
    for (size_t i = 0; i < outputs.size(); ++i) {
      if (!grad_outputs[i].defined() || !outputs[i].defined() || !outputs[i].requires_grad()) continue;
      roots.push_back(outputs[i]);
      root_grads.push_back(grad_outputs[i]);
    }

    variable_list result(1 + n_in + n_par);  // slot 0: the closure argument (never a gradient)
    if (roots.empty() || wrt.empty()) return result;
    variable_list grads = torch::autograd::grad(roots, wrt, root_grads, /*retain_graph=*/false,
                                                /*create_graph=*/false, /*allow_unused=*/true);
    for (size_t k = 0; k < grads.size(); ++k) result[1 + wrt_slot[k]] = grads[k];
    return result;
  }
};

}  // namespace

std::vector<torch::Tensor> checkpoint(const CheckpointFn& fn, const std::vector<torch::Tensor>& inputs,
                                      const std::vector<torch::Tensor>& params) {
  std::vector<torch::Tensor> trainable;
  for (const auto& p : params)
    if (p.defined() && p.requires_grad()) trainable.push_back(p);
  bool any_grad = !trainable.empty();
  for (const auto& x : inputs) {
    MLA_CHECK(x.defined(), "checkpoint: undefined input (capture optional tensors in the function instead)");
    any_grad = any_grad || x.requires_grad();
  }
  if (!torch::GradMode::is_enabled() || !any_grad) return fn(inputs);

  auto closure = c10::make_intrusive<Closure>();
  closure->fn = fn;
  closure->num_inputs = inputs.size();
  closure->params = trainable;
  closure->cpu_rng = get_rng_state(c10::Device(c10::kCPU));
  for (const auto& x : inputs) {
    if (x.is_cuda()) {
      closure->device = x.device();
      closure->device_rng = get_rng_state(x.device());
      break;
    }
  }
  std::vector<torch::Tensor> all = inputs;
  all.insert(all.end(), trainable.begin(), trainable.end());
  return CheckpointFunction::apply(closure, torch::TensorList(all));
}

torch::Tensor checkpointed_layer_forward(DecoderLayerImpl& layer, const torch::Tensor& x, const AttentionContext& ctx) {
  // Keep the layer alive for the backward (it is owned by the model, but the closure should not rely on it).
  auto self = std::static_pointer_cast<DecoderLayerImpl>(layer.shared_from_this());
  std::vector<torch::Tensor> params = layer.parameters(/*recurse=*/true);
  const bool moe = static_cast<bool>(layer.moe);
  // The recompute in backward must not overwrite what the first forward left in the MoE block (the
  // router statistics DecoderImpl::aux_loss reads): it restores them.
  auto first_call = std::make_shared<bool>(true);
  CheckpointFn fn = [self, ctx, moe, first_call](const std::vector<torch::Tensor>& in) -> std::vector<torch::Tensor> {
    if (!moe) return {self->forward(in[0], ctx, nullptr)};
    if (*first_call) {
      *first_call = false;
      auto y = self->forward(in[0], ctx, nullptr);
      return {y, self->moe->last_router_prob};
    }
    SparseMoEImpl& m = *self->moe;
    auto fraction = m.last_expert_fraction, prob = m.last_router_prob, aux = m.last_aux_loss;
    auto y = self->forward(in[0], ctx, nullptr);
    auto recomputed_prob = m.last_router_prob;
    m.last_expert_fraction = fraction, m.last_router_prob = prob, m.last_aux_loss = aux;
    return {y, recomputed_prob};
  };
  auto outputs = checkpoint(fn, {x}, params);
  // The probabilities as a checkpoint output carry a gradient path into the recomputed router.
  if (moe && outputs.size() > 1) layer.moe->last_router_prob = outputs[1];
  return outputs[0];
}

void set_activation_checkpointing(DecoderImpl& model, bool enabled) {
  if (!enabled) {
    model.layer_runner = nullptr;
    return;
  }
  model.layer_runner = [](DecoderLayerImpl& layer, const torch::Tensor& x, const AttentionContext& ctx,
                          KVCache* cache) -> torch::Tensor {
    if (cache != nullptr || !torch::GradMode::is_enabled()) return layer.forward(x, ctx, cache);
    return checkpointed_layer_forward(layer, x, ctx);
  };
}

}  // namespace mlaforge
