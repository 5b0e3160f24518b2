#include "trainer/optimizer.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "core/error.h"
#include "parallel/zero.h"

namespace mlaforge {

std::string precision_name(Precision precision) {
  return precision == Precision::fp32 ? "fp32" : "bf16";
}

Precision parse_precision(const std::string& name) {
  if (name == "fp32" || name == "float32") return Precision::fp32;
  if (name == "bf16" || name == "bfloat16" || name == "bf16_master") return Precision::bf16_master;
  fail("unknown precision '", name, "' (expected fp32 or bf16)");
}

bool applies_weight_decay(const std::string& name, bool decay_embeddings) {
  if (name.size() >= 5 && name.compare(name.size() - 5, 5, ".bias") == 0) return false;
  if (name == "embed.weight") return decay_embeddings;
  // The owning module is the component before the last: "layers.3.attn.kv_a_norm.weight" -> "kv_a_norm".
  const auto last = name.rfind('.');
  if (last != std::string::npos) {
    const auto prev = name.rfind('.', last - 1);
    const std::string module = name.substr(prev == std::string::npos ? 0 : prev + 1,
                                           last - (prev == std::string::npos ? 0 : prev + 1));
    if (module.size() >= 4 && module.compare(module.size() - 4, 4, "norm") == 0) return false;
  }
  return true;
}

namespace {
// torch: clip_coef = max_norm / (total_norm + 1e-6), where Tensor.__rtruediv__ is reciprocal() * other;
// then clamp(max=1).
torch::Tensor clip_coefficient(const torch::Tensor& total, double max_norm) {
  return torch::clamp((total + 1e-6).reciprocal() * max_norm, c10::nullopt, 1.0);
}
}  // namespace

torch::Tensor clip_grad_norm(const std::vector<torch::Tensor>& grads, double max_norm, const NormReducer& reduce) {
  std::vector<torch::Tensor> norms;
  norms.reserve(grads.size());
  for (const auto& g : grads) {
    if (!g.defined()) continue;
    // float32 gradients take exactly torch's call (no dtype argument); others are reduced in float32.
    norms.push_back(g.scalar_type() == torch::kFloat32
                        ? torch::linalg_vector_norm(g, 2)
                        : torch::linalg_vector_norm(g, 2, c10::nullopt, false, torch::kFloat32));
  }
  if (norms.empty()) return torch::zeros({}, torch::kFloat32);
  // As torch: the norm of the stacked per-tensor norms.
  torch::Tensor total = torch::linalg_vector_norm(torch::stack(norms), 2);
  if (reduce) {
    torch::Tensor squared = total * total;
    reduce(squared, grads);
    total = squared.sqrt();
  }
  if (max_norm > 0) {
    torch::NoGradGuard no_grad;
    const auto coef = clip_coefficient(total, max_norm);
    for (const auto& g : grads)
      if (g.defined()) g.mul_(coef.to(g.device()));
  }
  return total;
}

AdamW::AdamW(std::vector<std::pair<std::string, torch::Tensor>> params, AdamWOptions options)
    : options_(options) {
  MLA_CHECK(!params.empty(), "optimizer: no trainable parameters");
  MLA_CHECK(options.beta1 >= 0 && options.beta1 < 1 && options.beta2 >= 0 && options.beta2 < 1,
            "optimizer: betas must be in [0, 1), got ", options.beta1, ", ", options.beta2);
  MLA_CHECK(options.eps > 0, "optimizer: eps must be > 0, got ", options.eps);
  MLA_CHECK(options.weight_decay >= 0, "optimizer: weight_decay must be >= 0, got ", options.weight_decay);
  MLA_CHECK(options.shard_count >= 1 && options.shard_rank >= 0 && options.shard_rank < options.shard_count,
            "optimizer: shard ", options.shard_rank, " of ", options.shard_count, " is not a valid ZeRO shard");
  std::set<std::string> seen;
  torch::NoGradGuard no_grad;
  for (auto& [name, param] : params) {
    MLA_CHECK(seen.insert(name).second, "optimizer: parameter '", name, "' given twice");
    MLA_CHECK(param.defined() && param.is_floating_point(), "optimizer: parameter '", name, "' is not floating point");
    MLA_CHECK(param.requires_grad(), "optimizer: parameter '", name, "' is frozen (requires_grad false)");
    Slot s;
    s.name = name;
    s.param = param;
    s.decay = applies_weight_decay(name, options.decay_embeddings) &&
              std::find(options.no_decay_names.begin(), options.no_decay_names.end(), name) ==
                  options.no_decay_names.end();
    const auto fp32 = param.options().dtype(torch::kFloat32);
    MLA_CHECK(param.dim() >= 1 || options.shard_count == 1, "optimizer: parameter '", name,
              "' is a scalar; ZeRO shards rows of tensors");
    const parallel::RowRange rows =
        param.dim() == 0 ? parallel::RowRange{0, 1}
                         : parallel::zero_row_range(param.size(0), options.shard_rank, options.shard_count);
    s.row_begin = rows.begin;
    s.row_end = rows.end;
    if (options.precision == Precision::fp32) {
      MLA_CHECK(param.scalar_type() == torch::kFloat32, "optimizer: parameter '", name, "' is ",
                c10::toString(param.scalar_type()), "; the fp32 mode needs float32 parameters (use bf16 mode)");
    } else {
      MLA_CHECK(param.scalar_type() == torch::kFloat32 || param.scalar_type() == torch::kBFloat16,
                "optimizer: parameter '", name, "' is ", c10::toString(param.scalar_type()),
                "; the bf16 mode takes float32 (preferred: exact masters) or bfloat16 parameters");
      s.master = own_rows(s, param.detach()).to(torch::kFloat32, /*non_blocking=*/false, /*copy=*/true).contiguous();
      if (param.grad().defined()) param.mutable_grad().reset();
      // Same Parameter object, bf16 storage: the module's member tensor sees the change. (Rounding the
      // float32 weight is what rounding its master gives, so every ZeRO rank agrees on every row.)
      if (param.scalar_type() != torch::kBFloat16) param.set_data(param.detach().to(torch::kBFloat16));
    }
    s.exp_avg = torch::zeros(own_rows(s, param).sizes(), fp32);
    s.exp_avg_sq = torch::zeros(own_rows(s, param).sizes(), fp32);
    slots_.push_back(std::move(s));
  }
}

torch::Tensor AdamW::own_rows(const Slot& slot, const torch::Tensor& t) const {
  if (options_.shard_count == 1 || t.dim() == 0) return t;
  return t.narrow(0, slot.row_begin, slot.row_end - slot.row_begin);
}

const torch::Tensor& AdamW::master(size_t i) const {
  const Slot& s = slots_.at(i);
  return s.master.defined() ? s.master : s.param;
}

void AdamW::accumulate_grads() {
  if (options_.precision != Precision::bf16_master) return;
  for (Slot& s : slots_) accumulate(s);
}

void AdamW::accumulate(Slot& s) {
  if (options_.precision != Precision::bf16_master) return;
  torch::NoGradGuard no_grad;
  const torch::Tensor& g = s.param.grad();
  if (!g.defined()) return;
  if (s.grad_acc.defined()) {
    s.grad_acc.add_(g);  // bf16 + fp32 -> computed and stored in fp32
  } else {
    s.grad_acc = g.to(torch::kFloat32, false, /*copy=*/true);
  }
  s.param.mutable_grad().reset();
}

torch::Tensor AdamW::gradient(size_t i, bool zeros_for_missing) {
  Slot& s = slots_.at(i);
  accumulate(s);
  if (zeros_for_missing && !fp32_grad(s).defined()) {
    torch::NoGradGuard no_grad;
    auto zeros = torch::zeros(s.param.sizes(), s.param.options().dtype(torch::kFloat32));
    if (options_.precision == Precision::fp32) {
      s.param.mutable_grad() = zeros;
    } else {
      s.grad_acc = zeros;
    }
  }
  return fp32_grad(s);
}

std::vector<torch::Tensor> AdamW::gradients(bool zeros_for_missing) {
  std::vector<torch::Tensor> out;
  out.reserve(slots_.size());
  for (size_t i = 0; i < slots_.size(); ++i) out.push_back(gradient(i, zeros_for_missing));
  return out;
}

torch::Tensor AdamW::fp32_grad(Slot& s) {
  if (options_.precision == Precision::fp32) return s.param.grad();
  return s.grad_acc;  // after accumulate_grads()
}

StepResult AdamW::step(double lr, double max_grad_norm) {
  StepResult result;
  result.lr = lr;
  accumulate_grads();
  std::vector<torch::Tensor> grads;
  grads.reserve(slots_.size());
  for (Slot& s : slots_) {
    const torch::Tensor g = fp32_grad(s);
    grads.push_back(g.defined() ? own_rows(s, g) : g);
  }

  // Norm first (no clipping yet): a non-finite norm must leave everything untouched.
  torch::Tensor norm = clip_grad_norm(grads, 0.0, reduce_);
  result.grad_norm = norm.item<double>();
  if (!std::isfinite(result.grad_norm)) {
    result.skipped = true;
    return result;
  }
  torch::NoGradGuard no_grad;
  if (max_grad_norm > 0) {
    // Same arithmetic as clip_grad_norm / torch: scale by clamp(max / (norm + 1e-6), max=1).
    const auto coef = clip_coefficient(norm, max_grad_norm);
    for (auto& g : grads)
      if (g.defined()) g.mul_(coef);
    result.clipped = result.grad_norm > max_grad_norm;
  }

  ++step_;
  const double beta1 = options_.beta1, beta2 = options_.beta2;
  // Python floats in torch: doubles, with pow for both corrections (bias_correction2 ** 0.5, not sqrt).
  const double bias_correction1 = 1 - std::pow(beta1, static_cast<double>(step_));
  const double bias_correction2 = 1 - std::pow(beta2, static_cast<double>(step_));
  const double step_size = lr / bias_correction1;
  const double bias_correction2_sqrt = std::pow(bias_correction2, 0.5);
  for (size_t i = 0; i < slots_.size(); ++i) {
    Slot& s = slots_[i];
    const torch::Tensor& g = grads[i];
    if (!g.defined()) continue;
    torch::Tensor w = s.master.defined() ? s.master : own_rows(s, s.param);
    const double wd = s.decay ? options_.weight_decay : 0.0;
    if (wd != 0) w.mul_(1 - lr * wd);
    s.exp_avg.lerp_(g, 1 - beta1);
    s.exp_avg_sq.mul_(beta2).addcmul_(g, g, 1 - beta2);
    auto denom = (s.exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(options_.eps);
    w.addcdiv_(s.exp_avg, denom, -step_size);
    if (s.master.defined()) own_rows(s, s.param).copy_(s.master);  // fp32 -> bf16, round to nearest even
  }
  return result;
}

void AdamW::zero_grad() {
  for (Slot& s : slots_) {
    if (s.param.grad().defined()) s.param.mutable_grad().reset();
    s.grad_acc = torch::Tensor();
  }
}

StateDict AdamW::state_dict() const {
  StateDict out;
  for (const Slot& s : slots_) {
    out[s.name + ".exp_avg"] = s.exp_avg.detach().cpu().clone();
    out[s.name + ".exp_avg_sq"] = s.exp_avg_sq.detach().cpu().clone();
    if (s.master.defined()) out[s.name + ".master"] = s.master.detach().cpu().clone();
  }
  out["step"] = torch::full({1}, step_, torch::kInt64);
  return out;
}

void AdamW::load_state_dict(const StateDict& state) {
  const bool masters = options_.precision == Precision::bf16_master;
  std::set<std::string> expected = {"step"};
  for (const Slot& s : slots_) {
    expected.insert(s.name + ".exp_avg");
    expected.insert(s.name + ".exp_avg_sq");
    if (masters) expected.insert(s.name + ".master");
  }
  for (const auto& [key, tensor] : state) {
    if (expected.count(key)) continue;
    if (!masters && key.size() > 7 && key.compare(key.size() - 7, 7, ".master") == 0)
      fail("optimizer state: '", key, "' is a bf16 master weight but this optimizer runs in fp32 mode");
    fail("optimizer state: unexpected entry '", key, "' (not a state of this optimizer's parameters)");
  }
  auto get = [&](const std::string& key) -> const torch::Tensor& {
    auto it = state.find(key);
    if (it == state.end()) {
      if (masters && key.size() > 7 && key.compare(key.size() - 7, 7, ".master") == 0)
        fail("optimizer state: missing '", key, "' (the optimizer runs in bf16 mode, the state has no masters)");
      fail("optimizer state: missing '", key, "'");
    }
    return it->second;
  };
  // Validate everything before changing anything.
  for (const Slot& s : slots_) {
    for (const char* suffix : {".exp_avg", ".exp_avg_sq", ".master"}) {
      if (!masters && std::string(suffix) == ".master") continue;
      const torch::Tensor& t = get(s.name + suffix);
      MLA_CHECK(t.sizes() == s.exp_avg.sizes(), "optimizer state: '", s.name, suffix, "' has shape ", t.sizes(),
                " but this optimizer's state has ", s.exp_avg.sizes(), sharded() ? " (its ZeRO shard)" : "");
      MLA_CHECK(t.scalar_type() == torch::kFloat32, "optimizer state: '", s.name, suffix, "' is ",
                c10::toString(t.scalar_type()), ", expected float32");
    }
  }
  const torch::Tensor& step = get("step");
  MLA_CHECK(step.numel() == 1 && step.scalar_type() == torch::kInt64,
            "optimizer state: 'step' must be one int64 value, got ", step.sizes(), " ", c10::toString(step.scalar_type()));
  const int64_t steps = step.reshape({}).item<int64_t>();
  MLA_CHECK(steps >= 0, "optimizer state: 'step' is negative (", steps, ")");

  torch::NoGradGuard no_grad;
  for (Slot& s : slots_) {
    s.exp_avg.copy_(get(s.name + ".exp_avg"));
    s.exp_avg_sq.copy_(get(s.name + ".exp_avg_sq"));
    if (masters) {
      s.master.copy_(get(s.name + ".master"));
      own_rows(s, s.param).copy_(s.master);
    }
    s.grad_acc = torch::Tensor();
  }
  step_ = steps;
}

}  // namespace mlaforge
