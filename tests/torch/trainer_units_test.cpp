// Trainable-parameter selection (trainer/trainable.h) and the learning-rate schedule
// (trainer/lr_schedule.h): presets, patterns in both naming schemes, errors, frozen casts; schedule values
// at known steps (closed form), warmup forms, validation.
#include <gtest/gtest.h>

#include <cmath>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "tests/torch/trainer_test_util.h"
#include "trainer/lr_schedule.h"
#include "trainer/trainable.h"

namespace mlaforge {
namespace {

using testing::random_decoder;
using testing::tiny_llama_config;
using testing::tiny_mla_config;

std::set<std::string> as_set(const std::vector<std::string>& v) { return {v.begin(), v.end()}; }

std::set<std::string> requiring_grad(const DecoderImpl& model) {
  std::set<std::string> out;
  for (const auto& p : model.named_parameters(true))
    if (p.value().requires_grad()) out.insert(p.key());
  return out;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Trainable, UpProjSelectsTheMLAUpProjectionsOnly) {
  Decoder plain = random_decoder(tiny_mla_config(/*q_lora=*/false), 1);
  auto sel = select_trainable(*plain, "up_proj");
  EXPECT_EQ(as_set(sel.trainable), (std::set<std::string>{"layers.0.attn.wkv_b.weight", "layers.1.attn.wkv_b.weight"}));
  EXPECT_EQ(requiring_grad(*plain), as_set(sel.trainable));
  // kv_b: (H * (nope + v), R) = (4 * 16, 16) per layer.
  EXPECT_EQ(sel.trainable_numel, 2 * 64 * 16);
  int64_t total = 0;
  for (const auto& p : plain->parameters()) total += p.numel();
  EXPECT_EQ(sel.trainable_numel + sel.frozen_numel, total);

  Decoder qlora = random_decoder(tiny_mla_config(/*q_lora=*/true), 1);
  sel = select_trainable(*qlora, "up_proj");
  EXPECT_EQ(as_set(sel.trainable), (std::set<std::string>{"layers.0.attn.wkv_b.weight", "layers.0.attn.wq_b.weight",
                                                          "layers.1.attn.wkv_b.weight", "layers.1.attn.wq_b.weight"}));
}

TEST(Trainable, UpProjOnAGQAModelIsAnErrorNamingTheSet) {
  Decoder llama = random_decoder(tiny_llama_config(), 1);
  const std::string msg = error_of([&] { select_trainable(*llama, "up_proj"); });
  EXPECT_NE(msg.find("'up_proj'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("llama"), std::string::npos) << msg;
  EXPECT_NE(msg.find("GQA"), std::string::npos) << msg;
}

TEST(Trainable, AttentionTakesEveryAttentionTensorButNotTheInputNorm) {
  Decoder llama = random_decoder(tiny_llama_config(), 1);
  auto sel = select_trainable(*llama, "attention");
  std::set<std::string> expected;
  for (int i = 0; i < 2; ++i)
    for (const char* w : {"wq", "wk", "wv", "wo"}) expected.insert("layers." + std::to_string(i) + ".attn." + w + ".weight");
  EXPECT_EQ(as_set(sel.trainable), expected);

  Decoder mla = random_decoder(tiny_mla_config(/*q_lora=*/true), 1);
  sel = select_trainable(*mla, "attention");
  expected.clear();
  for (int i = 0; i < 2; ++i)
    for (const char* w : {"wq_a", "q_a_norm", "wq_b", "wkv_a", "kv_a_norm", "wkv_b", "wo"})
      expected.insert("layers." + std::to_string(i) + ".attn." + w + ".weight");
  EXPECT_EQ(as_set(sel.trainable), expected);
}

TEST(Trainable, AllAndPatternsInBothNamingSchemes) {
  Decoder mla = random_decoder(tiny_mla_config(false), 1);
  auto all = select_trainable(*mla, "all");
  EXPECT_EQ(all.frozen.size(), 0u);
  EXPECT_EQ(requiring_grad(*mla).size(), mla->parameters().size());

  // A Hugging Face glob selects what the preset does.
  auto hf = select_trainable(*mla, "*.kv_b_proj.weight");
  EXPECT_EQ(as_set(hf.trainable), (std::set<std::string>{"layers.0.attn.wkv_b.weight", "layers.1.attn.wkv_b.weight"}));
  // Our names: everything of layer 0 (and nothing of layer 1 or outside the layers).
  auto ours = select_trainable(*mla, "layers.0.*");
  for (const auto& n : ours.trainable) EXPECT_EQ(n.rfind("layers.0.", 0), 0u) << n;
  EXPECT_EQ(ours.trainable.size(), 10u);  // 2 norms + wq, wkv_a, kv_a_norm, wkv_b, wo + 3 MLP
  // A regex in HF names, '?' in a glob, a union with a preset, whole-name matching (no substring hits).
  auto re = select_trainable(*mla, std::vector<std::string>{"re:model\\.layers\\.1\\.mlp\\.(gate|up)_proj\\.weight"});
  EXPECT_EQ(as_set(re.trainable), (std::set<std::string>{"layers.1.mlp.w_gate.weight", "layers.1.mlp.w_up.weight"}));
  auto q = select_trainable(*mla, "layers.?.attn.wo.weight, lm_head.weight ,up_proj");
  EXPECT_EQ(as_set(q.trainable), (std::set<std::string>{"layers.0.attn.wo.weight", "layers.1.attn.wo.weight",
                                                        "lm_head.weight", "layers.0.attn.wkv_b.weight",
                                                        "layers.1.attn.wkv_b.weight"}));
  EXPECT_FALSE(trainable_pattern_matches("kv_b_proj", "model.layers.0.self_attn.kv_b_proj.weight"));
  EXPECT_TRUE(trainable_pattern_matches("*kv_b_proj*", "model.layers.0.self_attn.kv_b_proj.weight"));
  EXPECT_EQ(parse_trainable_spec(" up_proj, *.q_proj.weight,, "),
            (std::vector<std::string>{"up_proj", "*.q_proj.weight"}));
}

TEST(Trainable, PatternsThatMatchNothingAndBadRegexesAreErrorsNamingThem) {
  Decoder llama = random_decoder(tiny_llama_config(), 1);
  select_trainable(*llama, "all");
  std::string msg = error_of([&] { select_trainable(*llama, "attention,*.kv_b_proj.weight"); });
  EXPECT_NE(msg.find("'*.kv_b_proj.weight' matches no parameter"), std::string::npos) << msg;
  msg = error_of([&] { select_trainable(*llama, std::vector<std::string>{"re:layers.(0"}); });
  EXPECT_NE(msg.find("invalid regular expression 'layers.(0'"), std::string::npos) << msg;
  msg = error_of([&] { select_trainable(*llama, " , "); });
  EXPECT_NE(msg.find("empty selection"), std::string::npos) << msg;
  // A failed selection leaves the model as it was.
  EXPECT_EQ(requiring_grad(*llama).size(), llama->parameters().size());
  auto sel = select_trainable(*llama, "lm_head.weight");
  EXPECT_EQ(requiring_grad(*llama), (std::set<std::string>{"lm_head.weight"}));
  EXPECT_EQ(sel.trainable_numel, 96 * 32);
}

TEST(Trainable, FrozenParametersGetNoGradientAndCanBeCast) {
  Decoder mla = random_decoder(tiny_mla_config(false), 2);
  select_trainable(*mla, "up_proj");
  auto tokens = torch::randint(0, 96, {2, 10}, torch::kInt64);
  mla->forward(tokens).pow(2).mean().backward();
  for (const auto& p : mla->named_parameters(true)) {
    if (p.value().requires_grad()) {
      ASSERT_TRUE(p.value().grad().defined()) << p.key();
      EXPECT_GT(p.value().grad().abs().sum().item<double>(), 0) << p.key();
    } else {
      EXPECT_FALSE(p.value().grad().defined()) << p.key();
    }
  }

  // Frozen -> bf16 (what the bf16 mixed-precision mode wants); the same Parameter objects are kept.
  auto* wkv_a_before = mla->layers[0]->as<DecoderLayerImpl>()->mla_attn->wkv_a->weight.unsafeGetTensorImpl();
  select_trainable(*mla, "up_proj", TrainableOptions{.frozen_dtype = torch::kBFloat16});
  auto* layer0 = mla->layers[0]->as<DecoderLayerImpl>();
  EXPECT_EQ(layer0->mla_attn->wkv_a->weight.unsafeGetTensorImpl(), wkv_a_before);
  EXPECT_EQ(layer0->mla_attn->wkv_a->weight.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(layer0->mla_attn->wkv_b->weight.scalar_type(), torch::kFloat32);
  EXPECT_EQ(mla->embed->weight.scalar_type(), torch::kBFloat16);
  const std::string msg = error_of([&] { check_uniform_dtype(*mla, torch::kFloat32); });
  EXPECT_NE(msg.find("'embed.weight' is BFloat16"), std::string::npos) << msg;
  EXPECT_EQ(trainable_parameters(*mla).size(), 2u);
}

// --- learning-rate schedule -------------------------------------------------------------------------

LRSchedule schedule(LRDecay decay, int64_t warmup, int64_t total, double min_ratio) {
  return LRSchedule(LRScheduleOptions{.lr = 2e-3, .total_steps = total, .warmup_steps = warmup, .warmup_ratio = {},
                                      .min_lr_ratio = min_ratio, .decay = decay});
}

TEST(LRSchedule, CosineValuesAtKnownSteps) {
  // W = 4, T = 14: decay over steps 4..13 with progress (s - 4) / 9.
  auto s = schedule(LRDecay::cosine, 4, 14, 0.1);
  EXPECT_DOUBLE_EQ(s.factor(0), 0.25);  // (0 + 1) / 4: the first step already learns
  EXPECT_DOUBLE_EQ(s.factor(2), 0.75);
  EXPECT_DOUBLE_EQ(s.factor(3), 1.0);   // end of warmup: peak
  EXPECT_DOUBLE_EQ(s.factor(4), 1.0);   // first decay step: still the peak
  // progress 1/3: 0.1 + 0.9 * (1 + cos(pi/3)) / 2 = 0.1 + 0.9 * 0.75 = 0.775
  EXPECT_NEAR(s.factor(7), 0.775, 1e-15);
  // progress 2/3: cos(2 pi / 3) = -0.5 -> 0.1 + 0.9 * 0.25 = 0.325
  EXPECT_NEAR(s.factor(10), 0.325, 1e-15);
  EXPECT_DOUBLE_EQ(s.factor(13), 0.1);  // last step: exactly min
  EXPECT_DOUBLE_EQ(s.factor(1000), 0.1);
  EXPECT_NEAR(s.lr(7), 2e-3 * 0.775, 1e-18);
  for (int64_t i = 4; i < 20; ++i) EXPECT_LE(s.factor(i + 1), s.factor(i)) << i;
}

TEST(LRSchedule, LinearConstantAndNoWarmup) {
  auto lin = schedule(LRDecay::linear, 0, 11, 0.0);  // progress = s / 10
  EXPECT_DOUBLE_EQ(lin.factor(0), 1.0);
  EXPECT_NEAR(lin.factor(3), 0.7, 1e-15);
  EXPECT_DOUBLE_EQ(lin.factor(10), 0.0);
  auto lin_min = schedule(LRDecay::linear, 2, 12, 0.2);  // progress = (s - 2) / 9
  EXPECT_NEAR(lin_min.factor(5), 0.2 + 0.8 * (1 - 3.0 / 9.0), 1e-15);
  auto flat = schedule(LRDecay::constant, 3, 10, 0.1);
  EXPECT_NEAR(flat.factor(1), 2.0 / 3.0, 1e-15);
  EXPECT_DOUBLE_EQ(flat.factor(3), 1.0);
  EXPECT_DOUBLE_EQ(flat.factor(9), 1.0);
  // One decay step after warmup: it runs at the peak (and that is also the last step).
  auto one = schedule(LRDecay::cosine, 3, 4, 0.0);
  EXPECT_DOUBLE_EQ(one.factor(3), 1.0);
  EXPECT_DOUBLE_EQ(one.factor(4), 0.0);
}

TEST(LRSchedule, WarmupAsAFractionAndValidation) {
  LRScheduleOptions o{.lr = 1e-4, .total_steps = 20, .warmup_steps = {}, .warmup_ratio = 0.125};
  EXPECT_EQ(LRSchedule(o).warmup_steps(), 3);  // 2.5 rounds to 3
  o.warmup_ratio = 0.05;
  o.total_steps = 100;
  EXPECT_EQ(LRSchedule(o).warmup_steps(), 5);
  EXPECT_DOUBLE_EQ(LRSchedule(o).factor(0), 0.2);

  auto bad = [](LRScheduleOptions x) { return error_of([&] { LRSchedule s(x); }); };
  LRScheduleOptions both{.lr = 1e-4, .total_steps = 10, .warmup_steps = 2, .warmup_ratio = 0.1};
  EXPECT_NE(bad(both).find("not both"), std::string::npos);
  EXPECT_NE(bad({.lr = 1e-4, .total_steps = 10, .warmup_steps = 11}).find("warmup_steps (11)"), std::string::npos);
  EXPECT_NE(bad({.lr = 0, .total_steps = 10}).find("lr must be > 0"), std::string::npos);
  EXPECT_NE(bad({.lr = 1e-4, .total_steps = 0}).find("total_steps"), std::string::npos);
  EXPECT_NE(bad({.lr = 1e-4, .total_steps = 5, .min_lr_ratio = 1.5}).find("min_lr_ratio"), std::string::npos);
  EXPECT_NE(bad({.lr = 1e-4, .total_steps = 5, .warmup_ratio = -0.1}).find("warmup_ratio"), std::string::npos);
  EXPECT_EQ(parse_lr_decay("linear"), LRDecay::linear);
  EXPECT_THROW(parse_lr_decay("cos"), Error);
}

}  // namespace
}  // namespace mlaforge
