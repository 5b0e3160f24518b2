#pragma once
// Helpers shared by the trainer tests (tests/torch/*trainer*, optimizer, losses, activation checkpoint):
// tiny random models and a CPU allocator that counts live and peak bytes.
#include <c10/core/CPUAllocator.h>
#include <torch/torch.h>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

#include "model/checkpoint.h"
#include "model/config.h"
#include "model/decoder.h"
#include "model/safetensors.h"
#include "model/tensor_io.h"
#include "model/weight_names.h"
#include "tests/support/test_support.h"
#include "trainer/lr_schedule.h"
#include "trainer/optimizer.h"

namespace mlaforge::testing {

// A GQA llama: 4 query heads, 2 KV heads, head_dim 8.
inline ModelConfig tiny_llama_config(int64_t layers = 2, bool tied = false) {
  nlohmann::json j = {{"model_type", "llama"},        {"vocab_size", 96},          {"hidden_size", 32},
                      {"intermediate_size", 64},      {"num_hidden_layers", layers}, {"num_attention_heads", 4},
                      {"num_key_value_heads", 2},     {"rms_norm_eps", 1e-5},      {"rope_theta", 10000.0},
                      {"max_position_embeddings", 128}, {"tie_word_embeddings", tied}};
  return ModelConfig::from_json(j, "tiny-llama");
}

// A DeepSeek-V3 (MLA) model, every layer dense; q_lora adds the query LoRA (wq_a, q_a_norm, wq_b).
inline ModelConfig tiny_mla_config(bool q_lora = false, int64_t layers = 2) {
  nlohmann::json j = {{"model_type", "deepseek_v3"}, {"vocab_size", 96},     {"hidden_size", 32},
                      {"intermediate_size", 64},     {"num_hidden_layers", layers}, {"num_attention_heads", 4},
                      {"num_key_value_heads", 4},    {"kv_lora_rank", 16},   {"qk_rope_head_dim", 8},
                      {"qk_nope_head_dim", 8},       {"v_head_dim", 8},      {"head_dim", 8},
                      {"n_routed_experts", 0},       {"first_k_dense_replace", layers},
                      {"rms_norm_eps", 1e-5},        {"max_position_embeddings", 128},
                      {"rope_parameters", {{"rope_theta", 10000.0}, {"rope_type", "default"}}}};
  j["q_lora_rank"] = q_lora ? nlohmann::json(12) : nlohmann::json(nullptr);
  return ModelConfig::from_json(j, "tiny-mla");
}

// A Mixtral-style MoE llama: 4 experts, top-2.
inline ModelConfig tiny_mixtral_config() {
  nlohmann::json j = {{"model_type", "mixtral"},      {"vocab_size", 96},          {"hidden_size", 32},
                      {"intermediate_size", 48},      {"num_hidden_layers", 2},    {"num_attention_heads", 4},
                      {"num_key_value_heads", 2},     {"rms_norm_eps", 1e-5},      {"rope_theta", 10000.0},
                      {"max_position_embeddings", 128}, {"num_local_experts", 4}, {"num_experts_per_tok", 2},
                      {"router_aux_loss_coef", 0.02}};
  return ModelConfig::from_json(j, "tiny-mixtral");
}

// Unit-scale random weights (activations O(1), logits O(1..5)), deterministic in `seed`.
inline Decoder random_decoder(const ModelConfig& config, uint64_t seed) {
  Decoder model(config);
  torch::manual_seed(seed);
  torch::NoGradGuard no_grad;
  for (auto& p : model->named_parameters()) {
    auto& t = p.value();
    if (p.key().find("norm") != std::string::npos) {
      t.copy_(1 + 0.2 * torch::randn_like(t));
    } else if (p.key() == "embed.weight") {
      t.copy_(torch::randn_like(t));
    } else {
      t.copy_(torch::randn_like(t) / std::sqrt(static_cast<double>(t.size(-1))));
    }
  }
  return model;
}

// Counts the bytes of CPU tensors alive at once (c10's CPU allocator wrapped), to compare peaks.
// Install with CpuMemoryScope; the counter itself lives forever (tensors it allocated may die later).
class CountingCpuAllocator final : public c10::Allocator {
 public:
  static CountingCpuAllocator& instance() {
    static auto* counter = new CountingCpuAllocator();
    return *counter;
  }
  c10::DataPtr allocate(size_t n) override {
    c10::DataPtr inner = inner_->allocate(n);
    const int64_t live = live_.fetch_add(static_cast<int64_t>(n)) + static_cast<int64_t>(n);
    int64_t peak = peak_.load();
    while (live > peak && !peak_.compare_exchange_weak(peak, live)) {
    }
    void* data = inner.get();
    const c10::Device device = inner.device();
    auto* ctx = new Ctx{std::move(inner), n};
    return c10::DataPtr(data, ctx, &CountingCpuAllocator::release, device);
  }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
  void set_inner(c10::Allocator* inner) { inner_ = inner; }
  void reset_peak() { peak_.store(live_.load()); }
  int64_t live() const { return live_.load(); }
  int64_t peak() const { return peak_.load(); }

 private:
  struct Ctx {
    c10::DataPtr inner;
    size_t n;
  };
  static void release(void* p) {
    auto* ctx = static_cast<Ctx*>(p);
    instance().live_.fetch_sub(static_cast<int64_t>(ctx->n));
    delete ctx;  // frees through the inner allocator's deleter
  }
  c10::Allocator* inner_ = nullptr;
  std::atomic<int64_t> live_{0}, peak_{0};
};

// While alive, every CPU tensor allocation goes through the counter. peak_since_start(): the most bytes
// alive at once since construction, minus what was alive at construction.
class CpuMemoryScope {
 public:
  CpuMemoryScope() : previous_(c10::GetCPUAllocator()) {
    auto& c = CountingCpuAllocator::instance();
    c.set_inner(previous_);
    c10::SetCPUAllocator(&c, /*priority=*/0);
    start_ = c.live();
    c.reset_peak();
  }
  ~CpuMemoryScope() { c10::SetCPUAllocator(previous_, /*priority=*/0); }
  int64_t peak_since_start() const { return CountingCpuAllocator::instance().peak() - start_; }
  int64_t live_since_start() const { return CountingCpuAllocator::instance().live() - start_; }

 private:
  c10::Allocator* previous_;
  int64_t start_ = 0;
};

inline double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kFloat64) - b.to(torch::kFloat64)).abs().max().item<double>();
}
// max |a - b| / max |b|
inline double rel_diff(const torch::Tensor& got, const torch::Tensor& expected) {
  return max_abs_diff(got, expected) / std::max(expected.abs().max().item<double>(), 1e-300);
}

// A training reference of tests/python/refs_optim.py: the initial model, train.json, reference tensors.
struct TrainCase {
  std::string name, dir;
  ModelSource source;
  StateDict ref;
  nlohmann::json meta;
  std::vector<std::string> order_hf, order_ours;  // trainable parameters, in torch's order

  const torch::Tensor& at(const std::string& key) const {
    auto it = ref.find(key);
    if (it == ref.end()) throw std::runtime_error(name + ": reference has no tensor '" + key + "'");
    return it->second;
  }
  double scalar(const std::string& key) const { return at(key).item<double>(); }
  int64_t steps() const { return meta.at("steps").get<int64_t>(); }
  int64_t micro_batches() const { return meta.at("micro_batches").get<int64_t>(); }
  double max_grad_norm() const { return meta.at("max_grad_norm").get<double>(); }
  std::string step_key(const std::string& what, int64_t k) const { return what + ".s" + std::to_string(k); }
  std::string micro_key(const std::string& what, int64_t k, int64_t j) const {
    return what + ".s" + std::to_string(k) + ".m" + std::to_string(j);
  }

  AdamWOptions adamw(Precision precision = Precision::fp32) const {
    AdamWOptions o;
    o.beta1 = meta.at("betas")[0].get<double>();
    o.beta2 = meta.at("betas")[1].get<double>();
    o.eps = meta.at("eps").get<double>();
    o.weight_decay = meta.at("weight_decay").get<double>();
    o.precision = precision;
    return o;
  }
  LRSchedule schedule() const {
    return LRSchedule(LRScheduleOptions{.lr = meta.at("lr").get<double>(),
                                        .total_steps = steps(),
                                        .warmup_steps = meta.at("warmup").get<int64_t>(),
                                        .warmup_ratio = {},
                                        .min_lr_ratio = meta.at("min_lr_ratio").get<double>(),
                                        .decay = parse_lr_decay(meta.at("decay").get<std::string>())});
  }
};

inline TrainCase load_train_case(const std::string& name) {
  TrainCase c;
  c.name = name;
  c.dir = test_data_dir() + "/optim/" + name;
  c.source = load_model_source(c.dir, LoadOptions{.tokenizer_path = "", .load_tokenizer = false});
  c.ref = load_safetensors_state(SafetensorsCheckpoint::open(c.dir + "/reference.safetensors"));
  std::ifstream in(c.dir + "/train.json");
  c.meta = nlohmann::json::parse(in);
  for (const auto& hf : c.meta.at("order")) {
    c.order_hf.push_back(hf.get<std::string>());
    auto ours = hf_to_ours(c.source.config, c.order_hf.back());
    if (!ours) throw std::runtime_error(name + ": no mlaforge name for '" + c.order_hf.back() + "'");
    c.order_ours.push_back(*ours);
  }
  return c;
}

}  // namespace mlaforge::testing
