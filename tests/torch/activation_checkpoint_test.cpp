// Activation checkpointing (trainer/activation_checkpoint.h): gradients with and without recomputation are
// bitwise equal on CPU float32 (the recompute runs the same kernels on the same inputs) for a GQA llama,
// an MLA model with a query LoRA, and a Mixtral MoE with its router loss; a frozen embedding (up_proj)
// still gives the layers' parameters gradients; torch::autograd::grad works through it; dropout repeats
// and the RNG stream is undisturbed; evaluation is unaffected; the peak memory of a training step is lower.
#include <gtest/gtest.h>

#include <cstdio>
#include <string>
#include <vector>

#include "tests/torch/trainer_test_util.h"
#include "trainer/activation_checkpoint.h"
#include "trainer/trainable.h"

namespace mlaforge {
namespace {

using testing::random_decoder;

struct GradRun {
  torch::Tensor logits;
  std::vector<std::string> names;
  std::vector<torch::Tensor> grads;
};

GradRun forward_backward(Decoder& model, const torch::Tensor& ids, const torch::Tensor& probe, bool checkpointing,
                     double aux_weight) {
  set_activation_checkpointing(*model, checkpointing);
  model->zero_grad();
  GradRun r;
  r.logits = model->forward(ids);
  auto loss = (r.logits * probe).sum();
  if (aux_weight != 0) loss = loss + aux_weight * model->aux_loss();
  loss.backward();
  for (const auto& p : model->named_parameters(true)) {
    if (!p.value().requires_grad()) continue;
    r.names.push_back(p.key());
    r.grads.push_back(p.value().grad().defined() ? p.value().grad().clone() : torch::Tensor());
  }
  r.logits = r.logits.detach();
  set_activation_checkpointing(*model, false);
  return r;
}

void expect_identical_gradients(const ModelConfig& config, const std::string& trainable, double aux_weight) {
  Decoder model = random_decoder(config, 21);
  select_trainable(*model, trainable);
  torch::manual_seed(22);
  auto ids = torch::randint(0, config.vocab_size, {2, 24}, torch::kInt64);
  auto probe = torch::randn({2, 24, config.vocab_size});
  const GradRun plain = forward_backward(model, ids, probe, false, aux_weight);
  const GradRun ckpt = forward_backward(model, ids, probe, true, aux_weight);
  EXPECT_TRUE(torch::equal(plain.logits, ckpt.logits));
  ASSERT_EQ(plain.grads.size(), ckpt.grads.size());
  ASSERT_FALSE(plain.grads.empty());
  size_t identical = 0;
  for (size_t i = 0; i < plain.grads.size(); ++i) {
    ASSERT_TRUE(plain.grads[i].defined()) << plain.names[i];
    ASSERT_TRUE(ckpt.grads[i].defined()) << "no gradient with checkpointing: " << ckpt.names[i];
    EXPECT_GT(plain.grads[i].abs().max().item<double>(), 0) << plain.names[i];
    const bool same = torch::equal(plain.grads[i], ckpt.grads[i]);
    EXPECT_TRUE(same) << ckpt.names[i] << ": rel diff " << testing::rel_diff(ckpt.grads[i], plain.grads[i]);
    identical += same;
  }
  std::printf("[ckpt] %-11s trainable %-9s %zu/%zu gradients bitwise identical\n", family_name(config.family).c_str(),
              trainable.c_str(), identical, plain.grads.size());
}

TEST(ActivationCheckpoint, LlamaGradientsBitwiseIdentical) {
  expect_identical_gradients(testing::tiny_llama_config(3), "all", 0.0);
}
TEST(ActivationCheckpoint, MLAGradientsBitwiseIdentical) {
  expect_identical_gradients(testing::tiny_mla_config(/*q_lora=*/true, 3), "all", 0.0);
}
// The input of the first layer (a frozen embedding) needs no gradient: the layers' parameters must still
// get theirs (they are inputs of the checkpoint node, not only captured).
TEST(ActivationCheckpoint, UpProjWithFrozenEmbeddingStillTrains) {
  expect_identical_gradients(testing::tiny_mla_config(/*q_lora=*/true, 3), "up_proj", 0.0);
}
// The router-balance loss reads the routing statistics of the (checkpointed) forward.
TEST(ActivationCheckpoint, MixtralWithRouterLossBitwiseIdentical) {
  expect_identical_gradients(testing::tiny_mixtral_config(), "all", 0.5);
}

TEST(ActivationCheckpoint, AutogradGradAndEvaluation) {
  Decoder model = random_decoder(testing::tiny_mla_config(false), 23);
  select_trainable(*model, "attention");
  auto ids = torch::randint(0, 96, {2, 16}, torch::kInt64);
  const GradRun plain = forward_backward(model, ids, torch::ones({2, 16, 96}), false, 0.0);
  set_activation_checkpointing(*model, true);
  std::vector<torch::Tensor> params;
  for (const auto& [n, p] : trainable_parameters(*model)) params.push_back(p);
  auto grads = torch::autograd::grad({model->forward(ids).sum()}, params);
  ASSERT_EQ(grads.size(), plain.grads.size());
  for (size_t i = 0; i < grads.size(); ++i) EXPECT_TRUE(torch::equal(grads[i], plain.grads[i])) << plain.names[i];
  {
    torch::NoGradGuard no_grad;  // evaluation: the runner calls the layers directly
    EXPECT_TRUE(torch::equal(model->forward(ids), plain.logits));
  }
  set_activation_checkpointing(*model, false);
  EXPECT_FALSE(static_cast<bool>(model->layer_runner));
}

// Dropout inside a checkpoint: the recompute must draw the same mask (same gradient as without
// checkpointing), and the random numbers drawn after the backward must be those of a run without it.
TEST(ActivationCheckpoint, RandomOpsRepeatAndTheRngStreamIsKept) {
  torch::manual_seed(24);
  auto x0 = torch::randn({64, 32});
  auto w0 = torch::randn({32});
  auto run = [&](bool ckpt) {
    auto x = x0.clone().requires_grad_(true);
    auto w = w0.clone().requires_grad_(true);
    torch::manual_seed(25);
    CheckpointFn fn = [w](const std::vector<torch::Tensor>& in) -> std::vector<torch::Tensor> {
      return {torch::dropout(torch::tanh(in[0] * w), 0.5, /*train=*/true)};
    };
    auto y = ckpt ? checkpoint(fn, {x}, {w})[0] : fn({x})[0];
    (y * y).sum().backward();
    return std::make_tuple(x.grad(), w.grad(), torch::rand({8}));
  };
  auto [gx0, gw0, next0] = run(false);
  auto [gx1, gw1, next1] = run(true);
  EXPECT_TRUE(torch::equal(gx0, gx1));
  EXPECT_TRUE(torch::equal(gw0, gw1));
  EXPECT_TRUE(torch::equal(next0, next1));
  EXPECT_GT((gx0 == 0).sum().item<int64_t>(), 0);  // dropout really dropped something
}

// A training step of a 4-layer model at T = 512: with checkpointing only the layers' inputs stay alive
// until backward, so the peak is well below the plain step's.
TEST(ActivationCheckpoint, LowersPeakMemory) {
  nlohmann::json j = {{"model_type", "llama"},        {"vocab_size", 128},         {"hidden_size", 128},
                      {"intermediate_size", 512},     {"num_hidden_layers", 4},    {"num_attention_heads", 8},
                      {"num_key_value_heads", 4},     {"rms_norm_eps", 1e-5},      {"max_position_embeddings", 1024}};
  const ModelConfig config = ModelConfig::from_json(j, "mem-llama");
  Decoder model = random_decoder(config, 26);
  select_trainable(*model, "all");
  auto ids = torch::randint(0, 128, {2, 512}, torch::kInt64);
  auto peak = [&](bool ckpt) {
    set_activation_checkpointing(*model, ckpt);
    model->zero_grad();
    testing::CpuMemoryScope scope;
    model->forward(ids).pow(2).mean().backward();
    return scope.peak_since_start();
  };
  peak(false);  // warm-up (one-time allocations)
  const int64_t plain = peak(false), ckpt = peak(true);
  std::printf("[ckpt] llama 4 layers, D 128, B*T 1024: peak %.1f MiB plain, %.1f MiB checkpointed (%.0f%%)\n",
              plain / 1048576.0, ckpt / 1048576.0, 100.0 * ckpt / plain);
  EXPECT_LT(ckpt, plain * 0.6);
}

}  // namespace
}  // namespace mlaforge
