// The AdamW optimizer (trainer/optimizer.h): the same gradients as torch.optim.AdamW + clip_grad_norm_ +
// LambdaLR give bitwise the same weights (references: tests/python/refs_optim.py), the parameter groups,
// decoupled weight decay, skipping non-finite steps, and bitwise-identical continued training after a
// state round trip through a safetensors file, in fp32 and bf16 master-weight modes.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "core/error.h"
#include "tests/torch/trainer_test_util.h"
#include "trainer/losses.h"
#include "trainer/trainable.h"

namespace mlaforge {
namespace {

using testing::load_train_case;
using testing::random_decoder;
using testing::tiny_llama_config;
using testing::TrainCase;

const std::vector<std::string> kTrainCases = {"llama_all", "mla_up_proj"};

class OptimizerParity : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override { REQUIRE_TEST_DATA("optim/" + GetParam() + "/reference.safetensors"); }
};

// Feeds torch's own accumulated gradients of every step to our optimizer, in torch's parameter order
// (the order of the norm's summation), and compares the learning rates, pre-clip norms and final weights.
// Same ATen kernels with the same scalars in the same order: everything must be bitwise equal.
TEST_P(OptimizerParity, TorchGradientsGiveTorchWeightsBitwise) {
  TrainCase c = load_train_case(GetParam());
  Decoder model = build_model(c.source);
  auto named = model->named_parameters(true);
  for (auto& p : model->parameters()) p.requires_grad_(false);
  std::vector<std::pair<std::string, torch::Tensor>> params;
  for (const auto& ours : c.order_ours) {
    torch::Tensor t = named[ours];
    t.requires_grad_(true);
    params.emplace_back(ours, t);
  }
  AdamW opt(params, c.adamw());
  const LRSchedule schedule = c.schedule();

  // Our group rule agrees with the reference's (written in Hugging Face names, independently).
  std::set<std::string> ref_no_decay;
  for (const auto& hf : c.meta.at("no_decay")) ref_no_decay.insert(*hf_to_ours(c.source.config, hf.get<std::string>()));
  for (size_t i = 0; i < opt.size(); ++i)
    EXPECT_EQ(!opt.decays(i), ref_no_decay.count(opt.name(i)) == 1) << opt.name(i);

  int clipped = 0;
  for (int64_t k = 0; k < c.steps(); ++k) {
    for (size_t i = 0; i < params.size(); ++i)
      params[i].second.mutable_grad() = c.at(c.step_key("grad", k) + "." + c.order_hf[i]).clone();
    const double lr = schedule.lr(k);
    EXPECT_EQ(lr, c.scalar(c.step_key("lr", k))) << "step " << k;
    const StepResult r = opt.step(lr, c.max_grad_norm());
    EXPECT_FALSE(r.skipped);
    EXPECT_EQ(r.grad_norm, c.scalar(c.step_key("grad_norm", k))) << "step " << k;
    clipped += r.clipped;
    opt.zero_grad();
  }
  EXPECT_GT(clipped, 0);
  EXPECT_LT(clipped, c.steps());
  EXPECT_EQ(opt.step_count(), c.steps());
  double worst = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    const auto& expected = c.at("final." + c.order_hf[i]);
    const double diff = testing::max_abs_diff(params[i].second, expected);
    EXPECT_EQ(diff, 0.0) << c.order_hf[i];
    EXPECT_TRUE(torch::equal(params[i].second, expected)) << c.order_hf[i];
    worst = std::max(worst, diff);
  }
  std::printf("[optim] %-12s %zu tensors, %lld steps (%d clipped): max |w - w_torch| = %.3g\n", c.name.c_str(),
              params.size(), static_cast<long long>(c.steps()), clipped, worst);
}

INSTANTIATE_TEST_SUITE_P(Cases, OptimizerParity, ::testing::ValuesIn(kTrainCases),
                         [](const auto& info) { return info.param; });

TEST(AdamW, ParameterGroupRule) {
  EXPECT_FALSE(applies_weight_decay("embed.weight", false));
  EXPECT_TRUE(applies_weight_decay("embed.weight", true));
  EXPECT_TRUE(applies_weight_decay("lm_head.weight", false));
  EXPECT_FALSE(applies_weight_decay("norm.weight", false));
  EXPECT_FALSE(applies_weight_decay("layers.3.attn_norm.weight", false));
  EXPECT_FALSE(applies_weight_decay("layers.3.mlp_post_norm.weight", false));
  EXPECT_FALSE(applies_weight_decay("layers.3.attn.kv_a_norm.weight", false));
  EXPECT_FALSE(applies_weight_decay("layers.3.attn.q_a_norm.weight", false));
  EXPECT_FALSE(applies_weight_decay("layers.3.attn.wq.bias", false));
  EXPECT_TRUE(applies_weight_decay("layers.3.attn.wkv_b.weight", false));
  EXPECT_TRUE(applies_weight_decay("layers.3.moe.router.weight", false));
  EXPECT_TRUE(applies_weight_decay("layers.3.moe.experts.1.w_down.weight", false));
}

// Extra no-decay names (a recipe's optim.no_decay) leave the decay group; the rule still applies to the rest.
TEST(AdamW, ExtraNoDecayNamesLeaveTheDecayGroup) {
  Decoder model = random_decoder(tiny_llama_config(), 3);
  select_trainable(*model, "all");
  AdamWOptions o;
  o.no_decay_names = {"lm_head.weight", "layers.1.attn.wq.weight", "not.a.parameter"};
  AdamW opt(trainable_parameters(*model), o);
  int decayed = 0;
  for (size_t i = 0; i < opt.size(); ++i) {
    const bool listed = opt.name(i) == "lm_head.weight" || opt.name(i) == "layers.1.attn.wq.weight";
    EXPECT_EQ(opt.decays(i), !listed && applies_weight_decay(opt.name(i), false)) << opt.name(i);
    decayed += opt.decays(i);
  }
  EXPECT_EQ(decayed, 2 * 7 + 1 - 2);
}

// With zero gradients Adam's update is 0 / (0 + eps) = 0, so only the decoupled decay acts:
// w <- w * (1 - lr * wd) in the decay group, unchanged in the other.
TEST(AdamW, DecoupledWeightDecayOnlyInTheDecayGroup) {
  Decoder model = random_decoder(tiny_llama_config(), 3);
  select_trainable(*model, "all");
  auto params = trainable_parameters(*model);
  std::vector<torch::Tensor> before;
  for (auto& [n, p] : params) before.push_back(p.detach().clone());
  AdamWOptions o;
  o.weight_decay = 0.5;
  AdamW opt(params, o);
  for (auto& [n, p] : params) p.mutable_grad() = torch::zeros_like(p);
  const double lr = 0.1;
  const auto r = opt.step(lr, 1.0);
  EXPECT_EQ(r.grad_norm, 0.0);
  EXPECT_FALSE(r.clipped);
  int decayed = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    const auto expected = opt.decays(i) ? before[i] * (1 - lr * 0.5) : before[i];
    EXPECT_TRUE(torch::equal(params[i].second, expected)) << params[i].first;
    decayed += opt.decays(i);
  }
  EXPECT_EQ(decayed, 2 * 7 + 1);  // per layer wq wk wv wo w_gate w_up w_down, plus lm_head
}

TEST(AdamW, ClipGradNormScalesLikeTorch) {
  auto a = torch::tensor({3.0f, 0.0f}), b = torch::tensor({4.0f});
  auto norm = clip_grad_norm({a, b, torch::Tensor()}, 1.0);
  EXPECT_FLOAT_EQ(norm.item<float>(), 5.0f);
  const float coef = 1.0f / (5.0f + 1e-6f);
  EXPECT_FLOAT_EQ(a[0].item<float>(), 3.0f * coef);
  EXPECT_FLOAT_EQ(b[0].item<float>(), 4.0f * coef);
  // Below the limit: untouched (multiplied by exactly 1).
  auto c = torch::tensor({0.3f, 0.4f});
  EXPECT_FLOAT_EQ(clip_grad_norm({c}, 1.0).item<float>(), 0.5f);
  EXPECT_TRUE(torch::equal(c, torch::tensor({0.3f, 0.4f})));
  // A reducer sees the squared local norm (as an all-reduce across two identical ranks would).
  auto d = torch::tensor({3.0f, 4.0f});
  auto reduced = clip_grad_norm({d}, 0.0, [](torch::Tensor& sq, const std::vector<torch::Tensor>&) { sq.mul_(2); });
  EXPECT_NEAR(reduced.item<double>(), 5.0 * std::sqrt(2.0), 1e-5);
}

// A non-finite gradient norm skips the step: no weight, state or step count changes, and it is reported.
TEST(AdamW, NonFiniteNormSkipsTheStep) {
  for (const float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    Decoder model = random_decoder(tiny_llama_config(), 4);
    select_trainable(*model, "all");
    auto params = trainable_parameters(*model);
    AdamW opt(params, AdamWOptions{});
    for (auto& [n, p] : params) p.mutable_grad() = torch::randn_like(p);
    ASSERT_FALSE(opt.step(1e-3, 1.0).skipped);
    opt.zero_grad();
    const StateDict state = opt.state_dict();
    std::vector<torch::Tensor> weights;
    for (auto& [n, p] : params) weights.push_back(p.detach().clone());

    for (auto& [n, p] : params) p.mutable_grad() = torch::randn_like(p);
    params[5].second.mutable_grad()[0][0] = bad;
    const StepResult r = opt.step(1e-3, 1.0);
    EXPECT_TRUE(r.skipped);
    EXPECT_FALSE(std::isfinite(r.grad_norm));
    EXPECT_EQ(opt.step_count(), 1);
    for (size_t i = 0; i < params.size(); ++i) EXPECT_TRUE(torch::equal(params[i].second, weights[i]));
    for (const auto& [k, v] : opt.state_dict()) EXPECT_TRUE(torch::equal(v, state.at(k))) << k;
  }
}

// Trains the tiny llama a few steps on fixed random batches with our loss; returns nothing, mutates.
void train_steps(Decoder& model, AdamW& opt, int64_t first, int64_t count) {
  const LRSchedule schedule(LRScheduleOptions{.lr = 3e-3, .total_steps = 12, .warmup_steps = 2});
  for (int64_t k = first; k < first + count; ++k) {
    torch::manual_seed(1000 + k);  // data depends on the step only, not on what ran before
    auto ids = torch::randint(0, 96, {2, 12}, torch::kInt64);
    auto targets = shift_labels(ids);
    targets.index_put_({0, torch::indexing::Slice(0, 4)}, kIgnoreIndex);
    const StepTokens tokens = count_tokens(targets);
    const LossSums sums = lm_loss_sums(model_head(*model), model->hidden(ids), targets, {}, {}, LossOptions{.chunk_tokens = 7});
    micro_batch_loss(sums, tokens).backward();
    ASSERT_FALSE(opt.step(schedule.lr(k), 1.0).skipped);
    opt.zero_grad();
  }
}

void expect_round_trip_bitwise(Precision precision) {
  const std::string dir = testing::make_temp_dir("optim_state");
  // Run A: 6 steps straight. Run B: 3 steps, state to disk, a fresh model and optimizer, 3 more steps.
  Decoder a = random_decoder(tiny_llama_config(), 5);
  select_trainable(*a, "all");
  AdamW opt_a(trainable_parameters(*a), AdamWOptions{.weight_decay = 0.1, .precision = precision});
  train_steps(a, opt_a, 0, 6);

  Decoder b = random_decoder(tiny_llama_config(), 5);
  select_trainable(*b, "all");
  {
    AdamW opt_b(trainable_parameters(*b), AdamWOptions{.weight_decay = 0.1, .precision = precision});
    train_steps(b, opt_b, 0, 3);
    save_safetensors_file(dir + "/optimizer.safetensors", opt_b.state_dict());
    // Model weights as a checkpoint holds them: fp32 weights, or the bf16 ones (the masters carry fp32).
    save_safetensors_file(dir + "/model.safetensors", export_weights(*b));
  }
  Decoder resumed(tiny_llama_config());
  load_weights(*resumed, load_safetensors_state(SafetensorsCheckpoint::open(dir + "/model.safetensors")), dir);
  select_trainable(*resumed, "all");
  AdamW opt_r(trainable_parameters(*resumed), AdamWOptions{.weight_decay = 0.1, .precision = precision});
  const StateDict state = load_safetensors_state(SafetensorsCheckpoint::open(dir + "/optimizer.safetensors"));
  EXPECT_EQ(state.count("step"), 1u);
  EXPECT_EQ(state.count("layers.0.attn.wq.weight.master"), precision == Precision::bf16_master ? 1u : 0u);
  opt_r.load_state_dict(state);
  EXPECT_EQ(opt_r.step_count(), 3);
  train_steps(resumed, opt_r, 3, 3);

  auto pa = a->named_parameters(true), pr = resumed->named_parameters(true);
  for (const auto& item : pa) {
    EXPECT_EQ(item.value().scalar_type(), precision == Precision::fp32 ? torch::kFloat32 : torch::kBFloat16);
    EXPECT_TRUE(torch::equal(item.value(), pr[item.key()])) << item.key();
  }
  const StateDict sa = opt_a.state_dict(), sr = opt_r.state_dict();
  ASSERT_EQ(sa.size(), sr.size());
  for (const auto& [k, v] : sa) EXPECT_TRUE(torch::equal(v, sr.at(k))) << k;
  // And the weights did move (the test would be empty otherwise).
  Decoder init = random_decoder(tiny_llama_config(), 5);
  EXPECT_GT(testing::max_abs_diff(a->lm_head->weight, init->lm_head->weight), 1e-3);
}

TEST(AdamW, StateRoundTripContinuesBitwiseFp32) { expect_round_trip_bitwise(Precision::fp32); }
TEST(AdamW, StateRoundTripContinuesBitwiseBf16Master) { expect_round_trip_bitwise(Precision::bf16_master); }

TEST(AdamW, Bf16MasterModeCastsParametersAndKeepsExactMasters) {
  Decoder model = random_decoder(tiny_llama_config(), 6);
  select_trainable(*model, "attention");
  const torch::Tensor wq = model->layers[0]->as<DecoderLayerImpl>()->attn->wq->weight;
  const torch::Tensor wq_fp32 = wq.detach().clone();
  AdamW opt(trainable_parameters(*model), AdamWOptions{.precision = Precision::bf16_master});
  cast_frozen_parameters(*model, torch::kBFloat16);
  check_uniform_dtype(*model, torch::kBFloat16);
  EXPECT_EQ(wq.scalar_type(), torch::kBFloat16);  // the module's own tensor changed dtype
  size_t i = 0;
  while (opt.name(i) != "layers.0.attn.wq.weight") ++i;
  EXPECT_TRUE(torch::equal(opt.master(i), wq_fp32));  // masters from the fp32 weights, not the rounded ones

  // fp32 accumulation of bf16 micro-batch gradients: accumulate_grads releases the bf16 .grad.
  auto ids = torch::randint(0, 96, {2, 8}, torch::kInt64);
  model->forward(ids).to(torch::kFloat32).pow(2).mean().backward();
  EXPECT_EQ(wq.grad().scalar_type(), torch::kBFloat16);
  opt.accumulate_grads();
  EXPECT_FALSE(wq.grad().defined());
  const auto r = opt.step(1e-3, 0.0);
  EXPECT_FALSE(r.skipped);
  EXPECT_GT(r.grad_norm, 0);
  EXPECT_TRUE(torch::equal(wq, opt.master(i).to(torch::kBFloat16)));  // re-cast from the master
  EXPECT_FALSE(torch::equal(opt.master(i), wq_fp32));

  // The fp32 mode refuses bf16 parameters.
  std::string msg;
  try {
    AdamW bad(trainable_parameters(*model), AdamWOptions{});
  } catch (const Error& e) {
    msg = e.what();
  }
  EXPECT_NE(msg.find("needs float32 parameters"), std::string::npos) << msg;
}

TEST(AdamW, LoadStateDictRejectsMismatches) {
  Decoder model = random_decoder(tiny_llama_config(), 7);
  select_trainable(*model, "lm_head.weight,norm.weight");
  AdamW opt(trainable_parameters(*model), AdamWOptions{});
  const StateDict good = opt.state_dict();
  auto error_for = [&](StateDict s) {
    try {
      opt.load_state_dict(s);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  StateDict missing = good;
  missing.erase("norm.weight.exp_avg_sq");
  EXPECT_NE(error_for(missing).find("missing 'norm.weight.exp_avg_sq'"), std::string::npos);
  StateDict extra = good;
  extra["embed.weight.exp_avg"] = torch::zeros({96, 32});
  EXPECT_NE(error_for(extra).find("unexpected entry 'embed.weight.exp_avg'"), std::string::npos);
  StateDict master = good;
  master["lm_head.weight.master"] = torch::zeros({96, 32});
  EXPECT_NE(error_for(master).find("bf16 master weight but this optimizer runs in fp32"), std::string::npos);
  StateDict shape = good;
  shape["lm_head.weight.exp_avg"] = torch::zeros({32, 96});
  EXPECT_NE(error_for(shape).find("'lm_head.weight.exp_avg' has shape"), std::string::npos);
  StateDict dtype = good;
  dtype["norm.weight.exp_avg"] = torch::zeros({32}, torch::kFloat64);
  EXPECT_NE(error_for(dtype).find("expected float32"), std::string::npos);
  EXPECT_EQ(error_for(good), "");

  AdamW bf16(trainable_parameters(*model), AdamWOptions{.precision = Precision::bf16_master});
  try {
    bf16.load_state_dict(good);
    ADD_FAILURE() << "fp32 state loaded into a bf16 optimizer";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no masters"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace mlaforge
